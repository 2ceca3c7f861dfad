//! Node configuration: the `eddy serve` config file, its built-in defaults and
//! their checks.
//!
//! Keys are kebab-case and match the command-line flags one to one
//! (`data-dir` ↔ `--data-dir`). Topic defaults keep Kafka's dotted names
//! (`"retention.ms"`), quoted in TOML because a bare dotted key would be read
//! as a nested table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use eddy_core::config::{FsyncPolicy, LogConfig};
use serde::{Deserialize, Deserializer, Serialize};

/// The built-in config, used when `eddy serve` gets no `--config FILE`.
///
/// It lists every key with its default; a test keeps it equal to
/// [`NodeConfig::default`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// Default for `data-dir`.
pub const DATA_DIR_DEFAULT: &str = "./eddy-data";
/// Default for `listen`.
pub const LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7878));
/// Default for `fsync-interval-ms`.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Default for `log-retention-check-interval-ms` (Kafka's default too).
pub const LOG_RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 300_000;
/// Default for `max-connections`.
pub const MAX_CONNECTIONS_DEFAULT: u32 = 1024;
/// Default for `max-streams-per-connection`.
pub const MAX_STREAMS_PER_CONNECTION_DEFAULT: u32 = 256;
/// Default for `max-request-bytes`: 16 MiB.
pub const MAX_REQUEST_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// Smallest `max-request-bytes`: a request must hold at least one small batch.
pub const MAX_REQUEST_BYTES_MIN: u64 = 1024;
/// Largest `max-request-bytes`: a batch length is an `i32`.
pub const MAX_REQUEST_BYTES_MAX: u64 = i32::MAX as u64;

/// When appended data is forced to disk, node-wide: the `fsync` key.
///
/// Together with `fsync-interval-ms` it becomes the core's
/// [`eddy_core::config::FsyncPolicy`] ([`NodeConfig::fsync_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync before acknowledging every append.
    Always,
    /// fsync unsynced data every `fsync-interval-ms`; flash-friendly.
    #[default]
    Interval,
    /// No fsync per append (only on segment roll and clean shutdown); the
    /// operating system writes back when it likes.
    Never,
}

/// The configuration of one node, as read from TOML and command-line flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Directory holding one sub-directory per partition.
    pub data_dir: PathBuf,
    /// Address of the QUIC listener.
    pub listen: SocketAddr,
    /// Node-wide fsync policy.
    pub fsync: FsyncMode,
    /// Period of the fsync for [`FsyncMode::Interval`], in milliseconds.
    pub fsync_interval_ms: u64,
    /// How often retention looks for segments to delete, in milliseconds
    /// (Kafka's `log.retention.check.interval.ms`).
    pub log_retention_check_interval_ms: u64,
    /// Defaults for every topic, by Kafka topic config name (`retention.ms`,
    /// `segment.bytes`, ...), as text; [`NodeConfig::topic_log_config`] parses
    /// them with the core's topic config parser.
    #[serde(deserialize_with = "deserialize_topic_configs")]
    pub topic_defaults: BTreeMap<String, String>,
    /// This node's id (Kafka's `node.id`), reported as leader and replica.
    pub node_id: u32,
    /// Whether produce and fetch create an unknown topic with the topic
    /// defaults (Kafka's `auto.create.topics.enable`).
    pub auto_create_topics_enable: bool,
    /// Most client connections at once; further ones are refused.
    pub max_connections: u32,
    /// Most requests (QUIC streams) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Largest request payload (the record batches of one produce), in bytes.
    /// Must be at least the largest `max.message.bytes`.
    pub max_request_bytes: u64,
    /// Threads running the node's executor; 0 means one per core (at most
    /// [`crate::runtime::WORKER_THREADS_MAX`]).
    pub worker_threads: u32,
    /// PEM certificate chain of the server. With `tls-key`; without both the
    /// node makes its own CA and certificate under `<data-dir>/tls/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            listen: LISTEN_DEFAULT,
            fsync: FsyncMode::default(),
            fsync_interval_ms: FSYNC_INTERVAL_MS_DEFAULT,
            log_retention_check_interval_ms: LOG_RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            topic_defaults: BTreeMap::new(),
            node_id: 0,
            auto_create_topics_enable: false,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION_DEFAULT,
            max_request_bytes: MAX_REQUEST_BYTES_DEFAULT,
            worker_threads: 0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Where a config text came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// [`DEFAULT_CONFIG_TOML`], compiled into the binary.
    BuiltIn,
    /// A file named with `--config`.
    File(PathBuf),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::BuiltIn => f.write_str("built-in default config"),
            ConfigOrigin::File(path) => write!(f, "config file {}", path.display()),
        }
    }
}

