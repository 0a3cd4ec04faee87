//! The producer and the aggregator wait out a broker that goes away mid-run
//! and comes back on the same log directory: neither is restarted, and the
//! output is the from-scratch reference at every epoch, each epoch once.
//!
//! The recorded Paris series is served one snapshot per request by a local
//! HTTP server, a few snapshots at a time, so that the broker goes away
//! after some epochs are committed on the output topic, stays away while the
//! producer has an epoch to publish, and comes back before the series ends.

mod common;

use common::broker::Broker;
use common::http::{FeedServer, Reply};
use common::output::{assert_epochs_on_topic, published};
use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorError, AggregatorHandle};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::fetch::FetchConfig;
use velib_dataflow::kafka::publish::PublisherConfig;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::poll::{FeedLocation, PollConfig};
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::producer::{self, ProducerConfig, ProducerError, ProducerHandle};
use velib_dataflow::snapshot::net_changes;
use velib_dataflow::snapshot::StationSelection;

const STATUS: &str = "velib-projet";
const DIRECTORY: &str = "velib-directory";
const OUTPUT: &str = "velib-projet-clean";
const FEED: &str = "/paris.json";

/// How the broker goes away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// SIGTERM: a controlled shutdown.
    Stop,
    /// SIGKILL: no shutdown at all.
    Kill,
}

#[test]
fn producer_and_aggregator_wait_out_a_broker_stopped_mid_run() {
    through_an_outage(Outage::Stop);
}

/// A killed broker takes longer to come back (it recovers its log, and
/// waits out its old registration): when the aggregator had an epoch's
/// transaction open at the kill and its records time out before the broker
/// answers again, the broker refuses the abort (`INVALID_TXN_STATE`) and
/// librdkafka gives up on the producer; the sink then carries on with a new
/// one (see `TransactionalProducer::begin`).
#[test]
fn producer_and_aggregator_wait_out_a_broker_killed_mid_run() {
    through_an_outage(Outage::Kill);
}

fn producer_config(broker: &str, feed: String) -> ProducerConfig {
    let mut poll = PollConfig::new(FeedLocation::Discover {
        url: feed,
        language: None,
    });
    poll.interval = Some(Duration::from_millis(50));
    poll.fetch = FetchConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        max_bytes: 4 << 20,
        ..FetchConfig::default()
    };
    let mut publish = PublisherConfig::new(KafkaConfig::new(broker));
    publish.status_topic = STATUS.to_owned();
    publish.directory_topic = DIRECTORY.to_owned();
    publish.transactional_id = "test-producer-broker-restart".to_owned();
    ProducerConfig {
        poll,
        selection: StationSelection::all(),
        publish,
        resolver: DirectoryResolver::new(PostcodeTable::velib(), true),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        stale: velib_dataflow::freshness::StalePolicy::default(),
        long_after: velib_dataflow::producer::DEFAULT_LONG_AFTER,
    }
}

/// The producer and the aggregator, each on a thread of its own.
struct Running {
    producer: ProducerHandle,
    producer_thread: Option<JoinHandle<Result<(), ProducerError>>>,
    aggregator: AggregatorHandle,
    aggregator_thread: Option<JoinHandle<Result<(), AggregatorError>>>,
}

impl Running {
    fn start(broker: &Broker, feed: String) -> Running {
        common::init_logging();
        let producer = ProducerHandle::default();
        let running = producer.clone();
        let config = producer_config(&broker.address, feed);
        let producer_thread = std::thread::spawn(move || producer::run(config, running));

        let mut config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
        config.input_topic = STATUS.to_owned();
        config.directory_topic = Some(DIRECTORY.to_owned());
        config.output_topic = OUTPUT.to_owned();
        config.transactional_id = "test-aggregator-broker-restart".to_owned();
        let aggregator = AggregatorHandle::default();
        let running = aggregator.clone();
        let aggregator_thread =
            std::thread::spawn(move || aggregator::run(timely::Config::thread(), config, running));
        Running {
            producer,
            producer_thread: Some(producer_thread),
            aggregator,
            aggregator_thread: Some(aggregator_thread),
        }
    }

    /// Fails the test, with why and the broker's log, if either has
    /// stopped: nothing here asks them to.
    fn assert_alive(&mut self, broker: &Broker) {
        if self
            .producer_thread
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            let result = self.producer_thread.take().unwrap().join();
            panic!(
                "the producer stopped by itself: {result:?}\n{}",
                broker.log_tail()
            );
        }
        if self
            .aggregator_thread
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            let result = self.aggregator_thread.take().unwrap().join();
            panic!(
                "the aggregator stopped by itself: {result:?}\n{}",
                broker.log_tail()
            );
        }
    }

    /// Waits for `done`, failing the test (with the broker's log) if either
    /// stops, or after two minutes: a bound on a hang, not a performance
    /// assertion.
    fn wait_for(&mut self, what: &str, broker: &Broker, mut done: impl FnMut(&Running) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.assert_alive(broker);
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: producer {:?}, aggregator committed {:?}\n{}",
                self.producer.stats(),
                self.aggregator.committed(),
                broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops both; each must stop cleanly.
    fn stop(mut self) {
        self.producer.stop();
        self.producer_thread
            .take()
            .unwrap()
            .join()
            .expect("the producer does not panic")
            .expect("the producer stops cleanly");
        self.aggregator.stop();
        self.aggregator_thread
            .take()
            .unwrap()
            .join()
            .expect("the aggregator does not panic")
            .expect("the aggregator stops cleanly");
    }
}

