//! The epoch protocol: how the producer frames a snapshot's changes on
//! Kafka so that a reader sees a whole epoch or none of it, even on a broker
//! that shows aborted transactions (see `DESIGN.md`, "Time and progress").
//!
//! - Every data record carries two headers: [`EPOCH_HEADER`] (the epoch, in
//!   decimal) and [`ATTEMPT_HEADER`] (the producer attempt that wrote it: a
//!   new one each time a producer starts).
//! - An epoch ends, on every partition the producer writes, with a marker:
//!   key [`MARKER_KEY`], header [`KIND_HEADER`]` = marker`, the same two
//!   headers, and an [`EpochMarker`] as JSON value. It is written in the same
//!   transaction as the epoch's records, after all of them.
//! - A reader buffers a partition's records until the epoch's marker, then
//!   applies those of the attempt the marker names and drops the others (an
//!   attempt that died mid-epoch). The first marker of an epoch on a
//!   partition decides; later records or markers of an epoch already passed
//!   are ignored. A producer therefore never writes a marker naming another
//!   attempt than one already visible for that epoch.
//! - Markers on a partition only go forward, by one epoch at a time but
//!   where the cleaner removed some (below). A marker older than the epoch
//!   passed, and a marker or record more than [`MAX_EPOCH_GAP`] epochs
//!   past it, are refused (dead-lettered), and change nothing
//!   ([`PartitionEpochs::check_marker`]): a forged far-future marker must
//!   not make every genuine record after it late.
//! - **Compaction.** All markers of a partition share one key, so once the
//!   log cleaner has run only the latest survives, while records of older
//!   epochs survive as the latest of their key. A marker therefore also
//!   closes every earlier epoch of its partition whose own marker the reader
//!   never saw: everything before a partition's marker is complete. Their
//!   records are applied with the marker's epoch. (A marker can only have
//!   been removed by a cleaner pass over the offsets before it, and Apache
//!   Kafka's cleaner removes aborted transactions' records in that same
//!   pass, so what survives there was committed. That holds for what is on
//!   the log, not for what a reader buffered before the pass: a reader at
//!   `read_uncommitted`, or on a broker that shows aborted records, that
//!   lags behind the cleaner can apply an aborted attempt's records of an
//!   epoch whose deciding marker it never saw. Read compacted topics at
//!   `read_committed` on a broker that honours it.) Epochs older than the
//!   surviving marker cannot be told apart any more: see
//!   [`super::as_of`] for where a fresh reader starts.
//!
//! Data records are keyed upserts: what a key and value hold is the
//! decoder's business ([`super::decode`]); a null value (a tombstone) means
//! the key is gone. Records with none of these headers (the seeds' format)
//! are read with [`Framing::Ingestion`](super::source::Framing::Ingestion).
//!
//! # Examples
//!
//! ```
//! use timely_kafka::protocol::{framing, EpochMarker, Framed, RecordHeaders};
//!
//! let marker = EpochMarker { epoch: 7, attempt: "a1".into(), feed_time: Some(1732004538) };
//! let headers = marker.headers();
//! let value = marker.to_json();
//! assert_eq!(
//!     framing(&RecordHeaders::from_pairs(&headers), Some(&value))?,
//!     Framed::Marker(marker),
//! );
//! # Ok::<(), timely_kafka::DecodeError>(())
//! ```

use super::{DecodeError, EPOCH_HEADER, KIND_HEADER};
use serde::{Deserialize, Serialize};

/// An epoch: one snapshot of what the producer reads, numbered by it from
/// 1, strictly increasing; the timestamp of the dataflows that read it.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{Epoch, EpochStamp};
///
/// // Epochs are numbered from 1; the header carries them in decimal.
/// let first: Epoch = 1;
/// let stamp = EpochStamp { epoch: first, attempt: "a".into() };
/// assert_eq!(stamp.headers()[0].1, "1");
/// ```
pub type Epoch = u64;

/// When an epoch's snapshot was taken, in seconds since the Unix epoch (a
/// GBFS feed's `last_updated`), as markers and progress records carry it.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochMarker, EpochTime};
///
/// let feed_time: EpochTime = 1_700_000_000;
/// let marker = EpochMarker { epoch: 2, attempt: "a".into(), feed_time: Some(feed_time) };
/// assert!(String::from_utf8(marker.to_json()).unwrap().contains("1700000000"));
/// ```
pub type EpochTime = i64;

/// The header naming the producer attempt that wrote a record.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochStamp, ATTEMPT_HEADER};
///
/// let headers = EpochStamp { epoch: 3, attempt: "run-2".into() }.headers();
/// assert!(headers.contains(&(ATTEMPT_HEADER, "run-2".to_owned())));
/// ```
pub const ATTEMPT_HEADER: &str = "velib-attempt";
/// The key of epoch markers.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::MARKER_KEY;
///
/// // One key for every marker of a partition: compaction keeps only the latest.
/// assert!(MARKER_KEY.starts_with("__"));
/// ```
pub const MARKER_KEY: &str = "__velib_marker";
/// The [`KIND_HEADER`] value of epoch markers.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochMarker, MARKER_KIND};
/// use timely_kafka::KIND_HEADER;
///
/// let headers = EpochMarker { epoch: 1, attempt: "a".into(), feed_time: None }.headers();
/// assert!(headers.contains(&(KIND_HEADER, MARKER_KIND.to_owned())));
/// ```
pub const MARKER_KIND: &str = "marker";
/// Attempt ids longer than this are refused: they are copied into every
/// buffered record's bookkeeping.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, EpochStamp, RecordHeaders, MAX_ATTEMPT_BYTES};
///
/// let long = EpochStamp { epoch: 1, attempt: "a".repeat(MAX_ATTEMPT_BYTES + 1) }.headers();
/// let error = framing(&RecordHeaders::from_pairs(&long), Some(b"v")).unwrap_err();
/// assert_eq!(error.reason(), "invalid_header");
/// ```
pub const MAX_ATTEMPT_BYTES: usize = 128;

