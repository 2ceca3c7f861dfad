//! `eddy bench rebalance` and `eddy bench commit`: how long a consumer group
//! takes to rebalance, and how many offset commits per second the node
//! acknowledges (each synced before the answer).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use eddy_client::protocol::{CommitOffset, ErrorCode};
use eddy_client::{Client, JoinRequest};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::format::table;
use super::{ConnectArgs, explain};

/// Most members `bench rebalance` runs.
pub const MEMBERS_MAX: u32 = 256;
/// Most concurrent committers `bench commit` runs.
pub const COMMITTERS_MAX: u32 = 256;
/// Longest any one rebalance may take before the bench gives up.
const REBALANCE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Session and rebalance timeouts of the bench members: long, so no timeout
/// is ever part of a measured rebalance.
const MEMBER_TIMEOUT_MS: u32 = 30_000;
/// How long a bench member's heartbeat may be held on the node.
const HEARTBEAT_WAIT_MS: u32 = 1_000;

/// Arguments of `eddy bench rebalance`.
#[derive(Debug, Args)]
pub struct RebalanceBenchArgs {
    /// Members of the group once the last one has joined.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=MEMBERS_MAX as i64))]
    pub members: u32,
    /// Partitions of the (new) topic the group reads.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub partitions: u32,
    /// Rounds of "one member joins, then leaves".
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub rounds: u32,
    /// Assignment strategy.
    #[arg(long, default_value = "range", value_name = "NAME")]
    pub strategy: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `eddy bench commit`.
#[derive(Debug, Args)]
pub struct CommitBenchArgs {
    /// Commits to send in all.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub commits: u64,
    /// Commits in flight at once (one connection each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=COMMITTERS_MAX as i64))]
    pub committers: u32,
    /// Partitions named in each commit.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub partitions_per_commit: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `eddy bench rebalance` measured (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct RebalanceSummary {
    /// Members after a join.
    pub members: u32,
    /// Partitions.
    pub partitions: u32,
    /// Strategy.
    pub strategy: String,
    /// From the last member's join request to every member holding the new
    /// generation's assignment, when the group first forms.
    pub form_ms: f64,
    /// The same when one member joins a stable group, per round: p50 and max.
    pub join_p50_ms: f64,
    /// Worst join rebalance.
    pub join_max_ms: f64,
    /// From a member's LeaveGroup to the others holding the new assignment: p50.
    pub leave_p50_ms: f64,
    /// Worst leave rebalance.
    pub leave_max_ms: f64,
    /// Rounds measured.
    pub rounds: u32,
    /// Process CPU time of this bench (the members' side), in ms.
    pub client_cpu_ms: f64,
}

/// What `eddy bench commit` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    /// Commits acknowledged.
    pub commits: u64,
    /// Committers in flight.
    pub committers: u32,
    /// Partitions per commit.
    pub partitions_per_commit: u32,
    /// Wall time, s.
    pub elapsed_s: f64,
    /// Commits per second.
    pub commits_per_s: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// max.
    pub max_ms: f64,
}

fn bar(json: bool, len: u64, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {what} (eta {{eta}})"
    )) {
        bar.set_style(style);
    }
    bar
}

/// This process's CPU time (user + system) in ms, from `/proc/self/stat`
/// (Linux); 0 where it cannot be read.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on the Linux targets this runs on.
    ticks * 10.0
}

/// A member's report: (member index, generation, when, partitions).
type Report = (usize, i32, Instant, usize);

struct BenchMember {
    task: smol::Task<()>,
    member_id: Option<String>,
}

/// One member: join, report, heartbeat until a rebalance, re-join.
async fn member_loop(
    client: Client,
    group: String,
    topic: String,
    strategy: String,
    index: usize,
    reports: async_channel::Sender<(Report, String)>,
) {
    let mut member_id = String::new();
    loop {
        let joined = match client
            .join_group(JoinRequest {
                group: group.clone(),
                member_id: member_id.clone(),
                client_id: format!("bench-{index}"),
                topics: vec![topic.clone()],
                strategies: vec![strategy.clone()],
                session_timeout_ms: MEMBER_TIMEOUT_MS,
                rebalance_timeout_ms: MEMBER_TIMEOUT_MS,
                owned: Vec::new(),
            })
            .await
        {
            Ok(j) => j,
            Err(e) => {
                log::warn!("bench member {index}: join failed: {e}");
                return;
            }
        };
        let at = Instant::now();
        member_id = joined.member_id.clone();
        let report = (index, joined.generation, at, joined.assignment.len());
        if reports.send((report, member_id.clone())).await.is_err() {
            return;
        }
        loop {
            match client
                .heartbeat(&group, &member_id, joined.generation, HEARTBEAT_WAIT_MS)
                .await
            {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress) => break,
                Err(_) => return,
            }
        }
    }
}

