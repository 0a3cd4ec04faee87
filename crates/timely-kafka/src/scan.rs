//! Reading a topic's partitions from their start to their end, outside any
//! dataflow: what a restarting producer reads back, where a source starts
//! ([`crate::as_of`]), the last progress ([`crate::progress::last_progress`])
//! and the state to restore ([`crate::state`]).
//!
//! A partition is done when the caller says so, or once librdkafka reports
//! having reached its end (`enable.partition.eof`) and no record came after
//! that report; the scan ends when every partition is done at once. It reads
//! at `read_committed` unless the user's `-X` says otherwise. A log takes as
//! long as it takes to read; only a stall (no record and no end for the
//! given time) is an error.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use timely_kafka::scan::{last_of, scan_topic, Scan};
//! use timely_kafka::KafkaConfig;
//! use rdkafka::Message;
//!
//! let kafka = KafkaConfig::new("127.0.0.1:9092");
//! let stall = Duration::from_secs(30);
//! // Every record of a 3-partition topic, read committed, to its end.
//! let mut keys = 0;
//! scan_topic(&kafka, "counting keys", "events", 3, stall, |record| {
//!     keys += usize::from(record.key().is_some());
//!     Scan::More
//! })?;
//! // The last record of each partition whose key is "checkpoint", read
//! // backwards from the end: the cost of the last records, not of the topic.
//! let last = last_of(&kafka, "the last checkpoint", "events", stall, |record| {
//!     (record.key() == Some(b"checkpoint")).then(|| record.offset())
//! })?;
//! # Ok::<(), timely_kafka::KafkaError>(())
//! ```

use super::config::KafkaContext;
use super::{KafkaConfig, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What the caller of [`scan_topic`] wants after a record.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rdkafka::{Message, Offset};
/// use timely_kafka::scan::{scan_partitions, Scan};
/// use timely_kafka::KafkaConfig;
///
/// // Stop reading a partition at its first record keyed "a"; no broker here, so
/// // the scan stalls, and says so.
/// let starts = [(0, Offset::Beginning)];
/// let error = scan_partitions(&KafkaConfig::new("127.0.0.1:9"), "finding a", "events", &starts, &[],
///     Duration::from_secs(1), |r| if r.key() == Some(b"a") { Scan::Done } else { Scan::More }).unwrap_err();
/// assert!(error.to_string().contains("stalled"), "{error}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Read on.
    More,
    /// This partition is done: read no more of it.
    Done,
}

