//! The Kafka source operator: records of one or more topics as timestamped
//! keyed upserts, with the epoch protocol turned into timely progress.
//!
//! Partitions are spread over all workers of all processes (the `i`-th
//! partition, in topic and partition order, goes to worker `i % peers`);
//! each worker reads its own with `isolation.level=read_committed` and is
//! woken by librdkafka when a partition's queue fills, never by polling in a
//! loop.
//!
//! With [`Framing::Epochs`] (what this crate's producer writes, see
//! [`super::protocol`]) a worker buffers each partition's records until the
//! epoch's marker, then releases the records of the attempt the marker
//! names at that epoch and drops the others. It holds a capability for the
//! oldest epoch a partition it owns has not passed, so an idle partition
//! stalls nothing: its markers move it on. A marker going back, or a
//! marker or record far beyond the partition's epochs
//! ([`PartitionEpochs::check_marker`]), is forged or broken framing: it
//! goes to the dead letters and the partition reads on as if it were not
//! there.
//!
//! With [`Framing::Ingestion`] (records with no protocol, like the seeds'
//! `producer.py`), epochs are ingestion times in milliseconds: a worker
//! closes one whenever it has caught up with the end of its partitions, and
//! an idle worker moves its capability with the clock so that it never
//! holds back the others.
//!
//! Either way it reads at most [`SourceConfig::read_ahead`] epochs beyond
//! what the `finished` probe says the dataflow has completed, so a backlog
//! waits in Kafka rather than in memory. Records that cannot be read go to
//! the dead-letter topic ([`super::dead_letter`]) and are counted.

use super::config::ReaderContext;
use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::decode::{check_size, DecodeError, RawRecord, RecordDecoder};
use super::protocol::{framing, Framed, PartitionEpochs, RecordHeaders};
use super::protocol::{Epoch, EpochTime};
use super::sink::EpochProgress;
use super::{KafkaConfig, KafkaError, EPOCH_HEADER};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;

/// How the records of the source's topics mark their epochs.
///
/// # Examples
///
/// ```
/// use timely_kafka::source::{Framing, SourceConfig};
/// use timely_kafka::KafkaConfig;
///
/// // A plain producer (the seeds' producer.py) writes records without epochs:
/// let seeds = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"]).framing(Framing::Ingestion);
/// assert_eq!(seeds.framing, Framing::Ingestion);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    /// This crate's epoch protocol: epoch and attempt headers, and a marker
    /// closing each epoch on every partition. Records without the headers go
    /// to the dead-letter topic.
    #[default]
    Epochs,
    /// No protocol (the seeds' format): epochs are ingestion times in
    /// milliseconds since the Unix epoch, closed whenever the worker has
    /// caught up with its partitions. Epoch headers and markers are ignored.
    Ingestion,
}

/// Where the source reads, and how.
///
/// # Examples
///
/// ```
/// use timely_kafka::source::{Framing, SourceConfig};
/// use timely_kafka::KafkaConfig;
///
/// let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"])
///     .framing(Framing::Ingestion)
///     .dead_letters("events-dead-letters");
/// assert_eq!(config.read_ahead, 8);
/// assert_eq!(config.dead_letter_topic.as_deref(), Some("events-dead-letters"));
/// ```
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// The topics, all read with the same decoder.
    pub topics: Vec<String>,
    /// How records mark their epochs.
    pub framing: Framing,
    /// librdkafka's `group.id`. The source assigns partitions itself and
    /// commits nothing; the id only names the client to the broker.
    pub group_id: String,
    /// How many epochs a worker may read beyond what the dataflow has
    /// finished (at least 1).
    pub read_ahead: u64,
    /// Where records that cannot be read are written; `None` to only log and
    /// count them.
    pub dead_letter_topic: Option<String>,
    /// How long to wait for the topics' metadata at start.
    pub metadata_timeout: Duration,
    /// The first epoch the source releases records at: records of earlier
    /// epochs are released at this one, as the state they add up to. Every
    /// source of a dataflow must have the same; [`super::as_of::read_as_of`]
    /// finds the one that compacted topics can still be read exactly from.
    /// 0: every epoch as it is on the log, which on a compacted topic gives
    /// torn epochs (its partitions' collapsed epochs differ). Ignored with
    /// [`Framing::Ingestion`].
    pub as_of: Epoch,
    /// The last committed progress of the sink this source feeds
    /// ([`super::progress::last_progress`]): each partition it names is read
    /// from its position there, as having passed the progress's epoch; the
    /// others from their start. The dataflow's state as of that epoch comes
    /// from the state topic ([`super::state::restore_state`]).
    pub resume: Option<EpochProgress>,
}

impl SourceConfig {
    /// Reading `topics` with the epoch protocol, 8 epochs of read-ahead and
    /// no dead-letter topic.
    pub fn new(kafka: KafkaConfig, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        SourceConfig {
            kafka,
            topics: topics.into_iter().map(Into::into).collect(),
            framing: Framing::Epochs,
            group_id: "velib-dataflow".into(),
            read_ahead: 8,
            dead_letter_topic: None,
            metadata_timeout: Duration::from_secs(30),
            as_of: 0,
            resume: None,
        }
    }

