//! Fetching and polling real recorded feeds from a local HTTP server, and
//! every way a server can misbehave: each gives a specific error, and the
//! next request works.

mod common;

use common::http::{FeedServer, Reply};
use std::time::Duration;
use velib_dataflow::consistency::Inconsistency;
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::feed::StationId;
use velib_dataflow::fetch::{FeedFetcher, FetchConfig, FetchError, Fetched};
use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::snapshot::StationSelection;
use velib_dataflow::snapshot_source::{PollError, PollOutcome};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join(path)).unwrap()
}

fn quick() -> FetchConfig {
    FetchConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(800),
        max_bytes: 4 << 20,
        ..FetchConfig::default()
    }
}

const STATUS: &str = "gbfs/velib/2024-11-19/station_status.json";

#[test]
fn every_kind_of_bad_response_gives_its_own_error_and_the_next_request_works() {
    let server = FeedServer::start();
    let good = fixture(STATUS);
    server.script(
        "/s",
        [
            Reply::Status(500, vec![]),
            Reply::Status(503, vec![]),
            Reply::Status(404, vec![]),
            Reply::Status(429, vec![("Retry-After".into(), "3".into())]),
            Reply::Slow(Duration::from_secs(3), good.clone()),
            Reply::Cut(good.clone()),
            Reply::Declared(5 << 20),
            Reply::Endless(8 << 20),
            Reply::Gzip(good.clone()),
            Reply::ok(good.clone()),
        ],
    );
    let mut fetcher = FeedFetcher::new(quick()).unwrap();
    let url = server.url("/s");
    let mut reasons = Vec::new();
    for _ in 0..8 {
        let e = fetcher.fetch(&url).unwrap_err();
        if let FetchError::RateLimited { retry_after, .. } = &e {
            assert_eq!(*retry_after, Some(Duration::from_secs(3)));
        }
        assert!(e.to_string().contains(&url), "{e} names the URL");
        reasons.push(e.reason());
    }
    assert_eq!(
        reasons,
        [
            "server_error",
            "server_error",
            "client_error",
            "rate_limited",
            "timeout",
            "truncated_body",
            "too_large",
            "too_large"
        ]
    );
    // gzip is decoded, and a plain body too.
    assert_eq!(fetcher.fetch(&url).unwrap(), Fetched::Body(good.clone()));
    assert_eq!(fetcher.fetch(&url).unwrap(), Fetched::Body(good));
    let seen = server.seen("/s");
    assert!(seen[0].headers["accept-encoding"].contains("gzip"));
}

#[test]
fn conditional_requests_use_the_etag_and_an_unchanged_feed_is_not_modified() {
    let server = FeedServer::start();
    let body = fixture(STATUS);
    server.script(
        "/s",
        [
            Reply::Etag("\"v1\"".into(), body.clone()),
            Reply::Etag("\"v1\"".into(), body.clone()),
            Reply::Body(
                body.clone(),
                vec![(
                    "Last-Modified".into(),
                    "Tue, 19 Nov 2024 08:22:18 GMT".into(),
                )],
            ),
            Reply::ok(body.clone()),
        ],
    );
    let mut fetcher = FeedFetcher::new(quick()).unwrap();
    let url = server.url("/s");
    assert_eq!(fetcher.fetch(&url).unwrap(), Fetched::Body(body.clone()));
    assert_eq!(fetcher.fetch(&url).unwrap(), Fetched::NotModified);
    assert_eq!(fetcher.fetch(&url).unwrap(), Fetched::Body(body));
    fetcher.fetch(&url).unwrap();
    let seen = server.seen("/s");
    assert!(!seen[0].headers.contains_key("if-none-match"));
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
    assert_eq!(
        seen[3].headers["if-modified-since"],
        "Tue, 19 Nov 2024 08:22:18 GMT"
    );
}

fn resolver() -> DirectoryResolver {
    DirectoryResolver::new(PostcodeTable::velib(), true)
}

