//! Record batches to the flat layout plugins see, and back.
//!
//! A produce request's batches are decoded once (decompressed if needed)
//! into a [`Flat`] batch: one byte buffer and tables of spans into it. For
//! the usual request (one uncompressed batch) the buffer is the request's
//! own records section, borrowed: nothing is copied before the call, and
//! crossing into Wasm costs three list copies whatever the number of
//! records. After the plugins ran, each batch whose records all came
//! through unchanged is passed on byte for byte, and the others are rebuilt
//! once, in the codec they will be stored with: records whose key and value
//! came through are copied as they were encoded (their headers too, plus
//! any a plugin appended), the others encoded from slices. Splitting a
//! request across partitions copies every record as encoded.

use std::borrow::Cow;

use eddy_core::batch::{Batch, BatchBuilder, BatchOptions, Compression, RecordIter, varint};
use eddy_core::compaction::DECOMPRESSED_BATCH_BYTES_MAX;

use super::engine::bindings::types as wit_batch;
use super::engine::bindings::verdict_types as wit;

/// One batch of the request.
#[derive(Debug)]
pub struct BatchMeta {
    /// How to rebuild it.
    pub opts: BatchOptions,
    /// Its bytes in the request.
    pub start: usize,
    pub end: usize,
    /// Its records' indexes in the request; none for control batches, which
    /// plugins do not see and which pass unchanged.
    pub first: usize,
    pub count: usize,
}

/// Records laid out as the WIT `batch` type: keys, values and headers in
/// `data`, and integer tables of where each lies (see `wit/plugin.wit`).
#[derive(Debug)]
pub struct Flat<'a> {
    pub data: Cow<'a, [u8]>,
    pub timestamps: Vec<i64>,
    /// Key range, value range: four words per record.
    pub fields: Vec<u32>,
    /// One word per record plus one.
    pub header_starts: Vec<u32>,
    /// Key range, value range: four words per header.
    pub headers: Vec<u32>,
}

/// A header as the encoder takes it.
pub type HeaderPair<'h> = (&'h str, Option<&'h [u8]>);

/// A length that stands for Kafka's null.
pub const NULL: u32 = u32::MAX;

/// The bytes `s` names in `data` (empty if outside; spans are checked
/// where they come from).
pub fn slice(data: &[u8], s: wit::Span) -> &[u8] {
    let start = s.offset as usize;
    data.get(start..start.saturating_add(s.len as usize))
        .unwrap_or_default()
}

/// Whether `s` lies inside `data`.
pub fn in_bounds(data: &[u8], s: wit::Span) -> bool {
    (s.offset as usize)
        .checked_add(s.len as usize)
        .is_some_and(|end| end <= data.len())
}

/// The range at `words[at..at + 2]` in `data`; `None` for null.
fn range<'d>(data: &'d [u8], words: &[u32], at: usize) -> Option<&'d [u8]> {
    let (Some(&offset), Some(&len)) = (words.get(at), words.get(at + 1)) else {
        return Some(&[]);
    };
    if len == NULL {
        return None;
    }
    Some(slice(data, wit::Span { offset, len }))
}

fn to_u32(n: usize) -> Result<u32, String> {
    u32::try_from(n).ok().filter(|n| *n != NULL).ok_or_else(|| {
        "the request's records are over 4 GiB, more than a plugin can address".to_owned()
    })
}

