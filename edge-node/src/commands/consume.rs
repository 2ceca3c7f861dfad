//! `eddy consume TOPIC`: records to standard output, as text or JSON lines.
//!
//! With `--group G` the consumer subscribes as a member of group G: the node
//! assigns it partitions and it starts at the group's committed offsets. By
//! default it commits after each batch of records is written and flushed (so
//! a clean stop neither loses nor repeats records); with
//! `--consumer-property enable.auto.commit=true` it commits in the background
//! instead. SIGINT / SIGTERM commit and leave the group before exiting.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{ArgGroup, Args, ValueEnum};
use eddy_client::protocol::ErrorCode;
use eddy_client::{
    AutoOffsetReset, CommitOffset, ConsumeError, Consumer, ConsumerConfig, ConsumerRecord,
};

use super::format::{record_json, write_text};
use super::{ConnectArgs, explain};

/// Longest single poll: the loop comes back this often to check its stop conditions.
const POLL_SLICE_MS: u64 = 1000;
/// How long placing a partition (`--from-beginning`, `--timestamp`, the
/// end) keeps retrying retriable errors (a leader moving, or just started).
const SEEK_RETRY_MS: u64 = 30_000;
/// Pause between two such tries.
const SEEK_RETRY_PAUSE_MS: u64 = 200;

/// Output format of `eddy consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value per line (`key<TAB>value` with --print-key).
    Text,
    /// One JSON object per line: topic, partition, offset, timestamp, key, value,
    /// headers (key/value are UTF-8 strings or null; bytes that are not UTF-8 go
    /// under key_b64/value_b64 in base64; headers are an array of {key, value}).
    Json,
}

/// Arguments of `eddy consume`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").args(["from_beginning", "offset", "timestamp"])))]
#[command(group(ArgGroup::new("grouped").args(["group"]).conflicts_with_all(["partition", "offset", "timestamp"])))]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (default: all).
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// Start at the oldest record kept (default: only records produced from now on).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
    /// Start at the first record with a timestamp at or after MS (ms since the epoch).
    #[arg(long, value_name = "MS")]
    pub timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Stop when no record has come for this long (default: wait forever).
    #[arg(long, value_name = "T")]
    pub timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// With --format text, print `key<TAB>value`.
    #[arg(long)]
    pub print_key: bool,
    /// Read as a member of this consumer group: partitions are shared with the
    /// group's other members and reading resumes at the committed offsets
    /// (--from-beginning then only matters for partitions without one).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// A consumer setting by its Kafka name, e.g. session.timeout.ms=10000,
    /// enable.auto.commit=true, partition.assignment.strategy=cooperative-sticky;
    /// repeatable.
    #[arg(long = "consumer-property", value_name = "NAME=VALUE", value_parser = super::parse_name_value)]
    pub consumer_properties: Vec<(String, String)>,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl ConsumeArgs {
    /// The consumer config these flags describe.
    pub fn consumer_config(&self) -> anyhow::Result<ConsumerConfig> {
        let mut config = ConsumerConfig {
            // Also what an offset out of the log falls back to (Kafka's console
            // consumer: latest unless --from-beginning).
            auto_offset_reset: if self.from_beginning {
                AutoOffsetReset::Earliest
            } else {
                AutoOffsetReset::Latest
            },
            group_id: self.group.clone(),
            client_id: "eddy-consume".to_owned(),
            // The command commits after writing each batch, unless told otherwise.
            enable_auto_commit: false,
            ..ConsumerConfig::default()
        };
        for (name, value) in &self.consumer_properties {
            config
                .set(name, value)
                .map_err(|e| anyhow!("--consumer-property {name}={value}: {e}"))?;
        }
        config.validate().map_err(|e| anyhow!("{e}"))?;
        Ok(config)
    }
}

