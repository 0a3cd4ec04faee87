//! The aggregator: station statuses from Kafka, per-postcode counts back to
//! Kafka, on any number of timely workers and processes.
//!
//! ```text
//! input topic ──KafkaSource──upsert──┐
//!                                    ├─ postcode_counts ── KafkaSink ──> output topic
//! directory topic ──KafkaSource──upsert──┘   (or the postcode table)
//! ```
//!
//! Without a directory topic, each station is placed by the postcode table
//! (the shipped Vélib' one or the user's), by its code, else its id.

use crate::counts::PostcodeTotals;
use crate::dataflow::{
    postcode_counts_from_upserts, postcode_vehicle_types, with_vehicle_types, Epoch,
};
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::kafka::as_of::{read_as_of, read_framing};
use crate::kafka::sink::{committed_progress, EpochProgress, KafkaSink, SinkConfig, SinkHandle};
use crate::kafka::source::{
    written_as_far_as_read, Framing, KafkaSource, SourceConfig, SourceHandle, SourceStats, Sources,
};
use crate::kafka::state::{
    read_state_share, restore_state, restored_upserts, Changelog, RestoreConfig, StateRecord,
};
use crate::kafka::topics::{ensure_topics, TopicOutcome, TopicSpec};
use crate::kafka::upsert::Upserts;
use crate::kafka::{KafkaConfig, KafkaError};
use crate::output::PostcodeRecordEncoder;
use crate::postcode::{Postcode, PostcodeTable};
use crate::station_records::{DirectoryEntryDecoder, StationStatusDecoder};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::Stream;

/// The seeds' input topic.
pub const DEFAULT_INPUT_TOPIC: &str = "velib-projet";
/// The seeds' output topic.
pub const DEFAULT_OUTPUT_TOPIC: &str = "velib-projet-clean";
/// Where records that cannot be read go, by default.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = crate::kafka::DEFAULT_DEAD_LETTER_TOPIC;
/// The state a restart restores from, by default: the output topic's name
/// and this suffix.
pub const STATE_TOPIC_SUFFIX: &str = "-state";
/// The default output topic's state topic.
pub const DEFAULT_STATE_TOPIC: &str = "velib-projet-clean-state";

/// Where the aggregator keeps the state a restart restores from
/// ([`crate::kafka::state`]).
///
/// # Examples
///
/// ```
/// use velib_dataflow::aggregator::StateTopic;
///
/// assert_eq!(StateTopic::default().name("velib-projet-clean").as_deref(), Some("velib-projet-clean-state"));
/// assert_eq!(StateTopic::Named("mine".into()).name("velib-projet-clean").as_deref(), Some("mine"));
/// assert_eq!(StateTopic::None.name("velib-projet-clean"), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StateTopic {
    /// The output topic's name followed by [`STATE_TOPIC_SUFFIX`].
    #[default]
    BesideOutput,
    /// This topic.
    Named(String),
    /// None: a restart reads the input from its start again (its cost grows
    /// with the input's history) and still writes no committed epoch twice.
    None,
}

impl StateTopic {
    /// The state topic's name for the output topic `output`.
    pub fn name(&self, output: &str) -> Option<String> {
        match self {
            StateTopic::BesideOutput => Some(format!("{output}{STATE_TOPIC_SUFFIX}")),
            StateTopic::Named(topic) => Some(topic.clone()),
            StateTopic::None => None,
        }
    }
}

