//! Decoders: how a Kafka record's key and value become a keyed upsert.
//!
//! The source reads the epoch framing from the headers itself
//! ([`super::protocol::framing`]); a decoder sees the data records and turns
//! each into `(key, Some(value))`, or `(key, None)` when the key is gone.
//! Implement [`RecordDecoder`] for what your records hold (velib-dataflow's
//! own decoders are one example).

use super::protocol::Epoch;

/// Records larger than this are refused (and sent to the dead-letter topic)
/// rather than parsed.
///
/// # Examples
///
/// ```
/// use timely_kafka::decode::{check_size, RawRecord, MAX_RECORD_BYTES};
///
/// // Key and value count together.
/// let (key, value) = (vec![0; 1], vec![0; MAX_RECORD_BYTES]);
/// let record = RawRecord { topic: "events", partition: 0, offset: 0, key: Some(&key), value: Some(&value) };
/// assert_eq!(check_size(&record).unwrap_err().reason(), "too_large");
/// ```
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// A record as read from Kafka.
///
/// # Examples
///
/// ```
/// use timely_kafka::dead_letter::DeadLetter;
/// use timely_kafka::decode::RawRecord;
/// use timely_kafka::DecodeError;
///
/// // A tombstone: a key and no value.
/// let record = RawRecord { topic: "events", partition: 1, offset: 9, key: Some(b"a"), value: None };
/// let letter = DeadLetter::new(&record, &DecodeError::MissingValue);
/// assert_eq!((letter.topic.as_str(), letter.partition, letter.offset), ("events", 1, 9));
/// ```
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
/// use timely_kafka::decode::{check_size, RawRecord, MAX_RECORD_BYTES};
///
/// let big = vec![b'x'; MAX_RECORD_BYTES + 1];
/// let record = RawRecord { topic: "events", partition: 2, offset: 17, key: None, value: Some(&big) };
/// let error = check_size(&record).unwrap_err();
/// // The dead-letter topic's `velib-dlq-reason` header.
/// assert_eq!(error.reason(), "too_large");
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
    /// The value is not what the decoder reads: its own error, with a
    /// short, stable name for it.
    #[error("{source}")]
    Value {
        /// The dead-letter header's and the counter's name for it.
        reason: &'static str,
        /// The decoder's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
}

impl DecodeError {
    /// A short, stable name for the kind of error: the dead-letter header
    /// and the label of the rejected-records counter.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::DecodeError;
    ///
    /// // A decoder's own errors keep the name it gives them.
    /// let error = DecodeError::Value { reason: "negative_count", source: "count is -1".into() };
    /// assert_eq!(error.reason(), "negative_count");
    /// assert_eq!(DecodeError::MissingValue.reason(), "missing_value");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Header { .. } => "invalid_header",
            DecodeError::Key { .. } => "invalid_key",
            DecodeError::MissingValue => "missing_value",
            DecodeError::Json { .. } => "invalid_json",
            DecodeError::Value { reason, .. } => reason,
            DecodeError::TooManyOpenEpochs { .. } => "too_many_open_epochs",
            DecodeError::EpochGap { .. } => "epoch_gap_too_large",
            DecodeError::MarkerGoesBack { .. } => "marker_goes_back",
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
/// use timely_kafka::decode::{RawRecord, RecordDecoder};
/// use timely_kafka::DecodeError;
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
///
/// # Examples
///
/// ```
/// use timely_kafka::decode::{check_size, RawRecord};
///
/// let record = RawRecord { topic: "events", partition: 0, offset: 0, key: Some(b"a"), value: Some(b"1") };
/// assert!(check_size(&record).is_ok());
/// ```
pub fn check_size(record: &RawRecord<'_>) -> Result<(), DecodeError> {
    let size = record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len);
    if size > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge {
            size,
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}
