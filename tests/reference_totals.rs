//! The 2024-11-19 Vélib' snapshot gives the fixtures README's reference
//! totals, through the library and through the `velib_replay` binary, and
//! every postcode agrees with a computation made from the raw files alone.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::changes::KeyChange;
use velib_dataflow::output::PostcodeRecord;
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::recorded::load;
use velib_dataflow::snapshot::{SnapshotSequencer, StationSelection};

fn snapshot_dir() -> PathBuf {
    common::fixtures().join("gbfs/velib/2024-11-19")
}

fn sum(totals: &BTreeMap<String, (i64, i64, i64)>) -> (i64, i64, i64) {
    totals
        .values()
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

#[test]
fn raw_reference_is_the_readme_s() {
    let totals = common::raw_rider_totals();
    assert_eq!(sum(&totals), (15_446, 10_231, 5_215));
    assert_eq!(totals["75015"], (1_114, 832, 282));
    assert_eq!(totals["75016"], (708, 411, 297));
    assert_eq!(totals["75001"], (423, 348, 75));
}

#[test]
fn dataflow_gives_the_reference_totals_under_every_config() {
    let recorded = load(&snapshot_dir().join("station_status.json")).unwrap();
    assert!(
        recorded.information.is_some(),
        "station_information.json beside it is used"
    );
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), false);
    let snapshot = recorded.into_snapshot(&resolver, &StationSelection::all());
    let updates = SnapshotSequencer::new().advance(snapshot).unwrap().unwrap();
    let raw = common::raw_rider_totals();
    for (label, config) in common::configs() {
        let outputs = common::run_epochs(config, vec![updates.clone()]);
        let mut got = BTreeMap::new();
        let mut all_stations = 0;
        let mut all_bikes = 0;
        for change in &outputs[0].changes {
            let KeyChange::Upsert(postcode, c) = change else {
                panic!("{label}: first epoch has only insertions")
            };
            all_stations += c.counts.stations;
            all_bikes += c.counts.bikes + c.counts.bikes_unavailable;
            if !postcode.is_unknown() {
                got.insert(
                    postcode.to_string(),
                    (c.counts.bikes, c.counts.mechanical, c.counts.ebikes),
                );
            }
        }
        // Every postcode, not just the totals.
        assert_eq!(got, raw, "{label}");
        assert_eq!(sum(&got), (15_446, 10_231, 5_215), "{label}");
        // Nothing dropped: every station counted somewhere, `unknown` included.
        assert_eq!(all_stations, 1_485, "{label}");
        assert_eq!(all_bikes, 15_626, "{label}: all bikes, flags ignored");
    }
}

#[test]
fn counting_every_station_gives_the_old_spark_totals() {
    // What the old job counted: bikes whatever the station's flags.
    let recorded = load(&snapshot_dir().join("station_status.json")).unwrap();
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), false);
    let snapshot = recorded.into_snapshot(&resolver, &StationSelection::all());
    let updates = SnapshotSequencer::new().advance(snapshot).unwrap().unwrap();
    let outputs = common::run_epochs(timely::Config::thread(), vec![updates]);
    let (mut all, mut p75015) = (0, 0);
    for change in &outputs[0].changes {
        if let KeyChange::Upsert(postcode, c) = change {
            if !postcode.is_unknown() {
                all += c.counts.bikes + c.counts.bikes_unavailable;
            }
            if postcode.as_str() == "75015" {
                p75015 = c.counts.bikes + c.counts.bikes_unavailable;
            }
        }
    }
    assert_eq!((all, p75015), (15_460, 1_124));
}

