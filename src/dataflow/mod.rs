//! The aggregation as a differential dataflow fragment.
//!
//! Three steps, one module each, every one doing work in proportion to what
//! changed: [`latest_per_key`] (collections to upserts, for callers with
//! collections), [`place_stations`] (each station's counts meet its
//! postcode, per station), [`postcode_totals`] (the sum per postcode); and
//! beside them, optional, [`postcode_vehicle_types`] (vehicles per type per
//! postcode).

mod latest_per_key;
mod place_stations;
mod postcode_totals;
mod vehicle_types;

pub use latest_per_key::latest_per_key;
pub use place_stations::{place_stations, PlacedStation, Placement, PostcodeDeltas};
pub use postcode_totals::postcode_totals;
pub use vehicle_types::{
    postcode_vehicle_types, with_vehicle_types, TypedTotals, VehicleTypeCounts,
    MAX_POSTCODE_VEHICLE_TYPES,
};

use crate::counts::{PostcodeTotals, StationCounts};
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::postcode::Postcode;
use differential_dataflow::VecCollection;
use timely::dataflow::operators::vec::Map;
use timely::order::TotalOrder;
use timely::progress::Timestamp;
use timely_kafka::upsert::Upserts;

/// Differential time in this crate: one epoch per published snapshot,
/// strictly increasing, as the epoch protocol numbers them.
pub use crate::kafka::protocol::Epoch;

/// Maintains per-postcode totals from station statuses and directory
/// entries: the counts, and since when the longest-empty and longest-full
/// stations have been so ([`PostcodeTotals`]).
///
/// Both inputs are collections with at most one record per station id at any
/// time (what [`crate::snapshot`] produces); a snapshot's change is a
/// retraction of the old row and an insertion of the new. The output holds,
/// at every time, one `(postcode, totals)` per postcode with at least one
/// station: a postcode's change is a retraction of its old totals and an
/// insertion of the new; a postcode left without stations is only retracted.
///
/// A status whose station has no directory entry is counted under
/// [`Postcode::unknown`]. Work per change is proportional to the change: the
/// changed station is placed again on its own, and the accumulation is a sum
/// of [`PostcodeCounts`](crate::counts::PostcodeCounts) differences (and a
/// multiset of since-times) rather than a reduction over the postcode. A
/// station listed more than once at a time counts once.
///
/// # Examples
///
/// ```
/// use differential_dataflow::input::Input;
/// use velib_dataflow::dataflow::postcode_counts;
/// use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
/// use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
/// use velib_dataflow::postcode::Postcode;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::execute_directly(move |worker| {
///     let (mut statuses, mut directory) = worker.dataflow::<u64, _, _>(|scope| {
///         let (statuses, status_coll) = scope.new_collection();
///         let (directory, dir_coll) = scope.new_collection();
///         postcode_counts(status_coll, dir_coll)
///             .inspect(move |x| sink.lock().unwrap().push(x.clone()));
///         (statuses, directory)
///     });
///     directory.insert(DirectoryEntry {
///         station_id: StationId::Num(1), code: Some("16107".into()), name: "A".into(),
///         position: None, capacity: Some(35), postcode: Postcode::parse("75016").unwrap(),
///         postcode_source: PostcodeSource::Table,
///     });
///     statuses.insert(StationStatus {
///         station_id: StationId::Num(1), code: Some("16107".into()), bikes_available: 3,
///         bike_types: Some(BikeTypes { mechanical: 2, ebike: 1, other: 0 }),
///         docks_available: 32, is_installed: true, is_renting: true, is_returning: true,
///         last_reported: None, judged: Default::default(),
///         vehicle_types: Default::default(),
///     });
/// });
/// let out = out.lock().unwrap();
/// let ((postcode, totals), epoch, diff) = &out[0];
/// let counts = totals.counts;
/// assert_eq!((postcode.as_str(), counts.bikes, counts.ebikes, *epoch, *diff), ("75016", 3, 1, 0, 1));
/// ```
pub fn postcode_counts<'s, T>(
    statuses: VecCollection<'s, T, StationStatus>,
    directory: VecCollection<'s, T, DirectoryEntry>,
) -> VecCollection<'s, T, (Postcode, PostcodeTotals)>
where
    T: Timestamp + TotalOrder,
{
    let statuses = latest_per_key(statuses, |s| s.station_id.clone());
    let directory = latest_per_key(directory, |d| d.station_id.clone());
    postcode_counts_from_upserts(statuses, directory)
}

