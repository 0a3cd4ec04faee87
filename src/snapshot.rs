//! From successive full snapshots to differential updates.
//!
//! A feed serves whole snapshots; the dataflow wants changes. A
//! [`SnapshotDiffer`] keeps the last accepted rows and turns a new snapshot
//! into retractions of old rows and insertions of new ones, for only the
//! stations that changed. A [`SnapshotSequencer`] does that for statuses and
//! directory together, numbers the epochs, refuses snapshots older than the
//! last accepted one, and produces nothing for a snapshot that changes nothing.

use crate::dataflow::Epoch;
use crate::directory::{DirectoryEntry, DirectoryResolver};
use crate::feed::{
    FeedTime, FeedTimeKind, InformationSnapshot, Judged, StationId, StationStatus, StatusSnapshot,
};
use crate::freshness::StalePolicy;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// A row that belongs to one station.
pub trait Keyed {
    /// What identifies the row within a snapshot.
    type Key: Clone + Eq + Hash + Ord;
    /// The row's key.
    fn key(&self) -> &Self::Key;
    /// Whether `other` says the same as `self`, so that replacing one by the
    /// other is no change.
    fn same_as(&self, other: &Self) -> bool;
}

impl Keyed for StationStatus {
    type Key = StationId;
    fn key(&self) -> &StationId {
        &self.station_id
    }
    /// A new `last_reported` alone is not a change.
    fn same_as(&self, other: &Self) -> bool {
        self.same_availability(other)
    }
}

impl Keyed for DirectoryEntry {
    type Key = StationId;
    fn key(&self) -> &StationId {
        &self.station_id
    }
    fn same_as(&self, other: &Self) -> bool {
        self == other
    }
}

/// One differential update: a row and `+1` (insert) or `-1` (retract).
pub type Update<V> = (V, isize);

/// Turns successive full snapshots of keyed rows into updates.
///
/// # Examples
///
/// ```
/// use velib_dataflow::snapshot::{Keyed, SnapshotDiffer};
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Row(u32, &'static str);
/// impl Keyed for Row {
///     type Key = u32;
///     fn key(&self) -> &u32 { &self.0 }
///     fn same_as(&self, other: &Self) -> bool { self == other }
/// }
///
/// let mut differ = SnapshotDiffer::new();
/// assert_eq!(differ.diff(vec![Row(1, "a"), Row(2, "b")]).len(), 2);
/// // Row 1 changes, row 2 goes: retract 1:a, insert 1:c, retract 2:b.
/// let updates = differ.diff(vec![Row(1, "c")]);
/// assert_eq!(updates, vec![(Row(1, "a"), -1), (Row(1, "c"), 1), (Row(2, "b"), -1)]);
/// // The same snapshot again changes nothing.
/// assert!(differ.diff(vec![Row(1, "c")]).is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct SnapshotDiffer<V: Keyed> {
    current: HashMap<V::Key, V>,
}

impl<V: Keyed> Default for SnapshotDiffer<V> {
    fn default() -> Self {
        SnapshotDiffer {
            current: HashMap::new(),
        }
    }
}

impl<V: Keyed + Clone> SnapshotDiffer<V> {
    /// A differ that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the current rows with `snapshot` and returns the updates that
    /// take the old rows to the new, sorted by key. A retraction always
    /// carries exactly the row that was inserted, so updates cancel in the
    /// dataflow. If a key appears twice in `snapshot`, the last row wins.
    pub fn diff(&mut self, snapshot: Vec<V>) -> Vec<Update<V>> {
        let mut next: HashMap<V::Key, V> = HashMap::with_capacity(snapshot.len());
        for row in snapshot {
            next.insert(row.key().clone(), row);
        }
        let mut updates: Vec<(V::Key, Update<V>)> = Vec::new();
        for (key, old) in &self.current {
            if !next.contains_key(key) {
                updates.push((key.clone(), (old.clone(), -1)));
            }
        }
        for (key, new) in &mut next {
            match self.current.get(key) {
                // Keep the row the dataflow holds, so a later retraction matches it.
                Some(old) if old.same_as(new) => *new = old.clone(),
                Some(old) => {
                    updates.push((key.clone(), (old.clone(), -1)));
                    updates.push((key.clone(), (new.clone(), 1)));
                }
                None => updates.push((key.clone(), (new.clone(), 1))),
            }
        }
        // Stable sort: per key, the retraction stays before the insertion.
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        self.current = next;
        updates.into_iter().map(|(_, u)| u).collect()
    }

