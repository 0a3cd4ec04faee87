//! Placing each station: its counts (from its status) meet its postcode
//! (from its directory entry) on the worker that owns the station, and each
//! change of either becomes a change of what the station adds to a postcode.
//!
//! This is a keyed upsert-join of two upsert streams, done in one pass over
//! each epoch's upserts: per station, one hash lookup, and at most two
//! updates out (the station retracted from its old postcode, inserted under
//! its new one). Nothing is arranged: the state is one small record per
//! station (its counts and a [`Placement`], 32 bytes), and the since-times
//! of the few stations empty or full now, kept apart so that the others do
//! not pay for them.

use crate::counts::{PostcodeCounts, StationCounts};
use crate::feed::{FeedTime, StationId};
use crate::postcode::Postcode;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely_kafka::upsert::Upserts;

/// Where a station is counted: its postcode, and whether that postcode was
/// inferred from a neighbour.
///
/// # Examples
///
/// ```
/// use velib_dataflow::dataflow::Placement;
/// use velib_dataflow::postcode::Postcode;
///
/// let placed = Placement { postcode: Postcode::parse("75016").unwrap(), inferred: false };
/// assert_eq!(placed.postcode.as_str(), "75016");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The postcode counted under.
    pub postcode: Postcode,
    /// Inferred from the nearest station rather than given.
    pub inferred: bool,
}

/// Orders a large batch of upserts as their stations lie in `stations`'
/// table (a station's own upserts keep their order): a million stations'
/// table is far larger than the CPU caches, and lookups in table order
/// touch its memory in one sweep instead of at random.
fn in_table_order<U>(stations: &FxHashMap<StationId, Station>, upserts: &mut [(StationId, U)]) {
    const WORTH_IT: usize = 1 << 16;
    if stations.len() < WORTH_IT || upserts.len() < 1024 {
        return;
    }
    // hashbrown places a key at `hash & (buckets - 1)` (and probes on).
    let buckets = (stations.capacity() * 8 / 7).next_power_of_two() as u64;
    let hasher = stations.hasher();
    upserts.sort_by_cached_key(|(id, _)| hasher.hash_one(id) & (buckets - 1));
}

/// One upsert of a station, its postcode numbered.
enum Upsert {
    Counts(Option<StationCounts>),
    Placement(Option<(u32, bool)>),
}

impl Upsert {
    fn apply_to(&self, station: &mut Station) {
        match *self {
            Upsert::Counts(counts) => station.counts = counts.map(|c| Counts::of(&c)),
            Upsert::Placement(placement) => station.placement = placement,
        }
    }

    /// The station's since-times after this upsert, `before` those it had.
    fn since_after(&self, before: Since) -> Since {
        match self {
            Upsert::Counts(counts) => counts.as_ref().map(Since::counted).unwrap_or_default(),
            Upsert::Placement(_) => before,
        }
    }
}

/// [`StationCounts`] without its since-times: what every station keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    bikes_available: u32,
    mechanical: u32,
    ebikes: u32,
    docks_available: u32,
    renting: bool,
    returning: bool,
    stale: bool,
    empty_long: bool,
    full_long: bool,
}

impl Counts {
    fn of(c: &StationCounts) -> Counts {
        Counts {
            bikes_available: c.bikes_available,
            mechanical: c.mechanical,
            ebikes: c.ebikes,
            docks_available: c.docks_available,
            renting: c.renting,
            returning: c.returning,
            stale: c.stale,
            empty_long: c.empty_long,
            full_long: c.full_long,
        }
    }

    fn with(&self, since: Since) -> StationCounts {
        StationCounts {
            bikes_available: self.bikes_available,
            mechanical: self.mechanical,
            ebikes: self.ebikes,
            docks_available: self.docks_available,
            renting: self.renting,
            returning: self.returning,
            stale: self.stale,
            empty_long: self.empty_long,
            full_long: self.full_long,
            empty_since: since.empty,
            full_since: since.full,
        }
    }

    /// Counted empty or full: only then can it have since-times.
    fn may_have_since(&self) -> bool {
        (self.renting && self.bikes_available == 0) || (self.returning && self.docks_available == 0)
    }
}

/// A station's since-times, as far as they count
/// ([`StationCounts::counted_empty_since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Since {
    empty: Option<FeedTime>,
    full: Option<FeedTime>,
}

impl Since {
    fn counted(counts: &StationCounts) -> Since {
        Since {
            empty: counts.counted_empty_since(),
            full: counts.counted_full_since(),
        }
    }

    fn is_none(&self) -> bool {
        self.empty.is_none() && self.full.is_none()
    }
}

/// The since-times of the stations that have any: the stations empty or
/// full now, a small part of all.
#[derive(Default)]
struct SinceTimes(FxHashMap<StationId, Since>);

