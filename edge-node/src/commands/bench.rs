//! `eddy bench produce|consume|e2e`: how fast a node takes and serves records.
//!
//! Every producer and consumer gets its own [`Client`] (its own QUIC connection)
//! and its own OS thread, so their loops run in parallel. Those threads wait
//! with `futures_lite::future::block_on` and pace with `std::thread::sleep`:
//! they never wait on the async-io reactor, which stays with the client thread
//! that runs the clients' background work (sealing and sending batches, QUIC
//! packet processing and encryption, fetches; see `eddy_client::runtime`).
//!
//! e2e sends at the offered load for `--warmup-ms` (1 s) before it records
//! latencies: the first tens of ms after the connections open are slower
//! (see `E2E_WARMUP_MS_DEFAULT`).
//!
//! - `produce`: records/s, MB/s (10^6 bytes of record values per second) and
//!   the acknowledgement latency of one record per batch (the last one, which
//!   seals it: so the latency is sealing → acknowledged).
//! - `consume`: reads `--count` records from the start of the topic.
//! - `e2e`: a producer at a fixed offered load and a consumer; each value starts
//!   with the send time (ns on the bench's monotonic clock), so the latency is
//!   consumed − sent with µs resolution.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use eddy_client::protocol::ErrorCode;
use eddy_client::{
    Acks, Client, ClientError, Compression, ConsumeError, Consumer, ConsumerConfig, OffsetSpec,
    ProduceError, Producer, ProducerConfig, ProducerRecordRef,
};
use eddy_core::batch::header::HEADER_LEN;
use eddy_core::batch::varint::{varint_len, varlong_len};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use super::format::table;
use super::produce::{parse_acks_arg, parse_compression_arg};
use super::{ConnectArgs, explain};

/// Topic the benches use unless told otherwise.
pub const TOPIC_DEFAULT: &str = "eddy-bench";
/// Records `produce` and `consume` move unless told otherwise.
pub const COUNT_DEFAULT: u64 = 1_000_000;
/// How long `e2e` runs unless told otherwise.
pub const E2E_DURATION_SECS_DEFAULT: u64 = 10;
/// With acks=1, how long `produce` waits for a replicated partition's high
/// watermark to include every acknowledged record before it calls the run
/// failed (ms), and how often it looks.
const HW_SETTLE_MS: u64 = 10_000;
const HW_SETTLE_POLL_MS: u64 = 50;
/// e2e warm-up before latencies are recorded (ms). On a 2-core x86_64 VM at
/// 2–20 MB/s, records sent in the first 30–40 ms after the connections opened
/// took up to 35 ms end to end; after that, single-digit ms at worst.
pub const E2E_WARMUP_MS_DEFAULT: u64 = 1000;
/// Longest e2e warm-up (ms).
pub const E2E_WARMUP_MS_MAX: u64 = 600_000;
/// Records per batch unless `--batch-size` or `--batch-records` says otherwise.
pub const BATCH_RECORDS_DEFAULT: u32 = 1000;
/// The default batch never grows past this: 1000 records of 1 KiB would not fit
/// Kafka's default `max.message.bytes` (1 048 588), and on loopback 256 KiB
/// batches move 1 KiB records as fast as 1 MB ones with a quarter of the ack
/// latency (p50 ~10 ms instead of ~40 ms, 5 in flight).
pub const BATCH_BYTES_DEFAULT_MAX: u64 = 262_144;
/// Largest record value the benches send.
pub const RECORD_BYTES_MAX: u32 = 1_000_000;
/// Most producers or consumers in one bench.
pub const WORKERS_MAX: u32 = 64;
/// e2e values start with the send time: a little-endian u64 of nanoseconds.
pub const STAMP_BYTES: usize = 8;
/// Records sent between two looks at the clock (deadline, progress, timestamps).
const CHECK_EVERY_RECORDS: u64 = 1024;
/// Latencies are tracked from 1 ns up to this, to 3 significant digits.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// A paced producer that is ahead sleeps at least this long, then sends what
/// fell due meanwhile (Kafka's `ThroughputThrottler` sleeps in 2 ms pieces).
/// Waking for every record would spend a thread switch per record: at 200k
/// records/s that is most of a core, and the latency it measures is its own.
const PACE_SLEEP_MIN: Duration = Duration::from_millis(1);
/// Ack-latency samples per second aimed at in `e2e`.
const E2E_ACK_SAMPLES_PER_SEC: f64 = 1000.0;
/// Longest single `poll`: consumers come back this often to check their targets.
const POLL_SLICE_MS: u64 = 100;
/// A consumer that gets nothing for this long gives up.
const CONSUMER_IDLE_MS_MAX: u64 = 10_000;
/// Most records one `poll` returns in the benches.
const MAX_POLL_RECORDS: u32 = 10_000;
/// Default most bytes per partition per fetch in the benches: the client's
/// per-stream receive window (8 MiB), so one fetch streams without waiting for
/// window updates; 1 MiB (Kafka's default) costs a round trip per MiB.
const FETCH_BYTES_DEFAULT: u32 = 8 * 1024 * 1024;
/// Unfinished ack-sampling tasks kept before pruning the finished ones.
const SAMPLE_TASKS_PRUNE_AT: usize = 4096;
/// Worst-case bytes the producer reserves per record beyond key, value and
/// headers: its `record_size_bound` (varints at their widest).
const PRODUCER_RECORD_BOUND_FIXED: u64 = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// Kafka's (and the node's) default `max.message.bytes`.
const MAX_MESSAGE_BYTES_DEFAULT: u64 = 1_048_588;

// The largest record still fits a batch the node takes by default.
const _: () = assert!(
    RECORD_BYTES_MAX as u64 + HEADER_LEN as u64 + PRODUCER_RECORD_BOUND_FIXED
        <= MAX_MESSAGE_BYTES_DEFAULT
);
const _: () = assert!(BATCH_BYTES_DEFAULT_MAX <= MAX_MESSAGE_BYTES_DEFAULT);
const _: () = assert!(STAMP_BYTES == std::mem::size_of::<u64>());