/// As [`postcode_counts`], from upserts of each station's status and
/// directory entry: what Kafka sources give
/// ([`KafkaSource`](crate::kafka::source::KafkaSource)), without a
/// collection in between. A station's status or entry at a time replaces
/// the one before; `None` removes it.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::ToStream;
/// use velib_dataflow::dataflow::postcode_counts_from_upserts;
/// use velib_dataflow::feed::{StationId, StationStatus};
/// use std::sync::{Arc, Mutex};
///
/// let status = |bikes| StationStatus {
///     station_id: StationId::Num(1), code: None, bikes_available: bikes, bike_types: None,
///     docks_available: 0, is_installed: true, is_renting: true, is_returning: true,
///     last_reported: None, judged: Default::default(),
///     vehicle_types: Default::default(),
/// };
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::example(move |scope| {
///     let statuses = vec![
///         (StationId::Num(1), Some(status(3)), 1u64),
///         (StationId::Num(1), Some(status(4)), 2),
///         (StationId::Num(1), None, 3),
///     ];
///     let no_directory = Vec::<(StationId, Option<_>, u64)>::new();
///     postcode_counts_from_upserts(statuses.to_stream(scope), no_directory.to_stream(scope))
///         .inspect(move |((pc, totals), time, diff)| sink.lock().unwrap().push((totals.counts.bikes, *time, *diff)));
/// });
/// let mut out = out.lock().unwrap().clone();
/// out.sort_by_key(|(_, time, diff)| (*time, *diff));
/// // Under `unknown` (no directory entry): 3 bikes, then 4, then gone.
/// assert_eq!(out, [(3, 1, 1), (3, 2, -1), (4, 2, 1), (4, 3, -1)]);
/// ```
pub fn postcode_counts_from_upserts<'s, T>(
    statuses: Upserts<'s, T, StationId, StationStatus>,
    directory: Upserts<'s, T, StationId, DirectoryEntry>,
) -> VecCollection<'s, T, (Postcode, PostcodeTotals)>
where
    T: Timestamp + TotalOrder,
{
    // Only what the counts use crosses to the station's worker.
    let counts = statuses.map(|(id, status, time)| {
        let counts = status.as_ref().map(StationCounts::of_station);
        (id, counts, time)
    });
    let placements = directory.map(|(id, entry, time)| {
        let placement = entry.map(|d| Placement {
            postcode: d.postcode,
            inferred: d.postcode_source.is_inferred(),
        });
        (id, placement, time)
    });
    postcode_totals(place_stations(counts, placements))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::counts::PostcodeCounts;
    use crate::directory::PostcodeSource;
    use crate::feed::{BikeTypes, Judged, Position};
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// Read back from bincode, followed by another value as inside a larger
    /// message: bincode has no field names, so a field left out (serde's
    /// `skip_serializing_if`) shifts every later one.
    pub(super) fn round_trip<
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    >(
        value: T,
    ) {
        let bytes = bincode::serialize(&(value.clone(), 7u8)).unwrap();
        let back: (T, u8) = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, (value, 7));
    }

    /// What the aggregator's dataflow sends between workers of different
    /// processes, with every optional field both absent and present.
    #[test]
    fn what_crosses_the_exchange_between_processes_survives_bincode() {
        let bare = StationStatus {
            station_id: StationId::Num(1),
            code: None,
            bikes_available: 0,
            bike_types: None,
            docks_available: 0,
            is_installed: false,
            is_renting: false,
            is_returning: false,
            last_reported: None,
            judged: Judged::default(),
            vehicle_types: Default::default(),
        };
        let full = StationStatus {
            station_id: StationId::Text("a:1".into()),
            code: Some("16107".into()),
            bikes_available: 3,
            bike_types: Some(BikeTypes {
                mechanical: 1,
                ebike: 1,
                other: 1,
            }),
            last_reported: Some(1_732_004_538),
            judged: Judged {
                stale: true,
                empty_since: Some(5),
                full_since: Some(6),
                empty_long: true,
                full_long: false,
            },
            vehicle_types: [("city".to_owned(), 2), ("cargo".to_owned(), 1)].into(),
            ..bare.clone()
        };
        for status in [bare.clone(), full] {
            round_trip((status.station_id.clone(), Some(status), 3u64));
        }
        round_trip((bare.station_id.clone(), None::<StationStatus>, 3u64));
        let postcode = Postcode::parse("75016").unwrap();
        let entry = DirectoryEntry {
            station_id: StationId::Num(1),
            code: None,
            name: String::new(),
            position: None,
            capacity: None,
            postcode,
            postcode_source: PostcodeSource::Inferred {
                from: StationId::Text("b".into()),
                distance_m: 120,
            },
        };
        let placed = DirectoryEntry {
            code: Some("16107".into()),
            position: Some(Position {
                lat: 48.86,
                lon: 2.35,
            }),
            capacity: Some(35),
            postcode_source: PostcodeSource::Feed,
            ..entry.clone()
        };
        round_trip(entry);
        round_trip(placed);
        let totals = PostcodeTotals {
            counts: PostcodeCounts {
                bikes: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        round_trip((postcode, totals));
        round_trip((
            postcode,
            TypedTotals {
                totals,
                vehicle_types: [("city".to_owned(), 2)].into(),
            },
        ));
        round_trip((postcode, TypedTotals::default()));
    }
}
