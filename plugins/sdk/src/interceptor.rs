//! The `interceptor` world: sees every produced record before it is stored.

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "interceptor",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_interceptor",
    });
}

mod wit {
    pub use super::bindings::eddy::plugin::types::Batch;
    pub use super::bindings::eddy::plugin::verdict_types::{
        Field, Header, HeaderEdit, HeaderRange, Rewrite, Span, Verdict, Verdicts,
    };
}

pub use crate::records::{Header, Record, Records};
use crate::records::{Span, append};

/// An interceptor: one verdict per record, once per produce request.
pub trait Interceptor: Sized + 'static {
    /// Builds the plugin from its config (once per instance). An error fails
    /// every call with that message.
    fn new(config: crate::Config) -> Result<Self, String>;

    /// Adds one verdict per record to `verdicts`, in order ([`Verdicts::keep`],
    /// [`Verdicts::rewrite`], [`Verdicts::discard`], [`Verdicts::reject`]).
    /// An error, or a number of verdicts other than the number of records,
    /// fails the produce request (the producer retries; after repeated
    /// failures the node disables the plugin).
    fn intercept(
        &mut self,
        topic: &str,
        records: &Records,
        verdicts: &mut Verdicts,
    ) -> Result<(), String>;
}

/// The verdicts of one call, in record order.
#[derive(Debug, Clone)]
pub struct Verdicts {
    inner: wit::Verdicts,
}

/// One verdict, as [`Verdicts::get`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Store the record unchanged.
    Keep,
    /// Store the record rewritten (see [`Verdicts::outcome`] for the result).
    Rewrite,
    /// Drop the record silently.
    Drop,
    /// Reject the record with this reason.
    Reject(&'a str),
}

/// A record as it would be stored, owned (for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp.
    pub timestamp: i64,
}

impl OwnedRecord {
    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// What becomes of a record (for tests): [`Verdicts::outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as it came.
    Kept(OwnedRecord),
    /// Stored rewritten, like this.
    Rewritten(OwnedRecord),
    /// Dropped.
    Dropped,
    /// Rejected with this reason.
    Rejected(String),
}

impl Verdicts {
    /// Room for `n` verdicts.
    pub fn with_capacity(n: usize) -> Verdicts {
        Verdicts {
            inner: wit::Verdicts {
                verdicts: Vec::with_capacity(n),
                data: Vec::new(),
                headers: Vec::new(),
            },
        }
    }

    /// The next record is stored unchanged.
    pub fn keep(&mut self) {
        self.inner.verdicts.push(wit::Verdict::Keep);
    }

    /// The next record is dropped silently.
    pub fn discard(&mut self) {
        self.inner.verdicts.push(wit::Verdict::Drop);
    }

    /// The next record is rejected: the producer sees `reason` as a typed
    /// error (or the record goes to the topic's dead-letter topic).
    pub fn reject(&mut self, reason: impl Into<String>) {
        self.inner
            .verdicts
            .push(wit::Verdict::Reject(reason.into()));
    }

    /// The next record is stored rewritten: what the returned [`Rewrite`]
    /// changes (nothing yet; the timestamp always stays).
    pub fn rewrite(&mut self) -> Rewrite<'_> {
        self.inner
            .verdicts
            .push(wit::Verdict::Rewrite(wit::Rewrite {
                key: wit::Field::Unchanged,
                value: wit::Field::Unchanged,
                headers: wit::HeaderEdit::Unchanged,
            }));
        Rewrite { verdicts: self }
    }

    /// Number of verdicts so far.
    pub fn len(&self) -> usize {
        self.inner.verdicts.len()
    }

    /// No verdict yet.
    pub fn is_empty(&self) -> bool {
        self.inner.verdicts.is_empty()
    }

    /// Verdict `i`.
    pub fn get(&self, i: usize) -> Option<Verdict<'_>> {
        self.inner.verdicts.get(i).map(|v| match v {
            wit::Verdict::Keep => Verdict::Keep,
            wit::Verdict::Rewrite(_) => Verdict::Rewrite,
            wit::Verdict::Drop => Verdict::Drop,
            wit::Verdict::Reject(reason) => Verdict::Reject(reason),
        })
    }

    /// What verdict `i` makes of record `i` of `records` (for tests; the
    /// node applies verdicts the same way).
    pub fn outcome(&self, i: usize, records: &Records) -> Option<Outcome> {
        let verdict = self.inner.verdicts.get(i)?;
        let record = records.get(i)?;
        let owned =
            |key: Option<&[u8]>, value: Option<&[u8]>, headers: Vec<Header<'_>>| OwnedRecord {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                headers: headers
                    .into_iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
                timestamp: record.timestamp(),
            };
        Some(match verdict {
            wit::Verdict::Keep => Outcome::Kept(owned(
                record.key(),
                record.value(),
                record.headers().collect(),
            )),
            wit::Verdict::Drop => Outcome::Dropped,
            wit::Verdict::Reject(reason) => Outcome::Rejected(reason.clone()),
            wit::Verdict::Rewrite(rw) => {
                let data = &self.inner.data;
                let field = |f: &wit::Field, original: Option<&'_ [u8]>| match f {
                    wit::Field::Unchanged => original.map(<[u8]>::to_vec),
                    wit::Field::Null => None,
                    wit::Field::Bytes(s) => Some(span(*s).of(data).to_vec()),
                };
                let added = |r: &wit::HeaderRange| {
                    let first = r.first as usize;
                    self.inner
                        .headers
                        .get(first..first.saturating_add(r.count as usize))
                        .unwrap_or_default()
                        .iter()
                        .map(|h| Header {
                            key: std::str::from_utf8(span(h.key).of(data)).unwrap_or_default(),
                            value: h.value.map(|s| span(s).of(data)),
                        })
                        .collect::<Vec<_>>()
                };
                let headers = match &rw.headers {
                    wit::HeaderEdit::Unchanged => record.headers().collect(),
                    wit::HeaderEdit::Replace(r) => added(r),
                    wit::HeaderEdit::Append(r) => record.headers().chain(added(r)).collect(),
                };
                let mut out = owned(None, None, headers);
                out.key = field(&rw.key, record.key());
                out.value = field(&rw.value, record.value());
                Outcome::Rewritten(out)
            }
        })
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> wit::Verdicts {
        self.inner
    }
}

