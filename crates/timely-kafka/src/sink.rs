//! The Kafka sink operator: a keyed collection's changes, one Kafka
//! transaction per epoch.
//!
//! For each epoch, once the collection's frontier has passed it, the sink
//! consolidates the epoch's updates into one change per key
//! ([`crate::changes::key_changes`]) and writes, in one transaction: one
//! record per key whose value changed (the new value, or a tombstone when
//! the key is gone), each with the epoch in a [`EPOCH_HEADER`] header; then a
//! progress record on every partition of the topic (key [`PROGRESS_KEY`],
//! header `velib-kind: progress`, value an [`EpochProgress`]) that
//! marks the epoch's output complete. A key whose value did not change is
//! never written.
//!
//! Every epoch goes through one transactional producer, on worker 0: an
//! epoch must be one Kafka transaction, and a transaction belongs to one
//! producer. What the sink writes is what changed, which is small next to
//! what the dataflow reads.

use super::dead_letter::DeadLetter;
use super::protocol::{Epoch, EpochTime};
use super::source::{SourcePosition, SourceProgress};
use super::state::{count_keys, no_state, StateChange, StateChanges, StateSummary};
use super::timestamp::EpochTimestamp;
use super::transaction::{is_fatal, owned_headers, TransactionalProducer};
use super::{KafkaConfig, KafkaError, EPOCH_HEADER, KIND_HEADER, PROGRESS_KEY};
use crate::changes::{key_changes, KeyChange};
use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::BaseRecord;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// How a key and its value become a Kafka record.
///
/// # Examples
///
/// An encoder of your own: plain text.
///
/// ```
/// use timely_kafka::sink::{EpochProgress, RecordEncoder};
///
/// struct Text;
/// impl RecordEncoder<String, i64> for Text {
///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
///     fn value(&self, _: &String, value: &i64, progress: &EpochProgress) -> Vec<u8> {
///         format!("{value} at epoch {}", progress.epoch).into_bytes()
///     }
/// }
/// let progress = EpochProgress { epoch: 3, ..Default::default() };
/// assert_eq!(Text.value(&"a".into(), &12, &progress), b"12 at epoch 3");
/// ```
pub trait RecordEncoder<K, V>: 'static {
    /// The record's key.
    fn key(&self, key: &K) -> Vec<u8>;
    /// The record's value for `key`'s new `value` in the epoch `progress`
    /// describes.
    fn value(&self, key: &K, value: &V, progress: &EpochProgress) -> Vec<u8>;
}

/// What the progress record of an epoch says: the epoch, the feed's time of
/// its snapshot, and where each source partition stood once the epoch was
/// read (the offset of its first record not in this or an earlier epoch).
/// A restart reads it to know where it stands.
///
/// # Examples
///
/// ```
/// use timely_kafka::sink::EpochProgress;
///
/// let progress: EpochProgress = serde_json::from_str(
///     r#"{"epoch":42,"feed_time":1732004538,"positions":{"events":{"0":1290,"1":1187}}}"#)?;
/// assert_eq!(progress.positions["events"][&1], 1187);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// The epoch.
    pub epoch: Epoch,
    /// The feed's time of the epoch's snapshot, when a source said.
    pub feed_time: Option<EpochTime>,
    /// Topic → partition → next offset, for every partition read so far.
    pub positions: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Topic → partition → the epoch of the last marker it passed: this
    /// epoch, or an earlier one for a partition whose later markers the
    /// cleaner removed (their records come with a later marker). Absent in
    /// progress records of older versions: this epoch.
    #[serde(default)]
    pub passed: BTreeMap<String, BTreeMap<i32, Epoch>>,
    /// What the state topic holds as of this epoch, when the sink writes one
    /// ([`KafkaSink::kafka_sink_with_state`]).
    // Always written (`null` when none), never skipped: a progress record
    // also crosses timely's exchange between processes, in bincode, which
    // cannot tell a skipped field from the next one.
    #[serde(default)]
    pub state: Option<StateSummary>,
    /// How old the feed's snapshot was when this epoch was written: the
    /// writer's clock at its transaction, minus [`Self::feed_time`], in
    /// seconds (what a reader shows as the data's age). Absent without a
    /// feed time, and in progress records of older versions.
    #[serde(default)]
    pub feed_age_s: Option<i64>,
    /// What the records' values are, as the job named it
    /// ([`SinkConfig::value_format`]); absent when it named none, and in
    /// progress records of older versions.
    // Always written, for the same reason as `state`.
    #[serde(default)]
    pub value_format: Option<String>,
}

