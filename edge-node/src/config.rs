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
/// Default for `broker-session-timeout-ms` (Kafka: 9000; tuned for a LAN so a
/// dead leader is replaced within about two seconds).
pub const BROKER_SESSION_TIMEOUT_MS_DEFAULT: u64 = 1500;
/// Default for `broker-heartbeat-interval-ms` (Kafka: 2000).
pub const BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 250;
/// Default for `replica-lag-time-max-ms` (Kafka: 30000).
pub const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 10_000;
/// Default for `controller-quorum-election-timeout-ms` (Kafka: 1000).
pub const CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// Default for `leader-imbalance-per-broker-percentage` (Kafka's).
pub const LEADER_IMBALANCE_PER_BROKER_PERCENTAGE_DEFAULT: u32 = 10;
/// Default for `leader-imbalance-check-interval-seconds` (Kafka's).
pub const LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS_DEFAULT: u64 = 300;
/// Most voters in `controller-quorum-voters`.
pub const VOTERS_MAX: usize = 64;
/// Most replica fetcher tasks per source node (`num-replica-fetchers`).
pub const NUM_REPLICA_FETCHERS_MAX: u32 = 16;

/// One entry of `controller-quorum-voters`: `id@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// The voter's `node-id`.
    pub id: u32,
    /// `host:port` of its QUIC listener (clients and peers share it).
    pub address: String,
}

impl Voter {
    /// Parses `id@host:port`.
    pub fn parse(text: &str) -> Result<Voter, String> {
        let Some((id, address)) = text.split_once('@') else {
            return Err(format!("`{text}` is not id@host:port"));
        };
        let id: u32 = id
            .parse()
            .map_err(|_| format!("`{text}`: `{id}` is not a node id (0..{})", u32::MAX))?;
        let port = address
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port))
            .ok_or_else(|| format!("`{text}`: `{address}` is not host:port"))?;
        port.parse::<u16>()
            .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
        Ok(Voter {
            id,
            address: address.to_owned(),
        })
    }
}

/// `queued-max-request-bytes` when it is 0 and no `[board]` sets a budget.
pub const QUEUED_MAX_REQUEST_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// `queued-max-response-bytes` when it is 0 and no `[board]` sets a budget.
pub const QUEUED_MAX_RESPONSE_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// Default for `fetch-max-bytes` (Kafka's broker default `fetch.max.bytes`
/// is 55 MiB; an edge node answers in smaller pieces).
pub const FETCH_MAX_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
/// Smallest `fetch-max-bytes`.
pub const FETCH_MAX_BYTES_MIN: u64 = 1024;
/// Share of a board's `memory-budget-mb` that produce payloads may hold
/// (1/4), and fetch responses (1/8); the rest is the program, the page
/// tables of mapped indexes, QUIC buffers and the plugins.
pub const BOARD_REQUEST_SHARE_DIVISOR: u64 = 4;
/// See [`BOARD_REQUEST_SHARE_DIVISOR`].
pub const BOARD_RESPONSE_SHARE_DIVISOR: u64 = 8;
/// Smallest QUIC window per connection on a board (see
/// [`NodeConfig::connection_window_bytes`]).
pub const CONNECTION_WINDOW_BYTES_MIN: u64 = 128 * 1024;
/// Smallest `memory-budget-mb` a board may declare.
pub const BOARD_MEMORY_BUDGET_MB_MIN: u64 = 32;
/// Target triples a board may name: the ones `cargo xtask image` builds.
pub const BOARD_TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
    "armv7-unknown-linux-musleabihf",
    "x86_64-unknown-linux-gnu",
    "x86_64-unknown-linux-musl",
];
/// The target triple this binary was built for.
pub const BUILD_TARGET: &str = env!("EDDY_BUILD_TARGET");

