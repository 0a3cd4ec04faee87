//! The producer end to end: recorded feeds served one snapshot per request
//! by a local HTTP server (with every kind of bad response in between), a
//! real broker, the aggregator reading what the producer publishes, and
//! kcat checking what is on the topics.

mod common;

use common::broker::Broker;
use common::epochs::ScriptedEpochWriter;
use common::http::{FeedServer, Reply};
use common::output::{assert_epochs_on_topic, header, published};
use serde_json::Value;
use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{self, AggregatorConfig, AggregatorHandle};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::fetch::FetchConfig;
use velib_dataflow::kafka::publish::PublisherConfig;
use velib_dataflow::kafka::recovery::{read_back, PublishedTopics};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::poll::{FeedLocation, PollConfig};
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::producer::{run, ProducerConfig, ProducerError, ProducerHandle};
use velib_dataflow::snapshot::{net_changes, StationSelection};

fn producer_config(broker: &str, feed: String, topic: &str, directory: &str) -> ProducerConfig {
    let mut poll = PollConfig::new(FeedLocation::Discover {
        url: feed,
        language: None,
    });
    poll.interval = Some(Duration::from_millis(50));
    poll.fetch = FetchConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        max_bytes: 4 << 20,
        ..FetchConfig::default()
    };
    let mut publish = PublisherConfig::new(KafkaConfig::new(broker));
    publish.status_topic = topic.to_owned();
    publish.directory_topic = directory.to_owned();
    publish.transactional_id = format!("test-producer-{topic}");
    ProducerConfig {
        poll,
        selection: StationSelection::all(),
        publish,
        resolver: DirectoryResolver::new(PostcodeTable::velib(), true),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        stale: velib_dataflow::freshness::StalePolicy::default(),
        long_after: velib_dataflow::producer::DEFAULT_LONG_AFTER,
    }
}

fn start(config: ProducerConfig) -> (ProducerHandle, JoinHandle<Result<(), ProducerError>>) {
    common::init_logging();
    let handle = ProducerHandle::default();
    let running = handle.clone();
    (handle, std::thread::spawn(move || run(config, running)))
}

fn stop(handle: ProducerHandle, thread: JoinHandle<Result<(), ProducerError>>) {
    handle.stop();
    thread
        .join()
        .expect("the producer does not panic")
        .expect("the producer stops cleanly");
}

