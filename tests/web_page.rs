//! The live page in a real browser: `velib_live --http` replays the Paris
//! series on Apache Kafka while headless Chromium shows the page; what the
//! page's DOM shows equals the from-scratch reference for the epoch it
//! displays, a later epoch arrives without a reload, and a screenshot is
//! saved.

mod common;

use common::broker::Broker;
use common::browser::Browser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use velib_dataflow::counts::StationCounts;
use velib_dataflow::output::PostcodeRecord;

/// Everything the page shows that the test checks, read in one task of the
/// page's (no event is applied halfway through the read).
const READ_PAGE: &str = r#"(() => {
  // Still loading: no body yet.
  if (!document.body) return null;
  const epoch = document.body.dataset.epoch;
  if (epoch === undefined) return null;
  const rows = {};
  for (const tr of document.querySelectorAll('table#postcodes tbody tr[data-postcode]')) {
    const row = {};
    for (const td of tr.querySelectorAll('td[data-field]')) row[td.dataset.field] = td.textContent.trim();
    rows[tr.dataset.postcode] = row;
  }
  const totals = {};
  for (const e of document.querySelectorAll('#totals [data-field]')) totals[e.dataset.field] = e.textContent.trim();
  const stations = {};
  for (const c of document.querySelectorAll('svg#map circle.station')) stations[c.dataset.station] = Number(c.dataset.bikes);
  return {
    epoch: Number(epoch),
    epoch_text: document.getElementById('epoch').textContent.trim(),
    stale_warning: !document.getElementById('stale-warning').hidden,
    rows, totals, stations,
    labels: document.querySelectorAll('svg#map text.postcode-label').length,
    chart: document.querySelectorAll('svg#chart *').length,
  };
})()"#;

/// The table's integer columns, and the record field each shows.
const COLUMNS: [&str; 8] = [
    "nbr_total",
    "nbr_meca",
    "nbr_elec",
    "nbr_docks",
    "nbr_stations_renting",
    "nbr_stations_empty",
    "nbr_stations_full",
    "nbr_stations_stale",
];

fn field(record: &PostcodeRecord, name: &str) -> i64 {
    serde_json::to_value(record).unwrap()[name]
        .as_i64()
        .unwrap()
}

