//! Polling a feed: from a `gbfs.json` (or a status URL) to one parsed
//! [`StatusSnapshot`] per poll, with the station information refreshed less
//! often than the status, and whenever the status names a station it lacks.
//!
//! A [`FeedPoller`] makes one round of requests per [`FeedPoller::poll`] and
//! says how long to wait before the next ([`FeedPoller::interval`]); the loop
//! around it, and what to do with each snapshot, are the caller's.

use crate::fetch::{FeedFetcher, FetchConfig, FetchError, Fetched};
use crate::vehicle_types::{parse_vehicle_types, VehicleTypes};
use crate::{gbfs, payload, FeedError, InformationSnapshot, StationId, StatusSnapshot};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Vélib' Métropole GBFS discovery file: a real feed to poll.
///
/// # Examples
///
/// ```
/// use gbfs_feed::poll::{FeedLocation, VELIB_FEED};
///
/// let velib = FeedLocation::Discover { url: VELIB_FEED.into(), language: Some("fr".into()) };
/// assert!(VELIB_FEED.ends_with("/gbfs.json"));
/// # let _ = velib;
/// ```
pub const VELIB_FEED: &str =
    "https://velib-metropole-opendata.smovengo.cloud/opendata/Velib_Metropole/gbfs.json";

/// The poll interval when the feed's `ttl` says nothing usable.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig, DEFAULT_INTERVAL};
///
/// let config = PollConfig::new(FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None });
/// // Nothing fetched yet, so no ttl.
/// assert_eq!(FeedPoller::new(config)?.interval(), DEFAULT_INTERVAL);
/// assert_eq!(DEFAULT_INTERVAL, Duration::from_secs(10));
/// # Ok::<(), gbfs_feed::fetch::FetchError>(())
/// ```
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest interval a feed's `ttl` can set (an explicit interval may be
/// shorter).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::poll::{MAX_TTL_INTERVAL, MIN_TTL_INTERVAL};
///
/// // A feed's ttl of 0 or 3600 s is bounded to this range.
/// assert_eq!(MIN_TTL_INTERVAL, Duration::from_secs(1));
/// assert!(MIN_TTL_INTERVAL < MAX_TTL_INTERVAL);
/// ```
pub const MIN_TTL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest interval a feed's `ttl` can set: Vélib' says 3600 s, and
/// changes every minute.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::poll::MAX_TTL_INTERVAL;
///
/// assert_eq!(MAX_TTL_INTERVAL, Duration::from_secs(60));
/// ```
pub const MAX_TTL_INTERVAL: Duration = Duration::from_secs(60);

/// How much of a rejected body [`PollError::Rejected`] keeps (64 KiB):
/// enough to see what was wrong with it, without holding a whole bad
/// response of up to [`FetchConfig::max_bytes`].
///
/// It is the size of a dead-letter record in velib-dataflow, which writes
/// these bodies there.
///
/// # Examples
///
/// ```
/// use gbfs_feed::poll::MAX_REJECTED_BODY_BYTES;
///
/// assert_eq!(MAX_REJECTED_BODY_BYTES, 64 << 10);
/// ```
pub const MAX_REJECTED_BODY_BYTES: usize = 64 << 10;

/// Where the feed is.
///
/// # Examples
///
/// ```
/// use gbfs_feed::poll::{FeedLocation, VELIB_FEED};
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
/// use gbfs_feed::poll::{FeedLocation, PollConfig};
///
/// let mut config = PollConfig::new(FeedLocation::Explicit {
///     status: "https://example.org/station_status.json".into(),
///     information: Some("https://example.org/station_information.json".into()),
/// });
/// config.interval = Some(Duration::from_secs(5));
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
    /// HTTP settings.
    pub fetch: FetchConfig,
}

impl PollConfig {
    /// Polls `location` with the defaults: the feed's `ttl` bounded to
    /// 1–60 s, information every hour (or after a minute when a station is
    /// unknown).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::poll::{FeedLocation, PollConfig, VELIB_FEED};
    ///
    /// let config = PollConfig::new(FeedLocation::Discover { url: VELIB_FEED.into(), language: None });
    /// assert_eq!(config.interval, None);
    /// assert_eq!(config.information_interval, Duration::from_secs(3600));
    /// ```
    pub fn new(location: FeedLocation) -> Self {
        PollConfig {
            location,
            interval: None,
            information_interval: Duration::from_secs(3600),
            unknown_station_refresh: Duration::from_secs(60),
            fetch: FetchConfig::default(),
        }
    }
}

