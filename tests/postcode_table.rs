//! The station → postcode table: the shipped Vélib' table, and every way a
//! table file can be wrong.

use std::io::Read;
use std::path::{Path, PathBuf};
use velib_dataflow::feed::{gbfs, StationId};
use velib_dataflow::postcode::{Postcode, PostcodeTable, PostcodeTableError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn table(text: &str) -> Result<PostcodeTable, PostcodeTableError> {
    PostcodeTable::from_reader(text.as_bytes())
}

fn pc(table: &PostcodeTable, code: Option<&str>, id: impl Into<StationId>) -> Option<String> {
    table
        .lookup(code, &id.into())
        .map(|p| p.as_str().to_owned())
}

/// The rows of the shipped CSV: (stationCode, station_id, postcode).
fn csv_rows() -> Vec<(String, u64, String)> {
    let text =
        std::fs::read_to_string(fixtures().join("postcodes/velib_station_postcodes.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("stationCode,station_id,postcode,city"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "{line}");
            (f[0].to_owned(), f[1].parse().unwrap(), f[2].to_owned())
        })
        .collect()
}

#[test]
fn velib_table_has_1462_stations() {
    let t = PostcodeTable::velib();
    assert_eq!(t.len(), 1462);
    assert!(!t.is_empty());
    assert_eq!(
        pc(&t, Some("16107"), 213_688_169u64).as_deref(),
        Some("75016")
    );
    assert_eq!(
        pc(&t, Some("44015"), 17_278_902_806u64).as_deref(),
        Some("94400")
    );
}

#[test]
fn velib_lookup_by_code_and_by_id_agree() {
    let t = PostcodeTable::velib();
    let rows = csv_rows();
    assert_eq!(rows.len(), 1462);
    let mut empty = 0;
    for (code, id, postcode) in &rows {
        let expected = (!postcode.is_empty()).then(|| postcode.clone());
        if expected.is_none() {
            empty += 1;
        }
        let by_both = pc(&t, Some(code), *id);
        let by_code = pc(&t, Some(code), "not-an-id");
        let by_id = pc(&t, None, *id);
        let by_id_unknown_code = pc(&t, Some("no-such-code"), *id);
        assert_eq!(by_both, expected, "{code}/{id}");
        assert_eq!(by_code, expected, "{code}");
        assert_eq!(by_id, expected, "{id}");
        assert_eq!(by_id_unknown_code, expected, "{id}");
    }
    assert_eq!(empty, 2);
    // Stations it does not know.
    assert_eq!(pc(&t, Some("99999999"), 1u64), None);
    assert_eq!(pc(&t, None, "16107"), None, "a code is not an id");
}

#[test]
fn shipped_table_is_the_fixture() {
    let from_file =
        PostcodeTable::from_path(fixtures().join("postcodes/velib_station_postcodes.csv")).unwrap();
    let shipped = PostcodeTable::velib();
    assert_eq!(from_file.len(), shipped.len());
    for (code, id, _) in csv_rows() {
        assert_eq!(
            from_file.lookup(Some(&code), &StationId::Num(id)),
            shipped.lookup(Some(&code), &StationId::Num(id))
        );
    }
}

#[test]
fn velib_table_joined_with_the_2024_11_19_status() {
    // shared/fixtures/README.md: 1,448 stations get a postcode, 2 have an
    // empty one, 35 are missing from the table.
    let bytes =
        std::fs::read(fixtures().join("gbfs/velib/2024-11-19/station_status.json")).unwrap();
    let status = gbfs::parse_status(&bytes).unwrap();
    let t = PostcodeTable::velib();
    let with_postcode = status
        .stations
        .iter()
        .filter(|s| t.lookup(s.code.as_deref(), &s.station_id).is_some())
        .count();
    assert_eq!(with_postcode, 1448);
    let codes: std::collections::HashSet<String> =
        csv_rows().into_iter().map(|(code, _, _)| code).collect();
    let missing = status
        .stations
        .iter()
        .filter(|s| !codes.contains(s.code.as_deref().unwrap()))
        .count();
    assert_eq!(missing, 35);
}

#[test]
fn missing_postcode_column() {
    let err = table("stationCode,station_id,city\n16107,213688169,Paris\n").unwrap_err();
    assert!(
        matches!(
            err,
            PostcodeTableError::MissingColumn { column: "postcode" }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`postcode`"), "{err}");
    // An empty input has no header at all.
    let err = table("").unwrap_err();
    assert!(matches!(
        err,
        PostcodeTableError::MissingColumn { column: "postcode" }
    ));
}

#[test]
fn missing_station_columns() {
    let err = table("code,id,postcode\n16107,213688169,75016\n").unwrap_err();
    assert!(
        matches!(
            err,
            PostcodeTableError::MissingColumn {
                column: "stationCode"
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("stationCode") && msg.contains("station_id"),
        "{msg}"
    );
}

#[test]
fn ragged_row() {
    let err = table("stationCode,postcode\n16107,75016\n9020,75009,Paris\n").unwrap_err();
    assert!(matches!(err, PostcodeTableError::Csv(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("postcode table: "), "{msg}");
    assert!(msg.contains("line: 3"), "{msg}");
    // Too few fields as well.
    let err = table("stationCode,postcode\n16107\n").unwrap_err();
    assert!(matches!(err, PostcodeTableError::Csv(_)), "{err:?}");
}

#[test]
fn non_utf8_row() {
    let err =
        PostcodeTable::from_reader(&b"stationCode,postcode\n16107,75016\n9020,75\xff09\n"[..])
            .unwrap_err();
    assert!(matches!(err, PostcodeTableError::Csv(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.to_lowercase().contains("utf-8"), "{msg}");
    // In the header too.
    let err =
        PostcodeTable::from_reader(&b"station\xc3\x28Code,postcode\n1,75001\n"[..]).unwrap_err();
    assert!(matches!(err, PostcodeTableError::Csv(_)), "{err:?}");
}

#[test]
fn invalid_postcode_text() {
    for bad in [
        "75016; DROP TABLE",
        "75016\u{0}",
        "<script>",
        "12345678901234567",
        "75 016 é",
    ] {
        let text = format!("stationCode,postcode\n16107,75016\n9020,\"{bad}\"\n");
        let err = table(&text).unwrap_err();
        let PostcodeTableError::InvalidPostcode { line, ref value } = err else {
            panic!("{bad:?}: {err:?}");
        };
        assert_eq!(line, 3, "{bad:?}");
        assert_eq!(value, bad.trim());
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("is not a postcode"), "{msg}");
    }
}

#[test]
fn conflicting_duplicates_name_the_line() {
    // Same code, two postcodes.
    let err =
        table("stationCode,station_id,postcode\n16107,1,75016\n9020,2,75009\n16107,3,75017\n")
            .unwrap_err();
    let PostcodeTableError::Conflict {
        line,
        ref station,
        ref previous,
        ref value,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (line, station.as_str(), previous.as_str(), value.as_str()),
        (4, "16107", "75016", "75017")
    );
    let msg = err.to_string();
    assert!(msg.contains("line 4"), "{msg}");
    assert!(
        msg.contains("16107") && msg.contains("75016") && msg.contains("75017"),
        "{msg}"
    );

    // Same id, two postcodes.
    let err =
        table("stationCode,station_id,postcode\n16107,213688169,75016\n16108,213688169,75001\n")
            .unwrap_err();
    assert!(
        matches!(err, PostcodeTableError::Conflict { line: 3, ref station, .. } if station == "213688169"),
        "{err:?}"
    );
    // A known-empty postcode, then a postcode.
    let err = table("stationCode,postcode\n16107,\n16107,75016\n").unwrap_err();
    assert!(
        matches!(err, PostcodeTableError::Conflict { line: 3, ref previous, .. } if previous.is_empty()),
        "{err:?}"
    );
}

#[test]
fn identical_duplicates_are_fine() {
    let t = table("stationCode,postcode\n16107,75016\n16107, 75016 \n").unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(pc(&t, Some("16107"), 0u64).as_deref(), Some("75016"));
}

#[test]
fn oversized_input_is_refused_without_allocating_it() {
    // Far more than the limit: only the limit (plus one byte) is ever read.
    let reader = std::io::repeat(b'a').take(PostcodeTable::MAX_BYTES as u64 * 64);
    let err = PostcodeTable::from_reader(reader).unwrap_err();
    assert!(
        matches!(err, PostcodeTableError::TooLarge { limit } if limit == PostcodeTable::MAX_BYTES),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains(&PostcodeTable::MAX_BYTES.to_string()));
    // One byte over.
    let reader = std::io::repeat(b'a').take(PostcodeTable::MAX_BYTES as u64 + 1);
    assert!(matches!(
        PostcodeTable::from_reader(reader),
        Err(PostcodeTableError::TooLarge { .. })
    ));
}

#[test]
fn failing_reader_is_an_io_error() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = PostcodeTable::from_reader(Broken).unwrap_err();
    assert!(matches!(err, PostcodeTableError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("disk on fire"), "{err}");
}

#[test]
fn bom_in_header_is_accepted() {
    let t = table("\u{feff}stationCode,station_id,postcode,city\n16107,213688169,75016,Paris\n")
        .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(pc(&t, Some("16107"), 0u64).as_deref(), Some("75016"));
    assert_eq!(pc(&t, None, 213_688_169u64).as_deref(), Some("75016"));
    // A BOM before `postcode` when it is the first column.
    let t = table("\u{feff}postcode,station_id\n75016,213688169\n").unwrap();
    assert_eq!(pc(&t, None, 213_688_169u64).as_deref(), Some("75016"));
}

#[test]
fn extra_columns_are_ignored_and_order_is_free() {
    let t = table(
        "city,postcode,notes,station_id,stationCode,lat\n\
         Paris,75016,\"a, quoted note\",213688169,16107,48.86\n\
         Vitry-sur-Seine,94400,,17278902806,44015,48.77\n",
    )
    .unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(pc(&t, Some("44015"), 0u64).as_deref(), Some("94400"));
    assert_eq!(pc(&t, None, 17_278_902_806u64).as_deref(), Some("94400"));
}

#[test]
fn only_one_key_column() {
    let by_id = table("station_id,postcode\n213688169,75016\n").unwrap();
    assert_eq!(by_id.len(), 1);
    // The code is unknown to the table: the id decides.
    assert_eq!(
        pc(&by_id, Some("16107"), 213_688_169u64).as_deref(),
        Some("75016")
    );
    assert_eq!(pc(&by_id, None, "213688169").as_deref(), Some("75016"));
    let by_code = table("stationCode,postcode\n16107,75016\n").unwrap();
    assert_eq!(pc(&by_code, Some("16107"), 0u64).as_deref(), Some("75016"));
    assert_eq!(pc(&by_code, None, "16107"), None);
}

#[test]
fn empty_postcode_rows_give_none() {
    let t = table("stationCode,station_id,postcode\n16107,213688169,\n9020,36255,  \n44015,17278902806,94400\n")
        .unwrap();
    assert_eq!(t.len(), 3, "stations with no postcode are still known");
    assert_eq!(pc(&t, Some("16107"), 213_688_169u64), None);
    assert_eq!(pc(&t, None, 36_255u64), None);
    assert_eq!(pc(&t, Some("44015"), 0u64).as_deref(), Some("94400"));
    // A known station with no postcode is not looked up again by its id.
    let t = table("stationCode,station_id,postcode\n16107,,\n,213688169,75016\n").unwrap();
    assert_eq!(pc(&t, Some("16107"), 213_688_169u64), None);
    assert_eq!(
        pc(&t, Some("other"), 213_688_169u64).as_deref(),
        Some("75016")
    );
}

#[test]
fn header_only_table_is_empty() {
    let t = table("stationCode,station_id,postcode,city\n").unwrap();
    assert!(t.is_empty());
    assert_eq!(pc(&t, Some("16107"), 213_688_169u64), None);
    assert!(PostcodeTable::empty().is_empty());
}

#[test]
fn from_path_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_table.csv");
    let err = PostcodeTable::from_path(&path).unwrap_err();
    let PostcodeTableError::Io {
        path: ref named,
        ref source,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(named, &path.display().to_string());
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("no_such_table.csv"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn from_path_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.csv");
    std::fs::write(&path, "stationCode,postcode\n16107,75016\n").unwrap();
    let t = PostcodeTable::from_path(&path).unwrap();
    assert_eq!(pc(&t, Some("16107"), 0u64).as_deref(), Some("75016"));
}

#[test]
fn postcode_parse() {
    assert_eq!(Postcode::parse(" 75016 ").unwrap().as_str(), "75016");
    assert_eq!(Postcode::parse("SW1A 1AA").unwrap().to_string(), "SW1A 1AA");
    assert_eq!(Postcode::parse("0150").unwrap().as_str(), "0150");
    assert_eq!(Postcode::parse("1234-567").unwrap().as_str(), "1234-567");
    for bad in [
        "",
        "   ",
        "75016;",
        "75016\n; DROP",
        "a/b",
        "12345678901234567",
        "７５０１６",
    ] {
        assert!(Postcode::parse(bad).is_none(), "{bad:?}");
    }
    assert!(Postcode::unknown().is_unknown());
    assert!(!Postcode::parse("75016").unwrap().is_unknown());
}
