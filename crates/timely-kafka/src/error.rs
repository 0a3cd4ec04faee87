/// A Kafka operation that failed, with what was being done.
///
/// # Examples
///
/// ```
/// use timely_kafka::{KafkaConfig, KafkaError};
///
/// let error = KafkaConfig::new("127.0.0.1:9092").with_property("security.protocol").unwrap_err();
/// assert!(matches!(error, KafkaError::BadProperty(_)));
/// assert!(!error.is_fatal());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// A `-X` property is not `key=value`.
    #[error("librdkafka property {0:?}: expected key=value")]
    BadProperty(String),
    /// A `-X` property the guarantees rest on, which a user cannot set.
    #[error("librdkafka property {key:?} cannot be set: {why}")]
    ProtectedProperty {
        /// The property.
        key: String,
        /// What it is set to, and why.
        why: &'static str,
    },
    /// librdkafka refused or failed an operation.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic cannot be used as it is.
    #[error("topic {topic}: {problem}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong, and what to do about it.
        problem: String,
    },
}

impl KafkaError {
    /// Turns an rdkafka error into [`KafkaError::Client`] saying what was
    /// being done (`context`): for `map_err`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::KafkaError;
    ///
    /// let failed: Result<(), rdkafka::error::KafkaError> = Err(rdkafka::error::KafkaError::Canceled);
    /// let error = failed.map_err(KafkaError::client("flushing events")).unwrap_err();
    /// assert!(error.to_string().starts_with("flushing events: "), "{error}");
    /// ```
    pub fn client(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| KafkaError::Client { context, source }
    }
}

impl KafkaError {
    /// Whether retrying cannot help: the producer was fenced by a newer one
    /// with the same `transactional.id`, or is not authorised. (Another
    /// error librdkafka calls fatal is got past with a new producer.)
    ///
    /// # Examples
    ///
    /// ```
    /// use rdkafka::{error::KafkaError as RdKafkaError, types::RDKafkaErrorCode};
    /// use timely_kafka::KafkaError;
    ///
    /// // A broker that does not answer: a later try, or a new producer, may succeed.
    /// let timed_out = Err::<(), _>(RdKafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
    /// let error = timed_out.map_err(KafkaError::client("flushing events")).unwrap_err();
    /// assert!(!error.is_fatal());
    /// assert!(!KafkaError::BadProperty("acks".into()).is_fatal());
    /// ```
    pub fn is_fatal(&self) -> bool {
        matches!(self, KafkaError::Client { source, .. } if super::transaction::is_fatal(source))
    }
}
