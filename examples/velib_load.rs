//! Load through the whole pipeline on a real broker: a synthetic network of
//! N stations (15 per postcode) published epoch by epoch through the
//! producer's publisher (`EpochPublisher`, one transaction per epoch with
//! its markers, the producer's state topic included), read and counted by
//! the aggregator running in this process, its output committed. Reports
//! throughput, consumer lag, and each epoch's close → commit latency (from
//! the publisher's commit to the aggregator's output commit), with a
//! progress line every second.
//!
//! ```sh
//! scripts/apache-kafka run --dir /tmp/load-kafka --port 39092 &
//! cargo run --release --example velib_load -- --brokers 127.0.0.1:39092 \
//!     --stations 1000000 --change-percent 1 --epochs 20
//! # at a set rate instead of as fast as the aggregator keeps up:
//! cargo run --release --example velib_load -- --brokers 127.0.0.1:39092 --stations 1500 --rate 1
//! ```
//!
//! Every run writes topics of its own (`<prefix>-<run>`, printed), so runs
//! never read each other's epochs; at 1,000,000 stations that is about 2 GB
//! on the broker per run (delete the broker's `--dir` between series). The report is one human line on stderr
//! and one JSON line on stdout.

mod common;

use clap::Parser;
use common::synthetic::{percentiles_json, percentiles_text, Network, BASE_FEED_TIME};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorHandle, StateTopic};
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::StationId;
use velib_dataflow::kafka::publish::{
    state_topic_beside, EpochPublisher, PublishedTopic, PublisherConfig, StationRecord,
};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::station_records::parse_station_key;

/// The aggregator buffers a whole epoch (the first one is every station)
/// and frees it once written: mimalloc reuses those pages where glibc's
/// malloc returns them to the system and zeroes fresh ones each epoch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Synthetic load through producer, broker and aggregator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    kafka: common::KafkaArgs,

    /// Stations in the network (15 per postcode).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    stations: u32,

    /// Stations changing per epoch, in percent of the network.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    change_percent: f64,

    /// Epochs to publish; the first holds every station.
    #[arg(long, default_value_t = 20, value_name = "N")]
    epochs: u64,

    /// Epochs per second; without it, as fast as the aggregator keeps up
    /// (at most --ahead epochs published and not yet committed).
    #[arg(long, value_name = "EPOCHS/S")]
    rate: Option<f64>,

    /// Without --rate: epochs published ahead of the aggregator's commits.
    #[arg(long, default_value_t = 2, value_name = "N")]
    ahead: u64,

    /// The aggregator's timely workers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,

    /// What the run's topics are named after.
    #[arg(long, default_value = "velib-load", value_name = "NAME")]
    topic_prefix: String,

    /// The network's random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Publish every epoch first, then start the aggregator and time how
    /// fast it reads the backlog (what `kafka_passthrough run` measures for a
    /// plain copy of the same topic).
    #[arg(long, conflicts_with = "rate")]
    catch_up: bool,

    /// Run the aggregator without its state topic (a restart would read the
    /// input again): what the state changelog costs.
    #[arg(long)]
    no_state: bool,

    /// Give up when the aggregator has committed nothing new for this long.
    #[arg(long, default_value = "120s", value_parser = common::parse_duration)]
    stall: Duration,
}

/// What the flags say, checked.
fn check(args: &Args) -> Result<(), String> {
    if args.stations == 0 || args.stations > 20_000_000 {
        return Err("--stations must be between 1 and 20,000,000".into());
    }
    if !(args.change_percent > 0.0 && args.change_percent <= 100.0) {
        return Err("--change-percent must be above 0 and at most 100".into());
    }
    if args.epochs == 0 || args.epochs > 1_000_000 {
        return Err("--epochs must be between 1 and 1,000,000".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r <= 1000.0)) {
        return Err("--rate must be above 0 and at most 1000 epochs a second".into());
    }
    if args.ahead == 0 {
        return Err("--ahead must be at least 1".into());
    }
    if args.workers == 0 || args.workers > 64 {
        return Err("--workers must be between 1 and 64".into());
    }
    Ok(())
}

/// Station `i`'s directory entry: postcode `i / 15`, five digits.
fn entry(i: u32, id: StationId) -> DirectoryEntry {
    DirectoryEntry {
        station_id: id,
        code: Some(format!("{i:05}")),
        name: format!("Station {i}"),
        position: None,
        capacity: None,
        postcode: Postcode::parse(&format!("{:05}", i / 15)).expect("digits are a postcode"),
        postcode_source: PostcodeSource::Table,
    }
}

