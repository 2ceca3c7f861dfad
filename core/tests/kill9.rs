//! `kill -9` of a real process appending to a log on the real file system.
//!
//! The test binary runs itself as the child (`kill9_child`, which does nothing unless
//! `EDDY_KILL9_DIR` is set): the child appends batches and prints one `ack` line per
//! acknowledged append; the parent kills it with SIGKILL at a random moment, reopens
//! the log, and checks that every acknowledged record is there, once, in order. Three
//! rounds per fsync policy, each resuming the log the last one left.
#![cfg(feature = "std")]

mod util;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_core::group_commit::SharedLog;
use eddy_core::log::PartitionLog;
use eddy_core::storage::{FsStorage, Storage};
use rand::{Rng, SeedableRng};

/// How long a child may run before it stops by itself.
const CHILD_SECONDS_MAX: u64 = 30;
/// How many appends a child makes at most.
const CHILD_APPENDS_MAX: u64 = 200_000;

fn config(policy: &str) -> eddy_core::config::LogConfig {
    let mut pairs = vec![("segment.bytes", "65536"), ("retention.ms", "-1")];
    if policy == "always" {
        pairs.push(("flush.messages", "1"));
    }
    util::config(&pairs)
}

#[test]
fn kill9_child() {
    let Ok(dir) = std::env::var("EDDY_KILL9_DIR") else {
        return;
    };
    let policy = std::env::var("EDDY_KILL9_POLICY").unwrap_or_default();
    let round: u64 = std::env::var("EDDY_KILL9_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let log = PartitionLog::open(st, Path::new(&dir), config(&policy), 0).expect("child open");
    let shared = SharedLog::new(log);
    let mut rng = rand::rngs::StdRng::seed_from_u64(round);
    let start = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    for seq in 0..CHILD_APPENDS_MAX {
        if start.elapsed() > Duration::from_secs(CHILD_SECONDS_MAX) {
            break;
        }
        let n = rng.random_range(1..20);
        let vals: Vec<String> = (0..n)
            .map(|j| {
                format!(
                    "r{round}-{seq}-{j}-{}",
                    "p".repeat(rng.random_range(0..200))
                )
            })
            .collect();
        let pairs: Vec<util::Pair<'_>> = vals.iter().map(|v| (None, Some(v.as_bytes()))).collect();
        let mut b = util::batch(&pairs, 0, eddy_core::batch::Compression::None);
        let info = if policy == "always" {
            shared.append_durable(&mut b, 0, 0)
        } else {
            shared.with(|l| l.append(&mut b, 0, 0))
        }
        .expect("child append");
        writeln!(
            out,
            "ack {} {} {round} {seq}",
            info.base_offset, info.last_offset
        )
        .expect("stdout");
        out.flush().expect("stdout");
    }
}

struct Ack {
    base: u64,
    last: u64,
    round: u64,
    seq: u64,
}

fn run_child(dir: &Path, policy: &str, round: u64, kill_after_acks: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["kill9_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("EDDY_KILL9_DIR", dir)
        .env("EDDY_KILL9_POLICY", policy)
        .env("EDDY_KILL9_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acks = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["ack", base, last, round, seq] = parts.as_slice() {
            acks.push(Ack {
                base: base.parse().expect("base"),
                last: last.parse().expect("last"),
                round: round.parse().expect("round"),
                seq: seq.parse().expect("seq"),
            });
            if acks.len() >= kill_after_acks {
                break;
            }
        }
    }
    // SIGKILL, mid-append (the child keeps appending while we read).
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    acks
}

fn check_policy(policy: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("t-0");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut acked: Vec<Ack> = Vec::new();
    for round in 0..3u64 {
        let kill_after = rng.random_range(50..400);
        acked.extend(run_child(&dir, policy, round, kill_after));
        let st: Arc<dyn Storage> = Arc::new(FsStorage);
        let log = PartitionLog::open(st, &dir, config(policy), 0).expect("reopen after kill -9");
        let end = log.log_end_offset();
        let records = util::read_all(&log, 0, end);
        assert_eq!(
            records.len() as u64,
            end,
            "{policy} round {round}: offsets are contiguous"
        );
        for a in &acked {
            assert!(
                a.last < end,
                "{policy} round {round}: acknowledged offset {} lost (end {end})",
                a.last
            );
            for off in a.base..=a.last {
                let v = records[off as usize].2.clone().unwrap_or_default();
                let prefix = format!("r{}-{}-{}-", a.round, a.seq, off - a.base);
                assert!(
                    v.starts_with(prefix.as_bytes()),
                    "{policy} round {round}: offset {off} holds {:?}, wanted {prefix}",
                    String::from_utf8_lossy(&v[..v.len().min(40)])
                );
            }
        }
        eprintln!(
            "{policy} round {round}: {} appends acknowledged in total, log end {end}, recovered {:?}",
            acked.len(),
            log.open_report()
        );
    }
}

#[test]
fn acknowledged_appends_survive_kill_9_with_fsync_always() {
    check_policy("always");
}

#[test]
fn acknowledged_appends_survive_kill_9_without_fsync() {
    check_policy("never");
}
