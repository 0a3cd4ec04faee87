//! GBFS v1.x, v2.x and v3.0 payloads, and Vélib's departures from them.
//!
//! What real feeds do that the parsers accept (see `shared/fixtures/README.md`):
//! numeric (64-bit) or string station ids; booleans as `true`/`false` or
//! `1`/`0`; bike types as Vélib's array of single-key objects
//! (`[{"mechanical": 3}, {"ebike": 1}]`), as a plain object, or as GBFS
//! `vehicle_types_available`; the time as `last_updated` (POSIX seconds or,
//! in v3, RFC 3339) or Vélib's `lastUpdatedOther`; localized names (v3);
//! unknown extra fields; missing optional fields.
//!
//! # Examples
//!
//! ```
//! use gbfs_feed::{gbfs, StationId};
//!
//! let payload = br#"{"lastUpdatedOther": 1732004538, "ttl": 3600, "data": {"stations": [
//!     {"station_id": 213688169, "stationCode": "16107", "num_bikes_available": 1,
//!      "num_bikes_available_types": [{"mechanical": 1}, {"ebike": 0}],
//!      "num_docks_available": 34, "is_installed": 1, "is_returning": 1,
//!      "is_renting": 1, "last_reported": 1732001704}]}}"#;
//! let snapshot = gbfs::parse_status(payload)?;
//! assert_eq!(snapshot.feed_time, 1732004538);
//! assert_eq!(snapshot.stations[0].station_id, StationId::Num(213688169));
//! assert_eq!(snapshot.stations[0].bike_types.unwrap().mechanical, 1);
//! # Ok::<(), gbfs_feed::FeedError>(())
//! ```

use super::json::{opt, parse_payload, Ctx};
use super::vehicle_types::{VehicleKind, VehicleTypes};
use super::{
    BikeTypes, FeedError, FeedKind, FeedTime, FeedTimeKind, InformationSnapshot, Position, Problem,
    StationId, StationInfo, StationStatus, StatusSnapshot,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::collections::HashSet;

/// A feed listed by a discovery file.
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
///
/// let discovery = gbfs::parse_discovery(br#"{"last_updated": 0, "data": {"en": {"feeds": [
///     {"name": "system_information", "url": "https://example.org/en/system_information.json"}]}}}"#)?;
/// let (language, feeds) = &discovery.languages[0];
/// assert_eq!((language.as_deref(), feeds[0].name.as_str()), (Some("en"), "system_information"));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedLink {
    /// The feed's name, e.g. `station_status`.
    pub name: String,
    /// Where to fetch it.
    pub url: String,
}

/// A parsed `gbfs.json`: the feeds a system publishes, per language.
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
///
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/gbfs/velib/2022-02/gbfs.json");
/// let discovery = gbfs::parse_discovery(&std::fs::read(path).unwrap())?;
/// assert_eq!(discovery.ttl, Some(3600));
/// assert!(discovery.feed_url("station_status", Some("en")).unwrap().ends_with("/station_status.json"));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// The GBFS version declared, if any.
    pub version: Option<String>,
    /// The suggested polling interval, in seconds, if any.
    pub ttl: Option<u32>,
    /// The feeds per language, in file order. GBFS v3 has no languages at this
    /// level: its one list has language `None`.
    pub languages: Vec<(Option<String>, Vec<FeedLink>)>,
}

impl Discovery {
    /// The URL of feed `name` in `language` (or the first language when
    /// `None`). A v3 discovery has one list for all languages: it answers
    /// for any language.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::gbfs;
    ///
    /// let discovery = gbfs::parse_discovery(br#"{"last_updated": 0, "data": {
    ///     "en": {"feeds": [{"name": "station_status", "url": "https://example.org/en/s.json"}]},
    ///     "fr": {"feeds": [{"name": "station_status", "url": "https://example.org/fr/s.json"}]}}}"#)?;
    /// assert_eq!(discovery.feed_url("station_status", Some("fr")), Some("https://example.org/fr/s.json"));
    /// // No language given: the file's first.
    /// assert_eq!(discovery.feed_url("station_status", None), Some("https://example.org/en/s.json"));
    /// assert_eq!(discovery.feed_url("free_bike_status", None), None);
    /// # Ok::<(), gbfs_feed::FeedError>(())
    /// ```
    pub fn feed_url(&self, name: &str, language: Option<&str>) -> Option<&str> {
        let feeds = match (language, self.languages.as_slice()) {
            (_, [(None, feeds)]) => Some(feeds),
            (Some(lang), languages) => languages
                .iter()
                .find(|(l, _)| l.as_deref() == Some(lang))
                .map(|(_, f)| f),
            (None, languages) => languages.first().map(|(_, f)| f),
        }?;
        feeds
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.url.as_str())
    }
}

