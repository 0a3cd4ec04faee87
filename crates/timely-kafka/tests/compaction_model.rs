//! The epoch protocol's compaction rule against a model of Kafka's log
//! cleaner, for any log and any cleaning point: a partition's epochs, each
//! some keyed upserts and then a marker (every marker under one key); the
//! cleaner keeps, of the records before its point, only the last of each key
//! before that point. Reading the cleaned log with `PartitionEpochs` must
//! give, at the last marker, exactly the state of the uncleaned log; and an
//! uncleaned log must release every epoch exactly as it was written. No
//! record of a cleaned log is refused as forged framing (a marker going
//! back, or too far ahead).

use proptest::prelude::*;
use std::collections::BTreeMap;
use timely_kafka::protocol::{EpochMarker, EpochStamp, PartitionEpochs};

#[derive(Clone, Debug)]
enum Entry {
    /// Key, value (`None`: a tombstone), epoch.
    Data(u8, Option<u16>, u64),
    Marker(u64),
}

impl Entry {
    /// The record's key on the log: markers share one.
    fn key(&self) -> Option<u8> {
        match self {
            Entry::Data(k, _, _) => Some(*k),
            Entry::Marker(_) => None,
        }
    }
}

/// Epochs of up to 6 upserts of 8 keys each, written as the producer does.
fn log() -> impl Strategy<Value = Vec<Entry>> {
    let upsert = (0u8..8, prop::option::weighted(0.85, 0u16..50));
    prop::collection::vec(prop::collection::vec(upsert, 0..6), 1..10).prop_map(|epochs| {
        let mut log = Vec::new();
        for (i, upserts) in epochs.into_iter().enumerate() {
            let epoch = i as u64 + 1;
            log.extend(upserts.into_iter().map(|(k, v)| Entry::Data(k, v, epoch)));
            log.push(Entry::Marker(epoch));
        }
        log
    })
}

/// The log after a cleaner pass over the offsets before `point`.
fn clean(log: &[Entry], point: usize) -> Vec<Entry> {
    let point = point.min(log.len());
    let mut last: BTreeMap<Option<u8>, usize> = BTreeMap::new();
    for (i, e) in log[..point].iter().enumerate() {
        last.insert(e.key(), i);
    }
    log.iter()
        .enumerate()
        .filter(|(i, e)| *i >= point || last[&e.key()] == *i)
        .map(|(_, e)| e.clone())
        .collect()
}

/// Reads a log as a source does; returns each release (marker epoch and its
/// upserts, in order).
type Release = (u64, Vec<(u8, Option<u16>)>);

fn read(log: &[Entry]) -> Vec<Release> {
    let mut p = PartitionEpochs::new();
    let mut releases = Vec::new();
    for e in log {
        match e {
            Entry::Data(k, v, epoch) => {
                let stamp = EpochStamp {
                    epoch: *epoch,
                    attempt: "a".into(),
                };
                // What the cleaner leaves is never taken for forged framing.
                assert!(p.check_data(&stamp).is_ok());
                p.data(stamp, (*k, *v));
            }
            Entry::Marker(epoch) => {
                let marker = EpochMarker {
                    epoch: *epoch,
                    attempt: "a".into(),
                    feed_time: None,
                };
                assert!(p.check_marker(&marker).is_ok(), "{marker:?}");
                if let Some(passed) = p.marker(&marker) {
                    releases.push((*epoch, passed.released));
                }
            }
        }
    }
    releases
}

fn apply(releases: &[Release]) -> BTreeMap<u8, u16> {
    let mut state = BTreeMap::new();
    for (_, upserts) in releases {
        for (k, v) in upserts {
            match v {
                Some(v) => state.insert(*k, *v),
                None => state.remove(k),
            };
        }
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_cleaned_log_reads_as_the_same_state_at_its_last_marker(log in log(), point in 0usize..80) {
        let whole = read(&log);
        let cleaned = read(&clean(&log, point));
        // The last marker always survives, and closes everything.
        prop_assert_eq!(cleaned.last().map(|r| r.0), whole.last().map(|r| r.0));
        prop_assert_eq!(apply(&cleaned), apply(&whole));
    }

    #[test]
    fn an_uncleaned_log_releases_every_epoch_as_written(log in log()) {
        let releases = read(&log);
        let mut written: BTreeMap<u64, Vec<(u8, Option<u16>)>> = BTreeMap::new();
        for e in &log {
            match e {
                Entry::Data(k, v, epoch) => written.entry(*epoch).or_default().push((*k, *v)),
                Entry::Marker(epoch) => {
                    written.entry(*epoch).or_default();
                }
            }
        }
        prop_assert_eq!(releases.into_iter().collect::<BTreeMap<_, _>>(), written);
    }
}
