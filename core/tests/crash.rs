//! Crash tests on the simulated disk.
//!
//! A seeded workload appends batches under each fsync policy, with injected write
//! and fsync failures, and crashes the disk (dropping unsynced bytes, or keeping a
//! torn prefix of them) several times. After every reopen:
//! - every record acknowledged as durable is there, once, in order, unchanged;
//! - what the log holds is a prefix of what was appended (no corrupt or reordered
//!   byte is ever served: every batch read back passes its CRC);
//! - the log accepts appends again, continuing from its end.
//!
//! A failing seed is printed; `EDDY_CRASH_SEED=<n>` replays just that seed.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::Compression;
use eddy_core::config::LogConfig;
use eddy_core::group_commit::SharedLog;
use eddy_core::log::PartitionLog;
use eddy_core::sim::{CrashMode, SimStorage};
use eddy_core::storage::Storage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsync {
    /// `flush.messages = 1`: every append is synced before it is acknowledged.
    Always,
    /// `flush.ms`: synced when due; durable = what the last sync covered.
    Interval,
    /// No flushes but rolls; durable = what the rolls synced.
    Never,
}

fn policy_config(p: Fsync) -> LogConfig {
    let mut pairs = vec![
        ("segment.bytes", "3000"),
        ("segment.index.bytes", "120"),
        ("index.interval.bytes", "200"),
        ("retention.ms", "-1"),
    ];
    match p {
        Fsync::Always => pairs.push(("flush.messages", "1")),
        Fsync::Interval => pairs.push(("flush.ms", "50")),
        Fsync::Never => {}
    }
    config(&pairs)
}

/// The records the test appended and was told about: value per offset.
struct Model {
    values: Vec<Vec<u8>>,
    /// Offsets below this were acknowledged as durable.
    durable: u64,
    /// Every value ever tried at an offset, acknowledged or not: a write that failed
    /// or was never acknowledged may still reach the disk, and may survive a crash if
    /// it lies beyond what was durable.
    attempts: std::collections::HashMap<u64, Vec<Vec<u8>>>,
}

fn random_batch(rng: &mut StdRng, first_value: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let n = rng.random_range(1..12);
    let vals: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let pad = rng.random_range(0..80);
            format!("v{}-{}", first_value + i, "x".repeat(pad)).into_bytes()
        })
        .collect();
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{}", i % 3).into_bytes()).collect();
    let pairs: Vec<Pair<'_>> = keys
        .iter()
        .zip(&vals)
        .map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice())))
        .collect();
    let codec = match rng.random_range(0..4) {
        0 => Compression::Lz4,
        1 => Compression::Zstd,
        _ => Compression::None,
    };
    (batch(&pairs, 1_000 + first_value as i64, codec), vals)
}

fn check_after_reopen(log: &PartitionLog, model: &mut Model, seed: u64, cycle: usize) {
    let end = log.log_end_offset();
    let got = read_all(log, 0, end);
    assert_eq!(
        got.len() as u64,
        end,
        "seed {seed} cycle {cycle}: offsets are contiguous"
    );
    assert!(
        end >= model.durable,
        "seed {seed} cycle {cycle}: lost acknowledged records: log ends at {end}, {} were durable",
        model.durable
    );
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.0, i as u64, "seed {seed} cycle {cycle}");
        let value = r.2.clone().unwrap_or_default();
        if (i as u64) < model.durable {
            assert_eq!(
                value, model.values[i],
                "seed {seed} cycle {cycle}: durable offset {i} changed"
            );
        } else {
            let tried = model
                .attempts
                .get(&(i as u64))
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                tried.contains(&value),
                "seed {seed} cycle {cycle}: offset {i} holds a value never written there"
            );
        }
    }
    // The log's contents are now the truth; nothing beyond them was ever durable.
    model.values = got.into_iter().map(|r| r.2.unwrap_or_default()).collect();
    model.durable = end;
}

