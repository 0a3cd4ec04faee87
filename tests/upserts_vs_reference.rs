//! Random upserts of statuses and directory entries (several per station
//! and epoch, removals, stations without an entry, entries without a
//! status) through `postcode_counts_from_upserts`, the path the aggregator
//! takes from its Kafka sources, compared at every epoch with the naive
//! from-scratch computation over what the upserts leave; and the same with
//! vehicles by type (`with_vehicle_types`), a typed status listing its
//! mechanical and e-bikes as two GBFS v3 vehicle types. One worker, and
//! two with a serialised exchange.

use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use velib_dataflow::counts::PostcodeTotals;
use velib_dataflow::dataflow::{
    postcode_counts_from_upserts, postcode_vehicle_types, with_vehicle_types, TypedTotals,
};
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::{BikeTypes, Judged, StationId, StationStatus};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::reference::{postcode_counts_from_scratch, typed_totals_from_scratch};

const POSTCODES: &[&str] = &["75001", "75002", "93100"];
const STATIONS: u64 = 6;

type State = BTreeMap<Postcode, PostcodeTotals>;
type TypedState = BTreeMap<Postcode, TypedTotals>;

/// A status: mechanical bikes, e-bikes, docks, renting, typed, and since
/// when empty and full (few times, so that stations share them; given
/// whether the station is empty or not, as a judge might be wrong).
type StatusFields = (u32, u32, u32, bool, bool, Option<i64>, Option<i64>);

#[derive(Clone, Debug)]
enum Upsert {
    Status(u64, Option<StatusFields>),
    Entry(u64, Option<(usize, bool)>),
}

fn station(i: u64) -> StationId {
    if i % 3 == 2 {
        StationId::Text(format!("oslo-{i}"))
    } else {
        StationId::Num(213_688_000 + i)
    }
}

fn upsert() -> impl Strategy<Value = Upsert> {
    let since = || prop::option::of(0i64..4);
    let status = prop::option::weighted(
        0.8,
        (
            0u32..3,
            0u32..2,
            0u32..3,
            any::<bool>(),
            any::<bool>(),
            since(),
            since(),
        ),
    );
    let entry = prop::option::weighted(0.8, (0..POSTCODES.len(), any::<bool>()));
    prop_oneof![
        3 => (0..STATIONS, status).prop_map(|(i, s)| Upsert::Status(i, s)),
        2 => (0..STATIONS, entry).prop_map(|(i, e)| Upsert::Entry(i, e)),
    ]
}

fn status_of(i: u64, fields: StatusFields) -> StationStatus {
    let (mechanical, ebike, docks, renting, typed, empty_since, full_since) = fields;
    StationStatus {
        station_id: station(i),
        code: None,
        bikes_available: mechanical + ebike,
        bike_types: typed.then_some(BikeTypes {
            mechanical,
            ebike,
            other: 0,
        }),
        docks_available: docks,
        is_installed: true,
        is_renting: renting,
        is_returning: !renting,
        last_reported: None,
        judged: Judged {
            empty_since,
            full_since,
            ..Default::default()
        },
        // As a v3 feed lists them (a type with none included).
        vehicle_types: match typed {
            true => [
                ("city".to_owned(), mechanical),
                ("e-city".to_owned(), ebike),
            ]
            .into(),
            false => Default::default(),
        },
    }
}

fn entry_of(i: u64, (postcode, inferred): (usize, bool)) -> DirectoryEntry {
    DirectoryEntry {
        station_id: station(i),
        code: None,
        name: format!("Station {i}"),
        position: None,
        capacity: None,
        postcode: Postcode::parse(POSTCODES[postcode]).unwrap(),
        postcode_source: if inferred {
            PostcodeSource::Inferred {
                from: station(0),
                distance_m: 80,
            }
        } else {
            PostcodeSource::Table
        },
    }
}

