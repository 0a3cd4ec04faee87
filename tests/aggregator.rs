//! The aggregator end to end on a real broker (Nisshi), input written as the
//! producers write it, output read back with kcat at read_committed.

mod common;

use common::broker::Broker;
use common::epochs::{
    by_id, epoch_records, InputRecord, ScriptedEpochWriter, DIRECTORY_TOPIC, STATUS_TOPIC,
};
use common::output::{assert_epochs_on_topic, header};
use common::State;
use serde_json::Value;
use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use velib_dataflow::aggregator::{run, AggregatorConfig, AggregatorError, AggregatorHandle};
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::kafka::source::Framing;
use velib_dataflow::kafka::topics::ensure_topics;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::snapshot::EpochUpdates;

const OUTPUT: &str = "velib-projet-clean";
const DEAD: &str = "velib-projet-dead-letters";

fn config(address: &str, framing: Framing, directory: bool, output: &str) -> AggregatorConfig {
    let mut config = AggregatorConfig::new(KafkaConfig::new(address));
    config.framing = Some(framing);
    config.directory_topic = directory.then(|| DIRECTORY_TOPIC.to_owned());
    config.output_topic = output.to_owned();
    config.dead_letter_topic = Some(DEAD.to_owned());
    config.transactional_id = format!("test-aggregator-{output}");
    config
}

/// The aggregator as `velib_aggregator` runs with no flags: framing told by
/// the records, stations placed by the producer's directory topic.
fn default_config(address: &str, output: &str) -> AggregatorConfig {
    let mut config = AggregatorConfig::new(KafkaConfig::new(address));
    assert_eq!(config.framing, None);
    assert_eq!(config.directory_topic.as_deref(), Some(DIRECTORY_TOPIC));
    config.output_topic = output.to_owned();
    config.dead_letter_topic = Some(DEAD.to_owned());
    config.transactional_id = format!("test-aggregator-{output}");
    config
}

fn start(
    config: AggregatorConfig,
    timely_config: timely::Config,
) -> (AggregatorHandle, JoinHandle<Result<(), AggregatorError>>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let handle = AggregatorHandle::default();
    let running = handle.clone();
    let thread = std::thread::spawn(move || run(timely_config, config, running));
    (handle, thread)
}