/// Runs `eddy consume`.
pub fn run(args: &ConsumeArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let config = args.consumer_config()?;
        let mut consumer = Consumer::new(client.clone(), config)?;
        let stop = Arc::new(AtomicBool::new(false));
        if args.group.is_some() {
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, stop.clone())
                    .map_err(|e| anyhow!("cannot install a signal handler: {e}"))?;
            }
        }
        let mut result = consume(args, &mut consumer, &stop).await;
        if args.group.is_some() {
            // Commit what was written and leave, so the others take over at once.
            if let Err(e) = consumer.close().await
                && result.is_ok()
            {
                result = Err(consume_error(e));
            }
        } else {
            drop(consumer);
        }
        client.close().await;
        let count = result?;
        eprintln!("consumed {count} records");
        Ok(())
    })
}

async fn consume(
    args: &ConsumeArgs,
    consumer: &mut Consumer,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let topic = args.topic.as_str();
    if args.group.is_some() {
        consumer
            .subscribe(vec![topic.to_owned()])
            .map_err(consume_error)?;
    } else {
        assign_all(args, consumer).await?;
    }
    let committing = args.group.is_some() && !consumer.config().enable_auto_commit;

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_record = Instant::now();
    'polling: loop {
        if args.max_messages.is_some_and(|max| count >= max) || stop.load(Ordering::Relaxed) {
            break;
        }
        let slice = Duration::from_millis(POLL_SLICE_MS);
        let wait = match args.timeout_ms {
            Some(ms) => {
                let left = Duration::from_millis(ms).saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(slice)
            }
            None => slice,
        };
        let records = match consumer.poll(wait).await {
            Ok(records) => records,
            Err(e) if e.is_retriable() || is_rebalance(&e) => {
                log::warn!("{e}; retrying");
                continue;
            }
            Err(e) => return Err(consume_error(e)),
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        let mut written = 0usize;
        for record in &records {
            if let Err(e) = write_record(&mut out, record, args) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    // `eddy consume … | head`: the reader has what it wanted.
                    return Ok(count);
                }
                return Err(anyhow!("cannot write to standard output: {e}"));
            }
            count += 1;
            written += 1;
            if args.max_messages.is_some_and(|max| count >= max) {
                break;
            }
        }
        if let Err(e) = out.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(count);
            }
            return Err(anyhow!("cannot write to standard output: {e}"));
        }
        if committing {
            // Commit exactly what was written: with --max-messages the rest of
            // this batch stays for the next reader.
            let offsets = next_offsets(&records[..written]);
            if let Err(e) = consumer.commit_offsets(offsets).await {
                log::warn!("commit failed: {e}");
                if !(e.is_retriable() || is_rebalance(&e)) {
                    return Err(consume_error(e));
                }
            }
        }
        if args.max_messages.is_some_and(|max| count >= max) {
            break 'polling;
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow!("cannot write to standard output: {e}"))
        }
        _ => Ok(count),
    }
}

/// For each partition in `records`, the offset after its last record.
fn next_offsets(records: &[ConsumerRecord]) -> Vec<CommitOffset> {
    let mut next: std::collections::BTreeMap<(&str, u32), u64> = Default::default();
    for r in records {
        let e = next.entry((&*r.topic, r.partition)).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    next.into_iter()
        .map(|((topic, partition), offset)| CommitOffset {
            topic: topic.to_owned(),
            partition,
            offset,
            metadata: String::new(),
        })
        .collect()
}

/// A commit or poll failure that re-joining the group fixes.
fn is_rebalance(e: &ConsumeError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::RebalanceInProgress
                | ErrorCode::IllegalGeneration
                | ErrorCode::UnknownMemberId
        )
    )
}

