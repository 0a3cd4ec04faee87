//! Reading a sink's output topic as a client: which epochs are complete.
//!
//! The sink ([`super::sink`]) writes an epoch's records, then a progress
//! record on every partition, in one transaction. A reader applies an epoch
//! once every partition has shown a progress record of that epoch **or of a
//! later one**: the output topic is compacted and all progress records of a
//! partition share one key, so once the log cleaner has run only the latest
//! survives, while the records of older epochs remain. Everything before a
//! partition's progress record is complete. On a compacted topic only the
//! state once caught up is exact: an epoch whose own progress records are
//! gone lacks the records later epochs replaced.
//!
//! # Examples
//!
//! ```
//! use timely_kafka::progress::OutputEpochs;
//!
//! let mut output = OutputEpochs::new(2);
//! output.record(1, "a");
//! output.progress(0, 1);
//! assert!(output.complete().is_empty(), "partition 1 has not passed epoch 1");
//! output.progress(1, 1);
//! assert_eq!(output.complete(), vec![(1, vec!["a"])]);
//!
//! // After compaction: epoch 2's and 3's progress records are gone, epoch
//! // 4's closes them too.
//! output.record(2, "b");
//! output.record(3, "c");
//! output.progress(0, 4);
//! output.progress(1, 4);
//! assert_eq!(output.complete(), vec![(2, vec!["b"]), (3, vec!["c"])]);
//! // Records of a complete epoch are late.
//! assert!(!output.record(3, "again"));
//! ```

use super::protocol::Epoch;
use super::scan::last_of;
use super::sink::EpochProgress;
use super::{KafkaConfig, KafkaError, KIND_HEADER, PROGRESS_KEY};
use rdkafka::message::{Headers, Message};
use std::collections::BTreeMap;
use std::time::Duration;

/// The last progress record committed on a sink's output `topic`: where a
/// restarted sink stands. `None` when no partition has one (nothing was
/// ever committed).
///
/// Progress records are the last records of every partition in each epoch's
/// transaction, so each partition is read backwards from its end, in
/// windows growing eightfold, until one is found: the cost is that of the
/// last transactions, not of the topic's history. Read at `read_committed`
/// whatever the user's properties say: what is committed is the question.
/// Call it after fencing the sink's `transactional.id` (a new producer's
/// initialisation aborts a crashed one's open transaction), or an open
/// transaction holds the read back until it times out.
///
/// Partitions ending with progress of different epochs (which one sink
/// cannot write) are an error, rather than a guess.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use timely_kafka::progress::last_progress;
/// use timely_kafka::KafkaConfig;
///
/// let kafka = KafkaConfig::new("127.0.0.1:9");
/// // With a broker: `Ok(Some(progress))` says where a restarted sink stands.
/// let error = last_progress(&kafka, "counters", Duration::from_secs(1)).unwrap_err();
/// assert!(error.to_string().starts_with("reading the partitions of counters"), "{error}");
/// ```
pub fn last_progress(
    kafka: &KafkaConfig,
    topic: &str,
    stall: Duration,
) -> Result<Option<EpochProgress>, KafkaError> {
    let mut problem = None;
    let found = last_of(
        kafka,
        "reading the last progress",
        topic,
        stall,
        |message| {
            let is_progress = message.key() == Some(PROGRESS_KEY.as_bytes())
                && message.headers().is_some_and(|h| {
                    h.iter()
                        .any(|h| h.key == KIND_HEADER && h.value == Some(b"progress"))
                });
            if !is_progress {
                return None;
            }
            match serde_json::from_slice::<EpochProgress>(message.payload()?) {
                Ok(progress) => Some(progress),
                Err(e) => {
                    problem.get_or_insert(format!(
                        "{topic}[{}]@{}: a progress record that does not parse: {e}",
                        message.partition(),
                        message.offset()
                    ));
                    None
                }
            }
        },
    )?;
    if let Some(problem) = problem {
        return Err(KafkaError::Topic {
            topic: topic.to_owned(),
            problem,
        });
    }
    let epochs: std::collections::BTreeSet<Epoch> = found.values().map(|p| p.epoch).collect();
    if epochs.len() > 1 {
        // One transaction writes every partition's progress record: they
        // cannot differ unless something else wrote to the topic.
        return Err(KafkaError::Topic {
            topic: topic.to_owned(),
            problem: format!(
                "its partitions end with progress records of different epochs ({epochs:?}): \
                 was it written by another job? Give each job its own output topic"
            ),
        });
    }
    Ok(found.into_values().min_by_key(|p| p.epoch))
}

/// The epochs of an output topic, as a reader follows them.
///
/// # Examples
///
/// ```
/// use timely_kafka::progress::OutputEpochs;
///
/// // A reader applies whole epochs only, whatever order partitions arrive in.
/// let mut output = OutputEpochs::new(2);
/// output.progress(1, 1);
/// output.record(1, ("a", 3));
/// output.progress(0, 1);
/// assert_eq!(output.complete(), [(1, vec![("a", 3)])]);
/// ```
#[derive(Clone, Debug)]
pub struct OutputEpochs<T> {
    partitions: usize,
    /// The latest progress record's epoch on each partition.
    progress: BTreeMap<i32, Epoch>,
    /// Records of epochs not yet complete.
    open: BTreeMap<Epoch, Vec<T>>,
    /// Every epoch up to this one is complete and was handed out.
    complete: Option<Epoch>,
}

