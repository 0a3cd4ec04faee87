//! Prometheus metrics: the producer's and the aggregator's counters in the
//! text exposition format, served at `/metrics` by a small HTTP endpoint.
//!
//! The endpoint reads the jobs' handles when scraped; nothing is counted
//! twice, and a job that is not running in this process is left out.

use crate::aggregator::AggregatorHandle;
use crate::http;
use crate::producer::ProducerHandle;
use crate::web::events::EventHub;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};

/// What a scrape reports: the jobs running in this process.
///
/// # Examples
///
/// ```
/// use velib_dataflow::metrics::Metrics;
/// use velib_dataflow::producer::ProducerHandle;
///
/// let metrics = Metrics::default().producer(ProducerHandle::default());
/// let text = metrics.render();
/// assert!(text.contains("# TYPE velib_producer_epochs_published_total counter"));
/// assert!(text.contains("velib_producer_epochs_published_total 0"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Each producer, with its system's name when it has one.
    producers: Vec<(Option<String>, ProducerHandle)>,
    /// Each aggregator, with its system's name when it has one.
    aggregators: Vec<(Option<String>, AggregatorHandle)>,
    page: Option<EventHub>,
}

impl Metrics {
    /// Also reports this producer.
    pub fn producer(mut self, handle: ProducerHandle) -> Self {
        self.producers.push((None, handle));
        self
    }

    /// Also reports this producer of the system `name` ([`crate::systems`]):
    /// its series are labelled `system="name"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::metrics::Metrics;
    /// use velib_dataflow::producer::ProducerHandle;
    ///
    /// let metrics = Metrics::default()
    ///     .system_producer("oslo", ProducerHandle::default())
    ///     .system_producer("bergen", ProducerHandle::default());
    /// let text = metrics.render();
    /// // One family, a series per system.
    /// assert_eq!(text.matches("# TYPE velib_producer_polls_total counter").count(), 1);
    /// assert!(text.contains("velib_producer_polls_total{system=\"oslo\"} 0"));
    /// assert!(text.contains("velib_producer_polls_total{system=\"bergen\"} 0"));
    /// ```
    pub fn system_producer(mut self, name: &str, handle: ProducerHandle) -> Self {
        self.producers.push((Some(name.to_owned()), handle));
        self
    }

    /// Also reports this aggregator.
    pub fn aggregator(mut self, handle: AggregatorHandle) -> Self {
        self.aggregators.push((None, handle));
        self
    }

    /// Also reports this aggregator of the system `name`: its series are
    /// labelled `system="name"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::aggregator::AggregatorHandle;
    /// use velib_dataflow::metrics::Metrics;
    ///
    /// let metrics = Metrics::default()
    ///     .system_aggregator("oslo", AggregatorHandle::default())
    ///     .system_aggregator("bergen", AggregatorHandle::default());
    /// let text = metrics.render();
    /// assert!(text.contains("velib_aggregator_last_epoch_committed{system=\"oslo\"} 0"));
    /// assert!(text.contains("velib_aggregator_failed{system=\"bergen\"} 0"));
    /// ```
    pub fn system_aggregator(mut self, name: &str, handle: AggregatorHandle) -> Self {
        self.aggregators.push((Some(name.to_owned()), handle));
        self
    }

    /// Also reports this live page ([`crate::web`]).
    pub fn page(mut self, hub: EventHub) -> Self {
        self.page = Some(hub);
        self
    }

