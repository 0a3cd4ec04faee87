//! Stations on Kafka: how the producer writes a station's records and how
//! the aggregator reads them back. The Kafka layer ([`crate::kafka`]) moves
//! keyed records in epochs and knows nothing of stations; this is where
//! they get their format.
//!
//! - A station's records are keyed by its id as JSON ([`station_key`]:
//!   `213688169`, or `"abc"` for a textual id); a null value (a tombstone)
//!   means the station is gone.
//! - A status value is the feed's own station object, so that a reader of
//!   the raw feed format still understands it, plus under
//!   [`NORMALISED_FIELD`] the epoch and the normalised status
//!   ([`station_value`]); [`StationStatusDecoder`] reads it, and also the
//!   seeds' unkeyed raw GBFS records.
//! - A directory value is a [`DirectoryEntry`] as JSON
//!   ([`DirectoryEntryDecoder`]).

use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{
    gbfs, FeedError, StationId, StationStatus, MAX_VEHICLE_TYPES, MAX_VEHICLE_TYPE_ID_LEN,
};
use crate::kafka::decode::{check_size, RawRecord, RecordDecoder};
use crate::kafka::DecodeError;

/// The field of a station record's value holding the normalised status,
/// next to the feed's own fields.
pub const NORMALISED_FIELD: &str = "velib";

/// Why a station record could not be read, beyond what any record can get
/// wrong ([`DecodeError`]); it reaches the dead letters as
/// [`DecodeError::Value`] with its [`reason`](StationRecordError::reason).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationRecordError {
    /// The value is a GBFS station record, but not a valid one.
    #[error("{0}")]
    Feed(#[from] FeedError),
    /// The key and the value name different stations.
    #[error("key names station {key}, value station {value}")]
    KeyMismatch {
        /// The station the key names.
        key: StationId,
        /// The station the value names.
        value: StationId,
    },
    /// The normalised status lists more vehicle types than
    /// [`crate::feed::MAX_VEHICLE_TYPES`], or an id longer than
    /// [`crate::feed::MAX_VEHICLE_TYPE_ID_LEN`]: the producer never writes
    /// one, and its types would go into a postcode's record.
    #[error("station {station}: vehicle_types: {problem}")]
    VehicleTypes {
        /// The station.
        station: StationId,
        /// What is out of range.
        problem: String,
    },
}

impl StationRecordError {
    /// A short, stable name for the kind of error.
    pub fn reason(&self) -> &'static str {
        match self {
            StationRecordError::Feed(e) => e.reason(),
            StationRecordError::KeyMismatch { .. } => "key_mismatch",
            StationRecordError::VehicleTypes { .. } => "vehicle_types_out_of_range",
        }
    }
}

impl From<StationRecordError> for DecodeError {
    fn from(e: StationRecordError) -> Self {
        DecodeError::Value {
            reason: e.reason(),
            source: Box::new(e),
        }
    }
}

/// A station record's value: the feed's own fields for the station (so a
/// reader of the raw feed format still understands it), and under
/// [`NORMALISED_FIELD`] the epoch and the normalised status.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::gbfs;
/// use velib_dataflow::station_records::station_value;
///
/// let raw = br#"{"station_id": 7, "num_bikes_available": 2, "num_docks_available": 5,
///     "is_installed": 1, "is_renting": 1, "is_returning": 1}"#;
/// let status = gbfs::parse_station_record(raw)?;
/// let fields = serde_json::from_slice(raw).unwrap();
/// let value: serde_json::Value = serde_json::from_slice(&station_value(Some(&fields), 3, &status)).unwrap();
/// assert_eq!(value["num_bikes_available"], 2);
/// assert_eq!(value["velib"]["epoch"], 3);
/// assert_eq!(value["velib"]["status"]["bikes_available"], 2);
/// # Ok::<(), velib_dataflow::feed::FeedError>(())
/// ```
pub fn station_value(
    feed_fields: Option<&serde_json::Map<String, serde_json::Value>>,
    epoch: Epoch,
    status: &StationStatus,
) -> Vec<u8> {
    let mut value = feed_fields.cloned().unwrap_or_default();
    value.insert(
        NORMALISED_FIELD.to_owned(),
        serde_json::json!({ "epoch": epoch, "status": status }),
    );
    serde_json::to_vec(&value).expect("a JSON map always serialises")
}

