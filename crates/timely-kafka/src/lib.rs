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
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, Framed, RecordHeaders, ATTEMPT_HEADER};
/// use timely_kafka::EPOCH_HEADER;
///
/// let headers = RecordHeaders::new(vec![(EPOCH_HEADER, Some(b"42".as_slice())), (ATTEMPT_HEADER, Some(b"a".as_slice()))]);
/// assert!(matches!(framing(&headers, Some(b"v"))?, Framed::Data(s) if s.epoch == 42));
/// # Ok::<(), timely_kafka::DecodeError>(())
/// ```
pub const EPOCH_HEADER: &str = "velib-epoch";
/// The header that says what a record is: `progress` for progress records.
///
/// # Examples
///
/// ```
/// use timely_kafka::protocol::{framing, EpochStamp, RecordHeaders};
/// use timely_kafka::KIND_HEADER;
///
/// // An input record may be data or a marker; any other kind is refused.
/// let mut headers = EpochStamp { epoch: 1, attempt: "a".into() }.headers();
/// headers.push((KIND_HEADER, "progress".into()));
/// assert!(framing(&RecordHeaders::from_pairs(&headers), Some(b"{}")).is_err());
/// ```
pub const KIND_HEADER: &str = "velib-kind";
/// The key of progress records on the output topic.
///
/// # Examples
///
/// ```
/// use timely_kafka::PROGRESS_KEY;
///
/// // Readers of an output topic tell progress records from data by their key.
/// let is_progress = |key: Option<&[u8]>| key == Some(PROGRESS_KEY.as_bytes());
/// assert!(is_progress(Some(PROGRESS_KEY.as_bytes())) && !is_progress(Some(b"a")));
/// ```
pub const PROGRESS_KEY: &str = "__velib_progress";
