//! Per-topic log configuration, under Kafka's names.
//!
//! [`LogConfig::from_props`] takes `key=value` pairs as a user writes them
//! (`retention.ms=86400000`, `cleanup.policy=compact,delete`) and rejects unknown keys
//! and bad values with a message that names the key.

use std::collections::BTreeMap;

use crate::batch::{Compression, TimestampType};

/// Why a topic config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key is not a topic config.
    #[error("unknown topic config {key:?}; known keys are: {known}")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The keys that exist.
        known: String,
    },
    /// The value does not parse or is out of range.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

/// `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// `delete`: time and size retention apply.
    pub delete: bool,
    /// `compact`: keep the newest record per key.
    pub compact: bool,
}

/// The node-wide fsync shorthand (`fsync = "always" | "interval" | "never"`), which
/// sets the defaults of Kafka's per-topic `flush.messages` and `flush.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append is synced before it is acknowledged (`flush.messages = 1`);
    /// concurrent appends share one fsync.
    Always,
    /// Synced every `interval_ms` (`flush.ms`); a crash may lose that much.
    Interval {
        /// Milliseconds between syncs.
        interval_ms: u64,
    },
    /// Never synced by the log (only on segment roll and clean shutdown); the OS
    /// writes back on its own schedule. Easiest on SD cards.
    Never,
}

impl FsyncPolicy {
    /// Parses `always`, `interval` or `never` (with the interval for `interval`).
    pub fn parse(name: &str, interval_ms: u64) -> Result<FsyncPolicy, ConfigError> {
        match name {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval { interval_ms }),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(invalid("fsync", other, "use always, interval or never")),
        }
    }

    /// `base` with `flush.messages` / `flush.ms` set by this policy.
    pub fn apply(self, base: &LogConfig) -> LogConfig {
        let mut c = base.clone();
        match self {
            FsyncPolicy::Always => {
                c.flush_messages = Some(1);
                c.flush_ms = None;
            }
            FsyncPolicy::Interval { interval_ms } => {
                c.flush_messages = None;
                c.flush_ms = Some(interval_ms);
            }
            FsyncPolicy::Never => {
                c.flush_messages = None;
                c.flush_ms = None;
            }
        }
        c
    }
}

/// Size of the largest segment file a position (u32) can address.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Smallest segment Kafka allows (14 bytes, one empty batch header fits).
pub const SEGMENT_BYTES_MIN: u64 = 14;

/// The log settings of one topic. Field names are Kafka's with `_` for `.`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would pass this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment is this old.
    pub segment_ms: u64,
    /// `segment.index.bytes`: preallocated size of each index file.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: bytes of log between index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms` (resolved with `.minutes` / `.hours`); `None` = forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes` per partition; `None` = unlimited.
    pub retention_bytes: Option<u64>,
    /// `flush.messages`: fsync after this many records; `None` = never by count.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fsync when the oldest unsynced record is this old; `None` = never by time.
    pub flush_ms: Option<u64>,
    /// `file.delete.delay.ms`: how long `*.deleted` files linger.
    pub file_delete_delay_ms: u64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long tombstones survive compaction.
    pub delete_retention_ms: u64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: u64,
    /// `min.cleanable.dirty.ratio`: compact when this share of the log is uncleaned.
    pub min_cleanable_dirty_ratio: f64,
    /// `max.message.bytes`: the largest batch a producer may send.
    pub max_message_bytes: u64,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `compression.type`: `None` means `producer` (keep what the producer sent).
    pub compression_type: Option<Compression>,
    /// `min.insync.replicas`.
    pub min_insync_replicas: u32,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election_enable: bool,
    /// `partitioner.plugin`: the partitioner plugin for produce requests that
    /// name no partition; `None` = the built-in partitioner.
    pub partitioner_plugin: Option<String>,
    /// `interceptor.plugins`: interceptor plugins every produced record
    /// passes through before it is stored, in order (comma-separated).
    pub interceptor_plugins: Vec<String>,
    /// `interceptor.dead.letter.topic`: where records an interceptor rejects
    /// go; `None` = the produce request fails with the reason.
    pub interceptor_dead_letter_topic: Option<String>,
    /// `retention.plugin`: a retention plugin asked which old segments to
    /// delete, on top of `retention.ms` / `retention.bytes`.
    pub retention_plugin: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3_600_000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3_600_000),
            retention_bytes: None,
            flush_messages: None,
            flush_ms: None,
            file_delete_delay_ms: 60_000,
            cleanup_policy: CleanupPolicy {
                delete: true,
                compact: false,
            },
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: 0.5,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            compression_type: None,
            min_insync_replicas: 1,
            unclean_leader_election_enable: false,
            partitioner_plugin: None,
            interceptor_plugins: Vec::new(),
            interceptor_dead_letter_topic: None,
            retention_plugin: None,
        }
    }
}

