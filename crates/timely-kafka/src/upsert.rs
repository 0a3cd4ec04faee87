//! From keyed upserts (what a compacted Kafka topic holds) to a collection.

use super::protocol::Epoch;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Upserts of one time, waiting for the frontier to pass it: only the last
/// of each key is kept, which is all that applying them in order decides
/// (a source starting at a later epoch releases a whole history at once).
type Pending<K, V> = (Capability<Epoch>, HashMap<K, Option<V>>);

/// The collection of the current value of every key: each `(key, value,
/// epoch)` replaces the key's value at that epoch (`None` removes it), so
/// the output retracts the old value and inserts the new one. An upsert
/// that repeats the current value changes nothing. Upserts of one key at one
/// epoch apply in the order they arrive.
///
/// Keys are spread over workers by hash; each worker keeps the current
/// value of its keys.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use timely_kafka::upsert::upsert;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::example(move |scope| {
///     let a = || "a".to_string();
///     let upserts = vec![(a(), Some(1), 1u64), (a(), Some(2), 2), (a(), Some(2), 3), (a(), None, 4)];
///     upsert(upserts.to_stream(scope))
///         .inspect(move |x| sink.lock().unwrap().push(*x));
/// });
/// let mut out = out.lock().unwrap().clone();
/// out.sort_by_key(|(_, t, d)| (*t, *d));
/// assert_eq!(out, vec![(1, 1, 1), (1, 2, -1), (2, 2, 1), (2, 4, -1)]);
/// ```
pub fn upsert<'s, K, V>(
    upserts: Stream<'s, Epoch, Vec<(K, Option<V>, Epoch)>>,
) -> VecCollection<'s, Epoch, V>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    upsert_keyed(upserts).map(|(_key, value)| value)
}

/// As [`upsert`], keeping each value's key: the collection of `(key,
/// value)` pairs, one per key, which is what a state changelog records
/// ([`crate::state::state_records`]).
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use timely_kafka::upsert::upsert_keyed;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::example(move |scope| {
///     let upserts = vec![("a".to_string(), Some(1), 1u64), ("a".to_string(), Some(2), 2)];
///     upsert_keyed(upserts.to_stream(scope))
///         .inspect(move |x| sink.lock().unwrap().push(x.clone()));
/// });
/// let mut out = out.lock().unwrap().clone();
/// out.sort_by_key(|(_, t, d)| (*t, *d));
/// let a = || "a".to_string();
/// assert_eq!(out, vec![((a(), 1), 1, 1), ((a(), 1), 2, -1), ((a(), 2), 2, 1)]);
/// ```
pub fn upsert_keyed<'s, K, V>(
    upserts: Stream<'s, Epoch, Vec<(K, Option<V>, Epoch)>>,
) -> VecCollection<'s, Epoch, (K, V)>
where
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    upserts
        .unary_frontier::<CapacityContainerBuilder<Vec<((K, V), Epoch, isize)>>, _, _, _>(
            Exchange::new(|(key, _, _): &(K, Option<V>, Epoch)| key.hashed()),
            "Upsert",
            |_capability, _info| {
                let mut current: HashMap<K, V> = HashMap::new();
                let mut pending: BTreeMap<Epoch, Pending<K, V>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (key, value, time) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| (capability.delayed(&time, 0), HashMap::new()))
                                .1
                                .insert(key, value);
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let time = *entry.key();
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let (capability, upserts) = entry.remove();
                        let mut session = output.session(&capability);
                        for (key, value) in upserts {
                            let old = match &value {
                                Some(new) if current.get(&key) == Some(new) => continue,
                                Some(new) => current.insert(key.clone(), new.clone()),
                                None => current.remove(&key),
                            };
                            if let Some(old) = old {
                                session.give(((key.clone(), old), time, -1));
                            }
                            if let Some(new) = value {
                                session.give(((key, new), time, 1));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}