/// The bikes a rider can take at each station of `epoch` that `keep`s.
fn reference_bikes(
    epoch: &common::SequencedEpoch,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, i64> {
    epoch
        .statuses
        .iter()
        .map(|s| (s.station_id.to_string(), s))
        .filter(|(id, _)| keep(id))
        .map(|(id, s)| (id, StationCounts::of_station(s).placed(false).bikes))
        .collect()
}

/// Checks what the page shows against the reference of the epoch it shows.
fn assert_shows_the_reference(shown: &Value, expected: &[common::SequencedEpoch]) -> u64 {
    let epoch = shown["epoch"].as_u64().unwrap();
    assert_eq!(shown["epoch_text"], epoch.to_string());
    let reference = expected
        .iter()
        .find(|e| e.updates.epoch == epoch)
        .unwrap_or_else(|| panic!("the page shows epoch {epoch}, which the series has not"));
    let records: BTreeMap<String, PostcodeRecord> = reference
        .state
        .iter()
        .map(|(p, counts)| {
            let record = PostcodeRecord::new(p, counts, epoch, reference.updates.feed_time);
            (p.to_string(), record)
        })
        .collect();
    let rows = shown["rows"].as_object().unwrap();
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        records.keys().collect::<Vec<_>>(),
        "epoch {epoch}: the table's postcodes"
    );
    for (postcode, record) in &records {
        // How long, in whole minutes at the epoch's feed time.
        let empty_for = record.longest_empty_since.map_or("—".to_owned(), |since| {
            (record.feed_time - since).max(0).div_euclid(60).to_string()
        });
        assert_eq!(
            rows[postcode]["longest_empty"].as_str(),
            Some(empty_for.as_str()),
            "epoch {epoch}, postcode {postcode}: empty for"
        );
        for column in COLUMNS {
            assert_eq!(
                rows[postcode][column]
                    .as_str()
                    .and_then(|t| t.parse::<i64>().ok()),
                Some(field(record, column)),
                "epoch {epoch}, postcode {postcode}, {column}: {}",
                rows[postcode]
            );
        }
    }
    for column in COLUMNS
        .into_iter()
        .chain(["nbr_stations", "nbr_bikes_stale"])
    {
        let sum: i64 = records.values().map(|r| field(r, column)).sum();
        assert_eq!(
            shown["totals"][column]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok()),
            Some(sum),
            "epoch {epoch}: the city's {column}"
        );
    }
    // The map: every station the directory places, coloured by the bikes a
    // rider can take there at this epoch.
    let placed: std::collections::HashSet<String> = reference
        .directory
        .iter()
        .filter(|e| e.position.is_some())
        .map(|e| e.station_id.to_string())
        .collect();
    let bikes = reference_bikes(reference, |id| placed.contains(id));
    let shown_bikes: BTreeMap<String, i64> = shown["stations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, b)| (id.clone(), b.as_i64().unwrap()))
        .collect();
    assert!(bikes.len() > 1000, "the series places its stations");
    assert_eq!(shown_bikes, bikes, "epoch {epoch}: the map's stations");
    assert!(shown["labels"].as_u64().unwrap() > 0, "postcode labels");
    assert!(shown["chart"].as_u64().unwrap() > 0, "a chart");
    // A replay of 2024's feed is far older than GBFS's 5 minutes.
    assert_eq!(shown["stale_warning"], true, "the feed is stale: said");
    epoch
}

type Log = std::sync::Arc<std::sync::Mutex<String>>;

/// Starts `command`, and returns it, the page's URL it prints, and its
/// stderr so far (kept, so that it never blocks on it).
fn started(command: &mut Command) -> (std::process::Child, String, Log) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (said, address) = std::sync::mpsc::channel();
    let log = Log::default();
    let kept = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("the live page is at ") {
                let _ = said.send(line[at + 20..].trim().to_owned());
            }
            kept.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let url = address
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("it says where its page is:\n{}", log.lock().unwrap()));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url, log)
}