/// Waits for `done`, failing the test (with the broker's log) after two
/// minutes: a bound on a hang, not a performance assertion.
fn wait_for(what: &str, broker_log: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            broker_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn stop(handle: AggregatorHandle, thread: JoinHandle<Result<(), AggregatorError>>) {
    handle.stop();
    thread
        .join()
        .expect("the aggregator does not panic")
        .expect("the aggregator stops cleanly");
}

/// The last value of every postcode on the output topic (progress records
/// left out), as a compacted topic would keep it.
fn latest(records: &[Value]) -> BTreeMap<String, Value> {
    let mut latest = BTreeMap::new();
    for r in records {
        if header(r, "velib-kind") == Some("progress") {
            continue;
        }
        let key = r["key"].as_str().unwrap().to_owned();
        let value = match r["payload"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap(),
            None => Value::Null,
        };
        latest.insert(key, value);
    }
    latest
}

fn paris() -> Vec<(EpochUpdates, State)> {
    common::sequence(common::paris_series(true))
}

/// A forged marker: in the transaction of `during`, after its records, a
/// marker of `epoch` on this partition of the status topic.
struct ForgedMarker {
    during: Epoch,
    epoch: Epoch,
    partition: i32,
}

/// Writes `epochs` in the epoch protocol: statuses and directory on 3
/// partitions each; epochs 2 to 5 all on partition 0, so that partitions 1
/// and 2 see only markers for four epochs.
fn write_paris(
    address: &str,
    epochs: &[(EpochUpdates, State)],
    extra: &dyn Fn(Epoch) -> Vec<InputRecord>,
    forged: &[ForgedMarker],
) {
    let writer = ScriptedEpochWriter::new(
        address,
        "attempt-1",
        &[(STATUS_TOPIC, 3), (DIRECTORY_TOPIC, 3)],
    );
    let spread = by_id(3);
    for (updates, _) in epochs {
        let idle: &dyn Fn(&velib_dataflow::feed::StationId) -> i32 = &|_| 0;
        let partition_of = if (2..=5).contains(&updates.epoch) {
            idle
        } else {
            &spread
        };
        let mut records = epoch_records(updates, true, partition_of);
        records.extend(extra(updates.epoch));
        writer.begin();
        for record in &records {
            writer.send(updates.epoch, record);
        }
        for f in forged.iter().filter(|f| f.during == updates.epoch) {
            writer.marker_on(f.epoch, updates.feed_time, STATUS_TOPIC, f.partition);
        }
        writer.flush();
        writer.markers(updates.epoch, updates.feed_time);
        writer.commit();
    }
}

fn create_topics(address: &str, config: &AggregatorConfig) {
    ensure_topics(&config.kafka, &config.topics(3), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("creating topics on {address}: {e}"));
}

#[test]
fn seeds_format_gives_the_rider_totals_of_the_fixtures_readme() {
    let broker = Broker::start();
    // No flags: the seeds' records are told by their missing epoch headers,
    // and, having no directory, placed by the postcode table.
    let config = default_config(&broker.address, OUTPUT);
    create_topics(&broker.address, &config);
    // The seeds' producer.py: every station's raw GBFS record, unkeyed, one
    // message each, written here by kcat.
    let status: Value = serde_json::from_slice(
        &std::fs::read(common::fixtures().join("gbfs/velib/2024-11-19/station_status.json"))
            .unwrap(),
    )
    .unwrap();
    let lines: String = status["data"]["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{s}\n"))
        .collect();
    broker.kcat_write(STATUS_TOPIC, &lines);

    let expected = common::raw_rider_totals();
    let (handle, thread) = start(config, timely::Config::thread());
    let matches = |latest: &BTreeMap<String, Value>| {
        expected.iter().all(|(postcode, (bikes, meca, elec))| {
            latest.get(postcode).is_some_and(|v| {
                (
                    v["nbr_total"].as_i64(),
                    v["nbr_meca"].as_i64(),
                    v["nbr_elec"].as_i64(),
                ) == (Some(*bikes), Some(*meca), Some(*elec))
            })
        })
    };
    wait_for(
        "the rider totals on the output topic",
        || broker.log_tail(),
        || matches(&latest(&broker.kcat_read(OUTPUT))),
    );
    stop(handle, thread);
    let latest = latest(&broker.kcat_read(OUTPUT));
    assert!(matches(&latest));
    let (bikes, meca, elec) = expected
        .values()
        .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    assert_eq!(
        (bikes, meca, elec),
        (15_446, 10_231, 5_215),
        "the fixtures README's totals"
    );
    assert_eq!(latest["75015"]["nbr_total"], 1_114);
    // Only `unknown` is beyond the table's postcodes.
    let extra: Vec<&String> = latest
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(extra.iter().all(|k| *k == "unknown"), "{extra:?}");
}

