//! `redact`: masks configured fields of JSON values (at any depth) before
//! they are stored. Values that are not JSON, or hold none of the fields,
//! are stored unchanged.
//!
//! Config: `fields` (comma-separated field names, required), `mask` (the
//! replacement string, default `***`).

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Record, Verdict};
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

    fn intercept(&mut self, _topic: &str, records: Vec<Record>) -> Result<Vec<Verdict>, String> {
        Ok(records
            .into_iter()
            .map(|mut r| {
                let Some(value) = r.value.as_deref() else {
                    return Verdict::Keep;
                };
                let Ok(mut doc) = serde_json::from_slice::<Value>(value) else {
                    return Verdict::Keep;
                };
                if !self.mask_value(&mut doc) {
                    return Verdict::Keep;
                }
                match serde_json::to_vec(&doc) {
                    Ok(bytes) => {
                        r.value = Some(bytes);
                        Verdict::Replace(r)
                    }
                    Err(e) => Verdict::Reject(format!("cannot re-encode the redacted value: {e}")),
                }
            })
            .collect())
    }
}

eddy_plugin_sdk::export!(interceptor: Redact);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_fields_at_any_depth_and_leaves_the_rest() {
        let mut p = Redact::new(Config::new([("fields", "password,ssn")])).unwrap();
        let out = p
            .intercept(
                "t",
                vec![
                    Record::with_value(r#"{"user":"a","password":"x","inner":[{"ssn":"1"}]}"#),
                    Record::with_value(r#"{"user":"b"}"#),
                    Record::with_value("plain text"),
                ],
            )
            .unwrap();
        let Verdict::Replace(r) = &out[0] else {
            panic!("expected a rewrite, got {:?}", out[0]);
        };
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["password"], "***");
        assert_eq!(v["inner"][0]["ssn"], "***");
        assert_eq!(v["user"], "a");
        assert!(matches!(out[1], Verdict::Keep));
        assert!(matches!(out[2], Verdict::Keep));
    }
}
