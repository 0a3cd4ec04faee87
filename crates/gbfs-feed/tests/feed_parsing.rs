//! The feed parsers against every recorded real feed, every documented
//! variant, and every kind of bad input: bad input is rejected whole with an
//! error that names the feed, the station (when known) and the field, and the
//! parsers never panic.

use gbfs_feed::{
    gbfs, opendata_paris, BikeTypes, FeedError, FeedKind, FeedTimeKind, Problem, StationId,
    StationStatus, StatusSnapshot, MAX_PAYLOAD_BYTES,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

/// The `*.json` files of a fixture folder, sorted by name.
fn fixture_dir(rel: &str) -> Vec<PathBuf> {
    let dir = fixtures().join(rel);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A valid GBFS v2.3 status row.
fn status_row(id: &str) -> Value {
    json!({
        "station_id": id,
        "num_bikes_available": 3,
        "num_docks_available": 7,
        "is_installed": true,
        "is_renting": true,
        "is_returning": true,
        "last_reported": 1_700_000_000
    })
}

/// A valid GBFS v2.3 information row.
fn info_row(id: &str) -> Value {
    json!({
        "station_id": id,
        "name": "Somewhere",
        "lat": 48.85,
        "lon": 2.35,
        "capacity": 20
    })
}

fn payload(stations: Vec<Value>) -> Value {
    json!({
        "last_updated": 1_700_000_000,
        "ttl": 60,
        "version": "2.3",
        "data": { "stations": stations }
    })
}

/// A Vélib'-style payload (`lastUpdatedOther`, no `version`).
fn velib_payload(stations: Vec<Value>) -> Value {
    json!({
        "lastUpdatedOther": 1_732_004_538,
        "ttl": 3600,
        "data": { "stations": stations }
    })
}

/// A valid Vélib' status row.
fn velib_row(id: u64, code: &str, mechanical: u32, ebike: u32) -> Value {
    json!({
        "station_id": id,
        "stationCode": code,
        "num_bikes_available": mechanical + ebike,
        "numBikesAvailable": mechanical + ebike,
        "num_bikes_available_types": [{"mechanical": mechanical}, {"ebike": ebike}],
        "num_docks_available": 10,
        "numDocksAvailable": 10,
        "is_installed": 1,
        "is_returning": 1,
        "is_renting": 1,
        "last_reported": 1_732_001_704
    })
}

/// A valid Paris open-data record.
fn paris_row(code: &str) -> Value {
    json!({
        "stationcode": code,
        "name": "Benjamin Godard - Victor Hugo",
        "is_installed": "OUI",
        "capacity": 35,
        "numdocksavailable": 20,
        "numbikesavailable": 15,
        "mechanical": 10,
        "ebike": 5,
        "is_renting": "OUI",
        "is_returning": "NON",
        "duedate": "2024-11-05T09:00:01+01:00",
        "coordonnees_geo": {"lon": 2.275725, "lat": 48.865983},
        "nom_arrondissement_communes": "Paris",
        "code_insee_commune": "75056"
    })
}

fn with(mut row: Value, key: &str, value: Value) -> Value {
    row.as_object_mut().unwrap().insert(key.to_owned(), value);
    row
}

fn without(mut row: Value, key: &str) -> Value {
    row.as_object_mut().unwrap().remove(key);
    row
}

/// Checks that `result` is a [`FeedError::Field`] about `kind`, `station`
/// and `field`, that its Display says all three, and returns the problem.
#[track_caller]
fn field_err<T: Debug>(
    result: Result<T, FeedError>,
    kind: FeedKind,
    station: Option<&str>,
    field: &str,
) -> Problem {
    let err = match result {
        Ok(v) => panic!("expected an error about `{field}`, got Ok({v:?})"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.reason(), "invalid_field", "{msg}");
    assert!(
        msg.contains(&kind.to_string()),
        "{msg:?} should name the feed {kind}"
    );
    assert!(
        msg.contains(&format!("`{field}`")),
        "{msg:?} should name the field {field}"
    );
    if let Some(s) = station {
        assert!(
            msg.contains(&format!("station {s}")),
            "{msg:?} should name station {s}"
        );
    }
    let FeedError::Field {
        feed,
        station: got_station,
        field: got_field,
        problem,
    } = err
    else {
        panic!("expected FeedError::Field, got {err:?}");
    };
    assert_eq!(feed, kind);
    assert_eq!(got_station.as_deref(), station, "{msg}");
    assert_eq!(got_field, field, "{msg}");
    problem
}

#[track_caller]
fn json_err<T: Debug>(result: Result<T, FeedError>, kind: FeedKind) -> String {
    let err = result.expect_err("expected a JSON error");
    let msg = err.to_string();
    assert_eq!(err.reason(), "invalid_json", "{msg}");
    assert!(
        matches!(err, FeedError::Json { feed, .. } if feed == kind),
        "{err:?}"
    );
    assert!(msg.contains(&kind.to_string()), "{msg}");
    msg
}

#[track_caller]
fn outage<T: Debug>(result: Result<T, FeedError>, kind: FeedKind, says: &str) {
    let err = result.expect_err("expected an upstream outage");
    let msg = err.to_string();
    assert_eq!(err.reason(), "upstream_outage", "{msg}");
    assert!(
        matches!(&err, FeedError::UpstreamOutage { feed, .. } if *feed == kind),
        "{err:?}"
    );
    assert!(msg.contains(&kind.to_string()), "{msg}");
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

#[track_caller]
fn duplicate<T: Debug>(result: Result<T, FeedError>, kind: FeedKind, station: &str) {
    let err = result.expect_err("expected a duplicate station");
    let msg = err.to_string();
    assert_eq!(err.reason(), "duplicate_station", "{msg}");
    assert!(
        matches!(&err, FeedError::DuplicateStation { feed, station: s } if *feed == kind && s == station),
        "{err:?}"
    );
    assert!(msg.contains(&kind.to_string()), "{msg}");
    assert!(msg.contains(station), "{msg}");
}

/// A test on a [`Problem`].
type Check = fn(&Problem) -> bool;

fn wrong_type(problem: &Problem) -> bool {
    matches!(problem, Problem::WrongType { .. })
}

fn out_of_range(problem: &Problem) -> bool {
    matches!(problem, Problem::OutOfRange(_))
}

// ---------------------------------------------------------------------------
// 1. Every recorded feed parses
// ---------------------------------------------------------------------------

#[test]
fn velib_2024_11_19_status() {
    let snap = gbfs::parse_status(&fixture("gbfs/velib/2024-11-19/station_status.json")).unwrap();
    assert_eq!(snap.feed_time, 1_732_004_538);
    assert_eq!(snap.feed_time_kind, FeedTimeKind::Published);
    assert_eq!(snap.ttl, Some(3600));
    assert_eq!(snap.version, None);
    assert_eq!(snap.stations.len(), 1485);
    let first = &snap.stations[0];
    assert_eq!(first.station_id, StationId::Num(213_688_169));
    assert_eq!(first.code.as_deref(), Some("16107"));
    let max_id = snap
        .stations
        .iter()
        .map(|s| match s.station_id {
            StationId::Num(n) => n,
            StationId::Text(ref t) => panic!("Vélib' ids are numbers, found {t:?}"),
        })
        .max()
        .unwrap();
    assert_eq!(max_id, 19_335_882_998);
    for s in &snap.stations {
        let types = s
            .bike_types
            .unwrap_or_else(|| panic!("station {} has no bike types", s.station_id));
        assert_eq!(
            types.mechanical + types.ebike,
            s.bikes_available,
            "station {}",
            s.station_id
        );
        assert_eq!(types.other, 0);
        assert!(s.code.is_some());
        assert!(s.last_reported.is_some());
    }
    // Measured in shared/fixtures/README.md.
    assert_eq!(snap.stations.iter().filter(|s| !s.is_installed).count(), 27);
    assert_eq!(snap.stations.iter().filter(|s| !s.is_renting).count(), 53);
    let total: u32 = snap.stations.iter().map(|s| s.bikes_available).sum();
    assert_eq!(total, 15_626);
    let rentable: u32 = snap
        .stations
        .iter()
        .filter(|s| s.is_rentable())
        .map(|s| s.bikes_available)
        .sum();
    assert_eq!(rentable, 15_612);
}

#[test]
fn velib_2024_11_19_information() {
    let info = gbfs::parse_information(&fixture("gbfs/velib/2024-11-19/station_information.json"))
        .unwrap();
    assert_eq!(info.feed_time, 1_732_004_538);
    assert_eq!(info.stations.len(), 1485);
    let first = &info.stations[0];
    assert_eq!(first.station_id, StationId::Num(213_688_169));
    assert_eq!(first.code.as_deref(), Some("16107"));
    assert_eq!(first.name, "Benjamin Godard - Victor Hugo");
    assert_eq!(first.capacity, Some(35));
    let pos = first.position.unwrap();
    assert!((pos.lat - 48.865983).abs() < 1e-9 && (pos.lon - 2.275725).abs() < 1e-9);
    assert!(info.stations.iter().all(|s| s.code.is_some()));
    assert!(info.stations.iter().all(|s| s.post_code.is_none()));
}

#[test]
fn velib_2022_02_discovery_information_status() {
    let d = gbfs::parse_discovery(&fixture("gbfs/velib/2022-02/gbfs.json")).unwrap();
    assert_eq!(d.ttl, Some(3600));
    assert_eq!(d.languages.len(), 1);
    assert_eq!(d.languages[0].0.as_deref(), Some("en"));
    assert_eq!(d.languages[0].1.len(), 4);
    let status_url =
        "https://velib-metropole-opendata.smoove.pro/opendata/Velib_Metropole/station_status.json";
    assert_eq!(d.feed_url("station_status", Some("en")), Some(status_url));
    assert_eq!(d.feed_url("station_status", None), Some(status_url));
    assert_eq!(d.feed_url("station_status", Some("fr")), None);
    assert_eq!(d.feed_url("free_bike_status", None), None);

    let info =
        gbfs::parse_information(&fixture("gbfs/velib/2022-02/station_information.json")).unwrap();
    assert_eq!(info.stations.len(), 1439);
    assert_eq!(info.feed_time, 1_645_804_786);

    let status = gbfs::parse_status(&fixture("gbfs/velib/2022-02/station_status.json")).unwrap();
    assert_eq!(status.stations.len(), 1439);
    assert_eq!(status.feed_time, 1_645_640_933);
    assert!(status.stations.iter().all(|s| s.bike_types.is_some()));
    assert!(status
        .stations
        .iter()
        .all(|s| matches!(s.station_id, StationId::Num(_))));
    let max_id = status
        .stations
        .iter()
        .filter_map(|s| match s.station_id {
            StationId::Num(n) => Some(n),
            StationId::Text(_) => None,
        })
        .max();
    assert_eq!(max_id, Some(15_189_890_802));
}

#[test]
fn velib_2022_02_system_information_is_not_a_status() {
    // It has `lastUpdatedOther` and `data` but no `data.stations`.
    let err = gbfs::parse_status(&fixture("gbfs/velib/2022-02/system_information.json"));
    assert_eq!(
        field_err(err, FeedKind::StationStatus, None, "data.stations"),
        Problem::Missing
    );
}

#[test]
fn oslo_status_and_information() {
    let status = gbfs::parse_status(&fixture("gbfs/oslo/station_status.json")).unwrap();
    assert_eq!(status.stations.len(), 260);
    assert_eq!(status.version.as_deref(), Some("2.2"));
    assert_eq!(status.ttl, Some(10));
    assert_eq!(status.feed_time, 1_666_551_803);
    for s in &status.stations {
        assert!(matches!(s.station_id, StationId::Text(_)), "{s:?}");
        assert_eq!(s.bike_types, None, "{s:?}");
        assert_eq!(s.code, None);
    }
    assert_eq!(
        status.stations[0].station_id,
        StationId::Text("2351".into())
    );
    assert_eq!(status.stations[0].bikes_available, 10);
    assert_eq!(status.stations[0].docks_available, 8);

    let info = gbfs::parse_information(&fixture("gbfs/oslo/station_information.json")).unwrap();
    assert_eq!(info.stations.len(), 260);
    assert_eq!(info.stations[0].name, "Sogn Studentby");
    assert_eq!(info.stations[0].code, None);
    assert_eq!(info.stations[0].capacity, Some(18));
    // Every status station has its information.
    let ids: HashSet<_> = info.stations.iter().map(|s| &s.station_id).collect();
    assert!(status.stations.iter().all(|s| ids.contains(&s.station_id)));
}

#[test]
fn oslo_series_every_file() {
    let files = fixture_dir("gbfs/oslo/series");
    assert_eq!(files.len(), 9);
    let mut previous = None;
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let snap = gbfs::parse_status(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(snap.stations.len(), 260, "{}", path.display());
        // The file name carries its `last_updated`.
        let stamp: i64 = path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("station_status_")
            .parse()
            .unwrap();
        assert_eq!(snap.feed_time, stamp);
        assert!(previous.is_none_or(|p| p < snap.feed_time));
        previous = Some(snap.feed_time);
        assert!(snap.stations.iter().all(|s| s.bike_types.is_none()));
    }
}

#[test]
fn opendata_paris_series_every_file() {
    let files = fixture_dir("opendata-paris/velib-series");
    assert_eq!(files.len(), 10);
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let (status, info) =
            opendata_paris::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(status.stations.len(), 1485, "{}", path.display());
        assert_eq!(info.stations.len(), status.stations.len());
        assert_eq!(status.feed_time, info.feed_time);
        assert_eq!(status.feed_time_kind, FeedTimeKind::LatestReport);
        assert!(status.feed_time > 1_730_000_000);
        for (s, i) in status.stations.iter().zip(&info.stations) {
            let StationId::Text(code) = &s.station_id else {
                panic!("Paris ids are station codes: {s:?}");
            };
            assert_eq!(s.code.as_deref(), Some(code.as_str()));
            assert_eq!(i.station_id, s.station_id);
            assert_eq!(i.code, s.code);
            assert!(s.bike_types.is_some());
            assert!(s.last_reported.is_some_and(|t| t <= status.feed_time));
        }
    }
    let (status, info) = opendata_paris::parse(&fixture(
        "opendata-paris/velib-series/velib_data_20241105_093001.json",
    ))
    .unwrap();
    let first = &status.stations[0];
    assert_eq!(first.station_id, StationId::Text("16107".into()));
    assert_eq!(first.bikes_available, 15);
    assert_eq!(
        first.bike_types,
        Some(BikeTypes {
            mechanical: 10,
            ebike: 5,
            other: 0
        })
    );
    assert_eq!(first.docks_available, 20);
    assert!(first.is_installed && first.is_renting && first.is_returning);
    assert_eq!(info.stations[0].name, "Benjamin Godard - Victor Hugo");
    assert_eq!(info.stations[0].capacity, Some(35));
}

// ---------------------------------------------------------------------------
// 2. Variants
// ---------------------------------------------------------------------------

#[test]
fn gbfs_v1_0_style() {
    let p = json!({
        "last_updated": 1_434_054_678,
        "ttl": 0,
        "data": {"stations": [{
            "station_id": "1",
            "num_bikes_available": 7,
            "num_bikes_disabled": 1,
            "num_docks_available": 3,
            "num_docks_disabled": 0,
            "is_installed": 1,
            "is_renting": 0,
            "is_returning": 1,
            "last_reported": 1_434_054_600
        }]}
    });
    let snap = gbfs::parse_status(&bytes(&p)).unwrap();
    assert_eq!(snap.feed_time, 1_434_054_678);
    assert_eq!(snap.version, None);
    assert_eq!(snap.ttl, Some(0));
    assert_eq!(
        snap.stations,
        vec![StationStatus {
            station_id: StationId::Text("1".into()),
            code: None,
            bikes_available: 7,
            bike_types: None,
            docks_available: 3,
            is_installed: true,
            is_renting: false,
            is_returning: true,
            last_reported: Some(1_434_054_600),
            judged: Default::default(),
            vehicle_types: Default::default(),
        }]
    );
}

#[test]
fn gbfs_v2_3_vehicle_types_available() {
    let row = json!({
        "station_id": "abc",
        "num_bikes_available": 6,
        "vehicle_types_available": [
            {"vehicle_type_id": "classic", "count": 2},
            {"vehicle_type_id": "ebike", "count": 3},
            {"vehicle_type_id": "cargo", "count": 1}
        ],
        "num_docks_available": 4,
        "is_installed": true,
        "is_renting": false,
        "is_returning": true,
        "last_reported": 1_609_866_125
    });
    let snap = gbfs::parse_status(&bytes(&payload(vec![row]))).unwrap();
    assert_eq!(snap.version.as_deref(), Some("2.3"));
    let s = &snap.stations[0];
    assert_eq!(
        s.bike_types,
        Some(BikeTypes {
            mechanical: 2,
            ebike: 3,
            other: 1
        })
    );
    assert!(s.is_installed && !s.is_renting && s.is_returning);
    assert!(!s.is_rentable());
}

#[test]
fn gbfs_v3_0_status() {
    let p = json!({
        "last_updated": "2023-07-17T13:34:13+02:00",
        "ttl": 0,
        "version": "3.0",
        "data": {"stations": [
            {
                "station_id": "station1",
                "num_vehicles_available": 2,
                "vehicle_types_available": [
                    {"vehicle_type_id": "abc123", "count": 1},
                    {"vehicle_type_id": "def456", "count": 1}
                ],
                "num_docks_available": 3,
                "is_installed": true,
                "is_renting": true,
                "is_returning": true,
                "last_reported": "2023-07-17T13:34:13+02:00"
            },
            {
                // Docks are optional in v3 (virtual stations have none).
                "station_id": "station2",
                "num_vehicles_available": 6,
                "vehicle_types_available": [
                    {"vehicle_type_id": "e-bike", "count": 4},
                    {"vehicle_type_id": "mechanical-bike", "count": 2}
                ],
                "is_installed": true,
                "is_renting": true,
                "is_returning": false,
                "last_reported": "2023-07-17T11:34:13Z"
            }
        ]}
    });
    let snap = gbfs::parse_status(&bytes(&p)).unwrap();
    assert_eq!(snap.feed_time, 1_689_593_653);
    assert_eq!(snap.version.as_deref(), Some("3.0"));
    let [a, b] = &snap.stations[..] else {
        panic!("{snap:?}")
    };
    assert_eq!(a.bikes_available, 2);
    assert_eq!(a.docks_available, 3);
    assert_eq!(
        a.bike_types,
        Some(BikeTypes {
            mechanical: 0,
            ebike: 0,
            other: 2
        })
    );
    assert_eq!(a.last_reported, Some(1_689_593_653));
    assert_eq!(b.docks_available, 0);
    assert_eq!(
        b.bike_types,
        Some(BikeTypes {
            mechanical: 2,
            ebike: 4,
            other: 0
        })
    );
    assert_eq!(b.last_reported, Some(1_689_593_653));
    assert!(!b.is_returning);
}

#[test]
fn gbfs_v3_0_docks_are_required_before_v3() {
    let row = without(status_row("s1"), "num_docks_available");
    let p = field_err(
        gbfs::parse_status(&bytes(&payload(vec![row]))),
        FeedKind::StationStatus,
        Some("s1"),
        "num_docks_available",
    );
    assert_eq!(p, Problem::Missing);
}

#[test]
fn gbfs_v3_0_information_localized() {
    let p = json!({
        "last_updated": "2023-07-17T13:34:13+02:00",
        "ttl": 0,
        "version": "3.0",
        "data": {"stations": [
            {
                "station_id": "pga",
                "name": [{"text": "Parking garage A", "language": "en"},
                         {"text": "Garage A", "language": "fr"}],
                "short_name": [{"text": "PGA", "language": "en"}],
                "lat": 12.345678,
                "lon": 45.678901,
                "post_code": "75016",
                "station_opening_hours": "Su-Th 05:00-22:00",
                "capacity": 10,
                "is_charging_station": true,
                "rental_uris": {"android": "https://www.example.com/app?sid=1234567890"}
            },
            {
                "station_id": "plain",
                "name": "Plain name",
                "short_name": "PN",
                "lat": -33.9,
                "lon": -151.2
            }
        ]}
    });
    let info = gbfs::parse_information(&bytes(&p)).unwrap();
    assert_eq!(info.feed_time, 1_689_593_653);
    let [a, b] = &info.stations[..] else {
        panic!("{info:?}")
    };
    assert_eq!(a.name, "Parking garage A");
    assert_eq!(a.code.as_deref(), Some("PGA"));
    assert_eq!(a.post_code.as_deref(), Some("75016"));
    assert_eq!(a.capacity, Some(10));
    assert_eq!(b.name, "Plain name");
    assert_eq!(b.code.as_deref(), Some("PN"));
    assert_eq!(b.post_code, None);
    assert_eq!(b.capacity, None);
    assert!((b.position.unwrap().lat + 33.9).abs() < 1e-12);
}

#[test]
fn information_stationcode_wins_over_short_name_and_post_code_number() {
    let row = json!({
        "station_id": 213_688_169u64,
        "stationCode": "16107",
        "short_name": "ignored",
        "name": "Benjamin Godard - Victor Hugo",
        "lat": 48.865983,
        "lon": 2.275725,
        "post_code": 75016
    });
    let info = gbfs::parse_information(&bytes(&velib_payload(vec![row]))).unwrap();
    assert_eq!(info.stations[0].code.as_deref(), Some("16107"));
    assert_eq!(info.stations[0].post_code.as_deref(), Some("75016"));
}

#[test]
fn bike_types_as_plain_object_and_velib_array() {
    let plain = with(
        status_row("s1"),
        "num_bikes_available_types",
        json!({"mechanical": 2, "ebike": 1}),
    );
    let velib = with(
        status_row("s2"),
        "num_bikes_available_types",
        json!([{"mechanical": 1}, {"ebike": 2}]),
    );
    let empty_array = with(status_row("s3"), "num_bikes_available_types", json!([]));
    let snap = gbfs::parse_status(&bytes(&payload(vec![plain, velib, empty_array]))).unwrap();
    assert_eq!(
        snap.stations[0].bike_types,
        Some(BikeTypes {
            mechanical: 2,
            ebike: 1,
            other: 0
        })
    );
    assert_eq!(
        snap.stations[1].bike_types,
        Some(BikeTypes {
            mechanical: 1,
            ebike: 2,
            other: 0
        })
    );
    // An empty list says nothing about types.
    assert_eq!(snap.stations[2].bike_types, None);
}

#[test]
fn velib_single_station_inline() {
    let snap = gbfs::parse_status(&bytes(&velib_payload(vec![velib_row(
        19_335_882_998,
        "21010",
        4,
        5,
    )])))
    .unwrap();
    assert_eq!(snap.feed_time, 1_732_004_538);
    let s = &snap.stations[0];
    assert_eq!(s.station_id, StationId::Num(19_335_882_998));
    assert_eq!(s.code.as_deref(), Some("21010"));
    assert_eq!(s.bikes_available, 9);
    assert_eq!(
        s.bike_types,
        Some(BikeTypes {
            mechanical: 4,
            ebike: 5,
            other: 0
        })
    );
}

#[test]
fn unknown_extra_fields_are_ignored() {
    let row = with(
        with(
            status_row("s1"),
            "future_field",
            json!({"nested": [1, 2, {"x": null}]}),
        ),
        "vehicle_docks_available",
        json!([{"vehicle_type_ids": ["a"], "count": 2}]),
    );
    let mut p = payload(vec![row]);
    p.as_object_mut()
        .unwrap()
        .insert("extra_top".into(), json!([true, "x"]));
    p["data"]
        .as_object_mut()
        .unwrap()
        .insert("extra_data".into(), json!(3));
    let snap = gbfs::parse_status(&bytes(&p)).unwrap();
    assert_eq!(snap.stations.len(), 1);
    assert_eq!(snap.stations[0].bikes_available, 3);
}

#[test]
fn optional_fields_missing_or_null() {
    // Status: last_reported, types, stationCode; top-level ttl and version.
    let missing = without(status_row("s1"), "last_reported");
    let nulls = [
        "last_reported",
        "num_bikes_available_types",
        "vehicle_types_available",
        "stationCode",
    ]
    .into_iter()
    .fold(status_row("s2"), |row, k| with(row, k, Value::Null));
    let p = json!({
        "last_updated": 1_700_000_000,
        "ttl": null,
        "version": null,
        "data": {"stations": [missing, nulls]}
    });
    let snap = gbfs::parse_status(&bytes(&p)).unwrap();
    assert_eq!(snap.ttl, None);
    assert_eq!(snap.version, None);
    for s in &snap.stations {
        assert_eq!(s.last_reported, None);
        assert_eq!(s.bike_types, None);
        assert_eq!(s.code, None);
    }
    let p = json!({"last_updated": 1, "data": {"stations": [status_row("s")]}});
    assert_eq!(gbfs::parse_status(&bytes(&p)).unwrap().ttl, None);

    // Information: capacity, short_name, post_code, stationCode.
    let nulls = ["capacity", "short_name", "post_code", "stationCode"]
        .into_iter()
        .fold(info_row("i2"), |row, k| with(row, k, Value::Null));
    let missing = without(info_row("i1"), "capacity");
    let empty_code = with(
        with(info_row("i3"), "stationCode", json!("  ")),
        "post_code",
        json!(""),
    );
    let info = gbfs::parse_information(&bytes(&payload(vec![missing, nulls, empty_code]))).unwrap();
    let capacities: Vec<_> = info.stations.iter().map(|s| s.capacity).collect();
    assert_eq!(capacities, [None, None, Some(20)]);
    for s in &info.stations {
        assert_eq!(s.code, None);
        assert_eq!(s.post_code, None);
    }

    // Paris: capacity and coordonnees_geo are optional.
    let row = with(
        without(paris_row("16107"), "capacity"),
        "coordonnees_geo",
        Value::Null,
    );
    let (_, info) = opendata_paris::parse(&bytes(&json!([row]))).unwrap();
    assert_eq!(info.stations[0].capacity, None);
    assert_eq!(info.stations[0].position, None);
}

#[test]
fn post_code_in_station_information() {
    let row = with(info_row("s1"), "post_code", json!(" 75016 "));
    let info = gbfs::parse_information(&bytes(&payload(vec![row]))).unwrap();
    assert_eq!(info.stations[0].post_code.as_deref(), Some("75016"));
}

#[test]
fn flags_in_every_written_form() {
    let forms = [
        (json!(true), true),
        (json!(false), false),
        (json!(1), true),
        (json!(0), false),
        (json!("OUI"), true),
        (json!("NON"), false),
        (json!("true"), true),
        (json!("0"), false),
    ];
    for (form, expected) in forms {
        let row = with(status_row("s"), "is_renting", form.clone());
        let snap = gbfs::parse_status(&bytes(&payload(vec![row]))).unwrap();
        assert_eq!(snap.stations[0].is_renting, expected, "{form}");
    }
}

#[test]
fn counts_edge_values() {
    for (v, expected) in [
        (json!(0), 0u32),
        (json!(u32::MAX), u32::MAX),
        // Some exporters write integral floats.
        (json!(3.0), 3),
    ] {
        let row = with(status_row("s"), "num_bikes_available", v.clone());
        let snap = gbfs::parse_status(&bytes(&payload(vec![row]))).unwrap();
        assert_eq!(snap.stations[0].bikes_available, expected, "{v}");
    }
}

#[test]
fn numeric_and_textual_ids_and_camel_case_fallbacks() {
    let camel = json!({
        "station_id": 0,
        "numBikesAvailable": 4,
        "numDocksAvailable": 6,
        "is_installed": 1,
        "is_renting": 1,
        "is_returning": 1
    });
    let snap = gbfs::parse_status(&bytes(&payload(vec![camel, status_row("0")]))).unwrap();
    assert_eq!(snap.stations[0].station_id, StationId::Num(0));
    assert_eq!(snap.stations[0].bikes_available, 4);
    assert_eq!(snap.stations[0].docks_available, 6);
    assert_eq!(snap.stations[1].station_id, StationId::Text("0".into()));
}

#[test]
fn v3_discovery() {
    let p = json!({
        "last_updated": "2023-07-17T13:34:13+02:00",
        "ttl": 0,
        "version": "3.0",
        "data": {"feeds": [
            {"name": "system_information", "url": "https://www.example.com/gbfs/1/system_information"},
            {"name": "station_information", "url": "https://www.example.com/gbfs/1/station_information"},
            {"name": "station_status", "url": "https://www.example.com/gbfs/1/station_status"}
        ]}
    });
    let d = gbfs::parse_discovery(&bytes(&p)).unwrap();
    assert_eq!(d.version.as_deref(), Some("3.0"));
    assert_eq!(d.ttl, Some(0));
    assert_eq!(d.languages.len(), 1);
    assert_eq!(d.languages[0].0, None);
    assert_eq!(
        d.feed_url("station_status", None),
        Some("https://www.example.com/gbfs/1/station_status")
    );
    assert_eq!(d.feed_url("vehicle_status", None), None);
    // v3 has one list for every language: a language asked for still finds it.
    assert_eq!(
        d.feed_url("station_status", Some("fr")),
        Some("https://www.example.com/gbfs/1/station_status")
    );
}

#[test]
fn utf8_byte_order_mark_before_json_is_accepted() {
    let mut payload = b"\xEF\xBB\xBF".to_vec();
    payload.extend_from_slice(
        &std::fs::read(fixtures().join("gbfs/oslo/station_status.json")).unwrap(),
    );
    let status = gbfs::parse_status(&payload).unwrap();
    assert_eq!(status.stations.len(), 260);
    // A mark anywhere else is not JSON.
    let mut late = b" ".to_vec();
    late.extend_from_slice(&payload);
    assert!(matches!(
        gbfs::parse_status(&late),
        Err(FeedError::Json { .. })
    ));
}

#[test]
fn v2_discovery_languages() {
    let p = json!({
        "last_updated": 1_640_887_163,
        "ttl": 0,
        "version": "2.3",
        "data": {
            "en": {"feeds": [
                {"name": "system_information", "url": "https://www.example.com/gbfs/1/en/system_information"},
                {"name": "station_status", "url": "https://www.example.com/gbfs/1/en/station_status"}
            ]},
            "fr": {"feeds": [
                {"name": "station_status", "url": "https://www.example.com/gbfs/1/fr/station_status"}
            ]}
        }
    });
    let d = gbfs::parse_discovery(&bytes(&p)).unwrap();
    assert_eq!(d.version.as_deref(), Some("2.3"));
    assert_eq!(d.languages.len(), 2);
    assert_eq!(
        d.feed_url("station_status", Some("fr")),
        Some("https://www.example.com/gbfs/1/fr/station_status")
    );
    assert_eq!(
        d.feed_url("station_status", Some("en")),
        Some("https://www.example.com/gbfs/1/en/station_status")
    );
    // Default: the first language in the file.
    assert_eq!(
        d.feed_url("station_status", None),
        Some("https://www.example.com/gbfs/1/en/station_status")
    );
    assert_eq!(d.feed_url("system_information", Some("fr")), None);
    assert_eq!(d.feed_url("station_status", Some("de")), None);
}

#[test]
fn paris_results_wrapper_and_numeric_code() {
    let row = with(paris_row("x"), "stationcode", json!(16107));
    let (status, _) =
        opendata_paris::parse(&bytes(&json!({"total_count": 1, "results": [row]}))).unwrap();
    assert_eq!(
        status.stations[0].station_id,
        StationId::Text("16107".into())
    );
    assert_eq!(status.feed_time, 1_730_793_601);
    assert!(!status.stations[0].is_returning);
}

// ---------------------------------------------------------------------------
// 3. Rejections
// ---------------------------------------------------------------------------

#[test]
fn truncated_fixtures_are_json_errors() {
    for rel in [
        "gbfs/velib/2024-11-19/station_status.json",
        "gbfs/oslo/station_status.json",
    ] {
        let b = fixture(rel);
        json_err(
            gbfs::parse_status(&b[..b.len() / 2]),
            FeedKind::StationStatus,
        );
    }
    let b = fixture("gbfs/velib/2024-11-19/station_information.json");
    json_err(
        gbfs::parse_information(&b[..b.len() / 2]),
        FeedKind::StationInformation,
    );
    let b = fixture("gbfs/velib/2022-02/gbfs.json");
    json_err(
        gbfs::parse_discovery(&b[..b.len() / 2]),
        FeedKind::Discovery,
    );
    let b = fixture("opendata-paris/velib-series/velib_data_20241105_093001.json");
    json_err(
        opendata_paris::parse(&b[..b.len() / 2]),
        FeedKind::OpenDataParis,
    );
}

/// Every parser refuses `input` as not JSON, naming its feed.
fn every_parser_rejects_as_json(input: &[u8]) {
    json_err(gbfs::parse_status(input), FeedKind::StationStatus);
    json_err(gbfs::parse_information(input), FeedKind::StationInformation);
    json_err(gbfs::parse_discovery(input), FeedKind::Discovery);
    json_err(opendata_paris::parse(input), FeedKind::OpenDataParis);
}

#[test]
fn empty_and_blank_input() {
    for input in [&b""[..], b"   \n\t"] {
        every_parser_rejects_as_json(input);
    }
}

#[test]
fn non_utf8_bytes() {
    // Invalid UTF-8 inside a string, and as a stray byte.
    let mut in_string = bytes(&payload(vec![status_row("s1")]));
    let at = in_string.windows(2).position(|w| w == b"s1").unwrap();
    in_string[at] = 0xff;
    json_err(gbfs::parse_status(&in_string), FeedKind::StationStatus);
    for input in [&b"\xff\xfe{}"[..], b"{\"data\": \xc3\x28}", &in_string] {
        every_parser_rejects_as_json(input);
    }
}

#[test]
fn top_level_not_an_object() {
    for top in [
        json!(3),
        json!("text"),
        json!(null),
        json!(true),
        json!([1, 2]),
    ] {
        let b = bytes(&top);
        let p = field_err(
            gbfs::parse_status(&b),
            FeedKind::StationStatus,
            None,
            "(top level)",
        );
        assert!(wrong_type(&p), "{top}: {p:?}");
        let p = field_err(
            gbfs::parse_information(&b),
            FeedKind::StationInformation,
            None,
            "(top level)",
        );
        assert!(wrong_type(&p));
        let p = field_err(
            gbfs::parse_discovery(&b),
            FeedKind::Discovery,
            None,
            "(top level)",
        );
        assert!(wrong_type(&p));
    }
    // The Paris export is an array; a scalar is not.
    for top in [json!(3), json!("text"), json!(null)] {
        let p = field_err(
            opendata_paris::parse(&bytes(&top)),
            FeedKind::OpenDataParis,
            None,
            "(top level)",
        );
        assert!(wrong_type(&p));
    }
    // A Paris object must wrap its records in `results`.
    let p = field_err(
        opendata_paris::parse(b"{\"total_count\": 0}"),
        FeedKind::OpenDataParis,
        None,
        "results",
    );
    assert_eq!(p, Problem::Missing);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep_array = vec![b'['; 100_000];
    let mut deep_object = b"{\"data\":".repeat(100_000);
    deep_object.extend_from_slice(b"{}");
    deep_object.extend(std::iter::repeat_n(b'}', 100_000));
    // Nested inside an otherwise valid station.
    let mut inside =
        b"{\"last_updated\":1,\"data\":{\"stations\":[{\"station_id\":\"a\",\"x\":".to_vec();
    inside.extend(std::iter::repeat_n(b'[', 100_000));
    for input in [&deep_array, &deep_object, &inside] {
        let msg = json_err(gbfs::parse_status(input), FeedKind::StationStatus);
        assert!(msg.contains("recursion limit"), "{msg}");
        json_err(gbfs::parse_information(input), FeedKind::StationInformation);
        json_err(gbfs::parse_discovery(input), FeedKind::Discovery);
        json_err(opendata_paris::parse(input), FeedKind::OpenDataParis);
    }
}

#[test]
fn payload_over_the_limit_is_too_large() {
    // Valid JSON padded with whitespace, so only the size is wrong.
    let mut big = bytes(&payload(vec![status_row("s1")]));
    big.resize(MAX_PAYLOAD_BYTES + 1, b' ');
    let check = |r: Result<(), FeedError>, kind: FeedKind| {
        let err = r.unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.reason(), "too_large");
        assert!(
            matches!(err, FeedError::TooLarge { feed, size, limit }
                if feed == kind && size == MAX_PAYLOAD_BYTES + 1 && limit == MAX_PAYLOAD_BYTES),
            "{err:?}"
        );
        assert!(msg.contains(&kind.to_string()), "{msg}");
        assert!(msg.contains(&MAX_PAYLOAD_BYTES.to_string()), "{msg}");
    };
    check(gbfs::parse_status(&big).map(drop), FeedKind::StationStatus);
    check(
        gbfs::parse_information(&big).map(drop),
        FeedKind::StationInformation,
    );
    check(gbfs::parse_discovery(&big).map(drop), FeedKind::Discovery);
    check(
        opendata_paris::parse(&big).map(drop),
        FeedKind::OpenDataParis,
    );
    // Exactly at the limit is parsed.
    big.truncate(MAX_PAYLOAD_BYTES);
    assert_eq!(gbfs::parse_status(&big).unwrap().stations.len(), 1);
}

#[test]
fn required_station_fields_missing_or_null() {
    for field in [
        "num_bikes_available",
        "num_docks_available",
        "is_installed",
        "is_renting",
        "is_returning",
    ] {
        let row = without(status_row("s1"), field);
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![status_row("s0"), row]))),
            FeedKind::StationStatus,
            Some("s1"),
            field,
        );
        assert_eq!(p, Problem::Missing, "{field}");
        let row = with(status_row("s1"), field, Value::Null);
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s1"),
            field,
        );
        assert_eq!(p, Problem::Null, "{field}");
    }
    // station_id: the station is then known by its position.
    let row = without(status_row("s1"), "station_id");
    let err = gbfs::parse_status(&bytes(&payload(vec![status_row("s0"), row])));
    assert_eq!(
        field_err(err, FeedKind::StationStatus, Some("#1"), "station_id"),
        Problem::Missing
    );
    let row = with(info_row("s1"), "station_id", Value::Null);
    let err = gbfs::parse_information(&bytes(&payload(vec![row])));
    assert_eq!(
        field_err(err, FeedKind::StationInformation, Some("#0"), "station_id"),
        Problem::Null
    );
    // A station that is not an object.
    let err = gbfs::parse_status(&bytes(&payload(vec![json!(42)])));
    assert!(wrong_type(&field_err(
        err,
        FeedKind::StationStatus,
        Some("#0"),
        "data.stations[0]"
    )));
    // Information: name, lat, lon.
    for field in ["name", "lat", "lon"] {
        let err = gbfs::parse_information(&bytes(&payload(vec![without(info_row("i9"), field)])));
        assert_eq!(
            field_err(err, FeedKind::StationInformation, Some("i9"), field),
            Problem::Missing
        );
    }
}

