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
//!
//! Station records are keyed by the station id as JSON (`213688169`, or
//! `"abc"` for a textual id); a null value (a tombstone) means the station is
//! gone. Records with none of these headers are the seeds' format, read with
//! [`Framing::Ingestion`](super::source::Framing::Ingestion).
//!
//! # Examples
//!
//! ```
//! use velib_dataflow::kafka::protocol::{framing, EpochMarker, Framed, RecordHeaders};
//!
//! let marker = EpochMarker { epoch: 7, attempt: "a1".into(), feed_time: Some(1732004538) };
//! let headers = marker.headers();
//! let value = marker.to_json();
//! assert_eq!(
//!     framing(&RecordHeaders::from_pairs(&headers), Some(&value))?,
//!     Framed::Marker(marker),
//! );
//! # Ok::<(), velib_dataflow::kafka::DecodeError>(())
//! ```

use super::{DecodeError, EPOCH_HEADER, KIND_HEADER};
use crate::dataflow::Epoch;
use crate::feed::{FeedTime, StationId};
use serde::{Deserialize, Serialize};

/// The header naming the producer attempt that wrote a record.
pub const ATTEMPT_HEADER: &str = "velib-attempt";
/// The key of epoch markers.
pub const MARKER_KEY: &str = "__velib_marker";
/// The [`KIND_HEADER`] value of epoch markers.
pub const MARKER_KIND: &str = "marker";
/// The field of a station record's value holding the normalised status,
/// next to the feed's own fields.
pub const NORMALISED_FIELD: &str = "velib";
/// Attempt ids longer than this are refused: they are copied into every
/// buffered record's bookkeeping.
pub const MAX_ATTEMPT_BYTES: usize = 128;

/// Which epoch a record belongs to, and which producer attempt wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochStamp {
    /// The epoch.
    pub epoch: Epoch,
    /// The producer attempt.
    pub attempt: String,
}

impl EpochStamp {
    /// The headers every record of this epoch and attempt carries.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (EPOCH_HEADER, self.epoch.to_string()),
            (ATTEMPT_HEADER, self.attempt.clone()),
        ]
    }
}

/// The end of an epoch on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMarker {
    /// The epoch that ends.
    pub epoch: Epoch,
    /// The attempt whose records make the epoch.
    pub attempt: String,
    /// The feed's time of the epoch's snapshot.
    pub feed_time: Option<FeedTime>,
}

impl EpochMarker {
    /// The marker's headers: the stamp, and [`KIND_HEADER`]` = marker`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = self.stamp().headers();
        headers.push((KIND_HEADER, MARKER_KIND.to_owned()));
        headers
    }

    /// The marker's value.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a marker of integers and strings always serialises")
    }

    /// The epoch and attempt it closes.
    pub fn stamp(&self) -> EpochStamp {
        EpochStamp {
            epoch: self.epoch,
            attempt: self.attempt.clone(),
        }
    }
}

/// What a record is, by its headers.
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
#[derive(Clone, Debug, Default)]
pub struct RecordHeaders<'a> {
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> RecordHeaders<'a> {
    /// From `(name, value)` pairs.
    pub fn new(headers: Vec<(&'a str, Option<&'a [u8]>)>) -> Self {
        RecordHeaders { headers }
    }

    /// From owned pairs, as [`EpochStamp::headers`] gives them.
    pub fn from_pairs(pairs: &'a [(&'static str, String)]) -> Self {
        RecordHeaders {
            headers: pairs
                .iter()
                .map(|(k, v)| (*k, Some(v.as_bytes())))
                .collect(),
        }
    }

    /// The value of the last header named `name`.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// The headers, in order.
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
    let epoch: Epoch = epoch.parse().map_err(|_| DecodeError::Header {
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
}