/// Reads every partition of `topic` (it has `partitions`) from its start
/// until its end, or until `on_record` says it is done with it. Returns how
/// many records were read.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::scan::{scan_topic, Scan};
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = scan_topic(&kafka, "counting", "events", 3, Duration::from_secs(1), |_| Scan::More).unwrap_err();
/// // It first asks the broker where each partition starts.
/// assert!(error.to_string().starts_with("reading the partitions of events"), "{error}");
/// ```
pub fn scan_topic(
    kafka: &KafkaConfig,
    purpose: &str,
    topic: &str,
    partitions: i32,
    stall: Duration,
    on_record: impl FnMut(&BorrowedMessage<'_>) -> Scan,
) -> Result<u64, KafkaError> {
    // From each partition's first offset kept, not `Offset::Beginning`,
    // which librdkafka resolves with an offset query that waits about half
    // a second for the topic's metadata.
    let lows = watermarks(kafka, topic, stall)?;
    let starts: Vec<(i32, Offset)> = (0..partitions)
        .map(|p| {
            let low = usize::try_from(p).ok().and_then(|i| lows.get(i));
            (
                p,
                low.map_or(Offset::Beginning, |(low, _)| Offset::Offset(*low)),
            )
        })
        .collect();
    scan_partitions(kafka, purpose, topic, &starts, &[], stall, on_record)
}

/// Reads the partitions `starts` names, each from its offset, until its end
/// or until `on_record` says it is done with it, with librdkafka properties
/// `forced` over the user's. Returns how many records were read.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rdkafka::Offset;
/// use timely_kafka::scan::{scan_partitions, Scan};
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// // No partitions to read: done without a connection.
/// assert_eq!(scan_partitions(&kafka, "nothing", "events", &[], &[], Duration::from_secs(1), |_| Scan::More)?, 0);
/// // Partition 1 from offset 100, reading aborted records too.
/// let starts = [(1, Offset::Offset(100))];
/// let forced = [("isolation.level", "read_uncommitted")];
/// let error = scan_partitions(&kafka, "replaying", "events", &starts, &forced, Duration::from_secs(1), |_| Scan::More).unwrap_err();
/// assert!(error.to_string().contains("replaying: reading it stalled"), "{error}");
/// # Ok::<(), timely_kafka::KafkaError>(())
/// ```
pub fn scan_partitions(
    kafka: &KafkaConfig,
    purpose: &str,
    topic: &str,
    starts: &[(i32, Offset)],
    forced: &[(&str, &str)],
    stall: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> Scan,
) -> Result<u64, KafkaError> {
    if starts.is_empty() {
        return Ok(0);
    }
    let partitions = starts.len();
    let mut config = kafka.client_config(&[
        ("group.id", "velib-dataflow-scan"),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "true"),
        ("isolation.level", "read_committed"),
        ("auto.offset.reset", "earliest"),
        // The end of a partition is known when a fetch comes back empty:
        // the broker's wait for more data (500 ms by default) is the cost
        // of every scan.
        ("fetch.wait.max.ms", "20"),
        // librdkafka 2.x waits a second before fetching again once its
        // queue is full: reading a long log at that pace takes 3-4 times
        // as long (docs/benchmarks.md, pass-through).
        ("fetch.queue.backoff.ms", "10"),
    ]);
    // The scan ends on these events: a user's -X cannot turn them off.
    config.set("enable.partition.eof", "true");
    for (key, value) in forced {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer<KafkaContext> = config
        .create_with_context(KafkaContext::default())
        .map_err(KafkaError::client(format!(
            "creating a consumer for {purpose}"
        )))?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in starts {
        assignment
            .add_partition_offset(topic, *partition, *offset)
            .map_err(KafkaError::client(format!(
                "assigning {topic} for {purpose}"
            )))?;
    }
    consumer
        .assign(&assignment)
        .map_err(KafkaError::client(format!(
            "assigning {topic} for {purpose}"
        )))?;
    // Partitions at their end, and partitions the caller is done with.
    let mut ended: HashSet<i32> = HashSet::new();
    let mut done: HashSet<i32> = HashSet::new();
    let mut records = 0;
    let mut last_progress = Instant::now();
    let mut last_error: Option<String> = None;
    while ended.union(&done).count() < partitions {
        if last_progress.elapsed() > stall {
            return Err(KafkaError::Topic {
                topic: topic.to_owned(),
                problem: format!(
                    "{purpose}: reading it stalled for {stall:?} ({} of {partitions} partitions done): {}",
                    ended.union(&done).count(),
                    last_error.as_deref().unwrap_or("is the broker reachable?")
                ),
            });
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                ended.insert(partition);
                continue;
            }
            // librdkafka reports a broker going away and retries by itself:
            // keep the error for the message if it ends in a stall.
            Some(Err(e)) => {
                tracing::debug!("{purpose}, reading {topic}: {e}");
                last_error = Some(e.to_string());
                continue;
            }
            Some(Ok(message)) => message,
        };
        let partition = message.partition();
        last_progress = Instant::now();
        if done.contains(&partition) {
            // Fetched before the partition was paused.
            continue;
        }
        // A record after the end was reported: the partition is not done.
        ended.remove(&partition);
        records += 1;
        if on_record(&message) == Scan::Done {
            done.insert(partition);
            let mut paused = TopicPartitionList::new();
            paused.add_partition(topic, partition);
            // Only saves reading further; a failure changes nothing.
            let _ = consumer.pause(&paused);
        }
    }
    Ok(records)
}

