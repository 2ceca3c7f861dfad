//! Record batches to the flat layout plugins see, and back.
//!
//! A produce request's batches are decoded once (decompressed if needed)
//! into a [`Flat`] batch: one byte buffer and tables of spans into it. For
//! the usual request (one uncompressed batch) the buffer is the request's
//! own records section, borrowed: nothing is copied before the call, and
//! crossing into Wasm costs three list copies whatever the number of
//! records. After the plugins ran, each batch whose records all came
//! through unchanged is passed on byte for byte, and the others are rebuilt
//! once, from slices, in the codec they will be stored with.

use std::borrow::Cow;

use eddy_core::batch::{Batch, BatchBuilder, BatchOptions, Compression, RecordIter};
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
    let mut flat = Flat::with_capacity(records.min(bytes.len() / 7 + 1), 0);
    flat.data = Cow::Borrowed(&[]);
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
    Ok(Decoded { batches, flat })
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
    let flat = &decoded.flat;
    let keys = flat.header_keys();
    // Room for each partition's share of the records' bytes, so no
    // builder regrows: records encode to about their share of the
    // sections, plus a few bytes of lengths each.
    let per_record = flat.data.len() / partitions.len().max(1) + 16;
    let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
    for (i, &p) in partitions.iter().enumerate() {
        let slot = match builders.iter().position(|(q, _)| *q == p) {
            Some(slot) => slot,
            None => {
                let count = partitions[i..].iter().filter(|q| **q == p).count();
                let mut builder = BatchBuilder::new(opts);
                builder.reserve(count.saturating_mul(per_record));
                builders.push((p, builder));
                builders.len() - 1
            }
        };
        push(
            &mut builders[slot].1,
            flat.timestamp(i),
            flat.key(i),
            flat.value(i),
            flat.headers_keyed(i, &keys),
        )?;
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
