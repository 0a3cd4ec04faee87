//! The small HTTP/1.1 server behind the process's own endpoints (the
//! metrics, the live page): bounded in every way a client could abuse.
//!
//! - A request head is at most [`MAX_REQUEST_BYTES`]: more is `431`.
//! - A client that sends nothing for [`CLIENT_TIMEOUT`] gets `408`.
//! - A request line that is not `METHOD TARGET HTTP/1.x`, or is not UTF-8,
//!   gets `400`.
//! - At most a fixed number of clients are served at once, each on its own
//!   thread so that a slow one delays nobody; the others get `503` at once.
//! - Writes time out too: a client that stops reading is dropped.
//!
//! Every answer closes its connection (`Connection: close`): the endpoints
//! are scraped or opened by a browser, never hammered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head read (request line and headers).
pub(crate) const MAX_REQUEST_BYTES: usize = 8 << 10;
/// A client that sends nothing (or stops reading) for this long is dropped.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request's method and path (its query string removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
}

impl Request {
    /// `HEAD`: the answer's head only.
    pub(crate) fn head_only(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Why a request was refused before any route saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRequest {
    /// The head is over [`MAX_REQUEST_BYTES`], or ended before its blank line.
    TooLarge,
    /// Not `METHOD TARGET HTTP/1.x`, or not UTF-8.
    Malformed,
    /// Nothing (or not all of the head) within [`CLIENT_TIMEOUT`].
    Timeout,
}

impl BadRequest {
    /// The status answered.
    pub(crate) fn status(self) -> &'static str {
        match self {
            BadRequest::TooLarge => "431 Request Header Fields Too Large",
            BadRequest::Malformed => "400 Bad Request",
            BadRequest::Timeout => "408 Request Timeout",
        }
    }
}

/// Reads a request head from `stream`, within the bounds above: the whole
/// head within [`CLIENT_TIMEOUT`], not each read (a client sending a byte
/// now and then is cut off all the same). `Ok(None)` when the client closed
/// without sending anything.
pub(crate) fn read_request(
    stream: &TcpStream,
) -> std::io::Result<Option<Result<Request, BadRequest>>> {
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = head_end(&head) {
            break end;
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(Some(Err(BadRequest::TooLarge)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(Err(BadRequest::Timeout)));
        }
        stream.set_read_timeout(Some(left))?;
        let room = (MAX_REQUEST_BYTES - head.len()).min(chunk.len());
        match (&*stream).read(&mut chunk[..room]) {
            Ok(0) if head.is_empty() => return Ok(None),
            // The client closed before the blank line.
            Ok(0) => return Ok(Some(Err(BadRequest::Malformed))),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Some(Err(BadRequest::Timeout)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let Some(request_line) = head[..end]
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Ok(Some(Err(BadRequest::Malformed)));
    };
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(Some(Err(BadRequest::Malformed)));
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Ok(Some(Err(BadRequest::Malformed)));
    }
    let path = target.split(['?', '#']).next().unwrap_or("/");
    Ok(Some(Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })))
}

/// Where a request head ends: its blank line (`\r\n\r\n`, or `\n\n`).
fn head_end(head: &[u8]) -> Option<usize> {
    // A blank first line: no request line at all.
    if head.starts_with(b"\r\n") || head.starts_with(b"\n") {
        return Some(0);
    }
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An answer with a body (left out for `HEAD`).
#[derive(Debug)]
pub(crate) struct Response<'a> {
    pub(crate) status: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'a [u8],
    /// More headers, each `Name: value`.
    pub(crate) headers: &'a [&'a str],
}

impl<'a> Response<'a> {
    /// A plain-text answer.
    pub(crate) fn text(status: &'static str, body: &'a str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes(),
            headers: &[],
        }
    }

    /// Writes the answer to `stream`, its body unless `head_only`.
    pub(crate) fn write(&self, mut stream: &TcpStream, head_only: bool) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for header in self.headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if !head_only {
            stream.write_all(self.body)?;
        }
        stream.flush()
    }
}

/// Serves each connection of `listener` with `handle`, on a thread of its
/// own, at most `max_clients` at once (the others get `503` and are closed),
/// from a background thread named `name`, for as long as the process runs.
pub(crate) fn serve_connections(
    name: &str,
    listener: TcpListener,
    max_clients: usize,
    handle: impl Fn(TcpStream) -> std::io::Result<()> + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    let handle = Arc::new(handle);
    let what = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: wait, rather than spin.
                        tracing::debug!("{what}: accepting: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let slot = Slot::take(&busy);
                if slot.count > max_clients {
                    // A short answer fits the socket's buffer: this never
                    // blocks the accepting thread for long.
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = Response::text("503 Service Unavailable", "too many clients\n")
                        .write(&stream, false);
                    continue;
                }
                let handle = Arc::clone(&handle);
                let client = what.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{what}-client"))
                    .spawn(move || {
                        // Freed however the handler ends, a panic included.
                        let _slot = slot;
                        if let Err(e) = handle(stream) {
                            tracing::debug!("{client}: a client: {e}");
                        }
                    });
                if spawned.is_err() {
                    tracing::warn!("{name}: no thread for a client: dropped", name = what);
                }
            }
        })?;
    Ok(bound)
}

/// A client's place among those served at once: counted while it lives.
struct Slot {
    busy: Arc<AtomicUsize>,
    /// The clients served, this one included, when it was taken.
    count: usize,
}

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Slot {
        let count = busy.fetch_add(1, Ordering::SeqCst) + 1;
        Slot {
            busy: Arc::clone(busy),
            count,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a refused request with its status, and closes: after what the
/// client still sends is read for a moment, so that the answer reaches it
/// rather than a reset.
pub(crate) fn refuse(stream: &TcpStream, bad: BadRequest) -> std::io::Result<()> {
    Response::text(bad.status(), "").write(stream, false)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 8192];
    let mut left = 1usize << 20;
    while left > 0 {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(request: &[u8]) -> Option<Result<Request, BadRequest>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let request = request.to_vec();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let _ = c.write_all(&request);
            c
        });
        let (stream, _) = listener.accept().unwrap();
        let _client = client.join().unwrap();
        // The client keeps its end open: a short request times out, it does not end.
        read_request(&stream).unwrap()
    }

    #[test]
    fn request_heads_are_read_within_their_bounds() {
        let ok = parsed(b"GET /api/state?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(ok.unwrap().path, "/api/state");
        assert_eq!(
            parsed(b"HEAD / HTTP/1.0\r\n\r\n").unwrap().unwrap().method,
            "HEAD"
        );
        for malformed in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET noslash HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                parsed(malformed),
                Some(Err(BadRequest::Malformed)),
                "{}",
                String::from_utf8_lossy(malformed)
            );
        }
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_REQUEST_BYTES));
        assert_eq!(parsed(&huge), Some(Err(BadRequest::TooLarge)));
    }

    #[test]
    fn a_client_that_sends_half_a_head_times_out() {
        assert_eq!(
            parsed(b"GET / HTTP/1.1\r\nHost:"),
            Some(Err(BadRequest::Timeout))
        );
    }
}
