#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::bare_urls
)]
#![warn(
    clippy::clone_on_ref_ptr,
    clippy::dbg_macro,
    clippy::explicit_iter_loop,
    clippy::todo,
    clippy::unimplemented
)]

mod error;
pub mod fetch;
pub mod gbfs;
mod json;
pub mod opendata_paris;
pub mod payload;
pub mod poll;
mod timestamp;
pub mod vehicle_types;

pub use error::{FeedError, FeedKind, Problem};
pub use timestamp::parse_rfc3339;

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest payload the parsers accept, in bytes (64 MiB).
///
/// The whole Vélib' status feed is about 1 MB; anything near this limit is not
/// a feed and is refused before it is parsed.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, MAX_PAYLOAD_BYTES};
///
/// // Refused on its size alone, before any parsing.
/// let error = gbfs::parse_status(&vec![b' '; MAX_PAYLOAD_BYTES + 1]).unwrap_err();
/// assert_eq!(error.reason(), "too_large");
/// ```
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Seconds since the Unix epoch, as the feed reports its own time.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, parse_rfc3339, FeedTime};
///
/// // A v3 feed's RFC 3339 time becomes the same seconds as a v2 feed's number.
/// let status = gbfs::parse_status(br#"{"last_updated": 1700000000, "data": {"stations": [{"station_id": "a",
///     "num_bikes_available": 1, "num_docks_available": 2, "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#)?;
/// let t: FeedTime = status.feed_time;
/// assert_eq!(Some(t), parse_rfc3339("2023-11-14T22:13:20Z"));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub type FeedTime = i64;

/// A station's identifier as the feed writes it.
///
/// Vélib' writes a JSON integer that needs 64 bits (up to 19,335,882,998);
/// most other systems write a string. Both are kept exactly, so that a record
/// written back to Kafka carries the same identifier the feed used.
///
/// In JSON it is written as the feed wrote it (a number or a string); in
/// timely's binary exchange it is a tagged enum, since bincode cannot read
/// untagged data.
///
/// # Examples
///
/// ```
/// use gbfs_feed::StationId;
///
/// let vélib: StationId = serde_json::from_str("19335882998")?;
/// let oslo: StationId = serde_json::from_str(r#""2351""#)?;
/// assert_eq!(vélib, StationId::Num(19_335_882_998));
/// assert_eq!(serde_json::to_string(&oslo)?, r#""2351""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StationId {
    /// A numeric identifier (Vélib').
    Num(u64),
    /// A textual identifier (most GBFS systems; the Paris open-data station code).
    Text(String),
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StationId::Num(n) => write!(f, "{n}"),
            StationId::Text(s) => f.write_str(s),
        }
    }
}

/// The binary form: an ordinary tagged enum.
#[derive(Serialize, Deserialize)]
enum StationIdRepr {
    Num(u64),
    Text(String),
}

impl Serialize for StationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self, serializer.is_human_readable()) {
            (StationId::Num(n), true) => serializer.serialize_u64(*n),
            (StationId::Text(s), true) => serializer.serialize_str(s),
            (StationId::Num(n), false) => StationIdRepr::Num(*n).serialize(serializer),
            (StationId::Text(s), false) => StationIdRepr::Text(s.clone()).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Untagged;
        impl serde::de::Visitor<'_> for Untagged {
            type Value = StationId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a station id: a non-negative integer or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StationId, E> {
                Ok(StationId::Num(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StationId, E> {
                Ok(StationId::Text(s.to_owned()))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Untagged)
        } else {
            Ok(match StationIdRepr::deserialize(deserializer)? {
                StationIdRepr::Num(n) => StationId::Num(n),
                StationIdRepr::Text(s) => StationId::Text(s),
            })
        }
    }
}

impl From<u64> for StationId {
    fn from(n: u64) -> Self {
        StationId::Num(n)
    }
}

impl From<&str> for StationId {
    fn from(s: &str) -> Self {
        StationId::Text(s.to_owned())
    }
}

/// Bikes available at a station, by type.
///
/// Bikes whose type is neither mechanical nor electric (cargo bikes, scooters
/// in a v3 feed) are counted in `other`.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, BikeTypes};
///
/// let status = gbfs::parse_station_record(br#"{"station_id": "a", "num_bikes_available": 4,
///     "num_bikes_available_types": [{"mechanical": 1}, {"ebike": 2}, {"cargo": 1}],
///     "num_docks_available": 0, "is_installed": 1, "is_renting": 1, "is_returning": 1}"#)?;
/// // A type the parser does not know is still counted.
/// assert_eq!(status.bike_types, Some(BikeTypes { mechanical: 1, ebike: 2, other: 1 }));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BikeTypes {
    /// Mechanical (non-assisted) bikes.
    pub mechanical: u32,
    /// Electric-assisted bikes.
    pub ebike: u32,
    /// Bikes of any other type.
    pub other: u32,
}

