//! `eddy consume TOPIC`: records to standard output, as text or JSON lines.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{ArgGroup, Args, ValueEnum};
use eddy_client::{AutoOffsetReset, ConsumeError, Consumer, ConsumerConfig, ConsumerRecord};

use super::format::{record_json, write_text};
use super::{ConnectArgs, explain};

/// Longest single poll: the loop comes back this often to check its stop conditions.
const POLL_SLICE_MS: u64 = 1000;

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
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl ConsumeArgs {
    /// The consumer config these flags describe.
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            // Also what an offset out of the log falls back to (Kafka's console
            // consumer: latest unless --from-beginning).
            auto_offset_reset: if self.from_beginning {
                AutoOffsetReset::Earliest
            } else {
                AutoOffsetReset::Latest
            },
            ..ConsumerConfig::default()
        }
    }
}

/// Runs `eddy consume`.
pub fn run(args: &ConsumeArgs) -> anyhow::Result<()> {
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let mut consumer = Consumer::new(client.clone(), args.consumer_config())?;
        let result = consume(args, &mut consumer).await;
        drop(consumer);
        client.close().await;
        let count = result?;
        eprintln!("consumed {count} records");
        Ok(())
    })
}

async fn consume(args: &ConsumeArgs, consumer: &mut Consumer) -> anyhow::Result<u64> {
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
        let placed = if let Some(offset) = args.offset {
            consumer.seek(topic, p, offset)
        } else if let Some(ms) = args.timestamp {
            consumer.seek_to_timestamp(topic, p, ms).await
        } else if args.from_beginning {
            consumer.seek_to_beginning(topic, p).await
        } else {
            consumer.seek_to_end(topic, p).await
        };
        placed.map_err(consume_error)?;
    }

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_record = Instant::now();
    'polling: loop {
        if args.max_messages.is_some_and(|max| count >= max) {
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
            Err(e) if e.is_retriable() => {
                log::warn!("{e}; retrying");
                continue;
            }
            Err(e) => return Err(consume_error(e)),
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        for record in &records {
            if let Err(e) = write_record(&mut out, record, args) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    // `eddy consume … | head`: the reader has what it wanted.
                    return Ok(count);
                }
                return Err(anyhow!("cannot write to standard output: {e}"));
            }
            count += 1;
            if args.max_messages.is_some_and(|max| count >= max) {
                break 'polling;
            }
        }
        if let Err(e) = out.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(count);
            }
            return Err(anyhow!("cannot write to standard output: {e}"));
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow!("cannot write to standard output: {e}"))
        }
        _ => Ok(count),
    }
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
            args.consumer_config().auto_offset_reset,
            AutoOffsetReset::Latest
        );
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
            args.consumer_config().auto_offset_reset,
            AutoOffsetReset::Earliest
        );
        assert!(parse(&["consume", "t", "--format", "xml"]).is_err());
    }
}