fn through_an_outage(outage: Outage) {
    let started = Instant::now();
    let broker = Broker::start();
    let server = FeedServer::start();
    let files = common::paris_files();
    let series = common::paris_series(true);
    let expected = common::sequence(series.clone());
    let last = expected.last().unwrap().0.epoch;
    // The last epoch made by the first `n` files.
    let epochs_of = |n: usize| common::sequence(series[..n].to_vec()).len() as Epoch;
    let (before, published_before, during) = (epochs_of(3), epochs_of(4), epochs_of(6));
    assert!(
        before < published_before && published_before < during && during < last,
        "each phase has epochs of its own: {before}, {published_before}, {during}, {last}"
    );

    // Some epochs published and their output committed.
    server.script(FEED, files[..3].iter().map(|f| Reply::ok(f.clone())));
    let mut running = Running::start(&broker, server.url(FEED));
    running.wait_for("the first epochs' output committed", &broker, |r| {
        r.producer.stats().last_epoch == before && r.aggregator.committed() == Some(before)
    });

    // One more epoch published, and the broker goes away at once: the
    // aggregator is then reading it, writing its output or done with it.
    server.script(FEED, [Reply::ok(files[3].clone())]);
    running.wait_for("the next epoch published", &broker, |r| {
        r.producer.stats().last_epoch == published_before
    });
    match outage {
        Outage::Stop => broker.stop(),
        Outage::Kill => broker.kill(),
    }
    let committed_at_outage = running.aggregator.committed();
    eprintln!(
        "broker {outage:?} at {:.1} s: producer at epoch {published_before}, output committed up to {committed_at_outage:?}",
        started.elapsed().as_secs_f64()
    );

    // While it is away, the feed moves on: the producer has epochs to
    // publish and nowhere to publish them.
    server.script(FEED, files[4..6].iter().map(|f| Reply::ok(f.clone())));
    let away = Instant::now() + Duration::from_secs(3);
    while Instant::now() < away {
        running.assert_alive(&broker);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        running.producer.stats().last_epoch <= published_before,
        "nothing published while the broker is away: {:?}",
        running.producer.stats()
    );

    // The broker comes back with its data; the rest of the series follows.
    broker.start_again();
    eprintln!("broker back at {:.1} s", started.elapsed().as_secs_f64());
    running.wait_for("the epochs of the outage published", &broker, |r| {
        r.producer.stats().last_epoch == during
    });
    server.script(FEED, files[6..].iter().map(|f| Reply::ok(f.clone())));
    running.wait_for("the last epoch's output committed", &broker, |r| {
        r.producer.stats().last_epoch == last
            && server.left(FEED) == 1
            && r.aggregator.committed() == Some(last)
    });
    let producer_stats = running.producer.stats();
    let source_stats = running.aggregator.source_stats();
    running.stop();
    eprintln!(
        "done at {:.1} s: producer {producer_stats:?}; aggregator sources {source_stats:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        producer_stats.epochs_published, last,
        "one run published every epoch, once: {producer_stats:?}"
    );
    assert!(producer_stats.rejected.is_empty(), "{producer_stats:?}");

    // Every epoch's output, read committed, equals a from-scratch
    // computation on its snapshot: each epoch once, none lost.
    assert_epochs_on_topic(&broker.kcat_read(OUTPUT), &expected);

    // The producer's topics hold each epoch once, completed by one attempt
    // with a marker on each of the 3 partitions, with exactly the changes.
    let statuses = published(&broker.kcat_read(STATUS));
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    for ((epoch, on_topic), (updates, _)) in statuses.iter().zip(&expected) {
        assert_eq!(*epoch, updates.epoch);
        assert_eq!(on_topic.marker_attempts.len(), 1, "epoch {epoch}");
        assert_eq!(on_topic.markers, 3, "epoch {epoch}");
        let keys: BTreeSet<&str> = on_topic
            .data
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys.len(),
            on_topic.data.len(),
            "epoch {epoch}: no duplicate"
        );
        assert_eq!(
            keys.len(),
            net_changes(&updates.statuses).len(),
            "epoch {epoch}: exactly the changed stations"
        );
    }
    let directory = published(&broker.kcat_read(DIRECTORY));
    assert_eq!(directory[&1].data.len(), expected[0].0.directory.len());
    assert!(directory
        .values()
        .all(|e| e.markers == 3 && e.marker_attempts.len() == 1));
    eprintln!(
        "{outage:?}: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
