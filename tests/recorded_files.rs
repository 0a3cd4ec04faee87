//! Recorded snapshot files: listing them, telling their format by content,
//! pairing a status with the information beside it, and refusing what
//! cannot be a feed with an error naming the file.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use velib_dataflow::feed::{FeedError, FeedKind, FeedTimeKind, StationId, MAX_PAYLOAD_BYTES};
use velib_dataflow::recorded::{load, read_bounded, snapshot_files, RecordedError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn listed(paths: &[PathBuf]) -> Vec<PathBuf> {
    snapshot_files(paths)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect()
}

fn copy_fixture(rel: &str, to: &Path) {
    fs::copy(fixtures().join(rel), to).unwrap();
}

/// A file of `len` bytes that takes no disk space and would take long to
/// read whole.
fn sparse(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn snapshot_files_lists_only_status_files_in_name_order() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for name in [
        "station_status_0002.json",
        "station_status_0001.json",
        "station_status.json",
        "zz_velib_data.json",
        "station_information.json",
        "gbfs.json",
        "gbfs_versions.json",
        "manifest.json",
        "system_information.json",
        "system_pricing_plans.json",
        "vehicle_types.json",
        "vehicle_status.json",
        "free_bike_status.json",
        "geofencing_zones.json",
        "notes.txt",
        "station_status.json.bak",
        "station_status_0003.JSON.gz",
        "README",
    ] {
        fs::write(d.join(name), b"{}").unwrap();
    }
    // A directory named like a status file is not a file, and is not entered.
    fs::create_dir(d.join("station_status_0000.json")).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/station_status_0009.json"), b"{}").unwrap();

    let files = listed(&[d.to_path_buf()]);
    assert_eq!(
        names(&files),
        [
            "station_status.json",
            "station_status_0001.json",
            "station_status_0002.json",
            "zz_velib_data.json",
        ]
    );
    assert!(files.iter().all(|f| f.parent() == Some(d)));
}

#[test]
fn snapshot_files_keeps_the_order_of_its_arguments() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("2.json"), b"{}").unwrap();
    fs::write(a.join("1.json"), b"{}").unwrap();
    let single = dir.path().join("single.json");
    fs::write(&single, b"{}").unwrap();
    // A file named explicitly is taken as itself, whatever its name; a
    // missing path is passed on, for load() to report.
    let explicit_info = dir.path().join("station_information.json");
    fs::write(&explicit_info, b"{}").unwrap();
    let missing = dir.path().join("missing.json");
    let files = listed(&[
        single.clone(),
        a.clone(),
        explicit_info.clone(),
        missing.clone(),
    ]);
    assert_eq!(
        files,
        [
            single,
            a.join("1.json"),
            a.join("2.json"),
            explicit_info,
            missing
        ]
    );
}

#[test]
fn snapshot_files_on_the_fixtures() {
    let oslo = listed(&[fixtures().join("gbfs/oslo/series")]);
    assert_eq!(oslo.len(), 9);
    let mut sorted = names(&oslo);
    sorted.sort();
    assert_eq!(names(&oslo), sorted);
    assert_eq!(names(&oslo)[0], "station_status_1666551803.json");

    for rel in ["gbfs/velib/2022-02", "gbfs/velib/2024-11-19", "gbfs/oslo"] {
        let files = listed(&[fixtures().join(rel)]);
        assert_eq!(names(&files), ["station_status.json"], "{rel}");
    }
    let paris = listed(&[fixtures().join("opendata-paris/velib-series")]);
    assert_eq!(paris.len(), 10);
    assert_eq!(names(&paris)[0], "velib_data_20241105_093001.json");
    assert_eq!(names(&paris)[9], "velib_data_20241105_101501.json");
}

#[test]
fn load_matches_the_information_beside_a_status_file() {
    let rec = load(&fixtures().join("gbfs/velib/2024-11-19/station_status.json")).unwrap();
    assert_eq!(rec.status.stations.len(), 1485);
    assert_eq!(rec.status.feed_time, 1_732_004_538);
    assert_eq!(rec.status.feed_time_kind, FeedTimeKind::Published);
    let info = rec
        .information
        .expect("station_information.json is beside it");
    assert_eq!(info.stations.len(), 1485);
    assert_eq!(info.feed_time, 1_732_004_538);
    assert_eq!(info.stations[0].station_id, StationId::Num(213_688_169));

    let rec = load(&fixtures().join("gbfs/velib/2022-02/station_status.json")).unwrap();
    assert_eq!(rec.status.stations.len(), 1439);
    assert_eq!(rec.information.unwrap().stations.len(), 1439);

    let rec = load(&fixtures().join("gbfs/oslo/station_status.json")).unwrap();
    assert_eq!(rec.information.unwrap().stations[0].name, "Sogn Studentby");
}

#[test]
fn load_without_information_beside() {
    for path in listed(&[fixtures().join("gbfs/oslo/series")]) {
        let rec = load(&path).unwrap();
        assert_eq!(rec.path, path);
        assert_eq!(rec.status.stations.len(), 260);
        assert!(rec.information.is_none());
    }
}

