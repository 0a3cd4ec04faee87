//! The producer's side of the epoch protocol: each epoch's records and its
//! markers in one transaction, a new attempt id for every try, and a start
//! that reads back what was published so that a restart neither goes back
//! in time nor republishes everything.

use super::config::KafkaContext;
use super::dead_letter::response_record;
use super::epoch_writer::EpochWriter;
use super::protocol::Epoch;
use super::recovery::{read_back, PublishedTopics, Recovered};
use super::topics::{ensure_topics, TopicSpec};
use super::DEFAULT_DEAD_LETTER_TOPIC;
use super::{KafkaConfig, KafkaError};
use crate::feed::{FeedTime, StationId};
use crate::station_records::{station_key, station_value};
use std::time::Duration;

/// The producer's default station status topic (the seeds' topic).
pub const DEFAULT_STATUS_TOPIC: &str = "velib-projet";
/// The producer's default directory topic.
pub const DEFAULT_DIRECTORY_TOPIC: &str = "velib-directory";

/// The producer's state topic beside `status_topic`: `<status topic>-state`.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::publish::state_topic_beside;
///
/// assert_eq!(state_topic_beside("velib-projet"), "velib-projet-state");
/// ```
pub fn state_topic_beside(status_topic: &str) -> String {
    format!("{status_topic}-state")
}

/// Where and how the producer publishes.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::publish::PublisherConfig;
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let config = PublisherConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// assert_eq!(config.transactional_id, "velib-producer-velib-projet");
/// let compacted: Vec<_> = config.topics(3).into_iter().map(|t| (t.name, t.compacted)).collect();
/// assert_eq!(compacted, [
///     ("velib-projet".to_owned(), false),
///     ("velib-directory".to_owned(), true),
///     ("velib-projet-state".to_owned(), true),
///     ("velib-projet-dead-letters".to_owned(), false),
/// ]);
/// ```
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Station statuses, keyed by station id.
    pub status_topic: String,
    /// Directory entries, keyed by station id (compacted).
    pub directory_topic: String,
    /// The latest status of every station (compacted), written in each
    /// epoch's transaction beside the status topic: what a restart reads
    /// instead of the status topic's whole history. `None`: a restart reads
    /// the status topic in full.
    pub state_topic: Option<String>,
    /// The producer's `transactional.id`: the same across restarts, so that
    /// a restarted producer fences a zombie one.
    pub transactional_id: String,
    /// Create missing topics with this many partitions (`None`: create
    /// nothing, and fail clearly when a topic is missing).
    pub create_partitions: Option<i32>,
    /// The replication factor of created topics.
    pub replication: i32,
    /// Bounds each broker round trip, and reading back at start.
    pub timeout: Duration,
    /// Where rejected HTTP responses go, raw and cut
    /// ([`EpochPublisher::dead_letter_response`]); `None` to only log and
    /// count them.
    pub dead_letter_topic: Option<String>,
}

impl PublisherConfig {
    /// The default topics on `kafka`, created with 3 partitions if missing.
    pub fn new(kafka: KafkaConfig) -> Self {
        PublisherConfig {
            kafka,
            status_topic: DEFAULT_STATUS_TOPIC.into(),
            directory_topic: DEFAULT_DIRECTORY_TOPIC.into(),
            state_topic: Some(state_topic_beside(DEFAULT_STATUS_TOPIC)),
            transactional_id: format!("velib-producer-{DEFAULT_STATUS_TOPIC}"),
            create_partitions: Some(3),
            replication: 1,
            timeout: Duration::from_secs(30),
            dead_letter_topic: Some(DEFAULT_DEAD_LETTER_TOPIC.into()),
        }
    }

    /// The topics the producer writes, as they should be created.
    pub fn topics(&self, partitions: i32) -> Vec<TopicSpec> {
        let mut topics = vec![
            TopicSpec::new(&self.status_topic, partitions).replication(self.replication),
            TopicSpec::new(&self.directory_topic, partitions)
                .compacted()
                .replication(self.replication),
        ];
        if let Some(topic) = &self.state_topic {
            topics.push(
                TopicSpec::new(topic, partitions)
                    .changelog()
                    .replication(self.replication),
            );
        }
        if let Some(topic) = &self.dead_letter_topic {
            topics.push(TopicSpec::new(topic, 1).replication(self.replication));
        }
        topics
    }
}

/// Which of the producer's topics a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishedTopic {
    /// The status topic.
    Status,
    /// The directory topic.
    Directory,
}

/// One record of an epoch: a station's new value, or `None` when it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationRecord {
    /// Its topic.
    pub topic: PublishedTopic,
    /// The station.
    pub station: StationId,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Publishes epochs, one transaction each.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::kafka::publish::{EpochPublisher, PublisherConfig};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let mut config = PublisherConfig::new(KafkaConfig::new("127.0.0.1:9"));
/// config.timeout = Duration::from_secs(1);
/// // With a broker: `let (mut publisher, recovered) = EpochPublisher::connect(config)?;`
/// // then `publisher.publish(recovered.last.map_or(1, |m| m.epoch + 1), feed_time, &records)?`.
/// // Without one, connecting fails within the timeout, saying what it was doing.
/// let error = EpochPublisher::connect(config).unwrap_err();
/// assert!(!error.is_fatal(), "{error}");
/// ```
#[derive(Debug)]
pub struct EpochPublisher {
    /// Writes the epochs on the status, directory and state topics.
    writer: EpochWriter,
    config: PublisherConfig,
    /// What the state topic lacks (the statuses of a full read back), as
    /// records: written with the next epoch.
    state_repair: Vec<(StationId, Option<Vec<u8>>)>,
}

