//! Several bike-share systems at once: which feeds, under which names, and
//! the topics each one's producer publishes to.
//!
//! Each system has its own producer loop, its own epochs and its own
//! topics, so that a slow, failing or stale feed never holds back another
//! system's epochs: the epoch protocol numbers one feed's snapshots, and two
//! feeds' snapshots have no order between them. A feed given without a name
//! is the *default* system and keeps the topics a single feed always had
//! (`velib-projet`, `velib-directory`, …); a named system's topics are those
//! names followed by `.<name>` (`velib-projet.oslo`, `velib-directory.oslo`,
//! `velib-projet-state.oslo`). A name has no `.`, so while the base topics
//! have none either, no system's topic can be another's, or the default
//! system's, whatever the names; [`check_topics`] checks it for any bases.
//!
//! The aggregator's side is the same: one dataflow per system, each with
//! its own sources, sink, transactional id and state
//! ([`AggregatorConfig::for_system`]), reading the system's topics and
//! writing `velib-projet-clean.<name>`, whose records say their `system`;
//! [`check_aggregator_topics`] checks those. Each system runs on threads
//! of its own ([`run_each`]), so that a stuck transaction or a failed start
//! of one stops none of the others.

use crate::aggregator::AggregatorConfig;
use crate::kafka::publish::PublisherConfig;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The longest system name: it goes into topic names (Kafka allows 249
/// characters) and metric labels.
pub const MAX_NAME_LEN: usize = 40;

/// What is wrong with a list of systems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SystemsError {
    /// A name that cannot be part of a topic name.
    #[error(
        "system name {name:?}: use 1 to {MAX_NAME_LEN} lowercase letters, digits and '-', \
         starting with a letter or digit (and not `default`, the unnamed system)"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// A feed that is not an http(s) URL.
    #[error("system {name}: {url:?} is not an http:// or https:// URL")]
    BadUrl {
        /// The system's name (`default` for the unnamed one).
        name: String,
        /// The URL given.
        url: String,
    },
    /// Two systems with one name: their topics would be the same.
    #[error("system {name} is listed twice: each system needs its own name")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// More than one feed without a name: only one can keep the default
    /// topics.
    #[error(
        "{count} feeds have no name: with several feeds, name them (--feed oslo=URL); \
         at most one keeps the default topics"
    )]
    SeveralUnnamed {
        /// How many.
        count: usize,
    },
    /// Two systems (or two roles of one) would publish to one topic.
    #[error("systems {first} and {second} would both publish to topic {topic}")]
    TopicClash {
        /// The topic.
        topic: String,
        /// One system (`default` for the unnamed one).
        first: String,
        /// The other.
        second: String,
    },
    /// A line of a systems file that is not `NAME URL`.
    #[error("line {line}: {text:?} is not `NAME URL` (or a # comment)")]
    BadLine {
        /// Its number, from 1.
        line: usize,
        /// The line, cut to 80 characters.
        text: String,
    },
    /// No system at all.
    #[error("no system listed")]
    Empty,
}

/// One system: its name (`None` for the default system) and its feed.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::SystemFeed;
///
/// let oslo: SystemFeed = "oslo=https://gbfs.urbansharing.com/oslobysykkel.no/gbfs.json".parse()?;
/// assert_eq!(oslo.name.as_deref(), Some("oslo"));
/// let default: SystemFeed = "https://velib-metropole-opendata.smovengo.cloud/opendata/Velib_Metropole/gbfs.json".parse()?;
/// assert_eq!(default.name, None);
/// assert!("Oslo City=https://x".parse::<SystemFeed>().is_err());
/// # Ok::<(), velib_dataflow::systems::SystemsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemFeed {
    /// The name, `None` for the default system.
    pub name: Option<String>,
    /// Its GBFS `gbfs.json` (or a `station_status` URL).
    pub url: String,
}

impl SystemFeed {
    /// The name to show: the system's, or `default`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }

    /// `topics` for this system: the default system's as they are, a named
    /// system's with `.<name>` after each topic and the transactional id.
    ///
    /// # Examples
    ///
    /// ```
    /// use velib_dataflow::kafka::publish::PublisherConfig;
    /// use velib_dataflow::kafka::KafkaConfig;
    /// use velib_dataflow::systems::SystemFeed;
    ///
    /// let base = PublisherConfig::new(KafkaConfig::new("127.0.0.1:9092"));
    /// let oslo: SystemFeed = "oslo=https://example.org/gbfs.json".parse()?;
    /// let topics = oslo.topics(&base);
    /// assert_eq!((topics.status_topic.as_str(), topics.directory_topic.as_str()), ("velib-projet.oslo", "velib-directory.oslo"));
    /// assert_eq!(topics.state_topic.as_deref(), Some("velib-projet-state.oslo"));
    /// # Ok::<(), velib_dataflow::systems::SystemsError>(())
    /// ```
    pub fn topics(&self, base: &PublisherConfig) -> PublisherConfig {
        let Some(name) = &self.name else {
            return base.clone();
        };
        let named = |topic: &str| format!("{topic}.{name}");
        let mut config = base.clone();
        config.status_topic = named(&base.status_topic);
        config.directory_topic = named(&base.directory_topic);
        config.state_topic = base.state_topic.as_deref().map(named);
        config.dead_letter_topic = base.dead_letter_topic.as_deref().map(named);
        config.transactional_id = named(&base.transactional_id);
        config
    }
}

impl FromStr for SystemFeed {
    type Err = SystemsError;

    /// `NAME=URL`, or a bare `URL` for the default system.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_start_matches('\u{feff}').trim();
        let (name, url) = match s.split_once('=') {
            // A URL's query may hold '=': a name comes before any ':' or '/'.
            Some((name, url)) if !name.contains([':', '/']) => {
                let name = name.trim();
                check_name(name)?;
                (Some(name.to_owned()), url.trim())
            }
            _ => (None, s),
        };
        // A scheme (in any case), then a host: not empty, not a path.
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let rest = [("https://", 8), ("http://", 7)]
            .into_iter()
            .find(|(scheme, _)| lower.starts_with(scheme))
            .map(|(_, len)| &url[len..]);
        let has_host = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !has_host || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SystemsError::BadUrl {
                name: name.unwrap_or_else(|| "default".into()),
                url: url.chars().take(200).collect(),
            });
        }
        Ok(SystemFeed {
            name,
            url: url.to_owned(),
        })
    }
}

impl fmt::Display for SystemFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.url),
            None => f.write_str(&self.url),
        }
    }
}