impl<'a> Flat<'a> {
    /// An empty batch with room for `records` records and `bytes` bytes.
    pub fn with_capacity(records: usize, bytes: usize) -> Flat<'static> {
        let mut header_starts = Vec::with_capacity(records + 1);
        header_starts.push(0);
        Flat {
            data: Cow::Owned(Vec::with_capacity(bytes)),
            timestamps: Vec::with_capacity(records),
            fields: Vec::with_capacity(records * 4),
            header_starts,
            headers: Vec::new(),
        }
    }

    /// The batch as the WIT parameter (borrowed).
    pub fn as_param(&self) -> wit_batch::Batch<'_> {
        wit_batch::Batch {
            data: &self.data,
            timestamps: &self.timestamps,
            fields: &self.fields,
            header_starts: &self.header_starts,
            headers: &self.headers,
        }
    }

    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn key(&self, i: usize) -> Option<&[u8]> {
        range(&self.data, &self.fields, i * 4)
    }

    pub fn value(&self, i: usize) -> Option<&[u8]> {
        range(&self.data, &self.fields, i * 4 + 2)
    }

    /// Record `i`'s number of headers.
    pub fn header_count(&self, i: usize) -> u32 {
        let start = |i: usize| self.header_starts.get(i).copied().unwrap_or_default();
        start(i + 1).saturating_sub(start(i))
    }

    pub fn timestamp(&self, i: usize) -> i64 {
        self.timestamps.get(i).copied().unwrap_or_default()
    }

    /// Record `i`'s headers.
    pub fn headers(&self, i: usize) -> impl Iterator<Item = HeaderPair<'_>> + Clone {
        let start = |i: usize| self.header_starts.get(i).map_or(0, |s| *s as usize);
        let count = self.headers.len() / 4;
        let first = start(i).min(count);
        let end = start(i + 1).clamp(first, count);
        (first..end).map(move |h| {
            (
                // Keys were checked to be UTF-8 by the record decoder.
                range(&self.data, &self.headers, h * 4)
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .unwrap_or_default(),
                range(&self.data, &self.headers, h * 4 + 2),
            )
        })
    }

    /// Every header key, checked once (they were checked to be UTF-8 by
    /// the record decoder or when a plugin's answer came back), for
    /// [`Flat::headers_keyed`].
    pub fn header_keys(&self) -> Vec<&str> {
        (0..self.headers.len() / 4)
            .map(|h| {
                range(&self.data, &self.headers, h * 4)
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Record `i`'s headers, with keys from [`Flat::header_keys`].
    pub fn headers_keyed<'x>(
        &'x self,
        i: usize,
        keys: &'x [&'x str],
    ) -> impl Iterator<Item = HeaderPair<'x>> + Clone + use<'x, 'a> {
        let start = |i: usize| self.header_starts.get(i).map_or(0, |s| *s as usize);
        let count = keys.len().min(self.headers.len() / 4);
        let first = start(i).min(count);
        let end = start(i + 1).clamp(first, count);
        (first..end).map(move |h| (keys[h], range(&self.data, &self.headers, h * 4 + 2)))
    }

    /// Appends a record (copying its bytes).
    pub fn push<'h>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = HeaderPair<'h>>,
    ) -> Result<(), String> {
        let data = self.data.to_mut();
        let mut put = |bytes: Option<&[u8]>, out: &mut Vec<u32>| -> Result<(), String> {
            match bytes {
                None => out.extend([0, NULL]),
                Some(bytes) => {
                    let offset = to_u32(data.len())?;
                    to_u32(data.len() + bytes.len())?;
                    out.extend([offset, bytes.len() as u32]);
                    data.extend_from_slice(bytes);
                }
            }
            Ok(())
        };
        put(key, &mut self.fields)?;
        put(value, &mut self.fields)?;
        for (k, v) in headers {
            put(Some(k.as_bytes()), &mut self.headers)?;
            put(v, &mut self.headers)?;
        }
        self.timestamps.push(timestamp);
        self.header_starts.push(to_u32(self.headers.len() / 4)?);
        Ok(())
    }
}

/// The keys of a plugin's `headers`, checked to be UTF-8 (an error names
/// the first that is not, or lies outside `data`).
pub fn answer_keys<'h>(data: &'h [u8], headers: &[wit::Header]) -> Result<Vec<&'h str>, String> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if !in_bounds(data, h.key) {
                return Err(format!("returned header {i} with a key outside its data"));
            }
            std::str::from_utf8(slice(data, h.key))
                .map_err(|_| format!("returned header {i} with a key that is not UTF-8"))
        })
        .collect()
}

/// Headers `first..first + count` of a plugin's `headers`, their bytes in
/// `data`, their keys from [`answer_keys`].
pub fn header_pairs<'h>(
    data: &'h [u8],
    headers: &'h [wit::Header],
    keys: &'h [&'h str],
    first: usize,
    count: usize,
) -> impl Iterator<Item = HeaderPair<'h>> + Clone + use<'h> {
    let end = first
        .saturating_add(count)
        .min(keys.len())
        .min(headers.len());
    let first = first.min(end);
    (first..end).map(move |j| (keys[j], headers[j].value.map(|s| slice(data, s))))
}

