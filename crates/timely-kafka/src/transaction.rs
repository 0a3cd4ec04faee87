//! The transactional producer both writers use: the producer publishing
//! input epochs and the sink writing output epochs.

use super::config::KafkaContext;
use super::{KafkaConfig, KafkaError};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// An idempotent producer with a `transactional.id`, its transactions
/// initialised (which fences any older producer with the same id and aborts
/// its open transaction).
///
/// When librdkafka declares the producer unusable for a reason other than
/// a fencing (see [`is_fatal`]), the next [`Self::begin`] replaces it with a
/// new one as the same `transactional.id`, as a restarted process would.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use rdkafka::producer::BaseRecord;
/// use timely_kafka::transaction::TransactionalProducer;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9092");
/// let mut producer = TransactionalProducer::connect(&kafka, "my-job", Duration::from_secs(30))?;
/// producer.begin()?;
/// producer.send(BaseRecord::<str, str>::to("events").key("k").payload("v"))?;
/// // A commit that times out goes on in the background: `commit` resumes
/// // it rather than aborting a transaction the broker may complete.
/// producer.commit()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Without a broker, connecting fails within the timeout and says so:
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::transaction::TransactionalProducer;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = TransactionalProducer::connect(&kafka, "my-job", Duration::from_secs(1)).unwrap_err();
/// assert!(!error.is_fatal(), "{error}");
/// ```
pub struct TransactionalProducer {
    producer: ThreadedProducer<KafkaContext>,
    timeout: Duration,
    kafka: KafkaConfig,
    transactional_id: String,
    context: KafkaContext,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TransactionalProducer {
    /// Connects as `transactional_id`; `timeout` bounds each broker round
    /// trip (initialising, committing, reading metadata).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let kafka = KafkaConfig::new("127.0.0.1:9");
    /// let error = TransactionalProducer::connect(&kafka, "counters-writer", Duration::from_secs(1)).unwrap_err();
    /// // It says which id it could not initialise, and where.
    /// assert!(error.to_string().contains(r#"initialising transactions as "counters-writer" on 127.0.0.1:9"#), "{error}");
    /// ```
    pub fn connect(
        kafka: &KafkaConfig,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        Self::connect_with(kafka, transactional_id, timeout, KafkaContext::default())
    }

    /// As [`Self::connect`], handing librdkafka's statistics (every 5 s) to
    /// the context's callback.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use timely_kafka::config::KafkaContext;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let context = KafkaContext { on_stats: Some(Arc::new(|s: rdkafka::Statistics| println!("{} bytes sent", s.tx_bytes))) };
    /// let kafka = KafkaConfig::new("127.0.0.1:9");
    /// let error = TransactionalProducer::connect_with(&kafka, "counters-writer", Duration::from_secs(1), context).unwrap_err();
    /// assert!(!error.is_fatal(), "{error}");
    /// ```
    pub fn connect_with(
        kafka: &KafkaConfig,
        transactional_id: &str,
        timeout: Duration,
        context: KafkaContext,
    ) -> Result<Self, KafkaError> {
        let producer = Self::create(kafka, transactional_id, timeout, context.clone())?;
        Ok(TransactionalProducer {
            producer,
            timeout,
            kafka: kafka.clone(),
            transactional_id: transactional_id.to_owned(),
            context,
        })
    }

    /// A new librdkafka producer as `transactional_id`, its transactions
    /// initialised.
    fn create(
        kafka: &KafkaConfig,
        transactional_id: &str,
        timeout: Duration,
        context: KafkaContext,
    ) -> Result<ThreadedProducer<KafkaContext>, KafkaError> {
        let timeout_ms = timeout.as_millis().to_string();
        let interval = if context.on_stats.is_some() {
            "5000"
        } else {
            "0"
        };
        let producer: ThreadedProducer<KafkaContext> = kafka
            .client_config(&[
                ("statistics.interval.ms", interval),
                ("transactional.id", transactional_id),
                ("enable.idempotence", "true"),
                (
                    "transaction.timeout.ms",
                    &(timeout.as_millis() * 2).to_string(),
                ),
                ("message.timeout.ms", &timeout_ms),
            ])
            .create_with_context(context)
            .map_err(KafkaError::client(format!(
                "creating a producer for {}",
                kafka.brokers()
            )))?;
        producer
            .init_transactions(timeout)
            .map_err(KafkaError::client(format!(
                "initialising transactions as {transactional_id:?} on {}",
                kafka.brokers()
            )))?;
        Ok(producer)
    }

    /// How many partitions `topic` has; an error when it does not exist.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// // One marker per partition closes an epoch: the writer must know them all.
    /// let partitions = producer.partitions("events")?;
    /// assert!(partitions > 0);
    /// # Ok::<(), timely_kafka::KafkaError>(())
    /// ```
    pub fn partitions(&self, topic: &str) -> Result<i32, KafkaError> {
        super::topics::partition_count(self.producer.client(), topic, self.timeout)
    }

    /// Begins a transaction; first replaces the producer if librdkafka
    /// gave up on it for a reason other than a fencing.
    ///
    /// Such an error is, for instance, the broker's `INVALID_TXN_STATE`
    /// answer to the abort of a transaction whose records timed out while
    /// the broker was away and whose partitions it never registered
    /// (librdkafka 2.12 with Apache Kafka 3.9: a broker killed mid-epoch
    /// and back after `message.timeout.ms`). No epoch was committed by the
    /// failed tries (a commit fails only when the broker refused it, see
    /// [`Self::commit`]), so the new producer writes it again.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// producer.send(BaseRecord::<str, str>::to("counters").key("a").payload("1"))?;
    /// producer.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin(&mut self) -> Result<(), RdKafkaError> {
        self.replace_if_given_up()?;
        self.producer.begin_transaction()
    }