#[test]
fn velib_row_missing_bikes_names_the_numeric_station() {
    let mut row = velib_row(19_335_882_998, "21010", 1, 1);
    row = without(without(row, "num_bikes_available"), "numBikesAvailable");
    let err = gbfs::parse_status(&bytes(&velib_payload(vec![row])));
    let msg = err.as_ref().unwrap_err().to_string();
    assert_eq!(
        msg,
        "station_status.json: station 19335882998: field `num_bikes_available` is missing"
    );
    assert_eq!(
        field_err(
            err,
            FeedKind::StationStatus,
            Some("19335882998"),
            "num_bikes_available"
        ),
        Problem::Missing
    );
}

#[test]
fn required_top_level_fields_missing_or_null() {
    type Parse = fn(&[u8]) -> Result<(), FeedError>;
    let parsers: [(Parse, FeedKind); 2] = [
        (|b| gbfs::parse_status(b).map(drop), FeedKind::StationStatus),
        (
            |b| gbfs::parse_information(b).map(drop),
            FeedKind::StationInformation,
        ),
    ];
    for (parse, kind) in parsers {
        let good = payload(vec![status_row("s1"), info_row("s2")]);
        let cases: Vec<(Value, &str, Problem)> = vec![
            (
                without(good.clone(), "last_updated"),
                "last_updated",
                Problem::Missing,
            ),
            (
                with(good.clone(), "last_updated", Value::Null),
                "last_updated",
                Problem::Null,
            ),
            (without(good.clone(), "data"), "data", Problem::Missing),
            (
                with(good.clone(), "data", Value::Null),
                "data",
                Problem::Null,
            ),
            (
                with(good.clone(), "data", json!({})),
                "data.stations",
                Problem::Missing,
            ),
            (
                with(good.clone(), "data", json!({"stations": null})),
                "data.stations",
                Problem::Null,
            ),
        ];
        for (p, field, problem) in cases {
            assert_eq!(
                field_err(parse(&bytes(&p)), kind, None, field),
                problem,
                "{p}"
            );
        }
        for (p, field) in [
            (with(good.clone(), "data", json!([])), "data"),
            (
                with(good.clone(), "data", json!({"stations": {}})),
                "data.stations",
            ),
            (with(good.clone(), "version", json!(2.3)), "version"),
            (
                with(good.clone(), "last_updated", json!(true)),
                "last_updated",
            ),
            (
                with(good.clone(), "last_updated", json!(-5)),
                "last_updated",
            ),
            (
                with(good.clone(), "last_updated", json!(1.5)),
                "last_updated",
            ),
        ] {
            let problem = field_err(parse(&bytes(&p)), kind, None, field);
            assert!(wrong_type(&problem), "{p}: {problem:?}");
        }
        let p = with(good.clone(), "last_updated", json!("yesterday"));
        assert!(out_of_range(&field_err(
            parse(&bytes(&p)),
            kind,
            None,
            "last_updated"
        )));
        // (A ttl that is not a count is ignored: see
        // a_ttl_that_is_not_a_count_is_ignored_not_a_reason_to_refuse_the_stations.)
        // Vélib's time field, when it is the one there.
        let p = with(
            without(good.clone(), "last_updated"),
            "lastUpdatedOther",
            json!("soon"),
        );
        assert!(out_of_range(&field_err(
            parse(&bytes(&p)),
            kind,
            None,
            "lastUpdatedOther"
        )));
    }
}

