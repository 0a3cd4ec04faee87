//! The epoch writer on a real Apache Kafka broker, read back with kcat at
//! read_committed: each epoch's records then one marker per partition,
//! nothing of an aborted try, and records outside any epoch on their own
//! topic.

// The workspace's broker harness, shared with the root's tests.
#[allow(dead_code)]
#[path = "../../../tests/common/broker.rs"]
mod broker;

use broker::{header, Broker};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use timely_kafka::epoch_writer::EpochWriter;
use timely_kafka::protocol::{EpochMarker, ATTEMPT_HEADER, MARKER_KEY, MARKER_KIND};
use timely_kafka::{KafkaConfig, KafkaError, EPOCH_HEADER, KIND_HEADER};

const EVENTS: &str = "writer-events";
const SNAPSHOTS: &str = "writer-snapshots";
const REJECTED: &str = "writer-rejected";

fn is_marker(record: &Value) -> bool {
    header(record, KIND_HEADER) == Some(MARKER_KIND)
}

fn text(record: &Value, field: &str) -> String {
    record[field].as_str().unwrap_or_default().to_owned()
}

/// Sends `count` records of `label` to each topic, keys `<label>-<i>`.
fn send_some(
    epoch: &timely_kafka::epoch_writer::EpochRecords<'_>,
    label: &str,
    count: usize,
) -> Result<(), RdKafkaError> {
    for i in 0..count {
        let key = format!("{label}-{i}");
        epoch.send(EVENTS, key.as_bytes(), Some(label.as_bytes()))?;
        epoch.send(SNAPSHOTS, key.as_bytes(), Some(label.as_bytes()))?;
    }
    Ok(())
}