/// Waits for `done`, failing the test (with the broker's log) after two
/// minutes: a bound on a hang, not a performance assertion.
fn wait_for(what: &str, broker: &Broker, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn paris_series_through_bad_responses_and_a_restart_equals_the_reference() {
    let broker = Broker::start();
    let server = FeedServer::start();
    let files = common::paris_files();
    let expected = common::sequence(common::paris_series(true));
    let last = expected.last().unwrap().0.epoch;
    // Epochs of the first run: the snapshots up to the fifth file.
    let first_run_epochs = common::sequence(common::paris_series(true)[..5].to_vec()).len() as u64;

    server.script(
        "/paris.json",
        [
            Reply::ok(files[0].clone()),
            Reply::Status(500, vec![]),
            Reply::ok(files[1].clone()),
            Reply::Status(429, vec![("Retry-After".into(), "1".into())]),
            Reply::ok(files[2].clone()),
            Reply::Slow(Duration::from_secs(5), files[3].clone()),
            Reply::ok(files[3].clone()),
            Reply::Cut(files[4].clone()),
            Reply::Declared(64 << 20),
            Reply::Endless(6 << 20),
            Reply::ok(&b"[{\"stationcode\": \"16107\", \"numbikesavai"[..]),
            Reply::ok(files[4].clone()),
        ],
    );
    let config = producer_config(
        &broker.address,
        server.url("/paris.json"),
        "velib-projet",
        "velib-directory",
    );
    let (handle, thread) = start(config.clone());
    wait_for("the first run's epochs", &broker, || {
        handle.stats().last_epoch == first_run_epochs && server.left("/paris.json") == 1
    });
    // The aggregator reads what the producer publishes, directory included.
    let mut aggregator_config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    aggregator_config.directory_topic = Some("velib-directory".into());
    aggregator_config.transactional_id = "test-aggregator-producer".into();
    let aggregator = AggregatorHandle::default();
    let running = aggregator.clone();
    let aggregator_thread = std::thread::spawn(move || {
        aggregator::run(timely::Config::thread(), aggregator_config, running)
    });
    // Let a few identical polls go by, then stop.
    let polls = handle.stats().polls;
    wait_for("more polls", &broker, || handle.stats().polls >= polls + 3);
    let first = handle.stats();
    stop(handle, thread);
    let rejected: Vec<(&str, u64)> = first.rejected.clone().into_iter().collect();
    assert_eq!(
        rejected,
        vec![
            ("invalid_json", 1),
            ("rate_limited", 1),
            ("server_error", 1),
            ("timeout", 1),
            ("too_large", 2),
            ("truncated_body", 1),
        ],
        "{first:?}"
    );
    assert_eq!(first.epochs_published, first_run_epochs);
    // The response whose body was read and rejected is on the dead-letter
    // topic, raw, with why and from where.
    let letters = broker.kcat_read("velib-projet-dead-letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["payload"],
        "[{\"stationcode\": \"16107\", \"numbikesavai"
    );
    assert_eq!(
        header(&letters[0], "velib-dlq-reason"),
        Some("invalid_json")
    );
    assert_eq!(
        header(&letters[0], "velib-dlq-url"),
        Some(server.url("/paris.json").as_str())
    );

    // The second run: the fifth file again (what was published: nothing to
    // do), then the rest of the series.
    server.script(
        "/paris.json",
        files[4..].iter().map(|f| Reply::ok(f.clone())),
    );
    let (handle, thread) = start(config);
    wait_for("the last epoch", &broker, || {
        handle.stats().last_epoch == last && server.left("/paris.json") == 1
    });
    let second = handle.stats();
    stop(handle, thread);
    assert_eq!(second.epochs_published, last - first_run_epochs);
    assert!(second.rejected.is_empty(), "{second:?}");

    wait_for("the aggregator's last epoch", &broker, || {
        aggregator.committed() == Some(last)
    });
    aggregator.stop();
    aggregator_thread.join().unwrap().unwrap();

    // Every epoch's output equals a from-scratch computation on its snapshot.
    assert_epochs_on_topic(&broker.kcat_read("velib-projet-clean"), &expected);

    // On the status topic: each epoch once, by one attempt, a marker on
    // each of the 3 partitions, and exactly the changed stations.
    let statuses = published(&broker.kcat_read("velib-projet"));
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    let runs: BTreeSet<&str> = statuses
        .values()
        .flat_map(|e| &e.marker_attempts)
        .map(|a| a.split('.').next().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "two runs: {runs:?}");
    for ((epoch, on_topic), (updates, _)) in statuses.iter().zip(&expected) {
        assert_eq!(*epoch, updates.epoch);
        assert_eq!(on_topic.marker_attempts.len(), 1, "epoch {epoch}");
        assert_eq!(on_topic.markers, 3, "epoch {epoch}");
        let keys: BTreeSet<&str> = on_topic
            .data
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys.len(),
            on_topic.data.len(),
            "epoch {epoch}: no duplicate"
        );
        assert_eq!(
            keys.len(),
            net_changes(&updates.statuses).len(),
            "epoch {epoch}: exactly the changed stations"
        );
    }
    // The value keeps the feed's own fields, plus the normalised status.
    let record = &statuses[&1].data[0];
    let value: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    assert!(value["stationcode"].is_string(), "{value}");
    assert_eq!(value["velib"]["epoch"], 1);
    assert!(value["velib"]["status"]["bikes_available"].is_u64());
    // The directory topic has every station once in epoch 1, and markers.
    let directory = published(&broker.kcat_read("velib-directory"));
    assert_eq!(directory[&1].data.len(), expected[0].0.directory.len());
    assert!(directory.values().all(|e| e.markers == 3));
}

fn velib_status() -> Value {
    serde_json::from_slice(
        &std::fs::read(common::fixtures().join("gbfs/velib/2024-11-19/station_status.json"))
            .unwrap(),
    )
    .unwrap()
}

fn with_time(mut status: Value, time: i64) -> Vec<u8> {
    status["lastUpdatedOther"] = time.into();
    serde_json::to_vec(&status).unwrap()
}

