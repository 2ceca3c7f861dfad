//! `eddy serve`: run a node until it is told to stop.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use log::info;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::broker::{Broker, BrokerError, OpenError};
use crate::config::NodeConfig;
use crate::runtime::Runtime;
use crate::server::{Server, ServerError};

/// Why a node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGINT or SIGTERM arrived (the signal number).
    Signal(i32),
    /// [`ShutdownTrigger::trigger`] was called.
    Requested,
    /// Every way to ask for a shutdown is gone, so nothing could stop the
    /// node later; it stops now.
    Orphaned,
}

/// The receiving end of a shutdown request, handed to [`run`].
///
/// Create it before any start-up work, so that a signal sent while the node
/// starts is not lost (the default action of SIGTERM kills the process).
#[derive(Debug)]
pub struct Shutdown {
    requests: mpsc::Receiver<ShutdownReason>,
}

/// Asks a [`Shutdown`] to fire; for tests and embedders.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    requests: mpsc::Sender<ShutdownReason>,
}

impl ShutdownTrigger {
    /// Requests the shutdown. Does nothing if the node has already stopped.
    pub fn trigger(&self) {
        // An error means the receiver is gone: the node already stopped.
        let _ = self.requests.send(ShutdownReason::Requested);
    }
}

/// Set by the first SIGINT/SIGTERM; a second one then exits at once.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Exit status when a second signal cuts a slow shutdown short.
const EXIT_STATUS_FORCED: i32 = 130;

impl Shutdown {
    /// Fires on the first SIGINT or SIGTERM. A second one ends the process
    /// at once with status 130, for when a graceful stop hangs.
    pub fn on_signals() -> io::Result<Shutdown> {
        for signal in [SIGINT, SIGTERM] {
            // Order matters: the exit check must run before the flag is set,
            // so the first signal only arms it.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                EXIT_STATUS_FORCED,
                &SIGNALLED,
            )?;
            signal_hook::flag::register(signal, &SIGNALLED)?;
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let (sender, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("eddy-signals".to_owned())
            .spawn(move || {
                for signal in signals.forever() {
                    if sender.send(ShutdownReason::Signal(signal)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Shutdown { requests })
    }

    /// A shutdown that fires only through the returned trigger.
    pub fn manual() -> (ShutdownTrigger, Shutdown) {
        let (requests_tx, requests) = mpsc::channel();
        (
            ShutdownTrigger {
                requests: requests_tx,
            },
            Shutdown { requests },
        )
    }

    /// Blocks until a shutdown is requested.
    pub fn wait(self) -> ShutdownReason {
        self.requests.recv().unwrap_or(ShutdownReason::Orphaned)
    }
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ShutdownReason::Signal(signal) => {
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
                write!(f, "received {name}")
            }
            ShutdownReason::Requested => f.write_str("shutdown requested"),
            ShutdownReason::Orphaned => f.write_str("no shutdown source left"),
        }
    }
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory could not be created. Retrying helps only once
    /// its cause (permissions, a full or read-only disk) is fixed.
    #[error("cannot create data directory {}: {error}", path.display())]
    DataDir {
        /// The configured `data-dir`.
        path: std::path::PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The executor's worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Runtime(io::Error),
    /// The storage could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The QUIC listener could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The metadata quorum could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A log could not be closed cleanly; the next start recovers it.
    #[error("shutdown was not clean: {0}")]
    Close(BrokerError),
}

/// Runs a node with `config` until `shutdown` fires, then stops it
/// gracefully and returns.
///
/// Creates the data directory, opens the storage ([`Broker::open`]: topic
/// metadata, partition logs, recovery), starts the QUIC listener and logs
/// `listening on <addr>`. On shutdown: refuses new connections, lets requests
/// in flight finish, then closes every log so the next start needs no
/// recovery scan.
pub fn run(config: &NodeConfig, shutdown: Shutdown) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServeError::DataDir {
        path: config.data_dir.clone(),
        error,
    })?;
    info!("data directory {}", config.data_dir.display());
    let rt = Runtime::start(config.worker_thread_count()).map_err(ServeError::Runtime)?;
    let broker = Broker::open(config, rt.handle())?;
    let server = match Server::start(config, broker.clone(), rt.handle()) {
        Ok(server) => server,
        Err(e) => {
            if let Err(close) = rt.block_on(broker.shutdown()) {
                log::warn!("{close}");
            }
            return Err(e.into());
        }
    };
    info!("listening on {}", server.local_addr());
    let cluster = if config.is_clustered() {
        match crate::cluster::Cluster::start(config, &broker, &rt.handle()) {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                rt.block_on(server.shutdown());
                if let Err(close) = rt.block_on(broker.shutdown()) {
                    log::warn!("{close}");
                }
                return Err(e.into());
            }
        }
    } else {
        None
    };

    let reason = shutdown.wait();
    info!("{reason}, stopping");
    if let Some(cluster) = &cluster {
        broker.begin_shutdown();
        rt.block_on(cluster.shutdown());
    }
    rt.block_on(server.shutdown());
    let closed = rt.block_on(broker.shutdown());
    drop(rt);
    closed.map_err(ServeError::Close)?;
    info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_creates_the_data_dir_and_returns_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            data_dir: dir.path().join("a/b/data"),
            listen: "127.0.0.1:0".parse().expect("address"),
            ..NodeConfig::default()
        };
        let (trigger, shutdown) = Shutdown::manual();
        trigger.trigger();
        run(&config, shutdown).expect("run stops cleanly");
        assert!(config.data_dir.is_dir());
        let tls = config.data_dir.join(crate::tls::TLS_DIR);
        assert!(tls.join(crate::tls::CA_CERT_FILE).is_file(), "CA created");
        assert!(
            config.data_dir.join("__eddy_metadata-0").is_dir(),
            "metadata log created"
        );
    }

    #[test]
    fn run_waits_for_the_trigger_from_another_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().expect("address"),
            ..NodeConfig::default()
        };
        let (trigger, shutdown) = Shutdown::manual();
        let node = std::thread::spawn(move || run(&config, shutdown));
        trigger.trigger();
        let result = node.join().expect("node thread does not panic");
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn dropped_trigger_stops_the_wait() {
        let (trigger, shutdown) = Shutdown::manual();
        drop(trigger);
        assert_eq!(shutdown.wait(), ShutdownReason::Orphaned);
    }

    #[test]
    fn data_dir_under_a_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("write");
        let config = NodeConfig {
            data_dir: file.join("data"),
            ..NodeConfig::default()
        };
        let (_trigger, shutdown) = Shutdown::manual();
        let error = run(&config, shutdown).expect_err("cannot create a dir under a file");
        assert!(matches!(error, ServeError::DataDir { .. }), "{error:?}");
    }
}
