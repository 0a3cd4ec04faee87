//! The sources of one dataflow, and what the sink needs of them.
//!
//! Every source is built into a [`Sources`]; the sink takes what they all
//! say of each epoch as one [`SourceProgress`], which only [`Sources`] makes.
//! A source's positions therefore reach the sink by construction: there is
//! no stream for a caller to forget to `concat`, and a progress record that
//! lacks a source's partitions cannot be written.

use super::{KafkaSource, SourceHandle, SourcePosition};
use crate::dead_letter::DeadLetter;
use crate::decode::RecordDecoder;
use crate::timestamp::EpochTimestamp;
use crate::upsert::Upserts;
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{Scope, Stream};

/// The Kafka sources of one dataflow on one worker: build each source into
/// it ([`KafkaSource::build`]), then hand [`Sources::progress`] to the sink.
///
/// # Examples
///
/// A runnable example needs a broker; this one only builds the dataflow.
///
/// ```no_run
/// use timely::dataflow::operators::probe::Handle as ProbeHandle;
/// use timely::dataflow::operators::Probe;
/// use timely_kafka::decode::{RawRecord, RecordDecoder};
/// use timely_kafka::sink::{EpochProgress, KafkaSink, RecordEncoder, SinkConfig, SinkHandle};
/// use timely_kafka::source::{KafkaSource, SourceConfig, SourceHandle, Sources};
/// use timely_kafka::upsert::Upsert;
/// use timely_kafka::{DecodeError, KafkaConfig};
///
/// /// Keys and values as text.
/// struct Text;
/// impl RecordDecoder for Text {
///     type Key = String;
///     type Value = String;
///     fn decode(&self, r: &RawRecord<'_>) -> Result<(String, Option<String>), DecodeError> {
///         let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
///         Ok((r.key.map(text).unwrap_or_default(), r.value.map(text)))
///     }
/// }
/// impl RecordEncoder<String, String> for Text {
///     fn key(&self, key: &String) -> Vec<u8> { key.clone().into_bytes() }
///     fn value(&self, _: &String, value: &String, _: &EpochProgress) -> Vec<u8> { value.clone().into_bytes() }
/// }
///
/// let kafka = KafkaConfig::new("127.0.0.1:9092");
/// let handle = SourceHandle::default();
/// timely::execute_directly(move |worker| {
///     let finished = ProbeHandle::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let mut sources = Sources::new(scope, &handle).finished(&finished);
///         let left = KafkaSource::new(SourceConfig::new(kafka.clone(), ["left"]), Text).build(&mut sources);
///         let right = KafkaSource::new(SourceConfig::new(kafka.clone(), ["right"]), Text).build(&mut sources);
///         let both = left.upsert_keyed().concat(right.upsert_keyed());
///         // The progress of both sources, whether or not the collection uses them.
///         let config = SinkConfig::new(kafka.clone(), "both", "both-sink");
///         both.kafka_sink(sources.progress(), config, Text, SinkHandle::default())
///             .probe_with(&finished);
///     });
/// });
/// ```
#[derive(Debug)]
pub struct Sources<'s, T: EpochTimestamp> {
    scope: Scope<'s, T>,
    handle: SourceHandle,
    finished: Option<ProbeHandle<T>>,
    /// What the sources built so far say, together.
    progress: Option<SourceProgress<'s, T>>,
}

impl<'s, T: EpochTimestamp> Sources<'s, T> {
    /// No source yet, in `scope`; the sources share `handle` (give every
    /// worker a clone of the same one).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::{SourceHandle, Sources};
    ///
    /// let handle = SourceHandle::default();
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         let sources = Sources::new(scope, &handle);
    ///         assert!(!sources.handle().is_stopped());
    ///     });
    /// });
    /// ```
    pub fn new(scope: Scope<'s, T>, handle: &SourceHandle) -> Self {
        Sources {
            scope,
            handle: handle.clone(),
            finished: None,
            progress: None,
        }
    }