#[test]
fn older_identical_and_typeless_snapshots_publish_nothing_and_say_why() {
    let broker = Broker::start();
    let server = FeedServer::start();
    let status = velib_status();
    let t0 = status["lastUpdatedOther"].as_i64().unwrap();
    // A later snapshot where station 0 has one bike fewer.
    let mut changed = status.clone();
    let station = &mut changed["data"]["stations"][0];
    let bikes = station["num_bikes_available"].as_i64().unwrap();
    let mechanical = station["num_bikes_available_types"][0]["mechanical"]
        .as_i64()
        .unwrap();
    assert!(mechanical > 0, "the fixture's first station has a bike");
    station["num_bikes_available"] = (bikes - 1).into();
    station["numBikesAvailable"] = (bikes - 1).into();
    station["num_bikes_available_types"][0]["mechanical"] = (mechanical - 1).into();
    // A snapshot where every station lost its bike types.
    let mut typeless = status.clone();
    for s in typeless["data"]["stations"].as_array_mut().unwrap() {
        s.as_object_mut()
            .unwrap()
            .remove("num_bikes_available_types");
    }
    server.script(
        "/station_status.json",
        [
            Reply::ok(with_time(status.clone(), t0)),
            Reply::ok(with_time(changed.clone(), t0 + 60)),
            Reply::ok(with_time(status.clone(), t0 + 30)),
            Reply::ok(with_time(changed.clone(), t0 + 60)),
            Reply::ok(with_time(typeless, t0 + 90)),
            Reply::ok(with_time(status.clone(), t0 + 120)),
        ],
    );
    let config = producer_config(
        &broker.address,
        server.url("/station_status.json"),
        "gbfs-status",
        "gbfs-directory",
    );
    let (handle, thread) = start(config);
    wait_for("the script served", &broker, || {
        server.left("/station_status.json") == 1 && handle.stats().last_epoch == 3
    });
    let stats = handle.stats();
    stop(handle, thread);
    assert_eq!(stats.epochs_published, 3, "{stats:?}");
    let rejected: Vec<(&str, u64)> = stats.rejected.into_iter().collect();
    assert_eq!(
        rejected,
        vec![("older_snapshot", 1), ("upstream_outage", 1)]
    );
    assert!(stats.unchanged >= 1);
    let on_topic = published(&broker.kcat_read("gbfs-status"));
    let counts: Vec<(Epoch, usize)> = on_topic.iter().map(|(e, p)| (*e, p.data.len())).collect();
    // Epoch 1: every station; 2: the one that changed; 3: it changed back.
    assert_eq!(
        counts,
        vec![
            (1, status["data"]["stations"].as_array().unwrap().len()),
            (2, 1),
            (3, 1)
        ]
    );
    // The value is the feed's own station object plus the normalised
    // status (the README shows this record).
    let record = on_topic[&1]
        .data
        .iter()
        .find(|r| r["key"] == "213688169")
        .unwrap();
    let mut want = status["data"]["stations"][0].clone();
    want["velib"] = serde_json::json!({"epoch": 1, "status": {
        "station_id": 213688169u64, "code": "16107", "bikes_available": 1,
        "bike_types": {"mechanical": 1, "ebike": 0, "other": 0}, "docks_available": 34,
        "is_installed": true, "is_renting": true, "is_returning": true,
        "last_reported": 1732001704, "judged": {"stale": false, "empty_since": null,
        "full_since": null, "empty_long": false, "full_long": false}, "vehicle_types": {}}});
    let got: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    assert_eq!(got, want);
    let feed_time = |epoch: Epoch| {
        let marker = broker
            .kcat_read("gbfs-status")
            .into_iter()
            .find(|r| {
                header(r, "velib-kind") == Some("marker")
                    && header(r, "velib-epoch") == Some(&epoch.to_string())
            })
            .unwrap();
        let value: Value = serde_json::from_str(marker["payload"].as_str().unwrap()).unwrap();
        value["feed_time"].as_i64().unwrap()
    };
    assert_eq!(feed_time(3), t0 + 120);
}

