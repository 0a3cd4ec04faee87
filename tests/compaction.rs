//! Compaction for real: Apache Kafka's log cleaner is made to run on the
//! directory and output topics (tiny segments, no compaction lag), kcat
//! shows that it removed old markers and progress records, and then a fresh
//! aggregator, a fresh producer recovery and a fresh reader of the output
//! each reconstruct exactly the reference state.

mod common;

use common::broker::Broker;
use common::epochs::{by_id, epoch_records, ScriptedEpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC};
use common::output::{assert_epochs_on_topic, header};
use common::State;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorHandle};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::directory::DirectoryEntry;
use velib_dataflow::feed::{StationId, StationStatus};
use velib_dataflow::kafka::progress::OutputEpochs;
use velib_dataflow::kafka::recovery::recover;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::output::PostcodeRecord;
use velib_dataflow::snapshot::EpochUpdates;

const DEAD: &str = "velib-projet-dead-letters";

/// Topic settings that make the cleaner compact everything but the active
/// segment within a second or so.
const AGGRESSIVE: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.ms", "100"),
    ("segment.bytes", "1048576"),
    ("min.cleanable.dirty.ratio", "0.001"),
    ("min.compaction.lag.ms", "0"),
    ("delete.retention.ms", "100"),
    ("file.delete.delay.ms", "100"),
];

/// How a test topic is cleaned.
#[derive(Clone, Copy, PartialEq)]
enum Cleanup {
    Delete,
    /// Compacted, with the broker's default cleaner settings (hours).
    Compact,
    /// Compacted within a second or so.
    Aggressive,
}

fn create(broker: &Broker, topics: &[(&str, Cleanup)]) {
    let specs: Vec<common::broker::TopicToCreate<'_>> = topics
        .iter()
        .map(|(name, cleanup)| {
            let configs: &[(&str, &str)] = match cleanup {
                Cleanup::Delete => &[],
                Cleanup::Compact => &[("cleanup.policy", "compact")],
                Cleanup::Aggressive => AGGRESSIVE,
            };
            (*name, 3, configs)
        })
        .collect();
    broker.create_topics(&specs);
}

type Running = (
    AggregatorHandle,
    std::thread::JoinHandle<Result<(), velib_dataflow::aggregator::AggregatorError>>,
);

fn start_aggregator(broker: &Broker, output: &str) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    config.output_topic = output.to_owned();
    config.dead_letter_topic = Some(DEAD.to_owned());
    config.transactional_id = format!("test-aggregator-{output}");
    let handle = AggregatorHandle::default();
    let running = handle.clone();
    let thread = std::thread::spawn(move || run(timely::Config::thread(), config, running));
    (handle, thread)
}

/// Waits for the aggregator to commit the last epoch and stops it; returns
/// how many records it applied without their own epoch's marker.
fn finish(broker: &Broker, output: &str, last: Epoch, (handle, thread): Running) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    while handle.committed() != Some(last) {
        assert!(
            Instant::now() < deadline,
            "{output}: epoch {last} not committed ({:?})\n{}",
            handle.committed(),
            broker.log_tail()
        );
        if thread.is_finished() {
            panic!("the aggregator stopped early: {:?}", thread.join());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let compacted = handle.source_stats().compacted;
    handle.stop();
    thread
        .join()
        .unwrap()
        .expect("the aggregator stops cleanly");
    compacted
}

/// Every station's status and directory entry after all `epochs`.
fn final_state(
    epochs: &[(EpochUpdates, State)],
) -> (
    BTreeMap<StationId, StationStatus>,
    BTreeMap<StationId, DirectoryEntry>,
) {
    let mut statuses = BTreeMap::new();
    let mut directory = BTreeMap::new();
    for (updates, _) in epochs {
        for (status, diff) in &updates.statuses {
            if *diff < 0 {
                statuses.remove(&status.station_id);
            }
        }
        for (status, diff) in &updates.statuses {
            if *diff > 0 {
                statuses.insert(status.station_id.clone(), status.clone());
            }
        }
        for (entry, diff) in &updates.directory {
            if *diff < 0 {
                directory.remove(&entry.station_id);
            }
        }
        for (entry, diff) in &updates.directory {
            if *diff > 0 {
                directory.insert(entry.station_id.clone(), entry.clone());
            }
        }
    }
    (statuses, directory)
}

/// How many records of `kind` (`marker` or `progress`) each partition holds.
fn count_kind(records: &[Value], kind: &str) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        if header(r, "velib-kind") == Some(kind) {
            *counts.entry(r["partition"].as_i64().unwrap()).or_default() += 1;
        }
    }
    counts
}

