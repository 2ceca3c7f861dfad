//! `schema-guard`: rejects records whose value is not a JSON object with the
//! required fields; the producer sees the reason (or the records go to the
//! topic's dead-letter topic).
//!
//! Config: `required` (comma-separated field names, required), `allow-null`
//! (`true` to let tombstones through; default `false`).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Record, Verdict};

/// The plugin.
pub struct SchemaGuard {
    required: Vec<String>,
    allow_null: bool,
}

impl SchemaGuard {
    fn check(&self, value: Option<&[u8]>) -> Result<(), String> {
        let Some(value) = value else {
            return if self.allow_null {
                Ok(())
            } else {
                Err("value is null; a JSON object is required".to_owned())
            };
        };
        let doc: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        let Some(object) = doc.as_object() else {
            return Err("value is not a JSON object".to_owned());
        };
        let missing: Vec<&str> = self
            .required
            .iter()
            .filter(|f| !object.contains_key(f.as_str()))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing required field(s): {}", missing.join(", ")))
        }
    }
}

impl Interceptor for SchemaGuard {
    fn new(config: Config) -> Result<Self, String> {
        config.require("required")?;
        Ok(SchemaGuard {
            required: config.list("required"),
            allow_null: config.parse_or("allow-null", false)?,
        })
    }

    fn intercept(&mut self, _topic: &str, records: Vec<Record>) -> Result<Vec<Verdict>, String> {
        Ok(records
            .iter()
            .map(|r| match self.check(r.value.as_deref()) {
                Ok(()) => Verdict::Keep,
                Err(reason) => Verdict::Reject(reason),
            })
            .collect())
    }
}

eddy_plugin_sdk::export!(interceptor: SchemaGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> SchemaGuard {
        SchemaGuard::new(Config::new([("required", "device_id, temp")])).unwrap()
    }

    #[test]
    fn keeps_valid_and_rejects_the_rest_with_a_reason() {
        let out = guard()
            .intercept(
                "t",
                vec![
                    Record::with_value(r#"{"device_id":"a","temp":3}"#),
                    Record::with_value(r#"{"device_id":"a"}"#),
                    Record::with_value("not json"),
                    Record::with_value("[1,2]"),
                ],
            )
            .unwrap();
        assert!(matches!(out[0], Verdict::Keep));
        assert!(matches!(&out[1], Verdict::Reject(r) if r.contains("temp")));
        assert!(matches!(&out[2], Verdict::Reject(r) if r.contains("not JSON")));
        assert!(matches!(&out[3], Verdict::Reject(r) if r.contains("object")));
    }

    #[test]
    fn null_values_follow_allow_null() {
        let mut r = Record::with_value("");
        r.value = None;
        let out = guard().intercept("t", vec![r.clone()]).unwrap();
        assert!(matches!(out[0], Verdict::Reject(_)));
        let mut lenient =
            SchemaGuard::new(Config::new([("required", "a"), ("allow-null", "true")])).unwrap();
        assert!(matches!(
            lenient.intercept("t", vec![r]).unwrap()[0],
            Verdict::Keep
        ));
    }
}
