//! Cross-file consistency of a snapshot, as MobilityData's GBFS validator
//! checks it: a station in `station_status` but not in
//! `station_information` (it is counted under `unknown`), one in
//! `station_information` with no status (it is not counted), a status
//! whose `num_bikes_available` is not the sum of its bike types (`nbr_total`
//! then differs from `nbr_meca + nbr_elec`), a vehicle type a status names
//! that `vehicle_types.json` does not define, and a station whose counts by
//! type id were left out (too many types, ids too long). None is an error:
//! the snapshot is still published, and what does not agree is counted by
//! kind and named, never folded silently into the totals. (A station listed twice
//! is an error: the parsers refuse the whole payload, `duplicate_station`.)

use crate::feed::{InformationSnapshot, StationId, StatusSnapshot};
use crate::snapshot::StationSelection;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A kind of disagreement between a snapshot's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Inconsistency {
    /// In `station_status`, not in `station_information`.
    StatusWithoutInformation,
    /// In `station_information`, not in `station_status`.
    InformationWithoutStatus,
    /// `num_bikes_available` is not the sum of `num_bikes_available_types`.
    BikesNotSumOfTypes,
    /// `vehicle_types_available` names a type `vehicle_types.json` does
    /// not define.
    UndefinedVehicleType,
    /// `vehicle_types_available` lists more types than
    /// [`crate::feed::MAX_VEHICLE_TYPES`], or an id longer than
    /// [`crate::feed::MAX_VEHICLE_TYPE_ID_LEN`], or cannot be read beside
    /// `num_bikes_available_types`: its counts by type id are left out
    /// ([`crate::feed::StatusSnapshot::vehicle_types_dropped`]).
    VehicleTypesDropped,
}

impl Inconsistency {
    /// The kind's name in metrics and logs.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::consistency::Inconsistency;
    ///
    /// assert_eq!(Inconsistency::BikesNotSumOfTypes.name(), "bikes_not_sum_of_types");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Inconsistency::StatusWithoutInformation => "status_without_information",
            Inconsistency::InformationWithoutStatus => "information_without_status",
            Inconsistency::BikesNotSumOfTypes => "bikes_not_sum_of_types",
            Inconsistency::UndefinedVehicleType => "undefined_vehicle_type",
            Inconsistency::VehicleTypesDropped => "vehicle_types_dropped",
        }
    }

    /// What it means for the counts, for a log line.
    fn consequence(&self) -> &'static str {
        match self {
            Inconsistency::StatusWithoutInformation => {
                "in station_status but not in station_information: counted under `unknown`"
            }
            Inconsistency::InformationWithoutStatus => {
                "in station_information but not in station_status: not counted"
            }
            Inconsistency::BikesNotSumOfTypes => {
                "num_bikes_available is not the sum of its types: nbr_total counts them, nbr_meca and nbr_elec count the types"
            }
            Inconsistency::UndefinedVehicleType => {
                "with a vehicle type that vehicle_types.json does not define: counted as other vehicles, in neither nbr_meca nor nbr_elec"
            }
            Inconsistency::VehicleTypesDropped => {
                "listing more than 64 vehicle types, or a type id over 64 bytes, or an unreadable vehicle_types_available beside its num_bikes_available_types: its bikes are counted, its vehicle_types left out"
            }
        }
    }
}

/// The stations of one snapshot that disagree, by kind.
///
/// # Examples
///
/// ```
/// use velib_dataflow::consistency::{Inconsistencies, Inconsistency};
/// use velib_dataflow::feed::gbfs;
/// use velib_dataflow::snapshot::StationSelection;
///
/// let status = gbfs::parse_status(br#"{"last_updated": 10, "ttl": 60, "data": {"stations": [
///   {"station_id": "a", "num_bikes_available": 3, "num_bikes_available_types": [{"mechanical": 1}, {"ebike": 1}],
///    "num_docks_available": 1, "is_installed": 1, "is_renting": 1, "is_returning": 1},
///   {"station_id": "b", "num_bikes_available": 0, "num_docks_available": 1, "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#)?;
/// let information = gbfs::parse_information(br#"{"last_updated": 10, "ttl": 60, "data": {"stations": [
///   {"station_id": "a", "name": "A", "lat": 48.8, "lon": 2.3},
///   {"station_id": "c", "name": "C", "lat": 48.8, "lon": 2.3}]}}"#)?;
/// let found = Inconsistencies::of(&status, Some(&information), &StationSelection::all());
/// assert_eq!(found.count(Inconsistency::StatusWithoutInformation), 1); // b
/// assert_eq!(found.count(Inconsistency::InformationWithoutStatus), 1); // c
/// assert_eq!(found.count(Inconsistency::BikesNotSumOfTypes), 1); // a: 3 bikes, 2 typed
/// # Ok::<(), velib_dataflow::feed::FeedError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inconsistencies {
    stations: BTreeMap<Inconsistency, Vec<StationId>>,
}