impl EpochProgress {
    /// Moves the positions on with what the sources said of `epoch`.
    fn advance(&mut self, epoch: Epoch, reports: &[SourcePosition]) {
        self.epoch = epoch;
        self.feed_time = reports.iter().filter_map(|r| r.feed_time).max();
        for r in reports {
            let next = self
                .positions
                .entry(r.topic.clone())
                .or_default()
                .entry(r.partition)
                .or_insert(r.next_offset);
            *next = (*next).max(r.next_offset);
            let passed = self
                .passed
                .entry(r.topic.clone())
                .or_default()
                .entry(r.partition)
                .or_insert(r.passed);
            *passed = (*passed).max(r.passed);
        }
    }
}

/// Where and how the sink writes.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::sink::SinkConfig;
/// use timely_kafka::KafkaConfig;
///
/// let mut config = SinkConfig::new(
///     KafkaConfig::new("127.0.0.1:9092"),
///     "counts",
///     "counts-sink",
/// );
/// config.timeout = Duration::from_secs(10);
/// ```
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// The output topic (it should exist: see [`super::topics::ensure_topics`]).
    pub topic: String,
    /// The producer's `transactional.id`: stable across restarts of the same
    /// job, so that a restarted sink fences its predecessor.
    pub transactional_id: String,
    /// How long a transaction step may take before it is retried.
    pub timeout: Duration,
    /// Where [`KafkaSink::kafka_sink_with_state`] writes the state (a compacted topic
    /// that should exist); `None` writes none.
    pub state_topic: Option<String>,
    /// Where [`KafkaSink::kafka_sink_with_state`] writes the sources' dead letters;
    /// `None` writes none (they are still counted by the sources).
    pub dead_letter_topic: Option<String>,
    /// The last committed progress ([`super::progress::last_progress`]):
    /// epochs up to it are not written again, and the positions and state
    /// counts go on from it.
    pub resume: Option<EpochProgress>,
    /// What the records' values are, for jobs whose options change them
    /// (a field more or less): written in every progress record, and a
    /// resume from a progress record naming another format is refused.
    /// The sink writes only the keys whose value changed, so resuming in
    /// another format would leave the topic's keys in two formats.
    pub value_format: Option<String>,
}

impl SinkConfig {
    /// Writing to `topic` with `transactional.id` `transactional_id`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkConfig;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = SinkConfig::new(KafkaConfig::new("127.0.0.1:9092"), "counters", "counters-sink");
    /// // Output only, from the first epoch: no state, no dead letters, nothing to resume.
    /// assert!(config.state_topic.is_none() && config.dead_letter_topic.is_none() && config.resume.is_none());
    /// assert_eq!(config.transactional_id, "counters-sink");
    /// ```
    pub fn new(
        kafka: KafkaConfig,
        topic: impl Into<String>,
        transactional_id: impl Into<String>,
    ) -> Self {
        SinkConfig {
            kafka,
            topic: topic.into(),
            transactional_id: transactional_id.into(),
            timeout: Duration::from_secs(30),
            state_topic: None,
            dead_letter_topic: None,
            resume: None,
            value_format: None,
        }
    }
}

/// What the sink has done: the last committed epoch, or why it stopped.
///
/// Cloned handles share the state; the driver of the dataflow reads it.
///
/// # Examples
///
/// ```
/// use timely_kafka::sink::SinkHandle;
///
/// let handle = SinkHandle::default();
/// // Pass a clone to `kafka_sink`; read what it did from this one.
/// assert_eq!((handle.committed(), handle.records(), handle.error()), (None, 0, None));
/// assert_eq!(handle.close_to_commit().count(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SinkHandle {
    state: Arc<Mutex<SinkState>>,
}

