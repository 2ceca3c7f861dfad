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
use eddy_plugin_sdk::interceptor::{Interceptor, Records, Verdicts};

/// The plugin.
pub struct Downsample {
    n: u64,
    keys_max: usize,
    seen: HashMap<Vec<u8>, u64>,
    /// The counter of records with a null key.
    null_key: u64,
}

impl Downsample {
    /// Counts a record with `key`; whether it is one to keep.
    fn next_is_kept(&mut self, key: Option<&[u8]>) -> bool {
        let n = self.n;
        let bump = |count: &mut u64| {
            let keep = count.is_multiple_of(n);
            *count += 1;
            keep
        };
        let Some(key) = key else {
            return bump(&mut self.null_key);
        };
        if let Some(count) = self.seen.get_mut(key) {
            return bump(count);
        }
        if self.seen.len() >= self.keys_max {
            self.seen.clear();
            self.null_key = 0;
        }
        // A key's first record is kept.
        self.seen.insert(key.to_vec(), 1);
        true
    }
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
            null_key: 0,
        })
    }

    fn intercept(
        &mut self,
        _topic: &str,
        records: &Records,
        out: &mut Verdicts,
    ) -> Result<(), String> {
        for r in records.iter() {
            if self.next_is_kept(r.key()) {
                out.keep();
            } else {
                out.discard();
            }
        }
        Ok(())
    }
}

eddy_plugin_sdk::export!(interceptor: Downsample);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::interceptor::Verdict;

    fn keyed(keys: &[Option<&str>]) -> Records {
        let mut r = Records::new();
        for k in keys {
            r.push(k.map(str::as_bytes), Some(b"v"), &[], 0);
        }
        r
    }

    fn kept(p: &mut Downsample, records: &Records) -> Vec<usize> {
        let mut out = Verdicts::with_capacity(records.len());
        p.intercept("t", records, &mut out).unwrap();
        assert_eq!(out.len(), records.len());
        (0..out.len())
            .filter(|i| out.get(*i) == Some(Verdict::Keep))
            .collect()
    }

    #[test]
    fn keeps_one_in_n_per_key() {
        let mut p = Downsample::new(Config::new([("n", "3")])).unwrap();
        let keys: Vec<Option<&str>> = (0..9)
            .map(|i| Some(if i % 3 == 0 { "a" } else { "b" }))
            .collect();
        // a at 0,3,6 -> keeps 0; b at 1,2,4,5,7,8 -> keeps 1 and 5.
        assert_eq!(kept(&mut p, &keyed(&keys)), vec![0, 1, 5]);
        // Counts carry over to the next batch: a's 4th record is kept.
        assert_eq!(kept(&mut p, &keyed(&[Some("a")])), vec![0]);
        // Null keys share one counter.
        assert_eq!(kept(&mut p, &keyed(&[None, None, None, None])), vec![0, 3]);
    }

    #[test]
    fn counting_starts_over_past_keys_max() {
        let mut p = Downsample::new(Config::new([("n", "2"), ("keys-max", "2")])).unwrap();
        assert_eq!(
            kept(&mut p, &keyed(&[Some("a"), Some("b"), Some("a")])),
            vec![0, 1]
        );
        // A third key clears the counts: a starts over and is kept.
        assert_eq!(kept(&mut p, &keyed(&[Some("c"), Some("a")])), vec![0, 1]);
    }

    #[test]
    fn rejects_zero() {
        assert!(Downsample::new(Config::new([("n", "0")])).is_err());
    }
}
