//! Checks of what the sink wrote, epoch by epoch, against the reference.

use super::State;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::output::PostcodeRecord;
use velib_dataflow::postcode::Postcode;
use velib_dataflow::snapshot::EpochUpdates;

// Kept beside the broker, whose kcat reads need it; not every test uses it.
#[allow(unused_imports)]
pub use super::broker::header;

/// The records on an output topic (kcat's -J envelopes) hold, for each
/// epoch, exactly one record per postcode whose counts changed, equal to
/// the from-scratch reference, then one progress record per partition; and
/// nothing else. Returns the progress records' values by epoch.
pub fn assert_epochs_on_topic(
    records: &[Value],
    epochs: &[(EpochUpdates, State)],
) -> BTreeMap<Epoch, Value> {
    assert_system_epochs_on_topic(records, epochs, None)
}

/// As [`assert_epochs_on_topic`], for a named system's output: every record
/// says `"system": system`.
pub fn assert_system_epochs_on_topic(
    records: &[Value],
    epochs: &[(EpochUpdates, State)],
    system: Option<&str>,
) -> BTreeMap<Epoch, Value> {
    assert_records_on_topic(records, epochs, |p, counts, epoch, feed_time| {
        PostcodeRecord {
            system: system.map(str::to_owned),
            ..PostcodeRecord::new(p, counts, epoch, feed_time)
        }
    })
}

/// As [`assert_epochs_on_topic`], with reference values of any kind, each
/// postcode's record being `record` of its value.
pub fn assert_records_on_topic<V: PartialEq + Clone>(
    records: &[Value],
    epochs: &[(EpochUpdates, BTreeMap<Postcode, V>)],
    record: impl Fn(&Postcode, &V, Epoch, velib_dataflow::feed::FeedTime) -> PostcodeRecord,
) -> BTreeMap<Epoch, Value> {
    let all_partitions: BTreeSet<i64> = records
        .iter()
        .filter(|r| header(r, "velib-kind") == Some("progress"))
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    let mut progress_values = BTreeMap::new();
    let mut by_epoch: BTreeMap<Epoch, Vec<&Value>> = BTreeMap::new();
    let mut progress: BTreeMap<Epoch, Vec<i64>> = BTreeMap::new();
    for record in records {
        let epoch: Epoch = header(record, "velib-epoch")
            .expect("every record has its epoch")
            .parse()
            .unwrap();
        if header(record, "velib-kind") == Some("progress") {
            let value: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
            assert_eq!(value["epoch"], epoch);
            progress_values.insert(epoch, value.clone());
            progress
                .entry(epoch)
                .or_default()
                .push(record["partition"].as_i64().unwrap());
        } else {
            by_epoch.entry(epoch).or_default().push(record);
        }
    }
    let mut previous = BTreeMap::new();
    for (updates, expected) in epochs {
        let epoch = updates.epoch;
        let mut partitions = progress.remove(&epoch).unwrap_or_default();
        partitions.sort();
        assert!(
            !partitions.is_empty(),
            "epoch {epoch} has its progress records"
        );
        assert_eq!(
            partitions,
            all_partitions.iter().copied().collect::<Vec<_>>(),
            "epoch {epoch}: one progress record per partition"
        );
        let mut written: BTreeMap<String, Value> = BTreeMap::new();
        for record in by_epoch.remove(&epoch).unwrap_or_default() {
            let key = record["key"].as_str().unwrap().to_owned();
            assert!(
                written
                    .insert(key.clone(), record["payload"].clone())
                    .is_none(),
                "epoch {epoch}: {key} written twice"
            );
        }
        let changed = changed_postcodes(&previous, expected);
        assert_eq!(
            written.keys().cloned().collect::<Vec<_>>(),
            changed,
            "epoch {epoch}: exactly the changed postcodes"
        );
        for (postcode, payload) in written {
            let want = expected.iter().find(|(p, _)| p.as_str() == postcode);
            match want {
                Some((p, counts)) => {
                    let got: PostcodeRecord =
                        serde_json::from_str(payload.as_str().unwrap()).unwrap();
                    assert_eq!(got, record(p, counts, epoch, updates.feed_time));
                }
                None => assert!(
                    payload.is_null(),
                    "epoch {epoch}: {postcode} is a tombstone"
                ),
            }
        }
        previous = expected.clone();
    }
    assert!(
        by_epoch.is_empty() && progress.is_empty(),
        "nothing outside the epochs"
    );
    progress_values
}

/// The postcodes whose counts differ between two states, in order.
pub fn changed_postcodes<V: PartialEq>(
    previous: &BTreeMap<Postcode, V>,
    next: &BTreeMap<Postcode, V>,
) -> Vec<String> {
    next.keys()
        .chain(previous.keys())
        .filter(|p| next.get(*p) != previous.get(*p))
        .map(|p| p.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// kcat's records of a producer topic, by epoch: the markers' attempts and
/// the data records.
#[derive(Default, Debug)]
pub struct PublishedEpoch {
    pub marker_attempts: BTreeSet<String>,
    pub markers: usize,
    pub data: Vec<Value>,
}

pub fn published(records: &[Value]) -> BTreeMap<Epoch, PublishedEpoch> {
    let mut epochs: BTreeMap<Epoch, PublishedEpoch> = BTreeMap::new();
    for r in records {
        let epoch: Epoch = header(r, "velib-epoch")
            .expect("every record carries its epoch")
            .parse()
            .unwrap();
        let attempt = header(r, "velib-attempt")
            .expect("every record carries its attempt")
            .to_owned();
        let e = epochs.entry(epoch).or_default();
        if header(r, "velib-kind") == Some("marker") {
            e.marker_attempts.insert(attempt);
            e.markers += 1;
        } else {
            e.data.push(r.clone());
        }
    }
    epochs
}