#[test]
fn load_detects_a_paris_export_by_content() {
    for path in listed(&[fixtures().join("opendata-paris/velib-series")]) {
        let rec = load(&path).unwrap();
        assert_eq!(rec.status.stations.len(), 1485);
        assert_eq!(rec.status.feed_time_kind, FeedTimeKind::LatestReport);
        let info = rec.information.expect("the export carries its directory");
        assert_eq!(info.stations.len(), 1485);
        assert!(matches!(
            rec.status.stations[0].station_id,
            StationId::Text(_)
        ));
    }

    // Named like a GBFS status file, beside a (bad) station_information.json:
    // the content says Paris, and the export's own directory is used.
    let dir = TempDir::new().unwrap();
    let status = dir.path().join("station_status.json");
    copy_fixture(
        "opendata-paris/velib-series/velib_data_20241105_093001.json",
        &status,
    );
    fs::write(dir.path().join("station_information.json"), b"not json").unwrap();
    let rec = load(&status).unwrap();
    assert_eq!(rec.status.feed_time_kind, FeedTimeKind::LatestReport);
    assert_eq!(
        rec.status.stations[0].station_id,
        StationId::Text("16107".into())
    );
    assert_eq!(rec.information.unwrap().stations.len(), 1485);

    // The API's `{"results": [...]}` wrapper, with leading whitespace.
    let export: serde_json::Value = serde_json::from_slice(
        &fs::read(fixtures().join("opendata-paris/velib-series/velib_data_20241105_093001.json"))
            .unwrap(),
    )
    .unwrap();
    let wrapped = dir.path().join("wrapped.json");
    let mut bytes = b" \n\t".to_vec();
    bytes.extend(
        serde_json::to_vec(&serde_json::json!({"total_count": 1485, "results": export})).unwrap(),
    );
    fs::write(&wrapped, bytes).unwrap();
    let rec = load(&wrapped).unwrap();
    assert_eq!(rec.status.feed_time_kind, FeedTimeKind::LatestReport);
    assert_eq!(rec.status.stations.len(), 1485);

    // And a GBFS file named like an export is GBFS.
    let other = TempDir::new().unwrap();
    let gbfs = other.path().join("velib_data_20241105_093001.json");
    copy_fixture("gbfs/oslo/station_status.json", &gbfs);
    let rec = load(&gbfs).unwrap();
    assert_eq!(rec.status.feed_time_kind, FeedTimeKind::Published);
    assert_eq!(rec.status.stations.len(), 260);
}

#[test]
fn oversized_file_is_refused_without_reading_it_whole() {
    let dir = TempDir::new().unwrap();
    let big = dir.path().join("station_status_huge.json");
    // 64 GiB: reading it whole would exhaust memory.
    sparse(&big, MAX_PAYLOAD_BYTES as u64 * 1024);
    let started = std::time::Instant::now();
    let err = load(&big).unwrap_err();
    assert!(
        matches!(&err, RecordedError::TooLarge { path, limit } if *path == big && *limit == MAX_PAYLOAD_BYTES),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("station_status_huge.json"), "{msg}");
    assert!(msg.contains(&MAX_PAYLOAD_BYTES.to_string()), "{msg}");
    assert!(matches!(
        read_bounded(&big),
        Err(RecordedError::TooLarge { .. })
    ));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    // One byte over the limit is refused; exactly the limit is read.
    let over = dir.path().join("over.json");
    sparse(&over, MAX_PAYLOAD_BYTES as u64 + 1);
    assert!(matches!(
        read_bounded(&over),
        Err(RecordedError::TooLarge { .. })
    ));
    let at = dir.path().join("at.json");
    sparse(&at, MAX_PAYLOAD_BYTES as u64);
    assert_eq!(read_bounded(&at).unwrap().len(), MAX_PAYLOAD_BYTES);
}

#[test]
fn oversized_information_beside_is_refused_naming_it() {
    let dir = TempDir::new().unwrap();
    let status = dir.path().join("station_status.json");
    copy_fixture("gbfs/oslo/station_status.json", &status);
    let info = dir.path().join("station_information.json");
    sparse(&info, MAX_PAYLOAD_BYTES as u64 * 16);
    let err = load(&status).unwrap_err();
    assert!(
        matches!(&err, RecordedError::TooLarge { path, .. } if *path == info),
        "{err:?}"
    );
    assert!(err.to_string().contains("station_information.json"));
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("station_status_missing.json");
    let err = load(&missing).unwrap_err();
    let RecordedError::Io {
        ref path,
        ref source,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(path, &missing);
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains("station_status_missing.json"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert!(matches!(
        read_bounded(&missing),
        Err(RecordedError::Io { .. })
    ));

    // A directory is not a snapshot file either.
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, RecordedError::Io { path, .. } if path == dir.path()),
        "{err:?}"
    );
}