/// What the aggregator reads and writes.
///
/// # Examples
///
/// ```
/// use velib_dataflow::aggregator::AggregatorConfig;
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let config = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// // Stations are placed by the producer's directory topic, by default.
/// assert_eq!(config.directory_topic.as_deref(), Some("velib-directory"));
/// let topics: Vec<_> = config.topics(3).into_iter().map(|t| (t.name, t.compacted)).collect();
/// assert_eq!(topics, [
///     ("velib-projet".to_owned(), false),
///     ("velib-directory".to_owned(), true),
///     ("velib-projet-clean".to_owned(), true),
///     ("velib-projet-clean-state".to_owned(), true),
///     ("velib-projet-dead-letters".to_owned(), false),
/// ]);
///
/// // The seeds' format has no directory: none is created or read.
/// let mut seeds = config.clone();
/// seeds.framing = Some(velib_dataflow::kafka::source::Framing::Ingestion);
/// assert!(seeds.topics(3).iter().all(|t| t.name != "velib-directory"));
/// ```
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Station statuses.
    pub input_topic: String,
    /// Directory entries, as the producer publishes them (so that producer
    /// and aggregator agree on every station's postcode); `None` to place
    /// stations with [`Self::postcodes`]. Input in the seeds' format has no
    /// directory: it is placed with the table whatever this says.
    pub directory_topic: Option<String>,
    /// Per-postcode counts.
    pub output_topic: String,
    /// The state a restart restores from, written in each epoch's
    /// transaction.
    pub state_topic: StateTopic,
    /// Records that cannot be read; `None` to only log and count them.
    pub dead_letter_topic: Option<String>,
    /// How the input marks its epochs; `None` to tell by the input's first
    /// records (the epoch protocol if they have epoch headers, else the
    /// seeds' format).
    pub framing: Option<Framing>,
    /// The station → postcode table used without a directory topic.
    pub postcodes: Arc<PostcodeTable>,
    /// The output producer's `transactional.id`.
    pub transactional_id: String,
    /// Create missing topics with this many partitions (`None`: create
    /// nothing, and fail clearly when a topic is missing).
    pub create_partitions: Option<i32>,
    /// The replication factor of created topics.
    pub replication: i32,
    /// Epochs read ahead of what is committed.
    pub read_ahead: u64,
    /// Also write each postcode's vehicles by `vehicle_type_id`
    /// (`vehicle_types` in the records; [`crate::dataflow::postcode_vehicle_types`]).
    pub vehicle_types: bool,
    /// The system whose records these are, written in each record's
    /// `system` field (`None`: the default system, whose records have
    /// none); see [`Self::for_system`].
    pub system: Option<String>,
}

impl AggregatorConfig {
    /// The seeds' topics on `kafka`, the epoch protocol, the Vélib' postcode
    /// table, topics created with 3 partitions.
    pub fn new(kafka: KafkaConfig) -> Self {
        AggregatorConfig {
            kafka,
            input_topic: DEFAULT_INPUT_TOPIC.into(),
            directory_topic: Some(crate::kafka::publish::DEFAULT_DIRECTORY_TOPIC.into()),
            output_topic: DEFAULT_OUTPUT_TOPIC.into(),
            state_topic: StateTopic::BesideOutput,
            dead_letter_topic: Some(DEFAULT_DEAD_LETTER_TOPIC.into()),
            framing: None,
            postcodes: Arc::new(PostcodeTable::velib()),
            transactional_id: format!("velib-aggregator-{DEFAULT_OUTPUT_TOPIC}"),
            create_partitions: Some(3),
            replication: 1,
            read_ahead: 8,
            vehicle_types: false,
            system: None,
        }
    }

    /// This configuration for the named system of [`crate::systems`]: each
    /// topic and the transactional id followed by `.<name>` (the producer's
    /// `velib-projet.oslo` and `velib-directory.oslo` in,
    /// `velib-projet-clean.oslo` and its state `velib-projet-clean-state.oslo`
    /// out), and the records saying `"system":"<name>"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::aggregator::AggregatorConfig;
    /// use velib_dataflow::kafka::KafkaConfig;
    ///
    /// let oslo = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092")).for_system("oslo");
    /// let topics: Vec<_> = oslo.topics(3).into_iter().map(|t| t.name).collect();
    /// assert_eq!(topics, [
    ///     "velib-projet.oslo",
    ///     "velib-directory.oslo",
    ///     "velib-projet-clean.oslo",
    ///     "velib-projet-clean-state.oslo",
    ///     "velib-projet-dead-letters.oslo",
    /// ]);
    /// assert_eq!(oslo.transactional_id, "velib-aggregator-velib-projet-clean.oslo");
    /// assert_eq!(oslo.system.as_deref(), Some("oslo"));
    /// ```
    pub fn for_system(&self, name: &str) -> AggregatorConfig {
        let named = |topic: &str| format!("{topic}.{name}");
        let mut config = self.clone();
        config.input_topic = named(&self.input_topic);
        config.directory_topic = self.directory_topic.as_deref().map(named);
        config.output_topic = named(&self.output_topic);
        // Named, so that the state is `<state>.<name>` as the producer's is,
        // not `<output>.<name>-state`.
        config.state_topic = match self.state_topic.name(&self.output_topic) {
            Some(state) => StateTopic::Named(named(&state)),
            None => StateTopic::None,
        };
        config.dead_letter_topic = self.dead_letter_topic.as_deref().map(named);
        config.transactional_id = named(&self.transactional_id);
        config.system = Some(name.to_owned());
        config
    }

