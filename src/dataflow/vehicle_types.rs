//! Vehicles per type per postcode: the optional output beside the totals
//! (`velib_aggregator --vehicle-types`), for feeds that list their vehicles
//! by `vehicle_type_id` (GBFS v2.3 and v3 `vehicle_types_available`).
//!
//! As for the totals ([`super::place_stations`], [`super::postcode_totals`]),
//! each station's types meet its postcode in one per-station operator,
//! whose state is a small record per station; its changes become
//! differences of `(postcode, type)`, summed per postcode by another. It is
//! optional because every station then keeps its postcode and its types a
//! second time, and every record grows. A station
//! counts as in the totals' `nbr_total`: its vehicles when it is installed
//! and renting, under [`Postcode::unknown`] while it has no directory
//! entry.

use super::postcode_totals::{sum_per_postcode, PostcodeSum};
use crate::counts::PostcodeTotals;
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::postcode::Postcode;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely_kafka::upsert::Upserts;

/// Vehicles a rider can take, by the feed's `vehicle_type_id`; types with
/// none are left out.
pub type VehicleTypeCounts = BTreeMap<String, i64>;

/// A postcode's totals and its vehicles by type: what the aggregator writes
/// with `--vehicle-types`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TypedTotals {
    /// The totals, as without the option.
    pub totals: PostcodeTotals,
    /// Its vehicles by type (empty when its stations list none).
    pub vehicle_types: VehicleTypeCounts,
}

/// The vehicles a station's status adds to its postcode, by type: none
/// unless a rider can take them.
fn rentable_types(status: &StationStatus) -> Option<StationTypes> {
    let types: StationTypes = status
        .vehicle_types
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| (t.as_str().into(), *n))
        .collect();
    (status.is_rentable() && !types.is_empty()).then_some(types)
}

/// The most vehicle types a postcode's record lists: its most numerous
/// (ties: the first ids), the others left out. A station lists at most
/// [`crate::feed::MAX_VEHICLE_TYPES`], but a postcode gathers its
/// stations' (and [`Postcode::unknown`] every unplaced station's), and a
/// record must fit in one Kafka message whatever the feed lists: 256 ids
/// of at most 64 bytes is a few kilobytes.
pub const MAX_POSTCODE_VEHICLE_TYPES: usize = 256;

/// Keeps the [`MAX_POSTCODE_VEHICLE_TYPES`] most numerous of `types`.
fn most_numerous(mut types: VehicleTypeCounts) -> VehicleTypeCounts {
    if types.len() <= MAX_POSTCODE_VEHICLE_TYPES {
        return types;
    }
    let mut by_count: Vec<(&String, &i64)> = types.iter().collect();
    by_count.sort_by(|(a, m), (b, n)| n.cmp(m).then(a.cmp(b)));
    let kept: std::collections::BTreeSet<String> = by_count
        .into_iter()
        .take(MAX_POSTCODE_VEHICLE_TYPES)
        .map(|(id, _)| id.clone())
        .collect();
    types.retain(|id, _| kept.contains(id));
    types
}

/// What one station adds to the vehicles by type: where it is placed, and
/// its types while a rider can take them.
#[derive(Default)]
struct Station {
    postcode: Option<Postcode>,
    types: Option<StationTypes>,
}

/// A station's vehicles by type id, in id order: a boxed slice, 16 bytes
/// and an allocation for the slice and one per id, where a `BTreeMap` of
/// two types takes a node of more than 300 bytes. Every typed station
/// keeps one.
type StationTypes = Box<[(Box<str>, u32)]>;

impl Station {
    /// `(postcode, types)` when it adds any.
    fn adds(&self) -> Option<(Postcode, &StationTypes)> {
        let types = self.types.as_ref()?;
        Some((self.postcode.unwrap_or_else(Postcode::unknown), types))
    }
}

/// One upsert of a station: of its types, or of its postcode.
enum StationUpsert {
    Types(Option<StationTypes>),
    Postcode(Option<Postcode>),
}