/// The key of a station's records: its id as JSON.
pub fn station_key(id: &StationId) -> Vec<u8> {
    serde_json::to_vec(id).expect("a station id always serialises")
}

/// Reads a station key written by [`station_key`]. A bare textual key (not
/// JSON) is taken as a textual id, as a hand-written record would have it.
pub fn parse_station_key(key: &[u8]) -> Result<StationId, DecodeError> {
    if let Ok(id) = serde_json::from_slice::<StationId>(key) {
        return Ok(id);
    }
    match std::str::from_utf8(key) {
        Ok(text) if !text.trim().is_empty() && text.len() <= 256 => {
            Ok(StationId::Text(text.to_owned()))
        }
        _ => Err(DecodeError::Key {
            problem: "not a station id (JSON number or string, or non-empty text up to 256 bytes)"
                .into(),
        }),
    }
}

/// Reads a keyed upsert whose value is `T` as JSON: the key must be a
/// station id, and the value's id (read by `id`) must agree with it.
fn keyed_json<T: serde::de::DeserializeOwned>(
    record: &RawRecord<'_>,
    what: &'static str,
    id: impl Fn(&T) -> &StationId,
) -> Result<(StationId, Option<T>), DecodeError> {
    check_size(record)?;
    let key = record
        .key
        .ok_or_else(|| DecodeError::Key {
            problem: "missing".into(),
        })
        .and_then(parse_station_key)?;
    let Some(value) = record.value else {
        return Ok((key, None));
    };
    let value: T =
        serde_json::from_slice(value).map_err(|source| DecodeError::Json { what, source })?;
    agree(key, id(&value)).map(|key| (key, Some(value)))
}

fn agree(key: StationId, value: &StationId) -> Result<StationId, DecodeError> {
    if &key == value {
        Ok(key)
    } else {
        Err(StationRecordError::KeyMismatch {
            key,
            value: value.clone(),
        }
        .into())
    }
}

/// Station statuses, in either of two forms:
///
/// - the producer's: keyed by the station id (JSON), the value a GBFS
///   station record with the normalised [`StationStatus`] under
///   [`NORMALISED_FIELD`]; a tombstone when the station is gone;
/// - the seeds' `producer.py`: one raw GBFS station record per message,
///   unkeyed (the id is read from the record).
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::StationId;
/// use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder};
/// use velib_dataflow::station_records::StationStatusDecoder;
///
/// let seed = br#"{"station_id": 213688169, "stationCode": "16107", "num_bikes_available": 3,
///     "num_bikes_available_types": [{"mechanical": 2}, {"ebike": 1}],
///     "num_docks_available": 32, "is_installed": 1, "is_returning": 1, "is_renting": 1}"#;
/// let record = RawRecord { topic: "velib-projet", partition: 0, offset: 0, key: None, value: Some(seed) };
/// let (id, status) = StationStatusDecoder.decode(&record)?;
/// assert_eq!(id, StationId::Num(213688169));
/// assert_eq!(status.unwrap().bikes_available, 3);
///
/// let gone = RawRecord { key: Some(b"213688169"), value: None, ..record };
/// assert_eq!(StationStatusDecoder.decode(&gone)?, (StationId::Num(213688169), None));
/// # Ok::<(), velib_dataflow::kafka::DecodeError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StationStatusDecoder;

impl RecordDecoder for StationStatusDecoder {
    type Key = StationId;
    type Value = StationStatus;

