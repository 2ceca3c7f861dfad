//! The fixed 61-byte header of a Kafka RecordBatch v2.
//!
//! Layout (all big-endian), byte positions from the start of the batch:
//!
//! | pos | field                  | type  |
//! |-----|------------------------|-------|
//! | 0   | baseOffset             | int64 |
//! | 8   | batchLength            | int32 | bytes after this field
//! | 12  | partitionLeaderEpoch   | int32 |
//! | 16  | magic (= 2)            | int8  |
//! | 17  | crc (CRC-32C)          | uint32| over attributes..end
//! | 21  | attributes             | int16 |
//! | 23  | lastOffsetDelta        | int32 |
//! | 27  | baseTimestamp          | int64 |
//! | 35  | maxTimestamp           | int64 |
//! | 43  | producerId             | int64 |
//! | 51  | producerEpoch          | int16 |
//! | 53  | baseSequence           | int32 |
//! | 57  | records count          | int32 |
//!
//! The base offset and the partition leader epoch sit before the CRC'd range, so a
//! leader can stamp them on an incoming batch without recomputing the checksum.

use super::{BatchError, Compression};

/// Bytes of the header, up to and including the records count.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` ends: `baseOffset` + `batchLength` (Kafka's `LOG_OVERHEAD`).
pub const LOG_OVERHEAD: usize = 12;
/// Where the CRC'd range starts (the attributes field).
pub const CRC_START: usize = 21;
/// The only magic this codec reads and writes.
pub const MAGIC_V2: i8 = 2;
/// Smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: u32 = (HEADER_LEN - LOG_OVERHEAD) as u32;

const _: () = assert!(CRC_START < HEADER_LEN);
const _: () = assert!(BATCH_LENGTH_MIN == 49);

/// Kafka's "no producer id" value.
pub const NO_PRODUCER_ID: i64 = -1;
/// Kafka's "no producer epoch" value.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Kafka's "no sequence" value.
pub const NO_SEQUENCE: i32 = -1;
/// Kafka's "no partition leader epoch" value.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// CRC-32C (Castagnoli), as Kafka uses for v2 batches: the table-driven
/// reference implementation.
///
/// [`compute_crc`] uses the CPU's CRC-32C instructions instead when the
/// `std` feature is on (SSE 4.2 on x86_64, the CRC extension on aarch64,
/// detected at run time, with a software fallback): the CRC is most of the
/// cost of an append and of recovery. Without `std` (microcontrollers) it
/// uses this 1 KiB byte-at-a-time table.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Whether timestamps were set by the producer or by the log on append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// `CreateTime`: the producer's clock (attribute bit 3 clear).
    CreateTime,
    /// `LogAppendTime`: the broker's clock at append (attribute bit 3 set).
    LogAppendTime,
}

/// The batch attributes bit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes(pub u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0x07;
    const TIMESTAMP_TYPE: u16 = 0x08;
    const TRANSACTIONAL: u16 = 0x10;
    const CONTROL: u16 = 0x20;
    const DELETE_HORIZON: u16 = 0x40;

    /// Builds attributes from their parts.
    pub fn new(
        compression: Compression,
        timestamp_type: TimestampType,
        transactional: bool,
        control: bool,
    ) -> Self {
        let mut bits = compression.id() as u16;
        if timestamp_type == TimestampType::LogAppendTime {
            bits |= Self::TIMESTAMP_TYPE;
        }
        if transactional {
            bits |= Self::TRANSACTIONAL;
        }
        if control {
            bits |= Self::CONTROL;
        }
        Attributes(bits)
    }

    /// The compression codec (bits 0–2).
    pub fn compression(self) -> Result<Compression, BatchError> {
        Compression::from_id((self.0 & Self::COMPRESSION_MASK) as u8)
    }

    /// The timestamp type (bit 3).
    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction (bit 4).
    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }

    /// A control batch, e.g. a transaction marker (bit 5).
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }

    /// The base timestamp is a delete horizon set by compaction (bit 6, KIP-534).
    pub fn has_delete_horizon(self) -> bool {
        self.0 & Self::DELETE_HORIZON != 0
    }

    /// Returns these attributes with the delete-horizon bit set or cleared.
    pub fn with_delete_horizon(self, on: bool) -> Self {
        if on {
            Attributes(self.0 | Self::DELETE_HORIZON)
        } else {
            Attributes(self.0 & !Self::DELETE_HORIZON)
        }
    }

    /// Returns these attributes with bits 0–2 naming `codec`.
    pub fn with_compression(self, codec: Compression) -> Self {
        Attributes((self.0 & !Self::COMPRESSION_MASK) | u16::from(codec.id()))
    }

    /// Returns these attributes with bit 3 set to `timestamp_type`.
    pub fn with_timestamp_type(self, timestamp_type: TimestampType) -> Self {
        match timestamp_type {
            TimestampType::CreateTime => Attributes(self.0 & !Self::TIMESTAMP_TYPE),
            TimestampType::LogAppendTime => Attributes(self.0 | Self::TIMESTAMP_TYPE),
        }
    }
}

