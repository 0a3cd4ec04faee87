//! Decoding the status topic: from a Kafka record's bytes to the dataflow's
//! update, as the aggregator's source does it for every record.
//!
//! ```sh
//! cargo bench --bench decoding
//! ```
//!
//! The records are what the producer writes for the recorded Vélib' feed
//! (1,485 stations): key `station_key`, value `station_value` (the feed's
//! own station object plus the normalised status). Each iteration decodes
//! all of them with `StationStatusDecoder` and maps each status to the
//! `StationCounts` the dataflow takes. Throughput is in records per second.

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use velib_dataflow::counts::StationCounts;
use velib_dataflow::feed::payload;
use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder};
use velib_dataflow::station_records::{station_key, station_value, StationStatusDecoder};

const STATUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gbfs/velib/2024-11-19/station_status.json"
);

/// The producer's records for the recorded feed: `(key, value)`.
fn records() -> Vec<(Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(STATUS).expect("the recorded feed is there");
    let (status, _) = payload::parse_status(&bytes).expect("the recorded feed parses");
    let objects = payload::station_objects(&bytes).expect("its stations are objects");
    status
        .stations
        .iter()
        .zip(&objects)
        .map(|(s, fields)| {
            (
                station_key(&s.station_id),
                station_value(Some(fields), 42, s),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let records = records();
    let mut group = c.benchmark_group("status_records");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_to_station_counts", |b| {
        b.iter(|| {
            for (offset, (key, value)) in records.iter().enumerate() {
                let record = RawRecord {
                    topic: "velib-projet",
                    partition: 0,
                    offset: offset as i64,
                    key: Some(key),
                    value: Some(value),
                };
                let (id, status) = StationStatusDecoder.decode(&record).expect("it decodes");
                black_box((id, status.as_ref().map(StationCounts::of_station)));
            }
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