    /// The row of `key` as of the last snapshot.
    pub fn get(&self, key: &V::Key) -> Option<&V> {
        self.current.get(key)
    }

    /// The rows as of the last snapshot.
    pub fn current(&self) -> impl Iterator<Item = &V> {
        self.current.values()
    }

    /// How many rows the last snapshot had.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the last snapshot had no rows (or there was none).
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

/// A snapshot that was refused. Nothing of it was applied.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::FeedTimeKind;
/// use velib_dataflow::snapshot::{Snapshot, SnapshotError, SnapshotSequencer};
///
/// let mut seq = SnapshotSequencer::resume(4, Some(1_000), vec![], vec![]);
/// let older = Snapshot { feed_time: 900, feed_time_kind: FeedTimeKind::Published, statuses: vec![], directory: None };
/// let error = seq.advance(older).unwrap_err();
/// assert!(matches!(error, SnapshotError::Older { feed_time: 900, last_accepted: 1_000 }));
/// assert!(error.to_string().contains("older than the last accepted"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot is older than the last accepted one (feeds do serve an
    /// older snapshot after a newer one, from another cache).
    #[error("snapshot of feed time {feed_time} is older than the last accepted one ({last_accepted}); refused")]
    Older {
        /// This snapshot's time.
        feed_time: FeedTime,
        /// The last accepted snapshot's time.
        last_accepted: FeedTime,
    },
    /// The previous snapshots had something that this one lost for every
    /// station: an upstream outage, not an epoch in which all bikes vanished.
    #[error("upstream outage, snapshot refused whole: {0}")]
    Outage(String),
}

impl SnapshotError {
    /// A short, stable name for the kind of refusal, for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::Older { .. } => "older_snapshot",
            SnapshotError::Outage(_) => "upstream_outage",
        }
    }
}

/// One full snapshot: statuses, and the directory when this snapshot has one
/// (when it has none, the directory stays as it was).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The feed's time of the snapshot.
    pub feed_time: FeedTime,
    /// Whether `feed_time` orders snapshots (only a published time does).
    pub feed_time_kind: FeedTimeKind,
    /// Every station's status.
    pub statuses: Vec<StationStatus>,
    /// Every station's directory entry, if this snapshot carries them.
    pub directory: Option<Vec<DirectoryEntry>>,
}

impl Snapshot {
    /// The snapshot of the selected stations of a status payload, with
    /// their directory resolved from `information` (when there is none, each
    /// station gets an entry from its status, so every station is counted
    /// somewhere).
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::directory::DirectoryResolver;
    /// use velib_dataflow::feed::payload;
    /// use velib_dataflow::postcode::PostcodeTable;
    /// use velib_dataflow::snapshot::{Snapshot, StationSelection};
    ///
    /// let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"),
    ///     "/tests/fixtures/gbfs/velib/2024-11-19/station_status.json")).unwrap();
    /// let (status, information) = payload::parse_status(&bytes)?;
    /// let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
    /// let snapshot = Snapshot::assemble(status, information.as_ref(), &resolver, &StationSelection::only(["16107"]));
    /// assert_eq!(snapshot.statuses.len(), 1);
    /// assert_eq!(snapshot.directory.unwrap()[0].postcode.as_str(), "75016");
    /// # Ok::<(), velib_dataflow::feed::FeedError>(())
    /// ```
    pub fn assemble(
        status: StatusSnapshot,
        information: Option<&InformationSnapshot>,
        resolver: &DirectoryResolver,
        selection: &StationSelection,
    ) -> Snapshot {
        let statuses: Vec<_> = status
            .stations
            .into_iter()
            .filter(|s| selection.keeps(s.code.as_deref(), &s.station_id))
            .collect();
        let infos: Vec<_> = information
            .map(|i| i.stations.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|s| selection.keeps(s.code.as_deref(), &s.station_id))
            .cloned()
            .collect();
        let directory = resolver.resolve(&infos, &statuses);
        Snapshot {
            feed_time: status.feed_time,
            feed_time_kind: status.feed_time_kind,
            statuses,
            directory: Some(directory),
        }
    }
}

