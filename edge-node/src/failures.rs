//! Runs of failed requests to other nodes. A single failure is common around
//! elections and restarts and stays at debug level; a run that lasts
//! [`COMPLAIN_AFTER_MS`] is logged as a warning, and again every as long
//! while it lasts, so a node that cannot reach a peer shows at the default
//! log level without flooding it. Failures that matter from the first one
//! (a follower's disk) warn at once, then at the same pace.

use std::time::{Duration, Instant};

use log::{debug, warn};

/// How long requests keep failing before the run is logged at warn level
/// (and again every as long while they do).
pub const COMPLAIN_AFTER_MS: u64 = 5000;

/// A run of failed requests (one per peer loop or follower).
#[derive(Debug, Default)]
pub struct FailureRun {
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl FailureRun {
    /// Records a failure: logs `what` at warn level when the run has lasted
    /// [`COMPLAIN_AFTER_MS`] since it began or since the last warning, at
    /// debug level otherwise.
    pub fn failed(&mut self, what: impl FnOnce() -> String) {
        match self.failed_at(Instant::now()) {
            Some(lasted) => warn!("{} (failing for {:.1} s)", what(), lasted.as_secs_f64()),
            None => debug!("{}", what()),
        }
    }

    /// Records a failure at `now`; returns how long the run has lasted when
    /// a warning is due.
    pub fn failed_at(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.since.get_or_insert(now);
        let last = self.warned.unwrap_or(since);
        if now.saturating_duration_since(last) < Duration::from_millis(COMPLAIN_AFTER_MS) {
            return None;
        }
        self.warned = Some(now);
        Some(now.saturating_duration_since(since))
    }

    /// Records a failure that matters from the first one (a local disk
    /// error, say): warns at once, then every [`COMPLAIN_AFTER_MS`] while
    /// the run lasts, at debug level in between.
    pub fn failed_loudly(&mut self, what: impl FnOnce() -> String) {
        match self.failed_loudly_at(Instant::now()) {
            Some(lasted) if lasted.is_zero() => warn!("{}", what()),
            Some(lasted) => warn!("{} (failing for {:.1} s)", what(), lasted.as_secs_f64()),
            None => debug!("{}", what()),
        }
    }

    /// Records a loud failure at `now`; returns how long the run has lasted
    /// when a warning is due (zero for the run's first failure).
    pub fn failed_loudly_at(&mut self, now: Instant) -> Option<Duration> {
        if self.since.is_none() {
            self.since = Some(now);
            self.warned = Some(now);
            return Some(Duration::ZERO);
        }
        self.failed_at(now)
    }

    /// Whether a run of failures is going on.
    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }

    /// Ends the run (a request succeeded).
    pub fn ok(&mut self) {
        *self = FailureRun::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_warns_after_the_interval_and_then_every_as_long() {
        let every = Duration::from_millis(COMPLAIN_AFTER_MS);
        let t0 = Instant::now();
        let mut run = FailureRun::default();
        assert_eq!(run.failed_at(t0), None, "a single failure stays at debug");
        assert_eq!(run.failed_at(t0 + every / 2), None);
        assert_eq!(
            run.failed_at(t0 + every),
            Some(every),
            "the run lasted one interval"
        );
        assert_eq!(
            run.failed_at(t0 + every + every / 2),
            None,
            "warned just now"
        );
        assert_eq!(run.failed_at(t0 + every * 2), Some(every * 2));
        // A success ends the run: the next failure starts a new one.
        run.ok();
        assert_eq!(run.failed_at(t0 + every * 3), None);
        assert_eq!(run.failed_at(t0 + every * 4), Some(every));
    }

    #[test]
    fn a_loud_run_warns_at_its_first_failure_and_then_every_interval() {
        let every = Duration::from_millis(COMPLAIN_AFTER_MS);
        let t0 = Instant::now();
        let mut run = FailureRun::default();
        assert!(!run.is_failing());
        assert_eq!(run.failed_loudly_at(t0), Some(Duration::ZERO), "at once");
        assert!(run.is_failing());
        assert_eq!(run.failed_loudly_at(t0 + every / 10), None, "not again");
        assert_eq!(run.failed_loudly_at(t0 + every / 2), None);
        assert_eq!(run.failed_loudly_at(t0 + every), Some(every));
        assert_eq!(run.failed_loudly_at(t0 + every + every / 2), None);
        run.ok();
        assert!(!run.is_failing());
        assert_eq!(run.failed_loudly_at(t0 + every * 3), Some(Duration::ZERO));
    }
}
