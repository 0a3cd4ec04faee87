//! Kafka: the operators of the `timely-kafka` crate (re-exported here,
//! `crates/timely-kafka`), and the producer's side of the epoch protocol for
//! this project's stations.
//!
//! | module | role |
//! |---|---|
//! | [`publish`] | the producer's epochs: one transaction per epoch, markers, the state topic |
//! | [`recovery`] | reading back what the producer published, to restart from it |

pub use timely_kafka::*;

/// Where the producer's rejected responses and the aggregator's unreadable
/// records go, by default: one dead-letter topic for the whole pipeline.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "velib-projet-dead-letters";

pub mod publish;
pub mod recovery;
