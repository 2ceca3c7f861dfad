//! `eddy topic create|list|describe|alter|delete`.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use eddy_client::Client;
use eddy_client::protocol::ConfigChange;

use super::format::table;
use super::{ConnectArgs, explain, parse_name_value};

/// Arguments of `eddy topic`.
#[derive(Debug, Args)]
pub struct TopicArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TopicCommand,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `eddy topic` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1, value_name = "N")]
        partitions: u32,
        /// Copies of each partition (at most the number of nodes).
        #[arg(long, default_value_t = 1, value_name = "N")]
        replication_factor: u16,
        /// A topic config under its Kafka name, e.g. `retention.ms=86400000`; repeatable.
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_name_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics and their partition counts.
    List,
    /// Show a topic's configs and per-partition state.
    Describe {
        /// Topic name.
        name: String,
        /// Show every config in force, defaults included, not only those set.
        #[arg(long)]
        all_configs: bool,
    },
    /// Change topic configs or add partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Set a config, e.g. `retention.ms=3600000`; repeatable.
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_name_value)]
        configs: Vec<(String, String)>,
        /// Return a config to the node's default; repeatable.
        #[arg(long = "delete-config", value_name = "NAME")]
        delete_configs: Vec<String>,
        /// Grow the topic to this many partitions.
        #[arg(long, value_name = "N")]
        partitions: Option<u32>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Runs `eddy topic …`.
pub fn run(args: &TopicArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let result = run_with(&client, &args.command).await;
        client.close().await;
        result
    })
}

async fn run_with(client: &Client, command: &TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            client
                .create_topic(name, *partitions, *replication_factor, configs.clone())
                .await
                .map_err(explain)?;
            println!(
                "created topic {name} with {partitions} partition{}",
                if *partitions == 1 { "" } else { "s" }
            );
        }
        TopicCommand::List => {
            let metadata = client.metadata(None).await.map_err(explain)?;
            let mut topics = metadata.topics;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.len().to_string()])
                .collect();
            print!("{}", table(&["TOPIC", "PARTITIONS"], &rows));
        }
        TopicCommand::Describe { name, all_configs } => {
            let description = client.describe_topic(name).await.map_err(explain)?;
            print!("{}", describe_text(&description, *all_configs));
        }
        TopicCommand::Alter {
            name,
            configs,
            delete_configs,
            partitions,
        } => {
            if configs.is_empty() && delete_configs.is_empty() && partitions.is_none() {
                bail!(
                    "nothing to alter: pass --config NAME=VALUE, --delete-config NAME or \
                     --partitions N"
                );
            }
            let mut changes: Vec<ConfigChange> = configs
                .iter()
                .map(|(k, v)| ConfigChange::Set(k.clone(), v.clone()))
                .collect();
            changes.extend(delete_configs.iter().cloned().map(ConfigChange::Delete));
            if !changes.is_empty() {
                let count = changes.len();
                client.alter_configs(name, changes).await.map_err(explain)?;
                println!(
                    "altered {count} config{} of {name}",
                    if count == 1 { "" } else { "s" }
                );
            }
            if let Some(total) = partitions {
                client
                    .create_partitions(name, *total)
                    .await
                    .map_err(explain)
                    .context("configs (if any) were altered, but partitions were not added")?;
                println!("topic {name} now has {total} partitions");
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(name).await.map_err(explain)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// `eddy topic describe` output: name, configs, then a per-partition table.
pub fn describe_text(description: &eddy_client::TopicDescription, all_configs: bool) -> String {
    let mut out = format!(
        "Topic: {}\nPartitions: {}\n",
        description.name,
        description.partitions.len()
    );
    let (label, configs) = if all_configs {
        ("Configs (in force)", &description.effective_configs)
    } else {
        ("Configs (set on the topic)", &description.configs)
    };
    let mut configs: Vec<&(String, String)> = configs.iter().collect();
    configs.sort();
    if configs.is_empty() {
        out.push_str(&format!("{label}: none\n"));
    } else {
        out.push_str(&format!("{label}:\n"));
        for (key, value) in configs {
            out.push_str(&format!("  {key}={value}\n"));
        }
    }
    out.push('\n');
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut partitions: Vec<&eddy_client::protocol::PartitionInfo> =
        description.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition);
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                if p.leader == eddy_client::protocol::NO_LEADER {
                    "none".to_owned()
                } else {
                    p.leader.to_string()
                },
                list(&p.replicas),
                list(&p.isr),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
                p.log_end_offset.to_string(),
                p.size_bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "LOG-START",
            "HW",
            "LEO",
            "SIZE-BYTES",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_client::TopicDescription;
    use eddy_client::protocol::PartitionInfo;

    #[test]
    fn describe_prints_configs_and_an_aligned_table() {
        let description = TopicDescription {
            name: "sensors".into(),
            configs: vec![("retention.ms".into(), "1000".into())],
            effective_configs: vec![
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "delete".into()),
            ],
            partitions: vec![
                PartitionInfo {
                    partition: 1,
                    leader: 1,
                    replicas: vec![1],
                    isr: vec![1],
                    log_start_offset: 0,
                    high_watermark: 12345,
                    log_end_offset: 12345,
                    size_bytes: 987_654,
                },
                PartitionInfo {
                    partition: 0,
                    leader: 1,
                    replicas: vec![1, 2],
                    isr: vec![1],
                    log_start_offset: 7,
                    high_watermark: 9,
                    log_end_offset: 10,
                    size_bytes: 100,
                },
            ],
        };
        let text = describe_text(&description, false);
        let expected = "\
Topic: sensors
Partitions: 2
Configs (set on the topic):
  retention.ms=1000

PARTITION  LEADER  REPLICAS  ISR  LOG-START  HW     LEO    SIZE-BYTES
0          1       1,2       1    7          9      10     100
1          1       1         1    0          12345  12345  987654
";
        assert_eq!(text, expected);
        let all = describe_text(&description, true);
        assert!(
            all.contains("Configs (in force):\n  cleanup.policy=delete\n  retention.ms=1000\n")
        );
    }
}
