//! What a restarting producer reads back: the last epoch it completed and
//! the state as of that epoch, from its own topics.
//!
//! Topics are read at `isolation.level=read_committed`, through the same
//! per-partition epoch rules a reader applies ([`PartitionEpochs`], forged
//! framing refused alike, see [`PartitionEpochs::check_marker`]). The
//! result is therefore the state every reader has once it has read the same
//! records, including on a broker that shows aborted records.
//!
//! With a state topic ([`PublishedTopics::state`]: compacted, the latest
//! status of every station, written in each epoch's transaction beside the
//! status topic), the cost of a restart is that of the state, not of the
//! status topic's history: the state and directory topics are read in full
//! (both compacted), and of the status topic only the last marker of each
//! partition, backwards from its end. A state topic that does not hold the
//! same last epoch as the status topic (new, behind or ahead: an older
//! version of the producer, a topic deleted) is not trusted: the status
//! topic is then read in full once, and [`Recovered::state_repair`] says what
//! the next epoch must write to the state topic to make it whole.

use super::decode::{RawRecord, RecordDecoder};
use super::protocol::Epoch;
use super::protocol::{framing, EpochMarker, Framed, PartitionEpochs, RecordHeaders};
use super::scan::{scan_topic, Scan};
use super::{KafkaConfig, KafkaError};
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use crate::station_records::{DirectoryEntryDecoder, StationStatusDecoder};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::collections::BTreeMap;
use std::time::Duration;

/// The producer's topics, each with its partition count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTopics {
    /// Station statuses.
    pub status: (String, i32),
    /// Directory entries (compacted).
    pub directory: (String, i32),
    /// The latest status of every station (compacted), when there is one.
    pub state: Option<(String, i32)>,
}

/// What was read back.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The marker of the last epoch any partition completed; `None` when
    /// nothing was ever published.
    pub last: Option<EpochMarker>,
    /// The station statuses as of that epoch.
    pub statuses: Vec<StationStatus>,
    /// The directory as of that epoch.
    pub directory: Vec<DirectoryEntry>,
    /// The partitions that have not passed that epoch's marker: a producer
    /// died after some of its markers became visible. They must get the
    /// same marker before anything else is written, or their readers would
    /// wait for it forever.
    pub unmarked: Vec<(String, i32)>,
    /// Records read.
    pub records: u64,
    /// Records read, by topic: of the status topic, only its last records
    /// when the state topic was used.
    pub read: Vec<(String, u64)>,
    /// Records that could not be read (left out, and logged).
    pub unreadable: u64,
    /// Why the state topic was not used, when there is one and it was not.
    pub state_unused: Option<String>,
    /// When the state topic was not used: the changes that make it hold
    /// [`Recovered::statuses`] (a status, or `None` for a station it holds
    /// that is gone), to be written with the next epoch.
    pub state_repair: Vec<(StationId, Option<StationStatus>)>,
}

/// A value read back: a station's status or its directory entry.
enum Row {
    Status(Option<StationStatus>),
    Directory(Option<DirectoryEntry>),
}

/// What a topic's records are to the state read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The status topic: the statuses.
    Statuses,
    /// The directory.
    Directory,
    /// The state topic, read in full because it is not trusted: only its
    /// markers count, and its statuses are compared with the status
    /// topic's.
    UntrustedState,
}

