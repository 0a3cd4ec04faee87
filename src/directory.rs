//! The station directory: where each station is, and which postcode it
//! counts under.
//!
//! A station's postcode comes, in order, from the feed's own `post_code`; from
//! a [`PostcodeTable`]; else from the nearest station with a known postcode
//! (marked [`PostcodeSource::Inferred`]). A station with none is counted
//! under [`Postcode::unknown`], never dropped.

use crate::feed::{Position, StationId, StationInfo, StationStatus};
use crate::postcode::{Postcode, PostcodeTable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a station's postcode was found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// Externally tagged: timely exchanges data with bincode, which cannot read
// internally tagged enums.
///
/// # Examples
///
/// ```
/// use velib_dataflow::directory::PostcodeSource;
/// use velib_dataflow::feed::StationId;
///
/// let inferred = PostcodeSource::Inferred { from: StationId::Num(7), distance_m: 140 };
/// assert!(inferred.is_inferred());
/// assert_eq!(serde_json::to_string(&inferred)?, r#"{"inferred":{"from":7,"distance_m":140}}"#);
/// assert_eq!(serde_json::to_string(&PostcodeSource::Table)?, r#""table""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[serde(rename_all = "snake_case")]
pub enum PostcodeSource {
    /// The feed's own `post_code`.
    Feed,
    /// The station → postcode table.
    Table,
    /// Taken from the nearest station with a known postcode.
    Inferred {
        /// That station.
        from: StationId,
        /// How far it is, in whole metres.
        distance_m: u32,
    },
    /// No postcode: counted under `unknown`.
    Unknown,
}

impl PostcodeSource {
    /// Whether the postcode was inferred from a neighbour.
    pub fn is_inferred(&self) -> bool {
        matches!(self, PostcodeSource::Inferred { .. })
    }
}

/// One station's directory entry: what it is, where, and its postcode.
///
/// # Examples
///
/// ```
/// use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
///
/// let entry: DirectoryEntry = serde_json::from_str(r#"{"station_id":"10011","code":"10011",
///     "name":"Bourse du Travail","position":{"lat":48.868976638826,"lon":2.3623438552022},
///     "capacity":17,"postcode":"75010","postcode_source":"table"}"#)?;
/// assert_eq!(entry.postcode_source, PostcodeSource::Table);
/// assert_eq!(entry.postcode.as_str(), "75010");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The feed's identifier of the station.
    pub station_id: StationId,
    /// The station's public code.
    pub code: Option<String>,
    /// The station's name (empty when only its status is known).
    pub name: String,
    /// Where it is.
    pub position: Option<Position>,
    /// Number of docks.
    pub capacity: Option<u32>,
    /// The postcode it counts under.
    pub postcode: Postcode,
    /// How that postcode was found.
    pub postcode_source: PostcodeSource,
}

impl DirectoryEntry {
    /// The entry that places `status`'s station by `table` (by its code,
    /// else its id), under [`Postcode::unknown`] when the table does not
    /// know it: what the aggregator uses without a directory topic.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
    /// use velib_dataflow::feed::{StationId, StationStatus};
    /// use velib_dataflow::postcode::PostcodeTable;
    ///
    /// let status = StationStatus {
    ///     station_id: StationId::Num(1), code: Some("16107".into()), bikes_available: 0,
    ///     bike_types: None, docks_available: 0, is_installed: true, is_renting: true,
    ///     is_returning: true, last_reported: None, judged: Default::default(),
    ///     vehicle_types: Default::default(),
    /// };
    /// let entry = DirectoryEntry::placed_by_table(&PostcodeTable::velib(), &status);
    /// assert_eq!((entry.postcode.as_str(), entry.postcode_source), ("75016", PostcodeSource::Table));
    /// ```
    pub fn placed_by_table(table: &PostcodeTable, status: &StationStatus) -> Self {
        let (postcode, postcode_source) =
            match table.lookup(status.code.as_deref(), &status.station_id) {
                Some(postcode) => (*postcode, PostcodeSource::Table),
                None => (Postcode::unknown(), PostcodeSource::Unknown),
            };
        DirectoryEntry {
            station_id: status.station_id.clone(),
            code: status.code.clone(),
            name: String::new(),
            position: None,
            capacity: None,
            postcode,
            postcode_source,
        }
    }
}

/// How to resolve postcodes.
#[derive(Clone, Debug)]
pub struct DirectoryResolver {
    table: PostcodeTable,
    infer: bool,
}

