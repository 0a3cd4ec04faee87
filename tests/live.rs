//! `velib_live` as a newcomer runs it: offline, replaying the recorded
//! Paris series on the embedded broker, printing JSON lines; and as the
//! README shows it on a local Apache Kafka.

mod common;

use common::broker::Broker;

use serde_json::Value;
use std::collections::BTreeMap;
use velib_dataflow::output::PostcodeRecord;

#[test]
fn velib_live_replays_the_paris_series_on_its_embedded_broker() {
    let out = std::process::Command::new(common::example_binary("velib_live"))
        .arg("--replay")
        .arg(common::fixtures().join("opendata-paris/velib-series"))
        .args(["--interval", "100ms", "--format", "json"])
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("embedded Kafka-compatible broker")
            && stderr.contains("kcat -b 127.0.0.1:"),
        "it says where its broker is: {stderr}"
    );
    assert_printed_epochs_match_the_reference(common::json_lines("velib_live", &out));
}

/// The README's "A local Apache Kafka": velib_live with `--brokers` on a real
/// broker, where producer and aggregator create the topics concurrently;
/// what it prints, and what kcat reads on the output topic, equal the
/// reference.
#[test]
fn velib_live_replays_the_paris_series_on_apache_kafka() {
    let broker = Broker::start();
    let out = std::process::Command::new(common::example_binary("velib_live"))
        .args(["--brokers", &broker.address])
        .arg("--replay")
        .arg(common::fixtures().join("opendata-paris/velib-series"))
        .args(["--interval", "100ms", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log_tail()
    );
    let printed = common::json_lines("velib_live", &out);
    let records = broker.kcat_read("velib-projet-clean");
    let written = records
        .iter()
        .filter(|r| common::output::header(r, "velib-kind").is_none())
        .count();
    assert_eq!(printed.len(), written, "the view shows what is committed");
    common::output::assert_epochs_on_topic(&records, &common::sequence(common::paris_series(true)));
    assert_printed_epochs_match_the_reference(printed);
}

fn assert_printed_epochs_match_the_reference(lines: Vec<Value>) {
    let expected = common::sequence(common::paris_series(true));
    assert_printed_epochs_match(lines, &expected, None);
}

/// Several systems: `velib_live --feed a=URL --feed b=URL --feed stuck=URL`
/// on its embedded broker, two serving the recorded Oslo series and one
/// failing. Each system's lines say their system and equal the
/// from-scratch reference; the failing one holds back neither.
#[test]
fn velib_live_runs_several_systems_each_to_the_reference() {
    use common::http::{FeedServer, Reply};
    use std::time::{Duration, Instant};
    let (a, b, stuck) = (
        FeedServer::start(),
        FeedServer::start(),
        FeedServer::start(),
    );
    common::serve_oslo_series(&a);
    common::serve_oslo_series(&b);
    stuck.script("/gbfs.json", [Reply::Status(503, vec![])]);
    let expected = common::sequence(common::oslo_series());
    let lines_per_system: usize = expected
        .iter()
        .scan(common::State::new(), |previous, (_, state)| {
            let changed = common::output::changed_postcodes(previous, state).len();
            *previous = state.clone();
            Some(changed)
        })
        .sum();
    assert!(lines_per_system > 0);

    let stdout = tempfile::NamedTempFile::new().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut command = std::process::Command::new(common::example_binary("velib_live"));
    common::broker::killed_with_this_thread(&mut command);
    let mut child = command
        // The failing one first.
        .args(["--feed", &format!("stuck={}", stuck.url("/gbfs.json"))])
        .args(["--feed", &format!("a={}", a.url("/gbfs.json"))])
        .args(["--feed", &format!("b={}", b.url("/gbfs.json"))])
        .args(["--interval", "100ms", "--format", "json"])
        .env_remove("KAFKA_BROKERS")
        .env_remove("VELIB_FEED")
        .stdout(stdout.reopen().unwrap())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let printed = || printed_lines(stdout.path());
    let of = |lines: &[Value], system: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["system"] == system)
            .cloned()
            .collect()
    };
    // A bound on a hang, not a performance assertion.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = printed();
        if of(&lines, "a").len() >= lines_per_system && of(&lines, "b").len() >= lines_per_system {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "not every epoch shown: {} of a, {} of b, {lines_per_system} each expected\n{}",
                of(&lines, "a").len(),
                of(&lines, "b").len(),
                std::fs::read_to_string(stderr.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = interrupt(&mut child);
    let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    assert!(status.success(), "{status}\n{log}");
    let lines = printed();
    assert!(
        lines
            .iter()
            .all(|l| l["system"] == "a" || l["system"] == "b"),
        "every line says its system, none the failing one's"
    );
    assert_printed_epochs_match(of(&lines, "a"), &expected, Some("a"));
    assert_printed_epochs_match(of(&lines, "b"), &expected, Some("b"));
    assert!(
        log.contains("stuck") && log.contains("503"),
        "the failing system is said: {log}"
    );
}

/// `velib_live --vehicle-types` on a GBFS v3 system: each record has its
/// postcode's vehicles by type id, as the from-scratch reference counts
/// them; without the flag, no record has any.
#[test]
fn velib_live_counts_vehicles_by_type_with_vehicle_types() {
    use std::time::{Duration, Instant};
    use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
    use velib_dataflow::snapshot_source::PollOutcome;
    let server = common::http::FeedServer::start();
    common::serve_v3_system(&server);
    let url = server.url("/gbfs.json");
    // The reference: the system as the producer polls and judges it.
    let mut poller = FeedPoller::new(
        PollConfig::new(FeedLocation::Discover {
            url: url.clone(),
            language: None,
        }),
        velib_dataflow::directory::DirectoryResolver::new(
            velib_dataflow::postcode::PostcodeTable::velib(),
            true,
        ),
    )
    .unwrap();
    let Ok(PollOutcome::Snapshot(polled)) = poller.poll() else {
        panic!("the system answers");
    };
    let epoch = common::sequence_with_stations(vec![polled.snapshot])
        .pop()
        .unwrap();
    let expected =
        velib_dataflow::reference::typed_totals_from_scratch(&epoch.statuses, &epoch.directory);
    assert!(expected.values().any(|t| !t.vehicle_types.is_empty()));

    for with_types in [true, false] {
        let stdout = tempfile::NamedTempFile::new().unwrap();
        let mut command = std::process::Command::new(common::example_binary("velib_live"));
        common::broker::killed_with_this_thread(&mut command);
        command
            .args(["--feed", &url, "--interval", "100ms", "--format", "json"])
            .env_remove("KAFKA_BROKERS")
            .stdout(stdout.reopen().unwrap())
            .stderr(std::process::Stdio::null());
        if with_types {
            command.arg("--vehicle-types");
        }
        let mut child = command.spawn().unwrap();
        let printed = || printed_lines(stdout.path());
        // A bound on a hang, not a performance assertion.
        let deadline = Instant::now() + Duration::from_secs(90);
        while printed().len() < expected.len() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("not shown: {:?}", printed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(interrupt(&mut child).success());
        let lines = printed();
        assert_eq!(lines.len(), expected.len(), "{lines:?}");
        for line in lines {
            let got: PostcodeRecord = serde_json::from_value(line).unwrap();
            let typed =
                &expected[&velib_dataflow::postcode::Postcode::parse(&got.postcode).unwrap()];
            let want = PostcodeRecord {
                vehicle_types: with_types.then(|| typed.vehicle_types.clone()),
                ..PostcodeRecord::new(
                    &velib_dataflow::postcode::Postcode::parse(&got.postcode).unwrap(),
                    &typed.totals,
                    epoch.updates.epoch,
                    epoch.updates.feed_time,
                )
            };
            assert_eq!(got, want);
        }
    }
}

/// The JSON lines printed so far into `path`.
fn printed_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Ctrl-C, and how it exited.
fn interrupt(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

/// Printed per epoch: exactly the postcodes that changed, with the values
/// of a from-scratch computation on that epoch's snapshot, each saying
/// `system`.
fn assert_printed_epochs_match(
    lines: Vec<Value>,
    expected: &[(velib_dataflow::snapshot::EpochUpdates, common::State)],
    system: Option<&str>,
) {
    let mut by_epoch: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
    for line in lines {
        let epoch = line["epoch"].as_u64().unwrap();
        let postcode = line["postcode"].as_str().unwrap().to_owned();
        assert!(
            by_epoch
                .entry(epoch)
                .or_default()
                .insert(postcode, line)
                .is_none(),
            "a postcode printed twice in one epoch"
        );
    }
    let mut previous = common::State::new();
    for (updates, state) in expected {
        let printed = by_epoch.remove(&updates.epoch).unwrap_or_default();
        let changed = common::output::changed_postcodes(&previous, state);
        assert_eq!(
            printed.keys().cloned().collect::<Vec<_>>(),
            changed,
            "epoch {}",
            updates.epoch
        );
        for (postcode, line) in printed {
            match state.iter().find(|(p, _)| p.as_str() == postcode) {
                Some((p, counts)) => {
                    let got: PostcodeRecord = serde_json::from_value(line).unwrap();
                    let want = PostcodeRecord {
                        system: system.map(str::to_owned),
                        ..PostcodeRecord::new(p, counts, updates.epoch, updates.feed_time)
                    };
                    assert_eq!(got, want);
                }
                None => {
                    assert_eq!(line["deleted"], true);
                    assert_eq!(line["system"].as_str(), system);
                }
            }
        }
        previous = state.clone();
    }
    assert!(by_epoch.is_empty(), "nothing printed outside the epochs");
}

#[test]
fn velib_live_explains_its_flags() {
    common::assert_cli(
        "velib_live",
        &[
            "--replay",
            "--feed",
            "--brokers",
            "KAFKA_BROKERS",
            "-X",
            "-w",
            "--format",
            "--http",
            "--systems",
            "--page-system",
        ],
        &[
            (vec!["--interval", "never"], "never"),
            (vec!["--format", "xml"], "xml"),
            (vec!["--http", "localhost"], "localhost"),
            (
                vec![
                    "--feed",
                    "a=http://a.example/g.json",
                    "--feed",
                    "b=http://b.example/g.json",
                    "--replay",
                    "x",
                ],
                "--replay is for one feed",
            ),
            (
                vec![
                    "--feed",
                    "a=http://a.example/g.json",
                    "--feed",
                    "b=http://b.example/g.json",
                    "--stations",
                    "1",
                ],
                "--stations is for one feed",
            ),
            (
                vec![
                    "--feed",
                    "a=http://a.example/g.json",
                    "--http",
                    "127.0.0.1:0",
                    "--page-system",
                    "c",
                ],
                "--page-system c: no such system among a",
            ),
            (
                vec!["--feed", "A=http://a.example/g.json"],
                "system name \"A\"",
            ),
        ],
    );
}

/// While `velib_live` runs, its Prometheus endpoint answers with the
/// producer's and the aggregator's metrics.
#[test]
fn velib_live_serves_its_metrics_while_it_runs() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut child, lines) =
        replay_lines("700ms", &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let mut scraped = None;
    for line in lines {
        if scraped.is_none() && line["epoch"].as_u64().unwrap() >= 3 {
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            scraped = Some(answer);
        }
    }
    assert!(child.wait().unwrap().success());
    let answer = scraped.expect("epoch 3 was printed");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let value = |name: &str| {
        answer
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {answer}"))
    };
    assert!(value("velib_producer_epochs_published_total") >= 3);
    assert!(value("velib_producer_station_updates_total") >= 1485);
    assert!(value("velib_aggregator_last_epoch_committed") >= 2);
    assert!(value("velib_aggregator_station_updates_total") >= 1485);
    // Every committed epoch's latency was observed.
    assert!(value("velib_aggregator_epoch_close_to_commit_seconds_count") >= 2);
    assert!(answer.contains("velib_aggregator_epoch_close_to_commit_seconds_bucket{le=\"+Inf\"}"));
    for family in [
        "velib_producer_responses_rejected_total",
        "velib_aggregator_dead_letters_total",
        "velib_aggregator_records_written_total",
    ] {
        assert!(
            answer.contains(&format!("# TYPE {family} counter")),
            "{family}"
        );
    }
}

/// Every example answers `--help` with what it is and its flags.
#[test]
fn every_example_explains_itself() {
    let examples: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_owned();
            let is_example =
                p.extension().is_some_and(|e| e == "rs") || p.join("main.rs").is_file();
            is_example.then_some(name)
        })
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for name in examples {
        let out = std::process::Command::new(common::example_binary(&name))
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Usage:") && text.contains("--"),
            "{name} --help:\n{text}"
        );
    }
}

