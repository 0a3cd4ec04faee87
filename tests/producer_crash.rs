//! Exactly once across producer crashes, proven by killing: the
//! `velib_producer` binary is killed with SIGKILL at random points of a run
//! of 20 epochs (the recorded Paris series, then synthetic polls of its last
//! file) and restarted each time, on a real Apache Kafka. kcat, at
//! read_committed, then reads the producer's topics: every epoch from 1 to
//! the last exactly once, completed by one attempt with a marker on every
//! partition of both topics, holding exactly the snapshot's net changes
//! (each changed station once, with its new value or a tombstone, and no
//! other). The aggregator, running all along, writes output equal to the
//! from-scratch reference at every epoch.
//!
//! The feed (a local HTTP server) serves one snapshot again and again, and
//! moves to the next only once the test has seen it committed: no snapshot
//! is skipped, so the epochs are exactly `common::sequence` of the files,
//! whatever the kills. In 12 of the 20 rounds, at random, the producer that
//! was polling when the snapshot appeared is killed: a random moment after
//! its first request for it (before, during or after the transaction), or
//! right after the first of the transaction's records reaches the broker
//! (in it, or in its commit); then, one such round in two, the restarted
//! producer is killed a random moment into its start (fencing the killed
//! one, reading its topics back, or publishing the epoch the killed one did
//! not). Each run sends its records in librdkafka's default batches or, at
//! random, one record per batch, which stretches a transaction from a few
//! ms to some 250. Every kill is logged with where it landed, told from
//! what the killed run left on the log: nothing; records of an open
//! transaction, without or with markers; or its epoch committed. Kills
//! mid-transaction must be among them, and their attempts must be exactly
//! the aborted ones on the log; each restart must go on from exactly the
//! last epoch committed.
//!
//! `PRODUCER_CRASH_SEED=N` replays the kill points of a failed run (the
//! seed is printed).

mod common;

use common::broker::Broker;
use common::http::{FeedServer, Reply};
use common::output::{assert_epochs_on_topic, header, published};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorError, AggregatorHandle};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::directory::{DirectoryEntry, DirectoryResolver};
use velib_dataflow::feed::{payload, StationStatus};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::snapshot::{net_changes, Snapshot, SnapshotSequencer, StationSelection};
use velib_dataflow::station_records::station_key;

const STATUS: &str = "velib-projet";
const DIRECTORY: &str = "velib-directory";
const OUTPUT: &str = "velib-projet-clean";
const FEED: &str = "/paris.json";
/// Partitions of each of the producer's topics (its default).
const PARTITIONS: usize = 3;
/// Synthetic polls after the 10 recorded files.
const SYNTHETIC: usize = 12;
/// How often the producer polls.
const INTERVAL: &str = "50ms";
/// Rounds (epochs) whose snapshot is met by kills.
const KILL_ROUNDS: usize = 12;
/// A kill anchored at the producer's first request for a new snapshot
/// lands this many ms after it, at most (twice that with batches of one):
/// parsing the snapshot takes some 100 ms here, the transaction a few
/// more (some 250 with batches of one).
const AFTER_POLL_MS: u64 = 250;
/// A kill anchored at the first record of the transaction on the broker
/// lands this many ms after it, at most (4 times that with batches of
/// one).
const AFTER_RECORDS_MS: u64 = 10;

/// One run of the producer binary, and its log.
struct Producer {
    child: Child,
    log: tempfile::NamedTempFile,
    /// When it was started: its records are stamped at or after this.
    started_ms: u64,
    /// Whether it sends its records in batches of one (`-X
    /// batch.num.messages=1`): its transactions then last some 250 ms
    /// instead of a few, and more kills land in them.
    small_batches: bool,
}

