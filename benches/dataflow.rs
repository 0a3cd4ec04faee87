//! The per-postcode dataflow alone: station updates per second and time per
//! epoch at 1,500, 10,000, 100,000 and 1,000,000 stations, next to two full
//! recomputes of the same snapshot.
//!
//! ```sh
//! cargo bench --bench dataflow
//! ```
//!
//! Each incremental iteration is one epoch: the changed stations' new
//! counts go in as upserts (what the Kafka source gives, decoded: decoding
//! is measured apart), through `place_stations` and `postcode_totals`, and
//! the epoch is stepped until its output is complete. 1 % of the stations change per
//! epoch, except at 10,000 stations, where 10,000 changes are drawn (as many
//! as at 1,000,000): the time per epoch for the same number of changes on a
//! network 100 times smaller. Each `flat_full_recompute` iteration
//! recomputes every postcode from flat arrays of the status fields (the
//! honest baseline: what a vectorised batch job does per snapshot); each
//! `naive_full_recompute` runs the crate's reference
//! (`reference::postcode_counts_from_scratch`). Each
//! `dense_in_place_floor` iteration applies the same number of changes as
//! an epoch, with no dataflow at all: each changed station's slot in a
//! dense array is read and rewritten and its postcode's totals adjusted.
//! That is the least work any incremental engine does per change (one
//! random memory access per station), the floor that incremental times are
//! bounded by. Resident memory per station and the initial load's time are
//! printed to stderr.

use criterion::{BenchmarkId, Criterion, Throughput};
use differential_dataflow::difference::Abelian;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::{InputHandleVec as InputHandle, ProbeHandle};
use velib_dataflow::counts::{PostcodeCounts, StationCounts};
use velib_dataflow::dataflow::{
    place_stations, postcode_totals, postcode_vehicle_types, Epoch, Placement,
};
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::{BikeTypes, Judged, StationId, StationStatus};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::reference::postcode_counts_from_scratch;

/// Stations, and changes per epoch.
const CASES: [(usize, usize); 4] = [
    (1_500, 15),
    (10_000, 10_000),
    (100_000, 1_000),
    (1_000_000, 10_000),
];
/// Paris has about 15 stations per postcode.
const STATIONS_PER_POSTCODE: usize = 15;

