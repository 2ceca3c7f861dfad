//! The `eddy` command line: `eddy serve [--config FILE] [flags]`,
//! `eddy version`, and the client subcommands `topic`, `produce`, `consume`,
//! `bench`, `plugin` (in [`crate::commands`]).
//!
//! Every config key has a flag of the same name; a flag beats the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, FsyncMode, NodeConfig, PluginEngine};

/// `eddy`: a small Kafka-style event log broker for edge devices.
#[derive(Debug, Parser)]
#[command(name = "eddy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `eddy` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Print the version and exit.
    Version,
    /// Create, list, describe, alter or delete topics.
    Topic(crate::commands::topic::TopicArgs),
    /// Write one record per line of standard input.
    Produce(crate::commands::produce::ProduceArgs),
    /// Print records of a topic.
    Consume(crate::commands::consume::ConsumeArgs),
    /// Consumer groups: `group list|describe|reset-offsets|delete`.
    Group(crate::commands::group::GroupArgs),
    /// Measure throughput and latency: `bench produce|consume|e2e`.
    Bench(crate::commands::bench::BenchArgs),
    /// Cluster tools: the shared CA, status, leader elections.
    Cluster(crate::commands::cluster::ClusterArgs),
    /// Install, list, enable or remove WebAssembly plugins.
    Plugin(crate::commands::plugin::PluginArgs),
}

/// Arguments of `eddy serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); without it the built-in defaults are used.
    #[arg(long, value_name = "FILE", conflicts_with = "board")]
    pub config: Option<PathBuf>,
    /// A board profile compiled into the binary (`rpi4`, `rpi-zero2w`,
    /// `generic-arm64-musl`, `x86_64-gateway`), used as the config file.
    #[arg(long, value_name = "NAME")]
    pub board: Option<String>,
    /// Flags that override keys of the config file.
    #[command(flatten)]
    pub overrides: ConfigOverrides,
}

impl ServeArgs {
    /// The config the node runs with: the file (or the built-in defaults),
    /// then the flags on top, then the checks.
    pub fn effective_config(&self) -> Result<NodeConfig, ConfigError> {
        let mut config = match &self.board {
            Some(name) => crate::boards::load(name)?,
            None => NodeConfig::load(self.config.as_deref())?,
        };
        self.overrides.apply(&mut config);
        config.validate()?;
        Ok(config)
    }
}

/// One optional flag per config key, named like the key.
#[derive(Debug, Default, Args)]
pub struct ConfigOverrides {
    /// Overrides `data-dir`: directory for partition data.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Overrides `listen`: QUIC listen address.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Overrides `fsync`: when appends are forced to disk.
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncMode>,
    /// Overrides `fsync-interval-ms`.
    #[arg(long, value_name = "MS")]
    pub fsync_interval_ms: Option<u64>,
    /// Overrides `log-retention-check-interval-ms`.
    #[arg(long, value_name = "MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Sets one entry of `[topic-defaults]` by its Kafka name; repeatable.
    #[arg(long = "topic-default", value_name = "NAME=VALUE", value_parser = parse_name_value)]
    pub topic_defaults: Vec<(String, String)>,
    /// Overrides `node-id`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u32>,
    /// Overrides `auto-create-topics-enable`.
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics_enable: Option<bool>,
    /// Overrides `max-connections`.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Overrides `max-streams-per-connection`.
    #[arg(long, value_name = "N")]
    pub max_streams_per_connection: Option<u32>,
    /// Overrides `max-request-bytes`.
    #[arg(long, value_name = "BYTES")]
    pub max_request_bytes: Option<u64>,
    /// Overrides `worker-threads` (0 = one per core).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<u32>,
    /// Overrides `queued-max-request-bytes` (0 = derived).
    #[arg(long, value_name = "BYTES")]
    pub queued_max_request_bytes: Option<u64>,
    /// Overrides `queued-max-response-bytes` (0 = derived).
    #[arg(long, value_name = "BYTES")]
    pub queued_max_response_bytes: Option<u64>,
    /// Overrides `fetch-max-bytes`.
    #[arg(long, value_name = "BYTES")]
    pub fetch_max_bytes: Option<u64>,
    /// Overrides `tls-cert`: PEM certificate chain of the server.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Overrides `tls-key`: PEM private key of the server.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Overrides `tls-ca`: PEM certificate of the cluster's shared CA.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Overrides `tls-ca-key`: PEM private key of the cluster's shared CA.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_key: Option<PathBuf>,
    /// Overrides `controller-quorum-voters`: `id@host:port,...`.
    #[arg(long, value_name = "ID@HOST:PORT,...", value_delimiter = ',')]
    pub controller_quorum_voters: Option<Vec<String>>,
    /// Overrides `controller-quorum-election-timeout-ms`.
    #[arg(long, value_name = "MS")]
    pub controller_quorum_election_timeout_ms: Option<u64>,
    /// Overrides `broker-heartbeat-interval-ms`.
    #[arg(long, value_name = "MS")]
    pub broker_heartbeat_interval_ms: Option<u64>,
    /// Overrides `broker-session-timeout-ms`.
    #[arg(long, value_name = "MS")]
    pub broker_session_timeout_ms: Option<u64>,
    /// Overrides `replica-lag-time-max-ms`.
    #[arg(long, value_name = "MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// Overrides `num-replica-fetchers`.
    #[arg(long, value_name = "N")]
    pub num_replica_fetchers: Option<u32>,
    /// Overrides `unclean-leader-election-enable`.
    #[arg(long, value_name = "BOOL")]
    pub unclean_leader_election_enable: Option<bool>,
    /// Overrides `auto-leader-rebalance-enable`.
    #[arg(long, value_name = "BOOL")]
    pub auto_leader_rebalance_enable: Option<bool>,
    /// Overrides `leader-imbalance-per-broker-percentage`.
    #[arg(long, value_name = "PERCENT")]
    pub leader_imbalance_per_broker_percentage: Option<u32>,
    /// Overrides `leader-imbalance-check-interval-seconds`.
    #[arg(long, value_name = "SECONDS")]
    pub leader_imbalance_check_interval_seconds: Option<u64>,
    /// Overrides `[plugins] engine`.
    #[arg(long, value_enum)]
    pub plugin_engine: Option<PluginEngine>,
    /// Overrides `[plugins] memory-limit-mb`.
    #[arg(long, value_name = "MIB")]
    pub plugin_memory_limit_mb: Option<u32>,
    /// Overrides `[plugins] call-timeout-ms`.
    #[arg(long, value_name = "MS")]
    pub plugin_call_timeout_ms: Option<u64>,
    /// Overrides `[plugins] fuel-per-call` (0 = unmetered).
    #[arg(long, value_name = "N")]
    pub plugin_fuel_per_call: Option<u64>,
    /// Overrides `[plugins] failures-before-disable`.
    #[arg(long, value_name = "N")]
    pub plugin_failures_before_disable: Option<u32>,
    /// Overrides `[plugins] memory-reservation-mb` (0 = wasmtime's default).
    #[arg(long, value_name = "MIB")]
    pub plugin_memory_reservation_mb: Option<u32>,
    /// Overrides `[plugins] memory-guard-kb` (0 = wasmtime's default).
    #[arg(long, value_name = "KIB")]
    pub plugin_memory_guard_kb: Option<u32>,
    /// Overrides `[plugins] instances-per-plugin`.
    #[arg(long, value_name = "N")]
    pub plugin_instances_per_plugin: Option<u32>,
    /// Overrides `[plugins] allow-wasi-grants`.
    #[arg(long, value_name = "BOOL")]
    pub plugin_allow_wasi_grants: Option<bool>,
}

