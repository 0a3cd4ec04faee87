//! The source and the sink on a real Apache Kafka broker, with decoders of
//! their own (no word of the root's domain): epochs written by
//! [`EpochWriter`] go through `Sources` → `Upsert` → `KafkaSink` with a
//! state topic, and kcat, an independent reader at read_committed, finds
//! each epoch's changes once, a record that cannot be decoded once on the
//! dead-letter topic, and, after a restart from the committed progress and
//! the restored state, only the new epoch's changes. The same dataflow runs
//! timed in epochs (`u64`) and in milliseconds (`Duration`).

// The workspace's broker harness, shared with the root's tests.
#[allow(dead_code)]
#[path = "../../../tests/common/broker.rs"]
mod broker;

use broker::{header, Broker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Concat, Probe};
use timely::progress::timestamp::Refines;
use timely_kafka::decode::{RawRecord, RecordDecoder};
use timely_kafka::epoch_writer::EpochWriter;
use timely_kafka::protocol::Epoch;
use timely_kafka::sink::{committed_progress, EpochProgress, KafkaSink, RecordEncoder};
use timely_kafka::sink::{SinkConfig, SinkHandle};
use timely_kafka::source::{KafkaSource, SourceConfig, SourceHandle, Sources};
use timely_kafka::state::RestoreConfig;
use timely_kafka::state::{read_state_share, restore_state, restored_upserts, Changelog};
use timely_kafka::timestamp::EpochTimestamp;
use timely_kafka::upsert::Upsert;
use timely_kafka::{DecodeError, KafkaConfig, EPOCH_HEADER, KIND_HEADER};

/// Tallies: a word as key, a whole number as text as value.
struct Tally;

impl RecordDecoder for Tally {
    type Key = String;
    type Value = i64;

    fn decode(&self, record: &RawRecord<'_>) -> Result<(String, Option<i64>), DecodeError> {
        let key = std::str::from_utf8(record.key.unwrap_or_default())
            .map_err(|e| DecodeError::Value {
                reason: "key_not_text",
                source: Box::new(e),
            })?
            .to_owned();
        let value = record
            .value
            .map(|v| {
                std::str::from_utf8(v)
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
                    .and_then(|v| v.parse::<i64>().map_err(|e| Box::new(e) as _))
                    .map_err(|source| DecodeError::Value {
                        reason: "not_a_number",
                        source,
                    })
            })
            .transpose()?;
        Ok((key, value))
    }
}

impl RecordEncoder<String, i64> for Tally {
    fn key(&self, key: &String) -> Vec<u8> {
        key.clone().into_bytes()
    }

    fn value(&self, _: &String, value: &i64, _: &EpochProgress) -> Vec<u8> {
        value.to_string().into_bytes()
    }
}

/// The topics of one run of the test, named after its timestamp type.
struct Topics {
    input: String,
    output: String,
    state: String,
    dead_letters: String,
    transactional_id: String,
}

impl Topics {
    fn new(label: &str) -> Self {
        Topics {
            input: format!("tallies-{label}"),
            output: format!("tallies-{label}-out"),
            state: format!("tallies-{label}-state"),
            dead_letters: format!("tallies-{label}-dead"),
            transactional_id: format!("tallies-{label}-sink"),
        }
    }

    fn create(&self, broker: &Broker) {
        let compacted: &[(&str, &str)] = &[("cleanup.policy", "compact")];
        broker.create_topics(&[
            (&self.input, 2, &[]),
            (&self.output, 2, compacted),
            (&self.state, 2, compacted),
            (&self.dead_letters, 1, &[]),
        ]);
    }
}

