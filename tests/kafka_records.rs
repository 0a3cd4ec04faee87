//! Broken, truncated, oversized and hostile Kafka records: every one is a
//! clear `DecodeError` (what becomes a dead letter), never a panic, and a
//! well-formed record of each format reads back as written.

use proptest::prelude::*;
use velib_dataflow::directory::{DirectoryEntry, PostcodeSource};
use velib_dataflow::feed::{BikeTypes, StationId, StationStatus};
use velib_dataflow::kafka::decode::{RawRecord, RecordDecoder, MAX_RECORD_BYTES};
use velib_dataflow::kafka::protocol::{framing, Framed, RecordHeaders, ATTEMPT_HEADER};
use velib_dataflow::kafka::{DecodeError, EPOCH_HEADER, KIND_HEADER};
use velib_dataflow::postcode::Postcode;
use velib_dataflow::station_records::{
    station_key, DirectoryEntryDecoder, StationStatusDecoder, NORMALISED_FIELD,
};

fn record<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RawRecord<'a> {
    RawRecord {
        topic: "velib-projet",
        partition: 0,
        offset: 42,
        key,
        value,
    }
}

fn status() -> StationStatus {
    StationStatus {
        station_id: StationId::Num(213688169),
        code: Some("16107".into()),
        bikes_available: 3,
        bike_types: Some(BikeTypes {
            mechanical: 2,
            ebike: 1,
            other: 0,
        }),
        docks_available: 32,
        is_installed: true,
        is_renting: true,
        is_returning: true,
        last_reported: Some(1732004476),
        judged: Default::default(),
        vehicle_types: Default::default(),
    }
}

const SEED: &[u8] = br#"{"stationCode":"16107","station_id":213688169,"num_bikes_available":3,"numBikesAvailable":3,"num_bikes_available_types":[{"mechanical":2},{"ebike":1}],"num_docks_available":32,"numDocksAvailable":32,"is_installed":1,"is_returning":1,"is_renting":1,"last_reported":1732004476}"#;

#[test]
fn the_three_forms_of_a_status_read_back() {
    let (id, got) = StationStatusDecoder
        .decode(&record(None, Some(SEED)))
        .unwrap();
    assert_eq!((id, got), (StationId::Num(213688169), Some(status())));

    let producer = serde_json::to_vec(&serde_json::json!({
        "station_id": 213688169,
        NORMALISED_FIELD: { "epoch": 4, "status": status() },
    }))
    .unwrap();
    let key = station_key(&status().station_id);
    let (_, got) = StationStatusDecoder
        .decode(&record(Some(&key), Some(&producer)))
        .unwrap();
    assert_eq!(got, Some(status()));

    let (id, got) = StationStatusDecoder
        .decode(&record(Some(&key), None))
        .unwrap();
    assert_eq!((id, got), (StationId::Num(213688169), None));
}

