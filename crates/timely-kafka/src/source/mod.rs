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
//! ([`PartitionEpochs::check_marker`](crate::protocol::PartitionEpochs::check_marker)), is forged or broken framing: it
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
//!
//! Inside, one concern per file: `assignment` (which partitions a worker
//! reads, from where), `read_loop` (reading their queues within the
//! read-ahead bound), `framing` (the trait a framing implements), with
//! `epoch_framing` and `ingestion_framing` its two implementations, and
//! `handle` (the counters and the stop switch).

mod assignment;
mod epoch_framing;
mod framing;
mod handle;
mod ingestion_framing;
mod read_loop;
mod sources;

pub use handle::{SourceHandle, SourceStats};
pub use sources::{SourceProgress, Sources};

use crate::dead_letter::DeadLetter;
use crate::decode::RecordDecoder;
use crate::protocol::{Epoch, EpochTime};
use crate::sink::EpochProgress;
use crate::timestamp::EpochTimestamp;
use crate::upsert::Upserts;
use crate::KafkaConfig;
use read_loop::Reader;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::Scope;
use timely::progress::Timestamp;

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
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::{Framing, SourceConfig};
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events", "counters"]);
    /// assert_eq!(config.topics, ["events", "counters"]);
    /// assert_eq!((config.framing, config.as_of, config.read_ahead), (Framing::Epochs, 0, 8));
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceConfig;
    /// use timely_kafka::KafkaConfig;
    ///
    /// // Usually what `as_of::read_as_of` found: the same for every source of a dataflow.
    /// let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"]).as_of(42);
    /// assert_eq!(config.as_of, 42);
    /// ```
    pub fn as_of(mut self, as_of: Epoch) -> Self {
        self.as_of = as_of;
        self
    }

    /// With `framing`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::{Framing, SourceConfig};
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"]).framing(Framing::Ingestion);
    /// assert_eq!(config.framing, Framing::Ingestion);
    /// ```
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// With a dead-letter topic.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceConfig;
    /// use timely_kafka::KafkaConfig;
    ///
    /// // Written by the source itself, at least once; the sink's own topic is exactly once.
    /// let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"]).dead_letters("events-dlq");
    /// assert_eq!(config.dead_letter_topic.as_deref(), Some("events-dlq"));
    /// ```
    pub fn dead_letters(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }
}

/// Where one partition stands after an epoch: what the progress record of
/// the epoch's output holds, so that a restart knows where to read from.
///
/// # Examples
///
/// ```
/// use timely_kafka::source::SourcePosition;
///
/// let position = SourcePosition { topic: "events".into(), partition: 0, next_offset: 1290,
///     passed: 42, feed_time: None, closed_at_ms: Some(1_700_000_000_000) };
/// // A restart reads partition 0 from offset 1290, as having passed epoch 42.
/// let json = serde_json::to_string(&position)?;
/// assert_eq!(serde_json::from_str::<SourcePosition>(&json)?, position);
/// # Ok::<(), serde_json::Error>(())
/// ```
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

/// Whether everything the sources released is through: the frontier of
/// `finished` (a probe at the end of the dataflow) has reached that of
/// `sources` (a probe on the sources' positions,
/// [`SourceProgress::probe_with`]). Once the sources are stopped
/// ([`SourceHandle::stop`]), this is when a worker can drop its dataflow
/// (`Worker::drop_dataflow`): every epoch the sources completed is written.
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
pub fn written_as_far_as_read<T: Timestamp>(
    finished: &ProbeHandle<T>,
    sources: &ProbeHandle<T>,
) -> bool {
    let read = sources.with_frontier(|f| f.to_vec());
    finished.with_frontier(|f| f.to_vec()) == read
}

/// A Kafka source, ready to be built into a dataflow's [`Sources`].
///
/// Its updates are `(key, value, time)`: the key's new value at the time of
/// its epoch ([`EpochTimestamp::from_epoch`]), `None` when the key is gone.
/// A key changes at most once per epoch and partition.
///
/// # Examples
///
/// A runnable example needs a broker; this one only builds the dataflow,
/// timed in milliseconds.
///
/// ```no_run
/// use std::time::Duration;
/// use timely::dataflow::operators::Inspect;
/// use timely_kafka::decode::{RawRecord, RecordDecoder};
/// use timely_kafka::source::{Framing, KafkaSource, SourceConfig, SourceHandle, Sources};
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
///     worker.dataflow::<Duration, _, _>(|scope| {
///         let mut sources = Sources::new(scope, &handle);
///         let config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9092"), ["events"])
///             .framing(Framing::Ingestion);
///         KafkaSource::new(config, Text)
///             .build(&mut sources)
///             .inspect(|(key, value, at)| println!("{at:?}: {key} {value:?}"));
///     });
/// });
/// ```
#[derive(Debug)]
pub struct KafkaSource<D> {
    config: SourceConfig,
    decoder: D,
}