    /// Releasing nothing before epoch `as_of` (see [`SourceConfig::as_of`]).
    pub fn as_of(mut self, as_of: Epoch) -> Self {
        self.as_of = as_of;
        self
    }

    /// With `framing`.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// With a dead-letter topic.
    pub fn dead_letters(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }
}

/// Where one partition stands after an epoch: what the progress record of
/// the epoch's output holds, so that a restart knows where to read from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the first record not yet part of an epoch.
    pub next_offset: i64,
    /// The epoch of the last marker this partition passed (for ingestion
    /// epochs, the epoch itself): where a resumed source picks the
    /// partition's epochs up, since the cleaner may have removed its
    /// markers up to the epoch it was released at.
    pub passed: Epoch,
    /// The feed's time of the epoch's snapshot (the marker's; for ingestion
    /// epochs, the time the epoch was closed).
    pub feed_time: Option<EpochTime>,
    /// When the epoch was closed, in ms since the Unix epoch: the Kafka
    /// timestamp of its marker on this partition (for ingestion epochs,
    /// the time the source closed it). The sink measures from it the time
    /// from an epoch's close to its output committed.
    pub closed_at_ms: Option<i64>,
}

/// The source's two streams.
#[derive(Debug)]
pub struct SourceStreams<'s, K, V> {
    /// `(key, value, epoch)`: the key's new value at that epoch, `None` when
    /// the key is gone. A key changes at most once per epoch and partition.
    pub updates: Stream<'s, Epoch, Vec<(K, Option<V>, Epoch)>>,
    /// At each epoch, the position of each partition that passed it.
    pub positions: Stream<'s, Epoch, Vec<SourcePosition>>,
    /// At each epoch, the records that could not be read and that the
    /// epoch's positions include: for the sink to write in the epoch's
    /// transaction ([`super::sink::kafka_sink_with_state`]).
    pub dead_letters: Stream<'s, Epoch, Vec<DeadLetter>>,
}

/// What the sources of a dataflow have done, shared by all workers; and the
/// switch that stops them.
///
/// # Examples
///
/// ```
/// use timely_kafka::source::SourceHandle;
///
/// let handle = SourceHandle::default();
/// assert!(!handle.is_stopped());
/// handle.stop(); // every source built with a clone drops its capabilities
/// assert!(handle.is_stopped());
/// assert_eq!(handle.stats().dead_letters.len(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SourceHandle {
    shared: Arc<SourceShared>,
}

#[derive(Debug, Default)]
struct SourceShared {
    stop: AtomicBool,
    activators: Mutex<Vec<SyncActivator>>,
    stats: Mutex<SourceStats>,
}

/// Counters of the sources sharing a [`SourceHandle`].
///
/// # Examples
///
/// ```
/// use timely_kafka::source::SourceHandle;
///
/// let stats = SourceHandle::default().stats();
/// // What the metrics report: read, applied, discarded, dead letters by reason, lag.
/// assert_eq!((stats.records, stats.applied, stats.discarded), (0, 0, 0));
/// assert!(stats.dead_letters.is_empty() && stats.consumer_lag.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Records read.
    pub records: u64,
    /// Records released into the dataflow.
    pub applied: u64,
    /// Records of an attempt that did not complete its epoch, or of an epoch
    /// already passed: read and left out.
    pub discarded: u64,
    /// Records released with a later epoch's marker because the log cleaner
    /// had removed their own epoch's.
    pub compacted: u64,
    /// Records that could not be read, by [`DecodeError::reason`].
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Dead letters only counted: over the bound held per partition and
    /// epoch.
    pub dead_letters_unwritten: u64,
    /// Records that retention deleted between a committed position and the
    /// partition's first record when resuming: never read, so the output
    /// lacks their changes (see the log's warning).
    pub deleted_before_resume: u64,
    /// Why a source stopped, if one did.
    pub error: Option<String>,
    /// How far each partition read is behind its end, by topic and
    /// partition, as librdkafka last reported it (every 5 s).
    pub consumer_lag: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Per consumer (librdkafka client name): messages and bytes received,
    /// as librdkafka last reported them.
    pub received: BTreeMap<String, (u64, u64)>,
}

impl SourceHandle {
    /// Stops every source sharing this handle: each stops reading and keeps
    /// its capabilities at the oldest epoch one of its partitions has not
    /// passed, so that the epochs every partition has passed complete and
    /// no other does (a half-read epoch is never written). The dataflow is
    /// then done once what finishes it has caught up with the sources: see
    /// [`written_as_far_as_read`].
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(activators) = self.shared.activators.lock() {
            for activator in activators.iter() {
                let _ = activator.activate();
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SourceStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Why a source stopped, if one did.
    pub fn error(&self) -> Option<String> {
        self.stats().error
    }

    /// Whether [`SourceHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn count(&self, f: impl FnOnce(&mut SourceStats)) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            f(&mut stats);
        }
    }

