//! Polling a bike-share feed: from a `gbfs.json` (or a status URL) to one
//! [`Snapshot`] per poll, with the station information refreshed less often
//! than the status, and whenever the status names a station it lacks.

use crate::directory::DirectoryResolver;
use crate::feed::{gbfs, payload, InformationSnapshot, StationId, StatusSnapshot};
use crate::fetch::{FeedFetcher, FetchConfig, FetchError, Fetched};
use crate::snapshot::{Snapshot, StationSelection};
use crate::snapshot_source::{PollError, PollOutcome, PolledSnapshot, SnapshotSource};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The Vélib' Métropole GBFS discovery file.
pub const VELIB_FEED: &str =
    "https://velib-metropole-opendata.smovengo.cloud/opendata/Velib_Metropole/gbfs.json";

/// The poll interval when the feed's `ttl` says nothing usable.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest interval a feed's `ttl` can set (an explicit interval may be
/// shorter).
pub const MIN_TTL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval a feed's `ttl` can set: Vélib' says 3600 s, and
/// changes every minute.
pub const MAX_TTL_INTERVAL: Duration = Duration::from_secs(60);

/// Where the feed is.
///
/// # Examples
///
/// ```
/// use velib_dataflow::poll::{FeedLocation, VELIB_FEED};
///
/// // Discover the feeds from gbfs.json, in French:
/// let velib = FeedLocation::Discover { url: VELIB_FEED.into(), language: Some("fr".into()) };
/// // Or poll a status URL directly (GBFS, or the City of Paris export):
/// let paris = FeedLocation::Discover {
///     url: "https://opendata.paris.fr/api/explore/v2.1/catalog/datasets/velib-disponibilite-en-temps-reel/exports/json".into(),
///     language: None,
/// };
/// assert_ne!(velib, paris);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedLocation {
    /// A URL fetched first: a `gbfs.json` discovery file (its
    /// `station_status` and `station_information` are then polled, in
    /// `language`, or the first language listed), or directly a station
    /// status payload (GBFS or the City of Paris export).
    Discover {
        /// The URL.
        url: String,
        /// The discovery language to use.
        language: Option<String>,
    },
    /// Explicit URLs.
    Explicit {
        /// `station_status.json` (or a City of Paris export).
        status: String,
        /// `station_information.json`, if there is one.
        information: Option<String>,
    },
}

/// How to poll.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::poll::{FeedLocation, PollConfig};
/// use velib_dataflow::snapshot::StationSelection;
///
/// let mut config = PollConfig::new(FeedLocation::Explicit {
///     status: "https://example.org/station_status.json".into(),
///     information: Some("https://example.org/station_information.json".into()),
/// });
/// config.interval = Some(Duration::from_secs(5));
/// config.selection = StationSelection::only(["16107", "32017"]);
/// config.fetch.max_bytes = 4 << 20;
/// ```
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// Where the feed is.
    pub location: FeedLocation,
    /// Poll this often, whatever the feed's `ttl` says.
    pub interval: Option<Duration>,
    /// Refresh station information at least this often.
    pub information_interval: Duration,
    /// Refresh station information when the status names a station it
    /// lacks, but not more often than this (some feeds list stations in
    /// their status that their information never has).
    pub unknown_station_refresh: Duration,
    /// The stations to keep.
    pub selection: StationSelection,
    /// HTTP settings.
    pub fetch: FetchConfig,
}

impl PollConfig {
    /// Polls `location` with the defaults: the feed's `ttl` bounded to
    /// 1–60 s, information every hour (or after a minute when a station is
    /// unknown), every station.
    pub fn new(location: FeedLocation) -> Self {
        PollConfig {
            location,
            interval: None,
            information_interval: Duration::from_secs(3600),
            unknown_station_refresh: Duration::from_secs(60),
            selection: StationSelection::all(),
            fetch: FetchConfig::default(),
        }
    }
}

/// A rejected body as the dead-letter topic keeps it.
fn cut_body(bytes: &[u8]) -> Box<[u8]> {
    bytes[..bytes
        .len()
        .min(crate::kafka::dead_letter::MAX_DEAD_LETTER_BYTES)]
        .into()
}

