//! Reads station statuses from Kafka and keeps per-postcode counts on a
//! compacted Kafka topic, one transaction per epoch.
//!
//! ```sh
//! # what velib_producer publishes (statuses, and the directory that places stations):
//! cargo run --example velib_aggregator -- --brokers 127.0.0.1:9092
//! # the seeds' producer.py format (unkeyed raw GBFS station JSON) is told
//! # by its records; to say it anyway:
//! cargo run --example velib_aggregator -- --brokers 127.0.0.1:9092 --input-format seed
//! # TLS + SASL, as kcat takes them:
//! cargo run --example velib_aggregator -- --brokers broker:9093 \
//!     -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN \
//!     -X sasl.username=me -X sasl.password=secret
//! # two processes of two workers each:
//! cargo run --example velib_aggregator -- --brokers … -w 2 -n 2 -p 0 -h hosts.txt
//! cargo run --example velib_aggregator -- --brokers … -w 2 -n 2 -p 1 -h hosts.txt
//! # the systems of `velib_producer --feed oslo=URL --feed bergen=URL`,
//! # each in its own dataflow, to velib-projet-clean.oslo and .bergen:
//! cargo run --example velib_aggregator -- --brokers … --system oslo --system bergen
//! # or those of its --systems file:
//! cargo run --example velib_aggregator -- --brokers … --systems systems.txt
//! ```
//!
//! Stops cleanly on Ctrl-C: the epochs already read are finished and
//! written, none half-written. Killed at any point, it resumes at its last
//! committed epoch: its state restored from the state topic, its input read
//! from the committed positions, no committed epoch written again.

mod common;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use velib_dataflow::aggregator::{
    run, run_systems, AggregatorConfig, AggregatorHandle, StateTopic, DEFAULT_DEAD_LETTER_TOPIC,
    DEFAULT_INPUT_TOPIC, DEFAULT_OUTPUT_TOPIC,
};
use velib_dataflow::kafka::publish::DEFAULT_DIRECTORY_TOPIC;
use velib_dataflow::kafka::source::Framing;
use velib_dataflow::systems::{
    check_aggregator_topics, check_names, parse_system_name, SystemsError,
};

/// Keep per-postcode bike counts from a Kafka topic of station statuses.
///
/// Writes to the output topic, keyed by postcode, one JSON value per
/// postcode whose counts changed (`postcode`, `nbr_total`, `nbr_meca`,
/// `nbr_elec`, docks, stations, `epoch`, `feed_time`), a tombstone for a
/// postcode left without stations, and after each epoch a progress record
/// (key `__velib_progress`) on every partition.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, disable_help_flag = true)]
struct Args {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "VELIB_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// Topic of station statuses.
    #[arg(long, default_value = DEFAULT_INPUT_TOPIC, value_name = "TOPIC")]
    input_topic: String,

    /// Topic of directory entries written by velib_producer: stations get
    /// the postcodes the producer gave them (the feed's, the table's, or
    /// inferred), so both agree.
    #[arg(long, default_value = DEFAULT_DIRECTORY_TOPIC, value_name = "TOPIC")]
    directory_topic: String,

    /// Place stations with the postcode table (--postcodes) instead of the
    /// directory topic; stations not in it count under `unknown`.
    #[arg(long)]
    no_directory: bool,

    /// Topic of per-postcode counts.
    #[arg(long, default_value = DEFAULT_OUTPUT_TOPIC, value_name = "TOPIC")]
    output_topic: String,

    /// Compacted topic of the state a restart restores from, written in each
    /// epoch's transaction [default: <output topic>-state]
    #[arg(long, value_name = "TOPIC")]
    state_topic: Option<String>,

    /// Keep no state topic: a restart reads the input from its start again
    /// (it still writes no committed epoch twice).
    #[arg(long, conflicts_with = "state_topic")]
    no_state: bool,

    /// Topic for records that cannot be read ("" to only log and count them).
    #[arg(long, default_value = DEFAULT_DEAD_LETTER_TOPIC, value_name = "TOPIC")]
    dead_letter_topic: String,

    /// How the input marks its epochs: `auto` tells by its first records,
    /// `epochs` for velib_producer's epoch protocol, `seed` for the seeds'
    /// producer.py (unkeyed station JSON; an epoch closes whenever the
    /// input is caught up; stations placed by the postcode table).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    input_format: InputFormat,

    /// Station -> postcode CSV, with a header naming `postcode` and
    /// `stationCode` and/or `station_id`, used with --no-directory or the
    /// seeds' format [default: the shipped Vélib' table]
    #[arg(long, value_name = "FILE")]
    postcodes: Option<PathBuf>,

    /// The output producer's transactional.id [default: velib-aggregator-<output topic>]
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,

    /// Also write each postcode's vehicles by the feed's vehicle_type_id
    /// (GBFS v2.3 and v3 `vehicle_types_available`): a `vehicle_types`
    /// object in each record, e.g. `{"city": 4, "cargo": 1}`. An output
    /// topic written without it (or with it) is not resumed with it (or
    /// without): start over on a new or emptied topic.
    #[arg(long)]
    vehicle_types: bool,

    /// Aggregate this system of velib_producer's (--feed NAME=URL):
    /// repeat it for several, each its own dataflow, epochs and
    /// transactional id, reading <input topic>.NAME and
    /// <directory topic>.NAME, writing <output topic>.NAME (and its state
    /// <state topic>.NAME) with `"system":"NAME"` in each record. `default`
    /// is the system without a name, on the topics as they are.
    #[arg(long, value_name = "NAME")]
    system: Vec<String>,

