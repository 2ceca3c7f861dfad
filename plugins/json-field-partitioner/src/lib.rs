//! `json-field-partitioner`: partitions by the JSON field named by the config
//! key `field` (e.g. `--config field=device_id`), hashed with Kafka's murmur2
//! exactly as Kafka hashes keys, so one device's records stay in order in one
//! partition.
//!
//! Records without the field (or not JSON) fall back to the record key's
//! murmur2, and records without a key go round-robin.

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::partitioner::{Partitioner, Record};

/// The plugin.
pub struct JsonFieldPartitioner {
    field: String,
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

/// The partition Kafka gives `bytes` among `count`.
pub fn partition_for(bytes: &[u8], count: u32) -> u32 {
    ((murmur2(bytes) & 0x7fff_ffff) as u32) % count
}

impl JsonFieldPartitioner {
    /// The field's value as bytes to hash: a string's contents, or the JSON
    /// text of any other value (so `7` and `"7"` differ, as they should).
    fn field_bytes(&self, value: &[u8]) -> Option<Vec<u8>> {
        let doc: serde_json::Value = serde_json::from_slice(value).ok()?;
        match doc.get(&self.field)? {
            serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
            serde_json::Value::Null => None,
            other => Some(other.to_string().into_bytes()),
        }
    }
}

impl Partitioner for JsonFieldPartitioner {
    fn new(config: Config) -> Result<Self, String> {
        Ok(JsonFieldPartitioner {
            field: config.require("field")?.to_owned(),
            next: 0,
        })
    }

    fn partition(
        &mut self,
        _topic: &str,
        partition_count: u32,
        records: &[Record],
    ) -> Result<Vec<u32>, String> {
        if partition_count == 0 {
            return Err("the topic has no partitions".to_owned());
        }
        Ok(records
            .iter()
            .map(|r| {
                if let Some(bytes) = r.value.as_deref().and_then(|v| self.field_bytes(v)) {
                    return partition_for(&bytes, partition_count);
                }
                if let Some(key) = r.key.as_deref() {
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
        let rec = |v: &str| Record::new(None, v);
        let out = p
            .partition(
                "t",
                8,
                &[
                    rec(r#"{"device_id":"pump-1","t":1}"#),
                    rec(r#"{"t":2,"device_id":"pump-1"}"#),
                    Record::new(Some(b"pump-1"), "not json"),
                ],
            )
            .unwrap();
        assert_eq!(out[0], partition_for(b"pump-1", 8));
        assert_eq!(out[0], out[1]);
        // The key fallback hashes the same bytes the same way.
        assert_eq!(out[2], out[0]);
        let spread: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| {
                p.partition("t", 8, &[rec(&format!(r#"{{"device_id":"d{i}"}}"#))])
                    .unwrap()[0]
            })
            .collect();
        assert!(spread.len() > 4, "{spread:?}");
        assert!(spread.iter().all(|p| *p < 8));
    }
}
