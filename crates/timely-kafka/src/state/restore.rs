//! Restoring a state: reading a worker's share of the state topic as of the
//! last committed epoch, and giving it to the dataflow at that epoch.

use super::{source_of, StateRecord, StateSummary};
use crate::protocol::Epoch;
use crate::scan::{scan_partitions, Scan};
use crate::timestamp::EpochTimestamp;
use crate::{KafkaConfig, EPOCH_HEADER};
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Scope, Stream};
use timely::progress::Timestamp;

/// Where to restore state from: the state topic, the committed epoch to
/// restore at, and what its progress record said of the state.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::state::{read_state_share, RestoreConfig, StateSummary};
/// use timely_kafka::KafkaConfig;
///
/// let summary = StateSummary { topic: "counters-state".into(), partitions: 3, ..Default::default() };
/// let config = RestoreConfig { kafka: KafkaConfig::new("127.0.0.1:9"), epoch: 12, summary, stall: Duration::from_secs(1) };
/// // Worker 0 of 2 reads partitions 0 and 2; without a broker it says where it failed.
/// let error = read_state_share(&config, 0, 2).unwrap_err();
/// assert!(error.starts_with("restoring state: reading the partitions of counters-state"), "{error}");
/// ```
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// The epoch the state is restored at (the last committed one).
    pub epoch: Epoch,
    /// What that epoch's progress record said of the state topic.
    pub summary: StateSummary,
    /// How long reading may stall before it is an error.
    pub stall: Duration,
}

/// Gives `records` (what [`read_state_share`] read) at `epoch`, then
/// nothing: the restored state, as of the committed epoch.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{Capture, capture::Extract};
/// use timely_kafka::state::{restore_state, state_key};
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<u64, _, _>(|scope| {
///         let records = vec![(state_key("counters", "bikes"), b"42".to_vec())];
///         restore_state(scope, 7, records).capture_into(send);
///     });
/// });
/// // Everything at the committed epoch, 7.
/// let restored: Vec<(u64, Vec<_>)> = receive.extract();
/// assert_eq!(restored.len(), 1);
/// assert_eq!(restored[0].0, 7);
/// assert_eq!(restored[0].1[0].1, b"42");
/// ```
pub fn restore_state<'s, T: EpochTimestamp>(
    scope: Scope<'s, T>,
    epoch: Epoch,
    records: Vec<StateRecord>,
) -> Stream<'s, T, Vec<StateRecord>> {
    source::<_, CapacityContainerBuilder<Vec<_>>, _, _>(
        scope,
        "RestoreState",
        move |capability, _info| {
            let mut pending = Some((capability.delayed(&T::from_epoch(epoch)), records));
            move |output| {
                if let Some((cap, records)) = pending.take() {
                    output.session(&cap).give_iterator(records.into_iter());
                }
            }
        },
    )
}

/// The restored records of the source named `name`, as upserts at their
/// epoch; a record that does not decode calls `failed`, as
/// [`restore_state`] does.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::{capture::Extract, Capture};
/// use timely_kafka::state::{restore_state, restored_upserts, state_key};
///
/// let (send, receive) = std::sync::mpsc::channel();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<u64, _, _>(|scope| {
///         let records = vec![(state_key("counters", "a"), b"12".to_vec()), (state_key("events", "b"), b"1".to_vec())];
///         // Only this source's records; the other source's are for its own upserts.
///         restored_upserts::<_, String, u64>(restore_state(scope, 7, records), "counters", |e| panic!("{e}"))
///             .capture_into(send);
///     });
/// });
/// let restored: Vec<(u64, Vec<_>)> = receive.extract();
/// assert_eq!(restored, [(7, vec![("a".to_owned(), Some(12), 7)])]);
/// ```
pub fn restored_upserts<'s, T, K, V>(
    restored: Stream<'s, T, Vec<StateRecord>>,
    name: &str,
    failed: impl Fn(String) + 'static,
) -> Stream<'s, T, Vec<(K, Option<V>, T)>>
where
    T: Timestamp,
    K: DeserializeOwned + Clone + 'static,
    V: DeserializeOwned + Clone + 'static,
{
    let name = name.to_owned();
    restored.unary::<CapacityContainerBuilder<Vec<_>>, _, _, _>(
        Pipeline,
        "RestoredUpserts",
        move |_capability, _info| {
            move |input, output| {
                input.for_each(|capability, records| {
                    let time = capability.time().clone();
                    let mut session = output.session(&capability);
                    for (key, value) in records.drain(..) {
                        if source_of(&key) != Some(name.as_str()) {
                            continue;
                        }
                        let json = &key[name.len() + 1..];
                        let decoded = serde_json::from_slice::<K>(json).and_then(|k| {
                            serde_json::from_slice::<V>(&value).map(|v| (k, Some(v), time.clone()))
                        });
                        match decoded {
                            Ok(upsert) => session.give(upsert),
                            Err(e) => failed(format!(
                                "restoring {name}: the state record {:?} does not decode: {e}",
                                String::from_utf8_lossy(json)
                            )),
                        }
                    }
                });
            }
        },
    )
}