impl<T> OutputEpochs<T> {
    /// Following a topic of `partitions` partitions.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::progress::OutputEpochs;
    ///
    /// let output: OutputEpochs<()> = OutputEpochs::new(3);
    /// assert_eq!(output.complete_through(), None);
    /// ```
    pub fn new(partitions: i32) -> Self {
        OutputEpochs {
            partitions: usize::try_from(partitions).unwrap_or(0),
            progress: BTreeMap::new(),
            open: BTreeMap::new(),
            complete: None,
        }
    }

    /// Holds a record of `epoch` until the epoch is complete. Returns
    /// `false`, and keeps nothing, for an epoch already complete.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::progress::OutputEpochs;
    ///
    /// let mut output = OutputEpochs::new(1);
    /// assert!(output.record(1, "a"));
    /// output.progress(0, 1);
    /// output.complete();
    /// // Already handed out: a record of epoch 1 read again is late.
    /// assert!(!output.record(1, "a"));
    /// ```
    pub fn record(&mut self, epoch: Epoch, record: T) -> bool {
        if self.complete.is_some_and(|c| c >= epoch) {
            return false;
        }
        self.open.entry(epoch).or_default().push(record);
        true
    }

    /// A progress record of `epoch` on `partition` (one beyond the topic's
    /// partitions is ignored).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::progress::OutputEpochs;
    ///
    /// let mut output = OutputEpochs::<()>::new(2);
    /// output.progress(0, 5);
    /// output.progress(1, 4);
    /// // An older record changes nothing; a partition the topic lacks is ignored.
    /// output.progress(0, 3);
    /// output.progress(7, 1);
    /// assert_eq!(output.complete_through(), Some(4));
    /// ```
    pub fn progress(&mut self, partition: i32, epoch: Epoch) {
        if usize::try_from(partition).map_or(true, |p| p >= self.partitions) {
            return;
        }
        let latest = self.progress.entry(partition).or_insert(epoch);
        *latest = (*latest).max(epoch);
    }

    /// Every epoch up to which all partitions have progress, if all have.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::progress::OutputEpochs;
    ///
    /// let mut output = OutputEpochs::<()>::new(2);
    /// output.progress(0, 2);
    /// assert_eq!(output.complete_through(), None);
    /// output.progress(1, 3);
    /// assert_eq!(output.complete_through(), Some(2));
    /// ```
    pub fn complete_through(&self) -> Option<Epoch> {
        if self.partitions == 0 || self.progress.len() < self.partitions {
            return None;
        }
        self.progress.values().min().copied()
    }

    /// The epochs newly complete, in order, each with its records in the
    /// order they were read. An epoch with no records of its own (only
    /// progress) is not listed; [`OutputEpochs::complete_through`] says how
    /// far the output is complete.
    ///
    /// # Examples
    ///
    /// ```
    /// use timely_kafka::progress::OutputEpochs;
    ///
    /// let mut output = OutputEpochs::new(1);
    /// output.record(1, "a");
    /// output.record(2, "b");
    /// output.progress(0, 1);
    /// assert_eq!(output.complete(), [(1, vec!["a"])]);
    /// // Each epoch is handed out once.
    /// assert!(output.complete().is_empty());
    /// ```
    pub fn complete(&mut self) -> Vec<(Epoch, Vec<T>)> {
        let Some(through) = self.complete_through() else {
            return Vec::new();
        };
        let later = self.open.split_off(&through.saturating_add(1));
        let done = std::mem::replace(&mut self.open, later);
        self.complete = Some(self.complete.map_or(through, |c| c.max(through)));
        done.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_waits_for_every_partition() {
        let mut output = OutputEpochs::new(3);
        output.record(5, 'x');
        output.progress(0, 5);
        output.progress(2, 6);
        assert_eq!(output.complete_through(), None);
        assert!(output.complete().is_empty());
        output.progress(1, 5);
        assert_eq!(output.complete_through(), Some(5));
        assert_eq!(output.complete(), vec![(5, vec!['x'])]);
        // Epoch 6 waits for partitions 0 and 1.
        output.record(6, 'y');
        assert!(output.complete().is_empty());
        // A progress record older than the latest changes nothing.
        output.progress(0, 4);
        output.progress(0, 6);
        output.progress(1, 6);
        assert_eq!(output.complete(), vec![(6, vec!['y'])]);
    }

    #[test]
    fn an_empty_topic_is_never_complete() {
        let mut output: OutputEpochs<()> = OutputEpochs::new(0);
        output.progress(0, 1);
        assert_eq!(output.complete_through(), None);
    }
}
