//! Assembles records into one Kafka RecordBatch v2.
//!
//! [`BatchBuilder`] grows a `Vec` and can compress (with `std`). [`SliceBatchBuilder`]
//! writes an uncompressed batch straight into a caller's buffer, for devices that
//! would rather not grow a heap buffer.
//!
//! Records are encoded as they are pushed, straight into the output; there is no
//! per-record allocation.

use alloc::vec::Vec;

use super::header::{
    Attributes, BatchHeader, CRC_START, HEADER_LEN, LOG_OVERHEAD, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, TimestampType, compute_crc,
};
use super::record::{
    RecordFields, RecordHeader, RecordRef, SliceSink, nullable_len, owned_headers, put_nullable,
    ref_headers,
};
use super::{BatchError, Compression, varint};

/// Largest batch the format can describe: `batchLength` is an int32.
pub const BATCH_BYTES_MAX: u64 = LOG_OVERHEAD as u64 + i32::MAX as u64;

/// Header fields of the batch to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Offset of the first record (the log usually restamps it on append).
    pub base_offset: u64,
    /// Leader epoch (the leader restamps it on append); -1 for none.
    pub partition_leader_epoch: i32,
    /// Codec for the records section.
    pub compression: Compression,
    /// Whose clock the timestamps are. For `LogAppendTime`, push the append time as
    /// each record's timestamp.
    pub timestamp_type: TimestampType,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Part of a transaction.
    pub transactional: bool,
    /// A control batch (transaction marker).
    pub control: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            compression: Compression::None,
            timestamp_type: TimestampType::CreateTime,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            control: false,
        }
    }
}

