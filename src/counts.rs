//! Per-postcode counts, and each station's contribution to them.
//!
//! [`PostcodeCounts`] is the *difference type* the aggregation
//! accumulates: a station contributes its counts, and
//! leaving contributes their negation. Sums of contributions are what
//! differential dataflow maintains, so a change at one station costs work in
//! proportion to that change, not to the size of its postcode.
//!
//! [`PostcodeTotals`] is what the aggregation outputs per postcode: the
//! counts, and since when its longest-empty and longest-full stations have
//! been so. A minimum does not add up, so it is kept beside the sums, not
//! in them.

use crate::feed::{FeedTime, StationStatus};
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

/// Availability counts of one postcode (or one station's contribution).
///
/// Bikes count only where a rider can take them: at stations installed and
/// renting. Docks count only where a rider can return a bike: at stations
/// installed and returning.
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::PostcodeCounts;
///
/// let a = PostcodeCounts { bikes: 3, mechanical: 2, ebikes: 1, stations: 1, stations_renting: 1, ..Default::default() };
/// let b = PostcodeCounts { bikes: 5, mechanical: 5, stations: 2, stations_renting: 1, ..Default::default() };
/// // Counts are the dataflow's difference type: they add up.
/// let mut sum = a;
/// sum += &b;
/// assert_eq!((sum.bikes, sum.stations, sum.stations_not_renting()), (8, 3, 1));
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct PostcodeCounts {
    /// Bikes a rider can take (`nbr_total`).
    pub bikes: i64,
    /// Mechanical bikes a rider can take (`nbr_meca`).
    pub mechanical: i64,
    /// E-bikes a rider can take (`nbr_elec`).
    pub ebikes: i64,
    /// Docks a rider can return a bike to.
    pub docks: i64,
    /// Stations, whatever their state.
    pub stations: i64,
    /// Stations installed and renting.
    pub stations_renting: i64,
    /// Bikes at stations that are not installed or not renting: there, but
    /// not available (what the old Spark job counted on top of `bikes`).
    pub bikes_unavailable: i64,
    /// Stations whose postcode was inferred from a neighbour.
    pub stations_inferred: i64,
    /// Stations installed and renting with no bike to take: a rider finds
    /// nothing there.
    pub stations_empty: i64,
    /// Stations installed and returning with no free dock: a rider cannot
    /// return a bike there.
    pub stations_full: i64,
    /// Docks free at stations installed and renting: with [`Self::bikes`],
    /// the denominator of [`Self::occupancy`].
    pub docks_renting: i64,
    /// Stations whose last report is too old to trust
    /// ([`crate::freshness::StalePolicy`]), whatever their state.
    pub stations_stale: i64,
    /// Of [`Self::bikes`], those at stale stations: a rider should not count
    /// on them.
    pub bikes_stale: i64,
    /// Of [`Self::stations_empty`], those empty for long (the sequencer's
    /// limit, 30 minutes by default).
    pub stations_empty_long: i64,
    /// Of [`Self::stations_full`], those full for long.
    pub stations_full_long: i64,
}

impl PostcodeCounts {
    /// One station's contribution, before its postcode is known.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::counts::PostcodeCounts;
    /// use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
    ///
    /// let closed = StationStatus {
    ///     station_id: StationId::Num(1), code: None, bikes_available: 10,
    ///     bike_types: Some(BikeTypes { mechanical: 6, ebike: 4, other: 0 }),
    ///     docks_available: 2, is_installed: true, is_renting: false,
    ///     is_returning: true, last_reported: None, judged: Default::default(),
    ///     vehicle_types: Default::default(),
    /// };
    /// let c = PostcodeCounts::of_station(&closed);
    /// assert_eq!((c.bikes, c.bikes_unavailable, c.stations, c.stations_renting), (0, 10, 1, 0));
    /// ```
    pub fn of_station(status: &StationStatus) -> PostcodeCounts {
        StationCounts::of_station(status).placed(false)
    }

    /// Stations that are not installed or not renting.
    pub fn stations_not_renting(&self) -> i64 {
        self.stations - self.stations_renting
    }

    /// How full the renting stations are: bikes over bikes and free docks,
    /// at stations installed and renting; `None` when they hold neither.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::counts::PostcodeCounts;
    ///
    /// let counts = PostcodeCounts { bikes: 5, docks_renting: 15, ..Default::default() };
    /// assert_eq!(counts.occupancy(), Some(0.25));
    /// assert_eq!(PostcodeCounts::default().occupancy(), None);
    /// ```
    pub fn occupancy(&self) -> Option<f64> {
        let places = self.bikes + self.docks_renting;
        (places > 0).then(|| self.bikes as f64 / places as f64)
    }

