//! A real Apache Kafka broker for the tests, and kcat, an independent client,
//! to read what is on its topics.
//!
//! [`Broker::start`] runs `scripts/apache-kafka run` (the script users start
//! a local Kafka with): one KRaft node, broker and controller in one JVM, on
//! two free ports of 127.0.0.1, with its own temporary log directory. It
//! takes about 2 seconds to answer metadata on this project's machines
//! (4 to 6 when they are busy; most of it the JVM and the KRaft controller
//! starting). Tests of one file whose topics are their own share one broker
//! ([`Broker::shared`], as `tests/kafka_sink.rs` does); a test that uses the
//! default topic names, or stops, restarts or kills its broker, starts its
//! own.
//!
//! The broker runs as a child that the kernel kills when the thread that
//! started it ends (`PR_SET_PDEATHSIG`), so none outlives a test binary, even
//! one that crashed; the shared broker is started from a thread that lives as
//! long as the test binary.
//!
//! kcat runs with Debian's own librdkafka: `LD_LIBRARY_PATH` is cleared for
//! it, so that it can never load the crate's.
//!
//! The operators crate's broker tests include this file too
//! (`crates/timely-kafka/tests`, with `#[path]`): it depends on no module
//! of the root's tests nor on the root crate, only on rdkafka,
//! futures-executor, serde_json, tempfile and libc.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A topic for [`Broker::create_topics`]: its name, partition count and
/// topic configuration.
pub type TopicToCreate<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// One Apache Kafka node on 127.0.0.1.
pub struct Broker {
    child: Mutex<Option<Child>>,
    /// `127.0.0.1:PORT`, its bootstrap address.
    pub address: String,
    port: u16,
    controller_port: u16,
    settings: Vec<String>,
    dir: tempfile::TempDir,
}

/// `scripts/apache-kafka` of the workspace: found from the package being
/// tested upwards, since a member crate's tests include this file too.
fn script() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package
        .ancestors()
        .map(|dir| dir.join("scripts/apache-kafka"))
        .find(|script| script.is_file())
        .unwrap_or_else(|| panic!("no scripts/apache-kafka above {}", package.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// A new broker of this test's own.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// A new broker with extra server properties (`key=value`).
    pub fn start_with(settings: &[&str]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("velib-apache-kafka-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let broker = Broker {
            child: Mutex::new(None),
            address: format!("127.0.0.1:{port}"),
            port,
            controller_port: free_port(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        broker.run();
        broker
    }

    /// The broker all tests of this binary share, started by the first that
    /// asks. Use topic names of your own.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Started from a thread that never ends, so that the broker's
            // parent-death signal fires only when the test binary exits.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                tx.send(Broker::start()).unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared broker starts")
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The log directory, kept across restarts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(script());
        command
            .arg("run")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()]);
        for setting in &self.settings {
            command.args(["--set", setting]);
        }
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        killed_with_this_thread(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", script().display()));
        *self.child() = Some(child);
        self.wait_until_ready();
    }

    /// Waits until the broker answers a metadata request naming itself.
    fn wait_until_ready(&self) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let started = Instant::now();
        let deadline = started + Duration::from_secs(90);
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("log_level", "0")
            .create()
            .unwrap();
        loop {
            // Read into a local: panicking with the lock held would poison it
            // for `Drop`, and a second panic there aborts the test binary.
            let exited = self
                .child()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "Apache Kafka exited ({status}) before answering on {}\n{}",
                    self.address,
                    self.log_tail()
                );
            }
            if let Ok(metadata) = client.fetch_metadata(None, Duration::from_millis(500)) {
                if !metadata.brokers().is_empty() {
                    eprintln!(
                        "Apache Kafka on {} answered after {:.1} s",
                        self.address,
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Apache Kafka did not answer on {}\n{}",
                self.address,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The running child, if any; a lock poisoned by a failed test is
    /// still usable.
    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self, signal: &str) {
        let taken = self.child().take();
        if let Some(mut child) = taken {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops the broker cleanly (SIGTERM), waiting for it to exit.
    pub fn stop(&self) {
        self.signal("-TERM");
    }

    /// Kills the broker (SIGKILL): no clean shutdown.
    pub fn kill(&self) {
        self.signal("-KILL");
    }

    /// Starts the broker again on the same ports and log directory.
    pub fn restart(&self) {
        self.stop();
        self.run();
    }

    /// Starts a stopped or killed broker again on the same ports and log
    /// directory.
    pub fn start_again(&self) {
        assert!(self.child().is_none(), "already running");
        self.run();
    }

    /// Creates `topics` (name, partitions, topic configuration), failing
    /// the test if one cannot be.
    #[allow(dead_code)]
    pub fn create_topics(&self, topics: &[TopicToCreate<'_>]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.address)
                .create()
                .unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions, configs)| {
                configs.iter().fold(
                    NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        let results =
            futures_executor::block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap();
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
        }
    }

    /// kcat with Debian's librdkafka, on this broker.
    pub fn kcat(&self) -> Command {
        let mut command = Command::new("kcat");
        command
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .args(["-b", &self.address]);
        command
    }

    /// kcat's JSON envelope of every record on `topic`, read committed.
    pub fn kcat_read(&self, topic: &str) -> Vec<serde_json::Value> {
        self.kcat_read_at(topic, "read_committed")
    }

    /// kcat's JSON envelope of every record on `topic`, aborted transactions
    /// included (what some Kafka-compatible services show every reader).
    pub fn kcat_read_uncommitted(&self, topic: &str) -> Vec<serde_json::Value> {
        self.kcat_read_at(topic, "read_uncommitted")
    }

    fn kcat_read_at(&self, topic: &str, isolation: &str) -> Vec<serde_json::Value> {
        let out = self
            .kcat()
            .args(["-C", "-t", topic, "-e", "-q", "-J"])
            .args(["-X", &format!("isolation.level={isolation}")])
            // Not a shorter fetch.wait.max.ms, though `-e` then ends sooner:
            // a commit returns before the broker has written its markers on
            // every partition, and a read_committed fetch that comes back
            // empty meanwhile would end the read short of that transaction.
            .output()
            .expect("kcat runs (apt-get install kcat)");
        if !out.status.success() {
            panic!(
                "kcat -C -t {topic}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        json_lines("kcat", &out)
    }

    /// Writes `lines` to `topic` with kcat, one unkeyed message per line.
    pub fn kcat_write(&self, topic: &str, lines: &str) {
        let mut child = self
            .kcat()
            .args(["-P", "-t", topic])
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat runs (apt-get install kcat)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "kcat -P failed\n{}", self.log_tail());
    }

    /// The broker's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last 150 lines of the broker's log, for a failed test's message.
    pub fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(self.log_path()) else {
            return String::new();
        };
        let lines: Vec<String> = std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .collect();
        let from = lines.len().saturating_sub(150);
        format!(
            "--- Apache Kafka log ({}), last {} lines ---\n{}",
            self.log_path().display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.kill();
    }
}

/// The JSON objects a command printed one per line, once it succeeded.
pub fn json_lines(what: &str, out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what} printed {l:?}: {e}")))
        .collect()
}

/// The value of header `name` in kcat's JSON envelope of a record (`-J`:
/// `"headers": [name, value, name, value…]`).
pub fn header<'a>(record: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    let headers = record["headers"].as_array()?;
    headers
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv[1].as_str())
}

/// Makes the kernel kill `command`'s process when the thread that spawns it
/// ends (`PR_SET_PDEATHSIG`): no broker or binary outlives its test, even
/// one that crashed.
#[allow(dead_code)]
pub fn killed_with_this_thread(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
