//! A worker's read loop: on each activation, read what librdkafka holds for
//! each partition the worker owns (at most [`BATCH`] records each, and not
//! beyond the read-ahead bound), hand each record to the framing, and send
//! what cannot be read to the dead letters.

use super::assignment::{assign, Assignment, OwnedPartition};
use super::epoch_framing::EpochProtocol;
use super::framing::{EmittedEpochs, EpochFraming, PartitionCursor, ReadAhead, ReadRecord};
use super::handle::SourceHandle;
use super::ingestion_framing::IngestionEpochs;
use super::{Framing, SourceConfig};
use crate::dead_letter::{DeadLetter, DeadLetterWriter};
use crate::decode::{DecodeError, RawRecord, RecordDecoder};
use crate::protocol::{Epoch, RecordHeaders};
use crate::KafkaError;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use std::collections::VecDeque;
use std::time::Duration;
use timely::scheduling::SyncActivator;

/// Records read per partition per activation before yielding to other
/// operators.
const BATCH: usize = 4096;
/// How often an idle worker moves its ingestion epoch with the clock, and
/// how often a worker held back by read-ahead looks again.
const TICK: Duration = Duration::from_millis(50);

/// One worker's reading of its partitions.
pub(super) struct Reader<D: RecordDecoder> {
    assignment: Assignment,
    framing: Box<dyn EpochFraming<D>>,
    dead_letters: Option<DeadLetterWriter>,
    /// Epochs emitted and not yet seen finished.
    in_flight: VecDeque<Epoch>,
    held_back: bool,
    /// A queue was left with records to read.
    more: bool,
}

/// A record from a partition's queue, or one delivered on the main queue.
enum Fetched<'a> {
    Borrowed(rdkafka::message::BorrowedMessage<'a>),
    Owned(OwnedMessage),
}

impl<D: RecordDecoder> Reader<D> {
    /// Connects worker `index` of `peers` to its partitions.
    pub(super) fn connect(
        config: &SourceConfig,
        index: usize,
        peers: usize,
        activator: &SyncActivator,
        handle: &SourceHandle,
    ) -> Result<Self, KafkaError> {
        let assignment = assign(config, index, peers, activator, handle)?;
        let framing: Box<dyn EpochFraming<D>> = match config.framing {
            Framing::Epochs => Box::new(EpochProtocol::new(
                assignment.partitions.iter().map(|p| p.resumed),
                config.as_of,
            )),
            // Ingestion epochs are times: a resumed source's are after the
            // committed one, whatever the clock says.
            Framing::Ingestion => Box::new(IngestionEpochs::new(
                config.resume.as_ref().map(|r| r.epoch),
                assignment.partitions.len(),
            )),
        };
        let dead_letters = config
            .dead_letter_topic
            .as_deref()
            .map(|topic| DeadLetterWriter::connect(&config.kafka, topic))
            .transpose()?;
        // Ask to be scheduled once, to move the capability to where it belongs.
        let _ = activator.activate();
        Ok(Reader {
            assignment,
            framing,
            dead_letters,
            in_flight: VecDeque::new(),
            held_back: false,
            more: false,
        })
    }

    /// The earliest epoch this worker may still emit at.
    pub(super) fn lower_bound(&self) -> Epoch {
        self.framing.lower_bound()
    }

    /// When to be scheduled again without a wake-up from librdkafka.
    pub(super) fn wake_in(&self) -> Option<Duration> {
        if self.more {
            return Some(Duration::ZERO);
        }
        (self.held_back || self.framing.ticks()).then_some(TICK)
    }

