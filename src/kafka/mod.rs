//! Kafka, through rdkafka (librdkafka): configuration, topics, and the sink
//! operator that writes a keyed collection's changes, one transaction per
//! epoch.
//!
//! | module | role |
//! |---|---|
//! | [`config`] | brokers and `-X key=value` librdkafka properties, as kcat takes them |
//! | [`topics`] | creating missing topics and checking existing ones |
//! | [`sink`] | the sink operator |

pub mod config;
mod error;
pub mod sink;
pub mod topics;

pub use config::KafkaConfig;
pub use error::KafkaError;

/// The header that carries a record's epoch (decimal text).
pub const EPOCH_HEADER: &str = "velib-epoch";
/// The header that says what a record is: `progress` for progress records.
pub const KIND_HEADER: &str = "velib-kind";
/// The key of progress records on the output topic.
pub const PROGRESS_KEY: &str = "__velib_progress";
