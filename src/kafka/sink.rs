//! The Kafka sink operator: a keyed collection's changes, one Kafka
//! transaction per epoch.
//!
//! For each epoch, once the collection's frontier has passed it, the sink
//! consolidates the epoch's updates into one change per key
//! ([`crate::changes::key_changes`]) and writes, in one transaction: one
//! record per key whose value changed (the new value, or a tombstone when
//! the key is gone), each with the epoch in a [`EPOCH_HEADER`] header; then a
//! progress record on every partition of the topic (key [`PROGRESS_KEY`],
//! header `velib-kind: progress`, value `{"epoch": …, "progress": …}`) that
//! marks the epoch's output complete. A key whose value did not change is
//! never written.
//!
//! Every epoch goes through one transactional producer, on worker 0: an
//! epoch must be one Kafka transaction, and a transaction belongs to one
//! producer. What the sink writes is what changed, which is small next to
//! what the dataflow reads.

use super::{KafkaConfig, KafkaError, EPOCH_HEADER, KIND_HEADER, PROGRESS_KEY};
use crate::changes::{key_changes, KeyChange};
use crate::dataflow::Epoch;
use differential_dataflow::VecCollection;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// How a key and its value become a Kafka record.
pub trait RecordEncoder<K, V>: 'static {
    /// The record's key.
    fn key(&self, key: &K) -> Vec<u8>;
    /// The record's value for `key`'s new `value` at `epoch`.
    fn value(&self, key: &K, value: &V, epoch: Epoch) -> Vec<u8>;
}

/// Where and how the sink writes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// The output topic (it should exist: see [`super::topics::ensure_topics`]).
    pub topic: String,
    /// The producer's `transactional.id`: stable across restarts of the same
    /// job, so that a restarted sink fences its predecessor.
    pub transactional_id: String,
    /// How long a transaction step may take before it is retried.
    pub timeout: Duration,
}

impl SinkConfig {
    /// Writing to `topic` with `transactional.id` `transactional_id`.
    pub fn new(
        kafka: KafkaConfig,
        topic: impl Into<String>,
        transactional_id: impl Into<String>,
    ) -> Self {
        SinkConfig {
            kafka,
            topic: topic.into(),
            transactional_id: transactional_id.into(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the sink has done: the last committed epoch, or why it stopped.
///
/// Cloned handles share the state; the driver of the dataflow reads it.
#[derive(Clone, Debug, Default)]
pub struct SinkHandle {
    state: Arc<Mutex<SinkState>>,
}

#[derive(Debug, Default)]
struct SinkState {
    committed: Option<Epoch>,
    records: u64,
    error: Option<String>,
}

impl SinkHandle {
    /// The last epoch whose output is committed.
    pub fn committed(&self) -> Option<Epoch> {
        self.state.lock().map(|s| s.committed).unwrap_or(None)
    }

    /// Records written in committed epochs (progress records excluded).
    pub fn records(&self) -> u64 {
        self.state.lock().map(|s| s.records).unwrap_or(0)
    }

    /// Why the sink stopped writing, if it did (a fenced producer, a broker
    /// that refuses the topic…). It writes nothing more after an error.
    pub fn error(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.error.clone())
    }

    fn fail(&self, error: String) {
        tracing::error!("Kafka sink stopped: {error}");
        if let Ok(mut s) = self.state.lock() {
            s.error.get_or_insert(error);
        }
    }
}

/// Writes the changes of `collection` (one value per key at every time) to
/// Kafka, one transaction per epoch, and returns the stream of committed
/// epochs: an epoch appears on it once its output is committed, so a probe
/// on it measures "output committed".
///
/// `progress(epoch)` gives what the progress record says about the epoch
/// besides its number (for the aggregator: the source positions).
///
/// # Examples
///
/// A runnable example needs a broker; this one only builds the dataflow.
///
/// ```no_run
/// use differential_dataflow::input::Input;
/// use velib_dataflow::kafka::sink::{kafka_sink, RecordEncoder, SinkConfig, SinkHandle};
/// use velib_dataflow::kafka::KafkaConfig;
///
/// struct Text;
/// impl RecordEncoder<String, i64> for Text {
///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
///     fn value(&self, _: &String, value: &i64, _: u64) -> Vec<u8> { value.to_string().into_bytes() }
/// }
///
/// timely::execute_directly(|worker| {
///     let handle = SinkHandle::default();
///     let config = SinkConfig::new(KafkaConfig::new("127.0.0.1:9092"), "counts", "counts-sink");
///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, counts) = scope.new_collection::<(String, i64), isize>();
///         kafka_sink(counts, config, Text, |_| serde_json::Value::Null, handle.clone());
///         input
///     });
///     input.insert(("75016".to_string(), 12));
/// });
/// ```
pub fn kafka_sink<'s, K, V, E, P>(
    collection: VecCollection<'s, Epoch, (K, V)>,
    config: SinkConfig,
    encoder: E,
    mut progress: P,
    handle: SinkHandle,
) -> Stream<'s, Epoch, Vec<Epoch>>
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
    E: RecordEncoder<K, V>,
    P: FnMut(Epoch) -> serde_json::Value + 'static,
{
    let writer_worker = collection.inner.scope().index() == 0;
    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<Epoch>>, _, _, _>(
            Exchange::new(|_| 0),
            "KafkaSink",
            move |_capability, _info| {
                let mut writer = if writer_worker {
                    match Writer::connect(&config) {
                        Ok(w) => Some(w),
                        Err(e) => {
                            handle.fail(e.to_string());
                            None
                        }
                    }
                } else {
                    None
                };
                let mut pending: BTreeMap<Epoch, OpenEpoch<K, V>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        // Group by each update's own time: differential ships
                        // updates under coarser capabilities than their times.
                        for (kv, time, diff) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                                .1
                                .push((kv, diff));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (epoch, (capability, updates)) = entry.remove_entry();
                        let Some(w) = writer.as_mut() else { continue };
                        let changes = key_changes(updates);
                        let details = progress(epoch);
                        match w.write_epoch(&config, &encoder, epoch, &changes, &details) {
                            Ok(()) => {
                                if let Ok(mut s) = handle.state.lock() {
                                    s.committed = Some(epoch);
                                    s.records += changes.len() as u64;
                                }
                                output.session(&capability).give(epoch);
                            }
                            Err(e) => {
                                handle.fail(e.to_string());
                                writer = None;
                            }
                        }
                    }
                }
            },
        )
}

