//! Summing what the stations add to each postcode into the postcode's
//! counts: a collection with one `(postcode, counts)` per postcode that has
//! a station, whose change is a retraction of the old counts and an
//! insertion of the new.
//!
//! The work per epoch is one hash lookup per postcode that changed; the
//! state is the current counts of each postcode this worker owns.

use super::place_stations::PostcodeDeltas;
use crate::counts::PostcodeCounts;
use crate::postcode::Postcode;
use differential_dataflow::difference::IsZero;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

type Pending<T> = (Capability<T>, FxHashMap<Postcode, PostcodeCounts>);

/// The counts of every postcode, from what stations add to and take from
/// them ([`place_stations`](super::place_stations)). A postcode whose
/// stations all left is retracted and not inserted again.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use velib_dataflow::counts::PostcodeCounts;
/// use velib_dataflow::dataflow::postcode_totals;
/// use velib_dataflow::postcode::Postcode;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::example(move |scope| {
///     let pc = Postcode::parse("75016").unwrap();
///     let one = PostcodeCounts { bikes: 2, stations: 1, ..Default::default() };
///     let gone = PostcodeCounts { bikes: -2, stations: -1, ..Default::default() };
///     let deltas = vec![(pc, one, 1u64), (pc, one, 1), (pc, gone, 2), (pc, gone, 3)];
///     postcode_totals(deltas.to_stream(scope))
///         .inspect(move |x| sink.lock().unwrap().push((x.0.1.bikes, x.1, x.2)));
/// });
/// let mut out = out.lock().unwrap().clone();
/// out.sort_by_key(|(_, time, diff)| (*time, *diff));
/// // Two stations at 1, one at 2, none at 3.
/// assert_eq!(out, [(4, 1, 1), (4, 2, -1), (2, 2, 1), (2, 3, -1)]);
/// ```
pub fn postcode_totals<'s, T>(
    deltas: PostcodeDeltas<'s, T>,
) -> VecCollection<'s, T, (Postcode, PostcodeCounts)>
where
    T: Timestamp + TotalOrder,
{
    deltas
        .unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(
            Exchange::new(|(postcode, _, _): &(Postcode, PostcodeCounts, T)| postcode.hashed()),
            "PostcodeTotals",
            |_capability, _info| {
                let mut totals: FxHashMap<Postcode, PostcodeCounts> = FxHashMap::default();
                let mut pending: BTreeMap<T, Pending<T>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (postcode, delta, time) in data.drain(..) {
                            let deltas = pending.entry(time.clone()).or_insert_with(|| {
                                (capability.delayed(&time, 0), FxHashMap::default())
                            });
                            *deltas.1.entry(postcode).or_default() += &delta;
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let time = entry.key().clone();
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let (capability, deltas) = entry.remove();
                        let mut session = output.session(&capability);
                        for (postcode, delta) in deltas {
                            if delta.is_zero() {
                                continue;
                            }
                            match totals.entry(postcode) {
                                Entry::Occupied(mut known) => {
                                    session.give(((postcode, *known.get()), time.clone(), -1));
                                    *known.get_mut() += &delta;
                                    if known.get().is_zero() {
                                        known.remove();
                                    } else {
                                        session.give(((postcode, *known.get()), time.clone(), 1));
                                    }
                                }
                                Entry::Vacant(new) => {
                                    session.give(((postcode, delta), time.clone(), 1));
                                    new.insert(delta);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}
