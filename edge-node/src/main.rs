//! `eddy`: the Eddy node binary.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use eddy_node::cli::{Cli, Command, ServeArgs};
use eddy_node::serve::{self, Shutdown};
use log::info;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Version => {
            println!("eddy {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(args) => serve(&args),
        Command::Topic(args) => eddy_node::commands::topic::run(&args),
        Command::Plugin(args) => eddy_node::commands::plugin::run(&args),
        Command::Produce(args) => eddy_node::commands::produce::run(&args),
        Command::Consume(args) => eddy_node::commands::consume::run(&args),
        Command::Group(args) => eddy_node::commands::group::run(&args),
        Command::Bench(args) => eddy_node::commands::bench::run(&args),
        Command::Cluster(args) => eddy_node::commands::cluster::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line, without the
            // backtrace that `RUST_BACKTRACE` would add to a returned error:
            // these are operator errors, not bugs.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.effective_config()?;
    match config.to_toml() {
        Ok(text) => info!("effective config:\n{text}"),
        Err(_) => info!("effective config: {config:?}"),
    }
    // Armed before any start-up work: from here on a signal stops the node
    // cleanly instead of killing it.
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;
    serve::run(&config, shutdown)?;
    Ok(())
}
