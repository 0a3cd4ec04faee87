//! The epoch protocol on arbitrary records: header bytes and values as a
//! hostile writer could put them on a partition. Reading them may refuse
//! any record; it must never panic, never hold more than the bound of open
//! epochs, and never let a partition go back or jump further than the gap
//! a reader accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timely_kafka::protocol::{
    framing, Framed, PartitionEpochs, RecordHeaders, MAX_EPOCH_GAP, MAX_OPEN_EPOCHS,
};

/// Header names a record can carry: the protocol's, and one it ignores.
const NAMES: [&str; 4] = ["velib-epoch", "velib-attempt", "velib-kind", "other"];

fuzz_target!(|data: &[u8]| {
    let mut partition = PartitionEpochs::<usize>::new();
    // Records are separated by 0xff; in each, bytes before 0xfe are
    // headers (a name's index, then its value up to the next 0xfd), after
    // it the value.
    for (i, record) in data.split(|b| *b == 0xff).enumerate() {
        let (head, value) = match record.iter().position(|b| *b == 0xfe) {
            Some(at) => (&record[..at], Some(&record[at + 1..])),
            None => (record, None),
        };
        let headers: Vec<(&str, Option<&[u8]>)> = head
            .split(|b| *b == 0xfd)
            .filter_map(|h| {
                let (name, value) = h.split_first()?;
                Some((NAMES[usize::from(*name) % NAMES.len()], Some(value)))
            })
            .collect();
        let before = partition.passed();
        match framing(&RecordHeaders::new(headers), value) {
            Ok(Framed::Data(stamp)) => {
                if partition.check_data(&stamp).is_ok() && !partition.is_full_for(&stamp) {
                    partition.data(stamp, i);
                }
            }
            Ok(Framed::Marker(marker)) => {
                if partition.check_marker(&marker).is_ok() {
                    partition.marker(&marker);
                }
            }
            Ok(Framed::Unframed) | Err(_) => {}
        }
        if let (Some(before), Some(after)) = (before, partition.passed()) {
            assert!(after >= before, "a partition never goes back");
            assert!(after - before <= MAX_EPOCH_GAP, "nor jumps beyond the gap");
        }
        assert!(partition.held() <= MAX_OPEN_EPOCHS);
    }
});
