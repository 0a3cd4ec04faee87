//! The writing side of the epoch protocol ([`super::protocol`]): each
//! epoch's records, then a marker on every partition of every topic the
//! writer frames, in one transaction, under a new attempt id for every try.
//!
//! The order within a transaction is the writer's, not the caller's: the
//! caller only sends records ([`EpochRecords::send`]), and
//! [`EpochWriter::write_epoch`] writes the markers once the caller is done
//! and every record is on the log. So a marker can never precede a record
//! of its own epoch. A try that fails is aborted; the next try writes under
//! a new attempt id, so that a reader who saw the failed try's records (on
//! a broker that shows aborted transactions) drops them at the marker.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use timely_kafka::epoch_writer::EpochWriter;
//! use timely_kafka::KafkaConfig;
//!
//! // With a broker: `writer.write_epoch(1, None, |epoch| epoch.send("events", b"k", Some(b"v")))?`.
//! // Without one, connecting fails within the timeout, saying what it was doing.
//! let kafka = KafkaConfig::new("127.0.0.1:9");
//! let error = EpochWriter::connect(&kafka, "my-job", &["events"], Duration::from_secs(1)).unwrap_err();
//! assert!(error.to_string().contains("my-job"), "{error}");
//! ```

use super::config::KafkaContext;
use super::protocol::{Epoch, EpochMarker, EpochTime, MARKER_KEY};
use super::transaction::{owned_headers, TransactionalProducer};
use super::{KafkaConfig, KafkaError};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Writes epochs to a fixed set of topics, one transaction each: records,
/// then a marker on every partition of every topic.
///
/// Attempt ids are `<run id>.<try>`: the run id is new for every writer
/// ([`new_run_id`]), the try counts the epochs it tried to write, failed
/// tries included.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::epoch_writer::EpochWriter;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = EpochWriter::connect(&kafka, "my-job", &["events", "snapshots"], Duration::from_secs(1))
///     .unwrap_err();
/// // Retrying may help: the broker was away, the writer was not fenced.
/// assert!(!error.is_fatal(), "{error}");
/// ```
#[derive(Debug)]
pub struct EpochWriter {
    producer: TransactionalProducer,
    topics: Vec<(String, i32)>,
    run: String,
    tries: u64,
}

impl EpochWriter {
    /// Connects as `transactional_id` (fencing an older writer with the same
    /// id and aborting its open transaction), and reads how many partitions
    /// each of `topics` has: an error when one does not exist. `timeout`
    /// bounds each broker round trip.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use timely_kafka::epoch_writer::EpochWriter;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let kafka = KafkaConfig::new("127.0.0.1:9");
    /// let error = EpochWriter::connect(&kafka, "my-job", &["events"], Duration::from_secs(1)).unwrap_err();
    /// assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
    /// ```
    pub fn connect(
        kafka: &KafkaConfig,
        transactional_id: &str,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        Self::connect_with(
            kafka,
            transactional_id,
            topics,
            timeout,
            KafkaContext::default(),
        )
    }

    /// As [`EpochWriter::connect`], with a librdkafka context: with
    /// [`KafkaContext::on_stats`], the producer's statistics every 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use timely_kafka::config::KafkaContext;
    /// use timely_kafka::epoch_writer::EpochWriter;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let context = KafkaContext {
    ///     on_stats: Some(Arc::new(|stats: rdkafka::Statistics| println!("{} sent", stats.txmsgs))),
    /// };
    /// let kafka = KafkaConfig::new("127.0.0.1:9");
    /// let connected = EpochWriter::connect_with(&kafka, "my-job", &["events"], Duration::from_secs(1), context);
    /// assert!(connected.is_err());
    /// ```
    pub fn connect_with(
        kafka: &KafkaConfig,
        transactional_id: &str,
        topics: &[&str],
        timeout: Duration,
        context: KafkaContext,
    ) -> Result<Self, KafkaError> {
        let producer =
            TransactionalProducer::connect_with(kafka, transactional_id, timeout, context)?;
        let topics = topics
            .iter()
            .map(|topic| Ok(((*topic).to_owned(), producer.partitions(topic)?)))
            .collect::<Result<_, KafkaError>>()?;
        Ok(EpochWriter {
            producer,
            topics,
            run: new_run_id(),
            tries: 0,
        })
    }