/// Waits until every member in `expect` reports generation `> after`
/// covering `partitions` in total; returns the generation and the last time.
async fn wait_generation(
    reports: &async_channel::Receiver<(Report, String)>,
    members: &mut BTreeMap<usize, BenchMember>,
    after: i32,
    partitions: u32,
) -> anyhow::Result<(i32, Instant)> {
    let deadline = Instant::now() + REBALANCE_WAIT_MAX;
    let mut seen: BTreeMap<usize, (i32, Instant, usize)> = BTreeMap::new();
    loop {
        let newest = seen.values().map(|s| s.0).max();
        if let Some(generation) = newest {
            let current: Vec<&(i32, Instant, usize)> =
                seen.values().filter(|s| s.0 == generation).collect();
            let total: usize = current.iter().map(|s| s.2).sum();
            if current.len() == members.len() && total == partitions as usize {
                let last = current
                    .iter()
                    .map(|s| s.1)
                    .max()
                    .unwrap_or_else(Instant::now);
                return Ok((generation, last));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let next = futures_lite::FutureExt::or(async { Some(reports.recv().await) }, async {
            smol::Timer::after(left).await;
            None
        })
        .await;
        match next {
            Some(Ok(((index, generation, at, count), id))) => {
                if let Some(m) = members.get_mut(&index) {
                    m.member_id = Some(id);
                    if generation > after {
                        seen.insert(index, (generation, at, count));
                    }
                }
            }
            Some(Err(_)) => bail!("bench members stopped"),
            None => bail!(
                "the group did not settle within {} s",
                REBALANCE_WAIT_MAX.as_secs()
            ),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `eddy bench rebalance`.
pub fn bench_rebalance(connect: &ConnectArgs, args: &RebalanceBenchArgs) -> anyhow::Result<()> {
    if args.partitions == 0 || args.rounds == 0 {
        bail!("--partitions and --rounds must be above 0");
    }
    let summary = smol::block_on(async {
        let admin = connect.connect().await?;
        let stamp = crate::broker::now_ms();
        let topic = format!("eddy-bench-rebalance-{stamp}");
        let group = format!("eddy-bench-rebalance-{stamp}");
        admin
            .create_topic(&topic, args.partitions, 1, vec![])
            .await
            .map_err(explain)?;
        let cpu_start = cpu_ms();
        let (tx, rx) = async_channel::unbounded();
        let mut members: BTreeMap<usize, BenchMember> = BTreeMap::new();
        let spawn = |index: usize| -> anyhow::Result<BenchMember> {
            let client = Client::new(connect.options()).map_err(explain)?;
            Ok(BenchMember {
                task: smol::spawn(member_loop(
                    client,
                    group.clone(),
                    topic.clone(),
                    args.strategy.clone(),
                    index,
                    tx.clone(),
                )),
                member_id: None,
            })
        };
        let n = args.members as usize;
        // Form the group of n - 1 members, then time the n-th joining.
        let progress = bar(args.json, u64::from(args.rounds) + 1, "rounds");
        for i in 0..n - 1 {
            members.insert(i, spawn(i)?);
            let (_, _) = wait_generation(&rx, &mut members, 0, args.partitions).await?;
        }
        let mut generation = 0;
        let started = Instant::now();
        members.insert(n - 1, spawn(n - 1)?);
        let (g, done) = wait_generation(&rx, &mut members, generation, args.partitions).await?;
        generation = g;
        let form_ms = done.duration_since(started).as_secs_f64() * 1e3;
        progress.inc(1);
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for _ in 0..args.rounds {
            // The last member leaves...
            let leaving = members
                .remove(&(n - 1))
                .ok_or_else(|| anyhow!("member missing"))?;
            let id = leaving
                .member_id
                .clone()
                .ok_or_else(|| anyhow!("member without an id"))?;
            drop(leaving.task);
            let t0 = Instant::now();
            admin.leave_group(&group, &id).await.map_err(explain)?;
            let (g, done) = wait_generation(&rx, &mut members, generation, args.partitions).await?;
            generation = g;
            leaves.push(done.duration_since(t0).as_secs_f64() * 1e3);
            // ...and joins again as a new member.
            let t0 = Instant::now();
            members.insert(n - 1, spawn(n - 1)?);
            let (g, done) = wait_generation(&rx, &mut members, generation, args.partitions).await?;
            generation = g;
            joins.push(done.duration_since(t0).as_secs_f64() * 1e3);
            progress.inc(1);
        }
        progress.finish_and_clear();
        let client_cpu_ms = cpu_ms() - cpu_start;
        for (_, m) in std::mem::take(&mut members) {
            drop(m.task);
        }
        // The members' sessions end on their own; remove the topic now.
        if let Err(e) = admin.delete_topic(&topic).await {
            log::warn!("cannot delete {topic}: {e}");
        }
        admin.close().await;
        joins.sort_by(f64::total_cmp);
        leaves.sort_by(f64::total_cmp);
        Ok::<_, anyhow::Error>(RebalanceSummary {
            members: args.members,
            partitions: args.partitions,
            strategy: args.strategy.clone(),
            form_ms,
            join_p50_ms: percentile(&joins, 0.5),
            join_max_ms: percentile(&joins, 1.0),
            leave_p50_ms: percentile(&leaves, 0.5),
            leave_max_ms: percentile(&leaves, 1.0),
            rounds: args.rounds,
            client_cpu_ms,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary).context("JSON")?);
    } else {
        let rows = vec![
            vec![
                "group forms (last join)".into(),
                format!("{:.1}", summary.form_ms),
                String::new(),
            ],
            vec![
                "one member joins".into(),
                format!("{:.1}", summary.join_p50_ms),
                format!("{:.1}", summary.join_max_ms),
            ],
            vec![
                "one member leaves".into(),
                format!("{:.1}", summary.leave_p50_ms),
                format!("{:.1}", summary.leave_max_ms),
            ],
        ];
        println!(
            "rebalance: {} members, {} partitions, {}, {} rounds; client CPU {:.0} ms",
            summary.members,
            summary.partitions,
            summary.strategy,
            summary.rounds,
            summary.client_cpu_ms
        );
        print!("{}", table(&["EVENT", "P50-MS", "MAX-MS"], &rows));
    }
    Ok(())
}

/// Runs `eddy bench commit`.
pub fn bench_commit(connect: &ConnectArgs, args: &CommitBenchArgs) -> anyhow::Result<()> {
    if args.commits == 0 || args.partitions_per_commit == 0 {
        bail!("--commits and --partitions-per-commit must be above 0");
    }
    let summary = smol::block_on(async {
        let admin = connect.connect().await?;
        let stamp = crate::broker::now_ms();
        let topic = format!("eddy-bench-commit-{stamp}");
        let group = format!("eddy-bench-commit-{stamp}");
        let partitions = args.partitions_per_commit;
        admin
            .create_topic(&topic, partitions, 1, vec![])
            .await
            .map_err(explain)?;
        let progress = bar(args.json, args.commits, "commits");
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.committers {
            let client = Client::new(connect.options()).map_err(explain)?;
            let (topic, group, next, progress) =
                (topic.clone(), group.clone(), next.clone(), progress.clone());
            let total = args.commits;
            tasks.push(smol::spawn(async move {
                let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                    .map_err(|e| anyhow!("histogram: {e}"))?;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let offsets = (0..partitions)
                        .map(|p| CommitOffset {
                            topic: topic.clone(),
                            partition: p,
                            offset: i,
                            metadata: String::new(),
                        })
                        .collect();
                    let t0 = Instant::now();
                    client
                        .commit_offsets(&group, "", -1, offsets)
                        .await
                        .map_err(explain)?;
                    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    latencies.saturating_record(ns.max(1));
                    progress.inc(1);
                }
                client.close().await;
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| anyhow!("histogram: {e}"))?;
        for t in tasks {
            let h = t.await?;
            all.add(&h).map_err(|e| anyhow!("histogram: {e}"))?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        if let Err(e) = admin.delete_group(&group).await {
            log::warn!("cannot delete group {group}: {e}");
        }
        if let Err(e) = admin.delete_topic(&topic).await {
            log::warn!("cannot delete {topic}: {e}");
        }
        admin.close().await;
        let ms = |ns: u64| ns as f64 / 1e6;
        Ok::<_, anyhow::Error>(CommitSummary {
            commits: all.len(),
            committers: args.committers,
            partitions_per_commit: partitions,
            elapsed_s: elapsed,
            commits_per_s: all.len() as f64 / elapsed.max(1e-9),
            p50_ms: ms(all.value_at_quantile(0.5)),
            p99_ms: ms(all.value_at_quantile(0.99)),
            max_ms: ms(all.max()),
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary).context("JSON")?);
    } else {
        let rows = vec![vec![
            summary.commits.to_string(),
            summary.committers.to_string(),
            summary.partitions_per_commit.to_string(),
            format!("{:.0}", summary.commits_per_s),
            format!("{:.2}", summary.p50_ms),
            format!("{:.2}", summary.p99_ms),
            format!("{:.2}", summary.max_ms),
        ]];
        print!(
            "{}",
            table(
                &[
                    "COMMITS",
                    "COMMITTERS",
                    "PARTITIONS/COMMIT",
                    "COMMITS/S",
                    "P50-MS",
                    "P99-MS",
                    "MAX-MS"
                ],
                &rows
            )
        );
    }
    Ok(())
}
