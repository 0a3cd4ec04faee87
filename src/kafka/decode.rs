//! Decoders: how a Kafka record's key and value become a keyed upsert.
//!
//! The source reads the epoch framing from the headers itself
//! ([`super::protocol::framing`]); a decoder sees the data records and turns
//! each into `(key, Some(value))`, or `(key, None)` when the key is gone.
//! This crate's decoders read station statuses ([`StationStatusDecoder`]) and
//! directory entries ([`DirectoryEntryDecoder`]); implement
//! [`RecordDecoder`] to read anything else.

use super::protocol::{parse_station_key, NORMALISED_FIELD};
use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{gbfs, FeedError, StationId, StationStatus};

/// Records larger than this are refused (and sent to the dead-letter topic)
/// rather than parsed.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// A record as read from Kafka.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// Why a record could not be read. Such a record goes to the dead-letter
/// topic with [`DecodeError::reason`] in a header; the pipeline goes on.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder, StationStatusDecoder};
///
/// let record = RawRecord { topic: "velib-projet", partition: 2, offset: 17, key: Some(b"7"), value: Some(b"{\"station_id\": 7") };
/// let error = StationStatusDecoder.decode(&record).unwrap_err();
/// // The dead-letter topic's `velib-dlq-reason` header.
/// assert_eq!(error.reason(), "invalid_json");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is larger than [`MAX_RECORD_BYTES`].
    #[error("record of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Its size (key and value).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A framing header is missing or malformed.
    #[error("header {header} {problem}")]
    Header {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The key is missing or unreadable.
    #[error("key: {problem}")]
    Key {
        /// What is wrong with it.
        problem: String,
    },
    /// A record that must have a value has none.
    #[error("record has no value")]
    MissingValue,
    /// The value is not the JSON expected.
    #[error("{what}: not valid JSON: {source}")]
    Json {
        /// What the value should have been.
        what: &'static str,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The value is a GBFS station record, but not a valid one.
    #[error("{0}")]
    Feed(#[from] FeedError),
    /// The record would open one epoch (or attempt) more than a partition
    /// holds open: broken or forged framing.
    #[error("the record's epoch and attempt would be one more than the {limit} a partition holds open before their markers")]
    TooManyOpenEpochs {
        /// The limit.
        limit: usize,
    },
    /// A marker or data record whose epoch is more than
    /// [`MAX_EPOCH_GAP`](super::protocol::MAX_EPOCH_GAP) past what its
    /// partition has shown: forged or broken framing, which would make
    /// every later genuine record of the partition late (see
    /// [`PartitionEpochs::check_marker`](super::protocol::PartitionEpochs::check_marker)).
    #[error(
        "epoch {epoch} is more than {limit} epochs past epoch {reference}, where its partition \
         stands: forged or broken framing"
    )]
    EpochGap {
        /// The epoch the partition passed; before its first marker, the
        /// newest epoch of the records it holds (or the reader's start
        /// epoch, if later).
        reference: Epoch,
        /// The record's epoch.
        epoch: Epoch,
        /// The largest jump accepted.
        limit: Epoch,
    },
    /// A marker older than the epoch its partition passed: one producer's
    /// markers only go forward.
    #[error(
        "marker of epoch {epoch} after the partition passed epoch {passed}: another producer \
         writes this topic, or a forged marker moved the partition on"
    )]
    MarkerGoesBack {
        /// The epoch the partition passed.
        passed: Epoch,
        /// The marker's epoch.
        epoch: Epoch,
    },
    /// The key and the value name different stations.
    #[error("key names station {key}, value station {value}")]
    KeyMismatch {
        /// The station the key names.
        key: StationId,
        /// The station the value names.
        value: StationId,
    },
}

impl DecodeError {
    /// A short, stable name for the kind of error: the dead-letter header
    /// and the label of the rejected-records counter.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Header { .. } => "invalid_header",
            DecodeError::Key { .. } => "invalid_key",
            DecodeError::MissingValue => "missing_value",
            DecodeError::Json { .. } => "invalid_json",
            DecodeError::Feed(e) => e.reason(),
            DecodeError::TooManyOpenEpochs { .. } => "too_many_open_epochs",
            DecodeError::EpochGap { .. } => "epoch_gap_too_large",
            DecodeError::MarkerGoesBack { .. } => "marker_goes_back",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

/// Turns a data record into a keyed upsert.
///
/// # Examples
///
/// A decoder of your own: plain-text counters keyed by name.
///
/// ```
/// use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder};
/// use velib_dataflow::kafka::DecodeError;
///
/// struct Counter;
/// impl RecordDecoder for Counter {
///     type Key = String;
///     type Value = u64;
///     fn decode(&self, record: &RawRecord<'_>) -> Result<(String, Option<u64>), DecodeError> {
///         let key = record.key.and_then(|k| std::str::from_utf8(k).ok())
///             .ok_or(DecodeError::Key { problem: "not UTF-8 text".into() })?;
///         let value = match record.value {
///             None => None,
///             Some(v) => Some(std::str::from_utf8(v).ok().and_then(|t| t.parse().ok())
///                 .ok_or(DecodeError::MissingValue)?),
///         };
///         Ok((key.to_owned(), value))
///     }
/// }
/// let record = RawRecord { topic: "t", partition: 0, offset: 0, key: Some(b"bikes"), value: Some(b"42") };
/// assert_eq!(Counter.decode(&record)?, ("bikes".to_owned(), Some(42)));
/// # Ok::<(), DecodeError>(())
/// ```
pub trait RecordDecoder: 'static {
    /// What records are keyed by.
    type Key;
    /// What a key's value is.
    type Value;
    /// The record's key and its new value (`None`: the key is gone).
    fn decode(
        &self,
        record: &RawRecord<'_>,
    ) -> Result<(Self::Key, Option<Self::Value>), DecodeError>;
}

/// Refuses a record larger than [`MAX_RECORD_BYTES`] (key and value).
pub(crate) fn check_size(record: &RawRecord<'_>) -> Result<(), DecodeError> {
    let size = record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
    if size > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge {
            size,
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(())
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
        Err(DecodeError::KeyMismatch {
            key,
            value: value.clone(),
        })
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
/// use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder, StationStatusDecoder};
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
            None => gbfs::parse_station_record(value)?,
        };
        match record.key {
            None => Ok((status.station_id.clone(), Some(status))),
            Some(key) => {
                let key = agree(parse_station_key(key)?, &status.station_id)?;
                Ok((key, Some(status)))
            }
        }
    }
}

/// Directory entries: keyed by the station id (JSON), the value a
/// [`DirectoryEntry`] as JSON; a tombstone when the station is gone.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::decode::{DirectoryEntryDecoder, RawRecord, RecordDecoder};
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