#[test]
fn bad_counts() {
    let cases: Vec<(Value, Check)> = vec![
        (json!(-1), |p| *p == Problem::Negative("-1".into())),
        (json!(-2.0), |p| matches!(p, Problem::Negative(_))),
        (json!(4_294_967_296u64), |p| {
            *p == Problem::OutOfRange("4294967296".into())
        }),
        (json!(u64::MAX), |p| matches!(p, Problem::OutOfRange(_))),
        (json!(1e20), |p| matches!(p, Problem::OutOfRange(_))),
        (json!(2.5), |p| {
            matches!(
                p,
                Problem::WrongType {
                    found: "a fractional number",
                    ..
                }
            )
        }),
        (json!("3"), |p| {
            matches!(
                p,
                Problem::WrongType {
                    found: "a string",
                    ..
                }
            )
        }),
        (json!(true), wrong_type),
        (json!([3]), wrong_type),
        (json!({"n": 3}), wrong_type),
    ];
    for field in ["num_bikes_available", "num_docks_available"] {
        for (value, check) in &cases {
            let row = with(status_row("s7"), field, value.clone());
            let p = field_err(
                gbfs::parse_status(&bytes(&payload(vec![row]))),
                FeedKind::StationStatus,
                Some("s7"),
                field,
            );
            assert!(check(&p), "{field} = {value}: {p:?}");
        }
    }
    // The problem's Display carries the value.
    let row = with(status_row("s7"), "num_bikes_available", json!(-4));
    let msg = gbfs::parse_status(&bytes(&payload(vec![row])))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "station_status.json: station s7: field `num_bikes_available` is negative (-4)"
    );
    // Counts inside bike types and capacity.
    let row = with(
        status_row("s7"),
        "num_bikes_available_types",
        json!([{"mechanical": 1}, {"ebike": -1}]),
    );
    assert_eq!(
        field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s7"),
            "num_bikes_available_types[1].ebike"
        ),
        Problem::Negative("-1".into())
    );
    let row = with(
        status_row("s7"),
        "num_bikes_available_types",
        json!({"mechanical": 2.5}),
    );
    assert!(wrong_type(&field_err(
        gbfs::parse_status(&bytes(&payload(vec![row]))),
        FeedKind::StationStatus,
        Some("s7"),
        "num_bikes_available_types.mechanical"
    )));
    let row = with(
        status_row("s7"),
        "vehicle_types_available",
        json!([{"vehicle_type_id": "ebike", "count": "2"}]),
    );
    assert!(wrong_type(&field_err(
        gbfs::parse_status(&bytes(&payload(vec![row]))),
        FeedKind::StationStatus,
        Some("s7"),
        "vehicle_types_available[0].count"
    )));
    let row = with(info_row("i1"), "capacity", json!(5_000_000_000u64));
    assert!(out_of_range(&field_err(
        gbfs::parse_information(&bytes(&payload(vec![row]))),
        FeedKind::StationInformation,
        Some("i1"),
        "capacity"
    )));
}

