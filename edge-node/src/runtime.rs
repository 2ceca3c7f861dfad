//! The node's async runtime: one smol executor run by a few worker threads.
//!
//! smol's global executor runs on a single thread unless `SMOL_THREADS` is set
//! before its first use, and its tasks are never dropped. The node instead owns
//! an [`Executor`] with one worker per core (bounded by [`WORKER_THREADS_MAX`]),
//! so QUIC packet processing, request handlers and partition writers use every
//! core of a small board, and stopping the node drops every task.
//!
//! quinn is handed this executor through [`NodeRuntime`]'s
//! [`quinn::Runtime`] implementation: timers and UDP sockets are exactly
//! [`quinn::SmolRuntime`]'s (async-io), only `spawn` goes to our executor.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use smol::{Executor, Task};

/// Most worker threads, whatever the core count.
pub const WORKER_THREADS_MAX: usize = 8;

/// Worker threads for this machine: one per core, at least 1, at most
/// [`WORKER_THREADS_MAX`].
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, WORKER_THREADS_MAX)
}

/// A cheap, clonable handle to spawn tasks on the node's executor.
#[derive(Clone)]
pub struct RuntimeHandle {
    executor: Arc<Executor<'static>>,
}

impl fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl RuntimeHandle {
    /// Spawns a task. Dropping the returned [`Task`] cancels it; call
    /// `detach()` to let it run on its own.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        self.executor.spawn(future)
    }

    /// This executor as a quinn runtime.
    pub fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(NodeRuntime {
            handle: self.clone(),
        })
    }
}

/// The executor and its worker threads. Dropping it stops the workers and
/// drops every task still on the executor.
pub struct Runtime {
    handle: RuntimeHandle,
    stop: async_channel::Sender<()>,
    workers: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts `threads` workers (at least one).
    pub fn start(threads: usize) -> io::Result<Runtime> {
        let executor = Arc::new(Executor::new());
        // Closing the channel (dropping `stop`) ends every worker's run loop.
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let mut workers = Vec::with_capacity(threads.max(1));
        for n in 0..threads.max(1) {
            let executor = executor.clone();
            let stopped = stopped.clone();
            let worker = std::thread::Builder::new()
                .name(format!("eddy-worker-{n}"))
                .spawn(move || {
                    smol::block_on(executor.run(async {
                        let _ = stopped.recv().await;
                    }))
                });
            match worker {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    stop.close();
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Runtime {
            handle: RuntimeHandle { executor },
            stop,
            workers,
        })
    }

    /// A handle to spawn tasks.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Runs `future` to completion on the calling thread (which also helps
    /// run the executor's tasks meanwhile).
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        smol::block_on(self.handle.executor.run(future))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.close();
        for worker in self.workers.drain(..) {
            // A worker that panicked has already reported it; nothing to add.
            let _ = worker.join();
        }
    }
}

/// quinn's view of the node runtime: smol's timers and sockets, our executor.
#[derive(Debug)]
struct NodeRuntime {
    handle: RuntimeHandle,
}

impl quinn::Runtime for NodeRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::SmolRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future).detach();
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
    fn tasks_run_on_the_workers_and_stop_with_the_runtime() {
        let rt = Runtime::start(2).expect("start");
        let (tx, rx) = async_channel::bounded(1);
        rt.handle()
            .spawn(async move {
                let _ = tx
                    .send(std::thread::current().name().map(str::to_owned))
                    .await;
            })
            .detach();
        let name = smol::block_on(rx.recv()).expect("task ran");
        assert!(name.is_some_and(|n| n.starts_with("eddy-worker-")));
        let forever = rt.handle().spawn(futures_lite::future::pending::<()>());
        forever.detach();
        drop(rt); // must not hang on the pending task
    }

    #[test]
    fn block_on_runs_a_future() {
        let rt = Runtime::start(1).expect("start");
        let task = rt.handle().spawn(async { 40 + 2 });
        assert_eq!(rt.block_on(task), 42);
    }
}
