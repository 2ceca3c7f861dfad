//! `enrich`: adds a `gateway-id` header to every record, so consumers know
//! which gateway a reading came through.
//!
//! Config: `gateway-id` (required), `header` (the header name, default
//! `gateway-id`). A record that already carries the header keeps its own
//! value (a record forwarded from another gateway keeps its origin).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Header, Interceptor, Record, Verdict};

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

    fn intercept(&mut self, _topic: &str, records: Vec<Record>) -> Result<Vec<Verdict>, String> {
        Ok(records
            .into_iter()
            .map(|mut r| {
                if r.headers.iter().any(|h| h.key == self.header) {
                    return Verdict::Keep;
                }
                r.headers.push(Header {
                    key: self.header.clone(),
                    value: Some(self.value.clone()),
                });
                Verdict::Replace(r)
            })
            .collect())
    }
}

eddy_plugin_sdk::export!(interceptor: Enrich);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_header_once() {
        let mut p = Enrich::new(Config::new([("gateway-id", "gw-7")])).unwrap();
        let mut tagged = Record::with_value("b");
        tagged.headers.push(Header {
            key: "gateway-id".into(),
            value: Some(b"other".to_vec()),
        });
        let out = p
            .intercept("t", vec![Record::with_value("a"), tagged])
            .unwrap();
        match &out[0] {
            Verdict::Replace(r) => {
                assert_eq!(r.header("gateway-id"), Some(&b"gw-7"[..]));
                assert_eq!(r.value.as_deref(), Some(&b"a"[..]));
            }
            other => panic!("expected a rewrite, got {other:?}"),
        }
        assert!(matches!(out[1], Verdict::Keep));
    }

    #[test]
    fn needs_a_gateway_id() {
        let err = Enrich::new(Config::default()).err().unwrap();
        assert!(err.contains("gateway-id"), "{err}");
    }
}
