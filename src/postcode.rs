//! Postcodes, and the station → postcode table.

use crate::feed::StationId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// The key under which stations with no postcode are counted.
pub const UNKNOWN_POSTCODE: &str = "unknown";

/// The longest postcode, in bytes.
pub const MAX_POSTCODE_BYTES: usize = 16;

/// A postcode, the key of the aggregation (`"75016"`), or [`UNKNOWN_POSTCODE`].
///
/// Held inline (at most [`MAX_POSTCODE_BYTES`] ASCII bytes, padded with
/// zeros), so that it is `Copy` and costs no allocation: the dataflow moves
/// one per changed station. Ordered as its text is.
///
/// # Examples
///
/// ```
/// use velib_dataflow::postcode::Postcode;
///
/// let a = Postcode::parse("75016").unwrap();
/// let b = a; // Copy
/// assert_eq!(a, b);
/// assert!(Postcode::parse("7501").unwrap() < a && a < Postcode::parse("75016A").unwrap());
/// assert_eq!(serde_json::to_string(&a)?, "\"75016\"");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Postcode([u8; MAX_POSTCODE_BYTES]);

impl Postcode {
    /// Validates and normalises (trims) a postcode: 1 to 16 letters, digits,
    /// spaces or hyphens, as postcodes are across the systems GBFS covers.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::postcode::Postcode;
    /// assert_eq!(Postcode::parse(" 75016 ").unwrap().as_str(), "75016");
    /// assert!(Postcode::parse("").is_none());
    /// assert!(Postcode::parse("75016\n; DROP").is_none());
    /// assert!(Postcode::parse("12345678901234567").is_none()); // 17 bytes
    /// ```
    pub fn parse(s: &str) -> Option<Postcode> {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.len() <= MAX_POSTCODE_BYTES
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-');
        ok.then(|| Postcode::inline(s))
    }

    /// `text`, checked by the caller: ASCII, no NUL, at most 16 bytes.
    fn inline(text: &str) -> Postcode {
        let mut bytes = [0; MAX_POSTCODE_BYTES];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Postcode(bytes)
    }

    /// The `unknown` key.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::postcode::Postcode;
    /// assert_eq!(Postcode::unknown().as_str(), "unknown");
    /// assert!(Postcode::unknown().is_unknown());
    /// ```
    pub fn unknown() -> Postcode {
        Postcode::inline(UNKNOWN_POSTCODE)
    }

    /// Whether this is the `unknown` key.
    pub fn is_unknown(&self) -> bool {
        *self == Postcode::unknown()
    }

    /// The postcode as text.
    pub fn as_str(&self) -> &str {
        let len = self
            .0
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(MAX_POSTCODE_BYTES);
        // Only ASCII is ever stored (see `parse`).
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl fmt::Display for Postcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Postcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Postcode({:?})", self.as_str())
    }
}

impl Serialize for Postcode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Postcode {
    /// A postcode as [`Postcode::parse`] accepts it, or `unknown`: what was
    /// serialised (state records, dataflow exchange) comes back the same.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        if text == UNKNOWN_POSTCODE {
            return Ok(Postcode::unknown());
        }
        Postcode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a postcode")))
    }
}

/// A station → postcode table that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostcodeTableError {
    /// The file could not be opened or read.
    #[error("postcode table {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The table is larger than [`PostcodeTable::MAX_BYTES`].
    #[error("postcode table: larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The header lacks a column the table needs.
    #[error("postcode table: the header has no `{column}` column (it needs `postcode` and `stationCode` or `station_id`)")]
    MissingColumn {
        /// The column.
        column: &'static str,
    },
    /// A row is not CSV, or not UTF-8, or has the wrong number of fields.
    #[error("postcode table: {0}")]
    Csv(#[from] csv::Error),
    /// A row's postcode is not a postcode.
    #[error("postcode table, line {line}: {value:?} is not a postcode")]
    InvalidPostcode {
        /// The line, counting the header as 1.
        line: u64,
        /// What it says.
        value: String,
    },
    /// Two rows give one station two different postcodes.
    #[error("postcode table, line {line}: station {station} already has postcode {previous:?}, this row says {value:?}")]
    Conflict {
        /// The line, counting the header as 1.
        line: u64,
        /// The station code or id.
        station: String,
        /// The first postcode.
        previous: String,
        /// The conflicting one.
        value: String,
    },
}

/// A station → postcode table: the second source of a station's postcode,
/// after the feed's own `post_code`.
///
/// A row with an empty postcode says the station is known but has no
/// postcode, so that it is inferred or counted as `unknown`.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::StationId;
/// use velib_dataflow::postcode::PostcodeTable;
///
/// let table = PostcodeTable::velib();
/// assert!(table.len() > 1400);
/// // By station code, or by station id when the code is unknown.
/// assert_eq!(table.lookup(Some("16107"), &StationId::Num(0)).unwrap().as_str(), "75016");
/// assert_eq!(table.lookup(None, &StationId::Num(213688169)).unwrap().as_str(), "75016");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PostcodeTable {
    by_code: HashMap<String, Option<Postcode>>,
    by_id: HashMap<String, Option<Postcode>>,
}