#[derive(Debug, Default)]
struct SinkState {
    committed: Option<Epoch>,
    records: u64,
    error: Option<String>,
    close_to_commit: LatencyHistogram,
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, in seconds.
///
/// # Examples
///
/// ```
/// use timely_kafka::sink::{LatencyHistogram, LATENCY_BUCKETS};
///
/// let mut h = LatencyHistogram::default();
/// h.observe(0.04);
/// // One bucket per bound, as a Prometheus histogram's `le` labels.
/// let buckets = h.cumulative();
/// assert_eq!(buckets.len(), LATENCY_BUCKETS.len());
/// assert_eq!(buckets[2], (LATENCY_BUCKETS[2], 1));
/// ```
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How long epochs took from their close (the producer's marker) to their
/// output committed: a histogram, as Prometheus keeps them.
///
/// # Examples
///
/// ```
/// use timely_kafka::sink::LatencyHistogram;
///
/// let mut h = LatencyHistogram::default();
/// h.observe(0.3);
/// h.observe(12.0);
/// assert_eq!(h.count(), 2);
/// // Cumulative counts per bucket: 0.3 s is under 0.5 s, 12 s under 30 s.
/// assert_eq!(h.cumulative()[5], (0.5, 1));
/// assert_eq!(h.cumulative()[10], (30.0, 2));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl LatencyHistogram {
    /// Counts one observation of `seconds`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::LatencyHistogram;
    ///
    /// let mut h = LatencyHistogram::default();
    /// // Beyond the last bucket: counted, and in the sum, but in no bucket.
    /// h.observe(120.0);
    /// assert_eq!((h.count(), h.sum()), (1, 120.0));
    /// assert_eq!(h.cumulative().last(), Some(&(60.0, 0)));
    /// ```
    pub fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Observations.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::LatencyHistogram;
    ///
    /// let mut h = LatencyHistogram::default();
    /// h.observe(0.1);
    /// h.observe(0.2);
    /// assert_eq!(h.count(), 2);
    /// ```
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum, in seconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::LatencyHistogram;
    ///
    /// let mut h = LatencyHistogram::default();
    /// h.observe(0.5);
    /// h.observe(1.5);
    /// // With the count, the mean latency.
    /// assert_eq!(h.sum() / h.count() as f64, 1.0);
    /// ```
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations at most that)` per bucket; the count is
    /// the `+Inf` bucket.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::LatencyHistogram;
    ///
    /// let mut h = LatencyHistogram::default();
    /// h.observe(0.02);
    /// h.observe(3.0);
    /// let le = |bound| h.cumulative().into_iter().find(|(b, _)| *b == bound).unwrap().1;
    /// assert_eq!((le(0.025), le(2.5), le(5.0)), (1, 1, 2));
    /// ```
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(bound, n)| {
                total += n;
                (*bound, total)
            })
            .collect()
    }
}

impl SinkHandle {
    /// The last epoch whose output is committed.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkHandle;
    ///
    /// // Before the first commit, and after a restart until the next one.
    /// let handle = SinkHandle::default();
    /// assert_eq!(handle.committed(), None);
    /// ```
    pub fn committed(&self) -> Option<Epoch> {
        self.state.lock().map(|s| s.committed).unwrap_or(None)
    }

    /// The time from each epoch's close to its output committed.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkHandle;
    ///
    /// let handle = SinkHandle::default();
    /// // A copy: the sink goes on observing into the handle's own.
    /// let latency = handle.close_to_commit();
    /// assert_eq!((latency.count(), latency.sum()), (0, 0.0));
    /// ```
    pub fn close_to_commit(&self) -> LatencyHistogram {
        self.state
            .lock()
            .map(|s| s.close_to_commit.clone())
            .unwrap_or_default()
    }

    /// Records written in committed epochs (progress records excluded).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkHandle;
    ///
    /// let handle = SinkHandle::default();
    /// assert_eq!(handle.records(), 0);
    /// ```
    pub fn records(&self) -> u64 {
        self.state.lock().map(|s| s.records).unwrap_or(0)
    }

    /// Why the sink stopped writing, if it did (a fenced producer, a broker
    /// that refuses the topic…). It writes nothing more after an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkHandle;
    ///
    /// let handle = SinkHandle::default();
    /// assert_eq!(handle.error(), None);
    /// // Cloned handles share what the sink says.
    /// handle.clone().fail("the output topic is gone".into());
    /// assert_eq!(handle.error().as_deref(), Some("the output topic is gone"));
    /// ```
    pub fn error(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.error.clone())
    }

    /// Stops the sink for `error`: it writes nothing more, not even the
    /// epochs already complete. For what makes the output wrong if written,
    /// such as a state that could not be restored.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::sink::SinkHandle;
    ///
    /// let handle = SinkHandle::default();
    /// handle.fail("the state could not be restored".into());
    /// handle.fail("a later error".into());
    /// // The first reason stays: it is what stopped the sink.
    /// assert_eq!(handle.error().as_deref(), Some("the state could not be restored"));
    /// ```
    pub fn fail(&self, error: String) {
        tracing::error!("Kafka sink stopped: {error}");
        if let Ok(mut s) = self.state.lock() {
            s.error.get_or_insert(error);
        }
    }
}