/// Bad records, forged markers among them: a far-future marker (on a
/// partition with records of the epoch open, and on an idle one) and
/// markers going back are dead-lettered and freeze nothing, the output is
/// the reference's.
#[test]
fn epoch_series_with_idle_partitions_and_bad_records() {
    let broker = Broker::start();
    // No flags: the epoch protocol is told by the records.
    let config = default_config(&broker.address, OUTPUT);
    create_topics(&broker.address, &config);
    let epochs = paris();
    // In epoch 3: a record that is not JSON, and one with no epoch headers.
    let bad = |epoch: Epoch| {
        if epoch != 3 {
            return Vec::new();
        }
        vec![
            InputRecord {
                topic: STATUS_TOPIC.into(),
                partition: 1,
                key: Some(b"\"bogus\"".to_vec()),
                value: Some(b"{\"station_id\": \"bogus\", \"num_bikes".to_vec()),
                stamped: true,
            },
            InputRecord {
                topic: STATUS_TOPIC.into(),
                partition: 2,
                key: None,
                value: Some(b"{}".to_vec()),
                stamped: false,
            },
        ]
    };
    let forged = [
        ForgedMarker {
            during: 3,
            epoch: 1_000_000_000_000,
            partition: 0,
        },
        ForgedMarker {
            during: 3,
            epoch: 1_000_000_000_000,
            partition: 1,
        },
        ForgedMarker {
            during: 5,
            epoch: 2,
            partition: 2,
        },
        ForgedMarker {
            during: 6,
            epoch: 3,
            partition: 2,
        },
    ];
    write_paris(&broker.address, &epochs, &bad, &forged);

    let last = epochs.last().unwrap().0.epoch;
    let (handle, thread) = start(config, timely::Config::thread());
    wait_for(
        "the last epoch committed",
        || broker.log_tail(),
        || handle.committed() == Some(last),
    );
    let stats = handle.source_stats();
    stop(handle, thread);

    let progress = assert_epochs_on_topic(&broker.kcat_read(OUTPUT), &epochs);
    // The progress record of the last epoch holds every input partition's
    // position, past that epoch's marker.
    let positions = &progress[&last]["positions"];
    for topic in [STATUS_TOPIC, DIRECTORY_TOPIC] {
        for partition in ["0", "1", "2"] {
            assert!(
                positions[topic][partition]
                    .as_i64()
                    .is_some_and(|o| o >= last as i64),
                "{topic}[{partition}] in {positions}"
            );
        }
    }
    assert_eq!(
        progress[&last]["feed_time"],
        epochs.last().unwrap().0.feed_time
    );

    let dead = broker.kcat_read(DEAD);
    let mut reasons: Vec<(&str, &str, &str)> = dead
        .iter()
        .map(|r| {
            (
                header(r, "velib-dlq-reason").unwrap(),
                header(r, "velib-dlq-topic").unwrap(),
                header(r, "velib-dlq-partition").unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("epoch_gap_too_large", STATUS_TOPIC, "0"),
            ("epoch_gap_too_large", STATUS_TOPIC, "1"),
            ("invalid_header", STATUS_TOPIC, "2"),
            ("invalid_json", STATUS_TOPIC, "1"),
            ("marker_goes_back", STATUS_TOPIC, "2"),
            ("marker_goes_back", STATUS_TOPIC, "2"),
        ],
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .filter(|r| header(r, "velib-dlq-reason") == Some("epoch_gap_too_large"))
            .all(|r| header(r, "velib-dlq-error").is_some_and(|e| e.contains("1000000000000"))),
        "{dead:#?}"
    );
    assert!(dead
        .iter()
        .all(|r| header(r, "velib-dlq-offset").is_some_and(|o| o.parse::<i64>().is_ok())));
    assert!(
        dead.iter().any(|r| r["payload"] == "{}"),
        "the raw bytes are kept"
    );
    assert_eq!(stats.dead_letters.values().sum::<u64>(), 6);
    assert_eq!(stats.dead_letters["epoch_gap_too_large"], 2);
    assert_eq!(stats.dead_letters["marker_goes_back"], 2);
}

/// Apache Kafka hides the aborted transaction from read_committed readers:
/// the attempt protocol is not even needed there.
#[test]
fn a_dead_attempt_is_ignored_and_the_new_attempt_counts() {
    dead_attempt("read_committed");
}

/// At read_uncommitted Apache Kafka shows the aborted transaction's records,
/// as some Kafka-compatible services show them to every reader: the attempt
/// protocol must leave them out.
#[test]
fn a_dead_attempt_shown_to_the_reader_is_left_out() {
    dead_attempt("read_uncommitted");
}

fn dead_attempt(isolation: &str) {
    let broker = Broker::start();
    let mut config = config(&broker.address, Framing::Epochs, true, OUTPUT);
    if isolation == "read_uncommitted" {
        config.kafka = config.kafka.read_uncommitted();
    }
    create_topics(&broker.address, &config);
    let epochs: Vec<_> = paris().into_iter().take(4).collect();
    let topics = [(STATUS_TOPIC, 3), (DIRECTORY_TOPIC, 3)];
    let first = ScriptedEpochWriter::new(&broker.address, "attempt-1", &topics);
    for (updates, _) in &epochs[..2] {
        first.write_epoch(
            updates.epoch,
            updates.feed_time,
            &epoch_records(updates, true, &by_id(3)),
        );
    }
    // Attempt 1 dies in epoch 3 after writing wrong counts for every station
    // that changes, and tombstones for some that do not; attempt 2's
    // producer fences it, and the broker aborts its transaction.
    let mut wrong = epochs[2].0.clone();
    for (status, diff) in wrong.statuses.iter_mut() {
        if *diff > 0 {
            status.bikes_available += 100;
        }
    }
    let mut dying = epoch_records(&wrong, true, &by_id(3));
    for (entry, _) in epochs[1].0.directory.iter().take(5) {
        dying.push(InputRecord {
            topic: STATUS_TOPIC.into(),
            partition: 0,
            key: Some(velib_dataflow::station_records::station_key(
                &entry.station_id,
            )),
            value: None,
            stamped: true,
        });
    }
    first.die_mid_epoch(3, &dying);
    // A new attempt redoes epoch 3, then writes epoch 4.
    let second = ScriptedEpochWriter::new(&broker.address, "attempt-2", &topics);
    for (updates, _) in &epochs[2..] {
        second.write_epoch(
            updates.epoch,
            updates.feed_time,
            &epoch_records(updates, true, &by_id(3)),
        );
    }

    let (handle, thread) = start(config, timely::Config::thread());
    wait_for(
        "epoch 4 committed",
        || broker.log_tail(),
        || handle.committed() == Some(4),
    );
    let stats = handle.source_stats();
    stop(handle, thread);
    assert_epochs_on_topic(&broker.kcat_read(OUTPUT), &epochs);
    // The aborted records are on the log, and kcat sees them only when it
    // reads uncommitted.
    let attempt_1 = |records: Vec<Value>| {
        records
            .iter()
            .filter(|r| {
                header(r, "velib-attempt") == Some("attempt-1")
                    && header(r, "velib-epoch") == Some("3")
            })
            .count()
    };
    assert_eq!(attempt_1(broker.kcat_read(STATUS_TOPIC)), 0);
    let shown = attempt_1(broker.kcat_read_uncommitted(STATUS_TOPIC));
    assert_eq!(
        shown,
        dying.iter().filter(|r| r.topic == STATUS_TOPIC).count()
    );
    if isolation == "read_uncommitted" {
        assert!(
            stats.discarded >= dying.len() as u64,
            "the dead attempt's records were read and left out: {stats:?}"
        );
    } else {
        assert_eq!(
            stats.discarded, 0,
            "read_committed never sees them: {stats:?}"
        );
    }
}

/// The output of one run: per epoch, the (key, value) records, sorted.
fn output_by_epoch(records: &[Value]) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut by_epoch: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for r in records {
        if header(r, "velib-kind") == Some("progress") {
            continue;
        }
        by_epoch
            .entry(header(r, "velib-epoch").unwrap().to_owned())
            .or_default()
            .push((r["key"].as_str().unwrap().to_owned(), r["payload"].clone()));
    }
    for records in by_epoch.values_mut() {
        records.sort_by(|a, b| a.0.cmp(&b.0));
    }
    by_epoch
}