/// The `[board]` table: which device a config is for. Board profiles
/// (`boards/<name>.toml`, `eddy serve --board NAME`) carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BoardConfig {
    /// Short name, as in `eddy serve --board NAME`.
    pub name: String,
    /// Rust target triple of the board's `eddy` binary.
    pub target: String,
    /// Memory the node may use on this board, in MiB. The payload budgets
    /// (`queued-max-request-bytes`, `queued-max-response-bytes`) are derived
    /// from it unless set.
    pub memory_budget_mb: u64,
    /// What the board is, for people.
    #[serde(default)]
    pub description: String,
}

/// Default for `[plugins] memory-limit-mb`.
pub const PLUGIN_MEMORY_LIMIT_MB_DEFAULT: u32 = 64;
/// Default for `[plugins] call-timeout-ms`.
pub const PLUGIN_CALL_TIMEOUT_MS_DEFAULT: u64 = 200;
/// Default for `[plugins] failures-before-disable`.
pub const PLUGIN_FAILURES_BEFORE_DISABLE_DEFAULT: u32 = 5;
/// Default for `[plugins] instances-per-plugin`.
pub const PLUGIN_INSTANCES_DEFAULT: u32 = 4;
/// Largest `[plugins] memory-limit-mb` (a 32-bit Wasm memory is 4 GiB).
pub const PLUGIN_MEMORY_LIMIT_MB_MAX: u32 = 4096;
/// Largest `[plugins] call-timeout-ms`.
pub const PLUGIN_CALL_TIMEOUT_MS_MAX: u64 = 60_000;
/// Largest `[plugins] instances-per-plugin`.
pub const PLUGIN_INSTANCES_MAX: u32 = 64;

/// Which code generator runs plugins: the `[plugins] engine` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PluginEngine {
    /// Cranelift (native code) where it has a backend, else Pulley (32-bit ARM).
    #[default]
    Auto,
    /// Cranelift: native code, fastest; x86_64, aarch64, riscv64, s390x.
    Cranelift,
    /// Pulley: wasmtime's portable interpreter; slower, runs everywhere.
    Pulley,
}

/// The `[plugins]` section: how WebAssembly plugins are run and bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PluginsConfig {
    /// Code generator for plugins.
    pub engine: PluginEngine,
    /// Most linear memory one plugin instance may grow to, in MiB.
    pub memory_limit_mb: u32,
    /// Longest one plugin call may run (wall clock, checked every
    /// [`crate::plugins::EPOCH_TICK_MS`] ms), in milliseconds.
    pub call_timeout_ms: u64,
    /// Wasm fuel (roughly, instructions) one call may use; 0 = unmetered.
    pub fuel_per_call: u64,
    /// Failed calls in a row after which a plugin is disabled (its topics
    /// fall back to the built-in behaviour until it is added again).
    pub failures_before_disable: u32,
    /// Virtual address space reserved per linear memory, in MiB; 0 keeps
    /// wasmtime's platform default (4 GiB on 64-bit hosts). Boards and qemu
    /// want small values such as 32.
    pub memory_reservation_mb: u32,
    /// Guard region after each linear memory, in KiB; 0 keeps wasmtime's
    /// platform default. Boards and qemu want small values such as 64.
    pub memory_guard_kb: u32,
    /// Instances of one plugin that may run at once (calls beyond wait).
    pub instances_per_plugin: u32,
    /// Whether `plugin add` may give a plugin `wasi.*` grants (host
    /// directories, environment variables, socket addresses). Off by
    /// default: whoever can reach the node can add a plugin, so only the
    /// operator may open the host to plugins.
    pub allow_wasi_grants: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            engine: PluginEngine::Auto,
            memory_limit_mb: PLUGIN_MEMORY_LIMIT_MB_DEFAULT,
            call_timeout_ms: PLUGIN_CALL_TIMEOUT_MS_DEFAULT,
            fuel_per_call: 0,
            failures_before_disable: PLUGIN_FAILURES_BEFORE_DISABLE_DEFAULT,
            memory_reservation_mb: 0,
            memory_guard_kb: 0,
            instances_per_plugin: PLUGIN_INSTANCES_DEFAULT,
            allow_wasi_grants: false,
        }
    }
}