/// A request's records, flat, and the batches they came from.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub batches: Vec<BatchMeta>,
    pub flat: Flat<'a>,
    /// Where each record's fields lie in `flat.data` as they were encoded.
    pub encoded: Encoded,
}

impl Decoded<'_> {
    /// Record `i`'s key, value and headers as encoded in its batch.
    fn encoded_fields(&self, i: usize) -> Option<&[u8]> {
        self.encoded.fields(&self.flat.data, i)
    }
}

/// Where each record's key, value and headers lie in the decoded data as
/// they were encoded, so records that go on unchanged (split across
/// partitions, kept, or given extra headers) are copied instead of being
/// encoded again. Four words per record: the offset of its key's length,
/// the length of its key and value, where its own headers start after
/// their count (from that offset), and the length to the record's end.
#[derive(Debug, Default)]
pub struct Encoded(Vec<u32>);

/// Record parts as [`Encoded::parts`] gives them: its key and value, its
/// header count and its headers, as encoded.
pub type EncodedParts<'d> = (&'d [u8], u32, &'d [u8]);

impl Encoded {
    fn words(&self, i: usize) -> Option<[usize; 4]> {
        let w = self.0.get(i * 4..i * 4 + 4)?;
        Some([w[0] as usize, w[1] as usize, w[2] as usize, w[3] as usize])
    }

    /// Record `i`'s key, value and headers as encoded (`None` if unknown).
    pub fn fields<'d>(&self, data: &'d [u8], i: usize) -> Option<&'d [u8]> {
        let [offset, _, _, len] = self.words(i)?;
        data.get(offset..offset.checked_add(len)?)
    }

    /// Record `i`'s key and value as encoded, and its `count` headers as
    /// encoded after their count (`None` if unknown).
    pub fn parts<'d>(&self, data: &'d [u8], i: usize, count: u32) -> Option<EncodedParts<'d>> {
        let [offset, kv, headers, len] = self.words(i)?;
        let fields = data.get(offset..offset.checked_add(len)?)?;
        Some((fields.get(..kv)?, count, fields.get(headers..)?))
    }
}

