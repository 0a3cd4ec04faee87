//! How a worker turns the records it reads into epochs: one trait, with one
//! implementation per [`Framing`](super::Framing) ([`super::epoch_framing`],
//! [`super::ingestion_framing`]). The read loop ([`super::read_loop`]) knows
//! partitions and queues; a framing knows epochs.

use super::handle::SourceHandle;
use super::SourcePosition;
use crate::dead_letter::DeadLetter;
use crate::decode::{DecodeError, RawRecord, RecordDecoder};
use crate::protocol::{Epoch, RecordHeaders};
use std::collections::BTreeMap;

/// A record as the read loop hands it to a framing.
pub(super) struct ReadRecord<'a> {
    /// Where it is and what it holds.
    pub(super) raw: RawRecord<'a>,
    /// Its headers.
    pub(super) headers: RecordHeaders<'a>,
    /// Its Kafka timestamp, in ms since the Unix epoch.
    pub(super) timestamp_ms: Option<i64>,
}

/// Where a worker stands on one partition it reads, whatever the framing.
#[derive(Debug)]
pub(super) struct PartitionCursor {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The offset of the next record to read.
    pub(super) next_offset: i64,
    /// librdkafka said it reached the end, and nothing came since.
    pub(super) caught_up: bool,
}

impl PartitionCursor {
    /// Where the partition stands once it passed `passed`.
    pub(super) fn position(
        &self,
        passed: Epoch,
        feed_time: Option<crate::protocol::EpochTime>,
        closed_at_ms: Option<i64>,
    ) -> SourcePosition {
        SourcePosition {
            topic: self.topic.clone(),
            partition: self.partition,
            next_offset: self.next_offset,
            passed,
            feed_time,
            closed_at_ms,
        }
    }
}

/// What a worker emits at one epoch: the records, the positions of the
/// partitions that passed it, and the dead letters those positions include.
pub(super) struct Emitted<K, V> {
    pub(super) records: Vec<(K, Option<V>)>,
    pub(super) positions: Vec<SourcePosition>,
    pub(super) dead_letters: Vec<DeadLetter>,
}

impl<K, V> Default for Emitted<K, V> {
    fn default() -> Self {
        Emitted {
            records: Vec::new(),
            positions: Vec::new(),
            dead_letters: Vec::new(),
        }
    }
}

/// The epochs to emit after a read, in epoch order.
pub(super) type EmittedEpochs<K, V> = BTreeMap<Epoch, Emitted<K, V>>;

/// How far a worker may read: at most [`SourceConfig::read_ahead`]
/// (`read_ahead`) epochs beyond what the dataflow finished.
///
/// [`SourceConfig::read_ahead`]: super::SourceConfig::read_ahead
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadAhead {
    /// No epoch at or beyond it is read; `None`: no bound.
    pub(super) limit: Option<Epoch>,
    /// Epochs emitted and not yet finished.
    pub(super) in_flight: usize,
    /// See [`SourceConfig::read_ahead`](super::SourceConfig::read_ahead).
    pub(super) read_ahead: u64,
}

/// One way of marking epochs on the log, as a worker reads its partitions
/// (identified by their index in the worker's assignment).
pub(super) trait EpochFraming<D: RecordDecoder> {
    /// Frames one record of partition `index` (`cursor` is already past
    /// it), adding what it completes to `out`. Returns the epoch the
    /// partition passed, if the record made it pass one. An error sends
    /// the record to the dead letters (see [`EpochFraming::hold`]).
    fn frame(
        &mut self,
        index: usize,
        cursor: &PartitionCursor,
        record: &ReadRecord<'_>,
        decoder: &D,
        handle: &SourceHandle,
        out: &mut EmittedEpochs<D::Key, D::Value>,
    ) -> Result<Option<Epoch>, DecodeError>;

    /// Keeps a dead letter of partition `index` until the epoch whose
    /// positions include it is emitted.
    fn hold(&mut self, index: usize, letter: DeadLetter, handle: &SourceHandle);

    /// Whether `error`, refused on partition `index`, repeats one already
    /// warned of there (then only logged at debug level).
    fn repeated(&mut self, index: usize, error: &DecodeError) -> bool;

    /// After a read of every partition: the epochs the worker closes itself
    /// rather than a record of the log.
    fn close(
        &mut self,
        cursors: &[&PartitionCursor],
        handle: &SourceHandle,
        out: &mut EmittedEpochs<D::Key, D::Value>,
    );

    /// Whether partition `index` must wait for the dataflow before it is
    /// read on.
    fn waits(&self, index: usize, bound: ReadAhead) -> bool;

    /// The earliest epoch this worker may still emit at.
    fn lower_bound(&self) -> Epoch;

    /// Whether the worker must be scheduled on the clock even when no
    /// record arrives.
    fn ticks(&self) -> bool;
}

/// Dead letters waiting for the epoch whose positions include them, up to
/// [`MAX_HELD_DEAD_LETTER_BYTES`] per partition (or ingestion epoch);
/// beyond that they are counted and logged only.
#[derive(Debug, Default)]
pub(super) struct HeldDeadLetters {
    letters: Vec<DeadLetter>,
    bytes: usize,
}

/// See [`HeldDeadLetters`].
const MAX_HELD_DEAD_LETTER_BYTES: usize = 16 << 20;

impl HeldDeadLetters {
    pub(super) fn hold(&mut self, letter: DeadLetter, handle: &SourceHandle) {
        let size = letter.key.as_ref().map_or(0, Vec::len)
            + letter.value.as_ref().map_or(0, Vec::len)
            + letter.error.len();
        if self.bytes + size > MAX_HELD_DEAD_LETTER_BYTES {
            tracing::warn!(
                "dead letter {}[{}]@{} not written: over {MAX_HELD_DEAD_LETTER_BYTES} bytes of \
                 dead letters in one epoch of that partition",
                letter.topic,
                letter.partition,
                letter.offset
            );
            handle.count(|s| s.dead_letters_unwritten += 1);
            return;
        }
        self.bytes += size;
        self.letters.push(letter);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    pub(super) fn take(&mut self) -> Vec<DeadLetter> {
        self.bytes = 0;
        std::mem::take(&mut self.letters)
    }
}