impl<D: RecordDecoder> KafkaSource<D> {
    /// Reading as `config` says, decoding with `decoder`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::decode::{RawRecord, RecordDecoder};
    /// use timely_kafka::source::{KafkaSource, SourceConfig};
    /// use timely_kafka::{DecodeError, KafkaConfig};
    ///
    /// #[derive(Debug)]
    /// struct Keys;
    /// impl RecordDecoder for Keys {
    ///     type Key = Vec<u8>;
    ///     type Value = ();
    ///     fn decode(&self, r: &RawRecord<'_>) -> Result<(Vec<u8>, Option<()>), DecodeError> {
    ///         Ok((r.key.unwrap_or_default().to_vec(), r.value.map(|_| ())))
    ///     }
    /// }
    /// // Nothing connects until it is built into a dataflow.
    /// let source = KafkaSource::new(SourceConfig::new(KafkaConfig::new("127.0.0.1:9"), ["events"]), Keys);
    /// assert!(format!("{source:?}").contains("events"));
    /// ```
    pub fn new(config: SourceConfig, decoder: D) -> Self {
        KafkaSource { config, decoder }
    }

    /// Builds the operator into `sources`, whose progress gets its
    /// positions and dead letters; returns its updates. Every worker must
    /// build it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use timely_kafka::decode::{RawRecord, RecordDecoder};
    /// use timely_kafka::source::{KafkaSource, SourceConfig, SourceHandle, Sources};
    /// use timely_kafka::{DecodeError, KafkaConfig};
    ///
    /// struct Bytes;
    /// impl RecordDecoder for Bytes {
    ///     type Key = Vec<u8>;
    ///     type Value = Vec<u8>;
    ///     fn decode(&self, r: &RawRecord<'_>) -> Result<(Vec<u8>, Option<Vec<u8>>), DecodeError> {
    ///         Ok((r.key.unwrap_or_default().to_vec(), r.value.map(<[u8]>::to_vec)))
    ///     }
    /// }
    ///
    /// let handle = SourceHandle::default();
    /// let mut config = SourceConfig::new(KafkaConfig::new("127.0.0.1:9"), ["events"]);
    /// config.metadata_timeout = Duration::from_secs(1);
    /// let shared = handle.clone();
    /// timely::execute_directly(move |worker| {
    ///     let dataflow = worker.next_dataflow_index();
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         let mut sources = Sources::new(scope, &shared);
    ///         KafkaSource::new(config, Bytes).build(&mut sources);
    ///     });
    ///     // A failed source keeps its capabilities (no epoch completes half-read): drop the dataflow.
    ///     while shared.error().is_none() { worker.step(); }
    ///     worker.drop_dataflow(dataflow);
    /// });
    /// assert!(handle.error().unwrap().contains("events"));
    /// ```
    pub fn build<'s, T: EpochTimestamp>(
        self,
        sources: &mut Sources<'s, T>,
    ) -> Upserts<'s, T, D::Key, D::Value>
    where
        D::Key: Clone + 'static,
        D::Value: Clone + 'static,
    {
        sources.add(self)
    }

    /// The operator's updates, and its progress.
    fn build_streams<'s, T: EpochTimestamp>(
        self,
        scope: Scope<'s, T>,
        handle: &SourceHandle,
        finished: Option<ProbeHandle<T>>,
    ) -> (Upserts<'s, T, D::Key, D::Value>, SourceProgress<'s, T>)
    where
        D::Key: Clone + 'static,
        D::Value: Clone + 'static,
    {
        let handle = handle.clone();
        let KafkaSource { config, decoder } = self;
        let mut builder =
            OperatorBuilder::new(format!("KafkaSource({})", config.topics.join(",")), scope);
        let info = builder.operator_info();
        let (updates_output, updates) = builder.new_output::<Vec<(D::Key, Option<D::Value>, T)>>();
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
        handle.wake_on_stop(sync_activator.clone());

        builder.build(move |capabilities| {
            // Held for as long as the dataflow lives, even once stopped or
            // failed: an epoch some partition has not passed never
            // completes, so no sink writes it half-read.
            let mut caps = capabilities;
            let mut reader =
                match Reader::<D>::connect(&config, index, peers, &sync_activator, &handle) {
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
                    .map(|p| p.with_frontier(|f| f.first().map(EpochTimestamp::epoch)));
                let emitted = r.read(&config, &decoder, &handle, finished_at);
                let mut updates = updates_output.activate();
                let mut positions = positions_output.activate();
                let mut dead_letters = dead_letters_output.activate();
                for (epoch, emitted) in emitted {
                    let time = T::from_epoch(epoch);
                    let cap = caps[0].delayed(&time);
                    let mut session = updates.session(&cap);
                    for (key, value) in emitted.records {
                        session.give((key, value, time));
                    }
                    let cap = caps[1].delayed(&time);
                    positions
                        .session(&cap)
                        .give_iterator(emitted.positions.into_iter());
                    if !emitted.dead_letters.is_empty() {
                        let cap = caps[2].delayed(&time);
                        dead_letters
                            .session(&cap)
                            .give_iterator(emitted.dead_letters.into_iter());
                    }
                }
                let lower = T::from_epoch(r.lower_bound());
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
        (
            updates,
            SourceProgress {
                positions,
                dead_letters,
            },
        )
    }
}