/// Station `i`'s status record at `epoch`, as the producer writes it.
fn status_record(network: &Network, i: u32, epoch: u64) -> Result<StationRecord, String> {
    let (key, value) = network.record(i, epoch);
    let station = parse_station_key(&key).map_err(|e| e.to_string())?;
    Ok(StationRecord {
        topic: PublishedTopic::Status,
        station,
        value: Some(value),
    })
}

/// When each epoch closed (its transaction committed) and when the
/// aggregator's output of it was seen committed.
#[derive(Default)]
struct Timeline {
    closed: BTreeMap<u64, Instant>,
    committed: BTreeMap<u64, Instant>,
}

fn run(args: Args) -> Result<(), String> {
    let kafka = args.kafka.kafka_config()?;
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let status_topic = format!("{}-{run_id}", args.topic_prefix);
    let directory_topic = format!("{status_topic}-directory");
    let output_topic = format!("{status_topic}-out");
    eprintln!("topics: {status_topic}, {directory_topic}, {output_topic}");

    let mut publisher = PublisherConfig::new(kafka.clone());
    publisher.status_topic = status_topic.clone();
    publisher.directory_topic = directory_topic.clone();
    publisher.state_topic = Some(state_topic_beside(&status_topic));
    publisher.transactional_id = format!("velib-load-producer-{run_id}");
    publisher.create_partitions = args.kafka.create_partitions();
    publisher.replication = args.kafka.replication;
    publisher.dead_letter_topic = None;
    let (mut publisher, _) = EpochPublisher::connect(publisher).map_err(|e| e.to_string())?;

    let mut config = AggregatorConfig::new(kafka);
    config.input_topic = status_topic.clone();
    config.directory_topic = Some(directory_topic);
    config.output_topic = output_topic;
    config.state_topic = match args.no_state {
        true => StateTopic::None,
        false => StateTopic::BesideOutput,
    };
    config.transactional_id = format!("velib-load-aggregator-{run_id}");
    config.create_partitions = args.kafka.create_partitions();
    config.replication = args.kafka.replication;
    config.dead_letter_topic = None;
    let handle = AggregatorHandle::default();
    let workers = args.workers;
    let start_aggregator = {
        let handle = handle.clone();
        move || {
            let timely = if workers == 1 {
                timely::Config::thread()
            } else {
                timely::Config::process(workers)
            };
            (
                Instant::now(),
                std::thread::spawn(move || aggregator::run(timely, config, handle)),
            )
        }
    };
    let mut start_aggregator = Some(start_aggregator);
    let mut aggregator = match args.catch_up {
        true => None,
        false => start_aggregator.take().map(|start| start()),
    };

    let timeline = Arc::new(Mutex::new(Timeline::default()));
    // Polls the aggregator's commits every millisecond: the latency's end.
    let watcher = {
        let (handle, timeline) = (handle.clone(), Arc::clone(&timeline));
        let last = args.epochs;
        std::thread::spawn(move || {
            let mut seen = 0;
            while seen < last && handle.error().is_none() {
                if let Some(committed) = handle.committed().filter(|c| *c > seen) {
                    let now = Instant::now();
                    if let Ok(mut t) = timeline.lock() {
                        for epoch in seen + 1..=committed {
                            t.committed.insert(epoch, now);
                        }
                    }
                    seen = committed;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let changes =
        ((f64::from(args.stations) * args.change_percent / 100.0).round() as usize).max(1);
    let mut network = Network::new(args.stations, args.seed);
    let start = Instant::now();
    let mut published_records = 0u64;
    let mut last_progress = Instant::now();
    let mut last_commit_seen = (Instant::now(), handle.committed());
    for epoch in 1..=args.epochs {
        // Paced, or held until the aggregator is close enough behind.
        match args.rate {
            _ if args.catch_up => {}
            Some(rate) => {
                let due = start + Duration::from_secs_f64((epoch - 1) as f64 / rate);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            None => {
                while handle.committed().unwrap_or(0) + args.ahead < epoch {
                    if let Some(error) = handle.error() {
                        return Err(format!("the aggregator stopped: {error}"));
                    }
                    if handle.committed() != last_commit_seen.1 {
                        last_commit_seen = (Instant::now(), handle.committed());
                    } else if last_commit_seen.0.elapsed() > args.stall {
                        handle.stop();
                        return Err(format!(
                            "the aggregator committed nothing for {:?} (at epoch {:?})",
                            args.stall,
                            handle.committed()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let feed_time = BASE_FEED_TIME + 60 * epoch as i64;
        let mut records = Vec::new();
        if epoch == 1 {
            for i in 0..args.stations {
                let status = status_record(&network, i, epoch)?;
                let id = status.station.clone();
                records.push(status);
                let value = serde_json::to_vec(&entry(i, id.clone())).map_err(|e| e.to_string())?;
                records.push(StationRecord {
                    topic: PublishedTopic::Directory,
                    station: id,
                    value: Some(value),
                });
            }
        } else {
            for i in network.change(changes, feed_time) {
                records.push(status_record(&network, i, epoch)?);
            }
        }
        publisher
            .publish(epoch, feed_time, &records)
            .map_err(|e| format!("publishing epoch {epoch}: {e}"))?;
        if let Ok(mut t) = timeline.lock() {
            t.closed.insert(epoch, Instant::now());
        }
        published_records += records.len() as u64;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&handle, epoch, start);
        }
    }
    let published_in = start.elapsed();
    if let Some(start) = start_aggregator.take() {
        eprintln!(
            "{} epochs published in {published_in:.2?}: the aggregator starts",
            args.epochs
        );
        aggregator = Some(start());
    }
    let (aggregator_start, aggregator) = aggregator.ok_or("the aggregator never started")?;
    // The last epochs' commits.
    let deadline = Instant::now() + args.stall;
    while handle.committed() < Some(args.epochs) {
        if let Some(error) = handle.error() {
            return Err(format!("the aggregator stopped: {error}"));
        }
        if Instant::now() > deadline {
            handle.stop();
            return Err(format!(
                "epoch {} not committed within {:?}",
                args.epochs, args.stall
            ));
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&handle, args.epochs, start);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let reading = aggregator_start.elapsed();
    let _ = watcher.join();
    let stats = handle.source_stats();
    handle.stop();
    match aggregator.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the aggregator: {e}")),
        Err(_) => return Err("the aggregator panicked".into()),
    }

    let timeline = timeline.lock().map_err(|_| "the timeline's lock")?;
    // Epoch 1 is the initial load: its latency is reported apart, and so
    // are the epochs closed while it was being counted (they waited for it).
    let loaded = timeline.committed.get(&1).copied();
    let latencies: Vec<Duration> = timeline
        .closed
        .iter()
        .filter(|(epoch, closed)| **epoch > 1 && loaded.is_some_and(|l| **closed >= l))
        .filter_map(|(epoch, closed)| Some(timeline.committed.get(epoch)?.duration_since(*closed)))
        .collect();
    let first = timeline
        .closed
        .get(&1)
        .zip(timeline.committed.get(&1))
        .map(|(closed, committed)| committed.duration_since(*closed));
    // From the aggregator's start: with --catch-up, the backlog alone.
    let records_per_s = stats.records as f64 / reading.as_secs_f64();
    // A backlog's age is no latency.
    let latencies = if args.catch_up { Vec::new() } else { latencies };
    eprintln!(
        "{} stations, {changes} changing per epoch, {} epochs, {} worker(s): {published_records} \
         records published, {} read by the aggregator in {reading:.2?} ({records_per_s:.0} records/s), \
         {elapsed:.2?} in all; close → commit {} ({} epochs closed after the first was committed); \
         the first epoch (every station) {}",
        args.stations,
        args.epochs,
        args.workers,
        stats.records,
        percentiles_text(&latencies),
        latencies.len(),
        match (args.catch_up, first) {
            (true, _) => "not measured (a backlog)".to_owned(),
            (false, Some(d)) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
            (false, None) => "not seen".to_owned(),
        },
    );
    println!(
        "{}",
        serde_json::json!({
            "stations": args.stations,
            "changes_per_epoch": changes,
            "epochs": args.epochs,
            "workers": args.workers,
            "rate": args.rate,
            "records_published": published_records,
            "records_read": stats.records,
            "catch_up": args.catch_up,
            "state": !args.no_state,
            "seconds": elapsed.as_secs_f64(),
            "published_seconds": published_in.as_secs_f64(),
            "aggregator_seconds": reading.as_secs_f64(),
            "records_per_s": records_per_s,
            "close_to_commit_ms": percentiles_json(&latencies),
            "close_to_commit_epochs": latencies.len(),
            "first_epoch_ms": first.filter(|_| !args.catch_up).map(|d| d.as_secs_f64() * 1e3),
            "topic": status_topic,
        })
    );
    Ok(())
}

/// The progress line: epochs published and committed, records read, lag.
fn progress(handle: &AggregatorHandle, published: u64, start: Instant) {
    let stats = handle.source_stats();
    let lag: i64 = stats
        .consumer_lag
        .values()
        .flat_map(|partitions| partitions.values())
        .sum();
    eprintln!(
        "{:>6.1} s: epoch {published} published, {:?} committed, {} records read, consumer lag {lag}",
        start.elapsed().as_secs_f64(),
        handle.committed(),
        stats.records,
    );
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    // A flag out of range is a usage error, as clap's own are.
    if let Err(error) = check(&args) {
        eprintln!("velib_load: {error}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("velib_load: {error}");
            ExitCode::FAILURE
        }
    }
}
