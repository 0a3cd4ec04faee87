//! The pass-through baseline: the physical limit of this pipeline on a given
//! broker. `fill` writes a synthetic station status topic in the epoch
//! protocol, as `velib_producer` does (one transaction per epoch, a marker
//! on every partition closing it); `run` copies one topic to another
//! unchanged, one transaction per input epoch, with no decoding and no
//! dataflow, and reports what that costs. The aggregator reads and writes
//! the same way and does more in between, so it cannot beat these figures.
//!
//! ```sh
//! cargo run --release --example kafka_passthrough -- fill --brokers 127.0.0.1:9092 \
//!     --topic velib-loadgen --stations 1000000 --epochs 20 --change 0.01
//! cargo run --release --example kafka_passthrough -- run --brokers 127.0.0.1:9092 \
//!     --from velib-loadgen --to velib-passthrough
//! ```
//!
//! `run` prints one human line and one JSON line on stdout; logs go to
//! stderr. See docs/benchmarks.md, "Pass-through baseline".

/// The flags and logging the examples share.
mod common;

use clap::{Parser, Subcommand};
use common::synthetic::{percentiles_json, percentiles_text, Network, BASE_FEED_TIME};
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use velib_dataflow::kafka::protocol::{EpochMarker, EpochStamp, MARKER_KEY, MARKER_KIND};
use velib_dataflow::kafka::topics::{ensure_topics, TopicOutcome, TopicSpec};
use velib_dataflow::kafka::{KafkaConfig, EPOCH_HEADER, KIND_HEADER};

/// Measure the pipeline's ceiling on a broker: fill a synthetic status
/// topic in the epoch protocol, then copy it unchanged to another topic, one
/// transaction per input epoch, and report records/s, MB/s and latencies.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The two halves of a measurement: writing the input, copying it.
#[derive(Subcommand, Debug)]
enum Command {
    /// Write a synthetic station status topic: epoch 1 holds every station,
    /// each later epoch changes a fraction of them; one transaction per
    /// epoch, closed by a marker on every partition.
    Fill(FillArgs),
    /// Copy a topic to another unchanged (key, value, headers, partition),
    /// read committed, one transaction per input epoch, until caught up with
    /// the end offsets seen at start; then report.
    Run(RunArgs),
}

/// `fill`'s flags: the shared Kafka flags, and the shape of the network.
#[derive(clap::Args, Debug)]
struct FillArgs {
    /// Brokers, -X, and how a missing topic is created.
    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// The topic to write; it must be missing or empty.
    #[arg(long, default_value = "velib-loadgen", value_name = "TOPIC")]
    topic: String,

    /// Also write every record and marker to this topic (compacted, created
    /// with --topic's partition count), as the producer writes its state
    /// topic: what `scripts/restart-time --producer` restarts a producer on.
    #[arg(long, value_name = "TOPIC")]
    state_topic: Option<String>,

    /// Topic configuration of the state topic when created, over the
    /// producer's (`segment.ms=1000` to let the log cleaner do an hour's
    /// work in a second).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_topic_config, requires = "state_topic")]
    state_topic_config: Vec<(String, String)>,

    /// Stations in the synthetic network (Vélib' has about 1,500).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    stations: u32,

    /// Epochs to write (the first holds every station).
    #[arg(long, default_value_t = 20, value_name = "N")]
    epochs: u64,

    /// The fraction of the stations changed by each epoch after the first.
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    change: f64,

    /// Seed of the pseudo-random network and changes: same seed, same records.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,

    /// Start each epoch this long after the previous one started (500ms,
    /// 2s…) rather than at once: a feed's pace, for measuring `run
    /// --follow`'s latency.
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION")]
    interval: Option<Duration>,

    /// Bounds each broker round trip (metadata, commit); transactions may
    /// stay open twice this long.
    #[arg(long, value_parser = common::parse_duration, default_value = "30s", value_name = "DURATION")]
    timeout: Duration,

    /// The producer's transactional.id [default: velib-loadgen-<topic>]
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,

    /// Wait for acknowledgements with rdkafka's `Producer::flush` (which
    /// polls in 100 ms steps, and which `commit_transaction` calls first), as
    /// the crate's publisher and sink do today, rather than as soon as the
    /// queue is empty: what that step costs per transaction.
    #[arg(long)]
    rdkafka_flush: bool,
}

