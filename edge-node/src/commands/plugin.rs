//! `eddy plugin add|list|enable|remove`: install, inspect, re-enable and
//! remove WebAssembly plugins on a node.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use eddy_client::Client;
use eddy_client::protocol::{PLUGIN_WASM_BYTES_MAX, PluginInfo};

use super::format::table;
use super::{ConnectArgs, explain, parse_name_value};

/// Arguments of `eddy plugin`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PluginCommand,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `eddy plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install a plugin, or replace the one of that name while the node runs.
    Add {
        /// Plugin name, as topic configs refer to it.
        name: String,
        /// The WebAssembly component (`.wasm`, built for wasm32-wasip2).
        #[arg(long, value_name = "FILE")]
        wasm: PathBuf,
        /// A config value for the plugin, e.g. `field=device_id`; repeatable.
        /// Reserved keys grant WASI access: `wasi.env=NAME,...` (variables
        /// of the node's environment), `wasi.dirs=HOST[:GUEST],...`
        /// (read-only directories), `wasi.dirs.rw=...` (read-write),
        /// `wasi.network=IP:PORT,...` (the only socket addresses it may use);
        /// the node must allow grants (`[plugins] allow-wasi-grants`).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_name_value)]
        configs: Vec<(String, String)>,
    },
    /// List plugins: status, calls, failures, time per call.
    List {
        /// Also show each plugin's hash, size, config and topics.
        #[arg(long)]
        verbose: bool,
    },
    /// Enable a plugin that was disabled after repeated failures (it stays
    /// disabled across restarts until this, or a new `plugin add`).
    Enable {
        /// Plugin name.
        name: String,
    },
    /// Remove a plugin (no topic may name it).
    Remove {
        /// Plugin name.
        name: String,
    },
}

/// Runs `eddy plugin …`.
pub fn run(args: &PluginArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let result = run_with(&client, &args.command).await;
        client.close().await;
        result
    })
}

async fn run_with(client: &Client, command: &PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Add {
            name,
            wasm,
            configs,
        } => {
            let size = std::fs::metadata(wasm)
                .with_context(|| format!("cannot read {}", wasm.display()))?
                .len();
            if size > u64::from(PLUGIN_WASM_BYTES_MAX) {
                anyhow::bail!(
                    "{} is {size} bytes; a node takes components up to {PLUGIN_WASM_BYTES_MAX} \
                     bytes (build with --release)",
                    wasm.display()
                );
            }
            let bytes =
                std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("installing {name} (the node compiles it)"));
            spinner.enable_steady_tick(std::time::Duration::from_millis(100));
            let result = client.plugin_add(name, &bytes, configs.clone()).await;
            spinner.finish_and_clear();
            let (kind, replaced, sha256) = result.map_err(explain)?;
            println!(
                "{} {kind} plugin {name} ({} bytes, sha256 {})",
                if replaced { "replaced" } else { "installed" },
                bytes.len(),
                &sha256[..sha256.len().min(12)]
            );
        }
        PluginCommand::List { verbose } => {
            let plugins = client.plugin_list().await.map_err(explain)?;
            if plugins.is_empty() {
                println!("no plugins installed; add one with `eddy plugin add NAME --wasm FILE`");
                return Ok(());
            }
            print!("{}", list_text(&plugins, *verbose));
        }
        PluginCommand::Enable { name } => {
            match client.plugin_enable(name).await.map_err(explain)? {
                Some(was) => println!("enabled plugin {name} (it was disabled: {was})"),
                None => println!("plugin {name} is already enabled"),
            }
        }
        PluginCommand::Remove { name } => {
            client.plugin_remove(name).await.map_err(explain)?;
            println!("removed plugin {name}");
        }
    }
    Ok(())
}

/// A duration in ns, human-sized.
fn duration(ns: u64) -> String {
    match ns {
        0 => "-".to_owned(),
        n if n < 10_000 => format!("{n} ns"),
        n if n < 10_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n => format!("{:.1} ms", n as f64 / 1e6),
    }
}

/// The `plugin list` table.
pub fn list_text(plugins: &[PluginInfo], verbose: bool) -> String {
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.kind.clone(),
                p.status.clone(),
                p.calls.to_string(),
                p.failures.to_string(),
                duration(p.mean_ns),
                duration(p.p99_ns),
                p.records.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME", "KIND", "STATUS", "CALLS", "FAILURES", "MEAN", "P99", "RECORDS",
        ],
        &rows,
    );
    if verbose {
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                let config: Vec<String> =
                    p.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    p.name.clone(),
                    p.sha256[..p.sha256.len().min(12)].to_owned(),
                    p.wasm_bytes.to_string(),
                    if p.topics.is_empty() {
                        "-".to_owned()
                    } else {
                        p.topics.join(",")
                    },
                    if config.is_empty() {
                        "-".to_owned()
                    } else {
                        config.join(" ")
                    },
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["NAME", "SHA256", "BYTES", "TOPICS", "CONFIG"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, status: &str, mean_ns: u64) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            kind: "interceptor".into(),
            status: status.into(),
            sha256: "ab".repeat(32),
            wasm_bytes: 1000,
            config: vec![("k".into(), "v".into())],
            topics: vec!["t".into()],
            calls: 12,
            failures: 1,
            failures_in_a_row: 0,
            mean_ns,
            p99_ns: mean_ns * 3,
            records: 12_000,
        }
    }

    #[test]
    fn list_is_an_aligned_table() {
        let text = list_text(
            &[
                info("enrich", "enabled", 52_000),
                info("a-much-longer-name", "disabled: 5 failures in a row", 0),
            ],
            true,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME "));
        let status_col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("enabled"), Some(status_col));
        assert_eq!(lines[2].find("disabled"), Some(status_col));
        assert!(
            lines[1].contains("52.0 µs") && lines[1].contains("156.0 µs"),
            "{text}"
        );
        assert!(
            text.contains("k=v") && text.contains("abababababab"),
            "{text}"
        );
    }
}
