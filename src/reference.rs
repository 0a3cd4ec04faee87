//! The naive from-scratch computation the dataflow is proven against.
//!
//! Kept deliberately simple (a hash join and a sum over every station), so
//! that it is obviously right; tests compare the incremental dataflow with it
//! at every epoch, and the benchmarks compare their costs.

use crate::counts::PostcodeCounts;
use crate::directory::DirectoryEntry;
use crate::feed::StationStatus;
use crate::postcode::Postcode;
use std::collections::{BTreeMap, HashMap};

/// Per-postcode counts of one snapshot, computed from scratch.
///
/// # Examples
///
/// ```
/// use velib_dataflow::reference::postcode_counts_from_scratch;
/// assert!(postcode_counts_from_scratch(&[], &[]).is_empty());
/// ```
pub fn postcode_counts_from_scratch<'a>(
    statuses: impl IntoIterator<Item = &'a StationStatus>,
    directory: impl IntoIterator<Item = &'a DirectoryEntry>,
) -> BTreeMap<Postcode, PostcodeCounts> {
    let located: HashMap<_, _> = directory
        .into_iter()
        .map(|d| {
            (
                &d.station_id,
                (&d.postcode, d.postcode_source.is_inferred()),
            )
        })
        .collect();
    let unknown = Postcode::unknown();
    let mut totals: BTreeMap<Postcode, PostcodeCounts> = BTreeMap::new();
    for status in statuses {
        let (postcode, inferred) = located
            .get(&status.station_id)
            .copied()
            .unwrap_or((&unknown, false));
        let mut counts = PostcodeCounts::of_station(status);
        counts.stations_inferred = i64::from(inferred);
        *totals.entry(*postcode).or_default() += &counts;
    }
    totals
}