/// `run`'s flags. Not `common::KafkaArgs`: the output topic is created with
/// the input's partition count, so `--partitions` would mislead.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT…].
    #[arg(long, env = "KAFKA_BROKERS", value_name = "HOST:PORT")]
    brokers: String,

    /// librdkafka property for both clients (repeatable), as kcat's -X:
    /// e.g. -X fetch.queue.backoff.ms=10 -X linger.ms=20.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,

    /// The topic to copy, read from its beginning.
    #[arg(long, default_value = "velib-loadgen", value_name = "TOPIC")]
    from: String,

    /// The topic to copy to; created with the input's partition count if
    /// missing, and it must be empty.
    #[arg(long, default_value = "velib-passthrough", value_name = "TOPIC")]
    to: String,

    /// Replication factor of the output topic, when created.
    #[arg(long, default_value_t = 1, value_name = "N")]
    replication: i32,

    /// Do not create the output topic; fail if it is missing.
    #[arg(long)]
    no_create_topics: bool,

    /// Once caught up, keep copying new epochs until none arrived for this
    /// long (run it beside `fill --interval` to measure epoch latency); the
    /// input topic may then appear up to --timeout after the start.
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION")]
    follow: Option<Duration>,

    /// Bounds each broker round trip, and how long reading may stall before
    /// it is an error.
    #[arg(long, value_parser = common::parse_duration, default_value = "30s", value_name = "DURATION")]
    timeout: Duration,

    /// The producer's transactional.id [default: velib-passthrough-<to>]
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,

    /// Wait for acknowledgements with rdkafka's `Producer::flush` (which
    /// polls in 100 ms steps, and which `commit_transaction` calls first), as
    /// the crate's publisher and sink do today, rather than as soon as the
    /// queue is empty: what that step costs per transaction.
    #[arg(long)]
    rdkafka_flush: bool,
}

/// Why the tool stopped, which decides its exit status: a command line that
/// makes no sense (2, as clap's own errors) or a failure while running (1).
#[derive(Debug)]
enum Failure {
    /// A bad flag or combination of flags.
    Usage(String),
    /// Kafka refused, timed out, or the topics do not fit.
    Run(String),
}

/// `?` on a `Result<_, String>` is a failure while running.
impl From<String> for Failure {
    /// Failures while running are the common case, built with `?` from a
    /// message.
    fn from(message: String) -> Self {
        Failure::Run(message)
    }
}

/// Parses the command line, runs the subcommand, and maps its outcome to the
/// exit status: 0, 1 (failed while running) or 2 (bad command line).
fn main() -> ExitCode {
    common::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fill(args) => fill(args),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("kafka_passthrough: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Run(message)) => {
            eprintln!("kafka_passthrough: {message}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------- clients

/// A librdkafka configuration: the brokers, `defaults`, then the user's
/// `-X` properties, which win. The same order as the crate's own clients
/// (whose builder is crate-private), so that a `-X` means the same here.
fn client_config(kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka.brokers());
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in kafka.properties() {
        config.set(key, value);
    }
    config
}

/// The transactional producer of both subcommands, configured as the
/// crate's publisher and sink configure theirs (idempotent, transactions
/// allowed twice `timeout`, message timeout `timeout`, librdkafka's
/// defaults otherwise), so that the baseline pays what the pipeline pays.
fn transactional_producer(
    kafka: &KafkaConfig,
    transactional_id: &str,
    timeout: Duration,
) -> Result<ThreadedProducer<DefaultProducerContext>, String> {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(
        kafka,
        &[
            ("transactional.id", transactional_id),
            ("enable.idempotence", "true"),
            (
                "transaction.timeout.ms",
                &(timeout.as_millis() * 2).to_string(),
            ),
            ("message.timeout.ms", &timeout.as_millis().to_string()),
        ],
    )
    .create()
    .map_err(|e| format!("creating a producer for {}: {e}", kafka.brokers()))?;
    producer.init_transactions(timeout).map_err(|e| {
        format!(
            "initialising transactions as {transactional_id:?} on {}: {e}",
            kafka.brokers()
        )
    })?;
    Ok(producer)
}

/// Sends `record`, waiting while librdkafka's queue is full: the
/// back-pressure that keeps a fast reader (or generator) from piling a whole
/// epoch up in memory.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), RdKafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits until every record sent is acknowledged, then commits; returns how
/// long both took (the commit latency of the report, in both modes, since
/// rdkafka's `commit_transaction` flushes first).
///
/// rdkafka 0.39's `Producer::flush` calls librdkafka's flush without
/// waiting, then `poll(100 ms)`, which (since rust-rdkafka#748) always
/// blocks for its whole timeout: any flush with a record in flight costs a
/// multiple of 100 ms, and `commit_transaction` starts with one. Unless
/// `rdkafka_flush`, this asks librdkafka's flush without waiting until it
/// says the queue is empty, so that `commit_transaction`'s own flush returns
/// at once and the commit costs what the broker takes.
fn drain_and_commit(
    producer: &ThreadedProducer<DefaultProducerContext>,
    timeout: Duration,
    rdkafka_flush: bool,
) -> Result<Duration, RdKafkaError> {
    let started = Instant::now();
    drain(producer, timeout, rdkafka_flush)?;
    producer.commit_transaction(timeout)?;
    Ok(started.elapsed())
}

/// Waits until every record sent is acknowledged, within `timeout`: with
/// rdkafka's flush if `rdkafka_flush`, else as soon as librdkafka's queue is
/// empty (see [`drain_and_commit`]).
fn drain(
    producer: &ThreadedProducer<DefaultProducerContext>,
    timeout: Duration,
    rdkafka_flush: bool,
) -> Result<(), RdKafkaError> {
    if rdkafka_flush {
        return producer.flush(timeout);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match producer.flush(Duration::ZERO) {
            Err(RdKafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_micros(200))
            }
            other => return other,
        }
    }
}

/// How many partitions `topic` has, or an error naming it and the brokers:
/// brokers that do not answer within `timeout`, or a missing topic (then
/// followed by `if_missing`, a hint on what to do).
fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    brokers: &str,
    timeout: Duration,
    if_missing: &str,
) -> Result<i32, String> {
    partitions_if_any(client, topic, brokers, timeout)?
        .ok_or_else(|| format!("topic {topic} does not exist on {brokers}{if_missing}"))
}

