//! Replays recorded snapshots through the per-postcode dataflow.
//!
//! ```sh
//! cargo run --example velib_replay -- ../shared/fixtures/opendata-paris/velib-series
//! cargo run --example velib_replay -- --final --no-infer ../shared/fixtures/gbfs/velib/2024-11-19
//! ```
//!
//! Prints, for each epoch, the postcodes whose counts changed, one JSON object
//! per line on stdout (with `--final`, only the final state, one line per
//! postcode, sorted). Logs go to stderr. A bad file is reported and skipped;
//! the exit status is then 1.

mod common;

use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use velib_dataflow::directory::DirectoryResolver;
use velib_dataflow::kafka::changes::KeyChange;
use velib_dataflow::output::{json_line, PostcodeRecord};
use velib_dataflow::postcode::PostcodeTable;
use velib_dataflow::recorded::{load, snapshot_files};
use velib_dataflow::replay::run;
use velib_dataflow::snapshot::{SnapshotSequencer, StationSelection};

/// Replay recorded bike-share snapshots through the per-postcode dataflow.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Snapshot files or directories, in time order. A directory stands for its
    /// *.json status files sorted by name; a GBFS status file is matched with
    /// the station_information.json beside it when there is one.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Station -> postcode CSV, with a header naming `postcode` and
    /// `stationCode` and/or `station_id` [default: the shipped Vélib' table]
    #[arg(long, value_name = "FILE")]
    postcodes: Option<PathBuf>,

    /// Do not infer missing postcodes from the nearest station: stations
    /// without one are counted under `unknown`.
    #[arg(long)]
    no_infer: bool,

    /// Keep only these stations (codes or ids, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "CODE,CODE")]
    stations: Option<Vec<String>>,

    /// Print only the final state: one line per postcode, sorted by postcode.
    #[arg(long = "final")]
    final_only: bool,

    /// Timely worker threads.
    #[arg(short = 'w', long, default_value_t = 1, value_name = "N")]
    workers: usize,

    /// Exchange data between workers serialised, as between processes.
    #[arg(short = 'z', long)]
    serialised: bool,

    #[command(flatten)]
    stale: common::StaleArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match replay(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(rejected) => {
            tracing::warn!(rejected, "some files were rejected; exiting with status 1");
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("velib_replay: {message}");
            ExitCode::from(2)
        }
    }
}

/// Names the stations that newly have no postcode, once, when they enter
/// the directory: they are counted under `unknown`, never dropped.
fn report_new_unknowns(epoch: &velib_dataflow::snapshot::EpochUpdates) {
    const SHOWN: usize = 20;
    let new: Vec<String> = epoch
        .directory
        .iter()
        .filter(|(entry, diff)| *diff > 0 && entry.postcode.is_unknown())
        .map(|(entry, _)| match &entry.code {
            Some(code) => format!("{code} (id {})", entry.station_id),
            None => entry.station_id.to_string(),
        })
        .collect();
    if !new.is_empty() {
        let more = new.len().saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        tracing::warn!(
            epoch = epoch.epoch,
            "{} stations have no postcode and are counted under `unknown`: {}{tail}",
            new.len(),
            new[..new.len().min(SHOWN)].join(", ")
        );
    }
}

/// Runs the replay; returns how many files were rejected.
fn replay(args: Args) -> Result<usize, String> {
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let table = match &args.postcodes {
        Some(path) => PostcodeTable::from_path(path).map_err(|e| e.to_string())?,
        None => PostcodeTable::velib(),
    };
    tracing::info!(stations = table.len(), "postcode table loaded");
    let resolver = DirectoryResolver::new(table, !args.no_infer);
    let selection = match args.stations {
        Some(codes) => StationSelection::only(codes.into_iter().map(|c| c.trim().to_owned())),
        None => StationSelection::all(),
    };
    let rejected = Arc::new(Mutex::new(0_usize));
    let rejected_in_feed = rejected.clone();
    let mut sequencer = SnapshotSequencer::new()
        .judging(args.stale.policy())
        .long_after(args.stale.long_after);
    let epochs = snapshot_files(&args.paths).into_iter().filter_map(move |file| {
        let reject = |e: &dyn std::fmt::Display| {
            tracing::error!("{e}; skipped");
            *rejected_in_feed.lock().expect("counter") += 1;
        };
        let recorded = match file.and_then(|path| load(&path)) {
            Ok(recorded) => recorded,
            Err(e) => {
                reject(&e);
                return None;
            }
        };
        let path = recorded.path.display().to_string();
        let snapshot = recorded.into_snapshot(&resolver, &selection);
        let unknown = snapshot
            .directory
            .iter()
            .flatten()
            .filter(|d| d.postcode.is_unknown())
            .count();
        match sequencer.advance(snapshot) {
            Ok(Some(epoch)) => {
                report_new_unknowns(&epoch);
                tracing::info!(
                    file = %path,
                    epoch = epoch.epoch,
                    status_updates = epoch.statuses.len(),
                    directory_updates = epoch.directory.len(),
                    stations_without_postcode = unknown,
                    "snapshot accepted"
                );
                Some(epoch)
            }
            Ok(None) => {
                tracing::info!(file = %path, "snapshot identical to the previous one: no epoch");
                None
            }
            Err(e) => {
                tracing::warn!(file = %path, "{e}");
                None
            }
        }
    });
    let final_state: Arc<Mutex<BTreeMap<String, PostcodeRecord>>> = Arc::default();
    let state = final_state.clone();
    let final_only = args.final_only;
    let config = if args.serialised && args.workers > 1 {
        timely::Config {
            communication: timely::CommunicationConfig::ProcessBinary(args.workers),
            worker: timely::WorkerConfig::default(),
        }
    } else {
        timely::Config::process(args.workers)
    };
    run(config, epochs, move |output| {
        let mut state = state.lock().expect("state");
        for change in &output.changes {
            if !final_only {
                println!("{}", json_line(change, output.epoch, output.feed_time));
            }
            match change {
                KeyChange::Upsert(postcode, counts) => {
                    state.insert(
                        postcode.to_string(),
                        PostcodeRecord::new(postcode, counts, output.epoch, output.feed_time),
                    );
                }
                KeyChange::Delete(postcode) => {
                    state.remove(postcode.as_str());
                }
            }
        }
    })
    .map_err(|e| e.to_string())?;
    if final_only {
        for record in final_state.lock().expect("state").values() {
            println!(
                "{}",
                serde_json::to_string(record).map_err(|e| e.to_string())?
            );
        }
    }
    let rejected = *rejected.lock().expect("counter");
    Ok(rejected)
}
