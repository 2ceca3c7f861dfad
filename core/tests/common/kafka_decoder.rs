//! An independent reader of Kafka's RecordBatch v2 format, written from the
//! specification (<https://kafka.apache.org/documentation/#recordbatch>) and sharing
//! no code with `eddy_core::batch`: its own byte reader, varints, CRC-32C and record
//! parser. Tests use it to check that what Eddy writes is what Kafka would read.
//!
//! The format, as the spec gives it:
//!
//! ```text
//! baseOffset: int64
//! batchLength: int32                 (bytes after this field)
//! partitionLeaderEpoch: int32
//! magic: int8                        (current magic value is 2)
//! crc: uint32                        (CRC-32C of attributes .. end of batch)
//! attributes: int16
//!     bit 0~2: compression (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)
//!     bit 3: timestampType (0 CreateTime, 1 LogAppendTime)
//!     bit 4: isTransactional
//!     bit 5: isControlBatch
//!     bit 6: hasDeleteHorizonMs
//! lastOffsetDelta: int32
//! baseTimestamp: int64
//! maxTimestamp: int64
//! producerId: int64
//! producerEpoch: int16
//! baseSequence: int32
//! records: [Record]                  (int32 count, then the records, which are
//!                                     compressed together when bits 0~2 say so)
//!
//! Record =>
//!   length: varint
//!   attributes: int8
//!   timestampDelta: varlong
//!   offsetDelta: varint
//!   keyLength: varint                (-1 = null)
//!   key: byte[]
//!   valueLen: varint                 (-1 = null)
//!   value: byte[]
//!   Headers => [Header]              (varint count)
//!
//! Header =>
//!   headerKeyLength: varint
//!   headerKey: String                (UTF-8)
//!   headerValueLength: varint        (-1 = null)
//!   Value: byte[]
//! ```
//!
//! "varint"/"varlong" are zigzag-encoded protobuf varints.

use std::io::Read;

/// The CRC-32C (Castagnoli) polynomial, bit-reflected.
pub const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

/// Most bytes this reader will decompress one batch's records into.
pub const DECOMPRESSED_BYTES_MAX: u64 = 256 << 20;

/// CRC-32C, one bit at a time, no table: init and final XOR all ones, reflected.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb == 1 {
                crc ^= CASTAGNOLI_REFLECTED;
            }
        }
    }
    !crc
}

/// One header: key and nullable value.
pub type KafkaHeader = (String, Option<Vec<u8>>);

/// One record as stored in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// Record attributes (unused by Kafka).
    pub attributes: i8,
    /// From the batch's base timestamp.
    pub timestamp_delta: i64,
    /// From the batch's base offset.
    pub offset_delta: i32,
    /// Nullable key.
    pub key: Option<Vec<u8>>,
    /// Nullable value.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<KafkaHeader>,
}

/// One batch with every header field, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBatch {
    /// Byte position of the batch in the input.
    pub position: usize,
    /// baseOffset.
    pub base_offset: i64,
    /// batchLength.
    pub batch_length: i32,
    /// partitionLeaderEpoch.
    pub partition_leader_epoch: i32,
    /// magic.
    pub magic: i8,
    /// crc as stored (checked against the bytes).
    pub crc: u32,
    /// attributes.
    pub attributes: i16,
    /// lastOffsetDelta.
    pub last_offset_delta: i32,
    /// baseTimestamp.
    pub base_timestamp: i64,
    /// maxTimestamp.
    pub max_timestamp: i64,
    /// producerId.
    pub producer_id: i64,
    /// producerEpoch.
    pub producer_epoch: i16,
    /// baseSequence.
    pub base_sequence: i32,
    /// The records count field.
    pub record_count: i32,
    /// The records, decompressed and parsed.
    pub records: Vec<KafkaRecord>,
}

impl KafkaBatch {
    /// Compression codec id, attributes bits 0~2.
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }

    /// Attributes bit 3.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    /// Attributes bit 4.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Attributes bit 5.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// A record's absolute offset.
    pub fn offset_of(&self, r: &KafkaRecord) -> i64 {
        self.base_offset + i64::from(r.offset_delta)
    }

    /// A record's timestamp as a Kafka consumer sees it.
    pub fn timestamp_of(&self, r: &KafkaRecord) -> i64 {
        if self.is_log_append_time() {
            self.max_timestamp
        } else {
            self.base_timestamp.wrapping_add(r.timestamp_delta)
        }
    }
}