/// Decodes every batch (length and CRC checked) into one flat batch.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, String> {
    type Part<'b> = (BatchMeta, Option<(Batch<'b>, Cow<'b, [u8]>)>);
    let mut parts: Vec<Part<'_>> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let start = bytes.len() - rest.len();
        let (batch, after) =
            Batch::parse(rest).map_err(|e| format!("batch at byte {start}: {e}"))?;
        rest = after;
        let end = bytes.len() - rest.len();
        let h = &batch.header;
        let compression = h.attributes.compression().map_err(|e| e.to_string())?;
        let opts = BatchOptions {
            base_offset: 0,
            compression,
            timestamp_type: h.attributes.timestamp_type(),
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            transactional: h.attributes.is_transactional(),
            ..BatchOptions::default()
        };
        let section = if h.attributes.is_control() {
            None
        } else {
            let section = batch
                .decompressed(DECOMPRESSED_BATCH_BYTES_MAX)
                .map_err(|e| format!("batch at byte {start}: {e}"))?;
            Some((batch, section))
        };
        let meta = BatchMeta {
            opts,
            start,
            end,
            first: 0,
            count: 0,
        };
        parts.push((meta, section));
    }
    let sections = parts.iter().filter(|(_, s)| s.is_some()).count();
    let total: usize = parts
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|(_, s)| s.len()))
        .sum();
    to_u32(total)?;
    let records: usize = parts
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|(b, _)| b.header.record_count as usize))
        .sum();
    // Bounded: a record takes at least 7 bytes of the request (unless
    // compressed; then the tables grow as needed).
    let capacity = records.min(bytes.len() / 7 + 1);
    let mut flat = Flat::with_capacity(capacity, 0);
    flat.data = Cow::Borrowed(&[]);
    let mut encoded = Vec::with_capacity(capacity * 4);
    // One section is passed as it lies; several are joined.
    let mut joined = Vec::with_capacity(if sections > 1 { total } else { 0 });
    let mut batches = Vec::with_capacity(parts.len());
    let mut base = 0usize;
    for (mut meta, part) in parts {
        meta.first = flat.len();
        if let Some((batch, section)) = part {
            let start = meta.start;
            let origin = section.as_ptr() as usize;
            // `total` fits in u32 (below NULL), and so does every offset
            // and length below it.
            let put = |field: Option<&[u8]>, out: &mut Vec<u32>| match field {
                None => out.extend([0, NULL]),
                Some(f) => out.extend([
                    (base + (f.as_ptr() as usize - origin)) as u32,
                    f.len() as u32,
                ]),
            };
            for r in RecordIter::new(&section, &batch.header) {
                let r = r.map_err(|e| format!("batch at byte {start}: {e}"))?;
                for h in r.headers() {
                    put(Some(h.key.as_bytes()), &mut flat.headers);
                    put(h.value, &mut flat.headers);
                }
                put(r.key, &mut flat.fields);
                put(r.value, &mut flat.fields);
                let fields = r.encoded_fields();
                let own = r.encoded_headers();
                encoded.extend([
                    (base + (fields.as_ptr() as usize - origin)) as u32,
                    // The key and value, then the header count, then the
                    // headers: all inside the record.
                    (fields.len().saturating_sub(own.len()))
                        .saturating_sub(varint::varint_len(r.header_count() as i32))
                        as u32,
                    (fields.len().saturating_sub(own.len())) as u32,
                    fields.len() as u32,
                ]);
                flat.timestamps
                    .push(batch.record_timestamp(r.timestamp_delta));
                flat.header_starts.push((flat.headers.len() / 4) as u32);
            }
            base += section.len();
            if sections == 1 {
                flat.data = section;
            } else {
                joined.extend_from_slice(&section);
            }
        }
        meta.count = flat.len() - meta.first;
        batches.push(meta);
    }
    if sections > 1 {
        flat.data = Cow::Owned(joined);
    }
    Ok(Decoded {
        batches,
        flat,
        encoded: Encoded(encoded),
    })
}

