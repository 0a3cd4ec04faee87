//! Creating the topics a job needs, and checking the ones that exist.

use super::{KafkaConfig, KafkaError};
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How often a state changelog's segments roll (`segment.ms`, one hour):
/// the log cleaner compacts only rolled segments, so this bounds what a
/// restart reads beyond the state itself to about an hour of changes
/// (Kafka's default, seven days, would let it grow to a week's).
///
/// # Examples
///
/// ```
/// use timely_kafka::topics::{TopicSpec, CHANGELOG_SEGMENT_MS};
///
/// let spec = TopicSpec::new("counters-state", 3).changelog();
/// assert!(spec.configs.contains(&("segment.ms".to_owned(), CHANGELOG_SEGMENT_MS.to_owned())));
/// ```
pub const CHANGELOG_SEGMENT_MS: &str = "3600000";

/// A topic as a job wants it.
///
/// # Examples
///
/// ```
/// use timely_kafka::topics::TopicSpec;
///
/// let spec = TopicSpec::new("entities", 3).compacted().replication(3);
/// assert!(spec.compacted);
/// assert_eq!((spec.partitions, spec.replication), (3, 3));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Partitions, when created.
    pub partitions: i32,
    /// Replication factor, when created.
    pub replication: i32,
    /// Whether it must be compacted (`cleanup.policy=compact`): the output
    /// and directory topics, so that they always hold the current state.
    pub compacted: bool,
    /// Further topic configuration set when it is created (`segment.ms`…);
    /// an existing topic's is left as it is.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions, replication 1, not compacted.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::topics::TopicSpec;
    ///
    /// let spec = TopicSpec::new("events", 6);
    /// assert_eq!((spec.partitions, spec.replication, spec.compacted), (6, 1, false));
    /// ```
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: 1,
            compacted: false,
            configs: Vec::new(),
        }
    }

    /// The same topic, created with the topic configuration `key=value`.
    /// A key set twice takes the later value.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::topics::TopicSpec;
    ///
    /// let spec = TopicSpec::new("events", 3).config("retention.ms", "3600000").config("retention.ms", "60000");
    /// assert_eq!(spec.configs, [("retention.ms".to_owned(), "60000".to_owned())]);
    /// ```
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.configs.retain(|(k, _)| k != key);
        self.configs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The same topic, compacted, as a state changelog: its segments roll
    /// every [`CHANGELOG_SEGMENT_MS`].
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::topics::TopicSpec;
    ///
    /// let spec = TopicSpec::new("counts-state", 3).changelog();
    /// assert!(spec.compacted);
    /// assert_eq!(spec.configs, [("segment.ms".to_owned(), "3600000".to_owned())]);
    /// ```
    pub fn changelog(self) -> Self {
        self.compacted().config("segment.ms", CHANGELOG_SEGMENT_MS)
    }

    /// The same topic, compacted.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::topics::TopicSpec;
    ///
    /// // An output topic: only its latest record per key matters.
    /// assert!(TopicSpec::new("counters", 3).compacted().compacted);
    /// ```
    pub fn compacted(mut self) -> Self {
        self.compacted = true;
        self
    }

    /// The same topic, with this replication factor.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::topics::TopicSpec;
    ///
    /// assert_eq!(TopicSpec::new("events", 3).replication(3).replication, 3);
    /// ```
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }
}

/// What [`ensure_topics`] found or did for one topic.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use timely_kafka::topics::{ensure_topics, TopicOutcome, TopicSpec};
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9092");
/// for (topic, outcome) in ensure_topics(&kafka, &[TopicSpec::new("events", 3)], Duration::from_secs(30))? {
///     match outcome {
///         TopicOutcome::Created => println!("{topic}: created"),
///         TopicOutcome::Exists { partitions } => println!("{topic}: {partitions} partitions"),
///         _ => {}
///     }
/// }
/// # Ok::<(), timely_kafka::KafkaError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicOutcome {
    /// It was missing and has been created.
    Created,
    /// It exists with this many partitions, and its settings fit.
    Exists {
        /// Its partition count.
        partitions: usize,
    },
}