/// Parses a `gbfs.json` discovery payload (v1.x/v2.x per-language lists, or
/// v3.0's single list).
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
/// let d = gbfs::parse_discovery(br#"{"last_updated": 0, "ttl": 60, "data": {"fr": {"feeds": [
///     {"name": "station_status", "url": "https://example.org/fr/station_status.json"}]}}}"#)?;
/// assert_eq!(d.feed_url("station_status", None), Some("https://example.org/fr/station_status.json"));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_discovery(bytes: &[u8]) -> Result<Discovery, FeedError> {
    let ctx = Ctx::new(FeedKind::Discovery);
    let root = parse_payload(ctx.feed, bytes)?;
    let top = ctx.object("(top level)", &root)?;
    let data = ctx.object("data", ctx.req(top, "data")?)?;
    let mut languages = Vec::new();
    if let Some(feeds) = data.get("feeds") {
        languages.push((None, feed_links(&ctx, "data.feeds", feeds)?));
    } else {
        for (lang, body) in data {
            let path = format!("data.{lang}");
            let body = ctx.object(&path, body)?;
            let feeds = ctx
                .req(body, "feeds")
                .map_err(|e| relocate(e, &path, "feeds"))?;
            languages.push((
                Some(lang.clone()),
                feed_links(&ctx, &format!("{path}.feeds"), feeds)?,
            ));
        }
    }
    if languages.is_empty() {
        return Err(ctx.err("data", Problem::OutOfRange("no feeds listed".into())));
    }
    Ok(Discovery {
        version: version(&ctx, top)?,
        ttl: ctx.advisory_count(top, "ttl"),
        languages,
    })
}

fn feed_links(ctx: &Ctx, path: &str, feeds: &Value) -> Result<Vec<FeedLink>, FeedError> {
    ctx.array(path, feeds)?
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = format!("{path}[{i}]");
            let f = ctx.object(&at, f)?;
            let text = |field: &str| -> Result<String, FeedError> {
                let v = ctx.req(f, field).map_err(|e| relocate(e, &at, field))?;
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ctx.wrong(&format!("{at}.{field}"), "a string", v))
            };
            Ok(FeedLink {
                name: text("name")?,
                url: text("url")?,
            })
        })
        .collect()
}

fn relocate(e: FeedError, at: &str, field: &str) -> FeedError {
    match e {
        FeedError::Field {
            feed,
            station,
            problem,
            ..
        } => FeedError::Field {
            feed,
            station,
            field: format!("{at}.{field}"),
            problem,
        },
        other => other,
    }
}

/// Parses a `station_status.json` payload.
///
/// Rejects the payload whole, with an error naming the station and field, if
/// any station is invalid; and as an [`FeedError::UpstreamOutage`] if it has no
/// stations, or, for a Vélib' payload, if every station lacks its code or its
/// bike types (what the Vélib' API serves when its back end is down).
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, FeedTimeKind};
///
/// let status = gbfs::parse_status(br#"{"last_updated": 1666551803, "ttl": 10, "version": "2.2",
///     "data": {"stations": [{"station_id": "2351", "num_bikes_available": 10, "num_docks_available": 2,
///     "is_installed": 1, "is_renting": 1, "is_returning": 1, "last_reported": 1666551803}]}}"#)?;
/// assert_eq!((status.feed_time, status.feed_time_kind), (1666551803, FeedTimeKind::Published));
/// assert_eq!(status.stations[0].bikes_available, 10);
/// // A truncated payload is refused whole, saying where.
/// let error = gbfs::parse_status(br#"{"last_updated": 1, "data": {"stations": [{"station_id""#).unwrap_err();
/// assert_eq!(error.reason(), "invalid_json");
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_status(bytes: &[u8]) -> Result<StatusSnapshot, FeedError> {
    parse_status_typed(bytes, None)
}

