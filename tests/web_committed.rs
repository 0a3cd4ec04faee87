//! The live page's reader on Apache Kafka, against what it must not show:
//! an epoch not yet whole (progress on some partitions only), state records
//! of an epoch not yet released, records of an epoch already shown, and
//! hostile records (no epoch, a broken progress record, values that are not
//! records). Each is held back or passed over and counted; the whole epochs
//! come out exactly.

mod common;

use common::broker::Broker;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;
use std::time::{Duration, Instant};
use velib_dataflow::feed::{StationId, StationStatus};
use velib_dataflow::kafka::state::state_key;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::web::committed::{CommittedConfig, CommittedEpoch, CommittedReader};

const OUTPUT: &str = "page-counts";
const STATE: &str = "page-counts-state";

struct Writer(BaseProducer);

impl Writer {
    fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .headers(h);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.0.send(record).map_err(|(e, _)| e).unwrap();
        self.0.flush(Duration::from_secs(30)).unwrap();
    }

    fn postcode(&self, partition: i32, epoch: u64, postcode: &str, bikes: i64) {
        let record = json!({
            "postcode": postcode, "nbr_total": bikes, "nbr_meca": bikes, "nbr_elec": 0, "nbr_docks": 3,
            "nbr_stations": 1, "nbr_stations_renting": 1, "nbr_stations_not_renting": 0,
            "nbr_bikes_unavailable": 0, "nbr_stations_inferred": 0, "epoch": epoch, "feed_time": 1_732_004_538
        });
        let e = epoch.to_string();
        self.send(
            OUTPUT,
            partition,
            postcode.as_bytes(),
            Some(record.to_string().as_bytes()),
            &[("velib-epoch", &e)],
        );
    }

    fn progress(&self, partition: i32, epoch: u64) {
        let progress = json!({
            "epoch": epoch, "feed_time": 1_732_004_538 + epoch as i64, "positions": {},
            "state": {"topic": STATE, "partitions": 1, "keys": {}, "sources": ["velib-projet"]},
            "feed_age_s": 4
        });
        let e = epoch.to_string();
        self.send(
            OUTPUT,
            partition,
            b"__velib_progress",
            Some(progress.to_string().as_bytes()),
            &[("velib-epoch", &e), ("velib-kind", "progress")],
        );
    }

    fn status(&self, epoch: u64, id: u64, bikes: u32) {
        let status = StationStatus {
            station_id: StationId::Num(id),
            code: None,
            bikes_available: bikes,
            bike_types: None,
            docks_available: 3,
            is_installed: true,
            is_renting: true,
            is_returning: true,
            last_reported: None,
            judged: Default::default(),
            vehicle_types: Default::default(),
        };
        let e = epoch.to_string();
        self.send(
            STATE,
            0,
            &state_key("velib-projet", &StationId::Num(id)),
            Some(&serde_json::to_vec(&status).unwrap()),
            &[("velib-epoch", &e)],
        );
    }
}

/// Polls until the reader releases something, or `patience` passes.
fn next_epochs(reader: &mut CommittedReader, patience: Duration) -> Vec<CommittedEpoch> {
    let deadline = Instant::now() + patience;
    loop {
        let epochs = reader.poll(Duration::from_millis(200));
        if !epochs.is_empty() || Instant::now() > deadline {
            return epochs;
        }
    }
}

/// A broker with the page's two topics, and a plain producer for them.
fn topics_and_writer() -> (Broker, Writer) {
    let broker = Broker::start();
    broker.create_topics(&[(OUTPUT, 2, &[]), (STATE, 1, &[])]);
    let writer = Writer(
        ClientConfig::new()
            .set("bootstrap.servers", &broker.address)
            .create()
            .unwrap(),
    );
    (broker, writer)
}

