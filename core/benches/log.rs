//! Partition log benchmarks on the real file system (`FsStorage`).
//!
//! `cargo bench -p eddy-core` runs four groups:
//! - `append`: leader appends of pre-built, uncompressed batches of 1 KiB records,
//!   without fsync (`flush.messages` / `flush.ms` unset) and with an fsync per append
//!   (`SharedLog::append_durable`), single-threaded and from 4 threads (group commit).
//! - `read`: a consumer reading a ~256 MiB log from the page cache, 1 MiB per fetch.
//! - `offset_lookup`: fetching the batch that holds a random offset, over 8 segments.
//! - `recovery`: opening a 1 GiB log with no recovery checkpoint (full scan), and
//!   after a clean close.
//!
//! Logs live in a temporary directory under `EDDY_BENCH_DIR` (else the system temp
//! directory) and are deleted when a group ends. `EDDY_BENCH_QUICK=1` shrinks every
//! log and measurement about 10x, for smoke tests.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use eddy_core::batch::{BatchBuilder, BatchOptions, header};
use eddy_core::config::LogConfig;
use eddy_core::group_commit::SharedLog;
use eddy_core::layout;
use eddy_core::log::PartitionLog;
use eddy_core::storage::{FsStorage, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// The clock every append and open is given. Record timestamps equal it, so
/// `segment.ms` never rolls a segment and retention never applies.
const NOW_MS: i64 = 1_700_000_000_000;
const VALUE_BYTES: usize = 1024;
const MIB: u64 = 1024 * 1024;
/// Bytes a consumer asks for per fetch.
const FETCH_MAX_BYTES: u64 = MIB;
/// Threads appending concurrently in the group-commit variant.
const APPEND_THREADS: usize = 4;
/// Seed of the random offsets of `offset_lookup`.
const LOOKUP_SEED: u64 = 0x00ed_d7be_4c40_0001;

/// Sizes and times, scaled down by `EDDY_BENCH_QUICK=1`.
struct Params {
    quick: bool,
    /// An append log is replaced by a fresh one before it would pass this size.
    /// It stays below `segment.bytes` (1 GiB) so that no roll, with its fsync of the
    /// whole sealed segment, lands inside a timed "fsync never" append.
    append_log_bytes_max: u64,
    read_log_bytes: u64,
    lookup_log_bytes: u64,
    lookup_segment_bytes: u64,
    recovery_log_bytes: u64,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("EDDY_BENCH_QUICK").is_ok_and(|v| v == "1");
        let div = if quick { 10 } else { 1 };
        Params {
            quick,
            append_log_bytes_max: 960 * MIB / div,
            read_log_bytes: 256 * MIB / div,
            lookup_log_bytes: 512 * MIB / div,
            lookup_segment_bytes: 64 * MIB / div,
            recovery_log_bytes: 1024 * MIB / div,
        }
    }

    fn secs(&self, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick { full / 10.0 } else { full })
    }
}

// A log must fit in one segment for the `append` reset rule to avoid rolls.
const _: () = assert!(960 * MIB < 1 << 30);

/// A fresh directory for one log, under `EDDY_BENCH_DIR` if set.
fn bench_dir(name: &str) -> TempDir {
    let prefix = format!("eddy-bench-{name}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    let made = match std::env::var_os("EDDY_BENCH_DIR") {
        Some(base) => {
            std::fs::create_dir_all(&base).expect("create EDDY_BENCH_DIR");
            builder.tempdir_in(base)
        }
        None => builder.tempdir(),
    };
    made.expect("create a benchmark directory")
}

fn storage() -> Arc<dyn Storage> {
    Arc::new(FsStorage)
}

fn config(props: &[(&str, String)]) -> LogConfig {
    let props: BTreeMap<String, String> = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    LogConfig::from_props(&props).expect("benchmark topic config")
}

fn open(dir: &Path, config: &LogConfig) -> PartitionLog {
    PartitionLog::open(storage(), dir, config.clone(), NOW_MS).expect("open the log")
}