/// Creates the topics of `specs` that are missing, and checks that those that
/// exist fit: a topic that must be compacted and is not is an error that says
/// how to fix it. Some Kafka-compatible brokers do not answer DescribeConfigs;
/// then the check is skipped with a warning.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::topics::{ensure_topics, TopicSpec};
/// use timely_kafka::KafkaConfig;
///
/// // No broker listens there: the error says what was being done.
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// let error = ensure_topics(&kafka, &[TopicSpec::new("t", 1)], Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
/// ```
pub fn ensure_topics(
    config: &KafkaConfig,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, TopicOutcome)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        config
            .client_config(&[])
            .create()
            .map_err(KafkaError::client(format!(
                "connecting to {}",
                config.brokers()
            )))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(KafkaError::client(format!(
            "reading the topics of {}",
            config.brokers()
        )))?;
    let existing = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
    };
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let mut outcomes = Vec::new();
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| existing(&s.name).is_none())
        .collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|s| {
                let mut topic = NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication),
                );
                if s.compacted {
                    topic = topic.set("cleanup.policy", "compact");
                }
                s.configs
                    .iter()
                    .fold(topic, |topic, (key, value)| topic.set(key, value))
            })
            .collect();
        let results = block_on(admin.create_topics(&new_topics, &options))
            .map_err(KafkaError::client("creating topics"))?;
        for result in results {
            match result {
                Ok(name) => {
                    // Usable only once every partition has a leader.
                    visible_partitions(admin.inner(), &name, timeout)?;
                    tracing::info!(topic = %name, "topic created");
                    outcomes.push((name, TopicOutcome::Created));
                }
                // Another process created it meanwhile: check it below like any other.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Topic {
                        topic: name,
                        problem: format!("the broker refused to create it: {code}"),
                    })
                }
            }
        }
    }
    for spec in specs {
        if outcomes.iter().any(|(name, _)| *name == spec.name) {
            continue;
        }
        let partitions = match existing(&spec.name) {
            Some(p) => p,
            // Created a moment ago, here or by another process: the broker
            // lists it before its partitions have leaders.
            None => visible_partitions(admin.inner(), &spec.name, timeout)?,
        };
        if spec.compacted {
            check_compacted(&admin, &options, &spec.name)?;
        }
        outcomes.push((spec.name.clone(), TopicOutcome::Exists { partitions }));
    }
    Ok(outcomes)
}

fn check_compacted(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &str,
) -> Result<(), KafkaError> {
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], options));
    let policy = match described.as_deref() {
        Ok([Ok(resource)]) => resource.get("cleanup.policy").and_then(|e| e.value.clone()),
        _ => None,
    };
    if !compaction_verdict(topic, policy.as_deref())? {
        tracing::warn!(topic, "the broker does not report the topic's cleanup.policy; cannot check that it is compacted");
    }
    Ok(())
}

/// Whether a topic that must be compacted is: `Ok(true)` yes, `Ok(false)`
/// unknown (the broker did not say), an error that says how to fix it if not.
fn compaction_verdict(topic: &str, policy: Option<&str>) -> Result<bool, KafkaError> {
    match policy {
        None => Ok(false),
        Some(p) if p.split(',').any(|v| v.trim() == "compact") => Ok(true),
        Some(p) => Err(KafkaError::Topic {
            topic: topic.to_owned(),
            problem: format!(
                "its cleanup.policy is {p:?}, but it must be compacted so that it always holds the current state; \
                 set it with `kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`, \
                 or choose another topic"
            ),
        }),
    }
}

/// Waits, up to `timeout`, until `topic` shows partitions that all have a
/// leader, and returns how many it has.
fn visible_partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let partitions = client
            .fetch_metadata(Some(topic), timeout.min(Duration::from_secs(5)))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .filter(|t| {
                        t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                    .map(|t| t.partitions().len())
            })
            .filter(|p| *p > 0);
        if let Some(partitions) = partitions {
            return Ok(partitions);
        }
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Topic {
                topic: topic.to_owned(),
                problem: format!(
                    "it has shown no partitions with a leader for {timeout:?} (missing, or the broker unreachable?)"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many partitions `topic` has, as `client`'s broker says; an error
/// naming the topic when it does not exist or has none.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rdkafka::admin::AdminClient;
/// use rdkafka::client::DefaultClientContext;
/// use timely_kafka::topics::partition_count;
/// use timely_kafka::KafkaConfig;
///
/// let admin: AdminClient<DefaultClientContext> = KafkaConfig::new("127.0.0.1:9").client_config(&[]).create()?;
/// let error = partition_count(admin.inner(), "events", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().starts_with("reading the partitions of events"), "{error}");
/// # Ok::<(), rdkafka::error::KafkaError>(())
/// ```
pub fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(KafkaError::client(format!(
            "reading the partitions of {topic}"
        )))?;
    let partitions = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|p| *p > 0)
        .ok_or_else(|| KafkaError::Topic {
            topic: topic.to_owned(),
            problem: "it does not exist or has no partitions; create it first".into(),
        })?;
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::compaction_verdict;

    #[test]
    fn compaction_verdicts() {
        assert!(compaction_verdict("t", Some("compact")).unwrap());
        assert!(compaction_verdict("t", Some("compact,delete")).unwrap());
        assert!(compaction_verdict("t", Some("delete, compact")).unwrap());
        assert!(!compaction_verdict("t", None).unwrap());
        let e = compaction_verdict("counts", Some("delete"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("counts")
                && e.contains("\"delete\"")
                && e.contains("cleanup.policy=compact"),
            "{e}"
        );
    }
}
