//! The client subcommands of `eddy`: `topic`, `produce`, `consume`, `group`,
//! `bench`, `plugin`.
//!
//! Each runs the async [`eddy_client`] on `smol::block_on` and reports failures as
//! `anyhow` errors whose message says what to do next; `main` prints them as
//! `error: …` and exits non-zero.

pub mod bench;
pub mod bench_group;
pub mod cluster;
pub mod consume;
pub mod format;
pub mod group;
pub mod plugin;
pub mod produce;
pub mod topic;

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use eddy_client::connection::{DEFAULT_CA_FILE, DEFAULT_SERVER, DEFAULT_SERVER_NAME};
use eddy_client::protocol::ErrorCode;
use eddy_client::{Client, ClientError, ClientOptions};

/// The CLI gives up dialling sooner than the library default: a person is waiting.
const CLI_CONNECT_TIMEOUT_MS: u32 = 5000;
/// How long the CLI waits for a node of a cluster that has just started to
/// catch up with the cluster (it answers `BrokerNotAvailable` until then).
const CLI_CATCH_UP_WAIT_MS: u64 = 30_000;
/// Pause between two questions to such a node.
const CLI_CATCH_UP_POLL_MS: u64 = 200;

/// Where the node is and how to trust it; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Address of the node (UDP HOST:PORT).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// CA certificate (PEM) that signed the node's certificate; a node creates its
    /// own in `<data-dir>/tls/ca.pem`.
    #[arg(long = "ca", value_name = "FILE", default_value = DEFAULT_CA_FILE, global = true)]
    pub ca_file: PathBuf,
    /// Name the node's certificate must be valid for.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SERVER_NAME, global = true)]
    pub server_name: String,
}

impl ConnectArgs {
    /// The client options these flags describe.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            server: self.server.clone(),
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            connect_timeout_ms: CLI_CONNECT_TIMEOUT_MS,
            ..ClientOptions::default()
        }
    }

    /// A client for these flags, connected (so that a wrong address or CA is
    /// reported before any work starts) to a node that serves clients: a node
    /// of a cluster that has just started is waited for (with a spinner, at
    /// most [`CLI_CATCH_UP_WAIT_MS`]) until it has caught up with the cluster.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let client = Client::new(self.options()).map_err(explain)?;
        client.connect().await.map_err(explain)?;
        wait_until_serving(&client).await?;
        Ok(client)
    }
}

/// Waits while `client`'s node answers `BrokerNotAvailable` (a cluster node
/// catching up after its start). Other answers, errors included, are left to
/// the command to meet and report.
async fn wait_until_serving(client: &Client) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut spinner = None;
    let result = loop {
        // Metadata without topics: the cheapest request every node serves.
        match client.metadata(Some(Vec::new())).await {
            Err(e) if e.code() == Some(ErrorCode::BrokerNotAvailable) => {
                if started.elapsed() >= std::time::Duration::from_millis(CLI_CATCH_UP_WAIT_MS) {
                    break Err(explain(e));
                }
                spinner.get_or_insert_with(|| {
                    let s = indicatif::ProgressBar::new_spinner();
                    s.set_message(format!(
                        "{} is catching up with its cluster",
                        client.options().server
                    ));
                    s.enable_steady_tick(std::time::Duration::from_millis(100));
                    s
                });
                smol::Timer::after(std::time::Duration::from_millis(CLI_CATCH_UP_POLL_MS)).await;
            }
            _ => break Ok(()),
        }
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    result
}

/// Turns a client error into a message that says what to do next.
pub fn explain(error: ClientError) -> anyhow::Error {
    let hint = match error.code() {
        Some(ErrorCode::UnknownTopicOrPartition) => {
            Some("list topics with `eddy topic list`, create one with `eddy topic create NAME`")
        }
        Some(ErrorCode::TopicAlreadyExists) => Some("see it with `eddy topic describe NAME`"),
        Some(ErrorCode::InvalidConfig) => {
            Some("topic configs use Kafka's names, e.g. retention.ms=86400000")
        }
        Some(ErrorCode::InvalidReplicationFactor) => {
            Some("the replication factor cannot exceed the number of nodes")
        }
        Some(ErrorCode::UnsupportedVersion) => {
            Some("the node and this `eddy` are different versions")
        }
        Some(ErrorCode::ShuttingDown) => Some("the node is stopping; try again once it is back"),
        Some(ErrorCode::InvalidRecord) => {
            Some("an interceptor plugin refused the record; fix the record or the plugin's config")
        }
        Some(ErrorCode::PluginFailed) => {
            Some("see `eddy plugin list` for the plugin's status and the node's log for details")
        }
        Some(ErrorCode::PluginNotFound) => Some("see installed plugins with `eddy plugin list`"),
        Some(ErrorCode::CoordinatorNotAvailable | ErrorCode::NotCoordinator) => Some(
            "the group coordinator (the leader of __consumer_offsets) is moving or starting; \
             check `eddy cluster status` and try again",
        ),
        _ => None,
    };
    // The node's own message may already say what to do.
    let says_what_to_do = match &error {
        ClientError::Server(body) => body.message.contains("eddy "),
        _ => false,
    };
    match hint {
        Some(hint) if !says_what_to_do => anyhow!("{error} ({hint})"),
        _ => anyhow!(error),
    }
}

/// Parses `NAME=VALUE`.
pub fn parse_name_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{arg}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_value_pairs() {
        assert_eq!(
            parse_name_value("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(
            parse_name_value("cleanup.policy=compact,delete"),
            Ok(("cleanup.policy".into(), "compact,delete".into()))
        );
        assert_eq!(parse_name_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_name_value("=1").is_err());
        assert!(parse_name_value("novalue").is_err());
    }

    #[test]
    fn server_errors_get_a_hint() {
        let error = ClientError::Server(eddy_client::protocol::ErrorBody {
            code: ErrorCode::UnknownTopicOrPartition,
            message: "topic `x` does not exist".into(),
        });
        let message = explain(error).to_string();
        assert!(message.contains("topic `x` does not exist"), "{message}");
        assert!(message.contains("eddy topic list"), "{message}");
    }
}
