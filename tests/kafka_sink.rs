//! The Kafka sink on a real broker: the Paris series through the dataflow
//! into a compacted topic, read back with kcat (read_committed). Each epoch
//! holds exactly one record per changed postcode, equal to a from-scratch
//! computation, then one progress record per partition.

mod common;

use common::broker::Broker;
use differential_dataflow::input::Input;
use std::time::Duration;
use timely::dataflow::operators::{Input as _, Probe};
use velib_dataflow::dataflow::{postcode_counts, Epoch};
use velib_dataflow::kafka::sink::{KafkaSink, SinkConfig, SinkHandle};
use velib_dataflow::kafka::source::{SourcePosition, SourceProgress};
use velib_dataflow::kafka::topics::{ensure_topics, TopicOutcome, TopicSpec};
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::output::PostcodeRecordEncoder;
use velib_dataflow::snapshot::EpochUpdates;

const TOPIC: &str = "velib-projet-clean";

/// Runs `epochs` through the dataflow into the sink; returns the last
/// committed epoch and the sink's error, if any.
fn run_into_sink(config: SinkConfig, epochs: Vec<EpochUpdates>) -> (Option<Epoch>, Option<String>) {
    timely::execute_directly(move |worker| {
        let handle = SinkHandle::default();
        let sink_handle = handle.clone();
        let (mut statuses, mut directory, mut positions, probe) =
            worker.dataflow::<Epoch, _, _>(move |scope| {
                let (statuses, status_collection) = scope.new_collection();
                let (directory, directory_collection) = scope.new_collection();
                let (positions, position_stream) = scope.new_input::<Vec<SourcePosition>>();
                let counts = postcode_counts(status_collection, directory_collection);
                let committed = counts.kafka_sink(
                    SourceProgress::from_positions(position_stream),
                    config,
                    PostcodeRecordEncoder::default(),
                    sink_handle,
                );
                let (probe, _) = committed.probe();
                (statuses, directory, positions, probe)
            });
        for updates in epochs {
            let epoch = updates.epoch;
            // What a source would say of the epoch: where its input stands,
            // and the feed's time.
            positions.advance_to(epoch);
            positions.send(SourcePosition {
                topic: "input".into(),
                partition: 0,
                next_offset: epoch as i64 * 10,
                passed: epoch,
                feed_time: Some(updates.feed_time),
                closed_at_ms: None,
            });
            positions.advance_to(epoch + 1);
            statuses.advance_to(epoch);
            directory.advance_to(epoch);
            for (row, diff) in updates.statuses {
                statuses.update(row, diff);
            }
            for (row, diff) in updates.directory {
                directory.update(row, diff);
            }
            statuses.advance_to(epoch + 1);
            directory.advance_to(epoch + 1);
            statuses.flush();
            positions.flush();
            directory.flush();
            while probe.less_than(&(epoch + 1)) {
                worker.step();
            }
        }
        (handle.committed(), handle.error())
    })
}

#[test]
fn paris_series_lands_on_the_topic_exactly_once_per_changed_postcode() {
    let started = unix_seconds();
    let broker = Broker::shared();
    let kafka = KafkaConfig::new(&broker.address);
    let outcome = ensure_topics(
        &kafka,
        &[TopicSpec::new(TOPIC, 3).compacted()],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_tail()));
    assert_eq!(outcome, vec![(TOPIC.to_string(), TopicOutcome::Created)]);
    // A second start finds it and says so.
    let again = ensure_topics(
        &kafka,
        &[TopicSpec::new(TOPIC, 3).compacted()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        again,
        vec![(TOPIC.to_string(), TopicOutcome::Exists { partitions: 3 })]
    );

    let epochs = common::sequence(common::paris_series(true));
    let config = SinkConfig::new(kafka, TOPIC, "velib-sink-test");
    let (committed, error) = run_into_sink(config, epochs.iter().map(|(u, _)| u.clone()).collect());
    assert_eq!(error, None, "{}", broker.log_tail());
    assert_eq!(committed, Some(epochs.len() as Epoch));

    let ended = unix_seconds();
    let progress = common::output::assert_epochs_on_topic(&broker.kcat_read(TOPIC), &epochs);
    for (updates, _) in &epochs {
        // The feed's age when the epoch was written, by the writer's clock.
        let age = progress[&updates.epoch]["feed_age_s"]
            .as_i64()
            .expect("an age");
        assert!(
            (started - updates.feed_time..=ended - updates.feed_time).contains(&age),
            "epoch {}: age {age}",
            updates.epoch
        );
        let epoch = updates.epoch;
        assert_eq!(
            progress[&epoch]["positions"]["input"]["0"],
            epoch * 10,
            "epoch {epoch}: the progress record holds the source's position"
        );
        assert_eq!(progress[&epoch]["feed_time"], updates.feed_time);
    }
}

