//! The naive from-scratch computation the dataflow is proven against.
//!
//! Kept deliberately simple (a hash join and a sum over every station), so
//! that it is obviously right; tests compare the incremental dataflow with it
//! at every epoch, and the benchmarks compare their costs.

use crate::counts::{PostcodeCounts, PostcodeTotals};
use crate::dataflow::{TypedTotals, VehicleTypeCounts, MAX_POSTCODE_VEHICLE_TYPES};
use crate::directory::DirectoryEntry;
use crate::feed::StationStatus;
use crate::postcode::Postcode;
use std::collections::{BTreeMap, HashMap};

/// Per-postcode totals of one snapshot, computed from scratch.
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
) -> BTreeMap<Postcode, PostcodeTotals> {
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
    let mut totals: BTreeMap<Postcode, PostcodeTotals> = BTreeMap::new();
    for status in statuses {
        let (postcode, inferred) = located
            .get(&status.station_id)
            .copied()
            .unwrap_or((&unknown, false));
        let postcode = totals.entry(*postcode).or_default();
        let counts = station_counts(status, inferred);
        postcode.counts += &counts;
        // The longest is the earliest since-time of the stations counted
        // empty (or full) now.
        let earliest = |longest: &mut Option<i64>, since: Option<i64>, counted: i64| {
            if let Some(since) = since.filter(|_| counted == 1) {
                *longest = Some(longest.map_or(since, |l| l.min(since)));
            }
        };
        earliest(
            &mut postcode.longest_empty_since,
            status.judged.empty_since,
            counts.stations_empty,
        );
        earliest(
            &mut postcode.longest_full_since,
            status.judged.full_since,
            counts.stations_full,
        );
    }
    totals
}

/// Per-postcode totals with vehicles by type (`--vehicle-types`), from
/// scratch: every postcode of [`postcode_counts_from_scratch`], with the
/// vehicles of its installed and renting stations summed by
/// `vehicle_type_id`, types with none left out.
///
/// # Examples
///
/// ```
/// use velib_dataflow::reference::typed_totals_from_scratch;
/// assert!(typed_totals_from_scratch([], []).is_empty());
/// ```
pub fn typed_totals_from_scratch<'a>(
    statuses: impl IntoIterator<Item = &'a StationStatus> + Clone,
    directory: impl IntoIterator<Item = &'a DirectoryEntry> + Clone,
) -> BTreeMap<Postcode, TypedTotals> {
    let located: HashMap<_, _> = directory
        .clone()
        .into_iter()
        .map(|d| (&d.station_id, d.postcode))
        .collect();
    let mut types: BTreeMap<Postcode, VehicleTypeCounts> = BTreeMap::new();
    let rentable = statuses
        .clone()
        .into_iter()
        .filter(|s| s.is_installed && s.is_renting);
    for status in rentable {
        let postcode = located
            .get(&status.station_id)
            .copied()
            .unwrap_or_else(Postcode::unknown);
        let counts = types.entry(postcode).or_default();
        for (kind, n) in &status.vehicle_types {
            *counts.entry(kind.clone()).or_default() += i64::from(*n);
        }
    }
    postcode_counts_from_scratch(statuses, directory)
        .into_iter()
        .map(|(postcode, totals)| {
            let mut vehicle_types = types.remove(&postcode).unwrap_or_default();
            vehicle_types.retain(|_, n| *n != 0);
            // The most numerous, ties to the first ids: sorted by count
            // down, then id, and cut.
            if vehicle_types.len() > MAX_POSTCODE_VEHICLE_TYPES {
                let mut ranked: Vec<(String, i64)> = vehicle_types.into_iter().collect();
                ranked.sort_by_key(|(id, n)| (std::cmp::Reverse(*n), id.clone()));
                ranked.truncate(MAX_POSTCODE_VEHICLE_TYPES);
                vehicle_types = ranked.into_iter().collect();
            }
            (
                postcode,
                TypedTotals {
                    totals,
                    vehicle_types,
                },
            )
        })
        .collect()
}

/// One station's counts, written out from its status field by field rather
/// than through [`PostcodeCounts::of_station`], so that the dataflow's own
/// arithmetic is checked, not reused.
fn station_counts(status: &StationStatus, inferred: bool) -> PostcodeCounts {
    let renting = status.is_installed && status.is_renting;
    let returning = status.is_installed && status.is_returning;
    let types = status.bike_types.unwrap_or_default();
    let bikes = i64::from(status.bikes_available);
    let docks = i64::from(status.docks_available);
    let count = |yes: bool| i64::from(yes);
    PostcodeCounts {
        bikes: if renting { bikes } else { 0 },
        mechanical: if renting {
            i64::from(types.mechanical)
        } else {
            0
        },
        ebikes: if renting { i64::from(types.ebike) } else { 0 },
        docks: if returning { docks } else { 0 },
        stations: 1,
        stations_renting: count(renting),
        bikes_unavailable: if renting { 0 } else { bikes },
        stations_inferred: count(inferred),
        stations_empty: count(renting && bikes == 0),
        stations_full: count(returning && docks == 0),
        docks_renting: if renting { docks } else { 0 },
        stations_stale: count(status.judged.stale),
        bikes_stale: if renting && status.judged.stale {
            bikes
        } else {
            0
        },
        stations_empty_long: count(status.judged.empty_long),
        stations_full_long: count(status.judged.full_long),
    }
}