/// Reads `topics` (name and partition count; `directory_topic` among them
/// holds directory entries, the others statuses) back in full, to their
/// current end. It fails when no record arrives for `timeout`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::kafka::recovery::recover;
/// use velib_dataflow::kafka::KafkaConfig;
///
/// // No broker listens there: the read fails within the timeout, and says
/// // what it was reading.
/// let topics = [("velib-projet".to_owned(), 3), ("velib-directory".to_owned(), 3)];
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = recover(&kafka, &topics, "velib-directory", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("velib-projet"), "{error}");
/// ```
pub fn recover(
    kafka: &KafkaConfig,
    topics: &[(String, i32)],
    directory_topic: &str,
    timeout: Duration,
) -> Result<Recovered, KafkaError> {
    let reads = topics
        .iter()
        .map(|(topic, count)| {
            let role = if topic == directory_topic {
                Role::Directory
            } else {
                Role::Statuses
            };
            read_topic(kafka, topic, *count, role, timeout)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(reads, Vec::new()).0)
}

/// Reads the producer's `topics` back: from the state topic when there is
/// one that holds the status topic's last epoch (the cost of the state),
/// otherwise the status topic in full (see the module's documentation).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::kafka::recovery::{read_back, PublishedTopics};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// let topics = PublishedTopics {
///     status: ("velib-projet".into(), 3),
///     directory: ("velib-directory".into(), 3),
///     state: Some(("velib-projet-state".into(), 3)),
/// };
/// // No broker listens there: the read fails within the timeout, and says
/// // what it was reading.
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = read_back(&kafka, &topics, Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("velib-directory"), "{error}");
/// ```
pub fn read_back(
    kafka: &KafkaConfig,
    topics: &PublishedTopics,
    timeout: Duration,
) -> Result<Recovered, KafkaError> {
    let (directory, count) = &topics.directory;
    let directory = read_topic(kafka, directory, *count, Role::Directory, timeout)?;
    let Some((state_topic, state_count)) = &topics.state else {
        let (status, count) = &topics.status;
        let status = read_topic(kafka, status, *count, Role::Statuses, timeout)?;
        return Ok(assemble(vec![status, directory], Vec::new()).0);
    };
    let state = read_topic(kafka, state_topic, *state_count, Role::Statuses, timeout)?;
    let (status_topic, status_count) = &topics.status;
    let tails = last_markers(kafka, status_topic, *status_count, timeout)?;
    let status_epoch = tails.markers.values().map(|m| m.epoch).max();
    if state.newest == status_epoch {
        return Ok(assemble(vec![state, directory], vec![tails]).0);
    }
    let why = format!(
        "{state_topic} holds epochs up to {} and {status_topic} up to {}",
        state.newest.map_or("none".into(), |e| e.to_string()),
        status_epoch.map_or("none".into(), |e| e.to_string()),
    );
    tracing::warn!(
        "the state topic is not whole ({why}): reading {status_topic} in full once; \
         the next epoch makes {state_topic} whole again"
    );
    let status = read_topic(kafka, status_topic, *status_count, Role::Statuses, timeout)?;
    let state = TopicRead {
        role: Role::UntrustedState,
        ..state
    };
    let (mut recovered, held) = assemble(vec![status, directory, state], Vec::new());
    recovered.state_unused = Some(why);
    let mut held = held.unwrap_or_default();
    for status in &recovered.statuses {
        if held.remove(&status.station_id).as_ref() != Some(status) {
            recovered
                .state_repair
                .push((status.station_id.clone(), Some(status.clone())));
        }
    }
    recovered
        .state_repair
        .extend(held.into_keys().map(|id| (id, None)));
    Ok(recovered)
}

/// The last marker of each partition of a topic, and how many records
/// finding them took.
struct Tails {
    topic: String,
    partitions: i32,
    markers: BTreeMap<i32, EpochMarker>,
    records: u64,
}

/// Reads the last marker of each of `topic`'s partitions, backwards from
/// its end.
fn last_markers(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    stall: Duration,
) -> Result<Tails, KafkaError> {
    let mut records = 0;
    let markers = super::scan::last_of(kafka, "recovery", topic, stall, |message| {
        records += 1;
        match framing(&message_headers(message), message.payload()) {
            Ok(Framed::Marker(marker)) => Some(marker),
            _ => None,
        }
    })?;
    Ok(Tails {
        topic: topic.to_owned(),
        partitions,
        markers,
        records,
    })
}

/// The state as of the last epoch: the records of `reads` each partition
/// released, plus those of the last epoch's attempt on partitions that
/// lack its marker; `tails` are partitions known only by their last
/// marker. Also returns the statuses an untrusted state topic holds.
fn assemble(
    reads: Vec<TopicRead>,
    tails: Vec<Tails>,
) -> (Recovered, Option<BTreeMap<StationId, StationStatus>>) {
    let mut out = Recovered::default();
    let last = reads
        .iter()
        .filter_map(|read| read.last.clone())
        .chain(tails.iter().flat_map(|t| t.markers.values().cloned()))
        .max_by_key(|marker| marker.epoch);
    let mut released: Vec<(Epoch, StationId, Row)> = Vec::new();
    let mut held: Option<Vec<(Epoch, StationId, Row)>> = None;
    for read in reads {
        out.records += read.records;
        out.unreadable += read.unreadable;
        out.read.push((read.topic.clone(), read.records));
        let rows = if read.role == Role::UntrustedState {
            held.get_or_insert_with(Vec::new)
        } else {
            &mut released
        };
        rows.extend(read.released);
        let Some(last) = &last else { continue };
        for (partition, mut epochs) in read.partitions.into_iter().enumerate() {
            if epochs.passed().is_some_and(|e| e >= last.epoch) {
                continue;
            }
            // This partition lacks the last epoch's marker, which the
            // producer is about to write: its readers will then apply the
            // records of the marker's attempt, and so must this state.
            let passed = epochs.marker(last);
            let holds_records = passed.as_ref().is_some_and(|p| {
                !(p.released.is_empty() && p.dropped.is_empty() && p.compacted.is_empty())
            });
            if read.role == Role::UntrustedState && !holds_records {
                // Nothing to close: the next epoch's marker, which makes the
                // state topic whole, is enough (no "partly visible" epoch).
                continue;
            }
            out.unmarked.push((read.topic.clone(), partition as i32));
            if let Some(passed) = passed {
                rows.extend(
                    passed
                        .released
                        .into_iter()
                        .map(|(id, row)| (last.epoch, id, row)),
                );
            }
        }
    }
    for tail in tails {
        out.records += tail.records;
        out.read.push((tail.topic.clone(), tail.records));
        let Some(last) = &last else { continue };
        for partition in 0..tail.partitions {
            if tail
                .markers
                .get(&partition)
                .is_none_or(|m| m.epoch < last.epoch)
            {
                // Its records of that epoch are in the state topic too,
                // written in the same transaction.
                out.unmarked.push((tail.topic.clone(), partition));
            }
        }
    }
    let (statuses, directory) = apply(released);
    out.last = last;
    out.statuses = statuses.into_values().collect();
    out.directory = directory.into_values().collect();
    (out, held.map(|rows| apply(rows).0))
}

/// The statuses and directory entries rows leave, applied in epoch order.
fn apply(
    mut rows: Vec<(Epoch, StationId, Row)>,
) -> (
    BTreeMap<StationId, StationStatus>,
    BTreeMap<StationId, DirectoryEntry>,
) {
    // Partitions are read one after another: apply in epoch order (stable,
    // so each partition's own order holds).
    rows.sort_by_key(|(epoch, _, _)| *epoch);
    let mut statuses = BTreeMap::new();
    let mut directory = BTreeMap::new();
    for (_, id, row) in rows {
        match row {
            Row::Status(Some(s)) => {
                statuses.insert(id, s);
            }
            Row::Status(None) => {
                statuses.remove(&id);
            }
            Row::Directory(Some(d)) => {
                directory.insert(id, d);
            }
            Row::Directory(None) => {
                directory.remove(&id);
            }
        }
    }
    (statuses, directory)
}

/// One topic read back.
struct TopicRead {
    topic: String,
    role: Role,
    partitions: Vec<PartitionEpochs<(StationId, Row)>>,
    released: Vec<(Epoch, StationId, Row)>,
    last: Option<EpochMarker>,
    /// The newest epoch of any marker or data record read.
    newest: Option<Epoch>,
    records: u64,
    unreadable: u64,
}

/// Reads one topic to its end. One consumer per topic, because librdkafka's
/// end-of-partition event names the partition but not the topic.
fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    count: i32,
    role: Role,
    stall: Duration,
) -> Result<TopicRead, KafkaError> {
    let mut read = TopicRead {
        topic: topic.to_owned(),
        role,
        partitions: (0..count).map(|_| PartitionEpochs::new()).collect(),
        released: Vec::new(),
        last: None,
        newest: None,
        records: 0,
        unreadable: 0,
    };
    read.records = scan_topic(kafka, "recovery", topic, count, stall, |message| {
        read_record(&mut read, message);
        Scan::More
    })?;
    Ok(read)
}

