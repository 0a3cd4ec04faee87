//! Reading a topic's partitions from their start to their end, outside any
//! dataflow: what a restarting producer reads back ([`super::recovery`]) and
//! where a source starts ([`super::as_of`]).
//!
//! A partition is done when the caller says so, or once librdkafka reports
//! having reached its end (`enable.partition.eof`) and no record came after
//! that report; the scan ends when every partition is done at once. It reads
//! at `read_committed` unless the user's `-X` says otherwise. A log takes as
//! long as it takes to read; only a stall (no record and no end for the
//! given time) is an error.

use super::config::ReaderContext;
use super::{KafkaConfig, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What the caller of [`scan_topic`] wants after a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Read on.
    More,
    /// This partition is done: read no more of it.
    Done,
}

/// Reads every partition of `topic` (it has `partitions`) from its start
/// until its end, or until `on_record` says it is done with it. Returns how
/// many records were read.
pub(crate) fn scan_topic(
    kafka: &KafkaConfig,
    purpose: &str,
    topic: &str,
    partitions: i32,
    stall: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> Scan,
) -> Result<u64, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> = kafka
        .client_config(&[
            ("group.id", "velib-dataflow-scan"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
        ])
        // The scan ends on these events: a user's -X cannot turn them off.
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext::default())
        .map_err(KafkaError::client(format!(
            "creating a consumer for {purpose}"
        )))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
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
    while ended.union(&done).count() < partitions as usize {
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