/// Every key [`LogConfig::from_props`] accepts.
pub const KEYS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "interceptor.dead.letter.topic",
    "interceptor.plugins",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "partitioner.plugin",
    "retention.bytes",
    "retention.hours",
    "retention.minutes",
    "retention.ms",
    "retention.plugin",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

impl LogConfig {
    /// Applies `props` on top of `self` (the node's defaults) and checks the result.
    ///
    /// Retention time follows Kafka's precedence: `retention.ms`, else
    /// `retention.minutes`, else `retention.hours`. A negative value (-1) means
    /// "no limit" for retention and flush settings, as in Kafka.
    pub fn with_props(&self, props: &BTreeMap<String, String>) -> Result<LogConfig, ConfigError> {
        let mut c = self.clone();
        for (key, value) in props {
            let v = value.trim();
            match key.as_str() {
                "segment.bytes" => {
                    c.segment_bytes = ranged(key, v, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)?
                }
                "segment.ms" => c.segment_ms = ranged(key, v, 1, i64::MAX as u64)?,
                "segment.index.bytes" => {
                    c.segment_index_bytes = ranged(key, v, 12, i32::MAX as u64)?
                }
                "index.interval.bytes" => {
                    c.index_interval_bytes = ranged(key, v, 0, i32::MAX as u64)?
                }
                "retention.ms" | "retention.minutes" | "retention.hours" => {}
                "retention.bytes" => c.retention_bytes = optional(key, v)?,
                "flush.messages" => c.flush_messages = optional(key, v)?,
                "flush.ms" => c.flush_ms = optional(key, v)?,
                "file.delete.delay.ms" => c.file_delete_delay_ms = ranged(key, v, 0, u64::MAX)?,
                "cleanup.policy" => c.cleanup_policy = cleanup_policy(key, v)?,
                "delete.retention.ms" => c.delete_retention_ms = ranged(key, v, 0, u64::MAX)?,
                "min.compaction.lag.ms" => c.min_compaction_lag_ms = ranged(key, v, 0, u64::MAX)?,
                "min.cleanable.dirty.ratio" => {
                    let r: f64 = v.parse().map_err(|_| invalid(key, v, "not a number"))?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(invalid(key, v, "must be between 0 and 1"));
                    }
                    c.min_cleanable_dirty_ratio = r;
                }
                "max.message.bytes" => c.max_message_bytes = ranged(key, v, 0, i32::MAX as u64)?,
                "message.timestamp.type" => {
                    c.message_timestamp_type = match v {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => return Err(invalid(key, v, "use CreateTime or LogAppendTime")),
                    }
                }
                "compression.type" => {
                    c.compression_type = match v {
                        "producer" => None,
                        other => match Compression::from_name(other) {
                            Some(Compression::Snappy) => {
                                return Err(invalid(
                                    key,
                                    v,
                                    "snappy is not supported; use lz4 or zstd",
                                ));
                            }
                            Some(codec) => Some(codec),
                            None => {
                                return Err(invalid(
                                    key,
                                    v,
                                    "use producer, uncompressed, gzip, lz4 or zstd",
                                ));
                            }
                        },
                    }
                }
                "min.insync.replicas" => {
                    c.min_insync_replicas = ranged(key, v, 1, u32::MAX as u64)? as u32
                }
                "unclean.leader.election.enable" => {
                    c.unclean_leader_election_enable = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(key, v, "use true or false")),
                    }
                }
                "partitioner.plugin" => c.partitioner_plugin = plugin_name(key, v)?,
                "retention.plugin" => c.retention_plugin = plugin_name(key, v)?,
                "interceptor.plugins" => {
                    let mut chain = Vec::new();
                    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if let Some(name) = plugin_name(key, name)? {
                            chain.push(name);
                        }
                    }
                    if chain.len() > INTERCEPTOR_CHAIN_MAX {
                        return Err(invalid(
                            key,
                            v,
                            &format!("at most {INTERCEPTOR_CHAIN_MAX} interceptors per topic"),
                        ));
                    }
                    c.interceptor_plugins = chain;
                }
                "interceptor.dead.letter.topic" => {
                    c.interceptor_dead_letter_topic = if v.is_empty() {
                        None
                    } else {
                        crate::layout::validate_topic_name(v)
                            .map_err(|reason| invalid(key, v, &reason))?;
                        Some(v.to_owned())
                    }
                }
                _ => {
                    return Err(ConfigError::UnknownKey {
                        key: key.clone(),
                        known: KEYS.join(", "),
                    });
                }
            }
        }
        let retention = ["retention.ms", "retention.minutes", "retention.hours"]
            .iter()
            .zip([1u64, 60_000, 3_600_000])
            .find_map(|(k, unit)| props.get(*k).map(|v| (*k, v.trim(), unit)));
        if let Some((key, v, unit)) = retention {
            c.retention_ms = optional(key, v)?
                .map(|n| {
                    n.checked_mul(unit)
                        .ok_or_else(|| invalid(key, v, "too large"))
                })
                .transpose()?;
        }
        if c.segment_index_bytes < 12 {
            return Err(invalid(
                "segment.index.bytes",
                &c.segment_index_bytes.to_string(),
                "must hold at least one entry",
            ));
        }
        Ok(c)
    }

    /// A config from Kafka-named properties on top of the defaults.
    pub fn from_props(props: &BTreeMap<String, String>) -> Result<LogConfig, ConfigError> {
        LogConfig::default().with_props(props)
    }

    /// The config as Kafka-named properties (for `topic describe`).
    pub fn to_props(&self) -> BTreeMap<String, String> {
        let opt = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |n| n.to_string());
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_owned(), v);
        };
        put("segment.bytes", self.segment_bytes.to_string());
        put("segment.ms", self.segment_ms.to_string());
        put("segment.index.bytes", self.segment_index_bytes.to_string());
        put(
            "index.interval.bytes",
            self.index_interval_bytes.to_string(),
        );
        put("retention.ms", opt(self.retention_ms));
        put("retention.bytes", opt(self.retention_bytes));
        put("flush.messages", opt(self.flush_messages));
        put("flush.ms", opt(self.flush_ms));
        put(
            "file.delete.delay.ms",
            self.file_delete_delay_ms.to_string(),
        );
        let policy = match (self.cleanup_policy.delete, self.cleanup_policy.compact) {
            (true, true) => "compact,delete",
            (false, true) => "compact",
            _ => "delete",
        };
        put("cleanup.policy", policy.to_owned());
        put("delete.retention.ms", self.delete_retention_ms.to_string());
        put(
            "min.compaction.lag.ms",
            self.min_compaction_lag_ms.to_string(),
        );
        put(
            "min.cleanable.dirty.ratio",
            self.min_cleanable_dirty_ratio.to_string(),
        );
        put("max.message.bytes", self.max_message_bytes.to_string());
        let ts = match self.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        };
        put("message.timestamp.type", ts.to_owned());
        put(
            "compression.type",
            self.compression_type
                .map_or("producer", |c| c.name())
                .to_owned(),
        );
        put("min.insync.replicas", self.min_insync_replicas.to_string());
        put(
            "unclean.leader.election.enable",
            self.unclean_leader_election_enable.to_string(),
        );
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        put("partitioner.plugin", text(&self.partitioner_plugin));
        put("interceptor.plugins", self.interceptor_plugins.join(","));
        put(
            "interceptor.dead.letter.topic",
            text(&self.interceptor_dead_letter_topic),
        );
        put("retention.plugin", text(&self.retention_plugin));
        m
    }

    /// Every plugin the topic names, with the config key naming it.
    pub fn plugins(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(p) = &self.partitioner_plugin {
            out.push(("partitioner.plugin", p.as_str()));
        }
        for p in &self.interceptor_plugins {
            out.push(("interceptor.plugins", p.as_str()));
        }
        if let Some(p) = &self.retention_plugin {
            out.push(("retention.plugin", p.as_str()));
        }
        out
    }

    /// Entries an offset index of `segment.index.bytes` holds.
    pub fn offset_index_entries_max(&self) -> u32 {
        (self.segment_index_bytes / crate::index::OFFSET_ENTRY_BYTES as u64).min(u32::MAX as u64)
            as u32
    }

    /// Entries a time index of `segment.index.bytes` holds.
    pub fn time_index_entries_max(&self) -> u32 {
        (self.segment_index_bytes / crate::index::TIME_ENTRY_BYTES as u64).min(u32::MAX as u64)
            as u32
    }
}

