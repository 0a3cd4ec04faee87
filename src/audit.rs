//! An exactly-once audit of an aggregator's output, run against a live
//! cluster: every complete epoch of the output topic is compared with a
//! from-scratch computation over the input as of that epoch's committed
//! positions, and the output's epochs are checked for duplicates, gaps and
//! tears.
//!
//! Everything is read at `isolation.level=read_committed` with plain
//! consumers that are assigned their partitions: the audit never joins a
//! consumer group, commits no offset and writes nothing, so it can run next
//! to a live producer and aggregator without disturbing them. It reads the
//! output topic up to its end as it finds it, and each input topic only as
//! far as the last complete epoch's positions.
//!
//! # What it checks
//!
//! - **Counts.** The output's data records (key the postcode, value the
//!   [`PostcodeRecord`] JSON, a tombstone when a postcode is gone) are
//!   accumulated epoch by epoch. An epoch is complete once every output
//!   partition has a progress record of it or of a later epoch (see
//!   [`crate::kafka::progress`]). For each complete epoch `E`, in order, the
//!   accumulated state must equal
//!   [`postcode_counts_from_scratch`] over the input
//!   as of `E`'s progress positions: every record of each input partition
//!   below its position, applied with the epoch protocol
//!   ([`PartitionEpochs`]: only what a marker releases counts, last value
//!   per station wins). The count fields (`nbr_*`) and the since-times
//!   (`longest_empty_since`, `longest_full_since`, `null` included) present
//!   in both are compared. Once the output is read, records that came after a
//!   partition's last progress but belong to complete epochs (a replay, a
//!   forged record) are applied too and the current state is compared again.
//! - **Duplicated epochs**: a progress record of an epoch a partition has
//!   already passed (the same epoch again, or an older one), and data records
//!   of an epoch after that partition's progress of it or of a later epoch.
//! - **Missing epochs**: an input epoch (markers on every input partition)
//!   after the output's first complete epoch with neither records nor
//!   progress on the output.
//! - **Torn epochs**: an epoch with records or progress on some output
//!   partitions but progress not on all, while a later epoch is complete.
//! - **Malformed records** are counted and described, never a crash; a
//!   malformed *output* record makes the audit unclean, malformed input
//!   records are what the aggregator dead-letters and only counted.
//!
//! The output must have been computed from the topics the audit reads: a
//! progress record naming other input topics (an aggregator run with
//! `--no-directory`, say) is an [`AuditError::Configuration`] with a hint,
//! and so is input in the seeds' format (no epoch headers), which the audit
//! does not recompute.
//!
//! # Compaction
//!
//! The output and directory topics are compacted. Once the log cleaner has
//! run, only the latest record of each key survives, so the progress
//! records (and markers) of old epochs are gone and their records merged
//! into the next epoch with progress, as [`crate::kafka::progress`] reads
//! them. The cleaner keeps at most one progress record (or marker) of a
//! partition in the part it has cleaned, so the state from a partition's
//! second progress record (or marker) on is exact. Before it, the state is
//! exact when nothing was removed: the audit proves it from the offsets
//! (consecutive, except the one a transaction's commit takes after each
//! progress record or marker). Epochs it cannot prove exact are counted as
//! *unchecked*, with the reason in [`AuditReport::notes`], and neither
//! flagged as missing nor torn: a compacted topic reads as merged epochs,
//! not as errors. (Limit: a cleaner pass *while* the audit reads can remove
//! records it has not reached yet, as [`crate::kafka::as_of`] says of the
//! sources.) An input partition whose start was deleted (low watermark above
//! 0: retention) cannot be recomputed at all.
//!
//! # Memory
//!
//! The audit holds the current status and directory entry of every station,
//! the current output value of every postcode, and per partition the
//! records of epochs not yet complete: output partitions ahead of the
//! others are paused until those catch up, and the input is read in one pass
//! in step with the output's epochs (positions only grow).
//!
//! # Examples
//!
//! ```no_run
//! use velib_dataflow::audit::{audit, AuditConfig};
//! use velib_dataflow::kafka::KafkaConfig;
//!
//! let config = AuditConfig::new(KafkaConfig::new("127.0.0.1:9092"));
//! let report = audit(&config, |p| eprintln!("audit: read {} input records, {} epochs checked", p.input_records, p.epochs_checked))?;
//! println!("{report}");
//! assert!(report.is_clean());
//! # Ok::<(), velib_dataflow::audit::AuditError>(())
//! ```

use crate::aggregator::VEHICLE_TYPES_FORMAT;
use crate::counts::PostcodeTotals;
use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::kafka::config::KafkaContext;
use crate::kafka::decode::{check_size, RawRecord, RecordDecoder};
use crate::kafka::protocol::{framing, Framed, PartitionEpochs, RecordHeaders};
use crate::kafka::sink::EpochProgress;
use crate::kafka::{KafkaConfig, KafkaError, EPOCH_HEADER, KIND_HEADER, PROGRESS_KEY};
use crate::output::PostcodeRecord;
use crate::postcode::{Postcode, PostcodeTable};
use crate::reference::{postcode_counts_from_scratch, typed_totals_from_scratch};
use crate::station_records::{DirectoryEntryDecoder, StationStatusDecoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The count fields of one postcode's output value, by name (`nbr_total`,
/// `nbr_meca`, `nbr_elec`, `nbr_docks`, …), as [`PostcodeRecord`] writes
/// them, and its since-times (`longest_empty_since`, `longest_full_since`),
/// [`NO_TIME`] where the record says `null`.
pub type RecordCounts = BTreeMap<String, i64>;

/// A since-time field that is `null` (no station empty, or full), in
/// [`RecordCounts`].
pub const NO_TIME: i64 = i64::MIN;

/// The field of a record listing its vehicles by type (with
/// `--vehicle-types`), and the prefix of their entries in [`RecordCounts`].
const VEHICLE_TYPES_FIELD: &str = "vehicle_types";

/// Whether a record's field is one the audit checks.
fn is_checked_field(field: &str) -> bool {
    field.starts_with("nbr_") || is_time_field(field)
}

fn is_time_field(field: &str) -> bool {
    field.starts_with("longest_") && field.ends_with("_since")
}

/// Mismatches kept in a report; more are only counted
/// ([`AuditReport::mismatch_count`]).
pub const MAX_MISMATCHES: usize = 1000;

/// Malformed records described in a report's notes; more are only counted.
pub const MAX_DESCRIBED_PROBLEMS: usize = 10;

/// The [`KIND_HEADER`] value of progress records.
const PROGRESS_KIND: &[u8] = b"progress";

/// How long one poll of a consumer waits; the stall timeout is counted
/// over many.
const POLL: Duration = Duration::from_millis(100);

/// What to audit, and where.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::audit::AuditConfig;
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let mut config = AuditConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// // The aggregator's defaults:
/// assert_eq!(config.input_topic, "velib-projet");
/// assert_eq!(config.directory_topic.as_deref(), Some("velib-directory"));
/// assert_eq!(config.output_topic, "velib-projet-clean");
/// // An aggregator run with --no-directory placed stations by the table:
/// config.directory_topic = None;
/// config.stall = Duration::from_secs(5);
/// ```
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The cluster (`-X` properties apply to every consumer; the isolation
    /// level is always `read_committed`).
    pub kafka: KafkaConfig,
    /// Station statuses, as the aggregator read them.
    pub input_topic: String,
    /// The directory entries that place stations, as the aggregator read
    /// them; `None` when it placed them with [`Self::postcodes`].
    pub directory_topic: Option<String>,
    /// The station → postcode table used when there is no directory topic:
    /// a station is placed by its code, else its id, else counts under
    /// [`Postcode::unknown`] (as [`crate::aggregator::table_directory`]).
    pub postcodes: Arc<PostcodeTable>,
    /// The aggregator's output.
    pub output_topic: String,
    /// How long a read may go without a record or a partition's end before
    /// the audit gives up (also the timeout of metadata requests).
    pub stall: Duration,
    /// The progress callback is called every this many records read
    /// (input and output together).
    pub progress_every: u64,
    /// The system whose output this is ([`Self::for_system`]): every record
    /// must say it in its `system` field, and the default system's
    /// (`None`) have none; a record that says otherwise is malformed.
    pub system: Option<String>,
}

impl AuditConfig {
    /// The aggregator's default topics on `kafka`, the shipped Vélib' table,
    /// a 30 s stall timeout, progress every 100 000 records.
    pub fn new(kafka: KafkaConfig) -> Self {
        AuditConfig {
            kafka,
            input_topic: crate::aggregator::DEFAULT_INPUT_TOPIC.into(),
            directory_topic: Some(crate::kafka::publish::DEFAULT_DIRECTORY_TOPIC.into()),
            postcodes: Arc::new(PostcodeTable::velib()),
            output_topic: crate::aggregator::DEFAULT_OUTPUT_TOPIC.into(),
            stall: Duration::from_secs(30),
            progress_every: 100_000,
            system: None,
        }
    }

    /// This audit for the named system of `velib_aggregator --system`:
    /// each topic followed by `.<name>`, as
    /// [`crate::aggregator::AggregatorConfig::for_system`] names them, and
    /// every record checked to say `"system":"<name>"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::audit::AuditConfig;
    /// use velib_dataflow::kafka::KafkaConfig;
    ///
    /// let oslo = AuditConfig::new(KafkaConfig::new("127.0.0.1:9092")).for_system("oslo");
    /// assert_eq!((oslo.input_topic.as_str(), oslo.output_topic.as_str()), ("velib-projet.oslo", "velib-projet-clean.oslo"));
    /// assert_eq!(oslo.directory_topic.as_deref(), Some("velib-directory.oslo"));
    /// ```
    pub fn for_system(mut self, name: &str) -> Self {
        let named = |topic: &str| format!("{topic}.{name}");
        self.input_topic = named(&self.input_topic);
        self.directory_topic = self.directory_topic.as_deref().map(named);
        self.output_topic = named(&self.output_topic);
        self.system = Some(name.to_owned());
        self
    }

    fn input_topics(&self) -> Vec<String> {
        std::iter::once(self.input_topic.clone())
            .chain(self.directory_topic.clone())
            .collect()
    }
}

/// How far an audit has got, handed to its progress callback.
///
/// # Examples
///
/// ```
/// use velib_dataflow::audit::AuditProgress;
///
/// let progress = AuditProgress { input_records: 120_000, epochs_checked: 40, ..Default::default() };
/// assert_eq!(progress.to_string(), "read 120000 input records, 0 output records, 40 epochs checked");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditProgress {
    /// Input records read (statuses and directory entries).
    pub input_records: u64,
    /// Output records read (data and progress).
    pub output_records: u64,
    /// Complete epochs compared with the from-scratch computation.
    pub epochs_checked: u64,
    /// The last complete epoch so far.
    pub epoch: Option<Epoch>,
}

