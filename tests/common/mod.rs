//! Shared by the integration tests: fixtures, and checking the incremental
//! dataflow against the from-scratch reference at every epoch.
#![allow(dead_code)]

pub mod broker;
pub mod browser;
pub mod epochs;
pub mod http;
pub mod output;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use velib_dataflow::counts::PostcodeTotals;
use velib_dataflow::feed::{Judged, StationId};
use velib_dataflow::kafka::changes::KeyChange;
use velib_dataflow::postcode::Postcode;
use velib_dataflow::reference::postcode_counts_from_scratch;
use velib_dataflow::replay::{run, EpochOutput};
use velib_dataflow::snapshot::{EpochUpdates, Snapshot, SnapshotSequencer};

// Kept beside the broker, whose kcat reads need it; not every test uses it.
#[allow(unused_imports)]
pub use broker::json_lines;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The timely configurations every result must be identical under.
pub fn configs() -> Vec<(&'static str, timely::Config)> {
    vec![
        ("1 worker", timely::Config::thread()),
        ("2 workers", timely::Config::process(2)),
        (
            "2 workers, serialised exchange (-z)",
            timely::Config {
                communication: timely::CommunicationConfig::ProcessBinary(2),
                worker: timely::WorkerConfig::default(),
            },
        ),
    ]
}

pub type State = BTreeMap<Postcode, PostcodeTotals>;

/// The 10 polls of the Paris open-data series, resolved with the shipped table.
pub fn paris_series(infer: bool) -> Vec<Snapshot> {
    use velib_dataflow::directory::DirectoryResolver;
    use velib_dataflow::postcode::PostcodeTable;
    use velib_dataflow::recorded::{load, snapshot_files};
    use velib_dataflow::snapshot::StationSelection;
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), infer);
    let dir = fixtures().join("opendata-paris/velib-series");
    let files: Vec<_> = snapshot_files(&[dir])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(files.len(), 10);
    files
        .iter()
        .map(|f| {
            load(f)
                .unwrap()
                .into_snapshot(&resolver, &StationSelection::all())
        })
        .collect()
}

/// The default stale policy's rule, written out: a report more than two
/// hours before the snapshot's feed time.
pub const STALE_AFTER_SECONDS: i64 = 7_200;

/// The sequencer's default limit for empty or full "for long", written out.
pub const LONG_AFTER_SECONDS: i64 = 1_800;

/// Sequences `snapshots`, keeping for each epoch the from-scratch counts of
/// the snapshot that made it, its stations judged here (not by the
/// sequencer's code) by the default rules: stale, and since when empty or
/// full, carried from each accepted snapshot to the next.
pub fn sequence(snapshots: Vec<Snapshot>) -> Vec<(EpochUpdates, State)> {
    sequence_with_stations(snapshots)
        .into_iter()
        .map(|e| (e.updates, e.state))
        .collect()
}

/// An epoch as [`sequence`] makes it, with the stations it was counted from.
pub struct SequencedEpoch {
    pub updates: EpochUpdates,
    pub state: State,
    /// The snapshot's statuses, judged.
    pub statuses: Vec<velib_dataflow::feed::StationStatus>,
    /// The directory as of the epoch.
    pub directory: Vec<velib_dataflow::directory::DirectoryEntry>,
}

/// [`sequence`], keeping each epoch's stations too.
pub fn sequence_with_stations(snapshots: Vec<Snapshot>) -> Vec<SequencedEpoch> {
    let mut sequencer = SnapshotSequencer::new();
    let mut directory = Vec::new();
    let mut epochs = Vec::new();
    let mut since: HashMap<StationId, (Option<i64>, Option<i64>)> = HashMap::new();
    for snapshot in snapshots {
        let t = snapshot.feed_time;
        let mut statuses = snapshot.statuses.clone();
        let mut next_since = HashMap::new();
        for s in &mut statuses {
            let empty = s.is_installed && s.is_renting && s.bikes_available == 0;
            let full = s.is_installed && s.is_returning && s.docks_available == 0;
            let (was_empty, was_full) = since.get(&s.station_id).copied().unwrap_or_default();
            let empty_since = empty.then(|| was_empty.unwrap_or(t));
            let full_since = full.then(|| was_full.unwrap_or(t));
            s.judged = Judged {
                stale: s.last_reported.is_some_and(|r| t - r > STALE_AFTER_SECONDS),
                empty_since,
                full_since,
                empty_long: empty_since.is_some_and(|e| t - e > LONG_AFTER_SECONDS),
                full_long: full_since.is_some_and(|f| t - f > LONG_AFTER_SECONDS),
            };
            next_since.insert(s.station_id.clone(), (empty_since, full_since));
        }
        let next_directory = snapshot.directory.clone();
        // A refused snapshot changes nothing; an accepted one (even one that
        // changes nothing) is what the next is judged against.
        if let Ok(outcome) = sequencer.advance(snapshot) {
            since = next_since;
            if let Some(updates) = outcome {
                if let Some(d) = next_directory {
                    directory = d;
                }
                let state = postcode_counts_from_scratch(&statuses, &directory);
                epochs.push(SequencedEpoch {
                    updates,
                    state,
                    statuses,
                    directory: directory.clone(),
                });
            }
        }
    }
    epochs
}