#[test]
fn bad_bike_type_shapes() {
    for (value, field, check) in [
        (
            json!("2 mech"),
            "num_bikes_available_types",
            wrong_type as Check,
        ),
        (json!([3]), "num_bikes_available_types[0]", wrong_type),
        (
            json!([{"mechanical": null}]),
            "num_bikes_available_types[0].mechanical",
            wrong_type,
        ),
    ] {
        let row = with(status_row("s1"), "num_bikes_available_types", value.clone());
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s1"),
            field,
        );
        assert!(check(&p), "{value}: {p:?}");
    }
    for (value, field, expected) in [
        (
            json!([{"count": 1}]),
            "vehicle_types_available[0].vehicle_type_id",
            Problem::Missing,
        ),
        (
            json!([{"vehicle_type_id": "x", "count": null}]),
            "vehicle_types_available[0].count",
            Problem::Null,
        ),
    ] {
        let row = with(status_row("s1"), "vehicle_types_available", value);
        assert_eq!(
            field_err(
                gbfs::parse_status(&bytes(&payload(vec![row]))),
                FeedKind::StationStatus,
                Some("s1"),
                field
            ),
            expected
        );
    }
    for (value, field) in [
        (json!({"ebike": 1}), "vehicle_types_available"),
        (
            json!([{"vehicle_type_id": 7, "count": 1}]),
            "vehicle_types_available[0].vehicle_type_id",
        ),
        (json!(["ebike"]), "vehicle_types_available[0]"),
    ] {
        let row = with(status_row("s1"), "vehicle_types_available", value);
        assert!(wrong_type(&field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s1"),
            field
        )));
    }
}

