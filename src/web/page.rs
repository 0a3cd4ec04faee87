//! What the page shows, kept up to date one committed epoch at a time: the
//! postcodes' records as the output topic has them, the stations as the
//! state topic has them, the city's totals and their recent history.
//!
//! A browser first gets a [`Snapshot`] of all of it, then one
//! [`EpochEvent`] per committed epoch: the postcodes and stations that
//! changed. Applying the events to the snapshot gives the next snapshot.

use super::committed::CommittedEpoch;
use crate::counts::StationCounts;
use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{FeedTime, StationId, StationStatus};
use crate::output::PostcodeRecord;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Epochs of city totals the chart shows.
pub const HISTORY_EPOCHS: usize = 120;

/// The city's totals: the sums of the postcodes' records.
///
/// # Examples
///
/// ```
/// use velib_dataflow::output::PostcodeRecord;
/// use velib_dataflow::web::page::Totals;
///
/// let record: PostcodeRecord = serde_json::from_str(r#"{"postcode":"75016","nbr_total":12,"nbr_meca":7,"nbr_elec":5,
///   "nbr_docks":3,"nbr_stations":2,"nbr_stations_renting":2,"nbr_stations_not_renting":0,"nbr_bikes_unavailable":0,
///   "nbr_stations_inferred":0,"nbr_stations_empty":1,"epoch":3,"feed_time":1732004538}"#)?;
/// let totals = Totals::of([&record, &record]);
/// assert_eq!((totals.nbr_total, totals.nbr_stations_empty), (24, 2));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Bikes a rider can take.
    pub nbr_total: i64,
    /// Of which mechanical.
    pub nbr_meca: i64,
    /// Of which electric.
    pub nbr_elec: i64,
    /// Docks a rider can return a bike to.
    pub nbr_docks: i64,
    /// Stations.
    pub nbr_stations: i64,
    /// Stations installed and renting.
    pub nbr_stations_renting: i64,
    /// Renting stations with no bike.
    pub nbr_stations_empty: i64,
    /// Returning stations with no free dock.
    pub nbr_stations_full: i64,
    /// Stations whose last report is too old to trust.
    pub nbr_stations_stale: i64,
    /// Of `nbr_total`, the bikes at stale stations.
    pub nbr_bikes_stale: i64,
}

impl Totals {
    /// The sums of `records`.
    pub fn of<'r>(records: impl IntoIterator<Item = &'r PostcodeRecord>) -> Totals {
        // Saturating: a record is what the topic holds, and a hostile one
        // must not overflow (and panic) the page.
        records.into_iter().fold(Totals::default(), |t, r| Totals {
            nbr_total: t.nbr_total.saturating_add(r.nbr_total),
            nbr_meca: t.nbr_meca.saturating_add(r.nbr_meca),
            nbr_elec: t.nbr_elec.saturating_add(r.nbr_elec),
            nbr_docks: t.nbr_docks.saturating_add(r.nbr_docks),
            nbr_stations: t.nbr_stations.saturating_add(r.nbr_stations),
            nbr_stations_renting: t
                .nbr_stations_renting
                .saturating_add(r.nbr_stations_renting),
            nbr_stations_empty: t.nbr_stations_empty.saturating_add(r.nbr_stations_empty),
            nbr_stations_full: t.nbr_stations_full.saturating_add(r.nbr_stations_full),
            nbr_stations_stale: t.nbr_stations_stale.saturating_add(r.nbr_stations_stale),
            nbr_bikes_stale: t.nbr_bikes_stale.saturating_add(r.nbr_bikes_stale),
        })
    }
}

/// One epoch of the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The epoch.
    pub epoch: Epoch,
    /// Its feed time.
    pub feed_time: Option<FeedTime>,
    /// Bikes a rider can take in the city.
    pub nbr_total: i64,
    /// Of which mechanical.
    pub nbr_meca: i64,
    /// Of which electric.
    pub nbr_elec: i64,
}