impl SnapshotSource for FeedPoller {
    fn poll(&mut self) -> Result<PollOutcome, PollError> {
        FeedPoller::poll(self)
    }
    fn interval(&self) -> Duration {
        FeedPoller::interval(self)
    }
}

/// The URLs in use, once discovered.
#[derive(Clone, Debug)]
struct Urls {
    status: String,
    information: Option<String>,
}

/// Polls a feed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use velib_dataflow::directory::DirectoryResolver;
/// use velib_dataflow::poll::{FeedLocation, FeedPoller, PollConfig};
/// use velib_dataflow::postcode::PostcodeTable;
///
/// let mut config = PollConfig::new(FeedLocation::Discover {
///     url: "http://127.0.0.1:9/gbfs.json".into(), language: None,
/// });
/// config.fetch.connect_timeout = Duration::from_secs(1);
/// let mut poller = FeedPoller::new(config, DirectoryResolver::new(PostcodeTable::velib(), true))?;
/// // Nothing listens there: the poll says so, and the next poll tries again.
/// assert_eq!(poller.poll().unwrap_err().reason(), "connect");
/// # Ok::<(), velib_dataflow::fetch::FetchError>(())
/// ```
#[derive(Debug)]
pub struct FeedPoller {
    config: PollConfig,
    resolver: DirectoryResolver,
    fetcher: FeedFetcher,
    urls: Option<Urls>,
    discovery_ttl: Option<u32>,
    status_ttl: Option<u32>,
    information: Option<InformationSnapshot>,
    information_at: Option<Instant>,
    known: HashSet<StationId>,
    /// A status body already fetched (the feed URL was a status, not a
    /// discovery file), to be used by the next poll.
    pending: Option<Vec<u8>>,
}

impl FeedPoller {
    /// A poller that has fetched nothing yet.
    pub fn new(config: PollConfig, resolver: DirectoryResolver) -> Result<Self, FetchError> {
        let fetcher = FeedFetcher::new(config.fetch.clone())?;
        let urls = match &config.location {
            FeedLocation::Discover { .. } => None,
            FeedLocation::Explicit {
                status,
                information,
            } => Some(Urls {
                status: status.clone(),
                information: information.clone(),
            }),
        };
        Ok(FeedPoller {
            config,
            resolver,
            fetcher,
            urls,
            discovery_ttl: None,
            status_ttl: None,
            information: None,
            information_at: None,
            known: HashSet::new(),
            pending: None,
        })
    }

    /// How long to wait between polls: the explicit interval, else the
    /// feed's `ttl` bounded to [`MIN_TTL_INTERVAL`]–[`MAX_TTL_INTERVAL`],
    /// else [`DEFAULT_INTERVAL`].
    pub fn interval(&self) -> Duration {
        if let Some(interval) = self.config.interval {
            return interval;
        }
        match self.status_ttl.or(self.discovery_ttl) {
            Some(ttl) if ttl > 0 => {
                Duration::from_secs(ttl.into()).clamp(MIN_TTL_INTERVAL, MAX_TTL_INTERVAL)
            }
            _ => DEFAULT_INTERVAL,
        }
    }

    /// The status URL polled, once known.
    pub fn status_url(&self) -> Option<&str> {
        self.urls.as_ref().map(|u| u.status.as_str())
    }

    /// The information URL, once known, if the feed has one.
    pub fn information_url(&self) -> Option<&str> {
        self.urls.as_ref().and_then(|u| u.information.as_deref())
    }