impl DirectoryResolver {
    /// Resolves with `table`, and infers missing postcodes from the nearest
    /// station when `infer` is set.
    pub fn new(table: PostcodeTable, infer: bool) -> Self {
        DirectoryResolver { table, infer }
    }

    /// The table in use.
    pub fn table(&self) -> &PostcodeTable {
        &self.table
    }

    /// Builds the directory of every station in `infos` and of every station
    /// in `statuses` that `infos` lacks (a feed's status often lists a new
    /// station before its information does; such a station gets an entry with
    /// its code only). Entries come out sorted by station id.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::directory::{DirectoryResolver, PostcodeSource};
    /// use velib_dataflow::feed::{Position, StationId, StationInfo};
    /// use velib_dataflow::postcode::PostcodeTable;
    ///
    /// let info = |id: u64, code: &str, lat: f64| StationInfo {
    ///     station_id: StationId::Num(id), code: Some(code.into()), name: String::new(),
    ///     position: Some(Position { lat, lon: 2.3 }), capacity: None, post_code: None,
    /// };
    /// // 16107 is in the shipped table; 99999 is not, and is 100 m away.
    /// let infos = [info(213688169, "16107", 48.86), info(1, "99999", 48.8609)];
    /// let dir = DirectoryResolver::new(PostcodeTable::velib(), true).resolve(&infos, &[]);
    /// assert_eq!(dir[0].postcode.as_str(), "75016");
    /// assert!(matches!(dir[0].postcode_source, PostcodeSource::Inferred { .. }));
    /// ```
    pub fn resolve(
        &self,
        infos: &[StationInfo],
        statuses: &[StationStatus],
    ) -> Vec<DirectoryEntry> {
        let mut entries: BTreeMap<StationId, DirectoryEntry> = BTreeMap::new();
        for info in infos {
            let (postcode, source) = self.known_postcode(
                info.post_code.as_deref(),
                info.code.as_deref(),
                &info.station_id,
            );
            entries.insert(
                info.station_id.clone(),
                DirectoryEntry {
                    station_id: info.station_id.clone(),
                    code: info.code.clone(),
                    name: info.name.clone(),
                    position: info.position,
                    capacity: info.capacity,
                    postcode,
                    postcode_source: source,
                },
            );
        }
        for status in statuses {
            entries.entry(status.station_id.clone()).or_insert_with(|| {
                let (postcode, source) =
                    self.known_postcode(None, status.code.as_deref(), &status.station_id);
                DirectoryEntry {
                    station_id: status.station_id.clone(),
                    code: status.code.clone(),
                    name: String::new(),
                    position: None,
                    capacity: None,
                    postcode,
                    postcode_source: source,
                }
            });
        }
        if self.infer {
            infer_from_nearest(&mut entries);
        }
        entries.into_values().collect()
    }

    fn known_postcode(
        &self,
        feed: Option<&str>,
        code: Option<&str>,
        id: &StationId,
    ) -> (Postcode, PostcodeSource) {
        if let Some(pc) = feed.and_then(Postcode::parse) {
            return (pc, PostcodeSource::Feed);
        }
        match self.table.lookup(code, id) {
            Some(pc) => (*pc, PostcodeSource::Table),
            None => (Postcode::unknown(), PostcodeSource::Unknown),
        }
    }
}

/// Gives each station without a postcode that of the nearest station whose
/// postcode is known (from the feed or the table), ties going to the lowest
/// station id. Inferred postcodes are never a source for others, so the
/// result does not depend on the order of inference.
fn infer_from_nearest(entries: &mut BTreeMap<StationId, DirectoryEntry>) {
    let known: Vec<(StationId, Position, Postcode)> = entries
        .values()
        .filter(|e| {
            matches!(
                e.postcode_source,
                PostcodeSource::Feed | PostcodeSource::Table
            )
        })
        .filter_map(|e| Some((e.station_id.clone(), e.position?, e.postcode)))
        .collect();
    if known.is_empty() {
        return;
    }
    for entry in entries.values_mut() {
        if entry.postcode_source != PostcodeSource::Unknown {
            continue;
        }
        let Some(here) = entry.position else { continue };
        let mut best: Option<(f64, &(StationId, Position, Postcode))> = None;
        for candidate in &known {
            let d = here.distance_m(&candidate.1);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, candidate));
            }
        }
        if let Some((d, (from, _, postcode))) = best {
            entry.postcode = *postcode;
            entry.postcode_source = PostcodeSource::Inferred {
                from: from.clone(),
                distance_m: d.round().min(f64::from(u32::MAX)) as u32,
            };
        }
    }
}