#[test]
fn bad_flags() {
    for field in ["is_installed", "is_renting", "is_returning"] {
        for value in [json!(2), json!(-1), json!(0.5), json!("maybe"), json!("")] {
            let row = with(status_row("s2"), field, value.clone());
            let p = field_err(
                gbfs::parse_status(&bytes(&payload(vec![row]))),
                FeedKind::StationStatus,
                Some("s2"),
                field,
            );
            assert!(out_of_range(&p), "{field} = {value}: {p:?}");
        }
        for value in [json!([true]), json!({"v": 1})] {
            let row = with(status_row("s2"), field, value.clone());
            let p = field_err(
                gbfs::parse_status(&bytes(&payload(vec![row]))),
                FeedKind::StationStatus,
                Some("s2"),
                field,
            );
            assert!(wrong_type(&p), "{field} = {value}: {p:?}");
        }
    }
    let row = with(status_row("s2"), "is_renting", json!("maybe"));
    let msg = gbfs::parse_status(&bytes(&payload(vec![row])))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(
            "station_status.json: station s2: field `is_renting` is out of range (\"maybe\""
        ),
        "{msg}"
    );
}

#[test]
fn bad_station_ids() {
    for (value, check) in [
        (json!(-1), wrong_type as Check),
        (json!(1.5), wrong_type),
        (json!(12.0), wrong_type),
        (json!(""), out_of_range),
        (json!("   "), out_of_range),
        (json!({"id": 1}), wrong_type),
        (json!([1]), wrong_type),
        (json!(true), wrong_type),
    ] {
        let row = with(status_row("x"), "station_id", value.clone());
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![status_row("a"), row]))),
            FeedKind::StationStatus,
            Some("#1"),
            "station_id",
        );
        assert!(check(&p), "{value}: {p:?}");
        let row = with(info_row("x"), "station_id", value.clone());
        let p = field_err(
            gbfs::parse_information(&bytes(&payload(vec![row]))),
            FeedKind::StationInformation,
            Some("#0"),
            "station_id",
        );
        assert!(check(&p), "{value}: {p:?}");
    }
}

#[test]
fn bad_times_in_stations() {
    for value in [
        json!(-1),
        json!("2024-13-01T00:00:00Z"),
        json!(false),
        json!("1732001704"),
    ] {
        let row = with(status_row("s3"), "last_reported", value.clone());
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s3"),
            "last_reported",
        );
        assert!(wrong_type(&p) || out_of_range(&p), "{value}: {p:?}");
    }
}

#[test]
fn bad_coordinates_and_names() {
    for (field, value, check) in [
        ("lat", json!(90.0001), out_of_range as Check),
        ("lat", json!(-91), out_of_range),
        ("lon", json!(180.5), out_of_range),
        ("lon", json!(-1e300), out_of_range),
        ("lat", json!("48.8"), wrong_type),
        ("lon", json!([2.3]), wrong_type),
        ("name", json!(3), wrong_type),
        ("name", json!([]), out_of_range),
    ] {
        let row = with(info_row("i5"), field, value.clone());
        let p = field_err(
            gbfs::parse_information(&bytes(&payload(vec![row]))),
            FeedKind::StationInformation,
            Some("i5"),
            field,
        );
        assert!(check(&p), "{field} = {value}: {p:?}");
    }
    // Exactly on the bounds is fine.
    let row = with(with(info_row("i5"), "lat", json!(-90)), "lon", json!(180));
    assert!(gbfs::parse_information(&bytes(&payload(vec![row]))).is_ok());
    // Localized name entries.
    let row = with(info_row("i5"), "name", json!([{"language": "en"}]));
    assert_eq!(
        field_err(
            gbfs::parse_information(&bytes(&payload(vec![row]))),
            FeedKind::StationInformation,
            Some("i5"),
            "name[0].text"
        ),
        Problem::Missing
    );
    let row = with(
        info_row("i5"),
        "short_name",
        json!([{"text": 5, "language": "en"}]),
    );
    assert!(wrong_type(&field_err(
        gbfs::parse_information(&bytes(&payload(vec![row]))),
        FeedKind::StationInformation,
        Some("i5"),
        "short_name[0].text"
    )));
    let row = with(info_row("i5"), "post_code", json!({"code": "75016"}));
    assert!(wrong_type(&field_err(
        gbfs::parse_information(&bytes(&payload(vec![row]))),
        FeedKind::StationInformation,
        Some("i5"),
        "post_code"
    )));
}

#[test]
fn duplicate_station_ids() {
    let err = gbfs::parse_status(&bytes(&payload(vec![
        status_row("a"),
        status_row("dup"),
        status_row("dup"),
    ])));
    duplicate(err, FeedKind::StationStatus, "dup");
    let err = gbfs::parse_status(&bytes(&velib_payload(vec![
        velib_row(19_335_882_998, "1", 1, 1),
        velib_row(19_335_882_998, "2", 1, 1),
    ])));
    duplicate(err, FeedKind::StationStatus, "19335882998");
    let err = gbfs::parse_information(&bytes(&payload(vec![info_row("i"), info_row("i")])));
    duplicate(err, FeedKind::StationInformation, "i");
    let err = opendata_paris::parse(&bytes(&json!([paris_row("16107"), paris_row("16107")])));
    duplicate(err, FeedKind::OpenDataParis, "16107");
}