#[test]
fn bad_information_beside_a_good_status_names_the_information_file() {
    let dir = TempDir::new().unwrap();
    let status = dir.path().join("station_status.json");
    copy_fixture("gbfs/velib/2024-11-19/station_status.json", &status);
    let info = dir.path().join("station_information.json");

    // Truncated.
    let real = fs::read(fixtures().join("gbfs/velib/2024-11-19/station_information.json")).unwrap();
    fs::write(&info, &real[..real.len() / 2]).unwrap();
    let err = load(&status).unwrap_err();
    let RecordedError::Feed {
        ref path,
        ref source,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(path, &info);
    assert!(
        matches!(
            source,
            FeedError::Json {
                feed: FeedKind::StationInformation,
                ..
            }
        ),
        "{source:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&info.display().to_string()),
        "{msg:?} should start with the information file's path"
    );
    assert!(
        msg.contains("station_information.json: not valid JSON"),
        "{msg}"
    );

    // Well-formed, but a station has no name.
    let mut v: serde_json::Value = serde_json::from_slice(&real).unwrap();
    v["data"]["stations"][3]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let id = v["data"]["stations"][3]["station_id"].to_string();
    fs::write(&info, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = load(&status).unwrap_err();
    assert!(
        matches!(&err, RecordedError::Feed { path, source: FeedError::Field { .. } } if *path == info),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("station {id}")), "{msg}");
    assert!(msg.contains("`name` is missing"), "{msg}");
}

#[test]
fn bad_status_file_names_the_status_file() {
    let dir = TempDir::new().unwrap();
    let status = dir.path().join("station_status_17.json");
    let real = fs::read(fixtures().join("gbfs/oslo/station_status.json")).unwrap();
    fs::write(&status, &real[..real.len() / 2]).unwrap();
    // A good information file beside does not save it.
    copy_fixture(
        "gbfs/oslo/station_information.json",
        &dir.path().join("station_information.json"),
    );
    let err = load(&status).unwrap_err();
    assert!(
        matches!(&err, RecordedError::Feed { path, source: FeedError::Json { feed: FeedKind::StationStatus, .. } } if *path == status),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("station_status_17.json"), "{msg}");
    assert!(msg.contains("station_status.json: not valid JSON"), "{msg}");

    // An empty file, an outage, a truncated Paris export.
    fs::write(&status, b"").unwrap();
    assert!(matches!(
        load(&status),
        Err(RecordedError::Feed {
            source: FeedError::Json { .. },
            ..
        })
    ));
    fs::write(&status, br#"{"last_updated": 1, "data": {"stations": []}}"#).unwrap();
    let err = load(&status).unwrap_err();
    assert!(
        matches!(&err, RecordedError::Feed { source, .. } if source.reason() == "upstream_outage"),
        "{err:?}"
    );
    let paris =
        fs::read(fixtures().join("opendata-paris/velib-series/velib_data_20241105_093001.json"))
            .unwrap();
    fs::write(&status, &paris[..paris.len() / 3]).unwrap();
    let err = load(&status).unwrap_err();
    assert!(
        matches!(
            &err,
            RecordedError::Feed {
                source: FeedError::Json {
                    feed: FeedKind::OpenDataParis,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}

/// A recorded GBFS v3 system with its `vehicle_types.json` beside the
/// status replays with its vehicles classified as the live poller does;
/// a broken types file is an error naming it, not a silent guess.
#[test]
fn a_recorded_systems_vehicle_types_classify_its_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("station_status.json");
    std::fs::write(
        &status,
        br#"{"last_updated": "2024-11-19T08:22:18Z", "ttl": 60, "version": "3.0", "data": {"stations": [
            {"station_id": "a", "num_vehicles_available": 3, "vehicle_types_available": [
                {"vehicle_type_id": "1", "count": 2}, {"vehicle_type_id": "2", "count": 1}],
             "is_installed": true, "is_renting": true, "is_returning": true,
             "last_reported": "2024-11-19T08:20:00Z"}]}}"#,
    )
    .unwrap();
    let unclassified = velib_dataflow::recorded::load(&status).unwrap();
    let guessed = unclassified.status.stations[0].bike_types.unwrap();
    assert_eq!(
        (guessed.mechanical, guessed.ebike, guessed.other),
        (0, 0, 3)
    );
    let types = dir.path().join("vehicle_types.json");
    std::fs::write(
        &types,
        br#"{"last_updated": 1, "version": "3.0", "data": {"vehicle_types": [
            {"vehicle_type_id": "1", "form_factor": "bicycle", "propulsion_type": "human"},
            {"vehicle_type_id": "2", "form_factor": "bicycle", "propulsion_type": "electric_assist"}]}}"#,
    )
    .unwrap();
    let recorded = velib_dataflow::recorded::load(&status).unwrap();
    let typed = recorded.status.stations[0].bike_types.unwrap();
    assert_eq!((typed.mechanical, typed.ebike, typed.other), (2, 1, 0));
    // Listing the folder plays the status only.
    let files = velib_dataflow::recorded::snapshot_files(&[dir.path().to_owned()]);
    assert_eq!(files.len(), 1);
    std::fs::write(&types, b"{\"data\": {\"vehicle_types\": [").unwrap();
    let error = velib_dataflow::recorded::load(&status)
        .unwrap_err()
        .to_string();
    assert!(error.contains("vehicle_types.json"), "{error}");
}