/// As [`parse_status`], classifying `vehicle_types_available` by the
/// system's `vehicle_types.json` when given
/// ([`crate::vehicle_types`]): mechanical, e-bikes and other vehicles as
/// the system defines them, not as their ids suggest. A type a station
/// names that `types` does not define is counted as another vehicle and
/// listed in [`StatusSnapshot::undefined_vehicle_types`]. Without `types`
/// (a v1 or v2.2 feed, or vehicle types not read yet) the ids are guessed
/// from as before.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, vehicle_types::{VehicleKind, VehicleTypes}, StationId};
///
/// let status = br#"{"last_updated": 1, "ttl": 0, "version": "3.0", "data": {"stations": [{"station_id": "s",
///     "num_vehicles_available": 5, "vehicle_types_available": [
///         {"vehicle_type_id": "t1", "count": 2}, {"vehicle_type_id": "t2", "count": 2}, {"vehicle_type_id": "t9", "count": 1}],
///     "is_installed": true, "is_renting": true, "is_returning": true, "last_reported": "2024-01-01T00:00:00Z"}]}}"#;
/// let types: VehicleTypes = [("t1".to_owned(), VehicleKind::Ebike), ("t2".to_owned(), VehicleKind::Mechanical)]
///     .into_iter().collect();
/// let snapshot = gbfs::parse_status_typed(status, Some(&types))?;
/// let bikes = snapshot.stations[0].bike_types.unwrap();
/// assert_eq!((bikes.mechanical, bikes.ebike, bikes.other), (2, 2, 1));
/// assert_eq!(snapshot.undefined_vehicle_types, [(StationId::Text("s".into()), "t9".to_owned())]);
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_status_typed(
    bytes: &[u8],
    types: Option<&VehicleTypes>,
) -> Result<StatusSnapshot, FeedError> {
    let ctx = Ctx::new(FeedKind::StationStatus);
    let root = parse_payload(ctx.feed, bytes)?;
    let header = Header::read(&ctx, &root)?;
    let v3 = header
        .version
        .as_deref()
        .is_some_and(|v| v.starts_with('3'));
    let mut seen = HashSet::new();
    let mut stations = Vec::with_capacity(header.stations.len());
    let mut noted = Noted::default();
    for (i, raw) in header.stations.iter().enumerate() {
        let status = parse_station_status(&ctx, i, raw, v3, types, &mut noted)?;
        if !seen.insert(status.station_id.clone()) {
            return Err(FeedError::DuplicateStation {
                feed: ctx.feed,
                station: status.station_id.to_string(),
            });
        }
        stations.push(status);
    }
    if stations.is_empty() {
        return Err(ctx.outage("the payload lists no stations"));
    }
    if header.velib {
        if stations.iter().all(|s| s.code.is_none()) {
            return Err(ctx.outage(format!(
                "all {} stations lack their stationCode",
                stations.len()
            )));
        }
        if stations.iter().all(|s| s.bike_types.is_none()) {
            return Err(ctx.outage(format!(
                "all {} stations lack their bike types",
                stations.len()
            )));
        }
    }
    Ok(StatusSnapshot {
        feed_time: header.feed_time,
        feed_time_kind: FeedTimeKind::Published,
        version: header.version,
        ttl: header.ttl,
        stations,
        undefined_vehicle_types: noted.undefined,
        vehicle_types_dropped: noted.by_id_dropped.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Parses one station's record of a `station_status.json` payload on its
/// own: what the seeds' `producer.py` sends to Kafka, one message per
/// station. A v3 record is recognised by its `num_vehicles_available`.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{gbfs, StationId};
///
/// let record = br#"{"station_id": 213688169, "stationCode": "16107", "num_bikes_available": 3,
///     "num_bikes_available_types": [{"mechanical": 2}, {"ebike": 1}],
///     "num_docks_available": 32, "is_installed": 1, "is_returning": 1, "is_renting": 1}"#;
/// let status = gbfs::parse_station_record(record)?;
/// assert_eq!(status.station_id, StationId::Num(213688169));
/// assert_eq!(status.bike_types.unwrap().ebike, 1);
/// assert!(gbfs::parse_station_record(br#"{"station_id": 1}"#).is_err());
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_station_record(bytes: &[u8]) -> Result<StationStatus, FeedError> {
    let ctx = Ctx::new(FeedKind::StationStatus);
    let raw = parse_payload(ctx.feed, bytes)?;
    if !raw.is_object() {
        return Err(ctx.wrong("(station record)", "an object", &raw));
    }
    let v3 = raw.get("num_vehicles_available").is_some();
    let mut noted = Noted::default();
    let status = parse_station_status(&ctx, 0, &raw, v3, None, &mut noted)?;
    // A record on its own has no snapshot to note it in: refused, to the
    // dead letters, rather than read without its types.
    match noted.by_id_dropped.pop() {
        Some((_, why)) => Err(why),
        None => Ok(status),
    }
}

/// Parses a `station_information.json` payload.
///
/// # Examples
///
/// ```
/// use gbfs_feed::gbfs;
///
/// let info = gbfs::parse_information(r#"{"last_updated": 1, "ttl": 0, "data": {"stations": [
///     {"station_id": "2351", "name": "Ulsrudløkka", "lat": 59.91, "lon": 10.80, "capacity": 12}]}}"#.as_bytes())?;
/// assert_eq!(info.stations[0].name, "Ulsrudløkka");
/// assert_eq!(info.stations[0].capacity, Some(12));
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_information(bytes: &[u8]) -> Result<InformationSnapshot, FeedError> {
    let ctx = Ctx::new(FeedKind::StationInformation);
    let root = parse_payload(ctx.feed, bytes)?;
    let header = Header::read(&ctx, &root)?;
    let mut seen = HashSet::new();
    let mut stations = Vec::with_capacity(header.stations.len());
    for (i, raw) in header.stations.iter().enumerate() {
        let info = parse_station_info(&ctx, i, raw)?;
        if !seen.insert(info.station_id.clone()) {
            return Err(FeedError::DuplicateStation {
                feed: ctx.feed,
                station: info.station_id.to_string(),
            });
        }
        stations.push(info);
    }
    if stations.is_empty() {
        return Err(ctx.outage("the payload lists no stations"));
    }
    if header.velib && stations.iter().all(|s| s.code.is_none()) {
        return Err(ctx.outage(format!(
            "all {} stations lack their stationCode",
            stations.len()
        )));
    }
    Ok(InformationSnapshot {
        feed_time: header.feed_time,
        version: header.version,
        ttl: header.ttl,
        stations,
    })
}

/// What every GBFS payload has around its station list.
struct Header<'a> {
    feed_time: FeedTime,
    version: Option<String>,
    ttl: Option<u32>,
    /// Vélib' writes `lastUpdatedOther` where GBFS writes `last_updated`.
    velib: bool,
    stations: &'a Vec<Value>,
}

impl<'a> Header<'a> {
    fn read(ctx: &Ctx, root: &'a Value) -> Result<Self, FeedError> {
        let top = ctx.object("(top level)", root)?;
        let (field, time) = ctx.req_any(top, &["last_updated", "lastUpdatedOther"])?;
        let feed_time = ctx.time(field, time)?;
        let data = ctx.object("data", ctx.req(top, "data")?)?;
        let stations = ctx.array(
            "data.stations",
            ctx.req(data, "stations")
                .map_err(|e| relocate(e, "data", "stations"))?,
        )?;
        Ok(Header {
            feed_time,
            version: version(ctx, top)?,
            ttl: ctx.advisory_count(top, "ttl"),
            velib: field == "lastUpdatedOther",
            stations,
        })
    }
}

fn version(ctx: &Ctx, top: &Map<String, Value>) -> Result<Option<String>, FeedError> {
    match opt(top, "version") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ctx.wrong("version", "a string", v)),
    }
}