pub fn run_epochs(config: timely::Config, epochs: Vec<EpochUpdates>) -> Vec<EpochOutput> {
    let outputs = Arc::new(Mutex::new(Vec::new()));
    let sink = outputs.clone();
    run(config, epochs, move |out| sink.lock().unwrap().push(out)).expect("replay runs");
    let outputs = outputs.lock().unwrap().clone();
    outputs
}

/// Applies each epoch's changes and checks, at every epoch, that the state
/// equals the from-scratch counts, that every change is a real change, and
/// that no unchanged postcode was written.
pub fn assert_matches_reference(
    label: &str,
    config: timely::Config,
    epochs: &[(EpochUpdates, State)],
) {
    let outputs = run_epochs(config, epochs.iter().map(|(u, _)| u.clone()).collect());
    assert_eq!(outputs.len(), epochs.len(), "{label}: one output per epoch");
    let mut state = State::new();
    for (output, (updates, expected)) in outputs.iter().zip(epochs) {
        assert_eq!(output.epoch, updates.epoch, "{label}");
        let before = state.clone();
        for change in &output.changes {
            match change {
                KeyChange::Upsert(postcode, counts) => {
                    let old = state.insert(*postcode, *counts);
                    assert_ne!(
                        old.as_ref(),
                        Some(counts),
                        "{label}: epoch {}: {postcode} written unchanged",
                        output.epoch
                    );
                }
                KeyChange::Delete(postcode) => {
                    assert!(
                        state.remove(postcode).is_some(),
                        "{label}: epoch {}: tombstone for absent {postcode}",
                        output.epoch
                    );
                }
            }
        }
        assert_eq!(
            &state, expected,
            "{label}: epoch {} differs from a from-scratch computation",
            output.epoch
        );
        // Exactly the changed postcodes were written.
        let changed: Vec<&Postcode> = expected
            .keys()
            .chain(before.keys())
            .filter(|p| expected.get(*p) != before.get(*p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let written: Vec<&Postcode> = output.changes.iter().map(|c| c.key()).collect();
        assert_eq!(
            written, changed,
            "{label}: epoch {}: written postcodes",
            output.epoch
        );
    }
}

/// Rider totals (bikes, mechanical, e-bikes) per postcode, from the raw JSON
/// and CSV with no code of the library: stations installed and renting,
/// joined on stationCode with the CSV, skipping stations without a postcode.
pub fn raw_rider_totals() -> BTreeMap<String, (i64, i64, i64)> {
    let mut totals = BTreeMap::new();
    for (pc, s) in raw_stations_with_postcode() {
        let entry = totals.entry(pc).or_insert((0, 0, 0));
        if s["is_installed"] == 1 && s["is_renting"] == 1 {
            let types = s["num_bikes_available_types"].as_array().unwrap();
            entry.0 += s["num_bikes_available"].as_i64().unwrap();
            entry.1 += types[0]["mechanical"].as_i64().unwrap();
            entry.2 += types[1]["ebike"].as_i64().unwrap();
        }
    }
    totals
}

/// Each station of the raw 2024-11-19 status file that the raw postcode
/// table places, with its postcode: what the raw references sum.
pub fn raw_stations_with_postcode() -> Vec<(String, serde_json::Value)> {
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("gbfs/velib/2024-11-19/station_status.json")).unwrap(),
    )
    .unwrap();
    let csv =
        std::fs::read_to_string(fixtures().join("postcodes/velib_station_postcodes.csv")).unwrap();
    let postcode_of: std::collections::HashMap<&str, &str> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0], f[2])
        })
        .collect();
    status["data"]["stations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            let pc = postcode_of
                .get(s["stationCode"].as_str().unwrap())
                .filter(|p| !p.is_empty())?;
            Some((pc.to_string(), s.clone()))
        })
        .collect()
}

