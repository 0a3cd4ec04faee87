//! Summing the stations of each postcode into its totals: a collection with
//! one `(postcode, totals)` per postcode that has a station, whose change is
//! a retraction of the old totals and an insertion of the new.
//!
//! The counts are sums of each station's contribution. The longest-empty
//! and longest-full times are minimums, which do not subtract: each postcode
//! keeps the multiset of its empty (and full) stations' since-times, whose
//! first entry is the answer. The work per epoch is one hash lookup per
//! postcode that changed, and a tree update per station that turned empty
//! or full or stopped being so; the state is each postcode's counts and
//! those multisets, on the worker that owns it.

use super::place_stations::{PlacedStation, PostcodeDeltas};
use crate::counts::{PostcodeCounts, PostcodeTotals};
use crate::feed::FeedTime;
use crate::postcode::Postcode;
use differential_dataflow::difference::{IsZero, Multiply};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// How many stations have each since-time: the smallest key is the longest.
type SinceTimes = BTreeMap<FeedTime, i64>;

fn add_since(times: &mut SinceTimes, since: Option<FeedTime>, diff: i64) {
    let Some(since) = since else { return };
    let count = times.entry(since).or_default();
    *count += diff;
    if *count == 0 {
        times.remove(&since);
    }
}

/// One postcode's state: the sum of its stations' counts, and their
/// since-times.
#[derive(Default)]
struct Totals {
    counts: PostcodeCounts,
    empty_since: SinceTimes,
    full_since: SinceTimes,
}

/// What a postcode keeps, summed from differences of its stations (or of
/// their types): [`sum_per_postcode`] keeps one per postcode, and one per
/// postcode changed at a time, merged into it once the time is complete.
pub(super) trait PostcodeSum: Default + 'static {
    /// What one difference is of: a station, a vehicle type.
    type Of: differential_dataflow::ExchangeData;
    /// How much of it more (or fewer).
    type Diff: differential_dataflow::ExchangeData;
    /// What the postcode's record holds.
    type Value: differential_dataflow::ExchangeData;
    /// Adds one difference.
    fn add(&mut self, of: &Self::Of, diff: Self::Diff);
    /// Adds a time's sum of differences.
    fn merge(&mut self, change: Self);
    /// The postcode's value, `None` once it has nothing.
    fn value(&self) -> Option<Self::Value>;
}

impl PostcodeSum for Totals {
    type Of = PlacedStation;
    type Diff = isize;
    type Value = PostcodeTotals;

    fn add(&mut self, station: &PlacedStation, diff: isize) {
        self.counts += &station.contribution().multiply(&diff);
        let diff = diff as i64;
        add_since(
            &mut self.empty_since,
            station.counts.counted_empty_since(),
            diff,
        );
        add_since(
            &mut self.full_since,
            station.counts.counted_full_since(),
            diff,
        );
    }

    fn merge(&mut self, change: Totals) {
        self.counts += &change.counts;
        for (since, diff) in change.empty_since {
            add_since(&mut self.empty_since, Some(since), diff);
        }
        for (since, diff) in change.full_since {
            add_since(&mut self.full_since, Some(since), diff);
        }
    }

    fn value(&self) -> Option<PostcodeTotals> {
        if self.counts.is_zero() && self.empty_since.is_empty() && self.full_since.is_empty() {
            return None;
        }
        // A multiset of stations has no negative count; one could only come
        // from a retraction of what was never inserted.
        let first = |times: &SinceTimes| {
            times
                .iter()
                .find(|(_, count)| **count > 0)
                .map(|(since, _)| *since)
        };
        Some(PostcodeTotals {
            counts: self.counts,
            longest_empty_since: first(&self.empty_since),
            longest_full_since: first(&self.full_since),
        })
    }
}

/// Differences of what postcodes sum into an `S`.
pub(super) type PostcodeDifferences<'s, T, S> = Stream<
    's,
    T,
    Vec<(
        (Postcode, <S as PostcodeSum>::Of),
        T,
        <S as PostcodeSum>::Diff,
    )>,
>;

