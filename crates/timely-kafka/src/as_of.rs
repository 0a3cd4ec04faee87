//! Where the sources of a dataflow start: the first epoch whose state the
//! topics still hold exactly, and how the records mark their epochs.
//!
//! A topic read from its start holds every epoch only while nothing has
//! been removed from it. Once the log cleaner has compacted a partition,
//! only the latest record of each key and the latest marker before the
//! cleaned offsets survive (see [`super::protocol`], "Compaction"): the
//! epochs before that marker can no longer be told apart, and the state at
//! the surviving marker may itself lack a record that a later, already
//! cleaned record replaced. The state at the partition's last marker is
//! exact, whatever the cleaner did: so a fresh reader starts there.
//!
//! [`read_as_of`] reads the start of each partition:
//! - a partition whose first marker closes only records of its own epoch is
//!   intact from that epoch: it starts there (epoch 1 for a topic that was
//!   never cleaned);
//! - a partition with records of an epoch before its first marker lost that
//!   epoch's marker: it is read to its end, and starts at its last marker.
//!
//! Markers the source refuses as forged (going back, or more than
//! [`MAX_EPOCH_GAP`] ahead) are passed over here as well.
//!
//! The sources start at the latest of these over all partitions of all
//! their topics ([`super::source::SourceConfig::as_of`]): records of earlier
//! epochs are released there, as the state they add up to, and every later
//! epoch is released as it is. On topics that were never cleaned that is
//! their first epoch, and nothing changes.
//!
//! The same read tells the records' framing: a partition whose first record
//! has no epoch headers is in the seeds' format.
//!
//! Limits, all of which a later start from the aggregator's own committed
//! state removes: a partition whose every record older than its first
//! surviving marker was replaced reads as intact from that marker, although
//! the cleaner's boundary may have fallen inside the next epoch's
//! transaction (its state then lacks the keys that epoch rewrote before the
//! boundary); a partition whose start retention deleted reads as intact
//! too; and a cleaner pass while the sources read can remove the markers
//! after the start, which the source reports.

use super::protocol::Epoch;
use super::protocol::{framing, Framed, PartitionEpochs, RecordHeaders, MAX_EPOCH_GAP};
use super::scan::{scan_topic, Scan};
use super::source::Framing;
use super::{KafkaConfig, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where sources start on their topics, as [`read_as_of`] found it.
///
/// # Examples
///
/// ```
/// use timely_kafka::as_of::StartPoint;
/// use timely_kafka::source::Framing;
///
/// let start = StartPoint::default();
/// assert_eq!(start.as_of, 0);
/// // Nothing on the topics yet: nothing to tell the framing by.
/// assert_eq!(start.framing(), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartPoint {
    /// The epoch to release the first records at (0: no partition holds a
    /// marker yet).
    pub as_of: Epoch,
    /// Partitions whose first record is in the epoch protocol.
    pub framed: Vec<(String, i32)>,
    /// Partitions whose first record has no epoch headers (the seeds'
    /// format).
    pub unframed: Vec<(String, i32)>,
    /// Partitions that lost the markers of their first epochs to the
    /// cleaner, with the epoch they start at.
    pub compacted: Vec<(String, i32, Epoch)>,
}

impl StartPoint {
    /// The framing the partitions' first records show: the epoch protocol
    /// if any partition has it, the seeds' format if every non-empty
    /// partition has that, `None` when all are empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::as_of::StartPoint;
    /// use timely_kafka::source::Framing;
    ///
    /// let mut start = StartPoint::default();
    /// start.unframed.push(("events".into(), 0));
    /// assert_eq!(start.framing(), Some(Framing::Ingestion));
    /// // One partition in the protocol is enough: unframed records there are dead letters.
    /// start.framed.push(("events".into(), 1));
    /// assert_eq!(start.framing(), Some(Framing::Epochs));
    /// ```
    pub fn framing(&self) -> Option<Framing> {
        if !self.framed.is_empty() {
            Some(Framing::Epochs)
        } else if !self.unframed.is_empty() {
            Some(Framing::Ingestion)
        } else {
            None
        }
    }
}

/// What the start of one partition has shown so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartitionStart {
    /// No record read.
    Empty,
    /// Framed records before any marker, of epochs `oldest` to `newest`.
    Open { oldest: Epoch, newest: Epoch },
    /// A marker closed only records of its own epoch: intact from there.
    Intact { first: Epoch },
    /// Records before the first marker had older epochs: read to the end,
    /// the last marker seen.
    Compacted { last: Epoch },
    /// The first record has no epoch headers.
    Unframed,
}

