//! Polling recorded real feeds from a local HTTP server: discovery, the
//! information refreshed when due, conditional requests, and every way a
//! feed can go wrong while polling. Each gives a specific error, and the
//! next poll works.

// The root package's scripted test server: plain std and serde_json, shared
// rather than written twice.
#[allow(dead_code)]
#[path = "../../../tests/common/http.rs"]
mod http;

use gbfs_feed::fetch::FetchConfig;
use gbfs_feed::poll::{
    FeedLocation, FeedPoller, PollConfig, PollError, Polled, PolledStatus, MAX_REJECTED_BODY_BYTES,
};
use gbfs_feed::{FeedError, StationId};
use http::{FeedServer, Reply};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

const OSLO_STATUS: &str = "gbfs/oslo/station_status.json";
const OSLO_INFORMATION: &str = "gbfs/oslo/station_information.json";

fn quick(location: FeedLocation) -> PollConfig {
    let mut config = PollConfig::new(location);
    config.fetch = FetchConfig {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(800),
        max_bytes: 4 << 20,
        ..FetchConfig::default()
    };
    config
}

/// Polls `server`'s Oslo discovery file, in Norwegian.
fn oslo(server: &FeedServer) -> PollConfig {
    server.script("/gbfs.json", [Reply::ok(http::discovery(server))]);
    quick(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: Some("nb".into()),
    })
}

fn status(polled: Result<Polled, PollError>) -> PolledStatus {
    match polled {
        Ok(Polled::Status(polled)) => polled,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn discovery_finds_both_feeds_and_the_information_comes_with_the_status() {
    let server = FeedServer::start();
    let config = oslo(&server);
    server.script("/nb/station_status.json", [Reply::ok(fixture(OSLO_STATUS))]);
    server.script(
        "/nb/station_information.json",
        [Reply::ok(fixture(OSLO_INFORMATION))],
    );
    let mut poller = FeedPoller::new(config).unwrap();
    assert_eq!(poller.status_url(), None);
    let polled = status(poller.poll());
    assert_eq!(
        poller.status_url(),
        Some(server.url("/nb/station_status.json").as_str())
    );
    assert_eq!(
        poller.information_url(),
        Some(server.url("/nb/station_information.json").as_str())
    );
    // The status's ttl (10 s) sets the interval, over the discovery's 15 s.
    assert_eq!(poller.interval(), Duration::from_secs(10));
    assert_eq!(polled.status.stations.len(), 260);
    let information = polled.information.expect("the information was due");
    assert!(!information.stations.is_empty());
    assert!(polled.information_error.is_none());
    let sogn = StationId::Text("2351".into());
    assert!(polled.feed_fields[&sogn].contains_key("num_docks_available"));
    // The next poll uses the URLs found: no second discovery.
    status(poller.poll());
    assert_eq!(server.seen("/gbfs.json").len(), 1);
}

#[test]
fn the_information_is_refreshed_when_the_status_names_a_station_it_lacks() {
    let server = FeedServer::start();
    let mut config = oslo(&server);
    config.unknown_station_refresh = Duration::ZERO;
    server.script("/nb/station_status.json", [Reply::ok(fixture(OSLO_STATUS))]);
    let information = fixture(OSLO_INFORMATION);
    let mut partial: serde_json::Value = serde_json::from_slice(&information).unwrap();
    let removed = partial["data"]["stations"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let missing = StationId::Text(removed["station_id"].as_str().unwrap().to_owned());
    server.script(
        "/nb/station_information.json",
        [
            Reply::ok(serde_json::to_vec(&partial).unwrap()),
            Reply::ok(information),
        ],
    );
    let mut poller = FeedPoller::new(config).unwrap();
    let knows = |polled: &PolledStatus| {
        let information = polled.information.as_ref().unwrap();
        information.stations.iter().any(|s| s.station_id == missing)
    };
    assert!(!knows(&status(poller.poll())));
    assert!(knows(&status(poller.poll())));
    assert_eq!(server.seen("/nb/station_information.json").len(), 2);
    // Every station is known now: no third information request, and the
    // information held comes with the status.
    assert!(knows(&status(poller.poll())));
    assert_eq!(server.seen("/nb/station_information.json").len(), 2);
}

#[test]
fn a_discovery_file_without_a_station_status_says_so_and_names_the_language() {
    let server = FeedServer::start();
    let information_only = serde_json::json!({
        "last_updated": 1666551803, "ttl": 15, "version": "2.2",
        "data": {"en": {"feeds": [
            {"name": "station_information", "url": server.url("/en/station_information.json")},
        ]}}
    });
    server.script(
        "/gbfs.json",
        [Reply::ok(serde_json::to_vec(&information_only).unwrap())],
    );
    let poll = |language: Option<&str>| {
        FeedPoller::new(quick(FeedLocation::Discover {
            url: server.url("/gbfs.json"),
            language: language.map(str::to_owned),
        }))
        .unwrap()
        .poll()
        .unwrap_err()
    };
    let e = poll(None);
    assert!(matches!(e, PollError::NoStatusFeed { .. }), "{e:?}");
    assert_eq!(e.reason(), "no_status_feed");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the discovery file lists no station_status feed",
            server.url("/gbfs.json")
        )
    );
    // A language the file does not have: the same error, naming it.
    let e = poll(Some("fr"));
    assert_eq!(e.reason(), "no_status_feed");
    assert!(e.to_string().ends_with(" in language \"fr\""), "{e}");
}

#[test]
fn an_unchanged_status_is_not_modified_and_the_information_is_not_asked_again() {
    let server = FeedServer::start();
    let config = oslo(&server);
    server.script(
        "/nb/station_status.json",
        [Reply::Etag("\"v1\"".into(), fixture(OSLO_STATUS))],
    );
    server.script(
        "/nb/station_information.json",
        [Reply::ok(fixture(OSLO_INFORMATION))],
    );
    let mut poller = FeedPoller::new(config).unwrap();
    status(poller.poll());
    assert!(matches!(poller.poll(), Ok(Polled::NotModified)));
    assert!(matches!(poller.poll(), Ok(Polled::NotModified)));
    let seen = server.seen("/nb/station_status.json");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
    assert_eq!(server.seen("/nb/station_information.json").len(), 1);
}

/// Discovery is never conditional: a 304 to it is a server saying nothing,
/// an error, and no panic.
#[test]
fn a_304_to_the_discovery_file_is_an_error() {
    let server = FeedServer::start();
    server.script("/gbfs.json", [Reply::Status(304, vec![])]);
    let e = FeedPoller::new(quick(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: None,
    }))
    .unwrap()
    .poll()
    .unwrap_err();
    assert!(matches!(e, PollError::Fetch(_)), "{e:?}");
    assert_eq!(e.reason(), "unexpected_status", "{e}");
}

