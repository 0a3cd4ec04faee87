//! The City of Paris open-data export `velib-disponibilite-en-temps-reel`.
//!
//! Derived from the Vélib' feed but shaped differently: a JSON array of flat
//! records (or the API's `{"results": [...]}`), no `station_id` (stations are
//! known by `stationcode`, which becomes the [`StationId`]), booleans as
//! `"OUI"`/`"NON"`, `mechanical`/`ebike` as flat integers, and a position in
//! `coordonnees_geo`. It has no snapshot time of its own: the latest
//! `duedate` stands for it, which moves only about once an hour, so it orders
//! snapshots but does not tell their freshness.
//!
//! # Examples
//!
//! ```
//! use gbfs_feed::opendata_paris;
//!
//! let (status, info) = opendata_paris::parse(br#"[{"stationcode": "16107",
//!     "name": "Benjamin Godard - Victor Hugo", "is_installed": "OUI", "capacity": 35,
//!     "numdocksavailable": 20, "numbikesavailable": 15, "mechanical": 10, "ebike": 5,
//!     "is_renting": "OUI", "is_returning": "OUI", "duedate": "2024-11-05T09:00:01+01:00",
//!     "coordonnees_geo": {"lon": 2.275725, "lat": 48.865983}}]"#)?;
//! assert_eq!(status.stations[0].bikes_available, 15);
//! assert_eq!(info.stations[0].code.as_deref(), Some("16107"));
//! # Ok::<(), gbfs_feed::FeedError>(())
//! ```

use super::json::{opt, parse_payload, Ctx};
use super::{
    BikeTypes, FeedError, FeedKind, FeedTimeKind, InformationSnapshot, Position, Problem,
    StationId, StationInfo, StationStatus, StatusSnapshot,
};
use serde_json::Value;
use std::collections::HashSet;

/// Parses one export into the status and the directory it carries.
///
/// # Examples
///
/// ```
/// use gbfs_feed::opendata_paris;
///
/// let path = concat!(env!("CARGO_MANIFEST_DIR"),
///     "/../../tests/fixtures/opendata-paris/velib-series/velib_data_20241105_093001.json");
/// let (status, directory) = opendata_paris::parse(&std::fs::read(path).unwrap())?;
/// assert_eq!(status.stations.len(), directory.stations.len());
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse(bytes: &[u8]) -> Result<(StatusSnapshot, InformationSnapshot), FeedError> {
    let ctx = Ctx::new(FeedKind::OpenDataParis);
    let root = parse_payload(ctx.feed, bytes)?;
    let records = match &root {
        Value::Array(items) => items,
        Value::Object(o) => ctx.array("results", ctx.req(o, "results")?)?,
        other => return Err(ctx.wrong("(top level)", "an array of station records", other)),
    };
    let mut statuses = Vec::with_capacity(records.len());
    let mut infos = Vec::with_capacity(records.len());
    let mut seen = HashSet::new();
    let mut feed_time = None::<i64>;
    for (i, raw) in records.iter().enumerate() {
        let at_index = ctx.at_station(format!("#{i}"));
        let obj = at_index.object(&format!("[{i}]"), raw)?;
        let code = at_index
            .opt_code(obj, "stationcode")?
            .ok_or_else(|| at_index.err("stationcode", Problem::Missing))?;
        let ctx = ctx.at_station(code.clone());
        if !seen.insert(code.clone()) {
            return Err(FeedError::DuplicateStation {
                feed: ctx.feed,
                station: code,
            });
        }
        let due = ctx.time("duedate", ctx.req(obj, "duedate")?)?;
        feed_time = Some(feed_time.map_or(due, |t| t.max(due)));
        let station_id = StationId::Text(code.clone());
        let mechanical = ctx.req_count(obj, "mechanical")?;
        let ebike = ctx.req_count(obj, "ebike")?;
        statuses.push(StationStatus {
            station_id: station_id.clone(),
            code: Some(code.clone()),
            bikes_available: ctx.req_count(obj, "numbikesavailable")?,
            bike_types: Some(BikeTypes {
                mechanical,
                ebike,
                other: 0,
            }),
            docks_available: ctx.req_count(obj, "numdocksavailable")?,
            is_installed: ctx.req_flag(obj, "is_installed")?,
            is_renting: ctx.req_flag(obj, "is_renting")?,
            is_returning: ctx.req_flag(obj, "is_returning")?,
            last_reported: Some(due),
            judged: Default::default(),
            vehicle_types: Default::default(),
        });
        let position = match opt(obj, "coordonnees_geo") {
            None => None,
            Some(geo) => {
                let geo = ctx.object("coordonnees_geo", geo)?;
                // Name the nested field, and keep whether it is missing or null.
                let part = |name: &str| match geo.get(name) {
                    None => Err(ctx.err(format!("coordonnees_geo.{name}"), Problem::Missing)),
                    Some(Value::Null) => {
                        Err(ctx.err(format!("coordonnees_geo.{name}"), Problem::Null))
                    }
                    Some(v) => Ok(v),
                };
                let lat = part("lat")?;
                let lon = part("lon")?;
                Some(Position {
                    lat: ctx.coordinate("coordonnees_geo.lat", lat, 90.0)?,
                    lon: ctx.coordinate("coordonnees_geo.lon", lon, 180.0)?,
                })
            }
        };
        let name = match ctx.req(obj, "name")? {
            Value::String(s) => s.clone(),
            other => return Err(ctx.wrong("name", "a string", other)),
        };
        infos.push(StationInfo {
            station_id,
            code: Some(code),
            name,
            position,
            capacity: ctx.opt_count(obj, "capacity")?,
            post_code: None,
        });
    }
    let Some(feed_time) = feed_time else {
        return Err(ctx.outage("the export lists no stations"));
    };
    let status = StatusSnapshot {
        feed_time,
        feed_time_kind: FeedTimeKind::LatestReport,
        version: None,
        ttl: None,
        stations: statuses,
        undefined_vehicle_types: Vec::new(),
        vehicle_types_dropped: Vec::new(),
    };
    let info = InformationSnapshot {
        feed_time,
        version: None,
        ttl: None,
        stations: infos,
    };
    Ok((status, info))
}
