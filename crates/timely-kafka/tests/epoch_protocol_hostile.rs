//! The epoch protocol under hostile framing, as a source reads it: any
//! headers and values (epochs near `u64::MAX`, garbage, markers whose value
//! disagrees with their headers, thousands of attempts) go through
//! `framing` and `PartitionEpochs` exactly as the source operator drives
//! them. Whatever comes: nothing panics, a refused record is an error (a
//! dead letter), no more than `MAX_OPEN_EPOCHS` (epoch, attempt) pairs are
//! ever held, the passed epoch never goes back nor jumps by more than
//! `MAX_EPOCH_GAP`, and a marker releases exactly the held records of
//! earlier epochs and of its own attempt, each once. Forged markers (far
//! in the future, or going back) and forged far-future records among a
//! genuine producer's epochs are refused and freeze nothing: every genuine
//! epoch after them is released as written.

use proptest::prelude::*;
use std::collections::BTreeMap;
use timely_kafka::protocol::{
    framing, EpochMarker, Framed, PartitionEpochs, RecordHeaders, ATTEMPT_HEADER, MARKER_KIND,
    MAX_EPOCH_GAP, MAX_OPEN_EPOCHS,
};
use timely_kafka::{EPOCH_HEADER, KIND_HEADER};

/// One record's framing as it may come off a hostile topic.
#[derive(Clone, Debug)]
struct Record {
    epoch: Option<String>,
    attempt: Option<String>,
    marker: bool,
    /// For a marker: whether its value names the epoch of its headers.
    honest: bool,
}

fn epoch_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..6).prop_map(|e| e.to_string()),
        1 => (0u64..3).prop_map(|k| (MAX_EPOCH_GAP + 4 + k).to_string()),
        1 => Just(1_000_000_000_000u64.to_string()),
        1 => Just((u64::MAX - 1).to_string()),
        1 => Just(u64::MAX.to_string()),
        1 => Just("-1".to_owned()),
        1 => "[ -~]{0,24}",
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        prop::option::weighted(0.95, epoch_text()),
        prop::option::weighted(
            0.95,
            prop_oneof![4 => "[ab]", 1 => "[a-z0-9]{1,6}", 1 => Just(String::new())],
        ),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(epoch, attempt, marker, honest)| Record {
            epoch,
            attempt,
            marker,
            honest,
        })
}

/// What the source does with one record; returns whether it was refused.
fn read(
    p: &mut PartitionEpochs<usize>,
    held: &mut BTreeMap<usize, (u64, String)>,
    index: usize,
    r: &Record,
) -> bool {
    let mut pairs: Vec<(&str, Option<&[u8]>)> = Vec::new();
    if let Some(e) = &r.epoch {
        pairs.push((EPOCH_HEADER, Some(e.as_bytes())));
    }
    if let Some(a) = &r.attempt {
        pairs.push((ATTEMPT_HEADER, Some(a.as_bytes())));
    }
    if r.marker {
        pairs.push((KIND_HEADER, Some(MARKER_KIND.as_bytes())));
    }
    let value = r.marker.then(|| {
        let epoch = r
            .epoch
            .as_deref()
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0);
        let marker = EpochMarker {
            epoch: if r.honest {
                epoch
            } else {
                epoch.wrapping_add(1)
            },
            attempt: r.attempt.clone().unwrap_or_default(),
            feed_time: None,
        };
        marker.to_json()
    });
    let framed = match framing(&RecordHeaders::new(pairs), value.as_deref()) {
        Ok(framed) => framed,
        Err(_) => return true,
    };
    match framed {
        Framed::Unframed => true,
        Framed::Data(stamp) => {
            if p.passed().is_some_and(|e| e >= stamp.epoch) {
                return false;
            }
            if let Err(e) = p.check_data(&stamp) {
                assert_eq!(e.reason(), "epoch_gap_too_large");
                let passed = p.passed().expect("no bound before the first marker");
                assert!(stamp.epoch - passed > MAX_EPOCH_GAP, "{e}");
                return true;
            }
            if p.is_full_for(&stamp) {
                return true;
            }
            assert!(p.data(stamp.clone(), index));
            held.insert(index, (stamp.epoch, stamp.attempt));
            false
        }
        Framed::Marker(marker) => {
            let before = p.passed();
            if let Err(e) = p.check_marker(&marker) {
                match (before, e.reason()) {
                    (Some(b), "marker_goes_back") => assert!(marker.epoch < b),
                    (Some(b), "epoch_gap_too_large") => assert!(marker.epoch - b > MAX_EPOCH_GAP),
                    (None, "epoch_gap_too_large") => {
                        let newest = held.values().map(|(e, _)| *e).max();
                        assert!(newest.is_some_and(|n| marker.epoch - n > MAX_EPOCH_GAP));
                    }
                    _ => panic!("{before:?}: {e}"),
                }
                return true;
            }
            let Some(passed) = p.marker(&marker) else {
                assert_eq!(
                    before,
                    Some(marker.epoch),
                    "only the epoch passed is ignored"
                );
                return false;
            };
            assert!(
                before.is_none_or(|e| e < marker.epoch && marker.epoch - e <= MAX_EPOCH_GAP),
                "passed goes forward, within the bound"
            );
            assert_eq!(p.passed(), Some(marker.epoch));
            // Exactly the held records of earlier epochs and of this
            // epoch's attempt, each once; the others of this epoch dropped.
            let mut released = passed.released.clone();
            released.sort_unstable();
            let expected: Vec<usize> = held
                .iter()
                .filter(|(_, (e, a))| {
                    *e < marker.epoch || (*e == marker.epoch && *a == marker.attempt)
                })
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(released, expected);
            held.retain(|_, (e, _)| *e > marker.epoch);
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_framing_is_refused_or_read_exactly(records in prop::collection::vec(record(), 0..200)) {
        let mut p = PartitionEpochs::new();
        let mut held = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            read(&mut p, &mut held, i, r);
            let open: std::collections::BTreeSet<_> = held.values().collect();
            prop_assert!(open.len() <= MAX_OPEN_EPOCHS);
        }
    }
}

