//! Recorded series replayed epoch by epoch: at every epoch the incremental
//! output equals a from-scratch computation on that snapshot, with 1 worker,
//! 2 workers, and 2 workers exchanging serialised data (`-z`).

mod common;

use std::io::Write;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::feed::gbfs;
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::recorded::snapshot_files;
use velib_dataflow::snapshot::Snapshot;

/// Oslo has no postcodes: give its stations synthetic ones by id (some left
/// out, to be inferred from the nearest station), as a user's table would.
fn oslo_series() -> Vec<Snapshot> {
    let oslo = common::fixtures().join("gbfs/oslo");
    let info =
        gbfs::parse_information(&std::fs::read(oslo.join("station_information.json")).unwrap())
            .unwrap();
    let mut csv = tempfile::NamedTempFile::new().unwrap();
    writeln!(csv, "stationCode,station_id,postcode").unwrap();
    for (i, s) in info.stations.iter().enumerate() {
        let postcode = if i % 7 == 3 {
            String::new()
        } else {
            format!("0{}", 150 + i % 23)
        };
        writeln!(csv, ",{},{postcode}", s.station_id).unwrap();
    }
    let table = PostcodeTable::from_path(csv.path()).unwrap();
    let resolver = DirectoryResolver::new(table, true);
    let files: Vec<_> = snapshot_files(&[oslo.join("series")])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(files.len(), 9);
    files
        .iter()
        .map(|f| {
            let status = gbfs::parse_status(&std::fs::read(f).unwrap()).unwrap();
            let directory = resolver.resolve(&info.stations, &status.stations);
            Snapshot {
                feed_time: status.feed_time,
                feed_time_kind: status.feed_time_kind,
                statuses: status.stations,
                directory: Some(directory),
            }
        })
        .collect()
}

#[test]
fn paris_series_matches_from_scratch_at_every_epoch() {
    let epochs = common::sequence(common::paris_series(true));
    // 10 polls, two byte-identical to the one before: 8 epochs.
    assert_eq!(epochs.len(), 8);
    assert!(
        epochs[0].1.values().any(|c| c.counts.stations_inferred > 0),
        "inference is exercised"
    );
    for (label, config) in common::configs() {
        common::assert_matches_reference(label, config, &epochs);
    }
}

#[test]
fn paris_series_without_inference_matches_from_scratch() {
    let epochs = common::sequence(common::paris_series(false));
    assert!(epochs[0].1.keys().any(|p| p.is_unknown()));
    common::assert_matches_reference("1 worker, no inference", timely::Config::thread(), &epochs);
}

#[test]
fn oslo_series_matches_from_scratch_at_every_epoch() {
    let epochs = common::sequence(oslo_series());
    assert_eq!(epochs.len(), 9);
    for (label, config) in common::configs() {
        common::assert_matches_reference(label, config, &epochs);
    }
}

#[test]
fn sum_over_postcodes_is_sum_over_stations() {
    for snapshot in common::paris_series(true) {
        let by_postcode = velib_dataflow::reference::postcode_counts_from_scratch(
            &snapshot.statuses,
            snapshot.directory.as_deref().unwrap(),
        );
        let bikes: i64 = by_postcode
            .values()
            .map(|c| c.counts.bikes + c.counts.bikes_unavailable)
            .sum();
        let stations: i64 = by_postcode.values().map(|c| c.counts.stations).sum();
        let raw: i64 = snapshot
            .statuses
            .iter()
            .map(|s| i64::from(s.bikes_available))
            .sum();
        assert_eq!((bikes, stations), (raw, snapshot.statuses.len() as i64));
    }
}
