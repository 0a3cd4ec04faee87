//! The dead-letter topic: records that cannot be read, kept raw for a human.
//!
//! A record that fails to decode is written, raw and cut to
//! [`MAX_DEAD_LETTER_BYTES`], to the dead-letter topic with headers saying
//! why ([`REASON_HEADER`], [`ERROR_HEADER`]) and where it came from
//! ([`TOPIC_HEADER`], [`PARTITION_HEADER`], [`OFFSET_HEADER`]); the pipeline
//! goes on.
//!
//! A source hands its dead letters to the dataflow ([`DeadLetter`], on
//! [`super::source::SourceProgress`]) with the epoch whose
//! positions include them, and the sink writes them in that epoch's
//! transaction ([`super::sink::KafkaSink`]): exactly once with
//! the output, never again after a restart. A source given its own
//! dead-letter topic ([`super::source::SourceConfig::dead_letter_topic`])
//! writes them itself, outside any transaction: at least once.

use super::decode::{DecodeError, RawRecord};
use super::{KafkaConfig, KafkaError};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::Duration;

/// Key and value are each cut to this many bytes.
///
/// # Examples
///
/// ```
/// use timely_kafka::dead_letter::{DeadLetter, MAX_DEAD_LETTER_BYTES};
/// use timely_kafka::decode::{check_size, RawRecord};
///
/// let big = vec![b'x'; 2 << 20];
/// let record = RawRecord { topic: "events", partition: 0, offset: 5, key: None, value: Some(&big) };
/// let letter = DeadLetter::new(&record, &check_size(&record).unwrap_err());
/// // Enough to see what was wrong, with the original size kept beside it.
/// assert_eq!((letter.value.unwrap().len(), letter.value_bytes), (MAX_DEAD_LETTER_BYTES, 2 << 20));
/// ```
pub const MAX_DEAD_LETTER_BYTES: usize = 64 << 10;
/// The header with [`DecodeError::reason`].
///
/// # Examples
///
/// ```
/// use rdkafka::message::Headers;
/// use timely_kafka::dead_letter::{response_record, REASON_HEADER};
///
/// let record = response_record("events-dlq", "https://example.org/a.json", b"<html>", "invalid_json", "expected value");
/// let headers = record.headers.as_ref().unwrap();
/// // What a counter or an alert keys on.
/// assert!(headers.iter().any(|h| h.key == REASON_HEADER && h.value == Some(b"invalid_json".as_slice())));
/// ```
pub const REASON_HEADER: &str = "velib-dlq-reason";
/// The header with the full error message (cut to 1 KiB).
///
/// # Examples
///
/// ```
/// use rdkafka::message::Headers;
/// use timely_kafka::dead_letter::{response_record, ERROR_HEADER};
///
/// let error = "é".repeat(1000);
/// let record = response_record("events-dlq", "https://example.org/a.json", b"", "invalid_json", &error);
/// let header = record.headers.as_ref().unwrap().iter().find(|h| h.key == ERROR_HEADER).unwrap();
/// // Cut to 1 KiB, on a character boundary.
/// assert_eq!(std::str::from_utf8(header.value.unwrap()).unwrap().len(), 1024);
/// ```
pub const ERROR_HEADER: &str = "velib-dlq-error";
/// The header with the source topic.
///
/// # Examples
///
/// ```
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
/// use timely_kafka::dead_letter::{OFFSET_HEADER, PARTITION_HEADER, TOPIC_HEADER};
///
/// // A tool reading the dead-letter topic finds where a record came from.
/// let headers = OwnedHeaders::new()
///     .insert(Header { key: TOPIC_HEADER, value: Some("events") })
///     .insert(Header { key: PARTITION_HEADER, value: Some("2") })
///     .insert(Header { key: OFFSET_HEADER, value: Some("17") });
/// let origin: Vec<&[u8]> = headers.iter().filter_map(|h| h.value).collect();
/// assert_eq!(origin, [b"events".as_slice(), b"2", b"17"]);
/// ```
pub const TOPIC_HEADER: &str = "velib-dlq-topic";
/// The header with the source partition.
///
/// # Examples
///
/// ```
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
/// use timely_kafka::dead_letter::PARTITION_HEADER;
///
/// // Decimal text, as the record's partition.
/// let headers = OwnedHeaders::new().insert(Header { key: PARTITION_HEADER, value: Some("2") });
/// let partition: i32 = std::str::from_utf8(headers.get(0).value.unwrap()).unwrap().parse().unwrap();
/// assert_eq!(partition, 2);
/// ```
pub const PARTITION_HEADER: &str = "velib-dlq-partition";
/// The header with the source offset.
///
/// # Examples
///
/// ```
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
/// use timely_kafka::dead_letter::OFFSET_HEADER;
///
/// // Decimal text: with topic and partition, enough to read the original again.
/// let headers = OwnedHeaders::new().insert(Header { key: OFFSET_HEADER, value: Some("17") });
/// let offset: i64 = std::str::from_utf8(headers.get(0).value.unwrap()).unwrap().parse().unwrap();
/// assert_eq!(offset, 17);
/// ```
pub const OFFSET_HEADER: &str = "velib-dlq-offset";
/// The header with the original value size, present when the value was cut.
///
/// # Examples
///
/// ```
/// use rdkafka::message::Headers;
/// use timely_kafka::dead_letter::{response_record, MAX_DEAD_LETTER_BYTES, TRUNCATED_HEADER};
///
/// let body = vec![b'x'; MAX_DEAD_LETTER_BYTES + 1];
/// let record = response_record("events-dlq", "https://example.org/a.json", &body, "too_large", "too large");
/// let header = record.headers.as_ref().unwrap().iter().find(|h| h.key == TRUNCATED_HEADER).unwrap();
/// assert_eq!(header.value, Some((MAX_DEAD_LETTER_BYTES + 1).to_string().as_bytes()));
/// ```
pub const TRUNCATED_HEADER: &str = "velib-dlq-original-bytes";
/// The header with the URL of a rejected HTTP response (instead of topic,
/// partition and offset).
///
/// # Examples
///
/// ```
/// use rdkafka::message::Headers;
/// use timely_kafka::dead_letter::{response_record, URL_HEADER};
///
/// let record = response_record("events-dlq", "https://example.org/a.json", b"", "invalid_json", "empty");
/// let header = record.headers.as_ref().unwrap().iter().find(|h| h.key == URL_HEADER).unwrap();
/// assert_eq!(header.value, Some(b"https://example.org/a.json".as_slice()));
/// ```
pub const URL_HEADER: &str = "velib-dlq-url";