/// The request's batches after the plugins: batches none of whose records
/// changed byte for byte, the others rebuilt (in `codec` when given, else
/// the producer's) with `push(builder, position)`. `position[i]` is where
/// record `i` of the request is now (`None`: dropped or rejected);
/// `changed[i]` whether a plugin rewrote it. `None` if no record is left.
pub fn encode(
    bytes: &[u8],
    batches: &[BatchMeta],
    position: &[Option<u32>],
    changed: &[bool],
    codec: Option<Compression>,
    mut push: impl FnMut(&mut BatchBuilder, usize) -> Result<(), String>,
) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (n, b) in batches.iter().enumerate() {
        let range = b.first..b.first + b.count;
        let untouched = position[range.clone()].iter().all(Option::is_some)
            && !changed[range.clone()].iter().any(|c| *c);
        if untouched {
            // Control batches and untouched ones.
            out.reserve(bytes.len() - b.start);
            out.extend_from_slice(&bytes[b.start..b.end]);
            continue;
        }
        let mut opts = b.opts;
        if let Some(codec) = codec {
            opts.compression = codec;
        }
        let mut builder = BatchBuilder::new(opts);
        // About the batch's size as it came (more when records grew).
        builder.reserve(b.end - b.start);
        for pos in position[range].iter().flatten() {
            push(&mut builder, *pos as usize)?;
        }
        if !builder.is_empty() {
            let batch = builder
                .build()
                .map_err(|e| format!("cannot encode a batch: {e}"))?;
            if out.is_empty() && n + 1 == batches.len() {
                // The usual request, one batch: no copy.
                out = batch;
            } else {
                out.extend_from_slice(&batch);
            }
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// Appends a record to `builder`.
pub fn push<'h>(
    builder: &mut BatchBuilder,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl Iterator<Item = HeaderPair<'h>> + Clone,
) -> Result<(), String> {
    builder
        .push_borrowed(timestamp, key, value, headers)
        .map_err(|e| format!("cannot encode a record: {e}"))
}

/// The partition every record goes to, when they all go to one.
pub fn single_partition(partitions: &[u32]) -> Option<u32> {
    let &first = partitions.first()?;
    partitions.iter().all(|p| *p == first).then_some(first)
}

/// Splits the records across partitions: one batch per partition, in the
/// order of each partition's first record, keeping every record's order
/// within its partition, the first batch's timestamp type and producer
/// fields, and `codec` (else the first batch's codec). When every record
/// goes to one partition, the request's batches go there as they are.
///
/// Records are not encoded again: each one's key, value and headers are
/// copied as they lie in the (decompressed) request, behind a new length,
/// timestamp delta and offset delta; the batch header and CRC are new.
pub fn split(
    bytes: &[u8],
    decoded: &Decoded<'_>,
    partitions: &[u32],
    codec: Option<Compression>,
) -> Result<Vec<(u32, Vec<u8>)>, String> {
    if let Some(first) = single_partition(partitions) {
        return Ok(vec![(first, bytes.to_vec())]);
    }
    let mut opts = decoded.batches.first().map(|b| b.opts).unwrap_or_default();
    if let Some(codec) = codec {
        opts.compression = codec;
    }
    // Each partition's slot in `builders`, in the order of its first
    // record (partitions are below the topic's count, at most
    // `PARTITIONS_PER_TOPIC_MAX`, as the caller checked), and its bytes, so no builder regrows (a record's length,
    // attributes and deltas take at most 21 bytes besides its fields).
    let mut slot_of: Vec<u32> = Vec::new();
    let mut sizes: Vec<(u32, usize)> = Vec::new();
    for (i, &p) in partitions.iter().enumerate() {
        let p_idx = p as usize;
        if slot_of.len() <= p_idx {
            slot_of.resize(p_idx + 1, u32::MAX);
        }
        if slot_of[p_idx] == u32::MAX {
            slot_of[p_idx] = sizes.len() as u32;
            sizes.push((p, 0));
        }
        let size = &mut sizes[slot_of[p_idx] as usize].1;
        let len = decoded.encoded_fields(i).map_or(0, <[u8]>::len);
        *size = size.saturating_add(len + 21);
    }
    let mut builders: Vec<(u32, BatchBuilder)> = sizes
        .into_iter()
        .map(|(p, size)| {
            let mut builder = BatchBuilder::new(opts);
            builder.reserve(size);
            (p, builder)
        })
        .collect();
    let flat = &decoded.flat;
    for (i, &p) in partitions.iter().enumerate() {
        let (Some((_, builder)), Some(fields)) = (
            builders.get_mut(slot_of[p as usize] as usize),
            decoded.encoded_fields(i),
        ) else {
            return Err(format!("record {i} was not decoded"));
        };
        builder
            .push_encoded_fields(flat.timestamp(i), 0, fields)
            .map_err(|e| format!("cannot encode a record: {e}"))?;
    }
    builders
        .into_iter()
        .map(|(p, b)| {
            b.build()
                .map(|bytes| (p, bytes))
                .map_err(|e| format!("cannot encode a batch: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::batch::{BatchIter, Compression, RecordHeader};

    fn batch(compression: Compression, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions {
            compression,
            ..BatchOptions::default()
        });
        for (i, v) in values.iter().enumerate() {
            b.push(
                1_000 + i as i64,
                Some(b"k"),
                Some(v.as_bytes()),
                &[RecordHeader::new("h", Some(b"1"))],
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    fn values(flat: &Flat<'_>) -> Vec<String> {
        (0..flat.len())
            .map(|i| String::from_utf8(flat.value(i).unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn one_uncompressed_batch_is_borrowed_and_others_are_joined() {
        let one = batch(Compression::None, &["a", "b"]);
        let d = decode(&one).unwrap();
        assert!(matches!(d.flat.data, Cow::Borrowed(_)));
        assert_eq!(values(&d.flat), ["a", "b"]);
        assert_eq!(d.flat.key(1), Some(&b"k"[..]));
        assert_eq!(d.flat.timestamp(1), 1_001);
        assert_eq!(
            d.flat.headers(0).collect::<Vec<_>>(),
            [("h", Some(&b"1"[..]))]
        );
        let mut two = batch(Compression::Lz4, &["c"]);
        two.extend(batch(Compression::None, &["d", "e"]));
        let d = decode(&two).unwrap();
        assert!(matches!(d.flat.data, Cow::Owned(_)));
        assert_eq!(values(&d.flat), ["c", "d", "e"]);
        assert_eq!((d.batches[1].first, d.batches[1].count), (1, 2));
        assert_eq!(d.flat.headers(2).count(), 1);
    }

    #[test]
    fn untouched_batches_pass_byte_for_byte_and_changed_ones_take_the_final_codec() {
        let mut bytes = batch(Compression::None, &["a", "b"]);
        bytes.extend(batch(Compression::Lz4, &["c", "d", "e"]));
        let d = decode(&bytes).unwrap();
        assert_eq!(d.flat.len(), 5);
        // c rewritten, d gone, the rest as they were.
        let mut current = Flat::with_capacity(4, 64);
        for i in [0, 1, 2, 4] {
            let value = if i == 2 {
                Some(&b"C"[..])
            } else {
                d.flat.value(i)
            };
            current
                .push(d.flat.timestamp(i), d.flat.key(i), value, d.flat.headers(i))
                .unwrap();
        }
        let position = [Some(0), Some(1), Some(2), None, Some(3)];
        let changed = [false, false, true, false, false];
        for codec in [None, Some(Compression::Zstd)] {
            let out = encode(&bytes, &d.batches, &position, &changed, codec, |b, i| {
                push(
                    b,
                    current.timestamp(i),
                    current.key(i),
                    current.value(i),
                    current.headers(i),
                )
            })
            .unwrap()
            .unwrap();
            let first_len = d.batches[0].end;
            assert_eq!(&out[..first_len], &bytes[..first_len]);
            let batches: Vec<_> = BatchIter::new(&out).map(|b| b.unwrap()).collect();
            assert_eq!(batches.len(), 2);
            assert_eq!(
                batches[1].compression().unwrap(),
                codec.unwrap_or(Compression::Lz4)
            );
            let again = decode(&out).unwrap();
            assert_eq!(values(&again.flat), ["a", "b", "C", "e"]);
            assert_eq!(again.flat.timestamp(3), 1_002);
            assert_eq!(again.flat.headers(2).count(), 1);
        }
        let gone = [None; 5];
        assert!(
            encode(&bytes, &d.batches, &gone, &[false; 5], None, |_, _| {
                unreachable!("nothing to push")
            })
            .unwrap()
            .is_none()
        );
    }

    /// How requests were split before: every record decoded into fields
    /// and encoded again.
    fn split_by_rebuild(
        decoded: &Decoded<'_>,
        partitions: &[u32],
        codec: Option<Compression>,
    ) -> Vec<(u32, Vec<u8>)> {
        let mut opts = decoded.batches[0].opts;
        if let Some(codec) = codec {
            opts.compression = codec;
        }
        let flat = &decoded.flat;
        let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
        for (i, &p) in partitions.iter().enumerate() {
            let slot = match builders.iter().position(|(q, _)| *q == p) {
                Some(slot) => slot,
                None => {
                    builders.push((p, BatchBuilder::new(opts)));
                    builders.len() - 1
                }
            };
            let b = &mut builders[slot].1;
            push(
                b,
                flat.timestamp(i),
                flat.key(i),
                flat.value(i),
                flat.headers(i),
            )
            .unwrap();
        }
        builders
            .into_iter()
            .map(|(p, b)| (p, b.build().unwrap()))
            .collect()
    }

    /// Every record of `bytes` as the consumer sees it.
    fn records_of(bytes: &[u8]) -> Vec<eddy_core::batch::Record> {
        BatchIter::new(bytes)
            .flat_map(|b| {
                let b = b.unwrap();
                let records = b.records(DECOMPRESSED_BATCH_BYTES_MAX).unwrap();
                records.into_iter().map(move |mut r| {
                    // Absolute timestamps and offsets, so batches compare.
                    r.timestamp_delta = b.record_timestamp(r.timestamp_delta);
                    r.offset_delta = b.record_offset(r.offset_delta) as i32;
                    r
                })
            })
            .collect()
    }

    #[test]
    fn split_copies_records_as_the_rebuild_encoded_them() {
        // Two batches (one compressed, one not), headers, null keys and
        // values, timestamps going back and forth.
        let opts = |compression| BatchOptions {
            compression,
            ..BatchOptions::default()
        };
        let mut first = BatchBuilder::new(opts(Compression::Lz4));
        let mut second = BatchBuilder::new(opts(Compression::None));
        let long = vec![b'x'; 200];
        for i in 0..40i64 {
            let ts = 1_700_000_000_000 + (i * 7919 % 13) * 1_000 - 5_000;
            let key = format!("k{i}");
            let headers: Vec<RecordHeader> = (0..i % 3)
                .map(|h| RecordHeader::new(&format!("h{h}"), (h != 1).then_some(&b"v"[..])))
                .collect();
            let value: Option<&[u8]> = match i % 5 {
                0 => None,
                1 => Some(&long),
                _ => Some(key.as_bytes()),
            };
            let b = if i < 25 { &mut first } else { &mut second };
            b.push(ts, (i % 4 != 0).then_some(key.as_bytes()), value, &headers)
                .unwrap();
        }
        let mut bytes = first.build().unwrap();
        bytes.extend(second.build().unwrap());
        let d = decode(&bytes).unwrap();
        let partitions: Vec<u32> = (0..40u32).map(|i| (i * 7) % 5).collect();
        for codec in [None, Some(Compression::None), Some(Compression::Zstd)] {
            let raw = split(&bytes, &d, &partitions, codec).unwrap();
            let rebuilt = split_by_rebuild(&d, &partitions, codec);
            assert_eq!(raw.len(), 5);
            for ((p, a), (q, b)) in raw.iter().zip(&rebuilt) {
                assert_eq!(p, q);
                // CRC and lengths checked by the decoder.
                assert_eq!(records_of(a), records_of(b), "partition {p}");
                let (batch, rest) = Batch::parse(a).unwrap();
                assert!(rest.is_empty());
                let (other, _) = Batch::parse(b).unwrap();
                assert_eq!(batch.header.base_timestamp, other.header.base_timestamp);
                assert_eq!(batch.header.max_timestamp, other.header.max_timestamp);
                assert_eq!(batch.header.record_count, other.header.record_count);
                assert_eq!(batch.compression().unwrap(), other.compression().unwrap());
                if batch.compression().unwrap() == Compression::None {
                    // Uncompressed, the two are the same bytes.
                    assert_eq!(a, b);
                }
            }
            // Every record of the request in its partition, in order, with
            // its key, value, headers and timestamp.
            let input = records_of(&bytes);
            for (p, batch) in &raw {
                let want: Vec<_> = input
                    .iter()
                    .zip(&partitions)
                    .filter(|(_, q)| *q == p)
                    .enumerate()
                    .map(|(n, (r, _))| eddy_core::batch::Record {
                        offset_delta: n as i32,
                        ..r.clone()
                    })
                    .collect();
                assert_eq!(records_of(batch), want, "partition {p}");
            }
        }
    }

    #[test]
    fn split_keeps_order_within_partitions() {
        let bytes = batch(Compression::Zstd, &["a", "b", "c", "d"]);
        let d = decode(&bytes).unwrap();
        let parts = split(&bytes, &d, &[2, 0, 2, 1], None).unwrap();
        let order: Vec<u32> = parts.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, [2, 0, 1]);
        let two = decode(&parts[0].1).unwrap();
        assert_eq!(values(&two.flat), ["a", "c"]);
        assert_eq!(
            Batch::parse(&parts[0].1).unwrap().0.compression().unwrap(),
            Compression::Zstd
        );
        let lz4 = split(&bytes, &d, &[2, 0, 2, 1], Some(Compression::Lz4)).unwrap();
        assert_eq!(
            Batch::parse(&lz4[1].1).unwrap().0.compression().unwrap(),
            Compression::Lz4
        );
        // All to one partition: the request as it came.
        assert_eq!(
            split(&bytes, &d, &[3; 4], None).unwrap(),
            [(3, bytes.clone())]
        );
    }
}