impl EpochPublisher {
    /// Creates missing topics, connects as the configured
    /// `transactional.id` (fencing an older producer), reads back what was
    /// published, and completes an epoch whose markers are only partly
    /// visible (a producer that died while committing). Returns the
    /// publisher and what it read back.
    pub fn connect(config: PublisherConfig) -> Result<(Self, Recovered), KafkaError> {
        Self::connect_observed(config, None)
    }

    /// As [`EpochPublisher::connect`], handing librdkafka's statistics of
    /// the producer (every 5 s) to `on_stats`.
    pub fn connect_observed(
        config: PublisherConfig,
        on_stats: Option<std::sync::Arc<dyn Fn(rdkafka::Statistics) + Send + Sync>>,
    ) -> Result<(Self, Recovered), KafkaError> {
        if let Some(partitions) = config.create_partitions {
            for (topic, outcome) in
                ensure_topics(&config.kafka, &config.topics(partitions), config.timeout)?
            {
                tracing::debug!(topic, ?outcome, "topic ready");
            }
        }
        // The state topic is one more topic of each epoch, marked as the
        // others are: what it means is read back here, not by the writer.
        let epoch_topics: Vec<&str> = [
            Some(config.status_topic.as_str()),
            Some(config.directory_topic.as_str()),
            config.state_topic.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut writer = EpochWriter::connect_with(
            &config.kafka,
            &config.transactional_id,
            &epoch_topics,
            config.timeout,
            KafkaContext { on_stats },
        )?;
        // In the order given: status, directory, then the state topic if any.
        let topics = match writer.partitions() {
            [status, directory, state @ ..] => PublishedTopics {
                status: status.clone(),
                directory: directory.clone(),
                state: state.first().cloned(),
            },
            _ => unreachable!("the writer has the status and directory topics"),
        };
        let recovered = read_back(&config.kafka, &topics, config.timeout)?;
        let epoch = recovered.last.as_ref().map_or(0, |m| m.epoch);
        let state_repair = recovered
            .state_repair
            .iter()
            .map(|(id, status)| {
                (
                    id.clone(),
                    status.as_ref().map(|s| station_value(None, epoch, s)),
                )
            })
            .collect();
        if let (Some(last), false) = (&recovered.last, recovered.unmarked.is_empty()) {
            tracing::warn!(
                epoch = last.epoch,
                attempt = last.attempt,
                partitions = ?recovered.unmarked,
                "epoch's markers only partly visible: completing it as its attempt wrote it"
            );
            writer.complete_markers(last, &recovered.unmarked)?;
        }
        let publisher = EpochPublisher {
            writer,
            config,
            state_repair,
        };
        Ok((publisher, recovered))
    }

    /// The attempt id the next try will write under.
    pub fn next_attempt(&self) -> String {
        self.writer.next_attempt()
    }

    /// The topics and their partition counts.
    pub fn partitions(&self) -> &[(String, i32)] {
        self.writer.partitions()
    }

    /// Publishes `epoch`: its records (statuses also on the state topic,
    /// after what it lacks, if anything), then a marker on every partition
    /// of every topic, in one transaction. A failed try is aborted; trying
    /// again writes under a new attempt id, so that a reader who saw the
    /// failed try's records drops them. An error for which
    /// [`KafkaError::is_fatal`] holds means this publisher can go no further.
    pub fn publish(
        &mut self,
        epoch: Epoch,
        feed_time: FeedTime,
        records: &[StationRecord],
    ) -> Result<String, KafkaError> {
        let config = &self.config;
        let state_repair = &self.state_repair;
        let marker = self.writer.write_epoch(epoch, Some(feed_time), |out| {
            let send = |topic: &str, station: &StationId, value: &Option<Vec<u8>>| {
                out.send(topic, &station_key(station), value.as_deref())
            };
            let state = config.state_topic.as_deref();
            if let Some(state) = state {
                // First: this epoch's own records of a station come later
                // and win.
                for (station, value) in state_repair {
                    send(state, station, value)?;
                }
            }
            for record in records {
                let topic = match record.topic {
                    PublishedTopic::Status => &config.status_topic,
                    PublishedTopic::Directory => &config.directory_topic,
                };
                send(topic, &record.station, &record.value)?;
                if let (PublishedTopic::Status, Some(state)) = (record.topic, state) {
                    send(state, &record.station, &record.value)?;
                }
            }
            Ok(())
        })?;
        if !self.state_repair.is_empty() {
            tracing::info!(
                records = self.state_repair.len(),
                "the state topic is whole again"
            );
            self.state_repair.clear();
        }
        Ok(marker.attempt)
    }

    /// Writes a rejected HTTP response from `url` to the dead-letter topic
    /// (raw, cut to 64 KiB, `reason` and `error` in headers), in a
    /// transaction of its own: it belongs to no epoch. Without a dead-letter
    /// topic, does nothing.
    pub fn dead_letter_response(
        &mut self,
        url: &str,
        body: &[u8],
        reason: &str,
        error: &str,
    ) -> Result<(), KafkaError> {
        let Some(topic) = self.config.dead_letter_topic.as_deref() else {
            return Ok(());
        };
        self.writer
            .write_outside_epochs(|out| out.send(response_record(topic, url, body, reason, error)))
    }
}
