//! What an epoch changes in the state: one [`StateChange`] per key whose
//! value changed, built where the keys live (on every worker, from the
//! upserts or the collection the state is made of), so that the sink only
//! writes them and sums their key counts.

use super::{state_key, state_key_hash};
use crate::upsert::{settled_upserts, Upserts};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// A stream of state changes, each at the time (the epoch) it happened:
/// what [`KafkaSink::kafka_sink_with_state`](crate::sink::KafkaSink::kafka_sink_with_state)
/// writes to the state topic.
pub type StateChanges<'s, T> = Stream<'s, T, Vec<StateChange>>;

/// One key's change in one epoch, as the state topic records it: the state
/// record key ([`state_key`]), its new value as JSON or a tombstone, and
/// how the count of live keys changes (so that the progress record can say
/// how many keys each state partition holds).
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{state_key, state_partition, StateChange};
///
/// let key = state_key("counters", "a");
/// let new = StateChange::set(key.clone(), b"1".to_vec(), true);
/// assert_eq!((new.value(), new.key_delta()), (Some(&b"1"[..]), 1));
/// let changed = StateChange::set(key.clone(), b"2".to_vec(), false);
/// assert_eq!(changed.key_delta(), 0);
/// let gone = StateChange::gone(key.clone());
/// assert_eq!((gone.value(), gone.key_delta()), (None, -1));
/// // Its partition is the key's state partition.
/// assert_eq!(gone.partition(6), state_partition(&key, 6));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateChange {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    key_delta: i8,
    /// The key's hash ([`state_key_hash`]), computed once where the change
    /// is made rather than twice on the sink's worker.
    hash: u64,
}

impl StateChange {
    /// The key now holds `value`; `new` when it held nothing before.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{state_key, StateChange};
    ///
    /// let change = StateChange::set(state_key("counters", "a"), b"12".to_vec(), true);
    /// assert_eq!(change.key(), b"counters\0\"a\"");
    /// ```
    pub fn set(key: Vec<u8>, value: Vec<u8>, new: bool) -> Self {
        let hash = state_key_hash(&key);
        StateChange {
            key,
            value: Some(value),
            key_delta: i8::from(new),
            hash,
        }
    }

    /// The key is gone: a tombstone on the state topic.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{state_key, StateChange};
    ///
    /// assert_eq!(StateChange::gone(state_key("counters", "a")).value(), None);
    /// ```
    pub fn gone(key: Vec<u8>) -> Self {
        let hash = state_key_hash(&key);
        StateChange {
            key,
            value: None,
            key_delta: -1,
            hash,
        }
    }

    /// The state record key.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{source_of, state_key, StateChange};
    ///
    /// let change = StateChange::gone(state_key("events", &7u64));
    /// assert_eq!(source_of(change.key()), Some("events"));
    /// ```
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key's new value (JSON); `None` for a tombstone.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{state_key, StateChange};
    ///
    /// let change = StateChange::set(state_key("counters", "a"), b"12".to_vec(), false);
    /// assert_eq!(serde_json::from_slice::<u64>(change.value().unwrap())?, 12);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// How the count of live keys changes: `1` for a new key, `-1` for a key
    /// gone, `0` for a new value of a live key.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{state_key, StateChange};
    ///
    /// assert_eq!(StateChange::set(state_key("s", "a"), b"1".to_vec(), false).key_delta(), 0);
    /// ```
    pub fn key_delta(&self) -> i8 {
        self.key_delta
    }

    /// The key's partition of a state topic of `partitions` partitions
    /// ([`state_partition`](super::state_partition)).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::{state_key, StateChange};
    ///
    /// let change = StateChange::gone(state_key("s", "a"));
    /// assert!((0..4).contains(&change.partition(4)));
    /// // No partitions counts as one.
    /// assert_eq!(change.partition(0), 0);
    /// ```
    pub fn partition(&self, partitions: i32) -> i32 {
        let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
        i32::try_from(self.hash % partitions).unwrap_or(0)
    }

    /// This change followed by `later`, a change of the same key: what the
    /// two epochs change together, `None` when together they change
    /// nothing a restore would read (a key born and gone).
    pub(crate) fn then(self, later: StateChange) -> Option<StateChange> {
        debug_assert_eq!(self.key, later.key);
        let key_delta = self.key_delta + later.key_delta;
        if key_delta == 0 && later.value.is_none() {
            return None;
        }
        Some(StateChange { key_delta, ..later })
    }
}

/// State changes from the state a dataflow keeps: the upserts of a source,
/// or a keyed collection (one value per key).
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{capture::Extract, Capture, ToStream};
/// use timely_kafka::state::{state_key, Changelog};
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<u64, _, _>(|scope| {
///         let upserts = vec![("a".to_string(), Some(1u64), 1u64), ("a".into(), Some(2), 2), ("a".into(), None, 3)];
///         upserts.to_stream(scope).state_changes("counters").capture_into(send);
///     });
/// });
/// let changes: Vec<(u64, Vec<_>)> = receive.extract();
/// let deltas: Vec<(u64, i8)> = changes.iter().map(|(t, c)| (*t, c[0].key_delta())).collect();
/// // New at 1, changed at 2, gone at 3.
/// assert_eq!(deltas, [(1, 1), (2, 0), (3, -1)]);
/// assert_eq!(changes[0].1[0].key(), state_key("counters", "a"));
/// ```
pub trait Changelog<'s, T: Timestamp> {
    /// The changes, at each time, of the state of the source named `source`
    /// (its name prefixes its keys in the state topic, so that several
    /// sources share one).
    ///
    /// # Examples
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Inspect;
    /// use timely_kafka::state::Changelog;
    ///
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, counters) = scope.new_collection::<(String, u64), isize>();
    ///         counters.state_changes("counters").inspect(|change| assert_eq!(change.value(), Some(&b"42"[..])));
    ///         input
    ///     });
    ///     input.insert(("bikes".to_string(), 42));
    /// });
    /// ```
    fn state_changes(self, source: &str) -> StateChanges<'s, T>;
}

