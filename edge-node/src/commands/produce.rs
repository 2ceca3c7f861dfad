//! `eddy produce TOPIC`: one record per line of standard input.

use std::collections::VecDeque;
use std::io::{self, BufRead};

use anyhow::anyhow;
use clap::Args;
use eddy_client::producer::parse_acks;
use eddy_client::{
    Acks, Compression, DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecordRef,
};
use futures_lite::future;

use super::{ConnectArgs, explain};

/// Largest line read from standard input; a longer one stops the command.
const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Arguments of `eddy produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Write every record to this partition (default: by key, else sticky).
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// Split each line at the first SEP into key and value (a line without SEP is an error).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// When the node acknowledges: 0 (never: nothing is confirmed), 1 (leader
    /// appended) or all.
    #[arg(long, default_value = "all", value_parser = parse_acks_arg)]
    pub acks: Acks,
    /// Batch compression: none, lz4, zstd or gzip.
    #[arg(long, default_value = "none", value_parser = parse_compression_arg)]
    pub compression: Compression,
    /// How long a batch waits for more records (Kafka's linger.ms).
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub linger_ms: u32,
    /// Most bytes per batch (Kafka's batch.size).
    #[arg(long, default_value_t = 16_384, value_name = "BYTES")]
    pub batch_size: u32,
    /// The node.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(super) fn parse_acks_arg(s: &str) -> Result<Acks, String> {
    parse_acks(s).ok_or_else(|| format!("expected 0, 1 or all, got `{s}`"))
}

pub(super) fn parse_compression_arg(s: &str) -> Result<Compression, String> {
    match Compression::from_name(s) {
        Some(Compression::Snappy) | None => {
            Err(format!("expected none, lz4, zstd or gzip, got `{s}`"))
        }
        Some(codec) => Ok(codec),
    }
}

impl ProduceArgs {
    /// The producer config these flags describe. One request in flight at a time:
    /// lines keep their order even when a batch is retried after a reconnect.
    pub fn producer_config(&self) -> ProducerConfig {
        ProducerConfig {
            acks: self.acks,
            compression: self.compression,
            linger_ms: self.linger_ms,
            batch_size: self.batch_size,
            max_in_flight_requests_per_connection: 1,
            ..ProducerConfig::default()
        }
    }
}

/// Splits a line (without its line ending) into key and value.
pub fn split_line<'a>(
    line: &'a [u8],
    separator: Option<&[u8]>,
) -> Option<(Option<&'a [u8]>, &'a [u8])> {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else {
        return Some((None, line));
    };
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((Some(&line[..at]), &line[at + sep.len()..]))
}

/// Removes `\n` or `\r\n` from the end.
fn trim_line_ending(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// Counts outcomes; remembers the first failure.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    first_error: Option<ProduceError>,
}

impl Tally {
    fn record(&mut self, outcome: Result<eddy_client::RecordMetadata, ProduceError>) {
        match outcome {
            Ok(_) => self.acknowledged += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Runs `eddy produce`.
pub fn run(args: &ProduceArgs) -> anyhow::Result<()> {
    let config = args.producer_config();
    config.validate()?;
    smol::block_on(async {
        let client = args.connect.connect().await?;
        let producer = Producer::new(client.clone(), config)?;
        let stdin = io::stdin();
        let result = produce_lines(args, &producer, &mut stdin.lock()).await;
        producer.close().await;
        client.close().await;
        result
    })
}

async fn produce_lines(
    args: &ProduceArgs,
    producer: &Producer,
    input: &mut impl BufRead,
) -> anyhow::Result<()> {
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut tally = Tally::default();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut line = Vec::new();
    let mut line_number = 0u64;
    let mut stopped: Option<anyhow::Error> = None;
    loop {
        line.clear();
        let read =
            io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) => break,
            Ok(n) if n > LINE_BYTES_MAX => {
                stopped = Some(anyhow!(
                    "line {} is longer than {LINE_BYTES_MAX} bytes",
                    line_number + 1
                ));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                stopped = Some(anyhow!("cannot read standard input: {e}"));
                break;
            }
        }
        line_number += 1;
        trim_line_ending(&mut line);
        let Some((key, value)) = split_line(&line, separator) else {
            stopped = Some(anyhow!(
                "line {line_number} has no key separator `{}` (records before it were sent)",
                args.key_separator.as_deref().unwrap_or_default()
            ));
            break;
        };
        let record = ProducerRecordRef {
            topic: &args.topic,
            partition: args.partition,
            key,
            value: Some(value),
            headers: &[],
            timestamp: None,
        };
        match producer.send_ref(record).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(e) => {
                stopped = Some(produce_error(e));
                break;
            }
        }
        // Collect what is already done, to keep the queue short.
        while let Some(front) = pending.front_mut() {
            match future::poll_once(front).await {
                Some(outcome) => {
                    pending.pop_front();
                    tally.record(outcome);
                }
                None => break,
            }
        }
    }
    producer.flush().await;
    for delivery in pending {
        tally.record(delivery.await);
    }
    let acked = if args.acks == Acks::None {
        "sent (acks=0: not confirmed)"
    } else {
        "produced"
    };
    eprintln!("{acked} {} records", tally.acknowledged);
    if let Some(e) = tally.first_error {
        let total = tally.acknowledged + tally.failed;
        return Err(anyhow!(
            "{} of {total} records were not acknowledged; first error: {}",
            tally.failed,
            produce_error(e)
        ));
    }
    match stopped {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn produce_error(e: ProduceError) -> anyhow::Error {
    match e {
        ProduceError::Client(e) => explain(e),
        other => anyhow!(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> ProduceArgs {
        let cli = Cli::try_parse_from(std::iter::once("eddy").chain(args.iter().copied()))
            .expect("arguments parse");
        match cli.command {
            Command::Produce(args) => args,
            _ => panic!("expected produce"),
        }
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split_line(b"k:v", Some(b":")),
            Some((Some(&b"k"[..]), &b"v"[..]))
        );
        assert_eq!(
            split_line(b"k::v:w", Some(b"::")),
            Some((Some(&b"k"[..]), &b"v:w"[..]))
        );
        assert_eq!(
            split_line(b":v", Some(b":")),
            Some((Some(&b""[..]), &b"v"[..]))
        );
        assert_eq!(split_line(b"novalue", Some(b":")), None);
        assert_eq!(split_line(b"a:b", None), Some((None, &b"a:b"[..])));
    }

    #[test]
    fn line_endings_are_trimmed() {
        let mut line = b"value\r\n".to_vec();
        trim_line_ending(&mut line);
        assert_eq!(line, b"value");
        let mut line = b"value".to_vec();
        trim_line_ending(&mut line);
        assert_eq!(line, b"value");
        let mut line = b"\n".to_vec();
        trim_line_ending(&mut line);
        assert!(line.is_empty());
    }

    #[test]
    fn flags_map_to_the_producer_config() {
        let args = parse(&[
            "produce",
            "sensors",
            "--acks",
            "1",
            "--compression",
            "zstd",
            "--linger-ms",
            "20",
            "--batch-size",
            "65536",
            "--partition",
            "2",
            "--server",
            "10.0.0.5:7878",
            "--ca",
            "/etc/eddy/ca.pem",
        ]);
        let config = args.producer_config();
        assert_eq!(config.acks, Acks::Leader);
        assert_eq!(config.compression, Compression::Zstd);
        assert_eq!(config.linger_ms, 20);
        assert_eq!(config.batch_size, 65_536);
        assert_eq!(args.partition, Some(2));
        assert_eq!(args.connect.server, "10.0.0.5:7878");
        assert_eq!(
            args.connect.ca_file,
            std::path::PathBuf::from("/etc/eddy/ca.pem")
        );
        config.validate().expect("valid");
    }

    #[test]
    fn defaults_and_bad_values() {
        let args = parse(&["produce", "t"]);
        assert_eq!(args.acks, Acks::All);
        assert_eq!(args.compression, Compression::None);
        assert_eq!(args.connect.server, "127.0.0.1:7878");
        assert_eq!(
            args.connect.ca_file,
            std::path::PathBuf::from("./eddy-data/tls/ca.pem")
        );
        let bad = |extra: &[&str]| {
            let mut argv = vec!["eddy", "produce", "t"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).is_err()
        };
        assert!(bad(&["--acks", "2"]));
        assert!(bad(&["--compression", "snappy"]));
        assert!(bad(&["--compression", "brotli"]));
        assert!(!bad(&["--acks", "0", "--compression", "gzip"]));
    }
}