/// The updates of one epoch.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::{FeedTimeKind, StationId, StationStatus};
/// use velib_dataflow::snapshot::{Snapshot, SnapshotSequencer};
///
/// let station = |bikes| StationStatus {
///     station_id: StationId::Num(7), code: None, bikes_available: bikes, bike_types: None,
///     docks_available: 5, is_installed: true, is_renting: true, is_returning: true, last_reported: None, judged: Default::default(),
///     vehicle_types: Default::default(),
/// };
/// let snapshot = |t, bikes| Snapshot {
///     feed_time: t, feed_time_kind: FeedTimeKind::Published, statuses: vec![station(bikes)], directory: None,
/// };
/// let mut seq = SnapshotSequencer::new();
/// seq.advance(snapshot(1, 2)).unwrap();
/// let updates = seq.advance(snapshot(2, 3)).unwrap().unwrap();
/// // One station changed: its old row out, its new row in.
/// assert_eq!(updates.epoch, 2);
/// assert_eq!(updates.statuses, vec![(station(2), -1), (station(3), 1)]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochUpdates {
    /// The epoch, strictly greater than every earlier one.
    pub epoch: Epoch,
    /// The feed's time of the snapshot.
    pub feed_time: FeedTime,
    /// Status updates.
    pub statuses: Vec<Update<StationStatus>>,
    /// Directory updates.
    pub directory: Vec<Update<DirectoryEntry>>,
}

/// Turns a sequence of snapshots into numbered epochs of updates.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::FeedTimeKind;
/// use velib_dataflow::snapshot::{Snapshot, SnapshotError, SnapshotSequencer};
///
/// let mut seq = SnapshotSequencer::new();
/// let empty = |feed_time| Snapshot {
///     feed_time, feed_time_kind: FeedTimeKind::Published, statuses: vec![], directory: None,
/// };
/// // Nothing changed: no epoch.
/// assert_eq!(seq.advance(empty(100)).unwrap(), None);
/// // Older than the last accepted: refused.
/// assert!(matches!(seq.advance(empty(99)), Err(SnapshotError::Older { .. })));
/// ```
#[derive(Clone, Debug, Default)]
pub struct SnapshotSequencer {
    statuses: SnapshotDiffer<StationStatus>,
    directory: SnapshotDiffer<DirectoryEntry>,
    last_time: Option<FeedTime>,
    last_epoch: Epoch,
    seen_codes: bool,
    seen_types: bool,
    stale: StalePolicy,
    /// Empty or full for longer than this is long (`None`: the default).
    long_after: Option<i64>,
}

/// A station empty or full for more than 30 minutes is so for long, by
/// default.
pub const DEFAULT_LONG_AFTER_SECONDS: i64 = 30 * 60;