/// The dead-letter record of a rejected HTTP response from `url`: its
/// `body` cut to [`MAX_DEAD_LETTER_BYTES`], why (`reason`, `error`) in
/// headers.
///
/// # Examples
///
/// ```
/// use timely_kafka::dead_letter::response_record;
///
/// // A body the parser refused, kept raw for a human, to queue on any producer.
/// let record = response_record("events-dlq", "https://example.org/a.json", b"<html>", "invalid_json", "expected value");
/// assert_eq!((record.topic, record.payload), ("events-dlq", Some(b"<html>".as_slice())));
/// assert!(record.key.is_none());
/// ```
pub fn response_record<'a>(
    topic: &'a str,
    url: &str,
    body: &'a [u8],
    reason: &str,
    error: &str,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: REASON_HEADER,
            value: Some(reason),
        })
        .insert(Header {
            key: ERROR_HEADER,
            value: Some(cut_text(error, 1024)),
        })
        .insert(Header {
            key: URL_HEADER,
            value: Some(url),
        });
    if body.len() > MAX_DEAD_LETTER_BYTES {
        headers = headers.insert(Header {
            key: TRUNCATED_HEADER,
            value: Some(&body.len().to_string()),
        });
    }
    BaseRecord::to(topic)
        .headers(headers)
        .payload(cut(body, MAX_DEAD_LETTER_BYTES))
}

