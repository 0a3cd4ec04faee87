//! What the sources of a dataflow share: their counters, and the switch
//! that stops them.

#[cfg(doc)]
use super::written_as_far_as_read;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use timely::scheduling::SyncActivator;

/// What the sources of a dataflow have done, shared by all workers; and the
/// switch that stops them.
///
/// # Examples
///
/// ```
/// use timely_kafka::source::SourceHandle;
///
/// let handle = SourceHandle::default();
/// assert!(!handle.is_stopped());
/// handle.stop(); // every source built with a clone drops its capabilities
/// assert!(handle.is_stopped());
/// assert_eq!(handle.stats().dead_letters.len(), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SourceHandle {
    shared: Arc<SourceShared>,
}

#[derive(Debug, Default)]
struct SourceShared {
    stop: AtomicBool,
    activators: Mutex<Vec<SyncActivator>>,
    stats: Mutex<SourceStats>,
}

/// Counters of the sources sharing a [`SourceHandle`].
///
/// # Examples
///
/// ```
/// use timely_kafka::source::SourceHandle;
///
/// let stats = SourceHandle::default().stats();
/// // What the metrics report: read, applied, discarded, dead letters by reason, lag.
/// assert_eq!((stats.records, stats.applied, stats.discarded), (0, 0, 0));
/// assert!(stats.dead_letters.is_empty() && stats.consumer_lag.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Records read.
    pub records: u64,
    /// Records released into the dataflow.
    pub applied: u64,
    /// Records of an attempt that did not complete its epoch, or of an epoch
    /// already passed: read and left out.
    pub discarded: u64,
    /// Records released with a later epoch's marker because the log cleaner
    /// had removed their own epoch's.
    pub compacted: u64,
    /// Records that could not be read, by [`DecodeError::reason`](crate::DecodeError::reason).
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Dead letters only counted: over the bound held per partition and
    /// epoch.
    pub dead_letters_unwritten: u64,
    /// Records that retention deleted between a committed position and the
    /// partition's first record when resuming: never read, so the output
    /// lacks their changes (see the log's warning).
    pub deleted_before_resume: u64,
    /// Why a source stopped, if one did.
    pub error: Option<String>,
    /// How far each partition read is behind its end, by topic and
    /// partition, as librdkafka last reported it (every 5 s).
    pub consumer_lag: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Per consumer (librdkafka client name): messages and bytes received,
    /// as librdkafka last reported them.
    pub received: BTreeMap<String, (u64, u64)>,
}

impl SourceHandle {
    /// Stops every source sharing this handle: each stops reading and keeps
    /// its capabilities at the oldest epoch one of its partitions has not
    /// passed, so that the epochs every partition has passed complete and
    /// no other does (a half-read epoch is never written). The dataflow is
    /// then done once what finishes it has caught up with the sources: see
    /// [`written_as_far_as_read`].
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceHandle;
    ///
    /// let handle = SourceHandle::default();
    /// // From a signal handler, say: every worker's sources see it.
    /// let for_signal = handle.clone();
    /// for_signal.stop();
    /// assert!(handle.is_stopped());
    /// ```
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(activators) = self.shared.activators.lock() {
            for activator in activators.iter() {
                let _ = activator.activate();
            }
        }
    }

    /// The counters so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceHandle;
    ///
    /// let handle = SourceHandle::default();
    /// handle.fail("the job's state could not be restored".into());
    /// // A snapshot: later counts need another call.
    /// let stats = handle.stats();
    /// assert_eq!((stats.records, stats.error.as_deref()), (0, Some("the job's state could not be restored")));
    /// ```
    pub fn stats(&self) -> SourceStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Why a source stopped, if one did.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceHandle;
    ///
    /// let handle = SourceHandle::default();
    /// assert_eq!(handle.error(), None);
    /// handle.fail("stopped by the job".into());
    /// assert_eq!(handle.error().as_deref(), Some("stopped by the job"));
    /// ```
    pub fn error(&self) -> Option<String> {
        self.stats().error
    }

    /// Whether [`SourceHandle::stop`] was called.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceHandle;
    ///
    /// let handle = SourceHandle::default();
    /// assert!(!handle.is_stopped());
    /// handle.stop();
    /// assert!(handle.is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Has `activator` woken when the sources are stopped.
    pub(super) fn wake_on_stop(&self, activator: SyncActivator) {
        if let Ok(mut activators) = self.shared.activators.lock() {
            activators.push(activator);
        }
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut SourceStats)) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            f(&mut stats);
        }
    }

    /// Keeps what librdkafka's statistics say of lag and traffic.
    pub(super) fn record_client_stats(&self, stats: rdkafka::Statistics) {
        self.count(|s| {
            s.received.insert(
                stats.name.clone(),
                (stats.rxmsgs.max(0) as u64, stats.rxmsg_bytes.max(0) as u64),
            );
            for (topic, t) in &stats.topics {
                for (partition, p) in &t.partitions {
                    // Partition -1 is librdkafka's internal one; a partition
                    // this consumer does not fetch has no lag to report.
                    // librdkafka's own `consumer_lag` counts from committed
                    // offsets, and this source commits none: measure from
                    // the application's position to the end a read
                    // committed consumer can reach (the last stable offset).
                    if *partition < 0 || p.fetch_state != "active" {
                        continue;
                    }
                    if p.ls_offset >= 0 && p.app_offset >= 0 {
                        s.consumer_lag
                            .entry(topic.clone())
                            .or_default()
                            .insert(*partition, (p.ls_offset - p.app_offset).max(0));
                    }
                }
            }
        });
    }

    /// Stops the sources for good with `error` (logged, and kept in
    /// [`SourceStats::error`]): what a job does when something outside the
    /// sources went wrong.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::source::SourceHandle;
    ///
    /// let handle = SourceHandle::default();
    /// handle.fail("first".into());
    /// handle.fail("second".into());
    /// // The first error is kept: it is why the sources stopped.
    /// assert_eq!(handle.error().as_deref(), Some("first"));
    /// ```
    pub fn fail(&self, error: String) {
        tracing::error!("Kafka source stopped: {error}");
        self.count(|s| {
            s.error.get_or_insert(error);
        });
    }
}