    /// What the output records are, as every progress record names it
    /// ([`crate::kafka::sink::SinkConfig::value_format`]): `vehicle_types`
    /// with the option, else none (as written before the option existed).
    /// A restart in another format is refused: only changed postcodes are
    /// written, and the topic would hold records of both.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::aggregator::AggregatorConfig;
    /// use velib_dataflow::kafka::KafkaConfig;
    ///
    /// let mut config = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
    /// assert_eq!(config.value_format(), None);
    /// config.vehicle_types = true;
    /// assert_eq!(config.value_format().as_deref(), Some("vehicle_types"));
    /// ```
    pub fn value_format(&self) -> Option<String> {
        self.vehicle_types.then(|| VEHICLE_TYPES_FORMAT.to_owned())
    }

    /// The topics the aggregator uses, as they should be created.
    pub fn topics(&self, partitions: i32) -> Vec<TopicSpec> {
        let mut topics = vec![TopicSpec::new(&self.input_topic, partitions)];
        // The seeds' format has no directory: none is created for it.
        let seeds = self.framing == Some(Framing::Ingestion);
        if let Some(directory) = self.directory_topic.as_ref().filter(|_| !seeds) {
            topics.push(TopicSpec::new(directory, partitions).compacted());
        }
        topics.push(TopicSpec::new(&self.output_topic, partitions).compacted());
        if let Some(state) = self.state_topic.name(&self.output_topic) {
            topics.push(TopicSpec::new(state, partitions).changelog());
        }
        if let Some(dead) = &self.dead_letter_topic {
            topics.push(TopicSpec::new(dead, 1));
        }
        topics
            .into_iter()
            .map(|t| t.replication(self.replication))
            .collect()
    }
}

/// The value format ([`AggregatorConfig::value_format`]) of output written
/// with `--vehicle-types`.
pub const VEHICLE_TYPES_FORMAT: &str = "vehicle_types";

/// Where every worker starts, as worker 0 decided ([`where_to_start`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Start {
    /// The input is in the seeds' format.
    ingestion: bool,
    /// The epoch the sources release their first records at.
    as_of: Epoch,
    /// Where stations' postcodes come from (`None`: the table).
    directory_topic: Option<String>,
    /// The last committed progress, when the output has one: no epoch up to
    /// it is written again.
    committed: Option<EpochProgress>,
    /// Restore the state as of `committed` from the state topic and read the
    /// input from the committed positions (else read the input from its
    /// start).
    restore: bool,
}

impl Start {
    fn framing(&self) -> Framing {
        if self.ingestion {
            Framing::Ingestion
        } else {
            Framing::Epochs
        }
    }
}