/// Runs the dataflow from where the last run committed (its progress, and
/// the state it wrote) until epoch `until` is committed; returns the
/// sink's last committed epoch.
fn run_until<T: EpochTimestamp + Refines<()>>(
    kafka: &KafkaConfig,
    topics: &Topics,
    until: Epoch,
) -> Epoch {
    let stall = Duration::from_secs(30);
    let resume = committed_progress(kafka, &topics.output, &topics.transactional_id, stall)
        .expect("the committed progress reads");
    let restored = resume.as_ref().map(|progress| {
        let summary = progress.state.clone().expect("the sink wrote a state");
        let config = RestoreConfig {
            kafka: kafka.clone(),
            epoch: progress.epoch,
            summary,
            stall,
        };
        (
            progress.epoch,
            read_state_share(&config, 0, 1).expect("the state restores"),
        )
    });
    let (kafka, input) = (kafka.clone(), topics.input.clone());
    let mut sink = SinkConfig::new(
        kafka.clone(),
        topics.output.clone(),
        topics.transactional_id.clone(),
    );
    sink.state_topic = Some(topics.state.clone());
    sink.dead_letter_topic = Some(topics.dead_letters.clone());
    sink.resume = resume.clone();
    timely::execute_directly(move |worker| {
        let (sources, written) = (SourceHandle::default(), SinkHandle::default());
        let finished = ProbeHandle::<T>::new();
        let (config, handle) = (sink.clone(), written.clone());
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<T, _, _>(|scope| {
            let mut inputs = Sources::new(scope, &sources).finished(&finished);
            let source = SourceConfig {
                resume: resume.clone(),
                ..SourceConfig::new(kafka.clone(), [input.clone()])
            };
            let mut upserts = KafkaSource::new(source, Tally).build(&mut inputs);
            if let Some((epoch, records)) = restored.clone() {
                let restored = restore_state(scope, epoch, records);
                let failed = handle.clone();
                upserts =
                    upserts.concat(restored_upserts(restored, &input, move |e| failed.fail(e)));
            }
            let tallies = upserts.upsert_keyed();
            let state = tallies.clone().state_changes(&input);
            tallies
                .kafka_sink_with_state(state, inputs.progress(), config, Tally, handle)
                .probe_with(&finished);
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while written.committed() < Some(until) {
            assert!(written.error().is_none(), "{:?}", written.error());
            assert!(sources.error().is_none(), "{:?}", sources.error());
            assert!(
                Instant::now() < deadline,
                "epoch {until} not committed in 60 s"
            );
            worker.step_or_park(Some(Duration::from_millis(50)));
        }
        let stats = sources.stats();
        assert_eq!(
            stats.dead_letters.values().sum::<u64>(),
            u64::from(until == 2)
        );
        // The sources hold their capabilities until dropped: a dataflow
        // reading Kafka never completes by itself.
        sources.stop();
        worker.drop_dataflow(dataflow);
        written.committed().unwrap_or_default()
    })
}

/// The output's changes (not its progress records), by epoch: key → value
/// (`None` for a tombstone).
fn changes_by_epoch(records: &[Value]) -> BTreeMap<u64, BTreeMap<String, Option<String>>> {
    let mut out: BTreeMap<u64, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for record in records.iter().filter(|r| header(r, KIND_HEADER).is_none()) {
        let epoch: u64 = header(record, EPOCH_HEADER)
            .and_then(|e| e.parse().ok())
            .expect("every change has its epoch");
        let key = record["key"].as_str().unwrap_or_default().to_owned();
        let value = record["payload"].as_str().map(str::to_owned);
        let previous = out.entry(epoch).or_default().insert(key.clone(), value);
        assert!(previous.is_none(), "{key} written twice at epoch {epoch}");
    }
    out
}

fn tallies(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
        .collect()
}

fn exactly_once_with<T: EpochTimestamp + Refines<()>>(label: &str) {
    let broker = Broker::shared();
    let topics = Topics::new(label);
    topics.create(broker);
    let kafka = KafkaConfig::new(&broker.address);
    let mut writer = EpochWriter::connect(
        &kafka,
        &format!("tallies-{label}-writer"),
        &[topics.input.as_str()],
        Duration::from_secs(30),
    )
    .expect("the writer connects");
    let mut write = |epoch: Epoch, records: &[(&str, Option<&str>)]| {
        writer
            .write_epoch(epoch, None, |tx| {
                for (key, value) in records {
                    tx.send(&topics.input, key.as_bytes(), value.map(str::as_bytes))?;
                }
                Ok(())
            })
            .expect("the epoch is written");
    };
    write(1, &[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]);
    // `bad` is no number: a dead letter, and the epoch goes on without it.
    write(2, &[("a", Some("4")), ("c", None), ("bad", Some("x"))]);
    assert_eq!(run_until::<T>(&kafka, &topics, 2), 2);

    // A restart: the committed progress says where, the state what.
    write(3, &[("b", Some("5")), ("d", Some("6"))]);
    assert_eq!(run_until::<T>(&kafka, &topics, 3), 3);

    let output = broker.kcat_read(&topics.output);
    let expected = BTreeMap::from([
        (
            1,
            tallies(&[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]),
        ),
        (2, tallies(&[("a", Some("4")), ("c", None)])),
        (3, tallies(&[("b", Some("5")), ("d", Some("6"))])),
    ]);
    assert_eq!(changes_by_epoch(&output), expected, "{output:#?}");
    // One progress record per output partition and epoch, nothing twice.
    let progress: Vec<(i64, String)> = output
        .iter()
        .filter(|r| header(r, KIND_HEADER).is_some())
        .map(|r| {
            let epoch = header(r, EPOCH_HEADER).unwrap_or_default().to_owned();
            (r["partition"].as_i64().unwrap_or(-1), epoch)
        })
        .collect();
    let mut deduplicated = progress.clone();
    deduplicated.sort();
    deduplicated.dedup();
    assert_eq!(progress.len(), deduplicated.len(), "{progress:?}");
    assert_eq!(progress.len(), 2 * 3, "{progress:?}");

    let dead = broker.kcat_read(&topics.dead_letters);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["key"], "bad");
    assert_eq!(dead[0]["payload"], "x");
}

#[test]
fn epochs_reach_the_sink_once_across_a_restart_in_epoch_time() {
    exactly_once_with::<u64>("epochs");
}

#[test]
fn epochs_reach_the_sink_once_across_a_restart_in_milliseconds() {
    exactly_once_with::<Duration>("millis");
}

/// An epoch of a `Duration` dataflow spans a millisecond of times: the sink
/// writes it once, whole, even when the frontier stops inside it.
#[test]
fn an_epoch_of_many_times_is_written_once_and_whole() {
    use differential_dataflow::input::Input;
    use timely_kafka::source::SourceProgress;
    let broker = Broker::shared();
    let topics = Topics::new("spans");
    topics.create(broker);
    let kafka = KafkaConfig::new(&broker.address);
    let config = SinkConfig::new(
        kafka,
        topics.output.clone(),
        topics.transactional_id.clone(),
    );
    let committed = timely::execute_directly(move |worker| {
        let written = SinkHandle::default();
        let handle = written.clone();
        let (mut input, probe) = worker.dataflow::<Duration, _, _>(|scope| {
            let (input, tallies) = scope.new_collection::<(String, i64), isize>();
            let (probe, _) = tallies
                .kafka_sink(SourceProgress::none(scope), config, Tally, handle)
                .probe();
            (input, probe)
        });
        let ms = |micros: u64| Duration::from_micros(micros);
        let step_to = |worker: &mut timely::worker::Worker, probe: &ProbeHandle<Duration>, t| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while probe.less_than(&t) && Instant::now() < deadline {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
        };
        // Epoch 1's first time, then the frontier stops inside epoch 1…
        input.advance_to(ms(1_000));
        input.insert(("a".into(), 1));
        input.advance_to(ms(1_500));
        input.flush();
        // Time for a sink to (wrongly) write epoch 1 already.
        let until = Instant::now() + Duration::from_secs(3);
        while written.committed().is_none() && Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        // …and a later time of epoch 1 comes.
        input.advance_to(ms(1_700));
        input.insert(("b".into(), 2));
        input.advance_to(ms(3_000));
        input.flush();
        step_to(worker, &probe, ms(3_000));
        assert!(written.error().is_none(), "{:?}", written.error());
        written.committed()
    });
    assert_eq!(committed, Some(1));
    let output = broker.kcat_read(&topics.output);
    let expected = BTreeMap::from([(1, tallies(&[("a", Some("1")), ("b", Some("2"))]))]);
    assert_eq!(changes_by_epoch(&output), expected, "{output:#?}");
    let progress = output
        .iter()
        .filter(|r| header(r, KIND_HEADER).is_some())
        .count();
    assert_eq!(
        progress, 2,
        "one progress record per partition: {output:#?}"
    );
}