#[test]
fn two_workers_and_two_processes_write_the_same_output() {
    let broker = Broker::start();
    let one = config(&broker.address, Framing::Epochs, true, "out-1w");
    create_topics(&broker.address, &one);
    for output in ["out-2w", "out-2p"] {
        create_topics(
            &broker.address,
            &config(&broker.address, Framing::Epochs, true, output),
        );
    }
    let epochs = paris();
    write_paris(&broker.address, &epochs, &|_| Vec::new(), &[]);
    let last = epochs.last().unwrap().0.epoch;

    for (output, timely_config) in [
        ("out-1w", timely::Config::thread()),
        ("out-2w", timely::Config::process(2)),
    ] {
        let (handle, thread) = start(
            config(&broker.address, Framing::Epochs, true, output),
            timely_config,
        );
        wait_for(
            output,
            || broker.log_tail(),
            || handle.committed() == Some(last),
        );
        stop(handle, thread);
    }

    // Two processes of one worker each, on loopback: the example binary.
    let hosts = common::hosts_file(2);
    let binary = common::example_binary("velib_aggregator");
    let logs: Vec<tempfile::NamedTempFile> = (0..2)
        .map(|_| tempfile::NamedTempFile::new().unwrap())
        .collect();
    let mut processes: Vec<std::process::Child> = (0..2)
        .map(|p| {
            std::process::Command::new(&binary)
                .stderr(logs[p].reopen().unwrap())
                .args([
                    "--brokers",
                    &broker.address,
                    "--directory-topic",
                    DIRECTORY_TOPIC,
                ])
                .args([
                    "--output-topic",
                    "out-2p",
                    "--dead-letter-topic",
                    DEAD,
                    "--no-create-topics",
                ])
                .args(["-n", "2", "-p", &p.to_string(), "-h"])
                .arg(hosts.path())
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("the example runs")
        })
        .collect();
    let last_progress = |records: &[Value]| {
        records.iter().any(|r| {
            header(r, "velib-kind") == Some("progress")
                && header(r, "velib-epoch") == Some(&last.to_string())
        })
    };
    let process_logs = || {
        let logs: Vec<String> = logs
            .iter()
            .map(|l| std::fs::read_to_string(l.path()).unwrap_or_default())
            .collect();
        format!(
            "process 0:\n{}\nprocess 1:\n{}\n{}",
            logs[0],
            logs[1],
            broker.log_tail()
        )
    };
    wait_for("out-2p", process_logs, || {
        last_progress(&broker.kcat_read("out-2p"))
    });
    // Ctrl-C stops both cleanly.
    for child in &processes {
        let status = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    for child in &mut processes {
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "a process exited with {status}\n{}",
            process_logs()
        );
    }

    let reference = output_by_epoch(&broker.kcat_read("out-1w"));
    assert_epochs_on_topic(&broker.kcat_read("out-1w"), &epochs);
    for output in ["out-2w", "out-2p"] {
        assert_eq!(
            output_by_epoch(&broker.kcat_read(output)),
            reference,
            "{output}"
        );
    }
}