    /// Whether librdkafka gave up on this producer (a fatal error), so
    /// that [`Self::begin`] will replace it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::{is_fatal, TransactionalProducer};
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// producer.send(BaseRecord::<str, str>::to("counters").key("a").payload("1"))?;
    /// if let Err(e) = producer.commit() {
    ///     // Not fenced, but librdkafka gave up: the next `begin` starts a new producer.
    ///     if !is_fatal(&e) && producer.given_up() {
    ///         producer.begin()?;
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn given_up(&self) -> bool {
        self.producer.client().fatal_error().is_some()
    }

    /// The cluster and `transactional.id` it writes as.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// // Read back from the same cluster, with the same properties.
    /// assert_eq!(producer.kafka().brokers(), "127.0.0.1:9092");
    /// # Ok::<(), timely_kafka::KafkaError>(())
    /// ```
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// Replaces the producer if librdkafka gave up on it for a reason other
    /// than a fencing (see [`Self::begin`]). The new producer's
    /// initialisation completes or aborts what the old one left open.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// // Before reading back what the last transaction left, rather than at the next `begin`.
    /// producer.replace_if_given_up()?;
    /// assert!(!producer.given_up());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replace_if_given_up(&mut self) -> Result<(), RdKafkaError> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            if !is_final(code) {
                tracing::warn!(
                    "librdkafka gave up on the producer ({code:?}: {reason}): \
                     a new one takes over as {:?}",
                    self.transactional_id
                );
                self.producer = Self::create(
                    &self.kafka,
                    &self.transactional_id,
                    self.timeout,
                    self.context.clone(),
                )
                .map_err(|e| match e {
                    KafkaError::Client { source, .. } => source,
                    other => RdKafkaError::ClientCreation(other.to_string()),
                })?;
            }
        }
        Ok(())
    }

    /// Waits for every record sent to be acknowledged.
    /// Waits until every record sent is acknowledged, within the timeout.
    ///
    /// Not rdkafka's `flush`: in rdkafka 0.39 it serves librdkafka's events
    /// with a poll that always waits its whole 100 ms, so every flush (and
    /// every commit, which flushes first) cost at least 100 ms, most of an
    /// small epoch's latency. This asks librdkafka without
    /// waiting, and looks again shortly; the producer's own thread serves
    /// the events meanwhile.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// producer.send(BaseRecord::<str, str>::to("events").key("a").payload("1"))?;
    /// // Every record acknowledged: a failed delivery shows here, before the commit.
    /// producer.flush()?;
    /// producer.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> Result<(), RdKafkaError> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Err(RdKafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_micros(500));
                }
                result => return result,
            }
        }
    }

    /// Commits the open transaction, and says how it ended.
    ///
    /// A commit librdkafka could not finish within the timeout (its
    /// `EndTxn` sent but not answered: a broker restarting, a coordinator
    /// loading or moving) goes on in the background, and librdkafka then
    /// refuses every other transactional call, an abort or the next
    /// transaction included ("Conflicting commit_transaction API call is
    /// already in progress"), until the application calls commit again to
    /// learn its outcome. So a retriable error is resumed here until the
    /// commit succeeds or fails for good (an abortable or fatal error).
    /// Aborting instead would fail, as would every later transaction,
    /// while the commit could well complete in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// producer.send(BaseRecord::<str, str>::to("events").key("a").payload("1"))?;
    /// // Either every record of the transaction is visible at read_committed, or none.
    /// if producer.commit().is_err() {
    ///     producer.abort();
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(&self) -> Result<(), RdKafkaError> {
        // Drained first, commit_transaction's own flush returns at once.
        self.flush()?;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Err(RdKafkaError::Transaction(e))
                    if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal() =>
                {
                    tracing::warn!("the transaction's commit is not done yet, resuming it: {e}");
                }
                result => return result,
            }
        }
    }

    /// Aborts the open transaction, if any; a failure to abort is only
    /// logged: an abort that timed out goes on in the background, the next
    /// `begin` fails until it is done, and the abort that follows that
    /// failure resumes it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::TransactionalProducer;
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// producer.send(BaseRecord::<str, str>::to("events").key("a").payload("half an epoch"))?;
    /// // Readers at read_committed never see it.
    /// producer.abort();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abort(&self) {
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            tracing::debug!("aborting the transaction: {e}");
        }
    }

    /// Sends, waiting while librdkafka's queue is full.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rdkafka::producer::BaseRecord;
    /// use timely_kafka::transaction::{owned_headers, TransactionalProducer};
    /// use timely_kafka::KafkaConfig;
    ///
    /// let mut producer = TransactionalProducer::connect(&KafkaConfig::new("127.0.0.1:9092"), "job", Duration::from_secs(30))?;
    /// producer.begin()?;
    /// // However many records, none is refused for a full queue: `send` waits instead.
    /// for i in 0..1_000_000 {
    ///     let headers = owned_headers(&[("n", i.to_string())]);
    ///     producer.send(BaseRecord::<str, str>::to("events").key("a").payload("1").headers(headers))?;
    /// }
    /// producer.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
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