/// `(offset, timestamp, key, value, headers)` of one record of a log.
pub type LogEntry = (u64, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<KafkaHeader>);

/// Reads every record of a buffer of back-to-back batches (a `.log` segment file,
/// a fetch response), checking each batch's magic, length and CRC-32C, the record
/// count, that offset deltas stay within `lastOffsetDelta`, and that offsets strictly
/// increase through the whole buffer. Gaps (compaction) are allowed; use
/// [`check_contiguous`] to forbid them.
pub fn decode_kafka_log(bytes: &[u8]) -> Result<Vec<LogEntry>, String> {
    let batches = decode_kafka_batches(bytes)?;
    let mut out = Vec::new();
    let mut next_min: i64 = 0;
    for b in &batches {
        if b.base_offset < next_min {
            return Err(format!(
                "batch at byte {} starts at offset {} but offset {} was already used",
                b.position,
                b.base_offset,
                next_min - 1
            ));
        }
        for r in &b.records {
            let offset = b.offset_of(r);
            if offset < next_min {
                return Err(format!(
                    "offset {offset} at byte {} goes backwards",
                    b.position
                ));
            }
            next_min = offset + 1;
            out.push((
                offset as u64,
                b.timestamp_of(r),
                r.key.clone(),
                r.value.clone(),
                r.headers.clone(),
            ));
        }
        next_min = next_min.max(b.base_offset + i64::from(b.last_offset_delta) + 1);
    }
    Ok(out)
}

/// Checks that the offsets are consecutive (no gaps).
pub fn check_contiguous(entries: &[LogEntry]) -> Result<(), String> {
    for pair in entries.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(format!("offset {} follows {}", pair[1].0, pair[0].0));
        }
    }
    Ok(())
}

/// Parses every batch of a buffer of back-to-back batches, with all header fields.
/// The buffer must end exactly at the end of a batch.
pub fn decode_kafka_batches(bytes: &[u8]) -> Result<Vec<KafkaBatch>, String> {
    let mut batches = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let batch = decode_one(bytes, pos).map_err(|e| format!("batch at byte {pos}: {e}"))?;
        pos += 12 + batch.batch_length as usize;
        batches.push(batch);
    }
    Ok(batches)
}

fn decode_one(bytes: &[u8], position: usize) -> Result<KafkaBatch, String> {
    let mut c = Cursor::new(&bytes[position..]);
    let base_offset = c.int64()?;
    let batch_length = c.int32()?;
    // The fixed part after batchLength is 49 bytes (4+1+4+2+4+8+8+8+2+4+4).
    if batch_length < 49 {
        return Err(format!(
            "batchLength {batch_length} is shorter than a header"
        ));
    }
    let end = 12 + batch_length as usize;
    if end > c.buf.len() {
        return Err(format!(
            "batch needs {end} bytes, only {} remain",
            c.buf.len()
        ));
    }
    c.buf = &c.buf[..end];
    let partition_leader_epoch = c.int32()?;
    let magic = c.int8()?;
    if magic != 2 {
        return Err(format!("magic {magic}, expected 2"));
    }
    let crc = c.uint32()?;
    let computed = crc32c(&c.buf[c.pos..]);
    if computed != crc {
        return Err(format!(
            "CRC-32C stored {crc:#010x}, computed {computed:#010x}"
        ));
    }
    let attributes = c.int16()?;
    let last_offset_delta = c.int32()?;
    let base_timestamp = c.int64()?;
    let max_timestamp = c.int64()?;
    let producer_id = c.int64()?;
    let producer_epoch = c.int16()?;
    let base_sequence = c.int32()?;
    let record_count = c.int32()?;
    if base_offset < 0 || last_offset_delta < 0 || record_count < 0 {
        return Err("negative baseOffset, lastOffsetDelta or record count".to_string());
    }
    let section = &c.buf[c.pos..];
    let decompressed = match attributes & 0x07 {
        0 => section.to_vec(),
        1 => read_all(flate2::read::MultiGzDecoder::new(section))?,
        2 => return Err("snappy is not supported by this reader".to_string()),
        3 => read_all(lz4_flex::frame::FrameDecoder::new(section))?,
        4 => {
            read_all(zstd::stream::read::Decoder::new(section).map_err(|e| format!("zstd: {e}"))?)?
        }
        other => return Err(format!("unknown compression codec {other}")),
    };
    let mut rc = Cursor::new(&decompressed);
    let mut records = Vec::new();
    let mut prev_delta = -1i64;
    for i in 0..record_count {
        let r = decode_record(&mut rc).map_err(|e| format!("record {i}: {e}"))?;
        if i64::from(r.offset_delta) <= prev_delta || r.offset_delta > last_offset_delta {
            return Err(format!(
                "record {i}: offsetDelta {} after {prev_delta}, lastOffsetDelta {last_offset_delta}",
                r.offset_delta
            ));
        }
        prev_delta = i64::from(r.offset_delta);
        records.push(r);
    }
    if rc.pos != rc.buf.len() {
        return Err(format!(
            "{} bytes left after {record_count} records",
            rc.buf.len() - rc.pos
        ));
    }
    Ok(KafkaBatch {
        position,
        base_offset,
        batch_length,
        partition_leader_epoch,
        magic,
        crc,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
        records,
    })
}

