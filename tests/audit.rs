//! The exactly-once audit (`velib_dataflow::audit`, `velib_audit`) on a real
//! broker: the aggregator's own output is clean; copies of it with a forged
//! record, or an epoch written twice, are not, and say where.
//!
//! The Paris series is written once (epoch protocol, 3 partitions, with
//! idle partitions), aggregated once into `audit-clean`; the other tests
//! copy that output, committed records only, with a transactional producer
//! and then add what they test.

mod common;

use common::broker::Broker;
use common::epochs::{by_id, epoch_records, ScriptedEpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC};
use common::output::header;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorHandle};
use velib_dataflow::audit::{audit, AuditConfig, AuditError, AuditReport};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::kafka::source::Framing;
use velib_dataflow::kafka::topics::{ensure_topics, TopicSpec};
use velib_dataflow::kafka::{KafkaConfig, PROGRESS_KEY};

const INPUT: &str = "audit-velib-projet";
const DIRECTORY: &str = "audit-velib-directory";
const OUTPUT: &str = "audit-clean";
const TIMEOUT: Duration = Duration::from_secs(30);

/// The shared broker, with the Paris series aggregated into [`OUTPUT`].
struct Aggregated {
    broker: &'static Broker,
    /// The input's epochs, in order.
    epochs: Vec<Epoch>,
}

fn aggregated() -> &'static Aggregated {
    static AGGREGATED: OnceLock<Aggregated> = OnceLock::new();
    AGGREGATED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        let broker = Broker::shared();
        let mut config = AggregatorConfig::new(KafkaConfig::new(&broker.address));
        config.input_topic = INPUT.into();
        config.directory_topic = Some(DIRECTORY.into());
        config.output_topic = OUTPUT.into();
        config.dead_letter_topic = Some("audit-dead-letters".into());
        config.framing = Some(Framing::Epochs);
        config.transactional_id = format!("test-aggregator-{OUTPUT}");
        ensure_topics(&config.kafka, &config.topics(3), TIMEOUT)
            .unwrap_or_else(|e| panic!("creating topics: {e}\n{}", broker.log_tail()));

        // Epochs 2 to 5 all on partition 0: partitions 1 and 2 see only
        // markers then, as idle partitions do.
        let epochs = common::sequence(common::paris_series(true));
        let writer =
            ScriptedEpochWriter::new(&broker.address, "attempt-1", &[(INPUT, 3), (DIRECTORY, 3)]);
        let spread = by_id(3);
        let idle = |_: &velib_dataflow::feed::StationId| 0;
        for (updates, _) in &epochs {
            let partition_of: &dyn Fn(&velib_dataflow::feed::StationId) -> i32 =
                if (2..=5).contains(&updates.epoch) {
                    &idle
                } else {
                    &spread
                };
            let mut records = epoch_records(updates, true, partition_of);
            for record in &mut records {
                record.topic = match record.topic.as_str() {
                    STATUS_TOPIC => INPUT.into(),
                    DIRECTORY_TOPIC => DIRECTORY.into(),
                    other => panic!("a record for {other}"),
                };
            }
            writer.write_epoch(updates.epoch, updates.feed_time, &records);
        }
        let epochs: Vec<Epoch> = epochs.iter().map(|(u, _)| u.epoch).collect();
        let last = *epochs.last().unwrap();

        let handle = AggregatorHandle::default();
        let running = handle.clone();
        let thread = std::thread::spawn(move || run(timely::Config::thread(), config, running));
        // A bound on a hang, not a performance assertion.
        let deadline = Instant::now() + Duration::from_secs(300);
        while handle.committed() != Some(last) {
            if thread.is_finished() {
                panic!(
                    "the aggregator stopped before epoch {last}: {:?}\n{}",
                    thread.join(),
                    broker.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the aggregator has not committed epoch {last}\n{}",
                broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        handle.stop();
        thread
            .join()
            .expect("the aggregator does not panic")
            .expect("the aggregator stops cleanly");
        Aggregated { broker, epochs }
    })
}

