//! The dead-letter topic: records that cannot be read, kept raw for a human.
//!
//! A record that fails to decode is written, raw and cut to
//! [`MAX_DEAD_LETTER_BYTES`], to the dead-letter topic with headers saying
//! why ([`REASON_HEADER`], [`ERROR_HEADER`]) and where it came from
//! ([`TOPIC_HEADER`], [`PARTITION_HEADER`], [`OFFSET_HEADER`]); the pipeline
//! goes on. Dead letters are written outside the epoch's transactions: at
//! least once, which is what a human inspecting them needs.

use super::decode::{DecodeError, RawRecord};
use super::{KafkaConfig, KafkaError};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::Duration;

/// Key and value are each cut to this many bytes.
pub const MAX_DEAD_LETTER_BYTES: usize = 64 << 10;
/// The header with [`DecodeError::reason`].
pub const REASON_HEADER: &str = "velib-dlq-reason";
/// The header with the full error message (cut to 1 KiB).
pub const ERROR_HEADER: &str = "velib-dlq-error";
/// The header with the source topic.
pub const TOPIC_HEADER: &str = "velib-dlq-topic";
/// The header with the source partition.
pub const PARTITION_HEADER: &str = "velib-dlq-partition";
/// The header with the source offset.
pub const OFFSET_HEADER: &str = "velib-dlq-offset";
/// The header with the original value size, present when the value was cut.
pub const TRUNCATED_HEADER: &str = "velib-dlq-original-bytes";

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

    /// Queues `record` for the dead-letter topic; a failure to queue is
    /// logged (the record is then only counted).
    pub(crate) fn send(&self, record: &RawRecord<'_>, error: &DecodeError) {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let message = error.to_string();
        let value = record.value.map(|v| cut(v, MAX_DEAD_LETTER_BYTES));
        let original = record.value.map_or(0, <[u8]>::len).to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON_HEADER,
                value: Some(error.reason()),
            })
            .insert(Header {
                key: ERROR_HEADER,
                value: Some(cut_text(&message, 1024)),
            })
            .insert(Header {
                key: TOPIC_HEADER,
                value: Some(record.topic),
            })
            .insert(Header {
                key: PARTITION_HEADER,
                value: Some(&partition),
            })
            .insert(Header {
                key: OFFSET_HEADER,
                value: Some(&offset),
            });
        if record
            .value
            .is_some_and(|v| v.len() > MAX_DEAD_LETTER_BYTES)
        {
            headers = headers.insert(Header {
                key: TRUNCATED_HEADER,
                value: Some(&original),
            });
        }
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key {
            out = out.key(cut(key, MAX_DEAD_LETTER_BYTES));
        }
        if let Some(value) = value {
            out = out.payload(value);
        }
        if let Err((e, _)) = self.producer.send(out) {
            tracing::error!(
                topic = %self.topic,
                "could not queue a dead letter for {}[{}]@{}: {e}",
                record.topic,
                record.partition,
                record.offset
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
