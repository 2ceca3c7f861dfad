//! The maintenance task: every `log-retention-check-interval-ms`, on every
//! partition, retention (`retention.ms`, `retention.bytes`, the log start
//! offset), removal of `*.deleted` files whose `file.delete.delay.ms` passed,
//! and compaction when `compaction_due`; the metadata log is compacted the
//! same way.
//!
//! A pass runs on a blocking thread (compaction rewrites files) and visits
//! each partition once; between passes the task sleeps on a timer or wakes
//! for shutdown. It holds only a weak reference to the broker, so it never
//! keeps a dropped broker alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_lite::FutureExt as _;
use log::{info, warn};

use super::partition::Partition;
use super::{Broker, lock, now_ms};

/// Runs maintenance passes until the broker shuts down or is dropped.
pub async fn run(broker: Weak<Broker>) {
    loop {
        let (interval, listener) = {
            let Some(b) = broker.upgrade() else { return };
            // Listen before looking at the flag, so a shutdown in between is seen.
            let listener = b.shutdown_event.listen();
            if b.is_shutting_down() {
                return;
            }
            (
                Duration::from_millis(b.retention_check_interval_ms),
                listener,
            )
        };
        let stop = async {
            listener.await;
            true
        }
        .or(async {
            smol::Timer::after(interval).await;
            false
        })
        .await;
        if stop {
            return;
        }
        let Some(b) = broker.upgrade() else { return };
        if b.is_shutting_down() {
            return;
        }
        let partitions = b.all_partitions();
        let pass = b.clone();
        smol::unblock(move || run_pass(&pass, &partitions)).await;
    }
}

/// One pass over every partition and the metadata log.
pub fn run_pass(broker: &Broker, partitions: &[Arc<Partition>]) {
    for p in partitions {
        if broker.is_shutting_down() {
            return;
        }
        let now = now_ms();
        let outcome = p.with_log(|log| {
            let mut done = Vec::new();
            match log.enforce_retention(now) {
                Ok(0) => {}
                Ok(n) => done.push(format!("deleted {n} segment(s) by retention")),
                Err(e) => done.push(format!("retention failed: {e}")),
            }
            if log.compaction_due(now) {
                match log.compact(now) {
                    Ok(r) => done.push(format!(
                        "compacted {} segment(s), removed {} record(s), {} -> {} bytes",
                        r.segments_cleaned, r.records_removed, r.bytes_before, r.bytes_after
                    )),
                    Err(e) => done.push(format!("compaction failed: {e}")),
                }
            }
            Ok((log.dir().display().to_string(), done))
        });
        // A closed partition (deleted meanwhile) has nothing to maintain.
        if let Ok((dir, done)) = outcome {
            for line in done {
                if line.contains("failed") {
                    warn!("{dir}: {line}");
                } else {
                    info!("{dir}: {line}");
                }
            }
        }
    }
    if let Some(store) = lock(&broker.metadata).as_mut()
        && let Err(e) = store.maintain(now_ms())
    {
        warn!("topic metadata log maintenance failed: {e}");
    }
}
