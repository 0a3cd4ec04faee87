//! The live page's server against bad and greedy clients: each gets a clear
//! answer or is dropped, and the server keeps serving the others, with no
//! unbounded buffer for any of them. And a browser that reconnects catches
//! up from a fresh snapshot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use velib_dataflow::output::PostcodeRecord;
use velib_dataflow::web::committed::CommittedEpoch;
use velib_dataflow::web::events::{EventHub, QUEUE_EVENTS};
use velib_dataflow::web::server::{serve, MAX_CLIENTS, MAX_STREAMS};

fn start() -> (SocketAddr, EventHub) {
    let hub = EventHub::default();
    let addr = serve("127.0.0.1:0".parse().unwrap(), hub.clone()).unwrap();
    (addr, hub)
}

fn ask(addr: SocketAddr, request: &[u8]) -> String {
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer and close before reading all of a large
    // request: a failed write is part of the exchange.
    let _ = client.write_all(request);
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    ask(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// An epoch in which `postcodes` postcodes change, each record `epoch` big.
fn epoch_changing(epoch: u64, postcodes: usize) -> CommittedEpoch {
    let mut e = CommittedEpoch::empty(epoch);
    for i in 0..postcodes {
        let record: PostcodeRecord = serde_json::from_value(serde_json::json!({
            "postcode": format!("{:05}", 75000 + i), "nbr_total": epoch, "nbr_meca": 0, "nbr_elec": 0,
            "nbr_docks": 0, "nbr_stations": 1, "nbr_stations_renting": 1, "nbr_stations_not_renting": 0,
            "nbr_bikes_unavailable": 0, "nbr_stations_inferred": 0, "epoch": epoch, "feed_time": 1_732_004_538
        }))
        .unwrap();
        e.postcodes.insert(record.postcode.clone(), Some(record));
    }
    e.feed_time = Some(1_732_004_538);
    e
}

/// A browser following `/events`: reads the stream's events.
struct Follower {
    reader: BufReader<TcpStream>,
}

impl Follower {
    fn connect(addr: SocketAddr) -> Follower {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Content-Type: text/event-stream"), "{head}");
        Follower { reader }
    }

    /// The next event's name and data (comments and `retry` skipped).
    fn next(&mut self) -> (String, serde_json::Value) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "the stream ended"
            );
            let line = line.trim_end_matches('\n');
            if line.is_empty() && !data.is_empty() {
                return (name, serde_json::from_str(&data).unwrap());
            } else if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
    }
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary_alone() {
    let (addr, _) = start();
    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("Content-Type: text/html"));
    assert!(page.contains("Content-Security-Policy: default-src 'self'"));
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let asset = get(addr, path);
        assert!(asset.starts_with("HTTP/1.1 200 OK"), "{path}: {asset}");
        assert!(asset.contains(&format!("Content-Type: {kind}")), "{path}");
    }
    // Nothing the page loads is from elsewhere: no URL to another server
    // in any asset (the SVG namespace is a name, never fetched).
    for path in ["/", "/app.js", "/style.css"] {
        let body = get(addr, path);
        let outside = body
            .replace("http://www.w3.org/2000/svg", "")
            .replace("http://www.w3.org/1999/xlink", "");
        for scheme in ["http://", "https://", "//cdn", "@import"] {
            assert!(!outside.contains(scheme), "{path} refers to {scheme}");
        }
    }
    let state = get(addr, "/api/state");
    let json: serde_json::Value =
        serde_json::from_str(state.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["epoch"], serde_json::Value::Null, "no epoch yet");
    // HEAD: the head only.
    let head = ask(addr, b"HEAD / HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
}