/// Ctrl-C in the middle of a replay: it stops cleanly, and every epoch it
/// printed is whole (each postcode once, all of one epoch).
#[test]
fn velib_live_stops_cleanly_on_ctrl_c() {
    let (mut child, lines) = replay_lines("1s", &[]);
    let mut epochs: BTreeMap<u64, usize> = BTreeMap::new();
    let mut interrupted = false;
    for line in lines {
        let epoch = line["epoch"].as_u64().unwrap();
        *epochs.entry(epoch).or_default() += 1;
        if epoch >= 2 && !interrupted {
            interrupted = true;
            let status = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    assert!(child.wait().unwrap().success(), "exit status 0 on Ctrl-C");
    let expected = common::sequence(common::paris_series(true));
    let last = *epochs.keys().last().unwrap();
    assert!(
        last < expected.last().unwrap().0.epoch,
        "stopped before the end"
    );
    let mut previous = common::State::new();
    for (updates, state) in expected.iter().take_while(|(u, _)| u.epoch <= last) {
        let changed = common::output::changed_postcodes(&previous, state).len();
        assert_eq!(
            epochs.get(&updates.epoch),
            Some(&changed),
            "epoch {} whole",
            updates.epoch
        );
        previous = state.clone();
    }
}

#[test]
fn velib_live_draws_a_table_on_a_terminal() {
    let out = std::process::Command::new(common::example_binary("velib_live"))
        .arg("--replay")
        .arg(common::fixtures().join("opendata-paris/velib-series/velib_data_20241105_093001.json"))
        .args(["--format", "table"])
        .env("COLUMNS", "80")
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("velib-dataflow · epoch 1 · feed time 2024-11-05"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains("75016"))
        .expect("75016 is shown");
    assert!(row.len() <= 80 + 8, "fits the terminal: {row:?}");
}

/// Starts `velib_live` replaying the Paris series as JSON lines, `interval`
/// apart, and returns it with its lines as they come.
fn replay_lines(
    interval: &str,
    extra: &[&str],
) -> (std::process::Child, impl Iterator<Item = Value>) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(common::example_binary("velib_live"))
        .arg("--replay")
        .arg(common::fixtures().join("opendata-paris/velib-series"))
        .args(["--interval", interval, "--format", "json"])
        .args(extra)
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap());
    (child, lines)
}
