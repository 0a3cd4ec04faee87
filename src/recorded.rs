//! Recorded snapshot files: finding them, reading them, and turning them
//! into [`Snapshot`]s.
//!
//! A recorded snapshot is a GBFS `station_status*.json` (matched with the
//! `station_information.json` beside it when there is one) or a City of
//! Paris open-data export. The format is told by the content, not the name.

use crate::consistency::Inconsistencies;
use crate::directory::DirectoryResolver;
use crate::feed::vehicle_types::parse_vehicle_types;
use crate::feed::{
    gbfs, payload, FeedError, InformationSnapshot, StatusSnapshot, MAX_PAYLOAD_BYTES,
};
use crate::snapshot::{Snapshot, StationSelection};
use crate::snapshot_source::{PollError, PollOutcome, PolledSnapshot, SnapshotSource};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A recorded file that could not be used. The replay goes on without it.
///
/// # Examples
///
/// ```
/// use velib_dataflow::recorded::{load, RecordedError};
///
/// let error = load(std::path::Path::new("/nonexistent/station_status.json")).unwrap_err();
/// assert!(matches!(error, RecordedError::Io { .. }));
/// assert_eq!(error.reason(), "unreadable_file");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordedError {
    /// The path could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than a feed payload can be.
    #[error("{path}: larger than the {limit}-byte limit for a feed payload")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The file's content was rejected.
    #[error("{path}: {source}")]
    Feed {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: FeedError,
    },
}

impl RecordedError {
    /// A short, stable name for the kind of error, for logs and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordedError::Io { .. } => "unreadable_file",
            RecordedError::TooLarge { .. } => "too_large",
            RecordedError::Feed { source, .. } => source.reason(),
        }
    }
}

/// A status snapshot read from a file, with its directory if it has one.
#[derive(Clone, Debug)]
pub struct RecordedSnapshot {
    /// Where it was read from.
    pub path: PathBuf,
    /// The statuses.
    pub status: StatusSnapshot,
    /// The directory information: the Paris export's own, or the
    /// `station_information.json` beside a GBFS status file.
    pub information: Option<InformationSnapshot>,
}

impl RecordedSnapshot {
    /// The snapshot to sequence: the selected stations, with their directory
    /// resolved. A station the information lacks gets an entry from its
    /// status, so every station is counted somewhere.
    pub fn into_snapshot(
        self,
        resolver: &DirectoryResolver,
        selection: &StationSelection,
    ) -> Snapshot {
        Snapshot::assemble(self.status, self.information.as_ref(), resolver, selection)
    }
}

/// GBFS files that are not station status, skipped when listing a directory.
const NOT_STATUS: &[&str] = &[
    "gbfs",
    "manifest",
    "system_",
    "station_information",
    "vehicle_types",
    "vehicle_status",
    "free_bike_status",
    "geofencing_zones",
];

/// The snapshot files `paths` name, in order: a file as itself, a directory
/// as its `*.json` status files sorted by name (not recursing). Paths that
/// cannot be listed are returned as errors, in place.
///
/// # Examples
///
/// ```
/// use velib_dataflow::recorded::snapshot_files;
///
/// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gbfs/velib/2024-11-19");
/// // station_information.json is not a status file: it is read beside one.
/// let files: Vec<_> = snapshot_files(&[dir]).into_iter().map(Result::unwrap).collect();
/// assert_eq!(files.len(), 1);
/// assert!(files[0].ends_with("station_status.json"));
/// ```
pub fn snapshot_files(paths: &[PathBuf]) -> Vec<Result<PathBuf, RecordedError>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(Ok(path.clone()));
            continue;
        }
        let listing = std::fs::read_dir(path).and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
        });
        match listing {
            Err(source) => out.push(Err(RecordedError::Io {
                path: path.clone(),
                source,
            })),
            Ok(mut files) => {
                files.retain(|f| {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    f.is_file()
                        && name.ends_with(".json")
                        && !NOT_STATUS.iter().any(|p| name.starts_with(p))
                });
                files.sort();
                out.extend(files.into_iter().map(Ok));
            }
        }
    }
    out
}

