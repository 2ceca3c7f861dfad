//! The node's async runtime: an I/O worker and compute workers, each with its
//! own smol executor.
//!
//! smol's global executor runs on a single thread unless `SMOL_THREADS` is set
//! before its first use, and its tasks are never dropped. The node instead
//! starts `worker-threads` workers (one per core by default, bounded by
//! [`WORKER_THREADS_MAX`]), and stopping the node drops every task.
//!
//! - Worker 0 is the I/O worker: QUIC (quinn's endpoint and connection
//!   drivers), request handlers, fetch waits, replication and cluster tasks.
//!   It runs `smol::block_on`, so when it has nothing to run it waits on the
//!   async-io reactor itself and wakes straight into the task a packet is for.
//! - Workers 1.. are compute workers, dealt partition writers round-robin
//!   (they append, group-commit and answer). They never wait on the reactor,
//!   only on their executor. With one worker, it does both.
//!
//! Why not one executor shared by every worker: each worker then also waits on
//! the reactor, and async-io hands the reactor between them (a worker that
//! received packets for another's tasks wakes the `async-io` thread and parks),
//! while the executor wakes a sleeping worker every time a task starts. On
//! this 2-core VM, where a thread switch costs tens of µs, the shared executor
//! took 16–20k thread switches per second at 20 MB/s of 100-byte records
//! against 4–9k for this layout, and 28% more node CPU, for the same
//! throughput. The cost is that QUIC work of all connections runs on one core;
//! one connection's is on one core in either layout (quinn drives a connection
//! from one task).
//!
//! quinn is handed this runtime through [`RuntimeHandle::quinn_runtime`]:
//! timers and UDP sockets are exactly [`quinn::SmolRuntime`]'s (async-io),
//! only `spawn` goes to the I/O worker.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

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

struct Shards {
    /// The I/O worker's executor first, then the compute workers'.
    executors: Vec<Arc<Executor<'static>>>,
    /// Round-robin position for [`RuntimeHandle::spawn_spread`].
    next: AtomicUsize,
}

/// A cheap, clonable handle to spawn tasks on the node's executors.
#[derive(Clone)]
pub struct RuntimeHandle {
    shards: Arc<Shards>,
}

impl fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("shards", &self.shards.executors.len())
            .finish_non_exhaustive()
    }
}

impl RuntimeHandle {
    /// Spawns a task on the I/O worker (shard 0). Dropping the returned
    /// [`Task`] cancels it; call `detach()` to let it run on its own.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        self.shards.executors[0].spawn(future)
    }

    /// Spawns a task on the next compute worker in turn (the I/O worker when
    /// there is only one worker): for work that needs no sockets and should
    /// spread over the cores (partition writers).
    pub fn spawn_spread<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        let n = self.shards.executors.len();
        if n == 1 {
            return self.shards.executors[0].spawn(future);
        }
        let shard = 1 + self.shards.next.fetch_add(1, Ordering::Relaxed) % (n - 1);
        self.shards.executors[shard].spawn(future)
    }

    /// This runtime as a quinn runtime: async-io's timers and sockets, tasks
    /// on the I/O worker.
    pub fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        eddy_client::runtime::quinn_runtime(Arc::new(self.clone()))
    }
}

/// The executors and their worker threads. Dropping it stops the workers and
/// drops every task still on the executors.
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
    /// Starts `threads` workers (at least one), each with its own executor.
    pub fn start(threads: usize) -> io::Result<Runtime> {
        let threads = threads.max(1);
        let shards = Arc::new(Shards {
            executors: (0..threads).map(|_| Arc::new(Executor::new())).collect(),
            next: AtomicUsize::new(0),
        });
        // Closing the channel (dropping `stop`) ends every worker's run loop.
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let executor = shards.executors[n].clone();
            let stopped = stopped.clone();
            let worker = std::thread::Builder::new()
                .name(format!("eddy-worker-{n}"))
                .spawn(move || {
                    let run = executor.run(async {
                        let _ = stopped.recv().await;
                    });
                    if n == 0 {
                        smol::block_on(run);
                    } else {
                        futures_lite::future::block_on(run);
                    }
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
            handle: RuntimeHandle { shards },
            stop,
            workers,
        })
    }

    /// A handle to spawn tasks.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Runs `future` to completion on the calling thread; the tasks it
    /// spawns go to the workers. The caller does not wait on the reactor:
    /// that stays with the I/O worker.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        futures_lite::future::block_on(future)
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

/// The node's clients (peer connections) run their tasks on the I/O worker.
impl eddy_client::runtime::Runtime for RuntimeHandle {
    fn spawn_boxed(&self, task: eddy_client::runtime::BoxedTask) -> Task<()> {
        self.spawn(task)
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