/// One uncompressed batch of `records` records with 1 KiB values and no key.
fn batch(records: usize) -> Vec<u8> {
    let value: Vec<u8> = (0..VALUE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let mut b = BatchBuilder::new(BatchOptions::default());
    for _ in 0..records {
        b.push(NOW_MS, None, Some(&value), &[])
            .expect("push a record");
    }
    b.build().expect("build a batch")
}

/// Appends batches of 100 records until the log holds at least `bytes`, then closes
/// it. Returns the number of batches.
fn build_log(dir: &Path, config: &LogConfig, bytes: u64) -> u64 {
    let mut log = open(dir, config);
    let template = batch(100);
    let mut buf = template.clone();
    let mut batches = 0;
    while log.size_bytes() < bytes {
        buf.copy_from_slice(&template);
        log.append(&mut buf, 0, NOW_MS)
            .expect("append while building");
        batches += 1;
    }
    log.close(NOW_MS).expect("close the built log");
    batches
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fsync {
    Never,
    Always,
}

/// A log that is thrown away and replaced before it grows past a limit.
struct AppendLog {
    dir: Option<TempDir>,
    log: Option<SharedLog>,
    bytes: u64,
    bytes_max: u64,
    appends: u64,
    syncs: u64,
}

impl AppendLog {
    fn new(bytes_max: u64) -> AppendLog {
        let mut a = AppendLog {
            dir: None,
            log: None,
            bytes: 0,
            bytes_max,
            appends: 0,
            syncs: 0,
        };
        a.reset();
        a
    }

    /// Drops the log and its files and opens an empty one (not timed).
    fn reset(&mut self) {
        if let Some(log) = self.log.take() {
            self.syncs += log.syncs();
        }
        self.dir = None;
        let dir = bench_dir("append");
        // Default config: `segment.bytes` 1 GiB, no `flush.messages` / `flush.ms`.
        let log = open(dir.path(), &LogConfig::default());
        self.log = Some(SharedLog::new(log));
        self.dir = Some(dir);
        self.bytes = 0;
    }

    /// How many `batch_len` appends fit before the limit (resetting if none do).
    fn room(&mut self, batch_len: u64) -> u64 {
        assert!(
            batch_len <= self.bytes_max,
            "a batch larger than the log limit"
        );
        if self.bytes + batch_len > self.bytes_max {
            self.reset();
        }
        (self.bytes_max - self.bytes) / batch_len
    }

    fn log(&self) -> &SharedLog {
        self.log.as_ref().expect("an open append log")
    }

    /// "Never" calls `PartitionLog::append` through `SharedLog::with`: one
    /// uncontended lock, tens of nanoseconds against a ~100 µs append.
    fn append(&self, fsync: Fsync, buf: &mut [u8]) {
        let info = match fsync {
            Fsync::Never => self.log().with(|l| l.append(buf, 0, NOW_MS)),
            Fsync::Always => self.log().append_durable(buf, 0, NOW_MS),
        };
        let info = info.expect("append");
        assert_eq!(info.bytes, buf.len() as u64);
    }

    fn appends_per_fsync(&self) -> f64 {
        let syncs = self.syncs + self.log.as_ref().map_or(0, SharedLog::syncs);
        self.appends as f64 / syncs.max(1) as f64
    }
}

fn bench_append(c: &mut Criterion) {
    let p = Params::from_env();
    let mut g = c.benchmark_group("append");
    g.sample_size(10)
        .warm_up_time(p.secs(1.0))
        .measurement_time(p.secs(4.0));

    // The copy of the request bytes into the append buffer, for scale (the broker's
    // network read does it). It is not part of the single-threaded timings below.
    for records in [100, 1000] {
        let template = batch(records);
        let mut buf = vec![0u8; template.len()];
        g.throughput(Throughput::Bytes(template.len() as u64));
        g.bench_function(BenchmarkId::new("copy_only", records), |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&template));
                black_box(&mut buf);
            })
        });
    }

    // The leader's CRC check of each batch, the other part of an append's CPU cost.
    for records in [100, 1000] {
        let template = batch(records);
        g.throughput(Throughput::Bytes(template.len() as u64));
        g.bench_function(BenchmarkId::new("verify_crc_only", records), |b| {
            b.iter(|| header::verify_crc(black_box(&template)).expect("a valid batch"))
        });
    }

    for fsync in [Fsync::Never, Fsync::Always] {
        for records in [100, 1000] {
            let template = batch(records);
            let len = template.len() as u64;
            let mut buf = template.clone();
            let mut target = AppendLog::new(p.append_log_bytes_max);
            let name = match fsync {
                Fsync::Never => "fsync_never",
                Fsync::Always => "fsync_always",
            };
            g.throughput(Throughput::Bytes(len));
            g.bench_function(BenchmarkId::new(name, records), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        target.room(len);
                        // `append` restamps offsets in place: start from the
                        // producer's bytes each time, outside the timing.
                        buf.copy_from_slice(&template);
                        let t = Instant::now();
                        target.append(fsync, &mut buf);
                        timed += t.elapsed();
                        target.bytes += len;
                        target.appends += 1;
                    }
                    timed
                })
            });
            if fsync == Fsync::Always {
                eprintln!(
                    "append/{name}/{records}: {:.2} appends per fsync",
                    target.appends_per_fsync()
                );
            }
        }
    }

    // Group commit: 4 threads call `append_durable` at once and share fsyncs. The
    // copy into each thread's buffer is inside the timing here; it overlaps with the
    // other threads' appends and fsyncs.
    for records in [100, 1000] {
        let template = batch(records);
        let len = template.len() as u64;
        let mut bufs = vec![template.clone(); APPEND_THREADS];
        let mut target = AppendLog::new(p.append_log_bytes_max);
        let name = format!("fsync_always_{APPEND_THREADS}_threads");
        g.throughput(Throughput::Bytes(len));
        g.bench_function(BenchmarkId::new(&name, records), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(target.room(len));
                    let shared = &target;
                    let template = &template;
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for (i, buf) in bufs.iter_mut().enumerate() {
                            let n = round / APPEND_THREADS as u64
                                + u64::from((i as u64) < round % APPEND_THREADS as u64);
                            s.spawn(move || {
                                for _ in 0..n {
                                    buf.copy_from_slice(template);
                                    shared.append(Fsync::Always, buf);
                                }
                            });
                        }
                    });
                    timed += t.elapsed();
                    target.bytes += round * len;
                    target.appends += round;
                    left -= round;
                }
                timed
            })
        });
        eprintln!(
            "append/{name}/{records}: {:.2} appends per fsync",
            target.appends_per_fsync()
        );
    }
    g.finish();
}