    /// The attempt id the next [`EpochWriter::write_epoch`] writes under.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::epoch_writer::EpochWriter;
    ///
    /// // Each try has its own attempt id, a failed one included.
    /// fn write(writer: &mut EpochWriter) -> Result<(), timely_kafka::KafkaError> {
    ///     let attempt = writer.next_attempt();
    ///     let marker = writer.write_epoch(1, None, |_| Ok(()))?;
    ///     assert_eq!(marker.attempt, attempt);
    ///     assert_ne!(writer.next_attempt(), attempt);
    ///     Ok(())
    /// }
    /// ```
    pub fn next_attempt(&self) -> String {
        self.attempt(self.tries + 1)
    }

    fn attempt(&self, try_number: u64) -> String {
        format!("{}.{try_number}", self.run)
    }

    /// The topics, in the order given to [`EpochWriter::connect`], and
    /// their partition counts: where each epoch's markers go.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::epoch_writer::EpochWriter;
    ///
    /// fn markers_per_epoch(writer: &EpochWriter) -> i32 {
    ///     writer.partitions().iter().map(|(_topic, count)| count).sum()
    /// }
    /// ```
    pub fn partitions(&self) -> &[(String, i32)] {
        &self.topics
    }

    /// Writes `epoch` in one transaction: the records `records` sends, each
    /// stamped with the epoch and the attempt ([`EpochMarker::stamp`]), then,
    /// once they are all on the log, a marker on every partition of every
    /// topic ([`EpochWriter::partitions`]), then commits. Returns the marker
    /// written, which names the attempt.
    ///
    /// When `records` returns an error, or Kafka fails the transaction, the
    /// try is aborted and its error returned as [`KafkaError::Client`],
    /// naming the epoch, the topics and the attempt; trying again writes
    /// under a new attempt id. An error for which [`KafkaError::is_fatal`]
    /// holds means this writer can go no further.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::epoch_writer::EpochWriter;
    ///
    /// fn write(writer: &mut EpochWriter, changes: &[(&str, Option<&str>)]) -> Result<String, timely_kafka::KafkaError> {
    ///     let marker = writer.write_epoch(7, Some(1732004538), |epoch| {
    ///         for (key, value) in changes {
    ///             // `None`: a tombstone, the key is gone.
    ///             epoch.send("events", key.as_bytes(), value.map(str::as_bytes))?;
    ///         }
    ///         Ok(())
    ///     })?;
    ///     Ok(marker.attempt)
    /// }
    /// ```
    pub fn write_epoch(
        &mut self,
        epoch: Epoch,
        feed_time: Option<EpochTime>,
        records: impl FnOnce(&EpochRecords<'_>) -> Result<(), RdKafkaError>,
    ) -> Result<EpochMarker, KafkaError> {
        self.tries += 1;
        let marker = EpochMarker {
            epoch,
            attempt: self.attempt(self.tries),
            feed_time,
        };
        let everywhere: Vec<(String, i32)> = self
            .topics
            .iter()
            .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
            .collect();
        let result = self
            .producer
            .begin()
            .and_then(|()| {
                records(&EpochRecords {
                    producer: &self.producer,
                    topics: &self.topics,
                    headers: marker.stamp().headers(),
                })
            })
            // Every record is on the log before any marker is: a marker
            // never precedes a record of its own epoch.
            .and_then(|()| self.producer.flush())
            .and_then(|()| write_markers(&self.producer, &marker, &everywhere))
            .and_then(|()| self.producer.commit());
        result.map_err(|source| {
            self.producer.abort();
            KafkaError::Client {
                context: format!(
                    "publishing epoch {epoch} to {} as attempt {}",
                    listed(self.topics.iter().map(|(t, _)| t.as_str())),
                    marker.attempt
                ),
                source,
            }
        })?;
        Ok(marker)
    }

    /// Writes `marker` on `partitions`, and nothing else, in a transaction
    /// of its own: completes an epoch whose writer died while committing,
    /// after some of its markers became visible and before the others did.
    /// Until they have it, their readers wait for that epoch forever; and a
    /// marker naming another attempt than the one already visible would
    /// split the epoch, so this one must be the marker read back. It is not
    /// a try of this writer's: the attempt ids go on as they were.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::epoch_writer::EpochWriter;
    /// use timely_kafka::protocol::EpochMarker;
    ///
    /// // `last` was read back from partition 0, partition 1 lacks it.
    /// fn complete(writer: &mut EpochWriter, last: &EpochMarker) -> Result<(), timely_kafka::KafkaError> {
    ///     writer.complete_markers(last, &[("events".to_owned(), 1)])
    /// }
    /// ```
    pub fn complete_markers(
        &mut self,
        marker: &EpochMarker,
        partitions: &[(String, i32)],
    ) -> Result<(), KafkaError> {
        let result = self
            .producer
            .begin()
            .and_then(|()| write_markers(&self.producer, marker, partitions))
            .and_then(|()| self.producer.commit());
        result.map_err(|source| {
            self.producer.abort();
            KafkaError::Client {
                context: format!(
                    "completing epoch {}'s markers as attempt {} on {}",
                    marker.epoch,
                    marker.attempt,
                    listed(partitions.iter().map(|(t, p)| format!("{t}/{p}")))
                ),
                source,
            }
        })
    }

    /// Writes the records `records` sends in a transaction of its own,
    /// outside any epoch: no epoch headers, no markers (a rejected input
    /// kept for a human on a dead-letter topic, say). They go to topics
    /// other than the writer's epoch topics, where a reader would not know
    /// which epoch they belong to. A failure is aborted and returned as
    /// [`KafkaError::Client`], naming the topics written to.
    ///
    /// # Examples
    ///
    /// ```
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::epoch_writer::EpochWriter;
    ///
    /// fn keep(writer: &mut EpochWriter, rejected: &[u8]) -> Result<(), timely_kafka::KafkaError> {
    ///     writer.write_outside_epochs(|out| {
    ///         out.send(BaseRecord::<[u8], [u8]>::to("rejected").payload(rejected))
    ///     })
    /// }
    /// ```
    pub fn write_outside_epochs(
        &mut self,
        records: impl FnOnce(&mut UnframedRecords<'_>) -> Result<(), RdKafkaError>,
    ) -> Result<(), KafkaError> {
        let mut written_to = Vec::new();
        let result = self
            .producer
            .begin()
            .and_then(|()| {
                let mut out = UnframedRecords {
                    producer: &self.producer,
                    epoch_topics: &self.topics,
                    written_to: Vec::new(),
                };
                let sent = records(&mut out);
                written_to = out.written_to;
                sent
            })
            .and_then(|()| self.producer.commit());
        result.map_err(|source| {
            self.producer.abort();
            KafkaError::Client {
                context: format!(
                    "writing outside any epoch to {}",
                    if written_to.is_empty() {
                        "no topic yet".to_owned()
                    } else {
                        listed(&written_to)
                    }
                ),
                source,
            }
        })
    }
}

/// The open transaction of an epoch, as [`EpochWriter::write_epoch`] hands
/// it to the caller: it sends records, and nothing else (the markers are the
/// writer's).
///
/// # Examples
///
/// ```
/// use timely_kafka::epoch_writer::EpochRecords;
///
/// fn send_all(epoch: &EpochRecords<'_>, keys: &[&str]) -> Result<(), rdkafka::error::KafkaError> {
///     keys.iter().try_for_each(|key| epoch.send("events", key.as_bytes(), Some(b"seen")))
/// }
/// ```
#[derive(Debug)]
pub struct EpochRecords<'a> {
    producer: &'a TransactionalProducer,
    topics: &'a [(String, i32)],
    headers: Vec<(&'static str, String)>,
}

impl EpochRecords<'_> {
    /// Sends a record of the epoch to `topic`, stamped with the epoch and
    /// attempt; `value` `None` is a tombstone (the key is gone). Waits while
    /// librdkafka's queue is full.
    ///
    /// Refused (with librdkafka's `UnknownTopic`) when the writer does not
    /// frame `topic`: no marker would ever release the record. Refused
    /// (with `InvalidArgument`) when `key` is the markers' key
    /// ([`MARKER_KEY`]): on a compacted topic it would replace the latest
    /// marker.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::epoch_writer::EpochRecords;
    ///
    /// fn delete(epoch: &EpochRecords<'_>, key: &str) -> Result<(), rdkafka::error::KafkaError> {
    ///     epoch.send("events", key.as_bytes(), None)
    /// }
    /// ```
    pub fn send(&self, topic: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), RdKafkaError> {
        if !self.topics.iter().any(|(t, _)| t == topic) {
            return Err(RdKafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopic,
            ));
        }
        if key == MARKER_KEY.as_bytes() {
            return Err(RdKafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidArgument,
            ));
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .key(key)
            .headers(owned_headers(&self.headers));
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.producer.send(record)
    }
}