/// Fences an earlier run's sink, reads the last committed progress and the
/// start of the input topics, and decides, saying why in the log: whether to
/// restore the committed state or read the input from its start, the
/// input's framing (unless configured), the epoch the sources start at
/// ([`crate::kafka::as_of`]), and where stations get their postcodes.
fn where_to_start(config: &AggregatorConfig) -> Result<Start, AggregatorError> {
    let stall = Duration::from_secs(60);
    let committed = committed_progress(
        &config.kafka,
        &config.output_topic,
        &config.transactional_id,
        stall,
    )?;
    if let Some(progress) = &committed {
        let format = config.value_format();
        if progress.value_format != format {
            let (was, now, older) = if format.is_some() {
                // Versions before the check recorded no format, whatever
                // they wrote.
                (
                    "without",
                    "with",
                    " (or by a version that did not record it)",
                )
            } else {
                ("with", "without", "")
            };
            let state = config
                .state_topic
                .name(&config.output_topic)
                .map(|t| format!(" and {t}"))
                .unwrap_or_default();
            return Err(AggregatorError::Resume(format!(
                "epoch {} of {} was written {was} --vehicle-types{older}, and this run is {now} it: \
                 only changed postcodes are written, so its records would mix both; run {was} \
                 --vehicle-types, or delete {}{state} to write every postcode anew",
                progress.epoch, config.output_topic, config.output_topic
            )));
        }
    }
    let state_topic = config.state_topic.name(&config.output_topic);
    let restore = match &committed {
        None => false,
        Some(progress) => match (&progress.state, &state_topic) {
            (Some(state), Some(topic)) if &state.topic == topic => true,
            (Some(state), Some(topic)) => {
                let advice = match &config.system {
                    // --state-topic is a base that gets `.<name>`.
                    Some(name) => format!(
                        "run system {name} alone with the topics it was committed with \
                         (--output-topic {} --state-topic {}, without --system), or delete {} \
                         and {topic} to start it over",
                        config.output_topic, state.topic, config.output_topic
                    ),
                    None => format!("give --state-topic {}", state.topic),
                };
                return Err(AggregatorError::Resume(format!(
                    "epoch {} of {} was committed with its state in {}, and this run keeps it in {topic}: {advice}",
                    progress.epoch, config.output_topic, state.topic
                )));
            }
            (Some(state), None) => {
                tracing::warn!(
                    epoch = progress.epoch,
                    state_topic = state.topic,
                    "no state topic for this run: reading the input from its start (epochs up to the committed one are computed again, not written)"
                );
                false
            }
            (None, Some(topic)) if holds_records(&config.kafka, topic, stall) => {
                return Err(AggregatorError::Resume(format!(
                    "epoch {} of {} was committed without a state topic, and {topic} holds records \
                     of an earlier run: delete it, so that it is written anew from this run's state",
                    progress.epoch, config.output_topic
                )))
            }
            (None, _) => {
                tracing::warn!(
                    epoch = progress.epoch,
                    "the last committed epoch names no state topic (written without one): reading the input from its start (epochs up to the committed one are computed again, not written)"
                );
                false
            }
        },
    };
    // The framing is the input's: a directory topic left from another run
    // says nothing of it.
    // A resumed run only needs the framing: its sources start at the
    // committed positions, not where the topics' history starts.
    let input = if restore {
        read_framing(&config.kafka, &[&config.input_topic], stall)?
    } else {
        read_as_of(&config.kafka, &[&config.input_topic], stall)?
    };
    let framing = match (config.framing, input.framing()) {
        (Some(framing), _) => framing,
        (None, Some(Framing::Ingestion)) => {
            tracing::warn!(
                topic = config.input_topic,
                "the input's records have no epoch headers: reading them as the seeds' producer.py \
                 format (unkeyed station JSON), an epoch closing whenever the input is caught up"
            );
            Framing::Ingestion
        }
        (None, Some(framing)) => {
            tracing::info!(
                topic = config.input_topic,
                "the input is in the epoch protocol"
            );
            framing
        }
        (None, None) => {
            tracing::info!(
                topic = config.input_topic,
                "the input is empty: reading it in the epoch protocol (velib_producer's); \
                 for the seeds' producer.py, say --input-format seed"
            );
            Framing::Epochs
        }
    };
    if let (Framing::Ingestion, Some(progress), false) = (framing, &committed, restore) {
        // Ingestion epochs are clock times: reading the input again would
        // give every record a new epoch, after the committed one.
        return Err(AggregatorError::Resume(format!(
            "epoch {} of {} was committed from input in the seeds' format, which can only be resumed \
             from a state topic (this run has none, or the output was written without one): run with \
             the state topic, or delete {} to start over",
            progress.epoch, config.output_topic, config.output_topic
        )));
    }
    if framing == Framing::Epochs && !input.unframed.is_empty() {
        tracing::warn!(
            partitions = ?input.unframed,
            "these partitions start with records without epoch headers; they go to the dead-letter topic"
        );
    }
    let directory_topic = match (&config.directory_topic, framing) {
        (Some(topic), Framing::Ingestion) => {
            tracing::info!(
                directory_topic = topic,
                "the seeds' format has no directory: stations are placed by the postcode table"
            );
            None
        }
        (topic, _) => topic.clone(),
    };
    match &directory_topic {
        Some(topic) => tracing::info!(
            directory_topic = topic,
            "stations' postcodes: from the producer's directory topic"
        ),
        None => tracing::info!("stations' postcodes: from the postcode table, none inferred"),
    }
    if let (true, Some(progress)) = (restore, &committed) {
        let sources: std::collections::BTreeSet<String> = std::iter::once(&config.input_topic)
            .chain(&directory_topic)
            .cloned()
            .collect();
        let state = progress.state.as_ref().expect("restore has a state");
        if !state.sources.is_empty() && state.sources != sources {
            return Err(AggregatorError::Resume(format!(
                "the state of epoch {} holds the sources {:?}, and this run reads {sources:?}: \
                 run with the same input and directory topics, or delete {} and {} to start over",
                progress.epoch, state.sources, config.output_topic, state.topic
            )));
        }
        tracing::info!(
            epoch = progress.epoch,
            state_topic = state.topic,
            keys = state.total_keys(),
            "resuming after the last committed epoch: restoring its state from the state topic, \
             input read from the committed positions"
        );
        return Ok(Start {
            ingestion: framing == Framing::Ingestion,
            as_of: progress.epoch.saturating_add(1),
            directory_topic,
            committed,
            restore,
        });
    }
    let directory = match &directory_topic {
        Some(topic) => read_as_of(&config.kafka, &[topic], stall)?,
        None => Default::default(),
    };
    if let Some(topic) = &directory_topic {
        if directory.framed.is_empty() && !input.framed.is_empty() {
            tracing::warn!(
                directory_topic = topic,
                "the directory topic is empty while the input has epochs: nothing is written until \
                 the producer publishes its directory (velib_producer does); --no-directory places \
                 stations by the postcode table instead"
            );
        }
    }
    let as_of = match framing {
        Framing::Epochs => input.as_of.max(directory.as_of),
        Framing::Ingestion => 0,
    };
    for (topic, partition, epoch) in input.compacted.iter().chain(&directory.compacted) {
        tracing::info!(
            "{topic}[{partition}] was compacted: its epochs up to {epoch} are read as one"
        );
    }
    if as_of > 1 {
        tracing::info!(
            as_of,
            "starting at epoch {as_of}: the state of the epochs up to it is applied at once"
        );
    }
    Ok(Start {
        ingestion: framing == Framing::Ingestion,
        as_of,
        directory_topic,
        committed,
        restore: false,
    })
}

