//! The whole job in one process: the producer polling the Vélib' feed, the
//! aggregator keeping per-postcode counts, and a live view of them.
//!
//! ```sh
//! # Against the real Vélib' API, on an embedded broker:
//! cargo run --example velib_live
//! # Offline, replaying the recorded Paris series:
//! cargo run --example velib_live -- --replay tests/fixtures/opendata-paris/velib-series
//! # On your own Kafka:
//! cargo run --example velib_live -- --brokers 127.0.0.1:9092
//! # With the live page (a map and a table) at http://127.0.0.1:8080/:
//! cargo run --example velib_live -- --http 127.0.0.1:8080
//! ```
//!
//! With no `--brokers`, it starts librdkafka's mock cluster in-process: a
//! Kafka-compatible broker that kcat can read while the job runs. Ctrl-C
//! stops it cleanly: the producer finishes the epoch in flight, the
//! aggregator writes what it read, then it exits.

#[path = "../common/mod.rs"]
mod common;
mod view;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{
    self, AggregatorConfig, AggregatorHandle, DEFAULT_DEAD_LETTER_TOPIC, DEFAULT_OUTPUT_TOPIC,
    DEFAULT_STATE_TOPIC,
};
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::publish::{
    state_topic_beside, PublisherConfig, DEFAULT_DIRECTORY_TOPIC, DEFAULT_STATUS_TOPIC,
};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::poll::{FeedLocation, PollConfig, VELIB_FEED};
use velib_dataflow::producer::{self, ProducerConfig, ProducerHandle};
use velib_dataflow::recorded::RecordedSource;
use velib_dataflow::snapshot::StationSelection;
use velib_dataflow::web::committed::CommittedConfig;
use velib_dataflow::web::LivePage;

/// Live per-postcode Vélib' availability: polls the feed, publishes each
/// snapshot's changes to Kafka, keeps the per-postcode counts as a
/// differential dataflow, and shows them after each epoch.
///
/// With no --brokers (or KAFKA_BROKERS), an embedded Kafka-compatible broker
/// is started in this process and its address printed, so that kcat can
/// read the topics.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, disable_help_flag = true)]
struct Args {
    /// The feed: a GBFS gbfs.json, or a station_status URL.
    #[arg(long, env = "VELIB_FEED", default_value = VELIB_FEED, value_name = "URL")]
    feed: String,

    /// Replay these recorded snapshot files (or directories of them)
    /// instead of polling the feed; exits when they are done.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    replay: Vec<PathBuf>,

    /// Poll (or replay) this often [default: the feed's ttl within 1–60 s; 1s for --replay].
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION")]
    interval: Option<Duration>,

    /// Keep only these stations, by code or id [default: all].
    #[arg(long, value_delimiter = ',', value_name = "CODE,CODE…")]
    stations: Vec<String>,

    /// Station -> postcode CSV [default: the shipped Vélib' table].
    #[arg(long, value_name = "FILE")]
    postcodes: Option<PathBuf>,

    /// How the view is printed.
    #[arg(long, value_enum, default_value_t = view::Format::Auto)]
    format: view::Format,

    /// Serve the live page at http://ADDR/ (e.g. 127.0.0.1:8080; port 0
    /// picks one): a map of the stations and a table of the postcodes,
    /// updated in the browser on each committed epoch.
    #[arg(long, env = "VELIB_HTTP_ADDR", value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "VELIB_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Kafka bootstrap servers [default: an embedded broker].
    #[arg(long, env = "KAFKA_BROKERS", value_name = "HOST:PORT")]
    brokers: Option<String>,

    /// librdkafka property for every client (repeatable), as kcat's -X.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,

    /// Partitions of the topics created when missing.
    #[arg(long, default_value_t = 3, value_name = "N")]
    partitions: i32,

    #[command(flatten)]
    stale: common::StaleArgs,

    /// Timely's -w/-n/-p/-h. With -n above 1 (and --brokers), process 0
    /// runs the producer and the view; every process runs aggregator workers.
    #[command(flatten)]
    cluster: common::ClusterArgs,

    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    if let Err(message) = check(&args) {
        eprintln!("velib_live: {message}");
        return ExitCode::from(2);
    }
    match live(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("velib_live: {message}");
            ExitCode::from(1)
        }
    }
}

/// Flags that cannot work together: refused before anything starts.
fn check(args: &Args) -> Result<(), String> {
    if args.partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    if args.cluster.processes > 1 && args.brokers.is_none() {
        return Err(
            "-n above 1 needs --brokers: the processes must share a Kafka cluster, \
             and the embedded broker lives in one process"
                .into(),
        );
    }
    args.cluster.timely_config().map(|_| ())
}