/// Why a poll gave no status.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig, PollError};
///
/// let mut config = PollConfig::new(FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None });
/// config.fetch.connect_timeout = Duration::from_secs(1);
/// let error = FeedPoller::new(config)?.poll().unwrap_err();
/// assert!(matches!(error, PollError::Fetch(_)));
/// assert!(error.to_string().starts_with("cannot connect to http://127.0.0.1:9/s.json"));
/// # Ok::<(), gbfs_feed::fetch::FetchError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    /// The request failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The payload was rejected.
    #[error("{url}: {source}")]
    Rejected {
        /// Where it came from.
        url: String,
        /// The body, cut to [`MAX_REJECTED_BODY_BYTES`].
        body: Box<[u8]>,
        /// Why it was rejected.
        #[source]
        source: Box<FeedError>,
    },
    /// The discovery file lists no `station_status`.
    #[error("{url}: the discovery file lists no station_status feed{}", language_text(.language))]
    NoStatusFeed {
        /// The discovery file.
        url: String,
        /// The language asked for.
        language: Option<String>,
    },
}

fn language_text(language: &Option<String>) -> String {
    language
        .as_ref()
        .map_or_else(String::new, |l| format!(" in language {l:?}"))
}

impl PollError {
    /// A short, stable name for the kind of failure, for logs and counters:
    /// the [`FetchError::reason`] or [`FeedError::reason`], or
    /// `no_status_feed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig};
    ///
    /// let mut config = PollConfig::new(FeedLocation::Discover { url: "http://127.0.0.1:9/gbfs.json".into(), language: None });
    /// config.fetch.connect_timeout = Duration::from_secs(1);
    /// assert_eq!(FeedPoller::new(config)?.poll().unwrap_err().reason(), "connect");
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::Fetch(e) => e.reason(),
            PollError::Rejected { source, .. } => source.reason(),
            PollError::NoStatusFeed { .. } => "no_status_feed",
        }
    }

    /// How long the server asked to wait before the next request.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig};
    ///
    /// let mut config = PollConfig::new(FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None });
    /// config.fetch.connect_timeout = Duration::from_secs(1);
    /// // Only a 429 with a `Retry-After` says how long.
    /// assert_eq!(FeedPoller::new(config)?.poll().unwrap_err().retry_after(), None);
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Fetch(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// A rejected body as [`PollError::Rejected`] keeps it.
fn cut_body(bytes: &[u8]) -> Box<[u8]> {
    bytes[..bytes.len().min(MAX_REJECTED_BODY_BYTES)].into()
}

/// What one successful poll gave.
///
/// # Examples
///
/// ```
/// use gbfs_feed::poll::Polled;
///
/// fn stations(polled: &Polled) -> usize {
///     match polled {
///         Polled::Status(polled) => polled.status.stations.len(),
///         Polled::NotModified => 0,
///     }
/// }
/// assert_eq!(stations(&Polled::NotModified), 0);
/// ```
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per poll, moved once
pub enum Polled {
    /// A new status.
    Status(PolledStatus),
    /// The server said the status has not changed since the last poll.
    NotModified,
}

/// A status polled from the feed, with the station information held.
///
/// # Examples
///
/// ```
/// use gbfs_feed::poll::PolledStatus;
///
/// // The information, when there is one, names the stations of the status.
/// fn names(polled: &PolledStatus) -> Vec<&str> {
///     let Some(information) = &polled.information else { return vec![] };
///     polled.status.stations.iter()
///         .filter_map(|s| information.stations.iter().find(|i| i.station_id == s.station_id))
///         .map(|i| i.name.as_str())
///         .collect()
/// }
/// # let _ = names;
/// ```
#[derive(Debug)]
pub struct PolledStatus {
    /// The whole status payload, parsed.
    pub status: StatusSnapshot,
    /// The station information held: refreshed by this poll when it was
    /// due, else the last one read (`None` when the feed has none, or none
    /// could be read yet). A City of Paris export carries its own.
    pub information: Option<Arc<InformationSnapshot>>,
    /// Each station's own JSON object from the status payload, by station
    /// id (see [`payload::station_fields`]).
    pub feed_fields: HashMap<StationId, Map<String, Value>>,
    /// Why the station information could not be refreshed, if it could not
    /// (`information` is then the one held before, or none).
    pub information_error: Option<PollError>,
    /// Why the vehicle types could not be refreshed, if they could not (the
    /// status was then classified by the ones held before, or, before any,
    /// by what its type ids say).
    pub vehicle_types_error: Option<PollError>,
}

/// The URLs in use, once discovered.
#[derive(Clone, Debug)]
struct Urls {
    status: String,
    information: Option<String>,
    /// `vehicle_types.json` (GBFS v2.1 and later), if discovery lists one.
    vehicle_types: Option<String>,
}

/// Polls a feed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig};
///
/// let mut config = PollConfig::new(FeedLocation::Discover {
///     url: "http://127.0.0.1:9/gbfs.json".into(), language: None,
/// });
/// config.fetch.connect_timeout = Duration::from_secs(1);
/// let mut poller = FeedPoller::new(config)?;
/// // Nothing listens there: the poll says so, and the next poll tries again.
/// assert_eq!(poller.poll().unwrap_err().reason(), "connect");
/// assert_eq!(poller.status_url(), None);
/// # Ok::<(), gbfs_feed::fetch::FetchError>(())
/// ```
#[derive(Debug)]
pub struct FeedPoller {
    config: PollConfig,
    fetcher: FeedFetcher,
    urls: Option<Urls>,
    discovery_ttl: Option<u32>,
    status_ttl: Option<u32>,
    information: Option<Arc<InformationSnapshot>>,
    information_at: Option<Instant>,
    known: HashSet<StationId>,
    /// The system's vehicle types, once read; refreshed as the information.
    vehicle_types: Option<Arc<VehicleTypes>>,
    vehicle_types_at: Option<Instant>,
    /// The last status named a vehicle type the types lack.
    undefined_vehicle_types: bool,
    /// A status body already fetched (the feed URL was a status, not a
    /// discovery file), to be used by the next poll.
    pending: Option<Vec<u8>>,
}

impl FeedPoller {
    /// A poller that has fetched nothing yet. Fails only when the HTTP
    /// client cannot be built.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig, VELIB_FEED};
    ///
    /// let poller = FeedPoller::new(PollConfig::new(FeedLocation::Discover { url: VELIB_FEED.into(), language: None }))?;
    /// # let _ = poller;
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn new(config: PollConfig) -> Result<Self, FetchError> {
        let fetcher = FeedFetcher::new(config.fetch.clone())?;
        let urls = match &config.location {
            FeedLocation::Discover { .. } => None,
            FeedLocation::Explicit {
                status,
                information,
            } => Some(Urls {
                status: status.clone(),
                information: information.clone(),
                vehicle_types: None,
            }),
        };
        Ok(FeedPoller {
            config,
            fetcher,
            urls,
            discovery_ttl: None,
            status_ttl: None,
            information: None,
            information_at: None,
            known: HashSet::new(),
            vehicle_types: None,
            vehicle_types_at: None,
            undefined_vehicle_types: false,
            pending: None,
        })
    }

    /// How long to wait between polls: the explicit interval, else the
    /// feed's `ttl` bounded to [`MIN_TTL_INTERVAL`]–[`MAX_TTL_INTERVAL`],
    /// else [`DEFAULT_INTERVAL`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig, VELIB_FEED};
    ///
    /// let mut config = PollConfig::new(FeedLocation::Discover { url: VELIB_FEED.into(), language: None });
    /// config.interval = Some(Duration::from_millis(500));
    /// assert_eq!(FeedPoller::new(config)?.interval(), Duration::from_millis(500));
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig};
    ///
    /// let explicit = FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None };
    /// // Explicit URLs are known from the start; discovered ones after the first poll.
    /// assert_eq!(FeedPoller::new(PollConfig::new(explicit))?.status_url(), Some("http://127.0.0.1:9/s.json"));
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn status_url(&self) -> Option<&str> {
        self.urls.as_ref().map(|u| u.status.as_str())
    }

    /// The information URL, once known, if the feed has one.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig};
    ///
    /// let explicit = FeedLocation::Explicit { status: "http://127.0.0.1:9/s.json".into(), information: None };
    /// assert_eq!(FeedPoller::new(PollConfig::new(explicit))?.information_url(), None);
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn information_url(&self) -> Option<&str> {
        self.urls.as_ref().and_then(|u| u.information.as_deref())
    }

    /// Polls once: finds the feed's URLs if not known yet, fetches the
    /// status (and the information when due), and parses them.
    ///
    /// A failure leaves the poller ready to try again: a rejected status is
    /// asked for whole next time, and discovery is retried until it works.
    ///
    /// # Examples
    ///
    /// A status served from this machine:
    ///
    /// ```
    /// use gbfs_feed::poll::{FeedLocation, FeedPoller, PollConfig, Polled};
    /// use std::io::{BufRead, BufReader, Write};
    ///
    /// let status = br#"{"last_updated": 1732004538, "ttl": 30, "data": {"stations": [{"station_id": "2351",
    ///     "num_bikes_available": 3, "num_docks_available": 9,
    ///     "is_installed": true, "is_renting": true, "is_returning": true}]}}"#;
    /// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let url = format!("http://{}/station_status.json", server.local_addr()?);
    /// std::thread::spawn(move || {
    ///     for mut stream in server.incoming().flatten() {
    ///         // Read the request's head, then answer it.
    ///         let mut lines = BufReader::new(&stream).lines();
    ///         while lines.next().is_some_and(|l| l.is_ok_and(|l| !l.is_empty())) {}
    ///         let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", status.len());
    ///         let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(status));
    ///     }
    /// });
    ///
    /// let mut poller = FeedPoller::new(PollConfig::new(FeedLocation::Explicit { status: url, information: None }))?;
    /// let Polled::Status(polled) = poller.poll()? else { panic!("a first poll has a status") };
    /// assert_eq!(polled.status.feed_time, 1732004538);
    /// assert_eq!(polled.status.stations[0].bikes_available, 3);
    /// assert!(polled.feed_fields.values().all(|fields| fields.contains_key("num_docks_available")));
    /// // The feed's ttl sets the interval.
    /// assert_eq!(poller.interval().as_secs(), 30);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn poll(&mut self) -> Result<Polled, PollError> {
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
                Fetched::NotModified => return Ok(Polled::NotModified),
                Fetched::Body(bytes) => bytes,
            },
        };
        // Before the status: its vehicles are counted by these types.
        let vehicle_types_error = self.refresh_vehicle_types(&urls).err();
        let typed = payload::parse_status_typed(&bytes, self.vehicle_types.as_deref());
        let (status, own_information) = match typed {
            Ok(parsed) => parsed,
            Err(source) => {
                if vehicle_types_error.is_some() {
                    // Not reported with this poll's error: asked again next time.
                    self.vehicle_types_at = None;
                }
                // Ask for the whole body again next time, even if unchanged:
                // a body that was cut short may carry the same validators.
                self.fetcher.forget(&urls.status);
                return Err(PollError::Rejected {
                    url: urls.status,
                    body: cut_body(&bytes),
                    source: Box::new(source),
                });
            }
        };
        self.status_ttl = status.ttl;
        let feed_fields = payload::station_fields(&bytes, &status);
        let information_error = match own_information {
            Some(information) => {
                self.information = Some(Arc::new(information));
                None
            }
            None => self.refresh_information(&urls, &status).err(),
        };
        // A type the status names and the types lack: the system may have
        // added one, asked for again soon (as an unknown station is).
        self.undefined_vehicle_types = !status.undefined_vehicle_types.is_empty();
        Ok(Polled::Status(PolledStatus {
            status,
            information: self.information.clone(),
            feed_fields,
            information_error,
            vehicle_types_error,
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
                let vehicle_types = discovery
                    .feed_url("vehicle_types", language.as_deref())
                    .map(str::to_owned);
                tracing::info!(
                    discovery = url,
                    status,
                    information,
                    vehicle_types,
                    "feed discovered"
                );
                Ok(Urls {
                    status: status.to_owned(),
                    information,
                    vehicle_types,
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
                        vehicle_types: None,
                    })
                }
                Err(_) => {
                    self.fetcher.forget(&url);
                    Err(PollError::Rejected {
                        url,
                        body: cut_body(&bytes),
                        source: Box::new(discovery_error),
                    })
                }
            },
        }
    }

    /// Refreshes the vehicle types when due: never asked for, older than the
    /// information interval, or (at most once per `unknown_station_refresh`)
    /// none read yet or lacking a type the last status named. While they
    /// cannot be read, the last ones read are kept (or, before any, the
    /// status's type ids are guessed from).
    fn refresh_vehicle_types(&mut self, urls: &Urls) -> Result<(), PollError> {
        let Some(url) = &urls.vehicle_types else {
            return Ok(());
        };
        let due = match self.vehicle_types_at {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                age >= self.config.information_interval
                    // None read yet (the last attempt failed), or the last
                    // status named a type they lack: sooner.
                    || ((self.vehicle_types.is_none() || self.undefined_vehicle_types)
                        && age >= self.config.unknown_station_refresh)
            }
        };
        if !due {
            return Ok(());
        }
        // Whatever happens, do not ask again before the next due time.
        self.vehicle_types_at = Some(Instant::now());
        if let Some(types) = self.fetch_parsed(url, parse_vehicle_types)? {
            self.vehicle_types = Some(Arc::new(types));
        }
        Ok(())
    }

    /// Fetches `url` and parses it: `None` when not modified; a body that
    /// does not parse is rejected with its start, and asked for whole next
    /// time.
    fn fetch_parsed<T>(
        &mut self,
        url: &str,
        parse: impl FnOnce(&[u8]) -> Result<T, FeedError>,
    ) -> Result<Option<T>, PollError> {
        match self.fetcher.fetch(url)? {
            Fetched::NotModified => Ok(None),
            Fetched::Body(bytes) => match parse(&bytes) {
                Ok(parsed) => Ok(Some(parsed)),
                Err(source) => {
                    self.fetcher.forget(url);
                    Err(PollError::Rejected {
                        url: url.to_owned(),
                        body: cut_body(&bytes),
                        source: Box::new(source),
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
        if let Some(information) = self.fetch_parsed(url, gbfs::parse_information)? {
            self.known = information
                .stations
                .iter()
                .map(|s| s.station_id.clone())
                .collect();
            self.information = Some(Arc::new(information));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(config: PollConfig) -> FeedPoller {
        FeedPoller::new(config).unwrap()
    }

    #[test]
    fn the_interval_is_the_explicit_one_else_the_ttl_bounded_else_the_default() {
        let location = FeedLocation::Explicit {
            status: "http://127.0.0.1:9/s.json".into(),
            information: None,
        };
        let mut p = poller(PollConfig::new(location.clone()));
        assert_eq!(p.interval(), DEFAULT_INTERVAL);
        p.discovery_ttl = Some(3600);
        assert_eq!(p.interval(), MAX_TTL_INTERVAL);
        // The status's ttl wins over the discovery's.
        p.status_ttl = Some(15);
        assert_eq!(p.interval(), Duration::from_secs(15));
        // A ttl of 0 says nothing usable.
        p.status_ttl = Some(0);
        assert_eq!(p.interval(), DEFAULT_INTERVAL);
        let mut config = PollConfig::new(location);
        config.interval = Some(Duration::from_millis(200));
        let mut p = poller(config);
        p.status_ttl = Some(30);
        assert_eq!(p.interval(), Duration::from_millis(200));
    }

    #[test]
    fn a_rejected_body_is_kept_cut_to_its_limit() {
        let big = vec![b'x'; MAX_REJECTED_BODY_BYTES + 10];
        assert_eq!(cut_body(&big).len(), MAX_REJECTED_BODY_BYTES);
        assert_eq!(&*cut_body(b"{"), b"{");
    }

    #[test]
    fn errors_keep_their_reasons_and_messages() {
        let e = PollError::NoStatusFeed {
            url: "http://x/gbfs.json".into(),
            language: Some("fr".into()),
        };
        assert_eq!(e.reason(), "no_status_feed");
        assert_eq!(
            e.to_string(),
            "http://x/gbfs.json: the discovery file lists no station_status feed in language \"fr\""
        );
        let e = PollError::NoStatusFeed {
            url: "http://x/gbfs.json".into(),
            language: None,
        };
        assert_eq!(
            e.to_string(),
            "http://x/gbfs.json: the discovery file lists no station_status feed"
        );
        let source = payload::parse_status(b"{").unwrap_err();
        let e = PollError::Rejected {
            url: "http://x/s.json".into(),
            body: cut_body(b"{"),
            source: Box::new(source),
        };
        assert_eq!(e.reason(), "invalid_json");
        assert!(e.to_string().starts_with("http://x/s.json: "), "{e}");
        let e = PollError::from(FetchError::RateLimited {
            url: "http://x/s.json".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(e.reason(), "rate_limited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }
}