/// Whether `topic` exists and holds any record.
fn holds_records(kafka: &KafkaConfig, topic: &str, stall: Duration) -> bool {
    crate::kafka::scan::watermarks(kafka, topic, stall)
        .is_ok_and(|ends| ends.iter().any(|(low, high)| high > low))
}

/// Where every worker starts: worker 0 reads the output's last progress and
/// the input topics' start ([`where_to_start`]) once topics exist, and
/// broadcasts its decision, so that all workers of all processes build the
/// same dataflow and release from the same epoch (each process reading on
/// its own could see the topics at different moments).
fn agree_on_start(
    worker: &mut timely::worker::Worker,
    config: &AggregatorConfig,
) -> Result<Start, String> {
    let mine = (worker.index() == 0).then(|| where_to_start(config).map_err(|e| e.to_string()));
    tell_everyone(worker, mine)
        .into_iter()
        .next()
        .unwrap_or_else(|| Err("worker 0 decided nothing about where to start".into()))
}

/// Gives every worker of every process what each worker says (`None`: says
/// nothing), in no particular order: a small dataflow of its own, run to
/// its end before anything else is built.
fn tell_everyone<T: timely::ExchangeData + Clone>(
    worker: &mut timely::worker::Worker,
    mine: Option<T>,
) -> Vec<T> {
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Input, Inspect};
    let heard: std::rc::Rc<std::cell::RefCell<Vec<T>>> = Default::default();
    let seen = std::rc::Rc::clone(&heard);
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, said) = scope.new_input::<Vec<T>>();
        said.broadcast()
            .inspect(move |x: &T| seen.borrow_mut().push(x.clone()))
            .probe_with(&probe);
        input
    });
    if let Some(mine) = mine {
        input.send(mine);
    }
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(100)));
    }
    let heard = std::mem::take(&mut *heard.borrow_mut());
    heard
}

/// Each worker reads its share of the state topic ([`read_state_share`]);
/// all agree that every share is whole before any builds its dataflow, so
/// that no epoch is written from part of a state, in any process.
fn restore_everywhere(
    worker: &mut timely::worker::Worker,
    config: &AggregatorConfig,
    progress: &EpochProgress,
) -> Result<Vec<StateRecord>, String> {
    let Some(summary) = progress.state.clone() else {
        return Ok(Vec::new());
    };
    let restore = RestoreConfig {
        kafka: config.kafka.clone(),
        epoch: progress.epoch,
        summary,
        stall: Duration::from_secs(60),
    };
    let share = read_state_share(&restore, worker.index(), worker.peers());
    let verdict = share.as_ref().map(|_| ()).map_err(Clone::clone);
    let verdicts: Vec<Result<(), String>> = tell_everyone(worker, Some(verdict));
    if let Some(Err(problem)) = verdicts.into_iter().find(Result::is_err) {
        return Err(problem);
    }
    share
}