/// Counts the bytes the process holds on the heap, so that the dataflow's
/// own memory is measured apart from what the allocator keeps of freed
/// inputs (the RSS delta includes that).
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a
// counter is updated besides.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

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
    let docks = rng.below(30);
    let (installed, renting) = (rng.below(50) != 0, rng.below(30) != 0);
    // Empty and full stations have been so since some time in the last
    // hour, as the producer judges them: the dataflow keeps those times.
    let mut since = |now: bool| now.then(|| 1_732_000_000 + i64::from(rng.below(3_600)));
    let judged = Judged {
        empty_since: since(installed && renting && mechanical + ebike == 0),
        full_since: since(installed && docks == 0),
        ..Default::default()
    };
    StationStatus {
        station_id: StationId::Num(213_688_169 + i as u64),
        code: Some(format!("{}", 10_000 + i)),
        bikes_available: mechanical + ebike,
        bike_types: Some(BikeTypes {
            mechanical,
            ebike,
            other: 0,
        }),
        docks_available: docks,
        is_installed: installed,
        is_renting: renting,
        is_returning: true,
        last_reported: Some(1_732_004_538),
        judged,
        vehicle_types: Default::default(),
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

/// The network as flat columns, one entry per station: what a vectorised
/// full recompute reads.
struct FlatNetwork {
    postcode: Vec<u32>,
    bikes: Vec<u32>,
    mechanical: Vec<u32>,
    ebikes: Vec<u32>,
    docks: Vec<u32>,
    installed: Vec<bool>,
    renting: Vec<bool>,
    returning: Vec<bool>,
    stale: Vec<bool>,
    long: Vec<(bool, bool)>,
    postcodes: usize,
}

impl FlatNetwork {
    fn new(statuses: &[StationStatus]) -> Self {
        let mut flat = FlatNetwork {
            postcode: (0..statuses.len())
                .map(|i| (i / STATIONS_PER_POSTCODE) as u32)
                .collect(),
            bikes: vec![0; statuses.len()],
            mechanical: vec![0; statuses.len()],
            ebikes: vec![0; statuses.len()],
            docks: vec![0; statuses.len()],
            installed: vec![false; statuses.len()],
            renting: vec![false; statuses.len()],
            returning: vec![false; statuses.len()],
            stale: vec![false; statuses.len()],
            long: vec![(false, false); statuses.len()],
            postcodes: statuses.len().div_ceil(STATIONS_PER_POSTCODE),
        };
        for (i, s) in statuses.iter().enumerate() {
            flat.set(i, s);
        }
        flat
    }

    fn set(&mut self, i: usize, s: &StationStatus) {
        let types = s.bike_types.unwrap_or_default();
        self.bikes[i] = s.bikes_available;
        self.mechanical[i] = types.mechanical;
        self.ebikes[i] = types.ebike;
        self.docks[i] = s.docks_available;
        self.installed[i] = s.is_installed;
        self.renting[i] = s.is_renting;
        self.returning[i] = s.is_returning;
        self.stale[i] = s.judged.stale;
        self.long[i] = (s.judged.empty_long, s.judged.full_long);
    }

    /// Every postcode's counts (as many as `PostcodeCounts` has), from every
    /// station.
    fn recompute(&self, totals: &mut Vec<[i64; 15]>) {
        totals.clear();
        totals.resize(self.postcodes, [0; 15]);
        for i in 0..self.postcode.len() {
            let rentable = i64::from(self.installed[i] && self.renting[i]);
            let returnable = i64::from(self.installed[i] && self.returning[i]);
            let t = &mut totals[self.postcode[i] as usize];
            let bikes = i64::from(self.bikes[i]);
            t[0] += rentable * bikes;
            t[1] += rentable * i64::from(self.mechanical[i]);
            t[2] += rentable * i64::from(self.ebikes[i]);
            t[3] += returnable * i64::from(self.docks[i]);
            t[4] += 1;
            t[5] += rentable;
            t[6] += (1 - rentable) * bikes;
            let docks = i64::from(self.docks[i]);
            t[8] += rentable * i64::from(bikes == 0);
            t[9] += returnable * i64::from(docks == 0);
            t[10] += rentable * docks;
            let stale = i64::from(self.stale[i]);
            t[11] += stale;
            t[12] += rentable * stale * bikes;
            let (empty_long, full_long) = self.long[i];
            t[13] += i64::from(empty_long);
            t[14] += i64::from(full_long);
        }
    }
}

/// Each station's counts in a dense array, indexed as the station, and the
/// postcode totals they add up to: incremental maintenance with nothing but
/// the memory it must touch.
struct DenseInPlace {
    stations: Vec<(u32, StationCounts)>,
    totals: Vec<PostcodeCounts>,
}

impl DenseInPlace {
    fn new(statuses: &[StationStatus]) -> Self {
        let mut dense = DenseInPlace {
            stations: Vec::with_capacity(statuses.len()),
            totals: vec![PostcodeCounts::default(); statuses.len().div_ceil(STATIONS_PER_POSTCODE)],
        };
        for (i, s) in statuses.iter().enumerate() {
            let postcode = (i / STATIONS_PER_POSTCODE) as u32;
            let counts = StationCounts::of_station(s);
            dense.totals[postcode as usize] += &counts.placed(false);
            dense.stations.push((postcode, counts));
        }
        dense
    }

    /// Replaces each changed station's counts, moving its postcode's totals.
    fn apply(&mut self, changes: &[(usize, StationCounts)]) {
        for (i, new) in changes {
            let (postcode, old) = &mut self.stations[*i];
            let mut before = old.placed(false);
            before.negate();
            let total = &mut self.totals[*postcode as usize];
            *total += &before;
            *total += &new.placed(false);
            *old = *new;
        }
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

type CountsUpsert = (StationId, Option<StationCounts>, Epoch);
type PlacementUpsert = (StationId, Option<Placement>, Epoch);

struct Loaded {
    statuses: InputHandle<Epoch, CountsUpsert>,
    directory: InputHandle<Epoch, PlacementUpsert>,
    probe: ProbeHandle<Epoch>,
    epoch: Epoch,
}

impl Loaded {
    fn close_epoch(&mut self, worker: &mut timely::worker::Worker) {
        self.epoch += 1;
        self.statuses.advance_to(self.epoch);
        self.directory.advance_to(self.epoch);
        while self.probe.less_than(&self.epoch) {
            worker.step();
        }
    }
}

fn bench(c: &mut Criterion, worker: &mut timely::worker::Worker) {
    let mut group = c.benchmark_group("stations_change_per_epoch");
    for (n, changes) in CASES {
        group.throughput(Throughput::Elements(changes as u64));
        if n >= 100_000 || changes >= 10_000 {
            group.sample_size(10);
            group.warm_up_time(Duration::from_secs(1));
        } else {
            group.sample_size(50);
            group.warm_up_time(Duration::from_secs(2));
        }
        let (mut current, directory) = network(n);
        let mut flat = FlatNetwork::new(&current);

        let rss_before = resident_bytes();
        let live_before = LIVE_BYTES.load(Ordering::Relaxed);
        let (statuses_in, directory_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let mut statuses_in = InputHandle::new();
            let mut directory_in = InputHandle::new();
            let statuses = scope.input_from(&mut statuses_in);
            let directory = scope.input_from(&mut directory_in);
            let (probe, _) = postcode_totals(place_stations(statuses, directory)).probe();
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
            let counts = StationCounts::of_station(s);
            loaded
                .statuses
                .send((s.station_id.clone(), Some(counts), 0));
        }
        for d in &directory {
            let placement = Placement {
                postcode: d.postcode,
                inferred: d.postcode_source.is_inferred(),
            };
            loaded
                .directory
                .send((d.station_id.clone(), Some(placement), 0));
        }
        loaded.close_epoch(worker);
        let load_time = load_start.elapsed();
        // What the allocator keeps of the freed inputs is not the dataflow's.
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe { libc::malloc_trim(0) };
        let live = LIVE_BYTES
            .load(Ordering::Relaxed)
            .saturating_sub(live_before);
        if let (Some(before), Some(after)) = (rss_before, resident_bytes()) {
            eprintln!(
                "{n} stations: initial load {load_time:.2?}; the dataflow holds {:.1} MiB on the heap \
                 ({} bytes per station); resident memory +{:.1} MiB ({} bytes per station)",
                live as f64 / (1 << 20) as f64,
                live / n,
                (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
                after.saturating_sub(before) / n as u64,
            );
        }

        let mut rng = Lcg(7);
        let id = format!("{n}_stations_{changes}_changes");
        group.bench_with_input(BenchmarkId::new("incremental", &id), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    // Which stations change, and how, is decided outside the timing.
                    let mut updates = Vec::with_capacity(changes);
                    for _ in 0..changes {
                        let i = rng.below(n as u64) as usize;
                        let new = status(i, &mut rng);
                        flat.set(i, &new);
                        let counts = StationCounts::of_station(&new);
                        updates.push((new.station_id.clone(), Some(counts), loaded.epoch));
                        current[i] = new;
                    }
                    let start = Instant::now();
                    for update in updates {
                        loaded.statuses.send(update);
                    }
                    loaded.close_epoch(worker);
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });

        let mut dense = DenseInPlace::new(&current);
        let mut floor_rng = Lcg(11);
        group.bench_with_input(BenchmarkId::new("dense_in_place_floor", &id), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let changes: Vec<(usize, StationCounts)> = (0..changes)
                        .map(|_| {
                            let i = floor_rng.below(n as u64) as usize;
                            (i, StationCounts::of_station(&status(i, &mut floor_rng)))
                        })
                        .collect();
                    let start = Instant::now();
                    dense.apply(black_box(&changes));
                    elapsed += start.elapsed();
                }
                black_box(&dense.totals);
                elapsed
            })
        });
        drop(dense);

        let mut totals = Vec::new();
        group.bench_with_input(BenchmarkId::new("flat_full_recompute", &id), &n, |b, _| {
            b.iter(|| {
                flat.recompute(&mut totals);
                black_box(&totals);
            })
        });
        if n <= 100_000 || std::env::var_os("NAIVE_AT_1M").is_some() {
            group.bench_with_input(BenchmarkId::new("naive_full_recompute", &id), &n, |b, _| {
                b.iter(|| black_box(postcode_counts_from_scratch(&current, &directory)))
            });
        }
    }
    group.finish();
}
/// Stations of a v3 system, which list their vehicles by type id.
fn typed(mut status: StationStatus) -> StationStatus {
    let kinds = status.bike_types.unwrap_or_default();
    status.vehicle_types = [
        ("classic".to_owned(), kinds.mechanical),
        ("ebike".to_owned(), kinds.ebike),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    status
}

/// `--vehicle-types` alone (`postcode_vehicle_types`), on a network whose
/// stations list two types: time per epoch, heap per station (stderr).
fn bench_vehicle_types(c: &mut Criterion, worker: &mut timely::worker::Worker) {
    const N: usize = 100_000;
    const CHANGES: usize = 1_000;
    let mut group = c.benchmark_group("vehicle_types_change_per_epoch");
    group.throughput(Throughput::Elements(CHANGES as u64));
    group.sample_size(20);
    let (current, directory) = network(N);
    // The earlier dataflows, their inputs closed, are freed as the worker
    // steps: not during this one's measurement.
    for _ in 0..1_000_000 {
        if !worker.step() {
            break;
        }
    }
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe { libc::malloc_trim(0) };
    let live_before = LIVE_BYTES.load(Ordering::Relaxed);
    let (mut statuses, mut entries, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
        let mut statuses_in = InputHandle::new();
        let mut entries_in = InputHandle::new();
        let statuses = scope.input_from(&mut statuses_in);
        let entries = scope.input_from(&mut entries_in);
        let (probe, _) = postcode_vehicle_types(statuses, entries).probe();
        (statuses_in, entries_in, probe)
    });
    let load_start = Instant::now();
    for s in &current {
        statuses.send((s.station_id.clone(), Some(typed(s.clone())), 0));
    }
    for d in &directory {
        entries.send((d.station_id.clone(), Some(d.clone()), 0));
    }
    let mut epoch = 1;
    statuses.advance_to(epoch);
    entries.advance_to(epoch);
    while probe.less_than(&epoch) {
        worker.step();
    }
    let load_time = load_start.elapsed();
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe { libc::malloc_trim(0) };
    let live = LIVE_BYTES
        .load(Ordering::Relaxed)
        .saturating_sub(live_before);
    eprintln!(
        "vehicle types, {N} stations listing 2 types: initial load {load_time:.2?}; \
         the dataflow holds {:.1} MiB on the heap ({} bytes per station)",
        live as f64 / (1 << 20) as f64,
        live / N,
    );
    let mut rng = Lcg(13);
    group.bench_function(format!("{N}_stations_{CHANGES}_changes"), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let updates: Vec<_> = (0..CHANGES)
                    .map(|_| {
                        let i = rng.below(N as u64) as usize;
                        let new = typed(status(i, &mut rng));
                        (new.station_id.clone(), Some(new), epoch)
                    })
                    .collect();
                let start = Instant::now();
                for update in updates {
                    statuses.send(update);
                }
                epoch += 1;
                statuses.advance_to(epoch);
                entries.advance_to(epoch);
                while probe.less_than(&epoch) {
                    worker.step();
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    group.finish();
}

fn main() {
    timely::execute_directly(|worker| {
        let mut criterion = Criterion::default().configure_from_args();
        bench(&mut criterion, worker);
        bench_vehicle_types(&mut criterion, worker);
        criterion.final_summary();
    });
}
