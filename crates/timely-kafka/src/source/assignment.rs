//! Which partitions a worker reads, and from where: the `i`-th partition of
//! the source's topics (in topic and partition order) goes to worker
//! `i % peers`, each from its committed position when resuming, else from
//! its start. Each partition gets its own librdkafka queue, so that a
//! worker reads them one by one and is woken when one fills.

use super::framing::PartitionCursor;
use super::handle::SourceHandle;
use super::SourceConfig;
use crate::config::KafkaContext;
use crate::protocol::Epoch;
use crate::KafkaError;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use timely::scheduling::SyncActivator;

/// A partition a worker owns: librdkafka's queue for it, and where it stands.
pub(super) struct OwnedPartition {
    pub(super) queue: PartitionQueue<KafkaContext>,
    /// Records librdkafka fetched before the queue was split, so delivered
    /// on the consumer's main queue: they come before the queue's.
    /// `None`: the end of the partition.
    pub(super) early: VecDeque<Option<OwnedMessage>>,
    pub(super) cursor: PartitionCursor,
    /// The epoch the partition passed at its committed position, when
    /// resumed from one.
    pub(super) resumed: Option<Epoch>,
}

/// A worker's consumer and the partitions assigned to it.
pub(super) struct Assignment {
    pub(super) consumer: Arc<BaseConsumer<KafkaContext>>,
    pub(super) partitions: Vec<OwnedPartition>,
}

/// The partitions of `all` that worker `index` of `peers` reads.
pub(super) fn partitions_of_worker<P>(all: Vec<P>, index: usize, peers: usize) -> Vec<P> {
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| i % peers == index)
        .map(|(_, p)| p)
        .collect()
}