    /// The metrics, in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        for (system, producer) in &self.producers {
            out.labels = system
                .as_deref()
                .map(|name| format!("system=\"{}\"", escape(name)))
                .unwrap_or_default();
            let s = producer.stats();
            out.counter("velib_producer_polls_total", "Polls of the feed.", s.polls);
            out.counter(
                "velib_producer_epochs_published_total",
                "Epochs published by this run.",
                s.epochs_published,
            );
            out.gauge(
                "velib_producer_last_epoch",
                "The last epoch published (or read back at start).",
                s.last_epoch,
            );
            out.counter(
                "velib_producer_station_updates_total",
                "Station status records published.",
                s.status_records,
            );
            out.counter(
                "velib_producer_directory_updates_total",
                "Directory records published.",
                s.directory_records,
            );
            out.counter(
                "velib_producer_unchanged_total",
                "Polls whose snapshot was identical to the last (or not modified).",
                s.unchanged,
            );
            out.labelled(
                "velib_producer_responses_rejected_total",
                "Responses and snapshots refused, by reason.",
                "counter",
                "reason",
                s.rejected.iter().map(|(k, v)| (*k, *v)),
            );
            out.counter(
                "velib_producer_publish_retries_total",
                "Epoch transactions that failed and were tried again.",
                s.publish_retries,
            );
            if let Some(age) = s.feed_age_seconds {
                out.gauge(
                    "velib_producer_feed_age_seconds",
                    "How old the last snapshot was when fetched (its last_updated against this machine's clock); GBFS allows 300.",
                    age,
                );
            }
            out.gauge(
                "velib_producer_feed_stale",
                "1 when the last snapshot was older than GBFS allows (300 s) or from the future.",
                u64::from(s.feed_stale),
            );
            out.counter(
                "velib_producer_feed_turned_stale_total",
                "Times the feed turned stale.",
                s.feed_turned_stale,
            );
            out.labelled(
                "velib_producer_inconsistent_stations",
                "Stations of the last snapshot whose files disagree, by kind.",
                "gauge",
                "kind",
                s.inconsistent.iter().map(|(k, v)| (*k, *v)),
            );
            let t = &s.stations;
            for (name, help, value) in [
                ("empty", "installed and renting with no bike", t.empty),
                ("full", "installed and returning with no free dock", t.full),
                ("stale", "whose last report is too old to trust", t.stale),
                (
                    "empty_long",
                    "empty for longer than --long-after",
                    t.empty_long,
                ),
                (
                    "full_long",
                    "full for longer than --long-after",
                    t.full_long,
                ),
            ] {
                out.gauge(
                    &format!("velib_producer_stations_{name}"),
                    &format!("Stations of the last epoch published {help}."),
                    value,
                );
            }
            for (name, help, value) in [
                ("empty", "empty", t.longest_empty_seconds),
                ("full", "full", t.longest_full_seconds),
            ] {
                if let Some(seconds) = value {
                    out.gauge(
                        &format!("velib_producer_longest_{name}_seconds"),
                        &format!("How long the station {help} for the longest had been so, at the last epoch's feed time."),
                        seconds,
                    );
                }
            }
            out.counter(
                "velib_kafka_producer_sent_messages_total",
                "Messages the producer's Kafka client sent (librdkafka txmsgs).",
                s.kafka_sent.0,
            );
            out.counter(
                "velib_kafka_producer_sent_bytes_total",
                "Message bytes the producer's Kafka client sent (librdkafka txmsg_bytes).",
                s.kafka_sent.1,
            );
        }
        for (system, aggregator) in &self.aggregators {
            out.labels = system
                .as_deref()
                .map(|name| format!("system=\"{}\"", escape(name)))
                .unwrap_or_default();
            let s = aggregator.source_stats();
            out.gauge(
                "velib_aggregator_last_epoch_committed",
                "The last epoch whose output is committed.",
                aggregator.committed().unwrap_or(0),
            );
            out.gauge(
                "velib_aggregator_failed",
                "1 once the aggregator stopped on an error (its log says which); \
                 with several systems, the others go on.",
                u64::from(aggregator.error().is_some()),
            );
            out.counter(
                "velib_aggregator_records_read_total",
                "Input records read.",
                s.records,
            );
            out.counter(
                "velib_aggregator_station_updates_total",
                "Input records applied to the dataflow.",
                s.applied,
            );
            out.counter(
                "velib_aggregator_records_discarded_total",
                "Input records of attempts that did not complete their epoch, or late.",
                s.discarded,
            );
            out.labelled(
                "velib_aggregator_dead_letters_total",
                "Input records that could not be read, by reason.",
                "counter",
                "reason",
                s.dead_letters.iter().map(|(k, v)| (*k, *v)),
            );
            out.counter(
                "velib_aggregator_records_written_total",
                "Output records committed.",
                aggregator.records_written(),
            );
            out.head(
                "velib_aggregator_consumer_lag",
                "Records between each input partition's read position and its end (librdkafka).",
                "gauge",
            );
            for (topic, partitions) in &s.consumer_lag {
                for (partition, lag) in partitions {
                    out.series(
                        "velib_aggregator_consumer_lag",
                        &format!("topic=\"{}\",partition=\"{partition}\"", escape(topic)),
                        lag,
                    );
                }
            }
            let (messages, bytes) = s
                .received
                .values()
                .fold((0, 0), |(m, b), (m2, b2)| (m + m2, b + b2));
            out.counter(
                "velib_kafka_consumer_received_messages_total",
                "Messages the aggregator's consumers received (librdkafka rxmsgs).",
                messages,
            );
            out.counter(
                "velib_kafka_consumer_received_bytes_total",
                "Message bytes the aggregator's consumers received (librdkafka rxmsg_bytes).",
                bytes,
            );
            out.histogram(
                "velib_aggregator_epoch_close_to_commit_seconds",
                "Time from an epoch's close (the producer's marker) to its output committed.",
                &aggregator.close_to_commit(),
            );
        }
        out.labels.clear();
        if let Some(hub) = &self.page {
            let reader = hub.reader();
            out.gauge(
                "velib_page_last_epoch_shown",
                "The last committed epoch the live page shows.",
                hub.epoch().unwrap_or(0),
            );
            out.gauge(
                "velib_page_followers",
                "Browsers following the live page's events now.",
                hub.followers(),
            );
            out.counter(
                "velib_page_followers_dropped_total",
                "Browsers dropped for not reading their events (or gone).",
                hub.dropped(),
            );
            out.counter(
                "velib_page_records_malformed_total",
                "Records the live page's reader passed over as unreadable.",
                reader.malformed,
            );
            out.counter(
                "velib_page_records_late_total",
                "Records of epochs the live page already showed.",
                reader.late,
            );
            out.gauge(
                "velib_page_waiting",
                "1 while the live page's reader cannot open (see /api/state's reader.waiting_for).",
                u64::from(reader.waiting_for.is_some()),
            );
        }
        out.text()
    }
}

