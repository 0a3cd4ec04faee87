//! From a collection with (at most) one record per key to upserts of each
//! key's record: what [`postcode_counts`](super::postcode_counts) does with
//! collections (snapshots replayed, your own inputs) before placing
//! stations, which takes upserts.
//!
//! The conversion is exact for any collection: each key keeps the multiset
//! of its records present, and a key with several counts as its greatest
//! one, as the per-station reduction it replaces did.

use differential_dataflow::difference::IsZero;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{ExchangeData, VecCollection};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::hash::Hash;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely_kafka::upsert::Upserts;

type Pending<T, K, V> = (Capability<T>, FxHashMap<K, Vec<(V, isize)>>);

/// Upserts of each key's record in `collection` (`key` says whose it is):
/// at every time a key's present records change, its greatest present
/// record, or `None` once it has none.
///
/// # Examples
///
/// ```
/// use differential_dataflow::input::Input;
/// use timely::dataflow::operators::{Capture, capture::Extract};
/// use velib_dataflow::dataflow::latest_per_key;
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::execute_directly(move |worker| {
///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, rows) = scope.new_collection::<(char, u32), isize>();
///         latest_per_key(rows, |(key, _)| *key).capture_into(send);
///         input
///     });
///     input.insert(('a', 1));
///     input.advance_to(1);
///     input.remove(('a', 1));
///     input.insert(('a', 2));
///     input.advance_to(2);
///     input.remove(('a', 2));
/// });
/// let mut upserts: Vec<_> = receive.extract().into_iter().flat_map(|(_, u)| u).collect();
/// upserts.sort_by_key(|(_, _, time)| *time);
/// assert_eq!(upserts, [('a', Some(('a', 1)), 0), ('a', Some(('a', 2)), 1), ('a', None, 2)]);
/// ```
pub fn latest_per_key<'s, T, K, V>(
    collection: VecCollection<'s, T, V>,
    key: impl Fn(&V) -> K + 'static,
) -> Upserts<'s, T, K, V>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    let key = std::rc::Rc::new(key);
    let key_of = std::rc::Rc::clone(&key);
    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(
            // A key's records meet on one worker.
            Exchange::new(move |(row, _, _): &(V, T, isize)| key_of(row).hashed()),
            "LatestPerKey",
            move |_capability, _info| {
                // Each key's present records, with their multiplicities.
                let mut present: FxHashMap<K, BTreeMap<V, isize>> = FxHashMap::default();
                let mut pending: BTreeMap<T, Pending<T, K, V>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (row, time, diff) in data.drain(..) {
                            let changes = pending.entry(time.clone()).or_insert_with(|| {
                                (capability.delayed(&time, 0), FxHashMap::default())
                            });
                            changes.1.entry(key(&row)).or_default().push((row, diff));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let time = entry.key().clone();
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let (capability, changes) = entry.remove();
                        let mut session = output.session(&capability);
                        for (key, diffs) in changes {
                            let rows = present.entry(key.clone()).or_default();
                            let before = greatest_present(rows);
                            for (row, diff) in diffs {
                                let count = rows.entry(row.clone()).or_default();
                                *count += diff;
                                if count.is_zero() {
                                    rows.remove(&row);
                                }
                            }
                            let after = greatest_present(rows);
                            if rows.is_empty() {
                                present.remove(&key);
                            }
                            if before != after {
                                session.give((key, after, time.clone()));
                            }
                        }
                    }
                }
            },
        )
}

/// The greatest record present (with a positive multiplicity).
fn greatest_present<V: Clone>(rows: &BTreeMap<V, isize>) -> Option<V> {
    rows.iter()
        .rev()
        .find(|(_, count)| **count > 0)
        .map(|(row, _)| row.clone())
}
