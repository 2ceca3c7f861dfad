//! Random sequences of log operations agree with a simple in-memory model.
//!
//! Operations: append (random sizes and codecs), read from a random offset, roll,
//! truncate, delete-records, size retention, clean reopen, and a crash after a flush.
//! After each one the whole log is read back and compared with the model.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::Compression;
use eddy_core::log::PartitionLog;
use eddy_core::sim::{CrashMode, SimStorage};
use eddy_core::storage::Storage;
use proptest::prelude::*;
use util::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: usize,
        value_len: usize,
        codec: u8,
    },
    Read {
        at: f64,
    },
    Roll,
    Truncate {
        at: f64,
    },
    DeleteRecords {
        at: f64,
    },
    Retention {
        keep_bytes: u64,
    },
    Reopen,
    CrashAfterFlush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..12, 0usize..300, 0u8..4).prop_map(|(n, value_len, codec)| Op::Append { n, value_len, codec }),
        2 => (0.0f64..1.0).prop_map(|at| Op::Read { at }),
        1 => Just(Op::Roll),
        1 => (0.0f64..1.1).prop_map(|at| Op::Truncate { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::DeleteRecords { at }),
        1 => (0u64..20_000).prop_map(|keep_bytes| Op::Retention { keep_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashAfterFlush),
    ]
}

/// The model: batches as (base offset, values), the log start offset.
#[derive(Debug, Default)]
struct Model {
    batches: Vec<(u64, Vec<Vec<u8>>)>,
    log_start: u64,
    end: u64,
}

impl Model {
    fn records(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        self.batches
            .iter()
            .flat_map(|(base, vals)| {
                vals.iter()
                    .enumerate()
                    .map(move |(i, v)| (base + i as u64, v.clone()))
            })
            .filter(|(o, _)| *o >= from)
            .collect()
    }
}

fn pick(at: f64, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    lo + ((hi - lo) as f64 * at).floor() as u64
}

fn check(log: &PartitionLog, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_end_offset(), m.end);
    prop_assert_eq!(log.log_start_offset(), m.log_start);
    prop_assert!(log.high_watermark() <= m.end && log.high_watermark() >= m.log_start);
    let got: Vec<(u64, Vec<u8>)> = read_all(log, m.log_start, m.end)
        .into_iter()
        .map(|r| (r.0, r.2.unwrap_or_default()))
        .collect();
    prop_assert_eq!(got, m.records(m.log_start));
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let disk = SimStorage::new();
    disk.create_dir_all(Path::new("/data")).unwrap();
    let st: Arc<dyn Storage> = Arc::new(disk.clone());
    let dir = Path::new("/data/t-0");
    let cfg = config(&[
        ("segment.bytes", "2500"),
        ("segment.index.bytes", "96"),
        ("index.interval.bytes", "300"),
        ("retention.ms", "-1"),
        ("file.delete.delay.ms", "0"),
    ]);
    let mut log = PartitionLog::open(st.clone(), dir, cfg.clone(), 0).unwrap();
    let mut m = Model::default();
    let mut counter = 0usize;
    for op in ops {
        match op {
            Op::Append {
                n,
                value_len,
                codec,
            } => {
                let vals: Vec<Vec<u8>> = (0..n)
                    .map(|i| {
                        counter += 1;
                        let mut v = format!("{counter}:{i}:").into_bytes();
                        v.resize(v.len() + value_len, b'a' + (counter % 26) as u8);
                        v
                    })
                    .collect();
                let pairs: Vec<Pair<'_>> =
                    vals.iter().map(|v| (None, Some(v.as_slice()))).collect();
                let codec = [
                    Compression::None,
                    Compression::Lz4,
                    Compression::Zstd,
                    Compression::Gzip,
                ][codec as usize];
                let info = log.append(&mut batch(&pairs, 1000, codec), 1, 0).unwrap();
                prop_assert_eq!(info.base_offset, m.end);
                m.batches.push((m.end, vals));
                m.end += n as u64;
                log.set_high_watermark(m.end);
            }
            Op::Read { at } => {
                let from = pick(at, m.log_start, m.end);
                let got: Vec<(u64, Vec<u8>)> = read_all(&log, from, m.end)
                    .into_iter()
                    .map(|r| (r.0, r.2.unwrap_or_default()))
                    .collect();
                prop_assert_eq!(got, m.records(from));
            }
            Op::Roll => {
                let end = log.log_end_offset();
                log.roll(end, 0).unwrap();
            }
            Op::Truncate { at } => {
                let to = pick(at, m.log_start.saturating_sub(2), m.end + 2);
                log.truncate_to(to, 0).unwrap();
                if to >= m.end {
                    // Nothing to do.
                } else if to <= m.log_start {
                    m.batches.clear();
                    m.log_start = to;
                    m.end = to;
                } else {
                    // Whole batches go: the one holding `to` and everything after.
                    let cut = m
                        .batches
                        .iter()
                        .find(|(base, vals)| base + vals.len() as u64 > to)
                        .map_or(m.end, |(base, _)| *base);
                    m.batches.retain(|(base, _)| *base < cut);
                    m.end = cut;
                    m.log_start = m.log_start.min(m.end);
                }
            }
            Op::DeleteRecords { at } => {
                let to = pick(at, m.log_start, log.high_watermark());
                log.delete_records_before(to).unwrap();
                m.log_start = m.log_start.max(to);
            }
            Op::Retention { keep_bytes } => {
                let mut c = cfg.clone();
                c.retention_bytes = Some(keep_bytes);
                log.set_config(c);
                let before = log.log_start_offset();
                log.enforce_retention(0).unwrap();
                log.set_config(cfg.clone());
                prop_assert!(log.log_start_offset() >= before);
                m.log_start = log.log_start_offset();
                // Retention never passes the active segment.
                prop_assert!(m.log_start <= m.end);
            }
            Op::Reopen => {
                log.close(0).unwrap();
                log = PartitionLog::open(st.clone(), dir, cfg.clone(), 0).unwrap();
                prop_assert_eq!(log.open_report().recovered_batches, 0);
            }
            Op::CrashAfterFlush => {
                log.flush(0).unwrap();
                drop(log);
                disk.crash(CrashMode::DropUnsynced);
                log = PartitionLog::open(st.clone(), dir, cfg.clone(), 0).unwrap();
                prop_assert_eq!(log.open_report().truncated_bytes, 0);
            }
        }
        check(&log, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops)?;
    }
}
