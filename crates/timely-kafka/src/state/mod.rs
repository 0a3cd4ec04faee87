//! The state changelog: what a restarted dataflow needs to resume exactly at
//! its last committed epoch, without reading its inputs' history again.
//!
//! The state of a dataflow fed by upsert sources is the current value of
//! every key of every source. The sink ([`KafkaSink::kafka_sink_with_state`](super::sink::KafkaSink::kafka_sink_with_state))
//! writes, in each epoch's transaction, the keys whose value changed to a
//! compacted **state topic** (one record per key, a tombstone when the key is
//! gone), next to the epoch's output and its progress record; the progress
//! record says how many keys each state partition holds. A restart reads the
//! last committed progress ([`super::progress::last_progress`]), restores the
//! state from the state topic ([`restore_state`]) at that epoch, and seeks
//! every input partition to the position the progress names. Restart cost is
//! the state topic's size: bounded by the number of keys once the cleaner has
//! compacted it, as Kafka Streams' state-store changelogs are.
//!
//! A state record's key is the source's name, a NUL byte, and the source's
//! key as JSON; its value is the key's value as JSON; its `velib-epoch`
//! header is the epoch that set it. Keys are spread over the state topic's
//! partitions by a hash of the key ([`state_partition`]), so that the count of
//! keys per partition can be checked at restore.
//!
//! The changes are made where the state lives, on every worker
//! ([`Changelog::state_changes`], in `changes.rs`): each is a record to write
//! and how it changes the count of live keys, so the sink's worker only
//! writes and sums. Restoring is in `restore.rs`.
//!
//! # Examples
//!
//! ```
//! use timely_kafka::state::{source_of, state_key};
//!
//! let key = state_key("events", &7u64);
//! assert_eq!(key, b"events\07");
//! assert_eq!(source_of(&key), Some("events"));
//! ```

mod changes;
mod restore;

pub use changes::{Changelog, StateChange, StateChanges};
pub use restore::{read_state_share, restore_state, restored_upserts, RestoreConfig};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use timely::dataflow::Scope;
use timely::progress::Timestamp;

/// A state record: its key (the source's name, NUL, the key as JSON) and
/// its value (JSON).
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{source_of, state_key, StateRecord};
///
/// let record: StateRecord = (state_key("counters", "a"), b"12".to_vec());
/// assert_eq!(source_of(&record.0), Some("counters"));
/// assert_eq!(serde_json::from_slice::<u64>(&record.1)?, 12);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub type StateRecord = (Vec<u8>, Vec<u8>);

/// What the progress record of an epoch says of the state topic, so that a
/// restore can check it read the whole state.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::StateSummary;
///
/// let summary: StateSummary = serde_json::from_str(
///     r#"{"topic":"counts-state","partitions":3,"keys":{"0":480,"1":502,"2":488},"sources":["entities","events"]}"#)?;
/// assert_eq!(summary.total_keys(), 1470);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    /// The state topic.
    pub topic: String,
    /// Its partitions, when the keys were spread over them.
    pub partitions: i32,
    /// Live keys per partition (a partition not listed has none).
    pub keys: BTreeMap<i32, u64>,
    /// The sources whose keys the state holds.
    pub sources: BTreeSet<String>,
}

impl StateSummary {
    /// Live keys over all partitions.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::StateSummary;
    ///
    /// let mut summary = StateSummary::default();
    /// summary.keys.extend([(0, 3), (2, 4)]);
    /// assert_eq!(summary.total_keys(), 7);
    /// ```
    pub fn total_keys(&self) -> u64 {
        self.keys.values().sum()
    }
}

