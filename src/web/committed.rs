//! Whole committed epochs, read as any client reads them: the aggregator's
//! output topic and its state topic, at `read_committed`.
//!
//! The output topic says which epochs are whole ([`OutputEpochs`]: every
//! partition has a progress record of the epoch or of a later one). The
//! state topic says what every station was as of those epochs: the
//! aggregator writes it in the same transaction as the epoch's output, each
//! record stamped with the epoch that set it. Both are what the counts were
//! computed from, so the stations on the map and the postcodes in the table
//! are of the same epoch.
//!
//! The two topics are read by one consumer but their partitions are fetched
//! independently, and a transaction's commit markers are written partition
//! by partition: an epoch whole on the output topic may not be readable
//! whole on the state topic yet. Before releasing an epoch the reader asks
//! the state partitions' high watermarks (at `read_uncommitted`: the epoch's
//! state records were acknowledged before its commit, so they are below),
//! and waits until its `read_committed` position has passed them, which it
//! can only do once every transaction below is committed or aborted. State
//! records of a later epoch wait for that epoch; one that arrives for an
//! epoch already released (it cannot, but the topic is not ours) goes out
//! with the next epoch, counted as late.
//!
//! A reader opened on topics with history catches up first: it reads both
//! topics to the ends they had when it opened and releases all of it as one
//! epoch, the last. The topics are compacted separately, so an older epoch
//! would show stations from another time; only the state once caught up is
//! exact. After that, an epoch whose own progress records the cleaner
//! removed is released with the next one that has them (see
//! [`crate::kafka::progress`]).

use super::WebError;
use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{FeedTime, StationId, StationStatus};
use crate::kafka::progress::OutputEpochs;
use crate::kafka::sink::EpochProgress;
use crate::kafka::state::source_of;
use crate::kafka::{KafkaConfig, EPOCH_HEADER, KIND_HEADER};
use crate::output::PostcodeRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Messages read by one [`CommittedReader::poll`] at most.
const MESSAGES_PER_POLL: usize = 10_000;

/// Which topics a [`CommittedReader`] reads, and how long it waits for them.
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::web::committed::CommittedConfig;
///
/// let config = CommittedConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// assert_eq!(config.output_topic, "velib-projet-clean");
/// assert_eq!(config.state_topic.as_deref(), Some("velib-projet-clean-state"));
/// assert_eq!((config.status_topic.as_str(), config.directory_topic.as_str()), ("velib-projet", "velib-directory"));
/// ```
#[derive(Clone, Debug)]
pub struct CommittedConfig {
    /// The brokers, and properties for the consumer.
    pub kafka: KafkaConfig,
    /// The aggregator's output topic.
    pub output_topic: String,
    /// Its state topic, where the stations are; `None`: no stations.
    pub state_topic: Option<String>,
    /// The input topic whose keys are station statuses, as the state names them.
    pub status_topic: String,
    /// The input topic whose keys are directory entries.
    pub directory_topic: String,
    /// How long to wait for the output topic to appear before saying so.
    pub wait_for_topics: Duration,
}

impl CommittedConfig {
    /// The aggregator's default topics on `kafka`.
    pub fn new(kafka: KafkaConfig) -> Self {
        let output_topic = crate::aggregator::DEFAULT_OUTPUT_TOPIC.to_owned();
        CommittedConfig {
            kafka,
            state_topic: crate::aggregator::StateTopic::BesideOutput.name(&output_topic),
            output_topic,
            status_topic: crate::kafka::publish::DEFAULT_STATUS_TOPIC.to_owned(),
            directory_topic: crate::kafka::publish::DEFAULT_DIRECTORY_TOPIC.to_owned(),
            wait_for_topics: Duration::from_secs(60),
        }
    }