/// Why the aggregator stopped.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorError, AggregatorHandle};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let config = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// if let Err(AggregatorError::Stopped(why)) = run(timely::Config::thread(), config, AggregatorHandle::default()) {
///     eprintln!("a source or the sink stopped: {why}");
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregatorError {
    /// Kafka refused something at start (topics, clients).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A source or the sink stopped on an error.
    #[error("{0}")]
    Stopped(String),
    /// Timely could not start, or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
    /// What was committed cannot be resumed with this configuration.
    #[error("cannot resume: {0}")]
    Resume(String),
}

/// Watches and stops a running aggregator; clones share the state.
///
/// # Examples
///
/// ```
/// use velib_dataflow::aggregator::AggregatorHandle;
///
/// let handle = AggregatorHandle::default();
/// // Pass a clone to `aggregator::run`; watch and stop it with this one.
/// assert_eq!(handle.committed(), None);
/// assert_eq!(handle.source_stats().records, 0);
/// handle.stop();
/// ```
#[derive(Clone, Debug, Default)]
pub struct AggregatorHandle {
    sources: SourceHandle,
    sink: SinkHandle,
}

impl AggregatorHandle {
    /// Stops reading; the epochs every input partition has passed are
    /// written, none half-read (the next run reads the others again).
    pub fn stop(&self) {
        self.sources.stop();
    }

    /// The time from each epoch's close (the producer's marker) to its
    /// output committed.
    pub fn close_to_commit(&self) -> crate::kafka::sink::LatencyHistogram {
        self.sink.close_to_commit()
    }

    /// The last epoch whose output is committed.
    pub fn committed(&self) -> Option<Epoch> {
        self.sink.committed()
    }

    /// What the sources have read, applied, discarded and dead-lettered.
    pub fn source_stats(&self) -> SourceStats {
        self.sources.stats()
    }

    /// Postcode records written in committed epochs.
    pub fn records_written(&self) -> u64 {
        self.sink.records()
    }

    /// Why the aggregator stopped, if a source or the sink failed.
    pub fn error(&self) -> Option<String> {
        self.sources.error().or_else(|| self.sink.error())
    }
}

/// Places each station by the postcode table: the directory when no
/// directory topic is read. A station the table does not know counts under
/// [`Postcode::unknown`].
pub fn table_directory<'s>(
    statuses: &VecCollection<'s, Epoch, StationStatus>,
    table: Arc<PostcodeTable>,
) -> VecCollection<'s, Epoch, DirectoryEntry> {
    statuses
        .clone()
        .map(move |s| DirectoryEntry::placed_by_table(&table, &s))
}

/// As [`table_directory`], on upserts: each status's station placed by the
/// table at the same time, and gone with it.
pub fn table_directory_upserts<'s>(
    statuses: Upserts<'s, Epoch, StationId, StationStatus>,
    table: Arc<PostcodeTable>,
) -> Upserts<'s, Epoch, StationId, DirectoryEntry> {
    statuses.map(move |(id, status, time)| {
        let entry = status.map(|s| DirectoryEntry::placed_by_table(&table, &s));
        (id, entry, time)
    })
}

