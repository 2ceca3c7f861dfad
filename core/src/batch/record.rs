//! One record inside a v2 batch, in Kafka's varint layout.
//!
//! ```text
//! length          varint   bytes after this field
//! attributes      int8     unused, 0
//! timestampDelta  varlong  from the batch's baseTimestamp
//! offsetDelta     varint   from the batch's baseOffset
//! keyLength       varint   -1 = null
//! key             bytes
//! valueLength     varint   -1 = null
//! value           bytes
//! headersCount    varint
//! headers         headerKeyLength varint, headerKey (UTF-8),
//!                 headerValueLength varint (-1 = null), headerValue
//! ```
//!
//! [`Record`] owns its bytes; [`RecordRef`] borrows them from the batch for the paths
//! that must not allocate per record. Every length read from input is checked
//! against the bytes that remain before anything is sliced or allocated.

use alloc::string::String;
use alloc::vec::Vec;

use super::BatchError;
use super::varint::{self, VARINT_BYTES_MAX, VARLONG_BYTES_MAX};

/// Fewest bytes an encoded record can take: the length plus six one-byte fields.
pub const RECORD_BYTES_MIN: usize = 7;

/// A record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// Header key (Kafka requires UTF-8 and forbids null).
    pub key: String,
    /// Header value; `None` is Kafka's null.
    pub value: Option<Vec<u8>>,
}

impl RecordHeader {
    /// Builds a header from borrowed parts.
    pub fn new(key: &str, value: Option<&[u8]>) -> RecordHeader {
        RecordHeader {
            key: String::from(key),
            value: value.map(<[u8]>::to_vec),
        }
    }
}

/// A decoded record that owns its key, value and headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Record {
    /// Record attributes; Kafka defines none, writers put 0.
    pub attributes: i8,
    /// Timestamp minus the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset minus the batch's base offset.
    pub offset_delta: i32,
    /// Key; `None` is Kafka's null key (distinct from an empty one).
    pub key: Option<Vec<u8>>,
    /// Value; `None` is Kafka's null value (a tombstone under compaction).
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// Decodes one record from the start of `buf`: (record, bytes read).
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), BatchError> {
        let (r, n) = RecordRef::decode(buf)?;
        Ok((r.to_record(), n))
    }

    /// Bytes [`Record::encode`] appends, length prefix included.
    pub fn encoded_len(&self) -> Result<usize, BatchError> {
        Ok(self.fields().encoded_len()?.1)
    }

    /// Appends the record in Kafka's layout to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), BatchError> {
        let fields = self.fields();
        let (body_len, total) = fields.encoded_len()?;
        out.reserve(total);
        fields.write(out, body_len);
        Ok(())
    }

    fn fields(&self) -> RecordFields<'_, impl Iterator<Item = (&str, Option<&[u8]>)> + Clone> {
        RecordFields {
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: owned_headers(&self.headers),
        }
    }
}

/// A header borrowed from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderRef<'a> {
    /// Header key, already checked to be UTF-8.
    pub key: &'a str,
    /// Header value; `None` is Kafka's null.
    pub value: Option<&'a [u8]>,
}

impl HeaderRef<'_> {
    /// Copies the header into an owned [`RecordHeader`].
    pub fn to_owned_header(&self) -> RecordHeader {
        RecordHeader::new(self.key, self.value)
    }
}

