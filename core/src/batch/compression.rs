//! Compression of a batch's records section (needs `std`).
//!
//! The codecs and framings are Kafka's: gzip (one or more gzip members), lz4 in the
//! standard LZ4 frame format with 64 KiB independent blocks (what Kafka's
//! `KafkaLZ4BlockOutputStream` writes for magic ≥ 1), and zstd frames. Snappy is
//! recognised but not supported.
//!
//! Decompression streams into a buffer that never grows past the caller's limit, so a
//! small compressed input that expands enormously fails with
//! [`BatchError::TooLarge`] instead of exhausting memory.

use std::io::{self, Read, Write};
use std::string::ToString;
use std::vec::Vec;

use super::{Batch, BatchError, Compression};

/// zstd level used when compressing (Kafka's default, `compression.zstd.level` = 3).
pub const ZSTD_LEVEL: i32 = 3;
/// gzip level used when compressing (Java's `Deflater.DEFAULT_COMPRESSION`, i.e. 6).
pub const GZIP_LEVEL: u32 = 6;
/// Smallest zstd window (as a power of two) a frame may ask for and still be decoded,
/// whatever the output limit: 8 MiB, enough for frames from producers streaming at
/// any level up to 19. A frame needing more fails instead of allocating its window.
pub const ZSTD_WINDOW_LOG_FLOOR: u32 = 23;
/// Largest zstd window log ever accepted (zstd's limit on 32-bit hosts).
pub const ZSTD_WINDOW_LOG_CEILING: u32 = 30;
/// Bytes read from a decoder per step while decompressing.
const READ_CHUNK_BYTES: usize = 8 * 1024;

const _: () = assert!(ZSTD_WINDOW_LOG_FLOOR <= ZSTD_WINDOW_LOG_CEILING);

/// Compresses `data` (a batch's records section) with `codec`.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    compress_into(codec, data, &mut out)?;
    Ok(out)
}

/// Compresses `data` with `codec`, appending to `out`. On an error `out` may
/// hold part of the output after what it held before.
fn compress_into(codec: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    match codec {
        Compression::None => out.extend_from_slice(data),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            enc.write_all(data).map_err(codec_error(codec))?;
            enc.finish().map_err(codec_error(codec))?;
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            enc.write_all(data).map_err(codec_error(codec))?;
            enc.finish().map_err(codec_error(codec))?;
        }
        Compression::Zstd => {
            let packed = zstd::bulk::compress(data, ZSTD_LEVEL).map_err(codec_error(codec))?;
            out.extend_from_slice(&packed);
        }
        Compression::Snappy => return Err(BatchError::UnsupportedCompression(codec.name())),
    }
    Ok(())
}

