//! The state changelog: what a restarted dataflow needs to resume exactly at
//! its last committed epoch, without reading its inputs' history again.
//!
//! The state of a dataflow fed by upsert sources is the current value of
//! every key of every source. The sink ([`KafkaSink::kafka_sink_with_state`](super::sink::KafkaSink::kafka_sink_with_state))
//! writes, in each epoch's transaction, the keys whose value changed to a
//! compacted **state topic** (one record per key, a tombstone when the key is
//! gone), next to the epoch's output and its progress record; the progress
//! record says how many keys each state partition holds. A restart reads the
//! last committed progress ([`super::progress::last_progress`]), restores the
//! state from the state topic ([`restore_state`]) at that epoch, and seeks
//! every input partition to the position the progress names. Restart cost is
//! the state topic's size: bounded by the number of keys once the cleaner has
//! compacted it, as Kafka Streams' state-store changelogs are.
//!
//! A state record's key is the source's name, a NUL byte, and the source's
//! key as JSON; its value is the key's value as JSON; its `velib-epoch`
//! header is the epoch that set it. Keys are spread over the state topic's
//! partitions by a hash of the key ([`state_partition`]), so that the count of
//! keys per partition can be checked at restore.
//!
//! # Examples
//!
//! ```
//! use timely_kafka::state::{source_of, state_key};
//!
//! let key = state_key("events", &7u64);
//! assert_eq!(key, b"events\07");
//! assert_eq!(source_of(&key), Some("events"));
//! ```

use super::protocol::Epoch;
use super::scan::{scan_partitions, Scan};
use super::timestamp::EpochTimestamp;
use super::{KafkaConfig, EPOCH_HEADER};
use differential_dataflow::{AsCollection, VecCollection};
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Scope, Stream};
use timely::progress::Timestamp;

/// A state record: its key (the source's name, NUL, the key as JSON) and
/// its value (JSON).
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{source_of, state_key, StateRecord};
///
/// let record: StateRecord = (state_key("counters", "a"), b"12".to_vec());
/// assert_eq!(source_of(&record.0), Some("counters"));
/// assert_eq!(serde_json::from_slice::<u64>(&record.1)?, 12);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub type StateRecord = (Vec<u8>, Vec<u8>);

/// What the progress record of an epoch says of the state topic, so that a
/// restore can check it read the whole state.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::StateSummary;
///
/// let summary: StateSummary = serde_json::from_str(
///     r#"{"topic":"counts-state","partitions":3,"keys":{"0":480,"1":502,"2":488},"sources":["entities","events"]}"#)?;
/// assert_eq!(summary.total_keys(), 1470);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    /// The state topic.
    pub topic: String,
    /// Its partitions, when the keys were spread over them.
    pub partitions: i32,
    /// Live keys per partition (a partition not listed has none).
    pub keys: BTreeMap<i32, u64>,
    /// The sources whose keys the state holds.
    pub sources: BTreeSet<String>,
}

impl StateSummary {
    /// Live keys over all partitions.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::state::StateSummary;
    ///
    /// let mut summary = StateSummary::default();
    /// summary.keys.extend([(0, 3), (2, 4)]);
    /// assert_eq!(summary.total_keys(), 7);
    /// ```
    pub fn total_keys(&self) -> u64 {
        self.keys.values().sum()
    }
}

/// The state record key of `key` of the source named `source`.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::state_key;
///
/// // Two sources may share a key: their records do not collide.
/// assert_eq!(state_key("events", "a"), b"events\0\"a\"");
/// assert_ne!(state_key("events", "a"), state_key("counters", "a"));
/// ```
pub fn state_key<K: Serialize + ?Sized>(source: &str, key: &K) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(source.len() + 24);
    bytes.extend_from_slice(source.as_bytes());
    bytes.push(0);
    serde_json::to_writer(&mut bytes, key).expect("a key serialises to JSON");
    bytes
}

/// The source named in a state record key; `None` when it is not one.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{source_of, state_key};
///
/// assert_eq!(source_of(&state_key("counters", &[1, 2])), Some("counters"));
/// // Not a state record key: no NUL after a source name.
/// assert_eq!(source_of(b"counters"), None);
/// ```
pub fn source_of(state_key: &[u8]) -> Option<&str> {
    let end = state_key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&state_key[..end]).ok()
}

/// The state partition of a state record key: FNV-1a of the key, so that it
/// is the same in every process and every version.
///
/// # Examples
///
/// ```
/// use timely_kafka::state::{state_key, state_partition};
///
/// let key = state_key("counters", "a");
/// let partition = state_partition(&key, 6);
/// assert!((0..6).contains(&partition));
/// // The same in every process and every run, so restores can count keys per partition.
/// assert_eq!(partition, state_partition(&key, 6));
/// ```
pub fn state_partition(state_key: &[u8], partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in state_key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(hash % partitions).unwrap_or(0)
}

