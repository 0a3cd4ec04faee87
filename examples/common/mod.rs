//! What the example binaries share: logging and flag parsing.
#![allow(dead_code)]

pub mod synthetic;

use std::time::Duration;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// A duration flag: `500ms`, `10s`, `2m`, `1h`, or a bare number of
/// seconds (`2.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 2m, 1h)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if !number.is_finite() || number < 0.0 || number * scale > 86_400.0 * 365.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(number * scale))
}

/// The Kafka flags every binary takes.
#[derive(clap::Args, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT…].
    #[arg(long, env = "KAFKA_BROKERS", value_name = "HOST:PORT")]
    pub brokers: String,

    /// librdkafka property for every client (repeatable), as kcat's -X:
    /// e.g. -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,

    /// Partitions of the topics created when missing.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub partitions: i32,

    /// Replication factor of the topics created when missing.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub replication: i32,

    /// Do not create missing topics; fail if one is missing.
    #[arg(long)]
    pub no_create_topics: bool,
}

impl KafkaArgs {
    /// The cluster, with the -X properties.
    pub fn kafka_config(&self) -> Result<velib_dataflow::kafka::KafkaConfig, String> {
        if self.partitions < 1 {
            return Err("--partitions must be at least 1".into());
        }
        if self.replication < 1 {
            return Err("--replication must be at least 1".into());
        }
        let mut kafka = velib_dataflow::kafka::KafkaConfig::new(self.brokers.clone());
        for property in &self.properties {
            kafka = kafka.with_property(property).map_err(|e| e.to_string())?;
        }
        Ok(kafka)
    }

    /// How many partitions to create missing topics with, if any.
    pub fn create_partitions(&self) -> Option<i32> {
        (!self.no_create_topics).then_some(self.partitions)
    }
}

/// The postcode table: the file given, or the shipped Vélib' one.
pub fn postcode_table(
    path: Option<&std::path::Path>,
) -> Result<velib_dataflow::postcode::PostcodeTable, String> {
    match path {
        Some(path) => {
            velib_dataflow::postcode::PostcodeTable::from_path(path).map_err(|e| e.to_string())
        }
        None => Ok(velib_dataflow::postcode::PostcodeTable::velib()),
    }
}

/// The text of a small file: refused when larger than `max` bytes or not
/// UTF-8, with why.
pub fn read_small_file(path: &std::path::Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))
}

/// Calls `stop` on Ctrl-C (SIGINT or SIGTERM), saying `what` it does.
pub fn on_ctrl_c(what: &'static str, stop: impl Fn() + Send + 'static) {
    if let Err(e) = ctrlc::set_handler(move || {
        tracing::info!("{what}");
        stop();
    }) {
        tracing::warn!("Ctrl-C will not stop cleanly: {e}");
    }
}

/// Serves Prometheus metrics at `addr`, if given, and says where.
pub fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    metrics: velib_dataflow::metrics::Metrics,
) -> Result<(), String> {
    if let Some(addr) = addr {
        let bound = velib_dataflow::metrics::serve(addr, metrics)
            .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        tracing::info!("Prometheus metrics at http://{bound}/metrics");
    }
    Ok(())
}

/// timely's cluster flags, as its own examples take them.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Timely worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1, value_name = "N")]
    pub workers: usize,

    /// Timely processes.
    #[arg(short = 'n', long, default_value_t = 1, value_name = "N")]
    pub processes: usize,

    /// This process's index, 0 to N-1.
    #[arg(short = 'p', long, default_value_t = 0, value_name = "I")]
    pub process: usize,

    /// File of host:port, one line per process [default: localhost:2101+i].
    #[arg(short = 'h', long, value_name = "FILE")]
    pub hostfile: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    /// The timely configuration, or what is wrong with the flags.
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        velib_dataflow::cluster::cluster_config(
            self.workers,
            self.processes,
            self.process,
            self.hostfile.as_deref(),
        )
        .map_err(|e| e.to_string())
    }
}

/// How stations are judged: when their counts are stale, when empty or
/// full is for long.
#[derive(clap::Args, Debug)]
pub struct StaleArgs {
    /// A station whose `last_reported` is older than this at a snapshot's
    /// feed time counts as stale in it (`nbr_stations_stale`,
    /// `nbr_bikes_stale`): `90m`, `2h`, `7200` (seconds)
    #[arg(long, value_parser = parse_duration, default_value = "2h", value_name = "DURATION")]
    pub stale_after: Duration,

    /// A station empty (or full) for longer than this, counted from the
    /// first snapshot that found it so, is so for long
    /// (`nbr_stations_empty_long`, `nbr_stations_full_long`)
    #[arg(long, value_parser = parse_duration, default_value = "30m", value_name = "DURATION")]
    pub long_after: Duration,
}

impl StaleArgs {
    /// The policy the flag says.
    pub fn policy(&self) -> velib_dataflow::freshness::StalePolicy {
        velib_dataflow::freshness::StalePolicy::after_age(self.stale_after)
    }
}

/// The systems of a `--systems` file (at most 1 MiB of UTF-8), errors
/// naming the flag and the file.
pub fn read_systems_file(
    path: &std::path::Path,
) -> Result<Vec<velib_dataflow::systems::SystemFeed>, String> {
    let text =
        read_small_file(path, 1 << 20).map_err(|e| format!("--systems {}: {e}", path.display()))?;
    velib_dataflow::systems::parse_systems_file(&text)
        .map_err(|e| format!("--systems {}: {e}", path.display()))
}

/// The systems `--feed` (repeated, `[NAME=]URL`) and `--systems FILE` name,
/// checked together; Vélib' Métropole, unnamed, when neither does.
pub fn system_feeds(
    feeds: &[String],
    file: Option<&std::path::Path>,
) -> Result<Vec<velib_dataflow::systems::SystemFeed>, String> {
    use velib_dataflow::systems::{check_systems, SystemFeed};
    let mut systems = feeds
        .iter()
        .map(|feed| {
            feed.parse::<SystemFeed>()
                .map_err(|e| format!("--feed {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = file {
        systems.extend(read_systems_file(path)?);
    }
    if systems.is_empty() {
        systems.push(SystemFeed {
            name: None,
            url: velib_dataflow::poll::VELIB_FEED.into(),
        });
    }
    check_systems(&systems).map_err(|e| e.to_string())?;
    Ok(systems)
}

/// The flags, and whether `--feed`'s value came from its environment
/// variable only (`$VELIB_FEED`), for which a systems file then stands (it
/// lists the feeds); exits with clap's message on bad flags.
pub fn parse_with_feed_source<A: clap::Parser>() -> (A, bool) {
    let matches = A::command().get_matches();
    let args = A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let from_env = matches.value_source("feed") == Some(clap::parser::ValueSource::EnvVariable);
    (args, from_env)
}