impl SnapshotSequencer {
    /// A sequencer whose first epoch will be 1, judging stations stale by
    /// the default [`StalePolicy`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges each snapshot's stations stale by `policy`, at the
    /// snapshot's feed time: a station turning stale (or fresh again) is a
    /// change, published like any other.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use velib_dataflow::feed::{FeedTimeKind, StationId, StationStatus};
    /// use velib_dataflow::freshness::StalePolicy;
    /// use velib_dataflow::snapshot::{Snapshot, SnapshotSequencer};
    ///
    /// let policy = StalePolicy::after_age(Duration::from_secs(600));
    /// let mut seq = SnapshotSequencer::new().judging(policy);
    /// let status = StationStatus {
    ///     station_id: StationId::Num(1), code: None, bikes_available: 3, bike_types: None,
    ///     docks_available: 0, is_installed: true, is_renting: true, is_returning: true,
    ///     last_reported: Some(1_000), judged: Default::default(),
    ///     vehicle_types: Default::default(),
    /// };
    /// let at = |feed_time| Snapshot {
    ///     feed_time, feed_time_kind: FeedTimeKind::Published, statuses: vec![status.clone()], directory: None,
    /// };
    /// assert!(seq.advance(at(1_100)).unwrap().is_some());
    /// // Nothing else changed, but the report is now too old: an epoch.
    /// let updates = seq.advance(at(1_700)).unwrap().unwrap();
    /// assert!(updates.statuses.iter().any(|(s, diff)| s.judged.stale && *diff > 0));
    /// ```
    pub fn judging(mut self, policy: StalePolicy) -> Self {
        self.stale = policy;
        self
    }

    /// Calls a station empty (or full) for long once it has been so for
    /// more than `limit`, counted from the first snapshot that found it so
    /// (default 30 minutes).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use velib_dataflow::feed::{FeedTimeKind, StationId, StationStatus};
    /// use velib_dataflow::snapshot::{Snapshot, SnapshotSequencer};
    ///
    /// let mut seq = SnapshotSequencer::new().long_after(Duration::from_secs(600));
    /// let empty = StationStatus {
    ///     station_id: StationId::Num(1), code: None, bikes_available: 0, bike_types: None,
    ///     docks_available: 9, is_installed: true, is_renting: true, is_returning: true,
    ///     last_reported: None, judged: Default::default(),
    ///     vehicle_types: Default::default(),
    /// };
    /// let at = |feed_time| Snapshot {
    ///     feed_time, feed_time_kind: FeedTimeKind::Published, statuses: vec![empty.clone()], directory: None,
    /// };
    /// seq.advance(at(1_000)).unwrap();
    /// // Still empty, ten minutes and a second later: empty for long, and since 1,000.
    /// let updates = seq.advance(at(1_601)).unwrap().unwrap();
    /// let (now, _) = updates.statuses.iter().find(|(_, diff)| *diff > 0).unwrap();
    /// assert_eq!((now.judged.empty_since, now.judged.empty_long), (Some(1_000), true));
    /// ```
    pub fn long_after(mut self, limit: Duration) -> Self {
        self.long_after = Some(i64::try_from(limit.as_secs()).unwrap_or(i64::MAX));
        self
    }

    /// What is judged of `status` at `feed_time`, given what was judged of
    /// the station at the last snapshot: since when it is empty or full
    /// carries over while it stays so.
    fn judge(&self, status: &StationStatus, before: Option<Judged>, feed_time: FeedTime) -> Judged {
        let empty = status.is_rentable() && status.bikes_available == 0;
        let full = status.is_installed && status.is_returning && status.docks_available == 0;
        let since = |now: bool, was: Option<FeedTime>| now.then(|| was.unwrap_or(feed_time));
        let empty_since = since(empty, before.and_then(|b| b.empty_since));
        let full_since = since(full, before.and_then(|b| b.full_since));
        let limit = self.long_after.unwrap_or(DEFAULT_LONG_AFTER_SECONDS);
        let long =
            |since: Option<FeedTime>| since.is_some_and(|s| feed_time.saturating_sub(s) > limit);
        Judged {
            stale: self.stale.is_stale(status.last_reported, feed_time),
            empty_since,
            full_since,
            empty_long: long(empty_since),
            full_long: long(full_since),
        }
    }