    fn fields_mut(&mut self) -> [&mut i64; 15] {
        [
            &mut self.bikes,
            &mut self.mechanical,
            &mut self.ebikes,
            &mut self.docks,
            &mut self.stations,
            &mut self.stations_renting,
            &mut self.bikes_unavailable,
            &mut self.stations_inferred,
            &mut self.stations_empty,
            &mut self.stations_full,
            &mut self.docks_renting,
            &mut self.stations_stale,
            &mut self.bikes_stale,
            &mut self.stations_empty_long,
            &mut self.stations_full_long,
        ]
    }

    fn fields(&self) -> [i64; 15] {
        [
            self.bikes,
            self.mechanical,
            self.ebikes,
            self.docks,
            self.stations,
            self.stations_renting,
            self.bikes_unavailable,
            self.stations_inferred,
            self.stations_empty,
            self.stations_full,
            self.docks_renting,
            self.stations_stale,
            self.bikes_stale,
            self.stations_empty_long,
            self.stations_full_long,
        ]
    }
}

/// What one station contributes, before its postcode is known: the fields
/// of its status the counts use, as the feed gives them, and nothing else,
/// so that the dataflow's per-station state stays small (its since-times,
/// which few stations have, are kept apart).
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::{PostcodeCounts, StationCounts};
/// use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
///
/// let status = StationStatus {
///     station_id: StationId::Num(1), code: None, bikes_available: 3,
///     bike_types: Some(BikeTypes { mechanical: 2, ebike: 1, other: 0 }),
///     docks_available: 9, is_installed: true, is_renting: true,
///     is_returning: true, last_reported: None, judged: Default::default(),
///     vehicle_types: Default::default(),
/// };
/// let station = StationCounts::of_station(&status);
/// // Placed under a postcode, it is exactly the station's PostcodeCounts.
/// assert_eq!(station.placed(false), PostcodeCounts::of_station(&status));
/// assert_eq!(station.placed(true).stations_inferred, 1);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct StationCounts {
    /// Bikes at the station (`num_bikes_available`), whatever its flags.
    pub bikes_available: u32,
    /// Of which mechanical, when the feed types them.
    pub mechanical: u32,
    /// Of which e-bikes, when the feed types them.
    pub ebikes: u32,
    /// Docks free (`num_docks_available`), whatever its flags.
    pub docks_available: u32,
    /// Installed and renting: a rider can take its bikes.
    pub renting: bool,
    /// Installed and returning: a rider can return a bike to its docks.
    pub returning: bool,
    /// Its last report is too old to trust (as the snapshot was judged).
    pub stale: bool,
    /// Empty for long (as judged).
    pub empty_long: bool,
    /// Full for long (as judged).
    pub full_long: bool,
    /// Since when it has been empty (as judged), while it is.
    pub empty_since: Option<FeedTime>,
    /// Since when it has been full (as judged), while it is.
    pub full_since: Option<FeedTime>,
}

impl StationCounts {
    /// The counts of `status`.
    pub fn of_station(status: &StationStatus) -> StationCounts {
        let types = status.bike_types.unwrap_or_default();
        StationCounts {
            bikes_available: status.bikes_available,
            mechanical: types.mechanical,
            ebikes: types.ebike,
            docks_available: status.docks_available,
            renting: status.is_rentable(),
            returning: status.is_installed && status.is_returning,
            stale: status.judged.stale,
            empty_long: status.judged.empty_long,
            full_long: status.judged.full_long,
            empty_since: status.judged.empty_since,
            full_since: status.judged.full_since,
        }
    }

    /// Since when the station has been empty, if it is counted empty now
    /// (installed, renting, no bike): what its postcode's longest-empty
    /// time is the earliest of.
    pub fn counted_empty_since(&self) -> Option<FeedTime> {
        self.empty_since
            .filter(|_| self.renting && self.bikes_available == 0)
    }

    /// Since when the station has been full, if it is counted full now
    /// (installed, returning, no free dock).
    pub fn counted_full_since(&self) -> Option<FeedTime> {
        self.full_since
            .filter(|_| self.returning && self.docks_available == 0)
    }

