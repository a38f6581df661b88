//! Canonical JSON and definition hashes.
//!
//! A tool definition is identified by the SHA-256 of its canonical JSON: object keys sorted
//! (by UTF-8 bytes), no whitespace, strings escaped the way `serde_json` writes them, numbers as
//! `serde_json` prints them. Two definitions that differ only in key order or whitespace hash
//! alike; any change of content, however small, changes the hash.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The canonical text of `value`.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// SHA-256 of the canonical text, lowercase hex.
pub fn definition_hash(value: &Value) -> String {
    hex::encode(Sha256::digest(canonical(value).as_bytes()))
}

/// Canonical JSON pretty-printed (sorted keys, two-space indent): what diffs show.
pub fn pretty(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                // serde_json's map keeps insertion order only with `preserve_order`; either way
                // inserting in sorted order prints sorted.
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sorted(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"name":"t","inputSchema":{"b":1,"a":[1,2]}}"#).unwrap();
        let b: Value =
            serde_json::from_str("{ \"inputSchema\": {\"a\": [1, 2], \"b\": 1}, \"name\": \"t\" }")
                .unwrap();
        assert_eq!(
            canonical(&a),
            r#"{"inputSchema":{"a":[1,2],"b":1},"name":"t"}"#
        );
        assert_eq!(definition_hash(&a), definition_hash(&b));
    }

    #[test]
    fn any_change_changes_the_hash() {
        let a = json!({"name": "t", "description": "Translate."});
        let b = json!({"name": "t", "description": "Translate. "});
        assert_ne!(definition_hash(&a), definition_hash(&b));
        assert_eq!(definition_hash(&a).len(), 64);
    }

    #[test]
    fn pretty_is_sorted() {
        let text = pretty(&json!({"b": 1, "a": {"d": 2, "c": 3}}));
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
        assert!(text.find("\"c\"").unwrap() < text.find("\"d\"").unwrap());
    }
}
