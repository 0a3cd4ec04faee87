//! Every feed parser, on arbitrary bytes: an error is fine, a panic is not,
//! and whatever is accepted must be internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use gbfs_feed::{gbfs, opendata_paris, payload};

fuzz_target!(|data: &[u8]| {
    let _ = gbfs::parse_discovery(data);
    if let Ok(status) = gbfs::parse_status(data) {
        assert!(!status.stations.is_empty(), "an empty snapshot is an outage");
        let mut ids: Vec<_> = status.stations.iter().map(|s| &s.station_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), status.stations.len(), "station ids are unique");
    }
    if let Ok(info) = gbfs::parse_information(data) {
        for s in &info.stations {
            let p = s.position.expect("GBFS information has positions");
            assert!(p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0);
        }
    }
    let _ = opendata_paris::parse(data);
    // The producer keeps each station's own object next to its status.
    if let (Ok((status, _)), Some(objects)) =
        (payload::parse_status(data), payload::station_objects(data))
    {
        assert_eq!(status.stations.len(), objects.len());
    }
});