/// `velib_replay --final --no-infer` on the 2024-11-19 snapshot: its
/// standard output, once it succeeded.
fn replay_final() -> String {
    let out = Command::new(common::example_binary("velib_replay"))
        .args(["--final", "--no-infer"])
        .arg(snapshot_dir())
        .output()
        .expect("velib_replay runs (cargo test builds the examples)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn velib_replay_final_prints_the_reference_for_every_postcode() {
    let stdout = replay_final();
    let records: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let postcodes: Vec<&str> = records
        .iter()
        .map(|r| r["postcode"].as_str().unwrap())
        .collect();
    let mut sorted = postcodes.clone();
    sorted.sort();
    assert_eq!(postcodes, sorted, "sorted by postcode");
    let got: BTreeMap<String, (i64, i64, i64)> = records
        .iter()
        .filter(|r| r["postcode"] != "unknown")
        .map(|r| {
            let n = |f: &str| r[f].as_i64().unwrap();
            (
                r["postcode"].as_str().unwrap().to_owned(),
                (n("nbr_total"), n("nbr_meca"), n("nbr_elec")),
            )
        })
        .collect();
    assert_eq!(got, common::raw_rider_totals());
    let unknown = records
        .iter()
        .find(|r| r["postcode"] == "unknown")
        .expect("unknown is reported");
    assert_eq!(
        unknown["nbr_stations"], 37,
        "35 stations missing from the table, 2 with an empty postcode"
    );
}

#[test]
fn velib_replay_goes_on_after_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let series = common::fixtures().join("opendata-paris/velib-series");
    let bad = dir.path().join("velib_data_20241105_094000.json");
    std::fs::write(&bad, b"[{\"stationcode\": \"16107\", \"name\": ").unwrap();
    let out = Command::new(common::example_binary("velib_replay"))
        .arg("--final")
        .arg(series.join("velib_data_20241105_093001.json"))
        .arg(&bad)
        .arg(series.join("velib_data_20241105_101501.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a rejected file makes the exit status 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("velib_data_20241105_094000.json") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let epochs: Vec<i64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["epoch"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        !epochs.is_empty() && epochs.contains(&2),
        "the file after the bad one was replayed: {stdout}"
    );
}

#[test]
fn velib_replay_refuses_bad_flags_clearly() {
    let out = Command::new(common::example_binary("velib_replay"))
        .args(["--postcodes", "/nonexistent.csv", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.csv"));
    let out = Command::new(common::example_binary("velib_replay"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--no-infer"));
    let out = Command::new(common::example_binary("velib_replay"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no PATH is a usage error");
}

fn final_records(args: &[&str], path: &std::path::Path) -> Vec<Value> {
    let out = Command::new(common::example_binary("velib_replay"))
        .args(args)
        .arg("--final")
        .arg(path)
        .output()
        .unwrap();
    common::json_lines("velib_replay", &out)
}

#[test]
fn velib_replay_keeps_only_the_stations_asked_for() {
    // The seeds' two stations: 16107 (75016) and 32017 (Basilique, 93200).
    let records = final_records(
        &["--no-infer", "--stations", "16107,32017"],
        &snapshot_dir(),
    );
    let stations: i64 = records
        .iter()
        .map(|r| r["nbr_stations"].as_i64().unwrap())
        .sum();
    assert_eq!(stations, 2, "{records:?}");
    let postcodes: Vec<&str> = records
        .iter()
        .map(|r| r["postcode"].as_str().unwrap())
        .collect();
    assert!(postcodes.contains(&"75016"), "{postcodes:?}");
}

#[test]
fn velib_replay_uses_the_user_s_postcode_table() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("mine.csv");
    // Only two stations, both in one made-up postcode; no inference.
    std::fs::write(
        &table,
        "stationCode,station_id,postcode\n16107,213688169,ZONE-A\n9020,36255,ZONE-A\n",
    )
    .unwrap();
    let records = final_records(
        &["--no-infer", "--postcodes", table.to_str().unwrap()],
        &snapshot_dir(),
    );
    let zone = records
        .iter()
        .find(|r| r["postcode"] == "ZONE-A")
        .expect("the user's postcode is used");
    assert_eq!(zone["nbr_stations"], 2);
    let unknown = records.iter().find(|r| r["postcode"] == "unknown").unwrap();
    assert_eq!(unknown["nbr_stations"], 1_485 - 2);
    // A broken table is refused before anything runs, naming the problem.
    std::fs::write(&table, "stationCode,postcode\n16107,75016\n16107,75017\n").unwrap();
    let out = Command::new(common::example_binary("velib_replay"))
        .arg("--postcodes")
        .arg(&table)
        .arg(snapshot_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// Per postcode, from the raw status file and the postcode table alone:
/// stations empty (installed, renting, no bike), full (installed,
/// returning, no dock), and the bikes and free docks at renting stations.
fn raw_empty_full_occupancy() -> BTreeMap<String, (i64, i64, i64, i64)> {
    let mut totals = BTreeMap::new();
    for (pc, s) in common::raw_stations_with_postcode() {
        let e = totals.entry(pc).or_insert((0, 0, 0, 0));
        let installed = s["is_installed"] == 1;
        let bikes = s["num_bikes_available"].as_i64().unwrap();
        let docks = s["num_docks_available"].as_i64().unwrap();
        if installed && s["is_renting"] == 1 {
            e.0 += i64::from(bikes == 0);
            e.2 += bikes;
            e.3 += docks;
        }
        if installed && s["is_returning"] == 1 {
            e.1 += i64::from(docks == 0);
        }
    }
    totals
}

#[test]
fn empty_and_full_stations_and_occupancy_agree_with_the_raw_file() {
    let raw = raw_empty_full_occupancy();
    let (mut empty, mut full) = (0, 0);
    let mut seen = 0;
    for line in replay_final().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let postcode = r["postcode"].as_str().unwrap();
        if postcode == "unknown" {
            continue;
        }
        let (e, f, bikes, docks) = raw[postcode];
        assert_eq!(r["nbr_stations_empty"], e, "{postcode}");
        assert_eq!(r["nbr_stations_full"], f, "{postcode}");
        match r["occupancy"].as_f64() {
            Some(o) => {
                let exact = bikes as f64 / (bikes + docks) as f64;
                assert!((o - exact).abs() <= 0.0005, "{postcode}: {o} for {exact}");
            }
            None => assert_eq!(bikes + docks, 0, "{postcode}: occupancy null"),
        }
        (empty, full) = (empty + e, full + f);
        seen += 1;
    }
    assert_eq!(seen, raw.len(), "every postcode written");
    // The recorded snapshot has both kinds: the check is not vacuous.
    assert!(empty > 0 && full > 0, "empty {empty}, full {full}");
}

#[test]
fn stale_stations_and_their_bikes_agree_with_the_raw_file() {
    let status: Value =
        serde_json::from_slice(&std::fs::read(snapshot_dir().join("station_status.json")).unwrap())
            .unwrap();
    let feed_time = status["lastUpdatedOther"].as_i64().unwrap();
    // From the raw file: a report more than two hours before the feed's time.
    let mut raw: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (pc, s) in common::raw_stations_with_postcode() {
        let e = raw.entry(pc).or_insert((0, 0));
        let reported = s["last_reported"].as_i64().unwrap();
        if feed_time - reported > common::STALE_AFTER_SECONDS {
            e.0 += 1;
            if s["is_installed"] == 1 && s["is_renting"] == 1 {
                e.1 += s["num_bikes_available"].as_i64().unwrap();
            }
        }
    }
    let mut stale_stations = 0;
    for line in replay_final().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let postcode = r["postcode"].as_str().unwrap();
        if postcode == "unknown" {
            continue;
        }
        let (stations, bikes) = raw[postcode];
        assert_eq!(r["nbr_stations_stale"], stations, "{postcode}");
        assert_eq!(r["nbr_bikes_stale"], bikes, "{postcode}");
        stale_stations += stations;
    }
    // The recorded feed has stations silent since 2018: not vacuous.
    assert!(stale_stations > 20, "{stale_stations}");
}

#[test]
fn velib_replay_stale_after_moves_the_threshold_and_refuses_a_bad_one() {
    let run = |flag: &str| {
        Command::new(common::example_binary("velib_replay"))
            .args(["--final", "--no-infer", "--stale-after", flag])
            .arg(snapshot_dir())
            .output()
            .expect("velib_replay runs")
    };
    let stale = |out: &std::process::Output| -> i64 {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["nbr_stations_stale"]
                    .as_i64()
                    .unwrap()
            })
            .sum()
    };
    // Every Vélib' station reported more than 30 minutes before the feed's
    // time (they report about hourly); far fewer more than two hours before.
    let half_hour = run("30m");
    assert!(half_hour.status.success());
    assert_eq!(stale(&half_hour), 1_485);
    let two_hours = run("2h");
    assert!(stale(&two_hours) < 100);
    let bad = run("soon");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--stale-after") && stderr.contains("not a duration"),
        "{stderr}"
    );
}

/// The record the README shows under "What it computes" is the one the
/// 2024-11-19 snapshot gives 75015 at its first epoch, field for field.
#[test]
fn the_readme_s_record_is_the_snapshot_s() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## What it computes").expect("the section")..];
    let start = section.find("```json\n").expect("a JSON block") + "```json\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let shown: PostcodeRecord = serde_json::from_str(block).expect("the README's record reads");

    let recorded = load(&snapshot_dir().join("station_status.json")).unwrap();
    let resolver = DirectoryResolver::new(PostcodeTable::velib(), false);
    let snapshot = recorded.into_snapshot(&resolver, &StationSelection::all());
    let feed_time = snapshot.feed_time;
    let updates = SnapshotSequencer::new().advance(snapshot).unwrap().unwrap();
    let outputs = common::run_epochs(timely::Config::thread(), vec![updates]);
    let postcode = velib_dataflow::postcode::Postcode::parse("75015").unwrap();
    let totals = outputs[0]
        .changes
        .iter()
        .find_map(|change| match change {
            KeyChange::Upsert(p, totals) if *p == postcode => Some(*totals),
            _ => None,
        })
        .expect("75015 is written at the first epoch");
    let computed = PostcodeRecord::new(&postcode, &totals, 1, feed_time);
    assert_eq!(
        shown,
        computed,
        "the README shows {block}, the snapshot gives {}",
        serde_json::to_string(&computed).unwrap()
    );
}