#[test]
fn empty_station_list_is_an_outage() {
    let empty = bytes(&payload(vec![]));
    outage(
        gbfs::parse_status(&empty),
        FeedKind::StationStatus,
        "no stations",
    );
    outage(
        gbfs::parse_information(&empty),
        FeedKind::StationInformation,
        "no stations",
    );
    outage(
        gbfs::parse_status(&bytes(&velib_payload(vec![]))),
        FeedKind::StationStatus,
        "no stations",
    );
    outage(
        opendata_paris::parse(b"[]"),
        FeedKind::OpenDataParis,
        "no stations",
    );
    outage(
        opendata_paris::parse(b"{\"results\": []}"),
        FeedKind::OpenDataParis,
        "no stations",
    );
}

#[test]
fn velib_outage_every_station_lacks_its_code() {
    let rows: Vec<Value> = (0..5)
        .map(|i| without(velib_row(100 + i, "x", 1, 2), "stationCode"))
        .collect();
    outage(
        gbfs::parse_status(&bytes(&velib_payload(rows.clone()))),
        FeedKind::StationStatus,
        "all 5 stations lack their stationCode",
    );
    // Empty codes count as missing.
    let rows: Vec<Value> = (0..3).map(|i| velib_row(100 + i, "", 1, 2)).collect();
    outage(
        gbfs::parse_status(&bytes(&velib_payload(rows))),
        FeedKind::StationStatus,
        "stationCode",
    );
    // One station with its code is enough.
    let mut rows: Vec<Value> = (0..5)
        .map(|i| without(velib_row(100 + i, "x", 1, 2), "stationCode"))
        .collect();
    rows.push(velib_row(1, "16107", 1, 2));
    let snap = gbfs::parse_status(&bytes(&velib_payload(rows))).unwrap();
    assert_eq!(snap.stations.iter().filter(|s| s.code.is_some()).count(), 1);
    // Information too.
    let info: Vec<Value> = (0..2)
        .map(|i| with(info_row("x"), "station_id", json!(i)))
        .collect();
    outage(
        gbfs::parse_information(&bytes(&velib_payload(info))),
        FeedKind::StationInformation,
        "stationCode",
    );
}

#[test]
fn velib_outage_every_station_lacks_its_bike_types() {
    let rows: Vec<Value> = (0..4)
        .map(|i| {
            without(
                velib_row(100 + i, &i.to_string(), 1, 2),
                "num_bikes_available_types",
            )
        })
        .collect();
    outage(
        gbfs::parse_status(&bytes(&velib_payload(rows))),
        FeedKind::StationStatus,
        "all 4 stations lack their bike types",
    );
    let rows: Vec<Value> = (0..4)
        .map(|i| {
            with(
                velib_row(100 + i, &i.to_string(), 1, 2),
                "num_bikes_available_types",
                json!([]),
            )
        })
        .collect();
    outage(
        gbfs::parse_status(&bytes(&velib_payload(rows))),
        FeedKind::StationStatus,
        "bike types",
    );
    // The real Vélib' file with every station's types removed.
    let mut real: Value =
        serde_json::from_slice(&fixture("gbfs/velib/2024-11-19/station_status.json")).unwrap();
    for s in real["data"]["stations"].as_array_mut().unwrap() {
        s.as_object_mut()
            .unwrap()
            .remove("num_bikes_available_types");
    }
    outage(
        gbfs::parse_status(&bytes(&real)),
        FeedKind::StationStatus,
        "all 1485 stations lack their bike types",
    );
    // The real Vélib' file with every station's code removed.
    for s in real["data"]["stations"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("stationCode");
    }
    outage(
        gbfs::parse_status(&bytes(&real)),
        FeedKind::StationStatus,
        "stationCode",
    );
}

#[test]
fn non_velib_feed_without_codes_or_types_is_fine() {
    // Oslo: GBFS `last_updated`, no stationCode, no types.
    let snap = gbfs::parse_status(&fixture("gbfs/oslo/station_status.json")).unwrap();
    assert!(snap
        .stations
        .iter()
        .all(|s| s.code.is_none() && s.bike_types.is_none()));
    let snap =
        gbfs::parse_status(&bytes(&payload(vec![status_row("a"), status_row("b")]))).unwrap();
    assert_eq!(snap.stations.len(), 2);
}

#[test]
fn discovery_rejections() {
    let cases: Vec<(Value, &str, Check)> = vec![
        (json!({"ttl": 1}), "data", |p| *p == Problem::Missing),
        (json!({"data": null}), "data", |p| *p == Problem::Null),
        (json!({"data": {}}), "data", out_of_range),
        (json!({"data": []}), "data", wrong_type),
        (json!({"data": {"en": []}}), "data.en", wrong_type),
        (json!({"data": {"en": {}}}), "data.en.feeds", |p| {
            *p == Problem::Missing
        }),
        (
            json!({"data": {"en": {"feeds": null}}}),
            "data.en.feeds",
            |p| *p == Problem::Null,
        ),
        (
            json!({"data": {"en": {"feeds": {}}}}),
            "data.en.feeds",
            wrong_type,
        ),
        (json!({"data": {"feeds": "x"}}), "data.feeds", wrong_type),
        (json!({"data": {"feeds": [1]}}), "data.feeds[0]", wrong_type),
        (
            json!({"data": {"feeds": [{"name": "station_status"}]}}),
            "data.feeds[0].url",
            |p| *p == Problem::Missing,
        ),
        (
            json!({"data": {"en": {"feeds": [{"name": "a", "url": "u"}, {"name": 3, "url": "u"}]}}}),
            "data.en.feeds[1].name",
            wrong_type,
        ),
        (
            json!({"data": {"feeds": [{"name": "a", "url": null}]}}),
            "data.feeds[0].url",
            |p| *p == Problem::Null,
        ),
        (
            json!({"version": 3, "data": {"feeds": []}}),
            "version",
            wrong_type,
        ),
    ];
    for (p, field, check) in cases {
        let problem = field_err(
            gbfs::parse_discovery(&bytes(&p)),
            FeedKind::Discovery,
            None,
            field,
        );
        assert!(check(&problem), "{p}: {problem:?}");
    }
}

#[test]
fn paris_rejections() {
    let missing: Check = |p| *p == Problem::Missing;
    let cases: Vec<(Value, Option<&str>, &str, Check)> = vec![
        (
            without(paris_row("16107"), "numbikesavailable"),
            Some("16107"),
            "numbikesavailable",
            missing,
        ),
        (
            without(paris_row("16107"), "mechanical"),
            Some("16107"),
            "mechanical",
            missing,
        ),
        (
            without(paris_row("16107"), "duedate"),
            Some("16107"),
            "duedate",
            missing,
        ),
        (
            without(paris_row("16107"), "name"),
            Some("16107"),
            "name",
            missing,
        ),
        (
            with(paris_row("16107"), "ebike", json!(-2)),
            Some("16107"),
            "ebike",
            |p| matches!(p, Problem::Negative(_)),
        ),
        (
            with(paris_row("16107"), "numdocksavailable", json!("20")),
            Some("16107"),
            "numdocksavailable",
            wrong_type,
        ),
        (
            with(paris_row("16107"), "is_renting", json!("PEUT-ETRE")),
            Some("16107"),
            "is_renting",
            out_of_range,
        ),
        (
            with(paris_row("16107"), "duedate", json!("hier")),
            Some("16107"),
            "duedate",
            out_of_range,
        ),
        (
            with(paris_row("16107"), "name", json!(1)),
            Some("16107"),
            "name",
            wrong_type,
        ),
        (
            without(paris_row("16107"), "stationcode"),
            Some("#1"),
            "stationcode",
            missing,
        ),
        (
            with(paris_row("16107"), "stationcode", json!("")),
            Some("#1"),
            "stationcode",
            missing,
        ),
        (
            with(paris_row("16107"), "stationcode", json!(-5)),
            Some("#1"),
            "stationcode",
            wrong_type,
        ),
        (
            with(paris_row("16107"), "coordonnees_geo", json!([2.2, 48.8])),
            Some("16107"),
            "coordonnees_geo",
            wrong_type,
        ),
        (
            with(
                paris_row("16107"),
                "coordonnees_geo",
                json!({"lon": 2.2, "lat": 95.0}),
            ),
            Some("16107"),
            "coordonnees_geo.lat",
            out_of_range,
        ),
        (
            with(paris_row("16107"), "coordonnees_geo", json!({"lat": 48.8})),
            Some("16107"),
            "coordonnees_geo.lon",
            missing,
        ),
        (
            with(
                paris_row("16107"),
                "coordonnees_geo",
                json!({"lat": 48.8, "lon": null}),
            ),
            Some("16107"),
            "coordonnees_geo.lon",
            |p| *p == Problem::Null,
        ),
        (json!("not a record"), Some("#1"), "[1]", wrong_type),
    ];
    for (row, station, field, check) in cases {
        let records = json!([paris_row("1001"), row]);
        let p = field_err(
            opendata_paris::parse(&bytes(&records)),
            FeedKind::OpenDataParis,
            station,
            field,
        );
        assert!(check(&p), "{field}: {p:?}");
        let msg = opendata_paris::parse(&bytes(&records))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("Paris open-data export: "), "{msg}");
    }
}

#[test]
fn reasons_are_stable() {
    let too_large = gbfs::parse_status(&vec![b' '; MAX_PAYLOAD_BYTES + 1]).unwrap_err();
    let json = gbfs::parse_status(b"{").unwrap_err();
    let field = gbfs::parse_status(b"{}").unwrap_err();
    let dup =
        gbfs::parse_status(&bytes(&payload(vec![status_row("a"), status_row("a")]))).unwrap_err();
    let outage = gbfs::parse_status(&bytes(&payload(vec![]))).unwrap_err();
    assert_eq!(
        [&too_large, &json, &field, &dup, &outage].map(FeedError::reason),
        [
            "too_large",
            "invalid_json",
            "invalid_field",
            "duplicate_station",
            "upstream_outage"
        ]
    );
    // The JSON error keeps serde_json's position as its source.
    assert!(std::error::Error::source(&json).is_some());
}

// ---------------------------------------------------------------------------
// 4. Properties
// ---------------------------------------------------------------------------

/// Runs every parser; none may panic. Errors must name their feed.
fn parse_all(bytes: &[u8]) {
    fn check<T>(r: Result<T, FeedError>, kind: FeedKind) {
        if let Err(e) = r {
            let msg = e.to_string();
            assert!(msg.starts_with(&kind.to_string()), "{msg}");
            assert!(!e.reason().is_empty());
        }
    }
    check(gbfs::parse_status(bytes), FeedKind::StationStatus);
    check(gbfs::parse_information(bytes), FeedKind::StationInformation);
    check(gbfs::parse_discovery(bytes), FeedKind::Discovery);
    check(opendata_paris::parse(bytes), FeedKind::OpenDataParis);
    // The producer's path: either format, and each station's own object,
    // one for one with the parsed stations.
    if let (Ok((status, _)), Some(objects)) = (
        gbfs_feed::payload::parse_status(bytes),
        gbfs_feed::payload::station_objects(bytes),
    ) {
        assert_eq!(status.stations.len(), objects.len());
    }
}