#[test]
fn only_whole_epochs_come_out_and_hostile_records_are_passed_over() {
    let (broker, writer) = topics_and_writer();
    let mut config = CommittedConfig::new(KafkaConfig::new(broker.address.clone()));
    config.output_topic = OUTPUT.into();
    config.state_topic = Some(STATE.into());
    let mut reader = CommittedReader::open(config).unwrap();

    // Epoch 1, whole: a record, its station, progress on both partitions.
    writer.postcode(0, 1, "75001", 5);
    writer.status(1, 7, 5);
    // Hostile, in between: passed over, counted.
    writer.send(OUTPUT, 0, b"75002", Some(b"{}"), &[]);
    writer.send(OUTPUT, 0, b"75002", Some(b"{}"), &[("velib-epoch", "one")]);
    writer.send(
        OUTPUT,
        1,
        b"75003",
        Some(b"not json"),
        &[("velib-epoch", "1")],
    );
    writer.send(OUTPUT, 1, b"\xff\xfe", Some(b"{}"), &[("velib-epoch", "1")]);
    writer.send(STATE, 0, b"no source", Some(b"{}"), &[("velib-epoch", "1")]);
    writer.send(
        STATE,
        0,
        b"velib-projet\0{not an id",
        Some(b"{}"),
        &[("velib-epoch", "1")],
    );
    writer.send(
        STATE,
        0,
        &state_key("velib-projet", &8u64),
        Some(b"[1,2]"),
        &[("velib-epoch", "1")],
    );
    // Another source's state: not stations, and not an error.
    writer.send(
        STATE,
        0,
        &state_key("elsewhere", &[9, 10]),
        Some(b"{}"),
        &[("velib-epoch", "1")],
    );
    writer.progress(0, 1);
    writer.progress(1, 1);
    // Epoch 2, torn: progress on partition 0 only.
    writer.postcode(0, 2, "75001", 6);
    writer.status(2, 7, 6);
    writer.status(2, 8, 1);
    writer.progress(0, 2);
    writer.send(
        OUTPUT,
        1,
        b"__velib_progress",
        Some(b"{\"epoch\":"),
        &[("velib-epoch", "2"), ("velib-kind", "progress")],
    );
    // Forged progress: the largest epoch (no epoch after it), and a payload
    // of another epoch than its header's. Neither moves the output on.
    let forged = json!({"epoch": u64::MAX, "feed_time": null, "positions": {}, "state": null, "feed_age_s": null});
    for partition in 0..2 {
        writer.send(
            OUTPUT,
            partition,
            b"__velib_progress",
            Some(forged.to_string().as_bytes()),
            &[
                ("velib-epoch", &u64::MAX.to_string()),
                ("velib-kind", "progress"),
            ],
        );
    }
    writer.send(
        OUTPUT,
        1,
        b"__velib_progress",
        Some(forged.to_string().as_bytes()),
        &[("velib-epoch", "2"), ("velib-kind", "progress")],
    );

    let epochs = next_epochs(&mut reader, Duration::from_secs(60));
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let first = &epochs[0];
    assert_eq!(first.epoch, 1);
    assert_eq!(
        (first.feed_time, first.feed_age_s),
        (Some(1_732_004_539), Some(4))
    );
    assert_eq!(first.postcodes.keys().collect::<Vec<_>>(), ["75001"]);
    assert_eq!(first.postcodes["75001"].as_ref().unwrap().nbr_total, 5);
    assert_eq!(
        first.statuses.len(),
        1,
        "epoch 2's statuses wait: {:?}",
        first.statuses
    );
    assert_eq!(
        first.statuses[&StationId::Num(7)]
            .as_ref()
            .unwrap()
            .bikes_available,
        5
    );
    assert_eq!(first.stations_note, None);
    // Nothing more while epoch 2 is torn, however long.
    assert!(next_epochs(&mut reader, Duration::from_secs(3)).is_empty());
    assert_eq!(reader.malformed(), 11, "each hostile record counted once");

    // A record of epoch 1, late: never shown again. Epoch 2 made whole.
    writer.postcode(1, 1, "75009", 99);
    writer.progress(1, 2);
    let epochs = next_epochs(&mut reader, Duration::from_secs(60));
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    assert_eq!(epochs[0].epoch, 2);
    assert_eq!(epochs[0].postcodes.keys().collect::<Vec<_>>(), ["75001"]);
    assert_eq!(epochs[0].postcodes["75001"].as_ref().unwrap().nbr_total, 6);
    assert_eq!(
        epochs[0].statuses[&StationId::Num(7)]
            .as_ref()
            .unwrap()
            .bikes_available,
        6
    );
    assert_eq!(epochs[0].statuses.len(), 2);
    assert_eq!(reader.late(), 1, "epoch 1's late record, counted");

    // An epoch written without the state topic says why there are no stations.
    for partition in 0..2 {
        let progress = json!({"epoch": 3, "feed_time": null, "positions": {}, "state": null, "feed_age_s": null});
        writer.send(
            OUTPUT,
            partition,
            b"__velib_progress",
            Some(progress.to_string().as_bytes()),
            &[("velib-epoch", "3"), ("velib-kind", "progress")],
        );
    }
    let epochs = next_epochs(&mut reader, Duration::from_secs(60));
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0]
        .stations_note
        .as_deref()
        .unwrap()
        .contains("--no-state"));
}