    /// A sequencer that goes on from a state already published: `statuses`
    /// and `directory` as of epoch `last_epoch`, whose snapshot had
    /// `last_feed_time`. The next epoch is `last_epoch + 1`, only what
    /// differs from this state is published, and a snapshot older than
    /// `last_feed_time` is refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::feed::FeedTimeKind;
    /// use velib_dataflow::snapshot::{Snapshot, SnapshotSequencer};
    ///
    /// let mut seq = SnapshotSequencer::resume(41, Some(1000), vec![], vec![]);
    /// let snapshot = |feed_time| Snapshot {
    ///     feed_time, feed_time_kind: FeedTimeKind::Published, statuses: vec![], directory: None,
    /// };
    /// assert!(seq.advance(snapshot(999)).is_err());
    /// assert_eq!(seq.advance(snapshot(1000)).unwrap(), None);
    /// assert_eq!(seq.last_epoch(), 41);
    /// ```
    pub fn resume(
        last_epoch: Epoch,
        last_feed_time: Option<FeedTime>,
        statuses: Vec<StationStatus>,
        directory: Vec<DirectoryEntry>,
    ) -> Self {
        let mut sequencer = SnapshotSequencer {
            last_time: last_feed_time,
            last_epoch,
            seen_codes: statuses.iter().any(|s| s.code.is_some()),
            seen_types: statuses.iter().any(|s| s.bike_types.is_some()),
            ..Self::default()
        };
        sequencer.statuses.diff(statuses);
        sequencer.directory.diff(directory);
        sequencer
    }

    /// The last epoch produced (0 before the first).
    pub fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }

    /// The published feed time of the last accepted snapshot.
    pub fn last_feed_time(&self) -> Option<FeedTime> {
        self.last_time
    }

    /// The current statuses, as of the last accepted snapshot.
    pub fn statuses(&self) -> impl Iterator<Item = &StationStatus> {
        self.statuses.current()
    }

    /// The current directory, as of the last accepted snapshot.
    pub fn directory(&self) -> impl Iterator<Item = &DirectoryEntry> {
        self.directory.current()
    }

    /// Accepts `snapshot` and returns its epoch's updates, `None` if it
    /// changes nothing, or an error if it is refused (then nothing changes).
    pub fn advance(&mut self, snapshot: Snapshot) -> Result<Option<EpochUpdates>, SnapshotError> {
        let published = snapshot.feed_time_kind == FeedTimeKind::Published;
        if let (Some(last), true) = (self.last_time, published) {
            if snapshot.feed_time < last {
                return Err(SnapshotError::Older {
                    feed_time: snapshot.feed_time,
                    last_accepted: last,
                });
            }
        }
        let n = snapshot.statuses.len();
        if n > 0 {
            if self.seen_codes && snapshot.statuses.iter().all(|s| s.code.is_none()) {
                return Err(SnapshotError::Outage(format!(
                    "all {n} stations lost their code"
                )));
            }
            if self.seen_types && snapshot.statuses.iter().all(|s| s.bike_types.is_none()) {
                return Err(SnapshotError::Outage(format!(
                    "all {n} stations lost their bike types"
                )));
            }
        }
        self.seen_codes |= snapshot.statuses.iter().any(|s| s.code.is_some());
        self.seen_types |= snapshot.statuses.iter().any(|s| s.bike_types.is_some());
        if published {
            self.last_time = Some(snapshot.feed_time);
        }
        let mut statuses = snapshot.statuses;
        for status in &mut statuses {
            let before = self.statuses.get(&status.station_id).map(|s| s.judged);
            status.judged = self.judge(status, before, snapshot.feed_time);
        }
        let statuses = self.statuses.diff(statuses);
        let directory = match snapshot.directory {
            Some(entries) => self.directory.diff(entries),
            None => Vec::new(),
        };
        if statuses.is_empty() && directory.is_empty() {
            return Ok(None);
        }
        self.last_epoch += 1;
        Ok(Some(EpochUpdates {
            epoch: self.last_epoch,
            feed_time: snapshot.feed_time,
            statuses,
            directory,
        }))
    }
}