/// A producer died while committing epoch 2: its markers are visible on
/// one partition only (a broker that shows aborted records does that). The
/// next producer completes epoch 2 as that attempt wrote it, goes on from
/// its state, and publishes nothing for a snapshot equal to it.
#[test]
fn a_restart_completes_a_half_visible_epoch_and_goes_on_from_it() {
    use common::epochs::{
        by_id, epoch_records, ScriptedEpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC,
    };
    use velib_dataflow::kafka::topics::ensure_topics;

    let broker = Broker::start();
    let server = FeedServer::start();
    let files = common::paris_files();
    let expected = common::sequence(common::paris_series(true));
    let config = producer_config(
        &broker.address,
        server.url("/paris.json"),
        STATUS_TOPIC,
        DIRECTORY_TOPIC,
    );
    ensure_topics(
        &config.publish.kafka,
        &config.publish.topics(3),
        Duration::from_secs(30),
    )
    .unwrap();
    let dead = ScriptedEpochWriter::new(
        &broker.address,
        "dead-run.1",
        &[(STATUS_TOPIC, 3), (DIRECTORY_TOPIC, 3)],
    );
    let (first, _) = &expected[0];
    dead.write_epoch(
        first.epoch,
        first.feed_time,
        &epoch_records(first, true, &by_id(3)),
    );
    let (second, _) = &expected[1];
    dead.begin();
    for record in epoch_records(second, true, &by_id(3)) {
        dead.send(second.epoch, &record);
    }
    dead.flush();
    dead.marker_on(second.epoch, second.feed_time, STATUS_TOPIC, 0);
    dead.commit();

    // The feed serves the snapshot of epoch 2 again, then the next one.
    server.script(
        "/paris.json",
        [Reply::ok(files[1].clone()), Reply::ok(files[2].clone())],
    );
    let (handle, thread) = start(config);
    wait_for("epoch 3", &broker, || handle.stats().last_epoch == 3);
    let stats = handle.stats();
    stop(handle, thread);
    assert_eq!(stats.epochs_published, 1, "{stats:?}");

    // Every partition of both topics now has epoch 2's marker, naming the
    // dead attempt; epoch 3 is the new run's, with exactly its changes.
    for topic in [STATUS_TOPIC, DIRECTORY_TOPIC] {
        let on_topic = published(&broker.kcat_read(topic));
        assert_eq!(on_topic[&2].markers, 3, "{topic}");
        assert_eq!(
            on_topic[&2].marker_attempts,
            BTreeSet::from(["dead-run.1".to_owned()])
        );
        assert_eq!(
            on_topic.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{topic}: {:?}",
            on_topic
                .iter()
                .map(|(e, p)| (e, p.markers, &p.marker_attempts, p.data.len()))
                .collect::<Vec<_>>()
        );
        assert!(!on_topic[&3].marker_attempts.contains("dead-run.1"));
    }
    let statuses = published(&broker.kcat_read(STATUS_TOPIC));
    assert_eq!(
        statuses[&3].data.len(),
        net_changes(&expected[2].0.statuses).len()
    );

    // And the aggregator agrees with the reference for all three epochs.
    let mut aggregator_config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    aggregator_config.directory_topic = Some(DIRECTORY_TOPIC.into());
    aggregator_config.transactional_id = "test-aggregator-restart".into();
    let aggregator = AggregatorHandle::default();
    let running = aggregator.clone();
    let aggregator_thread = std::thread::spawn(move || {
        aggregator::run(timely::Config::thread(), aggregator_config, running)
    });
    wait_for("the aggregator's epoch 3", &broker, || {
        aggregator.committed() == Some(3)
    });
    aggregator.stop();
    aggregator_thread.join().unwrap().unwrap();
    assert_epochs_on_topic(&broker.kcat_read("velib-projet-clean"), &expected[..3]);
}

#[test]
fn velib_producer_explains_its_flags_and_refuses_bad_ones() {
    common::assert_cli(
        "velib_producer",
        &[
            "--feed",
            "--brokers",
            "--topic",
            "--directory-topic",
            "--stations",
            "--interval",
            "-X",
            "KAFKA_BROKERS",
        ],
        &[
            (
                vec!["--brokers", "x:1", "-X", "no-equals"],
                "expected key=value",
            ),
            (vec!["--brokers", "x:1", "--interval", "0"], "--interval"),
            (vec!["--brokers", "x:1", "--interval", "soon"], "soon"),
            (vec!["--brokers", "x:1", "--interval", "5 parsecs"], "unit"),
            (
                vec!["--brokers", "x:1", "--partitions", "0"],
                "--partitions",
            ),
            (
                vec!["--brokers", "x:1", "--postcodes", "/nonexistent.csv"],
                "/nonexistent.csv",
            ),
            (vec!["--interval", "1s"], "--brokers"),
        ],
    );
}