/// Reads the station id first, so that every later error names the station.
fn station_ctx<'v>(
    ctx: &Ctx,
    index: usize,
    raw: &'v Value,
) -> Result<(Ctx, &'v Map<String, Value>, StationId), FeedError> {
    let at_index = ctx.at_station(format!("#{index}"));
    let obj = at_index.object(&format!("data.stations[{index}]"), raw)?;
    let id = at_index.station_id("station_id", at_index.req(obj, "station_id")?)?;
    Ok((ctx.at_station(id.to_string()), obj, id))
}

/// What [`parse_station_status`] notes of a payload's stations beside
/// their statuses.
#[derive(Default)]
struct Noted {
    /// Vehicle types a station names that `vehicle_types.json` does not
    /// define.
    undefined: Vec<(StationId, String)>,
    /// Stations whose counts by type id were left out, and why.
    by_id_dropped: Vec<(StationId, FeedError)>,
}

fn parse_station_status(
    ctx: &Ctx,
    index: usize,
    raw: &Value,
    v3: bool,
    types: Option<&VehicleTypes>,
    noted: &mut Noted,
) -> Result<StationStatus, FeedError> {
    let (ctx, obj, station_id) = station_ctx(ctx, index, raw)?;
    let (field, bikes) = ctx.req_any(
        obj,
        &[
            "num_bikes_available",
            "num_vehicles_available",
            "numBikesAvailable",
        ],
    )?;
    let bikes_available = ctx.count(field, bikes)?;
    let docks_available = if v3 {
        ctx.opt_count(obj, "num_docks_available")?.unwrap_or(0)
    } else {
        let (field, docks) = ctx.req_any(obj, &["num_docks_available", "numDocksAvailable"])?;
        ctx.count(field, docks)?
    };
    let undefined = &mut noted.undefined;
    let typed = bike_types(&ctx, obj, types, &mut |type_id| {
        undefined.push((station_id.clone(), type_id.to_owned()))
    })?;
    if let Some(why) = typed.by_id_dropped {
        noted.by_id_dropped.push((station_id.clone(), why));
    }
    Ok(StationStatus {
        code: ctx.opt_code(obj, "stationCode")?,
        bikes_available,
        bike_types: typed.by_kind,
        vehicle_types: typed.by_id,
        docks_available,
        is_installed: ctx.req_flag(obj, "is_installed")?,
        is_renting: ctx.req_flag(obj, "is_renting")?,
        is_returning: ctx.req_flag(obj, "is_returning")?,
        last_reported: opt(obj, "last_reported")
            .map(|v| ctx.time("last_reported", v))
            .transpose()?,
        judged: Default::default(),
        station_id,
    })
}

