//! `schema-guard`: rejects records whose value is not a JSON object with the
//! required fields; the producer sees the reason (or the records go to the
//! topic's dead-letter topic).
//!
//! Config: `required` (comma-separated field names, required), `allow-null`
//! (`true` to let tombstones through; default `false`).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Records, Verdicts};

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

    fn intercept(
        &mut self,
        _topic: &str,
        records: &Records,
        out: &mut Verdicts,
    ) -> Result<(), String> {
        for r in records.iter() {
            match self.check(r.value()) {
                Ok(()) => out.keep(),
                Err(reason) => out.reject(reason),
            }
        }
        Ok(())
    }
}

eddy_plugin_sdk::export!(interceptor: SchemaGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::interceptor::Verdict;

    fn guard() -> SchemaGuard {
        SchemaGuard::new(Config::new([("required", "device_id, temp")])).unwrap()
    }

    fn verdicts(guard: &mut SchemaGuard, records: &Records) -> Verdicts {
        let mut out = Verdicts::with_capacity(records.len());
        guard.intercept("t", records, &mut out).unwrap();
        assert_eq!(out.len(), records.len());
        out
    }

    #[test]
    fn keeps_valid_and_rejects_the_rest_with_a_reason() {
        let records = Records::with_values([
            r#"{"device_id":"a","temp":3}"#,
            r#"{"device_id":"a"}"#,
            "not json",
            "[1,2]",
        ]);
        let out = verdicts(&mut guard(), &records);
        assert_eq!(out.get(0), Some(Verdict::Keep));
        assert!(matches!(out.get(1), Some(Verdict::Reject(r)) if r.contains("temp")));
        assert!(matches!(out.get(2), Some(Verdict::Reject(r)) if r.contains("not JSON")));
        assert!(matches!(out.get(3), Some(Verdict::Reject(r)) if r.contains("object")));
    }

    #[test]
    fn null_values_follow_allow_null() {
        let mut records = Records::new();
        records.push(None, None, &[], 0);
        assert!(matches!(
            verdicts(&mut guard(), &records).get(0),
            Some(Verdict::Reject(_))
        ));
        let mut lenient =
            SchemaGuard::new(Config::new([("required", "a"), ("allow-null", "true")])).unwrap();
        assert_eq!(verdicts(&mut lenient, &records).get(0), Some(Verdict::Keep));
    }
}