/// The feed cannot be reached: the binary says so, in one line, and keeps
/// trying with backoff until stopped; Ctrl-C stops it cleanly.
#[test]
fn an_unreachable_feed_is_reported_and_retried_until_stopped() {
    use std::io::{BufRead, BufReader};
    let broker = Broker::start();
    let mut child = std::process::Command::new(common::example_binary("velib_producer"))
        .args(["--feed", "http://127.0.0.1:9/gbfs.json"])
        .args(["--brokers", &broker.address])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    // A bound on a hang, not a performance assertion: stop it after two
    // minutes whatever it printed.
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
    });
    let mut refused = 0;
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("reason=\"connect\"") {
            assert!(
                line.contains("cannot connect to http://127.0.0.1:9/gbfs.json"),
                "{line}"
            );
            refused += 1;
            if refused == 2 {
                let status = std::process::Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", lines.join("\n"));
    assert!(refused >= 2, "{}", lines.join("\n"));
}

/// The Oslo series through its discovery file (status and information in
/// Norwegian): each epoch publishes exactly the stations that changed, and
/// the directory carries the names from the information feed.
#[test]
fn oslo_series_through_discovery_publishes_exactly_each_change() {
    let broker = Broker::start();
    let server = FeedServer::start();
    // Served, and what should be published, from the same files.
    let expected = common::serve_oslo_series(&server);
    let last = expected.last().unwrap().0;

    let config = producer_config(
        &broker.address,
        server.url("/gbfs.json"),
        "oslo-status",
        "oslo-directory",
    );
    let (handle, thread) = start(config);
    wait_for("the series published", &broker, || {
        handle.stats().last_epoch == last && server.left("/nb/station_status.json") == 1
    });
    let stats = handle.stats();
    stop(handle, thread);
    assert!(stats.rejected.is_empty(), "{stats:?}");

    let statuses = published(&broker.kcat_read("oslo-status"));
    let directory = published(&broker.kcat_read("oslo-directory"));
    let on_topics: Vec<(Epoch, usize, usize)> = statuses
        .iter()
        .map(|(epoch, p)| {
            (
                *epoch,
                p.data.len(),
                directory.get(epoch).map_or(0, |d| d.data.len()),
            )
        })
        .collect();
    assert_eq!(on_topics, expected);
    let entry: Value =
        serde_json::from_str(directory[&1].data[0]["payload"].as_str().unwrap()).unwrap();
    assert!(
        !entry["name"].as_str().unwrap().is_empty(),
        "named from the information feed: {entry}"
    );
}

/// The producer's topics as `read_back` takes them, with or without the
/// state topic.
fn published_topics(prefix: &str, state: bool) -> PublishedTopics {
    PublishedTopics {
        status: (format!("{prefix}-projet"), 3),
        directory: (format!("{prefix}-directory"), 3),
        state: state.then(|| (format!("{prefix}-projet-state"), 3)),
    }
}

/// Reads back through the state topic and in full, and checks that both
/// agree; returns what the state topic's read took from the status topic.
fn assert_state_read_equals_full_read(broker: &Broker, prefix: &str, last: Epoch) -> (u64, usize) {
    let kafka = KafkaConfig::new(&broker.address);
    let timeout = Duration::from_secs(30);
    let from_state = read_back(&kafka, &published_topics(prefix, true), timeout).unwrap();
    let full = read_back(&kafka, &published_topics(prefix, false), timeout).unwrap();
    assert_eq!(from_state.state_unused, None, "{from_state:?}");
    assert!(from_state.state_repair.is_empty());
    assert_eq!(from_state.last.as_ref().map(|m| m.epoch), Some(last));
    assert_eq!(from_state.last, full.last);
    assert_eq!(from_state.statuses, full.statuses);
    assert_eq!(from_state.directory, full.directory);
    assert!(from_state.unmarked.is_empty() && full.unmarked.is_empty());
    let read = |r: &velib_dataflow::kafka::recovery::Recovered, topic: &str| {
        r.read
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, n)| *n)
            .unwrap()
    };
    let status = format!("{prefix}-projet");
    let (tail, whole) = (read(&from_state, &status), read(&full, &status));
    assert_eq!(
        whole,
        broker.kcat_read(&status).len() as u64,
        "the full read reads it all"
    );
    eprintln!("status topic: {tail} records read through the state topic, {whole} in full");
    (tail, full.statuses.len())
}