/// Appends `batch` to `out`, rewritten so its records section uses `codec`
/// (Kafka's topic-level `compression.type`, when it is not `producer`).
///
/// The records section is the same bytes whatever the codec, so records are
/// not re-encoded: the section is decompressed (at most
/// `decompressed_bytes_max` bytes) and compressed again straight into `out`,
/// and the header gets the new codec bits, length and CRC. Every other header
/// field (offsets, timestamps, producer id, epoch, sequence, leader epoch) is
/// kept. A [`Batch`] has passed its CRC check when it was parsed, so a corrupt
/// batch is never given a fresh, valid CRC. A batch already in `codec` is
/// appended unchanged. On an error `out` is left as it was.
pub fn recompress_into(
    batch: &Batch<'_>,
    codec: Compression,
    decompressed_bytes_max: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let start = out.len();
    let result = append_recompressed(batch, codec, decompressed_bytes_max, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn append_recompressed(
    batch: &Batch<'_>,
    codec: Compression,
    decompressed_bytes_max: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    use super::header::{self, CRC_START, HEADER_LEN, LOG_OVERHEAD};

    let h = &batch.header;
    let current = h.attributes.compression()?;
    if current == codec {
        out.extend_from_slice(batch.bytes);
        return Ok(());
    }
    if h.attributes.is_control() {
        return Err(BatchError::Invalid("control batches are never compressed"));
    }
    let plain = batch.decompressed(decompressed_bytes_max)?;
    let start = out.len();
    out.extend_from_slice(&batch.bytes[..HEADER_LEN]);
    compress_into(codec, &plain, out)?;
    let total = out.len() - start;
    let batch_length = u32::try_from(total - LOG_OVERHEAD)
        .ok()
        .filter(|len| *len <= i32::MAX as u32)
        .ok_or(BatchError::TooLarge {
            what: "batch",
            actual: total as u64,
            limit: i32::MAX as u64,
        })?;
    let written = &mut out[start..];
    let attributes = h.attributes.with_compression(codec);
    written[8..12].copy_from_slice(&batch_length.to_be_bytes());
    written[21..23].copy_from_slice(&attributes.0.to_be_bytes());
    let crc = header::crc32c_of(&written[CRC_START..]);
    written[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Decompresses `data` (a batch's records section) compressed with `codec`, failing
/// with [`BatchError::TooLarge`] as soon as the output would exceed
/// `decompressed_bytes_max`.
pub fn decompress(
    codec: Compression,
    data: &[u8],
    decompressed_bytes_max: usize,
) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => {
            if data.len() > decompressed_bytes_max {
                return Err(too_large(data.len(), decompressed_bytes_max));
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded(
            codec,
            flate2::read::MultiGzDecoder::new(data),
            decompressed_bytes_max,
        ),
        Compression::Lz4 => {
            // lz4_flex takes a frame that stops at a block boundary, without
            // its end mark, as complete: a batch cut short there would pass.
            if !lz4_frame_is_whole(data) {
                return Err(codec_error(codec)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "lz4 frame cut short (no end mark)",
                )));
            }
            read_bounded(
                codec,
                lz4_flex::frame::FrameDecoder::new(data),
                decompressed_bytes_max,
            )
        }
        Compression::Zstd => {
            let mut dec =
                zstd::stream::read::Decoder::with_buffer(data).map_err(codec_error(codec))?;
            dec.window_log_max(zstd_window_log_max(decompressed_bytes_max))
                .map_err(codec_error(codec))?;
            read_bounded(codec, dec, decompressed_bytes_max)
        }
        Compression::Snappy => Err(BatchError::UnsupportedCompression(codec.name())),
    }
}

/// Whether `data` starts with a whole lz4 frame (the one the decoder reads):
/// its header, then blocks up to an end mark, and the content checksum when
/// the frame has one. Only the layout is walked; the decoder checks the
/// contents.
fn lz4_frame_is_whole(data: &[u8]) -> bool {
    const MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
    const FLAG_DICT_ID: u8 = 0x01;
    const FLAG_CONTENT_CHECKSUM: u8 = 0x04;
    const FLAG_CONTENT_SIZE: u8 = 0x08;
    const FLAG_BLOCK_CHECKSUM: u8 = 0x10;
    let (Some(&MAGIC), Some(&flags)) = (data.first_chunk::<4>(), data.get(4)) else {
        return false;
    };
    // Magic, FLG, BD, optional content size and dictionary id, HC.
    let mut at = 4 + 2 + 1;
    if flags & FLAG_CONTENT_SIZE != 0 {
        at += 8;
    }
    if flags & FLAG_DICT_ID != 0 {
        at += 4;
    }
    let block_checksum = if flags & FLAG_BLOCK_CHECKSUM != 0 {
        4
    } else {
        0
    };
    loop {
        let Some(block) = data.get(at..).and_then(|rest| rest.first_chunk::<4>()) else {
            return false;
        };
        at += 4;
        let block = u32::from_le_bytes(*block);
        if block == 0 {
            break;
        }
        let len = (block & 0x7fff_ffff) as usize;
        match at
            .checked_add(len)
            .and_then(|a| a.checked_add(block_checksum))
        {
            Some(next) if next <= data.len() => at = next,
            _ => return false,
        }
    }
    if flags & FLAG_CONTENT_CHECKSUM != 0 {
        at += 4;
    }
    at <= data.len()
}

/// The largest window a zstd frame may declare: enough for the output limit, never
/// below the floor (so ordinary producers' frames decode) nor above the ceiling.
fn zstd_window_log_max(decompressed_bytes_max: usize) -> u32 {
    let needed = usize::BITS - decompressed_bytes_max.saturating_sub(1).leading_zeros();
    needed.clamp(ZSTD_WINDOW_LOG_FLOOR, ZSTD_WINDOW_LOG_CEILING)
}

/// Reads `r` to its end into a buffer that never grows past `max` bytes.
fn read_bounded<R: Read>(codec: Compression, mut r: R, max: usize) -> Result<Vec<u8>, BatchError> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(codec_error(codec)(e)),
        };
        let len = out.len().saturating_add(n);
        if len > max {
            return Err(too_large(len, max));
        }
        if out.capacity() < len {
            // Double, as a Vec would, but never past the limit.
            let target = out.capacity().saturating_mul(2).clamp(len, max);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
}

fn too_large(actual: usize, limit: usize) -> BatchError {
    BatchError::TooLarge {
        what: "decompressed records",
        actual: actual as u64,
        limit: limit as u64,
    }
}

fn codec_error<E: ToString>(codec: Compression) -> impl Fn(E) -> BatchError {
    move |e| BatchError::Compression {
        codec: codec.name(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn round_trips() {
        for codec in CODECS {
            for len in [0, 1, 100, 70_000, 300_000] {
                let data = sample(len);
                let c = compress(codec, &data).unwrap();
                assert_eq!(decompress(codec, &c, len).unwrap(), data, "{codec:?} {len}");
            }
        }
    }

    #[test]
    fn over_the_limit_by_one_is_too_large() {
        for codec in CODECS {
            let data = sample(10_000);
            let c = compress(codec, &data).unwrap();
            let e = decompress(codec, &c, 9_999).unwrap_err();
            assert!(
                matches!(e, BatchError::TooLarge { limit: 9_999, .. }),
                "{codec:?}: {e:?}"
            );
        }
    }

    #[test]
    fn bombs_fail_without_allocating_their_size() {
        // 64 MiB of zeros compresses to a few KiB; the limit is 1 MiB.
        let zeros = vec![0u8; 64 << 20];
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let c = compress(codec, &zeros).unwrap();
            assert!(c.len() < 1 << 20, "{codec:?} {}", c.len());
            let e = decompress(codec, &c, 1 << 20).unwrap_err();
            assert!(
                matches!(e, BatchError::TooLarge { actual, limit: 1_048_576, .. } if actual <= (1 << 20) + READ_CHUNK_BYTES as u64),
                "{codec:?}: {e:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let e = decompress(codec, b"definitely not compressed", 1 << 20).unwrap_err();
            assert!(
                matches!(e, BatchError::Compression { .. }),
                "{codec:?}: {e:?}"
            );
        }
    }

    #[test]
    fn an_lz4_frame_cut_anywhere_is_refused() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let whole = compress(Compression::Lz4, &data).unwrap();
        assert_eq!(decompress(Compression::Lz4, &whole, 1 << 20).unwrap(), data);
        for keep in 0..whole.len() {
            assert!(
                decompress(Compression::Lz4, &whole[..keep], 1 << 20).is_err(),
                "cut to {keep} of {} bytes",
                whole.len()
            );
        }
    }

    #[test]
    fn lz4_uses_kafkas_frame_layout() {
        let c = compress(Compression::Lz4, b"hello").unwrap();
        // Magic 0x184D2204 (LE), FLG: version 01, block independence set, no checksums,
        // no content size; BD: 64 KiB blocks (4 << 4).
        assert_eq!(&c[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(c[4], 0b0110_0000);
        assert_eq!(c[5], 0x40);
    }

    fn sample_batch(codec: Compression) -> Vec<u8> {
        use crate::batch::{BatchBuilder, BatchOptions, RecordHeader};
        let mut b = BatchBuilder::new(BatchOptions {
            base_offset: 7,
            compression: codec,
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 11,
            ..BatchOptions::default()
        });
        for i in 0..50u32 {
            let key = format!("sensor-{}", i % 5);
            let value = format!("{{\"reading\": {i}, \"unit\": \"C\"}}");
            let headers = [RecordHeader::new("source", Some(b"line-3"))];
            b.push(
                1_700_000_000_000 + i64::from(i),
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &headers,
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn recompress_changes_only_the_codec() {
        use crate::batch::{Batch, header};
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for from in codecs {
            let original = sample_batch(from);
            let (orig, _) = Batch::parse(&original).unwrap();
            let want = orig.records(1 << 20).unwrap();
            for to in codecs {
                let mut out = Vec::new();
                recompress_into(&orig, to, 1 << 20, &mut out).unwrap();
                let h = header::verify_crc(&out).unwrap();
                assert_eq!(
                    h.attributes.compression().unwrap(),
                    to,
                    "{from:?} -> {to:?}"
                );
                assert_eq!(h.base_offset, orig.header.base_offset);
                assert_eq!(h.base_timestamp, orig.header.base_timestamp);
                assert_eq!(h.max_timestamp, orig.header.max_timestamp);
                assert_eq!(h.producer_id, 42);
                assert_eq!(h.producer_epoch, 3);
                assert_eq!(h.base_sequence, 11);
                assert_eq!(h.record_count, orig.header.record_count);
                let (back, rest) = Batch::parse(&out).unwrap();
                assert!(rest.is_empty());
                assert_eq!(back.records(1 << 20).unwrap(), want, "{from:?} -> {to:?}");
                if from == to {
                    assert_eq!(out, original);
                }
            }
        }
    }

    #[test]
    fn recompress_refuses_corrupt_batches_and_bombs() {
        let mut bad = sample_batch(Compression::None);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let mut out = Vec::new();
        assert!(matches!(
            Batch::new_checked(&bad).and_then(|b| recompress_into(
                &b,
                Compression::Zstd,
                1 << 20,
                &mut out
            )),
            Err(BatchError::CrcMismatch { .. })
        ));
        let zstd = sample_batch(Compression::Zstd);
        let zstd = Batch::new_checked(&zstd).unwrap();
        assert!(matches!(
            recompress_into(&zstd, Compression::Lz4, 16, &mut out),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn snappy_is_refused() {
        assert_eq!(
            compress(Compression::Snappy, b"x"),
            Err(BatchError::UnsupportedCompression("snappy"))
        );
        assert_eq!(
            decompress(Compression::Snappy, b"x", 10),
            Err(BatchError::UnsupportedCompression("snappy"))
        );
    }

    #[test]
    fn window_limit_tracks_the_output_limit() {
        assert_eq!(zstd_window_log_max(0), ZSTD_WINDOW_LOG_FLOOR);
        assert_eq!(zstd_window_log_max(1 << 20), ZSTD_WINDOW_LOG_FLOOR);
        assert_eq!(zstd_window_log_max((1 << 25) + 1), 26);
        assert_eq!(zstd_window_log_max(usize::MAX), ZSTD_WINDOW_LOG_CEILING);
    }
}
