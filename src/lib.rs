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
    clippy::future_not_send,
    clippy::todo,
    clippy::unimplemented
)]

// The data path, in order: feed -> postcode/directory -> snapshot -> dataflow
// (counts) -> changes -> output. `replay` and `recorded` drive it in-process;
// `aggregator` runs it between Kafka topics (`kafka::source` -> `upsert` ->
// dataflow -> `kafka::sink`). Upstream of Kafka, `producer` runs `fetch` ->
// `poll` -> `snapshot` -> `kafka::publish`. Downstream of the output topic,
// `web` serves the live page (`committed` -> `page` -> `events` -> `server`).
pub mod aggregator;
pub mod audit;
pub mod cluster;
pub mod consistency;
pub mod counts;
pub mod dataflow;
pub mod directory;
pub mod freshness;
mod http;
pub use gbfs_feed as feed;
pub use gbfs_feed::fetch;
pub mod kafka;
pub mod metrics;
pub mod output;
pub mod poll;
pub mod postcode;
pub mod producer;
pub mod recorded;
pub mod reference;
pub mod replay;
pub mod snapshot;
pub mod snapshot_source;
pub mod station_records;
pub mod systems;
pub mod web;