#[test]
fn a_reader_with_no_cluster_says_so() {
    let mut config = CommittedConfig::new(KafkaConfig::new("127.0.0.1:9"));
    config.wait_for_topics = Duration::from_secs(1);
    let error = CommittedReader::open(config).unwrap_err().to_string();
    assert!(
        error.contains("velib-projet-clean") && error.contains("did not appear on 127.0.0.1:9"),
        "{error}"
    );
}

/// An epoch whole on the output topic while its stations are still being
/// fetched from the state topic (many, in the same transaction, fetched
/// 64 KiB at a time) is released only once they are all read.
#[test]
fn an_epoch_waits_for_all_of_its_stations() {
    const STATIONS: u64 = 60_000;
    let broker = Broker::start();
    broker.create_topics(&[(OUTPUT, 2, &[]), (STATE, 1, &[])]);
    let writer = Writer(
        ClientConfig::new()
            .set("bootstrap.servers", &broker.address)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .set("transactional.id", "page-test-aggregator")
            .create()
            .unwrap(),
    );
    writer.0.init_transactions(Duration::from_secs(30)).unwrap();
    // Fetched a little at a time: the output's progress arrives long
    // before the last station.
    let kafka = KafkaConfig::new(broker.address.clone())
        .with_property("max.partition.fetch.bytes=65536")
        .unwrap();
    let mut config = CommittedConfig::new(kafka);
    config.output_topic = OUTPUT.into();
    config.state_topic = Some(STATE.into());
    let mut reader = CommittedReader::open(config).unwrap();
    // Opened on empty topics: nothing to catch up, every epoch is its own.
    assert!(reader.poll(Duration::from_millis(200)).is_empty());
    // One transaction, as the aggregator writes an epoch: its stations,
    // its output, its progress.
    writer.0.begin_transaction().unwrap();
    let name = "a station with a name long enough to make the backlog large, ".repeat(4);
    for id in 0..STATIONS {
        let status = json!({
            "station_id": id, "code": name, "bikes_available": 1, "bike_types": null,
            "docks_available": 1, "is_installed": true, "is_renting": true, "is_returning": true,
            "last_reported": null
        });
        let key = state_key("velib-projet", &StationId::Num(id));
        let value = status.to_string();
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(STATE)
            .partition(0)
            .key(&key[..])
            .payload(value.as_bytes())
            .headers(OwnedHeaders::new().insert(Header {
                key: "velib-epoch",
                value: Some("1"),
            }));
        writer.0.send(record).map_err(|(e, _)| e).unwrap();
        writer.0.poll(Duration::ZERO);
    }
    writer.postcode(0, 1, "75001", 5);
    writer.progress(0, 1);
    writer.progress(1, 1);
    writer
        .0
        .commit_transaction(Duration::from_secs(60))
        .unwrap();

    let epochs = next_epochs(&mut reader, Duration::from_secs(120));
    assert_eq!(epochs.len(), 1);
    assert_eq!(
        epochs[0].statuses.len() as u64,
        STATIONS,
        "every station of epoch 1"
    );
}

/// A reader opened on topics with history reads them to the ends they had
/// and releases it all as one epoch, the last: stations and postcodes of
/// one time, whatever the cleaner kept of each topic.
#[test]
fn a_reader_opened_late_catches_up_in_one_epoch() {
    let (broker, writer) = topics_and_writer();
    for epoch in 1..=3 {
        writer.postcode(0, epoch, "75001", epoch as i64);
        writer.postcode(1, epoch, &format!("7500{}", epoch + 1), 1);
        writer.status(epoch, 7, epoch as u32);
        writer.status(epoch, 10 + epoch, 1);
        writer.progress(0, epoch);
        writer.progress(1, epoch);
    }
    let mut config = CommittedConfig::new(KafkaConfig::new(broker.address.clone()));
    config.output_topic = OUTPUT.into();
    config.state_topic = Some(STATE.into());
    let mut reader = CommittedReader::open(config).unwrap();
    let epochs = next_epochs(&mut reader, Duration::from_secs(60));
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let caught_up = &epochs[0];
    assert_eq!(caught_up.epoch, 3);
    assert_eq!(caught_up.feed_time, Some(1_732_004_541));
    assert_eq!(caught_up.postcodes.len(), 4);
    assert_eq!(caught_up.postcodes["75001"].as_ref().unwrap().nbr_total, 3);
    assert_eq!(caught_up.statuses.len(), 4);
    assert_eq!(
        caught_up.statuses[&StationId::Num(7)]
            .as_ref()
            .unwrap()
            .bikes_available,
        3
    );
    // Then epoch by epoch.
    writer.postcode(0, 4, "75001", 4);
    writer.progress(0, 4);
    writer.progress(1, 4);
    let epochs = next_epochs(&mut reader, Duration::from_secs(60));
    assert_eq!(epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), [4]);
}