    /// Reads what librdkafka has, and returns the epochs to emit.
    /// `finished_at`: `None` without a bound, else the frontier of what the
    /// dataflow finished (`Some(None)`: everything).
    pub(super) fn read(
        &mut self,
        config: &SourceConfig,
        decoder: &D,
        handle: &SourceHandle,
        finished_at: Option<Option<Epoch>>,
    ) -> EmittedEpochs<D::Key, D::Value> {
        self.assignment.serve_main_queue();
        let finished = finished_at.map(|f| f.unwrap_or(Epoch::MAX));
        if let Some(f) = finished {
            while self.in_flight.front().is_some_and(|e| *e < f) {
                self.in_flight.pop_front();
            }
        }
        let bound = ReadAhead {
            limit: finished.map(|f| f.saturating_add(config.read_ahead.max(1))),
            in_flight: self.in_flight.len(),
            read_ahead: config.read_ahead,
        };
        let mut out = EmittedEpochs::new();
        let mut more = false;
        let mut held_back = false;
        let Reader {
            assignment,
            framing,
            dead_letters,
            ..
        } = self;
        let mut step = Step {
            framing: framing.as_mut(),
            dead_letters: dead_letters.as_ref(),
            decoder,
            handle,
        };
        for (index, owned) in assignment.partitions.iter_mut().enumerate() {
            let OwnedPartition {
                queue,
                early,
                cursor,
                ..
            } = owned;
            if step.framing.waits(index, bound) {
                tracing::trace!(
                    topic = %cursor.topic,
                    partition = cursor.partition,
                    ?finished,
                    "held back by the read-ahead bound"
                );
                held_back = true;
                continue;
            }
            let mut read = 0;
            while read < BATCH {
                // Records fetched before the partition's queue was split
                // come first: they precede everything on the queue.
                let result = match early.pop_front() {
                    Some(Some(message)) => Ok(Fetched::Owned(message)),
                    Some(None) => Err(RdKafkaError::PartitionEOF(cursor.partition)),
                    None => match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(result) => result.map(Fetched::Borrowed),
                    },
                };
                read += 1;
                let passed = match result {
                    Err(RdKafkaError::PartitionEOF(_)) => {
                        cursor.caught_up = true;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(
                            "Kafka consumer, {}[{}]: {e}",
                            cursor.topic,
                            cursor.partition
                        );
                        None
                    }
                    Ok(Fetched::Owned(m)) => step.record(index, cursor, &m, &mut out),
                    Ok(Fetched::Borrowed(m)) => step.record(index, cursor, &m, &mut out),
                };
                // A partition past the read-ahead bound waits.
                if passed.is_some() && step.framing.waits(index, bound) {
                    held_back = true;
                    break;
                }
            }
            more |= read == BATCH;
        }
        let cursors: Vec<&PartitionCursor> =
            assignment.partitions.iter().map(|p| &p.cursor).collect();
        step.framing.close(&cursors, handle, &mut out);
        self.in_flight.extend(out.keys().copied());
        self.held_back = held_back;
        // librdkafka wakes us only when a queue becomes non-empty: a queue
        // left with records must be read again on our own initiative.
        self.more = more;
        out
    }
}

/// What reading one record needs besides its partition.
struct Step<'a, D: RecordDecoder> {
    framing: &'a mut dyn EpochFraming<D>,
    dead_letters: Option<&'a DeadLetterWriter>,
    decoder: &'a D,
    handle: &'a SourceHandle,
}

impl<D: RecordDecoder> Step<'_, D> {
    /// Reads one record of partition `index`: frames it, or sends it to the
    /// dead letters if it cannot be read. Returns the epoch the partition
    /// passed, if it passed one.
    fn record<M: Message>(
        &mut self,
        index: usize,
        cursor: &mut PartitionCursor,
        message: &M,
        out: &mut EmittedEpochs<D::Key, D::Value>,
    ) -> Option<Epoch> {
        let handle = self.handle;
        handle.count(|s| s.records += 1);
        cursor.caught_up = false;
        cursor.next_offset = message.offset() + 1;
        let record = ReadRecord {
            raw: raw(message),
            headers: headers(message),
            timestamp_ms: message.timestamp().to_millis(),
        };
        match self
            .framing
            .frame(index, cursor, &record, self.decoder, handle, out)
        {
            Ok(passed) => passed,
            Err(error) => {
                self.dead_letter(index, &record.raw, &error);
                None
            }
        }
    }

    /// Logs, counts and writes a record that cannot be read, and holds it
    /// for the epoch whose positions include it.
    fn dead_letter(&mut self, index: usize, record: &RawRecord<'_>, error: &DecodeError) {
        let handle = self.handle;
        let going_back = matches!(error, DecodeError::MarkerGoesBack { .. });
        if self.framing.repeated(index, error) {
            tracing::debug!(
                reason = error.reason(),
                "record {}[{}]@{} sent to the dead letters: {error}",
                record.topic,
                record.partition,
                record.offset
            );
        } else {
            tracing::warn!(
                reason = error.reason(),
                "record {}[{}]@{} sent to the dead letters: {error}{}",
                record.topic,
                record.partition,
                record.offset,
                if going_back {
                    "; further markers going back on this partition are only counted \
                     (dead letters, reason marker_goes_back) and logged at debug level"
                } else {
                    ""
                }
            );
        }
        handle.count(|s| *s.dead_letters.entry(error.reason()).or_default() += 1);
        let letter = DeadLetter::new(record, error);
        if let Some(writer) = self.dead_letters {
            writer.send(&letter);
        }
        self.framing.hold(index, letter, handle);
    }
}

fn raw<M: Message>(message: &M) -> RawRecord<'_> {
    RawRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
    }
}

fn headers<M: Message>(message: &M) -> RecordHeaders<'_> {
    RecordHeaders::new(
        message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default(),
    )
}