fn snapshot(
    outcome: Result<PollOutcome, PollError>,
) -> velib_dataflow::snapshot_source::PolledSnapshot {
    match outcome {
        Ok(PollOutcome::Snapshot(s)) => s,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[test]
fn oslo_through_discovery_with_information_refreshed_on_an_unknown_station() {
    let server = FeedServer::start();
    server.script("/gbfs.json", [Reply::ok(common::http::discovery(&server))]);
    let mut series: Vec<_> = std::fs::read_dir(common::fixtures().join("gbfs/oslo/series"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    series.sort();
    server.script(
        "/nb/station_status.json",
        series
            .iter()
            .take(3)
            .map(|p| Reply::ok(std::fs::read(p).unwrap())),
    );
    // The information first lacks one station of the status.
    let information = fixture("gbfs/oslo/station_information.json");
    let mut partial: serde_json::Value = serde_json::from_slice(&information).unwrap();
    let removed = partial["data"]["stations"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    server.script(
        "/nb/station_information.json",
        [
            Reply::ok(serde_json::to_vec(&partial).unwrap()),
            Reply::ok(information),
        ],
    );
    let mut config = PollConfig::new(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: Some("nb".into()),
    });
    config.fetch = quick();
    config.unknown_station_refresh = Duration::ZERO;
    let mut poller = FeedPoller::new(config, resolver()).unwrap();
    let first = snapshot(poller.poll());
    assert_eq!(
        poller.status_url(),
        Some(server.url("/nb/station_status.json").as_str())
    );
    // The status's ttl (10 s) sets the interval.
    assert_eq!(poller.interval(), Duration::from_secs(10));
    assert_eq!(first.snapshot.statuses.len(), 260);
    let missing = StationId::Text(removed["station_id"].as_str().unwrap().to_owned());
    let entry = |s: &velib_dataflow::snapshot_source::PolledSnapshot| {
        s.snapshot
            .directory
            .as_ref()
            .unwrap()
            .iter()
            .find(|d| d.station_id == missing)
            .cloned()
            .unwrap()
    };
    // Known from its status only: no name yet, and said so.
    assert_eq!(entry(&first).name, "");
    let without = Inconsistency::StatusWithoutInformation;
    assert_eq!(
        first.inconsistencies.stations(without),
        std::slice::from_ref(&missing)
    );
    assert!(first.feed_fields[&missing].contains_key("num_docks_available"));
    let second = snapshot(poller.poll());
    assert_eq!(entry(&second).name, removed["name"].as_str().unwrap());
    assert_eq!(second.inconsistencies.count(without), 0);
    assert_eq!(server.seen("/nb/station_information.json").len(), 2);
    // Every station is known now: no third information request.
    snapshot(poller.poll());
    assert_eq!(server.seen("/nb/station_information.json").len(), 2);
}

#[test]
fn a_status_url_given_as_the_feed_is_polled_and_a_selection_keeps_its_stations() {
    let server = FeedServer::start();
    server.script(
        "/paris.json",
        [Reply::ok(fixture(
            "opendata-paris/velib-series/velib_data_20241105_093001.json",
        ))],
    );
    let mut config = PollConfig::new(FeedLocation::Discover {
        url: server.url("/paris.json"),
        language: None,
    });
    config.fetch = quick();
    let mut poller = FeedPoller::new(config, resolver())
        .unwrap()
        .selecting(StationSelection::only(["16107", "32017"]));
    let polled = snapshot(poller.poll());
    let codes: Vec<_> = polled
        .snapshot
        .statuses
        .iter()
        .map(|s| s.code.clone().unwrap())
        .collect();
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert!(codes.contains(&"16107".to_owned()));
    assert_eq!(polled.snapshot.directory.unwrap().len(), 2);
    for status in &polled.snapshot.statuses {
        assert!(polled.feed_fields[&status.station_id].contains_key("stationcode"));
    }
}

#[test]
fn a_discovery_without_the_language_or_a_status_says_so() {
    let server = FeedServer::start();
    server.script("/gbfs.json", [Reply::ok(common::http::discovery(&server))]);
    server.script("/junk", [Reply::ok(&b"<html>maintenance</html>"[..])]);
    let poll = |url: String, language: Option<&str>| {
        let mut config = PollConfig::new(FeedLocation::Discover {
            url,
            language: language.map(str::to_owned),
        });
        config.fetch = quick();
        FeedPoller::new(config, resolver()).unwrap().poll()
    };
    let e = poll(server.url("/gbfs.json"), Some("fr")).unwrap_err();
    assert_eq!(e.reason(), "no_status_feed");
    assert!(e.to_string().contains("\"fr\""), "{e}");
    let e = poll(server.url("/junk"), None).unwrap_err();
    assert_eq!(e.reason(), "invalid_json");
    let e = poll("http://127.0.0.1:9/gbfs.json".into(), None).unwrap_err();
    assert_eq!(e.reason(), "connect");
}

/// A 304 to a request that asked for nothing conditional is not "unchanged":
/// it is an error, for a plain fetch and for discovery, and no panic.
#[test]
fn a_304_to_an_unconditional_request_is_an_error() {
    let server = FeedServer::start();
    server.script(
        "/s",
        [Reply::Status(304, vec![]), Reply::ok(fixture(STATUS))],
    );
    server.script("/gbfs.json", [Reply::Status(304, vec![])]);
    let mut fetcher = FeedFetcher::new(quick()).unwrap();
    let url = server.url("/s");
    let e = fetcher.fetch(&url).unwrap_err();
    assert_eq!(e.reason(), "unexpected_status", "{e}");
    assert!(matches!(fetcher.fetch(&url).unwrap(), Fetched::Body(_)));

    let mut config = PollConfig::new(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: None,
    });
    config.fetch = quick();
    let e = FeedPoller::new(config, resolver())
        .unwrap()
        .poll()
        .unwrap_err();
    assert_eq!(e.reason(), "unexpected_status", "{e}");
}

#[test]
fn what_the_status_and_information_files_disagree_on_is_named_by_kind() {
    let server = FeedServer::start();
    let dir = common::fixtures().join("gbfs/velib/2024-11-19");
    let mut status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("station_status.json")).unwrap()).unwrap();
    // One more bike than its types say.
    let first = &mut status["data"]["stations"][0];
    let bikes = first["num_bikes_available"].as_i64().unwrap();
    first["num_bikes_available"] = (bikes + 1).into();
    first["numBikesAvailable"] = (bikes + 1).into();
    let odd = StationId::Num(first["station_id"].as_u64().unwrap());
    let mut information: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("station_information.json")).unwrap())
            .unwrap();
    let stations = information["data"]["stations"].as_array_mut().unwrap();
    // One station without information, one with information only.
    let dropped = stations.remove(1);
    let mut extra = stations[0].clone();
    extra["station_id"] = 999_999_999u64.into();
    extra["stationCode"] = "99999".into();
    stations.push(extra);
    server.script(
        "/gbfs.json",
        [Reply::ok(
            serde_json::to_vec(&serde_json::json!({
                "lastUpdatedOther": 1732004538, "ttl": 3600,
                "data": {"en": {"feeds": [
                    {"name": "station_status", "url": server.url("/station_status.json")},
                    {"name": "station_information", "url": server.url("/station_information.json")},
                ]}}
            }))
            .unwrap(),
        )],
    );
    server.script(
        "/station_status.json",
        [Reply::ok(serde_json::to_vec(&status).unwrap())],
    );
    server.script(
        "/station_information.json",
        [Reply::ok(serde_json::to_vec(&information).unwrap())],
    );
    let mut config = PollConfig::new(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: None,
    });
    config.fetch = quick();
    let mut poller = FeedPoller::new(config, resolver()).unwrap();
    let polled = snapshot(poller.poll());
    let found = &polled.inconsistencies;
    assert_eq!(found.stations(Inconsistency::BikesNotSumOfTypes), [odd]);
    let dropped = StationId::Num(dropped["station_id"].as_u64().unwrap());
    assert_eq!(
        found.stations(Inconsistency::StatusWithoutInformation),
        std::slice::from_ref(&dropped)
    );
    assert_eq!(
        found.stations(Inconsistency::InformationWithoutStatus),
        [StationId::Num(999_999_999)]
    );
    // Nothing folded away: the station without information is counted,
    // under a postcode of its own status's or `unknown`, and every status
    // is in the snapshot.
    assert_eq!(polled.snapshot.statuses.len(), 1_485);
    assert!(polled
        .snapshot
        .directory
        .as_ref()
        .unwrap()
        .iter()
        .any(|d| d.station_id == dropped));
}