/// The path of an example binary built by `cargo test`.
pub fn example_binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

/// An example binary's `--help` mentions each of `flags`, and each of `bad`
/// command lines exits with status 2 and a message containing its text.
pub fn assert_cli(name: &str, flags: &[&str], bad: &[(Vec<&str>, &str)]) {
    let binary = example_binary(name);
    let help = std::process::Command::new(&binary)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in flags {
        assert!(text.contains(flag), "--help mentions {flag}:\n{text}");
    }
    for (args, expected) in bad {
        let out = std::process::Command::new(&binary)
            .args(args)
            .env_remove("KAFKA_BROKERS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// The raw bytes of the Paris series' files, in time order.
pub fn paris_files() -> Vec<Vec<u8>> {
    let dir = fixtures().join("opendata-paris/velib-series");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The Paris series, then `extra` synthetic polls of its last snapshot, each
/// a minute later: a few stations change counts, one in seven polls a
/// station disappears (and comes back two polls later), one in eleven a
/// station moves to another postcode. A long run over real stations.
pub fn paris_then_synthetic(extra: usize) -> Vec<Snapshot> {
    use velib_dataflow::postcode::Postcode;
    let mut snapshots = paris_series(true);
    let last = snapshots.last().unwrap().clone();
    let mut statuses = last.statuses.clone();
    let mut directory = snapshots
        .iter()
        .rev()
        .find_map(|s| s.directory.clone())
        .expect("the series has a directory");
    let mut removed: Option<(usize, velib_dataflow::feed::StationStatus)> = None;
    for k in 1..=extra {
        for (i, status) in statuses.iter_mut().enumerate() {
            if (i + 3 * k) % 23 != 0 {
                continue;
            }
            let types = status.bike_types.get_or_insert(Default::default());
            if status.bikes_available > 0 && types.mechanical > 0 {
                status.bikes_available -= 1;
                types.mechanical -= 1;
                status.docks_available += 1;
            } else {
                status.bikes_available += 1;
                types.ebike += 1;
                status.docks_available = status.docks_available.saturating_sub(1);
            }
        }
        match (k % 7, removed.take()) {
            (3, None) => {
                let i = (k * 37) % statuses.len();
                removed = Some((i, statuses.remove(i)));
            }
            (5, Some((i, status))) => statuses.insert(i.min(statuses.len()), status),
            (_, kept) => removed = kept,
        }
        if k % 11 == 4 {
            let i = (k * 101) % directory.len();
            let moved = if directory[i].postcode.as_str() == "75001" {
                "75002"
            } else {
                "75001"
            };
            directory[i].postcode = Postcode::parse(moved).unwrap();
        }
        let mut snapshot = last.clone();
        snapshot.feed_time = last.feed_time + 60 * k as velib_dataflow::feed::FeedTime;
        snapshot.statuses = statuses.clone();
        snapshot.directory = Some(directory.clone());
        snapshots.push(snapshot);
    }
    snapshots
}

/// A timely hosts file (`-h`) for `processes` processes on free loopback
/// ports.
pub fn hosts_file(processes: usize) -> tempfile::NamedTempFile {
    let hosts = tempfile::NamedTempFile::new().unwrap();
    let lines: String = (0..processes)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("127.0.0.1:{port}\n")
        })
        .collect();
    std::fs::write(hosts.path(), lines).unwrap();
    hosts
}

/// The library's logs in the test's output (`RUST_LOG`, else info), shown
/// when a test fails.
#[allow(dead_code)]
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The recorded Oslo series (`gbfs/oslo/series`) in order, and its
/// station_information file.
fn oslo_files() -> (Vec<Vec<u8>>, Vec<u8>) {
    let oslo = fixtures().join("gbfs/oslo");
    let mut series: Vec<PathBuf> = std::fs::read_dir(oslo.join("series"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    series.sort();
    let series = series.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let information = std::fs::read(oslo.join("station_information.json")).unwrap();
    (series, information)
}

/// The Oslo series as the producer assembles it (Vélib' table, postcodes
/// inferred): for [`sequence`].
pub fn oslo_series() -> Vec<Snapshot> {
    use velib_dataflow::directory::DirectoryResolver;
    use velib_dataflow::feed::{gbfs, payload};
    use velib_dataflow::postcode::PostcodeTable;
    use velib_dataflow::snapshot::StationSelection;
    let (series, information) = oslo_files();
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
    let info = gbfs::parse_information(&information).unwrap();
    series
        .iter()
        .map(|file| {
            let (status, _) = payload::parse_status(file).unwrap();
            Snapshot::assemble(status, Some(&info), &resolver, &StationSelection::all())
        })
        .collect()
}

/// Serves the Oslo series through its discovery file; returns what each
/// epoch should publish: (epoch, statuses, directory entries).
pub fn serve_oslo_series(
    server: &http::FeedServer,
) -> Vec<(velib_dataflow::dataflow::Epoch, usize, usize)> {
    use velib_dataflow::snapshot::net_changes;
    let (series, information) = oslo_files();
    server.script("/gbfs.json", [http::Reply::ok(http::discovery(server))]);
    server.script(
        "/nb/station_status.json",
        series.into_iter().map(http::Reply::ok),
    );
    server.script(
        "/nb/station_information.json",
        [http::Reply::ok(information)],
    );
    let mut sequencer = SnapshotSequencer::new();
    oslo_series()
        .into_iter()
        .filter_map(|snapshot| {
            sequencer.advance(snapshot).unwrap().map(|u| {
                (
                    u.epoch,
                    net_changes(&u.statuses).len(),
                    net_changes(&u.directory).len(),
                )
            })
        })
        .collect()
}

/// Serves a GBFS v3 system of two stations whose vehicles are listed by
/// type id, its `vehicle_types.json` found through discovery (type `9` of
/// station b is not defined), at `/gbfs.json`.
pub fn serve_v3_system(server: &http::FeedServer) {
    let serve_json = |path: &str, value: serde_json::Value| {
        server.script(path, [http::Reply::ok(serde_json::to_vec(&value).unwrap())]);
    };
    let time = "2024-11-19T08:22:18Z";
    serve_json(
        "/gbfs.json",
        serde_json::json!({
            "last_updated": time, "ttl": 60, "version": "3.0",
            "data": {"feeds": [
                {"name": "station_status", "url": server.url("/station_status.json")},
                {"name": "station_information", "url": server.url("/station_information.json")},
                {"name": "vehicle_types", "url": server.url("/vehicle_types.json")},
            ]}
        }),
    );
    let station = |id: &str, types: serde_json::Value| {
        serde_json::json!({"station_id": id, "num_vehicles_available": 4, "vehicle_types_available": types,
            "num_docks_available": 6, "is_installed": true, "is_renting": true, "is_returning": true,
            "last_reported": time})
    };
    serve_json(
        "/station_status.json",
        serde_json::json!({
            "last_updated": time, "ttl": 60, "version": "3.0",
            "data": {"stations": [
                station("a", serde_json::json!([{"vehicle_type_id": "1", "count": 3}, {"vehicle_type_id": "2", "count": 1}])),
                station("b", serde_json::json!([{"vehicle_type_id": "1", "count": 2}, {"vehicle_type_id": "9", "count": 2}])),
            ]}
        }),
    );
    serve_json(
        "/station_information.json",
        serde_json::json!({
            "last_updated": time, "ttl": 60, "version": "3.0",
            "data": {"stations": [
                {"station_id": "a", "name": [{"text": "A", "language": "fr"}], "lat": 48.86, "lon": 2.35},
                {"station_id": "b", "name": [{"text": "B", "language": "fr"}], "lat": 48.87, "lon": 2.36},
            ]}
        }),
    );
    serve_json(
        "/vehicle_types.json",
        serde_json::json!({
            "last_updated": time, "ttl": 3600, "version": "3.0",
            "data": {"vehicle_types": [
                {"vehicle_type_id": "1", "form_factor": "bicycle", "propulsion_type": "electric_assist"},
                {"vehicle_type_id": "2", "form_factor": "bicycle", "propulsion_type": "human"},
            ]}
        }),
    );
}