/// Which epoch a record belongs to, and which producer attempt wrote it.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, EpochStamp, Framed, RecordHeaders};
///
/// let stamp = EpochStamp { epoch: 5, attempt: "a".into() };
/// let headers = stamp.headers();
/// assert_eq!(framing(&RecordHeaders::from_pairs(&headers), Some(b"v"))?, Framed::Data(stamp));
/// # Ok::<(), timely_kafka::DecodeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochStamp {
    /// The epoch.
    pub epoch: Epoch,
    /// The producer attempt.
    pub attempt: String,
}

impl EpochStamp {
    /// The headers every record of this epoch and attempt carries.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::EpochStamp;
    /// use timely_kafka::EPOCH_HEADER;
    ///
    /// let headers = EpochStamp { epoch: 12, attempt: "a".into() }.headers();
    /// assert_eq!(headers[0], (EPOCH_HEADER, "12".to_owned()));
    /// assert_eq!(headers.len(), 2);
    /// ```
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (EPOCH_HEADER, self.epoch.to_string()),
            (ATTEMPT_HEADER, self.attempt.clone()),
        ]
    }
}

/// The end of an epoch on one partition.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, EpochMarker, RecordHeaders};
///
/// // A marker whose value disagrees with its headers is refused.
/// let marker = EpochMarker { epoch: 4, attempt: "a".into(), feed_time: None };
/// let other = EpochMarker { epoch: 5, ..marker.clone() };
/// let headers = marker.headers();
/// assert!(framing(&RecordHeaders::from_pairs(&headers), Some(&other.to_json())).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMarker {
    /// The epoch that ends.
    pub epoch: Epoch,
    /// The attempt whose records make the epoch.
    pub attempt: String,
    /// The feed's time of the epoch's snapshot.
    pub feed_time: Option<EpochTime>,
}

impl EpochMarker {
    /// The marker's headers: the stamp, and [`KIND_HEADER`]` = marker`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, RecordHeaders};
    /// use timely_kafka::KIND_HEADER;
    ///
    /// let headers = EpochMarker { epoch: 4, attempt: "a".into(), feed_time: None }.headers();
    /// let headers = RecordHeaders::from_pairs(&headers);
    /// assert_eq!(headers.get(KIND_HEADER), Some(Some(b"marker".as_slice())));
    /// ```
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = self.stamp().headers();
        headers.push((KIND_HEADER, MARKER_KIND.to_owned()));
        headers
    }

    /// The marker's value.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::EpochMarker;
    ///
    /// let marker = EpochMarker { epoch: 4, attempt: "a".into(), feed_time: Some(60) };
    /// let back: EpochMarker = serde_json::from_slice(&marker.to_json())?;
    /// assert_eq!(back, marker);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a marker of integers and strings always serialises")
    }

    /// The epoch and attempt it closes.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, EpochStamp};
    ///
    /// let marker = EpochMarker { epoch: 4, attempt: "a".into(), feed_time: None };
    /// assert_eq!(marker.stamp(), EpochStamp { epoch: 4, attempt: "a".into() });
    /// ```
    pub fn stamp(&self) -> EpochStamp {
        EpochStamp {
            epoch: self.epoch,
            attempt: self.attempt.clone(),
        }
    }
}

/// What a record is, by its headers.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, Framed, RecordHeaders};
///
/// // A record without epoch headers is read as it is, outside any epoch.
/// assert_eq!(framing(&RecordHeaders::default(), Some(b"v"))?, Framed::Unframed);
/// # Ok::<(), timely_kafka::DecodeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// No epoch headers: the seeds' format.
    Unframed,
    /// A data record of an epoch.
    Data(EpochStamp),
    /// An epoch marker.
    Marker(EpochMarker),
}

