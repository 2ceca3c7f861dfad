//! Kafka's variable-length integers (protobuf style, little-endian groups of 7 bits).
//!
//! Records use the signed, zigzag-encoded forms: `varint` (32-bit) and `varlong`
//! (64-bit). The unsigned forms are here for completeness (Kafka's flexible protocol
//! versions use them).
//!
//! Decoding is strict about length: a 32-bit value takes at most
//! [`VARINT_BYTES_MAX`] bytes and a 64-bit one at most [`VARLONG_BYTES_MAX`], and the
//! last allowed byte may not carry bits beyond the type's width. Anything longer is
//! [`BatchError::Corrupt`]. Non-minimal encodings within those limits (`0x80 0x00`
//! for zero) are accepted, as Kafka accepts them. Running out of input is
//! [`BatchError::Truncated`].

use alloc::vec::Vec;

use super::BatchError;

/// Most bytes a 32-bit varint can take.
pub const VARINT_BYTES_MAX: usize = 5;
/// Most bytes a 64-bit varlong can take.
pub const VARLONG_BYTES_MAX: usize = 10;

const _: () = assert!(VARINT_BYTES_MAX * 7 >= 32 && (VARINT_BYTES_MAX - 1) * 7 < 32);
const _: () = assert!(VARLONG_BYTES_MAX * 7 >= 64 && (VARLONG_BYTES_MAX - 1) * 7 < 64);

/// Maps a signed 32-bit value to unsigned so that small magnitudes stay small.
pub const fn zigzag_encode32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