/// A time's upserts, waiting for it to complete, in the order they came.
struct PendingTime<T: Timestamp> {
    capability: Capability<T>,
    types: Vec<(StationId, Option<StationTypes>)>,
    postcodes: Vec<(StationId, Option<Postcode>)>,
}

/// Per postcode, its vehicles by type, from the same upserts of statuses
/// and directory entries the totals come from: a collection with one
/// `(postcode, types)` per postcode whose stations have vehicles of a
/// listed type (at most [`MAX_POSTCODE_VEHICLE_TYPES`] of them).
///
/// Each station's types meet its postcode on the worker that owns the
/// station, in one pass over each time's upserts, as
/// [`super::place_stations`] does for the counts: the per-station state is
/// one small record (its postcode, and its types while it lists any), and
/// a change of either becomes differences of `(postcode, type)`. Those are
/// summed on the worker that owns the postcode by the operator that sums
/// the counts ([`super::postcode_totals`]). Nothing is arranged.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
/// use velib_dataflow::dataflow::postcode_vehicle_types;
/// use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
/// use velib_dataflow::feed::{StationId, StationStatus};
/// use velib_dataflow::postcode::Postcode;
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::example(move |scope| {
///     let status = StationStatus {
///         station_id: StationId::Num(1), code: None, bikes_available: 3, bike_types: None,
///         docks_available: 5, is_installed: true, is_renting: true, is_returning: true,
///         last_reported: None, judged: Default::default(),
///         vehicle_types: [("cargo".to_owned(), 1), ("city".to_owned(), 2)].into(),
///     };
///     let entry = DirectoryEntry {
///         station_id: StationId::Num(1), code: None, name: "A".into(), position: None,
///         capacity: None, postcode: Postcode::parse("0150").unwrap(), postcode_source: PostcodeSource::Feed,
///     };
///     let statuses = vec![(StationId::Num(1), Some(status), 1u64)].to_stream(scope);
///     let entries = vec![(StationId::Num(1), Some(entry), 1u64)].to_stream(scope);
///     postcode_vehicle_types(statuses, entries).inner.capture_into(send);
/// });
/// let out: Vec<_> = receive.extract().into_iter().flat_map(|(_, d)| d).collect();
/// let ((postcode, types), _, diff) = &out[0];
/// assert_eq!((postcode.as_str(), types["cargo"], types["city"], *diff), ("0150", 1, 2, 1));
/// ```
pub fn postcode_vehicle_types<'s, T>(
    statuses: Upserts<'s, T, StationId, StationStatus>,
    directory: Upserts<'s, T, StationId, DirectoryEntry>,
) -> VecCollection<'s, T, (Postcode, VehicleTypeCounts)>
where
    T: Timestamp + TotalOrder + Lattice,
{
    let types = statuses.map(|(id, status, time)| {
        let types = status.as_ref().and_then(rentable_types);
        (id, types, time)
    });
    let postcodes = directory.map(|(id, entry, time)| (id, entry.map(|e| e.postcode), time));
    let by_station = |id: &StationId| id.hashed();
    let differences = types.binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
        postcodes,
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        Exchange::new(move |(id, _, _): &(StationId, _, T)| by_station(id)),
        "PlaceVehicleTypes",
        |_capability, _info| {
            let mut stations: FxHashMap<StationId, Station> = FxHashMap::default();
            let mut pending: BTreeMap<T, PendingTime<T>> = BTreeMap::new();
            let waiting = |capability: &InputCapability<T>, time: &T| PendingTime {
                capability: capability.delayed(time, 0),
                types: Vec::new(),
                postcodes: Vec::new(),
            };
            move |(types, types_frontier), (postcodes, postcodes_frontier), output| {
                types.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let at = pending
                            .entry(time.clone())
                            .or_insert_with(|| waiting(&capability, &time));
                        at.types.push((id, value));
                    }
                });
                postcodes.for_each(|capability, data| {
                    for (id, value, time) in data.drain(..) {
                        let at = pending
                            .entry(time.clone())
                            .or_insert_with(|| waiting(&capability, &time));
                        at.postcodes.push((id, value));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = entry.key().clone();
                    if types_frontier.less_equal(&time) || postcodes_frontier.less_equal(&time) {
                        break;
                    }
                    let at = entry.remove();
                    let mut session = output.session(&at.capability);
                    let upserts = at
                        .postcodes
                        .into_iter()
                        .map(|(id, p)| (id, StationUpsert::Postcode(p)))
                        .chain(
                            at.types
                                .into_iter()
                                .map(|(id, t)| (id, StationUpsert::Types(t))),
                        );
                    for (id, upsert) in upserts {
                        let station = stations.entry(id.clone()).or_default();
                        let unchanged = match &upsert {
                            StationUpsert::Types(types) => station.types == *types,
                            StationUpsert::Postcode(postcode) => station.postcode == *postcode,
                        };
                        if unchanged {
                            // Its bikes or docks changed, not its types: the
                            // common case, and nothing to send.
                            if station.postcode.is_none() && station.types.is_none() {
                                stations.remove(&id);
                            }
                            continue;
                        }
                        let mut moved = Vec::new();
                        if let Some((postcode, types)) = station.adds() {
                            moved.extend(types.iter().map(|(kind, n)| {
                                ((postcode, kind.to_string()), time.clone(), -i64::from(*n))
                            }));
                        }
                        match upsert {
                            StationUpsert::Types(types) => station.types = types,
                            StationUpsert::Postcode(postcode) => station.postcode = postcode,
                        }
                        if let Some((postcode, types)) = station.adds() {
                            moved.extend(types.iter().map(|(kind, n)| {
                                ((postcode, kind.to_string()), time.clone(), i64::from(*n))
                            }));
                        }
                        // A station with neither types nor postcode is no state.
                        if station.postcode.is_none() && station.types.is_none() {
                            stations.remove(&id);
                        }
                        session.give_iterator(moved.into_iter());
                    }
                }
            }
        },
    );
    sum_per_postcode::<T, TypesSum>(differences, "GatherVehicleTypes")
}