/// A record's headers, as name and value.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::RecordHeaders;
///
/// let headers = RecordHeaders::new(vec![("velib-epoch", Some(b"3".as_slice())), ("velib-epoch", Some(b"4".as_slice()))]);
/// // The last header of a name wins, as Kafka clients read them.
/// assert_eq!(headers.get("velib-epoch"), Some(Some(b"4".as_slice())));
/// assert_eq!(headers.get("velib-attempt"), None);
/// ```
#[derive(Clone, Debug, Default)]
pub struct RecordHeaders<'a> {
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> RecordHeaders<'a> {
    /// From `(name, value)` pairs.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::RecordHeaders;
    ///
    /// // A header may have no value, which is not the same as no header.
    /// let headers = RecordHeaders::new(vec![("trace", None)]);
    /// assert_eq!(headers.get("trace"), Some(None));
    /// ```
    pub fn new(headers: Vec<(&'a str, Option<&'a [u8]>)>) -> Self {
        RecordHeaders { headers }
    }

    /// From owned pairs, as [`EpochStamp::headers`] gives them.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochStamp, RecordHeaders};
    /// use timely_kafka::EPOCH_HEADER;
    ///
    /// let pairs = EpochStamp { epoch: 9, attempt: "a".into() }.headers();
    /// assert_eq!(RecordHeaders::from_pairs(&pairs).get(EPOCH_HEADER), Some(Some(b"9".as_slice())));
    /// ```
    pub fn from_pairs(pairs: &'a [(&'static str, String)]) -> Self {
        RecordHeaders {
            headers: pairs
                .iter()
                .map(|(k, v)| (*k, Some(v.as_bytes())))
                .collect(),
        }
    }

    /// The value of the last header named `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::RecordHeaders;
    ///
    /// let headers = RecordHeaders::new(vec![("a", Some(b"1".as_slice())), ("a", Some(b"2".as_slice()))]);
    /// assert_eq!(headers.get("a"), Some(Some(b"2".as_slice())));
    /// assert_eq!(headers.get("b"), None);
    /// ```
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// The headers, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::RecordHeaders;
    ///
    /// // Unlike `get`, every header, repeated ones included.
    /// let headers = RecordHeaders::new(vec![("a", Some(b"1".as_slice())), ("a", Some(b"2".as_slice()))]);
    /// let names: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
    /// assert_eq!(names, ["a", "a"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &(&'a str, Option<&'a [u8]>)> {
        self.headers.iter()
    }
}

fn header_text<'a>(
    headers: &RecordHeaders<'a>,
    name: &'static str,
) -> Result<Option<&'a str>, DecodeError> {
    match headers.get(name) {
        None => Ok(None),
        Some(None) => Err(DecodeError::Header {
            header: name,
            problem: "has no value".into(),
        }),
        Some(Some(bytes)) => {
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| DecodeError::Header {
                    header: name,
                    problem: "is not UTF-8".into(),
                })
        }
    }
}

/// Reads a record's framing from its headers (and, for a marker, its value).
///
/// A record with neither [`EPOCH_HEADER`] nor [`ATTEMPT_HEADER`] is
/// [`Framed::Unframed`]; one with only one of them, a non-numeric epoch, an
/// empty or oversized attempt, or a marker whose value disagrees with its
/// headers is an error.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, Framed, RecordHeaders, ATTEMPT_HEADER};
/// use timely_kafka::EPOCH_HEADER;
///
/// let data = RecordHeaders::new(vec![(EPOCH_HEADER, Some(b"3".as_slice())), (ATTEMPT_HEADER, Some(b"a".as_slice()))]);
/// assert!(matches!(framing(&data, Some(b"v"))?, Framed::Data(s) if s.epoch == 3));
/// // An epoch without its attempt is broken framing, not unframed data.
/// let broken = RecordHeaders::new(vec![(EPOCH_HEADER, Some(b"3".as_slice()))]);
/// assert_eq!(framing(&broken, Some(b"v")).unwrap_err().reason(), "invalid_header");
/// # Ok::<(), timely_kafka::DecodeError>(())
/// ```
pub fn framing(headers: &RecordHeaders<'_>, value: Option<&[u8]>) -> Result<Framed, DecodeError> {
    let epoch = header_text(headers, EPOCH_HEADER)?;
    let attempt = header_text(headers, ATTEMPT_HEADER)?;
    let kind = header_text(headers, KIND_HEADER)?;
    let (epoch, attempt) = match (epoch, attempt) {
        (None, None) if kind.is_none() => return Ok(Framed::Unframed),
        (Some(e), Some(a)) => (e, a),
        (None, _) => {
            return Err(DecodeError::Header {
                header: EPOCH_HEADER,
                problem: "is missing".into(),
            })
        }
        (Some(_), None) => {
            return Err(DecodeError::Header {
                header: ATTEMPT_HEADER,
                problem: "is missing".into(),
            })
        }
    };
    let epoch: Epoch = epoch
        .parse()
        .ok()
        // The largest value has no epoch after it: readers compute `epoch + 1`.
        .filter(|e| *e < Epoch::MAX)
        .ok_or_else(|| DecodeError::Header {
            header: EPOCH_HEADER,
            problem: format!("{epoch:?} is not an epoch number"),
        })?;
    if attempt.is_empty() || attempt.len() > MAX_ATTEMPT_BYTES {
        return Err(DecodeError::Header {
            header: ATTEMPT_HEADER,
            problem: format!("must be 1 to {MAX_ATTEMPT_BYTES} bytes"),
        });
    }
    let stamp = EpochStamp {
        epoch,
        attempt: attempt.to_owned(),
    };
    match kind {
        None => Ok(Framed::Data(stamp)),
        Some(MARKER_KIND) => {
            let value = value.ok_or(DecodeError::MissingValue)?;
            let marker: EpochMarker =
                serde_json::from_slice(value).map_err(|source| DecodeError::Json {
                    what: "epoch marker",
                    source,
                })?;
            if marker.stamp() != stamp {
                return Err(DecodeError::Header {
                    header: EPOCH_HEADER,
                    problem: format!(
                        "the marker's headers say epoch {} of attempt {:?}, its value epoch {} of attempt {:?}",
                        stamp.epoch, stamp.attempt, marker.epoch, marker.attempt
                    ),
                });
            }
            Ok(Framed::Marker(marker))
        }
        Some(other) => Err(DecodeError::Header {
            header: KIND_HEADER,
            problem: format!("{other:?} is not a kind of input record"),
        }),
    }
}

