//! A small HTTP/1.1 server on 127.0.0.1 that serves scripted responses, one
//! per request, per path: recorded feeds, and the ways real servers fail.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted response.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this body and extra headers.
    Body(Vec<u8>, Vec<(String, String)>),
    /// 200 with the body gzip-encoded.
    Gzip(Vec<u8>),
    /// 304 when the request carries `If-None-Match: etag`, else 200 with
    /// the body and that ETag.
    Etag(String, Vec<u8>),
    /// This status, with extra headers and a short text body.
    Status(u16, Vec<(String, String)>),
    /// Headers at once, then the body after this delay.
    Slow(Duration, Vec<u8>),
    /// Declares the whole body's length, sends only its first half, closes.
    Cut(Vec<u8>),
    /// A body of this many bytes of JSON-ish filler, without a declared
    /// length (chunked), as an endless stream would be.
    Endless(usize),
    /// Declares this length (and sends a little).
    Declared(u64),
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::Body(body.into(), Vec::new())
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Routes {
    /// Per path: the replies still to give; the last one repeats.
    scripts: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

pub struct FeedServer {
    pub base: String,
    routes: Arc<Mutex<Routes>>,
}

impl FeedServer {
    pub fn start() -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes = Arc::new(Mutex::new(Routes::default()));
        let shared = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let routes = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &routes);
                });
            }
        });
        FeedServer { base, routes }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Adds replies to `path`'s script.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.routes
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// How many replies of `path`'s script are left (the last one repeats
    /// and counts as left).
    pub fn left(&self, path: &str) -> usize {
        self.routes
            .lock()
            .unwrap()
            .scripts
            .get(path)
            .map_or(0, VecDeque::len)
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.routes
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, routes: &Mutex<Routes>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let reply = {
        let mut routes = routes.lock().unwrap();
        routes.seen.push(Seen {
            path: path.clone(),
            headers: headers.clone(),
        });
        match routes.scripts.get_mut(&path) {
            Some(script) if script.len() > 1 => script.pop_front(),
            Some(script) => script.front().cloned(),
            None => None,
        }
    };
    let mut out = stream;
    let head = |status: u16, extra: &[(String, String)], length: Option<u64>| {
        let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match length {
            Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            None => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");
        head.into_bytes()
    };
    match reply {
        None => {
            out.write_all(&head(404, &[], Some(9)))?;
            out.write_all(b"not found")?;
        }
        Some(Reply::Body(body, extra)) => {
            out.write_all(&head(200, &extra, Some(body.len() as u64)))?;
            out.write_all(&body)?;
        }
        Some(Reply::Gzip(body)) => {
            let zipped = gzip(&body);
            let extra = [("Content-Encoding".to_owned(), "gzip".to_owned())];
            out.write_all(&head(200, &extra, Some(zipped.len() as u64)))?;
            out.write_all(&zipped)?;
        }
        Some(Reply::Etag(etag, body)) => {
            if headers.get("if-none-match") == Some(&etag) {
                out.write_all(&head(304, &[("ETag".into(), etag)], Some(0)))?;
            } else {
                out.write_all(&head(
                    200,
                    &[("ETag".into(), etag)],
                    Some(body.len() as u64),
                ))?;
                out.write_all(&body)?;
            }
        }
        Some(Reply::Status(status, extra)) => {
            out.write_all(&head(status, &extra, Some(5)))?;
            out.write_all(b"error")?;
        }
        Some(Reply::Slow(delay, body)) => {
            out.write_all(&head(200, &[], Some(body.len() as u64)))?;
            out.flush()?;
            std::thread::sleep(delay);
            out.write_all(&body)?;
        }
        Some(Reply::Cut(body)) => {
            out.write_all(&head(200, &[], Some(body.len() as u64)))?;
            out.write_all(&body[..body.len() / 2])?;
        }
        Some(Reply::Endless(size)) => {
            out.write_all(&head(200, &[], None))?;
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < size {
                out.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                out.write_all(&chunk)?;
                out.write_all(b"\r\n")?;
                sent += chunk.len();
            }
            out.write_all(b"0\r\n\r\n")?;
        }
        Some(Reply::Declared(length)) => {
            out.write_all(&head(200, &[], Some(length)))?;
            out.write_all(b"{\"data\":")?;
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// A discovery file pointing at this server, as the Oslo one points at
/// Oslo's.
pub fn discovery(server: &FeedServer) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "last_updated": 1666551803, "ttl": 15, "version": "2.2",
        "data": {
            "nb": {"feeds": [
                {"name": "station_status", "url": server.url("/nb/station_status.json")},
                {"name": "station_information", "url": server.url("/nb/station_information.json")},
            ]},
            "en": {"feeds": [
                {"name": "station_status", "url": server.url("/en/station_status.json")},
            ]},
        }
    }))
    .unwrap()
}

/// A gzip member with stored (uncompressed) deflate blocks: valid gzip,
/// without a compression crate.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
