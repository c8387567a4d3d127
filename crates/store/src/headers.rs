//! Record headers as `dead_letters.headers` keeps them: a JSON array in
//! wire order of `{"key": k, "value": text}`, or `{"key": k, "value_hex":
//! hex}` for a value that is not UTF-8, so any bytes round-trip and the
//! usual text headers stay readable in psql.

use serde_json::{Value, json};

/// Headers to their stored JSON form.
pub fn to_json(headers: &[(String, Vec<u8>)]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(key, value)| match std::str::from_utf8(value) {
                // jsonb cannot hold U+0000, in keys or values.
                Ok(text) if !text.contains('\0') => json!({ "key": key, "value": text }),
                _ => json!({ "key": key, "value_hex": hex(value) }),
            })
            .collect(),
    )
}

/// The stored JSON form back to headers. Entries this module did not write
/// (edited by hand) are skipped rather than failing a report.
pub fn from_json(stored: &Value) -> Vec<(String, Vec<u8>)> {
    let Some(entries) = stored.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let key = e.get("key")?.as_str()?.to_owned();
            let value = match (e.get("value"), e.get("value_hex")) {
                (Some(Value::String(text)), _) => text.as_bytes().to_vec(),
                (_, Some(Value::String(h))) => unhex(h)?,
                _ => return None,
            };
            Some((key, value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text and binary header values, and repeated keys, round-trip in order.
    #[test]
    fn headers_round_trip() {
        let headers = vec![
            ("trace-id".to_owned(), b"abc-123".to_vec()),
            ("bin".to_owned(), vec![0xff, 0x00, 0x10]),
            ("trace-id".to_owned(), Vec::new()),
        ];
        let stored = to_json(&headers);
        assert_eq!(stored[0], json!({"key": "trace-id", "value": "abc-123"}));
        assert_eq!(stored[1], json!({"key": "bin", "value_hex": "ff0010"}));
        assert_eq!(from_json(&stored), headers);
    }

    /// A value with a NUL byte is stored as hex: PostgreSQL's jsonb refuses U+0000.
    #[test]
    fn nul_bytes_are_stored_as_hex() {
        let headers = vec![("k".to_owned(), b"t\0".to_vec())];
        assert_eq!(
            to_json(&headers)[0],
            json!({"key": "k", "value_hex": "7400"})
        );
        assert_eq!(from_json(&to_json(&headers)), headers);
    }

    /// No headers is an empty array, and a malformed stored value reads as none.
    #[test]
    fn empty_and_malformed() {
        assert_eq!(to_json(&[]), json!([]));
        assert!(from_json(&json!({"not": "an array"})).is_empty());
        assert!(from_json(&json!([{"key": "k", "value_hex": "zz"}])).is_empty());
    }
}
