//! Kafka: the operators of the `timely-kafka` crate (re-exported here,
//! `crates/timely-kafka`), and the producer's side of the epoch protocol for
//! this project's stations.
//!
//! | module | role |
//! |---|---|
//! | [`publish`] | the producer's epochs: one transaction per epoch, markers, the state topic |
//! | [`recovery`] | reading back what the producer published, to restart from it |

pub use timely_kafka::*;

pub mod publish;
pub mod recovery;
