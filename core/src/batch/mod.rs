//! Kafka RecordBatch v2, byte for byte.
//!
//! [`header`] is the fixed 61-byte header (always available). [`varint`] holds Kafka's
//! zigzag varints; [`record`] encodes and decodes the varint records; [`builder`]
//! assembles a batch (into a `Vec`, or into a caller's slice with
//! [`SliceBatchBuilder`]); [`decode`] checks and reads one, or walks many. Compression
//! (the `compression` module) needs `std`; without it, only uncompressed batches can
//! be built or decoded.

pub mod builder;
#[cfg(feature = "std")]
pub mod compression;
pub mod decode;
pub mod header;
pub mod record;
pub mod varint;

pub use builder::{BatchBuilder, BatchOptions, SliceBatchBuilder};
pub use decode::{Batch, BatchIter, RecordIter, check_record_section};
pub use header::{Attributes, BatchHeader, TimestampType};
pub use record::{HeaderRef, Record, RecordHeader, RecordRef};

/// Kafka's compression codec ids (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// 0: no compression.
    #[default]
    None,
    /// 1: gzip.
    Gzip,
    /// 2: snappy (xerial framing). Recognised, not supported by this codec.
    Snappy,
    /// 3: lz4 (frame format).
    Lz4,
    /// 4: zstd.
    Zstd,
}

impl Compression {
    /// The codec id stored in the attributes.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec for an id, or an error for ids Kafka does not define.
    pub fn from_id(id: u8) -> Result<Compression, BatchError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(BatchError::UnknownCompression(other)),
        })
    }

    /// Kafka's name for the codec (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses Kafka's name for the codec.
    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" | "uncompressed" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

/// Why a batch could not be built or read. Corrupt input is never retryable as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the structure needs.
    #[error("batch truncated: needed {needed} bytes, had {available}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes there were.
        available: u64,
    },
    /// Not a v2 batch.
    #[error("unsupported record batch magic {0} (only v2 is supported)")]
    UnsupportedMagic(i8),
    /// The stored CRC does not match the bytes.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A codec id Kafka does not define.
    #[error("unknown compression codec id {0}")]
    UnknownCompression(u8),
    /// A codec this build cannot handle (snappy, or any codec without `std`).
    #[error("compression codec {0} is not supported by this build")]
    UnsupportedCompression(&'static str),
    /// Compressing or decompressing failed.
    #[error("{codec} (de)compression failed: {reason}")]
    Compression {
        /// Codec name.
        codec: &'static str,
        /// What the codec said.
        reason: alloc::string::String,
    },
    /// A size exceeded its limit (record count, decompressed size, batch size).
    #[error("{what} is {actual} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// A produced compressed batch decompresses to more than a broker accepts
    /// (see `eddy_core::log::produce_decompressed_bytes_max`).
    #[error(
        "{codec}-compressed batch expands beyond {limit} bytes, the most a produced batch \
         may decompress to (64 × max.message.bytes, at most 64 MiB); send smaller batches"
    )]
    ExpandsTooFar {
        /// Codec name.
        codec: &'static str,
        /// Bytes the records could take decompressed.
        limit: u64,
    },
    /// Any other structural problem.
    #[error("corrupt batch: {0}")]
    Corrupt(&'static str),
    /// The builder was used wrongly (e.g. offset deltas not increasing).
    #[error("invalid batch: {0}")]
    Invalid(&'static str),
}