/// Which kind of bike a feed's type name means. Names vary by operator
/// (`ebike`, `electric`, `mechanical`, `classic`, v3 vehicle type ids…).
fn classify(name: &str) -> VehicleKind {
    let n = name.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    if has(&[
        "ebike", "e-bike", "e_bike", "electric", "elec", "assist", "pedelec", "boost",
    ]) {
        VehicleKind::Ebike
    } else if has(&[
        "mechanical",
        "meca",
        "classic",
        "standard",
        "human",
        "bike",
        "velo",
        "vélo",
    ]) {
        VehicleKind::Mechanical
    } else {
        VehicleKind::Other
    }
}

impl BikeTypes {
    fn add(&mut self, kind: VehicleKind, n: u32) {
        let slot = match kind {
            VehicleKind::Mechanical => &mut self.mechanical,
            VehicleKind::Ebike => &mut self.ebike,
            VehicleKind::Other => &mut self.other,
        };
        *slot = slot.saturating_add(n);
    }
}

/// A station's bikes by kind and its vehicles by type id, as
/// [`bike_types`] reads them.
struct StationTypes {
    by_kind: Option<BikeTypes>,
    by_id: BTreeMap<String, u32>,
    /// Why `by_id` was left empty although the station lists types: more
    /// of them than [`crate::MAX_VEHICLE_TYPES`], or an id longer than
    /// [`crate::MAX_VEHICLE_TYPE_ID_LEN`]. Its bikes are still counted by
    /// kind: one station's odd list costs only its counts by id.
    by_id_dropped: Option<FeedError>,
}

