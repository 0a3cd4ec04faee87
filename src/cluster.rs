//! Timely's own cluster flags: `-w` workers per process, `-n` processes,
//! `-p` this process's index, `-h` a file of `host:port`, one per process.

use std::path::Path;

/// A cluster description that does not make sense.
///
/// # Examples
///
/// ```
/// use velib_dataflow::cluster::{cluster_config, ClusterError};
///
/// let error = cluster_config(1, 2, 5, None).unwrap_err();
/// assert!(matches!(error, ClusterError::Invalid(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A count or index out of range.
    #[error("{0}")]
    Invalid(String),
    /// The hosts file cannot be read or has the wrong number of lines.
    #[error("hosts file {path}: {problem}")]
    Hosts {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// The timely configuration for `workers` threads in each of `processes`
/// processes, this one being `process`. Without a hosts file, process `i`
/// listens on `localhost:2101+i`, as timely does.
///
/// # Examples
///
/// ```
/// use velib_dataflow::cluster::cluster_config;
///
/// assert!(cluster_config(2, 1, 0, None).is_ok());
/// assert!(cluster_config(0, 1, 0, None).is_err());
/// assert!(cluster_config(1, 2, 2, None).unwrap_err().to_string().contains("-p"));
/// ```
pub fn cluster_config(
    workers: usize,
    processes: usize,
    process: usize,
    hosts: Option<&Path>,
) -> Result<timely::Config, ClusterError> {
    if workers == 0 {
        return Err(ClusterError::Invalid(
            "-w (workers) must be at least 1".into(),
        ));
    }
    if processes == 0 {
        return Err(ClusterError::Invalid(
            "-n (processes) must be at least 1".into(),
        ));
    }
    if process >= processes {
        return Err(ClusterError::Invalid(format!(
            "-p (process index) is {process}, but there are {processes} processes (0 to {})",
            processes - 1
        )));
    }
    if processes == 1 && hosts.is_none() {
        return Ok(if workers == 1 {
            timely::Config::thread()
        } else {
            timely::Config::process(workers)
        });
    }
    let addresses = match hosts {
        None => (0..processes)
            .map(|i| format!("localhost:{}", 2101 + i))
            .collect(),
        Some(path) => {
            let hosts_error = |problem: String| ClusterError::Hosts {
                path: path.display().to_string(),
                problem,
            };
            let text = std::fs::read_to_string(path).map_err(|e| hosts_error(e.to_string()))?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            if lines.len() < processes {
                return Err(hosts_error(format!(
                    "{} hosts for {processes} processes",
                    lines.len()
                )));
            }
            if let Some(bad) = lines.iter().find(|l| !l.contains(':')) {
                return Err(hosts_error(format!("{bad:?} is not host:port")));
            }
            lines.into_iter().take(processes).collect()
        }
    };
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    })
}