fn audit_config(broker: &Broker, output: &str) -> AuditConfig {
    let mut config = AuditConfig::new(KafkaConfig::new(&broker.address));
    config.input_topic = INPUT.into();
    config.directory_topic = Some(DIRECTORY.into());
    config.output_topic = output.into();
    config
}

fn audited(broker: &Broker, output: &str) -> AuditReport {
    let mut calls = 0;
    let mut config = audit_config(broker, output);
    config.progress_every = 500;
    let report = audit(&config, |_| calls += 1)
        .unwrap_or_else(|e| panic!("auditing {output}: {e}\n{}", broker.log_tail()));
    assert!(
        calls >= 2,
        "progress every 500 records, and at the end: {calls}"
    );
    report
}

/// `velib_audit` on `output`, with `extra` flags.
fn audit_binary(broker: &Broker, output: &str, extra: &[&str]) -> std::process::Output {
    Command::new(common::example_binary("velib_audit"))
        .args(["--brokers", &broker.address, "--input-topic", INPUT])
        .args(["--directory-topic", DIRECTORY, "--output-topic", output])
        .args(extra)
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("the velib_audit example is built (cargo test builds examples)")
}

/// One record to write: partition, key, value, headers.
struct Record {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Record {
    /// From kcat's -J envelope.
    fn from_envelope(envelope: &Value) -> Record {
        let text = |v: &Value| v.as_str().map(|s| s.as_bytes().to_vec());
        Record {
            partition: envelope["partition"].as_i64().unwrap() as i32,
            key: text(&envelope["key"]),
            value: text(&envelope["payload"]),
            headers: envelope["headers"]
                .as_array()
                .map(|h| {
                    h.chunks(2)
                        .map(|kv| {
                            (
                                kv[0].as_str().unwrap().to_owned(),
                                kv[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A transactional producer writing to `topic` (3 partitions, compacted,
/// created here), one transaction per call of [`Writer::commit`].
struct Writer {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl Writer {
    fn new(broker: &Broker, topic: &str) -> Writer {
        ensure_topics(
            &KafkaConfig::new(&broker.address),
            &[TopicSpec::new(topic, 3).compacted()],
            TIMEOUT,
        )
        .unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &broker.address)
            .set("transactional.id", format!("test-audit-{topic}"))
            .create()
            .unwrap();
        producer.init_transactions(TIMEOUT).unwrap();
        Writer {
            producer,
            topic: topic.to_owned(),
        }
    }

    fn commit(&self, records: &[Record]) {
        self.producer.begin_transaction().unwrap();
        for record in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
                .partition(record.partition)
                .headers(headers);
            if let Some(key) = &record.key {
                out = out.key(&key[..]);
            }
            if let Some(value) = &record.value {
                out = out.payload(&value[..]);
            }
            self.producer.send(out).map_err(|(e, _)| e).unwrap();
        }
        self.producer.commit_transaction(TIMEOUT).unwrap();
    }
}

/// `OUTPUT`'s committed records, copied to `topic` in one transaction.
/// Returns them as kcat read them.
fn copy_output(broker: &Broker, topic: &str) -> (Writer, Vec<Value>) {
    let records = broker.kcat_read(OUTPUT);
    let writer = Writer::new(broker, topic);
    let copied: Vec<Record> = records.iter().map(Record::from_envelope).collect();
    writer.commit(&copied);
    (writer, records)
}

fn is_progress(envelope: &Value) -> bool {
    header(envelope, "velib-kind") == Some("progress")
}

fn epoch_of(envelope: &Value) -> Epoch {
    header(envelope, "velib-epoch").unwrap().parse().unwrap()
}

#[test]
fn the_aggregators_output_is_clean() {
    let aggregated = aggregated();
    let report = audited(aggregated.broker, OUTPUT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.epochs_checked,
        aggregated.epochs.len() as u64,
        "{report}"
    );
    assert_eq!(report.epochs_unchecked, 0, "{report}");
    assert_eq!(report.first_epoch, aggregated.epochs.first().copied());
    assert_eq!(report.last_epoch, aggregated.epochs.last().copied());
    assert_eq!(report.mismatch_count, 0);
    assert!(
        report.duplicated_epochs.is_empty()
            && report.missing_epochs.is_empty()
            && report.torn_epochs.is_empty()
    );
    assert!(!report.output_compacted);
    // Every progress record is one per partition and epoch.
    assert_eq!(report.progress_records, 3 * aggregated.epochs.len() as u64);
    assert!(report.input_records > 1000, "{report}");
    assert!(
        report.to_string().contains("clean: every checked epoch"),
        "{report}"
    );

    // The binary says the same, and its JSON is the report.
    let out = audit_binary(aggregated.broker, OUTPUT, &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("audit: read"),
        "a progress line at the end: {stderr}"
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["epochs_checked"], aggregated.epochs.len());
    assert_eq!(json["mismatches"], Value::Array(vec![]));
    let out = audit_binary(aggregated.broker, OUTPUT, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("clean"));
}

#[test]
fn a_forged_record_is_a_mismatch_naming_its_postcode_and_epoch() {
    let aggregated = aggregated();
    let broker = aggregated.broker;
    let last = *aggregated.epochs.last().unwrap();
    let (writer, records) = copy_output(broker, "audit-forged");
    // The last value of 75015, with 100 bikes more, as a new epoch whose
    // progress holds the last epoch's positions: the input says nothing
    // changed, the output says 75015 did.
    let victim = records
        .iter()
        .rev()
        .find(|r| r["key"] == "75015" && !is_progress(r))
        .expect("75015 on the output");
    let mut value: Value = serde_json::from_str(victim["payload"].as_str().unwrap()).unwrap();
    let bikes = value["nbr_total"].as_i64().unwrap();
    value["nbr_total"] = (bikes + 100).into();
    value["epoch"] = (last + 1).into();
    let forged_epoch = last + 1;
    let stamp = |epoch: Epoch| vec![("velib-epoch".to_owned(), epoch.to_string())];
    let mut forged = vec![Record {
        partition: victim["partition"].as_i64().unwrap() as i32,
        key: Some(b"75015".to_vec()),
        value: Some(serde_json::to_vec(&value).unwrap()),
        headers: stamp(forged_epoch),
    }];
    let last_progress = records.iter().rev().find(|r| is_progress(r)).unwrap();
    let mut progress: Value =
        serde_json::from_str(last_progress["payload"].as_str().unwrap()).unwrap();
    progress["epoch"] = forged_epoch.into();
    for partition in 0..3 {
        let mut headers = stamp(forged_epoch);
        headers.push(("velib-kind".into(), "progress".into()));
        forged.push(Record {
            partition,
            key: Some(PROGRESS_KEY.as_bytes().to_vec()),
            value: Some(serde_json::to_vec(&progress).unwrap()),
            headers,
        });
    }
    writer.commit(&forged);

    let report = audited(broker, "audit-forged");
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.mismatch_count, 1, "{report}");
    let mismatch = &report.mismatches[0];
    assert_eq!(
        (mismatch.epoch, mismatch.postcode.as_str()),
        (forged_epoch, "75015")
    );
    assert_eq!(mismatch.expected.as_ref().unwrap()["nbr_total"], bikes);
    assert_eq!(mismatch.found.as_ref().unwrap()["nbr_total"], bikes + 100);
    assert_eq!(report.epochs_checked, aggregated.epochs.len() as u64 + 1);
    assert!(
        report.duplicated_epochs.is_empty()
            && report.missing_epochs.is_empty()
            && report.torn_epochs.is_empty(),
        "{report}"
    );

    let out = audit_binary(broker, "audit-forged", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "mismatch: epoch {forged_epoch}, postcode 75015: nbr_total expected {bikes}, found {}",
            bikes + 100
        )),
        "{stdout}"
    );

    // The same forgery with no progress record after it, stamped with the
    // last epoch: what a reader of the compacted topic now sees as 75015.
    let (writer, _) = copy_output(broker, "audit-forged-late");
    forged.truncate(1);
    forged[0].headers = stamp(last);
    writer.commit(&forged);
    let report = audited(broker, "audit-forged-late");
    assert_eq!(report.duplicated_epochs, vec![last], "{report}");
    assert_eq!(report.mismatch_count, 1, "{report}");
    assert_eq!(
        (
            report.mismatches[0].epoch,
            report.mismatches[0].postcode.as_str()
        ),
        (last, "75015")
    );
}

#[test]
fn an_epoch_written_twice_is_a_duplicated_epoch() {
    let aggregated = aggregated();
    let broker = aggregated.broker;
    let (writer, records) = copy_output(broker, "audit-replayed");
    // Epoch 3's records and progress, committed again after the last epoch.
    let replayed: Vec<Record> = records
        .iter()
        .filter(|r| epoch_of(r) == 3)
        .map(Record::from_envelope)
        .collect();
    assert!(replayed.len() > 3, "epoch 3 has records and progress");
    writer.commit(&replayed);

    let report = audited(broker, "audit-replayed");
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.duplicated_epochs, vec![3], "{report}");
    assert!(
        report.missing_epochs.is_empty() && report.torn_epochs.is_empty(),
        "{report}"
    );
    // The replayed values of epoch 3 are what the topic now holds for them.
    assert!(
        report
            .mismatches
            .iter()
            .all(|m| m.epoch == *aggregated.epochs.last().unwrap()),
        "{report}"
    );
    assert!(
        report.to_string().contains("duplicated epochs: 3"),
        "{report}"
    );

    let out = audit_binary(broker, "audit-replayed", &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["duplicated_epochs"], serde_json::json!([3]));
}

#[test]
fn an_output_from_other_topics_is_refused_with_a_hint() {
    let aggregated = aggregated();
    let mut config = audit_config(aggregated.broker, OUTPUT);
    config.directory_topic = None;
    let error = audit(&config, |_| {}).unwrap_err();
    assert!(matches!(error, AuditError::Configuration(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("--directory-topic {DIRECTORY}")),
        "{error}"
    );
    let out = audit_binary(aggregated.broker, OUTPUT, &["--no-directory"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_cli_documents_its_flags_and_refuses_bad_ones() {
    common::assert_cli(
        "velib_audit",
        &[
            "--brokers",
            "-X",
            "--input-topic",
            "--directory-topic",
            "--no-directory",
            "--postcodes",
            "--output-topic",
            "--json",
            "--stall",
        ],
        &[
            (vec!["--brokers", "127.0.0.1:9", "--bogus"], "--bogus"),
            (vec![], "--brokers"),
            (vec!["--brokers", "127.0.0.1:9", "--stall", "soon"], "soon"),
            (
                vec!["--brokers", "127.0.0.1:9", "-X", "no-equals-sign"],
                "no-equals-sign",
            ),
            (
                vec![
                    "--brokers",
                    "127.0.0.1:9",
                    "--no-directory",
                    "--postcodes",
                    "/nonexistent/postcodes.csv",
                ],
                "/nonexistent/postcodes.csv",
            ),
        ],
    );
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let out = Command::new(common::example_binary("velib_audit"))
        .args(["--brokers", &address, "--stall", "2s"])
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read the cluster at {address}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// The progress records hold what the audit relies on: positions for both
/// input topics, growing from epoch to epoch.
#[test]
fn progress_positions_grow() {
    let aggregated = aggregated();
    let records = aggregated.broker.kcat_read(OUTPUT);
    let mut previous: BTreeMap<String, i64> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| is_progress(r) && r["partition"] == 0)
    {
        let progress: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
        for topic in [INPUT, DIRECTORY] {
            for (partition, offset) in progress["positions"][topic].as_object().unwrap() {
                let key = format!("{topic}[{partition}]");
                let offset = offset.as_i64().unwrap();
                assert!(previous.get(&key).is_none_or(|p| *p <= offset), "{key}");
                previous.insert(key, offset);
            }
        }
    }
    assert_eq!(previous.len(), 6);
}