/// Changes to a record [`Verdicts::rewrite`] keeps.
#[derive(Debug)]
pub struct Rewrite<'v> {
    verdicts: &'v mut Verdicts,
}

impl Rewrite<'_> {
    fn current(&mut self) -> &mut wit::Rewrite {
        match self.verdicts.inner.verdicts.last_mut() {
            Some(wit::Verdict::Rewrite(rw)) => rw,
            // `Verdicts::rewrite` pushed it, and holds the borrow since.
            _ => unreachable!("a Rewrite always edits the verdict it pushed"),
        }
    }

    /// A new key (`None`: Kafka's null).
    pub fn key(mut self, key: Option<&[u8]>) -> Self {
        let field = self.field(key);
        self.current().key = field;
        self
    }

    /// A new value (`None`: Kafka's null).
    pub fn value(mut self, value: Option<&[u8]>) -> Self {
        let field = self.field(value);
        self.current().value = field;
        self
    }

    /// Adds a header after the record's own (or after those set since
    /// [`Rewrite::clear_headers`]). When consecutive records are each given
    /// the same one header, the answer carries it once and they share it.
    pub fn header(mut self, key: &str, value: Option<&[u8]>) -> Self {
        if let Some(shared) = self.same_as_previous(key, value) {
            self.current().headers = wit::HeaderEdit::Append(shared);
            return self;
        }
        let data = &mut self.verdicts.inner.data;
        let header = wit::Header {
            key: wit_span(append(data, key.as_bytes())),
            value: value.map(|v| wit_span(append(data, v))),
        };
        let next = self.verdicts.inner.headers.len() as u32;
        self.verdicts.inner.headers.push(header);
        let rw = self.current();
        match &mut rw.headers {
            wit::HeaderEdit::Unchanged => {
                rw.headers = wit::HeaderEdit::Append(wit::HeaderRange {
                    first: next,
                    count: 1,
                });
            }
            wit::HeaderEdit::Append(r) | wit::HeaderEdit::Replace(r) => r.count += 1,
        }
        self
    }

    /// Drops the record's headers; [`Rewrite::header`] adds new ones.
    pub fn clear_headers(mut self) -> Self {
        let next = self.verdicts.inner.headers.len() as u32;
        self.current().headers = wit::HeaderEdit::Replace(wit::HeaderRange {
            first: next,
            count: 0,
        });
        self
    }

    /// The previous record's appended headers, when they are exactly this
    /// one header, the last of the list, and this rewrite has not touched
    /// its headers yet: then both records point at the same header (an
    /// interceptor adding one header to every record sends it once). It
    /// stays the last of the list, so adding more headers to this record
    /// still extends its range.
    fn same_as_previous(&self, key: &str, value: Option<&[u8]>) -> Option<wit::HeaderRange> {
        let inner = &self.verdicts.inner;
        let n = inner.verdicts.len();
        let (Some(wit::Verdict::Rewrite(prev)), Some(wit::Verdict::Rewrite(this))) =
            (inner.verdicts.get(n.checked_sub(2)?), inner.verdicts.last())
        else {
            return None;
        };
        let (wit::HeaderEdit::Append(r), wit::HeaderEdit::Unchanged) = (prev.headers, this.headers)
        else {
            return None;
        };
        let h = inner.headers.last()?;
        let same = r.count == 1
            && r.first as usize + 1 == inner.headers.len()
            && span(h.key).of(&inner.data) == key.as_bytes()
            && h.value.map(|v| span(v).of(&inner.data)) == value;
        same.then_some(r)
    }

    fn field(&mut self, bytes: Option<&[u8]>) -> wit::Field {
        match bytes {
            None => wit::Field::Null,
            Some(b) => wit::Field::Bytes(wit_span(append(&mut self.verdicts.inner.data, b))),
        }
    }
}

