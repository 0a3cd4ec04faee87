//! The producer on librdkafka's mock cluster, with faults: a transaction
//! whose records the broker refuses, and every broker down for a while.
//! The producer tries each epoch again under a new attempt, and what the
//! aggregator computes from the topics is what it is without faults.

mod common;

use common::http::{FeedServer, Reply};
use common::output::{assert_epochs_on_topic, header};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorHandle};
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::publish::PublisherConfig;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::poll::{FeedLocation, PollConfig};
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::producer::{run, ProducerConfig, ProducerHandle};
use velib_dataflow::snapshot::StationSelection;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn failed_transactions_are_tried_again_under_a_new_attempt() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(3).expect("librdkafka's mock cluster");
    let address = mock.bootstrap_servers();
    for (topic, partitions) in [
        ("velib-projet", 3),
        ("velib-directory", 3),
        ("velib-projet-state", 3),
        ("velib-projet-clean", 3),
        ("velib-projet-dead-letters", 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let server = FeedServer::start();
    let files = common::paris_files();
    server.script("/paris.json", [Reply::ok(files[0].clone())]);

    let mut poll = PollConfig::new(FeedLocation::Discover {
        url: server.url("/paris.json"),
        language: None,
    });
    poll.interval = Some(Duration::from_millis(50));
    let mut publish = PublisherConfig::new(KafkaConfig::new(&address));
    // The mock cluster has no CreateTopics: they were made above.
    publish.create_partitions = None;
    publish.timeout = Duration::from_secs(10);
    let config = ProducerConfig {
        poll,
        selection: StationSelection::all(),
        publish,
        resolver: DirectoryResolver::new(PostcodeTable::velib(), true),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        stale: velib_dataflow::freshness::StalePolicy::default(),
        long_after: velib_dataflow::producer::DEFAULT_LONG_AFTER,
    };
    let handle = ProducerHandle::default();
    let running = handle.clone();
    let thread = std::thread::spawn(move || run(config, running));
    wait_for("epoch 1", || handle.stats().last_epoch == 1);

    // The next produce requests are refused for good: the transaction
    // must be aborted and the epoch published again.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_INVALID_RECORD,
            RD_KAFKA_RESP_ERR_INVALID_RECORD,
        ],
    );
    server.script("/paris.json", [Reply::ok(files[1].clone())]);
    wait_for("epoch 2", || handle.stats().last_epoch == 2);
    // Then every broker goes away for two seconds while polling goes on.
    mock.broker_down(-1).unwrap();
    server.script(
        "/paris.json",
        files[2..].iter().map(|f| Reply::ok(f.clone())),
    );
    std::thread::sleep(Duration::from_secs(2));
    mock.broker_up(-1).unwrap();

    let expected = common::sequence(common::paris_series(true));
    let last = expected.last().unwrap().0.epoch;
    wait_for("the last epoch", || {
        handle.stats().last_epoch == last && server.left("/paris.json") == 1
    });
    let stats = handle.stats();
    handle.stop();
    thread.join().unwrap().expect("the producer stops cleanly");
    assert!(stats.publish_retries >= 1, "{stats:?}");
    assert_eq!(stats.epochs_published, last);

    let mut config = AggregatorConfig::new(KafkaConfig::new(&address));
    config.directory_topic = Some("velib-directory".into());
    config.create_partitions = None;
    let aggregator = AggregatorHandle::default();
    let running = aggregator.clone();
    let aggregator_thread =
        std::thread::spawn(move || aggregator::run(timely::Config::thread(), config, running));
    wait_for("the aggregator's last epoch", || {
        aggregator.committed() == Some(last)
    });
    let source = aggregator.source_stats();
    aggregator.stop();
    aggregator_thread.join().unwrap().unwrap();
    let out = Command::new("kcat")
        .args([
            "-b",
            &address,
            "-C",
            "-t",
            "velib-projet-clean",
            "-e",
            "-q",
            "-J",
        ])
        .args(["-X", "isolation.level=read_committed"])
        .output()
        .expect("kcat runs");
    assert_epochs_on_topic(&common::json_lines("kcat", &out), &expected);
    println!("aggregator source: {source:?}");
}

/// A producer polling a feed that serves the Paris series' first file, on
/// a one-broker mock cluster with `<prefix>-status` and `<prefix>-directory`.
struct MockRun {
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    server: FeedServer,
    files: Vec<Vec<u8>>,
    handle: ProducerHandle,
    thread: Option<std::thread::JoinHandle<Result<(), velib_dataflow::producer::ProducerError>>>,
}

impl MockRun {
    /// Starts the producer, publishing with `timeout`, and waits for epoch 1.
    fn start(prefix: &str, timeout: Duration) -> MockRun {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
        for topic in ["status", "directory", "status-state"] {
            mock.create_topic(&format!("{prefix}-{topic}"), 3, 1)
                .unwrap();
        }
        let server = FeedServer::start();
        let files = common::paris_files();
        server.script("/paris.json", [Reply::ok(files[0].clone())]);
        let mut poll = PollConfig::new(FeedLocation::Discover {
            url: server.url("/paris.json"),
            language: None,
        });
        poll.interval = Some(Duration::from_millis(50));
        let mut publish = PublisherConfig::new(KafkaConfig::new(mock.bootstrap_servers()));
        publish.status_topic = format!("{prefix}-status");
        publish.directory_topic = format!("{prefix}-directory");
        publish.state_topic = Some(format!("{prefix}-status-state"));
        publish.create_partitions = None;
        publish.timeout = timeout;
        let config = ProducerConfig {
            poll,
            selection: StationSelection::all(),
            publish,
            resolver: DirectoryResolver::new(PostcodeTable::velib(), true),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            stale: velib_dataflow::freshness::StalePolicy::default(),
            long_after: velib_dataflow::producer::DEFAULT_LONG_AFTER,
        };
        let handle = ProducerHandle::default();
        let running = handle.clone();
        let thread = std::thread::spawn(move || run(config, running));
        wait_for("epoch 1", || handle.stats().last_epoch == 1);
        MockRun {
            mock,
            server,
            files,
            handle,
            thread: Some(thread),
        }
    }

