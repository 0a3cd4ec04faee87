//! Audits an aggregator's output on a live cluster, exactly: every complete
//! epoch of the output topic against a from-scratch computation over the
//! input as of that epoch's committed positions, and the output's epochs
//! for duplicates, gaps and tears (see `velib_dataflow::audit`).
//!
//! It reads at `read_committed` with consumers assigned their partitions:
//! it joins no consumer group, commits nothing and writes nothing, so it
//! can run next to the producer and the aggregator.
//!
//! ```sh
//! # the aggregator's defaults (velib-projet + velib-directory -> velib-projet-clean):
//! cargo run --example velib_audit -- --brokers 127.0.0.1:9092
//! # an aggregator run with --no-directory and a postcode table of its own:
//! cargo run --example velib_audit -- --brokers 127.0.0.1:9092 --no-directory --postcodes stations.csv
//! # one system of `velib_aggregator --system oslo` (velib-projet.oslo … -> velib-projet-clean.oslo):
//! cargo run --example velib_audit -- --brokers 127.0.0.1:9092 --system oslo
//! # other topics, the report as one JSON object on stdout, on a managed cluster:
//! cargo run --example velib_audit -- --brokers broker-1:9093 \
//!     -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN \
//!     -X sasl.username=velib -X sasl.password="$KAFKA_PASSWORD" \
//!     --input-topic statuses --directory-topic stations --output-topic counts --json > audit.json
//! ```
//!
//! Prints a summary (the first mismatches in detail) and exits with 0 when
//! the output is clean, 1 on any mismatch, duplicated, missing or torn
//! epoch (or malformed output record), 2 on a usage error or when the
//! cluster cannot be read (after at most `--stall` without progress).

mod common;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use velib_dataflow::aggregator::{DEFAULT_INPUT_TOPIC, DEFAULT_OUTPUT_TOPIC};
use velib_dataflow::audit::{audit, AuditConfig};
use velib_dataflow::kafka::publish::DEFAULT_DIRECTORY_TOPIC;
use velib_dataflow::systems::parse_system_name;

/// Check that an aggregator's output topic holds exactly what its input
/// says, epoch by epoch: counts equal to a from-scratch computation, no
/// epoch duplicated, missing or torn.
///
/// Reads only (read_committed, no consumer group, no commits): safe on a
/// live cluster. The topic-creation flags (--partitions, --replication,
/// --no-create-topics) have no effect here. Exit status: 0 clean, 1 not
/// clean, 2 usage error or cluster unreadable.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// Topic of station statuses the aggregator read.
    #[arg(long, default_value = DEFAULT_INPUT_TOPIC, value_name = "TOPIC")]
    input_topic: String,

    /// Topic of directory entries the aggregator placed stations with.
    #[arg(long, default_value = DEFAULT_DIRECTORY_TOPIC, value_name = "TOPIC")]
    directory_topic: String,

    /// The aggregator ran with --no-directory: place stations with the
    /// postcode table (--postcodes); stations not in it count under `unknown`.
    #[arg(long)]
    no_directory: bool,

    /// Station -> postcode CSV the aggregator used with --no-directory
    /// [default: the shipped Vélib' table]
    #[arg(long, value_name = "FILE")]
    postcodes: Option<PathBuf>,

    /// Topic of per-postcode counts to audit.
    #[arg(long, default_value = DEFAULT_OUTPUT_TOPIC, value_name = "TOPIC")]
    output_topic: String,

    /// Audit this system of `velib_aggregator --system NAME`: the topics
    /// above followed by .NAME, and every record saying `"system":"NAME"`
    /// (`default`: the unnamed system, whose records say none).
    #[arg(long, value_name = "NAME")]
    system: Option<String>,

    /// Print the report as one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,

    /// Give up when reading makes no progress for this long (500ms, 10s, 2m).
    #[arg(long, default_value = "30s", value_parser = common::parse_duration, value_name = "DURATION")]
    stall: Duration,

    /// Print a progress line to stderr every N records read.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    progress_every: u64,
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    let json = args.json;
    let config = match configure(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("velib_audit: {message}");
            return ExitCode::from(2);
        }
    };
    let report = match audit(&config, |progress| eprintln!("audit: {progress}")) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("velib_audit: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("velib_audit: the report does not serialise: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{report}");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn configure(args: Args) -> Result<AuditConfig, String> {
    let kafka = args.kafka.kafka_config()?;
    let mut config = AuditConfig::new(kafka);
    config.input_topic = args.input_topic;
    config.directory_topic = (!args.no_directory).then_some(args.directory_topic);
    config.output_topic = args.output_topic;
    config.postcodes = Arc::new(common::postcode_table(args.postcodes.as_deref())?);
    config.stall = args.stall;
    config.progress_every = args.progress_every;
    if let Some(name) = &args.system {
        if let Some(name) = parse_system_name(name).map_err(|e| format!("--system {e}"))? {
            config = config.for_system(&name);
        }
    }
    Ok(config)
}