/// What the builders track besides the bytes: count, last offset delta, timestamps.
#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u32,
    last_offset_delta: Option<u32>,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            count: 0,
            last_offset_delta: None,
            base_timestamp: None,
            max_timestamp: i64::MIN,
        }
    }

    fn next_offset_delta(&self) -> Result<u32, BatchError> {
        match self.last_offset_delta {
            None => Ok(0),
            Some(d) => d
                .checked_add(1)
                .ok_or(BatchError::Invalid("offset delta overflows")),
        }
    }

    /// Checks a record can follow; returns its (offset delta, timestamp delta) as written.
    fn check(
        &self,
        opts: &BatchOptions,
        offset_delta: u32,
        timestamp: i64,
    ) -> Result<(i32, i64), BatchError> {
        if self.count >= i32::MAX as u32 {
            return Err(BatchError::TooLarge {
                what: "record count",
                actual: u64::from(self.count) + 1,
                limit: i32::MAX as u64,
            });
        }
        if let Some(last) = self.last_offset_delta
            && offset_delta <= last
        {
            return Err(BatchError::Invalid("offset deltas must strictly increase"));
        }
        let offset_delta_i32 = i32::try_from(offset_delta)
            .map_err(|_| BatchError::Invalid("offset delta over i32::MAX"))?;
        if opts.base_offset > i64::MAX as u64
            || opts.base_offset + u64::from(offset_delta) > i64::MAX as u64
        {
            return Err(BatchError::Invalid("offset over i64::MAX"));
        }
        let timestamp_delta = match self.base_timestamp {
            None => 0,
            Some(base) => timestamp.checked_sub(base).ok_or(BatchError::Invalid(
                "timestamp too far from the batch's first timestamp",
            ))?,
        };
        Ok((offset_delta_i32, timestamp_delta))
    }

    fn commit(&mut self, offset_delta: u32, timestamp: i64) {
        self.count += 1;
        self.last_offset_delta = Some(offset_delta);
        if self.base_timestamp.is_none() {
            self.base_timestamp = Some(timestamp);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// Fills in the header and CRC of `batch`, which is exactly the whole batch.
    fn finish(&self, opts: &BatchOptions, batch: &mut [u8]) -> Result<(), BatchError> {
        let (Some(last_offset_delta), Some(base_timestamp)) =
            (self.last_offset_delta, self.base_timestamp)
        else {
            return Err(BatchError::Invalid("a batch needs at least one record"));
        };
        let batch_length = batch
            .len()
            .checked_sub(LOG_OVERHEAD)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(BatchError::TooLarge {
                what: "batch",
                actual: batch.len() as u64,
                limit: BATCH_BYTES_MAX,
            })?;
        let header = BatchHeader {
            base_offset: opts.base_offset,
            batch_length: batch_length as u32,
            partition_leader_epoch: opts.partition_leader_epoch,
            crc: 0,
            attributes: Attributes::new(
                opts.compression,
                opts.timestamp_type,
                opts.transactional,
                opts.control,
            ),
            last_offset_delta,
            base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: opts.producer_id,
            producer_epoch: opts.producer_epoch,
            base_sequence: opts.base_sequence,
            record_count: self.count,
        };
        let out: &mut [u8; HEADER_LEN] = batch
            .first_chunk_mut()
            .ok_or(BatchError::Invalid("batch shorter than its header"))?;
        header.write(out);
        let crc = compute_crc(batch);
        if let Some(field) = batch.get_mut(CRC_START - 4..CRC_START) {
            field.copy_from_slice(&crc.to_be_bytes());
        }
        Ok(())
    }
}

/// Builds one batch in a growable buffer.
///
/// ```
/// use eddy_core::batch::{BatchBuilder, BatchOptions, Batch};
/// let mut b = BatchBuilder::new(BatchOptions::default());
/// b.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[])?;
/// let bytes = b.build()?;
/// let batch = Batch::new_checked(&bytes)?;
/// assert_eq!(batch.header.record_count, 1);
/// # Ok::<(), eddy_core::batch::BatchError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    opts: BatchOptions,
    /// Header placeholder followed by the uncompressed records.
    buf: Vec<u8>,
    tally: Tally,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new(opts: BatchOptions) -> BatchBuilder {
        let mut buf = Vec::with_capacity(HEADER_LEN + 64);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            opts,
            buf,
            tally: Tally::new(),
        }
    }

    /// The options the batch is built with.
    pub fn options(&self) -> &BatchOptions {
        &self.opts
    }

    /// Appends a record at the offset after the previous one (0 for the first).
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), BatchError> {
        let offset_delta = self.tally.next_offset_delta()?;
        self.push_with_offset_delta(offset_delta, timestamp, key, value, headers)
    }

    /// Appends a record at an explicit offset delta, which must be larger than the
    /// previous record's (compaction leaves gaps).
    pub fn push_with_offset_delta(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), BatchError> {
        self.push_fields(
            offset_delta,
            timestamp,
            0,
            key,
            value,
            owned_headers(headers),
        )
    }

    /// Appends a record at the offset after the previous one, with headers given as
    /// borrowed `(key, value)` pairs, so a caller holding the fields as slices
    /// copies nothing before the encoding.
    pub fn push_borrowed<'h, H>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: H,
    ) -> Result<(), BatchError>
    where
        H: Iterator<Item = (&'h str, Option<&'h [u8]>)> + Clone,
    {
        let offset_delta = self.tally.next_offset_delta()?;
        self.push_fields(offset_delta, timestamp, 0, key, value, headers)
    }

    /// Appends a record borrowed from another batch (e.g. one compaction keeps), at an
    /// explicit offset delta and absolute timestamp, without copying it into owned form.
    pub fn push_record_ref(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        record: &RecordRef<'_>,
    ) -> Result<(), BatchError> {
        self.push_fields(
            offset_delta,
            timestamp,
            record.attributes,
            record.key,
            record.value,
            ref_headers(record.headers()),
        )
    }

    /// Appends a record at the offset after the previous one, its key, value
    /// and headers given already encoded: the bytes
    /// [`RecordRef::encoded_fields`] gives. They are copied as they are (only
    /// the length, attributes and deltas are written anew), so splitting or
    /// regrouping decoded records costs a copy, not an encoding. The bytes
    /// are not checked again: pass only what a decoded record gave.
    pub fn push_encoded_fields(
        &mut self,
        timestamp: i64,
        attributes: i8,
        fields: &[u8],
    ) -> Result<(), BatchError> {
        let offset_delta = self.begin_record(timestamp, attributes, fields.len())?;
        self.buf.extend_from_slice(fields);
        self.tally.commit(offset_delta, timestamp);
        Ok(())
    }

    /// Appends a record at the offset after the previous one from the
    /// encoded parts of a decoded one: its key and value as encoded
    /// (`key_value`: [`RecordRef::encoded_fields`] up to the header count),
    /// its `own_count` headers as encoded ([`RecordRef::encoded_headers`]),
    /// then `extra` headers encoded here. Keeping a record's key and value
    /// and adding headers to it so costs a copy, not an encoding. The
    /// encoded parts are not checked again: pass only what a decoded record
    /// gave.
    pub fn push_encoded_parts<'h, H>(
        &mut self,
        timestamp: i64,
        attributes: i8,
        key_value: &[u8],
        own_count: u32,
        own_headers: &[u8],
        extra: H,
    ) -> Result<(), BatchError>
    where
        H: Iterator<Item = (&'h str, Option<&'h [u8]>)> + Clone,
    {
        let mut count = own_count as usize;
        let mut extra_len = 0usize;
        for (k, v) in extra.clone() {
            count += 1;
            extra_len = extra_len
                .saturating_add(nullable_len(Some(k.as_bytes()), "header key")?)
                .saturating_add(nullable_len(v, "header value")?);
        }
        let count = i32::try_from(count).map_err(|_| BatchError::TooLarge {
            what: "header count",
            actual: count as u64,
            limit: i32::MAX as u64,
        })?;
        let rest = key_value
            .len()
            .saturating_add(varint::varint_len(count))
            .saturating_add(own_headers.len())
            .saturating_add(extra_len);
        let offset_delta = self.begin_record(timestamp, attributes, rest)?;
        self.buf.extend_from_slice(key_value);
        varint::put_varint(&mut self.buf, count);
        self.buf.extend_from_slice(own_headers);
        for (k, v) in extra {
            put_nullable(&mut self.buf, Some(k.as_bytes()));
            put_nullable(&mut self.buf, v);
        }
        self.tally.commit(offset_delta, timestamp);
        Ok(())
    }

    /// Starts the next record of a `push_encoded_*` call: checks its offset
    /// delta and timestamp against the batch and the batch's size limit,
    /// then writes the record's length, attributes and deltas for a body
    /// whose other `rest` bytes the caller appends before committing the
    /// returned offset delta. Nothing is written when a check fails.
    fn begin_record(
        &mut self,
        timestamp: i64,
        attributes: i8,
        rest: usize,
    ) -> Result<u32, BatchError> {
        let offset_delta = self.tally.next_offset_delta()?;
        let (offset_delta_i32, timestamp_delta) =
            self.tally.check(&self.opts, offset_delta, timestamp)?;
        let body =
            (1 + varint::varlong_len(timestamp_delta) + varint::varint_len(offset_delta_i32))
                .saturating_add(rest);
        let body = i32::try_from(body).map_err(|_| BatchError::TooLarge {
            what: "record",
            actual: body as u64,
            limit: i32::MAX as u64,
        })?;
        let total = body as usize + varint::varint_len(body);
        self.make_room(total)?;
        varint::put_varint(&mut self.buf, body);
        self.buf.push(attributes as u8);
        varint::put_varlong(&mut self.buf, timestamp_delta);
        varint::put_varint(&mut self.buf, offset_delta_i32);
        Ok(offset_delta)
    }

    /// Reserves `total` more bytes, refusing a batch over [`BATCH_BYTES_MAX`].
    fn make_room(&mut self, total: usize) -> Result<(), BatchError> {
        let new_len = self.buf.len() as u64 + total as u64;
        if new_len > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge {
                what: "batch",
                actual: new_len,
                limit: BATCH_BYTES_MAX,
            });
        }
        self.buf.reserve(total);
        Ok(())
    }

    fn push_fields<'h, H>(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        attributes: i8,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: H,
    ) -> Result<(), BatchError>
    where
        H: Iterator<Item = (&'h str, Option<&'h [u8]>)> + Clone,
    {
        let (offset_delta_i32, timestamp_delta) =
            self.tally.check(&self.opts, offset_delta, timestamp)?;
        let fields = RecordFields {
            attributes,
            timestamp_delta,
            offset_delta: offset_delta_i32,
            key,
            value,
            headers,
        };
        let (body_len, total) = fields.encoded_len()?;
        self.make_room(total)?;
        fields.write(&mut self.buf, body_len);
        self.tally.commit(offset_delta, timestamp);
        Ok(())
    }

    /// Makes room for at least `additional` more bytes of records, so a
    /// caller that knows the batch's size spares the buffer's regrowth.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.tally.count as usize
    }

    /// No record pushed yet.
    pub fn is_empty(&self) -> bool {
        self.tally.count == 0
    }

    /// Bytes of the batch so far, header included, before compression.
    pub fn size_estimate(&self) -> usize {
        self.buf.len()
    }

    /// Finishes the batch: header, compression, CRC. Fails on an empty builder, and
    /// on a codec this build cannot write (without `std`, only `None`).
    pub fn build(self) -> Result<Vec<u8>, BatchError> {
        let BatchBuilder {
            opts,
            mut buf,
            tally,
        } = self;
        if tally.count == 0 {
            return Err(BatchError::Invalid("a batch needs at least one record"));
        }
        if opts.compression != Compression::None {
            let compressed =
                compress_records(opts.compression, buf.get(HEADER_LEN..).unwrap_or(&[]))?;
            buf.truncate(HEADER_LEN);
            buf.extend_from_slice(&compressed);
        }
        tally.finish(&opts, &mut buf)?;
        Ok(buf)
    }
}