impl fmt::Display for AuditProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {} input records, {} output records, {} epochs checked",
            self.input_records, self.output_records, self.epochs_checked
        )
    }
}

/// One postcode whose output differs from the from-scratch computation at
/// one epoch.
///
/// # Examples
///
/// ```
/// use velib_dataflow::audit::Mismatch;
///
/// let expected = [("nbr_total".to_string(), 12)].into_iter().collect();
/// let found = [("nbr_total".to_string(), 99)].into_iter().collect();
/// let mismatch = Mismatch { epoch: 7, postcode: "75016".into(), expected: Some(expected), found: Some(found) };
/// assert_eq!(mismatch.to_string(), "epoch 7, postcode 75016: nbr_total expected 12, found 99");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The epoch.
    pub epoch: Epoch,
    /// The postcode (the output record's key).
    pub postcode: String,
    /// Its counts computed from scratch; `None`: it should have no station.
    pub expected: Option<RecordCounts>,
    /// Its counts on the output; `None`: no value (never written, or a
    /// tombstone).
    pub found: Option<RecordCounts>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}, postcode {}: ", self.epoch, self.postcode)?;
        match (&self.expected, &self.found) {
            (Some(expected), Some(found)) => {
                let differing: Vec<String> = expected
                    .iter()
                    .filter_map(|(field, e)| {
                        let found = found.get(field).filter(|f| *f != e)?;
                        let text = |n: &i64| match *n {
                            NO_TIME => "null".to_owned(),
                            n => n.to_string(),
                        };
                        Some(format!(
                            "{field} expected {}, found {}",
                            text(e),
                            text(found)
                        ))
                    })
                    .collect();
                f.write_str(&differing.join("; "))
            }
            (Some(expected), None) => {
                write!(f, "expected {}, found no value", counts_text(expected))
            }
            (None, Some(found)) => write!(
                f,
                "expected no value (no station), found {}",
                counts_text(found)
            ),
            (None, None) => f.write_str("no difference"),
        }
    }
}

fn counts_text(counts: &RecordCounts) -> String {
    let fields: Vec<String> = counts
        .iter()
        .map(|(k, v)| match *v {
            NO_TIME => format!("{k}=null"),
            v => format!("{k}={v}"),
        })
        .collect();
    fields.join(" ")
}

/// What an audit found.
///
/// # Examples
///
/// ```
/// use velib_dataflow::audit::AuditReport;
///
/// let mut report = AuditReport::default();
/// report.epochs_checked = 10;
/// assert!(report.is_clean());
/// report.duplicated_epochs.push(3);
/// assert!(!report.is_clean());
/// assert!(report.to_string().contains("duplicated epochs: 3"), "{report}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// The output topic audited.
    pub output_topic: String,
    /// The input topics it was compared with.
    pub input_topics: Vec<String>,
    /// Complete epochs compared with the from-scratch computation.
    pub epochs_checked: u64,
    /// Complete epochs that could not be compared exactly (compaction,
    /// a torn epoch…): see [`Self::notes`].
    pub epochs_unchecked: u64,
    /// The output's first complete epoch.
    pub first_epoch: Option<Epoch>,
    /// The output's last complete epoch.
    pub last_epoch: Option<Epoch>,
    /// Postcodes that differ, at each epoch (the first [`MAX_MISMATCHES`]).
    pub mismatches: Vec<Mismatch>,
    /// All mismatches, including those not kept.
    pub mismatch_count: u64,
    /// Epochs written more than once.
    pub duplicated_epochs: Vec<Epoch>,
    /// Input epochs the output has nothing of.
    pub missing_epochs: Vec<Epoch>,
    /// Epochs whose progress is on some output partitions only.
    pub torn_epochs: Vec<Epoch>,
    /// Whether the output topic was found compacted (progress records of
    /// old epochs gone, their records merged into later epochs).
    pub output_compacted: bool,
    /// Records read from the output topic (data and progress).
    pub output_records: u64,
    /// Of which progress records.
    pub progress_records: u64,
    /// Records read from the input topics.
    pub input_records: u64,
    /// Output records that could not be read.
    pub malformed_output: u64,
    /// Input records that could not be read (the aggregator dead-letters
    /// them).
    pub malformed_input: u64,
    /// What else the audit has to say: unchecked epochs and why, compaction,
    /// the first malformed records.
    pub notes: Vec<String>,
}

impl AuditReport {
    /// No mismatch, no duplicated, missing or torn epoch, no malformed
    /// output record. (Epochs that could not be checked do not make a report
    /// unclean: [`Self::notes`] says why they were not.)
    pub fn is_clean(&self) -> bool {
        self.mismatch_count == 0
            && self.mismatches.is_empty()
            && self.duplicated_epochs.is_empty()
            && self.missing_epochs.is_empty()
            && self.torn_epochs.is_empty()
            && self.malformed_output == 0
    }
}

/// How many mismatches a report's summary details.
const DETAILED_MISMATCHES: usize = 10;

fn epoch_list(epochs: &[Epoch]) -> String {
    const SHOWN: usize = 20;
    let mut text: Vec<String> = epochs.iter().take(SHOWN).map(Epoch::to_string).collect();
    if epochs.len() > SHOWN {
        text.push(format!("… ({} in all)", epochs.len()));
    }
    text.join(", ")
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_epoch, self.last_epoch) {
            (Some(first), Some(last)) => format!("epochs {first} to {last}"),
            _ => "no complete epoch".to_owned(),
        };
        writeln!(
            f,
            "audit of {} against {}: {range}, {} checked, {} not checked; read {} output records ({} progress), {} input records",
            self.output_topic,
            self.input_topics.join(" + "),
            self.epochs_checked,
            self.epochs_unchecked,
            self.output_records,
            self.progress_records,
            self.input_records,
        )?;
        if self.is_clean() {
            writeln!(
                f,
                "clean: every checked epoch equals a from-scratch computation; no duplicated, missing or torn epoch"
            )?;
        } else {
            writeln!(
                f,
                "NOT CLEAN: {} mismatches, {} duplicated, {} missing, {} torn epochs, {} malformed output records",
                self.mismatch_count,
                self.duplicated_epochs.len(),
                self.missing_epochs.len(),
                self.torn_epochs.len(),
                self.malformed_output,
            )?;
        }
        for mismatch in self.mismatches.iter().take(DETAILED_MISMATCHES) {
            writeln!(f, "  mismatch: {mismatch}")?;
        }
        if self.mismatch_count > DETAILED_MISMATCHES as u64 {
            writeln!(
                f,
                "  … and {} more mismatches",
                self.mismatch_count - DETAILED_MISMATCHES as u64
            )?;
        }
        for (what, epochs) in [
            ("duplicated epochs", &self.duplicated_epochs),
            ("missing epochs", &self.missing_epochs),
            ("torn epochs", &self.torn_epochs),
        ] {
            if !epochs.is_empty() {
                writeln!(f, "  {what}: {}", epoch_list(epochs))?;
            }
        }
        if self.malformed_input > 0 {
            writeln!(
                f,
                "  {} malformed input records (dead-lettered by the aggregator, left out here too)",
                self.malformed_input
            )?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// Why an audit could not be carried out.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::audit::{audit, AuditConfig, AuditError};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// // No broker listens there: a clear error once the stall time has passed.
/// let mut config = AuditConfig::new(KafkaConfig::new("127.0.0.1:9"));
/// config.stall = Duration::from_secs(1);
/// let error = audit(&config, |_| {}).unwrap_err();
/// assert!(matches!(error, AuditError::Cluster { .. }));
/// assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The cluster could not be reached, or refused to describe a topic.
    #[error("cannot read the cluster at {brokers} (is it reachable? TLS or SASL need -X properties): {source}")]
    Cluster {
        /// The bootstrap servers.
        brokers: String,
        /// What failed.
        #[source]
        source: Box<KafkaError>,
    },
    /// Another Kafka operation failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Reading a topic made no progress for the stall time.
    #[error("reading {topic} stalled for {stall:?} ({detail})")]
    Stalled {
        /// The topic.
        topic: String,
        /// The stall timeout.
        stall: Duration,
        /// What was being read, and the last error librdkafka reported.
        detail: String,
    },
    /// The output was not computed from what this audit reads (another
    /// input or directory topic, the seeds' format…).
    #[error("cannot audit with this configuration: {0}")]
    Configuration(String),
}

/// Audits `config.output_topic` against its input: see the module's
/// documentation for what is checked. `progress` is called every
/// [`AuditConfig::progress_every`] records, and once at the end.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::audit::{audit, AuditConfig};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let mut config = AuditConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// config.directory_topic = None;
/// let report = audit(&config, |_| {})?;
/// if !report.is_clean() {
///     eprintln!("{report}");
/// }
/// # Ok::<(), velib_dataflow::audit::AuditError>(())
/// ```
pub fn audit(
    config: &AuditConfig,
    mut progress: impl FnMut(&AuditProgress),
) -> Result<AuditReport, AuditError> {
    let mut output = TopicReader::open(config, &config.output_topic)?;
    let mut inputs = Vec::new();
    for topic in config.input_topics() {
        inputs.push(TopicReader::open(config, &topic)?);
    }
    let input_starts: Vec<(String, Vec<i64>)> = inputs
        .iter()
        .map(|r| (r.topic.clone(), r.low.clone()))
        .collect();
    let mut engine = Engine::new(config, &output.low, &input_starts);
    let mut ticker = Ticker::new(config.progress_every);
    for p in 0..output.partitions() {
        output.assign(p)?;
    }
    let mut ended = vec![false; output.partitions()];
    let mut last_activity = Instant::now();
    loop {
        // Partitions ahead of the others wait, so that only about one epoch
        // per partition is held in memory.
        let through = engine.complete_through();
        let mut reading = false;
        for (p, ended) in ended.iter().enumerate() {
            let wanted = !*ended && !engine.output_held(p, through);
            if wanted {
                output.assign(p)?;
                reading = true;
            } else {
                output.unassign(p)?;
            }
        }
        if !reading {
            break;
        }
        match output.poll()? {
            Polled::Record(message) => {
                last_activity = Instant::now();
                let p = partition_index(message.partition());
                output.next[p] = message.offset() + 1;
                engine.output_record(p, &message);
                ticker.tick(&engine, &mut progress);
            }
            Polled::End(p) => {
                last_activity = Instant::now();
                ended[p] = true;
            }
            Polled::Nothing => {
                if last_activity.elapsed() > config.stall {
                    return Err(output.stalled(config.stall, "the output topic"));
                }
            }
        }
        if engine.complete_through() > engine.complete {
            engine.complete_epochs(|engine, positions| {
                engine.read_input_to(
                    &mut inputs,
                    positions,
                    config.stall,
                    &mut ticker,
                    &mut progress,
                )
            })?;
            last_activity = Instant::now();
        }
    }
    let report = engine.finish();
    progress(&engine_progress(&report));
    Ok(report)
}