impl SinceTimes {
    fn of(&self, id: &StationId, station: &Station) -> Since {
        match station.counts {
            Some(counts) if counts.may_have_since() => self.0.get(id).copied().unwrap_or_default(),
            _ => Since::default(),
        }
    }

    fn replace(&mut self, id: &StationId, before: Since, after: Since) {
        if before == after {
            return;
        }
        if after.is_none() {
            self.0.remove(id);
        } else {
            self.0.insert(id.clone(), after);
        }
    }
}

/// A station as its postcode counts it: its counts, and whether the
/// postcode was inferred from a neighbour.
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::StationCounts;
/// use velib_dataflow::dataflow::PlacedStation;
///
/// let counts = StationCounts { bikes_available: 3, renting: true, ..Default::default() };
/// let placed = PlacedStation { counts, inferred: true };
/// assert_eq!((placed.contribution().bikes, placed.contribution().stations_inferred), (3, 1));
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct PlacedStation {
    /// The station's counts.
    pub counts: StationCounts,
    /// Its postcode was inferred from a neighbour.
    pub inferred: bool,
}

impl PlacedStation {
    /// What it adds to its postcode's counts.
    pub fn contribution(&self) -> PostcodeCounts {
        self.counts.placed(self.inferred)
    }
}

/// The stations of every postcode: a collection of `(postcode, station)`,
/// whose change is the station retracted where it was and inserted where it
/// is now, as it now is.
pub type PostcodeDeltas<'s, T> = VecCollection<'s, T, (Postcode, PlacedStation)>;

/// One station's state: 32 bytes, its postcode held as a number
/// ([`Postcodes`]).
#[derive(Clone, Copy, Debug, Default)]
struct Station {
    counts: Option<Counts>,
    placement: Option<(u32, bool)>,
}

impl Station {
    /// Where and how the station counts, its since-times `since`: nowhere
    /// until it has a status; under `unknown` while it has no directory
    /// entry.
    fn placed(&self, postcodes: &Postcodes, since: Since) -> Option<(Postcode, PlacedStation)> {
        let counts = self.counts?.with(since);
        Some(match self.placement {
            Some((postcode, inferred)) => {
                (postcodes.get(postcode), PlacedStation { counts, inferred })
            }
            None => (
                Postcode::unknown(),
                PlacedStation {
                    counts,
                    inferred: false,
                },
            ),
        })
    }

    fn is_empty(&self) -> bool {
        self.counts.is_none() && self.placement.is_none()
    }
}

/// The postcodes a worker has seen, numbered: a city has thousands of
/// stations per hundred postcodes, so each station holds a number, not the
/// postcode.
#[derive(Default)]
struct Postcodes {
    numbers: FxHashMap<Postcode, u32>,
    postcodes: Vec<Postcode>,
}

impl Postcodes {
    fn number(&mut self, postcode: Postcode) -> u32 {
        *self.numbers.entry(postcode).or_insert_with(|| {
            self.postcodes.push(postcode);
            (self.postcodes.len() - 1) as u32
        })
    }

    fn get(&self, number: u32) -> Postcode {
        self.postcodes[number as usize]
    }
}

/// A time's upserts, waiting for it to complete, in the order they came.
struct PendingTime<T: Timestamp> {
    capability: Capability<T>,
    counts: Vec<(StationId, Option<StationCounts>)>,
    placements: Vec<(StationId, Option<Placement>)>,
}

