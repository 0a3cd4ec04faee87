//! When a station's report is too old to trust: judged against the feed's
//! own time of each snapshot, never the wall clock, so that replaying a
//! recorded series gives the live run's answer.
//!
//! A station is **stale** at a snapshot when the feed's time of that
//! snapshot is more than [`StalePolicy::after`] past the station's
//! `last_reported`. A station without `last_reported` (or with one after the
//! feed's time) cannot be judged old and is not stale. The default, two
//! hours, sits in the gap the recorded Vélib' feed shows: its stations
//! report about hourly (95 % within 51 minutes of the feed's time on
//! 2024-11-19), and the 43 that do not have been silent for days or years.

use crate::feed::FeedTime;
use std::time::Duration;

/// How old a station's report may be before its counts are called stale.
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
    after_seconds: u32,
}

impl Default for StalePolicy {
    fn default() -> Self {
        StalePolicy {
            after_seconds: 2 * 3600,
        }
    }
}

impl StalePolicy {
    /// Stale once a report is older than `after` (whole seconds; at most
    /// about 136 years).
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
            after_seconds: u32::try_from(after.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The age past which a report is stale.
    pub fn after(&self) -> Duration {
        Duration::from_secs(u64::from(self.after_seconds))
    }

    /// Whether a station last reported at `last_reported` is stale at the
    /// feed time `feed_time`.
    pub fn is_stale(&self, last_reported: Option<FeedTime>, feed_time: FeedTime) -> bool {
        self.stale_from(last_reported)
            .is_some_and(|from| feed_time >= from)
    }

    /// The first feed time at which a station last reported at
    /// `last_reported` is stale; `None` when it never will be.
    pub fn stale_from(&self, last_reported: Option<FeedTime>) -> Option<FeedTime> {
        last_reported?
            .checked_add(i64::from(self.after_seconds))?
            .checked_add(1)
    }
}
