//! Group commit: concurrent appenders share one fsync.
//!
//! With `fsync = always` every acknowledged append must be on disk, but an fsync per
//! append would cap a partition at the disk's sync rate. [`SharedLog::append_durable`]
//! appends under the lock, then either runs the fsync itself (without the lock, so
//! others keep appending) or waits for the one in flight; each fsync covers every
//! append made before it started.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::log::{AppendInfo, LogError, PartitionLog};

#[derive(Debug)]
struct Inner {
    log: PartitionLog,
    syncing: bool,
    syncs: u64,
}

/// A partition log shared between threads, with group commit.
#[derive(Debug)]
pub struct SharedLog {
    inner: Mutex<Inner>,
    synced: Condvar,
}

impl SharedLog {
    /// Wraps an open log.
    pub fn new(log: PartitionLog) -> Self {
        SharedLog {
            inner: Mutex::new(Inner {
                log,
                syncing: false,
                syncs: 0,
            }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The log's own state stays consistent across a panicking holder: every
        // mutation either completed or returned an error before touching it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the log under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut PartitionLog) -> R) -> R {
        f(&mut self.lock().log)
    }

    /// Group-commit fsyncs run so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Appends as leader and returns once the records are durable.
    pub fn append_durable(
        &self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        // The CRC check is most of an append's CPU: run it before taking the lock so
        // concurrent appenders check in parallel.
        let max = self.lock().log.config().max_message_bytes;
        let checked = crate::log::validate_produce(batches, max)?;
        let mut g = self.lock();
        let info = g
            .log
            .append_validated(batches, checked, leader_epoch, now_ms)?;
        self.wait_durable(g, &info)?;
        Ok(info)
    }

    /// Waits until the records of `info` are durable, syncing if nobody else is.
    fn wait_durable<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        info: &AppendInfo,
    ) -> Result<(), LogError> {
        let target = info.last_offset + 1;
        let (mut truncations_seen, _) = g.log.truncations();
        loop {
            // A truncation (a leader change) while waiting may have cut the records:
            // nothing will make them durable, and later appends may take their offsets.
            // Past one truncation since the last look, where they cut is unknown.
            let (truncations, cut_to) = g.log.truncations();
            if target > g.log.log_end_offset()
                || truncations > truncations_seen + 1
                || (truncations == truncations_seen + 1 && cut_to < target)
            {
                return Err(LogError::TruncatedBeforeSync {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                });
            }
            truncations_seen = truncations;
            if g.log.durable_offset() >= target {
                return Ok(());
            }
            if g.syncing {
                g = self.synced.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let Some(job) = g.log.begin_sync()? else {
                continue;
            };
            g.syncing = true;
            drop(g);
            let result = job.run();
            g = self.lock();
            g.syncing = false;
            g.syncs += 1;
            let outcome = g.log.finish_sync(&job, result);
            self.synced.notify_all();
            outcome?;
        }
    }

    /// Unwraps the log (e.g. to close it).
    pub fn into_inner(self) -> PartitionLog {
        self.inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .log
    }
}
