//! `redact`: masks configured fields of JSON values (at any depth) before
//! they are stored. Values that are not JSON, or hold none of the fields,
//! are stored unchanged.
//!
//! Config: `fields` (comma-separated field names, required), `mask` (the
//! replacement string, default `***`).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Records, Verdicts};
use serde_json::Value;

/// The plugin.
pub struct Redact {
    fields: Vec<String>,
    mask: String,
}

impl Redact {
    /// Masks matching fields in `v`; whether anything changed.
    fn mask_value(&self, v: &mut Value) -> bool {
        match v {
            Value::Object(map) => {
                let mut changed = false;
                for (k, child) in map.iter_mut() {
                    if self.fields.iter().any(|f| f == k) {
                        *child = Value::String(self.mask.clone());
                        changed = true;
                    } else {
                        changed |= self.mask_value(child);
                    }
                }
                changed
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.mask_value(item) | changed),
            _ => false,
        }
    }
}

impl Interceptor for Redact {
    fn new(config: Config) -> Result<Self, String> {
        config.require("fields")?;
        Ok(Redact {
            fields: config.list("fields"),
            mask: config.get("mask").unwrap_or("***").to_owned(),
        })
    }

    fn intercept(
        &mut self,
        _topic: &str,
        records: &Records,
        out: &mut Verdicts,
    ) -> Result<(), String> {
        for r in records.iter() {
            let Some(value) = r.value() else {
                out.keep();
                continue;
            };
            let Ok(mut doc) = serde_json::from_slice::<Value>(value) else {
                out.keep();
                continue;
            };
            if !self.mask_value(&mut doc) {
                out.keep();
                continue;
            }
            match serde_json::to_vec(&doc) {
                Ok(bytes) => {
                    out.rewrite().value(Some(&bytes));
                }
                Err(e) => out.reject(format!("cannot re-encode the redacted value: {e}")),
            }
        }
        Ok(())
    }
}

eddy_plugin_sdk::export!(interceptor: Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::interceptor::{Outcome, Verdict};

    #[test]
    fn masks_fields_at_any_depth_and_leaves_the_rest() {
        let mut p = Redact::new(Config::new([("fields", "password,ssn")])).unwrap();
        let records = Records::with_values([
            r#"{"user":"a","password":"x","inner":[{"ssn":"1"}]}"#,
            r#"{"user":"b"}"#,
            "plain text",
        ]);
        let mut out = Verdicts::with_capacity(records.len());
        p.intercept("t", &records, &mut out).unwrap();
        let Some(Outcome::Rewritten(r)) = out.outcome(0, &records) else {
            panic!("expected a rewrite, got {:?}", out.get(0));
        };
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["password"], "***");
        assert_eq!(v["inner"][0]["ssn"], "***");
        assert_eq!(v["user"], "a");
        assert_eq!(out.get(1), Some(Verdict::Keep));
        assert_eq!(out.get(2), Some(Verdict::Keep));
    }
}