/// The Kafka sink, as methods of any keyed collection whose time epochs map
/// to ([`EpochTimestamp`]).
///
/// [`KafkaSink::kafka_sink`] writes the changes of the collection (one
/// value per key at every time) to Kafka, one transaction per epoch, and
/// returns the stream of committed epochs: an epoch appears on it once its
/// output is committed, so a probe on it measures "output committed".
///
/// `progress` is what the sources say of each epoch ([`Sources::progress`]);
/// the progress record of an epoch holds their positions as an
/// [`EpochProgress`], and their dead letters go to
/// [`SinkConfig::dead_letter_topic`] in the epoch's transaction: exactly
/// once with the output. An epoch that changes no key but that the sources
/// passed still gets its progress record. Use [`SourceProgress::none`]
/// when the collection does not come from a Kafka source.
///
/// [`Sources::progress`]: crate::source::Sources::progress
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use differential_dataflow::input::Input;
/// use timely_kafka::sink::{EpochProgress, KafkaSink, RecordEncoder, SinkConfig, SinkHandle};
/// use timely_kafka::source::SourceProgress;
/// use timely_kafka::KafkaConfig;
///
/// struct Text;
/// impl RecordEncoder<String, i64> for Text {
///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
///     fn value(&self, _: &String, value: &i64, _: &EpochProgress) -> Vec<u8> { value.to_string().into_bytes() }
/// }
///
/// let handle = SinkHandle::default();
/// let mut config = SinkConfig::new(KafkaConfig::new("127.0.0.1:9"), "counters", "counters-sink");
/// config.timeout = Duration::from_secs(1);
/// let sink = handle.clone();
/// timely::execute_directly(move |worker| {
///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, counters) = scope.new_collection::<(String, i64), isize>();
///         counters.kafka_sink(SourceProgress::none(scope), config, Text, sink);
///         input
///     });
///     input.insert(("a".to_string(), 12));
/// });
/// // No broker: nothing committed, and the handle says why.
/// assert_eq!((handle.committed(), handle.records()), (None, 0));
/// assert!(handle.error().unwrap().contains("127.0.0.1:9"));
/// ```
pub trait KafkaSink<'s, T: EpochTimestamp, K, V> {
    /// Writes the collection's changes, one transaction per epoch.
    ///
    /// # Examples
    ///
    /// A runnable example needs a broker; this one only builds the dataflow.
    ///
    /// ```no_run
    /// use differential_dataflow::input::Input;
    /// use timely_kafka::sink::{EpochProgress, KafkaSink, RecordEncoder, SinkConfig, SinkHandle};
    /// use timely_kafka::source::SourceProgress;
    /// use timely_kafka::KafkaConfig;
    ///
    /// struct Text;
    /// impl RecordEncoder<String, i64> for Text {
    ///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
    ///     fn value(&self, _: &String, value: &i64, _: &EpochProgress) -> Vec<u8> { value.to_string().into_bytes() }
    /// }
    ///
    /// timely::execute_directly(|worker| {
    ///     let handle = SinkHandle::default();
    ///     let config = SinkConfig::new(KafkaConfig::new("127.0.0.1:9092"), "counts", "counts-sink");
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, counts) = scope.new_collection::<(String, i64), isize>();
    ///         counts.kafka_sink(SourceProgress::none(scope), config, Text, handle.clone());
    ///         input
    ///     });
    ///     input.insert(("a".to_string(), 12));
    /// });
    /// ```
    fn kafka_sink<E: RecordEncoder<K, V>>(
        self,
        progress: SourceProgress<'s, T>,
        config: SinkConfig,
        encoder: E,
        handle: SinkHandle,
    ) -> Stream<'s, T, Vec<Epoch>>;

    /// As [`KafkaSink::kafka_sink`], and also writes `state`'s changes
    /// (state records, see [`super::state`]) to [`SinkConfig::state_topic`]
    /// in each epoch's transaction, so that a restart restores the state as
    /// of its last committed epoch ([`super::state::restore_state`]) instead
    /// of reading its inputs again. The progress record says how many keys
    /// each state partition holds.
    ///
    /// With [`SinkConfig::resume`], epochs up to the resumed one are neither
    /// written nor counted: their output is committed already (the restored
    /// state arrives at the resumed epoch).
    ///
    /// # Examples
    ///
    /// A runnable example needs a broker; this one only builds the dataflow.
    ///
    /// ```no_run
    /// use differential_dataflow::input::Input;
    /// use timely_kafka::sink::{EpochProgress, KafkaSink, RecordEncoder, SinkConfig, SinkHandle};
    /// use timely_kafka::source::SourceProgress;
    /// use timely_kafka::state::Changelog;
    /// use timely_kafka::KafkaConfig;
    ///
    /// struct Text;
    /// impl RecordEncoder<String, i64> for Text {
    ///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
    ///     fn value(&self, _: &String, value: &i64, _: &EpochProgress) -> Vec<u8> { value.to_string().into_bytes() }
    /// }
    ///
    /// timely::execute_directly(|worker| {
    ///     let mut config = SinkConfig::new(KafkaConfig::new("127.0.0.1:9092"), "counts", "counts-sink");
    ///     config.state_topic = Some("counts-state".into());
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, counts) = scope.new_collection::<(String, i64), isize>();
    ///         // Here the state is the output itself; usually it is the inputs' upserts.
    ///         let state = counts.clone().state_changes("counts");
    ///         counts.kafka_sink_with_state(state, SourceProgress::none(scope), config, Text, SinkHandle::default());
    ///         input
    ///     });
    ///     input.insert(("a".to_string(), 12));
    /// });
    /// ```
    fn kafka_sink_with_state<E: RecordEncoder<K, V>>(
        self,
        state: StateChanges<'s, T>,
        progress: SourceProgress<'s, T>,
        config: SinkConfig,
        encoder: E,
        handle: SinkHandle,
    ) -> Stream<'s, T, Vec<Epoch>>;
}