/// A keyed collection (one value per key, as [`Upsert::upsert_keyed`](crate::upsert::Upsert::upsert_keyed)
/// gives) as state records of the source named `source`: what
/// [`KafkaSink::kafka_sink_with_state`](super::sink::KafkaSink::kafka_sink_with_state) writes to the state topic.
///
/// # Examples
///
/// ```
/// use differential_dataflow::input::Input;
/// use timely_kafka::state::state_records;
/// use std::sync::{Arc, Mutex};
///
/// let out = Arc::new(Mutex::new(Vec::new()));
/// let sink = out.clone();
/// timely::execute_directly(move |worker| {
///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, counters) = scope.new_collection::<(String, u64), isize>();
///         state_records("counters", counters).inspect(move |x| sink.lock().unwrap().push(x.clone()));
///         input
///     });
///     input.insert(("bikes".to_string(), 42));
/// });
/// let out = out.lock().unwrap();
/// assert_eq!(out[0].0, (b"counters\0\"bikes\"".to_vec(), b"42".to_vec()));
/// ```
pub fn state_records<'s, T, K, V>(
    source: &str,
    collection: VecCollection<'s, T, (K, V)>,
) -> VecCollection<'s, T, StateRecord>
where
    T: Timestamp,
    K: differential_dataflow::Data + Serialize,
    V: differential_dataflow::Data + Serialize,
{
    let source = source.to_owned();
    collection.map(move |(key, value)| {
        let value = serde_json::to_vec(&value).expect("a value serialises to JSON");
        (state_key(&source, &key), value)
    })
}

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
    let watermarks = super::scan::watermarks(&config.kafka, &summary.topic, config.stall)
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

/// Counts, per state partition, how the live keys change with an epoch's
/// state changes: `+1` for a new key, `-1` for a key gone.
pub(crate) fn count_keys(summary: &mut StateSummary, updates: &[(StateRecord, isize)]) {
    let mut net: BTreeMap<&[u8], isize> = BTreeMap::new();
    for ((key, _), diff) in updates {
        *net.entry(key.as_slice()).or_default() += diff;
    }
    for (key, diff) in net {
        if diff == 0 {
            continue;
        }
        if let Some(source) = source_of(key) {
            if !summary.sources.contains(source) {
                summary.sources.insert(source.to_owned());
            }
        }
        let count = summary
            .keys
            .entry(state_partition(key, summary.partitions))
            .or_default();
        *count = count.saturating_add_signed(diff as i64);
    }
    summary.keys.retain(|_, n| *n > 0);
}

/// An empty stream of state records: for a sink with no state to keep.
pub(crate) fn no_state<T: Timestamp>(scope: Scope<'_, T>) -> VecCollection<'_, T, StateRecord> {
    timely::dataflow::operators::generic::operator::empty(scope).as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_per_partition() {
        let mut summary = StateSummary {
            partitions: 3,
            ..Default::default()
        };
        let a = state_key("s", &1u64);
        let b = state_key("s", &2u64);
        let kv = |k: &Vec<u8>, v: &[u8]| (k.clone(), v.to_vec());
        count_keys(&mut summary, &[(kv(&a, b"1"), 1), (kv(&b, b"1"), 1)]);
        assert_eq!(summary.total_keys(), 2);
        assert_eq!(summary.sources.iter().collect::<Vec<_>>(), ["s"]);
        // A changed value is no new key; a retraction alone is a key gone.
        count_keys(
            &mut summary,
            &[(kv(&a, b"1"), -1), (kv(&a, b"2"), 1), (kv(&b, b"1"), -1)],
        );
        assert_eq!(summary.total_keys(), 1);
        assert_eq!(summary.keys, BTreeMap::from([(state_partition(&a, 3), 1)]));
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        // FNV-1a is fixed: a restart in another process or version agrees.
        assert_eq!(
            state_partition(b"", 7),
            (0xcbf2_9ce4_8422_2325u64 % 7) as i32
        );
        for n in 0..100u64 {
            let p = state_partition(&state_key("x", &n), 3);
            assert!((0..3).contains(&p));
        }
        assert_eq!(state_partition(b"abc", 0), 0);
    }

    #[test]
    fn a_key_without_source_is_none() {
        assert_eq!(source_of(b"no separator"), None);
        assert_eq!(source_of(b"\xff\0x"), None);
    }
}
