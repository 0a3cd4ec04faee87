//! `velib_load` on a real broker: a small synthetic network through the
//! producer's publisher and the aggregator, its report read, and the output
//! checked with kcat against the status topic it came from; and every flag
//! out of range refused with a clear message.

mod common;

use common::broker::{header, Broker};
use std::collections::BTreeMap;
use velib_dataflow::kafka::KIND_HEADER;

#[test]
fn a_small_network_through_the_pipeline_adds_up_on_the_output() {
    let broker = Broker::shared();
    let out = std::process::Command::new(common::example_binary("velib_load"))
        .args([
            "--brokers",
            &broker.address,
            "--stations",
            "300",
            "--epochs",
            "4",
        ])
        .args(["--change-percent", "2", "--topic-prefix", "load-test"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("velib_load runs (cargo build --examples)");
    let report = common::json_lines("velib_load", &out)
        .pop()
        .expect("a JSON report");
    // 300 statuses and 300 directory entries, then 6 changes an epoch.
    assert_eq!(report["records_published"], 600 + 3 * 6, "{report}");
    // Everything published is read, with one marker per partition and epoch.
    assert_eq!(report["records_read"], 618 + 2 * 3 * 4, "{report}");
    assert!(
        report["close_to_commit_ms"]["p50"].as_f64().is_some(),
        "{report}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("topics: load-test-"), "{stderr}");

    // Independently: the last status of every station, from the input…
    let topic = report["topic"].as_str().unwrap().to_owned();
    let mut statuses: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for record in broker.kcat_read(&topic) {
        if header(&record, KIND_HEADER).is_some() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
        statuses.insert(
            record["key"].as_str().unwrap().into(),
            value["velib"]["status"].clone(),
        );
    }
    assert_eq!(statuses.len(), 300);
    let rentable_bikes: i64 = statuses
        .values()
        .filter(|s| s["is_installed"] == true && s["is_renting"] == true)
        .map(|s| s["bikes_available"].as_i64().unwrap())
        .sum();
    // …and the last counts of every postcode, from the output.
    let mut postcodes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for record in broker.kcat_read(&format!("{topic}-out")) {
        if header(&record, KIND_HEADER).is_some() {
            continue;
        }
        let key = record["key"].as_str().unwrap().to_owned();
        match record["payload"].as_str() {
            Some(payload) => postcodes.insert(key, serde_json::from_str(payload).unwrap()),
            None => postcodes.remove(&key),
        };
    }
    // 15 stations per postcode.
    assert_eq!(postcodes.len(), 20, "{postcodes:?}");
    let stations: i64 = postcodes
        .values()
        .map(|p| p["nbr_stations"].as_i64().unwrap())
        .sum();
    let bikes: i64 = postcodes
        .values()
        .map(|p| p["nbr_total"].as_i64().unwrap())
        .sum();
    assert_eq!((stations, bikes), (300, rentable_bikes));
}

#[test]
fn flags_out_of_range_are_refused_clearly() {
    let b = "--brokers=127.0.0.1:9";
    common::assert_cli(
        "velib_load",
        &[
            "--stations",
            "--change-percent",
            "--rate",
            "--ahead",
            "--workers",
            "--stall",
        ],
        &[
            (
                vec![b, "--stations", "0"],
                "--stations must be between 1 and 20,000,000",
            ),
            (
                vec![b, "--change-percent", "0"],
                "--change-percent must be above 0",
            ),
            (
                vec![b, "--change-percent", "150"],
                "--change-percent must be above 0",
            ),
            (
                vec![b, "--change-percent", "NaN"],
                "--change-percent must be above 0",
            ),
            (vec![b, "--epochs", "0"], "--epochs must be between 1"),
            (vec![b, "--rate=0"], "--rate must be above 0"),
            (vec![b, "--ahead", "0"], "--ahead must be at least 1"),
            (
                vec![b, "--workers", "0"],
                "--workers must be between 1 and 64",
            ),
            (vec![b, "--stall", "forever"], "--stall"),
            (vec!["--stations", "10"], "--brokers"),
        ],
    );
}