#[test]
fn bad_requests_get_clear_statuses_and_the_server_keeps_serving() {
    let (addr, _) = start();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"POST /api/state HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            "405",
        ),
        (b"DELETE / HTTP/1.1\r\n\r\n".to_vec(), "405"),
        (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n".to_vec(), "404"),
        (b"GET /nothing HTTP/1.1\r\n\r\n".to_vec(), "404"),
        (b"GET / HTTP/1.1 extra\r\n\r\n".to_vec(), "400"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            "400",
        ),
        (b"GET /\xc3\x28 HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (b"GET / HTTP/1.1\r\nHost: x".to_vec(), "400"),
    ];
    for (request, status) in cases {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(&request).unwrap();
        // Half-closed: the truncated request ends here.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{}: {answer}",
            String::from_utf8_lossy(&request)
        );
    }
    assert!(ask(addr, b"PUT / HTTP/1.1\r\n\r\n").contains("Allow: GET, HEAD"));
    let mut huge = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    assert!(ask(addr, &huge).starts_with("HTTP/1.1 431"));
    // A client that says nothing is answered 408 in time, and meanwhile
    // delays nobody.
    let mut idle = TcpStream::connect(addr).unwrap();
    assert!(get(addr, "/api/state").starts_with("HTTP/1.1 200"));
    let mut answer = String::new();
    let _ = idle.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn too_many_clients_are_turned_away_and_the_server_serves_again_once_they_are_gone() {
    let (addr, _) = start();
    let idle: Vec<TcpStream> = (0..MAX_CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Let the server take them all before the next.
    std::thread::sleep(Duration::from_millis(500));
    assert!(get(addr, "/").starts_with("HTTP/1.1 503"));
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(addr, "/").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the server serves again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client that sends its head a byte at a time, each within the read
/// timeout, is cut off all the same: the whole head has one deadline.
#[test]
fn a_client_trickling_its_request_is_cut_off() {
    let (addr, _) = start();
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    let mut answer = Vec::new();
    // Far more than the head's deadline, far less than its size limit.
    for _ in 0..120 {
        if client.write_all(b"x").is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn event_streams_are_bounded_and_leave_room_for_pages() {
    let (addr, hub) = start();
    let followers: Vec<Follower> = (0..MAX_STREAMS).map(|_| Follower::connect(addr)).collect();
    assert!(get(addr, "/events").starts_with("HTTP/1.1 503"));
    assert!(get(addr, "/api/state").starts_with("HTTP/1.1 200"));
    assert_eq!(hub.followers(), MAX_STREAMS);
    drop(followers);
}

#[test]
fn a_follower_gets_a_snapshot_then_every_epoch_and_catches_up_when_it_comes_back() {
    let (addr, hub) = start();
    hub.publish(epoch_changing(1, 3));
    let mut follower = Follower::connect(addr);
    let (name, snapshot) = follower.next();
    assert_eq!(
        (name.as_str(), snapshot["epoch"].as_u64()),
        ("snapshot", Some(1))
    );
    assert_eq!(snapshot["postcodes"].as_object().unwrap().len(), 3);
    for epoch in 2..=4 {
        hub.publish(epoch_changing(epoch, 2));
    }
    for epoch in 2..=4 {
        let (name, event) = follower.next();
        assert_eq!(
            (name.as_str(), event["epoch"].as_u64()),
            ("epoch", Some(epoch))
        );
        assert_eq!(event["postcodes"]["75000"]["nbr_total"], epoch);
        assert_eq!(event["history_entry"]["epoch"], epoch);
    }
    // Gone while epochs 5 and 6 were committed; back, it starts from them.
    drop(follower);
    hub.publish(epoch_changing(5, 1));
    hub.publish(epoch_changing(6, 1));
    let mut back = Follower::connect(addr);
    let (name, snapshot) = back.next();
    assert_eq!(
        (name.as_str(), snapshot["epoch"].as_u64()),
        ("snapshot", Some(6))
    );
    assert_eq!(snapshot["postcodes"]["75000"]["nbr_total"], 6);
    assert_eq!(
        snapshot["postcodes"]["75002"]["nbr_total"], 1,
        "epoch 1's, kept"
    );
    assert_eq!(snapshot["history"].as_array().unwrap().len(), 6);
}

#[test]
fn a_follower_that_never_reads_is_dropped_and_the_others_get_every_epoch() {
    let (addr, hub) = start();
    let mut reading = Follower::connect(addr);
    assert_eq!(reading.next().0, "snapshot");
    // Connected, and never reads a byte.
    let stuck = Follower::connect(addr);
    // Big events fill the socket buffers of the one not reading, then its queue.
    let mut epoch = 0;
    while hub.followers() == 2 {
        epoch += 1;
        assert!(
            epoch <= 50 * QUEUE_EVENTS as u64,
            "a follower that never reads is dropped once its queue is full"
        );
        hub.publish(epoch_changing(epoch, 2_000));
        let (name, event) = reading.next();
        assert_eq!(
            (name.as_str(), event["epoch"].as_u64()),
            ("epoch", Some(epoch))
        );
    }
    assert_eq!(hub.followers(), 1);
    assert_eq!(hub.dropped(), 1);
    drop(stuck);
    hub.publish(epoch_changing(epoch + 1, 1));
    assert_eq!(reading.next().1["epoch"].as_u64(), Some(epoch + 1));
}