#[test]
fn velib_aggregator_explains_its_flags_and_refuses_bad_ones() {
    common::assert_cli(
        "velib_aggregator",
        &[
            "--brokers",
            "--input-topic",
            "--output-topic",
            "--directory-topic",
            "--no-directory",
            "--input-format",
            "-X",
            "-w",
            "-n",
            "-p",
            "-h",
        ],
        &[
            (
                vec!["--brokers", "x:1", "-X", "no-equals"],
                "expected key=value",
            ),
            (
                vec!["--brokers", "x:1", "-n", "2", "-p", "2"],
                "-p (process index)",
            ),
            (vec!["--brokers", "x:1", "-w", "0"], "-w (workers)"),
            (
                vec!["--brokers", "x:1", "--postcodes", "/nonexistent.csv"],
                "/nonexistent.csv",
            ),
            (vec!["--brokers", "x:1", "--input-format", "avro"], "avro"),
            (
                vec!["--brokers", "x:1", "-X", "isolation.level=read_uncommitted"],
                "\"isolation.level\" cannot be set",
            ),
            (
                vec!["--brokers", "x:1", "-X", "transactional.id=mine"],
                "--transactional-id",
            ),
            (
                vec!["--brokers", "x:1", "--state-topic", "a", "--no-state"],
                "--no-state",
            ),
        ],
    );
}

/// `--vehicle-types` adds a field to every record, and the sink writes only
/// the postcodes that change: a restart that turned it on or off would leave
/// the topic's postcodes in both formats. It is refused, saying how to go
/// on, and writes nothing; the same option resumes.
#[test]
fn turning_vehicle_types_on_or_off_across_a_restart_is_refused() {
    let broker = Broker::start();
    let epochs = paris();
    let last = epochs.last().unwrap().0.epoch;
    let typed = |output: &str, on: bool| {
        let mut config = default_config(&broker.address, output);
        config.vehicle_types = on;
        config
    };
    create_topics(&broker.address, &typed(OUTPUT, true));
    create_topics(&broker.address, &typed("untyped", false));
    write_paris(&broker.address, &epochs, &|_| Vec::new(), &[]);
    for (output, first) in [(OUTPUT, true), ("untyped", false)] {
        let (handle, thread) = start(typed(output, first), timely::Config::thread());
        wait_for(
            "the last epoch committed",
            || broker.log_tail(),
            || handle.committed() == Some(last),
        );
        stop(handle, thread);
        let written = broker.kcat_read(output);
        assert!(
            latest(&written)
                .values()
                .all(|r| r.is_null() || r.get("vehicle_types").is_some() == first),
            "{output}"
        );
        let progress = written
            .iter()
            .rfind(|r| header(r, "velib-kind") == Some("progress"))
            .unwrap();
        let progress: Value = serde_json::from_str(progress["payload"].as_str().unwrap()).unwrap();
        let format = first.then_some("vehicle_types");
        assert_eq!(progress["value_format"].as_str(), format, "{progress}");

        let (_, thread) = start(typed(output, !first), timely::Config::thread());
        let refused = thread.join().expect("the aggregator does not panic");
        // Decided on worker 0 and told to every worker, as text.
        let why = refused
            .expect_err("resumed in the other format")
            .to_string();
        let (was, now) = if first {
            ("with", "without")
        } else {
            ("without", "with")
        };
        assert!(
            why.starts_with("cannot resume: epoch ")
                && why.contains(&format!("written {was} --vehicle-types"))
                && why.contains(&format!(", and this run is {now} it"))
                && why.contains(&format!("delete {output} and {output}-state")),
            "{why}"
        );
        assert_eq!(broker.kcat_read(output).len(), written.len(), "{output}");

        // The same option goes on where it stopped.
        let (handle, thread) = start(typed(output, first), timely::Config::thread());
        wait_for(
            "the resumed run to start",
            || broker.log_tail(),
            || handle.committed() == Some(last),
        );
        stop(handle, thread);
        assert_eq!(broker.kcat_read(output).len(), written.len(), "{output}");
    }
}