/// Creates worker `index`'s consumer, assigns it its partitions, and splits
/// their queues; `activator` is woken when a queue fills.
pub(super) fn assign(
    config: &SourceConfig,
    index: usize,
    peers: usize,
    activator: &SyncActivator,
    handle: &SourceHandle,
) -> Result<Assignment, KafkaError> {
    let topics = config.topics.join(",");
    let stats = handle.clone();
    let mut consumer: BaseConsumer<KafkaContext> = config
        .kafka
        .client_config(&[
            ("group.id", &config.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            // The read-ahead bound: what librdkafka prefetches per partition.
            ("queued.max.messages.kbytes", "16384"),
            // Once a partition's prefetch queue was full (a backlog, or the
            // read-ahead bound), librdkafka waits this long before fetching
            // again: its default, 1 s, is added to an epoch's latency.
            ("fetch.queue.backoff.ms", "10"),
            // Consumer lag and traffic for the metrics.
            ("statistics.interval.ms", "5000"),
        ])
        .create_with_context(KafkaContext {
            on_stats: Some(Arc::new(move |s| stats.record_client_stats(s))),
        })
        .map_err(KafkaError::client(format!(
            "creating the consumer of {topics}"
        )))?;
    let wake = activator.clone();
    consumer.set_nonempty_callback(move || {
        let _ = wake.activate();
    });
    let consumer = Arc::new(consumer);
    let mut all = Vec::new();
    for topic in &config.topics {
        let count =
            crate::topics::partition_count(consumer.client(), topic, config.metadata_timeout)?;
        all.extend((0..count).map(|p| (topic.clone(), p)));
    }
    let mine = partitions_of_worker(all, index, peers);
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in &mine {
        let offset = match resumed_at(config, topic, *partition) {
            Some((_, offset)) => Offset::Offset(offset),
            None => Offset::Beginning,
        };
        assignment
            .add_partition_offset(topic, *partition, offset)
            .map_err(KafkaError::client(format!(
                "assigning {topic}[{partition}]"
            )))?;
    }
    consumer
        .assign(&assignment)
        .map_err(KafkaError::client(format!(
            "assigning partitions of {topics}"
        )))?;
    let mut partitions = Vec::with_capacity(mine.len());
    for (topic, partition) in mine {
        let mut queue = consumer
            .split_partition_queue(&topic, partition)
            .ok_or_else(|| KafkaError::Topic {
                topic: topic.clone(),
                problem: format!("librdkafka gave no queue for partition {partition}"),
            })?;
        let wake = activator.clone();
        queue.set_nonempty_callback(move || {
            let _ = wake.activate();
        });
        let resumed = resumed_at(config, &topic, partition);
        if let Some((_, offset)) = resumed {
            warn_if_deleted(&consumer, &topic, partition, offset, config, handle);
        }
        partitions.push(OwnedPartition {
            queue,
            early: VecDeque::new(),
            cursor: PartitionCursor {
                topic,
                partition,
                next_offset: resumed.map_or(0, |(_, offset)| offset),
                caught_up: false,
            },
            resumed: resumed.map(|(epoch, _)| epoch),
        });
    }
    tracing::info!(
        worker = index,
        partitions = ?partitions.iter().map(|p| format!("{}[{}]", p.cursor.topic, p.cursor.partition)).collect::<Vec<_>>(),
        "Kafka source reading"
    );
    let mut assignment = Assignment {
        consumer,
        partitions,
    };
    // What librdkafka fetched between the assignment and the queues' split
    // is on the main queue: it must not be lost.
    assignment.serve_main_queue();
    Ok(assignment)
}

/// Where a resumed source reads `topic[partition]` from: the epoch it passed
/// (its own last marker, or the resumed epoch when the progress does not
/// say) and its committed offset. `None`: from its start.
fn resumed_at(config: &SourceConfig, topic: &str, partition: i32) -> Option<(Epoch, i64)> {
    let resume = config.resume.as_ref()?;
    let offset = resume.positions.get(topic)?.get(&partition)?;
    let passed = resume
        .passed
        .get(topic)
        .and_then(|p| p.get(&partition))
        .map_or(resume.epoch, |e| (*e).min(resume.epoch));
    Some((passed, *offset))
}

impl Assignment {
    /// Serves librdkafka's events (errors, statistics) on the main queue,
    /// and keeps the records found there (fetched for a partition before
    /// its queue was split) to be read before that partition's queue.
    pub(super) fn serve_main_queue(&mut self) {
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            let message = match event {
                // The end of a partition, reached before its queue was
                // split: it comes after that partition's early records (a
                // partition number alone: every topic's partition of it).
                Err(RdKafkaError::PartitionEOF(partition)) => {
                    for p in &mut self.partitions {
                        if p.cursor.partition == partition {
                            p.early.push_back(None);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!("Kafka consumer: {e}");
                    continue;
                }
                Ok(m) => m.detach(),
            };
            let owner = self.partitions.iter_mut().find(|p| {
                p.cursor.partition == message.partition() && p.cursor.topic == message.topic()
            });
            match owner {
                Some(p) => p.early.push_back(Some(message)),
                None => tracing::warn!(
                    "Kafka consumer: a record of {}[{}], a partition this worker does not read",
                    message.topic(),
                    message.partition()
                ),
            }
        }
    }
}

/// Warns, and counts, when retention deleted records of a partition from
/// the committed `position` on: the committed epoch's state cannot see
/// their changes, and nothing can give them back (a fresh start reads the
/// topic from what is left). Reading goes on from the first record kept.
fn warn_if_deleted<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    position: i64,
    config: &SourceConfig,
    handle: &SourceHandle,
) {
    match consumer.fetch_watermarks(topic, partition, config.metadata_timeout) {
        Ok((low, _)) if low > position => {
            let lost = low - position;
            tracing::warn!(
                "{topic}[{partition}]: the committed position is {position} but the partition \
                 starts at {low}: retention deleted {lost} records the aggregator had not read, \
                 and the output lacks their changes until their keys change again; \
                 keep the input's retention longer than the longest stop"
            );
            handle.count(|s| s.deleted_before_resume += lost as u64);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("{topic}[{partition}]: reading its first offset: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::partitions_of_worker;

    #[test]
    fn every_partition_goes_to_exactly_one_worker() {
        let all: Vec<(&str, i32)> = (0..5)
            .map(|p| ("a", p))
            .chain((0..3).map(|p| ("b", p)))
            .collect();
        let peers = 3;
        let mut seen: Vec<(&str, i32)> = (0..peers)
            .flat_map(|w| partitions_of_worker(all.clone(), w, peers))
            .collect();
        seen.sort();
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(seen, expected);
        // Spread in topic and partition order, so that a topic's partitions
        // are shared out before the next topic's.
        assert_eq!(
            partitions_of_worker(all, 1, peers),
            vec![("a", 1), ("a", 4), ("b", 2)]
        );
    }
}