/// Serves `value` as JSON at `path`.
/// A GBFS v3 system's vehicles reach the snapshot counted by its own
/// `vehicle_types.json`, found through discovery, and a type it does not
/// define is named by kind (`undefined_vehicle_type`), counted as another
/// vehicle: in neither nbr_meca nor nbr_elec, still in nbr_total.
#[test]
fn a_v3_systems_vehicle_types_classify_its_bikes_and_an_undefined_one_is_named() {
    let server = FeedServer::start();
    common::serve_v3_system(&server);
    let mut config = PollConfig::new(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: None,
    });
    config.fetch = quick();
    let mut poller = FeedPoller::new(config, resolver()).unwrap();
    let polled = snapshot(poller.poll());
    let typed: Vec<(u32, u32, u32)> = polled
        .snapshot
        .statuses
        .iter()
        .map(|s| {
            let t = s.bike_types.unwrap();
            (t.mechanical, t.ebike, t.other)
        })
        .collect();
    // Numeric ids say nothing: only the system's types can tell.
    assert_eq!(typed, [(1, 3, 0), (0, 2, 2)]);
    assert_eq!(
        polled
            .inconsistencies
            .stations(Inconsistency::UndefinedVehicleType),
        [StationId::Text("b".into())]
    );
    let counts = velib_dataflow::reference::postcode_counts_from_scratch(
        &polled.snapshot.statuses,
        polled.snapshot.directory.as_deref().unwrap_or_default(),
    );
    let (bikes, meca, elec) = counts.values().fold((0, 0, 0), |t, c| {
        (
            t.0 + c.counts.bikes,
            t.1 + c.counts.mechanical,
            t.2 + c.counts.ebikes,
        )
    });
    assert_eq!((bikes, meca, elec), (8, 1, 5));
}