    /// Keeps what librdkafka's statistics say of lag and traffic.
    fn record_client_stats(&self, stats: rdkafka::Statistics) {
        self.count(|s| {
            s.received.insert(
                stats.name.clone(),
                (stats.rxmsgs.max(0) as u64, stats.rxmsg_bytes.max(0) as u64),
            );
            for (topic, t) in &stats.topics {
                for (partition, p) in &t.partitions {
                    // Partition -1 is librdkafka's internal one; a partition
                    // this consumer does not fetch has no lag to report.
                    // librdkafka's own `consumer_lag` counts from committed
                    // offsets, and this source commits none: measure from
                    // the application's position to the end a read
                    // committed consumer can reach (the last stable offset).
                    if *partition < 0 || p.fetch_state != "active" {
                        continue;
                    }
                    if p.ls_offset >= 0 && p.app_offset >= 0 {
                        s.consumer_lag
                            .entry(topic.clone())
                            .or_default()
                            .insert(*partition, (p.ls_offset - p.app_offset).max(0));
                    }
                }
            }
        });
    }

    /// Stops the sources for good with `error` (logged, and kept in
    /// [`SourceStats::error`]): what a job does when something outside the
    /// sources went wrong.
    pub fn fail(&self, error: String) {
        tracing::error!("Kafka source stopped: {error}");
        self.count(|s| {
            s.error.get_or_insert(error);
        });
    }
}

/// Whether everything the sources released is through: the frontier of
/// `finished` (a probe at the end of the dataflow) has reached that of
/// `sources` (a probe on the sources' [`SourceStreams::positions`]). Once the
/// sources are stopped ([`SourceHandle::stop`]), this is when a worker can
/// drop its dataflow (`Worker::drop_dataflow`): every epoch the sources
/// completed is written.
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::probe::Handle as ProbeHandle;
/// use timely_kafka::source::written_as_far_as_read;
///
/// // Two probes that have seen nothing yet agree.
/// assert!(written_as_far_as_read(&ProbeHandle::<u64>::new(), &ProbeHandle::new()));
/// ```
pub fn written_as_far_as_read(finished: &ProbeHandle<Epoch>, sources: &ProbeHandle<Epoch>) -> bool {
    let read = sources.with_frontier(|f| f.to_vec());
    finished.with_frontier(|f| f.to_vec()) == read
}

/// A Kafka source, ready to be built into a dataflow.
///
/// # Examples
///
/// A runnable example needs a broker; this one only builds the dataflow.
///
/// ```no_run
/// use timely::dataflow::operators::Inspect;
/// use timely_kafka::decode::{RawRecord, RecordDecoder};
/// use timely_kafka::source::{KafkaSource, SourceConfig, SourceHandle};
/// use timely_kafka::{DecodeError, KafkaConfig};
///
/// /// Keys and values as text.
/// struct Text;
/// impl RecordDecoder for Text {
///     type Key = String;
///     type Value = String;
///     fn decode(&self, r: &RawRecord<'_>) -> Result<(String, Option<String>), DecodeError> {
///         let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
///         Ok((r.key.map(text).unwrap_or_default(), r.value.map(text)))
///     }
/// }
///
/// let handle = SourceHandle::default();
/// timely::execute_directly(move |worker| {
///     worker.dataflow::<u64, _, _>(|scope| {
///         let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"]);
///         let streams = KafkaSource::new(config, Text).build(scope, handle.clone());
///         streams.updates.inspect(|(key, value, epoch)| println!("{epoch}: {key} {value:?}"));
///     });
/// });
/// ```
#[derive(Debug)]
pub struct KafkaSource<D> {
    config: SourceConfig,
    decoder: D,
    finished: Option<ProbeHandle<Epoch>>,
}

impl<D: RecordDecoder> KafkaSource<D> {
    /// Reading as `config` says, decoding with `decoder`.
    pub fn new(config: SourceConfig, decoder: D) -> Self {
        KafkaSource {
            config,
            decoder,
            finished: None,
        }
    }

    /// Bounds the read-ahead by what `finished` (a probe at the end of the
    /// dataflow) has seen complete. Without it, the source reads as fast as
    /// Kafka gives.
    pub fn finished(mut self, finished: ProbeHandle<Epoch>) -> Self {
        self.finished = Some(finished);
        self
    }