#[test]
fn a_truncated_status_is_rejected_with_its_body_and_asked_for_whole_next_time() {
    let server = FeedServer::start();
    let good = fixture(OSLO_STATUS);
    let truncated = good[..good.len() / 3].to_vec();
    // The same validators on both: a cut body must not make the whole one
    // "not modified".
    server.script(
        "/s",
        [
            Reply::Etag("\"v1\"".into(), truncated.clone()),
            Reply::Etag("\"v1\"".into(), good),
        ],
    );
    let mut poller = FeedPoller::new(quick(FeedLocation::Explicit {
        status: server.url("/s"),
        information: None,
    }))
    .unwrap();
    let e = poller.poll().unwrap_err();
    assert_eq!(e.reason(), "invalid_json");
    let PollError::Rejected { url, body, source } = &e else {
        panic!("expected a rejected payload, got {e:?}")
    };
    assert_eq!(url, &server.url("/s"));
    assert_eq!(&**body, &truncated[..]);
    assert!(matches!(**source, FeedError::Json { .. }));
    assert!(e.to_string().starts_with(&format!("{url}: ")), "{e}");
    let polled = status(poller.poll());
    assert_eq!(polled.status.stations.len(), 260);
    assert!(polled.information.is_none());
    let seen = server.seen("/s");
    assert!(!seen[1].headers.contains_key("if-none-match"));
}

#[test]
fn a_large_invalid_body_is_kept_cut_and_an_invalid_status_names_its_field() {
    let server = FeedServer::start();
    let junk = vec![b'x'; MAX_REJECTED_BODY_BYTES * 2];
    let negative = br#"{"last_updated": 1, "data": {"stations": [{"station_id": 7,
        "num_bikes_available": -1, "num_docks_available": 0,
        "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#;
    server.script("/s", [Reply::ok(junk.clone()), Reply::ok(&negative[..])]);
    let mut poller = FeedPoller::new(quick(FeedLocation::Explicit {
        status: server.url("/s"),
        information: None,
    }))
    .unwrap();
    match poller.poll() {
        Err(PollError::Rejected { body, .. }) => {
            assert_eq!(&*body, &junk[..MAX_REJECTED_BODY_BYTES]);
        }
        other => panic!("expected a rejected payload, got {other:?}"),
    }
    let e = poller.poll().unwrap_err();
    assert_eq!(e.reason(), "invalid_field");
    assert!(e.to_string().contains("num_bikes_available"), "{e}");
}