fn run_seed(seed: u64, policy: Fsync) {
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = SimStorage::new();
    disk.create_dir_all(Path::new("/data")).unwrap();
    let st: Arc<dyn Storage> = Arc::new(disk.clone());
    let dir = Path::new("/data/t-0");
    let cfg = policy_config(policy);
    let mut model = Model {
        values: Vec::new(),
        durable: 0,
        attempts: Default::default(),
    };
    let mut now = 0i64;
    for cycle in 0..4 {
        let log = PartitionLog::open(st.clone(), dir, cfg.clone(), now)
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: reopen failed: {e}"));
        check_after_reopen(&log, &mut model, seed, cycle);
        let shared = SharedLog::new(log);
        let ops = rng.random_range(5..60);
        for _ in 0..ops {
            now += rng.random_range(0..30);
            match rng.random_range(0..20) {
                0 => disk.fail_write_in(rng.random_range(1..4)),
                1 => disk.fail_sync_in(rng.random_range(1..4)),
                _ => {}
            }
            let (mut bytes, vals) = random_batch(&mut rng, model.values.len());
            for (i, v) in vals.iter().enumerate() {
                let off = (model.values.len() + i) as u64;
                model.attempts.entry(off).or_default().push(v.clone());
            }
            let result = match policy {
                Fsync::Always => shared.append_durable(&mut bytes, 0, now),
                _ => shared.with(|l| l.append(&mut bytes, 0, now)),
            };
            match result {
                Ok(info) => {
                    assert_eq!(info.base_offset, model.values.len() as u64, "seed {seed}");
                    model.values.extend(vals);
                    if policy == Fsync::Always {
                        model.durable = info.last_offset + 1;
                    }
                }
                Err(e)
                    if e.to_string().contains("simulated") || e.to_string().contains("stopped") =>
                {
                    // An injected failure: not acknowledged. A failed write appends
                    // nothing; a failed fsync stops the partition until restart.
                    if shared.with(|l| l.poisoned().is_some()) {
                        break;
                    }
                }
                Err(e) => panic!("seed {seed}: unexpected error {e}"),
            }
            if policy == Fsync::Interval && shared.with(|l| l.flush_due(now)) {
                let _ = shared.with(|l| l.flush(now));
            }
            if policy != Fsync::Always {
                model.durable = model.durable.max(shared.with(|l| l.durable_offset()));
            }
        }
        disk.clear_faults();
        let mode = if rng.random_bool(0.5) {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Torn { seed: rng.random() }
        };
        drop(shared);
        disk.crash(mode);
    }
    let log = PartitionLog::open(st, dir, cfg, now).unwrap();
    check_after_reopen(&log, &mut model, seed, 99);
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("EDDY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(one) => vec![one],
        None => default.collect(),
    }
}

fn run_all(policy: Fsync, range: std::ops::Range<u64>) {
    for seed in seeds(range) {
        let outcome = std::panic::catch_unwind(|| run_seed(seed, policy));
        if outcome.is_err() {
            panic!("crash test failed for {policy:?}: replay with EDDY_CRASH_SEED={seed}");
        }
    }
}

#[test]
fn fsync_always_loses_no_acknowledged_record() {
    run_all(Fsync::Always, 0..300);
}

#[test]
fn fsync_interval_loses_nothing_that_was_synced() {
    run_all(Fsync::Interval, 1000..1300);
}

#[test]
fn fsync_never_keeps_what_rolls_synced() {
    run_all(Fsync::Never, 2000..2300);
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    let (disk, st) = sim();
    let log = PartitionLog::open(
        st,
        Path::new("/data/t-0"),
        config(&[("flush.messages", "1")]),
        0,
    )
    .unwrap();
    disk.set_sync_delay(Some(std::time::Duration::from_millis(2)));
    let shared = Arc::new(SharedLog::new(log));
    let threads = 8;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..per_thread {
                    let mut b = numbered(&format!("t{t}-{i}"), 1, 1, 0);
                    let info = shared.append_durable(&mut b, 0, 0).expect("append");
                    assert!(shared.with(|l| l.durable_offset()) > info.last_offset);
                    acked.push(info.base_offset);
                }
                acked
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..(threads * per_thread) as u64).collect::<Vec<_>>());
    let syncs = shared.syncs();
    let appends = (threads * per_thread) as u64;
    assert!(syncs >= 1 && syncs <= appends);
    // Everything acknowledged is on the simulated platter.
    let file_syncs = disk.stats().file_syncs;
    drop(shared);
    disk.crash(CrashMode::DropUnsynced);
    let log = PartitionLog::open(
        Arc::new(disk.clone()),
        Path::new("/data/t-0"),
        config(&[("flush.messages", "1")]),
        0,
    )
    .unwrap();
    assert_eq!(log.log_end_offset(), appends);
    eprintln!("group commit: {appends} appends, {syncs} shared fsyncs, {file_syncs} file syncs");
    assert!(
        syncs < appends,
        "8 threads appending at once should share fsyncs: {syncs} fsyncs for {appends} appends"
    );
}
