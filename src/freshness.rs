//! Whether a feed is fresh: how old its snapshot was when it was fetched,
//! against the feed's own `ttl` and against the GBFS rule that a
//! `station_status` feed must never be more than five minutes out of date;
//! and whether a station is ([`StalePolicy`]).
//!
//! The age is judged when a live feed is fetched (the response's arrival,
//! against its `last_updated`); a recorded snapshot has no such moment and
//! is not judged. Ages come from two clocks, the feed's and this machine's,
//! so a feed "from the future" says which is wrong rather than being called
//! fresh.

use crate::feed::FeedTime;
use std::fmt;
use std::time::Duration;

/// The GBFS limit: a `station_status` feed "must not be more than 5
/// minutes out of date" (`MAX_DATA_AGE` in MobilityData's validator).
pub const SPEC_MAX_AGE_SECONDS: i64 = 300;

/// How old a snapshot was when it was fetched.
///
/// # Examples
///
/// ```
/// use velib_dataflow::freshness::FeedAge;
///
/// // Fetched 90 s after its last_updated, with a ttl of 60 s.
/// let age = FeedAge::judge(1_000, Some(60), 1_090);
/// assert_eq!(age.seconds(), 90);
/// assert!(age.beyond_ttl() && !age.is_stale());
/// // Six minutes old: beyond what the spec allows.
/// assert!(FeedAge::judge(1_000, Some(3_600), 1_360).is_stale());
/// // From the future (the feed's clock or ours is wrong): not fresh either.
/// let ahead = FeedAge::judge(2_000, None, 1_000);
/// assert!(ahead.is_from_the_future() && ahead.is_stale());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedAge {
    feed_time: FeedTime,
    seconds: i64,
    ttl: Option<u32>,
}

/// A clock difference this small is skew between two honest clocks, not a
/// feed from the future.
const SKEW_SECONDS: i64 = 60;

impl FeedAge {
    /// The age of a snapshot of `feed_time`, with `ttl`, fetched at
    /// `fetched_at` (seconds since the Unix epoch).
    pub fn judge(feed_time: FeedTime, ttl: Option<u32>, fetched_at: FeedTime) -> Self {
        FeedAge {
            feed_time,
            seconds: fetched_at.saturating_sub(feed_time),
            ttl,
        }
    }

    /// The same snapshot judged again at `now`: what a `304 Not Modified`
    /// says, the feed still at that snapshot.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::freshness::FeedAge;
    ///
    /// let fetched = FeedAge::judge(1_000, Some(60), 1_010);
    /// assert!(!fetched.is_stale());
    /// // Not modified ten minutes later: the same snapshot, now stale.
    /// assert!(fetched.again(1_610).is_stale());
    /// ```
    pub fn again(&self, now: FeedTime) -> FeedAge {
        FeedAge::judge(self.feed_time, self.ttl, now)
    }

    /// The age in seconds (negative when the feed's time is ahead of ours).
    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    /// Older than the feed said it would stay valid (its `ttl`).
    pub fn beyond_ttl(&self) -> bool {
        self.ttl.is_some_and(|ttl| self.seconds > i64::from(ttl))
    }

    /// Ahead of this machine's clock by more than clock skew.
    pub fn is_from_the_future(&self) -> bool {
        self.seconds < -SKEW_SECONDS
    }

    /// Not to be trusted as current: older than the spec allows, or from
    /// the future.
    pub fn is_stale(&self) -> bool {
        self.seconds > SPEC_MAX_AGE_SECONDS || self.is_from_the_future()
    }
}

impl fmt::Display for FeedAge {
    /// What a log line says of the age.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::freshness::FeedAge;
    ///
    /// let age = FeedAge::judge(1_000, Some(60), 1_400);
    /// assert_eq!(age.to_string(), "400 s old (its ttl is 60 s; GBFS allows 300 s)");
    /// let ahead = FeedAge::judge(5_000, None, 1_000);
    /// assert_eq!(ahead.to_string(), "4000 s in the future (the feed's clock or this machine's is wrong)");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_from_the_future() {
            return write!(
                f,
                "{} s in the future (the feed's clock or this machine's is wrong)",
                -self.seconds
            );
        }
        write!(f, "{} s old (", self.seconds)?;
        if let Some(ttl) = self.ttl {
            write!(f, "its ttl is {ttl} s; ")?;
        }
        write!(f, "GBFS allows {SPEC_MAX_AGE_SECONDS} s)")
    }
}