/// The low and high watermarks of each of `topic`'s partitions, in
/// partition order.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::scan::watermarks;
/// use timely_kafka::KafkaConfig;
///
/// let error = watermarks(&KafkaConfig::new("127.0.0.1:9"), "events", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().starts_with("reading the partitions of events"), "{error}");
/// ```
pub fn watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i64, i64)>, KafkaError> {
    let consumer: BaseConsumer<KafkaContext> = kafka
        .client_config(&[("group.id", "velib-dataflow-scan")])
        .create_with_context(KafkaContext::default())
        .map_err(KafkaError::client(format!(
            "creating a consumer to read the ends of {topic}"
        )))?;
    // Asking again is bounded by one timeout in all; each request has its own.
    let deadline = Instant::now() + timeout;
    let partitions = super::topics::partition_count(consumer.client(), topic, timeout)?;
    (0..partitions)
        .map(|partition| loop {
            match consumer.fetch_watermarks(topic, partition, timeout) {
                // A partition created a moment ago is listed before its
                // leader serves it: asked too soon, the broker says it
                // leads nothing yet.
                Err(e) if leader_moving(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => {
                    break result.map_err(KafkaError::client(format!(
                        "reading the ends of {topic}[{partition}]"
                    )))
                }
            }
        })
        .collect()
}

/// Whether `error` says a partition's leader is not (yet) where asked: worth
/// asking again.
fn leader_moving(error: &RdKafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{
        LeaderNotAvailable, NotLeaderForPartition, UnknownTopicOrPartition,
    };
    matches!(
        error.rdkafka_error_code(),
        Some(LeaderNotAvailable | NotLeaderForPartition | UnknownTopicOrPartition)
    )
}

/// The last record of each of `topic`'s partitions that `pick` turns into a
/// value, read backwards from each partition's end in windows growing
/// eightfold (16, 128, 1,024 … records) until one is found or the
/// partition's start is reached: the cost of the partition's last
/// records, not of its history. Partitions with no such record are absent.
/// Read at `read_committed` whatever the user's properties say.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rdkafka::Message;
/// use timely_kafka::scan::last_of;
/// use timely_kafka::KafkaConfig;
///
/// // The offset of each partition's last record keyed "a".
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = last_of(&kafka, "the last a", "events", Duration::from_secs(1), |r| {
///     (r.key() == Some(b"a")).then(|| r.offset())
/// }).unwrap_err();
/// assert!(error.to_string().starts_with("reading the partitions of events"), "{error}");
/// ```
pub fn last_of<T>(
    kafka: &KafkaConfig,
    purpose: &str,
    topic: &str,
    stall: Duration,
    mut pick: impl FnMut(&BorrowedMessage<'_>) -> Option<T>,
) -> Result<std::collections::BTreeMap<i32, T>, KafkaError> {
    let ends = watermarks(kafka, topic, stall)?;
    let mut found = std::collections::BTreeMap::new();
    let mut window = 16i64;
    // Partitions read back to their start already.
    let mut exhausted = HashSet::new();
    loop {
        let mut starts = Vec::new();
        for (partition, (low, high)) in (0..).zip(&ends) {
            if found.contains_key(&partition) || exhausted.contains(&partition) {
                continue;
            }
            let start = high.saturating_sub(window).max(*low);
            if start == *low {
                exhausted.insert(partition);
            }
            starts.push((partition, Offset::Offset(start)));
        }
        if starts.is_empty() {
            return Ok(found);
        }
        scan_partitions(
            kafka,
            purpose,
            topic,
            &starts,
            &[("isolation.level", "read_committed")],
            stall,
            |message| {
                if let Some(value) = pick(message) {
                    // Later offsets come later: the last one stays.
                    found.insert(message.partition(), value);
                }
                Scan::More
            },
        )?;
        window = window.saturating_mul(8);
    }
}