fn check_name(name: &str) -> Result<(), SystemsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        // What the unnamed system is called in messages.
        && name != "default";
    if ok {
        Ok(())
    } else {
        Err(SystemsError::BadName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// Checks that `systems` can run together: at least one, names unique, at
/// most one without a name.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::{check_systems, SystemFeed, SystemsError};
///
/// let a: SystemFeed = "a=https://example.org/a.json".parse()?;
/// assert!(check_systems(&[a.clone()]).is_ok());
/// assert_eq!(check_systems(&[a.clone(), a]), Err(SystemsError::Duplicate { name: "a".into() }));
/// # Ok::<(), SystemsError>(())
/// ```
pub fn check_systems(systems: &[SystemFeed]) -> Result<(), SystemsError> {
    check_names(systems.iter().map(|s| s.name.as_deref()))
}

/// As [`check_systems`], on names alone (`None`: the default system), as
/// the aggregator is given them.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::{check_names, SystemsError};
///
/// assert!(check_names([None, Some("oslo")]).is_ok());
/// assert_eq!(check_names([None, None]), Err(SystemsError::SeveralUnnamed { count: 2 }));
/// ```
pub fn check_names<'a>(
    names: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<(), SystemsError> {
    let names: Vec<Option<&str>> = names.into_iter().collect();
    if names.is_empty() {
        return Err(SystemsError::Empty);
    }
    let unnamed = names.iter().filter(|n| n.is_none()).count();
    if unnamed > 1 {
        return Err(SystemsError::SeveralUnnamed { count: unnamed });
    }
    let mut seen = BTreeSet::new();
    for name in names.into_iter().flatten() {
        if !seen.insert(name) {
            return Err(SystemsError::Duplicate { name: name.into() });
        }
    }
    Ok(())
}

/// A system's name as the aggregator's `--system` takes it: `default` is
/// the unnamed system (the one a lone `--feed URL` publishes for), any
/// other a name as [`SystemFeed`] checks it.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::parse_system_name;
///
/// assert_eq!(parse_system_name("oslo"), Ok(Some("oslo".to_owned())));
/// assert_eq!(parse_system_name("default"), Ok(None));
/// assert!(parse_system_name("Oslo").is_err());
/// ```
pub fn parse_system_name(name: &str) -> Result<Option<String>, SystemsError> {
    let name = name.trim_start_matches('\u{feff}').trim();
    if name == "default" {
        return Ok(None);
    }
    check_name(name)?;
    Ok(Some(name.to_owned()))
}

/// Checks that no two systems, with `base` topics, publish to one topic,
/// nor one system to one topic in two roles (status, directory, state,
/// dead letters).
///
/// # Examples
///
/// ```
/// use velib_dataflow::kafka::publish::PublisherConfig;
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::systems::{check_topics, SystemFeed};
///
/// let base = PublisherConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// // "state" would have been velib-projet-state, the default system's state topic, with a dash.
/// let systems: Vec<SystemFeed> = ["https://a.example/gbfs.json", "state=https://b.example/gbfs.json"]
///     .iter().map(|s| s.parse().unwrap()).collect();
/// assert!(check_topics(&systems, &base).is_ok());
/// # Ok::<(), velib_dataflow::systems::SystemsError>(())
/// ```
pub fn check_topics(systems: &[SystemFeed], base: &PublisherConfig) -> Result<(), SystemsError> {
    check_owners(systems.iter().map(|system| {
        let config = system.topics(base);
        let topics = [Some(config.status_topic), Some(config.directory_topic)]
            .into_iter()
            .chain([config.state_topic, config.dead_letter_topic])
            .flatten()
            .collect();
        (system.label().to_owned(), topics)
    }))
}

/// As [`check_topics`], for the aggregator: no two systems (`None`: the
/// default one), with `base` topics, read or write one topic, nor one
/// system one topic in two roles (input, directory, output, state, dead
/// letters).
///
/// # Examples
///
/// ```
/// use velib_dataflow::aggregator::AggregatorConfig;
/// use velib_dataflow::kafka::KafkaConfig;
/// use velib_dataflow::systems::check_aggregator_topics;
///
/// let base = AggregatorConfig::new(KafkaConfig::new("127.0.0.1:9092"));
/// let names = [None, Some("oslo".to_owned()), Some("clean".to_owned())];
/// assert!(check_aggregator_topics(&names, &base).is_ok());
/// let mut clashing = base.clone();
/// clashing.output_topic = clashing.input_topic.clone();
/// assert!(check_aggregator_topics(&names, &clashing).is_err());
/// ```
pub fn check_aggregator_topics(
    names: &[Option<String>],
    base: &AggregatorConfig,
) -> Result<(), SystemsError> {
    check_owners(names.iter().map(|name| {
        let config = match name {
            Some(name) => base.for_system(name),
            None => base.clone(),
        };
        let state = config.state_topic.name(&config.output_topic);
        let topics = [Some(config.input_topic), config.directory_topic]
            .into_iter()
            .chain([Some(config.output_topic), state, config.dead_letter_topic])
            .flatten()
            .collect();
        (name.as_deref().unwrap_or("default").to_owned(), topics)
    }))
}

/// Refuses any topic named by two systems, or twice by one.
fn check_owners(
    systems: impl IntoIterator<Item = (String, Vec<String>)>,
) -> Result<(), SystemsError> {
    let mut owners: std::collections::BTreeMap<String, String> = Default::default();
    for (label, topics) in systems {
        for topic in topics {
            if let Some(first) = owners.insert(topic.clone(), label.clone()) {
                return Err(SystemsError::TopicClash {
                    topic,
                    first,
                    second: label,
                });
            }
        }
    }
    Ok(())
}

/// Runs `job` for each system on a thread of its own (named
/// `{role}-{name}`, its log lines inside a `system{name=…}` span), and
/// waits for them all: one system's error, stall or panic stops none of the
/// others. Returns each system's outcome in the order given; a panic, or a
/// thread that could not start, as `thread_error` of why.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::run_each;
///
/// let outcomes = run_each(
///     "job",
///     vec![("oslo".to_owned(), 1), ("bergen".to_owned(), 0)],
///     |n: u32| if n > 0 { Ok(()) } else { Err("nothing to do".to_owned()) },
///     |why| why,
/// );
/// assert_eq!(outcomes, [("oslo".to_owned(), Ok(())), ("bergen".to_owned(), Err("nothing to do".to_owned()))]);
/// ```
pub fn run_each<C, E>(
    role: &str,
    systems: Vec<(String, C)>,
    job: fn(C) -> Result<(), E>,
    thread_error: fn(String) -> E,
) -> Vec<(String, Result<(), E>)>
where
    C: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let threads: Vec<_> = systems
        .into_iter()
        .map(|(name, config)| {
            let label = name.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{role}-{name}"))
                .spawn(move || {
                    let _span = tracing::info_span!("system", name = %label).entered();
                    let outcome = job(config);
                    if let Err(e) = &outcome {
                        // Now, not once every system has stopped.
                        tracing::error!("stopped: {e}; the other systems go on");
                    }
                    outcome
                });
            (name, thread)
        })
        .collect();
    threads
        .into_iter()
        .map(|(name, thread)| {
            let outcome = match thread {
                Ok(thread) => thread.join().unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    Err(thread_error(format!("the {role} panicked: {why}")))
                }),
                Err(e) => Err(thread_error(format!("its thread could not start: {e}"))),
            };
            (name, outcome)
        })
        .collect()
}