/// A record borrowed from a batch's bytes (zero-copy).
///
/// Its headers were fully checked (lengths, UTF-8 keys) when it was decoded, so
/// [`RecordRef::headers`] cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Record attributes; Kafka defines none, writers put 0.
    pub attributes: i8,
    /// Timestamp minus the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset minus the batch's base offset.
    pub offset_delta: i32,
    /// Key; `None` is Kafka's null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is Kafka's null value.
    pub value: Option<&'a [u8]>,
    header_count: u32,
    headers: &'a [u8],
    raw: &'a [u8],
    /// From the key's length to the end of the record.
    fields: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Decodes one record from the start of `buf`: (record, bytes read).
    ///
    /// If `buf` ends before the record's length prefix says it does, the error is
    /// [`BatchError::Truncated`]; inconsistencies inside the record are
    /// [`BatchError::Corrupt`].
    pub fn decode(buf: &'a [u8]) -> Result<(RecordRef<'a>, usize), BatchError> {
        let (len, prefix) = varint::decode_varint(buf)?;
        let len =
            usize::try_from(len).map_err(|_| BatchError::Corrupt("negative record length"))?;
        let end = prefix
            .checked_add(len)
            .ok_or(BatchError::Corrupt("record length overflows"))?;
        let Some(body) = buf.get(prefix..end) else {
            return Err(BatchError::Truncated {
                needed: end as u64,
                available: buf.len() as u64,
            });
        };
        let raw = &buf[..end];
        let mut r = Reader::new(body);
        let attributes = r.u8()? as i8;
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let fields_start = r.pos;
        let key = r.nullable_bytes()?;
        let value = r.nullable_bytes()?;
        let header_count = r.varint()?;
        let header_count = u32::try_from(header_count)
            .map_err(|_| BatchError::Corrupt("negative header count"))?;
        let headers_start = r.pos;
        for _ in 0..header_count {
            read_header(&mut r)?;
        }
        let headers = body.get(headers_start..r.pos).unwrap_or(&[]);
        if r.pos != body.len() {
            return Err(BatchError::Corrupt("record has bytes after its headers"));
        }
        Ok((
            RecordRef {
                attributes,
                timestamp_delta,
                offset_delta,
                key,
                value,
                header_count,
                headers,
                raw,
                fields: body.get(fields_start..).unwrap_or(&[]),
            },
            end,
        ))
    }

    /// The record's headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            reader: Reader::new(self.headers),
            remaining: self.header_count,
        }
    }

    /// Number of headers.
    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// The record's encoded bytes, length prefix included, exactly as in the batch.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The record's key, value and headers exactly as encoded in the batch
    /// (from the key's length to the record's end), checked when the record
    /// was decoded. [`BatchBuilder::push_encoded_fields`] copies them into
    /// another batch without decoding them again.
    ///
    /// [`BatchBuilder::push_encoded_fields`]: super::BatchBuilder::push_encoded_fields
    pub fn encoded_fields(&self) -> &'a [u8] {
        self.fields
    }

    /// The record's headers exactly as encoded (after their count), for
    /// [`BatchBuilder::push_encoded_parts`].
    ///
    /// [`BatchBuilder::push_encoded_parts`]: super::BatchBuilder::push_encoded_parts
    pub fn encoded_headers(&self) -> &'a [u8] {
        self.headers
    }

    /// Copies the record into an owned [`Record`].
    pub fn to_record(&self) -> Record {
        let mut headers = Vec::with_capacity(self.header_count as usize);
        headers.extend(self.headers().map(|h| h.to_owned_header()));
        Record {
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Iterator over the headers of a [`RecordRef`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    reader: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = HeaderRef<'a>;

    fn next(&mut self) -> Option<HeaderRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match read_header(&mut self.reader) {
            Ok(h) => Some(h),
            // Cannot happen: `RecordRef::decode` parsed these same bytes.
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

fn read_header<'a>(r: &mut Reader<'a>) -> Result<HeaderRef<'a>, BatchError> {
    let key_len = r.varint()?;
    let key_len =
        usize::try_from(key_len).map_err(|_| BatchError::Corrupt("negative header key length"))?;
    let key = r.bytes(key_len)?;
    let key =
        core::str::from_utf8(key).map_err(|_| BatchError::Corrupt("header key is not UTF-8"))?;
    let value = r.nullable_bytes()?;
    Ok(HeaderRef { key, value })
}

/// A cursor over one record's bytes. Running past the end is corruption: the record's
/// length prefix promised the bytes.
#[derive(Debug, Clone)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, BatchError> {
        let b = *self.rest().first().ok_or(OVERRUN)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn varint(&mut self) -> Result<i32, BatchError> {
        let (v, n) = varint::decode_varint(self.rest()).map_err(overrun)?;
        self.pos += n;
        Ok(v)
    }

    #[inline]
    fn varlong(&mut self) -> Result<i64, BatchError> {
        let (v, n) = varint::decode_varlong(self.rest()).map_err(overrun)?;
        self.pos += n;
        Ok(v)
    }

    #[inline]
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        let b = self.rest().get(..len).ok_or(OVERRUN)?;
        self.pos += len;
        Ok(b)
    }

    #[inline]
    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        match self.varint()? {
            -1 => Ok(None),
            len if len < -1 => Err(BatchError::Corrupt("negative length other than -1")),
            len => Ok(Some(self.bytes(len as usize)?)),
        }
    }
}

const OVERRUN: BatchError = BatchError::Corrupt("record field runs past the record's length");

fn overrun(e: BatchError) -> BatchError {
    match e {
        BatchError::Truncated { .. } => OVERRUN,
        other => other,
    }
}

// ---------------------------------------------------------------------------------
// Encoding, shared by `Record::encode` and the batch builders.

/// Somewhere encoded bytes go: a growable `Vec` or a fixed slice.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes into a fixed slice. Callers check the space first; a write that would not
/// fit sets `overflow` instead of panicking.
pub(crate) struct SliceSink<'s> {
    pub(crate) buf: &'s mut [u8],
    pub(crate) pos: usize,
    pub(crate) overflow: bool,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
            }
            None => self.overflow = true,
        }
    }
}