/// The open transaction of [`EpochWriter::write_outside_epochs`]: records
/// of no epoch, as the caller makes them.
///
/// # Examples
///
/// ```
/// use rdkafka::producer::BaseRecord;
/// use timely_kafka::epoch_writer::UnframedRecords;
///
/// fn note(out: &mut UnframedRecords<'_>, text: &str) -> Result<(), rdkafka::error::KafkaError> {
///     out.send(BaseRecord::<str, str>::to("notes").key("note").payload(text))
/// }
/// ```
#[derive(Debug)]
pub struct UnframedRecords<'a> {
    producer: &'a TransactionalProducer,
    epoch_topics: &'a [(String, i32)],
    written_to: Vec<String>,
}

impl UnframedRecords<'_> {
    /// Sends `record` as it is, waiting while librdkafka's queue is full.
    /// Refused (with librdkafka's `InvalidArgument`) when its topic is one
    /// of the writer's epoch topics: a record of no epoch there would be
    /// unreadable to the epochs' readers.
    ///
    /// # Examples
    ///
    /// ```
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::epoch_writer::UnframedRecords;
    ///
    /// fn keep(out: &mut UnframedRecords<'_>, body: &[u8]) -> Result<(), rdkafka::error::KafkaError> {
    ///     out.send(BaseRecord::<[u8], [u8]>::to("dead-letters").payload(body))
    /// }
    /// ```
    pub fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
        &mut self,
        record: BaseRecord<'_, K, P>,
    ) -> Result<(), RdKafkaError> {
        if !self.written_to.iter().any(|t| t == record.topic) {
            self.written_to.push(record.topic.to_owned());
        }
        if self.epoch_topics.iter().any(|(t, _)| t == record.topic) {
            return Err(RdKafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidArgument,
            ));
        }
        self.producer.send(record)
    }
}