/// Reads at most [`MAX_PAYLOAD_BYTES`] of a file: a larger one is refused
/// without being read whole.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, RecordedError> {
    let io = |source| RecordedError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // Refuse what is known to be too large before reading any of it; the
    // bounded read below still guards files that grow or lie about their size.
    if file.metadata().map_err(io)?.len() > MAX_PAYLOAD_BYTES as u64 {
        return Err(RecordedError::TooLarge {
            path: path.to_owned(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PAYLOAD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordedError::TooLarge {
            path: path.to_owned(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(bytes)
}

/// Reads one recorded snapshot.
///
/// # Examples
///
/// ```
/// use velib_dataflow::recorded::load;
///
/// let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
///     .join("tests/fixtures/gbfs/velib/2024-11-19/station_status.json");
/// let recorded = load(&path)?;
/// assert_eq!(recorded.status.stations.len(), 1485);
/// // The station_information.json beside it is read too.
/// assert!(recorded.information.is_some());
/// # Ok::<(), velib_dataflow::recorded::RecordedError>(())
/// ```
pub fn load(path: &Path) -> Result<RecordedSnapshot, RecordedError> {
    let bytes = read_bounded(path)?;
    let feed = |source| RecordedError::Feed {
        path: path.to_owned(),
        source,
    };
    // A recorded system's vehicle types, beside its status, classify its
    // vehicles as the live poller's would.
    let types_file = path.with_file_name("vehicle_types.json");
    let types = if types_file.is_file() && types_file != path {
        let bytes = read_bounded(&types_file)?;
        Some(
            parse_vehicle_types(&bytes).map_err(|source| RecordedError::Feed {
                path: types_file.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    let (status, information) =
        payload::parse_status_typed(&bytes, types.as_ref()).map_err(feed)?;
    if information.is_some() {
        return Ok(RecordedSnapshot {
            path: path.to_owned(),
            status,
            information,
        });
    }
    let beside = path.with_file_name("station_information.json");
    let information = if beside.is_file() && beside != path {
        let bytes = read_bounded(&beside)?;
        Some(
            gbfs::parse_information(&bytes).map_err(|source| RecordedError::Feed {
                path: beside.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    Ok(RecordedSnapshot {
        path: path.to_owned(),
        status,
        information,
    })
}

/// Recorded snapshot files played as a feed, one file per poll: what the
/// producer publishes when it replays a recording instead of polling a live
/// feed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::directory::DirectoryResolver;
/// use velib_dataflow::snapshot_source::{PollOutcome, SnapshotSource};
/// use velib_dataflow::postcode::PostcodeTable;
/// use velib_dataflow::recorded::RecordedSource;
/// use velib_dataflow::snapshot::StationSelection;
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/opendata-paris/velib-series");
/// let resolver = DirectoryResolver::new(PostcodeTable::velib(), true);
/// let mut source = RecordedSource::new(&[dir.into()], resolver, StationSelection::all(), Duration::ZERO);
/// let mut snapshots = 0;
/// loop {
///     match source.poll()? {
///         PollOutcome::Snapshot(_) => snapshots += 1,
///         PollOutcome::NotModified => {}
///         PollOutcome::Exhausted => break,
///     }
/// }
/// assert_eq!(snapshots, 10);
/// # Ok::<(), velib_dataflow::snapshot_source::PollError>(())
/// ```
#[derive(Debug)]
pub struct RecordedSource {
    files: std::collections::VecDeque<Result<PathBuf, RecordedError>>,
    resolver: DirectoryResolver,
    selection: StationSelection,
    interval: std::time::Duration,
}

impl RecordedSource {
    /// Plays the snapshot files `paths` name (see [`snapshot_files`]), one
    /// per poll, `interval` apart.
    pub fn new(
        paths: &[PathBuf],
        resolver: DirectoryResolver,
        selection: StationSelection,
        interval: std::time::Duration,
    ) -> Self {
        RecordedSource {
            files: snapshot_files(paths).into(),
            resolver,
            selection,
            interval,
        }
    }
}

impl From<RecordedError> for PollError {
    fn from(e: RecordedError) -> Self {
        PollError::Source {
            reason: e.reason(),
            source: Box::new(e),
        }
    }
}

impl SnapshotSource for RecordedSource {
    fn poll(&mut self) -> Result<PollOutcome, PollError> {
        let Some(next) = self.files.pop_front() else {
            return Ok(PollOutcome::Exhausted);
        };
        let path = next?;
        let bytes = read_bounded(&path)?;
        let recorded = load(&path)?;
        let feed_fields = payload::station_fields(&bytes, &recorded.status);
        let inconsistencies = Inconsistencies::of(
            &recorded.status,
            recorded.information.as_ref(),
            &self.selection,
        );
        let snapshot = recorded.into_snapshot(&self.resolver, &self.selection);
        Ok(PollOutcome::Snapshot(PolledSnapshot {
            snapshot,
            feed_fields,
            information_error: None,
            vehicle_types_error: None,
            // Recorded long ago: its age says nothing of the feed now.
            age: None,
            inconsistencies,
        }))
    }

    fn interval(&self) -> std::time::Duration {
        self.interval
    }
}