/// What a list of updates leaves for each key: its new row, or `None` when
/// the key is gone. This is what is published for an epoch: one record per
/// changed key, a tombstone for a key that went.
///
/// # Examples
///
/// ```
/// use velib_dataflow::snapshot::{net_changes, Keyed};
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Row(u32, &'static str);
/// impl Keyed for Row {
///     type Key = u32;
///     fn key(&self) -> &u32 { &self.0 }
///     fn same_as(&self, other: &Self) -> bool { self == other }
/// }
/// let updates = vec![(Row(1, "a"), -1), (Row(1, "c"), 1), (Row(2, "b"), -1)];
/// let net = net_changes(&updates);
/// assert_eq!(net.get(&1), Some(&Some(&Row(1, "c"))));
/// assert_eq!(net.get(&2), Some(&None));
/// ```
pub fn net_changes<V: Keyed>(
    updates: &[Update<V>],
) -> std::collections::BTreeMap<V::Key, Option<&V>> {
    let mut net = std::collections::BTreeMap::new();
    for (row, diff) in updates {
        let slot = net.entry(row.key().clone()).or_insert(None);
        if *diff > 0 {
            *slot = Some(row);
        }
    }
    net
}

/// Which stations to keep (the seeds kept two: `--stations 16107,32017`).
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::StationId;
/// use velib_dataflow::snapshot::StationSelection;
///
/// let some = StationSelection::only(["16107", "32017"]);
/// assert!(some.keeps(Some("16107"), &StationId::Num(213688169)));
/// assert!(!some.keeps(Some("9020"), &StationId::Num(36255)));
/// assert!(StationSelection::all().keeps(None, &StationId::Num(1)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct StationSelection {
    only: Option<std::collections::HashSet<String>>,
}

impl StationSelection {
    /// Every station.
    pub fn all() -> Self {
        StationSelection { only: None }
    }

    /// Only the stations with these codes or ids.
    pub fn only<S: Into<String>>(codes_or_ids: impl IntoIterator<Item = S>) -> Self {
        StationSelection {
            only: Some(codes_or_ids.into_iter().map(Into::into).collect()),
        }
    }

    /// Whether a station with this code and id is kept.
    pub fn keeps(&self, code: Option<&str>, id: &StationId) -> bool {
        match &self.only {
            None => true,
            Some(set) => code.is_some_and(|c| set.contains(c)) || set.contains(&id.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{gbfs, FeedTimeKind};

    /// A station whose vehicles change type, its counts by kind the same
    /// (both are "other" to a guess from the ids), is published again: with
    /// `--vehicle-types` its postcode's record changes. A new
    /// `last_reported` alone is still no change.
    #[test]
    fn a_change_of_vehicle_types_alone_is_published() {
        let snapshot = |feed_time: i64, types: &str, reported: i64| {
            let status = format!(
                r#"{{"last_updated": {feed_time}, "ttl": 0, "version": "3.0", "data": {{"stations": [
                  {{"station_id": "a", "num_vehicles_available": 2, "vehicle_types_available": {types},
                    "is_installed": true, "is_renting": true, "is_returning": true,
                    "last_reported": {reported}}}]}}}}"#
            );
            let status = gbfs::parse_status(status.as_bytes()).unwrap();
            Snapshot {
                feed_time,
                feed_time_kind: FeedTimeKind::Published,
                statuses: status.stations,
                directory: None,
            }
        };
        let mut sequencer = SnapshotSequencer::new();
        let two_of_one = r#"[{"vehicle_type_id": "t1", "count": 2}]"#;
        let one_each =
            r#"[{"vehicle_type_id": "t1", "count": 1}, {"vehicle_type_id": "t2", "count": 1}]"#;
        let first = sequencer
            .advance(snapshot(100, two_of_one, 90))
            .unwrap()
            .unwrap();
        assert_eq!(first.statuses.len(), 1);
        let changed = sequencer
            .advance(snapshot(110, one_each, 100))
            .unwrap()
            .unwrap();
        let mut seen: Vec<_> = changed
            .statuses
            .iter()
            .map(|(status, diff)| (*diff, status.vehicle_types.len(), status.bike_types))
            .collect();
        seen.sort();
        let kinds = first.statuses[0].0.bike_types;
        assert_eq!(
            seen,
            [(-1, 1, kinds), (1, 2, kinds)],
            "the kinds did not change"
        );
        assert_eq!(
            sequencer.advance(snapshot(120, one_each, 115)).unwrap(),
            None
        );
    }
}
