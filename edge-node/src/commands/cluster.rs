//! `eddy cluster`: the shared CA of a cluster (`init-ca`), the nodes and
//! the controller (`status`), preferred leader election (`elect-leaders`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::format::table;
use super::{ConnectArgs, explain};

/// Arguments of `eddy cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
    /// Where the node is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `eddy cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make the CA that every node of a cluster shares (`tls-ca`, `tls-ca-key`).
    InitCa {
        /// Where to write the CA certificate (PEM); give it to nodes and clients.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write the CA private key (PEM, mode 0600); only nodes need it.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// The nodes, whether each is alive, and which is the controller.
    Status,
    /// Move partition leadership back to the preferred (first) replica.
    ElectLeaders {
        /// Preferred leader election (the only kind).
        #[arg(long, required = true)]
        preferred: bool,
        /// Only this topic.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
}

/// Runs `eddy cluster ...`.
pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    match &args.command {
        ClusterCommand::InitCa { cert, key } => {
            if cert.exists() || key.exists() {
                anyhow::bail!(
                    "{} or {} exists; remove them first to make a new CA (every node and \
                     client must then get the new certificate)",
                    cert.display(),
                    key.display()
                );
            }
            crate::tls::create_shared_ca(cert, key)
                .with_context(|| format!("cannot create the CA in {}", cert.display()))?;
            eprintln!(
                "created cluster CA {} (key {}); start every node with --tls-ca {} --tls-ca-key {}",
                cert.display(),
                key.display(),
                cert.display(),
                key.display()
            );
            Ok(())
        }
        ClusterCommand::Status => smol::block_on(async {
            let client = args.connect.connect().await?;
            let (controller, nodes) = client.cluster_status().await.map_err(explain)?;
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.address.clone(),
                        if n.alive { "alive" } else { "fenced" }.to_owned(),
                        if controller == Some(n.id) { "yes" } else { "" }.to_owned(),
                        n.leaders.to_string(),
                        n.replicas.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NODE",
                        "ADDRESS",
                        "STATE",
                        "CONTROLLER",
                        "LEADERS",
                        "REPLICAS"
                    ],
                    &rows
                )
            );
            if controller.is_none() {
                eprintln!(
                    "this node knows no controller: a majority of controller-quorum-voters \
                     is down or out of its reach, or an election is under way (the states \
                     above are what it last knew); retry in a few seconds, or ask another \
                     node with --server"
                );
            }
            client.close().await;
            Ok(())
        }),
        ClusterCommand::ElectLeaders { topic, .. } => smol::block_on(async {
            let client = args.connect.connect().await?;
            let elected = client.elect_leaders(topic.clone()).await.map_err(explain)?;
            println!("{elected} partition(s) moved to their preferred leader");
            client.close().await;
            Ok(())
        }),
    }
}