/// What a forger slips in among the genuine producer's records, relative
/// to where the partition stands when it is read.
#[derive(Clone, Debug)]
enum Forged {
    /// A marker further ahead than `MAX_EPOCH_GAP`.
    FarMarker(Far),
    /// A data record as far ahead.
    FarData(Far),
    /// A marker this many epochs before the one passed (at least 1).
    MarkerBack(u64),
    /// A marker of the epoch passed, of another attempt (ignored).
    SameMarker,
    /// A data record of an epoch passed (late, discarded).
    LateData(u64),
}

#[derive(Clone, Debug)]
enum Far {
    /// This epoch, far beyond any genuine one here.
    At(u64),
    /// This many epochs beyond the bound.
    JustBeyond(u64),
}

fn far() -> impl Strategy<Value = Far> {
    prop_oneof![
        prop_oneof![Just(1_000_000_000_000), Just(u64::MAX - 1), Just(1 << 40)].prop_map(Far::At),
        (0u64..4).prop_map(Far::JustBeyond),
    ]
}

fn forged() -> impl Strategy<Value = Forged> {
    prop_oneof![
        4 => far().prop_map(Forged::FarMarker),
        2 => far().prop_map(Forged::FarData),
        2 => (1u64..4).prop_map(Forged::MarkerBack),
        1 => Just(Forged::SameMarker),
        1 => (0u64..3).prop_map(Forged::LateData),
    ]
}

/// A genuine record.
fn genuine(epoch: u64, marker: bool) -> Record {
    Record {
        epoch: Some(epoch.to_string()),
        attempt: Some("a".into()),
        marker,
        honest: true,
    }
}

/// The forged record, where the partition passed `passed`.
fn forge(forged: &Forged, passed: u64) -> Record {
    let far = |far: &Far| match far {
        Far::At(epoch) => *epoch,
        Far::JustBeyond(k) => passed + MAX_EPOCH_GAP + 1 + k,
    };
    let (epoch, marker, attempt) = match forged {
        Forged::FarMarker(f) => (far(f), true, "a"),
        Forged::FarData(f) => (far(f), false, "a"),
        Forged::MarkerBack(k) => (passed.saturating_sub(*k), true, "forger"),
        Forged::SameMarker => (passed, true, "forger"),
        Forged::LateData(k) => (passed.saturating_sub(*k), false, "a"),
    };
    Record {
        epoch: Some(epoch.to_string()),
        attempt: Some(attempt.into()),
        marker,
        honest: true,
    }
}

