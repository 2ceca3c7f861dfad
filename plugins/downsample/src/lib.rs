//! `downsample`: keeps one record in N per key (the 1st, the N+1th, …) and
//! drops the others, e.g. to thin a 10 Hz sensor feed to 1 Hz.
//!
//! Config: `n` (keep one in n, default 10), `keys-max` (most keys tracked,
//! default 100000; when more appear, counting starts over for every key so
//! memory stays bounded). Records with a null key share one counter.
//!
//! Counts live in the plugin instance; the node keeps instances alive, but
//! may run several at once and replaces them after a failure, so the thinning
//! is approximate across instances.

use std::collections::HashMap;

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Record, Verdict};

/// The plugin.
pub struct Downsample {
    n: u64,
    keys_max: usize,
    seen: HashMap<Option<Vec<u8>>, u64>,
}

impl Interceptor for Downsample {
    fn new(config: Config) -> Result<Self, String> {
        let n: u64 = config.parse_or("n", 10)?;
        if n == 0 {
            return Err("config `n` must be at least 1".to_owned());
        }
        Ok(Downsample {
            n,
            keys_max: config.parse_or("keys-max", 100_000)?,
            seen: HashMap::new(),
        })
    }

    fn intercept(&mut self, _topic: &str, records: Vec<Record>) -> Result<Vec<Verdict>, String> {
        Ok(records
            .into_iter()
            .map(|r| {
                if self.seen.len() >= self.keys_max && !self.seen.contains_key(&r.key) {
                    self.seen.clear();
                }
                let count = self.seen.entry(r.key).or_insert(0);
                let keep = (*count).is_multiple_of(self.n);
                *count += 1;
                if keep { Verdict::Keep } else { Verdict::Drop }
            })
            .collect())
    }
}

eddy_plugin_sdk::export!(interceptor: Downsample);

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str) -> Record {
        let mut r = Record::with_value("v");
        r.key = Some(key.as_bytes().to_vec());
        r
    }

    #[test]
    fn keeps_one_in_n_per_key() {
        let mut p = Downsample::new(Config::new([("n", "3")])).unwrap();
        let batch: Vec<Record> = (0..9)
            .map(|i| keyed(if i % 3 == 0 { "a" } else { "b" }))
            .collect();
        let out = p.intercept("t", batch).unwrap();
        let kept: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, Verdict::Keep))
            .map(|(i, _)| i)
            .collect();
        // a at 0,3,6 -> keeps 0; b at 1,2,4,5,7,8 -> keeps 1 and 5.
        assert_eq!(kept, vec![0, 1, 5]);
        // Counts carry over to the next batch: a's 4th record is kept.
        let out = p.intercept("t", vec![keyed("a")]).unwrap();
        assert!(matches!(out[0], Verdict::Keep));
    }

    #[test]
    fn rejects_zero() {
        assert!(Downsample::new(Config::new([("n", "0")])).is_err());
    }
}