#[test]
fn a_restart_reads_the_state_topic_not_the_status_topics_history() {
    let broker = Broker::start();
    let server = FeedServer::start();
    let files = common::paris_files();
    let expected = common::sequence(common::paris_series(true));
    let epochs_of = |n: usize| common::sequence(common::paris_series(true)[..n].to_vec()).len();
    let feed = server.url("/paris.json");
    let mut config = producer_config(&broker.address, feed, "st-projet", "st-directory");
    config.publish.state_topic = None;
    let run_to = |config: &ProducerConfig, files: &[Vec<u8>], last: Epoch| {
        server.script("/paris.json", files.iter().map(|f| Reply::ok(f.clone())));
        let (handle, thread) = start(config.clone());
        wait_for("the run's last epoch", &broker, || {
            handle.stats().last_epoch == last && server.left("/paris.json") == 1
        });
        stop(handle, thread);
    };

    // An older producer's topics: no state topic.
    run_to(&config, &files[..3], epochs_of(3) as Epoch);
    // This one's first start finds none: it reads the status topic in full
    // once, and makes the state topic whole with its first epoch.
    config.publish.state_topic = Some("st-projet-state".into());
    let kafka = KafkaConfig::new(&broker.address);
    let before = read_back(
        &kafka,
        &published_topics("st", true),
        Duration::from_secs(30),
    );
    let error = before.expect_err("no state topic yet: a clear error, not an empty state");
    assert!(error.to_string().contains("st-projet-state"), "{error}");
    run_to(&config, &files[2..6], epochs_of(6) as Epoch);
    let (after_repair, _) =
        assert_state_read_equals_full_read(&broker, "st", epochs_of(6) as Epoch);

    // And from then on the state topic is what a restart reads: of the
    // status topic, only each partition's last records.
    run_to(&config, &files[5..], expected.len() as Epoch);
    let (tail, stations) =
        assert_state_read_equals_full_read(&broker, "st", expected.len() as Epoch);
    let status_records = broker.kcat_read("st-projet").len() as u64;
    assert!(
        tail < status_records / 4 && after_repair < status_records,
        "the status topic's history is not read: {tail} of {status_records} records"
    );
    // The state topic holds every station once, with its latest status.
    let mut latest = std::collections::BTreeMap::new();
    for record in broker.kcat_read("st-projet-state") {
        if header(&record, "velib-kind").is_none() {
            latest.insert(record["key"].to_string(), record["payload"].clone());
        }
    }
    assert_eq!(latest.values().filter(|v| !v.is_null()).count(), stations);

    // A forged far-future marker on each topic: a restart refuses it as
    // every reader does, and goes on from the genuine last epoch.
    let forger = ScriptedEpochWriter::new(
        &broker.address,
        "forged",
        &[
            ("st-projet", 3),
            ("st-directory", 3),
            ("st-projet-state", 3),
        ],
    );
    forger.begin();
    for topic in ["st-projet", "st-directory", "st-projet-state"] {
        forger.marker_on(1_000_000_000_000, 0, topic, 1);
    }
    forger.commit();
    let forged = read_back(
        &kafka,
        &published_topics("st", true),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        forged.last.as_ref().map(|m| m.epoch),
        Some(expected.len() as Epoch)
    );
    assert_eq!(forged.statuses.len(), stations);
    assert!(forged.unreadable >= 2, "{forged:?}");

    // Its flags, as users find them.
    let help = std::process::Command::new(common::example_binary("velib_producer"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--state-topic") && help.contains("--no-state"),
        "{help}"
    );
}

#[test]
fn a_feed_that_turns_stale_and_fresh_again_is_said_once_each_way() {
    let broker = Broker::start();
    let server = FeedServer::start();
    let status = velib_status();
    let now = unix_now();
    server.script(
        "/station_status.json",
        [
            // Twenty minutes old: beyond the spec's five, stale.
            Reply::ok(with_time(status.clone(), now - 1_200)),
            Reply::ok(with_time(status.clone(), now - 1_100)),
            // Current: fresh again.
            Reply::ok(with_time(status.clone(), now)),
            // An hour ahead of this machine: a clock is wrong, stale.
            Reply::ok(with_time(status.clone(), now + 3_600)),
            Reply::ok(with_time(status.clone(), now + 3_600)),
        ],
    );
    let config = producer_config(
        &broker.address,
        server.url("/station_status.json"),
        "fresh-status",
        "fresh-directory",
    );
    let (handle, thread) = start(config);
    let metrics = velib_dataflow::metrics::Metrics::default().producer(handle.clone());
    wait_for("the script served", &broker, || {
        // The last reply stays, served again at every poll.
        server.left("/station_status.json") == 1 && handle.stats().feed_turned_stale == 2
    });
    // The last reply is fetched: wait for its poll to be judged.
    std::thread::sleep(Duration::from_millis(500));
    let stats = handle.stats();
    let text = metrics.render();
    stop(handle, thread);
    // Stale at the first, fresh at the third, stale at the fourth: each
    // turn once, not at every poll.
    assert_eq!(stats.feed_turned_stale, 2, "{stats:?}");
    assert!(stats.feed_stale, "{stats:?}");
    let age = stats.feed_age_seconds.expect("an age");
    assert!((-3_700..=-3_500).contains(&age), "{age}");
    assert!(text.contains("velib_producer_feed_stale 1"), "{text}");
    assert!(
        text.contains("velib_producer_feed_turned_stale_total 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("velib_producer_feed_age_seconds {age}")),
        "{text}"
    );
    // A stale snapshot is still published: the first epoch is the stale one.
    // The same content again is no epoch, except that an hour and more on,
    // the stations empty (or full) since the first are so for long: one more.
    assert_eq!(stats.epochs_published, 2, "{stats:?}");
    // That epoch's stations, counted from the raw feed: each one empty (or
    // full) in the first snapshot still is, for 80 minutes now.
    let raw = velib_status();
    let stations = raw["data"]["stations"].as_array().unwrap();
    let flag = |s: &Value, field: &str| s[field].as_i64() == Some(1);
    let empty = stations
        .iter()
        .filter(|s| {
            flag(s, "is_installed") && flag(s, "is_renting") && s["num_bikes_available"] == 0
        })
        .count() as u64;
    let full = stations
        .iter()
        .filter(|s| {
            flag(s, "is_installed") && flag(s, "is_returning") && s["num_docks_available"] == 0
        })
        .count() as u64;
    assert!(empty > 0 && full > 0, "the fixture has both");
    let tally = &stats.stations;
    assert_eq!(
        (tally.empty, tally.full, tally.empty_long, tally.full_long),
        (empty, full, empty, full),
        "{tally:?}"
    );
    assert_eq!(
        (tally.longest_empty_seconds, tally.longest_full_seconds),
        (Some(4_800), Some(4_800))
    );
    for line in [
        format!("velib_producer_stations_empty {empty}"),
        format!("velib_producer_stations_full_long {full}"),
        "velib_producer_longest_empty_seconds 4800".to_owned(),
        "velib_producer_longest_full_seconds 4800".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[test]
fn a_feed_that_answers_not_modified_ages_all_the_same() {
    let broker = Broker::start();
    let server = FeedServer::start();
    let now = unix_now();
    // Fresh when first fetched (ten seconds short of GBFS's five minutes),
    // then only ever "304 Not Modified": the snapshot grows old behind it.
    server.script(
        "/station_status.json",
        [Reply::Etag(
            "\"frozen\"".into(),
            with_time(velib_status(), now - 290),
        )],
    );
    let config = producer_config(
        &broker.address,
        server.url("/station_status.json"),
        "frozen-status",
        "frozen-directory",
    );
    let (handle, thread) = start(config);
    wait_for("the feed turning stale behind 304s", &broker, || {
        handle.stats().feed_turned_stale == 1
    });
    let stats = handle.stats();
    stop(handle, thread);
    assert!(stats.feed_stale, "{stats:?}");
    assert!(stats.feed_age_seconds.is_some_and(|a| a > 300), "{stats:?}");
    assert!(stats.unchanged > 0, "answered 304: {stats:?}");
    assert!(server.seen("/station_status.json").len() > 1);
}

/// Seconds since the Unix epoch, by this machine's clock (what the producer
/// judges a fetched snapshot's age against).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
