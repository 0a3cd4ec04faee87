//! Several systems at once, on Apache Kafka, checked with kcat. The
//! producer's side: one `velib_producer` with `--feed NAME=URL` twice; each
//! system publishes its own epochs to its own topics, and a system whose
//! feed hangs and fails holds back no epoch of the other. The aggregator's
//! side: one `velib_aggregator` with `--system` thrice; each system's
//! output is its own, equal to the from-scratch reference, and a system
//! that cannot start or has no input holds back none of another's epochs.

mod common;

use common::broker::Broker;
use common::epochs::{by_id, epoch_records, ScriptedEpochWriter};
use common::http::{FeedServer, Reply};
use common::output::{assert_records_on_topic, assert_system_epochs_on_topic, header, published};
use common::State;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::AggregatorConfig;
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::dataflow::TypedTotals;
use velib_dataflow::kafka::topics::ensure_topics;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::output::PostcodeRecord;
use velib_dataflow::postcode::Postcode;
use velib_dataflow::reference::typed_totals_from_scratch;
use velib_dataflow::snapshot::EpochUpdates;

/// The topics the broker has, as kcat lists them.
fn topics(broker: &Broker) -> Vec<String> {
    let out = broker.kcat().args(["-L", "-J"]).output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    listing["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["error"].is_null())
        .filter_map(|t| t["topic"].as_str().map(str::to_owned))
        .collect()
}

/// What kcat finds of each epoch on a system's topics.
fn on_topics(broker: &Broker, status: &str, directory: &str) -> Vec<(Epoch, usize, usize)> {
    let statuses = published(&broker.kcat_read(status));
    let directory = published(&broker.kcat_read(directory));
    statuses
        .iter()
        .map(|(epoch, p)| {
            (
                *epoch,
                p.data.len(),
                directory.get(epoch).map_or(0, |d| d.data.len()),
            )
        })
        .collect()
}

/// A job started by a test, its stderr in a file the test reads as it runs.
struct Logged {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Logged {
    /// Starts `command`, and kills it after three minutes: a bound on a
    /// hang, not a performance assertion.
    fn spawn(command: &mut Command) -> Logged {
        common::broker::killed_with_this_thread(command);
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command.stderr(log.reopen().unwrap()).spawn().unwrap();
        let pid = child.id().to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(180));
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        });
        Logged { child, log }
    }

    /// What it logged so far.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Ctrl-C: how it exited, and what it logged.
    fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        (self.child.wait().unwrap(), self.lines())
    }
}