/// Assigns every partition (or the one asked for) and seeks per the flags.
async fn assign_all(args: &ConsumeArgs, consumer: &mut Consumer) -> anyhow::Result<()> {
    let topic = args.topic.as_str();
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let count = consumer
                .partition_count(topic)
                .await
                .map_err(consume_error)?;
            (0..count).collect()
        }
    };
    consumer.assign(partitions.iter().map(|&p| (topic.to_owned(), p)).collect());
    for &p in &partitions {
        // A leader moving or just started (retriable errors) is waited for,
        // as the polling loop does, for at most SEEK_RETRY_MS.
        let started = Instant::now();
        loop {
            let placed = if let Some(offset) = args.offset {
                consumer.seek(topic, p, offset)
            } else if let Some(ms) = args.timestamp {
                consumer.seek_to_timestamp(topic, p, ms).await
            } else if args.from_beginning {
                consumer.seek_to_beginning(topic, p).await
            } else {
                consumer.seek_to_end(topic, p).await
            };
            match placed {
                Ok(()) => break,
                Err(e)
                    if e.is_retriable()
                        && started.elapsed() < Duration::from_millis(SEEK_RETRY_MS) =>
                {
                    log::warn!("{topic}-{p}: {e}; retrying");
                    smol::Timer::after(Duration::from_millis(SEEK_RETRY_PAUSE_MS)).await;
                }
                Err(e) => return Err(consume_error(e)),
            }
        }
    }
    Ok(())
}

fn write_record(
    out: &mut dyn Write,
    record: &ConsumerRecord,
    args: &ConsumeArgs,
) -> io::Result<()> {
    match args.format {
        Format::Text => write_text(out, record, args.print_key),
        Format::Json => {
            out.write_all(record_json(record).as_bytes())?;
            out.write_all(b"\n")
        }
    }
}

fn consume_error(e: ConsumeError) -> anyhow::Error {
    match e {
        ConsumeError::Client(e) => explain(e),
        ConsumeError::OffsetOutOfRange { .. } | ConsumeError::NoOffset { .. } => {
            anyhow!("{e} (use --from-beginning, or an --offset inside the log)")
        }
        other => anyhow!(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("eddy").chain(args.iter().copied()))?;
        match cli.command {
            Command::Consume(args) => Ok(args),
            _ => panic!("expected consume"),
        }
    }

    #[test]
    fn start_positions_are_exclusive() {
        assert!(parse(&["consume", "t", "--from-beginning", "--offset", "3"]).is_err());
        assert!(parse(&["consume", "t", "--offset", "3", "--timestamp", "5"]).is_err());
        let args = parse(&["consume", "t", "--offset", "3"]).expect("parses");
        assert_eq!(args.offset, Some(3));
        assert_eq!(
            args.consumer_config().expect("config").auto_offset_reset,
            AutoOffsetReset::Latest
        );
    }

    #[test]
    fn group_flags() {
        let args = parse(&[
            "consume",
            "t",
            "--group",
            "g",
            "--consumer-property",
            "session.timeout.ms=2000",
            "--consumer-property",
            "heartbeat.interval.ms=500",
            "--consumer-property",
            "enable.auto.commit=true",
        ])
        .expect("parses");
        let config = args.consumer_config().expect("config");
        assert_eq!(config.group_id.as_deref(), Some("g"));
        assert_eq!(config.session_timeout_ms, 2000);
        assert!(config.enable_auto_commit);
        assert!(parse(&["consume", "t", "--group", "g", "--partition", "1"]).is_err());
        let bad =
            parse(&["consume", "t", "--consumer-property", "session.timeout=1"]).expect("parses");
        assert!(bad.consumer_config().is_err());
    }

    #[test]
    fn flags_parse() {
        let args = parse(&[
            "consume",
            "sensors",
            "--from-beginning",
            "--partition",
            "1",
            "--max-messages",
            "10",
            "--timeout-ms",
            "2000",
            "--format",
            "json",
            "--server",
            "127.0.0.1:9000",
        ])
        .expect("parses");
        assert_eq!(args.topic, "sensors");
        assert_eq!(args.partition, Some(1));
        assert_eq!(args.max_messages, Some(10));
        assert_eq!(args.timeout_ms, Some(2000));
        assert_eq!(args.format, Format::Json);
        assert_eq!(args.connect.server, "127.0.0.1:9000");
        assert_eq!(
            args.consumer_config().expect("config").auto_offset_reset,
            AutoOffsetReset::Earliest
        );
        assert!(parse(&["consume", "t", "--format", "xml"]).is_err());
    }
}