/// A record that could not be read, as the dead-letter topic keeps it: cut
/// to [`MAX_DEAD_LETTER_BYTES`], with why and where from.
///
/// # Examples
///
/// ```
/// use timely_kafka::dead_letter::DeadLetter;
/// use timely_kafka::decode::RawRecord;
/// use timely_kafka::DecodeError;
///
/// let record = RawRecord { topic: "events", partition: 2, offset: 17, key: Some(b"k"), value: None };
/// let letter = DeadLetter::new(&record, &DecodeError::MissingValue);
/// assert_eq!((letter.reason.as_str(), letter.offset, letter.value), ("missing_value", 17, None));
/// ```
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct DeadLetter {
    /// The record's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, cut.
    pub key: Option<Vec<u8>>,
    /// Its value, cut.
    pub value: Option<Vec<u8>>,
    /// The value's size before it was cut.
    pub value_bytes: usize,
    /// [`DecodeError::reason`].
    pub reason: String,
    /// The error, cut to 1 KiB.
    pub error: String,
}

impl DeadLetter {
    /// The dead letter of `record`, which failed with `error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::dead_letter::DeadLetter;
    /// use timely_kafka::decode::RawRecord;
    /// use timely_kafka::DecodeError;
    ///
    /// let record = RawRecord { topic: "events", partition: 0, offset: 3, key: Some(b"a"), value: Some(b"{") };
    /// let letter = DeadLetter::new(&record, &DecodeError::Key { problem: "not a number".into() });
    /// assert_eq!((letter.reason.as_str(), letter.error.as_str()), ("invalid_key", "key: not a number"));
    /// assert_eq!(letter.key.as_deref(), Some(b"a".as_slice()));
    /// ```
    pub fn new(record: &RawRecord<'_>, error: &DecodeError) -> Self {
        DeadLetter {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(|k| cut(k, MAX_DEAD_LETTER_BYTES).to_vec()),
            value: record.value.map(|v| cut(v, MAX_DEAD_LETTER_BYTES).to_vec()),
            value_bytes: record.value.map_or(0, <[u8]>::len),
            reason: error.reason().to_owned(),
            error: cut_text(&error.to_string(), 1024).to_owned(),
        }
    }

    /// Its headers on the dead-letter topic.
    pub(crate) fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let original = self.value_bytes.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON_HEADER,
                value: Some(&self.reason),
            })
            .insert(Header {
                key: ERROR_HEADER,
                value: Some(&self.error),
            })
            .insert(Header {
                key: TOPIC_HEADER,
                value: Some(&self.topic),
            })
            .insert(Header {
                key: PARTITION_HEADER,
                value: Some(&partition),
            })
            .insert(Header {
                key: OFFSET_HEADER,
                value: Some(&offset),
            });
        if self.value_bytes > MAX_DEAD_LETTER_BYTES {
            headers = headers.insert(Header {
                key: TRUNCATED_HEADER,
                value: Some(&original),
            });
        }
        headers
    }

    /// Its record on the dead-letter topic `topic`.
    pub(crate) fn record<'a>(&'a self, topic: &'a str) -> BaseRecord<'a, [u8], [u8]> {
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(self.headers());
        if let Some(key) = &self.key {
            out = out.key(&key[..]);
        }
        if let Some(value) = &self.value {
            out = out.payload(&value[..]);
        }
        out
    }
}

/// Writes dead letters to one topic.
pub(crate) struct DeadLetterWriter {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn cut(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[..bytes.len().min(limit)]
}

fn cut_text(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl DeadLetterWriter {
    pub(crate) fn connect(kafka: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config(&[("enable.idempotence", "true"), ("linger.ms", "50")])
            .create()
            .map_err(KafkaError::client(format!(
                "creating the dead-letter producer for {topic}"
            )))?;
        Ok(DeadLetterWriter {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Queues `letter` for the dead-letter topic; a failure to queue is
    /// logged (the record is then only counted).
    pub(crate) fn send(&self, letter: &DeadLetter) {
        if let Err((e, _)) = self.producer.send(letter.record(&self.topic)) {
            tracing::error!(
                topic = %self.topic,
                "could not queue a dead letter for {}[{}]@{}: {e}",
                letter.topic,
                letter.partition,
                letter.offset
            );
        }
    }

    /// Waits for queued dead letters to be written.
    pub(crate) fn flush(&self) {
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(topic = %self.topic, "dead letters not all written: {e}");
        }
    }
}

impl Drop for DeadLetterWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(cut_text("vélo", 2), "v");
        assert_eq!(cut_text("vélo", 3), "vé");
        assert_eq!(cut_text("abc", 10), "abc");
        assert_eq!(cut(b"abcdef", 4), b"abcd");
    }
}