    fn decode(
        &self,
        record: &RawRecord<'_>,
    ) -> Result<(StationId, Option<StationStatus>), DecodeError> {
        check_size(record)?;
        let Some(value) = record.value else {
            return keyed_json::<StationStatus>(record, "station status", |s| &s.station_id);
        };
        // The producer's records: read the normalised status alone, skipping
        // the feed's own fields without building them. Anything else (the
        // seeds' records, a hand-written one, a broken one) takes the path
        // below, which says what is wrong.
        if let Ok(NormalisedRecord {
            normalised: Some(NormalisedField {
                status: Some(status),
            }),
        }) = serde_json::from_slice::<NormalisedRecord>(value)
        {
            return keyed_status(record, status);
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(value).map_err(|source| DecodeError::Json {
                what: "station status",
                source,
            })?;
        let status = match parsed.get(NORMALISED_FIELD).and_then(|v| v.get("status")) {
            Some(normalised) => {
                serde_json::from_value(normalised.clone()).map_err(|source| DecodeError::Json {
                    what: "normalised station status",
                    source,
                })?
            }
            None => gbfs::parse_station_record(value).map_err(StationRecordError::Feed)?,
        };
        keyed_status(record, status)
    }
}

/// A station record as the producer writes it, read for its normalised
/// status only (serde skips the other fields).
#[derive(serde::Deserialize)]
struct NormalisedRecord {
    #[serde(rename = "velib", default)]
    normalised: Option<NormalisedField>,
}

/// See [`NORMALISED_FIELD`].
#[derive(serde::Deserialize)]
struct NormalisedField {
    #[serde(default)]
    status: Option<StationStatus>,
}

/// `status`, keyed by the record's key, which must agree with it, and
/// within the parser's bounds on vehicle types (a normalised status is read
/// as it is, not parsed again).
fn keyed_status(
    record: &RawRecord<'_>,
    status: StationStatus,
) -> Result<(StationId, Option<StationStatus>), DecodeError> {
    let out_of_range = |problem: String| StationRecordError::VehicleTypes {
        station: status.station_id.clone(),
        problem,
    };
    if status.vehicle_types.len() > MAX_VEHICLE_TYPES {
        let many = status.vehicle_types.len();
        return Err(out_of_range(format!("{many} types, more than {MAX_VEHICLE_TYPES}")).into());
    }
    if let Some(id) = status
        .vehicle_types
        .keys()
        .find(|id| id.len() > MAX_VEHICLE_TYPE_ID_LEN)
    {
        let bytes = id.len();
        return Err(out_of_range(format!(
            "a type id of {bytes} bytes, more than {MAX_VEHICLE_TYPE_ID_LEN}"
        ))
        .into());
    }
    match record.key {
        None => Ok((status.station_id.clone(), Some(status))),
        Some(key) => {
            let key = agree(parse_station_key(key)?, &status.station_id)?;
            Ok((key, Some(status)))
        }
    }
}

/// Directory entries: keyed by the station id (JSON), the value a
/// [`DirectoryEntry`] as JSON; a tombstone when the station is gone.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder};
/// use velib_dataflow::station_records::DirectoryEntryDecoder;
///
/// let record = RawRecord { topic: "velib-directory", partition: 0, offset: 9, key: Some(b"7"), value: Some(b"{}") };
/// let error = DirectoryEntryDecoder.decode(&record).unwrap_err();
/// assert_eq!(error.reason(), "invalid_json");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectoryEntryDecoder;

impl RecordDecoder for DirectoryEntryDecoder {
    type Key = StationId;
    type Value = DirectoryEntry;