/// The state record key of `key` of the source named `source`.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::state_key;
///
/// // Two sources may share a key: their records do not collide.
/// assert_eq!(state_key("events", "a"), b"events\0\"a\"");
/// assert_ne!(state_key("events", "a"), state_key("counters", "a"));
/// ```
pub fn state_key<K: Serialize + ?Sized>(source: &str, key: &K) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(source.len() + 24);
    bytes.extend_from_slice(source.as_bytes());
    bytes.push(0);
    serde_json::to_writer(&mut bytes, key).expect("a key serialises to JSON");
    bytes
}

/// The source named in a state record key; `None` when it is not one.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{source_of, state_key};
///
/// assert_eq!(source_of(&state_key("counters", &[1, 2])), Some("counters"));
/// // Not a state record key: no NUL after a source name.
/// assert_eq!(source_of(b"counters"), None);
/// ```
pub fn source_of(state_key: &[u8]) -> Option<&str> {
    let end = state_key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&state_key[..end]).ok()
}

/// The state partition of a state record key: FNV-1a of the key, so that it
/// is the same in every process and every version.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{state_key, state_partition};
///
/// let key = state_key("counters", "a");
/// let partition = state_partition(&key, 6);
/// assert!((0..6).contains(&partition));
/// // The same in every process and every run, so restores can count keys per partition.
/// assert_eq!(partition, state_partition(&key, 6));
/// ```
pub fn state_partition(state_key: &[u8], partitions: i32) -> i32 {
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(state_key_hash(state_key) % partitions).unwrap_or(0)
}

/// FNV-1a of a state record key: fixed, unlike the standard library's
/// hashers, so that every process and version agrees on partitions.
fn state_key_hash(state_key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in state_key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Counts, per state partition, how the live keys change with an epoch's
/// state changes (each [`StateChange::key_delta`]), and notes the sources
/// of new keys.
pub(crate) fn count_keys(summary: &mut StateSummary, changes: &[StateChange]) {
    for change in changes {
        let delta = change.key_delta();
        if delta == 0 {
            continue;
        }
        if delta > 0 {
            if let Some(source) = source_of(change.key()) {
                if !summary.sources.contains(source) {
                    summary.sources.insert(source.to_owned());
                }
            }
        }
        let count = summary
            .keys
            .entry(change.partition(summary.partitions))
            .or_default();
        *count = count.saturating_add_signed(i64::from(delta));
    }
    summary.keys.retain(|_, n| *n > 0);
}

/// An empty stream of state changes: for a sink with no state to keep.
pub(crate) fn no_state<T: Timestamp>(scope: Scope<'_, T>) -> StateChanges<'_, T> {
    timely::dataflow::operators::generic::operator::empty(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_per_partition() {
        let mut summary = StateSummary {
            partitions: 3,
            ..Default::default()
        };
        let a = state_key("s", &1u64);
        let b = state_key("s", &2u64);
        let set = |k: &Vec<u8>, new| StateChange::set(k.clone(), b"1".to_vec(), new);
        count_keys(&mut summary, &[set(&a, true), set(&b, true)]);
        assert_eq!(summary.total_keys(), 2);
        assert_eq!(summary.sources.iter().collect::<Vec<_>>(), ["s"]);
        // A changed value is no new key; a retraction alone is a key gone.
        count_keys(
            &mut summary,
            &[set(&a, false), StateChange::gone(b.clone())],
        );
        assert_eq!(summary.total_keys(), 1);
        assert_eq!(summary.keys, BTreeMap::from([(state_partition(&a, 3), 1)]));
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        // FNV-1a is fixed: a restart in another process or version agrees.
        assert_eq!(
            state_partition(b"", 7),
            (0xcbf2_9ce4_8422_2325u64 % 7) as i32
        );
        for n in 0..100u64 {
            let p = state_partition(&state_key("x", &n), 3);
            assert!((0..3).contains(&p));
        }
        assert_eq!(state_partition(b"abc", 0), 0);
    }

    #[test]
    fn a_key_without_source_is_none() {
        assert_eq!(source_of(b"no separator"), None);
        assert_eq!(source_of(b"\xff\0x"), None);
    }
}