/// Writes `marker` on each of `partitions`.
fn write_markers(
    producer: &TransactionalProducer,
    marker: &EpochMarker,
    partitions: &[(String, i32)],
) -> Result<(), RdKafkaError> {
    let value = marker.to_json();
    let headers = marker.headers();
    for (topic, partition) in partitions {
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic)
            .partition(*partition)
            .key(MARKER_KEY)
            .payload(&value[..])
            .headers(owned_headers(&headers));
        producer.send(record)?;
    }
    Ok(())
}

/// `a`, `a and b`, `a, b and c`: for error messages.
fn listed<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<T> = items.into_iter().collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.as_ref().to_owned(),
        Some((last, rest)) => {
            let rest: Vec<&str> = rest.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", rest.join(", "), last.as_ref())
        }
    }
}

/// A new id for a run of a writer: the time and randomness, so that two
/// runs never share one, and attempt ids built on it are never reused.
///
/// # Examples
///
/// ```
/// use timely_kafka::epoch_writer::new_run_id;
///
/// assert_ne!(new_run_id(), new_run_id());
/// assert!(new_run_id().len() < timely_kafka::protocol::MAX_ATTEMPT_BYTES / 2);
/// ```
pub fn new_run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{millis:x}-{:08x}", fastrand::u32(..))
}