fn bench_read(c: &mut Criterion) {
    let p = Params::from_env();
    let dir = bench_dir("read");
    let cfg = LogConfig::default();
    build_log(dir.path(), &cfg, p.read_log_bytes);
    let mut log = open(dir.path(), &cfg);
    log.set_high_watermark(log.log_end_offset());
    let size = log.size_bytes();
    let hw = log.high_watermark();

    let mut g = c.benchmark_group("read");
    g.sample_size(10)
        .warm_up_time(p.secs(1.0))
        .measurement_time(p.secs(4.0))
        .throughput(Throughput::Bytes(size));

    // One iteration reads the whole log, fetch by fetch, as a consumer from the start.
    let mut buf = vec![0u8; FETCH_MAX_BYTES as usize];
    g.bench_function("reuse_buffer", |b| {
        b.iter(|| {
            let mut offset = log.log_start_offset();
            let mut read = 0u64;
            while let Some(slice) = log.read(offset, FETCH_MAX_BYTES, hw).expect("read") {
                let len = slice.len as usize;
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                slice
                    .file
                    .read_exact_at(&mut buf[..len], slice.position)
                    .expect("read a slice");
                black_box(&buf[..len]);
                read += slice.len;
                offset = slice.next_offset;
            }
            assert_eq!(read, size);
        })
    });
    g.bench_function("read_to_vec", |b| {
        b.iter(|| {
            let mut offset = log.log_start_offset();
            let mut read = 0u64;
            while let Some(slice) = log.read(offset, FETCH_MAX_BYTES, hw).expect("read") {
                let bytes = slice.read_to_vec().expect("read a slice");
                read += bytes.len() as u64;
                black_box(bytes);
                offset = slice.next_offset;
            }
            assert_eq!(read, size);
        })
    });
    g.finish();
}

fn bench_offset_lookup(c: &mut Criterion) {
    let p = Params::from_env();
    let dir = bench_dir("lookup");
    let cfg = config(&[("segment.bytes", p.lookup_segment_bytes.to_string())]);
    build_log(dir.path(), &cfg, p.lookup_log_bytes);
    let mut log = open(dir.path(), &cfg);
    log.set_high_watermark(log.log_end_offset());
    let hw = log.high_watermark();
    let start = log.log_start_offset();
    assert!(log.segment_count() >= 8, "{} segments", log.segment_count());

    let mut g = c.benchmark_group("offset_lookup");
    g.sample_size(50)
        .warm_up_time(p.secs(1.0))
        .measurement_time(p.secs(4.0));
    let mut rng = StdRng::seed_from_u64(LOOKUP_SEED);
    let name = format!("{}_segments", log.segment_count());
    g.bench_function(name, |b| {
        b.iter(|| {
            let offset = rng.random_range(start..hw);
            let slice = log
                .read(offset, 1, hw)
                .expect("read")
                .expect("a batch at the offset");
            assert!(slice.first_offset <= offset && offset < slice.next_offset);
            black_box(slice)
        })
    });
    g.finish();
}

fn bench_recovery(c: &mut Criterion) {
    let p = Params::from_env();
    let dir = bench_dir("recovery");
    let cfg = LogConfig::default();
    let batches = build_log(dir.path(), &cfg, p.recovery_log_bytes);
    let log = open(dir.path(), &cfg);
    let size = log.size_bytes();
    log.close(NOW_MS).expect("close");
    let checkpoint = dir.path().join(layout::RECOVERY_POINT_CHECKPOINT);

    let mut g = c.benchmark_group("recovery");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(p.secs(1.0))
        // About ten scans at the 2 s target; slower scans overrun it with a warning.
        .measurement_time(p.secs(15.0));
    let label = format!("{}MiB", size / MIB);

    g.bench_function(BenchmarkId::new("full_scan", &label), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                // `open` writes the checkpoint again: remove it before every open.
                std::fs::remove_file(&checkpoint).expect("remove the recovery checkpoint");
                let t = Instant::now();
                let log = open(dir.path(), &cfg);
                timed += t.elapsed();
                assert_eq!(log.open_report().recovered_batches, batches);
                log.close(NOW_MS).expect("close");
            }
            timed
        })
    });

    g.sampling_mode(SamplingMode::Auto)
        .measurement_time(p.secs(4.0));
    g.bench_function(BenchmarkId::new("clean_open", &label), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let log = open(dir.path(), &cfg);
                timed += t.elapsed();
                assert_eq!(log.open_report().recovered_batches, 0);
                log.close(NOW_MS).expect("close");
            }
            timed
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_append,
    bench_read,
    bench_offset_lookup,
    bench_recovery
);
criterion_main!(benches);