/// The text exposition being written: metric families in the order first
/// named, each one's series together (the format requires it), whichever
/// job wrote them. `labels` go on every series written meanwhile (a
/// producer's `system`).
#[derive(Default)]
struct Exposition {
    families: Vec<(String, String)>,
    index: std::collections::HashMap<String, usize>,
    current: usize,
    labels: String,
}

impl Exposition {
    /// Starts writing `name`'s series (its HELP and TYPE once).
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        self.current = match self.index.get(name) {
            Some(i) => *i,
            None => {
                let head = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
                self.families.push((head, String::new()));
                self.index.insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
    }

    /// One series of the current family: `name` with `extra` labels.
    fn series(&mut self, name: &str, extra: &str, value: impl std::fmt::Display) {
        let labels = match (self.labels.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("{{{}}}", self.labels),
            (true, false) => format!("{{{extra}}}"),
            (false, false) => format!("{{{},{extra}}}", self.labels),
        };
        if let Some((_, lines)) = self.families.get_mut(self.current) {
            let _ = writeln!(lines, "{name}{labels} {value}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, help, "counter");
        self.series(name, "", value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, help, "gauge");
        self.series(name, "", value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &crate::kafka::sink::LatencyHistogram) {
        self.head(name, help, "histogram");
        for (bound, count) in h.cumulative() {
            self.series(&format!("{name}_bucket"), &format!("le=\"{bound}\""), count);
        }
        self.series(&format!("{name}_bucket"), "le=\"+Inf\"", h.count());
        self.series(&format!("{name}_sum"), "", h.sum());
        self.series(&format!("{name}_count"), "", h.count());
    }

    fn labelled<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &str,
        values: impl Iterator<Item = (&'a str, u64)>,
    ) {
        self.head(name, help, kind);
        for (key, value) in values {
            self.series(name, &format!("{label}=\"{}\"", escape(key)), value);
        }
    }

    fn text(self) -> String {
        self.families
            .into_iter()
            .map(|(head, lines)| head + &lines)
            .collect()
    }
}

/// A label value as the text format requires it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Clients served at once.
const MAX_CLIENTS: usize = 16;

/// Serves `metrics` at `http://addr/metrics` from a background thread, for
/// as long as the process runs, bounded as the live page's server is
/// (a request head is at most 8 KiB, a silent client is dropped after 5 s,
/// 16 clients at once). Returns the
/// address bound (useful with port 0).
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use velib_dataflow::metrics::{serve, Metrics};
/// use velib_dataflow::producer::ProducerHandle;
///
/// let addr = serve("127.0.0.1:0".parse().unwrap(), Metrics::default().producer(ProducerHandle::default()))?;
/// let mut client = std::net::TcpStream::connect(addr)?;
/// client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
/// let mut answer = String::new();
/// client.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200 OK"));
/// assert!(answer.contains("velib_producer_polls_total 0"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    http::serve_connections("velib-metrics", listener, MAX_CLIENTS, move |stream| {
        answer(&stream, &metrics)
    })
}

fn answer(stream: &TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let request = match http::read_request(stream)? {
        None => return Ok(()),
        Some(Err(bad)) => return http::refuse(stream, bad),
        Some(Ok(request)) => request,
    };
    let body;
    let response = if request.method != "GET" && !request.head_only() {
        http::Response {
            headers: &["Allow: GET, HEAD"],
            ..http::Response::text("405 Method Not Allowed", "")
        }
    } else if request.path == "/metrics" {
        body = metrics.render();
        http::Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..http::Response::text("200 OK", &body)
        }
    } else {
        http::Response::text("404 Not Found", "metrics are at /metrics\n")
    };
    response.write(stream, request.head_only())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Several producers and an aggregator: every family once, its series
    /// together under its head, each producer's labelled by its system.
    #[test]
    fn each_family_is_one_group_whatever_wrote_it() {
        let text = Metrics::default()
            .system_producer("oslo", ProducerHandle::default())
            .system_producer("a\"b", ProducerHandle::default())
            .aggregator(AggregatorHandle::default())
            .system_aggregator("oslo", AggregatorHandle::default())
            .render();
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_owned();
                assert!(seen.insert(current.clone()), "{current} twice:\n{text}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "{line} outside its family:\n{text}");
            }
        }
        assert!(
            text.contains("velib_producer_polls_total{system=\"oslo\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("velib_producer_polls_total{system=\"a\\\"b\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("velib_aggregator_records_read_total 0"),
            "{text}"
        );
        assert!(
            text.contains("velib_aggregator_records_read_total{system=\"oslo\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "velib_aggregator_epoch_close_to_commit_seconds_count{system=\"oslo\"} 0"
            ),
            "{text}"
        );
    }

    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut client = TcpStream::connect(addr).unwrap();
        // The server may answer and close before reading all of a large
        // request: a failed write is part of the exchange.
        let _ = client.write_all(request);
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn the_live_page_is_reported() {
        let hub = EventHub::default();
        let (_, _events) = hub.subscribe();
        hub.publish(crate::web::committed::CommittedEpoch::empty(4));
        let text = Metrics::default().page(hub).render();
        assert!(text.contains("velib_page_last_epoch_shown 4"), "{text}");
        assert!(text.contains("velib_page_followers 1"), "{text}");
        assert!(text.contains("velib_page_waiting 0"), "{text}");
    }

    #[test]
    fn bad_requests_get_clear_statuses_and_the_endpoint_keeps_serving() {
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::default().aggregator(AggregatorHandle::default()),
        )
        .unwrap();
        assert!(ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 64 << 10));
        assert!(ask(addr, &huge).starts_with("HTTP/1.1 431"));
        // A client that connects and says nothing does not block the next.
        let _idle = TcpStream::connect(addr).unwrap();
        let answer = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("velib_aggregator_last_epoch_committed 0"));
    }
}
