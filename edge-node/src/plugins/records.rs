//! Record batches to plugin records and back.
//!
//! A produce request's batches are decoded once (decompressed if needed)
//! into the WIT `record` type; after the plugins ran, each batch whose
//! records all came through unchanged is passed on byte for byte, and the
//! others are rebuilt from what is left, with the producer's compression,
//! timestamp type and producer fields.

use eddy_core::batch::{Batch, BatchBuilder, BatchOptions, RecordHeader, RecordIter};
use eddy_core::compaction::DECOMPRESSED_BATCH_BYTES_MAX;

use super::engine::bindings::types::{Header, Record};

/// One batch of the request.
#[derive(Debug)]
pub struct BatchMeta {
    /// How to rebuild it.
    pub opts: BatchOptions,
    /// Its bytes in the request.
    pub start: usize,
    pub end: usize,
    /// Its records' indexes in [`Decoded::records`]; none for control
    /// batches, which plugins do not see and which pass unchanged.
    pub first: usize,
    pub count: usize,
}

/// A request's records, in order, and where they came from.
#[derive(Debug)]
pub struct Decoded {
    pub batches: Vec<BatchMeta>,
    pub records: Vec<Record>,
}

/// Decodes every batch (length and CRC checked).
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut batches = Vec::new();
    let mut records = Vec::new();
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
        let first = records.len();
        if !h.attributes.is_control() {
            let section = batch
                .decompressed(DECOMPRESSED_BATCH_BYTES_MAX)
                .map_err(|e| format!("batch at byte {start}: {e}"))?;
            for r in RecordIter::new(&section, h) {
                let r = r.map_err(|e| format!("batch at byte {start}: {e}"))?;
                records.push(Record {
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r
                        .headers()
                        .map(|h| Header {
                            key: h.key.to_owned(),
                            value: h.value.map(<[u8]>::to_vec),
                        })
                        .collect(),
                    timestamp: batch.record_timestamp(r.timestamp_delta),
                });
            }
        }
        batches.push(BatchMeta {
            opts,
            start,
            end,
            first,
            count: records.len() - first,
        });
    }
    Ok(Decoded { batches, records })
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Stored as the producer sent it.
    Unchanged,
    /// Stored as rewritten.
    Changed(Record),
    /// Not stored (dropped or rejected).
    Gone,
}

fn push(builder: &mut BatchBuilder, r: &Record) -> Result<(), String> {
    let headers: Vec<RecordHeader> = r
        .headers
        .iter()
        .map(|h| RecordHeader {
            key: h.key.clone(),
            value: h.value.clone(),
        })
        .collect();
    builder
        .push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers)
        .map_err(|e| format!("cannot encode a record: {e}"))
}

/// The request's batches after the plugins: unchanged batches byte for
/// byte, the others rebuilt; `None` if no record is left.
pub fn encode(bytes: &[u8], decoded: &Decoded, fates: &[Fate]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    for b in &decoded.batches {
        let fates = &fates[b.first..b.first + b.count];
        if fates.iter().all(|f| *f == Fate::Unchanged) {
            // Control batches and untouched ones.
            out.extend_from_slice(&bytes[b.start..b.end]);
            continue;
        }
        let mut builder = BatchBuilder::new(b.opts);
        for (i, fate) in fates.iter().enumerate() {
            match fate {
                Fate::Unchanged => push(&mut builder, &decoded.records[b.first + i])?,
                Fate::Changed(r) => push(&mut builder, r)?,
                Fate::Gone => {}
            }
        }
        if !builder.is_empty() {
            let batch = builder
                .build()
                .map_err(|e| format!("cannot encode a batch: {e}"))?;
            out.extend_from_slice(&batch);
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// One uncompressed batch of `records` (for the dead-letter topic), with
/// `extra` headers added to each.
pub fn batch_of(records: &[(Record, Vec<Header>)]) -> Result<Option<Vec<u8>>, String> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for (r, extra) in records {
        let mut r = r.clone();
        r.headers.extend(extra.iter().cloned());
        push(&mut builder, &r)?;
    }
    if builder.is_empty() {
        return Ok(None);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("cannot encode a batch: {e}"))
}

/// Splits the records across partitions: one batch per partition, in the
/// order of each partition's first record, keeping every record's order
/// within its partition and the first batch's codec and timestamp type.
pub fn split(decoded: &Decoded, partitions: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let opts = decoded.batches.first().map(|b| b.opts).unwrap_or_default();
    let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
    for (r, &p) in decoded.records.iter().zip(partitions) {
        let slot = match builders.iter().position(|(q, _)| *q == p) {
            Some(i) => i,
            None => {
                builders.push((p, BatchBuilder::new(opts)));
                builders.len() - 1
            }
        };
        push(&mut builders[slot].1, r)?;
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
    use eddy_core::batch::{BatchIter, Compression};

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

    #[test]
    fn untouched_batches_pass_byte_for_byte_and_changed_ones_keep_their_codec() {
        let mut bytes = batch(Compression::None, &["a", "b"]);
        bytes.extend(batch(Compression::Lz4, &["c", "d", "e"]));
        let d = decode(&bytes).unwrap();
        assert_eq!(d.records.len(), 5);
        assert_eq!(d.records[3].value.as_deref(), Some(&b"d"[..]));
        assert_eq!(d.records[4].timestamp, 1_002);
        assert_eq!(d.records[0].headers[0].key, "h");
        let mut changed = d.records[2].clone();
        changed.value = Some(b"C".to_vec());
        let fates = vec![
            Fate::Unchanged,
            Fate::Unchanged,
            Fate::Changed(changed),
            Fate::Gone,
            Fate::Unchanged,
        ];
        let out = encode(&bytes, &d, &fates).unwrap().unwrap();
        let first_len = d.batches[0].end;
        assert_eq!(&out[..first_len], &bytes[..first_len]);
        let batches: Vec<_> = BatchIter::new(&out).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].compression().unwrap(), Compression::Lz4);
        let again = decode(&out).unwrap();
        let values: Vec<_> = again
            .records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect();
        assert_eq!(values, ["a", "b", "C", "e"]);
        assert_eq!(again.records[3].timestamp, 1_002);
        assert!(encode(&bytes, &d, &vec![Fate::Gone; 5]).unwrap().is_none());
    }

    #[test]
    fn split_keeps_order_within_partitions() {
        let bytes = batch(Compression::Zstd, &["a", "b", "c", "d"]);
        let d = decode(&bytes).unwrap();
        let parts = split(&d, &[2, 0, 2, 1]).unwrap();
        let order: Vec<u32> = parts.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, [2, 0, 1]);
        let two = decode(&parts[0].1).unwrap();
        let values: Vec<_> = two
            .records
            .iter()
            .map(|r| r.value.clone().unwrap())
            .collect();
        assert_eq!(values, [b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(
            Batch::parse(&parts[0].1).unwrap().0.compression().unwrap(),
            Compression::Zstd
        );
    }
}
