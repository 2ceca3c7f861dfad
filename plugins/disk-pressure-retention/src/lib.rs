//! `disk-pressure-retention`: when the disk holding the data fills up,
//! deletes the oldest segments of low-priority topics first, and of other
//! topics only when the disk is critically full.
//!
//! Config:
//! - `threshold-percent` (default 80): above this disk usage, low-priority
//!   topics lose their oldest segments;
//! - `critical-percent` (default 95): above this, every topic does;
//! - `low-priority-topics`: comma-separated topic names; a trailing `*`
//!   matches a prefix (`debug-*`);
//! - `segments-per-check` (default 1): segments a partition gives up per
//!   retention check, so eviction is gradual and stops as soon as usage
//!   falls below the threshold.
//!
//! The node never deletes the active segment or uncommitted data, and still
//! applies the topic's own `retention.ms` / `retention.bytes`.

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::retention::{PartitionState, Retention};

/// The plugin.
pub struct DiskPressure {
    threshold: f64,
    critical: f64,
    low_priority: Vec<String>,
    per_check: u32,
}

impl DiskPressure {
    fn is_low_priority(&self, topic: &str) -> bool {
        self.low_priority.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
    }
}

impl Retention for DiskPressure {
    fn new(config: Config) -> Result<Self, String> {
        let threshold: f64 = config.parse_or("threshold-percent", 80.0)?;
        let critical: f64 = config.parse_or("critical-percent", 95.0)?;
        if !(0.0..=100.0).contains(&threshold) || !(0.0..=100.0).contains(&critical) {
            return Err("threshold-percent and critical-percent must be between 0 and 100".into());
        }
        Ok(DiskPressure {
            threshold: threshold / 100.0,
            critical: critical / 100.0,
            low_priority: config.list("low-priority-topics"),
            per_check: config.parse_or("segments-per-check", 1)?,
        })
    }

    fn segments_to_delete(&mut self, state: &PartitionState) -> Result<u32, String> {
        let used = state.disk_used_ratio();
        let limit = if self.is_low_priority(&state.topic) {
            self.threshold
        } else {
            self.critical
        };
        if used <= limit {
            return Ok(0);
        }
        Ok(self.per_check)
    }
}

eddy_plugin_sdk::export!(retention: DiskPressure);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::retention::Segment;

    fn state(topic: &str, used_percent: u64) -> PartitionState {
        PartitionState {
            topic: topic.into(),
            partition: 0,
            segments: vec![
                Segment {
                    base_offset: 0,
                    end_offset: 10,
                    size_bytes: 100,
                    max_timestamp: 1,
                };
                3
            ],
            log_start_offset: 0,
            high_watermark: 30,
            disk_free_bytes: 100 - used_percent,
            disk_total_bytes: 100,
            now_ms: 0,
            topic_config: Vec::new(),
        }
    }

    #[test]
    fn low_priority_first_then_everyone_when_critical() {
        let mut p = DiskPressure::new(Config::new([
            ("low-priority-topics", "debug-*,logs"),
            ("segments-per-check", "2"),
        ]))
        .unwrap();
        assert_eq!(p.segments_to_delete(&state("logs", 50)).unwrap(), 0);
        assert_eq!(p.segments_to_delete(&state("logs", 85)).unwrap(), 2);
        assert_eq!(p.segments_to_delete(&state("debug-x", 85)).unwrap(), 2);
        assert_eq!(p.segments_to_delete(&state("orders", 85)).unwrap(), 0);
        assert_eq!(p.segments_to_delete(&state("orders", 97)).unwrap(), 2);
    }
}
