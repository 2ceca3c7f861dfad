//! `eddy cluster`: the shared CA of a cluster (`init-ca`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// Arguments of `eddy cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
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
    }
}
