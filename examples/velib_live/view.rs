//! The live view: reads the output topic as any client would (read
//! committed, each epoch applied once every partition has a progress record
//! of it or of a later epoch), and shows the postcodes after each epoch.
//!
//! Later progress counts because the topic is compacted: all progress
//! records of a partition share one key, so once the cleaner has run only
//! the latest survives, while older epochs' postcode records remain. Everything
//! before a partition's progress record is complete.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::kafka::progress::OutputEpochs;
use velib_dataflow::kafka::{KafkaConfig, EPOCH_HEADER, KIND_HEADER};
use velib_dataflow::output::{PostcodeDeletion, PostcodeRecord};

/// How the view is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table when stdout is a terminal, JSON lines when it is not.
    Auto,
    /// A table, redrawn each epoch.
    Table,
    /// One JSON line per changed postcode per epoch.
    Json,
}

/// One postcode's new record (`None` for a tombstone) in an epoch.
type Change = (String, Option<PostcodeRecord>);

pub struct LiveView {
    consumer: BaseConsumer,
    output: OutputEpochs<Change>,
    /// The feed time of each epoch not yet shown, from its progress records.
    feed_times: BTreeMap<Epoch, i64>,
    current: BTreeMap<String, PostcodeRecord>,
    last: Option<Epoch>,
    table: bool,
}

impl LiveView {
    pub fn new(kafka: &KafkaConfig, topic: &str, format: Format) -> Result<LiveView, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", kafka.brokers())
            .set("group.id", "velib-live-view")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        for (k, v) in kafka.properties() {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| format!("the view's consumer: {e}"))?;
        // The aggregator creates the topic as it starts: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let partitions = loop {
            let partitions = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                .unwrap_or(0);
            if partitions > 0 {
                break partitions;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{topic} did not appear on {}", kafka.brokers()));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let table = match format {
            Format::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Format::Table => true,
            Format::Json => false,
        };
        Ok(LiveView {
            consumer,
            output: OutputEpochs::new(partitions),
            feed_times: BTreeMap::new(),
            current: BTreeMap::new(),
            last: None,
            table,
        })
    }

    /// The last epoch shown.
    pub fn last(&self) -> Option<Epoch> {
        self.last
    }

    /// Reads what arrived within `timeout` and shows every epoch completed.
    pub fn poll(&mut self, timeout: Duration) {
        let mut wait = timeout;
        while let Some(result) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            let message = match result {
                Ok(message) => message,
                Err(e) => {
                    // librdkafka retries by itself; the view just waits.
                    tracing::debug!("view: {e}");
                    continue;
                }
            };
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .filter(|h| h.key == name)
                        .last()
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_owned)
                })
            };
            let Some(epoch) = header(EPOCH_HEADER).and_then(|e| e.parse::<Epoch>().ok()) else {
                continue;
            };
            if self.last.is_some_and(|l| l >= epoch) {
                continue;
            }
            if header(KIND_HEADER).as_deref() == Some("progress") {
                self.output.progress(message.partition(), epoch);
                if let Some(feed_time) = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["feed_time"].as_i64())
                {
                    self.feed_times.insert(epoch, feed_time);
                }
                continue;
            }
            let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let record = message
                .payload()
                .and_then(|p| serde_json::from_slice::<PostcodeRecord>(p).ok());
            self.output.record(epoch, (key.to_owned(), record));
        }
        // An epoch whose own progress records the cleaner removed is shown
        // with the next one that has them: on a compacted topic it lacks the
        // records later epochs replaced, and only the state once caught up
        // is exact.
        let complete = self.output.complete();
        let last = complete.last().map(|(epoch, _)| *epoch);
        let mut pending: BTreeMap<String, Option<PostcodeRecord>> = BTreeMap::new();
        for (epoch, changes) in complete {
            // The last write of a key wins.
            pending.extend(changes);
            let own = self.feed_times.get(&epoch).copied();
            if own.is_none() && Some(epoch) != last {
                continue;
            }
            let changes = std::mem::take(&mut pending);
            let feed_time = own.or_else(|| changes.values().flatten().map(|r| r.feed_time).max());
            self.show(epoch, &changes, feed_time);
        }
        if let Some(through) = self.output.complete_through() {
            self.feed_times = self.feed_times.split_off(&through.saturating_add(1));
        }
    }

    fn show(
        &mut self,
        epoch: Epoch,
        changes: &BTreeMap<String, Option<PostcodeRecord>>,
        feed_time: Option<i64>,
    ) {
        let mut before = BTreeMap::new();
        for (postcode, record) in changes {
            let old = match record {
                Some(r) => self.current.insert(postcode.clone(), r.clone()),
                None => self.current.remove(postcode),
            };
            before.insert(postcode.clone(), old);
        }
        self.last = Some(epoch);
        let feed_time = feed_time.unwrap_or(0);
        let mut out = std::io::stdout().lock();
        if !self.table {
            for (postcode, record) in changes {
                let line = match record {
                    Some(r) => serde_json::to_string(r),
                    None => serde_json::to_string(&PostcodeDeletion {
                        postcode: postcode.clone(),
                        deleted: true,
                        epoch,
                        feed_time,
                    }),
                };
                let _ = writeln!(out, "{}", line.expect("records always serialise"));
            }
            let _ = out.flush();
            return;
        }
        let (bikes, meca, elec) = self.current.values().fold((0, 0, 0), |t, r| {
            (t.0 + r.nbr_total, t.1 + r.nbr_meca, t.2 + r.nbr_elec)
        });
        let (empty, full) = self.current.values().fold((0, 0), |t, r| {
            (t.0 + r.nbr_stations_empty, t.1 + r.nbr_stations_full)
        });
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(120);
        const CELL: usize = 22;
        let columns = (width / CELL).max(1);
        let _ = write!(out, "\x1b[2J\x1b[H");
        let _ = writeln!(
            out,
            "velib-dataflow · epoch {epoch} · feed time {} · {bikes} bikes ({meca} mechanical, {elec} e-bikes) · {empty} stations empty, {full} full · {} postcodes, {} changed",
            utc(feed_time),
            self.current.len(),
            changes.len(),
        );
        let _ = writeln!(
            out,
            "postcode: bikes (change since the last epoch); * marks a change\n"
        );
        let cells: Vec<String> = self
            .current
            .iter()
            .map(|(postcode, r)| {
                let delta = match before.get(postcode) {
                    Some(Some(old)) if old.nbr_total != r.nbr_total => {
                        format!("{:+}", r.nbr_total - old.nbr_total)
                    }
                    Some(None) => "new".to_owned(),
                    _ => String::new(),
                };
                let mark = if before.contains_key(postcode) {
                    '*'
                } else {
                    ' '
                };
                format!("{mark}{postcode:<8}{:>5} {delta:<6}", r.nbr_total)
            })
            .collect();
        for row in cells.chunks(columns) {
            let _ = writeln!(out, "{}", row.join(""));
        }
        let gone: Vec<&String> = changes
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(p, _)| p)
            .collect();
        if !gone.is_empty() {
            let _ = writeln!(out, "\nno longer any station: {gone:?}");
        }
        let _ = out.flush();
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
fn utc(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_feed_times() {
        assert_eq!(super::utc(1_732_004_538), "2024-11-19 08:22:18 UTC");
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
    }
}
