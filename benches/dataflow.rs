//! The per-postcode dataflow alone: station updates per second and time per
//! epoch at 1,500, 100,000 and 1,000,000 stations with 1 % of the stations
//! changing per epoch, next to a naive full recompute of the same snapshot.
//!
//! ```sh
//! cargo bench --bench dataflow
//! ```
//!
//! Each incremental iteration is one epoch: the retraction and insertion of
//! 1 % of the stations' statuses go in, and the epoch is stepped until its
//! output is complete. Each naive iteration recomputes every postcode from
//! every station (`reference::postcode_counts_from_scratch`), which is what a
//! from-scratch micro-batch job does per batch. Resident memory per station
//! after loading each network is printed to stderr.

use criterion::{BenchmarkId, Criterion, Throughput};
use differential_dataflow::input::{Input, InputSession};
use std::hint::black_box;
use std::time::{Duration, Instant};
use timely::dataflow::ProbeHandle;
use velib_dataflow::dataflow::{postcode_counts, Epoch};
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::reference::postcode_counts_from_scratch;

const SIZES: [usize; 3] = [1_500, 100_000, 1_000_000];
/// Paris has about 15 stations per postcode.
const STATIONS_PER_POSTCODE: usize = 15;

/// A small deterministic generator, so every run sees the same network.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u32 {
        (self.next() % n) as u32
    }
}

fn status(i: usize, rng: &mut Lcg) -> StationStatus {
    let mechanical = rng.below(20);
    let ebike = rng.below(10);
    StationStatus {
        station_id: StationId::Num(213_688_169 + i as u64),
        code: Some(format!("{}", 10_000 + i)),
        bikes_available: mechanical + ebike,
        bike_types: Some(BikeTypes {
            mechanical,
            ebike,
            other: 0,
        }),
        docks_available: rng.below(30),
        is_installed: rng.below(50) != 0,
        is_renting: rng.below(30) != 0,
        is_returning: true,
        last_reported: Some(1_732_004_538),
    }
}

fn network(n: usize) -> (Vec<StationStatus>, Vec<DirectoryEntry>) {
    let mut rng = Lcg(n as u64);
    let statuses: Vec<_> = (0..n).map(|i| status(i, &mut rng)).collect();
    let directory = (0..n)
        .map(|i| DirectoryEntry {
            station_id: StationId::Num(213_688_169 + i as u64),
            code: Some(format!("{}", 10_000 + i)),
            name: format!("Station {i}"),
            position: None,
            capacity: Some(35),
            postcode: Postcode::parse(&format!("{:05}", 75_000 + i / STATIONS_PER_POSTCODE))
                .unwrap(),
            postcode_source: PostcodeSource::Table,
        })
        .collect();
    (statuses, directory)
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

struct Loaded {
    statuses: InputSession<Epoch, StationStatus, isize>,
    directory: InputSession<Epoch, DirectoryEntry, isize>,
    probe: ProbeHandle<Epoch>,
    epoch: Epoch,
}

impl Loaded {
    fn close_epoch(&mut self, worker: &mut timely::worker::Worker) {
        self.epoch += 1;
        self.statuses.advance_to(self.epoch);
        self.directory.advance_to(self.epoch);
        self.statuses.flush();
        self.directory.flush();
        while self.probe.less_than(&self.epoch) {
            worker.step();
        }
    }
}

fn bench(c: &mut Criterion, worker: &mut timely::worker::Worker) {
    let mut group = c.benchmark_group("one_percent_of_stations_change_per_epoch");
    for n in SIZES {
        let changes = n / 100;
        group.throughput(Throughput::Elements(changes as u64));
        if n >= 100_000 {
            group.sample_size(10);
            group.warm_up_time(Duration::from_secs(1));
        } else {
            group.sample_size(50);
            group.warm_up_time(Duration::from_secs(2));
        }
        let (mut current, directory) = network(n);

        let rss_before = resident_bytes();
        let (statuses_in, directory_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (statuses_in, statuses) = scope.new_collection();
            let (directory_in, dir) = scope.new_collection();
            let (probe, _) = postcode_counts(statuses, dir).probe();
            (statuses_in, directory_in, probe)
        });
        let mut loaded = Loaded {
            statuses: statuses_in,
            directory: directory_in,
            probe,
            epoch: 0,
        };
        let load_start = Instant::now();
        for s in &current {
            loaded.statuses.insert(s.clone());
        }
        for d in &directory {
            loaded.directory.insert(d.clone());
        }
        loaded.close_epoch(worker);
        if let (Some(before), Some(after)) = (rss_before, resident_bytes()) {
            eprintln!(
                "{n} stations: initial load {:.2?}, resident memory +{:.1} MiB ({} bytes per station, inputs included)",
                load_start.elapsed(),
                (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
                after.saturating_sub(before) / n as u64,
            );
        }

        let mut rng = Lcg(7);
        group.bench_with_input(BenchmarkId::new("incremental", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    // Which stations change, and how, is decided outside the timing.
                    let mut updates = Vec::with_capacity(2 * changes);
                    for _ in 0..changes {
                        let i = rng.below(n as u64) as usize;
                        let new = status(i, &mut rng);
                        updates.push((current[i].clone(), -1));
                        updates.push((new.clone(), 1));
                        current[i] = new;
                    }
                    let start = Instant::now();
                    for (row, diff) in updates {
                        loaded.statuses.update(row, diff);
                    }
                    loaded.close_epoch(worker);
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });

        group.bench_with_input(BenchmarkId::new("naive_full_recompute", n), &n, |b, _| {
            b.iter(|| black_box(postcode_counts_from_scratch(&current, &directory)))
        });
    }
    group.finish();
}

fn main() {
    timely::execute_directly(|worker| {
        let mut criterion = Criterion::default().configure_from_args();
        bench(&mut criterion, worker);
        criterion.final_summary();
    });
}
