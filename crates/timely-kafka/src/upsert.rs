//! From keyed upserts (what a compacted Kafka topic holds) to a collection.

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// A stream of keyed upserts: `(key, value, time)`, the key's new value at
/// that time (`None`: the key is gone). What a
/// [`KafkaSource`](crate::source::KafkaSource) gives, and what [`Upsert`]
/// makes a collection of.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use timely_kafka::upsert::{Upsert, Upserts};
///
/// timely::example(|scope| {
///     // What a source gives: key "a" set at time 1, gone at time 2.
///     let upserts: Upserts<_, String, u64> = vec![("a".into(), Some(12), 1), ("a".into(), None, 2)].to_stream(scope);
///     upserts.upsert().inspect(|(value, time, diff)| assert_eq!((*value, *diff), (12, if *time == 1 { 1 } else { -1 })));
/// });
/// ```
pub type Upserts<'s, T, K, V> = Stream<'s, T, Vec<(K, Option<V>, T)>>;

/// Upserts of one time, waiting for the frontier to pass it: only the last
/// of each key is kept, which is all that applying them in order decides
/// (a source starting at a later epoch releases a whole history at once).
type Pending<T, K, V> = (Capability<T>, HashMap<K, Option<V>>);

/// Keyed upserts as a collection, in any totally ordered time (the updates
/// of a [`KafkaSource`](crate::source::KafkaSource) are such a stream).
///
/// Each `(key, value, time)` replaces the key's value at that time (`None`
/// removes it), so the output retracts the old value and inserts the new
/// one. An upsert that repeats the current value changes nothing. Upserts
/// of one key at one time apply in the order they arrive. Keys are spread
/// over workers by hash; each worker keeps the current value of its keys.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::{Arc, Mutex};
/// use timely::dataflow::operators::ToStream;
/// use timely_kafka::upsert::Upsert;
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = Arc::clone(&out);
/// timely::example(move |scope| {
///     let upserts = vec![("a".to_string(), Some(1), 1u64), ("b".into(), Some(5), 1), ("a".into(), Some(2), 2)];
///     upserts.to_stream(scope).upsert().inspect(move |(v, _, d)| sink.lock().unwrap().push((*v, *d)));
/// });
/// // Summed over time, the updates leave one current value per key.
/// let mut current = BTreeMap::new();
/// out.lock().unwrap().iter().for_each(|(v, d)| *current.entry(*v).or_insert(0) += d);
/// current.retain(|_, d| *d != 0);
/// assert_eq!(current, BTreeMap::from([(2, 1), (5, 1)]));
/// ```
pub trait Upsert<'s, T: Timestamp, K, V> {
    /// The collection of the current value of every key.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::ToStream;
    /// use timely_kafka::upsert::Upsert;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let sink = out.clone();
    /// timely::example(move |scope| {
    ///     let a = || "a".to_string();
    ///     let upserts = vec![(a(), Some(1), 1u64), (a(), Some(2), 2), (a(), Some(2), 3), (a(), None, 4)];
    ///     upserts.to_stream(scope).upsert()
    ///         .inspect(move |x| sink.lock().unwrap().push(*x));
    /// });
    /// let mut out = out.lock().unwrap().clone();
    /// out.sort_by_key(|(_, t, d)| (*t, *d));
    /// assert_eq!(out, vec![(1, 1, 1), (1, 2, -1), (2, 2, 1), (2, 4, -1)]);
    /// ```
    fn upsert(self) -> VecCollection<'s, T, V>;

    /// As [`Upsert::upsert`], keeping each value's key: the collection of
    /// `(key, value)` pairs, one per key. (A state changelog needs no such
    /// copy: [`crate::state::Changelog::state_changes`] reads the upserts.)
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::ToStream;
    /// use timely_kafka::upsert::Upsert;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let sink = out.clone();
    /// timely::example(move |scope| {
    ///     let upserts = vec![("a".to_string(), Some(1), 1u64), ("a".to_string(), Some(2), 2)];
    ///     upserts.to_stream(scope).upsert_keyed()
    ///         .inspect(move |x| sink.lock().unwrap().push(x.clone()));
    /// });
    /// let mut out = out.lock().unwrap().clone();
    /// out.sort_by_key(|(_, t, d)| (*t, *d));
    /// let a = || "a".to_string();
    /// assert_eq!(out, vec![((a(), 1), 1, 1), ((a(), 1), 2, -1), ((a(), 2), 2, 1)]);
    /// ```
    fn upsert_keyed(self) -> VecCollection<'s, T, (K, V)>;
}

impl<'s, T, K, V> Upsert<'s, T, K, V> for Upserts<'s, T, K, V>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    fn upsert(self) -> VecCollection<'s, T, V> {
        self.upsert_keyed().map(|(_key, value)| value)
    }

    fn upsert_keyed(self) -> VecCollection<'s, T, (K, V)> {
        let mut current: HashMap<K, V> = HashMap::new();
        settled_upserts(self, "Upsert", move |time, upserts, updates| {
            for (key, value) in upserts {
                let old = match &value {
                    Some(new) if current.get(&key) == Some(new) => continue,
                    Some(new) => current.insert(key.clone(), new.clone()),
                    None => current.remove(&key),
                };
                if let Some(old) = old {
                    updates.push(((key.clone(), old), time.clone(), -1));
                }
                if let Some(new) = value {
                    updates.push(((key, new), time.clone(), 1));
                }
            }
        })
        .as_collection()
    }
}

/// Gives `settle` each time's upserts (the last of each key) once the
/// frontier has passed that time, in time order, with keys spread over
/// workers by hash: what every reader of upserts shares. What `settle`
/// pushes is given at that time.
pub(crate) fn settled_upserts<'s, T, K, V, D>(
    upserts: Upserts<'s, T, K, V>,
    name: &str,
    mut settle: impl FnMut(&T, HashMap<K, Option<V>>, &mut Vec<D>) + 'static,
) -> Stream<'s, T, Vec<D>>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash,
    V: ExchangeData,
    D: Clone + 'static,
{
    upserts.unary_frontier::<CapacityContainerBuilder<Vec<D>>, _, _, _>(
        Exchange::new(|(key, _, _): &(K, Option<V>, T)| key.hashed()),
        name,
        |_capability, _info| {
            let mut pending: BTreeMap<T, Pending<T, K, V>> = BTreeMap::new();
            let mut settled = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    for (key, value, time) in data.drain(..) {
                        pending
                            .entry(time.clone())
                            .or_insert_with(|| (capability.delayed(&time, 0), HashMap::new()))
                            .1
                            .insert(key, value);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = entry.key().clone();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, upserts) = entry.remove();
                    settle(&time, upserts, &mut settled);
                    output.session(&capability).give_iterator(settled.drain(..));
                }
            }
        },
    )
}
