//! Where the producer's snapshots come from, whatever the source: the
//! [`SnapshotSource`] trait, what one poll gives ([`PollOutcome`]), and why
//! it gave nothing ([`PollError`]). A live feed
//! ([`FeedPoller`](crate::poll::FeedPoller)) and recorded files
//! ([`RecordedSource`](crate::recorded::RecordedSource)) are two sources;
//! yours is a third.

use crate::consistency::Inconsistencies;
use crate::feed::poll as feed_poll;
use crate::feed::StationId;
use crate::fetch::FetchError;
use crate::freshness::FeedAge;
use crate::snapshot::Snapshot;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Why a poll gave no snapshot.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::directory::DirectoryResolver;
/// use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
/// use velib_dataflow::postcode::PostcodeTable;
///
/// let mut config = PollConfig::new(FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None });
/// config.fetch.connect_timeout = Duration::from_secs(1);
/// let mut poller = FeedPoller::new(config, DirectoryResolver::new(PostcodeTable::empty(), false))?;
/// let error = poller.poll().unwrap_err();
/// // A stable reason for counters, a sentence for people, and how long to wait.
/// assert_eq!(error.reason(), "connect");
/// assert!(error.to_string().starts_with("cannot connect to http://127.0.0.1:9/s.json"));
/// assert_eq!(error.retry_after(), None);
/// # Ok::<(), velib_dataflow::fetch::FetchError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    /// The feed could not be polled: the request failed
    /// ([`Fetch`](feed_poll::PollError::Fetch)), the payload was rejected
    /// ([`Rejected`](feed_poll::PollError::Rejected), its body cut to
    /// [`MAX_DEAD_LETTER_BYTES`](crate::kafka::dead_letter::MAX_DEAD_LETTER_BYTES):
    /// what the producer puts on the dead-letter topic), or the discovery
    /// file lists no status ([`NoStatusFeed`](feed_poll::PollError::NoStatusFeed)).
    #[error(transparent)]
    Feed(#[from] feed_poll::PollError),
    /// Another source's error: a recorded file that could not be used
    /// ([`RecordedError`](crate::recorded::RecordedError)), or yours.
    #[error("{source}")]
    Source {
        /// A short, stable name for it ([`PollError::reason`]).
        reason: &'static str,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A source of your own that fetches with [`FeedFetcher`](crate::fetch::FeedFetcher)
/// can `?` its errors: they are the feed's request failures.
impl From<FetchError> for PollError {
    fn from(error: FetchError) -> Self {
        PollError::Feed(error.into())
    }
}

impl PollError {
    /// A short, stable name for the kind of failure, for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::Feed(e) => e.reason(),
            PollError::Source { reason, .. } => reason,
        }
    }

    /// How long the server asked to wait before the next request.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Feed(e) => e.retry_after(),
            PollError::Source { .. } => None,
        }
    }
}

/// A snapshot polled from the feed.
#[derive(Debug)]
pub struct PolledSnapshot {
    /// The selected stations, their directory resolved.
    pub snapshot: Snapshot,
    /// Each station's own JSON object from the payload.
    pub feed_fields: HashMap<StationId, Map<String, Value>>,
    /// Why the station information could not be refreshed, if it could not
    /// (the snapshot then uses the information held, or none).
    pub information_error: Option<PollError>,
    /// Why the vehicle types could not be refreshed, if they could not (the
    /// snapshot's vehicles are then classified by the ones held, or by what
    /// their type ids say).
    pub vehicle_types_error: Option<PollError>,
    /// How old the snapshot was when it was fetched: `None` for a recorded
    /// snapshot, or a feed that publishes no time of its own.
    pub age: Option<FeedAge>,
    /// What its files disagree on.
    pub inconsistencies: Inconsistencies,
}

/// What one poll gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PollOutcome {
    /// A new snapshot.
    Snapshot(PolledSnapshot),
    /// The server said nothing changed since the last poll.
    NotModified,
    /// There will be no more snapshots (the end of a recording).
    Exhausted,
}

/// Where the producer's snapshots come from: a live feed
/// ([`FeedPoller`](crate::poll::FeedPoller))
/// or recorded files ([`RecordedSource`](crate::recorded::RecordedSource)).
///
/// # Examples
///
/// A source of your own: snapshots from anywhere (a message queue, a
/// database), published by the producer as epochs.
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::feed::FeedTimeKind;
/// use velib_dataflow::snapshot_source::{PollError, PollOutcome, PolledSnapshot, SnapshotSource};
/// use velib_dataflow::snapshot::Snapshot;
///
/// struct Once(Option<Snapshot>);
/// impl SnapshotSource for Once {
///     fn poll(&mut self) -> Result<PollOutcome, PollError> {
///         Ok(match self.0.take() {
///             Some(snapshot) => PollOutcome::Snapshot(PolledSnapshot {
///                 snapshot, feed_fields: Default::default(), information_error: None,
///                 vehicle_types_error: None, age: None,
///                 inconsistencies: Default::default(),
///             }),
///             None => PollOutcome::Exhausted,
///         })
///     }
///     fn interval(&self) -> Duration { Duration::ZERO }
/// }
/// let empty = Snapshot { feed_time: 1, feed_time_kind: FeedTimeKind::Published, statuses: vec![], directory: None };
/// let mut source = Once(Some(empty));
/// assert!(matches!(source.poll()?, PollOutcome::Snapshot(_)));
/// assert!(matches!(source.poll()?, PollOutcome::Exhausted));
/// // `producer::run_with_source(source, &config, handle)` publishes them.
/// # Ok::<(), PollError>(())
/// ```
pub trait SnapshotSource {
    /// The next snapshot, or why there is none this time.
    fn poll(&mut self) -> Result<PollOutcome, PollError>;
    /// How long to wait before the next poll.
    fn interval(&self) -> Duration;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The feed's errors, wrapped, read as they did before they moved to
    /// `gbfs_feed::poll`: counters, dead letters and logs depend on it.
    #[test]
    fn a_wrapped_feed_error_keeps_its_reason_message_and_source() {
        let e = PollError::from(feed_poll::PollError::NoStatusFeed {
            url: "http://x/gbfs.json".into(),
            language: Some("fr".into()),
        });
        assert_eq!(e.reason(), "no_status_feed");
        assert_eq!(
            e.to_string(),
            "http://x/gbfs.json: the discovery file lists no station_status feed in language \"fr\""
        );
        let rejected = crate::feed::payload::parse_status(b"{").unwrap_err();
        let (why, message) = (rejected.to_string(), format!("http://x/s.json: {rejected}"));
        let e = PollError::from(feed_poll::PollError::Rejected {
            url: "http://x/s.json".into(),
            body: b"{"[..].into(),
            source: Box::new(rejected),
        });
        assert_eq!(e.reason(), "invalid_json");
        assert_eq!(e.to_string(), message);
        assert_eq!(e.source().unwrap().to_string(), why);
        let e = PollError::from(FetchError::RateLimited {
            url: "http://x/s.json".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(e.reason(), "rate_limited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(
            e.to_string(),
            "http://x/s.json: rate limited (429), asked to retry after 3 s"
        );
    }
}