impl PluginsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let ranges: [(&'static str, u64, u64, u64); 4] = [
            (
                "plugins.memory-limit-mb",
                u64::from(self.memory_limit_mb),
                1,
                u64::from(PLUGIN_MEMORY_LIMIT_MB_MAX),
            ),
            (
                "plugins.call-timeout-ms",
                self.call_timeout_ms,
                1,
                PLUGIN_CALL_TIMEOUT_MS_MAX,
            ),
            (
                "plugins.failures-before-disable",
                u64::from(self.failures_before_disable),
                1,
                u64::from(u32::MAX),
            ),
            (
                "plugins.instances-per-plugin",
                u64::from(self.instances_per_plugin),
                1,
                u64::from(PLUGIN_INSTANCES_MAX),
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("is {value}; it must be between {min} and {max}"),
                });
            }
        }
        Ok(())
    }
}

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
    /// Produce payloads held in memory at once, across all connections, in
    /// bytes (Kafka's `queued.max.request.bytes`); further requests wait. 0:
    /// a quarter of the board's `memory-budget-mb`, or 256 MiB without a
    /// board.
    pub queued_max_request_bytes: u64,
    /// Fetch responses held in memory at once, in bytes. 0: an eighth of the
    /// board's `memory-budget-mb`, or 128 MiB without a board.
    pub queued_max_response_bytes: u64,
    /// Largest fetch response, in bytes (Kafka's `fetch.max.bytes`); a
    /// consumer asking for more gets this much.
    pub fetch_max_bytes: u64,
    /// The board this config is for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub board: Option<BoardConfig>,
    /// PEM certificate chain of the server. With `tls-key`; without both the
    /// node makes its own CA and certificate under `<data-dir>/tls/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of a CA shared by the nodes of a cluster. With
    /// `tls-ca-key` (and no `tls-cert`) the node issues its own server
    /// certificate from it; nodes trust it when they talk to each other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// PEM private key of `tls-ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_key: Option<PathBuf>,
    /// The static metadata quorum, Kafka's `controller.quorum.voters`:
    /// `["0@127.0.0.1:7878", "1@127.0.0.1:7879", ...]`. Empty: a single node
    /// with its local metadata log.
    pub controller_quorum_voters: Vec<String>,
    /// Raft election timeout of the metadata quorum, in milliseconds.
    pub controller_quorum_election_timeout_ms: u64,
    /// How often a node tells the controller it is alive, in milliseconds.
    pub broker_heartbeat_interval_ms: u64,
    /// A node silent this long is fenced and loses its leaderships
    /// (Kafka's `broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// A follower that has not caught up for this long leaves the ISR
    /// (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// Fetcher tasks per source node (Kafka's `num.replica.fetchers`).
    pub num_replica_fetchers: u32,
    /// Default of the topic config `unclean.leader.election.enable`.
    pub unclean_leader_election_enable: bool,
    /// Whether the controller moves leadership back to preferred replicas
    /// (Kafka's `auto.leader.rebalance.enable`).
    pub auto_leader_rebalance_enable: bool,
    /// A node leading more than this share of partitions it does not
    /// prefer triggers a rebalance (Kafka's
    /// `leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u32,
    /// How often the controller checks leader imbalance (Kafka's
    /// `leader.imbalance.check.interval.seconds`).
    pub leader_imbalance_check_interval_seconds: u64,
    /// How WebAssembly plugins run (`[plugins]`).
    pub plugins: PluginsConfig,
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
            queued_max_request_bytes: 0,
            queued_max_response_bytes: 0,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            board: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_ca_key: None,
            controller_quorum_voters: Vec::new(),
            controller_quorum_election_timeout_ms: CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS_DEFAULT,
            broker_heartbeat_interval_ms: BROKER_HEARTBEAT_INTERVAL_MS_DEFAULT,
            broker_session_timeout_ms: BROKER_SESSION_TIMEOUT_MS_DEFAULT,
            replica_lag_time_max_ms: REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            num_replica_fetchers: 1,
            unclean_leader_election_enable: false,
            auto_leader_rebalance_enable: true,
            leader_imbalance_per_broker_percentage: LEADER_IMBALANCE_PER_BROKER_PERCENTAGE_DEFAULT,
            leader_imbalance_check_interval_seconds:
                LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS_DEFAULT,
            plugins: PluginsConfig::default(),
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
    /// A board profile compiled into the binary (`--board NAME`).
    Board(String),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::BuiltIn => f.write_str("built-in default config"),
            ConfigOrigin::File(path) => write!(f, "config file {}", path.display()),
            ConfigOrigin::Board(name) => write!(f, "board profile {name}"),
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
            (
                "controller-quorum-election-timeout-ms",
                self.controller_quorum_election_timeout_ms,
            ),
            (
                "broker-heartbeat-interval-ms",
                self.broker_heartbeat_interval_ms,
            ),
            ("broker-session-timeout-ms", self.broker_session_timeout_ms),
            ("replica-lag-time-max-ms", self.replica_lag_time_max_ms),
            (
                "leader-imbalance-check-interval-seconds",
                self.leader_imbalance_check_interval_seconds,
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
        if let Some(board) = &self.board {
            board.validate()?;
        }
        if self.fetch_max_bytes < FETCH_MAX_BYTES_MIN {
            return Err(ConfigError::Invalid {
                key: "fetch-max-bytes",
                reason: format!(
                    "is {}; it must be at least {FETCH_MAX_BYTES_MIN}",
                    self.fetch_max_bytes
                ),
            });
        }
        let queued = self.queued_request_bytes();
        if queued < self.max_request_bytes {
            return Err(ConfigError::Invalid {
                key: "queued-max-request-bytes",
                reason: format!(
                    "is {queued} (effective) but max-request-bytes is {}: one request must \
                     fit; raise queued-max-request-bytes (or the board's memory-budget-mb) \
                     or lower max-request-bytes",
                    self.max_request_bytes
                ),
            });
        }
        let responses = self.queued_response_bytes();
        if responses < self.fetch_max_bytes {
            return Err(ConfigError::Invalid {
                key: "queued-max-response-bytes",
                reason: format!(
                    "is {responses} (effective) but fetch-max-bytes is {}: one response \
                     must fit; raise queued-max-response-bytes or lower fetch-max-bytes",
                    self.fetch_max_bytes
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
        if self.tls_ca_key.is_some() && self.tls_ca.is_none() {
            return Err(ConfigError::Invalid {
                key: "tls-ca",
                reason: "is missing: tls-ca-key needs its CA certificate in tls-ca".to_owned(),
            });
        }
        if self.is_clustered() && self.tls_cert.is_some() && self.tls_ca.is_none() {
            return Err(ConfigError::Invalid {
                key: "tls-ca",
                reason: "is missing: a cluster node with its own tls-cert needs the CA that \
                         issued the nodes' certificates in tls-ca, to check the other nodes"
                    .to_owned(),
            });
        }
        if self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms {
            return Err(ConfigError::Invalid {
                key: "broker-session-timeout-ms",
                reason: format!(
                    "is {} but must be larger than broker-heartbeat-interval-ms ({})",
                    self.broker_session_timeout_ms, self.broker_heartbeat_interval_ms
                ),
            });
        }
        if !(1..=NUM_REPLICA_FETCHERS_MAX).contains(&self.num_replica_fetchers) {
            return Err(ConfigError::Invalid {
                key: "num-replica-fetchers",
                reason: format!("must be between 1 and {NUM_REPLICA_FETCHERS_MAX}"),
            });
        }
        if self.leader_imbalance_per_broker_percentage > 100 {
            return Err(ConfigError::Invalid {
                key: "leader-imbalance-per-broker-percentage",
                reason: "must be between 0 and 100".to_owned(),
            });
        }
        self.voters()?;
        self.plugins.validate()
    }

    /// The parsed `controller-quorum-voters`, checked: at most
    /// [`VOTERS_MAX`], ids unique, this node's `node-id` among them. Empty
    /// for a single node.
    pub fn voters(&self) -> Result<Vec<Voter>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: "controller-quorum-voters",
            reason,
        };
        if self.controller_quorum_voters.len() > VOTERS_MAX {
            return Err(invalid(format!("lists more than {VOTERS_MAX} voters")));
        }
        let mut voters: Vec<Voter> = Vec::with_capacity(self.controller_quorum_voters.len());
        for text in &self.controller_quorum_voters {
            let voter = Voter::parse(text).map_err(invalid)?;
            if voters.iter().any(|v| v.id == voter.id) {
                return Err(invalid(format!("lists node id {} twice", voter.id)));
            }
            voters.push(voter);
        }
        if !voters.is_empty() && !voters.iter().any(|v| v.id == self.node_id) {
            return Err(invalid(format!(
                "does not list this node's node-id {}; add \"{}@HOST:PORT\"",
                self.node_id, self.node_id
            )));
        }
        Ok(voters)
    }

    /// Whether this node is part of a cluster (`controller-quorum-voters` set).
    pub fn is_clustered(&self) -> bool {
        !self.controller_quorum_voters.is_empty()
    }

    /// The effective `queued-max-request-bytes`: the key, or derived from the
    /// board's memory budget (or the default) when it is 0.
    pub fn queued_request_bytes(&self) -> u64 {
        match (self.queued_max_request_bytes, &self.board) {
            (0, Some(board)) => board.memory_budget_bytes() / BOARD_REQUEST_SHARE_DIVISOR,
            (0, None) => QUEUED_MAX_REQUEST_BYTES_DEFAULT,
            (n, _) => n,
        }
    }

    /// The effective `queued-max-response-bytes` (see
    /// [`NodeConfig::queued_request_bytes`]).
    pub fn queued_response_bytes(&self) -> u64 {
        match (self.queued_max_response_bytes, &self.board) {
            (0, Some(board)) => board.memory_budget_bytes() / BOARD_RESPONSE_SHARE_DIVISOR,
            (0, None) => QUEUED_MAX_RESPONSE_BYTES_DEFAULT,
            (n, _) => n,
        }
    }

    /// With a `[board]`: the QUIC flow-control window of each connection, each
    /// way, so that `max-connections` full windows in both directions take at
    /// most `queued-max-request-bytes` (at least
    /// [`CONNECTION_WINDOW_BYTES_MIN`]). `None` without a board: the
    /// throughput-first defaults.
    pub fn connection_window_bytes(&self) -> Option<u64> {
        self.board.as_ref()?;
        let share = self.queued_request_bytes() / (2 * u64::from(self.max_connections.max(1)));
        Some(share.max(CONNECTION_WINDOW_BYTES_MIN))
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
        let base = LogConfig {
            unclean_leader_election_enable: self.unclean_leader_election_enable,
            ..LogConfig::default()
        };
        self.fsync_policy()
            .apply(&base)
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

impl BoardConfig {
    /// The memory budget in bytes.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_mb.saturating_mul(1024 * 1024)
    }

    /// Whether this binary was built for the board's target.
    pub fn matches_build(&self) -> bool {
        self.target == BUILD_TARGET
    }

    /// Checks the name, the target triple and the budget.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ConfigError::Invalid {
                key: "board.name",
                reason: format!(
                    "is `{}`; use lowercase letters, digits, `-` and `_`",
                    self.name
                ),
            });
        }
        if !BOARD_TARGETS.contains(&self.target.as_str()) {
            return Err(ConfigError::Invalid {
                key: "board.target",
                reason: format!(
                    "is `{}`; use one of: {}",
                    self.target,
                    BOARD_TARGETS.join(", ")
                ),
            });
        }
        if self.memory_budget_mb < BOARD_MEMORY_BUDGET_MB_MIN {
            return Err(ConfigError::Invalid {
                key: "board.memory-budget-mb",
                reason: format!(
                    "is {}; it must be at least {BOARD_MEMORY_BUDGET_MB_MIN}",
                    self.memory_budget_mb
                ),
            });
        }
        Ok(())
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
    fn voters_use_kafkas_format_and_name_this_node() {
        let config = NodeConfig::from_toml(
            "node-id = 1\ncontroller-quorum-voters = [\"0@127.0.0.1:7878\", \"1@localhost:7879\"]\n",
            ConfigOrigin::BuiltIn,
        )
        .expect("parses");
        config.validate().expect("valid");
        let voters = config.voters().expect("voters parse");
        assert_eq!(voters.len(), 2);
        assert_eq!(voters[1].id, 1);
        assert_eq!(voters[1].address, "localhost:7879");
        assert!(config.is_clustered());

        for (voters, needle) in [
            ("[\"0@127.0.0.1:7878\", \"0@127.0.0.1:7879\"]", "twice"),
            ("[\"x@127.0.0.1:7878\"]", "not a node id"),
            ("[\"0@127.0.0.1\"]", "host:port"),
            ("[\"0127.0.0.1:7878\"]", "id@host:port"),
            ("[\"2@127.0.0.1:7878\"]", "node-id 0"),
        ] {
            let config = NodeConfig::from_toml(
                &format!("controller-quorum-voters = {voters}"),
                ConfigOrigin::BuiltIn,
            )
            .expect("parses");
            let error = config.validate().expect_err("invalid voters");
            assert!(error.to_string().contains(needle), "{voters}: {error}");
            assert!(error.to_string().contains("controller-quorum-voters"));
        }
    }

    #[test]
    fn session_timeout_must_exceed_the_heartbeat() {
        let config = NodeConfig {
            broker_session_timeout_ms: 100,
            broker_heartbeat_interval_ms: 100,
            ..NodeConfig::default()
        };
        let error = config.validate().expect_err("invalid");
        assert!(
            error.to_string().contains("broker-session-timeout-ms"),
            "{error}"
        );
    }

    #[test]
    fn node_unclean_election_default_reaches_topics() {
        let config = NodeConfig {
            unclean_leader_election_enable: true,
            ..NodeConfig::default()
        };
        assert!(
            config
                .topic_log_config()
                .expect("valid")
                .unclean_leader_election_enable
        );
        assert!(
            !NodeConfig::default()
                .topic_log_config()
                .expect("valid")
                .unclean_leader_election_enable
        );
    }

    #[test]
    fn plugins_section_parses_and_is_checked() {
        let config = NodeConfig::from_toml(
            "[plugins]\nengine = \"pulley\"\nmemory-reservation-mb = 32\nmemory-guard-kb = 64\n",
            ConfigOrigin::BuiltIn,
        )
        .unwrap();
        assert_eq!(config.plugins.engine, PluginEngine::Pulley);
        assert_eq!(config.plugins.memory_reservation_mb, 32);
        assert_eq!(config.plugins.memory_guard_kb, 64);
        assert_eq!(
            config.plugins.call_timeout_ms,
            PLUGIN_CALL_TIMEOUT_MS_DEFAULT
        );
        config.validate().unwrap();
        let err = NodeConfig::from_toml("[plugins]\nmemory-limt-mb = 3\n", ConfigOrigin::BuiltIn)
            .unwrap_err();
        assert!(err.to_string().contains("memory-limt-mb"), "{err}");
        let zero = NodeConfig::from_toml("[plugins]\ncall-timeout-ms = 0\n", ConfigOrigin::BuiltIn)
            .unwrap();
        let err = zero.validate().unwrap_err();
        assert!(err.to_string().contains("plugins.call-timeout-ms"), "{err}");
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
        // In a cluster, the other nodes' certificates are checked against tls-ca.
        let mut clustered = NodeConfig {
            controller_quorum_voters: vec![format!("0@{}", both.listen)],
            ..both
        };
        let error = clustered.validate().expect_err("own cert without tls-ca");
        assert!(
            matches!(error, ConfigError::Invalid { key: "tls-ca", .. }),
            "{error:?}"
        );
        clustered.tls_ca = Some(PathBuf::from("/etc/eddy/cluster-ca.pem"));
        clustered.validate().expect("with tls-ca");
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
