//! Fetching feed payloads over HTTP, as a producer that is left running
//! must: connect and total timeouts, a size limit enforced while reading,
//! gzip, conditional requests, and a clear, classified error for every way a
//! response can go wrong.
//!
//! A [`FeedFetcher`] makes one attempt per call; what to do after a failure
//! (wait with [`Backoff`], or what the server's `Retry-After` asks) is the
//! caller's choice, because the poll loop also decides when to poll.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RETRY_AFTER,
};
use reqwest::StatusCode;

/// How the fetcher talks to the feed's server.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::fetch::FetchConfig;
///
/// let config = FetchConfig { timeout: Duration::from_secs(10), ..FetchConfig::default() };
/// assert_eq!(config.max_bytes, 16 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long a whole request may take, body included. A server that
    /// trickles its body is cut off here.
    pub timeout: Duration,
    /// The largest body accepted, after decompression. A larger (or endless)
    /// body is cut off with [`FetchError::TooLarge`] as soon as it passes
    /// this, never buffered whole.
    pub max_bytes: usize,
    /// Sent as `User-Agent`.
    pub user_agent: String,
}

impl Default for FetchConfig {
    /// 5 s to connect, 30 s per request, 16 MiB (Vélib's status is about
    /// 400 KiB).
    fn default() -> Self {
        FetchConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_bytes: 16 << 20,
            user_agent: concat!("velib-dataflow/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// What a successful fetch gave.
///
/// # Examples
///
/// ```
/// use gbfs_feed::fetch::Fetched;
///
/// // A poll loop keeps its last snapshot on `NotModified`, rather than parsing nothing.
/// let answers = [Fetched::Body(b"{}".to_vec()), Fetched::NotModified];
/// let bodies = answers.iter().filter(|a| matches!(a, Fetched::Body(_))).count();
/// assert_eq!(bodies, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// A new body.
    Body(Vec<u8>),
    /// The server said the resource has not changed since the last body
    /// (`304 Not Modified` to a conditional request).
    NotModified,
}

/// Why a fetch failed. Nothing of the response was used.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
///
/// let mut fetcher = FeedFetcher::new(FetchConfig { connect_timeout: Duration::from_secs(1), ..FetchConfig::default() })?;
/// let error = fetcher.fetch("http://127.0.0.1:9/station_status.json").unwrap_err();
/// assert_eq!(error.reason(), "connect");
/// assert!(error.to_string().starts_with("cannot connect to http://127.0.0.1:9/station_status.json"));
/// # Ok::<(), gbfs_feed::fetch::FetchError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No connection could be made (DNS, refused, TLS, connect timeout).
    #[error("cannot connect to {url}: {}", root_cause(.source))]
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The request took longer than [`FetchConfig::timeout`].
    #[error("{url}: no complete response within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered `429 Too Many Requests`.
    #[error("{url}: rate limited (429){}", retry_after_text(.retry_after))]
    RateLimited {
        /// The URL.
        url: String,
        /// How long the server asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is larger than [`FetchConfig::max_bytes`].
    #[error("{url}: body over the {limit}-byte limit{}", declared_text(.declared))]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
        /// The size the server declared, when it did.
        declared: Option<u64>,
    },
    /// The body could not be read whole (the connection closed in the
    /// middle, bad gzip…).
    #[error("{url}: body cut off or unreadable: {source}")]
    Body {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure of the request.
    #[error("{url}: request failed: {}", root_cause(.source))]
    Request {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
}

/// The innermost cause of an error: reqwest's own message only repeats the
/// URL, the cause says what went wrong (no such host, refused, TLS…).
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| {
        format!(", asked to retry after {} s", d.as_secs())
    })
}

fn declared_text(declared: &Option<u64>) -> String {
    declared.map_or_else(String::new, |d| format!(" (declared {d} bytes)"))
}

impl FetchError {
    /// A short, stable name for the kind of failure, for logs and counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
    ///
    /// let config = FetchConfig { connect_timeout: Duration::from_secs(1), ..FetchConfig::default() };
    /// let error = FeedFetcher::new(config)?.fetch("http://127.0.0.1:9/gbfs.json").unwrap_err();
    /// // The same name whatever the URL or the operating system's message.
    /// assert_eq!(error.reason(), "connect");
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Connect { .. } => "connect",
            FetchError::Timeout { .. } => "timeout",
            FetchError::RateLimited { .. } => "rate_limited",
            FetchError::Status { status, .. } if *status >= 500 => "server_error",
            FetchError::Status { status, .. } if *status >= 400 => "client_error",
            FetchError::Status { .. } => "unexpected_status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Body { .. } => "truncated_body",
            FetchError::Request { .. } => "request",
        }
    }

    /// How long the server asked to wait before the next request.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
    ///
    /// let config = FetchConfig { connect_timeout: Duration::from_secs(1), ..FetchConfig::default() };
    /// let error = FeedFetcher::new(config)?.fetch("http://127.0.0.1:9/gbfs.json").unwrap_err();
    /// // Only a 429 carries a wait; after any other failure, the caller's backoff decides.
    /// assert_eq!(error.retry_after(), None);
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The validators of the last body read from a URL.
#[derive(Clone, Debug, Default)]
struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

