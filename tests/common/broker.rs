//! A real Kafka-API broker (Nisshi, formerly Tansu) on a free port of
//! 127.0.0.1, started by the test and stopped when dropped; and kcat, an
//! independent client, to read what is on the topics.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub address: String,
    log: PathBuf,
}

fn nisshi() -> PathBuf {
    if let Some(path) = std::env::var_os("NISSHI") {
        return path.into();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let path = home.join("bin/nisshi");
    assert!(
        path.exists(),
        "the Nisshi broker is not installed at {}: run \
         `cargo install nisshi@0.7.0-pre.2 --locked --features dynostore,libsql` (.ci/run does)",
        path.display()
    );
    path
}

impl Broker {
    pub fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("nisshi-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(nisshi())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("nisshi starts");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "nisshi did not listen on {address}; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            address,
            log,
        }
    }

    /// kcat's JSON envelope of every record on `topic`, read committed.
    pub fn kcat_read(&self, topic: &str) -> Vec<serde_json::Value> {
        let out = Command::new("kcat")
            .args(["-b", &self.address, "-C", "-t", topic, "-e", "-q", "-J"])
            .args(["-X", "isolation.level=read_committed"])
            .output()
            .expect("kcat runs (apt-get install kcat)");
        super::json_lines("kcat", &out)
    }

    /// Writes `lines` to `topic` with kcat, one unkeyed message per line.
    pub fn kcat_write(&self, topic: &str, lines: &str) {
        use std::io::Write;
        let mut child = Command::new("kcat")
            .args(["-b", &self.address, "-P", "-t", topic])
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
        assert!(status.success(), "kcat -P failed\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the broker's log for a failed test; drop it otherwise.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