const VELIB_TABLE: &str = include_str!("../data/velib_station_postcodes.csv");

impl PostcodeTable {
    /// The largest table accepted, in bytes (64 MiB).
    pub const MAX_BYTES: usize = 64 << 20;

    /// The Vélib' Métropole table that ships with the crate (1,462 stations,
    /// Feb 2024; see `data/README.md` for its provenance).
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::postcode::PostcodeTable;
    /// use velib_dataflow::feed::StationId;
    /// let table = PostcodeTable::velib();
    /// let pc = table.lookup(Some("16107"), &StationId::Num(213688169));
    /// assert_eq!(pc.map(|p| p.as_str()), Some("75016"));
    /// ```
    pub fn velib() -> PostcodeTable {
        // The shipped file is checked by the crate's tests; it cannot fail here.
        Self::from_reader(VELIB_TABLE.as_bytes())
            .expect("the shipped Vélib' postcode table is valid")
    }

    /// An empty table: postcodes come only from the feed and from inference.
    pub fn empty() -> PostcodeTable {
        PostcodeTable::default()
    }

    /// Reads a CSV file with a header naming at least `postcode` and one of
    /// `stationCode` or `station_id`; other columns are ignored.
    pub fn from_path(path: impl AsRef<Path>) -> Result<PostcodeTable, PostcodeTableError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| PostcodeTableError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_reader(file)
    }

    /// Reads a CSV table from any reader (see [`PostcodeTable::from_path`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::feed::StationId;
    /// use velib_dataflow::postcode::PostcodeTable;
    ///
    /// let csv = "stationCode,station_id,postcode\n16107,213688169,75016\n";
    /// let table = PostcodeTable::from_reader(csv.as_bytes())?;
    /// let found = table.lookup(Some("16107"), &StationId::Num(213688169)).unwrap();
    /// assert_eq!(found.as_str(), "75016");
    /// assert!(PostcodeTable::from_reader(&b"no,header,here\n"[..]).is_err());
    /// # Ok::<(), velib_dataflow::postcode::PostcodeTableError>(())
    /// ```
    pub fn from_reader(reader: impl Read) -> Result<PostcodeTable, PostcodeTableError> {
        let mut bytes = Vec::new();
        reader
            .take(Self::MAX_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| PostcodeTableError::Io {
                path: "(reader)".into(),
                source,
            })?;
        if bytes.len() > Self::MAX_BYTES {
            return Err(PostcodeTableError::TooLarge {
                limit: Self::MAX_BYTES,
            });
        }
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        let headers = csv.headers()?.clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim_start_matches('\u{feff}') == name)
        };
        let postcode_col =
            column("postcode").ok_or(PostcodeTableError::MissingColumn { column: "postcode" })?;
        let code_col = column("stationCode");
        let id_col = column("station_id");
        if code_col.is_none() && id_col.is_none() {
            return Err(PostcodeTableError::MissingColumn {
                column: "stationCode",
            });
        }
        let mut table = PostcodeTable::default();
        for record in csv.records() {
            let record = record?;
            let line = record.position().map_or(0, |p| p.line());
            let raw = record.get(postcode_col).unwrap_or("");
            let postcode = if raw.is_empty() {
                None
            } else {
                Some(
                    Postcode::parse(raw).ok_or_else(|| PostcodeTableError::InvalidPostcode {
                        line,
                        value: raw.to_owned(),
                    })?,
                )
            };
            for (col, map) in [(code_col, &mut table.by_code), (id_col, &mut table.by_id)] {
                let Some(key) = col.and_then(|c| record.get(c)).filter(|k| !k.is_empty()) else {
                    continue;
                };
                match map.get(key) {
                    Some(previous) if *previous != postcode => {
                        return Err(PostcodeTableError::Conflict {
                            line,
                            station: key.to_owned(),
                            previous: previous.as_ref().map_or("", |p| p.as_str()).to_owned(),
                            value: raw.to_owned(),
                        })
                    }
                    _ => {
                        map.insert(key.to_owned(), postcode);
                    }
                }
            }
        }
        Ok(table)
    }

    /// The postcode of a station, by its code first, else by its id. `None`
    /// when the table does not know the station or gives it no postcode.
    pub fn lookup(&self, code: Option<&str>, id: &StationId) -> Option<&Postcode> {
        if let Some(found) = code.and_then(|c| self.by_code.get(c)) {
            return found.as_ref();
        }
        self.by_id.get(&id.to_string()).and_then(Option::as_ref)
    }

    /// How many stations the table names (by code, else by id).
    pub fn len(&self) -> usize {
        self.by_code.len().max(self.by_id.len())
    }

    /// Whether the table names no station.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