/// Reads a genuine producer's epochs (each some records, then the marker),
/// from the start or resumed after `resumed`, with forged records slipped
/// in before the genuine record of each index in `forged` (and, from the
/// start, only once a first marker was passed: before it, a partition
/// holding nothing knows nothing to refuse a far marker by). Checks that
/// every forged record is refused or ignored, and every genuine epoch
/// passed releasing exactly its records.
fn read_with_forgeries(
    resumed: Option<u64>,
    epochs: &[usize],
    forged: &BTreeMap<usize, Vec<Forged>>,
) -> Result<(), TestCaseError> {
    let first = resumed.map_or(1, |e| e + 1);
    let mut p = match resumed {
        Some(e) => PartitionEpochs::resumed(e),
        None => PartitionEpochs::new(),
    };
    let mut held = BTreeMap::new();
    let mut genuine_records = Vec::new();
    for (i, records) in epochs.iter().enumerate() {
        let epoch = first + i as u64;
        for j in 0..=*records {
            genuine_records.push(genuine(epoch, j == *records));
        }
    }
    let mut index = 0;
    let mut genuine_indices = std::collections::BTreeSet::new();
    for (g, record) in genuine_records.iter().enumerate() {
        for f in forged.get(&g).into_iter().flatten() {
            let Some(passed) = p.passed() else { continue };
            let before = (p.passed(), held.len());
            let refused = read(&mut p, &mut held, index, &forge(f, passed));
            index += 1;
            prop_assert_eq!(
                refused,
                matches!(
                    f,
                    Forged::FarMarker(_) | Forged::FarData(_) | Forged::MarkerBack(_)
                ) && !(matches!(f, Forged::MarkerBack(_)) && passed == 0),
                "{:?} at passed {}",
                f,
                passed
            );
            prop_assert_eq!((p.passed(), held.len()), before, "{:?} changed nothing", f);
        }
        let epoch: u64 = record.epoch.as_deref().unwrap().parse().unwrap();
        prop_assert!(
            !read(&mut p, &mut held, index, record),
            "genuine {:?}",
            record
        );
        if record.marker {
            // `read` checked it released exactly the held records of this
            // epoch and before; none of them is forged.
            prop_assert_eq!(p.passed(), Some(epoch));
        } else {
            genuine_indices.insert(index);
        }
        prop_assert!(held.keys().all(|i| genuine_indices.contains(i)));
        index += 1;
    }
    prop_assert!(held.is_empty());
    prop_assert_eq!(
        p.passed(),
        (!epochs.is_empty())
            .then(|| first + epochs.len() as u64 - 1)
            .or(resumed)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn forged_markers_among_genuine_epochs_freeze_nothing(
        resumed in prop::option::of(0u64..1_000_000),
        epochs in prop::collection::vec(0usize..4, 0..30),
        forged in prop::collection::btree_map(0usize..120, prop::collection::vec(forged(), 1..3), 0..12),
    ) {
        read_with_forgeries(resumed, &epochs, &forged)?;
    }
}

/// The case: a marker of epoch 10^12 between genuine epochs 2 and
/// 3 made every later record late and froze the partition's keys.
#[test]
fn regression_a_far_future_marker_between_epochs_freezes_nothing() {
    let forged = BTreeMap::from([(4, vec![Forged::FarMarker(Far::At(1_000_000_000_000))])]);
    // Epochs 1 and 2 of one record each, then four epochs of two.
    read_with_forgeries(None, &[1, 1, 2, 2, 2, 2], &forged).unwrap();
    let mut p = PartitionEpochs::new();
    let mut held = BTreeMap::new();
    for (i, r) in [genuine(1, false), genuine(1, true), genuine(2, false)]
        .iter()
        .enumerate()
    {
        assert!(!read(&mut p, &mut held, i, r));
    }
    let forged = Record {
        epoch: Some("1000000000000".into()),
        attempt: Some("a".into()),
        marker: true,
        honest: true,
    };
    assert!(read(&mut p, &mut held, 3, &forged), "refused");
    assert_eq!(p.passed(), Some(1));
    assert!(!read(&mut p, &mut held, 4, &genuine(2, true)));
    assert_eq!(p.passed(), Some(2));
    assert!(held.is_empty(), "epoch 2's record released");
    assert!(!read(&mut p, &mut held, 5, &genuine(3, false)));
    assert_eq!(held.len(), 1, "epoch 3's record held, not late");
}

/// Thousands of attempts of one epoch: only `MAX_OPEN_EPOCHS` are held,
/// the rest refused; the marker of one held attempt still releases it.
#[test]
fn a_flood_of_attempts_is_bounded() {
    let mut p = PartitionEpochs::new();
    let mut held = BTreeMap::new();
    let mut refused = 0;
    for i in 0..5_000 {
        let r = Record {
            epoch: Some("3".into()),
            attempt: Some(format!("forged-{i}")),
            marker: false,
            honest: true,
        };
        refused += usize::from(read(&mut p, &mut held, i, &r));
    }
    assert_eq!(held.len(), MAX_OPEN_EPOCHS);
    assert_eq!(refused, 5_000 - MAX_OPEN_EPOCHS);
    let marker = Record {
        epoch: Some("3".into()),
        attempt: Some("forged-7".into()),
        marker: true,
        honest: true,
    };
    assert!(!read(&mut p, &mut held, 5_000, &marker));
    assert!(held.is_empty());
    assert_eq!(p.passed(), Some(3));
}

/// The largest epochs: `u64::MAX` is refused (no epoch follows it), the one
/// before it is read and passed without overflow.
#[test]
fn epochs_at_the_top_of_the_range() {
    let mut p = PartitionEpochs::new();
    let mut held = BTreeMap::new();
    let top = |epoch: u64, marker: bool| Record {
        epoch: Some(epoch.to_string()),
        attempt: Some("a".into()),
        marker,
        honest: true,
    };
    assert!(read(&mut p, &mut held, 0, &top(u64::MAX, false)));
    assert!(read(&mut p, &mut held, 1, &top(u64::MAX, true)));
    assert!(!read(&mut p, &mut held, 2, &top(u64::MAX - 1, false)));
    assert!(!read(&mut p, &mut held, 3, &top(u64::MAX - 1, true)));
    assert_eq!(p.passed(), Some(u64::MAX - 1));
    assert!(held.is_empty());
}