/// Small real payloads to mutate: the whole of the small fixtures, and the
/// first records of the large ones, cut at a record boundary so that the
/// bytes stay the real ones.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let head = |rel: &str, marker: &[u8], records: usize, close: &[u8]| {
            let b = fixture(rel);
            let cut = b
                .windows(marker.len())
                .enumerate()
                .filter(|(_, w)| *w == marker)
                .nth(records)
                .map(|(i, _)| i + 1)
                .unwrap();
            let mut out = b[..cut].to_vec();
            out.extend_from_slice(close);
            out
        };
        let seeds = vec![
            fixture("gbfs/velib/2022-02/gbfs.json"),
            fixture("gbfs/velib/2022-02/system_information.json"),
            head(
                "gbfs/velib/2022-02/station_status.json",
                b"},{\"stationCode\"",
                12,
                b"]}}",
            ),
            head(
                "gbfs/velib/2022-02/station_information.json",
                b"},{\"station_id\"",
                12,
                b"]}}",
            ),
            head(
                "opendata-paris/velib-series/velib_data_20241105_093001.json",
                b"},{\"stationcode\"",
                12,
                b"]",
            ),
            head("gbfs/oslo/station_status.json", b"},\n      {", 12, b"]}}"),
        ];
        // Each seed is valid to start with.
        gbfs::parse_discovery(&seeds[0]).unwrap();
        assert_eq!(gbfs::parse_status(&seeds[2]).unwrap().stations.len(), 13);
        assert_eq!(
            gbfs::parse_information(&seeds[3]).unwrap().stations.len(),
            13
        );
        assert_eq!(
            opendata_paris::parse(&seeds[4]).unwrap().0.stations.len(),
            13
        );
        assert_eq!(gbfs::parse_status(&seeds[5]).unwrap().stations.len(), 13);
        seeds
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to JSON, and arbitrary ones.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\":,-.0123456789eE \\nulltruefalse\xff\x00".to_vec()),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Set(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
        Mutation::Flip(i, mask) if len > 0 => bytes[i % len] ^= mask,
        Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(i % len);
        }
        Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
        _ => {}
    }
}

/// An arbitrary JSON value, to put where a field was.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            " ",
            "0",
            "1",
            "3",
            "-1",
            "OUI",
            "NON",
            "maybe",
            "ebike",
            "mechanical",
            "2024-11-05T09:00:01+01:00",
            "1970-01-01T00:00:00Z",
            "é\u{0}",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "mechanical",
                    "ebike",
                    "count",
                    "vehicle_type_id",
                    "text",
                    "lat",
                    "lon",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces (or, with `None`, removes) field number `field` of record
/// number `record` of a parsed seed (for a payload without a station list,
/// an entry of its `data`).
fn mutate_field(root: &mut Value, record: usize, field: usize, value: Option<Value>) {
    let stations = root
        .pointer("/data/stations")
        .and_then(Value::as_array)
        .map(Vec::len);
    let target = match (root.as_array().map(Vec::len), stations) {
        (Some(0), _) | (_, Some(0)) => return,
        (Some(n), _) => &mut root[record % n],
        (None, Some(n)) => &mut root["data"]["stations"][record % n],
        (None, None) => match root.get_mut("data") {
            Some(data) => data,
            None => return,
        },
    };
    let Some(obj) = target.as_object_mut() else {
        return;
    };
    let Some(key) = obj.keys().nth(field % obj.len().max(1)).cloned() else {
        return;
    };
    match value {
        Some(v) => obj.insert(key, v),
        None => obj.remove(&key),
    };
}

/// One generated station, and how to write it.
#[derive(Clone, Debug)]
struct Row {
    status: StationStatus,
    numeric_flags: bool,
    types_form: u8,
}

fn station_id() -> impl Strategy<Value = StationId> {
    prop_oneof![
        any::<u64>().prop_map(StationId::Num),
        "[A-Za-z0-9_:-]{1,12}".prop_map(StationId::Text),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (
        station_id(),
        proptest::option::of("[0-9]{1,6}"),
        any::<u32>(),
        proptest::option::of((any::<u32>(), any::<u32>(), any::<u32>())),
        any::<u32>(),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::option::of(0i64..4_000_000_000),
        (any::<bool>(), 0u8..3),
    )
        .prop_map(
            |(id, code, bikes, types, docks, (inst, rent, ret), reported, (numeric, form))| Row {
                status: StationStatus {
                    station_id: id,
                    code,
                    bikes_available: bikes,
                    bike_types: types.map(|(mechanical, ebike, other)| BikeTypes {
                        mechanical,
                        ebike,
                        other,
                    }),
                    docks_available: docks,
                    is_installed: inst,
                    is_renting: rent,
                    is_returning: ret,
                    last_reported: reported,
                    judged: Default::default(),
                    // Written by type id in the third form: kept by id.
                    vehicle_types: match (types, form) {
                        (Some((mechanical, ebike, other)), 2) => [
                            ("classic".to_owned(), mechanical),
                            ("electric".to_owned(), ebike),
                            ("cargo".to_owned(), other),
                        ]
                        .into(),
                        _ => Default::default(),
                    },
                },
                numeric_flags: numeric,
                types_form: form,
            },
        )
}

fn to_json(row: &Row) -> Value {
    let s = &row.status;
    let flag = |b: bool| {
        if row.numeric_flags {
            json!(u8::from(b))
        } else {
            json!(b)
        }
    };
    let mut obj = json!({
        "station_id": s.station_id,
        "num_bikes_available": s.bikes_available,
        "num_docks_available": s.docks_available,
        "is_installed": flag(s.is_installed),
        "is_renting": flag(s.is_renting),
        "is_returning": flag(s.is_returning),
    });
    if let Some(code) = &s.code {
        obj = with(obj, "stationCode", json!(code));
    }
    if let Some(t) = s.last_reported {
        obj = with(obj, "last_reported", json!(t));
    }
    if let Some(t) = s.bike_types {
        obj = match row.types_form {
            0 => with(
                obj,
                "num_bikes_available_types",
                json!([{"mechanical": t.mechanical}, {"ebike": t.ebike}, {"cargo": t.other}]),
            ),
            1 => with(
                obj,
                "num_bikes_available_types",
                json!({"mechanical": t.mechanical, "ebike": t.ebike, "cargo": t.other}),
            ),
            _ => with(
                obj,
                "vehicle_types_available",
                json!([
                    {"vehicle_type_id": "classic", "count": t.mechanical},
                    {"vehicle_type_id": "electric", "count": t.ebike},
                    {"vehicle_type_id": "cargo", "count": t.other}
                ]),
            ),
        };
    }
    obj
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&bytes);
    }

    #[test]
    fn json_like_text_never_panics(text in "[\\[\\]{}\":, 0-9a-z_.eE-]{0,256}") {
        parse_all(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(
        seed in 0..6usize,
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_all(&bytes);
    }

    #[test]
    fn mutated_fixture_fields_never_panic(
        seed in 0..6usize,
        edits in prop::collection::vec(
            (any::<usize>(), any::<usize>(), proptest::option::of(any_json())),
            1..4,
        ),
    ) {
        let mut root: Value = serde_json::from_slice(&seeds()[seed]).unwrap();
        for (record, field, value) in edits {
            mutate_field(&mut root, record, field, value);
        }
        parse_all(&bytes(&root));
    }

    #[test]
    fn status_round_trip(
        rows in prop::collection::vec(row(), 1..24),
        feed_time in 0i64..4_000_000_000,
        ttl in proptest::option::of(any::<u32>()),
        version in proptest::option::of(prop::sample::select(vec!["1.0", "1.1", "2.2", "2.3"])),
    ) {
        let mut seen = HashSet::new();
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|r| seen.insert(r.status.station_id.clone()))
            .collect();
        let p = json!({
            "last_updated": feed_time,
            "ttl": ttl,
            "version": version,
            "data": {"stations": rows.iter().map(to_json).collect::<Vec<_>>()}
        });
        let snap = gbfs::parse_status(&bytes(&p)).unwrap();
        prop_assert_eq!(
            snap,
            StatusSnapshot {
                feed_time,
                feed_time_kind: FeedTimeKind::Published,
                version: version.map(str::to_owned),
                ttl,
                stations: rows.into_iter().map(|r| r.status).collect(),
                undefined_vehicle_types: Vec::new(),
                vehicle_types_dropped: Vec::new(),
            }
        );
    }

    #[test]
    fn velib_status_round_trip(
        rows in prop::collection::vec((any::<u64>(), "[0-9]{1,6}", 0u32..100, 0u32..100), 1..24),
        feed_time in 0i64..4_000_000_000,
    ) {
        let mut seen = HashSet::new();
        let rows: Vec<_> = rows.into_iter().filter(|r| seen.insert(r.0)).collect();
        let mut p = velib_payload(
            rows.iter().map(|(id, code, m, e)| velib_row(*id, code, *m, *e)).collect(),
        );
        p["lastUpdatedOther"] = json!(feed_time);
        let snap = gbfs::parse_status(&bytes(&p)).unwrap();
        prop_assert_eq!(snap.feed_time, feed_time);
        prop_assert_eq!(snap.stations.len(), rows.len());
        for (s, (id, code, m, e)) in snap.stations.iter().zip(&rows) {
            prop_assert_eq!(&s.station_id, &StationId::Num(*id));
            prop_assert_eq!(s.code.as_deref(), Some(code.as_str()));
            prop_assert_eq!(s.bikes_available, m + e);
            prop_assert_eq!(s.bike_types, Some(BikeTypes { mechanical: *m, ebike: *e, other: 0 }));
        }
    }
}

#[test]
fn rfc3339_offsets_must_be_digits() {
    use gbfs_feed::parse_rfc3339;
    assert_eq!(
        parse_rfc3339("2024-11-05T09:00:01+01:00"),
        Some(1_730_793_601)
    );
    for bad in [
        "2024-11-05T09:00:01+-1:00",
        "2024-11-05T09:00:01++1:00",
        "2024-11-05T09:00:01+01:+5",
        "2024-11-05T09:00:01+ 1:00",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
        let row = with(status_row("s1"), "last_reported", json!(bad));
        assert!(out_of_range(&field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s1"),
            "last_reported"
        )));
    }
}

