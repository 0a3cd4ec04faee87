//! Polls a GBFS feed (Vélib' Métropole by default) and publishes what
//! changed to Kafka, one transaction per snapshot: station statuses keyed
//! by station id, directory entries on a compacted topic, and an epoch
//! marker on every partition of both.
//!
//! ```sh
//! cargo run --example velib_producer -- --brokers 127.0.0.1:9092
//! # only two stations, as the seeds did:
//! cargo run --example velib_producer -- --brokers 127.0.0.1:9092 --stations 16107,32017
//! # another GBFS system, polled every 5 s:
//! cargo run --example velib_producer -- --brokers 127.0.0.1:9092 \
//!     --feed https://gbfs.urbansharing.com/oslobysykkel.no/gbfs.json --interval 5s
//! # several systems at once, each on its own (velib-projet.oslo, …):
//! cargo run --example velib_producer -- --brokers 127.0.0.1:9092 \
//!     --feed oslo=https://gbfs.urbansharing.com/oslobysykkel.no/gbfs.json \
//!     --feed bergen=https://gbfs.urbansharing.com/bergenbysykkel.no/gbfs.json
//! ```
//!
//! Restarting it is safe: it reads back the last epoch it published and
//! goes on from there. Stops cleanly on Ctrl-C.

mod common;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::publish::{
    state_topic_beside, PublisherConfig, DEFAULT_DIRECTORY_TOPIC, DEFAULT_STATUS_TOPIC,
};
use velib_dataflow::poll::{FeedLocation, PollConfig, VELIB_FEED};
use velib_dataflow::producer::{run, run_systems, ProducerConfig, ProducerHandle};
use velib_dataflow::snapshot::StationSelection;
use velib_dataflow::systems::{check_topics, SystemFeed};

/// Poll a GBFS bike-share feed and publish each snapshot's changes to Kafka,
/// one atomic epoch per snapshot.
///
/// Logs one line per epoch published (stations changed, bikes, time taken)
/// and one per response refused, with its reason; a refused response never
/// stops it.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    stale: common::StaleArgs,

    /// The feed: a GBFS gbfs.json, or directly a station_status URL (GBFS or
    /// the City of Paris export). Repeat it as NAME=URL for several systems
    /// at once: each is polled on its own and publishes its own epochs to
    /// its own topics (<topic>.NAME, <directory-topic>.NAME, …); one
    /// without a name keeps the topics as they are [default: Vélib'
    /// Métropole]
    #[arg(long, env = "VELIB_FEED", value_name = "[NAME=]URL")]
    feed: Vec<String>,

    /// A file of systems to poll, one `NAME URL` a line (# for comments),
    /// as with --feed NAME=URL.
    #[arg(long, value_name = "FILE")]
    systems: Option<PathBuf>,

    /// The discovery language [default: the first listed].
    #[arg(long, value_name = "LANG")]
    language: Option<String>,

    /// Poll this station_status URL instead of discovering it.
    #[arg(long, value_name = "URL")]
    status_url: Option<String>,

    /// With --status-url: this station_information URL.
    #[arg(long, value_name = "URL", requires = "status_url")]
    information_url: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "VELIB_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// Topic of station statuses.
    #[arg(long, default_value = DEFAULT_STATUS_TOPIC, value_name = "TOPIC")]
    topic: String,

    /// Topic of directory entries (compacted).
    #[arg(long, default_value = DEFAULT_DIRECTORY_TOPIC, value_name = "TOPIC")]
    directory_topic: String,

    /// Compacted topic of every station's latest status, written in each
    /// epoch's transaction: what a restart reads instead of the status
    /// topic's history [default: <topic>-state]
    #[arg(long, value_name = "TOPIC")]
    state_topic: Option<String>,

    /// Keep no state topic: a restart reads the status topic in full
    #[arg(long, conflicts_with = "state_topic")]
    no_state: bool,

    /// Topic for rejected HTTP responses, raw (cut to 64 KiB) with why in
    /// headers ("" to only log and count them).
    #[arg(long, default_value = velib_dataflow::kafka::DEFAULT_DEAD_LETTER_TOPIC, value_name = "TOPIC")]
    dead_letter_topic: String,

    /// Keep only these stations, by code or id [default: all].
    #[arg(long, value_delimiter = ',', value_name = "CODE,CODE…")]
    stations: Vec<String>,

    /// Poll this often (500ms, 10s, 1m…) [default: the feed's ttl, within 1–60 s].
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION")]
    interval: Option<Duration>,

    /// Refresh station information this often (also when a station is new).
    #[arg(long, value_parser = common::parse_duration, default_value = "1h", value_name = "DURATION")]
    information_interval: Duration,

    /// Give up on a request after this long, body included.
    #[arg(long, value_parser = common::parse_duration, default_value = "30s", value_name = "DURATION")]
    timeout: Duration,

    /// Refuse response bodies larger than this many bytes.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_body_bytes: usize,

    /// Station -> postcode CSV, with a header naming `postcode` and
    /// `stationCode` and/or `station_id` [default: the shipped Vélib' table]
    #[arg(long, value_name = "FILE")]
    postcodes: Option<PathBuf>,

    /// Do not infer a missing postcode from the nearest station (count it
    /// under `unknown`).
    #[arg(long)]
    no_infer: bool,

    /// The producer's transactional.id [default: velib-producer-<topic>]
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,
}