/// At most this many (epoch, attempt) pairs are held open per partition:
/// see [`PartitionEpochs::is_full_for`].
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochStamp, PartitionEpochs, MAX_OPEN_EPOCHS};
///
/// let mut p = PartitionEpochs::new();
/// (0..MAX_OPEN_EPOCHS as u64).for_each(|e| { p.data(EpochStamp { epoch: e + 1, attempt: "a".into() }, ()); });
/// assert!(p.is_full_for(&EpochStamp { epoch: MAX_OPEN_EPOCHS as u64 + 1, attempt: "a".into() }));
/// ```
pub const MAX_OPEN_EPOCHS: usize = 256;

/// How far past what a partition has shown a record's epoch may be: a
/// marker (or data record) further ahead is refused, see
/// [`PartitionEpochs::check_marker`].
///
/// One producer writes every epoch's marker to every partition, one epoch
/// after the other, so a reader sees consecutive markers, except after the
/// log cleaner ran: all markers share one key, only the latest of the
/// cleaned part survives, and a reader that starts in, or resumes into, a
/// cleaned region jumps over the epochs it was not there for. A genuine
/// jump is therefore the number of epochs a reader was away (stopped, or
/// lagging behind the cleaner). 2^20 epochs is about two years of
/// one-minute epochs (four months at one epoch every ten seconds); a
/// further jump is forged or broken framing, which would otherwise move the
/// partition so far ahead that every genuine record after it is late and
/// its keys freeze. An aggregator stopped longer than that on a
/// cleaned input refuses its first markers the same way, and must start
/// over (see `docs/operations.md`, "Bad input").
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochMarker, PartitionEpochs, MAX_EPOCH_GAP};
///
/// let p = PartitionEpochs::<()>::resumed(10);
/// let forged = EpochMarker { epoch: 11 + MAX_EPOCH_GAP, attempt: "a".into(), feed_time: None };
/// assert_eq!(p.check_marker(&forged).unwrap_err().reason(), "epoch_gap_too_large");
/// ```
pub const MAX_EPOCH_GAP: Epoch = 1 << 20;

/// One partition's epochs as a reader follows them: records are held by
/// (epoch, attempt) until the epoch's marker, which releases those of the
/// attempt it names and drops the others. The source operator and the
/// producer's recovery both read partitions through it, so they agree on
/// what an epoch holds.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};
///
/// let stamp = |epoch, attempt: &str| EpochStamp { epoch, attempt: attempt.into() };
/// let mut p = PartitionEpochs::new();
/// assert!(p.data(stamp(1, "dead"), "a"));
/// assert!(p.data(stamp(1, "live"), "b"));
/// let marker = EpochMarker { epoch: 1, attempt: "live".into(), feed_time: None };
/// let passed = p.marker(&marker).unwrap();
/// assert_eq!(passed.released, vec!["b"]);
/// assert_eq!(passed.dropped, vec![(stamp(1, "dead"), 1)]);
/// // Anything of epoch 1 from now on is late.
/// assert!(!p.data(stamp(1, "live"), "c"));
/// assert!(p.marker(&marker).is_none());
///
/// // A compacted partition: epoch 2's and 3's markers are gone, their
/// // records are not. Epoch 4's marker closes them too.
/// p.data(stamp(2, "live"), "d");
/// p.data(stamp(3, "live"), "e");
/// p.data(stamp(4, "live"), "f");
/// let passed = p.marker(&EpochMarker { epoch: 4, attempt: "live".into(), feed_time: None }).unwrap();
/// assert_eq!(passed.released, vec!["d", "e", "f"]);
/// assert_eq!(passed.compacted, vec![(stamp(2, "live"), 1), (stamp(3, "live"), 1)]);
/// ```
#[derive(Clone, Debug)]
pub struct PartitionEpochs<T> {
    passed: Option<Epoch>,
    /// See [`PartitionEpochs::reading_as_of`].
    as_of: Option<Epoch>,
    open: std::collections::BTreeMap<(Epoch, String), Vec<T>>,
}

/// What a marker released on one partition.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};
///
/// let mut p = PartitionEpochs::new();
/// p.data(EpochStamp { epoch: 1, attempt: "a".into() }, "x");
/// let passed = p.marker(&EpochMarker { epoch: 1, attempt: "a".into(), feed_time: None }).unwrap();
/// assert_eq!(passed.released, ["x"]);
/// assert!(passed.dropped.is_empty() && passed.compacted.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassedEpoch<T> {
    /// The records of the completing attempt, in the order read, after
    /// those of earlier epochs whose markers were compacted away.
    pub released: Vec<T>,
    /// The epochs and attempts whose records were dropped, and how many.
    pub dropped: Vec<(EpochStamp, usize)>,
    /// Earlier epochs whose markers this partition no longer has (the log
    /// cleaner removed them), released with this one, and how many records.
    pub compacted: Vec<(EpochStamp, usize)>,
}