/// One station's status at one instant, normalised.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, StationId};
///
/// let status = gbfs::parse_station_record(br#"{"station_id": 213688169, "stationCode": "16107",
///     "num_bikes_available": 3, "num_bikes_available_types": [{"mechanical": 2}, {"ebike": 1}],
///     "num_docks_available": 32, "is_installed": 1, "is_renting": 1, "is_returning": 1}"#)?;
/// assert_eq!(status.station_id, StationId::Num(213688169));
/// assert_eq!(status.bike_types.unwrap().ebike, 1);
/// assert!(status.is_rentable());
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StationStatus {
    /// The feed's identifier of the station.
    pub station_id: StationId,
    /// The station's public code (Vélib' `stationCode`), when the feed gives it.
    pub code: Option<String>,
    /// Bikes available (`num_bikes_available`, v3 `num_vehicles_available`).
    pub bikes_available: u32,
    /// Bikes by type, when the feed says; `None` when it does not.
    pub bike_types: Option<BikeTypes>,
    /// Docks available (`num_docks_available`).
    pub docks_available: u32,
    /// The station is on the street and working.
    pub is_installed: bool,
    /// Riders can take bikes from it.
    pub is_renting: bool,
    /// Riders can return bikes to it.
    pub is_returning: bool,
    /// When the station last reported, when the feed says.
    pub last_reported: Option<FeedTime>,
    /// What was judged of the station at the snapshot's time: not feed
    /// fields. The parsers leave it empty; whoever judges a snapshot
    /// (velib-dataflow's sequencer) fills it. Empty when absent from JSON
    /// (records written before it existed).
    #[serde(default)]
    pub judged: Judged,
    /// Vehicles available by the feed's `vehicle_type_id` (GBFS v2.3 and
    /// v3 `vehicle_types_available`), whatever kind each is; empty when the
    /// feed does not list them by id (a Vélib' feed's mechanical and e-bike
    /// counts are [`Self::bike_types`]), and in records written before the
    /// field existed.
    // Never skipped when empty: timely's exchange between processes is
    // bincode, which cannot read a record with a field left out.
    #[serde(default)]
    pub vehicle_types: std::collections::BTreeMap<String, u32>,
}

/// The most vehicle types one station may list: a station lists a few; a
/// station listing more has its counts by type left out
/// ([`StatusSnapshot::vehicle_types_dropped`]) rather than carried into
/// every record.
pub const MAX_VEHICLE_TYPES: usize = 64;

/// The longest `vehicle_type_id` taken, in bytes: ids become keys of the
/// output records.
pub const MAX_VEHICLE_TYPE_ID_LEN: usize = 64;

/// What was judged of a station at a snapshot, from its fields and the
/// snapshot's feed time ([`StationStatus::judged`]).
///
/// # Examples
///
/// ```
/// use gbfs_feed::Judged;
///
/// let judged: Judged = serde_json::from_str(r#"{"stale": true}"#)?;
/// assert!(judged.stale && judged.empty_since.is_none());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Judged {
    /// Its last report is too old to trust.
    #[serde(default)]
    pub stale: bool,
    /// Since when (feed time) it has been installed, renting and without a
    /// bike, carried from snapshot to snapshot; `None` when it is not.
    #[serde(default)]
    pub empty_since: Option<FeedTime>,
    /// Since when it has been installed, returning and without a free dock.
    #[serde(default)]
    pub full_since: Option<FeedTime>,
    /// Empty for longer than the judge's limit.
    #[serde(default)]
    pub empty_long: bool,
    /// Full for longer than the judge's limit.
    #[serde(default)]
    pub full_long: bool,
}