    /// Bounds every source's read-ahead by what `finished` (a probe at the
    /// end of the dataflow) has seen complete. Without it, the sources read
    /// as fast as Kafka gives.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::probe::Handle as ProbeHandle;
    /// use timely::dataflow::operators::Probe;
    /// use timely_kafka::source::{SourceHandle, Sources};
    ///
    /// let handle = SourceHandle::default();
    /// timely::execute_directly(move |worker| {
    ///     let finished = ProbeHandle::<u64>::new();
    ///     worker.dataflow(|scope| {
    ///         // Sources read at most `read_ahead` epochs past what reaches `finished`.
    ///         let sources = Sources::new(scope, &handle).finished(&finished);
    ///         sources.progress().positions().clone().probe_with(&finished);
    ///     });
    ///     while worker.step() {}
    ///     assert!(finished.done());
    /// });
    /// ```
    pub fn finished(mut self, finished: &ProbeHandle<T>) -> Self {
        self.finished = Some(finished.clone());
        self
    }

    /// The scope the sources are built in.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::ToStream;
    /// use timely::dataflow::Stream;
    /// use timely_kafka::source::{SourceHandle, Sources};
    ///
    /// let handle = SourceHandle::default();
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         let sources = Sources::new(scope, &handle);
    ///         // Other inputs of the dataflow go in the same scope.
    ///         let _ticks: Stream<_, Vec<u32>> = (0..3u32).to_stream(sources.scope());
    ///     });
    /// });
    /// ```
    pub fn scope(&self) -> Scope<'s, T> {
        self.scope
    }

    /// The handle the sources share.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::{SourceHandle, Sources};
    ///
    /// let handle = SourceHandle::default();
    /// let outside = handle.clone();
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| Sources::new(scope, &handle).handle().stop());
    /// });
    /// // The same switch as the handle given to `new`.
    /// assert!(outside.is_stopped());
    /// ```
    pub fn handle(&self) -> &SourceHandle {
        &self.handle
    }

    /// What the sink needs of every source built so far: each epoch's
    /// positions, and the records the sources could not read.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::{capture::Extract, Capture};
    /// use timely_kafka::source::{SourceHandle, Sources};
    ///
    /// let (send, receive) = std::sync::mpsc::channel();
    /// let handle = SourceHandle::default();
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         // No source built: no positions, and the sink may still take it.
    ///         Sources::new(scope, &handle).progress().positions().clone().capture_into(send);
    ///     });
    /// });
    /// assert!(receive.extract().is_empty());
    /// ```
    pub fn progress(self) -> SourceProgress<'s, T> {
        let scope = self.scope;
        self.progress.unwrap_or_else(|| SourceProgress::none(scope))
    }

    /// Builds `source` here: its positions and dead letters join the
    /// others'; returns its updates.
    pub(super) fn add<D: RecordDecoder>(
        &mut self,
        source: KafkaSource<D>,
    ) -> Upserts<'s, T, D::Key, D::Value>
    where
        D::Key: Clone + 'static,
        D::Value: Clone + 'static,
    {
        let (updates, progress) =
            source.build_streams(self.scope, &self.handle, self.finished.clone());
        self.progress = Some(match self.progress.take() {
            Some(all) => SourceProgress {
                positions: all.positions.concat(progress.positions),
                dead_letters: all.dead_letters.concat(progress.dead_letters),
            },
            None => progress,
        });
        updates
    }
}

/// What the sources of a dataflow say of each epoch: the position of each
/// partition that passed it, and the records they could not read whose
/// positions it includes. Made by [`Sources::progress`] (or
/// [`SourceProgress::none`]), taken by the sink
/// ([`KafkaSink`](crate::sink::KafkaSink)).
///
/// # Examples
///
/// ```
/// use timely::dataflow::operators::probe::Handle as ProbeHandle;
/// use timely_kafka::source::SourceProgress;
///
/// timely::execute_directly(|worker| {
///     let read = ProbeHandle::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         // A sink whose collection comes from no Kafka source.
///         let progress = SourceProgress::none(scope).probe_with(&read);
///         assert!(progress.positions().scope().index() == 0);
///     });
/// });
/// ```
#[derive(Debug)]
pub struct SourceProgress<'s, T: EpochTimestamp> {
    pub(crate) positions: Stream<'s, T, Vec<SourcePosition>>,
    pub(crate) dead_letters: Stream<'s, T, Vec<DeadLetter>>,
}