/// Arguments of `eddy bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which bench.
    #[command(subcommand)]
    pub command: BenchCommand,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `eddy bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as the node acknowledges them.
    Produce(ProduceBenchArgs),
    /// Read records of a topic from its start, as fast as the node serves them.
    Consume(ConsumeBenchArgs),
    /// Produce at a fixed offered load while consuming: end-to-end latency.
    E2e(E2eBenchArgs),
    /// Time consumer-group rebalances (members joining and leaving).
    Rebalance(super::bench_group::RebalanceBenchArgs),
    /// Offset commits per second and their latency.
    Commit(super::bench_group::CommitBenchArgs),
}

/// Arguments of `eddy bench produce`.
#[derive(Debug, Args)]
pub struct ProduceBenchArgs {
    /// How much to send.
    #[command(flatten)]
    pub amount: AmountArgs,
    /// How to send it.
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// Output and threads.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `eddy bench consume`.
#[derive(Debug, Args)]
pub struct ConsumeBenchArgs {
    /// Topic to read (it must hold records: run `eddy bench produce` first).
    #[arg(long, default_value = TOPIC_DEFAULT, value_name = "NAME")]
    pub topic: String,
    /// Records to read in all, from the start of the topic (at most what it holds).
    #[arg(long, default_value_t = COUNT_DEFAULT, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Concurrent consumers, each with its own connection; partitions are dealt
    /// out among them.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=WORKERS_MAX as i64))]
    pub consumers: u32,
    /// Most bytes per partition per fetch (max.partition.fetch.bytes).
    #[arg(long, default_value_t = FETCH_BYTES_DEFAULT, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_bytes: u32,
    /// Output and threads.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `eddy bench e2e`.
#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// How much to send (default: for 10 s).
    #[command(flatten)]
    pub amount: AmountArgs,
    /// How to send it.
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// Offered load in MB/s (10^6 bytes of record values per second), spread
    /// over the producers.
    #[arg(long, default_value_t = 20.0, value_name = "MB/S", value_parser = parse_rate)]
    pub rate: f64,
    /// Most bytes per partition per fetch (max.partition.fetch.bytes).
    #[arg(long, default_value_t = FETCH_BYTES_DEFAULT, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_bytes: u32,
    /// Send at the offered load for this long first without recording
    /// latencies (fresh connections, first fetches), then for --duration-secs
    /// or --count. 0 records from the first record on.
    #[arg(long, default_value_t = E2E_WARMUP_MS_DEFAULT, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=E2E_WARMUP_MS_MAX))]
    pub warmup_ms: u64,
    /// Output and threads.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Topic, record size and how many records (or for how long).
#[derive(Debug, Clone, Args)]
pub struct AmountArgs {
    /// Topic to write to; created if missing (with --partitions), else used as is.
    #[arg(long, default_value = TOPIC_DEFAULT, value_name = "NAME")]
    pub topic: String,
    /// Bytes of each record's value (no key, no headers).
    #[arg(long, default_value_t = 100, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=RECORD_BYTES_MAX as i64))]
    pub record_size: u32,
    /// Records to send in all (default 1 000 000 for produce).
    #[arg(long, value_name = "N", conflicts_with = "duration_secs",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Send for this long instead of a number of records.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_secs: Option<u64>,
}

/// Producer settings.
#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    /// Concurrent producers, each with its own connection and thread.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=WORKERS_MAX as i64))]
    pub producers: u32,
    /// Partitions of the topic when the bench creates it (default: one per
    /// producer). An existing topic keeps its own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// Most bytes per batch (batch.size). Default: 1000 records' worth, at most
    /// 262 144 bytes.
    #[arg(long, value_name = "BYTES", conflicts_with = "batch_records",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Size batches to hold N records of --record-size (sets batch.size).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_records: Option<u32>,
    /// How long a batch waits for more records (linger.ms). Default: 5 for
    /// produce, 0 for e2e.
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<u32>,
    /// When the node acknowledges: 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = parse_acks_arg)]
    pub acks: Acks,
    /// Batch compression: none, lz4, zstd or gzip.
    #[arg(long, default_value = "none", value_parser = parse_compression_arg)]
    pub compression: Compression,
    /// Produce requests in flight per producer (max.in.flight.requests.per.connection).
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Most bytes a producer buffers (buffer.memory). Default: the in-flight
    /// batches plus two, so that ack latencies measure the node rather than a
    /// queue in the producer (Kafka's 32 MiB would hold hundreds of batches).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_memory: Option<u64>,
}

/// Output format.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print one JSON object instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("expected a positive number of MB/s, got `{s}`")),
    }
}

/// When the producers stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many records in all.
    Records(u64),
    /// After this long.
    Duration(Duration),
}

impl AmountArgs {
    /// The limit these flags set, or `default` when neither was given.
    pub fn limit(&self, default: Limit) -> Limit {
        match (self.count, self.duration_secs) {
            (Some(n), _) => Limit::Records(n),
            (None, Some(secs)) => Limit::Duration(Duration::from_secs(secs)),
            (None, None) => default,
        }
    }
}

impl ProducerArgs {
    /// `batch.size` in bytes: as given, or sized for `--batch-records` (or the
    /// default 1000 records, capped at [`BATCH_BYTES_DEFAULT_MAX`]).
    pub fn batch_size(&self, record_size: u32) -> u32 {
        if let Some(bytes) = self.batch_size {
            return bytes;
        }
        let bytes = match self.batch_records {
            Some(n) => batch_size_for_records(n, record_size),
            None => {
                let n = BATCH_RECORDS_DEFAULT.min(records_per_batch(
                    BATCH_BYTES_DEFAULT_MAX as u32,
                    record_size,
                ));
                batch_size_for_records(n.max(1), record_size)
            }
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// The producer config for records of `record_size` bytes.
    pub fn producer_config(&self, record_size: u32, linger_ms_default: u32) -> ProducerConfig {
        let batch_size = self.batch_size(record_size);
        let defaults = ProducerConfig::default();
        let max_request_size = defaults
            .max_request_size
            .max(record_size + HEADER_LEN as u32 + PRODUCER_RECORD_BOUND_FIXED as u32);
        ProducerConfig {
            acks: self.acks,
            compression: self.compression,
            linger_ms: self.linger_ms.unwrap_or(linger_ms_default),
            batch_size,
            max_in_flight_requests_per_connection: self.max_in_flight,
            buffer_memory: self.buffer_memory.unwrap_or_else(|| {
                (u64::from(batch_size) * (u64::from(self.max_in_flight) + 2))
                    .max(u64::from(max_request_size))
            }),
            max_request_size,
            ..defaults
        }
    }

    /// Partitions for a topic the bench creates.
    pub fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(self.producers)
    }
}

/// Bytes one record takes in a batch: no key, no headers, a value of
/// `value_len` bytes, at `offset_delta`, with a timestamp delta of one byte (the
/// benches refresh timestamps every [`CHECK_EVERY_RECORDS`] records, so records of
/// one batch are at most a few ms apart).
pub fn encoded_record_len(value_len: u32, offset_delta: u32) -> u64 {
    let value_len_i32 = i32::try_from(value_len).unwrap_or(i32::MAX);
    let offset_delta_i32 = i32::try_from(offset_delta).unwrap_or(i32::MAX);
    let body = 1 // attributes
        + varlong_len(0) // timestamp delta
        + varint_len(offset_delta_i32)
        + varint_len(-1) // null key
        + varint_len(value_len_i32)
        + value_len as usize
        + varint_len(0); // no headers
    let body_i32 = i32::try_from(body).unwrap_or(i32::MAX);
    (varint_len(body_i32) + body) as u64
}

/// The smallest `batch.size` with which the producer puts exactly `records`
/// records of `value_len` bytes in a batch.
///
/// The producer seals a batch when the next record's worst-case size would take
/// it over `batch.size`: a batch with `records - 1` records must still take one
/// more, one with `records` must not.
pub fn batch_size_for_records(records: u32, value_len: u32) -> u64 {
    let records = records.max(1);
    let filled: u64 = (0..records - 1)
        .map(|delta| encoded_record_len(value_len, delta))
        .sum();
    HEADER_LEN as u64 + filled + PRODUCER_RECORD_BOUND_FIXED + u64::from(value_len)
}

/// How many records of `value_len` bytes the producer puts in a batch of
/// `batch_size` bytes (at least 1: a lone record always gets a batch).
pub fn records_per_batch(batch_size: u32, value_len: u32) -> u32 {
    let bound = PRODUCER_RECORD_BOUND_FIXED + u64::from(value_len);
    let batch_size = u64::from(batch_size);
    let mut size = HEADER_LEN as u64;
    let mut records = 0u32;
    // A record is added while the batch is empty or its bound still fits; a
    // batch that reaches batch.size is sealed at once.
    while records == 0 || size + bound <= batch_size {
        size += encoded_record_len(value_len, records);
        records += 1;
        if size >= batch_size || records == u32::MAX {
            break;
        }
    }
    records
}

/// What a bench reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// `produce`, `consume` or `e2e`.
    pub mode: &'static str,
    /// Topic.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Producers (0 for consume).
    pub producers: u32,
    /// Consumers (0 for produce).
    pub consumers: u32,
    /// Bytes of each record value (average for consume).
    pub record_size: f64,
    /// Producer settings, when there are producers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerSettings>,
    /// Offered load, for e2e.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_mb_per_sec: Option<f64>,
    /// Warm-up whose latencies were not recorded, for e2e (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_ms: Option<u64>,
    /// Records produced (produce, e2e) or consumed (consume).
    pub records: u64,
    /// Bytes of those records' keys and values.
    pub bytes: u64,
    /// Seconds from start to the last acknowledgement or record.
    pub elapsed_secs: f64,
    /// `records / elapsed_secs`.
    pub records_per_sec: f64,
    /// `bytes / elapsed_secs / 10^6`.
    pub mb_per_sec: f64,
    /// Records consumed, for e2e.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<u64>,
    /// Latency percentiles.
    pub latencies: Vec<LatencySummary>,
    /// Sampled deliveries that failed.
    pub errors: u64,
}

/// The producer settings of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProducerSettings {
    /// `acks`: `0`, `1` or `all`.
    pub acks: &'static str,
    /// Codec name.
    pub compression: &'static str,
    /// `batch.size` in bytes.
    pub batch_size: u32,
    /// Records of the run's size that fit a batch.
    pub batch_records: u32,
    /// `linger.ms`.
    pub linger_ms: u32,
    /// `max.in.flight.requests.per.connection`.
    pub max_in_flight: u32,
    /// `buffer.memory` in bytes.
    pub buffer_memory: u64,
}

impl ProducerSettings {
    fn new(config: &ProducerConfig, record_size: u32) -> ProducerSettings {
        ProducerSettings {
            acks: acks_name(config.acks),
            compression: config.compression.name(),
            batch_size: config.batch_size,
            batch_records: records_per_batch(config.batch_size, record_size),
            linger_ms: config.linger_ms,
            max_in_flight: config.max_in_flight_requests_per_connection,
            buffer_memory: config.buffer_memory,
        }
    }
}

/// Percentiles of one latency, in µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    /// What was measured.
    pub name: &'static str,
    /// Samples.
    pub samples: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl LatencySummary {
    /// Percentiles of a histogram of nanoseconds; `None` if it is empty.
    pub fn from_histogram(name: &'static str, ns: &Histogram<u64>) -> Option<LatencySummary> {
        if ns.is_empty() {
            return None;
        }
        let us = |v: u64| v as f64 / 1000.0;
        Some(LatencySummary {
            name,
            samples: ns.len(),
            mean_us: ns.mean() / 1000.0,
            p50_us: us(ns.value_at_quantile(0.50)),
            p99_us: us(ns.value_at_quantile(0.99)),
            p999_us: us(ns.value_at_quantile(0.999)),
            max_us: us(ns.max()),
        })
    }
}

fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

impl Summary {
    /// Fills in the rates from records, bytes and elapsed time.
    fn with_rates(mut self) -> Summary {
        let secs = self.elapsed_secs.max(f64::MIN_POSITIVE);
        self.records_per_sec = self.records as f64 / secs;
        self.mb_per_sec = self.bytes as f64 / secs / 1e6;
        self
    }

    /// The summary as aligned text: settings and results, then a latency table.
    pub fn render(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("bench", self.mode.to_owned()),
            (
                "topic",
                format!(
                    "{} ({} partition{})",
                    self.topic,
                    self.partitions,
                    if self.partitions == 1 { "" } else { "s" }
                ),
            ),
        ];
        if self.producers > 0 {
            rows.push(("producers", self.producers.to_string()));
        }
        if self.consumers > 0 {
            rows.push(("consumers", self.consumers.to_string()));
        }
        let size = if self.record_size.fract() == 0.0 {
            format!("{} B", self.record_size)
        } else {
            format!("{:.1} B (average)", self.record_size)
        };
        rows.push(("record size", size));
        if let Some(p) = &self.producer {
            rows.push((
                "batch.size",
                format!(
                    "{} B ({} record{})",
                    group_thousands(u64::from(p.batch_size)),
                    group_thousands(u64::from(p.batch_records)),
                    if p.batch_records == 1 { "" } else { "s" }
                ),
            ));
            rows.push(("linger.ms", p.linger_ms.to_string()));
            rows.push(("acks", p.acks.to_owned()));
            rows.push(("compression", p.compression.to_owned()));
            rows.push(("max in flight", p.max_in_flight.to_string()));
            rows.push((
                "buffer.memory",
                format!("{} B", group_thousands(p.buffer_memory)),
            ));
        }
        if let Some(rate) = self.offered_mb_per_sec {
            rows.push(("offered load", format!("{rate:.1} MB/s")));
        }
        if let Some(ms) = self.warmup_ms {
            rows.push((
                "warm-up (not measured)",
                format!("{} ms", group_thousands(ms)),
            ));
        }
        let moved = if self.mode == "consume" {
            "consumed"
        } else {
            "produced"
        };
        rows.push((
            moved,
            format!(
                "{} records, {} bytes",
                group_thousands(self.records),
                group_thousands(self.bytes)
            ),
        ));
        if let Some(consumed) = self.consumed {
            rows.push(("consumed", format!("{} records", group_thousands(consumed))));
        }
        rows.push(("elapsed", format!("{:.3} s", self.elapsed_secs)));
        rows.push((
            "throughput",
            format!(
                "{} records/s, {:.1} MB/s",
                group_thousands(self.records_per_sec.round() as u64),
                self.mb_per_sec
            ),
        ));
        if self.errors > 0 {
            rows.push(("errors", group_thousands(self.errors)));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &rows {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{key:<width$}  {value}");
        }
        if !self.latencies.is_empty() {
            let rows: Vec<Vec<String>> = self
                .latencies
                .iter()
                .map(|l| {
                    vec![
                        l.name.to_owned(),
                        ms(l.p50_us),
                        ms(l.p99_us),
                        ms(l.p999_us),
                        ms(l.max_us),
                        ms(l.mean_us),
                        group_thousands(l.samples),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &["LATENCY", "P50", "P99", "P99.9", "MAX", "MEAN", "SAMPLES"],
                &rows,
            ));
        }
        out
    }

    /// The summary as one line of JSON.
    pub fn to_json(&self) -> String {
        // Only plain numbers and strings: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Runs `eddy bench …`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let output = match &args.command {
        BenchCommand::Produce(a) => &a.output,
        BenchCommand::Consume(a) => &a.output,
        BenchCommand::E2e(a) => &a.output,
        BenchCommand::Rebalance(a) => {
            return super::bench_group::bench_rebalance(&args.connect, a);
        }
        BenchCommand::Commit(a) => return super::bench_group::bench_commit(&args.connect, a),
    };
    let summary = match &args.command {
        BenchCommand::Produce(a) => bench_produce(&args.connect, a)?,
        BenchCommand::Consume(a) => bench_consume(&args.connect, a)?,
        BenchCommand::E2e(a) => bench_e2e(&args.connect, a)?,
        BenchCommand::Rebalance(_) | BenchCommand::Commit(_) => return Ok(()),
    };
    if output.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.render());
    }
    Ok(())
}

/// A monotonic clock shared by the threads of one bench: ns since its start.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant bounds are valid")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A progress bar on stderr, or a hidden one with `--json` or when stderr is
/// not a terminal.
fn progress(json: bool, length: Option<u64>, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match length {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            format!(
                "{{elapsed_precise}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {what} ({{rate}}, eta {{eta}})"
            ),
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            format!("{{spinner}} {{elapsed_precise}} {{human_pos}} {what} ({{rate}})"),
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{}/s", group_thousands(state.per_sec() as u64));
            },
        ));
    }
    if length.is_none() {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    bar
}

/// Pseudo-random letters: compressible about as much as text is.
fn fill_value(value: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for byte in value {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = b'a' + (x % 26) as u8;
    }
}

fn produce_error(e: ProduceError) -> anyhow::Error {
    match e {
        ProduceError::Client(e) => explain(e),
        other => anyhow!(other),
    }
}

fn consume_error(e: ConsumeError) -> anyhow::Error {
    match e {
        ConsumeError::Client(e) => explain(e),
        other => anyhow!(other),
    }
}

/// The partition count of `topic`, creating it with `partitions` if it is missing.
async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<u32> {
    match client.partition_count(topic).await {
        Ok(count) => {
            if count != partitions {
                log::info!("topic {topic} exists with {count} partitions; using it as is");
            }
            Ok(count)
        }
        Err(ClientError::Server(body)) if body.code == ErrorCode::UnknownTopicOrPartition => {
            match client.create_topic(topic, partitions, 1, Vec::new()).await {
                Ok(()) => {}
                // Another bench created it meanwhile.
                Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
                Err(e) => return Err(explain(e)).context(format!("cannot create topic {topic}")),
            }
            client.partition_count(topic).await.map_err(explain)
        }
        Err(e) => Err(explain(e)),
    }
}

/// The log start offset and high watermark of each partition.
async fn offsets(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        // In a cluster only the partition's leader answers.
        let client = client.for_partition(topic, p).await.map_err(explain)?;
        let start = client
            .list_offsets(topic, p, OffsetSpec::Earliest)
            .await
            .map_err(explain)?;
        let end = client
            .list_offsets(topic, p, OffsetSpec::Latest)
            .await
            .map_err(explain)?;
        let (Some(start), Some(end)) = (start.offset, end.offset) else {
            bail!("the node reported no offsets for {topic}-{p}");
        };
        out.push((start, end.max(start)));
    }
    Ok(out)
}

/// Connects `n` clients, one per producer or consumer.
async fn connect_clients(connect: &ConnectArgs, n: u32) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n as usize);
    for _ in 0..n {
        clients.push(connect.connect().await?);
    }
    Ok(clients)
}

fn spawn_worker<T: Send + 'static>(
    name: String,
    start: Arc<Barrier>,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            start.wait();
            work()
        })
        .map_err(|e| anyhow!("cannot start a bench thread: {e}"))
}

fn join<T>(handle: JoinHandle<T>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("a bench thread panicked"))
}

/// What one producer thread is to do.
#[derive(Debug, Clone)]
struct ProducerPlan {
    topic: String,
    /// Records to send; `None` until `deadline`.
    records: Option<u64>,
    duration: Option<Duration>,
    record_size: usize,
    /// Sample the ack latency of every n-th record.
    sample_every: u64,
    /// Records per second to offer (e2e), else as fast as possible.
    rate: Option<f64>,
    /// Start each value with the send time on this clock (e2e).
    stamp: Option<Clock>,
    /// Send this long before `records` or `duration` start counting, and
    /// sample no acks meanwhile (e2e).
    warmup: Duration,
    seed: u64,
}

/// What one producer thread did.
#[derive(Debug)]
struct ProducerOutcome {
    sent: u64,
    /// When its last record was acknowledged (or failed).
    finished: Instant,
    acks: Histogram<u64>,
    failed: u64,
    first_error: Option<ProduceError>,
}

#[derive(Debug)]
struct AckSamples {
    ns: Histogram<u64>,
    failed: u64,
    first_error: Option<ProduceError>,
}

/// Sends records per `plan` through `producer`; `sent` counts them for the others.
async fn run_producer(
    producer: &Producer,
    plan: &ProducerPlan,
    bar: &ProgressBar,
    sent_total: &AtomicU64,
) -> anyhow::Result<ProducerOutcome> {
    let samples = Arc::new(Mutex::new(AckSamples {
        ns: new_histogram(),
        failed: 0,
        first_error: None,
    }));
    let mut sampling: Vec<smol::Task<()>> = Vec::new();
    let mut value = vec![0u8; plan.record_size];
    fill_value(&mut value, plan.seed);
    let started = Instant::now();
    // The warm-up counts towards neither `records` nor `duration`.
    let measured_from = started + plan.warmup;
    let deadline = plan.duration.map(|d| measured_from + d);
    // Records sent when the warm-up ended.
    let mut counted_from = plan.warmup.is_zero().then_some(0u64);
    let mut sent = 0u64;
    let mut timestamp = now_ms();
    let mut stopped = None;
    'sending: loop {
        if counted_from.is_none() && Instant::now() >= measured_from {
            counted_from = Some(sent);
        }
        let left = match (plan.records, counted_from) {
            (Some(n), Some(from)) => n.saturating_sub(sent - from),
            _ => u64::MAX,
        };
        if left == 0 {
            break;
        }
        let mut chunk = left.min(CHECK_EVERY_RECORDS);
        if let Some(rate) = plan.rate {
            // Records due by now; if none is, sleep until the next one is due
            // (and at least `PACE_SLEEP_MIN`), then send all that fell due.
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            if due <= sent {
                let next = started + Duration::from_secs_f64((sent + 1) as f64 / rate);
                if deadline.is_some_and(|d| next >= d) {
                    break;
                }
                // A plain sleep: this thread does not wait on the reactor.
                std::thread::sleep(
                    next.saturating_duration_since(Instant::now())
                        .max(PACE_SLEEP_MIN),
                );
                continue;
            }
            chunk = chunk.min(due - sent);
        }
        for i in sent..sent + chunk {
            if let Some(clock) = plan.stamp {
                value[..STAMP_BYTES].copy_from_slice(&clock.now_ns().to_le_bytes());
            }
            let record = ProducerRecordRef {
                topic: &plan.topic,
                partition: None,
                key: None,
                value: Some(&value),
                headers: &[],
                timestamp: Some(timestamp),
            };
            let sample = (i + 1).is_multiple_of(plan.sample_every) && counted_from.is_some();
            let at = if sample { Some(Instant::now()) } else { None };
            let delivery = match producer.send_ref(record).await {
                Ok(delivery) => delivery,
                Err(e) => {
                    stopped = Some((i, e));
                    break 'sending;
                }
            };
            match at {
                Some(at) => {
                    let samples = samples.clone();
                    sampling.push(producer.client().spawn(async move {
                        let outcome = delivery.await;
                        let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        let mut s = lock(&samples);
                        match outcome {
                            Ok(_) => s.ns.saturating_record(ns.max(1)),
                            Err(e) => {
                                s.failed += 1;
                                s.first_error.get_or_insert(e);
                            }
                        }
                    }));
                    if sampling.len() >= SAMPLE_TASKS_PRUNE_AT {
                        sampling.retain(|t| !t.is_finished());
                    }
                }
                // The record is sent anyway; its batch is checked by the sampled
                // record and by the high watermarks at the end.
                None => drop(delivery),
            }
        }
        sent += chunk;
        sent_total.fetch_add(chunk, Ordering::Relaxed);
        bar.inc(chunk);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        timestamp = now_ms();
    }
    producer.flush().await;
    let finished = Instant::now();
    for task in sampling {
        task.await;
    }
    if let Some((sent, e)) = stopped {
        return Err(produce_error(e)).context(format!("producer stopped after {sent} records"));
    }
    let samples = Arc::try_unwrap(samples)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .map_err(|_| anyhow!("an ack sampling task outlived the producer"))?;
    Ok(ProducerOutcome {
        sent,
        finished,
        acks: samples.ns,
        failed: samples.failed,
        first_error: samples.first_error,
    })
}

struct ProducerThreads {
    handles: Vec<JoinHandle<anyhow::Result<ProducerOutcome>>>,
}

/// Starts one thread per producer, each with its own client; they begin at
/// the `start` barrier. The caller closes the clients.
fn spawn_producers(
    clients: &[Client],
    config: &ProducerConfig,
    plan: &ProducerPlan,
    bar: &ProgressBar,
    sent_total: &Arc<AtomicU64>,
    start: &Arc<Barrier>,
) -> anyhow::Result<ProducerThreads> {
    let n = clients.len() as u64;
    let mut handles = Vec::with_capacity(clients.len());
    for (i, client) in clients.iter().enumerate() {
        let producer = Producer::new(client.clone(), config.clone()).map_err(produce_error)?;
        let mut plan = plan.clone();
        plan.records = plan
            .records
            .map(|total| total / n + u64::from((i as u64) < total % n));
        plan.rate = plan.rate.map(|r| r / n as f64);
        plan.seed = plan.seed.wrapping_add(i as u64);
        let bar = bar.clone();
        let sent_total = sent_total.clone();
        handles.push(spawn_worker(
            format!("bench-producer-{i}"),
            start.clone(),
            move || {
                futures_lite::future::block_on(async move {
                    let outcome = run_producer(&producer, &plan, &bar, &sent_total).await;
                    producer.close().await;
                    outcome
                })
            },
        )?);
    }
    Ok(ProducerThreads { handles })
}

/// The producers' outcomes merged: sent, last finish, acks, failed, first error.
struct ProducersDone {
    sent: u64,
    finished: Instant,
    acks: Histogram<u64>,
    failed: u64,
    first_error: Option<ProduceError>,
}

fn join_producers(threads: ProducerThreads, started: Instant) -> anyhow::Result<ProducersDone> {
    let mut done = ProducersDone {
        sent: 0,
        finished: started,
        acks: new_histogram(),
        failed: 0,
        first_error: None,
    };
    let mut first_failure = None;
    for handle in threads.handles {
        match join(handle)? {
            Ok(outcome) => {
                done.sent += outcome.sent;
                done.finished = done.finished.max(outcome.finished);
                // Same bounds on both sides: adding cannot fail.
                let _ = done.acks.add(&outcome.acks);
                done.failed += outcome.failed;
                if done.first_error.is_none() {
                    done.first_error = outcome.first_error;
                }
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

fn bench_produce(connect: &ConnectArgs, args: &ProduceBenchArgs) -> anyhow::Result<Summary> {
    let amount = &args.amount;
    let config = args.producer.producer_config(amount.record_size, 5);
    config.validate().map_err(produce_error)?;
    let limit = amount.limit(Limit::Records(COUNT_DEFAULT));
    let producers = args.producer.producers;
    let (clients, partitions, before) = smol::block_on(async {
        let clients = connect_clients(connect, producers).await?;
        let partitions =
            ensure_topic(&clients[0], &amount.topic, args.producer.partitions()).await?;
        let before = offsets(&clients[0], &amount.topic, partitions).await?;
        anyhow::Ok((clients, partitions, before))
    })?;
    let plan = ProducerPlan {
        topic: amount.topic.clone(),
        records: match limit {
            Limit::Records(n) => Some(n),
            Limit::Duration(_) => None,
        },
        duration: match limit {
            Limit::Records(_) => None,
            Limit::Duration(d) => Some(d),
        },
        record_size: amount.record_size as usize,
        // The last record of each batch: its latency runs from sealing to ack.
        sample_every: u64::from(records_per_batch(config.batch_size, amount.record_size)),
        rate: None,
        stamp: None,
        warmup: Duration::ZERO,
        seed: now_ms() as u64,
    };
    let bar = match limit {
        Limit::Records(n) => progress(args.output.json, Some(n), "records"),
        Limit::Duration(_) => progress(args.output.json, None, "records"),
    };
    let sent_total = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(producers as usize + 1));
    let threads = spawn_producers(&clients, &config, &plan, &bar, &sent_total, &start)?;
    start.wait();
    let started = Instant::now();
    let done = join_producers(threads, started);
    bar.finish_and_clear();

    // Every acknowledged record must be in the log: the high watermarks tell,
    // without awaiting a future per record.
    let sent = done.as_ref().map_or(0, |d| d.sent);
    let growth = |after: &[(u64, u64)]| -> u64 {
        before
            .iter()
            .zip(after)
            .map(|((_, b), (_, a))| a.saturating_sub(*b))
            .sum()
    };
    let after = smol::block_on(async {
        let mut after = offsets(&clients[0], &amount.topic, partitions).await;
        // With acks=1 a replicated partition's high watermark follows its
        // followers: give them a moment to catch up.
        let settle = Instant::now() + Duration::from_millis(HW_SETTLE_MS);
        while config.acks == Acks::Leader
            && Instant::now() < settle
            && after.as_ref().is_ok_and(|a| growth(a) < sent)
        {
            smol::Timer::after(Duration::from_millis(HW_SETTLE_POLL_MS)).await;
            after = offsets(&clients[0], &amount.topic, partitions).await;
        }
        for client in &clients {
            client.close().await;
        }
        after
    });
    let done = done?;
    let after = after?;
    let elapsed = done.finished.duration_since(started);
    let grown = growth(&after);
    if let Some(e) = done.first_error {
        bail!(
            "{} sampled batch{} failed; first error: {}",
            done.failed,
            if done.failed == 1 { "" } else { "es" },
            produce_error(e)
        );
    }
    if config.acks != Acks::None && grown < done.sent {
        bail!(
            "{} records were sent but the partitions of {} grew by only {grown}: \
             some batches failed",
            done.sent,
            amount.topic
        );
    }
    if grown > done.sent {
        log::warn!(
            "the partitions of {} grew by {grown} records, {} more than sent: another \
             producer was writing, or retries wrote batches twice",
            amount.topic,
            grown - done.sent
        );
    }
    let mut latencies = Vec::new();
    latencies.extend(LatencySummary::from_histogram(
        "ack (last record of each batch)",
        &done.acks,
    ));
    Ok(Summary {
        mode: "produce",
        topic: amount.topic.clone(),
        partitions,
        producers,
        consumers: 0,
        record_size: f64::from(amount.record_size),
        producer: Some(ProducerSettings::new(&config, amount.record_size)),
        offered_mb_per_sec: None,
        warmup_ms: None,
        records: done.sent,
        bytes: done.sent * u64::from(amount.record_size),
        elapsed_secs: elapsed.as_secs_f64(),
        records_per_sec: 0.0,
        mb_per_sec: 0.0,
        consumed: None,
        latencies,
        errors: done.failed,
    }
    .with_rates())
}

/// What one consumer thread is to do.
#[derive(Debug, Clone)]
struct ConsumerPlan {
    topic: String,
    /// (partition, first offset) to read.
    partitions: Vec<(u32, u64)>,
    /// Stop after this many records; `u64::MAX` until told otherwise.
    target: Arc<AtomicU64>,
    /// Values start with a send time on this clock (e2e).
    stamp: Option<Clock>,
    /// Record no latency for values sent within this long of the first
    /// value's send time (e2e warm-up).
    warmup_ns: u64,
}

/// What one consumer thread did.
#[derive(Debug)]
struct ConsumerOutcome {
    records: u64,
    bytes: u64,
    finished: Instant,
    latency: Histogram<u64>,
}

async fn run_consumer(
    consumer: &mut Consumer,
    plan: &ConsumerPlan,
    bar: &ProgressBar,
) -> anyhow::Result<ConsumerOutcome> {
    let mut outcome = ConsumerOutcome {
        records: 0,
        bytes: 0,
        finished: Instant::now(),
        latency: new_histogram(),
    };
    let mut last_record = Instant::now();
    // Values sent before this (ns on the plan's clock) are warm-up.
    let mut measure_from_ns: Option<u64> = None;
    loop {
        let target = plan.target.load(Ordering::Acquire);
        if outcome.records >= target {
            break;
        }
        let records = match consumer.poll(Duration::from_millis(POLL_SLICE_MS)).await {
            Ok(records) => records,
            Err(e) if e.is_retriable() => {
                log::warn!("{e}; retrying");
                continue;
            }
            Err(e) => return Err(consume_error(e)),
        };
        if records.is_empty() {
            if last_record.elapsed() >= Duration::from_millis(CONSUMER_IDLE_MS_MAX) {
                let of = if target == u64::MAX {
                    String::new()
                } else {
                    format!(" of {target}")
                };
                bail!(
                    "no records came for {} s; got {}{of}",
                    CONSUMER_IDLE_MS_MAX / 1000,
                    outcome.records
                );
            }
            continue;
        }
        let now_ns = plan.stamp.map(|clock| clock.now_ns());
        last_record = Instant::now();
        let wanted = target - outcome.records;
        let mut taken = 0u64;
        for record in records
            .iter()
            .take(usize::try_from(wanted).unwrap_or(usize::MAX))
        {
            let value = record.value.as_deref().unwrap_or_default();
            outcome.bytes += (value.len() + record.key.as_ref().map_or(0, Vec::len)) as u64;
            if let (Some(now), Some(stamp)) = (now_ns, value.first_chunk::<STAMP_BYTES>()) {
                let sent = u64::from_le_bytes(*stamp);
                let from = *measure_from_ns.get_or_insert(sent.saturating_add(plan.warmup_ns));
                if sent >= from {
                    outcome
                        .latency
                        .saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            taken += 1;
        }
        outcome.records += taken;
        outcome.finished = last_record;
        bar.inc(taken);
    }
    Ok(outcome)
}

fn spawn_consumers(
    clients: Vec<Client>,
    config: &ConsumerConfig,
    plans: Vec<ConsumerPlan>,
    bar: &ProgressBar,
    start: &Arc<Barrier>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<ConsumerOutcome>>>> {
    let mut handles = Vec::with_capacity(clients.len());
    for (i, (client, plan)) in clients.into_iter().zip(plans).enumerate() {
        let mut consumer = Consumer::new(client.clone(), config.clone()).map_err(consume_error)?;
        consumer.assign(
            plan.partitions
                .iter()
                .map(|&(p, _)| (plan.topic.clone(), p))
                .collect(),
        );
        for &(p, offset) in &plan.partitions {
            consumer
                .seek(&plan.topic, p, offset)
                .map_err(consume_error)?;
        }
        let bar = bar.clone();
        handles.push(spawn_worker(
            format!("bench-consumer-{i}"),
            start.clone(),
            move || {
                futures_lite::future::block_on(async move {
                    let outcome = run_consumer(&mut consumer, &plan, &bar).await;
                    drop(consumer);
                    client.close().await;
                    outcome
                })
            },
        )?);
    }
    Ok(handles)
}

fn consumer_config(fetch_bytes: u32) -> ConsumerConfig {
    ConsumerConfig {
        max_partition_fetch_bytes: fetch_bytes,
        max_poll_records: MAX_POLL_RECORDS,
        ..ConsumerConfig::default()
    }
}

/// Deals `to_read` records out over the partitions in proportion to what each
/// holds: `(partition, first offset, records)`.
pub fn quotas(bounds: &[(u64, u64)], to_read: u64) -> Vec<(u32, u64, u64)> {
    let available: u64 = bounds.iter().map(|(s, e)| e - s).sum();
    let to_read = to_read.min(available);
    let mut out: Vec<(u32, u64, u64)> = Vec::with_capacity(bounds.len());
    let mut given = 0u64;
    for (p, &(start, end)) in bounds.iter().enumerate() {
        let held = end - start;
        let share = if available == 0 {
            0
        } else {
            (u128::from(to_read) * u128::from(held) / u128::from(available)) as u64
        };
        given += share;
        out.push((p as u32, start, share));
    }
    // Rounding left a few: give them to partitions with records to spare.
    for (entry, &(start, end)) in out.iter_mut().zip(bounds) {
        if given >= to_read {
            break;
        }
        let spare = (end - start) - entry.2;
        let extra = spare.min(to_read - given);
        entry.2 += extra;
        given += extra;
    }
    out
}

fn bench_consume(connect: &ConnectArgs, args: &ConsumeBenchArgs) -> anyhow::Result<Summary> {
    let topic = args.topic.as_str();
    let (clients, bounds) = smol::block_on(async {
        let clients = connect_clients(connect, args.consumers).await?;
        let partitions = match clients[0].partition_count(topic).await {
            Ok(n) => n,
            Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => bail!(
                "topic {topic} does not exist: fill it first with \
                 `eddy bench produce --topic {topic}`"
            ),
            Err(e) => return Err(explain(e)),
        };
        let bounds = offsets(&clients[0], topic, partitions).await?;
        anyhow::Ok((clients, bounds))
    })?;
    let partitions = bounds.len() as u32;
    if args.consumers > partitions {
        bail!(
            "{} consumers for {partitions} partition{}: a partition is read by one consumer \
             (use --consumers {partitions} or fewer)",
            args.consumers,
            if partitions == 1 { "" } else { "s" }
        );
    }
    let available: u64 = bounds.iter().map(|(s, e)| e - s).sum();
    if available == 0 {
        bail!(
            "topic {topic} holds no records: fill it first with \
             `eddy bench produce --topic {topic}`"
        );
    }
    let to_read = args.count.min(available);
    if to_read < args.count {
        log::info!("topic {topic} holds {available} records; reading them all");
    }
    let quotas = quotas(&bounds, to_read);
    let plans: Vec<ConsumerPlan> = (0..args.consumers)
        .map(|i| {
            let mine: Vec<&(u32, u64, u64)> = quotas
                .iter()
                .filter(|(p, _, _)| p % args.consumers == i)
                .collect();
            ConsumerPlan {
                topic: topic.to_owned(),
                partitions: mine.iter().map(|&&(p, start, _)| (p, start)).collect(),
                target: Arc::new(AtomicU64::new(mine.iter().map(|q| q.2).sum())),
                stamp: None,
                warmup_ns: 0,
            }
        })
        .collect();
    let bar = progress(args.output.json, Some(to_read), "records");
    let start = Arc::new(Barrier::new(args.consumers as usize + 1));
    let handles = spawn_consumers(
        clients,
        &consumer_config(args.fetch_bytes),
        plans,
        &bar,
        &start,
    )?;
    start.wait();
    let started = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut finished = started;
    let mut first_failure = None;
    for handle in handles {
        match join(handle)? {
            Ok(outcome) => {
                records += outcome.records;
                bytes += outcome.bytes;
                finished = finished.max(outcome.finished);
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = first_failure {
        return Err(e);
    }
    Ok(Summary {
        mode: "consume",
        topic: topic.to_owned(),
        partitions,
        producers: 0,
        consumers: args.consumers,
        record_size: if records == 0 {
            0.0
        } else {
            bytes as f64 / records as f64
        },
        producer: None,
        offered_mb_per_sec: None,
        warmup_ms: None,
        records,
        bytes,
        elapsed_secs: finished.duration_since(started).as_secs_f64(),
        records_per_sec: 0.0,
        mb_per_sec: 0.0,
        consumed: None,
        latencies: Vec::new(),
        errors: 0,
    }
    .with_rates())
}

fn bench_e2e(connect: &ConnectArgs, args: &E2eBenchArgs) -> anyhow::Result<Summary> {
    let amount = &args.amount;
    if (amount.record_size as usize) < STAMP_BYTES {
        bail!(
            "e2e records carry their send time in their first {STAMP_BYTES} bytes: \
             use --record-size {STAMP_BYTES} or more"
        );
    }
    let config = args.producer.producer_config(amount.record_size, 0);
    config.validate().map_err(produce_error)?;
    let limit = amount.limit(Limit::Duration(Duration::from_secs(
        E2E_DURATION_SECS_DEFAULT,
    )));
    let producers = args.producer.producers;
    let (clients, consumer_client, bounds) = smol::block_on(async {
        let clients = connect_clients(connect, producers).await?;
        let consumer_client = connect.connect().await?;
        let partitions =
            ensure_topic(&clients[0], &amount.topic, args.producer.partitions()).await?;
        let bounds = offsets(&clients[0], &amount.topic, partitions).await?;
        anyhow::Ok((clients, consumer_client, bounds))
    })?;
    let partitions = bounds.len() as u32;
    let records_per_sec = args.rate * 1e6 / f64::from(amount.record_size);
    let clock = Clock(Instant::now());
    let plan = ProducerPlan {
        topic: amount.topic.clone(),
        records: match limit {
            Limit::Records(n) => Some(n),
            Limit::Duration(_) => None,
        },
        duration: match limit {
            Limit::Records(_) => None,
            Limit::Duration(d) => Some(d),
        },
        record_size: amount.record_size as usize,
        sample_every: ((records_per_sec / E2E_ACK_SAMPLES_PER_SEC) as u64).max(1),
        rate: Some(records_per_sec),
        stamp: Some(clock),
        warmup: Duration::from_millis(args.warmup_ms),
        seed: now_ms() as u64,
    };
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let consumer_plan = ConsumerPlan {
        topic: amount.topic.clone(),
        // Only what is produced from now on.
        partitions: bounds
            .iter()
            .enumerate()
            .map(|(p, &(_, end))| (p as u32, end))
            .collect(),
        target: target.clone(),
        stamp: Some(clock),
        warmup_ns: args.warmup_ms.saturating_mul(1_000_000),
    };
    let bar = match limit {
        Limit::Records(n) => progress(args.output.json, Some(n), "records"),
        Limit::Duration(_) => progress(args.output.json, None, "records"),
    };
    let start = Arc::new(Barrier::new(producers as usize + 2));
    let sent_total = Arc::new(AtomicU64::new(0));
    let consumers = spawn_consumers(
        vec![consumer_client],
        &consumer_config(args.fetch_bytes),
        vec![consumer_plan],
        &ProgressBar::hidden(),
        &start,
    )?;
    let threads = spawn_producers(&clients, &config, &plan, &bar, &sent_total, &start)?;
    start.wait();
    let started = Instant::now();
    let produced = join_producers(threads, started);
    smol::block_on(async {
        for client in &clients {
            client.close().await;
        }
    });
    // The consumer stops once it has seen everything sent (or gives up when
    // nothing more comes).
    let sent = produced.as_ref().map_or(0, |d| d.sent);
    target.store(sent, Ordering::Release);
    let mut consumed = None;
    for handle in consumers {
        consumed = Some(join(handle)?);
    }
    bar.finish_and_clear();
    let done = produced?;
    let consumed = consumed
        .ok_or_else(|| anyhow!("the consumer thread did not start"))?
        .context("the e2e consumer failed")?;
    if let Some(e) = done.first_error {
        bail!(
            "{} sampled records failed; first error: {}",
            done.failed,
            produce_error(e)
        );
    }
    let mut latencies = Vec::new();
    latencies.extend(LatencySummary::from_histogram(
        "end to end",
        &consumed.latency,
    ));
    latencies.extend(LatencySummary::from_histogram("ack (sampled)", &done.acks));
    Ok(Summary {
        mode: "e2e",
        topic: amount.topic.clone(),
        partitions,
        producers,
        consumers: 1,
        record_size: f64::from(amount.record_size),
        producer: Some(ProducerSettings::new(&config, amount.record_size)),
        offered_mb_per_sec: Some(args.rate),
        warmup_ms: Some(args.warmup_ms),
        records: done.sent,
        bytes: done.sent * u64::from(amount.record_size),
        elapsed_secs: done.finished.duration_since(started).as_secs_f64(),
        records_per_sec: 0.0,
        mb_per_sec: 0.0,
        consumed: Some(consumed.records),
        latencies,
        errors: done.failed,
    }
    .with_rates())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;
    use eddy_core::batch::{BatchBuilder, BatchOptions};

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("eddy").chain(args.iter().copied()))?;
        match cli.command {
            Command::Bench(args) => Ok(args),
            _ => panic!("expected bench"),
        }
    }

    fn produce(args: &[&str]) -> (ProduceBenchArgs, ConnectArgs) {
        let mut argv = vec!["bench", "produce"];
        argv.extend_from_slice(args);
        let bench = parse(&argv).expect("arguments parse");
        match bench.command {
            BenchCommand::Produce(a) => (a, bench.connect),
            other => panic!("expected produce, got {other:?}"),
        }
    }

    #[test]
    fn produce_defaults() {
        let (args, connect) = produce(&[]);
        assert_eq!(args.amount.topic, TOPIC_DEFAULT);
        assert_eq!(args.amount.record_size, 100);
        assert_eq!(
            args.amount.limit(Limit::Records(COUNT_DEFAULT)),
            Limit::Records(1_000_000)
        );
        assert_eq!(args.producer.producers, 1);
        assert_eq!(args.producer.partitions(), 1);
        assert_eq!(args.producer.acks, Acks::Leader);
        assert_eq!(connect.server, "127.0.0.1:7878");
        let config = args.producer.producer_config(100, 5);
        assert_eq!(config.linger_ms, 5);
        assert_eq!(config.compression, Compression::None);
        assert_eq!(records_per_batch(config.batch_size, 100), 1000);
        config.validate().expect("valid");
        assert!(!args.output.json);
    }

    #[test]
    fn produce_flags() {
        let (args, connect) = produce(&[
            "--producers",
            "2",
            "--record-size",
            "1024",
            "--batch-records",
            "500",
            "--acks",
            "all",
            "--compression",
            "lz4",
            "--linger-ms",
            "7",
            "--duration-secs",
            "30",
            "--topic",
            "t",
            "--json",
            "--server",
            "10.0.0.5:7878",
            "--ca",
            "/etc/eddy/ca.pem",
        ]);
        assert_eq!(args.producer.partitions(), 2, "one partition per producer");
        assert_eq!(
            args.amount.limit(Limit::Records(COUNT_DEFAULT)),
            Limit::Duration(Duration::from_secs(30))
        );
        let config = args.producer.producer_config(1024, 5);
        assert_eq!(config.acks, Acks::All);
        assert_eq!(config.compression, Compression::Lz4);
        assert_eq!(config.linger_ms, 7);
        assert_eq!(records_per_batch(config.batch_size, 1024), 500);
        assert_eq!(config.buffer_memory, u64::from(config.batch_size) * 7);
        config.validate().expect("valid");
        assert!(args.output.json);
        assert_eq!(args.amount.topic, "t");
        assert_eq!(connect.server, "10.0.0.5:7878");
        assert_eq!(
            connect.ca_file,
            std::path::PathBuf::from("/etc/eddy/ca.pem")
        );
    }

    #[test]
    fn bad_produce_flags_are_refused() {
        let bad = |extra: &[&str]| {
            let mut argv = vec!["bench", "produce"];
            argv.extend_from_slice(extra);
            parse(&argv).is_err()
        };
        assert!(bad(&["--count", "10", "--duration-secs", "5"]));
        assert!(bad(&["--batch-size", "1000", "--batch-records", "10"]));
        assert!(bad(&["--acks", "2"]));
        assert!(bad(&["--compression", "snappy"]));
        assert!(bad(&["--producers", "0"]));
        assert!(bad(&["--record-size", "0"]));
        assert!(bad(&["--count", "0"]));
        assert!(!bad(&["--batch-size", "65536", "--partitions", "4"]));
        let (args, _) = produce(&["--buffer-memory", "33554432"]);
        assert_eq!(
            args.producer.producer_config(100, 5).buffer_memory,
            33_554_432
        );
    }

    #[test]
    fn consume_and_e2e_flags() {
        let bench = parse(&[
            "bench",
            "consume",
            "--count",
            "5000",
            "--consumers",
            "2",
            "--topic",
            "x",
        ])
        .expect("parses");
        let BenchCommand::Consume(c) = bench.command else {
            panic!("expected consume");
        };
        assert_eq!((c.count, c.consumers, c.topic.as_str()), (5000, 2, "x"));
        assert_eq!(c.fetch_bytes, FETCH_BYTES_DEFAULT);

        let bench = parse(&["bench", "e2e", "--rate", "5.5"]).expect("parses");
        let BenchCommand::E2e(e) = bench.command else {
            panic!("expected e2e");
        };
        assert_eq!(e.rate, 5.5);
        assert_eq!(
            e.amount.limit(Limit::Duration(Duration::from_secs(10))),
            Limit::Duration(Duration::from_secs(10))
        );
        assert_eq!(e.producer.producer_config(100, 0).linger_ms, 0);
        let default = parse(&["bench", "e2e"]).expect("parses");
        let BenchCommand::E2e(e) = default.command else {
            panic!("expected e2e");
        };
        assert_eq!(e.rate, 20.0);
        assert_eq!(e.warmup_ms, E2E_WARMUP_MS_DEFAULT);
        let BenchCommand::E2e(e) = parse(&["bench", "e2e", "--warmup-ms", "0"])
            .expect("parses")
            .command
        else {
            panic!("expected e2e");
        };
        assert_eq!(e.warmup_ms, 0);
        assert!(parse(&["bench", "e2e", "--warmup-ms", "600001"]).is_err());
        assert!(parse(&["bench", "e2e", "--rate", "0"]).is_err());
        assert!(parse(&["bench", "e2e", "--rate", "fast"]).is_err());
        assert!(parse(&["bench", "consume", "--consumers", "0"]).is_err());
    }

    /// The size math must agree with the real batch encoding and with the
    /// producer's rule: seal when the next record's bound would not fit.
    #[test]
    fn batch_size_for_records_holds_exactly_that_many() {
        for value_len in [1u32, 8, 100, 1024, 10_000] {
            for records in [1u32, 2, 63, 64, 65, 1000, 8192] {
                let batch_size = batch_size_for_records(records, value_len);
                let bound = PRODUCER_RECORD_BOUND_FIXED + u64::from(value_len);
                let value = vec![b'x'; value_len as usize];
                let mut builder = BatchBuilder::new(BatchOptions::default());
                let mut held = 0u32;
                loop {
                    let size = builder.size_estimate() as u64;
                    if !builder.is_empty() && size + bound > batch_size {
                        break;
                    }
                    let before = builder.size_estimate() as u64;
                    builder
                        .push(1_700_000_000_000, None, Some(&value), &[])
                        .expect("push");
                    assert_eq!(
                        builder.size_estimate() as u64 - before,
                        encoded_record_len(value_len, held),
                        "encoded size of record {held} of {value_len} bytes"
                    );
                    held += 1;
                    if builder.size_estimate() as u64 >= batch_size {
                        break;
                    }
                }
                assert_eq!(held, records, "{value_len}-byte records");
                assert_eq!(records_per_batch(batch_size as u32, value_len), records);
            }
        }
    }

    #[test]
    fn the_default_batch_is_capped() {
        let (args, _) = produce(&["--record-size", "1024"]);
        let size = args.producer.batch_size(1024);
        assert!(u64::from(size) <= BATCH_BYTES_DEFAULT_MAX);
        assert!(records_per_batch(size, 1024) < 1000);
        let (args, _) = produce(&["--batch-size", "16384"]);
        assert_eq!(args.producer.batch_size(100), 16_384);
        assert_eq!(records_per_batch(1, 100), 1, "a lone record always fits");
    }

    #[test]
    fn quotas_follow_what_partitions_hold() {
        let bounds = [(0, 100), (10, 310), (0, 0)];
        let q = quotas(&bounds, 200);
        assert_eq!(q.iter().map(|e| e.2).sum::<u64>(), 200);
        assert_eq!(q[0], (0, 0, 50));
        assert_eq!(q[1], (1, 10, 150));
        assert_eq!(q[2], (2, 0, 0));
        // More than available: all of it.
        let q = quotas(&bounds, 10_000);
        assert_eq!(q.iter().map(|e| e.2).collect::<Vec<_>>(), vec![100, 300, 0]);
        // Rounding leftovers still add up.
        let q = quotas(&[(0, 3), (0, 3), (0, 3)], 7);
        assert_eq!(q.iter().map(|e| e.2).sum::<u64>(), 7);
        assert!(q.iter().all(|e| e.2 <= 3));
    }

    fn sample_summary() -> Summary {
        let mut ns = new_histogram();
        for v in 1..=1000u64 {
            ns.record(v * 1000).expect("in range");
        }
        Summary {
            mode: "produce",
            topic: "eddy-bench".into(),
            partitions: 2,
            producers: 2,
            consumers: 0,
            record_size: 100.0,
            producer: Some(ProducerSettings {
                acks: "1",
                compression: "none",
                batch_size: 110_123,
                batch_records: 1000,
                linger_ms: 5,
                max_in_flight: 5,
                buffer_memory: 770_161,
            }),
            offered_mb_per_sec: None,
            warmup_ms: None,
            records: 2_000_000,
            bytes: 200_000_000,
            elapsed_secs: 0.8,
            records_per_sec: 0.0,
            mb_per_sec: 0.0,
            consumed: None,
            latencies: LatencySummary::from_histogram("ack", &ns)
                .into_iter()
                .collect(),
            errors: 0,
        }
        .with_rates()
    }

    #[test]
    fn summary_rates_and_percentiles() {
        let s = sample_summary();
        assert_eq!(s.records_per_sec, 2_500_000.0);
        assert_eq!(s.mb_per_sec, 250.0);
        let l = &s.latencies[0];
        assert_eq!(l.samples, 1000);
        // 3 significant digits: within 0.1 %.
        assert!((l.p50_us - 500.0).abs() <= 0.5, "{}", l.p50_us);
        assert!((l.p99_us - 990.0).abs() <= 1.0, "{}", l.p99_us);
        assert!((l.p999_us - 999.0).abs() <= 1.0, "{}", l.p999_us);
        assert!((l.max_us - 1000.0).abs() <= 1.0, "{}", l.max_us);
        assert!(LatencySummary::from_histogram("empty", &new_histogram()).is_none());
    }

    #[test]
    fn summary_table_is_aligned() {
        let text = sample_summary().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "bench          produce");
        assert_eq!(lines[1], "topic          eddy-bench (2 partitions)");
        assert!(
            lines.contains(&"batch.size     110,123 B (1,000 records)"),
            "{text}"
        );
        assert!(
            lines.contains(&"produced       2,000,000 records, 200,000,000 bytes"),
            "{text}"
        );
        assert!(
            lines.contains(&"throughput     2,500,000 records/s, 250.0 MB/s"),
            "{text}"
        );
        assert!(lines.contains(&"elapsed        0.800 s"), "{text}");
        // Every value of the settings block starts in the same column.
        let block: Vec<&str> = lines
            .iter()
            .copied()
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(
            block
                .iter()
                .all(|l| l.as_bytes()[15] != b' ' && &l[13..15] == "  ")
        );
        // The latency table: header, then one row in its columns.
        let header = lines
            .iter()
            .position(|l| l.starts_with("LATENCY"))
            .expect("table");
        let row = lines[header + 1];
        let p99_col = lines[header].find("P99 ").expect("P99 column");
        assert!(row.starts_with("ack"), "{row}");
        assert_eq!(&row[p99_col..p99_col + 9], "0.990 ms ");
        assert!(!text.contains("errors"), "no errors line without errors");
    }

    #[test]
    fn summary_json_is_one_object() {
        let json = sample_summary().to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["mode"], "produce");
        assert_eq!(value["records"], 2_000_000);
        assert_eq!(value["records_per_sec"], 2_500_000.0);
        assert_eq!(value["producer"]["batch_size"], 110_123);
        assert_eq!(value["producer"]["acks"], "1");
        assert_eq!(value["latencies"][0]["name"], "ack");
        assert_eq!(value["latencies"][0]["samples"], 1000);
        assert!(value.get("offered_mb_per_sec").is_none());
        assert!(value.get("consumed").is_none());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn values_are_letters() {
        let mut value = vec![0u8; 64];
        fill_value(&mut value, 7);
        assert!(value.iter().all(u8::is_ascii_lowercase));
    }
}