/// The aggregator's dataflow on one worker: the sources (resumed at the
/// committed positions, with the state restored, when `start` says so), the
/// counts, and the sink writing output, state and progress.
fn build_dataflow<'s>(
    scope: timely::dataflow::Scope<'s, Epoch>,
    config: &AggregatorConfig,
    start: &Start,
    handle: &AggregatorHandle,
    (finished, read): (&ProbeHandle<Epoch>, &ProbeHandle<Epoch>),
    restored: Option<Vec<StateRecord>>,
) {
    let resume = start.committed.clone().filter(|_| start.restore);
    let restored = match (&resume, restored) {
        (Some(progress), Some(records)) => Some(restore_state(scope, progress.epoch, records)),
        _ => None,
    };
    // Dead letters go through the sink, in their epoch's transaction.
    let source_config = |topic: &str| SourceConfig {
        dead_letter_topic: None,
        framing: start.framing(),
        read_ahead: config.read_ahead,
        as_of: start.as_of,
        resume: resume.clone(),
        ..SourceConfig::new(config.kafka.clone(), [topic.to_owned()])
    };
    let restored_statuses = |updates, topic: &str| with_restored(updates, &restored, topic, handle);
    let restored_entries = |updates, topic: &str| with_restored(updates, &restored, topic, handle);
    let mut sources = Sources::new(scope, &handle.sources).finished(finished);
    let statuses = restored_statuses(
        KafkaSource::new(source_config(&config.input_topic), StationStatusDecoder)
            .build(&mut sources),
        &config.input_topic,
    );
    let mut state = statuses.clone().state_changes(&config.input_topic);
    let directory = match &start.directory_topic {
        Some(topic) => {
            let entries = restored_entries(
                KafkaSource::new(source_config(topic), DirectoryEntryDecoder).build(&mut sources),
                topic,
            );
            state = state.concat(entries.clone().state_changes(topic));
            entries
        }
        None => table_directory_upserts(statuses.clone(), Arc::clone(&config.postcodes)),
    };
    let counts: VecCollection<'_, Epoch, (Postcode, PostcodeTotals)> =
        postcode_counts_from_upserts(statuses.clone(), directory.clone());
    let mut sink = SinkConfig::new(
        config.kafka.clone(),
        config.output_topic.clone(),
        config.transactional_id.clone(),
    );
    sink.state_topic = config.state_topic.name(&config.output_topic);
    sink.resume = start.committed.clone();
    sink.dead_letter_topic = config.dead_letter_topic.clone();
    sink.value_format = config.value_format();
    let encoder = PostcodeRecordEncoder::of_system(config.system.clone());
    let progress = sources.progress().probe_with(read);
    let written = if config.vehicle_types {
        let types = postcode_vehicle_types(statuses, directory);
        with_vehicle_types(counts, types).kafka_sink_with_state(
            state,
            progress,
            sink,
            encoder,
            handle.sink.clone(),
        )
    } else {
        counts.kafka_sink_with_state(state, progress, sink, encoder, handle.sink.clone())
    };
    written.probe_with(finished);
}

/// A source's upserts, after the state restored for it (its topic names
/// its records in the state).
fn with_restored<'s, K, V>(
    updates: Stream<'s, Epoch, Vec<(K, Option<V>, Epoch)>>,
    restored: &Option<Stream<'s, Epoch, Vec<StateRecord>>>,
    topic: &str,
    handle: &AggregatorHandle,
) -> Stream<'s, Epoch, Vec<(K, Option<V>, Epoch)>>
where
    K: serde::de::DeserializeOwned + Clone + 'static,
    V: serde::de::DeserializeOwned + Clone + 'static,
{
    match restored {
        Some(restored) => {
            let sink = handle.sink.clone();
            updates.concat(restored_upserts(restored.clone(), topic, move |e| {
                sink.fail(e)
            }))
        }
        None => updates,
    }
}

/// Runs the aggregator on `timely_config`'s workers until `handle.stop()` is
/// called or a source or the sink fails. Process 0 creates missing topics
/// first (when [`AggregatorConfig::create_partitions`] says so).
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorHandle};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let config = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// run(timely::Config::process(2), config, AggregatorHandle::default())?;
/// # Ok::<(), velib_dataflow::aggregator::AggregatorError>(())
/// ```
pub fn run(
    timely_config: timely::Config,
    config: AggregatorConfig,
    handle: AggregatorHandle,
) -> Result<(), AggregatorError> {
    let watched = handle.clone();
    let outcome = run_workers(timely_config, config, handle);
    if let (Err(e), None) = (&outcome, watched.error()) {
        // A start that failed (topics, timely) is the handle's error too:
        // its watchers (metrics, other systems' logs) see it at once.
        watched.sources.fail(e.to_string());
    }
    outcome
}

