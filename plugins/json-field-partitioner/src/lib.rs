//! `json-field-partitioner`: partitions by the JSON field named by the config
//! key `field` (e.g. `--config field=device_id`), hashed with Kafka's murmur2
//! exactly as Kafka hashes keys, so one device's records stay in order in one
//! partition.
//!
//! Records without the field (or not JSON) fall back to the record key's
//! murmur2, and records without a key go round-robin.
//!
//! A value is read only up to the field, and nothing is built from it: a
//! partitioner routes, it does not validate (reject malformed values with
//! `schema-guard`). So the first occurrence of a repeated field decides, and
//! a value that breaks off after the field is still routed by it.

use std::borrow::Cow;
use std::cell::Cell;

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::partitioner::{Partitioner, Records};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The plugin.
pub struct JsonFieldPartitioner {
    field: String,
    /// `{"<field>":"`, when the field name needs no escaping in JSON.
    leading: Option<Vec<u8>>,
    next: u32,
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// `bytes` after `prefix`, compared eight bytes at a time (Wasm has no
/// vector `memcmp` to call).
fn strip_prefix<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = bytes.split_at_checked(prefix.len())?;
    let mut a = head.chunks_exact(8);
    let mut b = prefix.chunks_exact(8);
    for (x, y) in (&mut a).zip(&mut b) {
        let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if word(x) != word(y) {
            return None;
        }
    }
    (a.remainder() == b.remainder()).then_some(rest)
}

/// The partition Kafka gives `bytes` among `count`.
pub fn partition_for(bytes: &[u8], count: u32) -> u32 {
    ((murmur2(bytes) & 0x7fff_ffff) as u32) % count
}

/// Finds the top-level field `name` of the JSON document `doc`, reading
/// `doc` only up to that field and building nothing: the field's raw JSON
/// text (its first occurrence), or `None` if `doc` is not an object, lacks
/// the field, or is not JSON before it.
pub fn find_field<'a>(doc: &'a [u8], name: &str) -> Option<&'a RawValue> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(doc);
    // The visitor stops at the field; serde_json then reports the rest of
    // the object as unread, which is no concern of a partitioner.
    let _ = (&mut de).deserialize_map(FindField {
        name,
        found: &found,
    });
    found.get()
}

struct FindField<'n, 'a> {
    name: &'n str,
    found: &'n Cell<Option<&'a RawValue>>,
}

impl<'de> Visitor<'de> for FindField<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_field) = map.next_key_seed(KeyIs(self.name))? {
            if is_field {
                self.found.set(Some(map.next_value::<&'de RawValue>()?));
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Whether a map key equals a name, compared where it lies.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

impl JsonFieldPartitioner {
    /// The usual layout, the field first with a string that has nothing to
    /// unescape (`{"device_id":"pump-1",...`): the string's bytes, found
    /// without the parser, exactly as the parser would give them. `None`
    /// when the value starts otherwise, or the string holds anything JSON
    /// escapes or forbids: the parser decides then.
    fn leading_plain_string<'a>(&self, value: &'a [u8]) -> Option<&'a [u8]> {
        let rest = strip_prefix(value, self.leading.as_deref()?)?;
        // One pass to the closing quote: stop at anything to unescape or
        // that JSON forbids, and note whether UTF-8 needs checking.
        let mut ascii = true;
        for (i, &b) in rest.iter().enumerate() {
            if b == b'"' {
                let s = &rest[..i];
                if !ascii {
                    std::str::from_utf8(s).ok()?;
                }
                return Some(s);
            }
            if b < 0x20 || b == b'\\' {
                return None;
            }
            ascii &= b < 0x80;
        }
        None
    }

    /// The field's value as bytes to hash: a string's contents, or the JSON
    /// text of any other value (so `7` and `"7"` differ, as they should).
    /// Borrowed from the record unless the string has escapes or the value
    /// is not a string.
    fn field_bytes<'a>(&self, value: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if let Some(bytes) = self.leading_plain_string(value) {
            return Some(Cow::Borrowed(bytes));
        }
        let raw = find_field(value, &self.field)?.get();
        if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            if !inner.contains('\\') {
                return Some(Cow::Borrowed(inner.as_bytes()));
            }
            return serde_json::from_str::<String>(raw)
                .ok()
                .map(|s| Cow::Owned(s.into_bytes()));
        }
        match serde_json::from_str::<serde_json::Value>(raw).ok()? {
            serde_json::Value::Null => None,
            // Numbers, booleans, arrays and objects in their canonical form.
            other => Some(Cow::Owned(other.to_string().into_bytes())),
        }
    }
}

