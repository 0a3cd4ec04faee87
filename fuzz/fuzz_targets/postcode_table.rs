//! The station -> postcode CSV reader, on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use velib_dataflow::feed::StationId;
use velib_dataflow::postcode::PostcodeTable;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = PostcodeTable::from_reader(data) {
        // Whatever was accepted is a valid postcode.
        if let Some(p) = table.lookup(Some("16107"), &StationId::Num(1)) {
            assert!(velib_dataflow::postcode::Postcode::parse(p.as_str()).is_some());
        }
    }
});