impl Inconsistencies {
    /// Checks the selected stations of `status` against `information` (a
    /// feed without one has nothing to compare but bike types).
    pub fn of(
        status: &StatusSnapshot,
        information: Option<&InformationSnapshot>,
        selection: &StationSelection,
    ) -> Self {
        let mut found = Inconsistencies::default();
        let mut note = |kind, id: &StationId| {
            found
                .stations
                .entry(kind)
                .or_insert_with(Vec::new)
                .push(id.clone())
        };
        let statuses: Vec<_> = status
            .stations
            .iter()
            .filter(|s| selection.keeps(s.code.as_deref(), &s.station_id))
            .collect();
        let undefined_types: HashSet<&StationId> = status
            .undefined_vehicle_types
            .iter()
            .map(|(id, _)| id)
            .collect();
        let types_dropped: HashSet<&StationId> = status.vehicle_types_dropped.iter().collect();
        for s in &statuses {
            if undefined_types.contains(&s.station_id) {
                note(Inconsistency::UndefinedVehicleType, &s.station_id);
            }
            if types_dropped.contains(&s.station_id) {
                note(Inconsistency::VehicleTypesDropped, &s.station_id);
            }
            if let Some(types) = s.bike_types {
                let typed =
                    u64::from(types.mechanical) + u64::from(types.ebike) + u64::from(types.other);
                if typed != u64::from(s.bikes_available) {
                    note(Inconsistency::BikesNotSumOfTypes, &s.station_id);
                }
            }
        }
        if let Some(information) = information {
            let informed: HashSet<&StationId> = information
                .stations
                .iter()
                .filter(|s| selection.keeps(s.code.as_deref(), &s.station_id))
                .map(|s| &s.station_id)
                .collect();
            let reported: HashSet<&StationId> = statuses.iter().map(|s| &s.station_id).collect();
            for s in &statuses {
                if !informed.contains(&s.station_id) {
                    note(Inconsistency::StatusWithoutInformation, &s.station_id);
                }
            }
            for s in &information.stations {
                if selection.keeps(s.code.as_deref(), &s.station_id)
                    && !reported.contains(&s.station_id)
                {
                    note(Inconsistency::InformationWithoutStatus, &s.station_id);
                }
            }
        }
        found
    }

    /// How many stations disagree in this way.
    pub fn count(&self, kind: Inconsistency) -> usize {
        self.stations.get(&kind).map_or(0, Vec::len)
    }

    /// The stations that disagree in this way, in feed order.
    pub fn stations(&self, kind: Inconsistency) -> &[StationId] {
        self.stations.get(&kind).map_or(&[], Vec::as_slice)
    }

    /// Every kind found, with its stations.
    pub fn kinds(&self) -> impl Iterator<Item = (Inconsistency, &[StationId])> {
        self.stations.iter().map(|(k, s)| (*k, s.as_slice()))
    }

    /// Nothing disagrees.
    pub fn is_empty(&self) -> bool {
        self.stations.is_empty()
    }
}

/// One kind's stations, for a log line: their count, what it means, and the
/// first few ids.
///
/// # Examples
///
/// ```
/// use velib_dataflow::consistency::{Inconsistency, Named};
/// use velib_dataflow::feed::StationId;
///
/// let ids: Vec<StationId> = (1..=7).map(StationId::Num).collect();
/// let line = Named(Inconsistency::InformationWithoutStatus, &ids).to_string();
/// assert_eq!(line, "7 stations in station_information but not in station_status: not counted (1, 2, 3, 4, 5, …)");
/// ```
#[derive(Debug)]
pub struct Named<'a>(pub Inconsistency, pub &'a [StationId]);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Named(kind, ids) = self;
        let shown: Vec<String> = ids.iter().take(5).map(ToString::to_string).collect();
        let more = if ids.len() > 5 { ", …" } else { "" };
        let noun = if ids.len() == 1 {
            "station"
        } else {
            "stations"
        };
        write!(
            f,
            "{} {noun} {} ({}{more})",
            ids.len(),
            kind.consequence(),
            shown.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::gbfs;

    #[test]
    fn a_station_whose_types_were_dropped_is_named() {
        let types: Vec<String> = (0..=crate::feed::MAX_VEHICLE_TYPES)
            .map(|i| format!(r#"{{"vehicle_type_id": "t{i}", "count": 0}}"#))
            .collect();
        let status = format!(
            r#"{{"last_updated": 10, "ttl": 60, "data": {{"stations": [
              {{"station_id": "a", "num_bikes_available": 0, "vehicle_types_available": [{}],
                "num_docks_available": 1, "is_installed": 1, "is_renting": 1, "is_returning": 1}},
              {{"station_id": "b", "num_bikes_available": 0, "num_docks_available": 1,
                "is_installed": 1, "is_renting": 1, "is_returning": 1}}]}}}}"#,
            types.join(",")
        );
        let status = gbfs::parse_status(status.as_bytes()).unwrap();
        let found = Inconsistencies::of(&status, None, &StationSelection::all());
        assert_eq!(
            found.stations(Inconsistency::VehicleTypesDropped),
            [StationId::Text("a".into())]
        );
        assert_eq!(found.kinds().count(), 1, "{found:?}");
        // Not named when the selection leaves it out.
        let only_b = StationSelection::only(["b".to_owned()]);
        assert!(Inconsistencies::of(&status, None, &only_b).is_empty());
    }
}