    /// Builds the operator in `scope`; every worker must build it.
    pub fn build<'s>(
        self,
        scope: Scope<'s, Epoch>,
        handle: SourceHandle,
    ) -> SourceStreams<'s, D::Key, D::Value>
    where
        D::Key: Clone + 'static,
        D::Value: Clone + 'static,
    {
        let KafkaSource {
            config,
            decoder,
            finished,
        } = self;
        let mut builder =
            OperatorBuilder::new(format!("KafkaSource({})", config.topics.join(",")), scope);
        let info = builder.operator_info();
        let (updates_output, updates) =
            builder.new_output::<Vec<(D::Key, Option<D::Value>, Epoch)>>();
        let (positions_output, positions) = builder.new_output::<Vec<SourcePosition>>();
        let (dead_letters_output, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
        let mut updates_output =
            OutputBuilder::<_, CapacityContainerBuilder<_>>::from(updates_output);
        let mut positions_output =
            OutputBuilder::<_, CapacityContainerBuilder<_>>::from(positions_output);
        let mut dead_letters_output =
            OutputBuilder::<_, CapacityContainerBuilder<_>>::from(dead_letters_output);
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let timer = scope.activator_for(std::rc::Rc::clone(&info.address));
        let (index, peers) = (scope.index(), scope.peers());
        if let Ok(mut activators) = handle.shared.activators.lock() {
            activators.push(sync_activator.clone());
        }

        builder.build(move |capabilities| {
            // Held for as long as the dataflow lives, even once stopped or
            // failed: an epoch some partition has not passed never
            // completes, so no sink writes it half-read.
            let mut caps = capabilities;
            let mut reader =
                match Reader::connect(&config, index, peers, &sync_activator, handle.clone()) {
                    Ok(reader) => Some(reader),
                    Err(e) => {
                        handle.fail(e.to_string());
                        None
                    }
                };
            move |_frontiers| {
                let Some(r) = reader.as_mut() else {
                    return;
                };
                if handle.is_stopped() {
                    reader = None;
                    return;
                }
                let finished_at = finished
                    .as_ref()
                    .map(|p| p.with_frontier(|f| f.first().copied()));
                let emitted = r.read(&config, &decoder, &handle, finished_at);
                let mut updates = updates_output.activate();
                let mut positions = positions_output.activate();
                let mut dead_letters = dead_letters_output.activate();
                for (epoch, released) in emitted {
                    let cap = caps[0].delayed(&epoch);
                    let mut session = updates.session(&cap);
                    for (key, value) in released.records {
                        session.give((key, value, epoch));
                    }
                    let cap = caps[1].delayed(&epoch);
                    positions
                        .session(&cap)
                        .give_iterator(released.positions.into_iter());
                    if !released.dead_letters.is_empty() {
                        let cap = caps[2].delayed(&epoch);
                        dead_letters
                            .session(&cap)
                            .give_iterator(released.dead_letters.into_iter());
                    }
                }
                let lower = r.lower_bound();
                for cap in &mut caps {
                    if *cap.time() < lower {
                        cap.downgrade(&lower);
                    }
                }
                if let Some(delay) = r.wake_in() {
                    timer.activate_after(delay);
                }
            }
        });
        SourceStreams {
            updates,
            positions,
            dead_letters,
        }
    }
}

/// One epoch's worth of a worker's records, ready to be released.
struct Released<K, V> {
    records: Vec<(K, Option<V>)>,
    positions: Vec<SourcePosition>,
    dead_letters: Vec<DeadLetter>,
}

impl<K, V> Default for Released<K, V> {
    fn default() -> Self {
        Released {
            records: Vec::new(),
            positions: Vec::new(),
            dead_letters: Vec::new(),
        }
    }
}

/// A partition a worker owns: librdkafka's queue for it, and where it stands.
struct OwnedPartition<K, V> {
    queue: PartitionQueue<ReaderContext>,
    /// Records librdkafka fetched before the queue was split, so delivered
    /// on the consumer's main queue: they come before the queue's.
    /// `None`: the end of the partition.
    early: VecDeque<Option<OwnedMessage>>,
    state: PartitionState<K, V>,
}

/// A record from a partition's queue, or one delivered on the main queue.
enum Fetched<'a> {
    Borrowed(rdkafka::message::BorrowedMessage<'a>),
    Owned(OwnedMessage),
}

/// What reading one record needs besides the partition.
struct Step<'a, D> {
    config: &'a SourceConfig,
    decoder: &'a D,
    handle: &'a SourceHandle,
    dead_letters: Option<&'a DeadLetterWriter>,
    /// The read-ahead bound: no epoch at or beyond it is read.
    limit: Option<Epoch>,
}

impl<D: RecordDecoder> Step<'_, D> {
    /// Reads one record of `p`: frames it (or adds it to the ingestion
    /// epoch), releases what its marker passes into `out`, dead-letters it
    /// if it cannot be read. Returns whether the partition must wait for the
    /// read-ahead bound.
    fn record<M: Message>(
        &self,
        p: &mut PartitionState<D::Key, D::Value>,
        message: &M,
        ingestion: Option<&mut Ingestion<D::Key, D::Value>>,
        out: &mut BTreeMap<Epoch, Released<D::Key, D::Value>>,
    ) -> bool {
        let Step {
            config,
            decoder,
            handle,
            dead_letters,
            limit,
        } = *self;
        handle.count(|s| s.records += 1);
        p.caught_up = false;
        p.next_offset = message.offset() + 1;
        let mut ingestion = ingestion;
        let outcome = match ingestion.as_deref_mut() {
            Some(ingestion) => ingest(message, decoder, ingestion).map(|()| None),
            None => frame(p, message, decoder, handle, config.as_of),
        };
        match outcome {
            Ok(Some((epoch, released, feed_time))) => {
                tracing::debug!(
                    topic = %p.topic,
                    partition = p.partition,
                    epoch,
                    records = released.len(),
                    "epoch passed"
                );
                // Epochs before the as-of epoch add up to its state.
                let entry = out.entry(epoch.max(config.as_of)).or_default();
                handle.count(|s| s.applied += released.len() as u64);
                entry.records.extend(released);
                entry.dead_letters.extend(p.dead.take());
                entry.positions.push(SourcePosition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    next_offset: p.next_offset,
                    passed: epoch,
                    feed_time,
                    closed_at_ms: message.timestamp().to_millis(),
                });
                // A partition past the read-ahead bound waits.
                limit.is_some_and(|l| epoch.saturating_add(1) >= l)
            }
            Ok(None) => false,
            Err(error) => {
                let record = raw(message);
                // A second producer writes a marker going back every epoch
                // on every partition: warned of once per partition, then
                // counted (and logged at debug level).
                let going_back = matches!(error, DecodeError::MarkerGoesBack { .. });
                if going_back && p.warned_going_back {
                    tracing::debug!(
                        reason = error.reason(),
                        "record {}[{}]@{} sent to the dead letters: {error}",
                        record.topic,
                        record.partition,
                        record.offset
                    );
                } else {
                    tracing::warn!(
                        reason = error.reason(),
                        "record {}[{}]@{} sent to the dead letters: {error}{}",
                        record.topic,
                        record.partition,
                        record.offset,
                        if going_back {
                            "; further markers going back on this partition are only counted \
                             (dead letters, reason marker_goes_back) and logged at debug level"
                        } else {
                            ""
                        }
                    );
                    p.warned_going_back |= going_back;
                }
                handle.count(|s| *s.dead_letters.entry(error.reason()).or_default() += 1);
                let letter = DeadLetter::new(&record, &error);
                if let Some(writer) = dead_letters {
                    writer.send(&letter);
                }
                // Released with the epoch whose positions include it.
                match ingestion {
                    Some(ingestion) => ingestion.dead.hold(letter, handle),
                    None => p.dead.hold(letter, handle),
                }
                false
            }
        }
    }
}