/// Reads a systems file: one `NAME URL` per line (or `NAME=URL`); blank
/// lines and lines starting with `#` are skipped. Every system in a file is
/// named, and names are unique; a file of comments gives no system.
///
/// # Examples
///
/// ```
/// use velib_dataflow::systems::parse_systems_file;
///
/// let systems = parse_systems_file("# Nordic systems\noslo https://example.org/oslo.json\n\nbergen=https://example.org/bergen.json\n")?;
/// assert_eq!(systems.iter().map(|s| s.label()).collect::<Vec<_>>(), ["oslo", "bergen"]);
/// # Ok::<(), velib_dataflow::systems::SystemsError>(())
/// ```
pub fn parse_systems_file(text: &str) -> Result<Vec<SystemFeed>, SystemsError> {
    let mut systems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SystemsError::BadLine {
            line: index + 1,
            text: line.chars().take(80).collect(),
        };
        let (name, url) = match line.split_once(char::is_whitespace) {
            Some((name, url)) if !name.contains('=') => (name, url.trim()),
            _ => line.split_once('=').ok_or_else(bad)?,
        };
        if url.is_empty() || url.contains(char::is_whitespace) {
            return Err(bad());
        }
        let system: SystemFeed = format!("{name}={url}").parse()?;
        if system.name.is_none() {
            return Err(bad());
        }
        systems.push(system);
    }
    // Named, and unique within the file; an empty file is for the caller
    // to judge, with the other systems it has.
    if !systems.is_empty() {
        check_systems(&systems)?;
    }
    Ok(systems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_and_urls_are_refused_with_the_reason() {
        for name in [
            "",
            "Oslo",
            "os lo",
            "-oslo",
            "oslo_1",
            "ø",
            "a\u{0}b",
            "default",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            let spec = format!("{name}=https://example.org/gbfs.json");
            assert!(
                matches!(
                    spec.parse::<SystemFeed>(),
                    Err(SystemsError::BadName { .. })
                ),
                "{spec:?}"
            );
        }
        for url in [
            "ftp://x/y",
            "https://",
            "gbfs.json",
            "oslo=",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(url.parse::<SystemFeed>(), Err(SystemsError::BadUrl { .. })),
                "{url:?}"
            );
        }
        // A query's '=' is not a name.
        for url in ["https:///x", "http://", "https://a b/c", "https://a/\u{7}"] {
            assert!(url.parse::<SystemFeed>().is_err(), "{url:?}");
        }
        let feed: SystemFeed = "https://example.org/gbfs.json?key=v".parse().unwrap();
        assert_eq!(feed.name, None);
        assert_eq!(feed.url, "https://example.org/gbfs.json?key=v");
        for url in [
            "HTTPS://a.example/g.json",
            "http://a",
            "http://[::1]:8080/g.json",
        ] {
            assert_eq!(url.parse::<SystemFeed>().unwrap().url, url);
        }
        let spaced: SystemFeed = " oslo = https://a.example/g.json ".parse().unwrap();
        assert_eq!(spaced.label(), "oslo");
    }

    #[test]
    fn a_systems_file_says_which_line_is_wrong() {
        let err = parse_systems_file("oslo https://a.example/x\nbergen\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: \"bergen\" is not `NAME URL` (or a # comment)"
        );
        let err =
            parse_systems_file("oslo https://a.example/x\noslo https://b.example/y\n").unwrap_err();
        assert_eq!(
            err,
            SystemsError::Duplicate {
                name: "oslo".into()
            }
        );
        assert_eq!(parse_systems_file("# nothing\n\n"), Ok(vec![]));
        let bom = parse_systems_file("\u{feff}oslo https://a.example/x\n").unwrap();
        assert_eq!(bom[0].label(), "oslo");
        let err = parse_systems_file("oslo https://a.example/x trailing\n").unwrap_err();
        assert!(
            matches!(err, SystemsError::BadLine { line: 1, .. }),
            "{err}"
        );
        let truncated = parse_systems_file("oslo https://a.exa").unwrap();
        assert_eq!(
            truncated[0].url, "https://a.exa",
            "a short URL is still a URL"
        );
    }

    #[test]
    fn names_that_spell_another_topic_do_not_clash() {
        use crate::kafka::KafkaConfig;
        let base = PublisherConfig::new(KafkaConfig::new("x:1"));
        let systems: Vec<SystemFeed> = [
            "https://a.example/x",
            "state=https://b.example/y",
            "clean=https://b.example/y",
            "dead-letters=https://b.example/y",
            "a=https://b.example/y",
            "a-state=https://b.example/y",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(check_topics(&systems, &base), Ok(()));
        let topics: BTreeSet<String> = systems
            .iter()
            .flat_map(|s| {
                let c = s.topics(&base);
                [c.status_topic, c.directory_topic]
                    .into_iter()
                    .chain(c.state_topic)
                    .chain(c.dead_letter_topic)
            })
            .collect();
        assert_eq!(topics.len(), 6 * 4, "every system's four topics its own");
        assert!(
            !topics.contains("velib-projet-clean"),
            "the aggregator's default output"
        );
    }

    #[test]
    fn topics_that_would_clash_are_refused() {
        use crate::kafka::KafkaConfig;
        let mut base = PublisherConfig::new(KafkaConfig::new("x:1"));
        let systems: Vec<SystemFeed> = ["https://a.example/x", "oslo=https://b.example/y"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(check_topics(&systems, &base), Ok(()));
        // A user's base topics that make one system's status topic another
        // role's: refused, naming both.
        base.directory_topic = base.status_topic.clone();
        assert_eq!(
            check_topics(&systems[1..], &base),
            Err(SystemsError::TopicClash {
                topic: "velib-projet.oslo".into(),
                first: "oslo".into(),
                second: "oslo".into(),
            })
        );
    }

    #[test]
    fn several_unnamed_feeds_are_refused() {
        let feeds: Vec<SystemFeed> = ["https://a.example/x", "https://b.example/y"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            check_systems(&feeds),
            Err(SystemsError::SeveralUnnamed { count: 2 })
        );
    }
}
