//! The aggregation as a differential dataflow fragment.

use crate::counts::PostcodeCounts;
use crate::directory::DirectoryEntry;
use crate::feed::StationStatus;
use crate::postcode::Postcode;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Differential time in this crate: one epoch per published snapshot,
/// strictly increasing, as the epoch protocol numbers them.
pub use crate::kafka::protocol::Epoch;

/// Maintains per-postcode counts from station statuses and directory entries.
///
/// Both inputs are collections with at most one record per station id at any
/// time (what [`crate::snapshot`] produces); a snapshot's change is a
/// retraction of the old row and an insertion of the new. The output holds,
/// at every time, one `(postcode, counts)` per postcode with at least one
/// station: a postcode's change is a retraction of its old counts and an
/// insertion of the new; a postcode left without stations is only retracted.
///
/// A status whose station has no directory entry is counted under
/// [`Postcode::unknown`]. Work per change is proportional to the change: the
/// changed station is placed again on its own, and the accumulation is a sum
/// of [`PostcodeCounts`] differences rather than a reduction over the
/// postcode. A station listed more than once at a time counts once.
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
///         last_reported: None,
///     });
/// });
/// let out = out.lock().unwrap();
/// let ((postcode, counts), epoch, diff) = &out[0];
/// assert_eq!((postcode.as_str(), counts.bikes, counts.ebikes, *epoch, *diff), ("75016", 3, 1, 0, 1));
/// ```
pub fn postcode_counts<'s, T>(
    statuses: VecCollection<'s, T, StationStatus>,
    directory: VecCollection<'s, T, DirectoryEntry>,
) -> VecCollection<'s, T, (Postcode, PostcodeCounts)>
where
    T: Timestamp + Lattice + TotalOrder,
{
    // Each station's facts meet at the worker that owns its id: its counts
    // (from the status) and its place (from the directory). One reduction per
    // station is a left outer join: a station with no directory entry is
    // placed under `unknown` there, so only truly unplaced stations reach
    // that key (an antijoin would route every change's cancelling pair to the
    // one worker owning `unknown`).
    let counts = statuses.map(|s| {
        let counts = PostcodeCounts::of_station(&s);
        (s.station_id, StationFact::Counts(counts))
    });
    let places = directory.map(|d| {
        let inferred = d.postcode_source.is_inferred();
        (d.station_id, StationFact::Place(d.postcode, inferred))
    });
    counts
        .concat(places)
        .reduce_named("PlaceStation", |_station, facts, placed| {
            let mut counts = None;
            let mut place = None;
            for (fact, diff) in facts {
                if *diff <= 0 {
                    continue;
                }
                match fact {
                    StationFact::Counts(c) => counts = Some(*c),
                    StationFact::Place(postcode, inferred) => place = Some((postcode, *inferred)),
                }
            }
            if let Some(mut counts) = counts {
                let postcode = match place {
                    Some((postcode, inferred)) => {
                        counts.stations_inferred = i64::from(inferred);
                        postcode.clone()
                    }
                    None => Postcode::unknown(),
                };
                placed.push(((postcode, counts), 1));
            }
        })
        // Summing differences per postcode: the work is per changed station,
        // not per station of the postcode.
        .explode(|(_station, (postcode, counts))| Some((postcode, counts)))
        .count_total()
}

/// What one station contributes to the reduction that places it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum StationFact {
    Counts(PostcodeCounts),
    Place(Postcode, bool),
}