/// A time's changes, per postcode, waiting for the time to complete.
type Pending<T, S> = (Capability<T>, FxHashMap<Postcode, S>);

/// The totals of every postcode, from the collection of its stations
/// ([`place_stations`](super::place_stations)). A postcode whose stations
/// all left is retracted and not inserted again.
///
/// # Examples
///
/// ```
/// use differential_dataflow::AsCollection;
/// use timely::dataflow::operators::ToStream;
/// use velib_dataflow::counts::StationCounts;
/// use velib_dataflow::dataflow::{postcode_totals, PlacedStation};
/// use velib_dataflow::postcode::Postcode;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::example(move |scope| {
///     let pc = Postcode::parse("75016").unwrap();
///     let station = |bikes, empty_since| PlacedStation {
///         counts: StationCounts { bikes_available: bikes, renting: true, empty_since, ..Default::default() },
///         inferred: false,
///     };
///     let (empty_a, empty_b, two) = (station(0, Some(100)), station(0, Some(40)), station(2, None));
///     let stations = vec![
///         ((pc, empty_a), 1u64, 1), ((pc, two), 1, 1),
///         ((pc, empty_b), 2, 1),
///         ((pc, empty_b), 3, -1), ((pc, empty_a), 3, -1),
///     ];
///     postcode_totals(stations.to_stream(scope).as_collection()).inspect(move |((_, totals), time, diff)| {
///         let row = (*time, *diff, totals.counts.stations, totals.longest_empty_since);
///         sink.lock().unwrap().push(row);
///     });
/// });
/// let mut out = out.lock().unwrap().clone();
/// out.sort_by_key(|(time, diff, ..)| (*time, *diff));
/// // Empty since 100, then since 40 (a second empty station), then none.
/// assert_eq!(out, [
///     (1, 1, 2, Some(100)),
///     (2, -1, 2, Some(100)), (2, 1, 3, Some(40)),
///     (3, -1, 3, Some(40)), (3, 1, 1, None),
/// ]);
/// ```
pub fn postcode_totals<'s, T>(
    stations: PostcodeDeltas<'s, T>,
) -> VecCollection<'s, T, (Postcode, PostcodeTotals)>
where
    T: Timestamp + TotalOrder,
{
    sum_per_postcode::<T, Totals>(stations.inner, "PostcodeTotals")
}

/// Sums differences per postcode into an `S`, on the worker that owns the
/// postcode: a time's differences are summed apart, then merged, and a
/// postcode whose value changed is retracted and inserted again (only
/// retracted once it has nothing). The work per time is one hash lookup
/// per postcode that changed.
pub(super) fn sum_per_postcode<'s, T, S>(
    differences: PostcodeDifferences<'s, T, S>,
    name: &str,
) -> VecCollection<'s, T, (Postcode, S::Value)>
where
    T: Timestamp + TotalOrder,
    S: PostcodeSum,
{
    differences
        .unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(
            Exchange::new(|((postcode, _), _, _): &((Postcode, S::Of), T, S::Diff)| {
                postcode.hashed()
            }),
            name,
            |_capability, _info| {
                let mut sums: FxHashMap<Postcode, S> = FxHashMap::default();
                let mut pending: BTreeMap<T, Pending<T, S>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for ((postcode, of), time, diff) in data.drain(..) {
                            let changes = pending.entry(time.clone()).or_insert_with(|| {
                                (capability.delayed(&time, 0), FxHashMap::default())
                            });
                            changes.1.entry(postcode).or_default().add(&of, diff);
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let time = entry.key().clone();
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let (capability, changes) = entry.remove();
                        let mut session = output.session(&capability);
                        for (postcode, change) in changes {
                            let known = sums.entry(postcode).or_default();
                            let before = known.value();
                            known.merge(change);
                            let after = known.value();
                            if after.is_none() {
                                sums.remove(&postcode);
                            }
                            if before == after {
                                continue;
                            }
                            if let Some(before) = before {
                                session.give(((postcode, before), time.clone(), -1));
                            }
                            if let Some(after) = after {
                                session.give(((postcode, after), time.clone(), 1));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}