fn put_varint<S: Sink>(s: &mut S, v: i32) {
    let mut b = [0u8; VARINT_BYTES_MAX];
    let n = varint::encode_varint(v, &mut b);
    s.put(&b[..n]);
}

fn put_varlong<S: Sink>(s: &mut S, v: i64) {
    let mut b = [0u8; VARLONG_BYTES_MAX];
    let n = varint::encode_varlong(v, &mut b);
    s.put(&b[..n]);
}

pub(crate) fn put_nullable<S: Sink>(s: &mut S, b: Option<&[u8]>) {
    match b {
        None => put_varint(s, -1),
        Some(b) => {
            // Lengths were checked to fit an i32 by `encoded_len`.
            put_varint(s, b.len() as i32);
            s.put(b);
        }
    }
}

/// Views owned headers as the `(key, value)` pairs the encoder takes.
pub(crate) fn owned_headers(
    headers: &[RecordHeader],
) -> impl Iterator<Item = (&str, Option<&[u8]>)> + Clone {
    headers.iter().map(|h| (h.key.as_str(), h.value.as_deref()))
}

/// Views borrowed headers as the `(key, value)` pairs the encoder takes.
pub(crate) fn ref_headers<'a>(
    headers: HeaderIter<'a>,
) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + Clone {
    headers.map(|h| (h.key, h.value))
}

/// The parts of one record to encode. `H` yields `(key, value)` per header and is
/// walked twice (size, then bytes), hence `Clone`.
pub(crate) struct RecordFields<'r, H> {
    pub(crate) attributes: i8,
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<&'r [u8]>,
    pub(crate) value: Option<&'r [u8]>,
    pub(crate) headers: H,
}

fn len_i32(len: usize, what: &'static str) -> Result<i32, BatchError> {
    i32::try_from(len).map_err(|_| BatchError::TooLarge {
        what,
        actual: len as u64,
        limit: i32::MAX as u64,
    })
}

pub(crate) fn nullable_len(b: Option<&[u8]>, what: &'static str) -> Result<usize, BatchError> {
    Ok(match b {
        None => 1,
        Some(b) => varint::varint_len(len_i32(b.len(), what)?) + b.len(),
    })
}