/// Watches a feed's freshness from poll to poll, to say when it turns stale
/// and when it is fresh again (not at every poll).
///
/// # Examples
///
/// ```
/// use velib_dataflow::freshness::{FeedAge, FeedWatch, Turned};
///
/// let mut watch = FeedWatch::default();
/// assert_eq!(watch.observe(FeedAge::judge(1_000, None, 1_010)), None);
/// assert_eq!(watch.observe(FeedAge::judge(1_000, None, 1_400)), Some(Turned::Stale));
/// assert_eq!(watch.observe(FeedAge::judge(1_000, None, 1_500)), None, "said once");
/// assert_eq!(watch.observe(FeedAge::judge(1_600, None, 1_610)), Some(Turned::Fresh));
/// ```
#[derive(Clone, Debug, Default)]
pub struct FeedWatch {
    stale: Option<bool>,
    last: Option<FeedAge>,
}

impl FeedWatch {
    /// The last age observed: the snapshot the feed is at.
    pub fn last(&self) -> Option<FeedAge> {
        self.last
    }
}

/// A change of a feed's freshness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turned {
    /// It was fresh (or not judged yet) and is stale.
    Stale,
    /// It was stale and is fresh again.
    Fresh,
}

impl FeedWatch {
    /// Notes a snapshot's age; says whether the feed's freshness changed.
    /// A first snapshot that is stale counts as turning stale.
    pub fn observe(&mut self, age: FeedAge) -> Option<Turned> {
        self.last = Some(age);
        let stale = age.is_stale();
        let before = self.stale.replace(stale);
        match (before, stale) {
            (Some(false) | None, true) => Some(Turned::Stale),
            (Some(true), false) => Some(Turned::Fresh),
            _ => None,
        }
    }
}

/// How old a station's report may be before its counts are stale.
///
/// A station is **stale** in a snapshot when its `last_reported` is more
/// than [`StalePolicy::after`] before the snapshot's feed time: judged
/// against the feed's own time, never this machine's clock, so that a
/// replay of recorded snapshots gives the live run's answer. A station
/// without `last_reported`, or with one after the feed's time, cannot be
/// judged old and is not stale. The default, two hours, sits in the gap the
/// recorded Vélib' feed shows: its stations report about hourly (95 % within
/// 51 minutes of the feed's time on 2024-11-19), and the 43 that do not have
/// been silent for days or years.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::freshness::StalePolicy;
///
/// let policy = StalePolicy::default();
/// assert_eq!(policy.after(), Duration::from_secs(7200));
/// // Reported at 1,000; the feed's time two hours and one second later.
/// assert!(policy.is_stale(Some(1_000), 1_000 + 7_201));
/// assert!(!policy.is_stale(Some(1_000), 1_000 + 7_200));
/// // Never reported, or reported after the feed's time: not judged old.
/// assert!(!policy.is_stale(None, 1_000_000));
/// assert!(!policy.is_stale(Some(5_000), 1_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StalePolicy {
    after_seconds: i64,
}

impl Default for StalePolicy {
    fn default() -> Self {
        StalePolicy {
            after_seconds: 2 * 3600,
        }
    }
}

impl StalePolicy {
    /// Stale once a report is older than `after` (whole seconds).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use velib_dataflow::freshness::StalePolicy;
    ///
    /// let policy = StalePolicy::after_age(Duration::from_secs(600));
    /// assert!(policy.is_stale(Some(0), 601));
    /// ```
    pub fn after_age(after: Duration) -> Self {
        StalePolicy {
            after_seconds: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The age past which a report is stale.
    pub fn after(&self) -> Duration {
        Duration::from_secs(self.after_seconds.unsigned_abs())
    }

    /// Whether a station last reported at `last_reported` is stale in a
    /// snapshot of feed time `feed_time`.
    pub fn is_stale(&self, last_reported: Option<FeedTime>, feed_time: FeedTime) -> bool {
        last_reported
            .is_some_and(|reported| feed_time.saturating_sub(reported) > self.after_seconds)
    }
}

/// Seconds since the Unix epoch, by this machine's clock: what a fetched
/// snapshot's age is judged against.
pub(crate) fn unix_now() -> FeedTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