/// Most interceptors in one topic's `interceptor.plugins` chain.
pub const INTERCEPTOR_CHAIN_MAX: usize = 8;
/// Longest plugin name.
pub const PLUGIN_NAME_BYTES_MAX: usize = 64;

/// Whether `name` is a valid plugin name: 1 to [`PLUGIN_NAME_BYTES_MAX`]
/// ASCII letters, digits, `.`, `_` or `-`.
pub fn is_valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PLUGIN_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A plugin name config value; empty means none.
fn plugin_name(key: &str, v: &str) -> Result<Option<String>, ConfigError> {
    if v.is_empty() {
        return Ok(None);
    }
    if !is_valid_plugin_name(v) {
        return Err(invalid(
            key,
            v,
            &format!(
                "a plugin name is 1 to {PLUGIN_NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
            ),
        ));
    }
    Ok(Some(v.to_owned()))
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn ranged(key: &str, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(key, v, "not a non-negative whole number"))?;
    if n < min || n > max {
        return Err(invalid(key, v, &format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn optional(key: &str, v: &str) -> Result<Option<u64>, ConfigError> {
    let n: i64 = v
        .parse()
        .map_err(|_| invalid(key, v, "not a whole number (-1 for no limit)"))?;
    match n {
        -1 => Ok(None),
        n if n < 0 => Err(invalid(key, v, "must be -1 (no limit) or at least 0")),
        n => Ok(Some(n as u64)),
    }
}

fn cleanup_policy(key: &str, v: &str) -> Result<CleanupPolicy, ConfigError> {
    let mut p = CleanupPolicy {
        delete: false,
        compact: false,
    };
    for part in v.split(',').map(str::trim) {
        match part {
            "delete" => p.delete = true,
            "compact" => p.compact = true,
            _ => return Err(invalid(key, v, "use delete, compact or compact,delete")),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn retention_precedence_is_kafkas() {
        let c = LogConfig::from_props(&props(&[("retention.hours", "1")])).unwrap();
        assert_eq!(c.retention_ms, Some(3_600_000));
        let c = LogConfig::from_props(&props(&[
            ("retention.hours", "1"),
            ("retention.minutes", "2"),
        ]))
        .unwrap();
        assert_eq!(c.retention_ms, Some(120_000));
        let c = LogConfig::from_props(&props(&[
            ("retention.hours", "1"),
            ("retention.minutes", "2"),
            ("retention.ms", "5"),
        ]))
        .unwrap();
        assert_eq!(c.retention_ms, Some(5));
        let c = LogConfig::from_props(&props(&[("retention.ms", "-1")])).unwrap();
        assert_eq!(c.retention_ms, None);
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let e = LogConfig::from_props(&props(&[("retention.msec", "5")])).unwrap_err();
        assert!(e.to_string().contains("retention.msec"), "{e}");
        let e = LogConfig::from_props(&props(&[("segment.bytes", "big")])).unwrap_err();
        assert!(e.to_string().contains("segment.bytes"), "{e}");
        let e = LogConfig::from_props(&props(&[("cleanup.policy", "compact,shred")])).unwrap_err();
        assert!(e.to_string().contains("cleanup.policy"), "{e}");
    }

    #[test]
    fn the_node_fsync_shorthand_sets_kafkas_flush_defaults() {
        let always = FsyncPolicy::parse("always", 0)
            .unwrap()
            .apply(&LogConfig::default());
        assert_eq!((always.flush_messages, always.flush_ms), (Some(1), None));
        let interval = FsyncPolicy::parse("interval", 250)
            .unwrap()
            .apply(&LogConfig::default());
        assert_eq!(
            (interval.flush_messages, interval.flush_ms),
            (None, Some(250))
        );
        // A topic can still override the node's default.
        let topic = interval
            .with_props(&props(&[("flush.messages", "10")]))
            .unwrap();
        assert_eq!(
            (topic.flush_messages, topic.flush_ms),
            (Some(10), Some(250))
        );
        assert!(
            FsyncPolicy::parse("sometimes", 0)
                .unwrap_err()
                .to_string()
                .contains("fsync")
        );
    }

    #[test]
    fn plugin_keys_parse_and_round_trip() {
        let c = LogConfig::from_props(&props(&[
            ("partitioner.plugin", "by-device"),
            ("interceptor.plugins", " guard, redact ,,enrich"),
            ("interceptor.dead.letter.topic", "dlq"),
            ("retention.plugin", "pressure"),
        ]))
        .unwrap();
        assert_eq!(c.partitioner_plugin.as_deref(), Some("by-device"));
        assert_eq!(c.interceptor_plugins, ["guard", "redact", "enrich"]);
        assert_eq!(c.interceptor_dead_letter_topic.as_deref(), Some("dlq"));
        assert_eq!(
            c.plugins(),
            [
                ("partitioner.plugin", "by-device"),
                ("interceptor.plugins", "guard"),
                ("interceptor.plugins", "redact"),
                ("interceptor.plugins", "enrich"),
                ("retention.plugin", "pressure"),
            ]
        );
        assert_eq!(LogConfig::from_props(&c.to_props()).unwrap(), c);
        let none = LogConfig::from_props(&props(&[("partitioner.plugin", "")])).unwrap();
        assert_eq!(none.partitioner_plugin, None);
        for (key, bad) in [
            ("partitioner.plugin", "has space"),
            ("retention.plugin", "a/b"),
            ("interceptor.plugins", "ok,bad name"),
            ("interceptor.plugins", "a,b,c,d,e,f,g,h,i"),
            ("interceptor.dead.letter.topic", "../etc"),
        ] {
            let err = LogConfig::from_props(&props(&[(key, bad)])).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{key}={bad}: {err}"
            );
        }
    }

    #[test]
    fn props_round_trip() {
        let c = LogConfig::from_props(&props(&[
            ("cleanup.policy", "compact,delete"),
            ("retention.bytes", "1000"),
            ("compression.type", "zstd"),
            ("flush.messages", "1"),
        ]))
        .unwrap();
        assert!(c.cleanup_policy.compact && c.cleanup_policy.delete);
        let again = LogConfig::from_props(&c.to_props()).unwrap();
        assert_eq!(again, c);
    }
}
