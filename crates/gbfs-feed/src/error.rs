use std::fmt;

/// Which payload a [`FeedError`] is about.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, FeedError, FeedKind};
///
/// let error = gbfs::parse_information(b"[]").unwrap_err();
/// assert!(matches!(error, FeedError::Field { feed: FeedKind::StationInformation, .. }), "{error}");
/// // Its text names the file, as an operator knows it.
/// assert_eq!(FeedKind::StationStatus.to_string(), "station_status.json");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FeedKind {
    /// GBFS discovery, `gbfs.json`.
    Discovery,
    /// GBFS `station_information.json`.
    StationInformation,
    /// GBFS `station_status.json`.
    StationStatus,
    /// GBFS `vehicle_types.json`.
    VehicleTypes,
    /// The City of Paris `velib-disponibilite-en-temps-reel` export.
    OpenDataParis,
}

impl fmt::Display for FeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedKind::Discovery => "gbfs.json",
            FeedKind::StationInformation => "station_information.json",
            FeedKind::StationStatus => "station_status.json",
            FeedKind::VehicleTypes => "vehicle_types.json",
            FeedKind::OpenDataParis => "Paris open-data export",
        })
    }
}

/// What is wrong with a field.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, FeedError, Problem};
///
/// let error = gbfs::parse_status(br#"{"last_updated": 1, "data": {"stations": [{"station_id": "a",
///     "num_docks_available": 0, "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#).unwrap_err();
/// assert!(matches!(error, FeedError::Field { problem: Problem::Missing, .. }), "{error}");
/// assert_eq!(Problem::Negative("-1".into()).to_string(), "is negative (-1)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The field is required and absent.
    Missing,
    /// The field is required and `null`.
    Null,
    /// The field has the wrong JSON type.
    WrongType {
        /// What the field should be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A count is negative.
    Negative(String),
    /// A number does not fit, or a value is outside its domain.
    OutOfRange(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("is missing"),
            Problem::Null => f.write_str("is null"),
            Problem::WrongType { expected, found } => {
                write!(f, "should be {expected}, found {found}")
            }
            Problem::Negative(v) => write!(f, "is negative ({v})"),
            Problem::OutOfRange(v) => write!(f, "is out of range ({v})"),
        }
    }
}

/// A payload that was rejected whole. Nothing of it was used.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, FeedError};
///
/// let error = gbfs::parse_status(br#"{"last_updated": 1, "data": {"stations": [{"station_id": 7,
///     "num_bikes_available": -1, "num_docks_available": 0,
///     "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#).unwrap_err();
/// assert!(matches!(error, FeedError::Field { .. }));
/// assert_eq!(error.reason(), "invalid_field");
/// // It names the feed, the station and the field.
/// let text = error.to_string();
/// assert!(text.contains("station_status") && text.contains("station 7") && text.contains("num_bikes_available"), "{text}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The payload is larger than the parser accepts.
    #[error("{feed}: payload of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Which payload.
        feed: FeedKind,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload is not JSON (truncated, empty, not text, too deeply nested).
    #[error("{feed}: not valid JSON: {source}")]
    Json {
        /// Which payload.
        feed: FeedKind,
        /// What the JSON parser said, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing, null, of the wrong type or out of range.
    #[error("{feed}: {}field `{field}` {problem}", station_prefix(.station))]
    Field {
        /// Which payload.
        feed: FeedKind,
        /// The station the field belongs to, when known.
        station: Option<String>,
        /// The field, as a path from the station (or the payload's top).
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// The same station appears twice in one snapshot.
    #[error("{feed}: station {station} appears more than once")]
    DuplicateStation {
        /// Which payload.
        feed: FeedKind,
        /// The station.
        station: String,
    },
    /// The payload is well-formed but says the upstream system is down
    /// (no stations, or every station lost its code or its bike types). It is
    /// rejected whole: it is not an epoch in which every bike vanished.
    #[error("{feed}: upstream outage, snapshot rejected whole: {reason}")]
    UpstreamOutage {
        /// Which payload.
        feed: FeedKind,
        /// What gave it away.
        reason: String,
    },
}

impl FeedError {
    /// A short, stable name for the error's kind, for counters and logs.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::gbfs;
    ///
    /// // Stable across messages, so it can label a counter.
    /// let error = gbfs::parse_status(b"not json").unwrap_err();
    /// assert_eq!(error.reason(), "invalid_json");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            FeedError::TooLarge { .. } => "too_large",
            FeedError::Json { .. } => "invalid_json",
            FeedError::Field { .. } => "invalid_field",
            FeedError::DuplicateStation { .. } => "duplicate_station",
            FeedError::UpstreamOutage { .. } => "upstream_outage",
        }
    }
}

fn station_prefix(station: &Option<String>) -> String {
    match station {
        Some(s) => format!("station {s}: "),
        None => String::new(),
    }
}