struct PartitionState<K, V> {
    topic: String,
    partition: i32,
    next_offset: i64,
    /// librdkafka said it reached the end, and nothing came since.
    caught_up: bool,
    /// Records of epochs not yet passed, by epoch and attempt.
    epochs: PartitionEpochs<(K, Option<V>)>,
    /// Dead letters read since the last marker passed.
    dead: HeldDeadLetters,
    /// A marker going back was warned of (see [`DecodeError::MarkerGoesBack`]).
    warned_going_back: bool,
}

/// Records read per partition per activation before yielding to other
/// operators.
const BATCH: usize = 4096;
/// How often an idle worker moves its ingestion epoch with the clock, and
/// how often a worker held back by read-ahead looks again.
const TICK: Duration = Duration::from_millis(50);
/// An ingestion epoch is closed early when its records reach this size.
const MAX_INGESTION_BYTES: usize = 64 << 20;

struct Reader<K, V> {
    consumer: Arc<BaseConsumer<ReaderContext>>,
    partitions: Vec<OwnedPartition<K, V>>,
    dead_letters: Option<DeadLetterWriter>,
    /// Epochs released and not yet seen finished.
    in_flight: VecDeque<Epoch>,
    /// Ingestion framing: the open epoch and its records.
    ingestion: Option<Ingestion<K, V>>,
    held_back: bool,
    /// A queue was left with records to read.
    more: bool,
    /// See [`SourceConfig::as_of`].
    as_of: Epoch,
}

struct Ingestion<K, V> {
    open: Epoch,
    records: Vec<(K, Option<V>)>,
    bytes: usize,
    dead: HeldDeadLetters,
}

/// Dead letters waiting for the epoch whose positions include them, up to
/// [`MAX_HELD_DEAD_LETTER_BYTES`] per partition and epoch; beyond that they
/// are counted and logged only.
#[derive(Default)]
struct HeldDeadLetters {
    letters: Vec<DeadLetter>,
    bytes: usize,
}

/// See [`HeldDeadLetters`].
const MAX_HELD_DEAD_LETTER_BYTES: usize = 16 << 20;

impl HeldDeadLetters {
    fn hold(&mut self, letter: DeadLetter, handle: &SourceHandle) {
        let size = letter.key.as_ref().map_or(0, Vec::len)
            + letter.value.as_ref().map_or(0, Vec::len)
            + letter.error.len();
        if self.bytes + size > MAX_HELD_DEAD_LETTER_BYTES {
            tracing::warn!(
                "dead letter {}[{}]@{} not written: over {MAX_HELD_DEAD_LETTER_BYTES} bytes of \
                 dead letters in one epoch of that partition",
                letter.topic,
                letter.partition,
                letter.offset
            );
            handle.count(|s| s.dead_letters_unwritten += 1);
            return;
        }
        self.bytes += size;
        self.letters.push(letter);
    }

    fn take(&mut self) -> Vec<DeadLetter> {
        self.bytes = 0;
        std::mem::take(&mut self.letters)
    }
}

fn now_ms() -> Epoch {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Epoch)
}