    /// Aggregate the systems of this velib_producer --systems file (one
    /// `NAME URL` a line; the URLs are the producer's business).
    #[arg(long, value_name = "FILE")]
    systems: Option<PathBuf>,

    #[command(flatten)]
    cluster: common::ClusterArgs,

    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InputFormat {
    /// Told by the input's first records.
    Auto,
    /// velib_producer's epoch protocol.
    Epochs,
    /// The seeds' producer.py: unkeyed raw GBFS station JSON.
    Seed,
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    let metrics_addr = args.metrics_addr;
    let configured = system_names(&args).and_then(|names| {
        let (timely_config, base) = configure(args)?;
        let systems = systems(&names, &base, &timely_config)?;
        Ok((timely_config, base, systems))
    });
    let (timely_config, base, systems) = match configured {
        Ok(configured) => configured,
        Err(message) => {
            eprintln!("velib_aggregator: {message}");
            return ExitCode::from(2);
        }
    };
    let mut metrics = velib_dataflow::metrics::Metrics::default();
    let handles: Vec<AggregatorHandle> = systems.iter().map(|(_, _, h)| h.clone()).collect();
    for (name, _, handle) in &systems {
        metrics = match name {
            Some(name) => metrics.system_aggregator(name, handle.clone()),
            None => metrics.aggregator(handle.clone()),
        };
    }
    if let Err(message) = common::serve_metrics(metrics_addr, metrics) {
        eprintln!("velib_aggregator: {message}");
        return ExitCode::from(2);
    }
    common::on_ctrl_c("stopping: finishing the epochs already read", move || {
        handles.iter().for_each(AggregatorHandle::stop)
    });
    if let [(None, _, handle)] = &systems[..] {
        // The default system alone: as it always ran, on this thread.
        return match run(timely_config, base, handle.clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("velib_aggregator: {e}");
                ExitCode::from(1)
            }
        };
    }
    let systems: Vec<(String, AggregatorConfig, AggregatorHandle)> = systems
        .into_iter()
        .map(|(name, config, handle)| {
            let label = name.unwrap_or_else(|| "default".into());
            (label, config, handle)
        })
        .collect();
    let several = systems.len() > 1;
    let mut code = ExitCode::SUCCESS;
    for (name, outcome) in run_systems(timely_config, systems) {
        if let Err(e) = outcome {
            let others = if several {
                " (the other systems went on until stopped)"
            } else {
                ""
            };
            eprintln!("velib_aggregator: system {name}: {e}{others}");
            code = ExitCode::from(1);
        }
    }
    code
}

/// The systems --system and --systems name, checked together; the default
/// system alone when neither does.
fn system_names(args: &Args) -> Result<Vec<Option<String>>, String> {
    let mut names = args
        .system
        .iter()
        .map(|name| parse_system_name(name).map_err(|e| format!("--system {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.systems {
        let listed = common::read_systems_file(path)?;
        names.extend(listed.into_iter().map(|s| s.name));
    }
    if names.is_empty() {
        names.push(None);
    }
    check_names(names.iter().map(Option::as_deref)).map_err(|e| match e {
        // The aggregator names the unnamed system `default`.
        SystemsError::SeveralUnnamed { .. } => "system default is listed twice".to_owned(),
        e => e.to_string(),
    })?;
    Ok(names)
}

/// Each system's configuration, from the flags' (`base`): the default
/// system's as it is, a named one's on its own topics.
fn systems(
    names: &[Option<String>],
    base: &AggregatorConfig,
    timely_config: &timely::Config,
) -> Result<Vec<(Option<String>, AggregatorConfig, AggregatorHandle)>, String> {
    let cluster = matches!(
        timely_config.communication,
        timely::CommunicationConfig::Cluster { .. }
    );
    if names.len() > 1 && cluster {
        return Err("-n above 1 is for one system: several systems run on this \
                    process's threads (-w), each its own dataflow"
            .into());
    }
    check_aggregator_topics(names, base).map_err(|e| e.to_string())?;
    Ok(names
        .iter()
        .map(|name| {
            let config = match name {
                Some(name) => base.for_system(name),
                None => base.clone(),
            };
            (name.clone(), config, AggregatorHandle::default())
        })
        .collect())
}

fn configure(args: Args) -> Result<(timely::Config, AggregatorConfig), String> {
    let timely_config = args.cluster.timely_config()?;
    let kafka = args.kafka.kafka_config()?;
    let postcodes = common::postcode_table(args.postcodes.as_deref())?;
    let mut config = AggregatorConfig::new(kafka);
    config.transactional_id = args
        .transactional_id
        .unwrap_or_else(|| format!("velib-aggregator-{}", args.output_topic));
    config.input_topic = args.input_topic;
    config.directory_topic = (!args.no_directory).then_some(args.directory_topic);
    config.output_topic = args.output_topic;
    config.state_topic = match (args.state_topic, args.no_state) {
        (_, true) => StateTopic::None,
        (Some(topic), false) => StateTopic::Named(topic),
        (None, false) => StateTopic::BesideOutput,
    };
    config.dead_letter_topic = Some(args.dead_letter_topic).filter(|t| !t.is_empty());
    config.framing = match args.input_format {
        InputFormat::Auto => None,
        InputFormat::Epochs => Some(Framing::Epochs),
        InputFormat::Seed => Some(Framing::Ingestion),
    };
    config.postcodes = Arc::new(postcodes);
    config.vehicle_types = args.vehicle_types;
    config.create_partitions = args.kafka.create_partitions();
    config.replication = args.kafka.replication;
    Ok((timely_config, config))
}
