//! Random sequences of snapshots (stations added, removed, moved between
//! postcodes, counts changing, flags flipping, snapshots repeated or out of
//! order) through the incremental dataflow, compared at every epoch with a
//! naive from-scratch computation.

mod common;

use proptest::prelude::*;
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::{BikeTypes, FeedTimeKind, StationId, StationStatus};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::snapshot::Snapshot;

const POSTCODES: &[&str] = &["75001", "75002", "75015", "93100"];

fn station_id(i: usize) -> StationId {
    // Vélib' ids are 64-bit numbers, most systems' are strings: mix both.
    if i % 4 == 3 {
        StationId::Text(format!("oslo-{i}"))
    } else {
        StationId::Num(19_335_882_998 - i as u64)
    }
}

/// bikes, bike types, docks, installed, renting, returning
type GeneratedStatus = (u32, Option<BikeTypes>, u32, bool, bool, bool);

prop_compose! {
    fn status()(
        mechanical in 0u32..6, ebike in 0u32..6, untyped in 0u32..2, typed in prop::bool::weighted(0.9),
        docks in 0u32..8, installed in prop::bool::weighted(0.85), renting in prop::bool::weighted(0.85),
        returning in prop::bool::weighted(0.85),
    ) -> GeneratedStatus {
        let types = typed.then_some(BikeTypes { mechanical, ebike, other: 0 });
        (mechanical + ebike + untyped, types, docks, installed, renting, returning)
    }
}

/// Where a station is listed in the directory: absent, or under a postcode
/// (index into POSTCODES, or none: `unknown`), possibly inferred.
fn placement() -> impl Strategy<Value = Option<(Option<usize>, bool)>> {
    prop::option::weighted(
        0.85,
        (
            prop::option::weighted(0.85, 0..POSTCODES.len()),
            any::<bool>(),
        ),
    )
}

#[derive(Clone, Debug)]
enum Step {
    /// A new snapshot, `dt` seconds after the previous one (negative: older).
    Fresh {
        dt: i64,
        stations: Vec<Option<GeneratedStatus>>,
        directory: Vec<Option<(Option<usize>, bool)>>,
    },
    /// The previous snapshot served again, `dt` seconds later.
    Repeat { dt: i64 },
}

const STATIONS: usize = 10;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (
            -2i64..4,
            prop::collection::vec(prop::option::weighted(0.8, status()), STATIONS),
            prop::collection::vec(placement(), STATIONS),
        )
            .prop_map(|(dt, stations, directory)| Step::Fresh { dt, stations, directory }),
        // Served again up to two hours later: reports age out meanwhile.
        1 => (0i64..7_300).prop_map(|dt| Step::Repeat { dt }),
    ]
}

fn snapshots(steps: Vec<Step>) -> Vec<Snapshot> {
    let mut time = 1_732_004_538;
    let mut out: Vec<Snapshot> = Vec::new();
    for step in steps {
        let snapshot = match step {
            Step::Repeat { dt } => match out.last() {
                Some(previous) => Snapshot {
                    feed_time: previous.feed_time + dt,
                    ..previous.clone()
                },
                None => continue,
            },
            Step::Fresh {
                dt,
                stations,
                directory,
            } => {
                time += dt;
                let statuses = stations
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let (bikes, types, docks, installed, renting, returning) = s?;
                        Some(StationStatus {
                            station_id: station_id(i),
                            code: Some(format!("{}", 10_000 + i)),
                            bikes_available: bikes,
                            bike_types: types,
                            docks_available: docks,
                            is_installed: installed,
                            is_renting: renting,
                            is_returning: returning,
                            // Station i reported 25·i minutes before the
                            // snapshot: the later ones are stale (2 h).
                            last_reported: Some(time - i as i64 * 1_500),
                            judged: Default::default(),
                            vehicle_types: Default::default(),
                        })
                    })
                    .collect();
                let directory = directory
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, d)| {
                        let (postcode, inferred) = d?;
                        let (postcode, source) = match (postcode, inferred) {
                            (None, _) => (Postcode::unknown(), PostcodeSource::Unknown),
                            (Some(p), false) => (
                                Postcode::parse(POSTCODES[p]).unwrap(),
                                PostcodeSource::Table,
                            ),
                            (Some(p), true) => (
                                Postcode::parse(POSTCODES[p]).unwrap(),
                                PostcodeSource::Inferred {
                                    from: station_id(0),
                                    distance_m: 120,
                                },
                            ),
                        };
                        Some(DirectoryEntry {
                            station_id: station_id(i),
                            code: Some(format!("{}", 10_000 + i)),
                            name: format!("Station {i}"),
                            position: None,
                            capacity: Some(20),
                            postcode,
                            postcode_source: source,
                        })
                    })
                    .collect();
                Snapshot {
                    feed_time: time,
                    feed_time_kind: FeedTimeKind::Published,
                    statuses,
                    directory: Some(directory),
                }
            }
        };
        out.push(snapshot);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn one_worker_matches_reference_at_every_epoch(steps in prop::collection::vec(step(), 1..14)) {
        let epochs = common::sequence(snapshots(steps));
        common::assert_matches_reference("1 worker", timely::Config::thread(), &epochs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn two_workers_serialised_match_reference(steps in prop::collection::vec(step(), 1..10)) {
        let epochs = common::sequence(snapshots(steps));
        let (label, config) = common::configs().pop().unwrap();
        common::assert_matches_reference(label, config, &epochs);
    }
}
