//! The producer: polls a GBFS feed and publishes what changed to Kafka, one
//! atomic epoch per snapshot (see `DESIGN.md`, "Time and progress").
//!
//! Each poll goes `poll` (fetch, parse, assemble) → [`SnapshotSequencer`]
//! (refuse older or broken snapshots, skip identical ones, number the
//! epoch) → [`EpochPublisher`] (one transaction). A response that is
//! refused is logged with its reason and counted, and polling goes on.

use crate::consistency::{Inconsistencies, Named};
use crate::dataflow::Epoch;
use crate::directory::DirectoryResolver;
use crate::feed::poll as feed_poll;
use crate::feed::{FeedTime, StationStatus};
use crate::fetch::{Backoff, FetchError};
use crate::freshness::{unix_now, FeedAge, FeedWatch, StalePolicy, Turned};
use crate::kafka::publish::{EpochPublisher, PublishedTopic, PublisherConfig, StationRecord};
use crate::kafka::KafkaConfig;
use crate::kafka::KafkaError;
use crate::poll::{FeedLocation, FeedPoller, PollConfig};
use crate::postcode::PostcodeTable;
use crate::snapshot::{net_changes, EpochUpdates, SnapshotSequencer, StationSelection};
use crate::snapshot_source::{PollError, PollOutcome, PolledSnapshot, SnapshotSource};
use crate::station_records::station_value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the producer needs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::poll::{FeedLocation, VELIB_FEED};
/// use velib_dataflow::producer::ProducerConfig;
/// use velib_dataflow::snapshot::StationSelection;
///
/// let location = FeedLocation::Discover { url: VELIB_FEED.into(), language: None };
/// let mut config = ProducerConfig::new(location, KafkaConfig::new("127.0.0.1:9092"));
/// config.selection = StationSelection::only(["16107", "32017"]);
/// config.poll.interval = Some(Duration::from_secs(5));
/// config.publish.status_topic = "velib-projet".into();
/// ```
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// What to poll, and how.
    pub poll: PollConfig,
    /// The stations to keep.
    pub selection: StationSelection,
    /// Where to publish.
    pub publish: PublisherConfig,
    /// How stations get their postcodes.
    pub resolver: DirectoryResolver,
    /// The first wait after a failed poll or publish; it doubles with each
    /// failure in a row.
    pub retry_base: Duration,
    /// The longest wait after failures.
    pub retry_max: Duration,
    /// How old a station's report may be before it counts as stale, judged
    /// at each snapshot's feed time.
    pub stale: StalePolicy,
    /// How long a station must stay empty (or full) to be so "for long".
    pub long_after: Duration,
}

impl ProducerConfig {
    /// Polls `location` and publishes to the default topics on `kafka`, with
    /// the shipped Vélib' postcode table (inferring missing postcodes) and
    /// retries from 1 s doubling to 60 s.
    pub fn new(location: FeedLocation, kafka: KafkaConfig) -> Self {
        ProducerConfig {
            poll: PollConfig::new(location),
            selection: StationSelection::all(),
            publish: PublisherConfig::new(kafka),
            resolver: DirectoryResolver::new(PostcodeTable::velib(), true),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            stale: StalePolicy::default(),
            long_after: DEFAULT_LONG_AFTER,
        }
    }
}

/// Why the producer stopped.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::poll::{FeedLocation, VELIB_FEED};
/// use velib_dataflow::producer::{run, ProducerConfig, ProducerError, ProducerHandle};
///
/// let location = FeedLocation::Discover { url: VELIB_FEED.into(), language: None };
/// match run(ProducerConfig::new(location, KafkaConfig::new("127.0.0.1:9092")), ProducerHandle::default()) {
///     Ok(()) => println!("stopped"),
///     // Fenced by a newer producer, or Kafka unusable at start: retrying cannot help.
///     Err(ProducerError::Kafka(e)) => eprintln!("{e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// Kafka refused something that retrying cannot fix (at start, or a
    /// fenced producer).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The producer's thread ended without running to a stop
    /// ([`run_systems`]).
    #[error("{0}")]
    Thread(String),
}