impl Producer {
    fn start(broker: &Broker, server: &FeedServer, small_batches: bool) -> Producer {
        let log = tempfile::NamedTempFile::new().unwrap();
        let started_ms = now_ms();
        let mut command = Command::new(common::example_binary("velib_producer"));
        command
            .args(["--brokers", &broker.address])
            .args(["--status-url", &server.url(FEED)])
            .args(["--topic", STATUS, "--directory-topic", DIRECTORY])
            .args(["--interval", INTERVAL, "--timeout", "5s"])
            .env("RUST_LOG", "info")
            .env_remove("KAFKA_BROKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        if small_batches {
            command.args(["-X", "batch.num.messages=1"]);
        }
        common::broker::killed_with_this_thread(&mut command);
        let child = command
            .spawn()
            .expect("the example runs (cargo build --examples)");
        Producer {
            child,
            log,
            started_ms,
            small_batches,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The last epoch it says it published, or found published at start.
    fn committed(&self) -> Option<Epoch> {
        let log = self.log();
        let published = log
            .lines()
            .filter_map(|l| number_between(l, "epoch ", " published:"));
        let resumed = log
            .lines()
            .filter_map(|l| number_between(l, "going on from epoch ", ""));
        published.chain(resumed).max()
    }

    /// The epoch it found published at start (`None`: nothing was, or it
    /// has not got that far).
    fn resumed_from(&self) -> Option<Epoch> {
        self.log()
            .lines()
            .find_map(|l| number_between(l, "going on from epoch ", ""))
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the producer exited by itself ({status}):\n{}", self.log());
        }
    }

    /// Waits until it says it committed `epoch` (or found it committed).
    fn wait_committed(&mut self, epoch: Epoch, broker: &Broker) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed() < Some(epoch) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "epoch {epoch} not committed after 60 s:\n{}\n{}",
                self.log(),
                broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(mut self) -> Killed {
        self.assert_running();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Killed {
            started_ms: self.started_ms,
            log: self.log(),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is left of a killed run.
struct Killed {
    started_ms: u64,
    log: String,
}

/// Where a kill landed, told from what the killed run left on the log.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Landing {
    /// No record of the epoch reached the broker: during the start, before
    /// the transaction, or before its first batch was sent.
    BeforeRecords,
    /// In the transaction: these records on the log, uncommitted, no
    /// marker yet.
    MidTransaction { records: usize },
    /// In the transaction's end: records and markers on the log,
    /// uncommitted (the commit was never asked for, or never reached the
    /// coordinator).
    DuringCommit { records: usize, markers: usize },
    /// After the epoch was committed.
    AfterCommit,
}

impl Landing {
    fn mid_transaction(&self) -> bool {
        matches!(
            self,
            Landing::MidTransaction { .. } | Landing::DuringCommit { .. }
        )
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The number right after `before` in `line`, if `after` follows it.
fn number_between(line: &str, before: &str, after: &str) -> Option<Epoch> {
    let rest = &line[line.find(before)? + before.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..].starts_with(after).then_some(())?;
    digits.parse().ok()
}

/// kcat's records of `topic` stamped at or after `since_ms`.
fn kcat_since(broker: &Broker, topic: &str, since_ms: u64, isolation: &str) -> Vec<Value> {
    let out = broker
        .kcat()
        .args(["-C", "-t", topic, "-e", "-q", "-J"])
        .args(["-o", &format!("s@{since_ms}")])
        .args(["-X", &format!("isolation.level={isolation}")])
        // The end is told by an empty fetch: do not wait for one long.
        .args(["-X", "fetch.wait.max.ms=10"])
        .output()
        .expect("kcat runs (apt-get install kcat)");
    common::json_lines("kcat", &out)
}

fn epoch_of(record: &Value) -> Option<Epoch> {
    header(record, "velib-epoch")?.parse().ok()
}

fn is_marker(record: &Value) -> bool {
    header(record, "velib-kind") == Some("marker")
}

/// Where the kill of a run that had `epoch` to publish landed, and the
/// attempts of the records it left of that epoch.
fn landed(broker: &Broker, killed: &Killed, epoch: Epoch) -> (Landing, BTreeSet<String>) {
    let of_epoch = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .filter(|r| epoch_of(r) == Some(epoch))
            .collect()
    };
    // What the killed process had sent may still be on its way to the
    // log (a busy broker, a JVM warming up): let it land, and look twice
    // before saying nothing did.
    let mut shown = Vec::new();
    for wait in [200, 500] {
        std::thread::sleep(Duration::from_millis(wait));
        for topic in [STATUS, DIRECTORY] {
            shown.extend(of_epoch(kcat_since(
                broker,
                topic,
                killed.started_ms,
                "read_uncommitted",
            )));
        }
        if !shown.is_empty() {
            break;
        }
    }
    let attempts = shown
        .iter()
        .filter_map(|r| Some(header(r, "velib-attempt")?.to_owned()))
        .collect();
    if shown.is_empty() {
        return (Landing::BeforeRecords, attempts);
    }
    let markers = shown.iter().filter(|r| is_marker(r)).count();
    // A commit the coordinator had accepted completes without the
    // producer: give it a moment before calling the epoch uncommitted.
    for wait in [0, 300, 700] {
        std::thread::sleep(Duration::from_millis(wait));
        let committed = of_epoch(kcat_since(
            broker,
            STATUS,
            killed.started_ms,
            "read_committed",
        ));
        if committed.iter().any(is_marker) {
            return (Landing::AfterCommit, attempts);
        }
        if markers == 0 {
            break;
        }
    }
    let records = shown.len() - markers;
    let landing = if markers == 0 {
        Landing::MidTransaction { records }
    } else {
        Landing::DuringCommit { records, markers }
    };
    (landing, attempts)
}

/// The high watermark of the status topic's partition 0, at
/// read_uncommitted: it moves as soon as records of an open transaction
/// are on the log.
struct Watermark(rdkafka::consumer::BaseConsumer);

impl Watermark {
    fn new(broker: &Broker) -> Watermark {
        Watermark(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &broker.address)
                // librdkafka's default, read_committed, would say the end
                // of the last transaction committed.
                .set("isolation.level", "read_uncommitted")
                .set("log_level", "0")
                .create()
                .unwrap(),
        )
    }

    fn high(&self) -> Option<i64> {
        use rdkafka::consumer::Consumer;
        self.0
            .fetch_watermarks(STATUS, 0, Duration::from_secs(5))
            .ok()
            .map(|(_, high)| high)
    }
}

/// The 10 files of the Paris series, then `extra` synthetic polls of the
/// last one, a minute apart: a few stations lose or gain a bike, one
/// station leaves the feed and comes back two polls later, another is
/// renamed (a directory change).
fn feed_files(extra: usize) -> Vec<Vec<u8>> {
    let mut files = common::paris_files();
    let mut stations: Vec<Value> = serde_json::from_slice(files.last().unwrap()).unwrap();
    let mut removed: Option<(usize, Value)> = None;
    for k in 1..=extra {
        for (i, station) in stations.iter_mut().enumerate() {
            if (i + 3 * k) % 23 != 0 {
                continue;
            }
            let count = |field: &str| station[field].as_i64().unwrap();
            let (bikes, mechanical, ebike, docks) = (
                count("numbikesavailable"),
                count("mechanical"),
                count("ebike"),
                count("numdocksavailable"),
            );
            if bikes > 0 && mechanical > 0 {
                station["numbikesavailable"] = (bikes - 1).into();
                station["mechanical"] = (mechanical - 1).into();
                station["numdocksavailable"] = (docks + 1).into();
            } else {
                station["numbikesavailable"] = (bikes + 1).into();
                station["ebike"] = (ebike + 1).into();
                station["numdocksavailable"] = (docks - 1).max(0).into();
            }
        }
        match (k % 7, removed.take()) {
            (3, None) => {
                let i = (k * 37) % stations.len();
                removed = Some((i, stations.remove(i)));
            }
            (5, Some((i, station))) => stations.insert(i.min(stations.len()), station),
            (_, kept) => removed = kept,
        }
        if k % 4 == 1 {
            let i = (k * 101) % stations.len();
            let name = format!("{} ({k})", stations[i]["name"].as_str().unwrap());
            stations[i]["name"] = name.into();
        }
        // The export's time is its latest report.
        stations[0]["duedate"] = format!("2024-11-05T11:{k:02}:00+01:00").into();
        files.push(serde_json::to_vec(&stations).unwrap());
    }
    files
}

/// A file as the producer makes it a snapshot: the export's own
/// directory, postcodes from the shipped table, inferred where missing.
fn snapshot_of(file: &[u8]) -> Snapshot {
    let (status, information) = payload::parse_status(file).unwrap();
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
    Snapshot::assemble(
        status,
        information.as_ref(),
        &resolver,
        &StationSelection::all(),
    )
}

/// The aggregator, uninterrupted, on a thread of its own.
fn start_aggregator(
    broker: &Broker,
) -> (AggregatorHandle, JoinHandle<Result<(), AggregatorError>>) {
    common::init_logging();
    let mut config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    config.input_topic = STATUS.to_owned();
    config.directory_topic = Some(DIRECTORY.to_owned());
    config.output_topic = OUTPUT.to_owned();
    config.transactional_id = "test-aggregator-producer-crash".to_owned();
    let handle = AggregatorHandle::default();
    let running = handle.clone();
    let thread =
        std::thread::spawn(move || aggregator::run(timely::Config::thread(), config, running));
    (handle, thread)
}

fn batches(producer: &Producer) -> &'static str {
    if producer.small_batches {
        ", batches of one"
    } else {
        ""
    }
}

/// One kill, for the log and the checks.
struct Kill {
    epoch: Epoch,
    what: String,
    landing: Landing,
    /// The attempts of the records it left of its epoch.
    attempts: BTreeSet<String>,
}

impl Kill {
    /// Kills `producer`, and finds where the kill landed; keeps its log.
    fn of(
        broker: &Broker,
        producer: Producer,
        epoch: Epoch,
        what: String,
        logs: &mut Vec<String>,
    ) -> Kill {
        let killed = producer.kill();
        let (landing, attempts) = landed(broker, &killed, epoch);
        logs.push(killed.log);
        Kill {
            epoch,
            what,
            landing,
            attempts,
        }
    }
}

#[test]
fn the_producer_killed_at_random_points_publishes_every_epoch_once_and_whole() {
    let started = Instant::now();
    let seed = std::env::var("PRODUCER_CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("PRODUCER_CRASH_SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..));
    println!("PRODUCER_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    // The files that make an epoch: one identical to the one before it
    // makes none, and would leave the round nothing to kill.
    let mut sequencer = SnapshotSequencer::new();
    let files: Vec<Vec<u8>> = feed_files(SYNTHETIC)
        .into_iter()
        .filter(|f| matches!(sequencer.advance(snapshot_of(f)), Ok(Some(_))))
        .collect();
    let expected = common::sequence(files.iter().map(|f| snapshot_of(f)).collect());
    assert_eq!(expected.len(), files.len(), "every file makes an epoch");
    assert!(files.len() >= 20, "{} epochs", files.len());
    let last = expected.last().unwrap().0.epoch;

    let broker = Broker::start();
    let server = FeedServer::start();
    let (aggregator, aggregator_thread) = start_aggregator(&broker);

    // The rounds that kill, at random; the others let the producer go on.
    let mut rounds: Vec<usize> = (0..files.len()).collect();
    rng.shuffle(&mut rounds);
    let killing: BTreeSet<usize> = rounds.into_iter().take(KILL_ROUNDS).collect();
    let mut kills: Vec<Kill> = Vec::new();
    // Every run's log, for a failure's message.
    let mut logs: Vec<String> = Vec::new();
    // The last epoch known committed: by a run that said so, or found on
    // the log after a kill.
    let mut committed: Epoch = 0;
    // How long a restart takes to commit the epoch it has to publish.
    let mut restart_ms = 2500;
    server.script(FEED, [Reply::ok(files[0].clone())]);
    let mut producer = Producer::start(&broker, &server, rng.bool());
    for (round, file) in files.iter().enumerate() {
        let epoch = round as Epoch + 1;
        assert_eq!(expected[round].0.epoch, epoch);
        // A client of its own each time: one created before the topic
        // existed may keep answering from what it knew then.
        let watermark = Watermark::new(&broker);
        let before = watermark.high();
        if round > 0 {
            server.script(FEED, [Reply::ok(file.clone())]);
        }
        if !killing.contains(&round) {
            producer.wait_committed(epoch, &broker);
            committed = epoch;
            println!("epoch {epoch:>2}: published, no kill");
            continue;
        }

        // The producer polling when the snapshot appears is killed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let nth = killing.iter().take_while(|r| **r < round).count();
        let anchor = if nth % 2 == 1 && before.is_some() {
            // As soon as the transaction's first records are on the log
            // (past the previous commit's control record).
            let past = before.map(|b| b + 1);
            while watermark.high() <= past {
                producer.assert_running();
                assert!(Instant::now() < deadline, "epoch {epoch}: no record");
            }
            "its first records reached the broker"
        } else {
            // After its first request for the new snapshot. The script
            // still had the previous one, which is served once more first
            // (the first round has only its own).
            while server.left(FEED) > 1 {
                producer.assert_running();
                assert!(Instant::now() < deadline, "epoch {epoch}: no poll");
                std::thread::sleep(Duration::from_millis(1));
            }
            let served = if round == 0 {
                0
            } else {
                server.seen(FEED).len()
            };
            while server.seen(FEED).len() <= served {
                producer.assert_running();
                assert!(Instant::now() < deadline, "epoch {epoch}: no new poll");
                std::thread::sleep(Duration::from_millis(1));
            }
            "it polled the snapshot"
        };
        let window = match (anchor.starts_with("its first"), producer.small_batches) {
            (true, true) => AFTER_RECORDS_MS * 4,
            (true, false) => AFTER_RECORDS_MS,
            (false, true) => AFTER_POLL_MS * 2,
            (false, false) => AFTER_POLL_MS,
        };
        let delay = rng.u64(0..window);
        std::thread::sleep(Duration::from_millis(delay));
        let what = format!("{delay} ms after {anchor}{}", batches(&producer));
        kills.push(Kill::of(&broker, producer, epoch, what, &mut logs));

        // One round in two, the restart is killed too: while it fences the
        // killed one, reads its topics back, or publishes.
        if rng.bool() {
            let restart = Producer::start(&broker, &server, rng.bool());
            let delay = rng.u64(0..restart_ms * 6 / 5);
            std::thread::sleep(Duration::from_millis(delay));
            let resumed = match restart.resumed_from() {
                Some(e) => format!("it had read back epoch {e}"),
                None if committed == 0 => "nothing to read back".into(),
                None => "it had not read its topics back".into(),
            };
            let what = format!(
                "{delay} ms after its start ({resumed}){}",
                batches(&restart)
            );
            kills.push(Kill::of(&broker, restart, epoch, what, &mut logs));
        }
        for kill in kills.iter().filter(|k| k.epoch == epoch) {
            if kill.landing == Landing::AfterCommit {
                committed = epoch;
            }
            println!("epoch {epoch:>2}: killed {}: {:?}", kill.what, kill.landing);
        }

        // The run that goes on: it finds what was committed, no more, no
        // less, and commits the epoch if no killed run did.
        let restarted = Instant::now();
        producer = Producer::start(&broker, &server, rng.bool());
        producer.wait_committed(epoch, &broker);
        if committed < epoch {
            restart_ms = restarted.elapsed().as_millis() as u64;
        }
        assert_eq!(
            producer.resumed_from(),
            Some(committed).filter(|e| *e > 0),
            "epoch {epoch}: the restart went on from what the kills left committed:\n{}",
            producer.log()
        );
        committed = epoch;
    }
    logs.push(producer.kill().log);
    let kills_done = started.elapsed();

    // The aggregator, never stopped, reaches the last epoch.
    let deadline = Instant::now() + Duration::from_secs(60);
    while aggregator.committed() != Some(last) {
        assert!(
            !aggregator_thread.is_finished(),
            "the aggregator stopped by itself"
        );
        assert!(
            Instant::now() < deadline,
            "the aggregator's output of epoch {last} is not committed: {:?}\n{}",
            aggregator.committed(),
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    aggregator.stop();
    aggregator_thread
        .join()
        .expect("the aggregator does not panic")
        .expect("the aggregator stops cleanly");

    // Read committed by kcat: every epoch 1..=last, once, whole, and
    // exactly its snapshot's net changes.
    let on_status = broker.kcat_read(STATUS);
    let on_directory = broker.kcat_read(DIRECTORY);
    let statuses = published(&on_status);
    let directory = published(&on_directory);
    for (name, on_topic) in [(STATUS, &statuses), (DIRECTORY, &directory)] {
        assert_eq!(
            on_topic.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "{name}: each epoch, consecutive"
        );
    }
    let mut committed_attempts = BTreeSet::new();
    for (updates, _) in &expected {
        let epoch = updates.epoch;
        let (status, entries) = (&statuses[&epoch], &directory[&epoch]);
        assert_eq!(
            status.marker_attempts, entries.marker_attempts,
            "epoch {epoch}: both topics completed by the same attempt"
        );
        assert_eq!(
            status.marker_attempts.len(),
            1,
            "epoch {epoch}: one attempt's markers: {:?}",
            status.marker_attempts
        );
        let attempt = status.marker_attempts.first().unwrap().clone();
        for (name, on_topic, records) in [
            (STATUS, status, &on_status),
            (DIRECTORY, entries, &on_directory),
        ] {
            assert_eq!(
                on_topic.markers, PARTITIONS,
                "{name}: epoch {epoch}: a marker on every partition"
            );
            for record in &on_topic.data {
                assert_eq!(
                    header(record, "velib-attempt"),
                    Some(attempt.as_str()),
                    "{name}: epoch {epoch}: only the completing attempt's records"
                );
            }
            assert_eq!(
                marker_feed_times(records, epoch),
                BTreeSet::from([Some(updates.feed_time)]),
                "{name}: epoch {epoch}: the markers' feed time"
            );
        }
        assert_net_changes::<StationStatus>(
            STATUS,
            epoch,
            &status.data,
            &net_changes(&updates.statuses),
            |value| serde_json::from_value(value["velib"]["status"].clone()).unwrap(),
        );
        assert_net_changes::<DirectoryEntry>(
            DIRECTORY,
            epoch,
            &entries.data,
            &net_changes(&updates.directory),
            |value| serde_json::from_value(value).unwrap(),
        );
        committed_attempts.insert(attempt);
    }

    // The aggregator's output equals the from-scratch reference at every
    // epoch.
    assert_epochs_on_topic(&broker.kcat_read(OUTPUT), &expected);

    // The hard case happened: kills mid-transaction, whose attempts are
    // exactly those aborted on the log (shown only at read_uncommitted).
    // Per attempt shown: its epochs, records and markers.
    let mut shown: BTreeMap<String, (BTreeSet<Epoch>, usize, usize)> = BTreeMap::new();
    for topic in [STATUS, DIRECTORY] {
        for record in broker.kcat_read_uncommitted(topic) {
            let attempt = header(&record, "velib-attempt").unwrap().to_owned();
            let entry = shown.entry(attempt).or_default();
            entry.0.extend(epoch_of(&record));
            if is_marker(&record) {
                entry.2 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let aborted: BTreeSet<&String> = shown
        .keys()
        .filter(|a| !committed_attempts.contains(*a))
        .collect();
    let aborted_records: usize = aborted.iter().map(|a| shown[*a].1 + shown[*a].2).sum();
    let mut landings: BTreeMap<&str, usize> = BTreeMap::new();
    for kill in &kills {
        let name = match kill.landing {
            Landing::BeforeRecords => "before any record",
            Landing::MidTransaction { .. } => "mid-transaction",
            Landing::DuringCommit { .. } => "mid-transaction, markers sent",
            Landing::AfterCommit => "after the commit",
        };
        *landings.entry(name).or_default() += 1;
    }
    let mid: Vec<&Kill> = kills
        .iter()
        .filter(|k| k.landing.mid_transaction())
        .collect();
    println!(
        "{} kills in {:.1} s over {last} epochs: {landings:?}; {} aborted attempts \
         ({aborted_records} records) on the log; done in {:.1} s",
        kills.len(),
        kills_done.as_secs_f64(),
        aborted.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        !mid.is_empty(),
        "some kills landed mid-transaction (seed {seed}): {landings:?}"
    );
    let killed_attempts: BTreeSet<&String> = mid.iter().flat_map(|k| &k.attempts).collect();
    let warnings: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("WARN") || aborted.iter().any(|a| l.contains(a.as_str())))
        .collect();
    assert_eq!(
        aborted,
        killed_attempts,
        "each kill mid-transaction left one aborted attempt, and nothing else did \
         (seed {seed}); aborted (epochs, records, markers): {:?}; the runs' warnings:\n{}",
        aborted.iter().map(|a| (a, &shown[*a])).collect::<Vec<_>>(),
        warnings.join("\n")
    );
    assert_eq!(
        killed_attempts.len(),
        mid.len(),
        "one attempt per kill mid-transaction"
    );
}

/// The feed times `epoch`'s markers among `records` name.
fn marker_feed_times(records: &[Value], epoch: Epoch) -> BTreeSet<Option<i64>> {
    records
        .iter()
        .filter(|r| is_marker(r) && epoch_of(r) == Some(epoch))
        .map(|r| {
            let value: Value = serde_json::from_str(r["payload"].as_str()?).ok()?;
            value["feed_time"].as_i64()
        })
        .collect()
}

/// An epoch's data records on `topic` are exactly `net`: one per changed
/// station, keyed by its id, its new value or a tombstone.
fn assert_net_changes<V: PartialEq + std::fmt::Debug>(
    topic: &str,
    epoch: Epoch,
    data: &[Value],
    net: &BTreeMap<velib_dataflow::feed::StationId, Option<&V>>,
    decode: impl Fn(Value) -> V,
) {
    let mut on_topic: BTreeMap<String, Option<V>> = BTreeMap::new();
    for record in data {
        let key = record["key"].as_str().unwrap().to_owned();
        let value = record["payload"]
            .as_str()
            .map(|p| decode(serde_json::from_str(p).unwrap()));
        assert!(
            on_topic.insert(key.clone(), value).is_none(),
            "{topic}: epoch {epoch}: {key} written twice"
        );
    }
    let want: BTreeMap<String, Option<&V>> = net
        .iter()
        .map(|(id, v)| (String::from_utf8(station_key(id)).unwrap(), *v))
        .collect();
    assert_eq!(
        on_topic.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{topic}: epoch {epoch}: exactly the changed stations"
    );
    for (key, value) in &on_topic {
        assert_eq!(
            value.as_ref(),
            want[key],
            "{topic}: epoch {epoch}: {key}'s value"
        );
    }
}