/// Reads the share of the state topic of worker `index` of `peers` (the
/// partitions `i % peers == index`): every live state record `(key, value)`
/// as of `config.epoch`. Records of later epochs (written by a transaction
/// that never committed, on a broker that shows them) are left out. When a
/// partition holds a different number of keys than the progress record
/// says, or the topic has a different number of partitions, it is an error:
/// restoring part of a state would give wrong counts. Every worker must
/// know that every share is whole before any epoch is written (the
/// aggregator agrees on it before it builds its dataflow).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::state::{read_state_share, RestoreConfig, StateSummary};
/// use timely_kafka::KafkaConfig;
///
/// let summary = StateSummary { topic: "counters-state".into(), partitions: 1, ..Default::default() };
/// let config = RestoreConfig { kafka: KafkaConfig::new("127.0.0.1:9"), epoch: 3, summary, stall: Duration::from_secs(1) };
/// // An error rather than part of a state: counts from part of it would be wrong.
/// let error = read_state_share(&config, 0, 1).unwrap_err();
/// assert!(error.contains("counters-state"), "{error}");
/// ```
pub fn read_state_share(
    config: &RestoreConfig,
    index: usize,
    peers: usize,
) -> Result<Vec<StateRecord>, String> {
    let summary = &config.summary;
    let watermarks = crate::scan::watermarks(&config.kafka, &summary.topic, config.stall)
        .map_err(|e| format!("restoring state: {e}"))?;
    let partitions = i32::try_from(watermarks.len()).unwrap_or(i32::MAX);
    if partitions != summary.partitions {
        return Err(format!(
            "restoring state: {} has {partitions} partitions where the state was written to {}; \
             a state topic's partitions cannot change (delete the output and state topics to start over)",
            summary.topic, summary.partitions
        ));
    }
    // From the first offset kept, not `Offset::Beginning`, which librdkafka
    // resolves with an offset query that waits half a second for metadata.
    let mine: Vec<(i32, Offset)> = (0..partitions)
        .zip(&watermarks)
        .filter(|(p, _)| usize::try_from(*p).is_ok_and(|p| p % peers == index))
        .map(|(p, (low, _))| (p, Offset::Offset(*low)))
        .collect();
    let mut state: HashMap<i32, HashMap<Vec<u8>, Vec<u8>>> = HashMap::new();
    let mut later = 0u64;
    let mut problem = None;
    scan_partitions(
        &config.kafka,
        "restoring state",
        &summary.topic,
        &mine,
        &[("isolation.level", "read_committed")],
        config.stall,
        |message| {
            let epoch = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == EPOCH_HEADER))
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<Epoch>().ok());
            let Some(epoch) = epoch else {
                problem.get_or_insert(format!(
                    "{}[{}]@{} has no readable {EPOCH_HEADER} header: is it a state topic?",
                    summary.topic,
                    message.partition(),
                    message.offset()
                ));
                return Scan::More;
            };
            if epoch > config.epoch {
                later += 1;
                return Scan::More;
            }
            let Some(key) = message.key() else {
                return Scan::More;
            };
            let keys = state.entry(message.partition()).or_default();
            match message.payload() {
                Some(value) => keys.insert(key.to_vec(), value.to_vec()),
                None => keys.remove(key),
            };
            Scan::More
        },
    )
    .map_err(|e| format!("restoring state: {e}"))?;
    if let Some(problem) = problem {
        return Err(format!("restoring state: {problem}"));
    }
    if later > 0 {
        tracing::warn!(
            records = later,
            "restoring state: left out state records of epochs after {} (never committed)",
            config.epoch
        );
    }
    for (partition, _) in &mine {
        let found = state.get(partition).map_or(0, |k| k.len() as u64);
        let expected = summary.keys.get(partition).copied().unwrap_or(0);
        if found != expected {
            return Err(format!(
                "restoring state: {}[{partition}] holds {found} keys where the progress of epoch {} \
                 says {expected}: the state topic was truncated, deleted or written by another job; \
                 delete the output and state topics to start over",
                summary.topic, config.epoch
            ));
        }
    }
    let records: Vec<StateRecord> = state.into_values().flatten().collect();
    tracing::info!(
        worker = index,
        keys = records.len(),
        epoch = config.epoch,
        topic = summary.topic,
        "state restored"
    );
    Ok(records)
}