/// A message's headers, as the protocol reads them.
fn message_headers<'a>(message: &'a BorrowedMessage<'_>) -> RecordHeaders<'a> {
    RecordHeaders::new(
        message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default(),
    )
}

/// Applies one record read back to its partition's epochs.
fn read_record(read: &mut TopicRead, message: &BorrowedMessage<'_>) {
    let partition = message.partition();
    let Some(p) = usize::try_from(partition)
        .ok()
        .and_then(|i| read.partitions.get_mut(i))
    else {
        return;
    };
    let topic = read.topic.as_str();
    let record = RawRecord {
        topic,
        partition,
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
    };
    let newest = &mut read.newest;
    let framed = framing(&message_headers(message), record.value).and_then(|framed| {
        if let Framed::Data(stamp) = framed {
            let row = if read.role == Role::Directory {
                DirectoryEntryDecoder
                    .decode(&record)
                    .map(|(id, v)| (id, Row::Directory(v)))?
            } else {
                StationStatusDecoder
                    .decode(&record)
                    .map(|(id, v)| (id, Row::Status(v)))?
            };
            // Refused as a reader refuses it (forged framing).
            p.check_data(&stamp)?;
            *newest = (*newest).max(Some(stamp.epoch));
            p.data(stamp, row);
            return Ok(None);
        }
        if let Framed::Marker(marker) = &framed {
            p.check_marker(marker)?;
        }
        Ok(Some(framed))
    });
    match framed {
        Ok(Some(Framed::Marker(marker))) => {
            if let Some(passed) = p.marker(&marker) {
                read.newest = read.newest.max(Some(marker.epoch));
                read.released.extend(
                    passed
                        .released
                        .into_iter()
                        .map(|(id, row)| (marker.epoch, id, row)),
                );
                if read.last.as_ref().is_none_or(|l| l.epoch < marker.epoch) {
                    read.last = Some(marker);
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            read.unreadable += 1;
            tracing::warn!(
                "recovery: {topic}[{partition}] offset {}: left out: {e}",
                record.offset
            );
        }
    }
}