/// A parsed batch header. Offsets are `u64` (Kafka writes them as int64 and a
/// negative one is rejected as corrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes after the `batchLength` field.
    pub batch_length: u32,
    /// Leader epoch stamped by the leader on append.
    pub partition_leader_epoch: i32,
    /// Checksum over attributes..end.
    pub crc: u32,
    /// Codec, timestamp type and flags.
    pub attributes: Attributes,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: u32,
    /// Timestamp of the first record (or the delete horizon, see [`Attributes`]).
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent / transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records the batch says it holds.
    pub record_count: u32,
}

impl BatchHeader {
    /// Parses and sanity-checks a header from the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Checks magic, that `batchLength` is at least a bare header, and that offsets
    /// and counts are not negative. It does not check the CRC (see [`verify_crc`]).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN as u64,
                available: buf.len() as u64,
            });
        }
        let base_offset = be_i64(buf, 0);
        let batch_length = be_i32(buf, 8);
        let magic = buf[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        if batch_length < BATCH_LENGTH_MIN as i32 {
            return Err(BatchError::Corrupt("batch length shorter than a header"));
        }
        if base_offset < 0 {
            return Err(BatchError::Corrupt("negative base offset"));
        }
        let last_offset_delta = be_i32(buf, 23);
        if last_offset_delta < 0 {
            return Err(BatchError::Corrupt("negative last offset delta"));
        }
        let record_count = be_i32(buf, 57);
        if record_count < 0 {
            return Err(BatchError::Corrupt("negative record count"));
        }
        Ok(BatchHeader {
            base_offset: base_offset as u64,
            batch_length: batch_length as u32,
            partition_leader_epoch: be_i32(buf, 12),
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: Attributes(u16::from_be_bytes([buf[21], buf[22]])),
            last_offset_delta: last_offset_delta as u32,
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: i16::from_be_bytes([buf[51], buf[52]]),
            base_sequence: be_i32(buf, 53),
            record_count: record_count as u32,
        })
    }

    /// Size of the whole batch in bytes, header included.
    pub fn total_len(&self) -> u64 {
        LOG_OVERHEAD as u64 + self.batch_length as u64
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + self.last_offset_delta as u64
    }

    /// Offset the next batch starts at.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`
    /// (the CRC field as stored in `self.crc`).
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..8].copy_from_slice(&(self.base_offset as i64).to_be_bytes());
        out[8..12].copy_from_slice(&(self.batch_length as i32).to_be_bytes());
        out[12..16].copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out[16] = MAGIC_V2 as u8;
        out[17..21].copy_from_slice(&self.crc.to_be_bytes());
        out[21..23].copy_from_slice(&self.attributes.0.to_be_bytes());
        out[23..27].copy_from_slice(&(self.last_offset_delta as i32).to_be_bytes());
        out[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        out[57..61].copy_from_slice(&(self.record_count as i32).to_be_bytes());
    }
}

/// Computes the CRC-32C of a whole batch's checksummed range (attributes..end).
///
/// `batch` must be exactly one batch (its `total_len` bytes).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c_of(&batch[CRC_START..])
}

/// CRC-32C of `bytes`, with the CPU's CRC instructions where there are some.
#[cfg(feature = "std")]
pub fn crc32c_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC-32C of `bytes`, byte at a time from a table.
#[cfg(not(feature = "std"))]
pub fn crc32c_of(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// Checks that `batch` is one whole batch whose length field and CRC agree with its bytes.
pub fn verify_crc(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_len() != batch.len() as u64 {
        return Err(BatchError::Corrupt(
            "batch length does not match the bytes given",
        ));
    }
    let actual = compute_crc(batch);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed: actual,
        });
    }
    Ok(header)
}

/// Overwrites the base offset of a batch in place (outside the CRC'd range).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    assert!(batch.len() >= HEADER_LEN);
    assert!(base_offset <= i64::MAX as u64);
    batch[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
}

/// Overwrites the partition leader epoch of a batch in place (outside the CRC'd range).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert!(batch.len() >= HEADER_LEN);
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Reads the `batchLength` field and returns the whole batch size, without other checks.
///
/// Used to walk a buffer batch by batch when only the first [`LOG_OVERHEAD`] bytes are known.
pub fn peek_total_len(buf: &[u8]) -> Option<u64> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    let len = be_i32(buf, 8);
    if len < 0 {
        return None;
    }
    Some(LOG_OVERHEAD as u64 + len as u64)
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(b)
}