#[test]
fn a_failing_information_feed_leaves_the_status_and_the_information_held() {
    let server = FeedServer::start();
    let mut config = oslo(&server);
    // Due at every poll, to see each failure.
    config.information_interval = Duration::ZERO;
    server.script("/nb/station_status.json", [Reply::ok(fixture(OSLO_STATUS))]);
    server.script(
        "/nb/station_information.json",
        [
            Reply::Status(503, vec![]),
            Reply::ok(fixture(OSLO_INFORMATION)),
            Reply::ok(&b"{\"data\": {\"stations\": ["[..]),
            Reply::Status(429, vec![("Retry-After".into(), "3".into())]),
        ],
    );
    let mut poller = FeedPoller::new(config).unwrap();
    // Nothing held yet: the status alone, and why.
    let first = status(poller.poll());
    assert_eq!(first.status.stations.len(), 260);
    assert!(first.information.is_none());
    assert_eq!(
        first.information_error.as_ref().map(PollError::reason),
        Some("server_error")
    );
    let second = status(poller.poll());
    let held = second.information.clone().unwrap();
    assert!(second.information_error.is_none());
    // A broken information payload: rejected with its body, the one held
    // still used.
    let third = status(poller.poll());
    match &third.information_error {
        Some(PollError::Rejected { url, body, .. }) => {
            assert_eq!(url, &server.url("/nb/station_information.json"));
            assert_eq!(&**body, b"{\"data\": {\"stations\": [");
        }
        other => panic!("expected a rejected information, got {other:?}"),
    }
    assert_eq!(third.information.as_deref(), Some(&*held));
    let fourth = status(poller.poll());
    let e = fourth.information_error.unwrap();
    assert_eq!(e.reason(), "rate_limited");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(fourth.information.as_deref(), Some(&*held));
}

#[test]
fn a_status_url_given_as_the_feed_is_polled_with_its_own_information() {
    let server = FeedServer::start();
    server.script(
        "/paris.json",
        [Reply::ok(fixture(
            "opendata-paris/velib-series/velib_data_20241105_093001.json",
        ))],
    );
    let mut poller = FeedPoller::new(quick(FeedLocation::Discover {
        url: server.url("/paris.json"),
        language: None,
    }))
    .unwrap();
    let polled = status(poller.poll());
    assert_eq!(
        poller.status_url(),
        Some(server.url("/paris.json").as_str())
    );
    assert_eq!(poller.information_url(), None);
    // The body read as discovery was used as the first status: one request.
    assert_eq!(server.seen("/paris.json").len(), 1);
    let information = polled.information.unwrap();
    assert_eq!(information.stations.len(), polled.status.stations.len());
    for station in &polled.status.stations {
        assert!(polled.feed_fields[&station.station_id].contains_key("stationcode"));
    }
}

#[test]
fn a_discovery_that_is_neither_is_rejected_and_the_next_poll_discovers_again() {
    let server = FeedServer::start();
    server.script(
        "/gbfs.json",
        [
            Reply::ok(&b"<html>maintenance</html>"[..]),
            Reply::ok(http::discovery(&server)),
        ],
    );
    server.script("/nb/station_status.json", [Reply::ok(fixture(OSLO_STATUS))]);
    let mut poller = FeedPoller::new(quick(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: Some("nb".into()),
    }))
    .unwrap();
    let e = poller.poll().unwrap_err();
    assert_eq!(e.reason(), "invalid_json");
    let PollError::Rejected { body, .. } = &e else {
        panic!("expected a rejected discovery, got {e:?}")
    };
    assert_eq!(&**body, b"<html>maintenance</html>");
    assert_eq!(poller.status_url(), None);
    status(poller.poll());
    assert_eq!(server.seen("/gbfs.json").len(), 2);
}