    /// What `aggregator` writes, on its brokers: its output and state
    /// topics, its input topics as its state names them (a named system's
    /// included, [`crate::aggregator::AggregatorConfig::for_system`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::aggregator::AggregatorConfig;
    /// use velib_dataflow::kafka::KafkaConfig;
    /// use velib_dataflow::web::committed::CommittedConfig;
    ///
    /// let oslo = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092")).for_system("oslo");
    /// let config = CommittedConfig::reading(&oslo);
    /// assert_eq!(config.output_topic, "velib-projet-clean.oslo");
    /// assert_eq!(config.state_topic.as_deref(), Some("velib-projet-clean-state.oslo"));
    /// assert_eq!((config.status_topic.as_str(), config.directory_topic.as_str()), ("velib-projet.oslo", "velib-directory.oslo"));
    /// ```
    pub fn reading(aggregator: &crate::aggregator::AggregatorConfig) -> Self {
        let mut config = CommittedConfig::new(aggregator.kafka.clone());
        config.state_topic = aggregator.state_topic.name(&aggregator.output_topic);
        config.output_topic.clone_from(&aggregator.output_topic);
        config.status_topic.clone_from(&aggregator.input_topic);
        if let Some(directory) = &aggregator.directory_topic {
            config.directory_topic.clone_from(directory);
        }
        config
    }
}

/// One whole committed epoch: what changed in it.
///
/// # Examples
///
/// ```
/// use velib_dataflow::web::committed::CommittedEpoch;
///
/// let epoch = CommittedEpoch::empty(7);
/// assert!(epoch.postcodes.is_empty() && epoch.statuses.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommittedEpoch {
    /// The epoch.
    pub epoch: Epoch,
    /// The feed's time of its snapshot, from its progress record.
    pub feed_time: Option<FeedTime>,
    /// How old the feed was when the epoch was written.
    pub feed_age_s: Option<i64>,
    /// Postcodes whose record changed: the new record, `None` when gone.
    pub postcodes: BTreeMap<String, Option<PostcodeRecord>>,
    /// Stations whose status changed: the new status, `None` when gone.
    pub statuses: BTreeMap<StationId, Option<StationStatus>>,
    /// Stations whose directory entry changed.
    pub directory: BTreeMap<StationId, Option<DirectoryEntry>>,
    /// Why stations are not known as of this epoch, if they are not.
    pub stations_note: Option<String>,
}

impl CommittedEpoch {
    /// An epoch with no change.
    pub fn empty(epoch: Epoch) -> Self {
        CommittedEpoch {
            epoch,
            ..Default::default()
        }
    }

    /// Adds `later`'s changes over these (the last write of a key wins),
    /// and takes its epoch and times.
    fn then(&mut self, later: CommittedEpoch) {
        self.epoch = later.epoch;
        self.feed_time = later.feed_time.or(self.feed_time);
        self.feed_age_s = later.feed_age_s;
        self.postcodes.extend(later.postcodes);
        self.statuses.extend(later.statuses);
        self.directory.extend(later.directory);
        self.stations_note = later.stations_note;
    }
}

/// A postcode's new record, `None` when it is gone.
type PostcodeChange = (String, Option<PostcodeRecord>);

/// A state record, as the station it changes.
#[derive(Clone, Debug)]
enum StationChange {
    Status(StationId, Option<StationStatus>),
    Directory(StationId, Option<DirectoryEntry>),
}

/// Reads whole committed epochs from an aggregator's output and state
/// topics (see the module's documentation).
pub struct CommittedReader {
    consumer: BaseConsumer,
    /// At `read_uncommitted`, only asked for high watermarks.
    ends: BaseConsumer,
    config: CommittedConfig,
    /// The state topic and its partitions, once it exists.
    state: Option<(String, i32)>,
    output: OutputEpochs<PostcodeChange>,
    output_partitions: i32,
    /// The progress record of each epoch not yet released.
    progress: BTreeMap<Epoch, EpochProgress>,
    /// State records by the epoch that set them, not yet released.
    stations: BTreeMap<Epoch, Vec<StationChange>>,
    /// Epochs whole on the output topic, waiting for the state topic.
    ready: BTreeMap<Epoch, Vec<PostcodeChange>>,
    /// The epoch whose state the reader is reading to, and the ends it must
    /// pass on the state partitions.
    state_target: Option<(Epoch, Vec<Target>)>,
    /// The ends of every partition when the reader opened: it releases
    /// nothing, then everything as one epoch, once it has passed them.
    catch_up: Option<Vec<Target>>,
    /// State records of epochs already released, for the next release.
    late_stations: Vec<StationChange>,
    /// The latest progress epoch seen on each output partition.
    progress_seen: BTreeMap<i32, Epoch>,
    released: Option<Epoch>,
    malformed: u64,
    late: u64,
    /// The partitions changed: open a new reader.
    stale_assignment: bool,
    checked_partitions: Instant,
    looked_for_state: Instant,
    last_release: Instant,
    since_warned: Instant,
}

