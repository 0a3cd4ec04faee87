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
//! # Several systems at once, each its own producer, aggregator and topics:
//! cargo run --example velib_live -- \
//!     --feed oslo=https://gbfs.urbansharing.com/oslobysykkel.no/gbfs.json \
//!     --feed bergen=https://gbfs.urbansharing.com/bergenbysykkel.no/gbfs.json
//! ```
//!
//! With no `--brokers`, it starts librdkafka's mock cluster in-process: a
//! Kafka-compatible broker that kcat can read while the job runs. Ctrl-C
//! stops it cleanly: the producer finishes the epoch in flight, the
//! aggregator writes what it read, then it exits.

#[path = "../common/mod.rs"]
mod common;
mod view;

use rdkafka::mocking::MockCluster;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorHandle};
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::publish::{PublisherConfig, DEFAULT_DIRECTORY_TOPIC};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::poll::{FeedLocation, PollConfig};
use velib_dataflow::producer::{self, ProducerConfig, ProducerHandle};
use velib_dataflow::recorded::RecordedSource;
use velib_dataflow::snapshot::StationSelection;
use velib_dataflow::systems::{
    check_aggregator_topics, check_topics, parse_system_name, SystemFeed,
};
use velib_dataflow::web::committed::CommittedConfig;
use velib_dataflow::web::LivePage;

/// Live per-postcode Vélib' availability: polls the feed, publishes each
/// snapshot's changes to Kafka, keeps the per-postcode counts as a
/// differential dataflow, and shows them after each epoch.
///
/// With no --brokers (or KAFKA_BROKERS), an embedded Kafka-compatible broker
/// is started in this process and its address printed, so that kcat can
/// read the topics.
#[derive(clap::Parser, Debug)]
#[command(version, about, long_about = None, disable_help_flag = true)]
struct Args {
    /// The feed: a GBFS gbfs.json, or a station_status URL. Repeat it as
    /// NAME=URL for several systems at once: each has its own producer,
    /// aggregator, epochs and topics (<topic>.NAME); one without a name
    /// keeps the topics as they are [default: Vélib' Métropole]
    #[arg(long, env = "VELIB_FEED", value_name = "[NAME=]URL")]
    feed: Vec<String>,

    /// A file of systems, one `NAME URL` a line (# for comments), as with
    /// --feed NAME=URL.
    #[arg(long, value_name = "FILE")]
    systems: Option<PathBuf>,

    /// With several systems, the one the live page (--http) shows
    /// (`default` for the unnamed one) [default: the first listed]
    #[arg(long, value_name = "NAME", requires = "http")]
    page_system: Option<String>,

    /// Also count each postcode's vehicles by the feed's vehicle_type_id
    /// (GBFS v2.3 and v3): a `vehicle_types` object in each record.
    #[arg(long)]
    vehicle_types: bool,

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
    let (mut args, feed_from_env) = common::parse_with_feed_source::<Args>();
    // $VELIB_FEED stands for a missing --feed; a systems file lists them.
    if args.systems.is_some() && feed_from_env {
        args.feed.clear();
    }
    let systems = match check(&args) {
        Ok(systems) => systems,
        Err(message) => {
            eprintln!("velib_live: {message}");
            return ExitCode::from(2);
        }
    };
    match live(args, systems) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("velib_live: {message}");
            ExitCode::from(1)
        }
    }
}

