//! [`Framing::Ingestion`](super::Framing::Ingestion): records with no
//! protocol (the seeds' `producer.py`). Epochs are ingestion times in
//! milliseconds since the Unix epoch: the worker closes its open epoch
//! whenever it has caught up with the end of its partitions (or the epoch
//! grew too large), and an idle worker moves it with the clock so that it
//! never holds back the others.

use super::framing::{
    EmittedEpochs, EpochFraming, HeldDeadLetters, PartitionCursor, ReadAhead, ReadRecord,
};
use super::handle::SourceHandle;
use crate::dead_letter::DeadLetter;
use crate::decode::{check_size, DecodeError, RecordDecoder};
use crate::protocol::{framing, Epoch, EpochTime, Framed};
use std::time::{SystemTime, UNIX_EPOCH};

/// An ingestion epoch is closed early when its records reach this size.
const MAX_INGESTION_BYTES: usize = 64 << 20;

/// The open ingestion epoch of a worker, over all its partitions.
pub(super) struct IngestionEpochs<K, V> {
    open: Epoch,
    records: Vec<(K, Option<V>)>,
    bytes: usize,
    dead: HeldDeadLetters,
    /// The worker reads some partition.
    reading: bool,
}

/// Now, in ms since the Unix epoch.
pub(super) fn now_ms() -> Epoch {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Epoch)
}

impl<K, V> IngestionEpochs<K, V> {
    /// Opening an epoch now, and after `committed` (a resumed source's last
    /// committed epoch), whatever the clock says.
    pub(super) fn new(committed: Option<Epoch>, partitions: usize) -> Self {
        let after_committed = committed.map_or(0, |e| e.saturating_add(1));
        IngestionEpochs {
            open: now_ms().max(after_committed),
            records: Vec::new(),
            bytes: 0,
            dead: HeldDeadLetters::default(),
            reading: partitions > 0,
        }
    }
}

impl<D: RecordDecoder> EpochFraming<D> for IngestionEpochs<D::Key, D::Value> {
    fn frame(
        &mut self,
        _: usize,
        _: &PartitionCursor,
        record: &ReadRecord<'_>,
        decoder: &D,
        _: &SourceHandle,
        _: &mut EmittedEpochs<D::Key, D::Value>,
    ) -> Result<Option<Epoch>, DecodeError> {
        check_size(&record.raw)?;
        // Another producer's markers say nothing here.
        if let Framed::Marker(_) = framing(&record.headers, record.raw.value)? {
            return Ok(None);
        }
        let update = decoder.decode(&record.raw)?;
        self.bytes +=
            record.raw.value.map_or(0, <[u8]>::len) + record.raw.key.map_or(0, <[u8]>::len);
        self.records.push(update);
        Ok(None)
    }

    fn hold(&mut self, _: usize, letter: DeadLetter, handle: &SourceHandle) {
        self.dead.hold(letter, handle);
    }

    fn repeated(&mut self, _: usize, _: &DecodeError) -> bool {
        false
    }

    fn close(
        &mut self,
        cursors: &[&PartitionCursor],
        handle: &SourceHandle,
        out: &mut EmittedEpochs<D::Key, D::Value>,
    ) {
        let caught_up = cursors.iter().all(|p| p.caught_up);
        let held = !self.records.is_empty() || !self.dead.is_empty();
        if held && (caught_up || self.bytes >= MAX_INGESTION_BYTES) {
            let epoch = self.open;
            let feed_time = Some((epoch / 1000) as EpochTime);
            let closed_at = Some(now_ms() as i64);
            handle.count(|s| s.applied += self.records.len() as u64);
            let emitted = out.entry(epoch).or_default();
            emitted.records = std::mem::take(&mut self.records);
            emitted.dead_letters = self.dead.take();
            emitted.positions = cursors
                .iter()
                .map(|p| p.position(epoch, feed_time, closed_at))
                .collect();
            self.bytes = 0;
            self.open = now_ms().max(epoch + 1);
        } else if !held && caught_up {
            self.open = self.open.max(now_ms());
        }
    }

    fn waits(&self, _: usize, bound: ReadAhead) -> bool {
        bound.limit.is_some() && bound.in_flight as u64 >= bound.read_ahead.max(1)
    }

    fn lower_bound(&self) -> Epoch {
        self.open
    }

    fn ticks(&self) -> bool {
        self.records.is_empty() && self.reading
    }
}