/// Waits until the cleaner has left at most three of the `written` records
/// of `kind` on each partition of `topic` (the latest of the cleaned part,
/// and those in the active segment), and returns what kcat then reads.
fn wait_for_cleaner(broker: &Broker, topic: &str, kind: &str, written: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = broker.kcat_read(topic);
        let counts = count_kind(&records, kind);
        if counts.len() == 3 && counts.values().all(|n| *n <= 3) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: the cleaner left {counts:?} {kind} records of {written} per partition\n{}",
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_compacted_directory_and_output_are_read_back_exactly() {
    let broker = Broker::start();
    create(
        &broker,
        &[
            (STATUS_TOPIC, Cleanup::Delete),
            (DIRECTORY_TOPIC, Cleanup::Aggressive),
            ("out-before", Cleanup::Aggressive),
            ("out-after", Cleanup::Compact),
            (DEAD, Cleanup::Delete),
        ],
    );
    let epochs = common::sequence(common::paris_series(true));
    // Two more epochs close nothing but their markers, so that every
    // segment holding the series is rolled and can be cleaned.
    let last = epochs.len() as Epoch + 2;
    let topics = [(STATUS_TOPIC, 3), (DIRECTORY_TOPIC, 3)];
    // The first aggregator follows the series as it is written, on an
    // output topic the cleaner then compacts.
    let first = start_aggregator(&broker, "out-before");
    let writer = ScriptedEpochWriter::new(&broker.address, "attempt-1", &topics);
    let feed_time = epochs.last().unwrap().0.feed_time;
    for epoch in 1..=last {
        match epochs.get(epoch as usize - 1) {
            Some((updates, _)) => writer.write_epoch(
                updates.epoch,
                updates.feed_time,
                &epoch_records(updates, true, &by_id(3)),
            ),
            None => writer.write_epoch(epoch, feed_time + epoch as i64, &[]),
        }
        // Past segment.ms, so that the next epoch, on the input and on the
        // output, rolls a new segment: all but the last can be cleaned.
        std::thread::sleep(Duration::from_millis(300));
    }
    finish(&broker, "out-before", last, first);
    let directory = wait_for_cleaner(&broker, DIRECTORY_TOPIC, "marker", last as usize);
    // Old epochs' directory entries survived their markers.
    let old_entries = directory
        .iter()
        .filter(|r| header(r, "velib-kind").is_none() && header(r, "velib-epoch") == Some("1"))
        .count();
    assert!(
        old_entries > 1000,
        "epoch 1's directory entries are still there: {old_entries}"
    );

    // A fresh aggregator: it starts at the last epoch the compacted
    // directory holds exactly, with the whole state, and writes exactly the
    // reference state of that epoch.
    let fresh = start_aggregator(&broker, "out-after");
    let compacted = finish(&broker, "out-after", last, fresh);
    assert!(
        compacted > 1000,
        "directory entries applied without their markers: {compacted}"
    );
    let (_, last_state) = epochs.last().unwrap().clone();
    let at_last = EpochUpdates {
        epoch: last,
        feed_time: feed_time + last as i64,
        statuses: Vec::new(),
        directory: Vec::new(),
    };
    assert_epochs_on_topic(
        &broker.kcat_read("out-after"),
        &[(at_last, last_state.clone())],
    );

    // A fresh producer's recovery.
    let kafka = KafkaConfig::new(&broker.address);
    let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    let recovered = recover(&kafka, &topics, DIRECTORY_TOPIC, Duration::from_secs(30)).unwrap();
    assert_eq!(recovered.last.as_ref().map(|m| m.epoch), Some(last));
    let (statuses, directory) = final_state(&epochs);
    let by_id = |s: &StationStatus| s.station_id.clone();
    assert_eq!(
        recovered
            .statuses
            .iter()
            .map(|s| (by_id(s), s.clone()))
            .collect::<BTreeMap<_, _>>(),
        statuses
    );
    assert_eq!(
        recovered
            .directory
            .iter()
            .map(|d| (d.station_id.clone(), d.clone()))
            .collect::<BTreeMap<_, _>>(),
        directory
    );

    // A fresh reader of the first aggregator's output, once compacted.
    let output = wait_for_cleaner(&broker, "out-before", "progress", last as usize);
    let mut reader = OutputEpochs::new(3);
    for r in &output {
        let epoch: Epoch = header(r, "velib-epoch").unwrap().parse().unwrap();
        if header(r, "velib-kind") == Some("progress") {
            reader.progress(r["partition"].as_i64().unwrap() as i32, epoch);
        } else {
            reader.record(
                epoch,
                (r["key"].as_str().unwrap().to_owned(), r["payload"].clone()),
            );
        }
    }
    assert_eq!(reader.complete_through(), Some(last));
    let mut state: BTreeMap<String, PostcodeRecord> = BTreeMap::new();
    for (_, records) in reader.complete() {
        for (key, payload) in records {
            match payload.as_str() {
                Some(text) => {
                    state.insert(key, serde_json::from_str(text).unwrap());
                }
                None => {
                    state.remove(&key);
                }
            }
        }
    }
    let expected: BTreeMap<String, PostcodeRecord> = last_state
        .iter()
        .map(|(p, counts)| {
            let got = state.get(p.as_str());
            let (epoch, feed_time) = got.map_or((0, 0), |r| (r.epoch, r.feed_time));
            (
                p.to_string(),
                PostcodeRecord::new(p, counts, epoch, feed_time),
            )
        })
        .collect();
    assert_eq!(state, expected);
}