fn engine_progress(report: &AuditReport) -> AuditProgress {
    AuditProgress {
        input_records: report.input_records,
        output_records: report.output_records,
        epochs_checked: report.epochs_checked,
        epoch: report.last_epoch,
    }
}

/// A partition number as an index (librdkafka never hands out negative
/// ones; a wrong one maps past every partition and is ignored).
fn partition_index(partition: i32) -> usize {
    usize::try_from(partition).unwrap_or(usize::MAX)
}

/// Calls the progress callback every so many records.
#[derive(Debug)]
struct Ticker {
    every: u64,
    next: u64,
}

impl Ticker {
    fn new(every: u64) -> Self {
        let every = every.max(1);
        Ticker { every, next: every }
    }

    fn tick(&mut self, engine: &Engine, progress: &mut impl FnMut(&AuditProgress)) {
        let read = engine.report.input_records + engine.report.output_records;
        if read >= self.next {
            self.next = read + self.every;
            progress(&engine_progress(&engine.report));
        }
    }
}

/// What a poll of a [`TopicReader`] gave.
#[derive(Debug)]
enum Polled {
    Record(OwnedMessage),
    /// The partition (an index) is at its end.
    End(usize),
    Nothing,
}

/// One topic, read with a consumer of its own whose partitions are assigned
/// one by one, each from the next offset the audit has not handled: a
/// partition unassigned and assigned again goes on exactly where it was,
/// whatever librdkafka had fetched ahead.
struct TopicReader {
    topic: String,
    brokers: String,
    consumer: BaseConsumer<KafkaContext>,
    /// Low watermark of each partition when the audit started.
    low: Vec<i64>,
    /// The next offset to hand out, per partition.
    next: Vec<i64>,
    assigned: Vec<bool>,
    last_error: Option<String>,
}

impl fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("next", &self.next)
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    fn open(config: &AuditConfig, topic: &str) -> Result<TopicReader, AuditError> {
        let brokers = config.kafka.brokers().to_owned();
        // A topic that is not there is said as such; anything else at this
        // point is the cluster not answering.
        let cluster = |source: KafkaError| match source {
            KafkaError::Topic { .. } => AuditError::Kafka(source),
            source => AuditError::Cluster {
                brokers: brokers.clone(),
                source: Box::new(source),
            },
        };
        // librdkafka's incremental assignment wants a group id; assigning
        // partitions never joins that group, and nothing is committed to it.
        // Partitions are assigned again at every epoch and read to their end:
        // a broker holding an empty fetch for its default half second would
        // cost that much each time.
        let mut client = config
            .kafka
            .client_config(&[("group.id", "velib-audit"), ("fetch.wait.max.ms", "10")]);
        // Whatever the user's -X say: the audit reads what is committed,
        // learns where partitions end, and never commits an offset.
        client
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("allow.auto.create.topics", "false");
        let consumer: BaseConsumer<KafkaContext> = client
            .create_with_context(KafkaContext::default())
            .map_err(KafkaError::client(format!(
                "creating a consumer to read {topic}"
            )))
            .map_err(cluster)?;
        let partitions =
            crate::kafka::topics::partition_count(consumer.client(), topic, config.stall)
                .map_err(cluster)?;
        let mut low = Vec::new();
        for partition in 0..partitions {
            let (l, _high) = consumer
                .fetch_watermarks(topic, partition, config.stall)
                .map_err(KafkaError::client(format!(
                    "reading the start of {topic}[{partition}]"
                )))
                .map_err(cluster)?;
            low.push(l);
        }
        let count = low.len();
        Ok(TopicReader {
            topic: topic.to_owned(),
            brokers,
            consumer,
            next: low.clone(),
            low,
            assigned: vec![false; count],
            last_error: None,
        })
    }

    fn partitions(&self) -> usize {
        self.low.len()
    }

    fn list(&self, p: usize, offset: Option<i64>) -> Result<TopicPartitionList, AuditError> {
        let mut list = TopicPartitionList::new();
        let partition = i32::try_from(p).unwrap_or(i32::MAX);
        match offset {
            Some(offset) => list
                .add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(KafkaError::client(format!("assigning {}[{p}]", self.topic)))?,
            None => {
                list.add_partition(&self.topic, partition);
            }
        }
        Ok(list)
    }

    fn assign(&mut self, p: usize) -> Result<(), AuditError> {
        if self.assigned[p] {
            return Ok(());
        }
        let list = self.list(p, Some(self.next[p]))?;
        self.consumer
            .incremental_assign(&list)
            .map_err(KafkaError::client(format!("assigning {}[{p}]", self.topic)))?;
        self.assigned[p] = true;
        Ok(())
    }

    fn unassign(&mut self, p: usize) -> Result<(), AuditError> {
        if !self.assigned[p] {
            return Ok(());
        }
        let list = self.list(p, None)?;
        self.consumer
            .incremental_unassign(&list)
            .map_err(KafkaError::client(format!(
                "unassigning {}[{p}]",
                self.topic
            )))?;
        self.assigned[p] = false;
        Ok(())
    }

    /// The next record of an assigned partition at or after its next offset
    /// (what librdkafka fetched for a partition since unassigned is
    /// dropped), or a partition's end. The caller moves [`Self::next`] on.
    fn poll(&mut self) -> Result<Polled, AuditError> {
        match self.consumer.poll(POLL) {
            None => Ok(Polled::Nothing),
            Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                let p = partition_index(partition);
                if self.assigned.get(p).copied().unwrap_or(false) {
                    Ok(Polled::End(p))
                } else {
                    Ok(Polled::Nothing)
                }
            }
            // librdkafka retries by itself (a broker going away…): kept for
            // the message if the read stalls.
            Some(Err(e)) => {
                tracing::debug!("audit, reading {}: {e}", self.topic);
                self.last_error = Some(e.to_string());
                Ok(Polled::Nothing)
            }
            Some(Ok(message)) => {
                let p = partition_index(message.partition());
                let current = self.assigned.get(p).copied().unwrap_or(false)
                    && message.offset() >= self.next[p];
                if current {
                    Ok(Polled::Record(message.detach()))
                } else {
                    Ok(Polled::Nothing)
                }
            }
        }
    }

    fn stalled(&self, stall: Duration, what: &str) -> AuditError {
        AuditError::Stalled {
            topic: self.topic.clone(),
            stall,
            detail: format!(
                "{what} on {}: {}",
                self.brokers,
                self.last_error
                    .as_deref()
                    .unwrap_or("no record and no end of partition")
            ),
        }
    }

    /// The high watermark of a partition now.
    fn high(&self, p: usize, timeout: Duration) -> Result<i64, AuditError> {
        let partition = i32::try_from(p).unwrap_or(i32::MAX);
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, timeout)
            .map_err(KafkaError::client(format!(
                "reading the end of {}[{p}]",
                self.topic
            )))?;
        Ok(high)
    }
}

/// Tells, from the offsets of the records read, whether anything was
/// removed from a partition before a given offset. A transactional log read
/// at `read_committed` has consecutive offsets, except after the last record
/// of each transaction on the partition (a progress record or marker), where
/// the commit takes one: any other gap is the cleaner (or an aborted
/// transaction, which makes the audit only more cautious).
#[derive(Clone, Debug)]
struct Gaps {
    low: i64,
    last: Option<(i64, bool)>,
    /// The offset of the first record after an unexplained gap.
    first_gap_end: Option<i64>,
}

impl Gaps {
    fn new(low: i64) -> Self {
        Gaps {
            low,
            last: None,
            first_gap_end: None,
        }
    }

    /// A record at `offset`; `closes` when it is the last of its
    /// transaction (a progress record or a marker).
    fn record(&mut self, offset: i64, closes: bool) {
        let explained = match self.last {
            None => offset == self.low,
            Some((previous, previous_closed)) => {
                offset == previous + 1 || (previous_closed && offset == previous + 2)
            }
        };
        if !explained && self.first_gap_end.is_none() {
            self.first_gap_end = Some(offset);
        }
        self.last = Some((offset, closes));
    }

    /// Nothing was removed below `offset` (the start of the partition was
    /// not deleted either).
    fn intact_below(&self, offset: i64) -> bool {
        self.low == 0 && self.first_gap_end.is_none_or(|g| g >= offset)
    }
}

/// A data record of the output.
#[derive(Clone, Debug)]
struct DataRecord {
    epoch: Epoch,
    /// Read after its partition's progress of its epoch or a later one.
    late: bool,
    postcode: String,
    /// `None`: a tombstone.
    value: Option<RecordCounts>,
}

/// What the audit follows of one output partition.
#[derive(Debug)]
struct OutputPartition {
    gaps: Gaps,
    /// The latest progress epoch.
    latest: Option<Epoch>,
    /// The first and second progress epochs seen, and whether nothing was
    /// removed before the first.
    first: Option<(Epoch, bool)>,
    second: Option<Epoch>,
    /// Records since the latest progress record.
    pending: Vec<DataRecord>,
    /// Progress records of epochs not yet complete (and of the window being
    /// completed), with their positions.
    progress: VecDeque<(Epoch, EpochProgress)>,
}

