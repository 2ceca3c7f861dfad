//! `eddy group list|describe|reset-offsets|delete`: consumer groups and their
//! committed offsets and lag.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail};
use clap::{ArgGroup, Args, Subcommand};
use eddy_client::protocol::{CommitOffset, ErrorCode, OffsetSpec};
use eddy_client::{Client, ClientError, GroupDescription};

use super::format::table;
use super::{ConnectArgs, explain};

/// Arguments of `eddy group`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: GroupCommand,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `eddy group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups: state, members, strategy.
    List,
    /// Show a group's members and, per partition, the committed offset, the log
    /// end, the lag and the owning member.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets (only while the group has no members).
    #[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// The topic whose offsets to reset.
        #[arg(long, value_name = "T")]
        topic: String,
        /// Only this partition (default: all).
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
        /// To the log start.
        #[arg(long)]
        to_earliest: bool,
        /// To the log end (skip everything there now).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (kept inside the log).
        #[arg(long, value_name = "N")]
        to_offset: Option<u64>,
        /// To the first record at or after this time (ms since the epoch).
        #[arg(long, value_name = "MS")]
        to_timestamp: Option<i64>,
    },
    /// Delete a group without members and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

/// Runs `eddy group …`.
pub fn run(args: &GroupArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let result = run_with(&client, &args.command).await;
        client.close().await;
        let text = result?;
        print!("{text}");
        Ok(())
    })
}

/// Runs one subcommand and returns what it prints.
pub async fn run_with(client: &Client, command: &GroupCommand) -> anyhow::Result<String> {
    match command {
        GroupCommand::List => {
            let groups = client.list_groups().await.map_err(group_error)?;
            if groups.is_empty() {
                return Ok(
                    "no consumer groups (start one with `eddy consume TOPIC --group G`)\n".into(),
                );
            }
            let rows: Vec<Vec<String>> = groups
                .into_iter()
                .map(|g| {
                    vec![
                        g.group,
                        g.state,
                        g.members.to_string(),
                        if g.strategy.is_empty() {
                            "-".into()
                        } else {
                            g.strategy
                        },
                    ]
                })
                .collect();
            Ok(table(&["GROUP", "STATE", "MEMBERS", "STRATEGY"], &rows))
        }
        GroupCommand::Describe { group } => describe(client, group).await,
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
        } => {
            let target = if *to_earliest {
                Target::Earliest
            } else if *to_latest {
                Target::Latest
            } else if let Some(n) = to_offset {
                Target::Offset(*n)
            } else if let Some(ms) = to_timestamp {
                Target::Timestamp(*ms)
            } else {
                bail!(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp MS"
                );
            };
            reset_offsets(client, group, topic, *partition, target).await
        }
        GroupCommand::Delete { group } => {
            client.delete_group(group).await.map_err(group_error)?;
            Ok(format!("deleted group {group} and its committed offsets\n"))
        }
    }
}

/// One row of `eddy group describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset, if any.
    pub committed: Option<u64>,
    /// The high watermark: the offset the next produced record gets once committed.
    pub log_end: u64,
    /// `log_end - committed`.
    pub lag: Option<u64>,
    /// Owning member, if any.
    pub member: Option<(String, String)>,
}

/// Per partition of every topic the group reads or committed: committed
/// offset, log end, lag and owner.
pub async fn lag_rows(
    client: &Client,
    description: &GroupDescription,
) -> Result<Vec<LagRow>, ClientError> {
    let mut topics: BTreeSet<String> = description
        .offsets
        .iter()
        .map(|o| o.topic.clone())
        .collect();
    for m in &description.members {
        topics.extend(m.topics.iter().cloned());
    }
    let committed: BTreeMap<(&str, u32), u64> = description
        .offsets
        .iter()
        .map(|o| ((o.topic.as_str(), o.partition), o.offset))
        .collect();
    let mut owners: BTreeMap<(&str, u32), (String, String)> = BTreeMap::new();
    for m in &description.members {
        for (t, p) in &m.assignment {
            owners.insert((t.as_str(), *p), (m.member_id.clone(), m.client_id.clone()));
        }
    }
    let mut rows = Vec::new();
    for topic in &topics {
        let described = match client.describe_topic(topic).await {
            Ok(d) => d,
            // A topic deleted since: its committed offsets are still shown.
            Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => continue,
            Err(e) => return Err(e),
        };
        for p in &described.partitions {
            let c = committed.get(&(topic.as_str(), p.partition)).copied();
            rows.push(LagRow {
                topic: topic.clone(),
                partition: p.partition,
                committed: c,
                log_end: p.high_watermark,
                lag: c.map(|c| p.high_watermark.saturating_sub(c)),
                member: owners.get(&(topic.as_str(), p.partition)).cloned(),
            });
        }
    }
    Ok(rows)
}