impl<'s, T: EpochTimestamp> SourceProgress<'s, T> {
    /// No source: for a sink whose collection does not come from Kafka.
    ///
    /// # Examples
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use timely_kafka::source::SourceProgress;
    ///
    /// timely::execute_directly(|worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         // A collection from a timely input, not from Kafka: no positions to record.
    ///         let (_input, _counters) = scope.new_collection::<(String, i64), isize>();
    ///         let _progress = SourceProgress::none(scope);
    ///     });
    /// });
    /// ```
    pub fn none(scope: Scope<'s, T>) -> Self {
        SourceProgress {
            positions: empty(scope),
            dead_letters: empty(scope),
        }
    }

    /// The positions of a source of your own (not a [`KafkaSource`]): at
    /// each epoch, where each of its partitions stood once it passed it. The
    /// sink trusts them as they are; with this crate's sources use
    /// [`Sources::progress`], which cannot leave one out.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::ToStream;
    /// use timely_kafka::source::{SourcePosition, SourceProgress};
    ///
    /// timely::example(|scope| {
    ///     let passed = SourcePosition {
    ///         topic: "events".into(), partition: 0, next_offset: 10, passed: 1,
    ///         feed_time: None, closed_at_ms: None,
    ///     };
    ///     let positions = vec![passed].to_stream(scope);
    ///     let _progress = SourceProgress::from_positions(positions);
    /// });
    /// ```
    pub fn from_positions(positions: Stream<'s, T, Vec<SourcePosition>>) -> Self {
        let scope = positions.scope();
        SourceProgress {
            positions,
            dead_letters: empty(scope),
        }
    }

    /// Each epoch's positions, to look at (for the sink's own, see
    /// [`EpochProgress`](crate::sink::EpochProgress)).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use timely_kafka::source::{SourcePosition, SourceProgress};
    ///
    /// timely::example(|scope| {
    ///     let position = SourcePosition { topic: "events".into(), partition: 0, next_offset: 10,
    ///         passed: 1, feed_time: None, closed_at_ms: None };
    ///     let progress = SourceProgress::from_positions(vec![position].to_stream(scope));
    ///     // Say how far each partition has read.
    ///     progress.positions().clone().inspect(|p| assert_eq!(p.next_offset, 10));
    /// });
    /// ```
    pub fn positions(&self) -> &Stream<'s, T, Vec<SourcePosition>> {
        &self.positions
    }

    /// Has `probe` follow what the sources released: with a probe at the
    /// end of the dataflow, [`written_as_far_as_read`](super::written_as_far_as_read)
    /// tells when everything read is written.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::probe::Handle as ProbeHandle;
    /// use timely::dataflow::operators::Probe;
    /// use timely_kafka::source::{written_as_far_as_read, SourceHandle, Sources};
    ///
    /// let handle = SourceHandle::default();
    /// timely::execute_directly(move |worker| {
    ///     let (read, finished) = (ProbeHandle::<u64>::new(), ProbeHandle::new());
    ///     worker.dataflow(|scope| {
    ///         let progress = Sources::new(scope, &handle).progress().probe_with(&read);
    ///         progress.positions().clone().probe_with(&finished);
    ///     });
    ///     while worker.step() {}
    ///     assert!(written_as_far_as_read(&finished, &read));
    /// });
    /// ```
    pub fn probe_with(self, probe: &ProbeHandle<T>) -> Self {
        SourceProgress {
            positions: self.positions.probe_with(probe),
            dead_letters: self.dead_letters,
        }
    }
}