/// What the producer did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Polls made.
    pub polls: u64,
    /// Epochs published (not counting the ones read back at start).
    pub epochs_published: u64,
    /// The last epoch published or read back.
    pub last_epoch: Epoch,
    /// Station status records published.
    pub status_records: u64,
    /// Directory records published.
    pub directory_records: u64,
    /// Snapshots identical to the last published (or `304 Not Modified`).
    pub unchanged: u64,
    /// Responses and snapshots refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Transactions that failed and were tried again.
    pub publish_retries: u64,
    /// Messages and bytes the Kafka producer sent, as librdkafka last
    /// reported them (every 5 s).
    pub kafka_sent: (u64, u64),
    /// How old the last snapshot fetched was ([`crate::freshness`]), in
    /// seconds; `None` before one, or for recorded snapshots.
    pub feed_age_seconds: Option<i64>,
    /// The last snapshot was stale: older than GBFS allows, or from the
    /// future.
    pub feed_stale: bool,
    /// Times the feed turned stale.
    pub feed_turned_stale: u64,
    /// Stations of the last snapshot whose files disagree, by kind
    /// ([`crate::consistency`]).
    pub inconsistent: BTreeMap<&'static str, u64>,
    /// The stations of the last epoch published, as it judged them.
    pub stations: StationTally,
}

/// How many stations of an epoch are empty, full, stale, empty or full for
/// long, and for how long the longest have been empty and full, at the
/// epoch's feed time: the city-wide figures of the output's per-postcode
/// fields, counted the same way.
///
/// # Examples
///
/// ```
/// use velib_dataflow::feed::{Judged, StationId, StationStatus};
/// use velib_dataflow::producer::StationTally;
///
/// let empty = StationStatus {
///     station_id: StationId::Num(1), code: None, bikes_available: 0, bike_types: None,
///     docks_available: 9, is_installed: true, is_renting: true, is_returning: true,
///     last_reported: None, judged: Judged { empty_since: Some(1_000), ..Default::default() },
///     vehicle_types: Default::default(),
/// };
/// let tally = StationTally::of([&empty], 1_600);
/// assert_eq!((tally.empty, tally.full, tally.longest_empty_seconds), (1, 0, Some(600)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StationTally {
    /// Stations installed and renting with no bike.
    pub empty: u64,
    /// Stations installed and returning with no free dock.
    pub full: u64,
    /// Stations whose last report is too old to trust.
    pub stale: u64,
    /// Empty for longer than `--long-after`.
    pub empty_long: u64,
    /// Full for longer than `--long-after`.
    pub full_long: u64,
    /// How long the station empty for the longest has been so; `None`
    /// when none is.
    pub longest_empty_seconds: Option<i64>,
    /// How long the station full for the longest has been so.
    pub longest_full_seconds: Option<i64>,
}

impl StationTally {
    /// The tally of `statuses` at feed time `now`.
    pub fn of<'a>(
        statuses: impl IntoIterator<Item = &'a StationStatus>,
        now: FeedTime,
    ) -> StationTally {
        let mut tally = StationTally::default();
        let mut earliest_empty: Option<FeedTime> = None;
        let mut earliest_full: Option<FeedTime> = None;
        for status in statuses {
            let station = crate::counts::StationCounts::of_station(status);
            let counted = station.placed(false);
            tally.empty += u64::from(counted.stations_empty > 0);
            tally.full += u64::from(counted.stations_full > 0);
            tally.stale += u64::from(station.stale);
            tally.empty_long += u64::from(station.empty_long);
            tally.full_long += u64::from(station.full_long);
            let min = |a: Option<FeedTime>, b: Option<FeedTime>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            earliest_empty = min(earliest_empty, station.counted_empty_since());
            earliest_full = min(earliest_full, station.counted_full_since());
        }
        let age = |since: FeedTime| now.saturating_sub(since).max(0);
        tally.longest_empty_seconds = earliest_empty.map(age);
        tally.longest_full_seconds = earliest_full.map(age);
        tally
    }
}

/// How long a station must stay empty or full to be so for long, by default.
pub const DEFAULT_LONG_AFTER: Duration = Duration::from_secs(30 * 60);

/// Watches and stops a running producer; clones share the state.
///
/// # Examples
///
/// ```
/// use velib_dataflow::producer::ProducerHandle;
///
/// let handle = ProducerHandle::default();
/// // Pass a clone to `producer::run`; this one watches and stops it.
/// let stats = handle.stats();
/// assert_eq!((stats.polls, stats.epochs_published), (0, 0));
/// handle.stop();
/// assert!(handle.is_stopped());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProducerHandle {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ProducerStats>>,
}

impl ProducerHandle {
    /// Asks the producer to stop; an epoch being published is finished.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> ProducerStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut ProducerStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }

    /// Sleeps for `duration`, or less if asked to stop.
    fn sleep(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.is_stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Runs the producer on the live feed of `config.poll` until
/// [`ProducerHandle::stop`], or an error that retrying cannot fix.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::poll::{FeedLocation, VELIB_FEED};
/// use velib_dataflow::producer::{run, ProducerConfig, ProducerHandle};
///
/// let location = FeedLocation::Discover { url: VELIB_FEED.into(), language: None };
/// let config = ProducerConfig::new(location, KafkaConfig::new("127.0.0.1:9092"));
/// let handle = ProducerHandle::default();
/// // Another thread may call `handle.stop()`; `handle.stats()` says what it did.
/// run(config, handle)?;
/// # Ok::<(), velib_dataflow::producer::ProducerError>(())
/// ```
pub fn run(config: ProducerConfig, handle: ProducerHandle) -> Result<(), ProducerError> {
    let poller = FeedPoller::new(config.poll.clone(), config.resolver.clone())?
        .selecting(config.selection.clone());
    run_with_source(poller, &config, handle)
}

/// Runs one producer per system, each on its own thread, with its own
/// epochs and topics ([`crate::systems`]): a feed that is slow, failing or
/// stale holds back no other system's epochs, and a producer that stops on
/// an error stops no other. Returns, once every one has stopped, how each
/// did, by name. Each thread's log lines name its system.
///
/// # Examples
///
/// ```no_run
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::poll::FeedLocation;
/// use velib_dataflow::producer::{run_systems, ProducerConfig, ProducerHandle};
///
/// let kafka = KafkaConfig::new("127.0.0.1:9092");
/// let system = |name: &str, url: &str| {
///     let location = FeedLocation::Discover { url: url.into(), language: None };
///     (name.to_owned(), ProducerConfig::new(location, kafka.clone()), ProducerHandle::default())
/// };
/// for (name, outcome) in run_systems(vec![
///     system("oslo", "https://gbfs.urbansharing.com/oslobysykkel.no/gbfs.json"),
///     system("bergen", "https://gbfs.urbansharing.com/bergenbysykkel.no/gbfs.json"),
/// ]) {
///     println!("{name}: {outcome:?}");
/// }
/// ```
pub fn run_systems(
    systems: Vec<(String, ProducerConfig, ProducerHandle)>,
) -> Vec<(String, Result<(), ProducerError>)> {
    let jobs = systems
        .into_iter()
        .map(|(name, config, handle)| (name, (config, handle)))
        .collect();
    crate::systems::run_each(
        "producer",
        jobs,
        |(config, handle)| run(config, handle),
        ProducerError::Thread,
    )
}

/// Notes a fetched snapshot's age, and says so when the feed turns stale
/// or fresh again. A stale snapshot is still published: its counts are the
/// feed's best, and the age in the logs and metrics says how far to trust
/// them.
fn watch_freshness(watch: &mut FeedWatch, age: FeedAge, handle: &ProducerHandle) {
    let turned = watch.observe(age);
    handle.count(|s| {
        s.feed_age_seconds = Some(age.seconds());
        s.feed_stale = age.is_stale();
        if turned == Some(Turned::Stale) {
            s.feed_turned_stale += 1;
        }
    });
    match turned {
        Some(Turned::Stale) => tracing::warn!(
            age_s = age.seconds(),
            "the feed is stale: its snapshot was {age} when fetched"
        ),
        Some(Turned::Fresh) => tracing::info!(
            age_s = age.seconds(),
            "the feed is fresh again: its snapshot was {age} when fetched"
        ),
        None if age.beyond_ttl() => tracing::debug!("the feed's snapshot was {age}"),
        None => {}
    }
}

/// Counts a snapshot's inconsistencies by kind, and logs each kind whose
/// stations differ from the last snapshot's (a feed that disagrees the same
/// way at every poll is said once, and again when that changes).
fn report_inconsistencies(
    last: &mut Inconsistencies,
    found: &Inconsistencies,
    handle: &ProducerHandle,
) {
    handle.count(|s| {
        s.inconsistent = found
            .kinds()
            .map(|(kind, stations)| (kind.name(), stations.len() as u64))
            .collect();
    });
    for (kind, stations) in found.kinds() {
        if last.stations(kind) != stations {
            tracing::warn!(kind = kind.name(), "{}", Named(kind, stations));
        }
    }
    for (kind, _) in last.kinds() {
        if found.count(kind) == 0 {
            tracing::info!(kind = kind.name(), "no station disagrees this way any more");
        }
    }
    *last = found.clone();
}

/// Runs the producer on snapshots from `source` (`config.poll` is not
/// used) until [`ProducerHandle::stop`], the end of the source, or an error
/// that retrying cannot fix.
pub fn run_with_source(
    mut poller: impl SnapshotSource,
    config: &ProducerConfig,
    handle: ProducerHandle,
) -> Result<(), ProducerError> {
    let observed = handle.clone();
    let (mut publisher, recovered) = EpochPublisher::connect_observed(
        config.publish.clone(),
        Some(std::sync::Arc::new(move |stats: rdkafka::Statistics| {
            observed.count(|s| {
                s.kafka_sent = (stats.txmsgs.max(0) as u64, stats.txmsg_bytes.max(0) as u64)
            })
        })),
    )?;
    let mut sequencer = match &recovered.last {
        Some(last) => {
            tracing::info!(
                epoch = last.epoch,
                stations = recovered.statuses.len(),
                directory = recovered.directory.len(),
                records = recovered.records,
                "read back what was published ({}): going on from epoch {}",
                if recovered.state_unused.is_some() {
                    "the status topic in full"
                } else if config.publish.state_topic.is_some() {
                    "from the state topic"
                } else {
                    "the status topic in full: no state topic"
                },
                last.epoch
            );
            SnapshotSequencer::resume(
                last.epoch,
                last.feed_time,
                recovered.statuses,
                recovered.directory,
            )
        }
        None => SnapshotSequencer::new(),
    }
    .judging(config.stale)
    .long_after(config.long_after);
    handle.count(|s| s.last_epoch = sequencer.last_epoch());
    let mut backoff = Backoff::new(config.retry_base, config.retry_max);
    let mut freshness = FeedWatch::default();
    let mut disagreeing = Inconsistencies::default();
    while !handle.is_stopped() {
        let started = Instant::now();
        handle.count(|s| s.polls += 1);
        let wait = match poller.poll() {
            Ok(PollOutcome::Exhausted) => {
                tracing::info!("no more snapshots: the producer stops");
                break;
            }
            Ok(PollOutcome::NotModified) => {
                tracing::debug!("not modified");
                // Still the last snapshot: it ages all the same.
                if let Some(last) = freshness.last() {
                    watch_freshness(&mut freshness, last.again(unix_now()), &handle);
                }
                handle.count(|s| s.unchanged += 1);
                backoff.reset();
                None
            }
            Ok(PollOutcome::Snapshot(polled)) => {
                backoff.reset();
                if let Some(age) = polled.age {
                    watch_freshness(&mut freshness, age, &handle);
                }
                report_inconsistencies(&mut disagreeing, &polled.inconsistencies, &handle);
                for e in [&polled.information_error, &polled.vehicle_types_error]
                    .into_iter()
                    .flatten()
                {
                    reject(&handle, e.reason(), e);
                    dead_letter(&mut publisher, e);
                }
                sequence(&mut sequencer, polled, &mut publisher, &handle, config)?;
                None
            }
            Err(e) => {
                let delay = backoff
                    .next_delay()
                    .max(e.retry_after().unwrap_or_default());
                let reason = e.reason();
                tracing::warn!(reason, "{e}; trying again in {:.1} s", delay.as_secs_f64());
                handle.count(|s| *s.rejected.entry(reason).or_default() += 1);
                dead_letter(&mut publisher, &e);
                Some(delay)
            }
        };
        handle.sleep(wait.unwrap_or_else(|| poller.interval().saturating_sub(started.elapsed())));
    }
    Ok(())
}

/// A rejected response's body goes to the dead-letter topic; failing to
/// write it is logged, never a reason to stop polling.
fn dead_letter(publisher: &mut EpochPublisher, error: &PollError) {
    if let PollError::Feed(feed_poll::PollError::Rejected { url, body, source }) = error {
        let written =
            publisher.dead_letter_response(url, body, source.reason(), &error.to_string());
        if let Err(e) = written {
            tracing::warn!("a rejected response from {url} is only logged: {e}");
        }
    }
}

fn reject(handle: &ProducerHandle, reason: &'static str, error: &dyn std::fmt::Display) {
    tracing::warn!(reason, "rejected: {error}");
    handle.count(|s| *s.rejected.entry(reason).or_default() += 1);
}

/// Sequences a polled snapshot and publishes its epoch, if it has one.
fn sequence(
    sequencer: &mut SnapshotSequencer,
    polled: PolledSnapshot,
    publisher: &mut EpochPublisher,
    handle: &ProducerHandle,
    config: &ProducerConfig,
) -> Result<(), ProducerError> {
    let started = Instant::now();
    let PolledSnapshot {
        snapshot,
        feed_fields,
        ..
    } = polled;
    let updates = match sequencer.advance(snapshot) {
        Ok(Some(updates)) => updates,
        Ok(None) => {
            tracing::debug!("snapshot identical to the last published: nothing to publish");
            handle.count(|s| s.unchanged += 1);
            return Ok(());
        }
        Err(e) => {
            reject(handle, e.reason(), &e);
            return Ok(());
        }
    };
    let records = epoch_records(&updates, &feed_fields);
    let statuses = records
        .iter()
        .filter(|r| r.topic == PublishedTopic::Status)
        .count();
    let directory = records.len() - statuses;
    // The sequencer has moved on: this epoch must be published before any
    // other, so a failed transaction is tried again until it goes through.
    let mut backoff = Backoff::new(config.retry_base, config.retry_max);
    let attempt = loop {
        match publisher.publish(updates.epoch, updates.feed_time, &records) {
            Ok(attempt) => break attempt,
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                handle.count(|s| s.publish_retries += 1);
                let delay = backoff.next_delay();
                tracing::warn!(
                    epoch = updates.epoch,
                    "publishing failed, trying again in {:.1} s: {e}",
                    delay.as_secs_f64()
                );
                handle.sleep(delay);
                if handle.is_stopped() {
                    tracing::warn!(
                        epoch = updates.epoch,
                        "stopped before the epoch could be published; a restart takes it up"
                    );
                    return Ok(());
                }
            }
        }
    };
    let bikes: u64 = sequencer
        .statuses()
        .map(|s| u64::from(s.bikes_available))
        .sum();
    tracing::info!(
        epoch = updates.epoch,
        feed_time = updates.feed_time,
        attempt,
        "epoch {} published: {statuses} stations changed, {directory} directory changes, {bikes} bikes in {} stations, {} ms",
        updates.epoch,
        sequencer.statuses().count(),
        started.elapsed().as_millis()
    );
    let tally = StationTally::of(sequencer.statuses(), updates.feed_time);
    handle.count(|s| {
        s.epochs_published += 1;
        s.last_epoch = updates.epoch;
        s.stations = tally;
        s.status_records += statuses as u64;
        s.directory_records += directory as u64;
    });
    Ok(())
}

/// The records of one epoch: each changed station's status (the feed's own
/// fields plus the normalised status) or a tombstone, and each changed
/// directory entry or a tombstone.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use velib_dataflow::feed::{gbfs, StationId};
/// use velib_dataflow::kafka::publish::PublishedTopic;
/// use velib_dataflow::producer::epoch_records;
/// use velib_dataflow::snapshot::EpochUpdates;
///
/// let old = gbfs::parse_station_record(br#"{"station_id": 7, "num_bikes_available": 2,
///     "num_docks_available": 5, "is_installed": 1, "is_renting": 1, "is_returning": 1}"#)?;
/// let new = velib_dataflow::feed::StationStatus { bikes_available: 1, ..old.clone() };
/// let updates = EpochUpdates { epoch: 2, feed_time: 60, statuses: vec![(old, -1), (new, 1)], directory: vec![] };
/// let records = epoch_records(&updates, &HashMap::new());
/// assert_eq!(records.len(), 1);
/// assert_eq!((records[0].topic, &records[0].station), (PublishedTopic::Status, &StationId::Num(7)));
/// # Ok::<(), velib_dataflow::feed::FeedError>(())
/// ```
pub fn epoch_records(
    updates: &EpochUpdates,
    feed_fields: &std::collections::HashMap<
        crate::feed::StationId,
        serde_json::Map<String, serde_json::Value>,
    >,
) -> Vec<StationRecord> {
    let statuses = net_changes(&updates.statuses)
        .into_iter()
        .map(|(station, status)| StationRecord {
            topic: PublishedTopic::Status,
            value: status.map(|s| station_value(feed_fields.get(&station), updates.epoch, s)),
            station,
        });
    let directory = net_changes(&updates.directory)
        .into_iter()
        .map(|(station, entry)| StationRecord {
            topic: PublishedTopic::Directory,
            value: entry
                .map(|e| serde_json::to_vec(e).expect("a directory entry always serialises")),
            station,
        });
    statuses.chain(directory).collect()
}