impl<'s, T, K, V> KafkaSink<'s, T, K, V> for VecCollection<'s, T, (K, V)>
where
    T: EpochTimestamp,
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
{
    fn kafka_sink<E: RecordEncoder<K, V>>(
        self,
        progress: SourceProgress<'s, T>,
        config: SinkConfig,
        encoder: E,
        handle: SinkHandle,
    ) -> Stream<'s, T, Vec<Epoch>> {
        let state = no_state(self.inner.scope());
        write_epochs(self, state, progress, config, encoder, handle)
    }

    fn kafka_sink_with_state<E: RecordEncoder<K, V>>(
        self,
        state: StateChanges<'s, T>,
        progress: SourceProgress<'s, T>,
        config: SinkConfig,
        encoder: E,
        handle: SinkHandle,
    ) -> Stream<'s, T, Vec<Epoch>> {
        write_epochs(self, state, progress, config, encoder, handle)
    }
}

/// The sink's operator, on worker 0.
fn write_epochs<'s, T, K, V, E>(
    collection: VecCollection<'s, T, (K, V)>,
    state: StateChanges<'s, T>,
    progress: SourceProgress<'s, T>,
    config: SinkConfig,
    encoder: E,
    handle: SinkHandle,
) -> Stream<'s, T, Vec<Epoch>>
where
    T: EpochTimestamp,
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
    E: RecordEncoder<K, V>,
{
    let SourceProgress {
        positions,
        dead_letters,
    } = progress;
    let writer_worker = collection.inner.scope().index() == 0;
    let dead_letters = as_rows(dead_letters, "DeadLetterRows", SinkRow::DeadLetter);
    let state = as_rows(state, "StateRows", SinkRow::State);
    let rows = collection
        .map(|(k, v)| SinkRow::Output(k, v))
        .concat(state)
        .concat(dead_letters);
    let resumed = config.resume.as_ref().map(|r| r.epoch);
    if let (Some(epoch), Ok(mut s)) = (resumed, handle.state.lock()) {
        s.committed = Some(epoch);
    }
    rows.inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Epoch>>, _, _, _, _>(
            positions,
            Exchange::new(|_| 0),
            Exchange::new(|_| 0),
            "KafkaSink",
            move |_capability, _info| {
                let mut writer = if writer_worker {
                    match Writer::connect(&config) {
                        Ok(w) => Some(w),
                        Err(e) => {
                            handle.fail(e.to_string());
                            None
                        }
                    }
                } else {
                    None
                };
                let mut pending: BTreeMap<Epoch, OpenEpoch<T, K, V>> = BTreeMap::new();
                let mut progress = config.resume.clone().unwrap_or_default();
                progress.value_format = config.value_format.clone();
                // Resumed without a state topic (written by a sink without
                // one): the skipped epochs' state is written with the first
                // epoch written, so that the state topic holds it all.
                let mut carried: HashMap<Vec<u8>, StateChange> = HashMap::new();
                let carry = config.state_topic.is_some()
                    && config.resume.as_ref().is_some_and(|r| r.state.is_none());
                if let Some(w) = &writer {
                    match (&mut progress.state, &config.state_topic) {
                        (Some(state), Some(_)) => state.partitions = w.state_partitions,
                        (None, Some(topic)) => {
                            progress.state = Some(StateSummary {
                                topic: topic.clone(),
                                partitions: w.state_partitions,
                                ..Default::default()
                            })
                        }
                        (_, None) => progress.state = None,
                    }
                }
                move |(updates, updates_frontier), (reports, reports_frontier), output| {
                    updates.for_each(|capability, data| {
                        // Group by each update's own time: differential ships
                        // updates under coarser capabilities than their times.
                        for (row, time, diff) in data.drain(..) {
                            let open = pending
                                .entry(time.epoch())
                                .or_insert_with(|| OpenEpoch::new(capability.delayed(&time, 0)));
                            match row {
                                SinkRow::Output(k, v) => open.updates.push(((k, v), diff)),
                                SinkRow::State(change) => open.state.push(change),
                                SinkRow::DeadLetter(letter) => open.dead_letters.push(letter),
                            }
                        }
                    });
                    reports.for_each(|capability, data| {
                        let time = *capability.time();
                        pending
                            .entry(time.epoch())
                            .or_insert_with(|| OpenEpoch::new(capability.delayed(&time, 0)))
                            .positions
                            .append(data);
                    });
                    while let Some(entry) = pending.first_entry() {
                        let epoch = *entry.key();
                        // Complete once no time of it can come: the frontier
                        // is at the next epoch's first time (an epoch may span
                        // many times, as milliseconds of a `Duration`).
                        let next = T::from_epoch(epoch.saturating_add(1));
                        if updates_frontier.less_than(&next) || reports_frontier.less_than(&next) {
                            break;
                        }
                        let open = entry.remove();
                        if resumed.is_some_and(|r| epoch <= r) {
                            // Committed before the restart.
                            if carry {
                                // Kept consolidated: as large as the state,
                                // not as the skipped history.
                                for change in open.state {
                                    carry_change(&mut carried, change);
                                }
                            }
                            output.session(&open.capability).give(epoch);
                            continue;
                        }
                        if handle.error().is_some() {
                            // Failed from outside (a restore): write nothing.
                            writer = None;
                        }
                        let Some(w) = writer.as_mut() else { continue };
                        progress.advance(epoch, &open.positions);
                        progress.feed_age_s = progress.feed_time.map(|t| now_ms() / 1000 - t);
                        let state = if carried.is_empty() {
                            open.state
                        } else {
                            for change in open.state {
                                carry_change(&mut carried, change);
                            }
                            std::mem::take(&mut carried).into_values().collect()
                        };
                        if let Some(summary) = progress.state.as_mut() {
                            count_keys(summary, &state);
                        }
                        let changes = key_changes(open.updates);
                        let epoch_records = EpochRecords {
                            changes: &changes,
                            state: &state,
                            dead_letters: &open.dead_letters,
                        };
                        match w.write_epoch(&config, &encoder, &epoch_records, &progress) {
                            Ok(()) => {
                                // The epoch closed when its last marker was
                                // written.
                                let closed =
                                    open.positions.iter().filter_map(|p| p.closed_at_ms).max();
                                if let Ok(mut s) = handle.state.lock() {
                                    s.committed = Some(epoch);
                                    s.records += changes.len() as u64;
                                    if let Some(closed) = closed {
                                        s.close_to_commit
                                            .observe((now_ms() - closed) as f64 / 1000.0);
                                    }
                                }
                                output.session(&open.capability).give(epoch);
                            }
                            Err(e) => {
                                handle.fail(e.to_string());
                                writer = None;
                            }
                        }
                    }
                }
            },
        )
}

