//! The aggregator on librdkafka's mock cluster, with faults: every broker
//! down when it starts, then request errors on fetch, produce and metadata.
//! Its output must be what it is without faults: every epoch equal to a
//! from-scratch computation, each changed postcode written once.

mod common;

use common::epochs::{by_id, epoch_records, EpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC};
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
    let writer = EpochWriter::new(
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
    let handle = AggregatorHandle::default();
    let running = handle.clone();
    let thread = std::thread::spawn(move || run(timely::Config::process(2), config, running));

    std::thread::sleep(Duration::from_secs(3));
    mock.broker_up(-1).unwrap();

    let last = epochs.last().unwrap().0.epoch;
    let deadline = Instant::now() + Duration::from_secs(120);
    while handle.committed() != Some(last) {
        assert!(
            Instant::now() < deadline && !thread.is_finished(),
            "the aggregator did not recover: committed {:?}",
            handle.committed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    handle.stop();
    thread
        .join()
        .unwrap()
        .expect("the aggregator stops cleanly");

    let out = Command::new("kcat")
        .args(["-b", &address, "-C", "-t", OUTPUT, "-e", "-q", "-J"])
        .args(["-X", "isolation.level=read_committed"])
        .output()
        .expect("kcat runs");
    assert_epochs_on_topic(&common::json_lines("kcat", &out), &epochs);
}
