//! The live page: a map of the stations and a table of the postcodes, in
//! the browser, updated on each committed epoch.
//!
//! The page reads what any client reads, and nothing else: the
//! aggregator's output topic and its state topic, at `read_committed`, one
//! whole epoch at a time. Its numbers are the output topic's; it never shows
//! part of an epoch.
//!
//! The data path, in order:
//! - [`committed`] reads whole committed epochs from the topics;
//! - [`page`] keeps what the page shows, and makes each epoch's event;
//! - [`events`] sends each event to the browsers following the page, each
//!   with a bounded queue;
//! - [`server`] answers HTTP: the page (embedded in the binary), the state
//!   as JSON, the events as Server-Sent Events.
//!
//! [`LivePage::start`] runs them all.
//!
//! # Examples
//!
//! ```no_run
//! use velib_dataflow::kafka::KafkaConfig;
//! use velib_dataflow::web::committed::CommittedConfig;
//! use velib_dataflow::web::LivePage;
//!
//! let committed = CommittedConfig::new(KafkaConfig::new("127.0.0.1:9092"));
//! let page = LivePage::start("127.0.0.1:8080".parse()?, committed)?;
//! println!("the page is at http://{}/", page.addr());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod committed;
pub mod events;
pub mod page;
pub mod server;

use committed::{CommittedConfig, CommittedReader};
use events::EventHub;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the page could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The address could not be listened on.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Kafka refused, or a topic is not there.
    #[error("{what}: {problem}")]
    Kafka {
        /// What the page was doing.
        what: String,
        /// What went wrong.
        problem: String,
    },
}

/// The page, served: the server's address, and the reader feeding it.
#[derive(Debug)]
pub struct LivePage {
    addr: SocketAddr,
    hub: EventHub,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LivePage {
    /// Serves the page on `addr` at once (it says it waits for the first
    /// epoch), and reads the committed epochs of `committed`'s topics into
    /// it from a background thread. Errors only when `addr` cannot be
    /// listened on; a topic not there yet is waited for, and said in the log.
    pub fn start(addr: SocketAddr, committed: CommittedConfig) -> Result<LivePage, WebError> {
        let hub = EventHub::default();
        let addr =
            server::serve(addr, hub.clone()).map_err(|source| WebError::Listen { addr, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (hub, stop) = (hub.clone(), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("velib-page-reader".into())
                .spawn(move || read_into(committed, &hub, &stop))
                .map_err(|source| WebError::Listen { addr, source })?
        };
        Ok(LivePage {
            addr,
            hub,
            stop,
            reader: Some(reader),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's state and followers.
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }
}

impl Drop for LivePage {
    /// Stops reading (the server itself runs for as long as the process).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Reads committed epochs into `hub` until `stop`, opening a reader again
/// while the topics are not there, when their partitions change, and after
/// a panic (said in the log: the page keeps what it shows meanwhile).
fn read_into(config: CommittedConfig, hub: &EventHub, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let run = std::panic::AssertUnwindSafe(|| follow(&config, hub, stop));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!(
                "live page: the reader failed (a bug: please report it); reading again"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// One reader, from its opening until `stop` or until it must be reopened.
fn follow(config: &CommittedConfig, hub: &EventHub, stop: &AtomicBool) {
    // Short attempts, so that a stop is seen; a warning once the wait the
    // config allows is over, and each time again after as long.
    let mut attempt = config.clone();
    attempt.wait_for_topics = Duration::from_secs(1);
    let mut warn_at = std::time::Instant::now() + config.wait_for_topics;
    let mut reader = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match CommittedReader::open(attempt.clone()) {
            Ok(reader) => break reader,
            Err(e) => {
                if std::time::Instant::now() > warn_at {
                    tracing::warn!("live page: {e}; still waiting");
                    warn_at = std::time::Instant::now() + config.wait_for_topics;
                } else {
                    tracing::debug!("live page: {e}");
                }
                hub.set_reader(page::ReaderHealth {
                    waiting_for: Some(e.to_string()),
                    ..Default::default()
                });
            }
        }
    };
    hub.set_reader(page::ReaderHealth::default());
    while !stop.load(Ordering::SeqCst) && !reader.needs_reopening() {
        for epoch in reader.poll(Duration::from_millis(200)) {
            // A reader opened again catches up to what the page shows.
            if hub.epoch().is_none_or(|shown| epoch.epoch > shown) {
                hub.publish(epoch);
            }
        }
        hub.set_reader(page::ReaderHealth {
            malformed: reader.malformed(),
            late: reader.late(),
            waiting_for: None,
        });
    }
}