    fn decode(
        &self,
        record: &RawRecord<'_>,
    ) -> Result<(StationId, Option<DirectoryEntry>), DecodeError> {
        keyed_json::<DirectoryEntry>(record, "directory entry", |d| &d.station_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_keys_round_trip() {
        for id in [StationId::Num(213688169), StationId::Text("abc:1".into())] {
            assert_eq!(parse_station_key(&station_key(&id)).unwrap(), id);
        }
        assert_eq!(
            parse_station_key(b"abc").unwrap(),
            StationId::Text("abc".into())
        );
        assert!(parse_station_key(b"").is_err());
        assert!(parse_station_key(b"\xff\xfe").is_err());
        assert!(parse_station_key(&[b'x'; 300]).is_err());
    }

    fn status(bikes: u32) -> StationStatus {
        StationStatus {
            station_id: StationId::Num(7),
            code: Some("16107".into()),
            bikes_available: bikes,
            bike_types: None,
            docks_available: 1,
            is_installed: true,
            is_renting: true,
            is_returning: true,
            last_reported: None,
            judged: Default::default(),
            vehicle_types: Default::default(),
        }
    }

    fn decode(value: &[u8]) -> Result<(StationId, Option<StationStatus>), DecodeError> {
        let key = station_key(&StationId::Num(7));
        StationStatusDecoder.decode(&RawRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            key: Some(&key),
            value: Some(value),
        })
    }

    #[test]
    fn the_fast_path_reads_what_the_full_parse_reads() {
        let mut fields = serde_json::Map::new();
        fields.insert("stationCode".into(), "16107".into());
        fields.insert(
            "num_bikes_available_types".into(),
            serde_json::json!([{"mechanical": 2}]),
        );
        let value = station_value(Some(&fields), 3, &status(4));
        assert_eq!(
            decode(&value).unwrap(),
            (StationId::Num(7), Some(status(4)))
        );
        // Two normalised fields: the fast path refuses, the full parse keeps
        // the last, as it always did.
        let status = |b| serde_json::to_string(&status(b)).unwrap();
        let twice = format!(
            r#"{{"velib": {{"status": {}}}, "velib": {{"status": {}}}}}"#,
            status(1),
            status(2)
        );
        assert_eq!(
            decode(twice.as_bytes()).unwrap().1.unwrap().bikes_available,
            2
        );
        // A normalised field without a status is read as a feed's record.
        let bare = br#"{"velib": {"epoch": 3}, "station_id": 7, "num_bikes_available": 5,
            "num_docks_available": 1, "is_installed": 1, "is_renting": 1, "is_returning": 1}"#;
        assert_eq!(decode(bare).unwrap().1.unwrap().bikes_available, 5);
        // A broken status says so, whichever path.
        let broken = br#"{"velib": {"status": {"station_id": 7}}}"#;
        assert_eq!(decode(broken).unwrap_err().reason(), "invalid_json");
    }

    /// A normalised status is read as it is, so the parser's bounds on
    /// vehicle types are checked again: a hand-written record over them is
    /// a dead letter, not a postcode record too large to write.
    #[test]
    fn a_normalised_status_over_the_vehicle_type_bounds_is_refused() {
        let with_types = |types: &[(String, u32)]| {
            let mut s = status(1);
            s.vehicle_types = types.iter().cloned().collect();
            station_value(None, 3, &s)
        };
        let most: Vec<(String, u32)> = (0..MAX_VEHICLE_TYPES)
            .map(|i| (format!("t{i}"), 1))
            .collect();
        assert_eq!(
            decode(&with_types(&most))
                .unwrap()
                .1
                .unwrap()
                .vehicle_types
                .len(),
            MAX_VEHICLE_TYPES
        );
        let longest = [("x".repeat(MAX_VEHICLE_TYPE_ID_LEN), 1)];
        assert!(decode(&with_types(&longest)).is_ok());

        let mut many = most.clone();
        many.push(("one-more".into(), 1));
        let long = [("x".repeat(MAX_VEHICLE_TYPE_ID_LEN + 1), 1)];
        for (over, says) in [
            (&many[..], "65 types, more than 64"),
            (&long[..], "of 65 bytes"),
        ] {
            let error = decode(&with_types(over)).unwrap_err();
            assert_eq!(error.reason(), "vehicle_types_out_of_range");
            assert!(error.to_string().contains(says), "{error}");
            assert!(error.to_string().starts_with("station 7: "), "{error}");
        }
    }
}