impl<T> Default for PartitionEpochs<T> {
    fn default() -> Self {
        PartitionEpochs {
            passed: None,
            as_of: None,
            open: std::collections::BTreeMap::new(),
        }
    }
}

impl<T> PartitionEpochs<T> {
    /// A partition read from its start.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::PartitionEpochs;
    ///
    /// let p = PartitionEpochs::<()>::new();
    /// assert_eq!((p.passed(), p.held()), (None, 0));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A partition read from just after the marker of `epoch` (a restart
    /// at a committed position): records of `epoch` and before are late.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochStamp, PartitionEpochs};
    ///
    /// let mut p = PartitionEpochs::resumed(7);
    /// // Epoch 7 was committed before the restart: its records are not read twice.
    /// assert!(!p.data(EpochStamp { epoch: 7, attempt: "a".into() }, "x"));
    /// assert!(p.data(EpochStamp { epoch: 8, attempt: "a".into() }, "y"));
    /// ```
    pub fn resumed(epoch: Epoch) -> Self {
        PartitionEpochs {
            passed: Some(epoch),
            as_of: None,
            open: std::collections::BTreeMap::new(),
        }
    }

    /// The epoch the reader starts at ([`SourceConfig::as_of`], found by
    /// [`read_as_of`](super::as_of::read_as_of), which reads each partition
    /// up to its first marker or, once cleaned, to its last): before its
    /// first marker, a partition accepts a marker within
    /// [`MAX_EPOCH_GAP`] of it, whatever the epochs of the records it holds
    /// (on a cleaned partition those can be far older than its first
    /// surviving marker). 0 says nothing.
    ///
    /// [`SourceConfig::as_of`]: super::source::SourceConfig::as_of
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs, MAX_EPOCH_GAP};
    ///
    /// let marker = EpochMarker { epoch: 500 + MAX_EPOCH_GAP, attempt: "a".into(), feed_time: None };
    /// let mut p = PartitionEpochs::new();
    /// // A key unchanged since epoch 1, before a cleaned partition's first marker.
    /// p.data(EpochStamp { epoch: 1, attempt: "a".into() }, "x");
    /// assert!(p.check_marker(&marker).is_err());
    /// assert!(p.reading_as_of(500).check_marker(&marker).is_ok());
    /// ```
    pub fn reading_as_of(mut self, as_of: Epoch) -> Self {
        self.as_of = (as_of > 0).then_some(as_of);
        self
    }

    /// The last epoch whose marker this partition has passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, PartitionEpochs};
    ///
    /// let mut p = PartitionEpochs::<()>::new();
    /// p.marker(&EpochMarker { epoch: 3, attempt: "a".into(), feed_time: None });
    /// assert_eq!(p.passed(), Some(3));
    /// ```
    pub fn passed(&self) -> Option<Epoch> {
        self.passed
    }

    /// Whether `marker` may be passed, or must be refused (dead-lettered)
    /// and leave the partition as it is:
    ///
    /// - a marker more than [`MAX_EPOCH_GAP`] past the epoch the partition
    ///   passed is [`DecodeError::EpochGap`]: forged or broken framing,
    ///   which would make every later genuine record late. Before the
    ///   partition's first marker, the reference is the newest epoch of
    ///   the records it holds (or the [`reading_as_of`](Self::reading_as_of)
    ///   epoch, if later); with nothing held, nothing is known and any
    ///   marker is accepted;
    /// - a marker older than the epoch passed is
    ///   [`DecodeError::MarkerGoesBack`]: one producer's markers only go
    ///   forward, so another producer writes the topic, or a forged marker
    ///   moved the partition on.
    ///
    /// A marker of the epoch passed is accepted (and [`marker`](Self::marker)
    /// ignores it): a retried attempt's, on brokers that show aborted records.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, PartitionEpochs, MAX_EPOCH_GAP};
    ///
    /// let marker = |epoch| EpochMarker { epoch, attempt: "a".into(), feed_time: None };
    /// let mut p = PartitionEpochs::<()>::resumed(41);
    /// assert!(p.check_marker(&marker(42)).is_ok());
    /// // After a cleaner pass: a jump, but within the bound.
    /// assert!(p.check_marker(&marker(41 + MAX_EPOCH_GAP)).is_ok());
    /// assert!(p.check_marker(&marker(42 + MAX_EPOCH_GAP)).is_err());
    /// // A forged far-future marker, and one going back.
    /// let forged = p.check_marker(&marker(1_000_000_000_000)).unwrap_err();
    /// assert_eq!(forged.reason(), "epoch_gap_too_large");
    /// assert_eq!(p.check_marker(&marker(40)).unwrap_err().reason(), "marker_goes_back");
    /// // The epoch passed again: accepted, and ignored.
    /// assert!(p.check_marker(&marker(41)).is_ok());
    /// assert!(p.marker(&marker(41)).is_none());
    /// // A refused marker changed nothing: the genuine next one passes.
    /// assert!(p.marker(&marker(42)).is_some());
    /// assert_eq!(p.passed(), Some(42));
    /// ```
    pub fn check_marker(&self, marker: &EpochMarker) -> Result<(), DecodeError> {
        match self.passed {
            Some(passed) if marker.epoch < passed => Err(DecodeError::MarkerGoesBack {
                passed,
                epoch: marker.epoch,
            }),
            Some(passed) => within_gap(passed, marker.epoch),
            None => match self.newest_open() {
                Some(newest) => within_gap(newest.max(self.as_of.unwrap_or(0)), marker.epoch),
                None => Ok(()),
            },
        }
    }

    /// Whether a data record of `stamp` may be held: one more than
    /// [`MAX_EPOCH_GAP`] past the epoch the partition passed is
    /// [`DecodeError::EpochGap`], as its epoch could only be closed by a
    /// marker [`check_marker`](Self::check_marker) refuses. Before the
    /// partition's first marker every epoch is accepted: records before a
    /// cleaned partition's first surviving marker are as old as the
    /// keys that did not change since. A record of an epoch already
    /// passed is accepted here, and [`data`](Self::data) discards it.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochStamp, PartitionEpochs, MAX_EPOCH_GAP};
    ///
    /// let stamp = |epoch| EpochStamp { epoch, attempt: "a".into() };
    /// let p = PartitionEpochs::<()>::resumed(7);
    /// assert!(p.check_data(&stamp(8)).is_ok());
    /// assert!(p.check_data(&stamp(7 + MAX_EPOCH_GAP)).is_ok());
    /// assert_eq!(p.check_data(&stamp(8 + MAX_EPOCH_GAP)).unwrap_err().reason(), "epoch_gap_too_large");
    /// ```
    pub fn check_data(&self, stamp: &EpochStamp) -> Result<(), DecodeError> {
        match self.passed {
            Some(passed) => within_gap(passed, stamp.epoch),
            None => Ok(()),
        }
    }

    /// The newest epoch of the records held.
    fn newest_open(&self) -> Option<Epoch> {
        self.open.keys().next_back().map(|(epoch, _)| *epoch)
    }

    /// How many (epoch, attempt) pairs this partition holds records of,
    /// waiting for their markers: at most [`MAX_OPEN_EPOCHS`] when the
    /// reader checks [`is_full_for`](Self::is_full_for).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};
    ///
    /// let mut p = PartitionEpochs::new();
    /// p.data(EpochStamp { epoch: 1, attempt: "a".into() }, "x");
    /// p.data(EpochStamp { epoch: 1, attempt: "b".into() }, "y");
    /// assert_eq!(p.held(), 2);
    /// p.marker(&EpochMarker { epoch: 1, attempt: "a".into(), feed_time: None });
    /// assert_eq!(p.held(), 0);
    /// ```
    pub fn held(&self) -> usize {
        self.open.len()
    }

    /// Whether a record of `stamp` would open one (epoch, attempt) more
    /// than [`MAX_OPEN_EPOCHS`] on this partition: forged or broken framing
    /// (a producer has one attempt open at a time, and the read-ahead
    /// bound keeps a reader within a few epochs), which must not grow
    /// memory without bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochStamp, PartitionEpochs, MAX_OPEN_EPOCHS};
    ///
    /// let mut p = PartitionEpochs::new();
    /// for i in 0..MAX_OPEN_EPOCHS as u64 {
    ///     p.data(EpochStamp { epoch: 1, attempt: format!("a{i}") }, ());
    /// }
    /// assert!(p.is_full_for(&EpochStamp { epoch: 1, attempt: "another".into() }));
    /// assert!(!p.is_full_for(&EpochStamp { epoch: 1, attempt: "a0".into() }));
    /// ```
    pub fn is_full_for(&self, stamp: &EpochStamp) -> bool {
        self.open.len() >= MAX_OPEN_EPOCHS
            && !self
                .open
                .contains_key(&(stamp.epoch, stamp.attempt.clone()))
    }

    /// Holds a data record until its epoch's marker. Returns `false`, and
    /// keeps nothing, for a record of an epoch already passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};
    ///
    /// let mut p = PartitionEpochs::new();
    /// assert!(p.data(EpochStamp { epoch: 2, attempt: "a".into() }, "x"));
    /// p.marker(&EpochMarker { epoch: 2, attempt: "a".into(), feed_time: None });
    /// // Late: a retried attempt's record of an epoch already passed.
    /// assert!(!p.data(EpochStamp { epoch: 2, attempt: "b".into() }, "y"));
    /// ```
    pub fn data(&mut self, stamp: EpochStamp, record: T) -> bool {
        if self.passed.is_some_and(|e| e >= stamp.epoch) {
            return false;
        }
        self.open
            .entry((stamp.epoch, stamp.attempt))
            .or_default()
            .push(record);
        true
    }

    /// Passes a marker: releases its attempt's records and drops those of
    /// other attempts of its epoch. Records of earlier epochs still open
    /// had their markers compacted away: they are released first, in epoch
    /// order (see the module's "Compaction"). `None` for a marker of an
    /// epoch already passed (the first marker of an epoch decides). It
    /// passes any later marker: a reader refuses first what
    /// [`check_marker`](Self::check_marker) refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};
    ///
    /// let mut p = PartitionEpochs::new();
    /// p.data(EpochStamp { epoch: 1, attempt: "crashed".into() }, "x");
    /// p.data(EpochStamp { epoch: 1, attempt: "retry".into() }, "y");
    /// let passed = p.marker(&EpochMarker { epoch: 1, attempt: "retry".into(), feed_time: None }).unwrap();
    /// assert_eq!(passed.released, ["y"]);
    /// assert_eq!(passed.dropped, [(EpochStamp { epoch: 1, attempt: "crashed".into() }, 1)]);
    /// ```
    pub fn marker(&mut self, marker: &EpochMarker) -> Option<PassedEpoch<T>> {
        if self.passed.is_some_and(|e| e >= marker.epoch) {
            return None;
        }
        let later = self.open.split_off(&(marker.epoch + 1, String::new()));
        let this_epoch = self.open.split_off(&(marker.epoch, String::new()));
        let earlier = std::mem::replace(&mut self.open, later);
        let mut released = Vec::new();
        let mut compacted = Vec::new();
        for ((epoch, attempt), records) in earlier {
            compacted.push((EpochStamp { epoch, attempt }, records.len()));
            released.extend(records);
        }
        let mut dropped = Vec::new();
        for ((epoch, attempt), records) in this_epoch {
            if attempt == marker.attempt {
                released.extend(records);
            } else {
                dropped.push((EpochStamp { epoch, attempt }, records.len()));
            }
        }
        self.passed = Some(marker.epoch);
        Some(PassedEpoch {
            released,
            dropped,
            compacted,
        })
    }
}