impl<K, V> Reader<K, V> {
    fn connect(
        config: &SourceConfig,
        index: usize,
        peers: usize,
        activator: &SyncActivator,
        handle: SourceHandle,
    ) -> Result<Self, KafkaError> {
        let topics = config.topics.join(",");
        let stats = handle.clone();
        let mut consumer: BaseConsumer<ReaderContext> = config
            .kafka
            .client_config(&[
                ("group.id", &config.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
                // The read-ahead bound: what librdkafka prefetches per partition.
                ("queued.max.messages.kbytes", "16384"),
                // Consumer lag and traffic for the metrics.
                ("statistics.interval.ms", "5000"),
            ])
            .create_with_context(ReaderContext {
                on_stats: Some(Arc::new(move |s| stats.record_client_stats(s))),
            })
            .map_err(KafkaError::client(format!(
                "creating the consumer of {topics}"
            )))?;
        let wake = activator.clone();
        consumer.set_nonempty_callback(move || {
            let _ = wake.activate();
        });
        let consumer = Arc::new(consumer);
        let mut all = Vec::new();
        for topic in &config.topics {
            let count =
                super::topics::partition_count(consumer.client(), topic, config.metadata_timeout)?;
            all.extend((0..count).map(|p| (topic.clone(), p)));
        }
        let mine: Vec<(String, i32)> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers == index)
            .map(|(_, tp)| tp)
            .collect();
        // Each partition from its position, having passed its own last
        // marker (the resumed epoch when the progress does not say).
        let resumed_at = |topic: &str, partition: i32| {
            let resume = config.resume.as_ref()?;
            let offset = resume.positions.get(topic)?.get(&partition)?;
            let passed = resume
                .passed
                .get(topic)
                .and_then(|p| p.get(&partition))
                .map_or(resume.epoch, |e| (*e).min(resume.epoch));
            Some((passed, *offset))
        };
        let mut assignment = TopicPartitionList::new();
        for (topic, partition) in &mine {
            let offset = match resumed_at(topic, *partition) {
                Some((_, offset)) => Offset::Offset(offset),
                None => Offset::Beginning,
            };
            assignment
                .add_partition_offset(topic, *partition, offset)
                .map_err(KafkaError::client(format!(
                    "assigning {topic}[{partition}]"
                )))?;
        }
        consumer
            .assign(&assignment)
            .map_err(KafkaError::client(format!(
                "assigning partitions of {topics}"
            )))?;
        let mut partitions = Vec::with_capacity(mine.len());
        for (topic, partition) in mine {
            let mut queue = consumer
                .split_partition_queue(&topic, partition)
                .ok_or_else(|| KafkaError::Topic {
                    topic: topic.clone(),
                    problem: format!("librdkafka gave no queue for partition {partition}"),
                })?;
            let wake = activator.clone();
            queue.set_nonempty_callback(move || {
                let _ = wake.activate();
            });
            let (next_offset, epochs) = match resumed_at(&topic, partition) {
                Some((epoch, offset)) => {
                    warn_if_deleted(&consumer, &topic, partition, offset, config, &handle);
                    (offset, PartitionEpochs::resumed(epoch))
                }
                None => (0, PartitionEpochs::new().reading_as_of(config.as_of)),
            };
            partitions.push(OwnedPartition {
                queue,
                early: VecDeque::new(),
                state: PartitionState {
                    topic,
                    partition,
                    next_offset,
                    caught_up: false,
                    epochs,
                    dead: HeldDeadLetters::default(),
                    warned_going_back: false,
                },
            });
        }
        tracing::info!(
            worker = index,
            partitions = ?partitions.iter().map(|p| format!("{}[{}]", p.state.topic, p.state.partition)).collect::<Vec<_>>(),
            "Kafka source reading"
        );
        let dead_letters = config
            .dead_letter_topic
            .as_deref()
            .map(|topic| DeadLetterWriter::connect(&config.kafka, topic))
            .transpose()?;
        // Ingestion epochs are times: a resumed source's are after the
        // committed one, whatever the clock says.
        let committed = config
            .resume
            .as_ref()
            .map_or(0, |r| r.epoch.saturating_add(1));
        let ingestion = (config.framing == Framing::Ingestion).then(|| Ingestion {
            open: now_ms().max(committed),
            records: Vec::new(),
            bytes: 0,
            dead: HeldDeadLetters::default(),
        });
        // Ask to be scheduled once, to move the capability to where it belongs.
        let _ = activator.activate();
        let mut reader = Reader {
            consumer,
            partitions,
            dead_letters,
            in_flight: VecDeque::new(),
            ingestion,
            held_back: false,
            more: false,
            as_of: config.as_of,
        };
        // What librdkafka fetched between the assignment and the queues'
        // split is on the main queue: it must not be lost.
        reader.serve_main_queue();
        Ok(reader)
    }