/// `GET url+path`, as JSON.
fn get_json(url: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

#[test]
fn the_live_page_shows_the_committed_counts_in_a_real_browser() {
    let broker = Broker::start();
    let mut browser = Browser::start();
    let expected = common::sequence_with_stations(common::paris_series(true));
    let last = expected.last().unwrap().updates.epoch;
    let (mut live, url, log) = started(
        Command::new(common::example_binary("velib_live"))
            .args(["--brokers", &broker.address])
            .arg("--replay")
            .arg(common::fixtures().join("opendata-paris/velib-series"))
            // Slow enough that the browser sees an epoch before the last.
            .args(["--interval", "3s", "--format", "json"])
            .args(["--http", "127.0.0.1:0"]),
    );

    browser.open(&url, 1400, 900);
    let first = browser.wait_for("an epoch", READ_PAGE, Duration::from_secs(120));
    let first = assert_shows_the_reference(&first, &expected);
    assert!(
        first < last,
        "the page showed epoch {first} before the last, {last}"
    );
    // Later epochs arrive without a reload, up to the last one.
    let wait_later = format!(
        "(() => {{ const e = Number(document.body && document.body.dataset.epoch); return e > {first} ? {READ_PAGE} : null; }})()"
    );
    let later = browser.wait_for("a later epoch", &wait_later, Duration::from_secs(120));
    assert_shows_the_reference(&later, &expected);
    let wait_last = format!(
        "(() => {{ const e = Number(document.body && document.body.dataset.epoch); return e >= {last} ? {READ_PAGE} : null; }})()"
    );
    let shown = browser.wait_for("the last epoch", &wait_last, Duration::from_secs(120));
    assert_eq!(assert_shows_the_reference(&shown, &expected), last);
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("velib-live-page.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
    assert!(
        browser.errors.is_empty(),
        "the page reported errors: {:?}",
        browser.errors
    );

    // velib_view, on the same cluster, serves the same: the output topic's
    // records, as kcat reads them.
    let (mut view, view_url, view_log) =
        started(Command::new(common::example_binary("velib_view")).args([
            "--brokers",
            &broker.address,
            "--http",
            "127.0.0.1:0",
        ]));
    let state = loop {
        let state = get_json(&view_url, "/api/state");
        if state["epoch"].as_u64() >= Some(last) {
            break state;
        }
        assert!(
            view.try_wait().unwrap().is_none(),
            "{}",
            view_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut on_topic = serde_json::Map::new();
    for record in broker.kcat_read("velib-projet-clean") {
        if common::output::header(&record, "velib-kind").is_some() {
            continue;
        }
        let key = record["key"].as_str().unwrap().to_owned();
        match record["payload"].as_str() {
            Some(payload) => on_topic.insert(key, serde_json::from_str(payload).unwrap()),
            None => on_topic.remove(&key),
        };
    }
    assert_eq!(
        state["postcodes"],
        Value::Object(on_topic),
        "velib_view shows the output topic"
    );
    // Its stations: every one with a status at the last epoch, as the
    // reference counts it.
    let reference = expected.last().unwrap();
    let bikes = reference_bikes(reference, |_| true);
    let served: BTreeMap<String, i64> = state["stations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, s)| (id.clone(), s["bikes"].as_i64().unwrap()))
        .collect();
    assert_eq!(served, bikes, "velib_view's stations at epoch {last}");
    let _ = view.kill();
    let _ = view.wait();

    // The replay is over and the page still served, until Ctrl-C.
    assert!(
        live.try_wait().unwrap().is_none(),
        "{}",
        log.lock().unwrap()
    );
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(live.id() as i32, libc::SIGINT) };
    let status = live.wait().unwrap();
    assert!(status.success(), "{}", log.lock().unwrap());
}

#[test]
fn velib_view_explains_its_flags() {
    common::assert_cli(
        "velib_view",
        &[
            "--brokers",
            "--http",
            "--output-topic",
            "--state-topic",
            "-X",
        ],
        &[
            (vec!["--brokers", "b:9092", "--http", "8080"], "8080"),
            (vec!["--brokers", "b:9092", "--wait", "never"], "never"),
            (vec!["--http", "127.0.0.1:0"], "--brokers"),
            (
                vec!["--brokers", "b:9092", "--no-state", "--state-topic", "s"],
                "--state-topic",
            ),
        ],
    );
}

/// An address already in use is said at once, with the flag, and the exit
/// status says it failed.
#[test]
fn velib_view_says_when_it_cannot_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(common::example_binary("velib_view"))
        .args(["--brokers", "127.0.0.1:9", "--http", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--http {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Brokers that do not answer: the page is served at once, and says why it
/// has nothing to show (`reader.waiting_for` in its state).
#[test]
fn velib_view_says_why_it_waits() {
    let (mut view, url, log) = started(Command::new(common::example_binary("velib_view")).args([
        "--brokers",
        "127.0.0.1:9",
        "--http",
        "127.0.0.1:0",
        "--wait",
        "1s",
    ]));
    let reason = loop {
        let state = get_json(&url, "/api/state");
        assert_eq!(state["epoch"], Value::Null);
        if let Some(reason) = state["reader"]["waiting_for"].as_str() {
            break reason.to_owned();
        }
        assert!(
            view.try_wait().unwrap().is_none(),
            "{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        reason.contains("velib-projet-clean") && reason.contains("127.0.0.1:9"),
        "{reason}"
    );
    let _ = view.kill();
    let _ = view.wait();
}