impl ConfigOverrides {
    /// Writes every flag that was given into `config`.
    pub fn apply(&self, config: &mut NodeConfig) {
        if let Some(data_dir) = &self.data_dir {
            config.data_dir.clone_from(data_dir);
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(fsync) = self.fsync {
            config.fsync = fsync;
        }
        if let Some(ms) = self.fsync_interval_ms {
            config.fsync_interval_ms = ms;
        }
        if let Some(ms) = self.log_retention_check_interval_ms {
            config.log_retention_check_interval_ms = ms;
        }
        for (name, value) in &self.topic_defaults {
            config.topic_defaults.insert(name.clone(), value.clone());
        }
        if let Some(id) = self.node_id {
            config.node_id = id;
        }
        if let Some(enable) = self.auto_create_topics_enable {
            config.auto_create_topics_enable = enable;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(n) = self.max_streams_per_connection {
            config.max_streams_per_connection = n;
        }
        if let Some(bytes) = self.max_request_bytes {
            config.max_request_bytes = bytes;
        }
        if let Some(n) = self.worker_threads {
            config.worker_threads = n;
        }
        if let Some(bytes) = self.queued_max_request_bytes {
            config.queued_max_request_bytes = bytes;
        }
        if let Some(bytes) = self.queued_max_response_bytes {
            config.queued_max_response_bytes = bytes;
        }
        if let Some(bytes) = self.fetch_max_bytes {
            config.fetch_max_bytes = bytes;
        }
        if let Some(path) = &self.tls_cert {
            config.tls_cert = Some(path.clone());
        }
        if let Some(path) = &self.tls_key {
            config.tls_key = Some(path.clone());
        }
        if let Some(path) = &self.tls_ca {
            config.tls_ca = Some(path.clone());
        }
        if let Some(path) = &self.tls_ca_key {
            config.tls_ca_key = Some(path.clone());
        }
        if let Some(voters) = &self.controller_quorum_voters {
            config.controller_quorum_voters.clone_from(voters);
        }
        let numbers = [
            (
                self.controller_quorum_election_timeout_ms,
                &mut config.controller_quorum_election_timeout_ms,
            ),
            (
                self.broker_heartbeat_interval_ms,
                &mut config.broker_heartbeat_interval_ms,
            ),
            (
                self.broker_session_timeout_ms,
                &mut config.broker_session_timeout_ms,
            ),
            (
                self.replica_lag_time_max_ms,
                &mut config.replica_lag_time_max_ms,
            ),
            (
                self.leader_imbalance_check_interval_seconds,
                &mut config.leader_imbalance_check_interval_seconds,
            ),
        ];
        for (flag, key) in numbers {
            if let Some(value) = flag {
                *key = value;
            }
        }
        if let Some(n) = self.num_replica_fetchers {
            config.num_replica_fetchers = n;
        }
        if let Some(enable) = self.unclean_leader_election_enable {
            config.unclean_leader_election_enable = enable;
        }
        if let Some(enable) = self.auto_leader_rebalance_enable {
            config.auto_leader_rebalance_enable = enable;
        }
        if let Some(p) = self.leader_imbalance_per_broker_percentage {
            config.leader_imbalance_per_broker_percentage = p;
        }
        let p = &mut config.plugins;
        if let Some(engine) = self.plugin_engine {
            p.engine = engine;
        }
        if let Some(n) = self.plugin_memory_limit_mb {
            p.memory_limit_mb = n;
        }
        if let Some(n) = self.plugin_call_timeout_ms {
            p.call_timeout_ms = n;
        }
        if let Some(n) = self.plugin_fuel_per_call {
            p.fuel_per_call = n;
        }
        if let Some(n) = self.plugin_failures_before_disable {
            p.failures_before_disable = n;
        }
        if let Some(n) = self.plugin_memory_reservation_mb {
            p.memory_reservation_mb = n;
        }
        if let Some(n) = self.plugin_memory_guard_kb {
            p.memory_guard_kb = n;
        }
        if let Some(n) = self.plugin_instances_per_plugin {
            p.instances_per_plugin = n;
        }
        if let Some(allow) = self.plugin_allow_wasi_grants {
            p.allow_wasi_grants = allow;
        }
    }
}

fn parse_name_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{arg}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(std::iter::once("eddy").chain(args.iter().copied()))
            .expect("arguments parse");
        match cli.command {
            Command::Serve(args) => *args,
            _ => panic!("expected serve"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_config_key_has_a_flag() {
        let keys: toml::Table =
            toml::from_str(&NodeConfig::default().to_toml().expect("defaults serialize"))
                .expect("valid TOML");
        let command = Cli::command();
        let serve = command
            .find_subcommand("serve")
            .expect("serve subcommand exists");
        let flags: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).collect();
        for key in keys.keys() {
            // A table's flag sets one entry at a time, so it is singular.
            let flag = key.strip_suffix('s').filter(|_| keys[key].is_table());
            let flag = flag.unwrap_or(key);
            if let Some(table) = keys[key].as_table().filter(|_| !flags.contains(&flag)) {
                // Or one flag per entry of the table: `[plugins] engine` is
                // `--plugin-engine`.
                for entry in table.keys() {
                    let entry_flag = format!("{flag}-{entry}");
                    assert!(
                        flags.contains(&entry_flag.as_str()),
                        "no --{entry_flag} flag for key `{key}.{entry}`"
                    );
                }
                continue;
            }
            assert!(flags.contains(&flag), "no --{flag} flag for key `{key}`");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data-dir = \"/from/file\"\nfsync = \"never\"\nfsync-interval-ms = 50\n\
             [topic-defaults]\n\"retention.ms\" = 1000\n\"segment.bytes\" = 4096\n",
        )
        .expect("write config");
        let path_arg = path.to_str().expect("tempdir path is UTF-8");

        let args = serve_args(&[
            "serve",
            "--config",
            path_arg,
            "--fsync",
            "always",
            "--listen",
            "127.0.0.1:0",
            "--topic-default",
            "retention.ms=2000",
        ]);
        let config = args.effective_config().expect("valid config");

        assert_eq!(config.fsync, FsyncMode::Always, "flag wins");
        assert_eq!(config.listen.port(), 0, "flag wins");
        assert_eq!(config.data_dir, PathBuf::from("/from/file"), "file kept");
        assert_eq!(config.fsync_interval_ms, 50, "file kept");
        assert_eq!(config.topic_defaults["retention.ms"], "2000", "flag wins");
        assert_eq!(config.topic_defaults["segment.bytes"], "4096", "file kept");
    }

    #[test]
    fn flags_apply_to_the_built_in_config() {
        let config = serve_args(&["serve", "--data-dir", "/elsewhere"])
            .effective_config()
            .expect("valid config");
        assert_eq!(config.data_dir, PathBuf::from("/elsewhere"));
        assert_eq!(config.fsync, FsyncMode::Interval);
    }

    #[test]
    fn flag_values_are_validated_too() {
        let error = serve_args(&["serve", "--fsync-interval-ms", "0"])
            .effective_config()
            .expect_err("0 ms is invalid");
        assert!(error.to_string().contains("fsync-interval-ms"), "{error}");
    }

    #[test]
    fn topic_default_flag_needs_name_and_value() {
        let result = Cli::try_parse_from(["eddy", "serve", "--topic-default", "retention.ms"]);
        assert!(result.is_err());
        let result = Cli::try_parse_from(["eddy", "serve", "--topic-default", "=1"]);
        assert!(result.is_err());
    }
}