/// A station on the map: where it is, and what a rider finds there, counted
/// as the aggregator counts it ([`StationCounts::placed`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StationView {
    /// Its name (empty when the directory does not know it).
    pub name: String,
    /// Latitude, when known.
    pub lat: Option<f64>,
    /// Longitude, when known.
    pub lon: Option<f64>,
    /// The postcode it counts under, when the directory says.
    pub postcode: Option<String>,
    /// Bikes a rider can take (0 at a station not renting).
    pub bikes: i64,
    /// Of which mechanical.
    pub mechanical: i64,
    /// Of which e-bikes.
    pub ebikes: i64,
    /// Docks a rider can return a bike to.
    pub docks: i64,
    /// Installed and renting.
    pub renting: bool,
    /// Installed and returning.
    pub returning: bool,
    /// Its last report is too old to trust.
    pub stale: bool,
}

impl StationView {
    /// The view of a station with `status`, placed by `entry` if known.
    pub fn new(status: &StationStatus, entry: Option<&DirectoryEntry>) -> StationView {
        let station = StationCounts::of_station(status);
        let counts = station.placed(false);
        let position = entry.and_then(|e| e.position);
        StationView {
            name: entry.map(|e| e.name.clone()).unwrap_or_default(),
            lat: position.map(|p| p.lat),
            lon: position.map(|p| p.lon),
            postcode: entry.map(|e| e.postcode.to_string()),
            bikes: counts.bikes,
            mechanical: counts.mechanical,
            ebikes: counts.ebikes,
            docks: counts.docks,
            renting: station.renting,
            returning: station.returning,
            stale: station.stale,
        }
    }
}

/// How the page's reader is doing: what an operator asks when the page
/// shows nothing, or less than expected.
///
/// # Examples
///
/// ```
/// use velib_dataflow::web::page::ReaderHealth;
///
/// let health = ReaderHealth { waiting_for: Some("velib-projet-clean did not appear".into()), ..Default::default() };
/// assert!(serde_json::to_string(&health)?.contains(r#""malformed":0"#));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReaderHealth {
    /// Records passed over as unreadable.
    pub malformed: u64,
    /// Records of epochs already shown.
    pub late: u64,
    /// Why no reader is open yet (the topics are not there, the brokers do
    /// not answer), if none is.
    pub waiting_for: Option<String>,
}

/// Everything the page shows, as a browser gets it when it connects.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot<'p> {
    /// The last committed epoch, `None` before the first.
    pub epoch: Option<Epoch>,
    /// Its feed time.
    pub feed_time: Option<FeedTime>,
    /// How old the feed was when it was written.
    pub feed_age_s: Option<i64>,
    /// The server's clock, in seconds since the Unix epoch.
    pub server_time: i64,
    /// The page warns that the feed is stale past this age.
    pub stale_after_s: i64,
    /// The city's totals.
    pub totals: Totals,
    /// The last [`HISTORY_EPOCHS`] epochs' totals, oldest first.
    pub history: &'p VecDeque<HistoryEntry>,
    /// Every postcode's record.
    pub postcodes: &'p BTreeMap<String, PostcodeRecord>,
    /// Every station with a status, by id.
    pub stations: BTreeMap<String, StationView>,
    /// Why there are no stations, if there are none.
    pub stations_note: Option<&'p str>,
    /// How the reader is doing.
    pub reader: &'p ReaderHealth,
}

/// One committed epoch's changes, as a browser gets them.
#[derive(Clone, Debug, Serialize)]
pub struct EpochEvent<'e> {
    /// The epoch.
    pub epoch: Epoch,
    /// Its feed time.
    pub feed_time: Option<FeedTime>,
    /// How old the feed was when it was written.
    pub feed_age_s: Option<i64>,
    /// The server's clock.
    pub server_time: i64,
    /// The city's totals after it.
    pub totals: Totals,
    /// Its entry in the chart.
    pub history_entry: HistoryEntry,
    /// Postcodes changed: the new record, `null` when gone.
    pub postcodes: &'e BTreeMap<String, Option<PostcodeRecord>>,
    /// Stations changed: the new view, `null` when gone.
    pub stations: BTreeMap<String, Option<StationView>>,
    /// Why there are no stations, if there are none.
    pub stations_note: Option<&'e str>,
}