/// Places every station: from upserts of its counts and of its placement,
/// the collection of each postcode's stations.
///
/// A station counts once it has a status, under [`Postcode::unknown`] while
/// it has no placement. Upserts of one station at one time apply in the
/// order they arrive, the last of each input winning.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
/// use velib_dataflow::counts::StationCounts;
/// use velib_dataflow::dataflow::{place_stations, Placement};
/// use velib_dataflow::feed::StationId;
/// use velib_dataflow::postcode::Postcode;
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::example(move |scope| {
///     let at = Placement { postcode: Postcode::parse("75016").unwrap(), inferred: false };
///     let counts = StationCounts { bikes_available: 3, renting: true, ..Default::default() };
///     let statuses = vec![(StationId::Num(1), Some(counts), 1u64)].to_stream(scope);
///     let places = vec![(StationId::Num(1), Some(at), 2u64)].to_stream(scope);
///     place_stations(statuses, places).inner.capture_into(send);
/// });
/// let deltas: Vec<_> = receive.extract().into_iter().flat_map(|(_, d)| d).collect();
/// // Counted under `unknown` at 1, moved to 75016 at 2.
/// let mut moves: Vec<_> =
///     deltas.iter().map(|((pc, s), t, diff)| (*t, *diff, s.counts.bikes_available, pc.as_str())).collect();
/// moves.sort();
/// assert_eq!(moves, [(1, 1, 3, "unknown"), (2, -1, 3, "unknown"), (2, 1, 3, "75016")]);
/// ```
pub fn place_stations<'s, T>(
    counts: Upserts<'s, T, StationId, StationCounts>,
    placements: Upserts<'s, T, StationId, Placement>,
) -> PostcodeDeltas<'s, T>
where
    T: Timestamp + TotalOrder,
{
    let by_station = |id: &StationId| id.hashed();
    let stations = counts.binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
        placements,
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        "PlaceStations",
        |_capability, _info| {
            let mut stations: FxHashMap<StationId, Station> = FxHashMap::default();
            let mut since = SinceTimes::default();
            let mut postcodes = Postcodes::default();
            let mut pending: BTreeMap<T, PendingTime<T>> = BTreeMap::new();
            let waiting = |capability: &timely::dataflow::operators::InputCapability<T>,
                           time: &T| {
                PendingTime {
                    capability: capability.delayed(time, 0),
                    counts: Vec::new(),
                    placements: Vec::new(),
                }
            };
            move |(counts, counts_frontier), (placements, placements_frontier), output| {
                counts.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let at = pending
                            .entry(time.clone())
                            .or_insert_with(|| waiting(&capability, &time));
                        at.counts.push((id, value));
                    }
                });
                placements.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let at = pending
                            .entry(time.clone())
                            .or_insert_with(|| waiting(&capability, &time));
                        at.placements.push((id, value));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = entry.key().clone();
                    if counts_frontier.less_equal(&time) || placements_frontier.less_equal(&time) {
                        break;
                    }
                    let at = entry.remove();
                    let mut session = output.session(&at.capability);
                    // Each upsert moves its station's contribution on; a
                    // station upserted twice in one time moves twice, and the
                    // postcode sums cancel what was in between. Placements
                    // first: a new station then starts where it belongs.
                    let placements = at.placements.into_iter().map(|(id, placement)| {
                        let placement =
                            placement.map(|p| (postcodes.number(p.postcode), p.inferred));
                        (id, Upsert::Placement(placement))
                    });
                    let mut upserts: Vec<_> = placements
                        .chain(at.counts.into_iter().map(|(id, c)| (id, Upsert::Counts(c))))
                        .collect();
                    in_table_order(&stations, &mut upserts);
                    for (id, upsert) in upserts {
                        let (before, after) = match stations.entry(id) {
                            Entry::Occupied(mut known) => {
                                let since_before = since.of(known.key(), known.get());
                                let before = known.get().placed(&postcodes, since_before);
                                let since_after = upsert.since_after(since_before);
                                upsert.apply_to(known.get_mut());
                                since.replace(known.key(), since_before, since_after);
                                let after = known.get().placed(&postcodes, since_after);
                                // A station with neither status nor entry is no state.
                                if known.get().is_empty() {
                                    known.remove();
                                }
                                (before, after)
                            }
                            Entry::Vacant(new) => {
                                let mut station = Station::default();
                                let since_after = upsert.since_after(Since::default());
                                upsert.apply_to(&mut station);
                                since.replace(new.key(), Since::default(), since_after);
                                let after = station.placed(&postcodes, since_after);
                                if !station.is_empty() {
                                    new.insert(station);
                                }
                                (None, after)
                            }
                        };
                        if before == after {
                            continue;
                        }
                        if let Some(before) = before {
                            session.give((before, time.clone(), -1));
                        }
                        if let Some(after) = after {
                            session.give((after, time.clone(), 1));
                        }
                    }
                }
            }
        },
    );
    stations.as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stations_state_is_as_small_as_documented() {
        assert_eq!(std::mem::size_of::<Station>(), 32);
    }

    #[test]
    fn table_order_keeps_each_stations_own_order() {
        let stations: FxHashMap<StationId, Station> = (0..70_000u64)
            .map(|i| (StationId::Num(i), Station::default()))
            .collect();
        // 3,000 upserts of 500 stations, six each, numbered in arrival order.
        let mut upserts: Vec<(StationId, usize)> = (0..3_000)
            .map(|n| (StationId::Num((n as u64 * 7_919) % 500 * 131), n))
            .collect();
        let before = upserts.clone();
        in_table_order(&stations, &mut upserts);
        assert_ne!(upserts, before, "a batch this large is reordered");
        let mut sorted = upserts.clone();
        sorted.sort();
        let mut expected = before;
        expected.sort();
        assert_eq!(sorted, expected, "nothing lost or added");
        let mut last: FxHashMap<StationId, usize> = FxHashMap::default();
        for (id, n) in upserts {
            if let Some(previous) = last.insert(id, n) {
                assert!(previous < n, "a station's upserts keep their order");
            }
        }
    }
}
