//! [`Framing::Epochs`](super::Framing::Epochs): this crate's epoch protocol
//! ([`crate::protocol`]). Each partition's records wait, by epoch and
//! attempt, for the epoch's marker on that partition; the marker releases
//! its attempt's records and drops the others.

use super::framing::{
    EmittedEpochs, EpochFraming, HeldDeadLetters, PartitionCursor, ReadAhead, ReadRecord,
};
use super::handle::SourceHandle;
use crate::dead_letter::DeadLetter;
use crate::decode::{check_size, DecodeError, RecordDecoder};
use crate::protocol::{framing, Epoch, Framed, PartitionEpochs, MAX_OPEN_EPOCHS};
use crate::EPOCH_HEADER;

/// The epoch protocol on the partitions a worker reads.
pub(super) struct EpochProtocol<K, V> {
    partitions: Vec<ProtocolPartition<K, V>>,
    /// See [`SourceConfig::as_of`](super::SourceConfig::as_of).
    as_of: Epoch,
}

/// Where one partition stands in the protocol.
struct ProtocolPartition<K, V> {
    /// Records of epochs not yet passed, by epoch and attempt.
    epochs: PartitionEpochs<(K, Option<V>)>,
    /// Dead letters read since the last marker passed.
    dead: HeldDeadLetters,
    /// A marker going back was warned of (see [`DecodeError::MarkerGoesBack`]).
    warned_going_back: bool,
}

impl<K, V> EpochProtocol<K, V> {
    /// For partitions each resumed after the epoch it passed (a committed
    /// position), or read from its start (`None`), releasing nothing before
    /// `as_of`.
    pub(super) fn new(resumed: impl IntoIterator<Item = Option<Epoch>>, as_of: Epoch) -> Self {
        let partitions = resumed
            .into_iter()
            .map(|passed| ProtocolPartition {
                epochs: match passed {
                    Some(epoch) => PartitionEpochs::resumed(epoch),
                    None => PartitionEpochs::new().reading_as_of(as_of),
                },
                dead: HeldDeadLetters::default(),
                warned_going_back: false,
            })
            .collect();
        EpochProtocol { partitions, as_of }
    }
}

impl<D: RecordDecoder> EpochFraming<D> for EpochProtocol<D::Key, D::Value> {
    fn frame(
        &mut self,
        index: usize,
        cursor: &PartitionCursor,
        record: &ReadRecord<'_>,
        decoder: &D,
        handle: &SourceHandle,
        out: &mut EmittedEpochs<D::Key, D::Value>,
    ) -> Result<Option<Epoch>, DecodeError> {
        let p = &mut self.partitions[index];
        check_size(&record.raw)?;
        let marker = match framing(&record.headers, record.raw.value)? {
            Framed::Unframed => {
                return Err(DecodeError::Header {
                    header: EPOCH_HEADER,
                    problem:
                        "is missing: the record is not in the epoch protocol \
                              (read the seeds' format with Framing::Ingestion, --input-format seed)"
                            .into(),
                })
            }
            Framed::Data(stamp) => {
                if p.epochs.passed().is_some_and(|e| e >= stamp.epoch) {
                    handle.count(|s| s.discarded += 1);
                    return Ok(None);
                }
                // Far beyond the partition's epochs: its marker would be refused.
                p.epochs.check_data(&stamp)?;
                if p.epochs.is_full_for(&stamp) {
                    return Err(DecodeError::TooManyOpenEpochs {
                        limit: MAX_OPEN_EPOCHS,
                    });
                }
                let update = decoder.decode(&record.raw)?;
                p.epochs.data(stamp, update);
                return Ok(None);
            }
            Framed::Marker(marker) => marker,
        };
        // Going back, or far ahead: refused, the partition unchanged.
        p.epochs.check_marker(&marker)?;
        let Some(passed) = p.epochs.marker(&marker) else {
            return Ok(None);
        };
        let mut dropped = 0;
        for (stamp, records) in &passed.dropped {
            tracing::warn!(
                epoch = stamp.epoch,
                attempt = stamp.attempt,
                "{}[{}]: dropped {records} records of an attempt that did not complete epoch {} (attempt {} did)",
                cursor.topic,
                cursor.partition,
                marker.epoch,
                marker.attempt
            );
            dropped += *records as u64;
        }
        handle.count(|s| s.discarded += dropped);
        if let (Some((first, _)), Some((last, _))) =
            (passed.compacted.first(), passed.compacted.last())
        {
            let records: usize = passed.compacted.iter().map(|(_, n)| n).sum();
            tracing::info!(
                "{}[{}]: {records} records of epochs {} to {} whose markers were compacted away, applied with epoch {}",
                cursor.topic,
                cursor.partition,
                first.epoch,
                last.epoch,
                marker.epoch
            );
            handle.count(|s| s.compacted += records as u64);
            if marker.epoch > self.as_of {
                // The cleaner removed markers after the epoch this source
                // started at, while it was reading: the epochs in between
                // are released at once here and one by one on other
                // partitions.
                tracing::warn!(
                    "{}[{}] was compacted while being read: epochs {} to {} are torn in the output; \
                     restart to start at a later epoch (or set min.compaction.lag.ms on the topic)",
                    cursor.topic,
                    cursor.partition,
                    first.epoch,
                    marker.epoch
                );
            }
        }
        tracing::debug!(
            topic = %cursor.topic,
            partition = cursor.partition,
            epoch = marker.epoch,
            records = passed.released.len(),
            "epoch passed"
        );
        // Epochs before the as-of epoch add up to its state.
        let emitted = out.entry(marker.epoch.max(self.as_of)).or_default();
        handle.count(|s| s.applied += passed.released.len() as u64);
        emitted.records.extend(passed.released);
        emitted.dead_letters.extend(p.dead.take());
        emitted.positions.push(cursor.position(
            marker.epoch,
            marker.feed_time,
            record.timestamp_ms,
        ));
        Ok(Some(marker.epoch))
    }

    fn hold(&mut self, index: usize, letter: DeadLetter, handle: &SourceHandle) {
        self.partitions[index].dead.hold(letter, handle);
    }

    fn repeated(&mut self, index: usize, error: &DecodeError) -> bool {
        // A second producer writes a marker going back every epoch on every
        // partition: warned of once per partition, then counted.
        if !matches!(error, DecodeError::MarkerGoesBack { .. }) {
            return false;
        }
        let p = &mut self.partitions[index];
        std::mem::replace(&mut p.warned_going_back, true)
    }

    fn close(
        &mut self,
        _: &[&PartitionCursor],
        _: &SourceHandle,
        _: &mut EmittedEpochs<D::Key, D::Value>,
    ) {
        // Markers close epochs, never the worker.
    }

    fn waits(&self, index: usize, bound: ReadAhead) -> bool {
        bound.limit.is_some_and(|limit| {
            self.partitions[index]
                .epochs
                .passed()
                .is_some_and(|e| e.saturating_add(1) >= limit)
        })
    }

    fn lower_bound(&self) -> Epoch {
        self.partitions
            .iter()
            .map(|p| p.epochs.passed().map_or(0, |e| e + 1))
            .min()
            .unwrap_or(Epoch::MAX)
            .max(self.as_of)
    }

    fn ticks(&self) -> bool {
        false
    }
}