/// The station's bikes by kind (from `num_bikes_available_types`, else
/// from `vehicle_types_available`), and its vehicles by type id (from
/// `vehicle_types_available`, which a v2.3 feed may list beside the
/// other).
fn bike_types(
    ctx: &Ctx,
    obj: &Map<String, Value>,
    vehicle_types: Option<&VehicleTypes>,
    undefined: &mut dyn FnMut(&str),
) -> Result<StationTypes, FeedError> {
    let mut by_id: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_id_dropped = None;
    let mut counted = BikeTypes::default();
    let mut any = false;
    let named = opt(obj, "num_bikes_available_types");
    if let Some(v) = named {
        const FIELD: &str = "num_bikes_available_types";
        let mut add_object = |o: &Map<String, Value>, at: &str| -> Result<(), FeedError> {
            for (name, count) in o {
                let n = ctx.count(&format!("{at}.{name}"), count)?;
                counted.add(classify(name), n);
                any = true;
            }
            Ok(())
        };
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{FIELD}[{i}]");
                    add_object(ctx.object(&at, item)?, &at)?;
                }
            }
            Value::Object(o) => add_object(o, FIELD)?,
            other => return Err(ctx.wrong(FIELD, "an array of objects or an object", other)),
        }
    }
    if let Some(v) = opt(obj, "vehicle_types_available") {
        const FIELD: &str = "vehicle_types_available";
        // The kinds are the named counts' when the station has both: the
        // list by id is then only the counts by id, and a broken one costs
        // only those.
        let by_kind = named.is_none();
        let mut read = || -> Result<(), FeedError> {
            for (i, item) in ctx.array(FIELD, v)?.iter().enumerate() {
                let at = format!("{FIELD}[{i}]");
                let item = ctx.object(&at, item)?;
                let id = ctx
                    .req(item, "vehicle_type_id")
                    .map_err(|e| relocate(e, &at, "vehicle_type_id"))?;
                let id = id
                    .as_str()
                    .ok_or_else(|| ctx.wrong(&format!("{at}.vehicle_type_id"), "a string", id))?;
                let count = ctx
                    .req(item, "count")
                    .map_err(|e| relocate(e, &at, "count"))?;
                let count = ctx.count(&format!("{at}.count"), count)?;
                if by_id_dropped.is_none() && id.len() > crate::MAX_VEHICLE_TYPE_ID_LEN {
                    by_id_dropped = Some(ctx.err(
                        format!("{at}.vehicle_type_id"),
                        Problem::OutOfRange(format!(
                            "{} bytes, more than {}",
                            id.len(),
                            crate::MAX_VEHICLE_TYPE_ID_LEN
                        )),
                    ));
                }
                if by_id_dropped.is_none() {
                    let slot = by_id.entry(id.to_owned()).or_insert(0);
                    *slot = slot.saturating_add(count);
                    if by_id.len() > crate::MAX_VEHICLE_TYPES {
                        by_id_dropped = Some(ctx.err(
                            FIELD,
                            Problem::OutOfRange(format!(
                                "more than {} vehicle types at one station",
                                crate::MAX_VEHICLE_TYPES
                            )),
                        ));
                    }
                }
                if !by_kind {
                    continue;
                }
                let kind = match vehicle_types.map(|t| t.kind(id)) {
                    Some(Some(kind)) => kind,
                    Some(None) => {
                        undefined(id);
                        VehicleKind::Other
                    }
                    // The system's types are not known: guessed from the id.
                    None => classify(id),
                };
                counted.add(kind, count);
                any = true;
            }
            Ok(())
        };
        match read() {
            Ok(()) => {}
            Err(e) if !by_kind => by_id_dropped = by_id_dropped.or(Some(e)),
            Err(e) => return Err(e),
        }
    }
    if by_id_dropped.is_some() {
        by_id.clear();
    }
    Ok(StationTypes {
        by_kind: any.then_some(counted),
        by_id,
        by_id_dropped,
    })
}

fn parse_station_info(ctx: &Ctx, index: usize, raw: &Value) -> Result<StationInfo, FeedError> {
    let (ctx, obj, station_id) = station_ctx(ctx, index, raw)?;
    let name = localized(&ctx, "name", ctx.req(obj, "name")?)?;
    let lat = ctx.coordinate("lat", ctx.req(obj, "lat")?, 90.0)?;
    let lon = ctx.coordinate("lon", ctx.req(obj, "lon")?, 180.0)?;
    let code = match ctx.opt_code(obj, "stationCode")? {
        Some(code) => Some(code),
        None => opt(obj, "short_name")
            .map(|v| localized(&ctx, "short_name", v))
            .transpose()?
            .filter(|s| !s.is_empty()),
    };
    Ok(StationInfo {
        code,
        name,
        position: Some(Position { lat, lon }),
        capacity: ctx.opt_count(obj, "capacity")?,
        post_code: ctx.opt_code(obj, "post_code")?,
        station_id,
    })
}

/// A text field: a plain string (v1, v2) or v3's `[{"text", "language"}]`,
/// of which the first is taken.
fn localized(ctx: &Ctx, field: &str, v: &Value) -> Result<String, FeedError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => {
            let first = items.first().ok_or_else(|| {
                ctx.err(
                    field,
                    Problem::OutOfRange("empty list of translations".into()),
                )
            })?;
            let at = format!("{field}[0]");
            let text = ctx
                .req(ctx.object(&at, first)?, "text")
                .map_err(|e| relocate(e, &at, "text"))?;
            text.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ctx.wrong(&format!("{at}.text"), "a string", text))
        }
        other => Err(ctx.wrong(field, "a string or a list of translations", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_language_is_the_first_in_the_file() {
        let d = parse_discovery(
            br#"{"data": {"nb": {"feeds": [{"name": "station_status", "url": "nb"}]},
                          "en": {"feeds": [{"name": "station_status", "url": "en"}]}}}"#,
        )
        .unwrap();
        assert_eq!(d.feed_url("station_status", None), Some("nb"));
        assert_eq!(d.feed_url("station_status", Some("en")), Some("en"));
    }
}