/// The page's state: [`PageState::apply`] each committed epoch.
///
/// # Examples
///
/// ```
/// use velib_dataflow::web::committed::CommittedEpoch;
/// use velib_dataflow::web::page::PageState;
///
/// let mut page = PageState::default();
/// let event = page.apply(CommittedEpoch { feed_time: Some(1732004538), ..CommittedEpoch::empty(1) });
/// assert!(event.contains(r#""epoch":1"#));
/// assert!(page.snapshot_json(1732004540, &Default::default()).contains(r#""feed_time":1732004538"#));
/// ```
#[derive(Clone, Debug)]
pub struct PageState {
    epoch: Option<Epoch>,
    feed_time: Option<FeedTime>,
    feed_age_s: Option<i64>,
    stale_after_s: i64,
    postcodes: BTreeMap<String, PostcodeRecord>,
    totals: Totals,
    statuses: HashMap<StationId, StationStatus>,
    directory: HashMap<StationId, DirectoryEntry>,
    history: VecDeque<HistoryEntry>,
    stations_note: Option<String>,
}

impl Default for PageState {
    fn default() -> Self {
        PageState {
            epoch: None,
            feed_time: None,
            feed_age_s: None,
            // GBFS: a station_status feed is never more than 5 minutes old.
            stale_after_s: 300,
            postcodes: BTreeMap::new(),
            totals: Totals::default(),
            statuses: HashMap::new(),
            directory: HashMap::new(),
            history: VecDeque::new(),
            stations_note: None,
        }
    }
}

impl PageState {
    /// The last epoch applied.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// Applies a committed epoch, and returns its event as JSON.
    pub fn apply(&mut self, epoch: CommittedEpoch) -> String {
        self.epoch = Some(epoch.epoch);
        self.feed_time = epoch.feed_time.or(self.feed_time);
        self.feed_age_s = epoch.feed_age_s;
        for (postcode, record) in &epoch.postcodes {
            match record {
                Some(r) => self.postcodes.insert(postcode.clone(), r.clone()),
                None => self.postcodes.remove(postcode),
            };
        }
        let mut changed: Vec<&StationId> = epoch.statuses.keys().collect();
        changed.extend(epoch.directory.keys());
        changed.sort();
        changed.dedup();
        for (id, status) in &epoch.statuses {
            match status {
                Some(s) => self.statuses.insert(id.clone(), s.clone()),
                None => self.statuses.remove(id),
            };
        }
        for (id, entry) in &epoch.directory {
            match entry {
                Some(e) => self.directory.insert(id.clone(), e.clone()),
                None => self.directory.remove(id),
            };
        }
        let stations = changed
            .into_iter()
            .map(|id| (id.to_string(), self.station(id)))
            .collect();
        self.stations_note = epoch.stations_note;
        self.totals = Totals::of(self.postcodes.values());
        let history_entry = HistoryEntry {
            epoch: epoch.epoch,
            feed_time: self.feed_time,
            nbr_total: self.totals.nbr_total,
            nbr_meca: self.totals.nbr_meca,
            nbr_elec: self.totals.nbr_elec,
        };
        if self.history.len() == HISTORY_EPOCHS {
            self.history.pop_front();
        }
        self.history.push_back(history_entry);
        let event = EpochEvent {
            epoch: epoch.epoch,
            feed_time: self.feed_time,
            feed_age_s: self.feed_age_s,
            server_time: crate::freshness::unix_now(),
            totals: self.totals,
            history_entry,
            postcodes: &epoch.postcodes,
            stations,
            stations_note: self.stations_note.as_deref(),
        };
        serde_json::to_string(&event).expect("an event serialises")
    }

    fn station(&self, id: &StationId) -> Option<StationView> {
        let status = self.statuses.get(id)?;
        Some(StationView::new(status, self.directory.get(id)))
    }

    /// Everything, as JSON, stamped with `server_time`.
    pub fn snapshot_json(&self, server_time: i64, reader: &ReaderHealth) -> String {
        let stations = self
            .statuses
            .iter()
            .map(|(id, status)| {
                (
                    id.to_string(),
                    StationView::new(status, self.directory.get(id)),
                )
            })
            .collect();
        let snapshot = Snapshot {
            epoch: self.epoch,
            feed_time: self.feed_time,
            feed_age_s: self.feed_age_s,
            server_time,
            stale_after_s: self.stale_after_s,
            totals: self.totals,
            history: &self.history,
            postcodes: &self.postcodes,
            stations,
            stations_note: self.stations_note.as_deref(),
            reader,
        };
        serde_json::to_string(&snapshot).expect("a snapshot serialises")
    }
}