fn read_all(r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(DECOMPRESSED_BYTES_MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("decompression failed: {e}"))?;
    if out.len() as u64 > DECOMPRESSED_BYTES_MAX {
        return Err("decompressed records exceed the reader's limit".to_string());
    }
    Ok(out)
}

fn decode_record(c: &mut Cursor<'_>) -> Result<KafkaRecord, String> {
    let length = c.varint()?;
    if length < 0 {
        return Err(format!("negative record length {length}"));
    }
    let end = c.pos + length as usize;
    if end > c.buf.len() {
        return Err(format!("record length {length} runs past the records"));
    }
    let mut r = Cursor::new(&c.buf[..end]);
    r.pos = c.pos;
    let attributes = r.int8()?;
    let timestamp_delta = r.varlong()?;
    let offset_delta = r.varint()?;
    let key = r.nullable_bytes()?;
    let value = r.nullable_bytes()?;
    let header_count = r.varint()?;
    if header_count < 0 {
        return Err(format!("negative header count {header_count}"));
    }
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let key_len = r.varint()?;
        if key_len < 0 {
            return Err("null header key".to_string());
        }
        let key = String::from_utf8(r.take(key_len as usize)?.to_vec())
            .map_err(|_| "header key is not UTF-8".to_string())?;
        let value = r.nullable_bytes()?;
        headers.push((key, value));
    }
    if r.pos != end {
        return Err(format!(
            "record declares {length} bytes but uses {}",
            r.pos - c.pos
        ));
    }
    c.pos = end;
    Ok(KafkaRecord {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

/// Big-endian fixed-width and zigzag varint reads over a slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "needed {n} bytes at {}, only {} remain",
                self.pos,
                self.buf.len() - self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn int8(&mut self) -> Result<i8, String> {
        Ok(self.take(1)?[0] as i8)
    }

    fn int16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok((i16::from(b[0]) << 8) | i16::from(b[1]))
    }

    fn uint32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
    }

    fn int32(&mut self) -> Result<i32, String> {
        Ok(self.uint32()? as i32)
    }

    fn int64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)) as i64)
    }

    /// Unsigned base-128 varint of at most `max_bytes` bytes.
    fn unsigned(&mut self, max_bytes: u32) -> Result<u64, String> {
        let mut result = 0u64;
        let mut shift = 0u32;
        loop {
            if shift / 7 >= max_bytes {
                return Err(format!("varint longer than {max_bytes} bytes"));
            }
            let b = self.take(1)?[0];
            result |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(result);
            }
            shift += 7;
        }
    }

    fn varint(&mut self) -> Result<i32, String> {
        let raw = self.unsigned(5)?;
        let raw = u32::try_from(raw).map_err(|_| "varint does not fit 32 bits".to_string())?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, String> {
        let raw = self.unsigned(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < -1 => Err(format!("length {n}")),
            n => Ok(Some(self.take(n as usize)?.to_vec())),
        }
    }
}