impl StationStatus {
    /// Whether a rider can take a bike here now: installed and renting.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::gbfs;
    ///
    /// // Bikes at a station that is not renting cannot be taken.
    /// let status = gbfs::parse_station_record(br#"{"station_id": "a", "num_bikes_available": 5,
    ///     "num_docks_available": 0, "is_installed": 1, "is_renting": 0, "is_returning": 1}"#)?;
    /// assert!(status.bikes_available > 0 && !status.is_rentable());
    /// # Ok::<(), gbfs_feed::FeedError>(())
    /// ```
    pub fn is_rentable(&self) -> bool {
        self.is_installed && self.is_renting
    }

    /// Whether two statuses of the same station say the same about
    /// availability: counts and flags (staleness included), ignoring
    /// `last_reported`.
    ///
    /// Stations report every few minutes with nothing changed; this is what
    /// keeps such reports from becoming updates.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::gbfs;
    ///
    /// let before = gbfs::parse_station_record(br#"{"station_id": "a", "num_bikes_available": 5, "num_docks_available": 0,
    ///     "is_installed": 1, "is_renting": 1, "is_returning": 1, "last_reported": 100}"#)?;
    /// let mut after = before.clone();
    /// after.last_reported = Some(400);
    /// assert!(before.same_availability(&after));
    /// after.bikes_available = 4;
    /// assert!(!before.same_availability(&after));
    /// # Ok::<(), gbfs_feed::FeedError>(())
    /// ```
    pub fn same_availability(&self, other: &Self) -> bool {
        self.station_id == other.station_id
            && self.code == other.code
            && self.bikes_available == other.bikes_available
            && self.bike_types == other.bike_types
            && self.docks_available == other.docks_available
            && self.is_installed == other.is_installed
            && self.is_renting == other.is_renting
            && self.is_returning == other.is_returning
            && self.judged == other.judged
            && self.vehicle_types == other.vehicle_types
    }
}

/// A geographic position, in degrees (WGS 84).
///
/// Parsers only build finite, in-range positions, which is what makes the
/// total order (and therefore use as dataflow data) sound.
///
/// # Examples
///
/// ```
/// use gbfs_feed::Position;
///
/// // Ordered and hashed like an integer pair, so it can be dataflow data.
/// let mut positions = vec![Position { lat: 48.87, lon: 2.35 }, Position { lat: 48.85, lon: 2.35 }];
/// positions.sort();
/// assert_eq!(positions[0].lat, 48.85);
/// ```
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Position {
    /// Latitude, -90 to 90.
    pub lat: f64,
    /// Longitude, -180 to 180.
    pub lon: f64,
}

impl Position {
    /// Great-circle distance to `other`, in metres.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::Position;
    ///
    /// let chatelet = Position { lat: 48.8584, lon: 2.3470 };
    /// let louvre = Position { lat: 48.8606, lon: 2.3376 };
    /// let d = chatelet.distance_m(&louvre);
    /// assert!((700.0..750.0).contains(&d), "{d}");
    /// ```
    pub fn distance_m(&self, other: &Position) -> f64 {
        const EARTH_RADIUS_M: f64 = 6_371_008.8;
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = la2 - la1;
        let dlon = (other.lon - self.lon).to_radians();
        let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
    }
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Position {}
impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.lat
            .total_cmp(&other.lat)
            .then(self.lon.total_cmp(&other.lon))
    }
}
impl std::hash::Hash for Position {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.lat.to_bits().hash(state);
        self.lon.to_bits().hash(state);
    }
}

/// One station's directory information, as the feed gives it.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, StationId};
///
/// let info = gbfs::parse_information(br#"{"last_updated": 1, "data": {"stations": [{"station_id": "a",
///     "short_name": "A1", "name": "Gare", "lat": 48.84, "lon": 2.37, "capacity": 20, "post_code": "75012"}]}}"#)?;
/// let station = &info.stations[0];
/// assert_eq!((&station.station_id, station.code.as_deref()), (&StationId::from("a"), Some("A1")));
/// assert_eq!(station.post_code.as_deref(), Some("75012"));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StationInfo {
    /// The feed's identifier of the station.
    pub station_id: StationId,
    /// The station's public code (Vélib' `stationCode`, else GBFS `short_name`).
    pub code: Option<String>,
    /// The station's name.
    pub name: String,
    /// Where the station is.
    pub position: Option<Position>,
    /// Number of docks.
    pub capacity: Option<u32>,
    /// The feed's own postcode (GBFS `post_code`), when it has one.
    pub post_code: Option<String>,
}

