//! Polling a bike-share feed into this project's snapshots: the feed side
//! (discovery, the status every poll, the information refreshed less often
//! and whenever the status names a station it lacks, the interval) is
//! [`gbfs_feed::poll`], re-exported here; this module resolves each
//! station's directory entry and keeps the selected stations, for one
//! [`Snapshot`] per poll.

use crate::consistency::Inconsistencies;
use crate::directory::DirectoryResolver;
use crate::feed::poll::{self as feed_poll, Polled};
use crate::feed::FeedTimeKind;
use crate::fetch::FetchError;
use crate::freshness::{unix_now, FeedAge};
use crate::snapshot::{Snapshot, StationSelection};
use crate::snapshot_source::{PollError, PollOutcome, PolledSnapshot, SnapshotSource};
use std::time::Duration;

pub use crate::feed::poll::{
    FeedLocation, PollConfig, DEFAULT_INTERVAL, MAX_TTL_INTERVAL, MIN_TTL_INTERVAL, VELIB_FEED,
};

// The producer dead-letters rejected bodies as the poller kept them: the
// record's documented size is the poller's cut.
const _: () =
    assert!(feed_poll::MAX_REJECTED_BODY_BYTES == crate::kafka::dead_letter::MAX_DEAD_LETTER_BYTES);

impl SnapshotSource for FeedPoller {
    fn poll(&mut self) -> Result<PollOutcome, PollError> {
        FeedPoller::poll(self)
    }
    fn interval(&self) -> Duration {
        FeedPoller::interval(self)
    }
}

/// Polls a feed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::directory::DirectoryResolver;
/// use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
/// use velib_dataflow::postcode::PostcodeTable;
///
/// let mut config = PollConfig::new(FeedLocation::Discover {
///     url: "http://127.0.0.1:9/gbfs.json".into(), language: None,
/// });
/// config.fetch.connect_timeout = Duration::from_secs(1);
/// let mut poller = FeedPoller::new(config, DirectoryResolver::new(PostcodeTable::velib(), true))?;
/// // Nothing listens there: the poll says so, and the next poll tries again.
/// assert_eq!(poller.poll().unwrap_err().reason(), "connect");
/// # Ok::<(), velib_dataflow::fetch::FetchError>(())
/// ```
#[derive(Debug)]
pub struct FeedPoller {
    feed: feed_poll::FeedPoller,
    resolver: DirectoryResolver,
    selection: StationSelection,
}

impl FeedPoller {
    /// A poller that has fetched nothing yet, keeping every station.
    pub fn new(config: PollConfig, resolver: DirectoryResolver) -> Result<Self, FetchError> {
        Ok(FeedPoller {
            feed: feed_poll::FeedPoller::new(config)?,
            resolver,
            selection: StationSelection::all(),
        })
    }

    /// Keeping only the stations of `selection`.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::directory::DirectoryResolver;
    /// use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
    /// use velib_dataflow::postcode::PostcodeTable;
    /// use velib_dataflow::snapshot::StationSelection;
    ///
    /// let config = PollConfig::new(FeedLocation::Explicit {
    ///     status: "https://example.org/station_status.json".into(), information: None,
    /// });
    /// let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
    /// let poller = FeedPoller::new(config, resolver)?.selecting(StationSelection::only(["16107"]));
    /// # Ok::<(), velib_dataflow::fetch::FetchError>(())
    /// ```
    pub fn selecting(mut self, selection: StationSelection) -> Self {
        self.selection = selection;
        self
    }

    /// How long to wait between polls: the explicit interval, else the
    /// feed's `ttl` bounded to [`MIN_TTL_INTERVAL`]–[`MAX_TTL_INTERVAL`],
    /// else [`DEFAULT_INTERVAL`].
    pub fn interval(&self) -> Duration {
        self.feed.interval()
    }

    /// The status URL polled, once known.
    pub fn status_url(&self) -> Option<&str> {
        self.feed.status_url()
    }

    /// The information URL, once known, if the feed has one.
    pub fn information_url(&self) -> Option<&str> {
        self.feed.information_url()
    }

    /// Polls once: finds the feed's URLs if not known yet, fetches the
    /// status (and the information when due), and assembles the snapshot.
    pub fn poll(&mut self) -> Result<PollOutcome, PollError> {
        let polled = match self.feed.poll()? {
            Polled::NotModified => return Ok(PollOutcome::NotModified),
            Polled::Status(polled) => polled,
        };
        let age = (polled.status.feed_time_kind == FeedTimeKind::Published)
            .then(|| FeedAge::judge(polled.status.feed_time, polled.status.ttl, unix_now()));
        let inconsistencies = Inconsistencies::of(
            &polled.status,
            polled.information.as_deref(),
            &self.selection,
        );
        let snapshot = Snapshot::assemble(
            polled.status,
            polled.information.as_deref(),
            &self.resolver,
            &self.selection,
        );
        Ok(PollOutcome::Snapshot(PolledSnapshot {
            snapshot,
            feed_fields: polled.feed_fields,
            information_error: polled.information_error.map(PollError::from),
            vehicle_types_error: polled.vehicle_types_error.map(PollError::from),
            age,
            inconsistencies,
        }))
    }
}