async fn describe(client: &Client, group: &str) -> anyhow::Result<String> {
    let d = client.describe_group(group).await.map_err(group_error)?;
    let rows = lag_rows(client, &d).await.map_err(explain)?;
    let mut out = format!(
        "group {}: {}, generation {}, {} member(s){}\n\n",
        d.group,
        d.state,
        d.generation,
        d.members.len(),
        if d.strategy.is_empty() {
            String::new()
        } else {
            format!(", strategy {}", d.strategy)
        }
    );
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partition.to_string(),
                r.committed.map_or_else(dash, |c| c.to_string()),
                r.log_end.to_string(),
                r.lag.map_or_else(dash, |l| l.to_string()),
                r.member.as_ref().map_or_else(dash, |m| m.0.clone()),
                r.member.as_ref().map_or_else(dash, |m| m.1.clone()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "CLIENT-ID",
        ],
        &cells,
    ));
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

async fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    partition: Option<u32>,
    target: Target,
) -> anyhow::Result<String> {
    match client.describe_group(group).await {
        Ok(d) if !d.members.is_empty() => bail!(
            "group {group} has {} active member(s); offsets can only be reset while the group is empty: \
             stop its consumers first (see `eddy group describe {group}`)",
            d.members.len()
        ),
        Ok(_) => {}
        // A group without offsets yet: the reset creates them.
        Err(e) if e.code() == Some(ErrorCode::GroupIdNotFound) => {}
        Err(e) => return Err(group_error(e)),
    }
    let described = client.describe_topic(topic).await.map_err(explain)?;
    let partitions: Vec<&eddy_client::protocol::PartitionInfo> = described
        .partitions
        .iter()
        .filter(|p| partition.is_none_or(|want| p.partition == want))
        .collect();
    if partitions.is_empty() {
        bail!(
            "topic {topic} has no partition {} (it has {}); see `eddy topic describe {topic}`",
            partition.unwrap_or(0),
            described.partitions.len()
        );
    }
    let mut offsets = Vec::with_capacity(partitions.len());
    for p in partitions {
        let offset = match target {
            Target::Earliest => p.log_start_offset,
            Target::Latest => p.high_watermark,
            Target::Offset(n) => n.clamp(p.log_start_offset, p.high_watermark),
            Target::Timestamp(ms) => client
                .list_offsets(topic, p.partition, OffsetSpec::Timestamp(ms))
                .await
                .map_err(explain)?
                .offset
                .unwrap_or(p.high_watermark),
        };
        offsets.push(CommitOffset {
            topic: topic.to_owned(),
            partition: p.partition,
            offset,
            metadata: String::new(),
        });
    }
    client
        .commit_offsets(group, "", -1, offsets.clone())
        .await
        .map_err(group_error)?;
    let rows: Vec<Vec<String>> = offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.offset.to_string(),
            ]
        })
        .collect();
    Ok(table(&["TOPIC", "PARTITION", "NEW-OFFSET"], &rows))
}

fn group_error(e: ClientError) -> anyhow::Error {
    let hint = match e.code() {
        Some(ErrorCode::NonEmptyGroup) | Some(ErrorCode::UnknownMemberId) => {
            Some("stop the group's consumers first; `eddy group describe G` lists them")
        }
        Some(ErrorCode::InvalidGroupId) => Some("group ids are 1 to 255 bytes"),
        _ => None,
    };
    let says = matches!(&e, ClientError::Server(b) if b.message.contains("eddy "));
    match hint {
        Some(hint) if !says => anyhow!("{e} ({hint})"),
        _ => explain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<GroupArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("eddy").chain(args.iter().copied()))?;
        match cli.command {
            Command::Group(args) => Ok(args),
            _ => panic!("expected group"),
        }
    }

    #[test]
    fn reset_offsets_needs_exactly_one_target() {
        assert!(parse(&["group", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(
            parse(&[
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest"
            ])
            .is_err()
        );
        let args = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-offset",
            "5",
        ])
        .expect("parses");
        assert!(matches!(
            args.command,
            GroupCommand::ResetOffsets {
                to_offset: Some(5),
                ..
            }
        ));
        assert!(parse(&["group", "describe", "g"]).is_ok());
        assert!(parse(&["group", "list"]).is_ok());
        assert!(parse(&["group", "delete", "g"]).is_ok());
    }
}