/// What a snapshot's [`FeedTime`] is, and so whether it can order snapshots.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{opendata_paris, FeedTimeKind};
///
/// // The Paris export has no time of its own: its latest report stands for it.
/// let (status, _) = opendata_paris::parse(br#"[{"stationcode": "1", "name": "A", "is_installed": "OUI",
///     "capacity": 2, "numdocksavailable": 1, "numbikesavailable": 1, "mechanical": 1, "ebike": 0,
///     "is_renting": "OUI", "is_returning": "OUI", "duedate": "2024-11-05T09:00:01+01:00",
///     "coordonnees_geo": {"lon": 2.3, "lat": 48.8}}]"#)?;
/// assert_eq!(status.feed_time_kind, FeedTimeKind::LatestReport);
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FeedTimeKind {
    /// The time the feed published for the whole snapshot (GBFS
    /// `last_updated`, Vélib' `lastUpdatedOther`): a snapshot with an older
    /// one is an older snapshot, and is refused.
    Published,
    /// The latest station report in the snapshot (the Paris export's
    /// `max(duedate)`): it can step back while the content moves forward, so
    /// it is reported but does not order snapshots.
    LatestReport,
}

/// A whole `station_status` payload, normalised.
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
///
/// let snapshot = gbfs::parse_status(br#"{"last_updated": 60, "ttl": 30, "version": "2.3", "data": {"stations": [
///     {"station_id": "a", "num_bikes_available": 1, "num_docks_available": 2, "is_installed": 1, "is_renting": 1, "is_returning": 1},
///     {"station_id": "b", "num_bikes_available": 0, "num_docks_available": 3, "is_installed": 1, "is_renting": 1, "is_returning": 1}]}}"#)?;
/// assert_eq!((snapshot.feed_time, snapshot.ttl, snapshot.version.as_deref()), (60, Some(30), Some("2.3")));
/// let bikes: u32 = snapshot.stations.iter().map(|s| s.bikes_available).sum();
/// assert_eq!(bikes, 1);
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The feed's time of this snapshot (`last_updated`, Vélib' `lastUpdatedOther`).
    pub feed_time: FeedTime,
    /// What `feed_time` is.
    pub feed_time_kind: FeedTimeKind,
    /// The GBFS version the payload declares, if any.
    pub version: Option<String>,
    /// The feed's suggested polling interval, in seconds, if any.
    pub ttl: Option<u32>,
    /// Every station in the payload, in feed order.
    pub stations: Vec<StationStatus>,
    /// Vehicle types a station's `vehicle_types_available` names that the
    /// system's `vehicle_types.json` does not define, with the station:
    /// counted as other vehicles ([`gbfs::parse_status_typed`]).
    pub undefined_vehicle_types: Vec<(StationId, String)>,
    /// Stations whose `vehicle_types_available` lists more than
    /// [`MAX_VEHICLE_TYPES`] types, or an id longer than
    /// [`MAX_VEHICLE_TYPE_ID_LEN`], or (beside `num_bikes_available_types`,
    /// which then gives the kinds) cannot be read: their
    /// [`StationStatus::vehicle_types`] is left empty (their bikes are still
    /// counted, by kind), rather than the whole payload refused for one
    /// station.
    pub vehicle_types_dropped: Vec<StationId>,
}

/// A whole `station_information` payload, normalised.
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
///
/// let info = gbfs::parse_information(br#"{"last_updated": 5, "ttl": 3600, "data": {"stations": [
///     {"station_id": "a", "name": "Gare", "lat": 48.84, "lon": 2.37}]}}"#)?;
/// assert_eq!((info.feed_time, info.ttl), (5, Some(3600)));
/// assert_eq!(info.stations[0].capacity, None);
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InformationSnapshot {
    /// The feed's time of this snapshot.
    pub feed_time: FeedTime,
    /// The GBFS version the payload declares, if any.
    pub version: Option<String>,
    /// The feed's suggested polling interval, in seconds, if any.
    pub ttl: Option<u32>,
    /// Every station in the payload, in feed order.
    pub stations: Vec<StationInfo>,
}