/// Whether a producer error ends the producer for good: fenced by a newer
/// producer with the same `transactional.id`, or not authorised. Any other
/// error librdkafka calls fatal is not: the next
/// [`TransactionalProducer::begin`] replaces the producer.
///
/// # Examples
///
/// ```
/// use rdkafka::error::KafkaError as RdKafkaError;
/// use rdkafka::types::RDKafkaErrorCode;
/// use timely_kafka::transaction::is_fatal;
///
/// // A delivery that timed out while a broker was away: try the epoch again.
/// assert!(!is_fatal(&RdKafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
/// assert!(!is_fatal(&RdKafkaError::Canceled));
/// ```
pub fn is_fatal(e: &RdKafkaError) -> bool {
    match e {
        RdKafkaError::Transaction(t) => t.is_fatal() && is_final(t.code()),
        _ => false,
    }
}

/// Whether a fatal error of librdkafka's is one a new producer must not
/// get past: another producer took over the `transactional.id` (replacing
/// this one would fence it in turn), or the cluster refuses this one.
fn is_final(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Record headers from `(name, value)` pairs.
///
/// # Examples
///
/// ```
/// use rdkafka::message::Headers;
/// use timely_kafka::protocol::EpochStamp;
/// use timely_kafka::transaction::owned_headers;
///
/// let headers = owned_headers(&EpochStamp { epoch: 3, attempt: "a".into() }.headers());
/// assert_eq!(headers.count(), 2);
/// assert_eq!(headers.get(0).value, Some(b"3".as_slice()));
/// ```
pub fn owned_headers(pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |headers, (k, v)| {
        headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    })
}
