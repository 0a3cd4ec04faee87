//! The live page for any cluster: a map of the stations and a table of the
//! postcodes, in the browser, from an aggregator's committed output.
//!
//! ```sh
//! # the aggregator's default topics (velib-projet-clean and its state topic):
//! cargo run --example velib_view -- --brokers 127.0.0.1:9092 --http 127.0.0.1:8080
//! # then open http://127.0.0.1:8080/
//! # a system of `velib_aggregator --system oslo`:
//! cargo run --example velib_view -- --brokers 127.0.0.1:9092 --system oslo
//! ```
//!
//! It reads at `read_committed` with a consumer assigned its partitions: it
//! joins no consumer group, commits nothing and writes nothing, so it can
//! run next to the producer and the aggregator, as many times as wanted.
//! The stations come from the aggregator's state topic, written in the same
//! transactions as the output; an aggregator run with `--no-state` gives a
//! page without the map.

mod common;

use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use velib_dataflow::aggregator::{AggregatorConfig, StateTopic, DEFAULT_OUTPUT_TOPIC};
use velib_dataflow::kafka::publish::{DEFAULT_DIRECTORY_TOPIC, DEFAULT_STATUS_TOPIC};
use velib_dataflow::systems::parse_system_name;
use velib_dataflow::web::committed::CommittedConfig;
use velib_dataflow::web::LivePage;

/// Serve the live page of an aggregator's committed output: a map of the
/// stations, a sortable table of the postcodes, the city's totals, updated
/// in the browser on each committed epoch.
///
/// Reads only (read_committed, no consumer group, no commits). The
/// topic-creation flags (--partitions, --replication, --no-create-topics)
/// have no effect here.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// Serve the page at http://ADDR/.
    #[arg(
        long,
        env = "VELIB_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    http: SocketAddr,

    /// The aggregator's output topic.
    #[arg(long, default_value = DEFAULT_OUTPUT_TOPIC, value_name = "TOPIC")]
    output_topic: String,

    /// Its state topic, where the stations are [default: the output topic's
    /// name followed by -state, as the aggregator's default].
    #[arg(long, value_name = "TOPIC")]
    state_topic: Option<String>,

    /// Read no state topic (an aggregator run with --no-state has none):
    /// the page shows the postcodes, and no map.
    #[arg(long, conflicts_with = "state_topic")]
    no_state: bool,

    /// The aggregator's input topic of station statuses.
    #[arg(long, default_value = DEFAULT_STATUS_TOPIC, value_name = "TOPIC")]
    input_topic: String,

    /// The aggregator's directory topic.
    #[arg(long, default_value = DEFAULT_DIRECTORY_TOPIC, value_name = "TOPIC")]
    directory_topic: String,

    /// Serve Prometheus metrics of the page at http://ADDR/metrics.
    #[arg(long, env = "VELIB_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// Show this system of the aggregator's --system NAME: its topics are
    /// the ones above followed by .NAME (`default`: the unnamed system's).
    #[arg(long, value_name = "NAME")]
    system: Option<String>,

    /// How long to wait for the output topic before saying it is not there.
    #[arg(long, default_value = "60s", value_parser = common::parse_duration, value_name = "DURATION")]
    wait: Duration,
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    let configured = args.kafka.kafka_config().and_then(|kafka| {
        let system = match &args.system {
            Some(name) => parse_system_name(name).map_err(|e| format!("--system {e}"))?,
            None => None,
        };
        Ok((kafka, system))
    });
    let (kafka, system) = match configured {
        Ok(configured) => configured,
        Err(message) => {
            eprintln!("velib_view: {message}");
            return ExitCode::from(2);
        }
    };
    // The topics as the aggregator with these flags writes them.
    let mut aggregator = AggregatorConfig::new(kafka);
    aggregator.state_topic = match (args.no_state, args.state_topic) {
        (true, _) => StateTopic::None,
        (false, Some(topic)) => StateTopic::Named(topic),
        (false, None) => StateTopic::BesideOutput,
    };
    aggregator.output_topic = args.output_topic;
    aggregator.input_topic = args.input_topic;
    aggregator.directory_topic = Some(args.directory_topic);
    if let Some(name) = &system {
        aggregator = aggregator.for_system(name);
    }
    let mut committed = CommittedConfig::reading(&aggregator);
    committed.wait_for_topics = args.wait;
    let page = match LivePage::start(args.http, committed) {
        Ok(page) => page,
        Err(e) => {
            eprintln!("velib_view: --http {}: {e}", args.http);
            return ExitCode::from(1);
        }
    };
    eprintln!("velib_view: the live page is at http://{}/", page.addr());
    let metrics = velib_dataflow::metrics::Metrics::default().page(page.hub().clone());
    if let Err(message) = common::serve_metrics(args.metrics_addr, metrics) {
        eprintln!("velib_view: {message}");
        return ExitCode::from(1);
    }
    let (stop, stopped) = std::sync::mpsc::channel();
    common::on_ctrl_c("stopping", move || {
        let _ = stop.send(());
    });
    let _ = stopped.recv();
    ExitCode::SUCCESS
}
