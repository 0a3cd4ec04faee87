//! The aggregator on librdkafka's mock cluster, with faults: every broker
//! down when it starts, then request errors on fetch, produce and metadata.
//! Its output must be what it is without faults: every epoch equal to a
//! from-scratch computation, each changed postcode written once.

mod common;

use common::epochs::{by_id, epoch_records, ScriptedEpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC};
use common::output::assert_epochs_on_topic;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::process::Command;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorHandle};
use velib_dataflow::kafka::source::Framing;
use velib_dataflow::kafka::KafkaConfig;

const OUTPUT: &str = "velib-projet-clean";
const DEAD: &str = "velib-projet-dead-letters";

/// The output topic, read committed by kcat.
fn output(address: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kcat")
        .args(["-b", address, "-C", "-t", OUTPUT, "-e", "-q", "-J"])
        .args(["-X", "isolation.level=read_committed"])
        .output()
        .expect("kcat runs");
    common::json_lines("kcat", &out)
}

/// Runs the aggregator, calls `meanwhile` once it is started, and stops it
/// once `last` is committed; fails if it stops first or takes over two
/// minutes (a bound on a hang, not a timing).
fn run_until_committed(
    timely: timely::Config,
    config: AggregatorConfig,
    last: u64,
    meanwhile: impl FnOnce(),
) {
    let handle = AggregatorHandle::default();
    let running = handle.clone();
    let thread = std::thread::spawn(move || run(timely, config, running));
    meanwhile();
    let deadline = Instant::now() + Duration::from_secs(120);
    while handle.committed() != Some(last) {
        assert!(
            Instant::now() < deadline && !thread.is_finished(),
            "the aggregator did not get to epoch {last}: committed {:?}",
            handle.committed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    handle.stop();
    thread
        .join()
        .unwrap()
        .expect("the aggregator stops cleanly");
}

/// librdkafka gives up on the sink's producer while it commits an epoch
/// (`INVALID_TXN_STATE` on `EndTxn`: a fatal error), after the epoch's
/// records and progress records were sent. The sink replaces the producer
/// and looks at the output's last progress before writing the epoch again:
/// the mock cluster shows what was sent, so the epoch counts as written,
/// and is not written twice.
#[test]
fn a_commit_the_producer_fails_in_is_settled_not_written_twice() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
    let address = mock.bootstrap_servers();
    for (topic, partitions) in [(STATUS_TOPIC, 3), (OUTPUT, 3), (DEAD, 1)] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let epochs = common::sequence(common::paris_series(true));
    let writer = ScriptedEpochWriter::new(&address, "attempt-1", &[(STATUS_TOPIC, 3)]);
    for (updates, _) in &epochs {
        let records: Vec<_> = epoch_records(updates, true, &by_id(3))
            .into_iter()
            .filter(|r| r.topic == STATUS_TOPIC)
            .collect();
        writer.write_epoch(updates.epoch, updates.feed_time, &records);
    }
    drop(writer);
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE],
    );
    let mut config = AggregatorConfig::new(KafkaConfig::new(&address));
    config.framing = Some(Framing::Epochs);
    config.directory_topic = None;
    config.dead_letter_topic = Some(DEAD.into());
    config.state_topic = velib_dataflow::aggregator::StateTopic::None;
    config.create_partitions = None;
    let last = epochs.last().unwrap().0.epoch;
    run_until_committed(timely::Config::thread(), config, last, || {});
    let progress_epochs: Vec<u64> = output(&address)
        .iter()
        .filter(|r| common::output::header(r, "velib-kind") == Some("progress"))
        .map(|r| {
            common::output::header(r, "velib-epoch")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let mut per_epoch = std::collections::BTreeMap::new();
    for epoch in &progress_epochs {
        *per_epoch.entry(*epoch).or_insert(0) += 1;
    }
    assert_eq!(
        per_epoch,
        (1..=last).map(|e| (e, 3)).collect(),
        "every epoch's progress once per partition: {progress_epochs:?}"
    );
}

#[test]
fn the_aggregator_recovers_from_a_broker_outage_and_request_errors() {
    // The aggregator's log, shown if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(3).expect("librdkafka's mock cluster");
    let address = mock.bootstrap_servers();
    for (topic, partitions) in [
        (STATUS_TOPIC, 3),
        (DIRECTORY_TOPIC, 3),
        (OUTPUT, 3),
        (DEAD, 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let epochs = common::sequence(common::paris_series(true));
    let writer = ScriptedEpochWriter::new(
        &address,
        "attempt-1",
        &[(STATUS_TOPIC, 3), (DIRECTORY_TOPIC, 3)],
    );
    for (updates, _) in &epochs {
        writer.write_epoch(
            updates.epoch,
            updates.feed_time,
            &epoch_records(updates, true, &by_id(3)),
        );
    }
    drop(writer);

    // Every broker is down as the aggregator starts, and the first requests
    // after they come back fail.
    mock.broker_down(-1).unwrap();
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    mock.request_errors(
        RDKafkaApiKey::Metadata,
        &[RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT],
    );

    let mut config = AggregatorConfig::new(KafkaConfig::new(&address));
    config.framing = Some(Framing::Epochs);
    config.directory_topic = Some(DIRECTORY_TOPIC.into());
    config.dead_letter_topic = Some(DEAD.into());
    // The mock cluster has no CreateTopics: they were made above.
    config.create_partitions = None;
    let last = epochs.last().unwrap().0.epoch;
    run_until_committed(timely::Config::process(2), config, last, || {
        std::thread::sleep(Duration::from_secs(3));
        mock.broker_up(-1).unwrap();
    });

    assert_epochs_on_topic(&output(&address), &epochs);
}