impl PartitionStart {
    /// Moves on with one record's framing; says whether to read on.
    ///
    /// A marker the source refuses ([`PartitionEpochs::check_marker`]:
    /// more than [`MAX_EPOCH_GAP`] past the records before it or past the
    /// last marker, or going back) is passed over here too: a forged
    /// far-future marker must not become every source's start.
    fn next(self, framed: &Framed) -> (PartitionStart, Scan) {
        use PartitionStart::*;
        match (self, framed) {
            (Empty, Framed::Unframed) => (Unframed, Scan::Done),
            (Empty, Framed::Data(stamp)) => (
                Open {
                    oldest: stamp.epoch,
                    newest: stamp.epoch,
                },
                Scan::More,
            ),
            (Open { oldest, newest }, Framed::Data(stamp)) => (
                Open {
                    oldest: oldest.min(stamp.epoch),
                    newest: newest.max(stamp.epoch),
                },
                Scan::More,
            ),
            (Empty, Framed::Marker(m)) => (Intact { first: m.epoch }, Scan::Done),
            (state @ Open { newest, .. }, Framed::Marker(m))
                if m.epoch > newest.saturating_add(MAX_EPOCH_GAP) =>
            {
                (state, Scan::More)
            }
            (Open { oldest, .. }, Framed::Marker(m)) if oldest >= m.epoch => {
                (Intact { first: m.epoch }, Scan::Done)
            }
            (Open { .. }, Framed::Marker(m)) => (Compacted { last: m.epoch }, Scan::More),
            (state @ Compacted { last }, Framed::Marker(m))
                if PartitionEpochs::<()>::resumed(last)
                    .check_marker(m)
                    .is_err() =>
            {
                (state, Scan::More)
            }
            (Compacted { .. }, Framed::Marker(m)) => (Compacted { last: m.epoch }, Scan::More),
            // Unframed records among framed ones go to the dead letters.
            (state, _) => (state, Scan::More),
        }
    }
}

/// Reads the start of every partition of `topics` (at `read_committed`,
/// unless the configuration's `-X` says otherwise) and says where sources
/// reading them must start. A partition that
/// stalls for `stall` is an error.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::as_of::read_as_of;
/// use timely_kafka::KafkaConfig;
///
/// // No broker listens there: the error says what was being done.
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = read_as_of(&kafka, &["events"], Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("events"), "{error}");
/// ```
pub fn read_as_of(
    kafka: &KafkaConfig,
    topics: &[impl AsRef<str>],
    stall: Duration,
) -> Result<StartPoint, KafkaError> {
    read_start(kafka, topics, stall, false)
}

/// Reads only the first record of every partition of `topics`, for their
/// framing ([`StartPoint::framing`]; only `framed` and `unframed` mean
/// anything then):
/// what a source resumed at committed positions needs, in the time of one
/// fetch whatever the topics hold.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::as_of::read_framing;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = read_framing(&kafka, &["events", "counters"], Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("events"), "{error}");
/// ```
pub fn read_framing(
    kafka: &KafkaConfig,
    topics: &[impl AsRef<str>],
    stall: Duration,
) -> Result<StartPoint, KafkaError> {
    read_start(kafka, topics, stall, true)
}