#[test]
fn a_hanging_failing_system_holds_back_no_epoch_of_the_other() {
    let broker = Broker::start();
    let oslo = FeedServer::start();
    let expected = common::serve_oslo_series(&oslo);
    assert!(expected.len() > 2, "a series");
    // The other system's discovery answers nothing for longer than the
    // timeout, then 503, and so on: every poll of it fails, slowly.
    let stuck = FeedServer::start();
    stuck.script(
        "/gbfs.json",
        (0..200).map(|i| match i % 2 {
            0 => Reply::Slow(Duration::from_secs(20), b"{}".to_vec()),
            _ => Reply::Status(503, vec![]),
        }),
    );
    let mut command = Command::new(common::example_binary("velib_producer"));
    command
        .args(["--brokers", &broker.address])
        // The hanging one first: a loop over systems in turn would stall.
        .args(["--feed", &format!("stuck={}", stuck.url("/gbfs.json"))])
        .args(["--feed", &format!("oslo={}", oslo.url("/gbfs.json"))])
        .args(["--interval", "100ms", "--timeout", "2s"])
        .env("RUST_LOG", "info");
    let job = Logged::spawn(&mut command);

    // Oslo's whole series is published while the other system hangs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let created = |topic: &str| topics(&broker).iter().any(|t| t == topic);
    while !(created("velib-projet.oslo") && created("velib-directory.oslo"))
        || on_topics(&broker, "velib-projet.oslo", "velib-directory.oslo").len() < expected.len()
    {
        assert!(
            Instant::now() < deadline,
            "Oslo's epochs, held back?\n{}",
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The failing system goes on being asked, after its failures (a bound
    // on a hang, not a performance assertion).
    while stuck.seen("/gbfs.json").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the other system is not polled again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, lines) = job.interrupt();
    assert!(status.success(), "{status}: {}", lines.join("\n"));

    assert_eq!(
        on_topics(&broker, "velib-projet.oslo", "velib-directory.oslo"),
        expected
    );
    assert!(
        !created("velib-projet.stuck") || broker.kcat_read("velib-projet.stuck").is_empty(),
        "the failing system published nothing"
    );
    // Its failures are said, under its name.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stuck") && (l.contains("503") || l.contains("timeout"))),
        "{}",
        lines.join("\n")
    );
    // Every topic is one system's; the default system's are left alone.
    let all = topics(&broker);
    assert!(
        all.iter()
            .filter(|t| !t.starts_with("__"))
            .all(|t| t.ends_with(".oslo") || t.ends_with(".stuck")),
        "{all:?}"
    );
}

/// Writes `epochs` to a system's input topics, as velib_producer does
/// (statuses and directory, three partitions each).
fn write_system_input<V>(broker: &Broker, config: &AggregatorConfig, epochs: &[(EpochUpdates, V)]) {
    ensure_topics(&config.kafka, &config.topics(3), Duration::from_secs(30)).unwrap();
    let directory = config.directory_topic.as_deref().unwrap();
    let writer = ScriptedEpochWriter::new(
        &broker.address,
        "attempt-1",
        &[(&config.input_topic, 3), (directory, 3)],
    );
    for (updates, _) in epochs {
        let mut records = epoch_records(updates, true, &by_id(3));
        for record in &mut records {
            record.topic = match record.topic.as_str() {
                common::epochs::STATUS_TOPIC => config.input_topic.clone(),
                _ => directory.to_owned(),
            };
        }
        writer.write_epoch(updates.epoch, updates.feed_time, &records);
    }
}

/// Whether the output topic holds the progress records of `epoch`.
fn has_progress_of(broker: &Broker, topic: &str, epoch: Epoch) -> bool {
    broker.kcat_read(topic).iter().any(|r| {
        header(r, "velib-kind") == Some("progress")
            && header(r, "velib-epoch") == Some(&epoch.to_string())
    })
}

#[test]
fn one_aggregator_keeps_each_system_apart_and_a_failing_one_holds_back_none() {
    let broker = Broker::start();
    let base = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    // Two systems with input: Paris's series as the default system (its
    // first epochs only) and as `a`, so that mixing them shows.
    let paris = common::sequence(common::paris_series(true));
    let short = &paris[..paris.len() / 2];
    assert!(short.len() >= 2 && paris.len() > short.len());
    write_system_input(&broker, &base, short);
    write_system_input(&broker, &base.for_system("a"), &paris);
    // `broken` cannot start: its output topic exists, not compacted.
    broker.create_topics(&[("velib-projet-clean.broken", 1, &[])]);

    let mut command = Command::new(common::example_binary("velib_aggregator"));
    command
        .args(["--brokers", &broker.address])
        // The failing and the silent ones first: systems run in turn, or
        // one failure stopping all, would hold back the others.
        .args(["--system", "broken", "--system", "quiet"])
        .args(["--system", "a", "--system", "default"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    let job = Logged::spawn(&mut command);

    let deadline = Instant::now() + Duration::from_secs(120);
    let last = |epochs: &[(EpochUpdates, State)]| epochs.last().unwrap().0.epoch;
    while !(has_progress_of(&broker, "velib-projet-clean.a", last(&paris))
        && has_progress_of(&broker, "velib-projet-clean", last(short)))
    {
        assert!(
            Instant::now() < deadline,
            "the systems' epochs, held back?\n{}",
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // While the others run, the failed system is said: logged under its
    // name, and in its metric.
    let log = job.lines().join("\n");
    assert!(
        job.lines()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("system{name=broken}")),
        "{log}"
    );
    let metrics = scrape(&job.lines());
    for (system, failed) in [("broken", 1), ("quiet", 0), ("a", 0)] {
        let series = format!("velib_aggregator_failed{{system=\"{system}\"}} {failed}\n");
        assert!(metrics.contains(&series), "{series}in\n{metrics}");
    }
    assert!(metrics.contains("velib_aggregator_failed 0\n"), "{metrics}");
    let (status, lines) = job.interrupt();
    let log = lines.join("\n");
    // The failed system makes the exit an error, once the others stopped.
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        lines.iter().any(|l| l.contains("system broken:")
            && l.contains("velib-projet-clean.broken")
            && l.contains("the other systems went on")),
        "{log}"
    );

    // Each system's output is its own, and the reference's.
    assert_system_epochs_on_topic(&broker.kcat_read("velib-projet-clean.a"), &paris, Some("a"));
    assert_system_epochs_on_topic(&broker.kcat_read("velib-projet-clean"), short, None);
    assert!(
        broker.kcat_read("velib-projet-clean.quiet").is_empty(),
        "no input, no epoch"
    );
    assert!(broker.kcat_read("velib-projet-clean.broken").is_empty());
    // Each system's state and transactional id are its own.
    for topic in ["velib-projet-clean-state.a", "velib-projet-clean-state"] {
        assert!(!broker.kcat_read(topic).is_empty(), "{topic}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("system{name=a}") && l.contains("epoch committed")),
        "the workers' lines say their system: {log}"
    );
    // velib_audit agrees, system by system, the records' system included.
    assert_audits_clean(&broker, &["a", "default"], "");
}

/// `velib_audit --system` finds each of `systems` clean.
fn assert_audits_clean(broker: &Broker, systems: &[&str], context: &str) {
    for system in systems {
        let out = Command::new(common::example_binary("velib_audit"))
            .args(["--brokers", &broker.address, "--system", system])
            .args(["--stall", "10s"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit of {system}{context}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Killed with SIGKILL at random points and restarted, an aggregator of
/// two systems writes each system's output exactly once: every epoch's
/// records once, equal to the from-scratch reference (read committed by
/// kcat), and velib_audit finds each clean.
#[test]
fn killed_at_random_points_each_system_resumes_exactly_once() {
    let broker = Broker::start();
    let base = AggregatorConfig::new(KafkaConfig::new(&broker.address));
    // System a's stations list their bikes as two v3 vehicle types, counted
    // with --vehicle-types (the default system's list none).
    let paris = typed(common::paris_series(true), true);
    let short = &typed(common::paris_series(true), false)[..paris.len() / 2];
    write_system_input(&broker, &base, short);
    write_system_input(&broker, &base.for_system("a"), &paris);
    let last = |epochs: &[(EpochUpdates, TypedState)]| epochs.last().unwrap().0.epoch;
    let done = || {
        has_progress_of(&broker, "velib-projet-clean.a", last(&paris))
            && has_progress_of(&broker, "velib-projet-clean", last(short))
    };
    let start = || {
        let mut command = Command::new(common::example_binary("velib_aggregator"));
        command
            .args(["--brokers", &broker.address])
            .args(["--system", "a", "--system", "default", "--vehicle-types"])
            .env("RUST_LOG", "info");
        Logged::spawn(&mut command)
    };
    // Random points, printed to replay a failure: from before the first
    // commit to part-way through the epochs.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut kills = 0;
    // The first run is killed as soon as system a has committed epoch 2:
    // part-way through, whatever the machine's speed.
    let mut job = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_progress_of(&broker, "velib-projet-clean.a", 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    job.child.kill().unwrap();
    job.child.wait().unwrap();
    for round in 0..3u32 {
        let after = Duration::from_millis(200 + u64::from(seed.rotate_left(round * 7) % 2000));
        eprintln!("run {round}: killed after {after:?} (seed {seed})");
        let mut job = start();
        std::thread::sleep(after);
        if done() {
            let _ = job.interrupt();
            break;
        }
        job.child.kill().unwrap();
        job.child.wait().unwrap();
        kills += 1;
    }
    let job = start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not resumed after {} kills: {}\n{}",
            kills + 1,
            job.lines().join("\n"),
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, lines) = job.interrupt();
    assert!(status.success(), "{status}: {}", lines.join("\n"));
    let typed_record = |system: Option<&'static str>| {
        move |p: &Postcode, typed: &TypedTotals, epoch, feed_time| PostcodeRecord {
            system: system.map(str::to_owned),
            vehicle_types: Some(typed.vehicle_types.clone()),
            ..PostcodeRecord::new(p, &typed.totals, epoch, feed_time)
        }
    };
    let on_a = broker.kcat_read("velib-projet-clean.a");
    assert_records_on_topic(&on_a, &paris, typed_record(Some("a")));
    assert!(
        on_a.iter().any(|r| r["payload"]
            .as_str()
            .is_some_and(|v| v.contains("\"e-city\":"))),
        "system a's vehicles are typed"
    );
    assert_records_on_topic(
        &broker.kcat_read("velib-projet-clean"),
        short,
        typed_record(None),
    );
    assert_audits_clean(
        &broker,
        &["a", "default"],
        &format!(" after {} kills", kills + 1),
    );
}

type TypedState = BTreeMap<Postcode, TypedTotals>;

/// `snapshots` sequenced, each epoch with the from-scratch typed totals;
/// with `types`, each status lists its mechanical and e-bikes as the v3
/// types `city` and `e-city`.
fn typed(
    mut snapshots: Vec<velib_dataflow::snapshot::Snapshot>,
    types: bool,
) -> Vec<(EpochUpdates, TypedState)> {
    for status in snapshots.iter_mut().flat_map(|s| s.statuses.iter_mut()) {
        if let (true, Some(t)) = (types, status.bike_types) {
            status.vehicle_types = [
                ("city".to_owned(), t.mechanical),
                ("e-city".to_owned(), t.ebike),
            ]
            .into();
        }
    }
    common::sequence_with_stations(snapshots)
        .into_iter()
        .map(|e| {
            let typed = typed_totals_from_scratch(&e.statuses, &e.directory);
            (e.updates, typed)
        })
        .collect()
}

/// The metrics a job serves, at the address its log gives.
fn scrape(lines: &[String]) -> String {
    use std::io::{Read, Write};
    let addr = lines
        .iter()
        .find_map(|l| {
            let rest = l.split("Prometheus metrics at http://").nth(1)?;
            rest.split('/').next().map(str::to_owned)
        })
        .expect("the log says where the metrics are");
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Bad --system and --systems values say what is wrong, and nothing
/// starts.
#[test]
fn bad_aggregator_system_lists_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let listed = dir.path().join("systems.txt");
    std::fs::write(&listed, "oslo https://a.example/gbfs.json\n").unwrap();
    let listed = listed.to_str().unwrap();
    let hosts = common::hosts_file(2);
    let hosts = hosts.path().to_str().unwrap();
    common::assert_cli(
        "velib_aggregator",
        &["--system", "--systems"],
        &[
            (
                vec!["--brokers", "x:1", "--system", "Oslo"],
                "system name \"Oslo\"",
            ),
            (
                vec!["--brokers", "x:1", "--system", "oslo", "--systems", listed],
                "system oslo is listed twice",
            ),
            (
                vec!["--brokers", "x:1", "--systems", "/nonexistent/systems.txt"],
                "/nonexistent/systems.txt",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--system",
                    "default",
                    "--system",
                    "default",
                ],
                "system default is listed twice",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--system",
                    "a",
                    "--output-topic",
                    "velib-projet",
                ],
                "would both publish to topic velib-projet.a",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--system",
                    "a",
                    "--system",
                    "b",
                    "-n",
                    "2",
                    "-p",
                    "0",
                    "-h",
                    hosts,
                ],
                "-n above 1 is for one system",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--system",
                    "a",
                    "--system",
                    "default",
                    "--output-topic",
                    "velib-projet",
                ],
                "would both publish to topic velib-projet",
            ),
        ],
    );
}

/// The readers of a system's topics refuse a bad --system name.
#[test]
fn the_readers_refuse_a_bad_system_name() {
    for reader in ["velib_view", "velib_audit"] {
        common::assert_cli(
            reader,
            &["--system"],
            &[(
                vec!["--brokers", "x:1", "--system", "Oslo"],
                "--system system name \"Oslo\"",
            )],
        );
    }
}

/// Bad --feed and --systems values say what is wrong, and nothing starts.
#[test]
fn bad_system_lists_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let listed = file(
        "two.txt",
        b"# two systems\noslo https://a.example/gbfs.json\n",
    );
    let bad_line = file("bad.txt", b"oslo https://a.example/gbfs.json\nbergen\n");
    let binary = file("binary.txt", &[0xff, 0xfe, 0x00, 0x01]);
    let huge = file("huge.txt", &vec![b'#'; (1 << 20) + 1]);
    common::assert_cli(
        "velib_producer",
        &["--feed", "--systems"],
        &[
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--feed",
                    "Oslo=https://a.example/g.json",
                ],
                "system name \"Oslo\"",
            ),
            (
                vec!["--brokers", "x:1", "--feed", "oslo=ftp://a.example/g.json"],
                "not an http:// or https:// URL",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--feed",
                    "https://a.example/a.json",
                    "--feed",
                    "https://a.example/b.json",
                ],
                "2 feeds have no name",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--feed",
                    "oslo=https://b.example/g.json",
                    "--systems",
                    &listed,
                ],
                "system oslo is listed twice",
            ),
            (
                vec!["--brokers", "x:1", "--systems", &bad_line],
                "line 2: \"bergen\"",
            ),
            (vec!["--brokers", "x:1", "--systems", &binary], "not UTF-8"),
            (
                vec!["--brokers", "x:1", "--systems", &huge],
                "larger than 1048576 bytes",
            ),
            (
                vec!["--brokers", "x:1", "--systems", "/nonexistent/systems.txt"],
                "/nonexistent/systems.txt",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--systems",
                    &listed,
                    "--feed",
                    "bergen=https://b.example/g.json",
                    "--stations",
                    "1,2",
                ],
                "--stations is for one feed",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--feed",
                    "oslo=https://a.example/g.json",
                    "--feed",
                    "paris=https://b.example/g.json",
                    "--language",
                    "fr",
                ],
                "--language is for one feed",
            ),
            (
                vec![
                    "--brokers",
                    "x:1",
                    "--feed",
                    "oslo=https://a.example/g.json",
                    "--feed",
                    "https://b.example/g.json",
                    "--directory-topic",
                    "velib-projet",
                ],
                "would both publish to topic velib-projet",
            ),
        ],
    );
}