impl OutputPartition {
    /// Whether the state at `epoch` on this partition is exact, or why not.
    fn exact_at(&self, epoch: Epoch) -> Result<(), Unchecked> {
        if self.gaps.low > 0 {
            return Err(Unchecked::OutputStartDeleted);
        }
        let Some((first, intact)) = self.first else {
            return Err(Unchecked::Torn);
        };
        if self.second.is_some_and(|s| epoch >= s) || (intact && epoch <= first) {
            Ok(())
        } else if epoch <= first {
            Err(Unchecked::OutputCompacted)
        } else {
            Err(Unchecked::Torn)
        }
    }

    /// The epoch's records on this partition were merged by the cleaner
    /// into a later epoch's progress: not an error of the writer.
    fn compacted_before(&self, epoch: Epoch) -> bool {
        self.gaps.low > 0
            || self
                .first
                .is_some_and(|(first, intact)| !intact && epoch < first)
    }
}

/// What an input record changes, once its epoch's marker releases it.
#[derive(Clone, Debug)]
enum InputUpdate {
    Status(StationId, Option<StationStatus>),
    Entry(StationId, Option<DirectoryEntry>),
}

/// What the audit follows of one input partition.
#[derive(Debug)]
struct InputPartition {
    gaps: Gaps,
    epochs: PartitionEpochs<InputUpdate>,
    /// Markers seen, and the offset of the second.
    markers: u64,
    second_marker: Option<i64>,
    /// Records read without epoch headers (the seeds' format).
    unframed: u64,
}

impl InputPartition {
    /// Whether the state of this partition below `position` is exact.
    fn exact_below(&self, position: i64) -> Result<(), Unchecked> {
        if position <= 0 {
            return Ok(());
        }
        if self.gaps.low > 0 {
            return Err(Unchecked::InputStartDeleted);
        }
        if self.gaps.intact_below(position) || self.second_marker.is_some_and(|o| position > o) {
            Ok(())
        } else {
            Err(Unchecked::InputCompacted)
        }
    }
}

/// Why a complete epoch was not compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unchecked {
    OutputCompacted,
    OutputStartDeleted,
    InputCompacted,
    InputStartDeleted,
    InputShort,
    Torn,
}

impl Unchecked {
    fn reason(self) -> &'static str {
        match self {
            Unchecked::OutputCompacted => {
                "the output topic was compacted before them (their progress records are gone and their records merged into later epochs)"
            }
            Unchecked::OutputStartDeleted => {
                "the start of an output partition was deleted (retention): earlier records are gone"
            }
            Unchecked::InputCompacted => {
                "an input partition was compacted before their positions: its state then lacks records that later ones replaced"
            }
            Unchecked::InputStartDeleted => {
                "the start of an input partition was deleted (retention): the input cannot be recomputed from scratch"
            }
            Unchecked::InputShort => {
                "their positions are beyond the end of an input partition"
            }
            Unchecked::Torn => "they are torn (progress on some output partitions only)",
        }
    }
}

/// Where each input topic stands, and its partitions.
#[derive(Debug)]
struct InputTopic {
    name: String,
    directory: bool,
    partitions: Vec<InputPartition>,
}

/// The audit itself, fed with records; [`audit`] drives it from Kafka.
#[derive(Debug)]
struct Engine {
    table: Option<Arc<PostcodeTable>>,
    /// The `system` every output record must say.
    system: Option<String>,
    output: Vec<OutputPartition>,
    /// Output records of epochs not yet complete, by the epoch they count in.
    open: BTreeMap<Epoch, Vec<DataRecord>>,
    /// Epochs that have records of their own in the window being completed.
    record_epochs: BTreeSet<Epoch>,
    /// The output's state: every postcode's current value.
    state: HashMap<String, RecordCounts>,
    /// Every epoch up to this one was completed.
    complete: Option<Epoch>,
    inputs: Vec<InputTopic>,
    statuses: HashMap<StationId, StationStatus>,
    entries: HashMap<StationId, DirectoryEntry>,
    /// Input partitions that passed each epoch's marker.
    markers: BTreeMap<Epoch, usize>,
    /// Positions the input was read to, per topic and partition.
    read_to: Vec<Vec<i64>>,
    /// The expected values at the last epoch checked.
    last_expected: Option<(Epoch, BTreeMap<String, RecordCounts>)>,
    duplicated: BTreeSet<Epoch>,
    missing: BTreeSet<Epoch>,
    torn: BTreeSet<Epoch>,
    /// Per reason: how many epochs, the first and the last.
    unchecked: BTreeMap<Unchecked, (u64, Epoch, Epoch)>,
    problems: Vec<String>,
    report: AuditReport,
}

impl Engine {
    /// Auditing `config`, from the low watermarks of the output's
    /// partitions and of each input topic's (the status topic first).
    fn new(config: &AuditConfig, output_low: &[i64], inputs: &[(String, Vec<i64>)]) -> Engine {
        let input_topics: Vec<InputTopic> = inputs
            .iter()
            .enumerate()
            .map(|(i, (name, low))| InputTopic {
                name: name.clone(),
                // The first is the status topic; a second the directory.
                directory: i > 0,
                partitions: low
                    .iter()
                    .map(|low| InputPartition {
                        gaps: Gaps::new(*low),
                        epochs: PartitionEpochs::new(),
                        markers: 0,
                        second_marker: None,
                        unframed: 0,
                    })
                    .collect(),
            })
            .collect();
        Engine {
            table: config
                .directory_topic
                .is_none()
                .then(|| Arc::clone(&config.postcodes)),
            system: config.system.clone(),
            output: output_low
                .iter()
                .map(|low| OutputPartition {
                    gaps: Gaps::new(*low),
                    latest: None,
                    first: None,
                    second: None,
                    pending: Vec::new(),
                    progress: VecDeque::new(),
                })
                .collect(),
            open: BTreeMap::new(),
            record_epochs: BTreeSet::new(),
            state: HashMap::new(),
            complete: None,
            read_to: inputs.iter().map(|(_, low)| low.clone()).collect(),
            inputs: input_topics,
            statuses: HashMap::new(),
            entries: HashMap::new(),
            markers: BTreeMap::new(),
            last_expected: None,
            duplicated: BTreeSet::new(),
            missing: BTreeSet::new(),
            torn: BTreeSet::new(),
            unchecked: BTreeMap::new(),
            problems: Vec::new(),
            report: AuditReport {
                output_topic: config.output_topic.clone(),
                input_topics: config.input_topics(),
                ..Default::default()
            },
        }
    }

    /// Every epoch up to this one has progress on every output partition.
    fn complete_through(&self) -> Option<Epoch> {
        if self.output.is_empty() {
            return None;
        }
        self.output.iter().map(|p| p.latest).min().flatten()
    }