/// A postcode's vehicles by type, summed from its stations' differences
/// ([`sum_per_postcode`]); its value, the [`MAX_POSTCODE_VEHICLE_TYPES`]
/// most numerous.
#[derive(Default)]
struct TypesSum(VehicleTypeCounts);

impl PostcodeSum for TypesSum {
    type Of = String;
    type Diff = i64;
    type Value = VehicleTypeCounts;

    fn add(&mut self, kind: &String, n: i64) {
        if n == 0 {
            return;
        }
        let count = self.0.entry(kind.clone()).or_default();
        *count += n;
        if *count == 0 {
            self.0.remove(kind);
        }
    }

    fn merge(&mut self, change: TypesSum) {
        for (kind, n) in &change.0 {
            self.add(kind, *n);
        }
    }

    fn value(&self) -> Option<VehicleTypeCounts> {
        (!self.0.is_empty()).then(|| most_numerous(self.0.clone()))
    }
}

/// Each postcode's totals with its vehicles by type (none listed: empty).
///
/// # Examples
///
/// ```
/// use differential_dataflow::input::Input;
/// use velib_dataflow::counts::PostcodeTotals;
/// use velib_dataflow::dataflow::with_vehicle_types;
/// use velib_dataflow::postcode::Postcode;
///
/// timely::example(|scope| {
///     let (_, totals) = scope.new_collection_from(vec![(Postcode::parse("0150").unwrap(), PostcodeTotals::default())]);
///     let (_, types) = scope.new_collection_from(Vec::<(Postcode, _)>::new());
///     with_vehicle_types(totals, types)
///         .inspect(|((_, typed), _, _)| assert!(typed.vehicle_types.is_empty()));
/// });
/// ```
pub fn with_vehicle_types<'s, T>(
    totals: VecCollection<'s, T, (Postcode, PostcodeTotals)>,
    types: VecCollection<'s, T, (Postcode, VehicleTypeCounts)>,
) -> VecCollection<'s, T, (Postcode, TypedTotals)>
where
    T: Timestamp + Lattice,
{
    let typed = totals
        .clone()
        .join_map(types.clone(), |postcode, totals, types| {
            let typed = TypedTotals {
                totals: *totals,
                vehicle_types: types.clone(),
            };
            (*postcode, typed)
        });
    let untyped = totals
        .antijoin(types.map(|(postcode, _)| postcode))
        .map(|(postcode, totals)| {
            let typed = TypedTotals {
                totals,
                vehicle_types: VehicleTypeCounts::new(),
            };
            (postcode, typed)
        });
    typed.concat(untyped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::typed_totals_from_scratch;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    fn status(id: u64, types: BTreeMap<String, u32>) -> StationStatus {
        StationStatus {
            station_id: StationId::Num(id),
            code: None,
            bikes_available: types.values().sum(),
            bike_types: None,
            docks_available: 1,
            is_installed: true,
            is_renting: true,
            is_returning: true,
            last_reported: None,
            judged: Default::default(),
            vehicle_types: types,
        }
    }

    /// What this module's operators exchange between workers, which may be
    /// in other processes (bincode).
    #[test]
    fn what_the_operators_exchange_survives_bincode() {
        use crate::dataflow::tests::round_trip;
        let types: StationTypes = [("cargo".into(), 1), ("city".into(), 2)].into();
        round_trip((StationId::Num(1), Some(types), 3u64));
        round_trip((StationId::Text("a".into()), None::<StationTypes>, 3u64));
        let postcode = Postcode::parse("0150").unwrap();
        round_trip((StationId::Num(1), Some(postcode), 3u64));
        round_trip((StationId::Num(1), None::<Postcode>, 3u64));
        round_trip(((postcode, "city".to_owned()), 3u64, -2i64));
    }

    /// The unplaced stations all count under `unknown`: however many types
    /// they list between them, its record keeps the most numerous, as the
    /// reference does, and stays within a Kafka message.
    #[test]
    fn a_postcode_keeps_its_most_numerous_types_only() {
        let statuses: Vec<StationStatus> = (0..MAX_POSTCODE_VEHICLE_TYPES as u64 + 40)
            .map(|i| {
                // Types t0..: t<i> has 1 + i % 3 vehicles; each station lists
                // a type of its own and one they share.
                let types = [
                    (format!("t{i:03}"), 1 + (i % 3) as u32),
                    ("shared".into(), 1),
                ];
                status(i, types.into())
            })
            .collect();
        let upserts: Vec<_> = statuses
            .iter()
            .map(|s| (s.station_id.clone(), Some(s.clone()), 1u64))
            .collect();
        let (send, receive) = std::sync::mpsc::channel();
        timely::example(move |scope| {
            let statuses = upserts.to_stream(scope);
            let entries = Vec::<(StationId, Option<DirectoryEntry>, u64)>::new().to_stream(scope);
            postcode_vehicle_types(statuses, entries)
                .inner
                .capture_into(send);
        });
        let out: Vec<_> = receive.extract().into_iter().flat_map(|(_, d)| d).collect();
        let [((postcode, types), 1, 1)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*postcode, Postcode::unknown());
        assert_eq!(types.len(), MAX_POSTCODE_VEHICLE_TYPES);
        assert_eq!(types["shared"], MAX_POSTCODE_VEHICLE_TYPES as i64 + 40);
        // Left out: the rarest (one vehicle), of those the last ids.
        let listed: Vec<String> = statuses
            .iter()
            .flat_map(|s| s.vehicle_types.keys().cloned())
            .collect();
        let left_out: Vec<&String> = listed.iter().filter(|t| !types.contains_key(*t)).collect();
        assert_eq!(left_out.len(), 41);
        let last_kept_one = types
            .iter()
            .filter(|(_, n)| **n == 1)
            .map(|(t, _)| t)
            .max()
            .unwrap();
        for t in left_out {
            assert!(t > last_kept_one, "{t}");
            assert_eq!(t[1..].parse::<u64>().unwrap() % 3, 0, "{t} has one vehicle");
        }
        let reference = typed_totals_from_scratch(&statuses, &[]);
        assert_eq!(&reference[&Postcode::unknown()].vehicle_types, types);
    }
}