impl<'r, 'h, H> RecordFields<'r, H>
where
    H: Iterator<Item = (&'h str, Option<&'h [u8]>)> + Clone,
{
    /// (body length, total length with the length prefix), checking every length fits
    /// Kafka's int32 fields.
    pub(crate) fn encoded_len(&self) -> Result<(i32, usize), BatchError> {
        let mut body =
            1 + varint::varlong_len(self.timestamp_delta) + varint::varint_len(self.offset_delta);
        body = body.saturating_add(nullable_len(self.key, "record key")?);
        body = body.saturating_add(nullable_len(self.value, "record value")?);
        let mut count = 0usize;
        let mut headers_len = 0usize;
        for (k, v) in self.headers.clone() {
            count += 1;
            headers_len = headers_len
                .saturating_add(nullable_len(Some(k.as_bytes()), "header key")?)
                .saturating_add(nullable_len(v, "header value")?);
        }
        body = body
            .saturating_add(varint::varint_len(len_i32(count, "header count")?))
            .saturating_add(headers_len);
        let body = len_i32(body, "record")?;
        let total = (body as usize).saturating_add(varint::varint_len(body));
        Ok((body, total))
    }

    /// Writes the record; `body_len` comes from [`Self::encoded_len`].
    pub(crate) fn write<S: Sink>(&self, s: &mut S, body_len: i32) {
        put_varint(s, body_len);
        s.put(&[self.attributes as u8]);
        put_varlong(s, self.timestamp_delta);
        put_varint(s, self.offset_delta);
        put_nullable(s, self.key);
        put_nullable(s, self.value);
        let count = self.headers.clone().count();
        put_varint(s, count as i32);
        for (k, v) in self.headers.clone() {
            put_nullable(s, Some(k.as_bytes()));
            put_nullable(s, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Record {
        Record {
            attributes: 0,
            timestamp_delta: -5,
            offset_delta: 3,
            key: Some(b"k".to_vec()),
            value: None,
            headers: vec![
                RecordHeader::new("h1", Some(b"v1")),
                RecordHeader::new("", None),
                RecordHeader::new("é", Some(b"")),
            ],
        }
    }

    #[test]
    fn known_bytes() {
        // A record with key "a", value "bc", no headers, deltas 0.
        let r = Record {
            key: Some(b"a".to_vec()),
            value: Some(b"bc".to_vec()),
            ..Record::default()
        };
        let mut out = vec![];
        r.encode(&mut out).unwrap();
        // length 9 (zigzag 18), attrs 0, ts 0, off 0, keylen 1 (2), 'a', vallen 2 (4), 'b' 'c', headers 0
        assert_eq!(out, [18, 0, 0, 0, 2, b'a', 4, b'b', b'c', 0]);
        assert_eq!(r.encoded_len().unwrap(), out.len());
        assert_eq!(Record::decode(&out).unwrap(), (r, out.len()));
    }

    #[test]
    fn null_and_empty_are_distinct() {
        let null = Record::default();
        let empty = Record {
            key: Some(vec![]),
            value: Some(vec![]),
            ..Record::default()
        };
        let (mut a, mut b) = (vec![], vec![]);
        null.encode(&mut a).unwrap();
        empty.encode(&mut b).unwrap();
        assert_ne!(a, b);
        assert_eq!(Record::decode(&a).unwrap().0, null);
        assert_eq!(Record::decode(&b).unwrap().0, empty);
    }

    #[test]
    fn round_trip_with_headers_and_ref_view() {
        let r = sample();
        let mut out = vec![];
        r.encode(&mut out).unwrap();
        out.extend_from_slice(b"trailing");
        let (rr, n) = RecordRef::decode(&out).unwrap();
        assert_eq!(n, out.len() - 8);
        assert_eq!(rr.raw(), &out[..n]);
        // Length, attributes, timestamp delta -5, offset delta 3: one byte each.
        assert_eq!(rr.encoded_fields(), &out[4..n]);
        assert_eq!(rr.header_count(), 3);
        // Key "k" (2 bytes), null value (1), then the count (1).
        assert_eq!(rr.encoded_headers(), &out[8..n]);
        let hs: Vec<_> = rr.headers().collect();
        assert_eq!(
            hs[0],
            HeaderRef {
                key: "h1",
                value: Some(b"v1")
            }
        );
        assert_eq!(
            hs[1],
            HeaderRef {
                key: "",
                value: None
            }
        );
        assert_eq!(
            hs[2],
            HeaderRef {
                key: "é",
                value: Some(b"")
            }
        );
        assert_eq!(rr.to_record(), r);
    }

    #[test]
    fn short_buffer_is_truncated_and_inner_overrun_is_corrupt() {
        let mut out = vec![];
        sample().encode(&mut out).unwrap();
        for cut in 0..out.len() {
            let e = RecordRef::decode(&out[..cut]).unwrap_err();
            assert!(
                matches!(e, BatchError::Truncated { .. }),
                "cut {cut}: {e:?}"
            );
        }
        // Claim a key longer than the record.
        let bad = [12u8, 0, 0, 0, 40, b'a', 1, 0];
        let e = RecordRef::decode(&bad[..7]).unwrap_err();
        assert!(matches!(e, BatchError::Corrupt(_)), "{e:?}");
    }

    #[test]
    fn bad_lengths_are_corrupt() {
        // Record length -1.
        assert!(matches!(
            RecordRef::decode(&[1]),
            Err(BatchError::Corrupt(_))
        ));
        // Key length -2.
        let bad = [10u8, 0, 0, 0, 3, 1, 0];
        assert!(matches!(
            RecordRef::decode(&bad[..6]),
            Err(BatchError::Corrupt(_))
        ));
        // Header count -1.
        let bad = [12u8, 0, 0, 0, 1, 1, 1];
        assert!(matches!(
            RecordRef::decode(&bad),
            Err(BatchError::Corrupt(_))
        ));
        // Bytes after the headers.
        let bad = [14u8, 0, 0, 0, 1, 1, 0, 9];
        assert!(matches!(
            RecordRef::decode(&bad),
            Err(BatchError::Corrupt(_))
        ));
        // A header count far beyond the bytes allocates nothing and fails.
        let mut body = vec![0u8, 0, 0, 1, 1];
        varint::put_varint(&mut body, 1_000_000_000);
        let mut bad = vec![];
        varint::put_varint(&mut bad, body.len() as i32);
        bad.extend_from_slice(&body);
        assert!(matches!(
            RecordRef::decode(&bad),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn non_utf8_header_key_is_corrupt() {
        let r = Record {
            headers: vec![RecordHeader::new("ab", None)],
            ..Record::default()
        };
        let mut out = vec![];
        r.encode(&mut out).unwrap();
        let at = out.iter().position(|&b| b == b'a').unwrap();
        out[at] = 0xff;
        assert!(matches!(
            RecordRef::decode(&out),
            Err(BatchError::Corrupt("header key is not UTF-8"))
        ));
    }

    #[test]
    fn slice_sink_flags_overflow_without_panicking() {
        let mut buf = [0u8; 4];
        let mut s = SliceSink {
            buf: &mut buf,
            pos: 0,
            overflow: false,
        };
        s.put(&[1, 2, 3]);
        s.put(&[4, 5]);
        assert!(s.overflow);
        assert_eq!(s.pos, 3);
    }
}
