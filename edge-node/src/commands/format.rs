//! Output formats of the client subcommands: aligned tables, JSON records, text
//! records.

use std::io::{self, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use eddy_client::ConsumerRecord;

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i + 1 < columns {
                text.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// One record as one JSON object, without a newline: `topic`, `partition`,
/// `offset`, `timestamp`, then `key` and `value` (UTF-8 strings or null; bytes that
/// are not UTF-8 go under `key_b64` / `value_b64` instead, base64 with padding),
/// then `headers`, an array of `{"key": …, "value": …}` in order (a header value
/// that is not UTF-8 goes under `value_b64`). An array keeps repeated header keys.
pub fn record_json(record: &ConsumerRecord) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"topic\":");
    push_json_str(&mut out, &record.topic);
    out.push_str(&format!(
        ",\"partition\":{},\"offset\":{},\"timestamp\":{},",
        record.partition, record.offset, record.timestamp
    ));
    push_bytes_field(&mut out, "key", record.key.as_deref());
    out.push(',');
    push_bytes_field(&mut out, "value", record.value.as_deref());
    out.push_str(",\"headers\":[");
    for (i, header) in record.headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        push_json_str(&mut out, &header.key);
        out.push(',');
        push_bytes_field(&mut out, "value", header.value.as_deref());
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `"name":"utf8"`, `"name":null`, or `"name_b64":"base64"`.
fn push_bytes_field(out: &mut String, name: &str, bytes: Option<&[u8]>) {
    match bytes {
        None => {
            push_json_str(out, name);
            out.push_str(":null");
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => {
                push_json_str(out, name);
                out.push(':');
                push_json_str(out, text);
            }
            Err(_) => {
                push_json_str(out, &format!("{name}_b64"));
                out.push(':');
                push_json_str(out, &BASE64.encode(bytes));
            }
        },
    }
}

fn push_json_str(out: &mut String, text: &str) {
    // serde_json escapes exactly as JSON requires; a str always serializes.
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

/// Writes a record as text: the value, or `key<TAB>value` with `print_key`; a null
/// key or value prints as `null`. Bytes are written as they are.
pub fn write_text(out: &mut dyn Write, record: &ConsumerRecord, print_key: bool) -> io::Result<()> {
    if print_key {
        out.write_all(record.key.as_deref().unwrap_or(b"null"))?;
        out.write_all(b"\t")?;
    }
    out.write_all(record.value.as_deref().unwrap_or(b"null"))?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_client::RecordHeader;
    use eddy_core::batch::TimestampType;
    use std::sync::Arc;

    fn record(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<RecordHeader>,
    ) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("sensors"),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            timestamp_type: TimestampType::CreateTime,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        }
    }

    fn parse(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn json_has_every_field_in_order() {
        let r = record(
            Some(b"gw-1"),
            Some(b"t=\"21\"\n"),
            vec![RecordHeader::new("trace", Some(b"abc"))],
        );
        let text = record_json(&r);
        assert_eq!(
            text,
            r#"{"topic":"sensors","partition":2,"offset":41,"timestamp":1700000000000,"key":"gw-1","value":"t=\"21\"\n","headers":[{"key":"trace","value":"abc"}]}"#
        );
        let v = parse(&text);
        assert_eq!(v["value"], "t=\"21\"\n");
    }

    #[test]
    fn json_nulls_and_binary() {
        let binary = [0xff, 0x00, 0xfe];
        let r = record(
            None,
            Some(&binary),
            vec![
                RecordHeader::new("n", None),
                RecordHeader::new("b", Some(&binary)),
                RecordHeader::new("n", Some(b"again")),
            ],
        );
        let v = parse(&record_json(&r));
        assert!(v["key"].is_null());
        assert!(v.get("value").is_none(), "not UTF-8: no `value`");
        assert_eq!(v["value_b64"], "/wD+");
        assert_eq!(
            BASE64
                .decode(v["value_b64"].as_str().expect("string"))
                .expect("base64"),
            binary
        );
        let headers = v["headers"].as_array().expect("array");
        assert_eq!(headers.len(), 3, "repeated keys are kept");
        assert!(headers[0]["value"].is_null());
        assert_eq!(headers[1]["value_b64"], "/wD+");
        assert_eq!(headers[2]["value"], "again");
        let r = record(Some(&binary), None, Vec::new());
        let v = parse(&record_json(&r));
        assert_eq!(v["key_b64"], "/wD+");
        assert!(v["value"].is_null());
        assert_eq!(v["headers"], serde_json::json!([]));
    }

    #[test]
    fn text_output() {
        let mut out = Vec::new();
        write_text(&mut out, &record(Some(b"k"), Some(b"v"), Vec::new()), true).expect("write");
        write_text(&mut out, &record(None, Some(b"v2"), Vec::new()), true).expect("write");
        write_text(&mut out, &record(Some(b"k"), None, Vec::new()), false).expect("write");
        assert_eq!(out, b"k\tv\nnull\tv2\nnull\n");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["sensors".to_owned(), "3".to_owned()],
            vec!["a".to_owned(), "12".to_owned()],
        ];
        let text = table(&["TOPIC", "PARTITIONS"], &rows);
        assert_eq!(text, "TOPIC    PARTITIONS\nsensors  3\na        12\n");
        assert_eq!(table(&["A"], &[]), "A\n");
    }
}