/// Fetches feed payloads, remembering each URL's `ETag` and `Last-Modified`
/// to make the next request conditional.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
///
/// // Nothing listens on port 9 here: the error says so, quickly.
/// let config = FetchConfig { connect_timeout: Duration::from_secs(1), ..FetchConfig::default() };
/// let mut fetcher = FeedFetcher::new(config)?;
/// let error = fetcher.fetch("http://127.0.0.1:9/gbfs.json").unwrap_err();
/// assert_eq!(error.reason(), "connect");
/// # Ok::<(), gbfs_feed::fetch::FetchError>(())
/// ```
#[derive(Debug)]
pub struct FeedFetcher {
    client: Client,
    config: FetchConfig,
    validators: HashMap<String, Validators>,
}

impl FeedFetcher {
    /// A fetcher with this configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
    ///
    /// // Building one makes no request.
    /// let fetcher = FeedFetcher::new(FetchConfig::default())?;
    /// assert_eq!(fetcher.config().max_bytes, 16 << 20);
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn new(config: FetchConfig) -> Result<Self, FetchError> {
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(config.user_agent.clone())
            .gzip(true)
            .build()
            .map_err(|source| FetchError::Request {
                url: String::new(),
                source,
            })?;
        Ok(FeedFetcher {
            client,
            config,
            validators: HashMap::new(),
        })
    }

    /// The configuration in use.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
    ///
    /// let fetcher = FeedFetcher::new(FetchConfig { timeout: Duration::from_secs(3), ..FetchConfig::default() })?;
    /// assert_eq!(fetcher.config().timeout, Duration::from_secs(3));
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Forgets `url`'s validators, so that the next fetch gets a full body
    /// even if nothing changed.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig};
    ///
    /// let mut fetcher = FeedFetcher::new(FetchConfig::default())?;
    /// // After a restart from a stale snapshot, ask for a full body even if unchanged.
    /// fetcher.forget("https://example.org/station_status.json");
    /// # Ok::<(), gbfs_feed::fetch::FetchError>(())
    /// ```
    pub fn forget(&mut self, url: &str) {
        self.validators.remove(url);
    }

