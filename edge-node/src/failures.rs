//! Runs of failed requests to other nodes. A single failure is common around
//! elections and restarts and stays at debug level; a run that lasts
//! [`COMPLAIN_AFTER_MS`] is logged as a warning, and again every as long
//! while it lasts, so a node that cannot reach a peer shows at the default
//! log level without flooding it.

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
}
