//! What a restarting producer reads back: the last epoch it completed and
//! the state as of that epoch, from its own topics.
//!
//! The topics are read from their start to their end, with
//! `isolation.level=read_committed`, through the same per-partition epoch
//! rules a reader applies ([`PartitionEpochs`]). The result is therefore the
//! state every reader has once it has read the same records, including on a
//! broker that shows aborted records.

use super::decode::{DirectoryEntryDecoder, RawRecord, RecordDecoder, StationStatusDecoder};
use super::protocol::{framing, EpochMarker, Framed, PartitionEpochs, RecordHeaders};
use super::scan::{scan_topic, Scan};
use super::{KafkaConfig, KafkaError};
use crate::dataflow::Epoch;
use crate::directory::DirectoryEntry;
use crate::feed::{StationId, StationStatus};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Records that could not be read (left out, and logged).
    pub unreadable: u64,
}

/// A value read back: a station's status or its directory entry.
enum Row {
    Status(Option<StationStatus>),
    Directory(Option<DirectoryEntry>),
}

/// Reads `topics` (name and partition count; `directory_topic` among them
/// holds directory entries, the others statuses) back to their current end.
/// It fails when no record arrives for `timeout`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::kafka::recovery::recover;
/// use velib_dataflow::kafka::KafkaConfig;
///
/// // No broker listens there: the read stalls, and says so.
/// let topics = [("velib-projet".to_owned(), 3), ("velib-directory".to_owned(), 3)];
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = recover(&kafka, &topics, "velib-directory", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("stalled"), "{error}");
/// ```
pub fn recover(
    kafka: &KafkaConfig,
    topics: &[(String, i32)],
    directory_topic: &str,
    timeout: Duration,
) -> Result<Recovered, KafkaError> {
    let mut out = Recovered::default();
    let mut reads = Vec::new();
    for (topic, count) in topics {
        let read = read_topic(kafka, topic, *count, topic == directory_topic, timeout)?;
        out.records += read.records;
        out.unreadable += read.unreadable;
        reads.push((topic, read));
    }
    let last = reads
        .iter()
        .filter_map(|(_, read)| read.last.clone())
        .max_by_key(|marker| marker.epoch);
    let mut released: Vec<(Epoch, StationId, Row)> = Vec::new();
    for (topic, read) in reads {
        released.extend(read.released);
        let Some(last) = &last else { continue };
        for (partition, mut epochs) in read.partitions.into_iter().enumerate() {
            if epochs.passed().is_some_and(|e| e >= last.epoch) {
                continue;
            }
            // This partition lacks the last epoch's marker, which the
            // producer is about to write: its readers will then apply the
            // records of the marker's attempt, and so must this state.
            out.unmarked.push((topic.clone(), partition as i32));
            if let Some(passed) = epochs.marker(last) {
                released.extend(
                    passed
                        .released
                        .into_iter()
                        .map(|(id, row)| (last.epoch, id, row)),
                );
            }
        }
    }
    // Partitions are read one after another: apply in epoch order (stable,
    // so each partition's own order holds).
    released.sort_by_key(|(epoch, _, _)| *epoch);
    let mut statuses: BTreeMap<StationId, StationStatus> = BTreeMap::new();
    let mut directory: BTreeMap<StationId, DirectoryEntry> = BTreeMap::new();
    for (_, id, row) in released {
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
    out.last = last;
    out.statuses = statuses.into_values().collect();
    out.directory = directory.into_values().collect();
    Ok(out)
}

/// One topic read back.
struct TopicRead {
    partitions: Vec<PartitionEpochs<(StationId, Row)>>,
    released: Vec<(Epoch, StationId, Row)>,
    last: Option<EpochMarker>,
    records: u64,
    unreadable: u64,
}

/// Reads one topic to its end. One consumer per topic, because librdkafka's
/// end-of-partition event names the partition but not the topic.
fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    count: i32,
    directory: bool,
    stall: Duration,
) -> Result<TopicRead, KafkaError> {
    let mut read = TopicRead {
        partitions: (0..count).map(|_| PartitionEpochs::new()).collect(),
        released: Vec::new(),
        last: None,
        records: 0,
        unreadable: 0,
    };
    read.records = scan_topic(kafka, "recovery", topic, count, stall, |message| {
        read_record(&mut read, topic, directory, message);
        Scan::More
    })?;
    Ok(read)
}

/// Applies one record read back to its partition's epochs.
fn read_record(read: &mut TopicRead, topic: &str, directory: bool, message: &BorrowedMessage<'_>) {
    let partition = message.partition();
    let Some(p) = usize::try_from(partition)
        .ok()
        .and_then(|i| read.partitions.get_mut(i))
    else {
        return;
    };
    let pairs: Vec<(&str, Option<&[u8]>)> = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    let record = RawRecord {
        topic,
        partition,
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
    };
    let framed = framing(&RecordHeaders::new(pairs), record.value).and_then(|framed| {
        if let Framed::Data(stamp) = framed {
            let row = if directory {
                DirectoryEntryDecoder
                    .decode(&record)
                    .map(|(id, v)| (id, Row::Directory(v)))?
            } else {
                StationStatusDecoder
                    .decode(&record)
                    .map(|(id, v)| (id, Row::Status(v)))?
            };
            p.data(stamp, row);
            return Ok(None);
        }
        Ok(Some(framed))
    });
    match framed {
        Ok(Some(Framed::Marker(marker))) => {
            if let Some(passed) = p.marker(&marker) {
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
