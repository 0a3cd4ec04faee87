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

/// What a station adds to a postcode: `(postcode, counts, time)`, counts
/// negative for what it took away.
pub type PostcodeDeltas<'s, T> = Stream<'s, T, Vec<(Postcode, PostcodeCounts, T)>>;

/// One station's state.
#[derive(Clone, Copy, Debug, Default)]
struct Station {
    counts: Option<StationCounts>,
    placement: Option<Placement>,
}

impl Station {
    /// What the station adds: nothing until it has a status; under
    /// `unknown` while it has no directory entry.
    fn contribution(&self) -> Option<(Postcode, PostcodeCounts)> {
        let counts = self.counts?;
        Some(match self.placement {
            Some(p) => (p.postcode, counts.placed(p.inferred)),
            None => (Postcode::unknown(), counts.placed(false)),
        })
    }
}

impl Station {
    fn is_empty(&self) -> bool {
        self.counts.is_none() && self.placement.is_none()
    }
}

/// One epoch's upserts of one station, waiting for the epoch to complete:
/// the last of each input wins.
#[derive(Default)]
struct StationUpserts {
    counts: Option<Option<StationCounts>>,
    placement: Option<Option<Placement>>,
}

impl StationUpserts {
    fn apply_to(&self, station: &mut Station) {
        if let Some(counts) = self.counts {
            station.counts = counts;
        }
        if let Some(placement) = self.placement {
            station.placement = placement;
        }
    }
}

type Pending<T> = (Capability<T>, FxHashMap<StationId, StationUpserts>);

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
///     let counts = StationCounts { bikes: 3, renting: true, ..Default::default() };
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
            let mut pending: BTreeMap<T, Pending<T>> = BTreeMap::new();
            move |(counts, counts_frontier), (placements, placements_frontier), output| {
                counts.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let upserts = pending
                            .entry(time.clone())
                            .or_insert_with(|| (capability.delayed(&time, 0), Default::default()));
                        upserts.1.entry(id).or_default().counts = Some(value);
                    }
                });
                placements.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let upserts = pending
                            .entry(time.clone())
                            .or_insert_with(|| (capability.delayed(&time, 0), Default::default()));
                        upserts.1.entry(id).or_default().placement = Some(value);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = entry.key().clone();
                    if counts_frontier.less_equal(&time) || placements_frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, upserts) = entry.remove();
                    let mut session = output.session(&capability);
                    for (id, upsert) in upserts {
                        let (before, after) = match stations.entry(id) {
                            Entry::Occupied(mut known) => {
                                let before = known.get().contribution();
                                upsert.apply_to(known.get_mut());
                                let after = known.get().contribution();
                                // A station with neither status nor entry is no state.
                                if known.get().is_empty() {
                                    known.remove();
                                }
                                (before, after)
                            }
                            Entry::Vacant(new) => {
                                let mut station = Station::default();
                                upsert.apply_to(&mut station);
                                let after = station.contribution();
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