    /// Serves librdkafka's events (errors, statistics) on the main queue,
    /// and keeps the records found there (fetched for a partition before
    /// its queue was split) to be read before that partition's queue.
    fn serve_main_queue(&mut self) {
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            let message = match event {
                // The end of a partition, reached before its queue was
                // split: it comes after that partition's early records (a
                // partition number alone: every topic's partition of it).
                Err(RdKafkaError::PartitionEOF(partition)) => {
                    for p in &mut self.partitions {
                        if p.state.partition == partition {
                            p.early.push_back(None);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!("Kafka consumer: {e}");
                    continue;
                }
                Ok(m) => m.detach(),
            };
            let owner = self.partitions.iter_mut().find(|p| {
                p.state.partition == message.partition() && p.state.topic == message.topic()
            });
            match owner {
                Some(p) => p.early.push_back(Some(message)),
                None => tracing::warn!(
                    "Kafka consumer: a record of {}[{}], a partition this worker does not read",
                    message.topic(),
                    message.partition()
                ),
            }
        }
    }

    /// The earliest epoch this worker may still release records at.
    fn lower_bound(&self) -> Epoch {
        if let Some(ingestion) = &self.ingestion {
            return ingestion.open;
        }
        self.partitions
            .iter()
            .map(|p| p.state.epochs.passed().map_or(0, |e| e + 1))
            .min()
            .unwrap_or(Epoch::MAX)
            .max(self.as_of)
    }

    /// When to be scheduled again without a wake-up from librdkafka.
    fn wake_in(&self) -> Option<Duration> {
        let idle_ingestion = self
            .ingestion
            .as_ref()
            .is_some_and(|i| i.records.is_empty() && !self.partitions.is_empty());
        if self.more {
            return Some(Duration::ZERO);
        }
        (self.held_back || idle_ingestion).then_some(TICK)
    }

    /// Reads what librdkafka has, and returns the epochs to release.
    fn read<D>(
        &mut self,
        config: &SourceConfig,
        decoder: &D,
        handle: &SourceHandle,
        finished_at: Option<Option<Epoch>>,
    ) -> BTreeMap<Epoch, Released<K, V>>
    where
        D: RecordDecoder<Key = K, Value = V>,
    {
        self.serve_main_queue();
        // What the dataflow has finished: `None` means no bound.
        let finished = match finished_at {
            None => None,
            Some(None) => Some(Epoch::MAX),
            Some(Some(f)) => Some(f),
        };
        if let Some(f) = finished {
            while self.in_flight.front().is_some_and(|e| *e < f) {
                self.in_flight.pop_front();
            }
        }
        let limit = finished.map(|f| f.saturating_add(config.read_ahead.max(1)));
        let mut out: BTreeMap<Epoch, Released<K, V>> = BTreeMap::new();
        let mut more = false;
        self.held_back = false;
        let ingestion_full = self.ingestion.is_some()
            && finished.is_some()
            && self.in_flight.len() as u64 >= config.read_ahead.max(1);
        let step = Step {
            config,
            decoder,
            handle,
            dead_letters: self.dead_letters.as_ref(),
            limit,
        };
        for OwnedPartition {
            queue,
            early,
            state: p,
        } in &mut self.partitions
        {
            let ahead = match (&self.ingestion, limit) {
                (Some(_), _) => ingestion_full,
                (None, Some(limit)) => p
                    .epochs
                    .passed()
                    .is_some_and(|e| e.saturating_add(1) >= limit),
                (None, None) => false,
            };
            if ahead {
                tracing::trace!(
                    topic = %p.topic,
                    partition = p.partition,
                    passed = ?p.epochs.passed(),
                    ?finished,
                    "held back by the read-ahead bound"
                );
                self.held_back = true;
                continue;
            }
            let mut read = 0;
            while read < BATCH {
                // Records fetched before the partition's queue was split
                // come first: they precede everything on the queue.
                let result = match early.pop_front() {
                    Some(Some(message)) => Ok(Fetched::Owned(message)),
                    Some(None) => Err(RdKafkaError::PartitionEOF(p.partition)),
                    None => match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(result) => result.map(Fetched::Borrowed),
                    },
                };
                read += 1;
                match result {
                    Err(RdKafkaError::PartitionEOF(_)) => p.caught_up = true,
                    Err(e) => tracing::warn!("Kafka consumer, {}[{}]: {e}", p.topic, p.partition),
                    Ok(fetched) => {
                        let ingestion = self.ingestion.as_mut();
                        let wait = match &fetched {
                            Fetched::Owned(m) => step.record(p, m, ingestion, &mut out),
                            Fetched::Borrowed(m) => step.record(p, m, ingestion, &mut out),
                        };
                        if wait {
                            self.held_back = true;
                            break;
                        }
                    }
                }
            }
            more |= read == BATCH;
        }
        if let Some(ingestion) = self.ingestion.as_mut() {
            let caught_up = self.partitions.iter().all(|p| p.state.caught_up);
            let held = !ingestion.records.is_empty() || !ingestion.dead.letters.is_empty();
            if held && (caught_up || ingestion.bytes >= MAX_INGESTION_BYTES) {
                let epoch = ingestion.open;
                let feed_time = Some((epoch / 1000) as EpochTime);
                handle.count(|s| s.applied += ingestion.records.len() as u64);
                let released = Released {
                    records: std::mem::take(&mut ingestion.records),
                    dead_letters: ingestion.dead.take(),
                    positions: self
                        .partitions
                        .iter()
                        .map(|OwnedPartition { state: p, .. }| SourcePosition {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            next_offset: p.next_offset,
                            passed: epoch,
                            feed_time,
                            closed_at_ms: Some(now_ms() as i64),
                        })
                        .collect(),
                };
                ingestion.bytes = 0;
                ingestion.open = now_ms().max(epoch + 1);
                out.insert(epoch, released);
            } else if !held && caught_up {
                ingestion.open = ingestion.open.max(now_ms());
            }
        }
        self.in_flight.extend(out.keys().copied());
        // librdkafka wakes us only when a queue becomes non-empty: a queue
        // left with records must be read again on our own initiative.
        self.more = more;
        out
    }
}

