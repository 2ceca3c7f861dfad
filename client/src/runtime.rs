//! Where a [`Client`](crate::Client)'s background work runs.
//!
//! A client has background tasks: quinn's endpoint and connection drivers
//! (packet I/O, encryption, acknowledgements, timers), the producer's sender
//! and one task per batch in flight, the consumer's fetches, the group
//! heartbeat. They run on a [`Runtime`]:
//!
//! - By default, on the [`ClientThread`]: one thread per process, started on
//!   first use and shared by every client. It waits on the async-io reactor
//!   itself, so a packet wakes it straight into the task the packet is for.
//! - Or on a runtime of the caller's ([`Client::with_runtime`](crate::Client::with_runtime)),
//!   for example a server that already has its own executors.
//!
//! Why one thread and not smol's global executor: on small cores a thread
//! switch costs tens of µs. smol's global executor has its threads, async-io
//! has its own, and each of them, like any caller in `smol::block_on`, takes
//! the reactor when idle and hands it on when it receives packets for another
//! thread's tasks. On a 2-core machine that made most of the client's CPU time
//! thread switches at 20 MB/s of 100-byte records.
//!
//! Callers wait on the client's futures however they like. Waiting with
//! `futures_lite::future::block_on` or from an executor that does not poll the
//! reactor costs the fewest switches; `smol::block_on` works too.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use smol::{Executor, Task};

/// A future a client spawns: boxed, `Send`, no output.
pub type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs a client's background tasks.
///
/// Implement it to put a client on executors of your own. Tasks must run
/// until they finish or their [`Task`] is dropped (which cancels them), and
/// the runtime must drive async-io's reactor somewhere (any thread in
/// `smol::block_on`, or async-io's own thread), since the client's sockets
/// and timers are async-io's.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Starts `task`. Dropping the returned [`Task`] cancels it; `detach()`
    /// lets it run on its own.
    fn spawn_boxed(&self, task: BoxedTask) -> Task<()>;
}

/// The default runtime: one thread per process, `eddy-client`, with its own
/// executor, started on first use.
///
/// If the thread cannot be started, tasks go to smol's global executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientThread;

static CLIENT_EXECUTOR: Executor<'static> = Executor::new();

/// Starts the client thread on first use; whether it runs.
fn client_thread_runs() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("eddy-client".into())
            // The thread lives as long as the process; tasks end with their
            // clients.
            .spawn(|| smol::block_on(CLIENT_EXECUTOR.run(futures_lite::future::pending::<()>())));
        if let Err(e) = &started {
            log::warn!("cannot start the client thread ({e}); using smol's global executor");
        }
        started.is_ok()
    })
}

impl Runtime for ClientThread {
    fn spawn_boxed(&self, task: BoxedTask) -> Task<()> {
        if client_thread_runs() {
            CLIENT_EXECUTOR.spawn(task)
        } else {
            smol::spawn(task)
        }
    }
}

/// The runtime clients use unless given another.
pub fn default_runtime() -> Arc<dyn Runtime> {
    static DEFAULT: OnceLock<Arc<dyn Runtime>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::new(ClientThread)).clone()
}

/// `runtime` as a quinn runtime: async-io's timers and sockets (as
/// [`quinn::SmolRuntime`]), tasks on `runtime`.
pub fn quinn_runtime(runtime: Arc<dyn Runtime>) -> Arc<dyn quinn::Runtime> {
    Arc::new(QuinnRuntime(runtime))
}

/// quinn's view of a [`Runtime`].
#[derive(Debug)]
struct QuinnRuntime(Arc<dyn Runtime>);

impl quinn::Runtime for QuinnRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::SmolRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn_boxed(future).detach();
    }

    fn wrap_udp_socket(
        &self,
        sock: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::SmolRuntime.wrap_udp_socket(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_thread_runs_tasks_and_drops_cancel_them() {
        let (tx, rx) = async_channel::bounded(1);
        ClientThread
            .spawn_boxed(Box::pin(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name).await;
            }))
            .detach();
        let name = futures_lite::future::block_on(rx.recv()).expect("the task ran");
        assert_eq!(name.as_deref(), Some("eddy-client"));

        let (tx, rx) = async_channel::bounded::<()>(1);
        let task = ClientThread.spawn_boxed(Box::pin(async move {
            futures_lite::future::pending::<()>().await;
            drop(tx);
        }));
        drop(task);
        // The cancelled task dropped its sender: the channel is closed.
        assert!(futures_lite::future::block_on(rx.recv()).is_err());
    }
}