fn read_start(
    kafka: &KafkaConfig,
    topics: &[impl AsRef<str>],
    stall: Duration,
    first_record_only: bool,
) -> Result<StartPoint, KafkaError> {
    let metadata: BaseConsumer = kafka
        .client_config(&[])
        .create()
        .map_err(KafkaError::client(format!(
            "connecting to {}",
            kafka.brokers()
        )))?;
    let mut start = StartPoint::default();
    for topic in topics {
        let topic = topic.as_ref();
        let partitions = super::topics::partition_count(metadata.client(), topic, stall)?;
        let mut states: BTreeMap<i32, PartitionStart> = BTreeMap::new();
        scan_topic(
            kafka,
            "finding where to start",
            topic,
            partitions,
            stall,
            |message| {
                let headers = RecordHeaders::new(
                    message
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                        .unwrap_or_default(),
                );
                let state = states
                    .entry(message.partition())
                    .or_insert(PartitionStart::Empty);
                // A record that cannot be framed is the source's to report.
                let Ok(framed) = framing(&headers, message.payload()) else {
                    return Scan::More;
                };
                let (next, scan) = state.next(&framed);
                *state = next;
                if first_record_only {
                    return Scan::Done;
                }
                scan
            },
        )?;
        for (partition, state) in states {
            let at = (topic.to_owned(), partition);
            match state {
                PartitionStart::Empty => {}
                PartitionStart::Unframed => start.unframed.push(at),
                PartitionStart::Open { .. } => start.framed.push(at),
                PartitionStart::Intact { first } => {
                    start.as_of = start.as_of.max(first);
                    start.framed.push(at);
                }
                PartitionStart::Compacted { last } => {
                    start.as_of = start.as_of.max(last);
                    start.compacted.push((topic.to_owned(), partition, last));
                    start.framed.push(at);
                }
            }
        }
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EpochMarker, EpochStamp};

    fn data(epoch: Epoch) -> Framed {
        Framed::Data(EpochStamp {
            epoch,
            attempt: "a".into(),
        })
    }

    fn marker(epoch: Epoch) -> Framed {
        Framed::Marker(EpochMarker {
            epoch,
            attempt: "a".into(),
            feed_time: None,
        })
    }

    fn run(records: &[Framed]) -> PartitionStart {
        let mut state = PartitionStart::Empty;
        for record in records {
            let (next, scan) = state.next(record);
            state = next;
            if scan == Scan::Done {
                break;
            }
        }
        state
    }

    #[test]
    fn an_intact_partition_starts_at_its_first_epoch() {
        assert_eq!(
            run(&[data(1), data(1), marker(1), data(2), marker(2)]),
            PartitionStart::Intact { first: 1 }
        );
        // Only markers (an idle partition), or a start deleted by retention
        // on an epoch boundary.
        assert_eq!(
            run(&[marker(4), marker(5)]),
            PartitionStart::Intact { first: 4 }
        );
    }

    #[test]
    fn a_compacted_partition_starts_at_its_last_marker() {
        // Epochs 1 to 3 lost their markers; 4 survived, 5 and 6 are in the
        // part the cleaner has not reached.
        let records = [
            data(1),
            data(3),
            data(2),
            marker(4),
            data(5),
            marker(5),
            marker(6),
        ];
        assert_eq!(run(&records), PartitionStart::Compacted { last: 6 });
    }

    #[test]
    fn a_forged_far_future_marker_is_not_where_sources_start() {
        let far = 1_000_000_000_000;
        // Among the last markers of a compacted partition, or going back.
        let records = [data(1), marker(4), marker(far), marker(5), marker(2)];
        assert_eq!(run(&records), PartitionStart::Compacted { last: 5 });
        // As the first marker after records.
        assert_eq!(
            run(&[data(3), data(3), marker(far), marker(3)]),
            PartitionStart::Intact { first: 3 }
        );
        assert_eq!(
            run(&[data(1), data(3), marker(far), data(4), marker(4)]),
            PartitionStart::Compacted { last: 4 }
        );
        // A genuine jump, within the bound, is taken.
        assert_eq!(
            run(&[data(1), marker(1 + MAX_EPOCH_GAP)]),
            PartitionStart::Compacted {
                last: 1 + MAX_EPOCH_GAP
            }
        );
    }

    #[test]
    fn seeds_records_and_open_epochs() {
        assert_eq!(run(&[Framed::Unframed, data(1)]), PartitionStart::Unframed);
        assert_eq!(
            run(&[data(7), data(8)]),
            PartitionStart::Open {
                oldest: 7,
                newest: 8
            }
        );
        assert_eq!(run(&[]), PartitionStart::Empty);
        // An unframed record after framed ones changes nothing.
        assert_eq!(
            run(&[data(1), Framed::Unframed, marker(1)]),
            PartitionStart::Intact { first: 1 }
        );
    }

    #[test]
    fn the_framing_is_told_by_the_first_records() {
        let mut start = StartPoint::default();
        assert_eq!(start.framing(), None);
        start.unframed.push(("t".into(), 0));
        assert_eq!(start.framing(), Some(Framing::Ingestion));
        start.framed.push(("t".into(), 1));
        assert_eq!(start.framing(), Some(Framing::Epochs));
    }
}
