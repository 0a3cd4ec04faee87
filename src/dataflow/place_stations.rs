//! Placing each station: its counts (from its status) meet its postcode
//! (from its directory entry) on the worker that owns the station, and each
//! change of either becomes a change of what the station adds to a postcode.
//!
//! This is a keyed upsert-join of two upsert streams, done in one pass over
//! each epoch's upserts: per station, one hash lookup, and at most two
//! updates out (what it took away from its old postcode, what it adds to
//! its new one). Nothing is arranged: the state is one small record per
//! station ([`StationCounts`], a [`Placement`]).

use crate::counts::{PostcodeCounts, StationCounts};
use crate::feed::StationId;
use crate::postcode::Postcode;
use differential_dataflow::difference::Abelian;
use differential_dataflow::hashable::Hashable;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
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
            Upsert::Counts(counts) => station.counts = counts,
            Upsert::Placement(placement) => station.placement = placement,
        }
    }
}

/// What a station adds to a postcode: `(postcode, counts, time)`, counts
/// negative for what it took away.
pub type PostcodeDeltas<'s, T> = Stream<'s, T, Vec<(Postcode, PostcodeCounts, T)>>;

/// One station's state: 32 bytes, its postcode held as a number
/// ([`Postcodes`]).
#[derive(Clone, Copy, Debug, Default)]
struct Station {
    counts: Option<StationCounts>,
    placement: Option<(u32, bool)>,
}

impl Station {
    /// What the station adds: nothing until it has a status; under
    /// `unknown` while it has no directory entry.
    fn contribution(&self, postcodes: &Postcodes) -> Option<(Postcode, PostcodeCounts)> {
        let counts = self.counts?;
        Some(match self.placement {
            Some((postcode, inferred)) => (postcodes.get(postcode), counts.placed(inferred)),
            None => (Postcode::unknown(), counts.placed(false)),
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
/// what it adds to (and takes from) each postcode, per time.
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
///     place_stations(statuses, places).capture_into(send);
/// });
/// let deltas: Vec<_> = receive.extract().into_iter().flat_map(|(_, d)| d).collect();
/// // Counted under `unknown` at 1, moved to 75016 at 2.
/// let mut moves: Vec<_> = deltas.iter().map(|(pc, c, t)| (*t, c.bikes, pc.as_str())).collect();
/// moves.sort();
/// assert_eq!(moves, [(1, 3, "unknown"), (2, -3, "unknown"), (2, 3, "75016")]);
/// ```
pub fn place_stations<'s, T>(
    counts: Upserts<'s, T, StationId, StationCounts>,
    placements: Upserts<'s, T, StationId, Placement>,
) -> PostcodeDeltas<'s, T>
where
    T: Timestamp + TotalOrder,
{
    let by_station = |id: &StationId| id.hashed();
    counts.binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
        placements,
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        "PlaceStations",
        |_capability, _info| {
            let mut stations: FxHashMap<StationId, Station> = FxHashMap::default();
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
                                let before = known.get().contribution(&postcodes);
                                upsert.apply_to(known.get_mut());
                                let after = known.get().contribution(&postcodes);
                                // A station with neither status nor entry is no state.
                                if known.get().is_empty() {
                                    known.remove();
                                }
                                (before, after)
                            }
                            Entry::Vacant(new) => {
                                let mut station = Station::default();
                                upsert.apply_to(&mut station);
                                let after = station.contribution(&postcodes);
                                if !station.is_empty() {
                                    new.insert(station);
                                }
                                (None, after)
                            }
                        };
                        if before == after {
                            continue;
                        }
                        if let Some((postcode, mut counts)) = before {
                            counts.negate();
                            session.give((postcode, counts, time.clone()));
                        }
                        if let Some((postcode, counts)) = after {
                            session.give((postcode, counts, time.clone()));
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
