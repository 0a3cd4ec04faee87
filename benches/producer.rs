//! The producer's work per poll, without the network or Kafka: parse the
//! Vélib' status payload (1,485 stations), pick each station's own JSON,
//! assemble the snapshot with its directory, sequence it against the last
//! one, and encode the epoch's records.
//!
//! ```sh
//! cargo bench --bench producer
//! ```
//!
//! Two cases: a poll where 1 % of the stations changed (15 records to
//! publish), and a poll identical to the last (nothing to publish).

use criterion::{Criterion, Throughput};
use std::collections::HashMap;
use std::hint::black_box;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::feed::payload;
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::producer::epoch_records;
use velib_dataflow::snapshot::{Snapshot, SnapshotSequencer, StationSelection};

const STATUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gbfs/velib/2024-11-19/station_status.json"
);

/// The status payload at `time`, with `changed` stations one bike fewer
/// (or more, when they have none) than in the recording.
fn payload_at(time: i64, changed: usize, direction: i64) -> Vec<u8> {
    let mut status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(STATUS).unwrap()).unwrap();
    status["lastUpdatedOther"] = time.into();
    let stations = status["data"]["stations"].as_array_mut().unwrap();
    let step = stations.len() / changed.max(1);
    for station in stations.iter_mut().step_by(step).take(changed) {
        let docks = station["num_docks_available"].as_i64().unwrap();
        station["num_docks_available"] = (docks + direction).max(0).into();
    }
    serde_json::to_vec(&status).unwrap()
}

/// One poll's work, as `FeedPoller::poll` and the producer do it.
fn poll(sequencer: &mut SnapshotSequencer, resolver: &DirectoryResolver, bytes: &[u8]) -> usize {
    let (status, _) = payload::parse_status(bytes).unwrap();
    let objects = payload::station_objects(bytes).unwrap();
    let fields: HashMap<_, _> = status
        .stations
        .iter()
        .map(|s| s.station_id.clone())
        .zip(objects)
        .collect();
    let snapshot = Snapshot::assemble(status, None, resolver, &StationSelection::all());
    match sequencer.advance(snapshot).unwrap() {
        Some(updates) => epoch_records(&updates, &fields).len(),
        None => 0,
    }
}

fn bench(c: &mut Criterion) {
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
    let base = 1_732_004_538;
    // Alternate between two payloads 15 stations apart: every poll is an
    // epoch of 15 changes.
    let a = payload_at(base, 15, 1);
    let b = payload_at(base, 15, -1);
    let mut group = c.benchmark_group("producer_poll");
    group.throughput(Throughput::Bytes(a.len() as u64));
    group.bench_function("1% of 1,485 stations changed", |bencher| {
        let mut sequencer = SnapshotSequencer::new();
        poll(&mut sequencer, &resolver, &a);
        let mut flip = false;
        bencher.iter(|| {
            flip = !flip;
            let records = poll(&mut sequencer, &resolver, if flip { &b } else { &a });
            black_box(records)
        });
    });
    group.bench_function("identical snapshot", |bencher| {
        let mut sequencer = SnapshotSequencer::new();
        poll(&mut sequencer, &resolver, &a);
        bencher.iter(|| black_box(poll(&mut sequencer, &resolver, &a)));
    });
    group.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