    /// Whether partition `p` is ahead of the others and waits for them.
    fn output_held(&self, p: usize, through: Option<Epoch>) -> bool {
        match (self.output[p].latest, through) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(latest), Some(through)) => latest > through,
        }
    }

    fn problem(&mut self, text: impl FnOnce() -> String) {
        if self.problems.len() < MAX_DESCRIBED_PROBLEMS {
            self.problems.push(text());
        }
    }

    fn malformed_output(&mut self, message: &OwnedMessage, why: &str) {
        self.report.malformed_output += 1;
        self.problem(|| {
            format!(
                "malformed output record {}[{}]@{}: {why}",
                message.topic(),
                message.partition(),
                message.offset()
            )
        });
    }

    fn output_record(&mut self, p: usize, message: &OwnedMessage) {
        if p >= self.output.len() {
            return;
        }
        self.report.output_records += 1;
        let kind = header(message, KIND_HEADER);
        let is_progress_key = message.key() == Some(PROGRESS_KEY.as_bytes());
        let is_progress_kind = kind == Some(Some(PROGRESS_KIND));
        let is_progress = is_progress_key || is_progress_kind;
        self.output[p].gaps.record(message.offset(), is_progress);
        if is_progress {
            self.output_progress(p, message, is_progress_key && is_progress_kind);
        } else {
            self.output_data(p, message);
        }
    }

    fn output_progress(&mut self, p: usize, message: &OwnedMessage, well_marked: bool) {
        if !well_marked {
            return self.malformed_output(
                message,
                &format!("a progress record needs both the key {PROGRESS_KEY} and the header {KIND_HEADER}: progress"),
            );
        }
        let progress: EpochProgress = match message.payload().map(serde_json::from_slice) {
            Some(Ok(progress)) => progress,
            Some(Err(e)) => {
                return self.malformed_output(message, &format!("progress value: {e}"));
            }
            None => return self.malformed_output(message, "progress record without a value"),
        };
        self.report.progress_records += 1;
        let epoch = progress.epoch;
        let partition = &mut self.output[p];
        if let Some(latest) = partition.latest.filter(|latest| epoch <= *latest) {
            self.duplicated.insert(epoch);
            let again = if epoch == latest {
                "again"
            } else {
                "going back"
            };
            self.problem(|| {
                format!(
                    "{}[{p}]@{}: progress of epoch {epoch} {again} after epoch {latest}",
                    message.topic(),
                    message.offset()
                )
            });
            return;
        }
        match partition.first {
            None => partition.first = Some((epoch, partition.gaps.intact_below(message.offset()))),
            Some(_) if partition.second.is_none() => partition.second = Some(epoch),
            Some(_) => {}
        }
        partition.latest = Some(epoch);
        partition.progress.push_back((epoch, progress));
        // Records read since the last progress count from here; late ones
        // (a replay) count in this epoch, where a reader of the log meets
        // them.
        for record in partition.pending.drain(..) {
            let counts_in = if record.late { epoch } else { record.epoch };
            if !record.late {
                self.record_epochs.insert(record.epoch);
            }
            self.open.entry(counts_in).or_default().push(record);
        }
    }

    fn output_data(&mut self, p: usize, message: &OwnedMessage) {
        let epoch = match header(message, EPOCH_HEADER) {
            Some(Some(text)) => std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()),
            _ => None,
        };
        let Some(epoch) = epoch else {
            return self.malformed_output(message, &format!("no readable {EPOCH_HEADER} header"));
        };
        let Some(postcode) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return self.malformed_output(message, "the key is not a postcode (UTF-8 text)");
        };
        let postcode = postcode.to_owned();
        let value = match message.payload() {
            None => None,
            Some(bytes) => match output_counts(&postcode, self.system.as_deref(), bytes) {
                Ok(counts) => Some(counts),
                Err(why) => return self.malformed_output(message, &why),
            },
        };
        let late = self.output[p].latest.is_some_and(|latest| epoch <= latest);
        if late {
            self.duplicated.insert(epoch);
            let latest = self.output[p].latest;
            self.problem(|| {
                format!(
                    "{}[{p}]@{}: a record of epoch {epoch} ({postcode}) after the partition's progress of epoch {}",
                    message.topic(),
                    message.offset(),
                    latest.unwrap_or_default()
                )
            });
        }
        self.output[p].pending.push(DataRecord {
            epoch,
            late,
            postcode,
            value,
        });
    }

    fn input_record(&mut self, topic: usize, message: &OwnedMessage) {
        self.report.input_records += 1;
        let p = partition_index(message.partition());
        let directory = self.inputs[topic].directory;
        let Some(partition) = self.inputs[topic].partitions.get_mut(p) else {
            return;
        };
        let raw = RawRecord {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
        };
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        // As the source does: too large first, then the framing.
        let framed =
            check_size(&raw).and_then(|()| framing(&RecordHeaders::new(headers), raw.value));
        let is_marker = matches!(framed, Ok(Framed::Marker(_)));
        partition.gaps.record(message.offset(), is_marker);
        let outcome = match framed {
            Err(e) => Err(e.to_string()),
            Ok(Framed::Unframed) => {
                partition.unframed += 1;
                Err("no epoch headers (the seeds' format); the aggregator dead-letters it".into())
            }
            Ok(Framed::Data(stamp)) => {
                if partition.epochs.passed().is_some_and(|e| e >= stamp.epoch) {
                    // Late: the source discards it too.
                    Ok(None)
                } else if let Err(e) = partition.epochs.check_data(&stamp) {
                    // Far ahead: the source dead-letters it too.
                    Err(e.to_string())
                } else {
                    let update = if directory {
                        DirectoryEntryDecoder
                            .decode(&raw)
                            .map(|(id, entry)| InputUpdate::Entry(id, entry))
                    } else {
                        StationStatusDecoder
                            .decode(&raw)
                            .map(|(id, status)| InputUpdate::Status(id, status))
                    };
                    match update {
                        Ok(update) => {
                            partition.epochs.data(stamp, update);
                            Ok(None)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
            Ok(Framed::Marker(marker)) => match partition.epochs.check_marker(&marker) {
                // Going back or far ahead: the source dead-letters it too.
                Err(e) => Err(e.to_string()),
                Ok(()) => {
                    partition.markers += 1;
                    if partition.markers == 2 {
                        partition.second_marker = Some(message.offset());
                    }
                    Ok(partition
                        .epochs
                        .marker(&marker)
                        .map(|passed| (marker.epoch, passed.released)))
                }
            },
        };
        match outcome {
            Err(why) => {
                self.report.malformed_input += 1;
                self.problem(|| {
                    format!(
                        "malformed input record {}[{}]@{}: {why}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    )
                });
            }
            Ok(None) => {}
            Ok(Some((epoch, released))) => {
                *self.markers.entry(epoch).or_default() += 1;
                for update in released {
                    match update {
                        InputUpdate::Status(id, Some(status)) => {
                            self.statuses.insert(id, status);
                        }
                        InputUpdate::Status(id, None) => {
                            self.statuses.remove(&id);
                        }
                        InputUpdate::Entry(id, Some(entry)) => {
                            self.entries.insert(id, entry);
                        }
                        InputUpdate::Entry(id, None) => {
                            self.entries.remove(&id);
                        }
                    }
                }
            }
        }
    }

    /// Completes every epoch up to [`Self::complete_through`]: reads the
    /// input to each one's positions, compares, and looks for missing and
    /// torn epochs in between.
    /// `read_input` reads the input up to an epoch's positions.
    fn complete_epochs(
        &mut self,
        mut read_input: impl FnMut(&mut Engine, &EpochProgress) -> Result<Option<Unchecked>, AuditError>,
    ) -> Result<(), AuditError> {
        let Some(through) = self.complete_through() else {
            return Ok(());
        };
        let previous = self.complete;
        let in_window = |epoch: Epoch| previous.is_none_or(|c| epoch > c) && epoch <= through;
        // The epochs with progress somewhere in the window, each with its
        // positions (every partition's progress of an epoch holds the same).
        let mut candidates: BTreeMap<Epoch, EpochProgress> = BTreeMap::new();
        for partition in &self.output {
            for (epoch, progress) in &partition.progress {
                if in_window(*epoch) {
                    candidates.entry(*epoch).or_insert_with(|| progress.clone());
                }
            }
        }
        for (epoch, positions) in &candidates {
            self.apply_output_through(*epoch);
            let short = read_input(self, positions)?;
            let typed = positions.value_format.as_deref() == Some(VEHICLE_TYPES_FORMAT);
            self.check(*epoch, short, typed);
        }
        self.apply_output_through(through);
        self.judge_window(previous, through);
        self.complete = Some(through);
        if self.report.first_epoch.is_none() {
            self.report.first_epoch = candidates.keys().next().copied().or(Some(through));
        }
        self.report.last_epoch = Some(through);
        Ok(())
    }

    /// Applies the output records of every epoch up to `epoch` to the state.
    fn apply_output_through(&mut self, epoch: Epoch) {
        let done = match epoch.checked_add(1) {
            Some(next) => {
                let later = self.open.split_off(&next);
                std::mem::replace(&mut self.open, later)
            }
            None => std::mem::take(&mut self.open),
        };
        for record in done.into_values().flatten() {
            self.apply(record);
        }
    }

    fn apply(&mut self, record: DataRecord) {
        match record.value {
            Some(counts) => {
                self.state.insert(record.postcode, counts);
            }
            None => {
                self.state.remove(&record.postcode);
            }
        }
    }

    /// The output was computed from exactly the topics this audit reads.
    fn check_topics(&self, progress: &EpochProgress) -> Result<(), AuditError> {
        let named: BTreeSet<&str> = progress.positions.keys().map(String::as_str).collect();
        let read: BTreeSet<&str> = self.inputs.iter().map(|t| t.name.as_str()).collect();
        if named == read {
            return Ok(());
        }
        let hint = match (
            named.difference(&read).next(),
            read.difference(&named).next(),
        ) {
            (Some(extra), _) if self.table.is_some() => {
                format!("the aggregator also read {extra}: audit with --directory-topic {extra}")
            }
            (_, Some(missing))
                if self
                    .inputs
                    .iter()
                    .any(|t| t.directory && t.name == *missing) =>
            {
                format!(
                    "the aggregator did not read {missing}: audit with --no-directory (and its --postcodes)"
                )
            }
            _ => "audit with the aggregator's --input-topic and --directory-topic".to_owned(),
        };
        Err(AuditError::Configuration(format!(
            "the progress of epoch {} on {} names the input topics {named:?}, and this audit reads {read:?}: {hint}",
            progress.epoch, self.report.output_topic
        )))
    }

    /// Reads each input partition up to its position in `progress`.
    /// Returns why the epoch cannot be checked if a position is beyond the
    /// partition's end.
    fn read_input_to(
        &mut self,
        inputs: &mut [TopicReader],
        progress: &EpochProgress,
        stall: Duration,
        ticker: &mut Ticker,
        on_progress: &mut impl FnMut(&AuditProgress),
    ) -> Result<Option<Unchecked>, AuditError> {
        self.check_topics(progress)?;
        let mut short = None;
        for (t, reader) in inputs.iter_mut().enumerate() {
            let positions = progress.positions.get(&reader.topic);
            let targets: Vec<i64> = (0..reader.partitions())
                .map(|q| {
                    let partition = i32::try_from(q).unwrap_or(i32::MAX);
                    positions
                        .and_then(|m| m.get(&partition))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            let mut waiting = BTreeSet::new();
            for (q, target) in targets.iter().enumerate() {
                let read_to = self.read_to[t][q];
                if *target > read_to {
                    waiting.insert(q);
                    reader.assign(q)?;
                } else if *target < read_to {
                    let topic = &reader.topic;
                    self.problem(|| {
                        format!(
                            "the progress of epoch {} puts {topic}[{q}] at {target}, behind an earlier epoch's {read_to}",
                            progress.epoch
                        )
                    });
                }
            }
            let mut last_activity = Instant::now();
            while !waiting.is_empty() {
                match reader.poll()? {
                    Polled::Record(message) => {
                        last_activity = Instant::now();
                        let q = partition_index(message.partition());
                        if !waiting.contains(&q) {
                            continue;
                        }
                        let target = targets[q];
                        if message.offset() < target {
                            reader.next[q] = message.offset() + 1;
                            self.input_record(t, &message);
                            ticker.tick(self, on_progress);
                        }
                        // A record at or past the target: nothing visible is
                        // left below it (it is read again next time).
                        if message.offset() + 1 >= target {
                            self.read_to[t][q] = target;
                            reader.unassign(q)?;
                            waiting.remove(&q);
                        }
                    }
                    Polled::End(q) => {
                        last_activity = Instant::now();
                        if !waiting.remove(&q) {
                            continue;
                        }
                        let high = reader.high(q, stall)?;
                        if targets[q] > high {
                            short = Some(Unchecked::InputShort);
                            let topic = &reader.topic;
                            let target = targets[q];
                            self.problem(|| {
                                format!(
                                    "the progress of epoch {} puts {topic}[{q}] at {target}, beyond its end ({high})",
                                    progress.epoch
                                )
                            });
                        }
                        self.read_to[t][q] = targets[q];
                        reader.unassign(q)?;
                    }
                    Polled::Nothing => {
                        if last_activity.elapsed() > stall {
                            return Err(
                                reader.stalled(stall, "the input, up to an epoch's positions")
                            );
                        }
                    }
                }
            }
        }
        let partitions = || self.inputs.iter().flat_map(|t| &t.partitions);
        if partitions().all(|p| p.markers == 0) && partitions().any(|p| p.unframed > 0) {
            return Err(AuditError::Configuration(format!(
                "the input records have no epoch headers (the seeds' producer.py format): \
                 the audit reads only the epoch protocol (velib_producer's); epoch {} of {} \
                 cannot be recomputed",
                progress.epoch, self.report.output_topic
            )));
        }
        Ok(short)
    }

    /// Compares the output's state at `epoch` with the from-scratch
    /// computation over the input read so far, if both are exact.
    /// `typed`: the epoch's records list vehicle types (as its progress
    /// says), which are checked too.
    fn check(&mut self, epoch: Epoch, short: Option<Unchecked>, typed: bool) {
        let mut why = short;
        for partition in &self.output {
            if let Err(reason) = partition.exact_at(epoch) {
                why = why.or(Some(reason));
            }
        }
        for (t, topic) in self.inputs.iter().enumerate() {
            for (q, partition) in topic.partitions.iter().enumerate() {
                if let Err(reason) = partition.exact_below(self.read_to[t][q]) {
                    why = why.or(Some(reason));
                }
            }
        }
        if let Some(reason) = why {
            self.report.epochs_unchecked += 1;
            let entry = self.unchecked.entry(reason).or_insert((0, epoch, epoch));
            entry.0 += 1;
            entry.1 = entry.1.min(epoch);
            entry.2 = entry.2.max(epoch);
            return;
        }
        let expected = self.expected(typed);
        self.compare(epoch, &expected);
        self.report.epochs_checked += 1;
        self.last_expected = Some((epoch, expected));
    }

    /// Every postcode's count fields, from scratch, over the input state;
    /// with `typed`, its vehicle types too.
    fn expected(&self, typed: bool) -> BTreeMap<String, RecordCounts> {
        let placed_by_table = |table: &PostcodeTable| -> Vec<DirectoryEntry> {
            self.statuses
                .values()
                .map(|status| DirectoryEntry::placed_by_table(table, status))
                .collect()
        };
        if typed {
            let typed = match &self.table {
                Some(table) => {
                    typed_totals_from_scratch(self.statuses.values(), &placed_by_table(table))
                }
                None => typed_totals_from_scratch(self.statuses.values(), self.entries.values()),
            };
            return typed
                .iter()
                .map(|(postcode, typed)| {
                    let mut counts = expected_counts(postcode, &typed.totals);
                    add_vehicle_types(&mut counts, &typed.vehicle_types);
                    (postcode.as_str().to_owned(), counts)
                })
                .collect();
        }
        let counts = match &self.table {
            Some(table) => {
                postcode_counts_from_scratch(self.statuses.values(), &placed_by_table(table))
            }
            None => postcode_counts_from_scratch(self.statuses.values(), self.entries.values()),
        };
        counts
            .iter()
            .map(|(postcode, counts)| {
                (
                    postcode.as_str().to_owned(),
                    expected_counts(postcode, counts),
                )
            })
            .collect()
    }

    fn compare(&mut self, epoch: Epoch, expected: &BTreeMap<String, RecordCounts>) {
        let mut found: Vec<(&String, &RecordCounts)> = self.state.iter().collect();
        found.sort();
        let mut mismatches = Vec::new();
        for (postcode, expected) in expected {
            let differs = match self.state.get(postcode) {
                None => true,
                Some(found) => counts_differ(expected, found),
            };
            if differs {
                mismatches.push(Mismatch {
                    epoch,
                    postcode: postcode.clone(),
                    expected: Some(expected.clone()),
                    found: self.state.get(postcode).cloned(),
                });
            }
        }
        for (postcode, found) in found {
            if !expected.contains_key(postcode) {
                mismatches.push(Mismatch {
                    epoch,
                    postcode: postcode.clone(),
                    expected: None,
                    found: Some(found.clone()),
                });
            }
        }
        mismatches.sort_by(|a, b| a.postcode.cmp(&b.postcode));
        for mismatch in mismatches {
            self.report.mismatch_count += 1;
            if self.report.mismatches.len() < MAX_MISMATCHES {
                self.report.mismatches.push(mismatch);
            }
        }
    }

    /// Looks for torn and missing epochs among those just completed, then
    /// forgets them.
    fn judge_window(&mut self, previous: Option<Epoch>, through: Epoch) {
        let in_window = |epoch: Epoch| previous.is_none_or(|c| epoch > c) && epoch <= through;
        let input_partitions: usize = self.inputs.iter().map(|t| t.partitions.len()).sum();
        let mut epochs: BTreeSet<Epoch> = self
            .output
            .iter()
            .flat_map(|p| p.progress.iter().map(|(epoch, _)| *epoch))
            .chain(self.record_epochs.iter().copied())
            .chain(self.markers.keys().copied())
            .filter(|epoch| in_window(*epoch))
            .collect();
        for epoch in std::mem::take(&mut epochs) {
            let with_progress = self
                .output
                .iter()
                .filter(|p| p.progress.iter().any(|(e, _)| *e == epoch))
                .count();
            if with_progress == self.output.len() {
                continue;
            }
            let has_records = self.record_epochs.contains(&epoch);
            let in_input = self.markers.get(&epoch) == Some(&input_partitions);
            if self.output.iter().any(|p| p.compacted_before(epoch)) {
                if with_progress > 0 || has_records || in_input {
                    self.report.output_compacted = true;
                }
                continue;
            }
            if with_progress > 0 || has_records {
                self.torn.insert(epoch);
            } else if in_input && previous.is_some() {
                self.missing.insert(epoch);
            }
        }
        for partition in &mut self.output {
            partition.progress.retain(|(epoch, _)| *epoch > through);
        }
        self.record_epochs.retain(|epoch| *epoch > through);
        self.markers = match through.checked_add(1) {
            Some(next) => self.markers.split_off(&next),
            None => BTreeMap::new(),
        };
    }

    /// The report, once the output is read: late records after the last
    /// complete epoch are applied and the current state compared again.
    fn finish(&mut self) -> AuditReport {
        let through = self.complete;
        let mut late = 0;
        for p in 0..self.output.len() {
            let caught_up = through.is_some() && self.output[p].latest == through;
            for record in std::mem::take(&mut self.output[p].pending) {
                if record.late && caught_up {
                    late += 1;
                    self.apply(record);
                }
            }
        }
        if late > 0 {
            match self.last_expected.take() {
                Some((epoch, expected)) if Some(epoch) == through => {
                    self.problems.push(format!(
                        "{late} records after the last progress records, of epochs already complete, were compared as the topic's current state at epoch {epoch}"
                    ));
                    self.compare(epoch, &expected);
                }
                _ => self.problems.push(format!(
                    "{late} records after the last progress records, of epochs already complete, could not be compared (the last epoch was not checked)"
                )),
            }
        }
        let mut report = std::mem::take(&mut self.report);
        report.duplicated_epochs = self.duplicated.iter().copied().collect();
        report.missing_epochs = self.missing.iter().copied().collect();
        report.torn_epochs = self.torn.iter().copied().collect();
        if report.output_compacted {
            report.notes.push(format!(
                "{} was compacted: the records of epochs whose progress records are gone are merged into the next epoch with progress",
                report.output_topic
            ));
        }
        for (reason, (count, first, last)) in &self.unchecked {
            let epochs = if first == last {
                format!("epoch {first}")
            } else {
                format!("{count} epochs from {first} to {last}")
            };
            report
                .notes
                .push(format!("{epochs} not checked: {}", reason.reason()));
        }
        if through.is_none() {
            let without: Vec<String> = self
                .output
                .iter()
                .enumerate()
                .filter(|(_, p)| p.latest.is_none())
                .map(|(p, _)| p.to_string())
                .collect();
            report.notes.push(format!(
                "no epoch is complete: partitions [{}] of {} have no progress record",
                without.join(", "),
                report.output_topic
            ));
        }
        if self.problems.len() >= MAX_DESCRIBED_PROBLEMS {
            self.problems.push(format!(
                "(only the first {MAX_DESCRIBED_PROBLEMS} problems are described)"
            ));
        }
        report.notes.append(&mut self.problems);
        report
    }
}

/// The value of a header: `None` when absent, `Some(None)` when it has no
/// value.
fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<Option<&'a [u8]>> {
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .map(|h| h.value)
}

/// The count fields of an output value, checked against its key and the
/// system it must say (`None`: none).
fn output_counts(
    postcode: &str,
    system: Option<&str>,
    value: &[u8],
) -> Result<RecordCounts, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(value).map_err(|e| format!("value is not a JSON object: {e}"))?;
    let said = object.get("system");
    if said.map(|s| s.as_str()) != system.map(Some) {
        let want = system.map_or("no system".to_owned(), |s| format!("system {s:?}"));
        let said = said.map_or("none".to_owned(), |s| s.to_string());
        return Err(format!("its value should say {want}, and says {said}"));
    }
    if let Some(named) = object.get("postcode") {
        if named.as_str() != Some(postcode) {
            return Err(format!(
                "keyed {postcode} but its value names postcode {named}"
            ));
        }
    }
    let mut counts = RecordCounts::new();
    if let Some(types) = object.get(VEHICLE_TYPES_FIELD) {
        let types = types
            .as_object()
            .ok_or_else(|| format!("{VEHICLE_TYPES_FIELD} is {types}, not an object"))?;
        let mut listed = Vec::with_capacity(types.len());
        for (id, n) in types {
            let n = n.as_i64().filter(|n| *n > 0).ok_or_else(|| {
                format!("{VEHICLE_TYPES_FIELD}.{id} is {n}, not a positive integer")
            })?;
            listed.push((id.clone(), n));
        }
        add_vehicle_types(&mut counts, listed.iter().map(|(id, n)| (id, n)));
    }
    for (field, value) in &object {
        if !is_checked_field(field) {
            continue;
        }
        let n = match value {
            serde_json::Value::Null if is_time_field(field) => NO_TIME,
            value => value
                .as_i64()
                .filter(|n| *n != NO_TIME)
                .ok_or_else(|| format!("{field} is {value}, not an integer"))?,
        };
        counts.insert(field.clone(), n);
    }
    if counts.is_empty() {
        return Err("the value has no count field (nbr_total, nbr_meca, …)".into());
    }
    Ok(counts)
}

/// A record's `vehicle_types` in [`RecordCounts`]: its number of types
/// under [`VEHICLE_TYPES_FIELD`], and each type's count under
/// `vehicle_types.<id>`.
fn add_vehicle_types<'a>(
    counts: &mut RecordCounts,
    types: impl IntoIterator<Item = (&'a String, &'a i64)>,
) {
    let mut listed = 0;
    for (id, n) in types {
        counts.insert(format!("{VEHICLE_TYPES_FIELD}.{id}"), *n);
        listed += 1;
    }
    counts.insert(VEHICLE_TYPES_FIELD.to_owned(), listed);
}

/// The vehicle-type entries of `counts` ([`add_vehicle_types`]).
fn vehicle_type_entries(counts: &RecordCounts) -> impl Iterator<Item = (&String, &i64)> {
    counts
        .range(VEHICLE_TYPES_FIELD.to_owned()..)
        .take_while(|(f, _)| f.starts_with(VEHICLE_TYPES_FIELD))
}

/// Whether a record's fields differ from what was expected: a count field
/// both have, with another value (a record of an older version may lack a
/// newer field), or the vehicle types, compared whole (a type missing is
/// one with none; types where none were expected, or none where some
/// were, differ).
fn counts_differ(expected: &RecordCounts, found: &RecordCounts) -> bool {
    let typed = |f: &str| f.starts_with(VEHICLE_TYPES_FIELD);
    expected
        .iter()
        .filter(|(field, _)| !typed(field))
        .any(|(field, e)| found.get(field).is_some_and(|f| f != e))
        || !vehicle_type_entries(expected).eq(vehicle_type_entries(found))
}

/// The count fields [`PostcodeRecord`] writes for `counts`.
fn expected_counts(postcode: &Postcode, totals: &PostcodeTotals) -> RecordCounts {
    let record = PostcodeRecord::new(postcode, totals, 0, 0);
    match serde_json::to_value(record) {
        Ok(serde_json::Value::Object(object)) => object
            .into_iter()
            .filter(|(field, _)| is_checked_field(field))
            .filter_map(|(field, value)| match value {
                serde_json::Value::Null => Some((field, NO_TIME)),
                value => Some((field, value.as_i64()?)),
            })
            .collect(),
        _ => RecordCounts::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{BikeTypes, Judged};
    use crate::kafka::protocol::{EpochMarker, EpochStamp};
    use crate::station_records::{station_key, station_value};
    use rdkafka::message::{Header, OwnedHeaders};

    const INPUT: &str = "in";
    const OUTPUT: &str = "out";

    /// An engine fed by hand: offsets follow each other as a transactional
    /// log's do, unless a test skips some (the cleaner's work).
    struct Fixture {
        engine: Engine,
        /// Per (topic, partition): the last offset, and whether it closed a
        /// transaction.
        offsets: HashMap<(&'static str, i32), (i64, bool)>,
        /// What the progress records say of the values.
        value_format: Option<String>,
    }

    impl Fixture {
        fn new(output_partitions: usize) -> Fixture {
            let mut config = AuditConfig::new(KafkaConfig::new("unused"));
            config.input_topic = INPUT.into();
            config.directory_topic = None;
            config.output_topic = OUTPUT.into();
            config.postcodes = Arc::new(
                PostcodeTable::from_reader(&b"stationCode,postcode\n1,75001\n2,75002\n"[..])
                    .unwrap(),
            );
            let engine = Engine::new(
                &config,
                &vec![0; output_partitions],
                &[(INPUT.to_owned(), vec![0])],
            );
            Fixture {
                engine,
                offsets: HashMap::new(),
                value_format: None,
            }
        }

        fn offset(&mut self, topic: &'static str, partition: i32, closes: bool) -> i64 {
            let offset = match self.offsets.get(&(topic, partition)) {
                None => 0,
                Some((last, true)) => last + 2,
                Some((last, false)) => last + 1,
            };
            self.offsets.insert((topic, partition), (offset, closes));
            offset
        }

        /// The cleaner removed `n` records here.
        fn skip(&mut self, topic: &'static str, partition: i32, n: i64) {
            let (last, closed) = self
                .offsets
                .get(&(topic, partition))
                .copied()
                .unwrap_or((-1, false));
            self.offsets.insert((topic, partition), (last + n, closed));
        }

        fn message(
            &mut self,
            topic: &'static str,
            partition: i32,
            closes: bool,
            key: &[u8],
            value: Option<Vec<u8>>,
            headers: &[(&str, String)],
        ) -> OwnedMessage {
            let offset = self.offset(topic, partition, closes);
            let mut owned = OwnedHeaders::new();
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            OwnedMessage::new(
                value,
                Some(key.to_vec()),
                topic.to_owned(),
                rdkafka::Timestamp::NotAvailable,
                partition,
                offset,
                Some(owned),
            )
        }

        /// Station `code` (its id too) with `bikes` bikes, in `epoch`.
        fn status(&mut self, epoch: Epoch, code: u64, bikes: u32) {
            self.status_judged(epoch, code, bikes, Default::default());
        }

        /// As [`Self::status`], judged so.
        fn status_judged(&mut self, epoch: Epoch, code: u64, bikes: u32, judged: Judged) {
            self.status_with(epoch, code, bikes, judged, BTreeMap::new());
        }

        /// As [`Self::status`], its bikes listed by type id.
        fn status_typed(&mut self, epoch: Epoch, code: u64, types: &[(&str, u32)]) {
            let bikes = types.iter().map(|(_, n)| n).sum();
            let types = types.iter().map(|(t, n)| (t.to_string(), *n)).collect();
            self.status_with(epoch, code, bikes, Default::default(), types);
        }

        fn status_with(
            &mut self,
            epoch: Epoch,
            code: u64,
            bikes: u32,
            judged: Judged,
            vehicle_types: BTreeMap<String, u32>,
        ) {
            let status = StationStatus {
                station_id: StationId::Num(code),
                code: Some(code.to_string()),
                bikes_available: bikes,
                bike_types: Some(BikeTypes {
                    mechanical: bikes,
                    ebike: 0,
                    other: 0,
                }),
                docks_available: 10,
                is_installed: true,
                is_renting: true,
                is_returning: true,
                last_reported: None,
                judged,
                vehicle_types,
            };
            let stamp = EpochStamp {
                epoch,
                attempt: "a".into(),
            };
            let key = station_key(&status.station_id);
            let value = station_value(None, epoch, &status);
            let message = self.message(INPUT, 0, false, &key, Some(value), &stamp.headers());
            self.engine.input_record(0, &message);
        }

        fn marker(&mut self, epoch: Epoch) -> i64 {
            let marker = EpochMarker {
                epoch,
                attempt: "a".into(),
                feed_time: None,
            };
            let message = self.message(
                INPUT,
                0,
                true,
                b"__velib_marker",
                Some(marker.to_json()),
                &marker.headers(),
            );
            self.engine.input_record(0, &message);
            message.offset() + 1
        }

        /// The output record of `postcode` with `bikes` bikes at one
        /// station, in `epoch`.
        fn data(&mut self, partition: i32, epoch: Epoch, postcode: &str, bikes: i64) {
            self.data_with(partition, epoch, postcode, bikes, serde_json::json!({}));
        }

        /// As [`Self::data`], with `more` fields.
        fn data_with(
            &mut self,
            partition: i32,
            epoch: Epoch,
            postcode: &str,
            bikes: i64,
            more: serde_json::Value,
        ) {
            let mut value = serde_json::json!({
                "postcode": postcode, "nbr_total": bikes, "nbr_meca": bikes, "nbr_elec": 0,
                "nbr_docks": 10, "nbr_stations": 1, "nbr_stations_renting": 1,
                "nbr_stations_not_renting": 0, "nbr_bikes_unavailable": 0,
                "nbr_stations_inferred": 0, "epoch": epoch, "feed_time": 0,
            });
            if let (Some(value), serde_json::Value::Object(more)) = (value.as_object_mut(), more) {
                value.extend(more);
            }
            let headers = [(EPOCH_HEADER, epoch.to_string())];
            let message = self.message(
                OUTPUT,
                partition,
                false,
                postcode.as_bytes(),
                Some(serde_json::to_vec(&value).unwrap()),
                &headers,
            );
            self.engine
                .output_record(partition_index(partition), &message);
        }

        fn progress(&mut self, partition: i32, epoch: Epoch, position: i64) {
            let progress = EpochProgress {
                epoch,
                positions: [(INPUT.to_owned(), [(0, position)].into_iter().collect())]
                    .into_iter()
                    .collect(),
                value_format: self.value_format.clone(),
                ..Default::default()
            };
            let headers = [
                (EPOCH_HEADER, epoch.to_string()),
                (KIND_HEADER, "progress".to_owned()),
            ];
            let message = self.message(
                OUTPUT,
                partition,
                true,
                PROGRESS_KEY.as_bytes(),
                Some(serde_json::to_vec(&progress).unwrap()),
                &headers,
            );
            self.engine
                .output_record(partition_index(partition), &message);
        }

        /// Completes what can be, the input being fed already.
        fn complete(&mut self) {
            if self.engine.complete_through() > self.engine.complete {
                self.engine
                    .complete_epochs(|engine, progress| {
                        engine.check_topics(progress)?;
                        engine.read_to[0][0] = progress.positions[INPUT][&0];
                        Ok(None)
                    })
                    .unwrap();
            }
        }

        fn report(mut self) -> AuditReport {
            self.engine.finish()
        }
    }

    #[test]
    fn offsets_tell_what_was_removed() {
        let mut gaps = Gaps::new(0);
        gaps.record(0, false);
        gaps.record(1, true);
        // The commit after a transaction's last record takes one offset.
        gaps.record(3, false);
        assert!(gaps.intact_below(4));
        gaps.record(6, true);
        assert!(gaps.intact_below(6) && !gaps.intact_below(7));
        assert!(!Gaps::new(5).intact_below(1), "a deleted start");
    }

    #[test]
    fn a_clean_output_matches_and_a_wrong_count_does_not() {
        let mut f = Fixture::new(2);
        f.status(1, 1, 3);
        f.status(1, 2, 4);
        let at = f.marker(1);
        f.data(0, 1, "75001", 3);
        f.data(1, 1, "75002", 4);
        f.progress(0, 1, at);
        f.progress(1, 1, at);
        f.complete();
        f.status(2, 1, 5);
        let at = f.marker(2);
        f.data(0, 2, "75001", 6);
        f.progress(0, 2, at);
        f.progress(1, 2, at);
        f.complete();
        let report = f.report();
        assert_eq!(report.epochs_checked, 2, "{report}");
        assert_eq!(report.mismatch_count, 1, "{report}");
        let mismatch = &report.mismatches[0];
        assert_eq!((mismatch.epoch, mismatch.postcode.as_str()), (2, "75001"));
        assert_eq!(
            mismatch.to_string(),
            "epoch 2, postcode 75001: nbr_meca expected 5, found 6; nbr_total expected 5, found 6"
        );
        assert!(report.torn_epochs.is_empty() && report.missing_epochs.is_empty());
    }

    /// With `--vehicle-types` (as the progress records say), each
    /// record's types are checked whole: a type missing or extra, or no
    /// `vehicle_types` at all, is a mismatch; without it, types where none
    /// were written are one too.
    #[test]
    fn vehicle_types_are_checked_when_the_progress_says_they_are_written() {
        let mut f = Fixture::new(1);
        f.value_format = Some(VEHICLE_TYPES_FORMAT.into());
        let types = |t: serde_json::Value| serde_json::json!({ "vehicle_types": t });
        f.status_typed(1, 1, &[("city", 3)]);
        f.status(1, 2, 4);
        let at = f.marker(1);
        f.data_with(0, 1, "75001", 3, types(serde_json::json!({"city": 3})));
        f.data_with(0, 1, "75002", 4, types(serde_json::json!({})));
        f.progress(0, 1, at);
        f.complete();
        f.status_typed(2, 1, &[("city", 2), ("cargo", 3)]);
        let at = f.marker(2);
        f.data_with(0, 2, "75001", 5, types(serde_json::json!({"city": 2})));
        f.progress(0, 2, at);
        f.complete();
        f.status_typed(3, 1, &[("city", 6)]);
        let at = f.marker(3);
        f.data(0, 3, "75001", 6);
        f.progress(0, 3, at);
        f.complete();
        f.status_typed(4, 1, &[("city", 7)]);
        let at = f.marker(4);
        f.data_with(0, 4, "75001", 7, types(serde_json::json!({"city": 7})));
        f.progress(0, 4, at);
        f.complete();
        let report = f.report();
        assert_eq!(report.epochs_checked, 4, "{report}");
        let wrong: Vec<(Epoch, &str)> = report
            .mismatches
            .iter()
            .map(|m| (m.epoch, m.postcode.as_str()))
            .collect();
        assert_eq!(wrong, [(2, "75001"), (3, "75001")], "{report}");

        let mut f = Fixture::new(1);
        f.status(1, 1, 3);
        let at = f.marker(1);
        f.data_with(0, 1, "75001", 3, types(serde_json::json!({"city": 3})));
        f.progress(0, 1, at);
        f.complete();
        let report = f.report();
        assert_eq!(report.mismatch_count, 1, "{report}");
    }

    #[test]
    fn the_longest_empty_is_checked_null_included() {
        let mut f = Fixture::new(2);
        let empty = |since| Judged {
            empty_since: Some(since),
            ..Default::default()
        };
        f.status_judged(1, 1, 0, empty(100));
        f.status_judged(1, 2, 0, empty(200));
        let at = f.marker(1);
        let since = |empty: i64, since: serde_json::Value| {
            serde_json::json!({"nbr_stations_empty": empty, "longest_empty_since": since,
                "longest_full_since": null})
        };
        f.data_with(0, 1, "75001", 0, since(1, 100.into()));
        // Epoch 1 says 75002's empty station has no since-time: it has 200.
        f.data_with(1, 1, "75002", 0, since(1, serde_json::Value::Null));
        f.progress(0, 1, at);
        f.progress(1, 1, at);
        f.complete();
        // Station 2 stops being empty; station 1 still is, since 100.
        f.status(2, 2, 3);
        let at = f.marker(2);
        f.data_with(1, 2, "75002", 3, since(0, serde_json::Value::Null));
        f.data_with(0, 2, "75001", 0, since(1, 90.into()));
        f.progress(0, 2, at);
        f.progress(1, 2, at);
        f.complete();
        let report = f.report();
        assert_eq!(report.epochs_checked, 2, "{report}");
        let mismatches: Vec<String> = report.mismatches.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            mismatches,
            [
                "epoch 1, postcode 75002: longest_empty_since expected 200, found null",
                "epoch 2, postcode 75001: longest_empty_since expected 100, found 90",
            ],
            "{report}"
        );
    }

    #[test]
    fn torn_missing_and_duplicated_epochs() {
        let mut f = Fixture::new(2);
        f.status(1, 1, 3);
        let one = f.marker(1);
        f.data(0, 1, "75001", 3);
        f.progress(0, 1, one);
        f.progress(1, 1, one);
        f.complete();
        // Epoch 2: progress on partition 0 only. Epoch 3: nothing at all.
        let two = f.marker(2);
        f.progress(0, 2, two);
        let _three = f.marker(3);
        let four = f.marker(4);
        f.progress(0, 4, four);
        f.progress(1, 4, four);
        // Partition 1 says epoch 4 again, and a record of epoch 1 comes late.
        f.progress(1, 4, four);
        f.data(1, 1, "75002", 1);
        f.complete();
        let report = f.report();
        assert_eq!(report.torn_epochs, vec![2], "{report}");
        assert_eq!(report.missing_epochs, vec![3], "{report}");
        assert_eq!(report.duplicated_epochs, vec![1, 4], "{report}");
        // Epoch 2 is torn: not compared. The late record is compared as
        // the topic's current state at epoch 4.
        assert_eq!(
            (report.epochs_checked, report.epochs_unchecked),
            (2, 1),
            "{report}"
        );
        assert_eq!(report.mismatches.len(), 1, "{report}");
        assert_eq!(
            (
                report.mismatches[0].epoch,
                report.mismatches[0].expected.is_none()
            ),
            (4, true)
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn a_compacted_output_is_merged_not_an_error() {
        let mut f = Fixture::new(1);
        f.status(1, 1, 3);
        f.marker(1);
        f.status(2, 1, 4);
        f.marker(2);
        f.status(3, 1, 5);
        f.status(3, 2, 1);
        let three = f.marker(3);
        // The cleaner removed epoch 1's and 2's progress records and the
        // records epoch 3 replaced: what is left of epochs 1 to 3 counts at 3.
        f.skip(OUTPUT, 0, 4);
        f.data(0, 2, "75002", 1);
        f.data(0, 3, "75001", 5);
        f.progress(0, 3, three);
        f.complete();
        f.status(4, 2, 2);
        let four = f.marker(4);
        f.data(0, 4, "75002", 2);
        f.progress(0, 4, four);
        f.complete();
        let report = f.report();
        assert!(report.is_clean(), "{report}");
        assert!(report.output_compacted, "{report}");
        assert_eq!(
            (report.epochs_checked, report.epochs_unchecked),
            (1, 1),
            "{report}"
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("epoch 3 not checked: the output topic was compacted")),
            "{report}"
        );
    }

    #[test]
    fn malformed_records_are_counted_not_fatal() {
        let mut f = Fixture::new(1);
        let message = f.message(
            INPUT,
            0,
            false,
            b"7",
            Some(b"{".to_vec()),
            &EpochStamp {
                epoch: 1,
                attempt: "a".into(),
            }
            .headers(),
        );
        f.engine.input_record(0, &message);
        let message = f.message(
            OUTPUT,
            0,
            false,
            b"75001",
            Some(b"not json".to_vec()),
            &[(EPOCH_HEADER, "1".into())],
        );
        f.engine.output_record(0, &message);
        let message = f.message(OUTPUT, 0, false, b"75001", Some(b"{}".to_vec()), &[]);
        f.engine.output_record(0, &message);
        let message = f.message(
            OUTPUT,
            0,
            true,
            PROGRESS_KEY.as_bytes(),
            Some(b"{".to_vec()),
            &[(KIND_HEADER, "progress".into())],
        );
        f.engine.output_record(0, &message);
        let report = f.report();
        assert_eq!(
            (report.malformed_input, report.malformed_output),
            (1, 3),
            "{report}"
        );
        assert!(!report.is_clean());
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("no epoch is complete")),
            "{report}"
        );
    }

    #[test]
    fn a_records_vehicle_types_must_be_counts() {
        let record = |types: &str| {
            format!(r#"{{"postcode":"0150","nbr_total":3,"vehicle_types":{types},"epoch":1}}"#)
        };
        let counts =
            output_counts("0150", None, record(r#"{"city":2,"a.b":1}"#).as_bytes()).unwrap();
        assert_eq!(counts["vehicle_types"], 2);
        assert_eq!(
            (counts["vehicle_types.city"], counts["vehicle_types.a.b"]),
            (2, 1)
        );
        for (types, why) in [
            ("[]", "vehicle_types is [], not an object"),
            (r#""city""#, "not an object"),
            (
                r#"{"city":-1}"#,
                "vehicle_types.city is -1, not a positive integer",
            ),
            (r#"{"city":0}"#, "not a positive integer"),
            (r#"{"city":1.5}"#, "not a positive integer"),
            (r#"{"city":null}"#, "not a positive integer"),
        ] {
            let e = output_counts("0150", None, record(types).as_bytes()).unwrap_err();
            assert!(e.contains(why), "{types}: {e}");
        }
    }

    #[test]
    fn a_record_must_say_its_system_and_no_other() {
        let record = |system: &str| {
            format!(r#"{{{system}"postcode":"0150","nbr_total":3,"epoch":1,"feed_time":5}}"#)
        };
        let default = record("");
        let oslo = record(r#""system":"oslo","#);
        assert!(output_counts("0150", None, default.as_bytes()).is_ok());
        assert!(output_counts("0150", Some("oslo"), oslo.as_bytes()).is_ok());
        for (system, value, why) in [
            (
                Some("oslo"),
                default.clone(),
                "should say system \"oslo\", and says none",
            ),
            (
                None,
                oslo.clone(),
                "should say no system, and says \"oslo\"",
            ),
            (Some("bergen"), oslo.clone(), "says \"oslo\""),
            (Some("oslo"), record(r#""system":7,"#), "says 7"),
            (None, record(r#""system":null,"#), "says null"),
        ] {
            let e = output_counts("0150", system, value.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
