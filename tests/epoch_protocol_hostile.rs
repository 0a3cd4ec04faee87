//! The epoch protocol under hostile framing, as a source reads it: any
//! headers and values (epochs near `u64::MAX`, garbage, markers whose value
//! disagrees with their headers, thousands of attempts) go through
//! `framing` and `PartitionEpochs` exactly as the source operator drives
//! them. Whatever comes: nothing panics, a refused record is an error (a
//! dead letter), no more than `MAX_OPEN_EPOCHS` (epoch, attempt) pairs are
//! ever held, the passed epoch never goes back, and a marker releases
//! exactly the held records of earlier epochs and of its own attempt, each
//! once.

use proptest::prelude::*;
use std::collections::BTreeMap;
use velib_dataflow::kafka::protocol::{
    framing, EpochMarker, Framed, PartitionEpochs, RecordHeaders, ATTEMPT_HEADER, MARKER_KIND,
    MAX_OPEN_EPOCHS,
};
use velib_dataflow::kafka::{EPOCH_HEADER, KIND_HEADER};

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
            if p.is_full_for(&stamp) {
                return true;
            }
            assert!(p.data(stamp.clone(), index));
            held.insert(index, (stamp.epoch, stamp.attempt));
            false
        }
        Framed::Marker(marker) => {
            let before = p.passed();
            let Some(passed) = p.marker(&marker) else {
                assert!(before.is_some_and(|e| e >= marker.epoch));
                return false;
            };
            assert!(
                before.is_none_or(|e| e < marker.epoch),
                "passed goes forward"
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