impl Partitioner for JsonFieldPartitioner {
    fn new(config: Config) -> Result<Self, String> {
        let field = config.require("field")?.to_owned();
        let plain = !field.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
        Ok(JsonFieldPartitioner {
            leading: plain.then(|| format!(r#"{{"{field}":""#).into_bytes()),
            field,
            next: 0,
        })
    }

    fn partition(
        &mut self,
        _topic: &str,
        partition_count: u32,
        records: &Records,
    ) -> Result<Vec<u32>, String> {
        if partition_count == 0 {
            return Err("the topic has no partitions".to_owned());
        }
        Ok(records
            .iter()
            .map(|r| {
                if let Some(bytes) = r.value().and_then(|v| self.field_bytes(v)) {
                    return partition_for(&bytes, partition_count);
                }
                if let Some(key) = r.key() {
                    return partition_for(key, partition_count);
                }
                self.next = self.next.wrapping_add(1);
                self.next % partition_count
            })
            .collect())
    }
}

eddy_plugin_sdk::export!(partitioner: JsonFieldPartitioner);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn same_field_same_partition_and_fallbacks() {
        let mut p = JsonFieldPartitioner::new(Config::new([("field", "device_id")])).unwrap();
        let mut records = Records::new();
        records
            .push(None, Some(br#"{"device_id":"pump-1","t":1}"#), &[], 0)
            .push(None, Some(br#"{"t":2,"device_id":"pump-1"}"#), &[], 0)
            .push(Some(b"pump-1"), Some(b"not json"), &[], 0)
            // Broken before the field: the key decides.
            .push(
                Some(b"pump-1"),
                Some(br#"{"t":oops, "device_id":"x"}"#),
                &[],
                0,
            )
            // Escapes are decoded before hashing.
            .push(None, Some(br#"{"device_id":"pump\u002d1"}"#), &[], 0)
            // A raw tab is not JSON: the key decides.
            .push(Some(b"pump-1"), Some(b"{\"device_id\":\"a\tb\"}"), &[], 0)
            // Not a string: its JSON text is hashed.
            .push(None, Some(br#"{"device_id":7}"#), &[], 0);
        let out = p.partition("t", 8, &records).unwrap();
        assert_eq!(out[0], partition_for(b"pump-1", 8));
        assert_eq!(out[0], out[1]);
        // The key fallback hashes the same bytes the same way.
        assert_eq!(out[2], out[0]);
        assert_eq!(out[3], out[0]);
        assert_eq!(out[4], out[0]);
        assert_eq!(out[5], out[0]);
        assert_eq!(out[6], partition_for(b"7", 8));
        let spread: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| {
                let one = Records::with_values([format!(r#"{{"device_id":"d{i}"}}"#)]);
                p.partition("t", 8, &one).unwrap()[0]
            })
            .collect();
        assert!(spread.len() > 4, "{spread:?}");
        assert!(spread.iter().all(|p| *p < 8));
    }

    #[test]
    fn fields_are_found_at_the_top_level_without_reading_on() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"a":1,"f":"x"}"#, Some(r#""x""#)),
            (
                r#" { "f" : [1, {"f":2}] , "b":null} "#,
                Some("[1, {\"f\":2}]"),
            ),
            (r#"{"f":1,"f":2}"#, Some("1")),
            (r#"{"f\u0031":0,"f":3}"#, Some("3")),
            (r#"{"f":1, this is not read"#, Some("1")),
            (r#"{"g":{"f":1}}"#, None),
            (r#"{"g":[,"f":1}"#, None),
            (r#"[{"f":1}]"#, None),
            (r#""f""#, None),
            ("7", None),
            ("null", None),
            ("", None),
            (r#"{"f":01}"#, None),
        ];
        for (doc, want) in cases {
            let got = find_field(doc.as_bytes(), "f").map(RawValue::get);
            assert_eq!(got, *want, "{doc}");
        }
        // Non-string values hash as their canonical JSON text.
        let p = JsonFieldPartitioner::new(Config::new([("field", "n")])).unwrap();
        assert_eq!(
            p.field_bytes(br#"{"n": 21.50}"#).as_deref(),
            Some(&b"21.5"[..])
        );
        assert_eq!(p.field_bytes(br#"{"n": null}"#), None);
    }
}
