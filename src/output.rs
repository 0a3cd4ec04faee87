//! The per-postcode record users read: JSON, with the seed's field names.

use crate::counts::PostcodeTotals;
use crate::dataflow::Epoch;
use crate::feed::FeedTime;
use crate::kafka::changes::KeyChange;
use crate::postcode::Postcode;
use serde::{Deserialize, Serialize};

/// The value written for a postcode whose counts changed.
///
/// `postcode`, `nbr_total`, `nbr_meca` and `nbr_elec` keep the names the Spark
/// job wrote, with the counts right (bikes a rider can take; mechanical and
/// electric no longer swapped). `nbr_total` can exceed `nbr_meca + nbr_elec`
/// when a feed does not type all its bikes.
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::{PostcodeCounts, PostcodeTotals};
/// use velib_dataflow::output::PostcodeRecord;
/// use velib_dataflow::postcode::Postcode;
///
/// let counts = PostcodeCounts { bikes: 12, mechanical: 7, ebikes: 5, stations: 2, stations_renting: 2, ..Default::default() };
/// let record = PostcodeRecord::new(&Postcode::parse("75016").unwrap(), &counts.into(), 3, 1732004538);
/// let json = serde_json::to_string(&record).unwrap();
/// assert!(json.starts_with(r#"{"postcode":"75016","nbr_total":12,"nbr_meca":7,"nbr_elec":5,"#));
///
/// // One station empty since 1732003638: for 15 minutes at this epoch.
/// let counts = PostcodeCounts { stations: 1, stations_renting: 1, stations_empty: 1, ..Default::default() };
/// let totals = PostcodeTotals { counts, longest_empty_since: Some(1732003638), longest_full_since: None };
/// let record = PostcodeRecord::new(&Postcode::parse("75016").unwrap(), &totals, 3, 1732004538);
/// assert_eq!(record.feed_time - record.longest_empty_since.unwrap(), 900);
/// assert!(serde_json::to_string(&record).unwrap().contains(r#""longest_empty_since":1732003638,"longest_full_since":null,"#));
///
/// // A record written before `nbr_stations_empty`, `nbr_stations_full` and
/// // `occupancy` existed still reads.
/// let old = r#"{"postcode":"75016","nbr_total":12,"nbr_meca":7,"nbr_elec":5,"nbr_docks":3,
///   "nbr_stations":2,"nbr_stations_renting":2,"nbr_stations_not_renting":0,
///   "nbr_bikes_unavailable":0,"nbr_stations_inferred":0,"epoch":3,"feed_time":1732004538}"#;
/// let old: PostcodeRecord = serde_json::from_str(old).unwrap();
/// assert_eq!((old.nbr_stations_empty, old.occupancy, old.longest_empty_since), (0, None, None));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostcodeRecord {
    /// The system, when the aggregator ran for a named one
    /// ([`crate::systems`]); absent for the default system, whose records
    /// are as they always were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The postcode, or `unknown`.
    pub postcode: String,
    /// Bikes a rider can take (stations installed and renting).
    pub nbr_total: i64,
    /// Of which mechanical.
    pub nbr_meca: i64,
    /// Of which electric.
    pub nbr_elec: i64,
    /// Docks a rider can return a bike to (stations installed and returning).
    pub nbr_docks: i64,
    /// Stations in the postcode.
    pub nbr_stations: i64,
    /// Stations installed and renting.
    pub nbr_stations_renting: i64,
    /// Stations not installed or not renting.
    pub nbr_stations_not_renting: i64,
    /// Bikes at stations not installed or not renting.
    pub nbr_bikes_unavailable: i64,
    /// Stations whose postcode was inferred from the nearest station.
    pub nbr_stations_inferred: i64,
    /// Stations installed and renting with no bike available (0 in a
    /// record written before the field existed).
    #[serde(default)]
    pub nbr_stations_empty: i64,
    /// Stations installed and returning with no dock free (0 in a record
    /// written before the field existed).
    #[serde(default)]
    pub nbr_stations_full: i64,
    /// Bikes over bikes and free docks at stations installed and renting,
    /// to three decimals; `null` when they hold neither (and in a record
    /// written before the field existed).
    #[serde(default)]
    pub occupancy: Option<f64>,
    /// Stations whose last report is too old to trust (0 in a record
    /// written before the field existed).
    #[serde(default)]
    pub nbr_stations_stale: i64,
    /// Of `nbr_total`, the bikes at stale stations (0 in a record written
    /// before the field existed).
    #[serde(default)]
    pub nbr_bikes_stale: i64,
    /// Of `nbr_stations_empty`, those empty for more than the producer's
    /// `--long-after` (0 in a record written before the field existed).
    #[serde(default)]
    pub nbr_stations_empty_long: i64,
    /// Of `nbr_stations_full`, those full for more than `--long-after`.
    #[serde(default)]
    pub nbr_stations_full_long: i64,
    /// Since when (feed time, seconds since the Unix epoch) the station
    /// empty for the longest has been empty: `feed_time` minus this is how
    /// long. `null` when no station is empty (and in a record written
    /// before the field existed).
    #[serde(default)]
    pub longest_empty_since: Option<FeedTime>,
    /// Since when the station full for the longest has been full.
    #[serde(default)]
    pub longest_full_since: Option<FeedTime>,
    /// With `velib_aggregator --vehicle-types`: vehicles a rider can take,
    /// by the feed's `vehicle_type_id` (`{}` when the stations list none);
    /// absent without the option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle_types: Option<crate::dataflow::VehicleTypeCounts>,
    /// The epoch of this value.
    pub epoch: Epoch,
    /// The feed's time of the snapshot, in seconds since the Unix epoch.
    pub feed_time: FeedTime,
}