impl<'s, T, K, V> Changelog<'s, T> for Upserts<'s, T, K, V>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash + Serialize,
    V: ExchangeData + Serialize,
{
    /// Each settled upsert is a change; the worker keeps only which keys are
    /// live, not their values (the dataflow holds those), so an upsert that
    /// repeats a value is written again, which a compacted topic absorbs.
    fn state_changes(self, source: &str) -> StateChanges<'s, T> {
        let source = source.to_owned();
        let mut live: HashSet<K> = HashSet::new();
        settled_upserts(self, "StateChanges", move |_time, upserts, changes| {
            for (key, value) in upserts {
                match value {
                    Some(value) => {
                        let value = serde_json::to_vec(&value).expect("a value serialises to JSON");
                        let new = !live.contains(&key);
                        changes.push(StateChange::set(state_key(&source, &key), value, new));
                        if new {
                            live.insert(key);
                        }
                    }
                    None if live.remove(&key) => {
                        changes.push(StateChange::gone(state_key(&source, &key)));
                    }
                    None => {}
                }
            }
        })
    }
}

/// A time's updates of a keyed collection, waiting for the frontier.
type PendingUpdates<T, K, V> = (Capability<T>, Vec<((K, V), isize)>);

impl<'s, T, K, V> Changelog<'s, T> for VecCollection<'s, T, (K, V)>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash + Serialize,
    V: ExchangeData + Serialize,
{
    /// Each time's updates, consolidated per key: a key whose diffs sum to
    /// `1` is new, `-1` gone, `0` with an inserted value changed. If the
    /// collection breaks the one-value-per-key rule, the greatest inserted
    /// value wins.
    fn state_changes(self, source: &str) -> StateChanges<'s, T> {
        let source = source.to_owned();
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<StateChange>>, _, _, _>(
                Exchange::new(|((key, _), _, _): &((K, V), T, isize)| key.hashed()),
                "StateChanges",
                |_capability, _info| {
                    let mut pending: BTreeMap<T, PendingUpdates<T, K, V>> = BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|capability, data| {
                            // Grouped by each update's own time: differential
                            // ships updates under coarser capabilities.
                            for (update, time, diff) in data.drain(..) {
                                pending
                                    .entry(time.clone())
                                    .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                                    .1
                                    .push((update, diff));
                            }
                        });
                        while let Some(entry) = pending.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (capability, mut updates) = entry.remove();
                            differential_dataflow::consolidation::consolidate(&mut updates);
                            let mut session = output.session(&capability);
                            for (key, (delta, value)) in net_per_key(updates) {
                                let key = state_key(&source, &key);
                                let value = value.map(|v| {
                                    serde_json::to_vec(&v).expect("a value serialises to JSON")
                                });
                                match (delta, value) {
                                    (_, Some(value)) => {
                                        session.give(StateChange::set(key, value, delta > 0))
                                    }
                                    (d, None) if d < 0 => session.give(StateChange::gone(key)),
                                    (_, None) => {}
                                }
                            }
                        }
                    }
                },
            )
    }
}

/// Consolidated updates (sorted by key, then value) as, per key, the sum of
/// its diffs and its greatest inserted value.
fn net_per_key<K: Eq, V>(updates: Vec<((K, V), isize)>) -> Vec<(K, (isize, Option<V>))> {
    let mut net: Vec<(K, (isize, Option<V>))> = Vec::new();
    for ((key, value), diff) in updates {
        let inserted = (diff > 0).then_some(value);
        match net.last_mut() {
            Some((last, (sum, greatest))) if *last == key => {
                *sum += diff;
                if inserted.is_some() {
                    *greatest = inserted;
                }
            }
            _ => net.push((key, (diff, inserted))),
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_changes_of_a_key_win_and_deltas_add() {
        let key = || b"s\0\"a\"".to_vec();
        let born = StateChange::set(key(), b"1".to_vec(), true);
        let changed = StateChange::set(key(), b"2".to_vec(), false);
        let both = born.clone().then(changed).unwrap();
        assert_eq!((both.value(), both.key_delta()), (Some(&b"2"[..]), 1));
        // Born and gone: nothing a restore reads.
        assert_eq!(born.clone().then(StateChange::gone(key())), None);
        // Gone and born again: a changed value.
        let again = StateChange::gone(key()).then(born).unwrap();
        assert_eq!(again.key_delta(), 0);
    }

    #[test]
    fn a_collection_key_nets_its_diffs() {
        let updates = vec![(("a", 3), -1), (("a", 4), 1), (("b", 5), -1), (("c", 1), 1)];
        assert_eq!(
            net_per_key(updates),
            vec![("a", (0, Some(4))), ("b", (-1, None)), ("c", (1, Some(1)))]
        );
    }
}
