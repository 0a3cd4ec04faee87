//! Telling a status payload's format by its content, not its name or URL:
//! a producer pointed at a URL and a replay pointed at a file both accept
//! either format.

use super::vehicle_types::VehicleTypes;
use super::{gbfs, opendata_paris, FeedError, InformationSnapshot, StatusSnapshot};
use serde_json::{Map, Value};

/// Parses a status payload of either format: a GBFS `station_status`
/// (no directory in it), or a City of Paris export (which carries its own
/// directory information).
///
/// # Examples
///
/// ```
/// use gbfs_feed::payload;
///
/// let gbfs = br#"{"last_updated": 1, "ttl": 10, "data": {"stations": [{"station_id": "a",
///     "num_bikes_available": 1, "num_docks_available": 2,
///     "is_installed": true, "is_renting": true, "is_returning": true}]}}"#;
/// let (status, information) = payload::parse_status(gbfs)?;
/// assert_eq!(status.stations.len(), 1);
/// assert!(information.is_none());
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn parse_status(
    bytes: &[u8],
) -> Result<(StatusSnapshot, Option<InformationSnapshot>), FeedError> {
    parse_status_typed(bytes, None)
}

/// As [`parse_status`], a GBFS payload's vehicles classified by the
/// system's vehicle types when known ([`gbfs::parse_status_typed`]).
pub fn parse_status_typed(
    bytes: &[u8],
    types: Option<&VehicleTypes>,
) -> Result<(StatusSnapshot, Option<InformationSnapshot>), FeedError> {
    if looks_like_opendata(bytes) {
        let (status, information) = opendata_paris::parse(bytes)?;
        Ok((status, Some(information)))
    } else {
        Ok((gbfs::parse_status_typed(bytes, types)?, None))
    }
}

/// Each station's own JSON object in a status payload of either format, in
/// payload order: what the parsers read [`StatusSnapshot::stations`] from,
/// one for one. `None` when the payload does not have that shape.
///
/// # Examples
///
/// ```
/// use gbfs_feed::payload;
///
/// // Fields the model drops, such as an operator's own, are still there.
/// let objects = payload::station_objects(br#"{"data": {"stations": [{"station_id": "a", "x_note": "closed"}]}}"#).unwrap();
/// assert_eq!(objects[0]["x_note"], "closed");
/// assert!(payload::station_objects(b"[1, 2]").is_none());
/// ```
pub fn station_objects(bytes: &[u8]) -> Option<Vec<Map<String, Value>>> {
    let root: Value = serde_json::from_slice(bytes).ok()?;
    let stations = match root {
        Value::Array(rows) => rows,
        Value::Object(mut top) => match top.remove("data") {
            Some(Value::Object(mut data)) => match data.remove("stations")? {
                Value::Array(rows) => rows,
                _ => return None,
            },
            _ => match top.remove("results")? {
                Value::Array(rows) => rows,
                _ => return None,
            },
        },
        _ => return None,
    };
    stations
        .into_iter()
        .map(|row| match row {
            Value::Object(fields) => Some(fields),
            _ => None,
        })
        .collect()
}

/// Each station's own JSON object in a status payload, by station id;
/// empty when the payload's objects do not match `status` one for one.
///
/// # Examples
///
/// ```
/// use gbfs_feed::{payload, StationId};
///
/// let bytes = br#"{"last_updated": 1, "data": {"stations": [{"station_id": "a", "num_bikes_available": 1,
///     "num_docks_available": 2, "is_installed": 1, "is_renting": 1, "is_returning": 1, "x_note": "new"}]}}"#;
/// let (status, _) = payload::parse_status(bytes)?;
/// let fields = payload::station_fields(bytes, &status);
/// assert_eq!(fields[&StationId::from("a")]["x_note"], "new");
/// # Ok::<(), gbfs_feed::FeedError>(())
/// ```
pub fn station_fields(
    bytes: &[u8],
    status: &StatusSnapshot,
) -> std::collections::HashMap<super::StationId, Map<String, Value>> {
    match station_objects(bytes) {
        Some(objects) if objects.len() == status.stations.len() => status
            .stations
            .iter()
            .map(|s| s.station_id.clone())
            .zip(objects)
            .collect(),
        _ => std::collections::HashMap::new(),
    }
}

/// The Paris export is a JSON array, or an object with `results`; GBFS is an
/// object with `data`.
fn looks_like_opendata(bytes: &[u8]) -> bool {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => true,
        Some(b'{') => {
            #[derive(serde::Deserialize)]
            struct Probe {
                results: Option<serde::de::IgnoredAny>,
                data: Option<serde::de::IgnoredAny>,
            }
            serde_json::from_slice::<Probe>(bytes)
                .is_ok_and(|p| p.results.is_some() && p.data.is_none())
        }
        _ => false,
    }
}