fn main() -> ExitCode {
    common::init_logging();
    let (mut args, feed_from_env) = common::parse_with_feed_source::<Args>();
    // $VELIB_FEED stands for a missing --feed; a systems file lists them.
    if args.systems.is_some() && feed_from_env {
        args.feed.clear();
    }
    let metrics_addr = args.metrics_addr;
    let systems = match systems(&args).and_then(|systems| configure(args, systems)) {
        Ok(systems) => systems,
        Err(message) => {
            eprintln!("velib_producer: {message}");
            return ExitCode::from(2);
        }
    };
    let single_unnamed = matches!(systems.as_slice(), [(system, _)] if system.name.is_none());
    let mut metrics = velib_dataflow::metrics::Metrics::default();
    let systems: Vec<_> = systems
        .into_iter()
        .map(|(system, config)| {
            let handle = ProducerHandle::default();
            metrics = match &system.name {
                Some(name) => metrics.clone().system_producer(name, handle.clone()),
                None => metrics.clone().producer(handle.clone()),
            };
            (system.label().to_owned(), config, handle)
        })
        .collect();
    if let Err(message) = common::serve_metrics(metrics_addr, metrics) {
        eprintln!("velib_producer: {message}");
        return ExitCode::from(2);
    }
    let stoppers: Vec<ProducerHandle> = systems.iter().map(|(_, _, h)| h.clone()).collect();
    common::on_ctrl_c("stopping: finishing the epochs in flight", move || {
        stoppers.iter().for_each(ProducerHandle::stop)
    });
    let several = systems.len() > 1;
    if single_unnamed {
        // One unnamed feed: as it always ran, on this thread.
        let (_, config, handle) = systems.into_iter().next().expect("one system");
        return match run(config, handle) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("velib_producer: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut code = ExitCode::SUCCESS;
    for (name, outcome) in run_systems(systems) {
        if let Err(e) = outcome {
            match several {
                true => eprintln!(
                    "velib_producer: system {name}: {e} (the other systems went on until stopped)"
                ),
                false => eprintln!("velib_producer: {e}"),
            }
            code = ExitCode::from(1);
        }
    }
    code
}

/// The systems the flags name: --feed (repeated) and --systems, checked
/// together; Vélib' Métropole when none is.
fn systems(args: &Args) -> Result<Vec<SystemFeed>, String> {
    let systems = common::system_feeds(&args.feed, args.systems.as_deref())?;
    if systems.len() > 1 {
        for (flag, given) in [
            ("--status-url", args.status_url.is_some()),
            ("--stations", !args.stations.is_empty()),
            ("--language", args.language.is_some()),
        ] {
            if given {
                return Err(format!(
                    "{flag} is for one feed; with several systems, give each its gbfs.json"
                ));
            }
        }
    }
    Ok(systems)
}

fn configure(
    args: Args,
    systems: Vec<SystemFeed>,
) -> Result<Vec<(SystemFeed, ProducerConfig)>, String> {
    let base = configure_one(args)?;
    if systems.iter().any(|s| s.name.is_some()) {
        check_topics(&systems, &base.publish).map_err(|e| e.to_string())?;
    }
    Ok(systems
        .into_iter()
        .map(|system| {
            let mut config = base.clone();
            config.publish = system.topics(&base.publish);
            if let FeedLocation::Discover { url, .. } = &mut config.poll.location {
                url.clone_from(&system.url);
            }
            (system, config)
        })
        .collect())
}

fn configure_one(args: Args) -> Result<ProducerConfig, String> {
    if args.interval.is_some_and(|i| i.is_zero()) {
        return Err("--interval must be more than 0".into());
    }
    if args.max_body_bytes == 0 {
        return Err("--max-body-bytes must be more than 0".into());
    }
    let kafka = args.kafka.kafka_config()?;
    let postcodes = common::postcode_table(args.postcodes.as_deref())?;
    let location = match args.status_url {
        Some(status) => FeedLocation::Explicit {
            status,
            information: args.information_url,
        },
        None => FeedLocation::Discover {
            url: VELIB_FEED.into(),
            language: args.language,
        },
    };
    let mut poll = PollConfig::new(location);
    poll.interval = args.interval;
    poll.information_interval = args.information_interval;
    poll.fetch.timeout = args.timeout;
    poll.fetch.max_bytes = args.max_body_bytes;
    let selection = match args.stations.is_empty() {
        true => StationSelection::all(),
        false => StationSelection::only(args.stations),
    };
    let mut publish = PublisherConfig::new(kafka);
    publish.transactional_id = args
        .transactional_id
        .unwrap_or_else(|| format!("velib-producer-{}", args.topic));
    publish.state_topic = match (args.state_topic, args.no_state) {
        (_, true) => None,
        (Some(topic), false) => Some(topic),
        (None, false) => Some(state_topic_beside(&args.topic)),
    };
    publish.status_topic = args.topic;
    publish.directory_topic = args.directory_topic;
    publish.dead_letter_topic = Some(args.dead_letter_topic).filter(|t| !t.is_empty());
    publish.create_partitions = args.kafka.create_partitions();
    publish.replication = args.kafka.replication;
    Ok(ProducerConfig {
        poll,
        selection,
        publish,
        resolver: DirectoryResolver::new(postcodes, !args.no_infer),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        stale: args.stale.policy(),
        long_after: args.stale.long_after,
    })
}