#[test]
fn epochs_are_their_records_then_a_marker_per_partition_and_aborted_tries_leave_nothing() {
    let broker = Broker::shared();
    broker.create_topics(&[
        (EVENTS, 3, &[]),
        (SNAPSHOTS, 2, &[("cleanup.policy", "compact")]),
        (REJECTED, 1, &[]),
    ]);
    let kafka = KafkaConfig::new(&broker.address);
    let mut writer = EpochWriter::connect(
        &kafka,
        "epoch-writer-test",
        &[EVENTS, SNAPSHOTS],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    assert_eq!(
        writer.partitions(),
        [(EVENTS.to_owned(), 3), (SNAPSHOTS.to_owned(), 2)]
    );

    let expected_first = writer.next_attempt();
    let first = writer
        .write_epoch(1, Some(1000), |epoch| send_some(epoch, "first", 12))
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    assert_eq!(first.attempt, expected_first);
    assert_eq!(first.feed_time, Some(1000));

    // A try whose caller fails after sending: aborted, its records never
    // visible, and the error names the epoch, the topics and the attempt.
    let aborted_attempt = writer.next_attempt();
    let error = writer
        .write_epoch(2, Some(2000), |epoch| {
            send_some(epoch, "aborted", 12)?;
            // Failing later than at once: librdkafka has sent the records
            // by then (an abort purges those still queued), so that they
            // are on the log, aborted, which is what read_committed hides.
            std::thread::sleep(Duration::from_secs(1));
            // What a caller's own failure looks like to librdkafka.
            Err(RdKafkaError::MessageProduction(
                RDKafkaErrorCode::Application,
            ))
        })
        .unwrap_err();
    let KafkaError::Client { context, .. } = &error else {
        panic!("a client error: {error:?}");
    };
    assert!(
        context.contains(&format!("epoch 2 to {EVENTS} and {SNAPSHOTS}"))
            && context.contains(&aborted_attempt),
        "{context}"
    );
    assert!(!error.is_fatal(), "{error}");

    // Records the writer refuses abort their try too: one to a topic it
    // does not mark, one under the markers' key.
    let refused_attempt = writer.next_attempt();
    let to_unmarked = writer.write_epoch(2, Some(2000), |epoch| {
        send_some(epoch, "refused", 3)?;
        epoch.send(REJECTED, b"k", Some(b"v"))
    });
    assert!(to_unmarked.is_err(), "a record no marker would release");
    let as_marker = writer.write_epoch(2, Some(2000), |epoch| {
        epoch.send(EVENTS, MARKER_KEY.as_bytes(), Some(b"forged"))
    });
    assert!(as_marker.is_err(), "a record under the markers' key");

    let second = writer
        .write_epoch(2, Some(2000), |epoch| send_some(epoch, "second", 12))
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    let tries: BTreeSet<&str> = [
        first.attempt.as_str(),
        &aborted_attempt,
        &refused_attempt,
        &second.attempt,
    ]
    .into_iter()
    .collect();
    assert_eq!(tries.len(), 4, "a new attempt id per try: {tries:?}");

    // Outside any epoch: on a topic of its own, never on an epoch topic.
    writer
        .write_outside_epochs(|out| {
            out.send(
                BaseRecord::<str, str>::to(REJECTED)
                    .key("raw")
                    .payload("as it came"),
            )
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    let error = writer
        .write_outside_epochs(|out| {
            out.send(
                BaseRecord::<str, str>::to(EVENTS)
                    .key("raw")
                    .payload("unframed"),
            )
        })
        .unwrap_err();
    assert!(error.to_string().contains(EVENTS), "{error}");

    let epochs = [(&first, "first"), (&second, "second")];
    for (topic, partitions) in [(EVENTS, 3), (SNAPSHOTS, 2)] {
        let records = broker.kcat_read(topic);
        let mut markers: BTreeMap<(i64, String), Vec<EpochMarker>> = BTreeMap::new();
        let mut last_data: BTreeMap<(i64, String), i64> = BTreeMap::new();
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for record in &records {
            let partition = record["partition"].as_i64().unwrap();
            let offset = record["offset"].as_i64().unwrap();
            let epoch = header(record, EPOCH_HEADER).unwrap_or("none").to_owned();
            let attempt = header(record, ATTEMPT_HEADER).unwrap_or("none").to_owned();
            if is_marker(record) {
                assert_eq!(text(record, "key"), MARKER_KEY);
                let marker: EpochMarker = serde_json::from_str(&text(record, "payload")).unwrap();
                assert_eq!(
                    (marker.epoch.to_string(), &marker.attempt),
                    (epoch, &attempt)
                );
                // After every record of its epoch on its partition.
                let before = last_data.get(&(partition, attempt.clone()));
                assert!(
                    before.is_none_or(|b| *b < offset),
                    "{topic}/{partition}: the marker at {offset} follows its records ({before:?})"
                );
                markers
                    .entry((partition, marker.attempt.clone()))
                    .or_default()
                    .push(marker);
            } else {
                assert!(
                    !markers.contains_key(&(partition, attempt.clone())),
                    "{topic}/{partition}: a record at {offset} after its epoch's marker"
                );
                last_data.insert((partition, attempt.clone()), offset);
                keys.entry(attempt).or_default().insert(text(record, "key"));
            }
        }
        for (marker, label) in epochs {
            let expected: BTreeSet<String> = (0..12).map(|i| format!("{label}-{i}")).collect();
            assert_eq!(
                keys.get(&marker.attempt),
                Some(&expected),
                "{topic}: epoch {}'s records",
                marker.epoch
            );
            for partition in 0..partitions {
                assert_eq!(
                    markers.get(&(partition, marker.attempt.clone())),
                    Some(&vec![marker.clone()]),
                    "{topic}/{partition}: one marker of epoch {}",
                    marker.epoch
                );
            }
        }
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            {
                let mut committed = vec![&first.attempt, &second.attempt];
                committed.sort();
                committed
            },
            "{topic}: only the committed tries' records are visible"
        );
        assert_eq!(
            records.len(),
            24 + 2 * partitions as usize,
            "{topic}: nothing else"
        );
    }

    // The aborted try's records were written, and aborted: shown only to a
    // reader at read_uncommitted.
    let shown = broker.kcat_read_uncommitted(EVENTS);
    assert!(
        shown
            .iter()
            .any(|r| header(r, ATTEMPT_HEADER) == Some(aborted_attempt.as_str())),
        "the aborted try's records reached the log"
    );

    let rejected = broker.kcat_read(REJECTED);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(text(&rejected[0], "payload"), "as it came");
    assert_eq!(header(&rejected[0], EPOCH_HEADER), None);
}

#[test]
fn completing_markers_writes_only_the_marker_where_it_is_missing() {
    const TOPIC: &str = "writer-completed";
    let broker = Broker::shared();
    broker.create_topics(&[(TOPIC, 2, &[])]);
    let kafka = KafkaConfig::new(&broker.address);
    let mut writer = EpochWriter::connect(
        &kafka,
        "epoch-writer-completing",
        &[TOPIC],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    let attempt = writer.next_attempt();
    // As another run's attempt left it: visible on partition 0 only.
    let marker = EpochMarker {
        epoch: 4,
        attempt: "an-earlier-run.9".into(),
        feed_time: Some(4000),
    };
    writer
        .complete_markers(&marker, &[(TOPIC.to_owned(), 1)])
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    assert_eq!(writer.next_attempt(), attempt, "not a try of this writer's");

    let records = broker.kcat_read(TOPIC);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["partition"], 1);
    assert!(is_marker(&records[0]));
    let written: EpochMarker = serde_json::from_str(&text(&records[0], "payload")).unwrap();
    assert_eq!(written, marker);
}