/// Why a config could not be loaded. None of these goes away on retry: the
/// file or the flags must be fixed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file named with `--config`.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The text is not valid TOML, has an unknown key, or a value of the
    /// wrong type. The message names the key, its line and column.
    #[error("invalid {origin}: {error}")]
    Parse {
        /// Where the text came from.
        origin: ConfigOrigin,
        /// The parser's message.
        error: toml::de::Error,
    },
    /// A value parsed but is out of range (after flags were applied).
    #[error("invalid config: `{key}` {reason}")]
    Invalid {
        /// The key, as written in TOML and as a flag.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// `[topic-defaults]` has an unknown Kafka name or a bad value.
    #[error("invalid config: [topic-defaults]: {0}")]
    TopicDefaults(eddy_core::config::ConfigError),
}

impl NodeConfig {
    /// Parses a config text. Missing keys take their defaults; unknown keys
    /// are an error. Does not run [`NodeConfig::validate`].
    pub fn from_toml(text: &str, origin: ConfigOrigin) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse { origin, error })
    }

    /// Reads `path`, or the built-in config when `path` is `None`. Does not
    /// run [`NodeConfig::validate`], so that flags can still fix a value.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_toml(DEFAULT_CONFIG_TOML, ConfigOrigin::BuiltIn),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                Self::from_toml(&text, ConfigOrigin::File(path.to_path_buf()))
            }
        }
    }

    /// Checks what a parser cannot: intervals and limits are at least 1,
    /// `[topic-defaults]` holds known Kafka names with valid values,
    /// `max-request-bytes` fits the default `max.message.bytes`, and
    /// `tls-cert` and `tls-key` come together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("fsync-interval-ms", self.fsync_interval_ms),
            (
                "log-retention-check-interval-ms",
                self.log_retention_check_interval_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1 (milliseconds)".to_owned(),
                });
            }
        }
        let counts = [
            ("max-connections", self.max_connections),
            (
                "max-streams-per-connection",
                self.max_streams_per_connection,
            ),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        if !(MAX_REQUEST_BYTES_MIN..=MAX_REQUEST_BYTES_MAX).contains(&self.max_request_bytes) {
            return Err(ConfigError::Invalid {
                key: "max-request-bytes",
                reason: format!(
                    "is {}; it must be between {MAX_REQUEST_BYTES_MIN} and {MAX_REQUEST_BYTES_MAX}",
                    self.max_request_bytes
                ),
            });
        }
        let topic = self.topic_log_config()?;
        if topic.max_message_bytes > self.max_request_bytes {
            return Err(ConfigError::Invalid {
                key: "max-request-bytes",
                reason: format!(
                    "is {} but the topic default max.message.bytes is {}: raise \
                     max-request-bytes or lower max.message.bytes",
                    self.max_request_bytes, topic.max_message_bytes
                ),
            });
        }
        if self.worker_threads as usize > crate::runtime::WORKER_THREADS_MAX {
            return Err(ConfigError::Invalid {
                key: "worker-threads",
                reason: format!(
                    "is {}; use 0 (one per core) or at most {}",
                    self.worker_threads,
                    crate::runtime::WORKER_THREADS_MAX
                ),
            });
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls-key",
                    reason: "is missing: tls-cert needs its private key in tls-key".to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls-cert",
                    reason: "is missing: tls-key needs its certificate chain in tls-cert"
                        .to_owned(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Worker threads to start: `worker-threads`, or one per core when 0.
    pub fn worker_thread_count(&self) -> usize {
        match self.worker_threads {
            0 => crate::runtime::default_worker_threads(),
            n => n as usize,
        }
    }

    /// The core's fsync policy for `fsync` and `fsync-interval-ms`.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval {
                interval_ms: self.fsync_interval_ms,
            },
            FsyncMode::Never => FsyncPolicy::Never,
        }
    }

    /// The log config a new topic starts from: the core's defaults, then the
    /// node's fsync policy (which sets `flush.messages` / `flush.ms`), then
    /// `[topic-defaults]`.
    pub fn topic_log_config(&self) -> Result<LogConfig, ConfigError> {
        self.fsync_policy()
            .apply(&LogConfig::default())
            .with_props(&self.topic_defaults)
            .map_err(ConfigError::TopicDefaults)
    }

    /// The config as TOML, in the same shape as the file it can be read from.
    ///
    /// Fails only if `data-dir` is not valid UTF-8.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// Reads `[topic-defaults]`: Kafka config values may be written as TOML