/// How many partitions `topic` has, `None` if it does not exist (yet); an
/// error if the brokers do not answer within `timeout`.
fn partitions_if_any<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<Option<i32>, String> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("reading the partitions of {topic} on {brokers}: {e}"))?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
}

/// Refuses a topic that already holds records: `fill` numbers epochs from 1
/// and `run`'s output is checked record for record against its input, so
/// either on top of an earlier run would measure and count the wrong thing.
fn require_empty<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    flag: &str,
) -> Result<(), String> {
    for partition in 0..partitions {
        let (low, high) = client
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("reading the offsets of {topic}[{partition}]: {e}"))?;
        if high > low {
            return Err(format!(
                "topic {topic} already holds records ({topic}[{partition}] has offsets {low}..{high}); \
                 delete it (kafka-topics.sh --delete --topic {topic}) or give another {flag}"
            ));
        }
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions if it is missing, and
/// says what it found: the log then shows which topics a run wrote to.
fn prepare_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<(), String> {
    prepare(
        kafka,
        TopicSpec::new(topic, partitions).replication(replication),
        timeout,
    )
}

/// A `--state-topic-config` value: `key=value`.
fn parse_topic_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "expected KEY=VALUE (segment.ms=1000), not {text:?}"
        )),
    }
}

/// Creates the topic `spec` describes if it is missing, and says what it
/// found.
fn prepare(kafka: &KafkaConfig, spec: TopicSpec, timeout: Duration) -> Result<(), String> {
    let partitions = spec.partitions;
    for (name, outcome) in ensure_topics(kafka, &[spec], timeout).map_err(|e| e.to_string())? {
        match outcome {
            TopicOutcome::Created => tracing::info!("{name}: created, {partitions} partitions"),
            TopicOutcome::Exists { partitions } => {
                tracing::info!("{name}: exists, {partitions} partitions")
            }
            other => tracing::info!("{name}: {other:?}"),
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch: the clock Kafka timestamps are on.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------- figures

/// The bytes of a record as an application sees them: key, value, and each
/// header's name and value. The same measure in `fill` and `run`.
fn record_bytes<H: Headers>(key: usize, value: usize, headers: Option<&H>) -> usize {
    let headers = headers.map_or(0, |h| {
        (0..h.count())
            .filter_map(|i| h.try_get(i))
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    key + value + headers
}

/// What a copy or a fill did, for the report.
#[derive(Debug, Default)]
struct Figures {
    /// Records written, markers included.
    records: u64,
    /// Of which epoch markers.
    markers: u64,
    /// Their bytes (see [`record_bytes`]).
    bytes: u64,
    /// Transactions committed.
    transactions: u64,
    /// How long each `commit_transaction` took.
    commits: Vec<Duration>,
    /// Per transaction closing an epoch: from the epoch's first marker's
    /// Kafka timestamp to the commit's return.
    epoch_latencies: Vec<Duration>,
}

/// Reporting, shared by `fill` and `run` so that both speak the same units.
impl Figures {
    /// The report: one human line, then one JSON line (with `extra` fields),
    /// on stdout, for people and for scripts.
    fn print(&self, what: &str, elapsed: Duration, extra: serde_json::Value) {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let records_per_s = self.records as f64 / seconds;
        let mb_per_s = self.bytes as f64 / 1e6 / seconds;
        println!(
            "{what} {} records ({} markers), {:.1} MB in {seconds:.2} s: {records_per_s:.0} records/s, \
             {mb_per_s:.1} MB/s; {} transactions, commit {}; epoch latency {}",
            self.records,
            self.markers,
            self.bytes as f64 / 1e6,
            self.transactions,
            percentiles_text(&self.commits),
            percentiles_text(&self.epoch_latencies),
        );
        let mut json = serde_json::json!({
            "records": self.records,
            "markers": self.markers,
            "bytes": self.bytes,
            "elapsed_s": seconds,
            "records_per_s": records_per_s,
            "mb_per_s": mb_per_s,
            "transactions": self.transactions,
            "commit_ms": percentiles_json(&self.commits),
            "epoch_latency_ms": percentiles_json(&self.epoch_latencies),
        });
        if let (Some(json), serde_json::Value::Object(extra)) = (json.as_object_mut(), extra) {
            json.extend(extra);
        }
        println!("{json}");
    }
}

// ---------------------------------------------------------------- fill

/// Record headers from `(name, value)` pairs, as the crate writes them.
fn owned_headers(pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |headers, (k, v)| {
            headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        },
    )
}

/// `fill`: checks the flags, prepares an empty topic, and writes the epochs.
fn fill(args: FillArgs) -> Result<(), Failure> {
    if args.stations == 0 || args.stations > 100_000_000 {
        return Err(Failure::Usage(
            "--stations must be from 1 to 100000000".into(),
        ));
    }
    if args.epochs == 0 {
        return Err(Failure::Usage("--epochs must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&args.change) {
        return Err(Failure::Usage(format!(
            "--change must be a fraction from 0 to 1, not {}",
            args.change
        )));
    }
    if args.timeout.is_zero() {
        return Err(Failure::Usage("--timeout must be more than 0".into()));
    }
    let kafka = args.kafka.kafka_config().map_err(Failure::Usage)?;
    let transactional_id = args
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("velib-loadgen-{}", args.topic));
    if let Some(partitions) = args.kafka.create_partitions() {
        prepare_topic(
            &kafka,
            &args.topic,
            partitions,
            args.kafka.replication,
            args.timeout,
        )?;
    }
    let producer = transactional_producer(&kafka, &transactional_id, args.timeout)?;
    let partitions = partition_count(
        producer.client(),
        &args.topic,
        kafka.brokers(),
        args.timeout,
        " (--no-create-topics: create it first)",
    )?;
    require_empty(
        producer.client(),
        &args.topic,
        partitions,
        args.timeout,
        "--topic",
    )?;
    let mut topics = vec![args.topic.as_str()];
    if let Some(state) = &args.state_topic {
        let spec = args.state_topic_config.iter().fold(
            TopicSpec::new(state, partitions)
                .changelog()
                .replication(args.kafka.replication),
            |spec, (key, value)| spec.config(key, value),
        );
        prepare(&kafka, spec, args.timeout)?;
        require_empty(
            producer.client(),
            state,
            partitions,
            args.timeout,
            "--state-topic",
        )?;
        topics.push(state);
    }
    // Changing 1 % of 1,500 stations is 15, never 0 when asked for some.
    let changes = match (args.change * f64::from(args.stations)).round() as usize {
        0 if args.change > 0.0 => 1,
        n => n,
    };
    let attempt = format!("{:x}-{:08x}.1", now_ms(), fastrand::u32(..));
    tracing::info!(
        topic = args.topic,
        partitions,
        stations = args.stations,
        changes,
        epochs = args.epochs,
        attempt,
        "filling"
    );
    let mut network = Network::new(args.stations, args.seed);
    let mut figures = Figures::default();
    let started = Instant::now();
    let mut previous: Option<Instant> = None;
    for epoch in 1..=args.epochs {
        // Paced from the previous epoch's start, so that a slow epoch (the
        // first, of every station) is followed by one epoch, not a burst.
        if let (Some(interval), Some(previous)) = (args.interval, previous) {
            std::thread::sleep((previous + interval).saturating_duration_since(Instant::now()));
        }
        previous = Some(Instant::now());
        let feed_time = BASE_FEED_TIME + 60 * i64::try_from(epoch).unwrap_or(i64::MAX / 120);
        let stations = if epoch == 1 {
            (0..args.stations).collect()
        } else {
            network.change(changes, feed_time)
        };
        let began = Instant::now();
        let before = (figures.records, figures.bytes);
        let commit = write_epoch(
            &producer,
            &topics,
            partitions,
            &network,
            &stations,
            EpochMarker {
                epoch,
                attempt: attempt.clone(),
                feed_time: Some(feed_time),
            },
            args.timeout,
            args.rdkafka_flush,
            &mut figures,
        )
        .map_err(|e| {
            if let Err(abort) = producer.abort_transaction(args.timeout) {
                tracing::debug!("aborting: {abort}");
            }
            format!("writing epoch {epoch} to {}: {e}", args.topic)
        })?;
        figures.transactions += 1;
        figures.commits.push(commit);
        tracing::info!(
            "epoch {epoch}: {} records, {:.1} MB, {:.2} s (commit {:.1} ms)",
            figures.records - before.0,
            (figures.bytes - before.1) as f64 / 1e6,
            began.elapsed().as_secs_f64(),
            commit.as_secs_f64() * 1e3
        );
    }
    figures.print(
        &format!("filled {}:", args.topic),
        started.elapsed(),
        serde_json::json!({
            "command": "fill",
            "topic": args.topic,
            "partitions": partitions,
            "stations": args.stations,
            "changes_per_epoch": changes,
            "epochs": args.epochs,
            "rdkafka_flush": args.rdkafka_flush,
        }),
    );
    Ok(())
}

/// One epoch as the producer publishes it, in one transaction: the changed
/// stations' records, a flush so that every one is on the log before any
/// marker, then a marker on every partition. Returns how long the commit
/// took; the caller aborts on error.
#[allow(clippy::too_many_arguments)]
fn write_epoch(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topics: &[&str],
    partitions: i32,
    network: &Network,
    stations: &[u32],
    marker: EpochMarker,
    timeout: Duration,
    rdkafka_flush: bool,
    figures: &mut Figures,
) -> Result<Duration, RdKafkaError> {
    producer.begin_transaction()?;
    let stamp: EpochStamp = marker.stamp();
    let headers = owned_headers(&stamp.headers());
    let header_bytes = record_bytes(0, 0, Some(&headers)) as u64;
    for &station in stations {
        let (key, value) = network.record(station, marker.epoch);
        for topic in topics {
            figures.records += 1;
            figures.bytes += (key.len() + value.len()) as u64 + header_bytes;
            send(
                producer,
                BaseRecord::to(topic)
                    .key(&key[..])
                    .payload(&value[..])
                    .headers(headers.clone()),
            )?;
        }
    }
    drain(producer, timeout, rdkafka_flush)?;
    let value = marker.to_json();
    let marker_headers = owned_headers(&marker.headers());
    for (topic, partition) in topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (t, p)))
    {
        figures.records += 1;
        figures.markers += 1;
        figures.bytes += record_bytes(MARKER_KEY.len(), value.len(), Some(&marker_headers)) as u64;
        send(
            producer,
            BaseRecord::to(topic)
                .partition(partition)
                .key(MARKER_KEY.as_bytes())
                .payload(&value[..])
                .headers(marker_headers.clone()),
        )?;
    }
    drain_and_commit(producer, timeout, rdkafka_flush)
}

// ---------------------------------------------------------------- run

/// The epoch a record closes, if it is a marker: key [`MARKER_KEY`], header
/// [`KIND_HEADER`]` = marker`, epoch in [`EPOCH_HEADER`]. Only the key and
/// headers are read, never the value: the pass-through does not decode.
fn marker_epoch(key: Option<&[u8]>, headers: Option<&OwnedHeaders>) -> Option<u64> {
    if key != Some(MARKER_KEY.as_bytes()) {
        return None;
    }
    let headers = headers?;
    let header = |name: &str| {
        // The last header of a name wins, as Kafka clients read them.
        (0..headers.count())
            .rev()
            .filter_map(|i| headers.try_get(i))
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    };
    if header(KIND_HEADER) != Some(MARKER_KIND.as_bytes()) {
        return None;
    }
    std::str::from_utf8(header(EPOCH_HEADER)?)
        .ok()?
        .parse()
        .ok()
}

/// The consumer's librdkafka context: reaching the end of a partition is
/// how `run` learns it has caught up, not an error, so it is not logged as
/// one (rdkafka's default context logs it at error level); anything else is.
struct QuietEof;

/// Errors are logged through tracing, except the end of a partition.
impl ClientContext for QuietEof {
    /// Logs librdkafka's error, unless it is a partition's end.
    fn error(&self, error: RdKafkaError, reason: &str) {
        match error {
            RdKafkaError::PartitionEOF(_)
            | RdKafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!("{reason}")
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }
}

/// No rebalance or commit callbacks: the consumer assigns its partitions
/// and commits nothing.
impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// The copy in progress: where each input partition stands in the epoch
/// protocol, the records read ahead of the open epoch, and the figures.
///
/// The open transaction holds epoch `floor + 1`: on each partition, the
/// records after the marker of `floor` up to the marker of `floor + 1`. A
/// partition whose marker of `floor + 1` has been copied while another's has
/// not is ahead: what it delivers meanwhile belongs to the next transaction
/// and is held until the commit. So each output transaction is exactly one
/// input epoch, as the aggregator's would be.
struct Copier<'a> {
    /// The producer, its transactions initialised.
    producer: &'a ThreadedProducer<DefaultProducerContext>,
    /// The output topic.
    to: &'a str,
    /// Bounds each commit.
    timeout: Duration,
    /// Wait with rdkafka's flush before committing (see [`drain_and_commit`]).
    rdkafka_flush: bool,
    /// Per input partition, the last epoch whose marker was copied.
    passed: Vec<Option<u64>>,
    /// The lowest of `passed` when the open transaction began.
    floor: Option<u64>,
    /// Per input partition, records read ahead of the open epoch.
    held: Vec<VecDeque<OwnedMessage>>,
    /// Whether a transaction is open (begun, not yet committed).
    open: bool,
    /// The earliest Kafka timestamp of the markers in the open transaction.
    first_marker_ms: Option<i64>,
    /// Epochs completed on every partition.
    epochs: u64,
    /// When the last commit returned: the end of the measured copy (with
    /// `--follow`, the idle wait after it is not copying).
    last_commit: Option<Instant>,
    /// Records copied up to the last commit, to log each transaction's size.
    records_committed: u64,
    /// What has been copied.
    figures: Figures,
}

/// Copying, holding back, and committing epoch by epoch.
impl<'a> Copier<'a> {
    /// A copier of `partitions` input partitions, none read yet.
    fn new(
        producer: &'a ThreadedProducer<DefaultProducerContext>,
        to: &'a str,
        partitions: usize,
        timeout: Duration,
        rdkafka_flush: bool,
    ) -> Self {
        Copier {
            producer,
            to,
            timeout,
            rdkafka_flush,
            passed: vec![None; partitions],
            floor: None,
            held: (0..partitions).map(|_| VecDeque::new()).collect(),
            open: false,
            first_marker_ms: None,
            epochs: 0,
            last_commit: None,
            records_committed: 0,
            figures: Figures::default(),
        }
    }

    /// Whether partition `p` has passed the open epoch's marker, so that
    /// what it delivers now belongs to a later transaction.
    fn ahead(&self, p: usize) -> bool {
        self.passed[p] > self.floor
    }

    /// Takes one record read from partition `p`: copies it into the open
    /// transaction, or holds it if `p` is ahead; commits when that completes
    /// an epoch on every partition.
    fn offer(
        &mut self,
        p: usize,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), String> {
        if self.ahead(p) {
            self.held[p].push_back(message.detach());
            return Ok(());
        }
        let headers = message.headers().map(|h| h.detach());
        self.copy(p, message, headers)?;
        self.settle()
    }

    /// Sends one record to the same partition of the output, unchanged, in
    /// the open transaction (begun if none is), and notes a marker.
    fn copy<M: Message>(
        &mut self,
        p: usize,
        message: &M,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), String> {
        if !self.open {
            self.producer
                .begin_transaction()
                .map_err(|e| format!("beginning a transaction on {}: {e}", self.to))?;
            self.open = true;
        }
        let key = message.key();
        let value = message.payload();
        self.figures.records += 1;
        self.figures.bytes += record_bytes(
            key.map_or(0, <[u8]>::len),
            value.map_or(0, <[u8]>::len),
            headers.as_ref(),
        ) as u64;
        if let Some(epoch) = marker_epoch(key, headers.as_ref()) {
            self.figures.markers += 1;
            // A marker of an epoch already passed (a later attempt's) is
            // only a record: the first marker of an epoch decides.
            if self.passed[p] < Some(epoch) {
                self.passed[p] = Some(epoch);
                if let Some(ms) = message.timestamp().to_millis() {
                    self.first_marker_ms = Some(self.first_marker_ms.map_or(ms, |m| m.min(ms)));
                }
            }
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(self.to).partition(p as i32);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        send(self.producer, record).map_err(|e| format!("copying to {}: {e}", self.to))
    }

    /// Commits whenever every partition has passed the open epoch's marker,
    /// then copies what the partitions no longer ahead had held, which may
    /// complete the next epoch in turn.
    fn settle(&mut self) -> Result<(), String> {
        loop {
            let lowest = self.passed.iter().min().copied().flatten();
            if lowest <= self.floor {
                return Ok(());
            }
            self.commit()?;
            self.epochs += 1;
            self.floor = lowest;
            for p in 0..self.held.len() {
                while !self.ahead(p) {
                    let Some(mut message) = self.held[p].pop_front() else {
                        break;
                    };
                    let headers = message.detach_headers();
                    self.copy(p, &message, headers)?;
                }
            }
        }
    }

    /// Commits the open transaction, timing it, and the epoch's latency
    /// from its first marker's timestamp.
    fn commit(&mut self) -> Result<(), String> {
        if !self.open {
            return Ok(());
        }
        let took = match drain_and_commit(self.producer, self.timeout, self.rdkafka_flush) {
            Ok(took) => took,
            Err(e) => {
                if let Err(abort) = self.producer.abort_transaction(self.timeout) {
                    tracing::debug!("aborting: {abort}");
                }
                return Err(format!("committing a transaction on {}: {e}", self.to));
            }
        };
        self.figures.commits.push(took);
        self.last_commit = Some(Instant::now());
        self.figures.transactions += 1;
        self.open = false;
        let latency = self.first_marker_ms.take().map(|ms| {
            let latency = Duration::from_millis(u64::try_from(now_ms() - ms).unwrap_or(0));
            self.figures.epoch_latencies.push(latency);
            latency
        });
        let records = self.figures.records - self.records_committed;
        self.records_committed = self.figures.records;
        tracing::info!(
            "transaction {}: epoch {:?}, {records} records, commit {:.1} ms, epoch latency {}",
            self.figures.transactions,
            self.passed.iter().min().copied().flatten(),
            took.as_secs_f64() * 1e3,
            latency.map_or("none".into(), |l| format!("{} ms", l.as_millis())),
        );
        Ok(())
    }

    /// At the end: copies whatever is still held and commits it. Returns
    /// whether that last transaction is a partial epoch (the input ended, at
    /// the offsets seen at start, inside an epoch on some partition).
    fn finish(&mut self) -> Result<bool, String> {
        let mut partial = false;
        for p in 0..self.held.len() {
            while let Some(mut message) = self.held[p].pop_front() {
                partial = true;
                let headers = message.detach_headers();
                self.copy(p, &message, headers)?;
            }
        }
        partial |= self.open;
        self.commit()?;
        Ok(partial)
    }
}

/// `run`: checks the flags and topics, then copies until caught up (and,
/// with `--follow`, until idle), and reports.
fn run(args: RunArgs) -> Result<(), Failure> {
    if args.from == args.to {
        return Err(Failure::Usage(
            "--from and --to must differ: a topic copied into itself never ends".into(),
        ));
    }
    if args.timeout.is_zero() {
        return Err(Failure::Usage("--timeout must be more than 0".into()));
    }
    if args.follow.is_some_and(|f| f.is_zero()) {
        return Err(Failure::Usage("--follow must be more than 0".into()));
    }
    if args.replication < 1 {
        return Err(Failure::Usage("--replication must be at least 1".into()));
    }
    let mut kafka = KafkaConfig::new(args.brokers.clone());
    for property in &args.properties {
        kafka = kafka
            .with_property(property)
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let transactional_id = args
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("velib-passthrough-{}", args.to));

    // The reader, as the aggregator's source reads: read committed, its own
    // assignment, no offsets committed, the same read-ahead bound.
    let consumer: BaseConsumer<QuietEof> = client_config(
        &kafka,
        &[
            ("group.id", "velib-passthrough"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            ("queued.max.messages.kbytes", "16384"),
        ],
    )
    .create_with_context(QuietEof)
    .map_err(|e| format!("creating a consumer for {}: {e}", kafka.brokers()))?;
    // With --follow, `fill` may not have created the input yet: wait for it.
    let waiting = Instant::now();
    let partitions = loop {
        match partitions_if_any(consumer.client(), &args.from, kafka.brokers(), args.timeout)? {
            Some(partitions) => break partitions,
            None if args.follow.is_some() && waiting.elapsed() < args.timeout => {
                std::thread::sleep(Duration::from_millis(200))
            }
            None => {
                return Err(Failure::Run(format!(
                "topic {} does not exist on {} (fill it first: kafka_passthrough fill --topic {})",
                args.from,
                kafka.brokers(),
                args.from
            )))
            }
        }
    };
    // At read_committed these are the last stable offsets: where the input's
    // committed epochs ended when the run began.
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(&args.from, partition, args.timeout)
            .map_err(|e| format!("reading the end offsets of {}[{partition}]: {e}", args.from))?;
        starts.push(low);
        ends.push(high);
    }

    if !args.no_create_topics {
        prepare_topic(&kafka, &args.to, partitions, args.replication, args.timeout)?;
    }
    let producer = transactional_producer(&kafka, &transactional_id, args.timeout)?;
    let out_partitions = partition_count(
        producer.client(),
        &args.to,
        kafka.brokers(),
        args.timeout,
        " (--no-create-topics: create it first)",
    )?;
    if out_partitions != partitions {
        return Err(Failure::Run(format!(
            "{} has {out_partitions} partitions and {} has {partitions}: a pass-through keeps each \
             record in its partition, so they must be equal; give another --to",
            args.to, args.from
        )));
    }
    require_empty(
        producer.client(),
        &args.to,
        partitions,
        args.timeout,
        "--to",
    )?;

    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(&args.from, partition, Offset::Beginning)
            .map_err(|e| format!("assigning {}[{partition}]: {e}", args.from))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assigning the partitions of {}: {e}", args.from))?;
    tracing::info!(
        from = args.from,
        to = args.to,
        partitions,
        ends = ?ends,
        "copying"
    );

    let mut copier = Copier::new(
        &producer,
        &args.to,
        partitions as usize,
        args.timeout,
        args.rdkafka_flush,
    );
    // Done: caught up with the end seen at start (an empty partition is).
    let mut done: Vec<bool> = starts.iter().zip(&ends).map(|(s, e)| e <= s).collect();
    let mut first_record: Option<Instant> = None;
    let mut last_event = Instant::now();
    let mut caught_up: Option<Instant> = None;
    loop {
        if done.iter().all(|d| *d) {
            let since = *caught_up.get_or_insert_with(|| {
                tracing::info!("caught up with the end offsets seen at start");
                Instant::now()
            });
            match args.follow {
                None => break,
                Some(idle) if since.elapsed() >= idle && last_event.elapsed() >= idle => break,
                Some(_) => {}
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if caught_up.is_none() && last_event.elapsed() >= args.timeout {
                    let behind: Vec<usize> = (0..done.len()).filter(|p| !done[*p]).collect();
                    return Err(Failure::Run(format!(
                        "nothing read from {} for {:?}, partitions {behind:?} not caught up \
                         (is the broker at {} still up?)",
                        args.from,
                        args.timeout,
                        kafka.brokers()
                    )));
                }
            }
            Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                last_event = Instant::now();
                if let Some(d) = usize::try_from(partition)
                    .ok()
                    .and_then(|p| done.get_mut(p))
                {
                    *d = true;
                }
            }
            Some(Err(e @ RdKafkaError::MessageConsumptionFatal(_))) => {
                return Err(Failure::Run(format!("reading {}: {e}", args.from)));
            }
            Some(Err(e)) => tracing::warn!("reading {}: {e}", args.from),
            Some(Ok(message)) => {
                let now = Instant::now();
                first_record.get_or_insert(now);
                last_event = now;
                let p = message.partition() as usize;
                if message.offset() + 1 >= ends[p] {
                    done[p] = true;
                }
                copier.offer(p, &message)?;
            }
        }
    }
    let partial = copier.finish()?;
    if partial {
        tracing::warn!(
            "the input ended inside an epoch on some partition: the last transaction holds a partial epoch"
        );
    }
    // From the first record read to the last commit.
    let elapsed = match (first_record, copier.last_commit) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    copier.figures.print(
        &format!("copied {} -> {}:", args.from, args.to),
        elapsed,
        serde_json::json!({
            "command": "run",
            "from": args.from,
            "to": args.to,
            "partitions": partitions,
            "epochs": copier.epochs,
            "follow": args.follow.is_some(),
            "partial_last_transaction": partial,
            "rdkafka_flush": args.rdkafka_flush,
        }),
    );
    Ok(())
}