#[test]
fn broken_status_records_are_clear_errors() {
    let key = station_key(&StationId::Num(213688169));
    let other = station_key(&StationId::Num(1));
    let huge = vec![b' '; MAX_RECORD_BYTES + 1];
    let nested = "[".repeat(100_000);
    let cases: Vec<(&str, RawRecord<'_>, &str)> = vec![
        ("truncated", record(None, Some(&SEED[..SEED.len() / 2])), "invalid_json"),
        ("empty", record(None, Some(b"")), "invalid_json"),
        ("not UTF-8", record(None, Some(b"\xff\xfe{}")), "invalid_json"),
        ("nested", record(None, Some(nested.as_bytes())), "invalid_json"),
        ("oversized", record(None, Some(&huge)), "too_large"),
        ("a number", record(None, Some(b"42")), "invalid_field"),
        ("tombstone without key", record(None, None), "invalid_key"),
        ("key of another station", record(Some(&other), Some(SEED)), "key_mismatch"),
        ("binary key", record(Some(b"\x00\xff"), Some(SEED)), "invalid_key"),
        (
            "negative count",
            record(Some(&key), Some(br#"{"station_id":213688169,"num_bikes_available":-1,"num_docks_available":1,"is_installed":1,"is_renting":1,"is_returning":1}"#)),
            "invalid_field",
        ),
        (
            "normalised status of the wrong shape",
            record(Some(&key), Some(br#"{"velib":{"status":{"station_id":"x"}}}"#)),
            "invalid_json",
        ),
    ];
    for (what, raw, reason) in cases {
        let error = StationStatusDecoder.decode(&raw).unwrap_err();
        assert_eq!(error.reason(), reason, "{what}: {error}");
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn directory_records_read_back_and_broken_ones_are_errors() {
    let entry = DirectoryEntry {
        station_id: StationId::Text("abc".into()),
        code: Some("16107".into()),
        name: "Benjamin Godard - Victor Hugo".into(),
        position: None,
        capacity: Some(35),
        postcode: Postcode::parse("75016").unwrap(),
        postcode_source: PostcodeSource::Table,
    };
    let key = station_key(&entry.station_id);
    let value = serde_json::to_vec(&entry).unwrap();
    assert_eq!(
        DirectoryEntryDecoder
            .decode(&record(Some(&key), Some(&value)))
            .unwrap(),
        (entry.station_id.clone(), Some(entry.clone()))
    );
    for (raw, reason) in [
        (record(None, Some(&value)), "invalid_key"),
        (record(Some(&key), Some(&value[..10])), "invalid_json"),
        (record(Some(b"\"other\""), Some(&value)), "key_mismatch"),
        (
            record(Some(&key), Some(br#"{"station_id":"abc"}"#)),
            "invalid_json",
        ),
    ] {
        assert_eq!(
            DirectoryEntryDecoder.decode(&raw).unwrap_err().reason(),
            reason
        );
    }
}

#[test]
fn framing_of_hostile_headers_is_an_error_not_a_panic() {
    let empty: Vec<(&str, Option<&[u8]>)> =
        vec![(EPOCH_HEADER, None), (ATTEMPT_HEADER, Some(b"a"))];
    assert!(framing(&RecordHeaders::new(empty), None).is_err());
    let binary: Vec<(&str, Option<&[u8]>)> =
        vec![(EPOCH_HEADER, Some(b"\xff")), (ATTEMPT_HEADER, Some(b"a"))];
    assert!(matches!(
        framing(&RecordHeaders::new(binary), None),
        Err(DecodeError::Header { .. })
    ));
    let overflow: Vec<(&str, Option<&[u8]>)> = vec![
        (EPOCH_HEADER, Some(b"99999999999999999999999")),
        (ATTEMPT_HEADER, Some(b"a")),
    ];
    assert!(framing(&RecordHeaders::new(overflow), None).is_err());
    let kind_only: Vec<(&str, Option<&[u8]>)> = vec![(KIND_HEADER, Some(b"progress"))];
    assert!(framing(&RecordHeaders::new(kind_only), None).is_err());
    // Headers the protocol does not know are left alone.
    let foreign: Vec<(&str, Option<&[u8]>)> = vec![("traceparent", Some(b"00-abc"))];
    assert_eq!(
        framing(&RecordHeaders::new(foreign), None).unwrap(),
        Framed::Unframed
    );
}

proptest! {
    #[test]
    fn any_bytes_decode_to_a_value_or_an_error(
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
        epoch in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
    ) {
        let raw = record(key.as_deref(), value.as_deref());
        let _ = StationStatusDecoder.decode(&raw);
        let _ = DirectoryEntryDecoder.decode(&raw);
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            (EPOCH_HEADER, epoch.as_deref()),
            (ATTEMPT_HEADER, Some(b"a")),
            (KIND_HEADER, Some(b"marker")),
        ];
        let _ = framing(&RecordHeaders::new(headers), value.as_deref());
    }

    #[test]
    fn mutated_seed_records_never_panic(at in 0..SEED.len(), byte in any::<u8>(), cut in 0..SEED.len()) {
        let mut mutated = SEED.to_vec();
        mutated[at] = byte;
        mutated.truncate(cut.max(at + 1));
        let _ = StationStatusDecoder.decode(&record(None, Some(&mutated)));
    }
}
