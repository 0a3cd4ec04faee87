//! Several systems at once, the producer's side: one `velib_producer` with
//! `--feed NAME=URL` twice, on Apache Kafka, checked with kcat. Each system
//! publishes its own epochs to its own topics, and a system whose feed
//! hangs and fails holds back no epoch of the other.

mod common;

use common::broker::Broker;
use common::http::{FeedServer, Reply};
use common::output::published;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use velib_dataflow::dataflow::Epoch;

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
    common::broker::killed_with_this_thread(&mut command);
    let mut child = command
        .args(["--brokers", &broker.address])
        // The hanging one first: a loop over systems in turn would stall.
        .args(["--feed", &format!("stuck={}", stuck.url("/gbfs.json"))])
        .args(["--feed", &format!("oslo={}", oslo.url("/gbfs.json"))])
        .args(["--interval", "100ms", "--timeout", "2s"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A bound on a hang, not a performance assertion.
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(180));
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    });
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let lines =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());

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
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    let lines = lines.join().unwrap();
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