    /// Polls once: finds the feed's URLs if not known yet, fetches the
    /// status (and the information when due), and assembles the snapshot.
    pub fn poll(&mut self) -> Result<PollOutcome, PollError> {
        let urls = match &self.urls {
            Some(urls) => urls.clone(),
            None => {
                let urls = self.discover()?;
                self.urls = Some(urls.clone());
                urls
            }
        };
        let bytes = match self.pending.take() {
            Some(bytes) => bytes,
            None => match self.fetcher.fetch(&urls.status)? {
                Fetched::NotModified => return Ok(PollOutcome::NotModified),
                Fetched::Body(bytes) => bytes,
            },
        };
        let rejected = |source| PollError::Feed {
            url: urls.status.clone(),
            body: cut_body(&bytes),
            source: Box::new(source),
        };
        let (status, own_information) = match payload::parse_status(&bytes) {
            Ok(parsed) => parsed,
            Err(source) => {
                // Ask for the whole body again next time, even if unchanged:
                // a body that was cut short may carry the same validators.
                self.fetcher.forget(&urls.status);
                return Err(rejected(source));
            }
        };
        self.status_ttl = status.ttl;
        let feed_fields = payload::station_fields(&bytes, &status);
        let information_error = match own_information {
            Some(information) => {
                self.information = Some(information);
                None
            }
            None => self.refresh_information(&urls, &status).err(),
        };
        let snapshot = Snapshot::assemble(
            status,
            self.information.as_ref(),
            &self.resolver,
            &self.config.selection,
        );
        Ok(PollOutcome::Snapshot(PolledSnapshot {
            snapshot,
            feed_fields,
            information_error,
        }))
    }

    /// Reads the discovery file, or takes the URL as the status itself.
    fn discover(&mut self) -> Result<Urls, PollError> {
        let FeedLocation::Discover { url, language } = &self.config.location else {
            unreachable!("explicit URLs are known from the start")
        };
        let (url, language) = (url.clone(), language.clone());
        // Discovery is fetched whole each time it is needed.
        self.fetcher.forget(&url);
        // Unconditional (validators forgotten above), so always a body.
        let Fetched::Body(bytes) = self.fetcher.fetch(&url)? else {
            return Err(PollError::Fetch(FetchError::Status { url, status: 304 }));
        };
        match gbfs::parse_discovery(&bytes) {
            Ok(discovery) => {
                self.fetcher.forget(&url);
                self.discovery_ttl = discovery.ttl;
                let status = discovery
                    .feed_url("station_status", language.as_deref())
                    .ok_or_else(|| PollError::NoStatusFeed {
                        url: url.clone(),
                        language: language.clone(),
                    })?;
                let information = discovery
                    .feed_url("station_information", language.as_deref())
                    .map(str::to_owned);
                tracing::info!(discovery = url, status, information, "feed discovered");
                Ok(Urls {
                    status: status.to_owned(),
                    information,
                })
            }
            Err(discovery_error) => match payload::parse_status(&bytes) {
                Ok(_) => {
                    tracing::info!(
                        status = url,
                        "not a discovery file but a station status: polling it"
                    );
                    // This body is the first snapshot: the next poll uses it
                    // rather than asking again.
                    self.pending = Some(bytes);
                    Ok(Urls {
                        status: url,
                        information: None,
                    })
                }
                Err(_) => {
                    self.fetcher.forget(&url);
                    Err(PollError::Feed {
                        url,
                        body: cut_body(&bytes),
                        source: Box::new(discovery_error),
                    })
                }
            },
        }
    }

    /// Refreshes the station information when it is due: never fetched,
    /// older than the information interval, or lacking a station of
    /// `status` (at most once per `unknown_station_refresh`).
    fn refresh_information(
        &mut self,
        urls: &Urls,
        status: &StatusSnapshot,
    ) -> Result<(), PollError> {
        let Some(url) = &urls.information else {
            return Ok(());
        };
        let due = match self.information_at {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                age >= self.config.information_interval
                    || (age >= self.config.unknown_station_refresh
                        && status
                            .stations
                            .iter()
                            .any(|s| !self.known.contains(&s.station_id)))
            }
        };
        if !due {
            return Ok(());
        }
        // Whatever happens, do not ask again before the next due time.
        self.information_at = Some(Instant::now());
        match self.fetcher.fetch(url)? {
            Fetched::NotModified => Ok(()),
            Fetched::Body(bytes) => match gbfs::parse_information(&bytes) {
                Ok(information) => {
                    self.known = information
                        .stations
                        .iter()
                        .map(|s| s.station_id.clone())
                        .collect();
                    self.information = Some(information);
                    Ok(())
                }
                Err(source) => {
                    self.fetcher.forget(url);
                    Err(PollError::Feed {
                        url: url.clone(),
                        body: cut_body(&bytes),
                        source: Box::new(source),
                    })
                }
            },
        }
    }
}