/// A partition, and the offset a reader's position must reach on it.
type Target = (String, i32, i64);

/// How often the partitions are counted again, and a missing state topic
/// looked for.
const RECHECK: Duration = Duration::from_secs(10);
/// How long without an epoch before the reader says what it waits for.
const QUIET: Duration = Duration::from_secs(60);

impl std::fmt::Debug for CommittedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedReader")
            .field("output_topic", &self.config.output_topic)
            .field("state", &self.state)
            .field("released", &self.released)
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl CommittedReader {
    /// Connects, and waits (up to [`CommittedConfig::wait_for_topics`]) for
    /// the output topic. A state topic that does not exist then is looked
    /// for again at each epoch.
    pub fn open(config: CommittedConfig) -> Result<CommittedReader, WebError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.kafka.brokers())
            .set("group.id", "velib-live-page")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for (k, v) in config.kafka.properties() {
            client.set(k, v);
        }
        // Whatever the user's properties say: what is committed is the question.
        client.set("isolation.level", "read_committed");
        let consumer: BaseConsumer = client.create().map_err(|e| WebError::Kafka {
            what: "creating the page's consumer".into(),
            problem: e.to_string(),
        })?;
        client.set("isolation.level", "read_uncommitted");
        let ends: BaseConsumer = client.create().map_err(|e| WebError::Kafka {
            what: "creating the page's consumer".into(),
            problem: e.to_string(),
        })?;
        let deadline = Instant::now() + config.wait_for_topics;
        let output_partitions = loop {
            if let Some(n) = partitions(&consumer, &config.output_topic) {
                break n;
            }
            if Instant::now() > deadline {
                return Err(WebError::Kafka {
                    what: format!("waiting for {}", config.output_topic),
                    problem: format!(
                        "it did not appear on {} within {:?}: is the aggregator running, and is this its output topic?",
                        config.kafka.brokers(),
                        config.wait_for_topics
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let now = Instant::now();
        // The first warning is said at once.
        let long_ago = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let mut reader = CommittedReader {
            consumer,
            ends,
            state: None,
            output: OutputEpochs::new(output_partitions),
            output_partitions,
            progress: BTreeMap::new(),
            stations: BTreeMap::new(),
            ready: BTreeMap::new(),
            state_target: None,
            catch_up: None,
            late_stations: Vec::new(),
            progress_seen: BTreeMap::new(),
            released: None,
            malformed: 0,
            late: 0,
            stale_assignment: false,
            checked_partitions: now,
            looked_for_state: now,
            last_release: now,
            since_warned: long_ago,
            config,
        };
        reader.find_state_topic();
        reader.assign(output_partitions)?;
        // A topic just created has partitions whose leaders do not answer
        // yet: asked again, within the same wait.
        let catch_up = loop {
            match reader.all_ends() {
                Ok(ends) => break ends,
                Err(problem) if Instant::now() > deadline => {
                    return Err(WebError::Kafka {
                        what: "reading where the topics end".into(),
                        problem,
                    })
                }
                Err(problem) => tracing::debug!("live page: {problem}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        reader.catch_up = Some(catch_up);
        Ok(reader)
    }

    /// The high watermarks of every partition read.
    fn all_ends(&self) -> Result<Vec<Target>, String> {
        let mut ends = self.ends_of(&self.config.output_topic, self.output_partitions)?;
        if let Some((topic, n)) = &self.state {
            ends.extend(self.ends_of(topic, *n)?);
        }
        Ok(ends)
    }

    /// The high watermark of each partition of `topic` (0 for an empty one).
    fn ends_of(&self, topic: &str, partitions: i32) -> Result<Vec<Target>, String> {
        (0..partitions)
            .map(|p| {
                let (low, high) = self
                    .ends
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|e| format!("{topic}[{p}]: {e}"))?;
                Ok((topic.to_owned(), p, if high > low { high } else { 0 }))
            })
            .collect()
    }

    /// Whether the read position has passed every one of `targets`.
    fn passed(&self, targets: &[Target]) -> bool {
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        targets.iter().all(|(topic, p, end)| {
            let position = positions
                .find_partition(topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            // librdkafka's position steps over commit and abort markers.
            *end == 0 || position.is_some_and(|o| o >= *end)
        })
    }

    /// Records of epochs already released, passed over (counted apart from
    /// the malformed; state records among them go out with the next epoch).
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Whether the topics' partitions changed since the reader opened: a
    /// new reader must be opened to follow them.
    pub fn needs_reopening(&self) -> bool {
        self.stale_assignment
    }

    /// Records that could not be read (logged, and otherwise passed over).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The last epoch released.
    pub fn released(&self) -> Option<Epoch> {
        self.released
    }

    fn find_state_topic(&mut self) {
        if self.state.is_none() {
            if let Some(topic) = &self.config.state_topic {
                self.state = partitions(&self.consumer, topic).map(|n| (topic.clone(), n));
            }
        }
    }

    fn assign(&self, output_partitions: i32) -> Result<(), WebError> {
        let mut assignment = TopicPartitionList::new();
        let topics = std::iter::once((&self.config.output_topic, output_partitions))
            .chain(self.state.as_ref().map(|(t, n)| (t, *n)));
        for (topic, n) in topics {
            for p in 0..n {
                assignment
                    .add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(|e| WebError::Kafka {
                        what: format!("assigning {topic}[{p}]"),
                        problem: e.to_string(),
                    })?;
            }
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| WebError::Kafka {
                what: "assigning the page's partitions".into(),
                problem: e.to_string(),
            })
    }

    /// Reads what arrives within `timeout`, and returns the epochs it made
    /// whole, oldest first (several after a catch-up, none most calls).
    pub fn poll(&mut self, timeout: Duration) -> Vec<CommittedEpoch> {
        let mut wait = timeout;
        // Bounded, so that a backlog being read does not hold back the
        // epochs already whole.
        let mut budget = MESSAGES_PER_POLL;
        while let Some(result) = (budget > 0).then(|| self.consumer.poll(wait)).flatten() {
            wait = Duration::ZERO;
            budget -= 1;
            match result {
                // Detached: reading it changes the reader.
                Ok(message) => {
                    let message = message.detach();
                    self.read(&message);
                }
                // librdkafka retries by itself; the page waits, and says why.
                Err(e) => self.warn(&format!("reading: {e}")),
            }
        }
        if self.checked_partitions.elapsed() > RECHECK {
            self.checked_partitions = Instant::now();
            self.check_partitions();
        }
        if self.state.is_none()
            && self.config.state_topic.is_some()
            && self.looked_for_state.elapsed() > RECHECK
        {
            // Created by the aggregator after the page started: read from
            // its start, its records go out with the next epoch.
            self.looked_for_state = Instant::now();
            self.find_state_topic();
            if self.state.is_some() {
                if let Err(e) = self.assign(self.output_partitions) {
                    tracing::warn!("live page: {e}");
                    self.state = None;
                }
            }
        }
        self.ready.extend(self.output.complete());
        // Epochs with progress only (no postcode changed) are epochs too:
        // the page's epoch and feed time move on.
        if let Some(complete) = self.output.complete_through() {
            for &epoch in self.progress.range(..=complete).map(|(e, _)| e) {
                self.ready.entry(epoch).or_default();
            }
        }
        if let Some(catch_up) = &self.catch_up {
            if !self.passed(catch_up) {
                if self.last_release.elapsed() > QUIET {
                    self.warn("catching up: the topics are not read yet to the ends they had when the page opened (an open transaction holds them?)");
                }
                return Vec::new();
            }
            self.catch_up = None;
            // All of the history as one epoch: the state once caught up.
            return match self.ready.last_key_value() {
                Some((&through, _)) => self.release(through, true),
                None => Vec::new(),
            };
        }
        let Some((&through, _)) = self.ready.last_key_value() else {
            self.say_what_is_missing();
            return Vec::new();
        };
        if !self.state_read_through(through) {
            return Vec::new();
        }
        self.release(through, false)
    }

    /// Reopening is needed when a topic's partitions were added.
    fn check_partitions(&mut self) {
        let output = partitions(&self.consumer, &self.config.output_topic);
        let state = self
            .state
            .as_ref()
            .map(|(t, n)| (partitions(&self.consumer, t), *n));
        let changed = output.is_some_and(|n| n != self.output_partitions)
            || state.is_some_and(|(now, was)| now.is_some_and(|n| n != was));
        if changed && !self.stale_assignment {
            tracing::warn!(
                "live page: the partitions of {} or its state topic changed: reading them again",
                self.config.output_topic
            );
            self.stale_assignment = true;
        }
    }

    /// After a long time without an epoch, says which partitions lack progress.
    fn say_what_is_missing(&mut self) {
        if self.last_release.elapsed() < QUIET {
            return;
        }
        let Some(&newest) = self.progress_seen.values().max() else {
            return;
        };
        let behind: Vec<i32> = (0..self.output_partitions)
            .filter(|p| self.progress_seen.get(p).is_none_or(|e| *e < newest))
            .collect();
        let what = format!(
            "no whole epoch for {QUIET:?}: partitions {behind:?} of {} have no progress record of epoch {newest} yet",
            self.config.output_topic
        );
        self.warn(&what);
    }

    /// A warning, at most every 30 s (the rest at debug level).
    fn warn(&mut self, what: &str) {
        if self.since_warned.elapsed() > Duration::from_secs(30) {
            tracing::warn!("live page: {what}");
            self.since_warned = Instant::now();
        } else {
            tracing::debug!("live page: {what}");
        }
    }

    /// Whether every state record of the epochs up to `through` was read.
    fn state_read_through(&mut self, through: Epoch) -> bool {
        let Some((topic, partitions)) = self.state.clone() else {
            return true;
        };
        if self.state_target.as_ref().is_none_or(|(e, _)| *e < through) {
            // Asked after the epoch was seen whole: its state records were
            // acknowledged before its commit, so they are below these ends.
            match self.ends_of(&topic, partitions) {
                Ok(ends) => self.state_target = Some((through, ends)),
                Err(problem) => {
                    self.warn(&format!("the end of the state topic: {problem}"));
                    return false;
                }
            }
        }
        let Some((_, ends)) = &self.state_target else {
            return true;
        };
        let passed = self.passed(ends);
        if !passed && self.last_release.elapsed() > QUIET {
            self.warn(&format!(
                "epoch {through} is committed, and {topic} is not read to its end yet"
            ));
        }
        passed
    }

    /// Releases the ready epochs up to `through`, with their stations.
    /// Epochs are below [`Epoch::MAX`] (see `read`): `through + 1` is one.
    fn release(&mut self, through: Epoch, merge_all: bool) -> Vec<CommittedEpoch> {
        let later = self.ready.split_off(&(through + 1));
        let now = std::mem::replace(&mut self.ready, later);
        let mut released = Vec::new();
        let mut pending: Option<CommittedEpoch> = None;
        let mut late = std::mem::take(&mut self.late_stations);
        for (epoch, changes) in now {
            let progress = self.progress.remove(&epoch);
            let later_stations = self.stations.split_off(&(epoch + 1));
            let stations = std::mem::replace(&mut self.stations, later_stations);
            let mut this = CommittedEpoch::empty(epoch);
            this.postcodes.extend(changes);
            // Late ones first: the epoch's own changes are newer.
            let changes: Vec<StationChange> = late
                .drain(..)
                .chain(stations.into_values().flatten())
                .collect();
            for change in changes {
                match change {
                    StationChange::Status(id, status) => {
                        this.statuses.insert(id, status);
                    }
                    StationChange::Directory(id, entry) => {
                        this.directory.insert(id, entry);
                    }
                }
            }
            let own = progress.is_some();
            if let Some(progress) = progress {
                this.feed_time = progress.feed_time;
                this.feed_age_s = progress.feed_age_s;
                this.stations_note = self.stations_note(&progress);
            }
            match &mut pending {
                Some(p) => p.then(this),
                None => pending = Some(this),
            }
            // An epoch whose own progress the cleaner removed goes out with
            // the next one that has it.
            if (own && !merge_all) || epoch == through {
                released.extend(pending.take());
            }
        }
        self.progress = self.progress.split_off(&(through + 1));
        self.released = Some(through);
        self.last_release = Instant::now();
        released
    }

    /// Why the stations of the epoch of `progress` are not known, if not.
    fn stations_note(&self, progress: &EpochProgress) -> Option<String> {
        let Some(wanted) = &self.config.state_topic else {
            return Some("this page reads no state topic: stations are not shown".into());
        };
        match &progress.state {
            None => Some(format!(
                "the aggregator wrote epoch {} without its state topic (--no-state): stations are not shown",
                progress.epoch
            )),
            Some(state) if &state.topic != wanted => Some(format!(
                "the aggregator keeps its state in {}, and this page reads {wanted}: stations are not shown",
                state.topic
            )),
            Some(_) if self.state.is_none() => Some(format!("{wanted} does not exist yet")),
            Some(_) => None,
        }
    }

    fn read(&mut self, message: &OwnedMessage) {
        let epoch = header(message, EPOCH_HEADER).and_then(|e| e.parse::<Epoch>().ok());
        // The largest has no epoch after it, and no writer reaches it.
        let Some(epoch) = epoch.filter(|e| *e < Epoch::MAX) else {
            self.pass_over(message, "no epoch header, or not an epoch number");
            return;
        };
        let late = self.released.is_some_and(|r| r >= epoch);
        if message.topic() == self.config.output_topic {
            if late {
                self.late += 1;
                return;
            }
            self.read_output(message, epoch);
        } else if let Some(change) = self.read_state(message) {
            if late {
                self.late += 1;
                self.late_stations.push(change);
            } else {
                self.stations.entry(epoch).or_default().push(change);
            }
        }
    }

    fn read_output(&mut self, message: &OwnedMessage, epoch: Epoch) {
        if header(message, KIND_HEADER) == Some("progress") {
            match message
                .payload()
                .map(serde_json::from_slice::<EpochProgress>)
            {
                Some(Ok(progress)) if progress.epoch == epoch => {
                    self.output.progress(message.partition(), epoch);
                    let seen = self
                        .progress_seen
                        .entry(message.partition())
                        .or_insert(epoch);
                    *seen = (*seen).max(epoch);
                    self.progress.insert(epoch, progress);
                }
                Some(Ok(_)) => self.pass_over(
                    message,
                    "a progress record of another epoch than its header's",
                ),
                _ => self.pass_over(message, "a progress record that does not parse"),
            }
            return;
        }
        let Some(postcode) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            self.pass_over(message, "no postcode key");
            return;
        };
        let record = match message.payload() {
            None => None,
            Some(payload) => match serde_json::from_slice::<PostcodeRecord>(payload) {
                Ok(record) => Some(record),
                Err(e) => {
                    self.pass_over(message, &format!("not a postcode record: {e}"));
                    return;
                }
            },
        };
        if !self.output.record(epoch, (postcode.to_owned(), record)) {
            self.late += 1;
        }
    }

    /// The station a state record changes; `None` for another source's
    /// record, or a malformed one (passed over).
    fn read_state(&mut self, message: &OwnedMessage) -> Option<StationChange> {
        let key = message.key().unwrap_or_default();
        let Some(source) = source_of(key) else {
            self.pass_over(message, "not a state key");
            return None;
        };
        if source != self.config.status_topic && source != self.config.directory_topic {
            // Another source's state: not stations, whatever its keys.
            return None;
        }
        let Ok(id) = serde_json::from_slice::<StationId>(&key[source.len() + 1..]) else {
            self.pass_over(message, "not a station key");
            return None;
        };
        let payload = message.payload();
        if source == self.config.status_topic {
            match payload
                .map(serde_json::from_slice::<StationStatus>)
                .transpose()
            {
                Ok(status) => Some(StationChange::Status(id, status)),
                Err(e) => {
                    self.pass_over(message, &format!("not a station status: {e}"));
                    None
                }
            }
        } else {
            match payload
                .map(serde_json::from_slice::<DirectoryEntry>)
                .transpose()
            {
                Ok(entry) => Some(StationChange::Directory(id, entry)),
                Err(e) => {
                    self.pass_over(message, &format!("not a directory entry: {e}"));
                    None
                }
            }
        }
    }

    fn pass_over(&mut self, message: &OwnedMessage, why: &str) {
        self.malformed += 1;
        let what = format!(
            "{}[{}]@{}: {why}: passed over ({} so far)",
            message.topic(),
            message.partition(),
            message.offset(),
            self.malformed
        );
        self.warn(&what);
    }
}

/// The partitions of `topic`, once it exists.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Option<i32> {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|m| {
            m.topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        })
        .filter(|n| *n > 0)
}

/// The last value of header `name`, as text.
fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m str> {
    message.headers().and_then(|h| {
        h.iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}