#[cfg(feature = "std")]
fn compress_records(codec: Compression, records: &[u8]) -> Result<Vec<u8>, BatchError> {
    super::compression::compress(codec, records)
}

#[cfg(not(feature = "std"))]
fn compress_records(codec: Compression, _records: &[u8]) -> Result<Vec<u8>, BatchError> {
    Err(BatchError::UnsupportedCompression(codec.name()))
}

/// Builds one uncompressed batch directly in a caller's buffer, without allocating.
///
/// ```
/// use eddy_core::batch::{Batch, BatchOptions, builder::SliceBatchBuilder};
/// let mut buf = [0u8; 256];
/// let mut b = SliceBatchBuilder::new(&mut buf, BatchOptions::default())?;
/// b.push(42, None, Some(b"reading=17"), &[])?;
/// let bytes = b.finish()?;
/// assert_eq!(Batch::new_checked(bytes)?.header.record_count, 1);
/// # Ok::<(), eddy_core::batch::BatchError>(())
/// ```
#[derive(Debug)]
pub struct SliceBatchBuilder<'b> {
    opts: BatchOptions,
    buf: &'b mut [u8],
    /// Bytes used: header placeholder plus records.
    pos: usize,
    tally: Tally,
}

impl<'b> SliceBatchBuilder<'b> {
    /// Starts a batch in `buf`. Only [`Compression::None`] is supported, and `buf` must
    /// hold at least the header.
    pub fn new(buf: &'b mut [u8], opts: BatchOptions) -> Result<SliceBatchBuilder<'b>, BatchError> {
        if opts.compression != Compression::None {
            return Err(BatchError::UnsupportedCompression(opts.compression.name()));
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::TooLarge {
                what: "batch header",
                actual: HEADER_LEN as u64,
                limit: buf.len() as u64,
            });
        }
        Ok(SliceBatchBuilder {
            opts,
            buf,
            pos: HEADER_LEN,
            tally: Tally::new(),
        })
    }

