//! Kafka, through rdkafka (librdkafka): the source operator that reads
//! epochs, the sink operator that writes a keyed collection's changes one
//! transaction per epoch, and what they share.
//!
//! | module | role |
//! |---|---|
//! | [`config`] | brokers and `-X key=value` librdkafka properties, as kcat takes them |
//! | [`topics`] | creating missing topics and checking existing ones |
//! | [`protocol`] | the epoch protocol: headers, markers, [`Epoch`](protocol::Epoch) |
//! | [`publish`] | the producer's side: one transaction per epoch, markers, restart |
//! | [`recovery`] | reading back what was published, to restart from it |
//! | [`decode`] | decoders from records to keyed upserts |
//! | [`source`] | the source operator |
//! | [`upsert`] | keyed upserts → a differential collection, per key in epoch order |
//! | [`changes`] | an epoch's output → one change per key (upsert or delete), what the sink writes |
//! | [`dead_letter`] | where records that cannot be read go |
//! | [`sink`] | the sink operator |
//! | [`state`] | the state changelog a restart restores from |
//! | [`progress`] | reading a sink's output: which epochs are complete, the last committed |
//! | [`as_of`] | where sources start: the epoch compacted topics are exact from, the framing |

pub mod as_of;
pub mod changes;
pub mod config;
pub mod dead_letter;
pub mod decode;
mod error;
pub mod progress;
pub mod protocol;
pub mod publish;
pub mod recovery;
pub(crate) mod scan;
pub mod sink;
pub mod source;
pub mod state;
pub mod topics;
mod transaction;
pub mod upsert;

pub use config::KafkaConfig;
pub use decode::DecodeError;
pub use error::KafkaError;

/// The header that carries a record's epoch (decimal text).
pub const EPOCH_HEADER: &str = "velib-epoch";
/// The header that says what a record is: `progress` for progress records.
pub const KIND_HEADER: &str = "velib-kind";
/// The key of progress records on the output topic.
pub const PROGRESS_KEY: &str = "__velib_progress";