/// A stream's records as rows of the sink's input, each at its message's
/// time.
fn as_rows<'s, T, D, K, V>(
    stream: Stream<'s, T, Vec<D>>,
    name: &str,
    row: impl Fn(D) -> SinkRow<K, V> + 'static,
) -> VecCollection<'s, T, SinkRow<K, V>>
where
    T: EpochTimestamp,
    D: Clone + 'static,
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
{
    stream
        .unary::<CapacityContainerBuilder<Vec<_>>, _, _, _>(Pipeline, name, |_, _| {
            move |input, output| {
                input.for_each(|capability, records| {
                    let time = *capability.time();
                    output
                        .session(&capability)
                        .give_iterator(records.drain(..).map(|r| (row(r), time, 1)));
                });
            }
        })
        .as_collection()
}

/// Adds `change` to the changes carried over skipped epochs: one per key.
fn carry_change(carried: &mut HashMap<Vec<u8>, StateChange>, change: StateChange) {
    match carried.remove(change.key()) {
        Some(earlier) => {
            if let Some(both) = earlier.then(change) {
                carried.insert(both.key().to_vec(), both);
            }
        }
        None => {
            carried.insert(change.key().to_vec(), change);
        }
    }
}

/// What the sink's operator receives: a row of the output collection, or a
/// state record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum SinkRow<K, V> {
    Output(K, V),
    State(StateChange),
    DeadLetter(DeadLetter),
}

