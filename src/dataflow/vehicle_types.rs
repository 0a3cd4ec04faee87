//! Vehicles per type per postcode: the optional output beside the totals
//! (`velib_aggregator --vehicle-types`), for feeds that list their vehicles
//! by `vehicle_type_id` (GBFS v2.3 and v3 `vehicle_types_available`).
//!
//! Unlike the totals, whose per-station state is kept small by hand
//! ([`super::place_stations`]), this is plain differential dataflow: each
//! station's types and its postcode as collections, joined on the station;
//! each station's vehicles become differences of `(postcode, type)`, and a
//! reduction per postcode gathers its types. It arranges the stations that
//! list types, which is why it is optional. A station counts as in the
//! totals' `nbr_total`: its vehicles when it is installed and renting,
//! under [`Postcode::unknown`] while it has no directory entry.

use crate::counts::PostcodeTotals;
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::postcode::Postcode;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::dataflow::operators::vec::Map;
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely_kafka::upsert::{Upsert, Upserts};

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
fn rentable_types(status: &StationStatus) -> Option<BTreeMap<String, u32>> {
    let types: BTreeMap<String, u32> = status
        .vehicle_types
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    (status.is_rentable() && !types.is_empty()).then_some(types)
}

/// Per postcode, its vehicles by type, from the same upserts of statuses
/// and directory entries the totals come from: a collection with one
/// `(postcode, types)` per postcode whose stations have vehicles of a
/// listed type.
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
    let types = statuses
        .map(|(id, status, time)| (id, status.as_ref().and_then(rentable_types), time))
        .upsert_keyed();
    let placed = directory
        .map(|(id, entry, time)| (id, entry.map(|e| e.postcode), time))
        .upsert_keyed();
    let in_place = types
        .clone()
        .join_map(placed.clone(), |_, types, postcode| {
            (*postcode, types.clone())
        });
    let unplaced = types
        .antijoin(placed.map(|(id, _)| id))
        .map(|(_, types)| (Postcode::unknown(), types));
    in_place
        .concat(unplaced)
        .explode(|(postcode, types)| {
            types
                .into_iter()
                .map(move |(kind, n)| ((postcode, kind), n as isize))
        })
        .reduce(|_postcode, types, out| {
            let gathered = types
                .iter()
                .map(|(kind, n)| ((*kind).clone(), *n as i64))
                .collect::<VehicleTypeCounts>();
            out.push((gathered, 1));
        })
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