    /// One GET of `url`: conditional when an earlier body of it had
    /// validators.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::{FeedFetcher, FetchConfig, FetchError};
    ///
    /// let config = FetchConfig { connect_timeout: Duration::from_secs(1), ..FetchConfig::default() };
    /// let mut fetcher = FeedFetcher::new(config)?;
    /// // Nothing listens on port 9: one attempt, one classified error, no retry.
    /// let error = fetcher.fetch("http://127.0.0.1:9/station_status.json").unwrap_err();
    /// assert!(matches!(error, FetchError::Connect { ref url, .. } if url.ends_with("/station_status.json")));
    /// # Ok::<(), FetchError>(())
    /// ```
    pub fn fetch(&mut self, url: &str) -> Result<Fetched, FetchError> {
        let mut request = self.client.get(url);
        if let Some(v) = self.validators.get(url) {
            if let Some(etag) = &v.etag {
                request = request.header(IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = &v.last_modified {
                request = request.header(IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let conditional = self.validators.contains_key(url);
        let response = request.send().map_err(|e| self.request_error(url, e))?;
        let status = response.status();
        // A 304 answers a conditional request only; to any other it is a
        // server that says nothing, not "unchanged".
        if status == StatusCode::NOT_MODIFIED && conditional {
            return Ok(Fetched::NotModified);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::RateLimited {
                url: url.to_owned(),
                retry_after: parse_retry_after(response.headers()),
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let validators = Validators {
            etag: response.headers().get(ETAG).cloned(),
            last_modified: response.headers().get(LAST_MODIFIED).cloned(),
        };
        let body = self.read_body(url, response)?;
        self.validators.insert(url.to_owned(), validators);
        Ok(Fetched::Body(body))
    }

    fn read_body(&self, url: &str, response: Response) -> Result<Vec<u8>, FetchError> {
        let limit = self.config.max_bytes;
        let too_large = |declared| FetchError::TooLarge {
            url: url.to_owned(),
            limit,
            declared,
        };
        // A compressed body's declared length is not its decoded size, and
        // reqwest drops the header when it decodes; when it is there, it is
        // the size of what we will read.
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|d| d > limit as u64) {
            return Err(too_large(declared));
        }
        let mut body = Vec::with_capacity(declared.map_or(64 << 10, |d| d as usize));
        response
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|source| {
                if is_timeout(&source) {
                    FetchError::Timeout {
                        url: url.to_owned(),
                        timeout: self.config.timeout,
                    }
                } else {
                    FetchError::Body {
                        url: url.to_owned(),
                        source,
                    }
                }
            })?;
        if body.len() > limit {
            return Err(too_large(declared));
        }
        Ok(body)
    }

    fn request_error(&self, url: &str, source: reqwest::Error) -> FetchError {
        let url = url.to_owned();
        if source.is_timeout() {
            FetchError::Timeout {
                url,
                timeout: self.config.timeout,
            }
        } else if source.is_connect() {
            FetchError::Connect { url, source }
        } else {
            FetchError::Request { url, source }
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::TimedOut
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

/// `Retry-After` as delay-seconds or an HTTP date. A date in the past is a
/// zero wait.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Exponential backoff with jitter: each failure in a row doubles the
/// delay, up to a cap, and the delay is drawn at random from its upper half
/// so that many producers failing together do not retry together.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gbfs_feed::fetch::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..10 {
///     assert!(backoff.next_delay() <= Duration::from_secs(1));
/// }
/// backoff.reset();
/// assert!(backoff.next_delay() <= Duration::from_millis(100));
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, never waits more than `max`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::Backoff;
    ///
    /// // A cap below the base is raised to it.
    /// let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
    /// assert!(backoff.next_delay() <= Duration::from_secs(2));
    /// ```
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next attempt, after one more failure.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::Backoff;
    ///
    /// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    /// let delays: Vec<_> = (0..4).map(|_| backoff.next_delay()).collect();
    /// // The fourth failure in a row waits at least half of 8 × 100 ms.
    /// assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
    /// ```
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// How many failures in a row so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::Backoff;
    ///
    /// let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    /// backoff.next_delay();
    /// backoff.next_delay();
    /// assert_eq!(backoff.failures(), 2);
    /// ```
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After a success: the next failure starts again at `base`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gbfs_feed::fetch::Backoff;
    ///
    /// let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    /// (0..5).for_each(|_| { backoff.next_delay(); });
    /// backoff.reset();
    /// assert_eq!(backoff.failures(), 0);
    /// assert!(backoff.next_delay() <= Duration::from_millis(10));
    /// ```
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[3] >= Duration::from_millis(40));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        assert_eq!(b.failures(), 6);
    }
}