fn live(args: Args) -> Result<(), String> {
    let timely_config = args.cluster.timely_config()?;
    let postcodes = common::postcode_table(args.postcodes.as_deref())?;
    let resolver = DirectoryResolver::new(postcodes.clone(), true);
    let selection = if args.stations.is_empty() {
        StationSelection::all()
    } else {
        StationSelection::only(args.stations.clone())
    };

    // The broker: the user's, or one in this process.
    let embedded;
    let brokers = match &args.brokers {
        Some(brokers) => brokers.clone(),
        None => {
            embedded =
                MockCluster::new(1).map_err(|e| format!("starting the embedded broker: {e}"))?;
            let address = embedded.bootstrap_servers();
            for (topic, partitions) in [
                (DEFAULT_STATUS_TOPIC, args.partitions),
                (DEFAULT_DIRECTORY_TOPIC, args.partitions),
                (&state_topic_beside(DEFAULT_STATUS_TOPIC), args.partitions),
                (DEFAULT_OUTPUT_TOPIC, args.partitions),
                (DEFAULT_STATE_TOPIC, args.partitions),
                (DEFAULT_DEAD_LETTER_TOPIC, 1),
            ] {
                embedded
                    .create_topic(topic, partitions, 1)
                    .map_err(|e| format!("creating {topic} on the embedded broker: {e}"))?;
            }
            eprintln!(
                "velib_live: no --brokers given: started an embedded Kafka-compatible broker \
                 (librdkafka's mock cluster) at {address}\n\
                 velib_live: read it with: kcat -b {address} -C -t {DEFAULT_OUTPUT_TOPIC}"
            );
            address
        }
    };
    let mut kafka = KafkaConfig::new(brokers);
    for property in &args.properties {
        kafka = kafka.with_property(property).map_err(|e| e.to_string())?;
    }
    let create = args.brokers.is_some().then_some(args.partitions);

    let mut poll = PollConfig::new(FeedLocation::Discover {
        url: args.feed.clone(),
        language: None,
    });
    poll.interval = args.interval;
    let mut publish = PublisherConfig::new(kafka.clone());
    publish.create_partitions = create;
    let producer_config = ProducerConfig {
        poll,
        selection: selection.clone(),
        publish,
        resolver: resolver.clone(),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        stale: args.stale.policy(),
        long_after: args.stale.long_after,
    };
    let mut aggregator_config = AggregatorConfig::new(kafka.clone());
    aggregator_config.directory_topic = Some(DEFAULT_DIRECTORY_TOPIC.into());
    aggregator_config.postcodes = Arc::new(postcodes);
    aggregator_config.create_partitions = create;

    let producer_handle = ProducerHandle::default();
    let aggregator_handle = AggregatorHandle::default();
    // Before anything starts: an address in use is said at once.
    let page = match args.http.filter(|_| args.cluster.process == 0) {
        Some(addr) => {
            let page = LivePage::start(addr, CommittedConfig::new(kafka.clone()))
                .map_err(|e| format!("--http {addr}: {e}"))?;
            eprintln!("velib_live: the live page is at http://{}/", page.addr());
            Some(page)
        }
        None => None,
    };
    let mut metrics = velib_dataflow::metrics::Metrics::default()
        .producer(producer_handle.clone())
        .aggregator(aggregator_handle.clone());
    if let Some(page) = &page {
        metrics = metrics.page(page.hub().clone());
    }
    common::serve_metrics(args.metrics_addr, metrics)?;
    if args.cluster.process > 0 {
        // Aggregator workers only: process 0 polls, publishes and shows.
        let stopper = aggregator_handle.clone();
        common::on_ctrl_c("stopping: finishing the epochs already read", move || {
            stopper.stop()
        });
        return aggregator::run(timely_config, aggregator_config, aggregator_handle)
            .map_err(|e| format!("aggregator: {e}"));
    }
    let stopper = producer_handle.clone();
    let (interrupt, interrupted) = std::sync::mpsc::channel();
    common::on_ctrl_c("stopping: finishing the epoch in flight", move || {
        stopper.stop();
        let _ = interrupt.send(());
    });

    // The producer first: it creates the topics the others read.
    let producer_thread = {
        let handle = producer_handle.clone();
        let replay = args.replay.clone();
        let interval = args.interval.unwrap_or(Duration::from_secs(1));
        std::thread::spawn(move || {
            if replay.is_empty() {
                producer::run(producer_config, handle)
            } else {
                let source = RecordedSource::new(&replay, resolver, selection, interval);
                producer::run_with_source(source, &producer_config, handle)
            }
        })
    };
    let aggregator_thread = {
        let handle = aggregator_handle.clone();
        std::thread::spawn(move || aggregator::run(timely_config, aggregator_config, handle))
    };
    let mut view = view::LiveView::new(&kafka, DEFAULT_OUTPUT_TOPIC, args.format)?;

    // Show epochs as they complete, until the producer is done (stopped,
    // or at the end of a replay) and its last epoch is shown.
    let mut drain_deadline = None;
    loop {
        view.poll(Duration::from_millis(200));
        if drain_deadline.is_none() && producer_thread.is_finished() {
            drain_deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if aggregator_thread.is_finished() {
            break;
        }
        if let Some(deadline) = drain_deadline {
            let last = producer_handle.stats().last_epoch;
            let shown = view.last().unwrap_or(0);
            if shown >= last {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "epoch {last} was published but its output not seen: stopping anyway"
                );
                break;
            }
        }
    }
    producer_handle.stop();
    aggregator_handle.stop();
    let produced = producer_thread
        .join()
        .map_err(|_| "the producer panicked".to_owned())?;
    let aggregated = aggregator_thread
        .join()
        .map_err(|_| "the aggregator panicked".to_owned())?;
    produced.map_err(|e| format!("producer: {e}"))?;
    aggregated.map_err(|e| format!("aggregator: {e}"))?;
    if let Some(page) = page {
        // A replay ends; its page is still worth reading.
        if interrupted.try_recv().is_err() {
            eprintln!(
                "velib_live: done; the live page stays at http://{}/ until Ctrl-C",
                page.addr()
            );
            let _ = interrupted.recv();
        }
    }
    Ok(())
}