impl PostcodeRecord {
    /// The record of `postcode` with `totals` at `epoch`.
    pub fn new(
        postcode: &Postcode,
        totals: &PostcodeTotals,
        epoch: Epoch,
        feed_time: FeedTime,
    ) -> Self {
        let counts = &totals.counts;
        PostcodeRecord {
            system: None,
            postcode: postcode.to_string(),
            nbr_total: counts.bikes,
            nbr_meca: counts.mechanical,
            nbr_elec: counts.ebikes,
            nbr_docks: counts.docks,
            nbr_stations: counts.stations,
            nbr_stations_renting: counts.stations_renting,
            nbr_stations_not_renting: counts.stations_not_renting(),
            nbr_bikes_unavailable: counts.bikes_unavailable,
            nbr_stations_inferred: counts.stations_inferred,
            nbr_stations_empty: counts.stations_empty,
            nbr_stations_full: counts.stations_full,
            occupancy: counts.occupancy().map(|o| (o * 1000.0).round() / 1000.0),
            nbr_stations_stale: counts.stations_stale,
            nbr_bikes_stale: counts.bikes_stale,
            nbr_stations_empty_long: counts.stations_empty_long,
            nbr_stations_full_long: counts.stations_full_long,
            longest_empty_since: totals.longest_empty_since,
            longest_full_since: totals.longest_full_since,
            vehicle_types: None,
            epoch,
            feed_time,
        }
    }
}

/// What is printed for a postcode that no longer has stations (on Kafka, a
/// tombstone: the key with a null value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostcodeDeletion {
    /// The system, for a named one (as [`PostcodeRecord::system`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The postcode.
    pub postcode: String,
    /// Always `true`.
    pub deleted: bool,
    /// The epoch in which it went.
    pub epoch: Epoch,
    /// The feed's time of that snapshot.
    pub feed_time: FeedTime,
}

/// One line of JSON for a change, as `velib_replay` prints it.
pub fn json_line(
    change: &KeyChange<Postcode, PostcodeTotals>,
    epoch: Epoch,
    feed_time: FeedTime,
) -> String {
    let json = match change {
        KeyChange::Upsert(postcode, counts) => {
            serde_json::to_string(&PostcodeRecord::new(postcode, counts, epoch, feed_time))
        }
        KeyChange::Delete(postcode) => serde_json::to_string(&PostcodeDeletion {
            system: None,
            postcode: postcode.to_string(),
            deleted: true,
            epoch,
            feed_time,
        }),
    };
    json.expect("records of strings and integers always serialise")
}