/// Refuses `epoch` more than [`MAX_EPOCH_GAP`] past `reference`.
fn within_gap(reference: Epoch, epoch: Epoch) -> Result<(), DecodeError> {
    if epoch > reference.saturating_add(MAX_EPOCH_GAP) {
        return Err(DecodeError::EpochGap {
            reference,
            epoch,
            limit: MAX_EPOCH_GAP,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(pairs: &[(&'static str, &str)], value: Option<&[u8]>) -> Result<Framed, DecodeError> {
        let owned: Vec<(&'static str, String)> =
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        framing(&RecordHeaders::from_pairs(&owned), value)
    }

    #[test]
    fn unframed_data_and_markers() {
        assert_eq!(framed(&[], Some(b"{}")).unwrap(), Framed::Unframed);
        assert_eq!(
            framed(&[(EPOCH_HEADER, "3"), (ATTEMPT_HEADER, "a")], None).unwrap(),
            Framed::Data(EpochStamp {
                epoch: 3,
                attempt: "a".into()
            })
        );
    }

    #[test]
    fn broken_framing_is_an_error_naming_the_header() {
        type Case<'a> = (Vec<(&'static str, &'a str)>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (vec![(EPOCH_HEADER, "3")], None, ATTEMPT_HEADER),
            (vec![(ATTEMPT_HEADER, "a")], None, EPOCH_HEADER),
            (
                vec![(EPOCH_HEADER, "-1"), (ATTEMPT_HEADER, "a")],
                None,
                EPOCH_HEADER,
            ),
            (
                vec![
                    (EPOCH_HEADER, "18446744073709551615"),
                    (ATTEMPT_HEADER, "a"),
                ],
                None,
                EPOCH_HEADER,
            ),
            (
                vec![(EPOCH_HEADER, "3"), (ATTEMPT_HEADER, "")],
                None,
                ATTEMPT_HEADER,
            ),
            (
                vec![
                    (EPOCH_HEADER, "3"),
                    (ATTEMPT_HEADER, "a"),
                    (KIND_HEADER, "x"),
                ],
                None,
                KIND_HEADER,
            ),
            (vec![(KIND_HEADER, "marker")], None, EPOCH_HEADER),
            (
                vec![
                    (EPOCH_HEADER, "3"),
                    (ATTEMPT_HEADER, "a"),
                    (KIND_HEADER, "marker"),
                ],
                Some(br#"{"epoch":4,"attempt":"a","feed_time":null}"#),
                EPOCH_HEADER,
            ),
        ];
        for (pairs, value, header) in cases {
            let e = framed(&pairs, value).unwrap_err();
            assert!(e.to_string().contains(header), "{pairs:?}: {e}");
        }
        let long = "a".repeat(MAX_ATTEMPT_BYTES + 1);
        assert!(framed(&[(EPOCH_HEADER, "3"), (ATTEMPT_HEADER, &long)], None).is_err());
        let marker = [
            (EPOCH_HEADER, "3"),
            (ATTEMPT_HEADER, "a"),
            (KIND_HEADER, "marker"),
        ];
        assert!(matches!(
            framed(&marker, None),
            Err(DecodeError::MissingValue)
        ));
        assert!(matches!(
            framed(&marker, Some(b"{\"epoch\":3")),
            Err(DecodeError::Json { .. })
        ));
    }

    fn marker(epoch: Epoch) -> EpochMarker {
        EpochMarker {
            epoch,
            attempt: "a".into(),
            feed_time: None,
        }
    }

    fn stamp(epoch: Epoch) -> EpochStamp {
        EpochStamp {
            epoch,
            attempt: "a".into(),
        }
    }

    #[test]
    fn markers_far_ahead_or_going_back_are_refused() {
        let p = PartitionEpochs::<()>::resumed(10);
        assert!(p.check_marker(&marker(11)).is_ok());
        assert!(
            p.check_marker(&marker(10)).is_ok(),
            "the epoch passed again"
        );
        assert!(p.check_marker(&marker(10 + MAX_EPOCH_GAP)).is_ok());
        let e = p.check_marker(&marker(11 + MAX_EPOCH_GAP)).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::EpochGap {
                reference: 10,
                epoch,
                limit: MAX_EPOCH_GAP
            } if epoch == 11 + MAX_EPOCH_GAP
        ));
        assert_eq!(e.reason(), "epoch_gap_too_large");
        assert!(e.to_string().contains("forged"), "{e}");
        for far in [1_000_000_000_000, Epoch::MAX - 1, Epoch::MAX] {
            assert_eq!(
                p.check_marker(&marker(far)).unwrap_err().reason(),
                "epoch_gap_too_large"
            );
        }
        for back in [0, 9] {
            let e = p.check_marker(&marker(back)).unwrap_err();
            assert!(
                matches!(e, DecodeError::MarkerGoesBack { passed: 10, epoch } if epoch == back)
            );
            assert_eq!(e.reason(), "marker_goes_back");
            assert!(e.to_string().contains("another producer"), "{e}");
        }
    }

    #[test]
    fn the_gap_does_not_overflow_at_the_top_of_the_range() {
        let top = Epoch::MAX - 1;
        let p = PartitionEpochs::<()>::resumed(top - 1);
        assert!(p.check_marker(&marker(top)).is_ok());
        assert!(p.check_data(&stamp(top)).is_ok());
        let p = PartitionEpochs::<()>::resumed(top);
        assert!(p.check_marker(&marker(top)).is_ok());
        assert!(
            p.check_marker(&marker(Epoch::MAX)).is_ok(),
            "within the gap"
        );
        assert!(p.check_data(&stamp(Epoch::MAX)).is_ok());
        let mut p = PartitionEpochs::new();
        p.data(stamp(top), ());
        assert!(p.check_marker(&marker(top)).is_ok());
        let p = PartitionEpochs::<()>::new().reading_as_of(Epoch::MAX);
        assert!(p.check_marker(&marker(top)).is_ok());
    }

    #[test]
    fn before_the_first_marker_the_records_held_are_the_reference() {
        // Nothing held, nothing known: any marker.
        let mut p = PartitionEpochs::new();
        assert!(p.check_marker(&marker(1_000_000_000_000)).is_ok());
        assert!(p.check_data(&stamp(1_000_000_000_000)).is_ok());
        // A cleaned partition: records of old epochs, then a marker.
        p.data(stamp(1), ());
        p.data(stamp(3), ());
        assert!(p.check_marker(&marker(3 + MAX_EPOCH_GAP)).is_ok());
        assert!(p.check_marker(&marker(2)).is_ok(), "no passed epoch yet");
        let e = p.check_marker(&marker(4 + MAX_EPOCH_GAP)).unwrap_err();
        assert!(matches!(e, DecodeError::EpochGap { reference: 3, .. }));
        // Records of any epoch are held: a key unchanged since epoch 1
        // comes right before the first surviving marker.
        assert!(p.check_data(&stamp(1_000_000_000_000)).is_ok());
        // The reader's start epoch widens the reference, never narrows it.
        let p = p.reading_as_of(5_000_000);
        assert!(p.check_marker(&marker(5_000_000 + MAX_EPOCH_GAP)).is_ok());
        assert!(p.check_marker(&marker(5_000_001 + MAX_EPOCH_GAP)).is_err());
        let p = PartitionEpochs::<()>::new().reading_as_of(5);
        assert!(p.check_marker(&marker(1_000_000_000_000)).is_ok());
        let mut p = PartitionEpochs::new().reading_as_of(5);
        p.data(stamp(7_000_000), ());
        assert!(p.check_marker(&marker(7_000_000)).is_ok());
    }

    #[test]
    fn data_far_ahead_of_the_passed_epoch_is_refused() {
        let p = PartitionEpochs::<()>::resumed(10);
        assert!(p.check_data(&stamp(3)).is_ok(), "late: discarded by data");
        assert!(p.check_data(&stamp(10 + MAX_EPOCH_GAP)).is_ok());
        let e = p.check_data(&stamp(11 + MAX_EPOCH_GAP)).unwrap_err();
        assert!(matches!(e, DecodeError::EpochGap { reference: 10, .. }));
    }

    /// What the source does: a refused marker is dead-lettered and the
    /// partition goes on as if it had not been there.
    #[test]
    fn a_refused_marker_changes_nothing() {
        let mut p = PartitionEpochs::resumed(4);
        p.data(stamp(5), "x");
        let forged = marker(1_000_000_000_000);
        assert!(p.check_marker(&forged).is_err());
        assert!(p.check_marker(&marker(2)).is_err());
        assert_eq!(p.passed(), Some(4));
        p.data(stamp(5), "y");
        let passed = p.marker(&marker(5)).unwrap();
        assert_eq!(passed.released, vec!["x", "y"]);
        assert_eq!(p.passed(), Some(5));
    }
}
