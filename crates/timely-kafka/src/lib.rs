#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::bare_urls
)]
#![warn(
    clippy::clone_on_ref_ptr,
    clippy::dbg_macro,
    clippy::explicit_iter_loop,
    clippy::todo,
    clippy::unimplemented
)]

pub mod as_of;
pub mod changes;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod epoch_writer;
mod error;
pub mod progress;
pub mod protocol;
pub mod scan;
pub mod sink;
pub mod source;
pub mod state;
pub mod timestamp;
pub mod topics;
pub mod transaction;
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
