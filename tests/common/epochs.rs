//! Writing input in the epoch protocol, as the producer does, with a plain
//! rdkafka transactional producer: records stamped with epoch and attempt,
//! and a marker on every partition closing each epoch.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::feed::{FeedTime, StationId};
use velib_dataflow::kafka::protocol::{EpochMarker, EpochStamp, MARKER_KEY};
use velib_dataflow::snapshot::EpochUpdates;
use velib_dataflow::station_records::{station_key, NORMALISED_FIELD};

pub const STATUS_TOPIC: &str = "velib-projet";
pub const DIRECTORY_TOPIC: &str = "velib-directory";

pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Whether it carries the epoch and attempt headers (false: the seeds'
    /// format).
    pub stamped: bool,
}

/// Writes epochs under the attempt id a test chooses (to script dead and
/// competing attempts), independently of the crate's own
/// `timely_kafka::epoch_writer::EpochWriter`.
pub struct ScriptedEpochWriter {
    producer: ThreadedProducer<DefaultProducerContext>,
    pub attempt: String,
    topics: Vec<(String, i32)>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl ScriptedEpochWriter {
    pub fn new(brokers: &str, attempt: &str, topics: &[(&str, i32)]) -> ScriptedEpochWriter {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // One per input: tests sharing a broker do not fence each
            // other, and a second writer of the same input fences the first.
            .set(
                "transactional.id",
                format!("test-producer-{}", topics.first().map_or("", |t| t.0)),
            )
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        producer
            .init_transactions(TIMEOUT)
            .expect("init_transactions");
        ScriptedEpochWriter {
            producer,
            attempt: attempt.to_owned(),
            topics: topics.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    pub fn begin(&self) {
        self.producer.begin_transaction().expect("begin");
    }

    pub fn send(&self, epoch: Epoch, record: &InputRecord) {
        let stamp = EpochStamp {
            epoch,
            attempt: self.attempt.clone(),
        };
        let pairs = stamp.headers();
        let mut headers = OwnedHeaders::new();
        if record.stamped {
            for (k, v) in &pairs {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
        }
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&record.topic)
            .partition(record.partition)
            .headers(headers);
        if let Some(key) = &record.key {
            out = out.key(&key[..]);
        }
        if let Some(value) = &record.value {
            out = out.payload(&value[..]);
        }
        self.producer.send(out).map_err(|(e, _)| e).expect("send");
    }

    pub fn markers(&self, epoch: Epoch, feed_time: FeedTime) {
        for (topic, partitions) in &self.topics {
            for partition in 0..*partitions {
                self.marker_on(epoch, feed_time, topic, partition);
            }
        }
    }

    /// The marker of `epoch` on one partition only.
    pub fn marker_on(&self, epoch: Epoch, feed_time: FeedTime, topic: &str, partition: i32) {
        let marker = EpochMarker {
            epoch,
            attempt: self.attempt.clone(),
            feed_time: Some(feed_time),
        };
        let value = marker.to_json();
        let mut headers = OwnedHeaders::new();
        for (k, v) in &marker.headers() {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let out: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic)
            .partition(partition)
            .key(MARKER_KEY)
            .payload(&value[..])
            .headers(headers);
        self.producer.send(out).map_err(|(e, _)| e).expect("send");
    }

    pub fn flush(&self) {
        self.producer.flush(TIMEOUT).expect("flush");
    }

    pub fn commit(&self) {
        self.producer.commit_transaction(TIMEOUT).expect("commit");
    }

    /// One whole epoch in one transaction.
    pub fn write_epoch(&self, epoch: Epoch, feed_time: FeedTime, records: &[InputRecord]) {
        self.begin();
        for record in records {
            self.send(epoch, record);
        }
        self.producer.flush(TIMEOUT).expect("flush");
        self.markers(epoch, feed_time);
        self.commit();
    }

    /// Sends `records` of `epoch` and dies before its marker and commit.
    pub fn die_mid_epoch(self, epoch: Epoch, records: &[InputRecord]) {
        self.begin();
        for record in records {
            self.send(epoch, record);
        }
        self.producer.flush(TIMEOUT).expect("flush");
        // Dropped with its transaction open: never committed.
    }
}

/// The records of one epoch of updates: each station's new status (or a
/// tombstone) on the status topic, each directory change on the directory
/// topic, on the partition `partition_of` picks.
pub fn epoch_records(
    updates: &EpochUpdates,
    with_directory: bool,
    partition_of: &dyn Fn(&StationId) -> i32,
) -> Vec<InputRecord> {
    let mut statuses: BTreeMap<StationId, Option<serde_json::Value>> = BTreeMap::new();
    for (status, diff) in &updates.statuses {
        let entry = statuses.entry(status.station_id.clone()).or_insert(None);
        if *diff > 0 {
            *entry = Some(serde_json::json!({
                "station_id": status.station_id,
                "num_bikes_available": status.bikes_available,
                NORMALISED_FIELD: { "epoch": updates.epoch, "status": status },
            }));
        }
    }
    let mut directory: BTreeMap<StationId, Option<serde_json::Value>> = BTreeMap::new();
    if with_directory {
        for (entry, diff) in &updates.directory {
            let slot = directory.entry(entry.station_id.clone()).or_insert(None);
            if *diff > 0 {
                *slot = Some(serde_json::to_value(entry).unwrap());
            }
        }
    }
    let records = |topic: &str, rows: BTreeMap<StationId, Option<serde_json::Value>>| {
        rows.into_iter()
            .map(|(id, value)| InputRecord {
                topic: topic.to_owned(),
                partition: partition_of(&id),
                key: Some(station_key(&id)),
                value: value.map(|v| serde_json::to_vec(&v).unwrap()),
                stamped: true,
            })
            .collect::<Vec<_>>()
    };
    let mut all = records(STATUS_TOPIC, statuses);
    all.extend(records(DIRECTORY_TOPIC, directory));
    all
}

/// A stable partition for a station, by its id.
pub fn by_id(partitions: i32) -> impl Fn(&StationId) -> i32 {
    move |id| {
        let text = id.to_string();
        (text
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % partitions as u32) as i32
    }
}