fn run_workers(
    timely_config: timely::Config,
    config: AggregatorConfig,
    handle: AggregatorHandle,
) -> Result<(), AggregatorError> {
    let first_process = match &timely_config.communication {
        timely::CommunicationConfig::Cluster { process, .. } => *process == 0,
        _ => true,
    };
    if let (Some(partitions), true) = (config.create_partitions, first_process) {
        for (topic, outcome) in ensure_topics(
            &config.kafka,
            &config.topics(partitions),
            Duration::from_secs(30),
        )? {
            tracing::info!(topic, ?outcome, "topic ready");
            if topic == config.input_topic && outcome == TopicOutcome::Created {
                tracing::warn!(
                    topic,
                    "the input topic did not exist (created now): is a producer publishing to it? \
                     (with several systems, check the system's name)"
                );
            }
        }
    }
    let watched = handle.clone();
    // The workers' log lines in the caller's span (a system's, with
    // several): timely's threads do not inherit it.
    let span = tracing::Span::current();
    let guards = timely::execute(timely_config, move |worker| {
        let _span = span.clone().entered();
        let handle = handle.clone();
        let config = config.clone();
        let start = match agree_on_start(worker, &config) {
            Ok(start) => start,
            Err(error) => {
                handle.sources.fail(error);
                return;
            }
        };
        let restored = match start.committed.as_ref().filter(|_| start.restore) {
            Some(progress) => match restore_everywhere(worker, &config, progress) {
                Ok(records) => Some(records),
                Err(problem) => {
                    handle.sink.fail(problem);
                    return;
                }
            },
            None => None,
        };
        let finished = ProbeHandle::new();
        let read = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<Epoch, _, _>(|scope| {
            build_dataflow(
                scope,
                &config,
                &start,
                &handle,
                (&finished, &read),
                restored,
            );
        });
        // A resumed epoch was committed by an earlier run: not reported again.
        let mut reported = handle.committed();
        let mut restoring = start
            .committed
            .as_ref()
            .filter(|_| start.restore)
            .map(|c| c.epoch);
        while !finished.done() {
            if handle.sources.is_stopped() && written_as_far_as_read(&finished, &read) {
                // Stopped sources hold the epochs they had not read whole:
                // what they completed is written, the rest is for the
                // next run.
                worker.drop_dataflow(dataflow);
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(200)));
            if let Some(epoch) = restoring.filter(|e| !finished.less_equal(e)) {
                restoring = None;
                if worker.index() == 0 {
                    tracing::info!(epoch, "state restored and applied: following the input");
                }
            }
            if let Some(error) = handle.error() {
                // Once: stopping wakes every worker.
                if !handle.sources.is_stopped() {
                    tracing::error!("stopping: {error}");
                    handle.sources.stop();
                }
            }
            if worker.index() == 0 && handle.committed() != reported {
                reported = handle.committed();
                if let Some(epoch) = reported {
                    tracing::info!(epoch, records = handle.records_written(), "epoch committed");
                }
            }
        }
    })
    .map_err(AggregatorError::Timely)?;
    for result in guards.join() {
        result.map_err(AggregatorError::Timely)?;
    }
    match watched.error() {
        Some(error) => Err(AggregatorError::Stopped(error)),
        None => Ok(()),
    }
}

/// Runs one aggregator per system, each as [`run`] does, on threads of its
/// own ([`crate::systems::run_each`]): a system whose start fails, whose
/// transactions stall or whose input is silent holds back none of the
/// others' epochs. Each system has its own `timely_config` workers, its own
/// epochs, transactional id and state (see [`AggregatorConfig::for_system`]).
/// Returns each system's outcome when all have stopped.
///
/// Several systems share this process's threads: a `timely_config` of
/// several processes is for one system, and refused here for more.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::aggregator::{run_systems, AggregatorConfig, AggregatorHandle};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let base = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// let systems = ["oslo", "bergen"]
///     .map(|name| (name.to_owned(), base.for_system(name), AggregatorHandle::default()));
/// for (name, outcome) in run_systems(timely::Config::thread(), systems.into()) {
///     println!("{name}: {outcome:?}");
/// }
/// ```
pub fn run_systems(
    timely_config: timely::Config,
    systems: Vec<(String, AggregatorConfig, AggregatorHandle)>,
) -> Vec<(String, Result<(), AggregatorError>)> {
    let cluster = matches!(
        timely_config.communication,
        timely::CommunicationConfig::Cluster { .. }
    );
    if cluster && systems.len() > 1 {
        return systems
            .into_iter()
            .map(|(name, _, _)| {
                let why = "several systems run on one process's threads: several processes \
                           (-n above 1) are for one system"
                    .to_owned();
                (name, Err(AggregatorError::Timely(why)))
            })
            .collect();
    }
    let jobs = systems
        .into_iter()
        .map(|(name, config, handle)| (name, (timely_config.clone(), config, handle)))
        .collect();
    crate::systems::run_each(
        "aggregator",
        jobs,
        |(timely_config, config, handle)| run(timely_config, config, handle),
        AggregatorError::Timely,
    )
}