    /// Serves the series' next two files and waits until the producer has
    /// published their epochs, failing if it stops; then stops it. Returns
    /// its stats and the last epoch.
    fn publish_two_more(&mut self) -> (velib_dataflow::producer::ProducerStats, u64) {
        self.server.script(
            "/paris.json",
            self.files[1..3].iter().map(|f| Reply::ok(f.clone())),
        );
        let expected = common::sequence(common::paris_series(true)[..3].to_vec());
        let last = expected.last().unwrap().0.epoch;
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.handle.stats().last_epoch != last {
            assert!(
                Instant::now() < deadline && !thread.is_finished(),
                "the producer did not go on: {:?}",
                self.handle.stats()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stats = self.handle.stats();
        self.handle.stop();
        thread.join().unwrap().expect("the producer stops cleanly");
        assert_eq!(stats.epochs_published, last, "{stats:?}");
        (stats, last)
    }

    /// The markers on `topic` (read committed by kcat), by epoch:
    /// the attempt that wrote each, and the partition it closes.
    fn markers(&self, topic: &str) -> BTreeMap<u64, Vec<(String, i64)>> {
        let out = Command::new("kcat")
            .env_remove("LD_LIBRARY_PATH")
            .args(["-b", &self.mock.bootstrap_servers()])
            .args(["-C", "-t", topic, "-e", "-q", "-J"])
            .args(["-X", "isolation.level=read_committed"])
            .output()
            .expect("kcat runs");
        let mut markers: BTreeMap<u64, Vec<(String, i64)>> = BTreeMap::new();
        for record in common::json_lines("kcat", &out) {
            if header(&record, "velib-kind") == Some("marker") {
                markers
                    .entry(header(&record, "velib-epoch").unwrap().parse().unwrap())
                    .or_default()
                    .push((
                        header(&record, "velib-attempt").unwrap().to_owned(),
                        record["partition"].as_i64().unwrap(),
                    ));
            }
        }
        markers
    }
}

/// The transaction coordinator does not complete an epoch's commit within
/// the publisher's timeout (it answers `EndTxn` with a retriable error for
/// a while, as one still loading after a restart does). librdkafka goes on
/// with the commit in the background and accepts no other transactional
/// call until it is asked again: the publisher must resume the commit, not
/// abort it and try a new transaction (which librdkafka refuses forever,
/// while the commit completes behind its back). The epoch is published
/// once, and the producer goes on.
#[test]
fn a_commit_that_outlasts_the_timeout_is_resumed_not_abandoned() {
    // Shorter than the coordinator takes to commit epoch 2 below.
    let mut run = MockRun::start("slow-commit", Duration::from_secs(2));
    // Ten retriable errors in a row take librdkafka's EndTxn retries (100
    // ms doubling to 1 s) several seconds: longer than the 2 s timeout.
    run.mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS; 10],
    );
    let (_, last) = run.publish_two_more();
    // Each epoch is on the topic once, completed by one attempt.
    let markers = run.markers("slow-commit-status");
    assert_eq!(
        markers.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    for (epoch, closed) in &markers {
        let attempts: BTreeSet<&String> = closed.iter().map(|(a, _)| a).collect();
        assert_eq!(
            attempts.len(),
            1,
            "epoch {epoch} completed by one attempt: {closed:?}"
        );
    }
}

/// The coordinator refuses an epoch's commit with an error librdkafka
/// treats as fatal without a fencing (`INVALID_TXN_STATE`, what Apache
/// Kafka answers to the abort of a transaction it never registered, after
/// the broker was killed mid-epoch and the records timed out). The
/// producer instance is then unusable; a new one as the same
/// `transactional.id` takes over, publishes the epoch, and goes on, where
/// the producer used to stop.
#[test]
fn a_producer_librdkafka_gives_up_on_is_replaced_and_goes_on() {
    let mut run = MockRun::start("fatal", Duration::from_secs(10));
    run.mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE],
    );
    let (stats, last) = run.publish_two_more();
    assert!(stats.publish_retries >= 1, "{stats:?}");
    // Every epoch is on the topic, closed on every partition. (The mock
    // cluster shows aborted transactions to read_committed readers too, so
    // that the refused try is shown once is checked on Apache Kafka, in
    // tests/broker_restart.rs.)
    let markers = run.markers("fatal-status");
    assert_eq!(
        markers.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    for (epoch, closed) in &markers {
        let partitions: BTreeSet<i64> = closed.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            partitions.len(),
            3,
            "epoch {epoch} closed on every partition: {closed:?}"
        );
    }
}
