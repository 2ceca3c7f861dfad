//! The maintenance task: every `log-retention-check-interval-ms`, on every
//! partition, retention (`retention.ms`, `retention.bytes`, the log start
//! offset), removal of `*.deleted` files whose `file.delete.delay.ms` passed,
//! and compaction when `compaction_due`; the metadata log is compacted the
//! same way.
//!
//! A topic with `retention.plugin` also asks its plugin, per partition, how
//! many old segments to delete; the answer is clamped
//! ([`eddy_core::retention::clamp_plugin_choice`]): never the active segment
//! or data at or above the high watermark, and never less than the topic's
//! own limits require (those are applied first anyway). The plugin is called
//! outside the partition lock, so appends never wait for it.
//!
//! A pass runs on a blocking thread (compaction rewrites files) and visits
//! each partition once; between passes the task sleeps on a timer or wakes
//! for shutdown. It holds only a weak reference to the broker, so it never
//! keeps a dropped broker alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_lite::FutureExt as _;
use log::{info, warn};

use eddy_core::retention;

use super::partition::Partition;
use super::{Broker, lock, now_ms};
use crate::plugins::RetentionInput;

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

/// Asks the topic's retention plugin (if any) and deletes what it chose,
/// within bounds; the log line to write, if anything happened.
fn plugin_retention(broker: &Broker, p: &Partition, now: i64) -> Option<String> {
    let config = p.with_log(|log| Ok(log.config().clone())).ok()?;
    let name = config.retention_plugin.clone()?;
    let (free, total) = crate::plugins::disk_space(broker.data_dir());
    let input = p
        .with_log(|log| {
            Ok(RetentionInput {
                topic: p.topic().to_owned(),
                partition: p.index(),
                segments: log.segment_summaries(),
                log_start_offset: log.log_start_offset(),
                high_watermark: log.high_watermark(),
                disk_free_bytes: free,
                disk_total_bytes: total,
                now_ms: now,
                topic_config: config.to_props().into_iter().collect(),
            })
        })
        .ok()?;
    // Outside the lock: a slow plugin must not stall appends.
    let asked = broker.plugins().retention(&name, &input)?;
    if asked == 0 {
        return None;
    }
    let result = p.with_log(|log| {
        let segments = log.segment_summaries();
        let hw = log.high_watermark();
        let own = retention::plan(&segments, log.config(), log.log_start_offset(), hw, now);
        let n = retention::clamp_plugin_choice(
            asked as usize,
            own,
            retention::deletable_max(&segments, hw),
        );
        Ok(log.delete_oldest_segments(n, now))
    });
    match result {
        Ok(Ok(0)) | Err(_) => None,
        Ok(Ok(n)) => Some(format!(
            "deleted {n} segment(s) chosen by retention plugin {name} (it asked for {asked})"
        )),
        Ok(Err(e)) => Some(format!("retention by plugin {name} failed: {e}")),
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
        let outcome = outcome.map(|(dir, mut done)| {
            if let Some(line) = plugin_retention(broker, p, now) {
                done.push(line);
            }
            (dir, done)
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