/// What the reference says after each epoch.
fn expected(epochs: &[Vec<Upsert>]) -> Vec<(State, TypedState)> {
    let mut statuses: HashMap<u64, StationStatus> = HashMap::new();
    let mut entries: HashMap<u64, DirectoryEntry> = HashMap::new();
    let mut out = Vec::new();
    for epoch in epochs {
        for upsert in epoch {
            match upsert {
                Upsert::Status(i, Some(s)) => drop(statuses.insert(*i, status_of(*i, *s))),
                Upsert::Status(i, None) => drop(statuses.remove(i)),
                Upsert::Entry(i, Some(e)) => drop(entries.insert(*i, entry_of(*i, *e))),
                Upsert::Entry(i, None) => drop(entries.remove(i)),
            }
        }
        let totals = postcode_counts_from_scratch(statuses.values(), entries.values());
        let statuses: Vec<StationStatus> = statuses.values().cloned().collect();
        let entries: Vec<DirectoryEntry> = entries.values().cloned().collect();
        out.push((totals, typed_totals_from_scratch(&statuses, &entries)));
    }
    out
}

/// The rows of a collection summed up: one value per postcode.
fn state_of<V: Clone + std::fmt::Debug>(
    rows: &BTreeMap<(Postcode, V), isize>,
) -> BTreeMap<Postcode, V> {
    let mut state = BTreeMap::new();
    for ((postcode, value), diff) in rows {
        match *diff {
            0 => {}
            1 => assert!(
                state.insert(*postcode, value.clone()).is_none(),
                "{postcode} twice"
            ),
            d => panic!("{postcode} {value:?} with multiplicity {d}"),
        }
    }
    state
}

/// What the dataflow says after each epoch, on `config`'s workers.
fn incremental(config: timely::Config, epochs: Vec<Vec<Upsert>>) -> Vec<(State, TypedState)> {
    let states: Arc<Mutex<Vec<(State, TypedState)>>> = Arc::default();
    let result = Arc::clone(&states);
    let epochs = Arc::new(epochs);
    timely::execute(config, move |worker| {
        let seen: Rc<RefCell<BTreeMap<(Postcode, PostcodeTotals), isize>>> = Rc::default();
        let seen_typed: Rc<RefCell<BTreeMap<(Postcode, TypedTotals), isize>>> = Rc::default();
        let sink = Rc::clone(&seen);
        let typed_sink = Rc::clone(&seen_typed);
        let (mut statuses, mut entries, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (statuses, status_stream) = scope.new_input();
            let (entries, entry_stream) = scope.new_input();
            let counts = postcode_counts_from_upserts(status_stream.clone(), entry_stream.clone());
            let types = postcode_vehicle_types(status_stream, entry_stream);
            let (probe, _) = counts
                .clone()
                .inner
                .exchange(|_| 0)
                .inspect(move |(row, _, diff)| *sink.borrow_mut().entry(*row).or_default() += diff)
                .probe();
            with_vehicle_types(counts, types)
                .inner
                .exchange(|_| 0)
                .inspect(move |(row, _, diff)| {
                    *typed_sink.borrow_mut().entry(row.clone()).or_default() += diff
                })
                .probe_with(&probe);
            (statuses, entries, probe)
        });
        for (epoch, upserts) in epochs.iter().enumerate() {
            let epoch = epoch as u64;
            if worker.index() == 0 {
                for upsert in upserts {
                    match upsert {
                        Upsert::Status(i, s) => {
                            statuses.send((station(*i), s.map(|s| status_of(*i, s)), epoch))
                        }
                        Upsert::Entry(i, e) => {
                            entries.send((station(*i), e.map(|e| entry_of(*i, e)), epoch))
                        }
                    }
                }
            }
            statuses.advance_to(epoch + 1);
            entries.advance_to(epoch + 1);
            while probe.less_than(&(epoch + 1)) {
                worker.step();
            }
            if worker.index() == 0 {
                let states = (state_of(&seen.borrow()), state_of(&seen_typed.borrow()));
                result.lock().unwrap().push(states);
            }
        }
    })
    .expect("the dataflow runs");
    let states = states.lock().unwrap().clone();
    states
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn upserts_match_the_reference_at_every_epoch(
        epochs in prop::collection::vec(prop::collection::vec(upsert(), 0..12), 1..10)
    ) {
        let expected = expected(&epochs);
        prop_assert_eq!(&incremental(timely::Config::thread(), epochs.clone()), &expected);
        let serialised = timely::Config {
            communication: timely::CommunicationConfig::ProcessBinary(2),
            worker: timely::WorkerConfig::default(),
        };
        prop_assert_eq!(&incremental(serialised, epochs), &expected);
    }
}
