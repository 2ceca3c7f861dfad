//! `enrich`: adds a `gateway-id` header to every record, so consumers know
//! which gateway a reading came through.
//!
//! Config: `gateway-id` (required), `header` (the header name, default
//! `gateway-id`). A record that already carries the header keeps its own
//! value (a record forwarded from another gateway keeps its origin).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Records, Verdicts};

/// The plugin.
pub struct Enrich {
    header: String,
    value: Vec<u8>,
}

impl Interceptor for Enrich {
    fn new(config: Config) -> Result<Self, String> {
        Ok(Enrich {
            header: config.get("header").unwrap_or("gateway-id").to_owned(),
            value: config.require("gateway-id")?.as_bytes().to_vec(),
        })
    }

    fn intercept(
        &mut self,
        _topic: &str,
        records: &Records,
        out: &mut Verdicts,
    ) -> Result<(), String> {
        for r in records.iter() {
            if r.has_header(&self.header) {
                out.keep();
            } else {
                out.rewrite().header(&self.header, Some(&self.value));
            }
        }
        Ok(())
    }
}

eddy_plugin_sdk::export!(interceptor: Enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::interceptor::{Outcome, Verdict};

    #[test]
    fn adds_the_header_once() {
        let mut p = Enrich::new(Config::new([("gateway-id", "gw-7")])).unwrap();
        let mut records = Records::new();
        records
            .push(None, Some(b"a"), &[("h", Some(b"1"))], 0)
            .push(None, Some(b"b"), &[("gateway-id", Some(b"other"))], 0);
        let mut out = Verdicts::with_capacity(2);
        p.intercept("t", &records, &mut out).unwrap();
        match out.outcome(0, &records) {
            Some(Outcome::Rewritten(r)) => {
                assert_eq!(r.header("gateway-id"), Some(&b"gw-7"[..]));
                assert_eq!(r.header("h"), Some(&b"1"[..]));
                assert_eq!(r.value.as_deref(), Some(&b"a"[..]));
            }
            other => panic!("expected a rewrite, got {other:?}"),
        }
        assert_eq!(out.get(1), Some(Verdict::Keep));
    }

    #[test]
    fn needs_a_gateway_id() {
        let err = Enrich::new(Config::default()).err().unwrap();
        assert!(err.contains("gateway-id"), "{err}");
    }
}