/// Fences every earlier sink writing as `transactional_id` (initialising a
/// producer with that id aborts its open transaction, so that what is
/// committed can no longer change) and reads the last progress committed on
/// `topic` ([`super::progress::last_progress`]): where a restarted sink
/// stands. Give it to [`SinkConfig::resume`] and the sources'
/// [`super::source::SourceConfig::resume`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::sink::committed_progress;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// // Fencing comes first: without a broker, that is what fails.
/// let error = committed_progress(&kafka, "counters", "counters-sink", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains(r#"initialising transactions as "counters-sink""#), "{error}");
/// ```
pub fn committed_progress(
    kafka: &KafkaConfig,
    topic: &str,
    transactional_id: &str,
    stall: Duration,
) -> Result<Option<EpochProgress>, KafkaError> {
    drop(TransactionalProducer::connect(
        kafka,
        transactional_id,
        stall,
    )?);
    super::progress::last_progress(kafka, topic, stall)
}

/// An epoch not yet complete: the capability to report it, its updates and
/// what the sources said of it.
struct OpenEpoch<T: EpochTimestamp, K, V> {
    capability: Capability<T>,
    updates: Vec<((K, V), isize)>,
    state: Vec<StateChange>,
    positions: Vec<SourcePosition>,
    dead_letters: Vec<DeadLetter>,
}

impl<T: EpochTimestamp, K, V> OpenEpoch<T, K, V> {
    fn new(capability: Capability<T>) -> Self {
        OpenEpoch {
            capability,
            updates: Vec::new(),
            state: Vec::new(),
            positions: Vec::new(),
            dead_letters: Vec::new(),
        }
    }
}

/// What one epoch's transaction writes besides its progress records.
struct EpochRecords<'a, K, V> {
    /// The output's changed keys.
    changes: &'a [KeyChange<K, V>],
    /// The state's changed keys.
    state: &'a [StateChange],
    /// The records the sources could not read.
    dead_letters: &'a [DeadLetter],
}

/// The transactional producer of worker 0.
struct Writer {
    producer: TransactionalProducer,
    partitions: i32,
    /// The state topic's partitions (0 without one).
    state_partitions: i32,
}

/// How many times an epoch's transaction is attempted before the sink stops.
const ATTEMPTS: u32 = 5;

impl Writer {
    fn connect(config: &SinkConfig) -> Result<Self, KafkaError> {
        if let Some(resume) = &config.resume {
            if resume.value_format != config.value_format {
                let name = |f: &Option<String>| f.clone().unwrap_or_else(|| "(none)".into());
                return Err(KafkaError::Topic {
                    topic: config.topic.clone(),
                    problem: format!(
                        "epoch {} was written in the value format {}, and this sink writes {}: \
                         resuming would leave keys in both (only changed keys are written); \
                         write in the committed format, or start over on an empty topic",
                        resume.epoch,
                        name(&resume.value_format),
                        name(&config.value_format)
                    ),
                });
            }
        }
        let producer = TransactionalProducer::connect(
            &config.kafka,
            &config.transactional_id,
            config.timeout,
        )?;
        let partitions = producer.partitions(&config.topic)?;
        let state_partitions = match &config.state_topic {
            Some(topic) => producer.partitions(topic)?,
            None => 0,
        };
        Ok(Writer {
            producer,
            partitions,
            state_partitions,
        })
    }

