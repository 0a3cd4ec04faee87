//! The live view in the terminal: reads the output topic as any client
//! would, whole committed epochs only (the live page's reader,
//! `velib_dataflow::web::committed`), and shows the postcodes after each
//! epoch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;
use velib_dataflow::dataflow::Epoch;
use velib_dataflow::kafka::KafkaConfig;
use velib_dataflow::output::{PostcodeDeletion, PostcodeRecord};
use velib_dataflow::web::committed::{CommittedConfig, CommittedReader};

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

pub struct LiveView {
    reader: CommittedReader,
    /// The system shown, when named (the table's heading says it).
    system: Option<String>,
    current: BTreeMap<String, PostcodeRecord>,
    last: Option<Epoch>,
    table: bool,
    /// The table as last drawn, for [`redraw`].
    screen: String,
}

/// Clears the terminal and draws every view's table, one under the other
/// (nothing for views printing JSON lines, which print as they read).
pub fn redraw(views: &[LiveView]) {
    let screens: Vec<&str> = views
        .iter()
        .filter(|v| v.table && !v.screen.is_empty())
        .map(|v| v.screen.as_str())
        .collect();
    if screens.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "\x1b[2J\x1b[H{}", screens.join("\n"));
    let _ = out.flush();
}

impl LiveView {
    pub fn new(
        kafka: &KafkaConfig,
        topic: &str,
        system: Option<String>,
        format: Format,
    ) -> Result<LiveView, String> {
        let mut config = CommittedConfig::new(kafka.clone());
        config.output_topic = topic.to_owned();
        // The terminal shows postcodes only: no stations to read.
        config.state_topic = None;
        let reader = CommittedReader::open(config).map_err(|e| format!("the view: {e}"))?;
        let table = match format {
            Format::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Format::Table => true,
            Format::Json => false,
        };
        Ok(LiveView {
            reader,
            system,
            current: BTreeMap::new(),
            last: None,
            table,
            screen: String::new(),
        })
    }

    /// The last epoch shown.
    pub fn last(&self) -> Option<Epoch> {
        self.last
    }

    /// Reads what arrived within `timeout` and shows every epoch completed:
    /// JSON lines printed at once, the table drawn for [`redraw`]. Whether
    /// an epoch was shown.
    pub fn poll(&mut self, timeout: Duration) -> bool {
        let mut shown = false;
        for epoch in self.reader.poll(timeout) {
            shown = true;
            let feed_time = epoch.feed_time.or_else(|| {
                epoch
                    .postcodes
                    .values()
                    .flatten()
                    .map(|r| r.feed_time)
                    .max()
            });
            self.show(epoch.epoch, &epoch.postcodes, feed_time);
        }
        shown
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
        if !self.table {
            let mut out = std::io::stdout().lock();
            for (postcode, record) in changes {
                let line = match record {
                    Some(r) => serde_json::to_string(r),
                    None => serde_json::to_string(&PostcodeDeletion {
                        system: self.system.clone(),
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
        // Written to a string: `redraw` shows every system's together.
        let mut out = String::new();
        let system = match &self.system {
            Some(name) => format!(" · {name}"),
            None => String::new(),
        };
        let totals = velib_dataflow::web::page::Totals::of(self.current.values());
        let (bikes, meca, elec) = (totals.nbr_total, totals.nbr_meca, totals.nbr_elec);
        let (empty, full) = (totals.nbr_stations_empty, totals.nbr_stations_full);
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(120);
        const CELL: usize = 22;
        let columns = (width / CELL).max(1);
        let _ = writeln!(
            out,
            "velib-dataflow{system} · epoch {epoch} · feed time {} · {bikes} bikes ({meca} mechanical, {elec} e-bikes) · {empty} stations empty, {full} full · {} postcodes, {} changed",
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
        self.screen = out;
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
