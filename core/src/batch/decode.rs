//! Checking and reading batches.
//!
//! [`Batch`] is one whole batch whose length and CRC-32C have been checked.
//! [`RecordIter`] walks its records without copying them; [`BatchIter`] walks a buffer
//! of back-to-back batches (a segment file, a fetch response).
//!
//! Nothing here panics on any input: every problem is a [`BatchError`].

use alloc::borrow::Cow;
use alloc::vec::Vec;

use super::header::{
    BatchHeader, HEADER_LEN, LOG_OVERHEAD, TimestampType, peek_total_len, verify_crc,
};
use super::record::{RECORD_BYTES_MIN, Record, RecordRef};
use super::{BatchError, Compression};

/// One batch, its length and CRC checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The parsed header.
    pub header: BatchHeader,
    /// The whole batch, header included (`header.total_len()` bytes).
    pub bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Takes the first batch off `buf`, checking its length and CRC; returns the batch
    /// and the bytes after it.
    ///
    /// A `buf` that ends before the batch does is [`BatchError::Truncated`].
    pub fn parse(buf: &'a [u8]) -> Result<(Batch<'a>, &'a [u8]), BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated {
                needed: LOG_OVERHEAD as u64,
                available: buf.len() as u64,
            });
        }
        let total = peek_total_len(buf).ok_or(BatchError::Corrupt("negative batch length"))?;
        if total < HEADER_LEN as u64 {
            return Err(BatchError::Corrupt("batch length shorter than a header"));
        }
        let truncated = BatchError::Truncated {
            needed: total,
            available: buf.len() as u64,
        };
        let total = usize::try_from(total).map_err(|_| truncated.clone())?;
        if total > buf.len() {
            return Err(truncated);
        }
        let (bytes, rest) = buf.split_at(total);
        Ok((Batch::new_checked(bytes)?, rest))
    }

    /// Checks that `bytes` is exactly one batch: magic, length, CRC, and a codec id
    /// Kafka defines.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Batch<'a>, BatchError> {
        let header = verify_crc(bytes)?;
        header.attributes.compression()?;
        Ok(Batch { header, bytes })
    }

    /// The codec of the records section.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        self.header.attributes.compression()
    }

    /// The records section as stored (compressed if the batch is).
    pub fn records_section(&self) -> &'a [u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }

    /// The offset of a record with this offset delta.
    pub fn record_offset(&self, offset_delta: i32) -> u64 {
        self.header
            .base_offset
            .saturating_add_signed(i64::from(offset_delta))
    }

    /// The timestamp of a record with this timestamp delta: the batch's max timestamp
    /// for `LogAppendTime` batches (as Kafka reports it), else base + delta.
    pub fn record_timestamp(&self, timestamp_delta: i64) -> i64 {
        match self.header.attributes.timestamp_type() {
            TimestampType::LogAppendTime => self.header.max_timestamp,
            TimestampType::CreateTime => self.header.base_timestamp.wrapping_add(timestamp_delta),
        }
    }

    /// The uncompressed records section: borrowed for uncompressed batches, else
    /// decompressed into a new buffer of at most `decompressed_bytes_max` bytes.
    /// Without `std`, compressed batches fail with [`BatchError::UnsupportedCompression`].
    pub fn decompressed(&self, decompressed_bytes_max: usize) -> Result<Cow<'a, [u8]>, BatchError> {
        let section = self.records_section();
        match self.compression()? {
            Compression::None => Ok(Cow::Borrowed(section)),
            codec => decompress(codec, section, decompressed_bytes_max).map(Cow::Owned),
        }
    }

    /// Decodes every record into owned form, checking their count and offset deltas
    /// against the header.
    pub fn records(&self, decompressed_bytes_max: usize) -> Result<Vec<Record>, BatchError> {
        let section = self.decompressed(decompressed_bytes_max)?;
        let iter = RecordIter::new(&section, &self.header);
        // Never trust the count for an allocation: each record takes some bytes.
        let capacity = (self.header.record_count as usize).min(section.len() / RECORD_BYTES_MIN);
        let mut out = Vec::with_capacity(capacity);
        for r in iter {
            out.push(r?.to_record());
        }
        Ok(out)
    }

    /// Zero-copy iterator over the records of an uncompressed batch. For a compressed
    /// batch, use [`Batch::decompressed`] and [`RecordIter::new`], or
    /// [`Batch::for_each_record_ref`].
    pub fn record_refs(&self) -> Result<RecordIter<'a>, BatchError> {
        match self.compression()? {
            Compression::None => Ok(RecordIter::new(self.records_section(), &self.header)),
            _ => Err(BatchError::Invalid(
                "record_refs needs an uncompressed batch; decompress it first",
            )),
        }
    }

    /// Calls `f` with each record, borrowed, decompressing first if needed.
    ///
    /// Records are checked one at a time, so on an error `f` may already have seen the
    /// records before the bad one.
    pub fn for_each_record_ref<F>(
        &self,
        decompressed_bytes_max: usize,
        mut f: F,
    ) -> Result<(), BatchError>
    where
        F: FnMut(RecordRef<'_>),
    {
        let section = self.decompressed(decompressed_bytes_max)?;
        for r in RecordIter::new(&section, &self.header) {
            f(r?);
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
fn decompress(codec: Compression, data: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    super::compression::decompress(codec, data, max)
}

#[cfg(not(feature = "std"))]
fn decompress(codec: Compression, _data: &[u8], _max: usize) -> Result<Vec<u8>, BatchError> {
    Err(BatchError::UnsupportedCompression(codec.name()))
}

/// Walks the records of an (uncompressed) records section, borrowing from it.
///
/// Checks, as it goes, that each record is well formed, that offset deltas are
/// non-negative, strictly increasing and at most the header's `lastOffsetDelta`, and
/// at the end that there were exactly `recordCount` records and no bytes after them.
/// After the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    expected: u32,
    seen: u32,
    last_offset_delta: u32,
    prev_offset_delta: Option<i32>,
    /// Offset deltas must be exactly 0, 1, .., n-1 (a produced batch).
    dense: bool,
    done: bool,
}

impl<'a> RecordIter<'a> {
    /// Iterates `records`, an uncompressed records section, of the batch with `header`.
    pub fn new(records: &'a [u8], header: &BatchHeader) -> RecordIter<'a> {
        RecordIter {
            rest: records,
            expected: header.record_count,
            seen: 0,
            last_offset_delta: header.last_offset_delta,
            prev_offset_delta: None,
            dense: false,
            done: false,
        }
    }

    /// Like [`RecordIter::new`], and the offset deltas must be 0, 1, .., n-1 in
    /// order, as a producer writes them (compaction leaves gaps, so stored
    /// batches may have others).
    pub fn dense(records: &'a [u8], header: &BatchHeader) -> RecordIter<'a> {
        RecordIter {
            dense: true,
            ..RecordIter::new(records, header)
        }
    }

    fn step(&mut self) -> Option<Result<RecordRef<'a>, BatchError>> {
        if self.seen == self.expected {
            if self.rest.is_empty() {
                return None;
            }
            return Some(Err(BatchError::Corrupt(
                "bytes after the batch's last record (more records than its record count)",
            )));
        }
        if self.rest.is_empty() {
            return Some(Err(BatchError::Corrupt(
                "fewer records than the batch's record count",
            )));
        }
        let (r, n) = match RecordRef::decode(self.rest) {
            Ok(x) => x,
            Err(BatchError::Truncated { .. }) => {
                return Some(Err(BatchError::Corrupt(
                    "record runs past the end of the batch",
                )));
            }
            Err(e) => return Some(Err(e)),
        };
        if self.dense && u32::try_from(r.offset_delta) != Ok(self.seen) {
            return Some(Err(BatchError::Corrupt(
                "record offset deltas are not 0, 1, .., n-1 in order",
            )));
        }
        if r.offset_delta < 0 {
            return Some(Err(BatchError::Corrupt("negative record offset delta")));
        }
        if self.prev_offset_delta.is_some_and(|p| r.offset_delta <= p) {
            return Some(Err(BatchError::Corrupt(
                "record offset deltas do not increase",
            )));
        }
        if r.offset_delta as u32 > self.last_offset_delta {
            return Some(Err(BatchError::Corrupt(
                "record offset delta beyond the batch's last offset delta",
            )));
        }
        self.prev_offset_delta = Some(r.offset_delta);
        self.rest = self.rest.get(n..).unwrap_or(&[]);
        self.seen += 1;
        Some(Ok(r))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            // One more item than records is possible: a trailing error.
            (0, Some((self.expected - self.seen) as usize + 1))
        }
    }
}

/// Checks that `records`, the uncompressed records section of the batch with
/// `header`, holds exactly `recordCount` well-formed records whose offset deltas are
/// 0, 1, .., n-1 in order, with no bytes after the last: what a leader requires of a
/// produced batch (Kafka's `LogValidator` walks every record the same way).
///
/// Each record is decoded by [`RecordIter::dense`] (borrowed, nothing allocated),
/// so a batch it accepts is one consumers read without an error. It is stricter
/// than [`RecordIter::new`] about offset deltas: a compacted batch, with gaps,
/// fails.
pub fn check_record_section(records: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    RecordIter::dense(records, header).try_for_each(|record| record.map(drop))
}

/// Walks a buffer of back-to-back batches, checking each one's length and CRC.
///
/// Ends cleanly when the buffer ends exactly after a batch. A partial batch at the end
/// yields [`BatchError::Truncated`]; a bad one yields its error. Either way it then
/// stops, and [`BatchIter::position`] tells where the valid prefix ends (recovery
/// truncates a torn tail there).
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// Iterates the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            buf,
            pos: 0,
            done: false,
        }
    }

    /// Byte position of the next batch to read: after an error, the start of the bad
    /// batch, i.e. the length of the valid prefix.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<Batch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        match Batch::parse(rest) {
            Ok((batch, _)) => {
                self.pos += batch.bytes.len();
                Some(Ok(batch))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::header::{CRC_START, compute_crc, set_base_offset};
    use crate::batch::record::RecordHeader;
    use crate::batch::{BatchBuilder, BatchOptions};

    fn build(base: u64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions {
            base_offset: base,
            ..BatchOptions::default()
        });
        for i in 0..n {
            let v = [i as u8; 3];
            b.push(
                1000 + i as i64,
                Some(b"k"),
                Some(&v),
                &[RecordHeader::new("h", None)],
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    /// Rewrites the CRC after a test edits the CRC'd range.
    fn fix_crc(batch: &mut [u8]) {
        let crc = compute_crc(batch);
        batch[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn records_round_trip() {
        let bytes = build(10, 4);
        let batch = Batch::new_checked(&bytes).unwrap();
        let recs = batch.records(1 << 20).unwrap();
        assert_eq!(recs.len(), 4);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.offset_delta, i as i32);
            assert_eq!(batch.record_offset(r.offset_delta), 10 + i as u64);
            assert_eq!(batch.record_timestamp(r.timestamp_delta), 1000 + i as i64);
            assert_eq!(r.value.as_deref(), Some(&[i as u8; 3][..]));
        }
        let refs: Vec<_> = batch
            .record_refs()
            .unwrap()
            .map(|r| r.unwrap().to_record())
            .collect();
        assert_eq!(refs, recs);
        let mut n = 0;
        batch.for_each_record_ref(1 << 20, |_| n += 1).unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn count_mismatch_is_corrupt() {
        for count in [3i32, 5] {
            let mut bytes = build(0, 4);
            bytes[57..61].copy_from_slice(&count.to_be_bytes());
            fix_crc(&mut bytes);
            let batch = Batch::new_checked(&bytes).unwrap();
            assert!(
                matches!(batch.records(1 << 20), Err(BatchError::Corrupt(_))),
                "{count}"
            );
        }
    }

    #[test]
    fn offset_delta_past_last_is_corrupt() {
        let mut bytes = build(0, 4);
        bytes[23..27].copy_from_slice(&2i32.to_be_bytes());
        fix_crc(&mut bytes);
        let batch = Batch::new_checked(&bytes).unwrap();
        assert!(matches!(
            batch.records(1 << 20),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn bad_crc_and_unknown_codec_are_refused() {
        let mut bytes = build(0, 2);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            Batch::new_checked(&bytes),
            Err(BatchError::CrcMismatch { .. })
        ));
        let mut bytes = build(0, 2);
        bytes[22] |= 0x07;
        fix_crc(&mut bytes);
        assert!(matches!(
            Batch::new_checked(&bytes),
            Err(BatchError::UnknownCompression(7))
        ));
    }

    #[test]
    fn base_offset_is_outside_the_crc() {
        let mut bytes = build(0, 2);
        set_base_offset(&mut bytes, 500);
        let batch = Batch::new_checked(&bytes).unwrap();
        assert_eq!(batch.header.base_offset, 500);
        assert_eq!(batch.header.last_offset(), 501);
    }

    #[test]
    fn iterates_concatenated_batches_and_reports_a_torn_tail() {
        let mut buf = build(0, 3);
        let first = buf.len();
        buf.extend_from_slice(&build(3, 2));
        let whole = buf.len();
        let batches: Vec<_> = BatchIter::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].header.base_offset, 3);

        let mut it = BatchIter::new(&buf[..whole - 1]);
        assert!(it.next().unwrap().is_ok());
        assert!(matches!(it.next(), Some(Err(BatchError::Truncated { .. }))));
        assert!(it.next().is_none());
        assert_eq!(it.position(), first as u64);
    }

    #[test]
    fn parse_returns_the_rest() {
        let mut buf = build(0, 1);
        let n = buf.len();
        buf.extend_from_slice(b"xyz");
        let (batch, rest) = Batch::parse(&buf).unwrap();
        assert_eq!(batch.bytes.len(), n);
        assert_eq!(rest, b"xyz");
        assert!(matches!(
            Batch::parse(&buf[..5]),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn zero_filled_tail_is_corrupt_not_truncated() {
        let mut buf = build(0, 1);
        buf.extend_from_slice(&[0u8; 100]);
        let mut it = BatchIter::new(&buf);
        assert!(it.next().unwrap().is_ok());
        assert!(matches!(it.next(), Some(Err(BatchError::Corrupt(_)))));
    }

    #[cfg(not(feature = "std"))]
    #[test]
    fn without_std_compressed_batches_are_unsupported() {
        let mut bytes = build(0, 1);
        bytes[22] |= 0x04;
        fix_crc(&mut bytes);
        let batch = Batch::new_checked(&bytes).unwrap();
        assert!(matches!(
            batch.records(1 << 20),
            Err(BatchError::UnsupportedCompression("zstd"))
        ));
    }

    #[test]
    fn record_refs_refuse_compressed_batches() {
        let mut bytes = build(0, 1);
        bytes[22] |= 0x03;
        fix_crc(&mut bytes);
        let batch = Batch::new_checked(&bytes).unwrap();
        assert!(matches!(batch.record_refs(), Err(BatchError::Invalid(_))));
    }

    #[test]
    fn truncation_at_every_position_is_an_error() {
        let bytes = build(0, 5);
        for cut in 0..bytes.len() {
            match Batch::parse(&bytes[..cut]) {
                Err(BatchError::Truncated { .. }) | Err(BatchError::Corrupt(_)) => {}
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn record_timestamp_for_log_append_time_is_the_max() {
        let mut b = BatchBuilder::new(BatchOptions {
            timestamp_type: TimestampType::LogAppendTime,
            ..BatchOptions::default()
        });
        b.push(5, None, None, &[]).unwrap();
        b.push(9, None, None, &[]).unwrap();
        let bytes = b.build().unwrap();
        let batch = Batch::new_checked(&bytes).unwrap();
        let recs = batch.records(1024).unwrap();
        assert_eq!(batch.record_timestamp(recs[0].timestamp_delta), 9);
    }

    #[test]
    fn short_inputs() {
        assert!(matches!(
            Batch::parse(&[]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            Batch::new_checked(&[0; 10]),
            Err(BatchError::Truncated { .. })
        ));
    }
}