#[test]
fn existing_topics_are_checked_for_compaction_through_describe_configs() {
    let broker = Broker::shared();
    let kafka = KafkaConfig::new(&broker.address);
    let created = ensure_topics(
        &kafka,
        &[
            TopicSpec::new("plain", 2),
            TopicSpec::new("compacted", 2).compacted(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        created,
        vec![
            ("plain".to_string(), TopicOutcome::Created),
            ("compacted".to_string(), TopicOutcome::Created)
        ]
    );
    // The broker reports the compacted topic's cleanup.policy: it passes.
    let checked = ensure_topics(
        &kafka,
        &[TopicSpec::new("compacted", 1).compacted()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        checked,
        vec![(
            "compacted".to_string(),
            TopicOutcome::Exists { partitions: 2 }
        )]
    );
    // An existing topic that must be compacted and is not is refused, with
    // the command that fixes it.
    let e = ensure_topics(
        &kafka,
        &[TopicSpec::new("plain", 1).compacted()],
        Duration::from_secs(30),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("plain") && e.contains("\"delete\"") && e.contains("cleanup.policy=compact"),
        "{e}"
    );
    // kcat, on its own, sees what was created.
    let out = broker
        .kcat()
        .args(["-L", "-t", "compacted"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("topic \"compacted\" with 2 partitions"),
        "{listing}"
    );
}

/// Resuming in another value format than the committed one would leave
/// the topic's keys in both (only changed keys are written): the sink
/// refuses, and writes nothing.
#[test]
fn a_resume_in_another_value_format_is_refused_and_writes_nothing() {
    const FORMATS: &str = "velib-sink-formats";
    let broker = Broker::shared();
    let kafka = KafkaConfig::new(&broker.address);
    ensure_topics(
        &kafka,
        &[TopicSpec::new(FORMATS, 1).compacted()],
        Duration::from_secs(30),
    )
    .unwrap();
    let epochs: Vec<EpochUpdates> = common::sequence(common::paris_series(true))
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let mut config = SinkConfig::new(kafka, FORMATS, "velib-sink-formats");
    config.value_format = Some("typed".into());
    let (committed, error) = run_into_sink(config.clone(), epochs[..2].to_vec());
    assert_eq!((committed, error), (Some(2), None));
    let written = broker.kcat_read(FORMATS);
    let progress: serde_json::Value =
        serde_json::from_str(written.last().unwrap()["payload"].as_str().unwrap()).unwrap();
    assert_eq!(progress["value_format"], "typed");

    config.resume = Some(serde_json::from_value(progress).unwrap());
    for other in [None, Some("plain".to_owned())] {
        let config = SinkConfig {
            value_format: other.clone(),
            ..config.clone()
        };
        let (_, error) = run_into_sink(config, epochs[2..].to_vec());
        let error = error.expect("refused");
        let other = other.as_deref().unwrap_or("(none)");
        assert!(
            error.contains(&format!(
                "epoch 2 was written in the value format typed, and this sink writes {other}"
            )),
            "{error}"
        );
        assert_eq!(broker.kcat_read(FORMATS).len(), written.len());
    }
    // In the committed format, it goes on.
    let (committed, error) = run_into_sink(config, epochs[2..4].to_vec());
    assert_eq!((committed, error), (Some(4), None));
}

#[test]
fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kafka = KafkaConfig::new(format!("127.0.0.1:{port}"));
    let e = ensure_topics(&kafka, &[TopicSpec::new("t", 1)], Duration::from_secs(3))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
