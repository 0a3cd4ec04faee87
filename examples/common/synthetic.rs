//! A synthetic bike-share network for load runs (`kafka_passthrough fill`,
//! `velib_load`), and the percentiles their reports give.

use std::time::Duration;
use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
use velib_dataflow::station_records::{station_key, station_value};

/// The first synthetic station id: 9 digits and more, as Vélib's are.
pub const FIRST_STATION_ID: u64 = 100_000_000;
/// The feed time of epoch 0 (2024-11-19, the recorded Vélib' feed's day);
/// epoch `e` is `e` minutes later, as a feed polled every minute.
pub const BASE_FEED_TIME: i64 = 1_732_004_538;

/// The synthetic network: what `fill` needs per station to write a
/// plausible Vélib' status and to change it, in a few bytes a station so
/// that a million cost a few MB.
pub struct Network {
    /// Docks per station.
    capacity: Vec<u8>,
    /// Mechanical bikes docked.
    mechanical: Vec<u8>,
    /// Electric bikes docked.
    ebike: Vec<u8>,
    /// Installed and renting (a few stations are closed at any time).
    open: Vec<bool>,
    /// The station's `last_reported`.
    reported: Vec<i64>,
    /// A permutation of the stations, partially reshuffled each epoch to
    /// draw the changed ones without repeats.
    order: Vec<u32>,
    /// The deterministic source of everything above.
    rng: fastrand::Rng,
}

/// Drawing, changing and encoding stations.
impl Network {
    /// `stations` stations, drawn from `seed`: 12 to 60 docks, some bikes of
    /// each kind, 2 % closed.
    pub fn new(stations: u32, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = stations as usize;
        let mut network = Network {
            capacity: Vec::with_capacity(n),
            mechanical: Vec::with_capacity(n),
            ebike: Vec::with_capacity(n),
            open: Vec::with_capacity(n),
            reported: Vec::with_capacity(n),
            order: (0..stations).collect(),
            rng: fastrand::Rng::new(),
        };
        for _ in 0..n {
            let capacity = rng.u8(12..=60);
            let bikes = rng.u8(0..=capacity);
            let ebike = rng.u8(0..=bikes / 2);
            network.capacity.push(capacity);
            network.mechanical.push(bikes - ebike);
            network.ebike.push(ebike);
            network.open.push(rng.u8(..50) != 0);
            network.reported.push(BASE_FEED_TIME - rng.i64(0..600));
        }
        network.rng = rng;
        network
    }

    /// Draws `count` distinct stations and changes each one's status (a
    /// bike rented or returned, or the station closing or reopening), as a
    /// feed's next snapshot would; returns them.
    pub fn change(&mut self, count: usize, feed_time: i64) -> Vec<u32> {
        let n = self.order.len();
        let count = count.min(n);
        for j in 0..count {
            let k = self.rng.usize(j..n);
            self.order.swap(j, k);
        }
        let chosen = self.order[..count].to_vec();
        for &i in &chosen {
            let i = i as usize;
            let bikes = self.mechanical[i] + self.ebike[i];
            if self.rng.u8(..20) == 0 {
                self.open[i] = !self.open[i];
            } else if bikes == 0 || (bikes < self.capacity[i] && self.rng.bool()) {
                if self.rng.u8(..3) == 0 {
                    self.ebike[i] += 1;
                } else {
                    self.mechanical[i] += 1;
                }
            } else if self.ebike[i] > 0 && (self.mechanical[i] == 0 || self.rng.bool()) {
                self.ebike[i] -= 1;
            } else {
                self.mechanical[i] -= 1;
            }
            self.reported[i] = feed_time - self.rng.i64(0..60);
        }
        chosen
    }

    /// Station `i`'s record at `epoch`, as the producer writes it: the key
    /// [`station_key`], and [`station_value`] of the feed's own station
    /// object (the fields of tests/fixtures/gbfs/velib/*/station_status.json)
    /// and its normalised status.
    pub fn record(&self, i: u32, epoch: u64) -> (Vec<u8>, Vec<u8>) {
        let index = i as usize;
        let id = FIRST_STATION_ID + u64::from(i);
        let (mechanical, ebike) = (self.mechanical[index], self.ebike[index]);
        let bikes = mechanical + ebike;
        let docks = self.capacity[index] - bikes;
        let open = self.open[index];
        let code = format!("{i:05}");
        let fields = serde_json::json!({
            "station_id": id,
            "num_bikes_available": bikes,
            "numBikesAvailable": bikes,
            "num_bikes_available_types": [{ "mechanical": mechanical }, { "ebike": ebike }],
            "num_docks_available": docks,
            "numDocksAvailable": docks,
            "is_installed": 1,
            "is_returning": u8::from(open),
            "is_renting": u8::from(open),
            "last_reported": self.reported[index],
            "stationCode": code,
        });
        let status = StationStatus {
            station_id: StationId::Num(id),
            code: Some(code),
            bikes_available: u32::from(bikes),
            bike_types: Some(BikeTypes {
                mechanical: u32::from(mechanical),
                ebike: u32::from(ebike),
                other: 0,
            }),
            docks_available: u32::from(docks),
            is_installed: true,
            is_renting: open,
            is_returning: open,
            last_reported: Some(self.reported[index]),
            judged: Default::default(),
            vehicle_types: Default::default(),
        };
        (
            station_key(&status.station_id),
            station_value(fields.as_object(), epoch, &status),
        )
    }
}

/// Nearest-rank p50, p99 and max of `samples`, in milliseconds; `None`
/// without samples. Nearest rank, not interpolation: with 20 epochs the p99
/// is the slowest epoch, and the report should say that rather than invent
/// a value between two epochs.
pub fn percentiles(samples: &[Duration]) -> Option<[f64; 3]> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1e3
    };
    Some([rank(0.50), rank(0.99), rank(1.0)])
}

/// Percentiles as JSON: `{"p50":…,"p99":…,"max":…}` or `null`.
pub fn percentiles_json(samples: &[Duration]) -> serde_json::Value {
    match percentiles(samples) {
        Some([p50, p99, max]) => serde_json::json!({ "p50": p50, "p99": p99, "max": max }),
        None => serde_json::Value::Null,
    }
}

/// Percentiles for the human line: `p50 12.3 ms, p99 45.6 ms` or `none`.
pub fn percentiles_text(samples: &[Duration]) -> String {
    match percentiles(samples) {
        Some([p50, p99, _]) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        None => "none".into(),
    }
}