/// Inverse of [`zigzag_encode32`].
pub const fn zigzag_decode32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Maps a signed 64-bit value to unsigned so that small magnitudes stay small.
pub const fn zigzag_encode64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag_encode64`].
pub const fn zigzag_decode64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bytes the unsigned varint encoding of `v` takes.
pub const fn uvarint_len(v: u32) -> usize {
    uvarlong_len(v as u64)
}

/// Bytes the unsigned varlong encoding of `v` takes.
pub const fn uvarlong_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes the zigzag varint encoding of `v` takes.
pub const fn varint_len(v: i32) -> usize {
    uvarint_len(zigzag_encode32(v))
}

/// Bytes the zigzag varlong encoding of `v` takes.
pub const fn varlong_len(v: i64) -> usize {
    uvarlong_len(zigzag_encode64(v))
}

/// Encodes `v` as an unsigned varint into `out`, returning the bytes used.
pub fn encode_uvarint(v: u32, out: &mut [u8; VARINT_BYTES_MAX]) -> usize {
    let mut v = v;
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// Encodes `v` as an unsigned varlong into `out`, returning the bytes used.
pub fn encode_uvarlong(v: u64, out: &mut [u8; VARLONG_BYTES_MAX]) -> usize {
    let mut v = v;
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// Encodes `v` as a zigzag varint into `out`, returning the bytes used.
pub fn encode_varint(v: i32, out: &mut [u8; VARINT_BYTES_MAX]) -> usize {
    encode_uvarint(zigzag_encode32(v), out)
}

/// Encodes `v` as a zigzag varlong into `out`, returning the bytes used.
pub fn encode_varlong(v: i64, out: &mut [u8; VARLONG_BYTES_MAX]) -> usize {
    encode_uvarlong(zigzag_encode64(v), out)
}

/// Appends the unsigned varint encoding of `v` to `out`.
pub fn put_uvarint(out: &mut Vec<u8>, v: u32) {
    let mut buf = [0u8; VARINT_BYTES_MAX];
    let n = encode_uvarint(v, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Appends the unsigned varlong encoding of `v` to `out`.
pub fn put_uvarlong(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; VARLONG_BYTES_MAX];
    let n = encode_uvarlong(v, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Appends the zigzag varint encoding of `v` to `out`.
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, zigzag_encode32(v));
}

/// Appends the zigzag varlong encoding of `v` to `out`.
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarlong(out, zigzag_encode64(v));
}

/// Reads up to `bytes_max` 7-bit groups; the last allowed byte may be at most `last_byte_max`.
#[inline]
fn decode_groups(
    buf: &[u8],
    bytes_max: usize,
    last_byte_max: u8,
) -> Result<(u64, usize), BatchError> {
    // Nearly every varint in a record is one or two bytes (lengths and
    // deltas below 8192): no loop for those. Both types take more bytes.
    debug_assert!(bytes_max > 2);
    match *buf {
        [b0, ..] if b0 & 0x80 == 0 => Ok((u64::from(b0), 1)),
        [b0, b1, ..] if b1 & 0x80 == 0 => Ok((u64::from(b0 & 0x7f) | u64::from(b1) << 7, 2)),
        _ => decode_groups_slow(buf, bytes_max, last_byte_max),
    }
}

#[inline(never)]
fn decode_groups_slow(
    buf: &[u8],
    bytes_max: usize,
    last_byte_max: u8,
) -> Result<(u64, usize), BatchError> {
    let mut value: u64 = 0;
    for i in 0..bytes_max {
        let Some(&b) = buf.get(i) else {
            return Err(BatchError::Truncated {
                needed: i as u64 + 1,
                available: buf.len() as u64,
            });
        };
        if i + 1 == bytes_max && b > last_byte_max {
            // Either the continuation bit is set on the last allowed byte, or the byte
            // carries bits past the type's width.
            return Err(BatchError::Corrupt("varint longer than its type allows"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(BatchError::Corrupt("varint longer than its type allows"))
}

/// Decodes an unsigned varint from the start of `buf`: (value, bytes read).
#[inline]
pub fn decode_uvarint(buf: &[u8]) -> Result<(u32, usize), BatchError> {
    // 4 groups of 7 bits = 28 bits; the 5th byte holds the top 4 bits.
    let (v, n) = decode_groups(buf, VARINT_BYTES_MAX, 0x0f)?;
    let v =
        u32::try_from(v).map_err(|_| BatchError::Corrupt("varint longer than its type allows"))?;
    Ok((v, n))
}

/// Decodes an unsigned varlong from the start of `buf`: (value, bytes read).
#[inline]
pub fn decode_uvarlong(buf: &[u8]) -> Result<(u64, usize), BatchError> {
    // 9 groups of 7 bits = 63 bits; the 10th byte holds the top bit.
    decode_groups(buf, VARLONG_BYTES_MAX, 0x01)
}

/// Decodes a zigzag varint from the start of `buf`: (value, bytes read).
#[inline]
pub fn decode_varint(buf: &[u8]) -> Result<(i32, usize), BatchError> {
    let (v, n) = decode_uvarint(buf)?;
    Ok((zigzag_decode32(v), n))
}

/// Decodes a zigzag varlong from the start of `buf`: (value, bytes read).
#[inline]
pub fn decode_varlong(buf: &[u8]) -> Result<(i64, usize), BatchError> {
    let (v, n) = decode_uvarlong(buf)?;
    Ok((zigzag_decode64(v), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn zigzag_matches_kafka() {
        // From Kafka's ByteUtilsTest / the protobuf docs.
        assert_eq!(zigzag_encode32(0), 0);
        assert_eq!(zigzag_encode32(-1), 1);
        assert_eq!(zigzag_encode32(1), 2);
        assert_eq!(zigzag_encode32(-2), 3);
        assert_eq!(zigzag_encode32(i32::MAX), u32::MAX - 1);
        assert_eq!(zigzag_encode32(i32::MIN), u32::MAX);
        assert_eq!(zigzag_encode64(i64::MIN), u64::MAX);
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            assert_eq!(zigzag_decode32(zigzag_encode32(v)), v);
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(zigzag_decode64(zigzag_encode64(v)), v);
        }
    }

    #[test]
    fn known_encodings() {
        let mut out = vec![];
        put_varint(&mut out, 0);
        assert_eq!(out, [0x00]);
        out.clear();
        put_varint(&mut out, -1);
        assert_eq!(out, [0x01]);
        out.clear();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xd8, 0x04]);
        out.clear();
        put_uvarint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        put_varint(&mut out, i32::MIN);
        assert_eq!(out, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        out.clear();
        put_varlong(&mut out, i64::MIN);
        assert_eq!(
            out,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn round_trip_edges_and_lengths() {
        let i32s = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, i32::MAX, i32::MIN];
        for v in i32s {
            let mut out = vec![];
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(decode_varint(&out), Ok((v, out.len())));
        }
        let i64s = [0, 1, -1, 1 << 40, -(1 << 40), i64::MAX, i64::MIN];
        for v in i64s {
            let mut out = vec![];
            put_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v));
            assert_eq!(decode_varlong(&out), Ok((v, out.len())));
        }
        for v in [0u32, 127, 128, 16383, 16384, u32::MAX] {
            let mut out = vec![];
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v));
            assert_eq!(decode_uvarint(&out), Ok((v, out.len())));
        }
        for v in [0u64, 127, 128, u64::MAX] {
            let mut out = vec![];
            put_uvarlong(&mut out, v);
            assert_eq!(out.len(), uvarlong_len(v));
            assert_eq!(decode_uvarlong(&out), Ok((v, out.len())));
        }
    }

    #[test]
    fn stops_at_the_first_byte_without_continuation() {
        assert_eq!(decode_varint(&[0x02, 0xff, 0xff]), Ok((1, 1)));
    }

    #[test]
    fn non_minimal_encodings_within_the_limit_are_accepted() {
        assert_eq!(decode_uvarint(&[0x80, 0x00]), Ok((0, 2)));
        assert_eq!(decode_uvarint(&[0x80, 0x80, 0x80, 0x80, 0x00]), Ok((0, 5)));
    }

    #[test]
    fn overlong_is_corrupt() {
        // 6 bytes for a 32-bit varint.
        let e = decode_uvarint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        assert!(matches!(e, Err(BatchError::Corrupt(_))));
        // 5th byte with bits beyond 32.
        let e = decode_uvarint(&[0xff, 0xff, 0xff, 0xff, 0x1f]);
        assert!(matches!(e, Err(BatchError::Corrupt(_))));
        // 11 bytes for a 64-bit varlong.
        let mut long = [0x80u8; 11];
        long[10] = 0;
        assert!(matches!(
            decode_uvarlong(&long),
            Err(BatchError::Corrupt(_))
        ));
        // 10th byte with bits beyond 64.
        let mut wide = [0xffu8; 10];
        wide[9] = 0x02;
        assert!(matches!(
            decode_uvarlong(&wide),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn short_input_is_truncated() {
        assert!(matches!(
            decode_varint(&[]),
            Err(BatchError::Truncated {
                needed: 1,
                available: 0
            })
        ));
        assert!(matches!(
            decode_varlong(&[0x80, 0x80]),
            Err(BatchError::Truncated {
                needed: 3,
                available: 2
            })
        ));
    }
}
