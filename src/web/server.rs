//! The page's HTTP server: its embedded assets, the state as JSON, and the
//! committed epochs as Server-Sent Events.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page (`index.html`) |
//! | `/app.js`, `/style.css` | its script and style |
//! | `/api/state` | everything the page shows ([`super::page::Snapshot`]) |
//! | `/events` | `event: snapshot` first, then one `event: epoch` per committed epoch ([`super::page::EpochEvent`]) |
//!
//! Everything is in the binary; the page asks nothing of any other server,
//! and says so to the browser (`Content-Security-Policy: default-src
//! 'self'`). Only `GET` and `HEAD` are answered (`405` otherwise). The
//! server is bounded for every request (a head of at most 8 KiB, else
//! `431`; `400` for one that is not HTTP/1; `408` after 5 s of silence;
//! [`MAX_CLIENTS`] at once, else `503`); besides, at most
//! [`MAX_STREAMS`] browsers follow `/events` at once, and one that stops
//! reading is dropped (see [`super::events`]).

use super::events::EventHub;
use crate::http::{self, Response};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once, event streams included.
pub const MAX_CLIENTS: usize = 64;
/// Event streams at once: the rest of [`MAX_CLIENTS`] stay free for pages
/// and state requests.
pub const MAX_STREAMS: usize = 48;
/// A comment line is sent this often on a quiet stream, so that proxies and
/// the browser know it is alive, and a browser gone is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream whose browser takes longer than this to take a write is dropped.
pub const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// No other origin: the page works offline, and nothing it shows can load
/// anything from elsewhere.
const SECURITY: &[&str] = &[
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options: nosniff",
    "Cache-Control: no-store",
];

/// Serves the page of `hub` on `addr` from background threads, for as long
/// as the process runs. Returns the address bound (useful with port 0).
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use velib_dataflow::web::events::EventHub;
/// use velib_dataflow::web::server::serve;
///
/// let addr = serve("127.0.0.1:0".parse().unwrap(), EventHub::default())?;
/// let mut client = std::net::TcpStream::connect(addr)?;
/// client.write_all(b"GET /api/state HTTP/1.1\r\nHost: x\r\n\r\n")?;
/// let mut answer = String::new();
/// client.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200 OK"));
/// assert!(answer.contains(r#""epoch":null"#));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve(addr: SocketAddr, hub: EventHub) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let streams = Arc::new(AtomicUsize::new(0));
    http::serve_connections("velib-page", listener, MAX_CLIENTS, move |stream| {
        answer(&stream, &hub, &streams)
    })
}

fn answer(stream: &TcpStream, hub: &EventHub, streams: &AtomicUsize) -> std::io::Result<()> {
    let request = match http::read_request(stream)? {
        None => return Ok(()),
        Some(Err(bad)) => return http::refuse(stream, bad),
        Some(Ok(request)) => request,
    };
    if request.method != "GET" && !request.head_only() {
        let response = Response {
            headers: &["Allow: GET, HEAD"],
            ..Response::text("405 Method Not Allowed", "only GET and HEAD\n")
        };
        return response.write(stream, false);
    }
    let asset = |content_type, body: &'static str| Response {
        status: "200 OK",
        content_type,
        body: body.as_bytes(),
        headers: SECURITY,
    };
    let state;
    let response = match request.path.as_str() {
        "/" | "/index.html" => asset("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "/style.css" => asset("text/css; charset=utf-8", STYLE_CSS),
        "/api/state" => {
            state = hub.snapshot_json();
            Response {
                status: "200 OK",
                content_type: "application/json",
                body: state.as_bytes(),
                headers: SECURITY,
            }
        }
        "/events" if request.head_only() => Response {
            status: "200 OK",
            content_type: "text/event-stream",
            body: b"",
            headers: SECURITY,
        },
        "/events" => return follow(stream, hub, streams),
        // Browsers ask for one; the page has none, and says so quietly.
        "/favicon.ico" => Response::text("204 No Content", ""),
        _ => Response::text("404 Not Found", "the page is at /\n"),
    };
    response.write(stream, request.head_only())
}

/// Streams the committed epochs to one browser until it leaves, stops
/// reading, or is dropped by the hub.
fn follow(stream: &TcpStream, hub: &EventHub, streams: &AtomicUsize) -> std::io::Result<()> {
    if streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        streams.fetch_sub(1, Ordering::SeqCst);
        return Response::text("503 Service Unavailable", "too many event streams\n")
            .write(stream, false);
    }
    let result = stream_events(stream, hub);
    streams.fetch_sub(1, Ordering::SeqCst);
    result
}

fn stream_events(stream: &TcpStream, hub: &EventHub) -> std::io::Result<()> {
    stream.set_write_timeout(Some(STREAM_WRITE_TIMEOUT))?;
    let mut out = std::io::BufWriter::new(stream);
    let mut head =
        String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n");
    for header in SECURITY {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let socket = stream.try_clone()?;
    let (snapshot, events) = hub.subscribe_cutting_off(move || {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    });
    // A browser that lost the stream asks again after 2 s.
    write!(out, "retry: 2000\n\nevent: snapshot\ndata: {snapshot}\n\n")?;
    out.flush()?;
    loop {
        match events.recv_timeout(KEEP_ALIVE) {
            Ok(event) => write!(out, "event: epoch\ndata: {event}\n\n")?,
            Err(RecvTimeoutError::Timeout) => out.write_all(b": keep-alive\n\n")?,
            // Dropped by the hub, as not reading: the browser comes back
            // for a fresh snapshot.
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        out.flush()?;
    }
}