fn wit_span(s: Span) -> wit::Span {
    wit::Span {
        offset: s.offset,
        len: s.len,
    }
}

fn span(s: wit::Span) -> Span {
    Span {
        offset: s.offset,
        len: s.len,
    }
}

#[doc(hidden)]
pub fn records_from_wit(batch: wit::Batch) -> Records {
    Records {
        data: batch.data,
        timestamps: batch.timestamps,
        fields: batch.fields,
        header_starts: batch.header_starts,
        headers: batch.headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_apply_like_the_node_applies_them() {
        let mut records = Records::new();
        records
            .push(Some(b"k"), Some(b"v"), &[("h", Some(b"1"))], 5)
            .push(None, Some(b"w"), &[], 6)
            .push(None, Some(b"x"), &[("h", None)], 7)
            .push(None, None, &[], 8)
            .push(None, None, &[], 9);
        let mut v = Verdicts::with_capacity(records.len());
        v.rewrite().value(Some(b"V")).header("g", Some(b"2"));
        v.rewrite()
            .key(Some(b"K"))
            .clear_headers()
            .header("a", None)
            .header("b", Some(b"3"));
        v.keep();
        v.discard();
        v.reject("no");
        assert_eq!(v.len(), 5);
        assert_eq!(v.get(1), Some(Verdict::Rewrite));
        assert_eq!(v.get(4), Some(Verdict::Reject("no")));
        let Some(Outcome::Rewritten(first)) = v.outcome(0, &records) else {
            panic!("{:?}", v.outcome(0, &records));
        };
        assert_eq!(first.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(first.value.as_deref(), Some(&b"V"[..]));
        assert_eq!(first.header("h"), Some(&b"1"[..]));
        assert_eq!(first.header("g"), Some(&b"2"[..]));
        assert_eq!(first.timestamp, 5);
        let Some(Outcome::Rewritten(second)) = v.outcome(1, &records) else {
            panic!();
        };
        assert_eq!(second.key.as_deref(), Some(&b"K"[..]));
        assert_eq!(second.value.as_deref(), Some(&b"w"[..]));
        assert_eq!(
            second.headers,
            vec![
                ("a".to_owned(), None),
                ("b".to_owned(), Some(b"3".to_vec()))
            ]
        );
        assert!(matches!(v.outcome(2, &records), Some(Outcome::Kept(r)) if r.headers.len() == 1));
        assert_eq!(v.outcome(3, &records), Some(Outcome::Dropped));
        assert_eq!(v.outcome(4, &records), Some(Outcome::Rejected("no".into())));
        assert_eq!(v.outcome(5, &records), None);
    }

    #[test]
    fn one_header_added_to_every_record_is_sent_once() {
        let mut records = Records::new();
        for i in 0..4u8 {
            records.push(None, Some(&[i]), &[("own", Some(b"o"))], 0);
        }
        let mut v = Verdicts::with_capacity(records.len());
        v.rewrite().header("g", Some(b"1"));
        v.rewrite().header("g", Some(b"1"));
        // More headers after a shared one still land on this record only.
        v.rewrite().header("g", Some(b"1")).header("x", None);
        v.rewrite().header("g", Some(b"2"));
        assert_eq!(v.inner.headers.len(), 3);
        let headers = |i| match v.outcome(i, &records) {
            Some(Outcome::Rewritten(r)) => r.headers,
            other => panic!("{other:?}"),
        };
        let g = |x: &[u8]| ("g".to_owned(), Some(x.to_vec()));
        let own = ("own".to_owned(), Some(b"o".to_vec()));
        assert_eq!(headers(0), [own.clone(), g(b"1")]);
        assert_eq!(headers(1), [own.clone(), g(b"1")]);
        assert_eq!(headers(2), [own.clone(), g(b"1"), ("x".to_owned(), None)]);
        assert_eq!(headers(3), [own, g(b"2")]);
    }
}
