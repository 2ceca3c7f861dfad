//! Call statistics of one plugin: counts, failures in a row, and the time
//! per call (an HdrHistogram, for the mean and the 99th percentile).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest call time the histogram tells apart (longer ones count as this).
const CALL_NS_MAX: u64 = 60_000_000_000;

/// Counters of one loaded plugin.
#[derive(Debug)]
pub struct Stats {
    calls: AtomicU64,
    failures: AtomicU64,
    in_a_row: AtomicU32,
    records: AtomicU64,
    times: Mutex<Option<Histogram<u64>>>,
}

/// A snapshot for `plugin list`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub calls: u64,
    pub failures: u64,
    pub in_a_row: u32,
    pub records: u64,
    pub mean_ns: u64,
    pub p99_ns: u64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
            records: AtomicU64::new(0),
            times: Mutex::new(Histogram::new_with_max(CALL_NS_MAX, 2).ok()),
        }
    }

    fn time(&self, took: Duration, records: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, CALL_NS_MAX);
        if let Some(h) = self
            .times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = h.record(ns);
        }
    }

    /// A call that succeeded.
    pub fn success(&self, took: Duration, records: u64) {
        self.time(took, records);
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A call that failed; returns the failures in a row now.
    pub fn failure(&self, took: Duration, records: u64) -> u32 {
        self.time(took, records);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.in_a_row
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    pub fn snapshot(&self) -> Snapshot {
        let (mean_ns, p99_ns) = self
            .times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or((0, 0), |h| (h.mean() as u64, h.value_at_quantile(0.99)));
        Snapshot {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            in_a_row: self.in_a_row.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            mean_ns,
            p99_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_in_a_row_and_times() {
        let s = Stats::new();
        assert_eq!(s.failure(Duration::from_micros(10), 1), 1);
        assert_eq!(s.failure(Duration::from_micros(10), 1), 2);
        s.success(Duration::from_micros(100), 5);
        assert_eq!(s.failure(Duration::from_micros(10), 1), 1);
        let snap = s.snapshot();
        assert_eq!(
            (snap.calls, snap.failures, snap.in_a_row, snap.records),
            (4, 3, 1, 8)
        );
        assert!(snap.mean_ns >= 30_000 && snap.mean_ns <= 35_000, "{snap:?}");
        assert!(snap.p99_ns >= 99_000, "{snap:?}");
    }
}