/// strings, integers or booleans; they are kept as the text Kafka would see.
fn deserialize_topic_configs<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::Error;

    let raw = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(name, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(_) => {
                    return Err(D::Error::custom(format!(
                        "topic default `{name}` is a table: write Kafka's dotted names \
                         in quotes, as in \"retention.ms\" = 604800000"
                    )));
                }
                other => {
                    return Err(D::Error::custom(format!(
                        "topic default `{name}` must be a string, integer or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            Ok((name, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_parses_to_the_defaults() {
        let config = NodeConfig::load(None).expect("built-in config parses");
        assert_eq!(config, NodeConfig::default());
        config.validate().expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:7878");
    }

    #[test]
    fn built_in_config_lists_every_key() {
        // Keeps the documented file complete: a field added to NodeConfig
        // must be added (with its comment) to default-config.toml.
        let file: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).expect("valid TOML");
        let all: toml::Table =
            toml::from_str(&NodeConfig::default().to_toml().expect("defaults serialize"))
                .expect("serialized config is valid TOML");
        let file_keys: Vec<_> = file.keys().collect();
        let all_keys: Vec<_> = all.keys().collect();
        assert_eq!(file_keys, all_keys);
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = NodeConfig::from_toml("", ConfigOrigin::BuiltIn).expect("parses");
        assert_eq!(config, NodeConfig::default());
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let mut config = NodeConfig {
            fsync: FsyncMode::Always,
            ..NodeConfig::default()
        };
        config
            .topic_defaults
            .insert("retention.ms".to_owned(), "3600000".to_owned());
        let text = config.to_toml().expect("serializes");
        let back = NodeConfig::from_toml(&text, ConfigOrigin::BuiltIn).expect("parses back");
        assert_eq!(back, config);
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "data-dir = \"/tmp/x\"\nfsnyc = \"always\"\n").expect("write");

        let error = NodeConfig::load(Some(&path)).expect_err("typo must be rejected");
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("fsnyc"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn unknown_fsync_value_is_rejected() {
        let error = NodeConfig::from_toml("fsync = \"sometimes\"", ConfigOrigin::BuiltIn)
            .expect_err("bad value must be rejected");
        let message = error.to_string();
        assert!(message.contains("sometimes"), "{message}");
        assert!(message.contains("built-in default config"), "{message}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = NodeConfig::load(Some(&dir.path().join("absent.toml")))
            .expect_err("missing file must fail");
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    }

    #[test]
    fn topic_defaults_accept_kafka_names_and_scalar_values() {
        let text = r#"
            [topic-defaults]
            "retention.ms" = 604800000
            "cleanup.policy" = "compact"
            "unclean.leader.election.enable" = false
        "#;
        let config = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn).expect("parses");
        let expected: BTreeMap<String, String> = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "604800000"),
            ("unclean.leader.election.enable", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(config.topic_defaults, expected);
    }

    #[test]
    fn unquoted_dotted_topic_key_gets_a_hint() {
        let text = "[topic-defaults]\nretention.ms = 1000\n";
        let message = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn)
            .expect_err("a nested table is not a topic config")
            .to_string();
        assert!(message.contains("quote"), "{message}");
        assert!(message.contains("retention"), "{message}");
    }

    #[test]
    fn misspelt_topic_default_is_invalid() {
        let text = "[topic-defaults]\n\"retension.ms\" = 1000\n";
        let config = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn).expect("parses");
        let error = config.validate().expect_err("unknown Kafka name");
        assert!(matches!(error, ConfigError::TopicDefaults(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("retension.ms"), "{message}");
        assert!(message.contains("topic-defaults"), "{message}");
    }

    #[test]
    fn fsync_keys_become_the_core_policy() {
        let config = NodeConfig {
            fsync_interval_ms: 250,
            ..NodeConfig::default()
        };
        assert_eq!(
            config.fsync_policy(),
            FsyncPolicy::Interval { interval_ms: 250 }
        );
        let always = NodeConfig {
            fsync: FsyncMode::Always,
            ..NodeConfig::default()
        };
        assert_eq!(always.fsync_policy(), FsyncPolicy::Always);
        let never = NodeConfig {
            fsync: FsyncMode::Never,
            ..NodeConfig::default()
        };
        assert_eq!(never.fsync_policy(), FsyncPolicy::Never);
    }

    #[test]
    fn topic_defaults_apply_on_top_of_the_fsync_policy() {
        let mut config = NodeConfig {
            fsync_interval_ms: 250,
            ..NodeConfig::default()
        };
        let topic = config.topic_log_config().expect("valid");
        assert_eq!(topic.flush_ms, Some(250), "from fsync-interval-ms");

        config
            .topic_defaults
            .insert("flush.ms".to_owned(), "5000".to_owned());
        let topic = config.topic_log_config().expect("valid");
        assert_eq!(topic.flush_ms, Some(5000), "topic default wins");
    }

    #[test]
    fn zero_interval_is_invalid() {
        let config = NodeConfig {
            fsync_interval_ms: 0,
            ..NodeConfig::default()
        };
        let error = config.validate().expect_err("0 ms must be rejected");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "fsync-interval-ms",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let config = NodeConfig {
            tls_cert: Some(PathBuf::from("/etc/eddy/server.pem")),
            ..NodeConfig::default()
        };
        let error = config.validate().expect_err("cert without key");
        assert!(
            matches!(error, ConfigError::Invalid { key: "tls-key", .. }),
            "{error:?}"
        );
        let config = NodeConfig {
            tls_key: Some(PathBuf::from("/etc/eddy/server.key")),
            ..NodeConfig::default()
        };
        let error = config.validate().expect_err("key without cert");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "tls-cert",
                    ..
                }
            ),
            "{error:?}"
        );
        let both = NodeConfig {
            tls_cert: Some(PathBuf::from("/etc/eddy/server.pem")),
            tls_key: Some(PathBuf::from("/etc/eddy/server.key")),
            ..NodeConfig::default()
        };
        both.validate().expect("both given");
        let text = both.to_toml().expect("serializes");
        let back = NodeConfig::from_toml(&text, ConfigOrigin::BuiltIn).expect("parses back");
        assert_eq!(back, both);
    }

    #[test]
    fn max_request_bytes_must_hold_the_largest_message() {
        let mut config = NodeConfig {
            max_request_bytes: 1024 * 1024,
            ..NodeConfig::default()
        };
        let error = config
            .validate()
            .expect_err("default max.message.bytes is larger");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "max-request-bytes",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("max.message.bytes"), "{error}");
        config
            .topic_defaults
            .insert("max.message.bytes".to_owned(), "65536".to_owned());
        config.validate().expect("fits now");
        config.max_request_bytes = 0;
        assert!(config.validate().is_err(), "0 bytes is too small");
    }

    #[test]
    fn connection_limits_are_at_least_one() {
        for config in [
            NodeConfig {
                max_connections: 0,
                ..NodeConfig::default()
            },
            NodeConfig {
                max_streams_per_connection: 0,
                ..NodeConfig::default()
            },
        ] {
            let error = config.validate().expect_err("0 is invalid");
            assert!(error.to_string().contains("max-"), "{error}");
        }
    }
}