fn raw<M: Message>(message: &M) -> RawRecord<'_> {
    RawRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
    }
}

fn headers<M: Message>(message: &M) -> RecordHeaders<'_> {
    RecordHeaders::new(
        message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default(),
    )
}

/// A released epoch from one partition: its epoch, records and feed time.
type PartitionRelease<K, V> = (Epoch, Vec<(K, Option<V>)>, Option<EpochTime>);

/// Applies the epoch protocol to one record of `p`.
fn frame<K, V, D: RecordDecoder<Key = K, Value = V>, M: Message>(
    p: &mut PartitionState<K, V>,
    message: &M,
    decoder: &D,
    handle: &SourceHandle,
    as_of: Epoch,
) -> Result<Option<PartitionRelease<K, V>>, DecodeError> {
    let record = raw(message);
    check_size(&record)?;
    match framing(&headers(message), record.value)? {
        Framed::Unframed => Err(DecodeError::Header {
            header: EPOCH_HEADER,
            problem: "is missing: the record is not in the epoch protocol \
                      (read the seeds' format with Framing::Ingestion, --input-format seed)"
                .into(),
        }),
        Framed::Data(stamp) => {
            if p.epochs.passed().is_some_and(|e| e >= stamp.epoch) {
                handle.count(|s| s.discarded += 1);
                return Ok(None);
            }
            // Far beyond the partition's epochs: its marker would be refused.
            p.epochs.check_data(&stamp)?;
            if p.epochs.is_full_for(&stamp) {
                return Err(DecodeError::TooManyOpenEpochs {
                    limit: super::protocol::MAX_OPEN_EPOCHS,
                });
            }
            let update = decoder.decode(&record)?;
            p.epochs.data(stamp, update);
            Ok(None)
        }
        Framed::Marker(marker) => {
            // Going back, or far ahead: refused, the partition unchanged.
            p.epochs.check_marker(&marker)?;
            let Some(passed) = p.epochs.marker(&marker) else {
                return Ok(None);
            };
            let mut dropped = 0;
            for (stamp, records) in passed.dropped {
                tracing::warn!(
                    epoch = stamp.epoch,
                    attempt = stamp.attempt,
                    "{}[{}]: dropped {records} records of an attempt that did not complete epoch {} (attempt {} did)",
                    p.topic,
                    p.partition,
                    marker.epoch,
                    marker.attempt
                );
                dropped += records as u64;
            }
            handle.count(|s| s.discarded += dropped);
            if let (Some((first, _)), Some((last, _))) =
                (passed.compacted.first(), passed.compacted.last())
            {
                let records: usize = passed.compacted.iter().map(|(_, n)| n).sum();
                tracing::info!(
                    "{}[{}]: {records} records of epochs {} to {} whose markers were compacted away, applied with epoch {}",
                    p.topic,
                    p.partition,
                    first.epoch,
                    last.epoch,
                    marker.epoch
                );
                handle.count(|s| s.compacted += records as u64);
                if marker.epoch > as_of {
                    // The cleaner removed markers after the epoch this
                    // source started at, while it was reading: the epochs in
                    // between are released at once here and one by one on
                    // other partitions.
                    tracing::warn!(
                        "{}[{}] was compacted while being read: epochs {} to {} are torn in the output; \
                         restart to start at a later epoch (or set min.compaction.lag.ms on the topic)",
                        p.topic,
                        p.partition,
                        first.epoch,
                        marker.epoch
                    );
                }
            }
            Ok(Some((marker.epoch, passed.released, marker.feed_time)))
        }
    }
}

/// Warns, and counts, when retention deleted records of a partition from
/// the committed `position` on: the committed epoch's state cannot see
/// their changes, and nothing can give them back (a fresh start reads the
/// topic from what is left). Reading goes on from the first record kept.
fn warn_if_deleted<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    position: i64,
    config: &SourceConfig,
    handle: &SourceHandle,
) {
    match consumer.fetch_watermarks(topic, partition, config.metadata_timeout) {
        Ok((low, _)) if low > position => {
            let lost = low - position;
            tracing::warn!(
                "{topic}[{partition}]: the committed position is {position} but the partition \
                 starts at {low}: retention deleted {lost} records the aggregator had not read, \
                 and the output lacks their changes until their keys change again; \
                 keep the input's retention longer than the longest stop"
            );
            handle.count(|s| s.deleted_before_resume += lost as u64);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("{topic}[{partition}]: reading its first offset: {e}"),
    }
}

/// Adds one record to the open ingestion epoch.
fn ingest<K, V, D: RecordDecoder<Key = K, Value = V>, M: Message>(
    message: &M,
    decoder: &D,
    ingestion: &mut Ingestion<K, V>,
) -> Result<(), DecodeError> {
    let record = raw(message);
    check_size(&record)?;
    if let Framed::Marker(_) = framing(&headers(message), record.value)? {
        return Ok(());
    }
    let update = decoder.decode(&record)?;
    ingestion.bytes += record.value.map_or(0, <[u8]>::len) + record.key.map_or(0, <[u8]>::len);
    ingestion.records.push(update);
    Ok(())
}