    /// Writes one epoch in one transaction, retrying the whole transaction
    /// when the broker asks for an abort or a retriable error occurs.
    fn write_epoch<K, V, E: RecordEncoder<K, V>>(
        &mut self,
        config: &SinkConfig,
        encoder: &E,
        records: &EpochRecords<'_, K, V>,
        progress: &EpochProgress,
    ) -> Result<(), KafkaError> {
        let epoch = progress.epoch;
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let Err((e, committing)) = self.try_write_epoch(config, encoder, records, progress)
            else {
                return Ok(());
            };
            if committing && !is_fatal(&e) && self.producer.given_up() {
                // librdkafka gave up on the producer while committing: the
                // commit may have reached the coordinator, which then
                // completes it. The new producer's initialisation settles
                // it either way; writing the epoch again without looking
                // would write it twice.
                if self.committed_meanwhile(config, epoch)? {
                    tracing::warn!(
                        epoch,
                        "the producer failed while committing the epoch ({e}), but the commit went through: not writing it again"
                    );
                    return Ok(());
                }
            }
            self.producer.abort();
            if attempt == ATTEMPTS || is_fatal(&e) {
                return Err(KafkaError::Client {
                    context: format!(
                        "writing epoch {epoch} to {} (attempt {attempt})",
                        config.topic
                    ),
                    source: e,
                });
            }
            tracing::warn!(epoch, attempt, "epoch's transaction failed, retrying: {e}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    /// Whether `epoch` is committed after all: the producer replaced
    /// (which settles the old one's transaction), then the output's last
    /// progress read back.
    fn committed_meanwhile(
        &mut self,
        config: &SinkConfig,
        epoch: Epoch,
    ) -> Result<bool, KafkaError> {
        let context = || format!("settling epoch {epoch}'s commit on {}", config.topic);
        self.producer
            .replace_if_given_up()
            .map_err(|source| KafkaError::Client {
                context: context(),
                source,
            })?;
        let last =
            super::progress::last_progress(self.producer.kafka(), &config.topic, config.timeout)?;
        Ok(last.is_some_and(|p| p.epoch >= epoch))
    }

    /// Writes the epoch's transaction; an error says whether it came from
    /// the commit itself (whose outcome the broker may know better).
    fn try_write_epoch<K, V, E: RecordEncoder<K, V>>(
        &mut self,
        config: &SinkConfig,
        encoder: &E,
        records: &EpochRecords<'_, K, V>,
        progress: &EpochProgress,
    ) -> Result<(), (RdKafkaError, bool)> {
        self.send_epoch(config, encoder, records, progress)
            .map_err(|e| (e, false))?;
        self.producer.commit().map_err(|e| (e, true))
    }

    /// Begins the epoch's transaction and sends its records.
    fn send_epoch<K, V, E: RecordEncoder<K, V>>(
        &mut self,
        config: &SinkConfig,
        encoder: &E,
        records: &EpochRecords<'_, K, V>,
        progress: &EpochProgress,
    ) -> Result<(), RdKafkaError> {
        let epoch_header = [(EPOCH_HEADER, progress.epoch.to_string())];
        self.producer.begin()?;
        for change in records.changes {
            let (key, value) = match change {
                KeyChange::Upsert(k, v) => (encoder.key(k), Some(encoder.value(k, v, progress))),
                KeyChange::Delete(k) => (encoder.key(k), None),
            };
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&config.topic)
                .key(&key[..])
                .headers(owned_headers(&epoch_header));
            if let Some(value) = &value {
                record = record.payload(&value[..]);
            }
            self.producer.send(record)?;
        }
        if let Some(topic) = &config.dead_letter_topic {
            for letter in records.dead_letters {
                self.producer.send(letter.record(topic))?;
            }
        }
        if let Some(topic) = &config.state_topic {
            for change in records.state {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                    .partition(change.partition(self.state_partitions))
                    .key(change.key())
                    .headers(owned_headers(&epoch_header));
                if let Some(value) = change.value() {
                    record = record.payload(value);
                }
                self.producer.send(record)?;
            }
        }
        let progress = serde_json::to_string(progress)
            .expect("progress of integers and strings always serialises");
        let progress_headers = [
            (EPOCH_HEADER, epoch_header[0].1.clone()),
            (KIND_HEADER, "progress".to_owned()),
        ];
        for partition in 0..self.partitions {
            let record: BaseRecord<'_, str, str> = BaseRecord::to(&config.topic)
                .partition(partition)
                .key(PROGRESS_KEY)
                .payload(progress.as_str())
                .headers(owned_headers(&progress_headers));
            self.producer.send(record)?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A progress record crosses timely's exchange between processes (a
    /// restart shares the committed one with every worker), in bincode,
    /// which has no field names: every field must be written, absent or not.
    #[test]
    fn a_progress_record_survives_the_exchange_between_processes_whatever_it_lacks() {
        let bare = EpochProgress {
            epoch: 3,
            ..Default::default()
        };
        let full = EpochProgress {
            epoch: 4,
            feed_time: Some(1_732_004_538),
            state: Some(StateSummary {
                topic: "s".into(),
                partitions: 2,
                ..Default::default()
            }),
            feed_age_s: Some(7),
            value_format: Some("typed".into()),
            ..Default::default()
        };
        for progress in [bare, full] {
            // Followed by another value, as inside a larger message.
            let bytes = bincode::serialize(&(progress.clone(), true)).unwrap();
            let back: (EpochProgress, bool) = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, (progress.clone(), true));
            // And JSON, as the progress topic holds it, both ways.
            let json = serde_json::to_string(&progress).unwrap();
            assert_eq!(
                serde_json::from_str::<EpochProgress>(&json).unwrap(),
                progress
            );
        }
        // An older record, without the newer fields, still reads.
        let old: EpochProgress =
            serde_json::from_str(r#"{"epoch":1,"feed_time":null,"positions":{}}"#).unwrap();
        assert_eq!(
            (old.state, old.feed_age_s, old.value_format),
            (None, None, None)
        );
    }
}