    /// What the station adds to its postcode's counts, its postcode
    /// `inferred` from a neighbour or not: bikes only where a rider can take
    /// them, docks only where a rider can return one.
    pub fn placed(&self, inferred: bool) -> PostcodeCounts {
        let rider_can = |yes: bool, n: u32| if yes { i64::from(n) } else { 0 };
        PostcodeCounts {
            bikes: rider_can(self.renting, self.bikes_available),
            mechanical: rider_can(self.renting, self.mechanical),
            ebikes: rider_can(self.renting, self.ebikes),
            docks: rider_can(self.returning, self.docks_available),
            stations: 1,
            stations_renting: i64::from(self.renting),
            bikes_unavailable: rider_can(!self.renting, self.bikes_available),
            stations_inferred: i64::from(inferred),
            stations_empty: i64::from(self.renting && self.bikes_available == 0),
            stations_full: i64::from(self.returning && self.docks_available == 0),
            docks_renting: rider_can(self.renting, self.docks_available),
            stations_stale: i64::from(self.stale),
            bikes_stale: rider_can(self.renting && self.stale, self.bikes_available),
            stations_empty_long: i64::from(self.empty_long),
            stations_full_long: i64::from(self.full_long),
        }
    }
}

/// What the aggregation outputs for a postcode: its [`PostcodeCounts`], and
/// since when (feed time) the station empty for the longest has been empty,
/// and the one full for the longest full: the smallest `empty_since` and
/// `full_since` of its stations, `None` when none is.
///
/// These are times, not durations, so that a postcode's value changes only
/// when one of its stations does: how long is the epoch's feed time minus
/// the time, and a replay gives the same answer as the live run.
///
/// # Examples
///
/// ```
/// use velib_dataflow::counts::{PostcodeCounts, PostcodeTotals};
///
/// let counts = PostcodeCounts { bikes: 3, stations: 2, stations_empty: 1, ..Default::default() };
/// let totals = PostcodeTotals { counts, longest_empty_since: Some(1_000), longest_full_since: None };
/// // Empty for 15 minutes at feed time 1,900.
/// assert_eq!(totals.longest_empty_for(1_900), Some(900));
/// // Counts alone have no longest.
/// assert_eq!(PostcodeTotals::from(counts).longest_empty_since, None);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct PostcodeTotals {
    /// The counts, summed over the postcode's stations.
    pub counts: PostcodeCounts,
    /// The earliest `empty_since` of its empty stations.
    pub longest_empty_since: Option<FeedTime>,
    /// The earliest `full_since` of its full stations.
    pub longest_full_since: Option<FeedTime>,
}

impl PostcodeTotals {
    /// How long, at feed time `now`, the longest-empty station has been
    /// empty (0 for a time after `now`, which a wrong clock can give).
    pub fn longest_empty_for(&self, now: FeedTime) -> Option<i64> {
        self.longest_empty_since
            .map(|since| now.saturating_sub(since).max(0))
    }

    /// How long, at feed time `now`, the longest-full station has been full.
    pub fn longest_full_for(&self, now: FeedTime) -> Option<i64> {
        self.longest_full_since
            .map(|since| now.saturating_sub(since).max(0))
    }
}

impl From<PostcodeCounts> for PostcodeTotals {
    fn from(counts: PostcodeCounts) -> Self {
        PostcodeTotals {
            counts,
            longest_empty_since: None,
            longest_full_since: None,
        }
    }
}

impl std::ops::AddAssign<&PostcodeCounts> for PostcodeCounts {
    fn add_assign(&mut self, rhs: &PostcodeCounts) {
        for (a, b) in self.fields_mut().into_iter().zip(rhs.fields()) {
            *a += b;
        }
    }
}

impl IsZero for PostcodeCounts {
    fn is_zero(&self) -> bool {
        self.fields().iter().all(|f| *f == 0)
    }
}

impl Semigroup for PostcodeCounts {
    fn plus_equals(&mut self, rhs: &Self) {
        *self += rhs;
    }
}

impl Monoid for PostcodeCounts {
    fn zero() -> Self {
        PostcodeCounts::default()
    }
}

impl Abelian for PostcodeCounts {
    fn negate(&mut self) {
        for f in self.fields_mut() {
            *f = -*f;
        }
    }
}

impl Multiply<isize> for PostcodeCounts {
    type Output = PostcodeCounts;
    fn multiply(mut self, rhs: &isize) -> PostcodeCounts {
        let k = *rhs as i64;
        for f in self.fields_mut() {
            *f *= k;
        }
        self
    }
}
