//! Where the brokers are and how to talk to them.

use super::KafkaError;
use rdkafka::ClientConfig;

/// Brokers and librdkafka properties (TLS, SASL, timeouts…), passed through
/// as kcat's `-X key=value` does.
///
/// # Examples
///
/// ```
/// use timely_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("127.0.0.1:9092")
///     .with_property("security.protocol=SASL_SSL")?
///     .with_property("sasl.mechanism=PLAIN")?;
/// assert_eq!(config.properties().len(), 2);
/// assert!(KafkaConfig::new("x").with_property("no-equals-sign").is_err());
/// # Ok::<(), timely_kafka::KafkaError>(())
/// ```
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    brokers: String,
    properties: Vec<(String, String)>,
    read_uncommitted: bool,
}

/// Properties the exactly-once guarantees rest on: set by each client for
/// its role, never by `-X`.
const PROTECTED: [(&str, &str); 8] = [
    (
        "isolation.level",
        "read_committed, so that no aborted record is read \
         (KafkaConfig::read_uncommitted shows them, for testing the epoch protocol)",
    ),
    (
        "transactional.id",
        "each writer has its own (--transactional-id for the producer and the aggregator)",
    ),
    (
        "enable.idempotence",
        "true: transactions need an idempotent producer",
    ),
    (
        "acks",
        "all: an idempotent producer needs every replica's ack",
    ),
    (
        "enable.auto.commit",
        "false: positions are committed in the output's transaction, not by the consumer",
    ),
    (
        "enable.auto.offset.store",
        "false: positions are committed in the output's transaction, not by the consumer",
    ),
    (
        "enable.partition.eof",
        "set by each reader: the end of a partition is how it knows it is caught up",
    ),
    (
        "auto.offset.reset",
        "earliest: a position out of range must not skip records",
    ),
];

impl KafkaConfig {
    /// Brokers as `HOST:PORT[,HOST:PORT…]`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaConfig;
    ///
    /// // Nothing connects until a client is built from it.
    /// let config = KafkaConfig::new("broker-1:9092,broker-2:9092");
    /// assert_eq!(config.brokers(), "broker-1:9092,broker-2:9092");
    /// assert!(config.properties().is_empty());
    /// ```
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            properties: Vec::new(),
            read_uncommitted: false,
        }
    }

    /// Adds a `key=value` librdkafka property; later ones win. The
    /// properties the guarantees rest on (`isolation.level`,
    /// `transactional.id`, `enable.idempotence`, `acks`, the consumers'
    /// offset handling) are refused with [`KafkaError::ProtectedProperty`].
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::{KafkaConfig, KafkaError};
    ///
    /// let error = KafkaConfig::new("x").with_property("isolation.level=read_uncommitted").unwrap_err();
    /// assert!(matches!(error, KafkaError::ProtectedProperty { .. }));
    /// assert!(error.to_string().contains("read_committed"), "{error}");
    /// ```
    pub fn with_property(mut self, key_value: &str) -> Result<Self, KafkaError> {
        let (key, value) = key_value
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| KafkaError::BadProperty(key_value.to_owned()))?;
        if let Some((key, why)) = PROTECTED.iter().find(|(k, _)| *k == key.trim()) {
            return Err(KafkaError::ProtectedProperty {
                key: (*key).to_owned(),
                why,
            });
        }
        self.properties
            .push((key.trim().to_owned(), value.to_owned()));
        Ok(self)
    }

    /// The same, with the sources reading at `read_uncommitted`: they are
    /// shown the records of aborted transactions, as some Kafka-compatible
    /// services show them to every reader, and the epoch protocol must leave
    /// them out. For testing that; what was committed (the output's progress,
    /// the state) is still read at `read_committed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = KafkaConfig::new("127.0.0.1:9092").read_uncommitted();
    /// // Only consumers, which ask for an isolation level, read uncommitted.
    /// let consumer = config.client_config(&[("isolation.level", "read_committed")]);
    /// assert_eq!(consumer.get("isolation.level"), Some("read_uncommitted"));
    /// assert_eq!(config.client_config(&[]).get("isolation.level"), None);
    /// ```
    pub fn read_uncommitted(mut self) -> Self {
        self.read_uncommitted = true;
        self
    }

    /// The brokers.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaConfig;
    ///
    /// assert_eq!(KafkaConfig::new("127.0.0.1:9092").brokers(), "127.0.0.1:9092");
    /// ```
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The properties, in the order given.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = KafkaConfig::new("x").with_property("linger.ms=5")?.with_property("linger.ms=10")?;
    /// // Both kept in order; the later wins when a client is configured.
    /// assert_eq!(config.properties()[1], ("linger.ms".to_owned(), "10".to_owned()));
    /// assert_eq!(config.client_config(&[]).get("linger.ms"), Some("10"));
    /// # Ok::<(), timely_kafka::KafkaError>(())
    /// ```
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// A librdkafka configuration: the brokers, then the user's properties
    /// (which may override anything set before them).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaConfig;
    ///
    /// let config = KafkaConfig::new("127.0.0.1:9092").with_property("linger.ms=50")?;
    /// // The user's properties override the defaults given here.
    /// let client = config.client_config(&[("linger.ms", "5"), ("acks", "all")]);
    /// assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    /// assert_eq!((client.get("linger.ms"), client.get("acks")), (Some("50"), Some("all")));
    /// # Ok::<(), timely_kafka::KafkaError>(())
    /// ```
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Only for a consumer: a producer would warn of a consumer property.
        if self.read_uncommitted && defaults.iter().any(|(k, _)| *k == "isolation.level") {
            config.set("isolation.level", "read_uncommitted");
        }
        config
    }
}

/// The librdkafka context of this crate's clients. For consumers, the end
/// of a partition is how they learn they are caught up, not an error, so it
/// is not logged as one (librdkafka's default context logs it at error
/// level).
///
/// With `on_stats`, it also hands librdkafka's statistics (emitted every
/// `statistics.interval.ms`) to it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use rdkafka::consumer::BaseConsumer;
/// use timely_kafka::config::KafkaContext;
/// use timely_kafka::KafkaConfig;
///
/// let on_stats = Arc::new(|stats: rdkafka::Statistics| println!("{} messages queued", stats.msg_cnt));
/// let context = KafkaContext { on_stats: Some(on_stats) };
/// assert_eq!(format!("{context:?}"), "KafkaContext { .. }");
/// // Building a client does not connect; statistics come every interval once it runs.
/// let config = KafkaConfig::new("127.0.0.1:9").client_config(&[("statistics.interval.ms", "1000")]);
/// let _consumer: BaseConsumer<KafkaContext> = config.create_with_context(context)?;
/// # Ok::<(), rdkafka::error::KafkaError>(())
/// ```
#[derive(Clone, Default)]
pub struct KafkaContext {
    /// Receives librdkafka's statistics, when set.
    pub on_stats: Option<std::sync::Arc<dyn Fn(rdkafka::Statistics) + Send + Sync>>,
}

impl std::fmt::Debug for KafkaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaContext").finish_non_exhaustive()
    }
}

impl rdkafka::ClientContext for KafkaContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(on_stats) = &self.on_stats {
            on_stats(statistics);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match error {
            rdkafka::error::KafkaError::PartitionEOF(_)
            | rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!("{reason}")
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for KafkaContext {}

impl rdkafka::producer::ProducerContext for KafkaContext {
    type DeliveryOpaque = ();
    // Failed deliveries fail the transaction's commit, where they are handled.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}