/// A v3 system that lists `vehicle_types.json`: its vehicles are counted by
/// what the system says each type is (ids chosen to mislead a guess), a
/// type it does not define is another vehicle, named; while the types
/// cannot be read, the status is still polled and the ids guessed from.
#[test]
fn vehicles_are_counted_by_the_systems_own_vehicle_types() {
    let server = FeedServer::start();
    let discovery = serde_json::json!({
        "last_updated": "2024-11-19T08:22:18Z", "ttl": 60, "version": "3.0",
        "data": {"feeds": [
            {"name": "station_status", "url": server.url("/station_status.json")},
            {"name": "vehicle_types", "url": server.url("/vehicle_types.json")},
        ]}
    });
    server.script(
        "/gbfs.json",
        [Reply::ok(serde_json::to_vec(&discovery).unwrap())],
    );
    let status_payload = serde_json::json!({
        "last_updated": "2024-11-19T08:22:18Z", "ttl": 60, "version": "3.0",
        "data": {"stations": [
            {"station_id": "s1", "num_vehicles_available": 6, "vehicle_types_available": [
                {"vehicle_type_id": "ebike-classic", "count": 3},
                {"vehicle_type_id": "plain", "count": 2},
                {"vehicle_type_id": "bike-scooter", "count": 1}],
             "is_installed": true, "is_renting": true, "is_returning": true,
             "last_reported": "2024-11-19T08:20:00Z"},
            {"station_id": "s2", "num_vehicles_available": 1, "vehicle_types_available": [
                {"vehicle_type_id": "never-defined", "count": 1}],
             "is_installed": true, "is_renting": true, "is_returning": true,
             "last_reported": "2024-11-19T08:20:00Z"}
        ]}
    });
    server.script(
        "/station_status.json",
        [Reply::ok(serde_json::to_vec(&status_payload).unwrap())],
    );
    let types = serde_json::json!({
        "last_updated": "2024-11-19T08:00:00Z", "ttl": 3600, "version": "3.0",
        "data": {"vehicle_types": [
            {"vehicle_type_id": "ebike-classic", "form_factor": "bicycle", "propulsion_type": "human",
             "name": [{"text": "Classic", "language": "en"}]},
            {"vehicle_type_id": "plain", "form_factor": "cargo_bicycle", "propulsion_type": "electric_assist",
             "max_range_meters": 50000},
            {"vehicle_type_id": "bike-scooter", "form_factor": "scooter_standing", "propulsion_type": "electric",
             "max_range_meters": 20000}
        ]}
    });
    server.script(
        "/vehicle_types.json",
        [
            Reply::Status(503, vec![]),
            Reply::ok(&b"{\"data\": {\"vehicle_types\": ["[..]),
            Reply::ok(serde_json::to_vec(&types).unwrap()),
        ],
    );
    let mut config = quick(FeedLocation::Discover {
        url: server.url("/gbfs.json"),
        language: None,
    });
    // Hourly, as by default; but while none is read, or a status names a
    // type they lack, asked again at the unknown-station pace (here: each poll).
    config.information_interval = Duration::from_secs(3600);
    config.unknown_station_refresh = Duration::ZERO;
    let mut poller = FeedPoller::new(config).unwrap();
    let s1 = StationId::Text("s1".into());
    let types_of = |polled: &PolledStatus| {
        let station = polled
            .status
            .stations
            .iter()
            .find(|s| s.station_id == s1)
            .unwrap();
        let t = station.bike_types.unwrap();
        (t.mechanical, t.ebike, t.other)
    };

    // Unavailable: the status all the same, the ids guessed, and why.
    let first = status(poller.poll());
    assert_eq!(
        first.vehicle_types_error.as_ref().map(PollError::reason),
        Some("server_error")
    );
    assert_eq!(
        types_of(&first),
        (1, 3, 2),
        "guessed: 'ebike-…' an e-bike, 'bike-…' a bike"
    );
    assert!(first.status.undefined_vehicle_types.is_empty());
    // Broken: rejected, with its body; still guessed.
    let second = status(poller.poll());
    match &second.vehicle_types_error {
        Some(PollError::Rejected { url, .. }) => {
            assert_eq!(url, &server.url("/vehicle_types.json"))
        }
        other => panic!("expected rejected vehicle types, got {other:?}"),
    }
    assert_eq!(types_of(&second), (1, 3, 2));
    // Read: counted as the system defines them.
    let third = status(poller.poll());
    assert!(
        third.vehicle_types_error.is_none(),
        "{:?}",
        third.vehicle_types_error
    );
    assert_eq!(
        types_of(&third),
        (3, 2, 1),
        "human bicycle, e-assisted cargo bike, a scooter"
    );
    assert_eq!(
        third.status.undefined_vehicle_types,
        [(StationId::Text("s2".into()), "never-defined".to_owned())]
    );
    // s2's type is still not defined: the types are asked for again.
    let fourth = status(poller.poll());
    assert!(fourth.vehicle_types_error.is_none());
    assert_eq!(server.seen("/vehicle_types.json").len(), 4);
    assert!(
        first.information_error.is_none(),
        "no information feed: nothing to say"
    );
}
