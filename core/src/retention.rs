//! Which old segments retention deletes: a pure decision over segment summaries.
//!
//! Kafka's rules, whole segments only, oldest first, never the active segment and
//! never a segment holding offsets at or above the high watermark:
//! - the log start offset: a segment whose records all lie below it goes;
//! - `retention.ms` (with `cleanup.policy` containing `delete`): a segment whose
//!   largest timestamp is older than `now - retention.ms` goes;
//! - `retention.bytes` (same policy): the oldest segments go while the partition
//!   stays at or above the limit without them.
//!
//! The owner of the log calls [`crate::log::PartitionLog::enforce_retention`] every
//! `log.retention.check.interval.ms`; a retention plugin's answer is clamped by
//! [`clamp_plugin_choice`] so that it can delete more, never less safely.

use crate::config::LogConfig;
use crate::segment::NO_TIMESTAMP;

/// What retention needs to know about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Base offset.
    pub base_offset: u64,
    /// Offset after its last batch.
    pub next_offset: u64,
    /// Bytes.
    pub size: u64,
    /// Largest record timestamp, or -1.
    pub max_timestamp: i64,
}

/// Why segments are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Below the log start offset.
    LogStart,
    /// Older than `retention.ms`.
    Time,
    /// Over `retention.bytes`.
    Size,
    /// A retention plugin asked for it.
    Plugin,
}

/// How many of the oldest segments to delete, and the first reason that applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Segments to delete, oldest first.
    pub count: usize,
    /// Why (for the log line).
    pub reason: Option<Reason>,
}

/// How many segments may be deleted at all: every one before the active (last)
/// segment whose records are all below the high watermark.
pub fn deletable_max(segments: &[SegmentSummary], high_watermark: u64) -> usize {
    let closed = segments.len().saturating_sub(1);
    segments[..closed]
        .iter()
        .take_while(|s| s.next_offset <= high_watermark)
        .count()
}

/// Decides what retention deletes. `segments` are in offset order, the last is active.
pub fn plan(
    segments: &[SegmentSummary],
    config: &LogConfig,
    log_start_offset: u64,
    high_watermark: u64,
    now_ms: i64,
) -> Plan {
    let limit = deletable_max(segments, high_watermark);
    let mut count = 0;
    let mut reason = None;
    let mut take = |n: usize, r: Reason, count: &mut usize| {
        if n > *count {
            *count = n;
            reason.get_or_insert(r);
        }
    };
    let by_start = segments[..limit]
        .iter()
        .take_while(|s| s.next_offset <= log_start_offset)
        .count();
    take(by_start, Reason::LogStart, &mut count);
    if config.cleanup_policy.delete {
        if let Some(ms) = config.retention_ms {
            let horizon = now_ms.saturating_sub(ms.min(i64::MAX as u64) as i64);
            let by_time = segments[..limit]
                .iter()
                .take_while(|s| s.max_timestamp != NO_TIMESTAMP && s.max_timestamp < horizon)
                .count();
            take(by_time, Reason::Time, &mut count);
        }
        if let Some(bytes) = config.retention_bytes {
            let total: u64 = segments.iter().map(|s| s.size).sum();
            let mut over = total.saturating_sub(bytes);
            let mut by_size = 0;
            for s in &segments[..limit] {
                if over < s.size || s.size == 0 && over == 0 {
                    break;
                }
                over -= s.size;
                by_size += 1;
            }
            take(by_size, Reason::Size, &mut count);
        }
    }
    Plan { count, reason }
}

/// Bounds a retention plugin's answer: it may ask for any number, the log deletes at
/// most [`deletable_max`] and at least what the topic's own limits require.
pub fn clamp_plugin_choice(asked: usize, own: Plan, deletable: usize) -> usize {
    asked.min(deletable).max(own.count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn segs(sizes_and_ts: &[(u64, i64)]) -> Vec<SegmentSummary> {
        let mut base = 0;
        sizes_and_ts
            .iter()
            .map(|&(size, ts)| {
                let s = SegmentSummary {
                    base_offset: base,
                    next_offset: base + 10,
                    size,
                    max_timestamp: ts,
                };
                base += 10;
                s
            })
            .collect()
    }

    fn config(pairs: &[(&str, &str)]) -> LogConfig {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogConfig::from_props(&m).unwrap()
    }

    #[test]
    fn time_retention_stops_at_the_first_young_segment_and_the_active_one() {
        let s = segs(&[(100, 1_000), (100, 5_000), (100, 2_000), (100, 1_000)]);
        let c = config(&[("retention.ms", "3000")]);
        let p = plan(&s, &c, 0, 40, 6_000);
        assert_eq!(
            p,
            Plan {
                count: 1,
                reason: Some(Reason::Time)
            }
        );
        // Everything old: the active segment still stays.
        let p = plan(&s, &c, 0, 40, 100_000);
        assert_eq!(p.count, 3);
    }

    #[test]
    fn size_retention_keeps_the_partition_at_or_above_the_limit() {
        let s = segs(&[(100, 1), (100, 1), (100, 1), (50, 1)]);
        let c = config(&[("retention.bytes", "200"), ("retention.ms", "-1")]);
        // 350 total, limit 200: deleting one leaves 250, two would leave 150 < 200.
        assert_eq!(plan(&s, &c, 0, 40, 0).count, 1);
    }

    #[test]
    fn nothing_at_or_above_the_high_watermark_goes() {
        let s = segs(&[(100, 1), (100, 1), (100, 1)]);
        let c = config(&[("retention.ms", "1")]);
        assert_eq!(plan(&s, &c, 0, 15, 1_000).count, 1);
        assert_eq!(plan(&s, &c, 0, 9, 1_000).count, 0);
    }

    #[test]
    fn log_start_applies_even_to_compacted_topics() {
        let s = segs(&[(100, 1), (100, 1), (100, 1)]);
        let c = config(&[("cleanup.policy", "compact")]);
        assert_eq!(
            plan(&s, &c, 25, 30, 1_000),
            Plan {
                count: 2,
                reason: Some(Reason::LogStart)
            }
        );
        assert_eq!(plan(&s, &c, 5, 30, i64::MAX).count, 0);
    }

    #[test]
    fn plugins_cannot_go_past_the_guards() {
        let own = Plan {
            count: 1,
            reason: Some(Reason::Time),
        };
        assert_eq!(clamp_plugin_choice(10, own, 3), 3);
        assert_eq!(clamp_plugin_choice(0, own, 3), 1);
    }
}
