//! The Kafka sink on a real broker: the Paris series through the dataflow
//! into a compacted topic, read back with kcat (read_committed). Each epoch
//! holds exactly one record per changed postcode, equal to a from-scratch
//! computation, then one progress record per partition.

mod common;

use common::broker::Broker;
use differential_dataflow::input::Input;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use timely::dataflow::operators::Probe;
use velib_dataflow::dataflow::{postcode_counts, Epoch};
use velib_dataflow::kafka::sink::{kafka_sink, SinkConfig, SinkHandle};
use velib_dataflow::kafka::topics::{ensure_topics, TopicOutcome, TopicSpec};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::output::{PostcodeRecord, PostcodeRecordEncoder};
use velib_dataflow::snapshot::EpochUpdates;

const TOPIC: &str = "velib-projet-clean";

/// Runs `epochs` through the dataflow into the sink; returns the last
/// committed epoch and the sink's error, if any.
fn run_into_sink(kafka: KafkaConfig, epochs: Vec<EpochUpdates>) -> (Option<Epoch>, Option<String>) {
    timely::execute_directly(move |worker| {
        let encoder = PostcodeRecordEncoder::default();
        let handle = SinkHandle::default();
        let config = SinkConfig::new(kafka, TOPIC, "velib-sink-test");
        let (sink_encoder, sink_handle) = (encoder.clone(), handle.clone());
        let (mut statuses, mut directory, probe) = worker.dataflow::<Epoch, _, _>(move |scope| {
            let (statuses, status_collection) = scope.new_collection();
            let (directory, directory_collection) = scope.new_collection();
            let counts = postcode_counts(status_collection, directory_collection);
            let committed = kafka_sink(
                counts,
                config,
                sink_encoder,
                |e| serde_json::json!({ "source": e }),
                sink_handle,
            );
            let (probe, _) = committed.probe();
            (statuses, directory, probe)
        });
        for updates in epochs {
            let epoch = updates.epoch;
            encoder
                .feed_times()
                .borrow_mut()
                .insert(epoch, updates.feed_time);
            statuses.advance_to(epoch);
            directory.advance_to(epoch);
            for (row, diff) in updates.statuses {
                statuses.update(row, diff);
            }
            for (row, diff) in updates.directory {
                directory.update(row, diff);
            }
            statuses.advance_to(epoch + 1);
            directory.advance_to(epoch + 1);
            statuses.flush();
            directory.flush();
            while probe.less_than(&(epoch + 1)) {
                worker.step();
            }
        }
        (handle.committed(), handle.error())
    })
}

fn header<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    let headers = record["headers"].as_array()?;
    headers
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv[1].as_str())
}

#[test]
fn paris_series_lands_on_the_topic_exactly_once_per_changed_postcode() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.address);
    let outcome = ensure_topics(
        &kafka,
        &[TopicSpec::new(TOPIC, 3).compacted()],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    assert_eq!(outcome, vec![(TOPIC.to_string(), TopicOutcome::Created)]);
    // A second start finds it and says so.
    let again = ensure_topics(
        &kafka,
        &[TopicSpec::new(TOPIC, 3).compacted()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        again,
        vec![(TOPIC.to_string(), TopicOutcome::Exists { partitions: 3 })]
    );

    let epochs = common::sequence(common::paris_series(true));
    let (committed, error) = run_into_sink(kafka, epochs.iter().map(|(u, _)| u.clone()).collect());
    assert_eq!(error, None, "{}", broker.log());
    assert_eq!(committed, Some(epochs.len() as Epoch));

    let records = broker.kcat_read(TOPIC);
    let mut by_epoch: BTreeMap<Epoch, Vec<&Value>> = BTreeMap::new();
    let mut progress: BTreeMap<Epoch, Vec<i64>> = BTreeMap::new();
    for record in &records {
        let epoch: Epoch = header(record, "velib-epoch")
            .expect("every record has its epoch")
            .parse()
            .unwrap();
        if header(record, "velib-kind") == Some("progress") {
            let value: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
            assert_eq!(value["epoch"], epoch);
            assert_eq!(value["progress"]["source"], epoch);
            progress
                .entry(epoch)
                .or_default()
                .push(record["partition"].as_i64().unwrap());
        } else {
            by_epoch.entry(epoch).or_default().push(record);
        }
    }
    let mut previous = common::State::new();
    for (updates, expected) in &epochs {
        let epoch = updates.epoch;
        let mut partitions = progress.remove(&epoch).unwrap_or_default();
        partitions.sort();
        assert_eq!(
            partitions,
            vec![0, 1, 2],
            "epoch {epoch}: one progress record per partition"
        );
        let mut written: BTreeMap<String, Value> = BTreeMap::new();
        for record in by_epoch.remove(&epoch).unwrap_or_default() {
            let key = record["key"].as_str().unwrap().to_owned();
            assert!(
                written
                    .insert(key.clone(), record["payload"].clone())
                    .is_none(),
                "epoch {epoch}: {key} written twice"
            );
        }
        let changed: Vec<String> = expected
            .keys()
            .chain(previous.keys())
            .filter(|p| expected.get(*p) != previous.get(*p))
            .map(|p| p.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            written.keys().cloned().collect::<Vec<_>>(),
            changed,
            "epoch {epoch}: exactly the changed postcodes"
        );
        for (postcode, payload) in written {
            let want = expected.iter().find(|(p, _)| p.as_str() == postcode);
            match want {
                Some((p, counts)) => {
                    let got: PostcodeRecord =
                        serde_json::from_str(payload.as_str().unwrap()).unwrap();
                    assert_eq!(
                        got,
                        PostcodeRecord::new(p, counts, epoch, updates.feed_time)
                    );
                }
                None => assert!(
                    payload.is_null(),
                    "epoch {epoch}: {postcode} is a tombstone"
                ),
            }
        }
        previous = expected.clone();
    }
    assert!(
        by_epoch.is_empty() && progress.is_empty(),
        "nothing outside the epochs"
    );
}

#[test]
fn existing_topics_are_found_even_where_the_broker_hides_their_settings() {
    // Nisshi answers DescribeConfigs with no entries: the compaction check
    // cannot be made there (it is unit-tested in `kafka::topics`), and must
    // not block the job.
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.address);
    let created = ensure_topics(
        &kafka,
        &[TopicSpec::new("plain", 2)],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(created, vec![("plain".to_string(), TopicOutcome::Created)]);
    let checked = ensure_topics(
        &kafka,
        &[TopicSpec::new("plain", 1).compacted()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        checked,
        vec![("plain".to_string(), TopicOutcome::Exists { partitions: 2 })]
    );
}

#[test]
fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kafka = KafkaConfig::new(format!("127.0.0.1:{port}"));
    let e = ensure_topics(&kafka, &[TopicSpec::new("t", 1)], Duration::from_secs(3))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}