/// Encodes postcode changes for the Kafka sink: key the postcode, value the
/// [`PostcodeRecord`] JSON, with the feed time the epoch's progress gives
/// (0 when no source said).
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::PostcodeTotals;
/// use velib_dataflow::kafka::sink::{EpochProgress, RecordEncoder};
/// use velib_dataflow::output::PostcodeRecordEncoder;
/// use velib_dataflow::postcode::Postcode;
///
/// let postcode = Postcode::parse("75016").unwrap();
/// let encoder = PostcodeRecordEncoder::default();
/// assert_eq!(encoder.key(&postcode), b"75016");
/// let progress = EpochProgress { epoch: 3, feed_time: Some(1732004538), ..Default::default() };
/// let value = String::from_utf8(encoder.value(&postcode, &PostcodeTotals::default(), &progress)).unwrap();
/// assert!(value.starts_with(r#"{"postcode":"75016","#), "{value}");
/// assert!(value.ends_with(r#""epoch":3,"feed_time":1732004538}"#));
///
/// // A named system's records say which system they are of.
/// let oslo = PostcodeRecordEncoder::of_system(Some("oslo".into()));
/// let value = String::from_utf8(oslo.value(&postcode, &PostcodeTotals::default(), &progress)).unwrap();
/// assert!(value.starts_with(r#"{"system":"oslo","postcode":"75016","#), "{value}");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PostcodeRecordEncoder {
    /// Written in each record's `system` field, when given.
    system: Option<String>,
}

impl PostcodeRecordEncoder {
    /// The encoder of `system`'s records (`None`: the default system's,
    /// with no `system` field).
    pub fn of_system(system: Option<String>) -> Self {
        PostcodeRecordEncoder { system }
    }

    /// A postcode's record key: the postcode, whichever values (totals,
    /// or totals with vehicle types) the records hold. (It is both
    /// [`RecordEncoder`](crate::kafka::sink::RecordEncoder)s' key; this
    /// spares callers saying which.)
    pub fn key(&self, postcode: &Postcode) -> Vec<u8> {
        postcode.as_str().as_bytes().to_vec()
    }
}

impl crate::kafka::sink::RecordEncoder<Postcode, PostcodeTotals> for PostcodeRecordEncoder {
    fn key(&self, key: &Postcode) -> Vec<u8> {
        PostcodeRecordEncoder::key(self, key)
    }

    fn value(
        &self,
        key: &Postcode,
        value: &PostcodeTotals,
        progress: &crate::kafka::sink::EpochProgress,
    ) -> Vec<u8> {
        let record = PostcodeRecord {
            system: self.system.clone(),
            ..PostcodeRecord::new(
                key,
                value,
                progress.epoch,
                progress.feed_time.unwrap_or_default(),
            )
        };
        serde_json::to_vec(&record).expect("records of strings and integers always serialise")
    }
}

/// With `--vehicle-types`: the record with its `vehicle_types`.
///
/// # Examples
///
/// ```
/// use velib_dataflow::dataflow::TypedTotals;
/// use velib_dataflow::kafka::sink::{EpochProgress, RecordEncoder};
/// use velib_dataflow::output::PostcodeRecordEncoder;
/// use velib_dataflow::postcode::Postcode;
///
/// let typed = TypedTotals { vehicle_types: [("cargo".to_owned(), 2)].into(), ..Default::default() };
/// let progress = EpochProgress { epoch: 3, feed_time: Some(1732004538), ..Default::default() };
/// let value = PostcodeRecordEncoder::default().value(&Postcode::parse("0150").unwrap(), &typed, &progress);
/// assert!(String::from_utf8(value).unwrap().contains(r#""vehicle_types":{"cargo":2},"epoch":3"#));
/// ```
impl crate::kafka::sink::RecordEncoder<Postcode, crate::dataflow::TypedTotals>
    for PostcodeRecordEncoder
{
    fn key(&self, key: &Postcode) -> Vec<u8> {
        PostcodeRecordEncoder::key(self, key)
    }

    fn value(
        &self,
        key: &Postcode,
        value: &crate::dataflow::TypedTotals,
        progress: &crate::kafka::sink::EpochProgress,
    ) -> Vec<u8> {
        let record = PostcodeRecord {
            system: self.system.clone(),
            vehicle_types: Some(value.vehicle_types.clone()),
            ..PostcodeRecord::new(
                key,
                &value.totals,
                progress.epoch,
                progress.feed_time.unwrap_or_default(),
            )
        };
        serde_json::to_vec(&record).expect("records of strings and integers always serialise")
    }
}