#[test]
fn times_before_1970_are_refused_in_both_forms() {
    for value in [
        json!(-1),
        json!("1969-12-31T23:59:59Z"),
        json!("0000-01-01T00:00:00Z"),
    ] {
        let row = with(status_row("s1"), "last_reported", value.clone());
        let p = field_err(
            gbfs::parse_status(&bytes(&payload(vec![row]))),
            FeedKind::StationStatus,
            Some("s1"),
            "last_reported",
        );
        assert!(wrong_type(&p) || out_of_range(&p), "{value}: {p:?}");
        let p = field_err(
            gbfs::parse_status(&bytes(&with(
                payload(vec![status_row("s1")]),
                "last_updated",
                value.clone(),
            ))),
            FeedKind::StationStatus,
            None,
            "last_updated",
        );
        assert!(wrong_type(&p) || out_of_range(&p), "{value}: {p:?}");
    }
    let row = with(
        status_row("s1"),
        "last_reported",
        json!("1970-01-01T00:00:00Z"),
    );
    let snap = gbfs::parse_status(&bytes(&payload(vec![row]))).unwrap();
    assert_eq!(snap.stations[0].last_reported, Some(0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any strict prefix of a whole real file (short of trailing whitespace)
    /// is a JSON error, never a smaller snapshot.
    #[test]
    fn truncated_whole_fixtures_are_json_errors(which in 0..4usize, at in any::<prop::sample::Index>()) {
        let (rel, kind) = [
            ("gbfs/oslo/station_status.json", FeedKind::StationStatus),
            ("gbfs/velib/2022-02/station_information.json", FeedKind::StationInformation),
            ("gbfs/velib/2022-02/gbfs.json", FeedKind::Discovery),
            ("opendata-paris/velib-series/velib_data_20241105_093001.json", FeedKind::OpenDataParis),
        ][which];
        let full = fixture(rel);
        let end = full.trim_ascii_end().len();
        let cut = at.index(end);
        let prefix = &full[..cut];
        let result = match kind {
            FeedKind::StationStatus => gbfs::parse_status(prefix).map(drop),
            FeedKind::StationInformation => gbfs::parse_information(prefix).map(drop),
            FeedKind::Discovery => gbfs::parse_discovery(prefix).map(drop),
            _ => opendata_paris::parse(prefix).map(drop),
        };
        json_err(result, kind);
    }
}

#[test]
fn a_ttl_that_is_not_a_count_is_ignored_not_a_reason_to_refuse_the_stations() {
    let discovery = json!({"ttl": -3, "data": {"feeds": []}});
    assert_eq!(gbfs::parse_discovery(&bytes(&discovery)).unwrap().ttl, None);
    for ttl in [
        json!(-5),
        json!("soon"),
        json!(1e12),
        json!(4_294_967_296u64),
        json!(2.5),
    ] {
        let mut p = payload(vec![status_row("a")]);
        p["ttl"] = ttl.clone();
        let snap = gbfs::parse_status(&bytes(&p)).unwrap_or_else(|e| panic!("ttl {ttl}: {e}"));
        assert_eq!(snap.ttl, None, "ttl {ttl}");
        assert_eq!(snap.stations.len(), 1, "ttl {ttl}");
        let mut info = payload(vec![info_row("a")]);
        info["ttl"] = ttl.clone();
        let info =
            gbfs::parse_information(&bytes(&info)).unwrap_or_else(|e| panic!("ttl {ttl}: {e}"));
        assert_eq!((info.ttl, info.stations.len()), (None, 1), "ttl {ttl}");
    }
    // An absurd but countable ttl is the feed's to say; polling bounds it.
    let mut p = payload(vec![status_row("a")]);
    p["ttl"] = json!(4_000_000_000u64);
    assert_eq!(
        gbfs::parse_status(&bytes(&p)).unwrap().ttl,
        Some(4_000_000_000)
    );
}

/// In a whole payload, one station listing too many vehicle types, or a
/// type id too long to be a record's key, costs that station its counts by
/// type id only: its bikes are still counted by kind, it is listed in
/// `vehicle_types_dropped`, and the other stations keep theirs.
#[test]
fn a_station_with_too_many_vehicle_types_loses_only_its_counts_by_id() {
    let typed = |id: &str, types: Vec<Value>| {
        let mut row = status_row(id);
        row["num_bikes_available"] = json!(types.len());
        row["vehicle_types_available"] = Value::Array(types);
        row
    };
    let many: Vec<Value> = (0..=gbfs_feed::MAX_VEHICLE_TYPES)
        .map(|i| json!({"vehicle_type_id": format!("ebike{i}"), "count": 1}))
        .collect();
    let long = "ebike".repeat(gbfs_feed::MAX_VEHICLE_TYPE_ID_LEN);
    let snap = gbfs::parse_status(&bytes(&payload(vec![
        typed("many", many),
        typed("long", vec![json!({"vehicle_type_id": long, "count": 1})]),
        typed("fine", vec![json!({"vehicle_type_id": "city", "count": 1})]),
    ])))
    .unwrap();
    assert_eq!(
        snap.vehicle_types_dropped,
        [
            StationId::Text("many".into()),
            StationId::Text("long".into())
        ]
    );
    let [many, long, fine] = &snap.stations[..] else {
        panic!("{:?}", snap.stations)
    };
    assert!(many.vehicle_types.is_empty() && long.vehicle_types.is_empty());
    let ebikes = |s: &gbfs_feed::StationStatus| s.bike_types.map(|t| t.ebike);
    assert_eq!(
        (ebikes(many), ebikes(long)),
        (Some(gbfs_feed::MAX_VEHICLE_TYPES as u32 + 1), Some(1))
    );
    assert_eq!(fine.vehicle_types, [("city".to_owned(), 1)].into());
    // A payload without such a station lists none.
    let plain = gbfs::parse_status(&bytes(&payload(vec![status_row("a")]))).unwrap();
    assert!(plain.vehicle_types_dropped.is_empty());
}

/// A v2.3 station may list both `num_bikes_available_types` and
/// `vehicle_types_available`: its kinds are the named counts', and its
/// counts by type id are kept all the same.
#[test]
fn a_station_listing_both_kinds_and_type_ids_keeps_both() {
    let mut row = status_row("a");
    row["num_bikes_available_types"] = json!([{"mechanical": 1}, {"ebike": 2}]);
    row["vehicle_types_available"] = json!([
        {"vehicle_type_id": "t1", "count": 2}, {"vehicle_type_id": "t2", "count": 1}]);
    let status = &gbfs::parse_status(&bytes(&payload(vec![row])))
        .unwrap()
        .stations[0];
    let kinds = status.bike_types.unwrap();
    assert_eq!((kinds.mechanical, kinds.ebike, kinds.other), (1, 2, 0));
    assert_eq!(
        status.vehicle_types,
        [("t1".to_owned(), 2), ("t2".to_owned(), 1)].into()
    );
    // Beside named counts, a broken list by id costs only the counts by id.
    for broken in [
        json!([{"vehicle_type_id": "t1"}]),
        json!([{"vehicle_type_id": "t1", "count": -1}]),
        json!([{"vehicle_type_id": 7, "count": 1}]),
        json!("t1"),
    ] {
        let mut row = status_row("a");
        row["num_bikes_available_types"] = json!([{"mechanical": 1}, {"ebike": 2}]);
        row["vehicle_types_available"] = broken.clone();
        let snap = gbfs::parse_status(&bytes(&payload(vec![row.clone()])))
            .unwrap_or_else(|e| panic!("{broken}: {e}"));
        let status = &snap.stations[0];
        assert_eq!(status.bike_types.unwrap().ebike, 2, "{broken}");
        assert!(status.vehicle_types.is_empty(), "{broken}");
        assert_eq!(
            snap.vehicle_types_dropped,
            [StationId::Text("a".into())],
            "{broken}"
        );
        // Without the named counts, the list is the bikes' kinds: refused.
        row.as_object_mut()
            .unwrap()
            .remove("num_bikes_available_types");
        assert!(
            gbfs::parse_status(&bytes(&payload(vec![row]))).is_err(),
            "{broken}"
        );
    }
}

/// `vehicle_types_available` is kept by type id: a type listed twice is
/// summed; a record on its own listing too many types, or a type id too
/// long to be a record's key, is refused naming the station and the field
/// (it has no snapshot to be noted in).
#[test]
fn vehicle_types_by_id_are_kept_summed_and_bounded() {
    let record = |types: Value| {
        bytes(
            &json!({"station_id": "a", "num_vehicles_available": 6, "num_docks_available": 1,
            "vehicle_types_available": types, "is_installed": true, "is_renting": true, "is_returning": true}),
        )
    };
    let status = gbfs::parse_station_record(&record(json!([
        {"vehicle_type_id": "city", "count": 2},
        {"vehicle_type_id": "cargo", "count": 1},
        {"vehicle_type_id": "city", "count": 3},
        {"vehicle_type_id": "scooter", "count": 0},
    ])))
    .unwrap();
    assert_eq!(
        status.vehicle_types,
        [
            ("cargo".to_owned(), 1),
            ("city".to_owned(), 5),
            ("scooter".to_owned(), 0)
        ]
        .into()
    );
    // A Vélib' feed's named counts are its bike types, not type ids.
    let velib = gbfs::parse_station_record(&bytes(&velib_row(1, "16107", 2, 1))).unwrap();
    assert!(velib.vehicle_types.is_empty());

    let many: Vec<Value> = (0..=gbfs_feed::MAX_VEHICLE_TYPES)
        .map(|i| json!({"vehicle_type_id": format!("t{i}"), "count": 1}))
        .collect();
    let problem = field_err(
        gbfs::parse_station_record(&record(Value::Array(many))),
        FeedKind::StationStatus,
        Some("a"),
        "vehicle_types_available",
    );
    assert!(out_of_range(&problem), "{problem:?}");
    let long = "x".repeat(gbfs_feed::MAX_VEHICLE_TYPE_ID_LEN + 1);
    let problem = field_err(
        gbfs::parse_station_record(&record(json!([{"vehicle_type_id": long, "count": 1}]))),
        FeedKind::StationStatus,
        Some("a"),
        "vehicle_types_available[0].vehicle_type_id",
    );
    assert!(out_of_range(&problem), "{problem:?}");
    // Counts are counts: negative or fractional ones are refused.
    for count in [json!(-1), json!(1.5), json!("2")] {
        field_err(
            gbfs::parse_station_record(&record(
                json!([{"vehicle_type_id": "city", "count": count}]),
            )),
            FeedKind::StationStatus,
            Some("a"),
            "vehicle_types_available[0].count",
        );
    }
}