/// An epoch not yet complete: the capability to report it, and its updates.
type OpenEpoch<K, V> = (Capability<Epoch>, Vec<((K, V), isize)>);

/// The transactional producer of worker 0.
struct Writer {
    producer: ThreadedProducer<DefaultProducerContext>,
    partitions: i32,
}

/// How many times an epoch's transaction is attempted before the sink stops.
const ATTEMPTS: u32 = 5;

impl Writer {
    fn connect(config: &SinkConfig) -> Result<Self, KafkaError> {
        let timeout_ms = config.timeout.as_millis().to_string();
        let producer: ThreadedProducer<DefaultProducerContext> = config
            .kafka
            .client_config(&[
                ("transactional.id", &config.transactional_id),
                ("enable.idempotence", "true"),
                (
                    "transaction.timeout.ms",
                    &(config.timeout.as_millis() * 2).to_string(),
                ),
                ("message.timeout.ms", &timeout_ms),
            ])
            .create()
            .map_err(KafkaError::client(format!(
                "creating the producer for {}",
                config.topic
            )))?;
        producer
            .init_transactions(config.timeout)
            .map_err(KafkaError::client(format!(
                "initialising transactions as {:?}",
                config.transactional_id
            )))?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(&config.topic), config.timeout)
            .map_err(KafkaError::client(format!(
                "reading the partitions of {}",
                config.topic
            )))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .filter(|p| *p > 0)
            .ok_or_else(|| KafkaError::Topic {
                topic: config.topic.clone(),
                problem: "it does not exist or has no partitions; create it first".into(),
            })?;
        Ok(Writer {
            producer,
            partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
        })
    }

    /// Writes one epoch in one transaction, retrying the whole transaction
    /// when the broker asks for an abort or a retriable error occurs.
    fn write_epoch<K, V, E: RecordEncoder<K, V>>(
        &mut self,
        config: &SinkConfig,
        encoder: &E,
        epoch: Epoch,
        changes: &[KeyChange<K, V>],
        details: &serde_json::Value,
    ) -> Result<(), KafkaError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let Err(e) = self.try_write_epoch(config, encoder, epoch, changes, details) else {
                return Ok(());
            };
            let _ = self.producer.abort_transaction(config.timeout);
            if attempt == ATTEMPTS || is_fatal(&e) {
                return Err(KafkaError::Client {
                    context: format!(
                        "writing epoch {epoch} to {} (attempt {attempt})",
                        config.topic
                    ),
                    source: e,
                });
            }
            tracing::warn!(epoch, attempt, "epoch's transaction failed, retrying: {e}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }

    fn try_write_epoch<K, V, E: RecordEncoder<K, V>>(
        &mut self,
        config: &SinkConfig,
        encoder: &E,
        epoch: Epoch,
        changes: &[KeyChange<K, V>],
        details: &serde_json::Value,
    ) -> Result<(), RdKafkaError> {
        let epoch_text = epoch.to_string();
        let headers = || {
            OwnedHeaders::new().insert(Header {
                key: EPOCH_HEADER,
                value: Some(epoch_text.as_bytes()),
            })
        };
        self.producer.begin_transaction()?;
        for change in changes {
            let (key, value) = match change {
                KeyChange::Upsert(k, v) => (encoder.key(k), Some(encoder.value(k, v, epoch))),
                KeyChange::Delete(k) => (encoder.key(k), None),
            };
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&config.topic)
                .key(&key[..])
                .headers(headers());
            if let Some(value) = &value {
                record = record.payload(&value[..]);
            }
            self.send(record)?;
        }
        let progress = serde_json::json!({ "epoch": epoch, "progress": details }).to_string();
        for partition in 0..self.partitions {
            let headers = headers().insert(Header {
                key: KIND_HEADER,
                value: Some("progress".as_bytes()),
            });
            let record: BaseRecord<'_, str, str> = BaseRecord::to(&config.topic)
                .partition(partition)
                .key(PROGRESS_KEY)
                .payload(progress.as_str())
                .headers(headers);
            self.send(record)?;
        }
        self.producer.commit_transaction(config.timeout)
    }

    /// Sends, waiting while librdkafka's queue is full.
    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        mut record: BaseRecord<'_, K, P>,
    ) -> Result<(), RdKafkaError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

fn is_fatal(e: &RdKafkaError) -> bool {
    match e {
        RdKafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}