    /// Appends a record at the offset after the previous one (0 for the first).
    /// If it does not fit, fails with [`BatchError::TooLarge`] and changes nothing.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), BatchError> {
        let offset_delta = self.tally.next_offset_delta()?;
        self.push_with_offset_delta(offset_delta, timestamp, key, value, headers)
    }

    /// Appends a record at an explicit, strictly increasing offset delta.
    /// If it does not fit, fails with [`BatchError::TooLarge`] and changes nothing.
    pub fn push_with_offset_delta(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), BatchError> {
        let (offset_delta_i32, timestamp_delta) =
            self.tally.check(&self.opts, offset_delta, timestamp)?;
        let fields = RecordFields {
            attributes: 0,
            timestamp_delta,
            offset_delta: offset_delta_i32,
            key,
            value,
            headers: owned_headers(headers),
        };
        let (body_len, total) = fields.encoded_len()?;
        let end = self.pos.saturating_add(total);
        if end > self.buf.len() || end as u64 > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge {
                what: "batch",
                actual: end as u64,
                limit: (self.buf.len() as u64).min(BATCH_BYTES_MAX),
            });
        }
        let mut sink = SliceSink {
            buf: &mut *self.buf,
            pos: self.pos,
            overflow: false,
        };
        fields.write(&mut sink, body_len);
        // `encoded_len` and `write` agree, and the space was checked above.
        assert!(!sink.overflow && sink.pos == end);
        self.pos = end;
        self.tally.commit(offset_delta, timestamp);
        Ok(())
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.tally.count as usize
    }

    /// No record pushed yet.
    pub fn is_empty(&self) -> bool {
        self.tally.count == 0
    }

    /// Bytes of the batch so far, header included.
    pub fn size(&self) -> usize {
        self.pos
    }

    /// Writes the header and CRC and returns the finished batch (a prefix of the buffer).
    pub fn finish(self) -> Result<&'b [u8], BatchError> {
        let SliceBatchBuilder {
            opts,
            buf,
            pos,
            tally,
        } = self;
        let batch = buf
            .get_mut(..pos)
            .ok_or(BatchError::Invalid("batch longer than its buffer"))?;
        tally.finish(&opts, batch)?;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::header::verify_crc;
    use alloc::vec;

    #[test]
    fn encoded_fields_build_the_same_batch_as_the_fields() {
        // Records from one batch, some moved to another with new deltas
        // (timestamps before and after the new base, a large value, null
        // key and value, headers): the copy is byte for byte the encoding.
        let mut source = BatchBuilder::new(BatchOptions::default());
        let big = vec![7u8; 300];
        let headers = [
            RecordHeader::new("h", Some(b"v")),
            RecordHeader::new("n", None),
        ];
        source.push(5_000, Some(b"a"), Some(b"1"), &[]).unwrap();
        source.push(1_000, None, Some(&big), &headers).unwrap();
        source
            .push(9_000_000, Some(b"c"), None, &headers[..1])
            .unwrap();
        source.push(4_000, None, None, &[]).unwrap();
        let source = source.build().unwrap();
        let batch = crate::batch::Batch::new_checked(&source).unwrap();
        let records: Vec<_> = batch.record_refs().unwrap().map(|r| r.unwrap()).collect();
        for codec in [Compression::None, Compression::Lz4] {
            let opts = BatchOptions {
                compression: codec,
                ..BatchOptions::default()
            };
            let (mut copied, mut encoded) = (BatchBuilder::new(opts), BatchBuilder::new(opts));
            for r in records.iter().skip(1) {
                let ts = batch.record_timestamp(r.timestamp_delta);
                copied
                    .push_encoded_fields(ts, 0, r.encoded_fields())
                    .unwrap();
                encoded
                    .push_borrowed(ts, r.key, r.value, r.headers().map(|h| (h.key, h.value)))
                    .unwrap();
            }
            let copied = copied.build().unwrap();
            assert_eq!(copied, encoded.build().unwrap());
            // The same records with two headers added, from their parts.
            let added = [("g", Some(&b"gw"[..])), ("z", None)];
            let (mut parts, mut encoded) = (BatchBuilder::new(opts), BatchBuilder::new(opts));
            for r in records.iter().skip(1) {
                let ts = batch.record_timestamp(r.timestamp_delta);
                let fields = r.encoded_fields();
                let own = r.encoded_headers();
                let key_value = &fields[..fields.len() - own.len() - 1];
                parts
                    .push_encoded_parts(ts, 0, key_value, r.header_count(), own, added.into_iter())
                    .unwrap();
                let headers = r.headers().map(|h| (h.key, h.value)).chain(added);
                encoded.push_borrowed(ts, r.key, r.value, headers).unwrap();
            }
            assert_eq!(parts.build().unwrap(), encoded.build().unwrap());
            let h = verify_crc(&copied).unwrap();
            assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 9_000_000));
            assert_eq!((h.record_count, h.last_offset_delta), (3, 2));
        }
    }

    #[test]
    fn header_fields_follow_the_records() {
        let opts = BatchOptions {
            base_offset: 100,
            partition_leader_epoch: 7,
            producer_id: 9,
            producer_epoch: 2,
            base_sequence: 40,
            transactional: true,
            ..BatchOptions::default()
        };
        let mut b = BatchBuilder::new(opts);
        assert!(b.is_empty());
        b.push(1000, Some(b"a"), None, &[]).unwrap();
        b.push(900, None, Some(b"b"), &[RecordHeader::new("h", None)])
            .unwrap();
        b.push(1500, None, None, &[]).unwrap();
        assert_eq!(b.len(), 3);
        let size = b.size_estimate();
        let bytes = b.build().unwrap();
        assert_eq!(bytes.len(), size);
        let h = verify_crc(&bytes).unwrap();
        assert_eq!(h.base_offset, 100);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 1000);
        assert_eq!(h.max_timestamp, 1500);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.producer_id, 9);
        assert_eq!(h.producer_epoch, 2);
        assert_eq!(h.base_sequence, 40);
        assert!(h.attributes.is_transactional());
        assert!(!h.attributes.is_control());
        assert_eq!(h.attributes.compression(), Ok(Compression::None));
    }

    #[test]
    fn borrowed_headers_encode_like_owned_ones() {
        let headers = [
            RecordHeader::new("h", Some(b"1")),
            RecordHeader::new("n", None),
        ];
        let mut owned = BatchBuilder::new(BatchOptions::default());
        owned.push(5, Some(b"k"), Some(b"v"), &headers).unwrap();
        let mut borrowed = BatchBuilder::new(BatchOptions::default());
        borrowed
            .push_borrowed(
                5,
                Some(b"k"),
                Some(b"v"),
                [("h", Some(&b"1"[..])), ("n", None)].into_iter(),
            )
            .unwrap();
        assert_eq!(owned.build().unwrap(), borrowed.build().unwrap());
    }

    #[test]
    fn offset_deltas_must_increase() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push_with_offset_delta(3, 0, None, None, &[]).unwrap();
        assert!(matches!(
            b.push_with_offset_delta(3, 0, None, None, &[]),
            Err(BatchError::Invalid(_))
        ));
        assert!(matches!(
            b.push_with_offset_delta(1, 0, None, None, &[]),
            Err(BatchError::Invalid(_))
        ));
        // `push` continues after the last delta.
        b.push(0, None, None, &[]).unwrap();
        assert!(matches!(
            b.push_with_offset_delta(u32::MAX, 0, None, None, &[]),
            Err(BatchError::Invalid(_))
        ));
        let bytes = b.build().unwrap();
        let h = verify_crc(&bytes).unwrap();
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.record_count, 2);
    }

    #[test]
    fn empty_batch_is_refused() {
        let b = BatchBuilder::new(BatchOptions::default());
        assert!(matches!(b.build(), Err(BatchError::Invalid(_))));
    }

    #[test]
    fn extreme_timestamps_fail_cleanly() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push(i64::MIN, None, None, &[]).unwrap();
        assert!(matches!(
            b.push(i64::MAX, None, None, &[]),
            Err(BatchError::Invalid(_))
        ));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn base_offset_past_i64_fails() {
        let mut b = BatchBuilder::new(BatchOptions {
            base_offset: i64::MAX as u64,
            ..BatchOptions::default()
        });
        b.push(0, None, None, &[]).unwrap();
        assert!(matches!(
            b.push(0, None, None, &[]),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn slice_builder_matches_vec_builder() {
        let headers = [RecordHeader::new("trace", Some(b"abc"))];
        let mut v = BatchBuilder::new(BatchOptions::default());
        let mut buf = vec![0u8; 512];
        let mut s = SliceBatchBuilder::new(&mut buf, BatchOptions::default()).unwrap();
        for i in 0..5i64 {
            let value = [i as u8; 7];
            v.push(i * 10, Some(b"k"), Some(&value), &headers).unwrap();
            s.push(i * 10, Some(b"k"), Some(&value), &headers).unwrap();
        }
        assert_eq!(s.len(), 5);
        let a = v.build().unwrap();
        let b = s.finish().unwrap();
        assert_eq!(a.as_slice(), b);
    }

    #[test]
    fn slice_builder_refuses_what_does_not_fit_and_stays_usable() {
        let mut buf = [0u8; HEADER_LEN + 12];
        let mut s = SliceBatchBuilder::new(&mut buf, BatchOptions::default()).unwrap();
        s.push(1, None, Some(b"ab"), &[]).unwrap();
        let before = s.size();
        assert!(matches!(
            s.push(2, None, Some(b"too long for the rest"), &[]),
            Err(BatchError::TooLarge { .. })
        ));
        assert_eq!(s.size(), before);
        assert_eq!(s.len(), 1);
        let batch = s.finish().unwrap();
        assert_eq!(verify_crc(batch).unwrap().record_count, 1);
    }

    #[test]
    fn slice_builder_checks_its_inputs() {
        let mut small = [0u8; 10];
        assert!(matches!(
            SliceBatchBuilder::new(&mut small, BatchOptions::default()),
            Err(BatchError::TooLarge { .. })
        ));
        let mut buf = [0u8; 100];
        let opts = BatchOptions {
            compression: Compression::Lz4,
            ..BatchOptions::default()
        };
        assert!(matches!(
            SliceBatchBuilder::new(&mut buf, opts),
            Err(BatchError::UnsupportedCompression("lz4"))
        ));
        let s = SliceBatchBuilder::new(&mut buf, BatchOptions::default()).unwrap();
        assert!(matches!(s.finish(), Err(BatchError::Invalid(_))));
    }

    #[cfg(not(feature = "std"))]
    #[test]
    fn without_std_only_uncompressed_batches_build() {
        let mut b = BatchBuilder::new(BatchOptions {
            compression: Compression::Zstd,
            ..BatchOptions::default()
        });
        b.push(0, None, None, &[]).unwrap();
        assert!(matches!(
            b.build(),
            Err(BatchError::UnsupportedCompression("zstd"))
        ));
    }

    #[cfg(feature = "std")]
    #[test]
    fn snappy_is_unsupported() {
        let mut b = BatchBuilder::new(BatchOptions {
            compression: Compression::Snappy,
            ..BatchOptions::default()
        });
        b.push(0, None, None, &[]).unwrap();
        assert!(matches!(
            b.build(),
            Err(BatchError::UnsupportedCompression("snappy"))
        ));
    }
}