/// Flags that cannot work together: refused before anything starts.
/// Returns the systems, the one the page shows first.
fn check(args: &Args) -> Result<Vec<SystemFeed>, String> {
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
    args.cluster.timely_config()?;
    let mut systems = common::system_feeds(&args.feed, args.systems.as_deref())?;
    if systems.len() > 1 {
        for (flag, given) in [
            ("--replay", !args.replay.is_empty()),
            ("--stations", !args.stations.is_empty()),
            ("-n above 1", args.cluster.processes > 1),
        ] {
            if given {
                return Err(format!(
                    "{flag} is for one feed; with several systems, give each its gbfs.json"
                ));
            }
        }
    }
    if let Some(wanted) = &args.page_system {
        let wanted = parse_system_name(wanted).map_err(|e| format!("--page-system {e}"))?;
        let Some(at) = systems.iter().position(|s| s.name == wanted) else {
            return Err(format!(
                "--page-system {}: no such system among {}",
                wanted.as_deref().unwrap_or("default"),
                systems
                    .iter()
                    .map(SystemFeed::label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let shown = systems.remove(at);
        systems.insert(0, shown);
    }
    Ok(systems)
}

/// One system's jobs: its producer and aggregator, their handles.
struct System {
    feed: SystemFeed,
    producer: ProducerConfig,
    aggregator: AggregatorConfig,
    producer_handle: ProducerHandle,
    aggregator_handle: AggregatorHandle,
}

fn live(args: Args, feeds: Vec<SystemFeed>) -> Result<(), String> {
    let timely_config = args.cluster.timely_config()?;
    let postcodes = common::postcode_table(args.postcodes.as_deref())?;
    let resolver = DirectoryResolver::new(postcodes.clone(), true);
    let selection = if args.stations.is_empty() {
        StationSelection::all()
    } else {
        StationSelection::only(args.stations.clone())
    };

    // The broker: the user's, or one in this process.
    let embedded = match &args.brokers {
        Some(_) => None,
        None => {
            Some(MockCluster::new(1).map_err(|e| format!("starting the embedded broker: {e}"))?)
        }
    };
    let brokers = match (&args.brokers, &embedded) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(embedded)) => embedded.bootstrap_servers(),
        (None, None) => unreachable!("started above"),
    };
    let mut kafka = KafkaConfig::new(brokers.clone());
    for property in &args.properties {
        kafka = kafka.with_property(property).map_err(|e| e.to_string())?;
    }
    let create = args.brokers.is_some().then_some(args.partitions);

    let mut publish = PublisherConfig::new(kafka.clone());
    publish.create_partitions = create;
    let mut base_aggregator = AggregatorConfig::new(kafka.clone());
    base_aggregator.directory_topic = Some(DEFAULT_DIRECTORY_TOPIC.into());
    base_aggregator.postcodes = Arc::new(postcodes);
    base_aggregator.create_partitions = create;
    base_aggregator.vehicle_types = args.vehicle_types;
    if feeds.len() > 1 {
        let names: Vec<Option<String>> = feeds.iter().map(|f| f.name.clone()).collect();
        check_topics(&feeds, &publish).map_err(|e| e.to_string())?;
        check_aggregator_topics(&names, &base_aggregator).map_err(|e| e.to_string())?;
    }
    let systems: Vec<System> = feeds
        .into_iter()
        .map(|feed| {
            let mut poll = PollConfig::new(FeedLocation::Discover {
                url: feed.url.clone(),
                language: None,
            });
            poll.interval = args.interval;
            let producer = ProducerConfig {
                poll,
                selection: selection.clone(),
                publish: feed.topics(&publish),
                resolver: resolver.clone(),
                retry_base: Duration::from_secs(1),
                retry_max: Duration::from_secs(60),
                stale: args.stale.policy(),
                long_after: args.stale.long_after,
            };
            let aggregator = match &feed.name {
                Some(name) => base_aggregator.for_system(name),
                None => base_aggregator.clone(),
            };
            System {
                feed,
                producer,
                aggregator,
                producer_handle: ProducerHandle::default(),
                aggregator_handle: AggregatorHandle::default(),
            }
        })
        .collect();
    if let Some(embedded) = &embedded {
        // The mock cluster creates no topic on its own: each system's, as
        // producer and aggregator would create them.
        let mut created = std::collections::BTreeSet::new();
        for system in &systems {
            let topics = system.producer.publish.topics(args.partitions).into_iter();
            // The aggregator reads the producer's: each topic once.
            let topics = topics.chain(system.aggregator.topics(args.partitions));
            for topic in topics.filter(|t| created.insert(t.name.clone())) {
                embedded
                    .create_topic(&topic.name, topic.partitions, 1)
                    .map_err(|e| format!("creating {} on the embedded broker: {e}", topic.name))?;
            }
        }
        eprintln!(
            "velib_live: no --brokers given: started an embedded Kafka-compatible broker \
             (librdkafka's mock cluster) at {brokers}\n\
             velib_live: read it with: kcat -b {brokers} -C -t {}",
            systems[0].aggregator.output_topic
        );
    }

    // Before anything starts: an address in use is said at once.
    let page = match args.http.filter(|_| args.cluster.process == 0) {
        Some(addr) => {
            let shown = &systems[0];
            let page = LivePage::start(addr, CommittedConfig::reading(&shown.aggregator))
                .map_err(|e| format!("--http {addr}: {e}"))?;
            match (&shown.feed.name, systems.len()) {
                (Some(name), 2..) => eprintln!(
                    "velib_live: the live page is at http://{}/ (system {name}; --page-system for another)",
                    page.addr()
                ),
                _ => eprintln!("velib_live: the live page is at http://{}/", page.addr()),
            }
            Some(page)
        }
        None => None,
    };
    let mut metrics = velib_dataflow::metrics::Metrics::default();
    for system in &systems {
        metrics = match &system.feed.name {
            Some(name) => metrics
                .system_producer(name, system.producer_handle.clone())
                .system_aggregator(name, system.aggregator_handle.clone()),
            None => metrics
                .producer(system.producer_handle.clone())
                .aggregator(system.aggregator_handle.clone()),
        };
    }
    if let Some(page) = &page {
        metrics = metrics.page(page.hub().clone());
    }
    common::serve_metrics(args.metrics_addr, metrics)?;
    if args.cluster.process > 0 {
        // Aggregator workers only: process 0 polls, publishes and shows.
        // (-n above 1 is for one system.)
        let system = systems.into_iter().next().expect("one system");
        let stopper = system.aggregator_handle.clone();
        common::on_ctrl_c("stopping: finishing the epochs already read", move || {
            stopper.stop()
        });
        return aggregator::run(timely_config, system.aggregator, system.aggregator_handle)
            .map_err(|e| format!("aggregator: {e}"));
    }
    let stoppers: Vec<ProducerHandle> = systems.iter().map(|s| s.producer_handle.clone()).collect();
    let (interrupt, interrupted) = std::sync::mpsc::channel();
    common::on_ctrl_c("stopping: finishing the epoch in flight", move || {
        stoppers.iter().for_each(ProducerHandle::stop);
        let _ = interrupt.send(());
    });

    // One system (the default, or one named) runs as it always ran, on a
    // thread of each job; several on threads of their own.
    let single = systems.len() == 1;
    let outputs: Vec<(String, Option<String>)> = systems
        .iter()
        .map(|s| (s.aggregator.output_topic.clone(), s.feed.name.clone()))
        .collect();
    let producer_handles: Vec<ProducerHandle> =
        systems.iter().map(|s| s.producer_handle.clone()).collect();
    let aggregator_handles: Vec<AggregatorHandle> = systems
        .iter()
        .map(|s| s.aggregator_handle.clone())
        .collect();
    // The producers first: they create the topics the others read.
    let (producer_jobs, aggregator_jobs): (Vec<_>, Vec<_>) = systems
        .into_iter()
        .map(|s| {
            let label = s.feed.label().to_owned();
            (
                (label.clone(), s.producer, s.producer_handle),
                (label, s.aggregator, s.aggregator_handle),
            )
        })
        .unzip();
    let producer_thread = {
        let replay = args.replay.clone();
        let interval = args.interval.unwrap_or(Duration::from_secs(1));
        std::thread::spawn(move || {
            if single {
                // One feed, as it always ran.
                let (_, config, handle) = producer_jobs.into_iter().next().expect("one system");
                let outcome = if replay.is_empty() {
                    producer::run(config, handle)
                } else {
                    let source = RecordedSource::new(&replay, resolver, selection, interval);
                    producer::run_with_source(source, &config, handle)
                };
                return outcome.map_err(|e| format!("producer: {e}"));
            }
            failures("producer", producer::run_systems(producer_jobs))
        })
    };
    let aggregator_thread = std::thread::spawn(move || {
        if single {
            let (_, config, handle) = aggregator_jobs.into_iter().next().expect("one system");
            return aggregator::run(timely_config, config, handle)
                .map_err(|e| format!("aggregator: {e}"));
        }
        failures(
            "aggregator",
            aggregator::run_systems(timely_config, aggregator_jobs),
        )
    });

    // Once the jobs run: the view waits for the output topics they create.
    let mut views = Vec::new();
    for (topic, system) in outputs {
        views.push(view::LiveView::new(&kafka, &topic, system, args.format)?);
    }

    // Show epochs as they complete, until the producers are done (stopped,
    // or at the end of a replay) and each one's last epoch is shown.
    let mut drain_deadline = None;
    let each = Duration::from_millis(200 / views.len().max(1) as u64);
    loop {
        let mut changed = false;
        for view in &mut views {
            changed |= view.poll(each);
        }
        if changed {
            view::redraw(&views);
        }
        if drain_deadline.is_none() && producer_thread.is_finished() {
            drain_deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if aggregator_thread.is_finished() {
            break;
        }
        if let Some(deadline) = drain_deadline {
            let behind: Vec<_> = producer_handles
                .iter()
                .zip(&views)
                .map(|(producer, view)| (producer.stats().last_epoch, view.last().unwrap_or(0)))
                .filter(|(last, shown)| shown < last)
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    ?behind,
                    "epochs (published, shown) were published but their output not seen: stopping anyway"
                );
                break;
            }
        }
    }
    producer_handles.iter().for_each(ProducerHandle::stop);
    aggregator_handles.iter().for_each(AggregatorHandle::stop);
    let produced = producer_thread
        .join()
        .map_err(|_| "the producer panicked".to_owned())?;
    let aggregated = aggregator_thread
        .join()
        .map_err(|_| "the aggregator panicked".to_owned())?;
    produced?;
    aggregated?;
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

/// The systems that failed, said one a line, as one error; `Ok` if none.
fn failures<E: std::fmt::Display>(
    role: &str,
    outcomes: Vec<(String, Result<(), E>)>,
) -> Result<(), String> {
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|(name, outcome)| {
            outcome
                .err()
                .map(|e| format!("{role} of system {name}: {e}"))
        })
        .collect();
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{} (the other systems went on until stopped)",
            failed.join("; ")
        )),
    }
}
