//! The records a plugin is called with, as the node passes them: one byte
//! buffer and tables of spans into it. [`Record`] and [`Header`] borrow from
//! it, so reading a key, a value or a header allocates nothing.

/// A byte range of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub offset: u32,
    pub len: u32,
}

impl Span {
    /// The bytes of `data` it names (empty if it points outside).
    pub(crate) fn of(self, data: &[u8]) -> &[u8] {
        let start = self.offset as usize;
        data.get(start..start.saturating_add(self.len as usize))
            .unwrap_or_default()
    }
}

/// `bytes` appended to `data`, and where.
///
/// # Panics
/// When `data` would outgrow 4 GiB, which the format cannot address (a
/// plugin's memory is smaller than that).
pub(crate) fn append(data: &mut Vec<u8>, bytes: &[u8]) -> Span {
    let offset = u32::try_from(data.len()).expect("plugin data over 4 GiB");
    let len = u32::try_from(bytes.len()).expect("plugin data over 4 GiB");
    data.extend_from_slice(bytes);
    Span { offset, len }
}

/// A length that stands for Kafka's null.
pub(crate) const NULL: u32 = u32::MAX;

/// The bytes of the range at `words[at..at + 2]` (offset, length), or
/// `None` for null; out-of-range words read as empty.
fn range<'a>(data: &'a [u8], words: &[u32], at: usize) -> Option<&'a [u8]> {
    let (Some(&offset), Some(&len)) = (words.get(at), words.get(at + 1)) else {
        return Some(&[]);
    };
    if len == NULL {
        return None;
    }
    Some(Span { offset, len }.of(data))
}

/// The records of one call, in order.
///
/// The node builds it; tests build their own with [`Records::push`] or
/// [`Records::with_values`]. The layout is the WIT `batch`: one byte buffer
/// and integer tables of where each field lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub(crate) data: Vec<u8>,
    pub(crate) timestamps: Vec<i64>,
    pub(crate) fields: Vec<u32>,
    pub(crate) header_starts: Vec<u32>,
    pub(crate) headers: Vec<u32>,
}

impl Default for Records {
    fn default() -> Records {
        Records {
            data: Vec::new(),
            timestamps: Vec::new(),
            fields: Vec::new(),
            header_starts: vec![0],
            headers: Vec::new(),
        }
    }
}

impl Records {
    /// No records.
    pub fn new() -> Records {
        Records::default()
    }

    /// Records with these values, no keys, no headers, timestamp 0 (for
    /// tests).
    pub fn with_values<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Records {
        let mut records = Records::new();
        for v in values {
            records.push(None, Some(v.as_ref()), &[], 0);
        }
        records
    }

    /// Appends a record.
    ///
    /// # Panics
    /// When the records' bytes would outgrow 4 GiB.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: i64,
    ) -> &mut Records {
        let mut words = |bytes: Option<&[u8]>, out: &mut Vec<u32>| match bytes {
            None => out.extend([0, NULL]),
            Some(b) => {
                let s = append(&mut self.data, b);
                out.extend([s.offset, s.len]);
            }
        };
        words(key, &mut self.fields);
        words(value, &mut self.fields);
        for (k, v) in headers {
            words(Some(k.as_bytes()), &mut self.headers);
            words(*v, &mut self.headers);
        }
        self.timestamps.push(timestamp);
        let count = u32::try_from(self.headers.len() / 4).expect("too many headers");
        self.header_starts.push(count);
        self
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> Option<Record<'_>> {
        (i < self.len()).then_some(Record {
            records: self,
            index: i,
        })
    }

    /// The records, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Record<'_>> + Clone {
        (0..self.len()).map(|index| Record {
            records: self,
            index,
        })
    }
}

/// One record, borrowed from [`Records`].
#[derive(Clone, Copy)]
pub struct Record<'a> {
    records: &'a Records,
    index: usize,
}

impl<'a> Record<'a> {
    /// The key; `None` is Kafka's null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        let r = self.records;
        range(&r.data, &r.fields, self.index * 4)
    }

    /// The value; `None` is Kafka's null value (a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        let r = self.records;
        range(&r.data, &r.fields, self.index * 4 + 2)
    }

    /// The timestamp in ms since 1970 (the producer's create time).
    pub fn timestamp(&self) -> i64 {
        self.records
            .timestamps
            .get(self.index)
            .copied()
            .unwrap_or_default()
    }

    /// The headers, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = Header<'a>> + Clone + use<'a> {
        let r = self.records;
        let start = |i: usize| r.header_starts.get(i).map_or(0, |s| *s as usize);
        let (first, end) = (start(self.index), start(self.index + 1));
        let first = first.min(r.headers.len() / 4);
        let end = end.clamp(first, r.headers.len() / 4);
        (first..end).map(move |h| Header {
            // The node only passes keys that are UTF-8.
            key: range(&r.data, &r.headers, h * 4)
                .and_then(|k| std::str::from_utf8(k).ok())
                .unwrap_or_default(),
            value: range(&r.data, &r.headers, h * 4 + 2),
        })
    }

    /// The value of the first header named `key` (`None` if there is none,
    /// or its value is null).
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers().find(|h| h.key == key).and_then(|h| h.value)
    }

    /// Whether a header named `key` is present.
    pub fn has_header(&self, key: &str) -> bool {
        self.headers().any(|h| h.key == key)
    }
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("timestamp", &self.timestamp())
            .field("key", &self.key())
            .field("value", &self.value())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .finish()
    }
}

/// A record header, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The key (UTF-8).
    pub key: &'a str,
    /// The value; `None` is Kafka's null.
    pub value: Option<&'a [u8]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_borrow_their_fields() {
        let mut r = Records::new();
        r.push(
            Some(b"k"),
            Some(b"v1"),
            &[("a", Some(b"1")), ("b", None)],
            7,
        )
        .push(None, None, &[], 8);
        assert_eq!(r.len(), 2);
        let first = r.get(0).unwrap();
        assert_eq!(first.key(), Some(&b"k"[..]));
        assert_eq!(first.value(), Some(&b"v1"[..]));
        assert_eq!(first.timestamp(), 7);
        assert_eq!(first.header("a"), Some(&b"1"[..]));
        assert_eq!(first.header("b"), None);
        assert!(first.has_header("b"));
        assert_eq!(first.headers().len(), 2);
        let second = r.iter().nth(1).unwrap();
        assert_eq!((second.key(), second.value()), (None, None));
        assert_eq!(second.headers().count(), 0);
        // A span outside the data reads as empty, never panics.
        assert_eq!(Span { offset: 90, len: 5 }.of(&r.data), b"");
    }
}
