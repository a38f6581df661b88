//! Would a redacted string still satisfy the tool's `outputSchema`?
//!
//! Redaction replaces spans of a string with `[REDACTED:<category>]`, so the value stays a
//! string; but a schema may constrain strings further (`format`, `pattern`, `enum`, `const`,
//! `minLength`/`maxLength`). Before a redacted `structuredContent` goes out, every subschema that
//! can apply at the redacted location is collected (through `properties`, `patternProperties`,
//! `additionalProperties`, `prefixItems`/`items`, `allOf`/`anyOf`/`oneOf`, `if`/`then`/`else`
//! and local `$ref`s) and the new string is checked against each one's string keywords. The
//! check is conservative: every branch of a combinator counts, any `format` counts as violated
//! (a mask is never an email, date or URI), and a reference or pattern it cannot resolve counts
//! as violated. A violation makes the gateway block the result instead of sending a redacted
//! one that the client would reject.

use serde_json::Value;

use super::content::Seg;

/// How deep `$ref` chains and nested combinators are followed before giving up (violation).
const MAX_DEPTH: usize = 32;

/// Why `new_value` at `path` (relative to `structuredContent`) would break `schema`; None when
/// it satisfies every applicable subschema.
pub fn violation(schema: &Value, path: &[Seg], new_value: &str) -> Option<String> {
    let mut applicable = Vec::new();
    if let Err(why) = collect(schema, schema, path, 0, &mut applicable) {
        return Some(why);
    }
    applicable
        .into_iter()
        .find_map(|sub| string_violation(sub, new_value))
}

fn collect<'a>(
    root: &'a Value,
    schema: &'a Value,
    path: &[Seg],
    depth: usize,
    out: &mut Vec<&'a Value>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("the output schema nests too deeply to check".into());
    }
    let Value::Object(map) = schema else {
        return Ok(()); // `true` / `false` schemas constrain no string content
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let target = resolve(root, reference)
            .ok_or_else(|| format!("the output schema's $ref {reference:?} cannot be resolved"))?;
        collect(root, target, path, depth + 1, out)?;
    }
    if map.contains_key("$dynamicRef") {
        return Err("the output schema uses $dynamicRef".into());
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = map.get(key) {
            for branch in branches {
                collect(root, branch, path, depth + 1, out)?;
            }
        }
    }
    for key in ["then", "else"] {
        if let Some(branch) = map.get(key) {
            collect(root, branch, path, depth + 1, out)?;
        }
    }
    let Some((first, rest)) = path.split_first() else {
        out.push(schema);
        return Ok(());
    };
    match first {
        Seg::Key(key) => {
            let mut matched = false;
            if let Some(sub) = map.get("properties").and_then(|p| p.get(key.as_str())) {
                matched = true;
                collect(root, sub, rest, depth + 1, out)?;
            }
            if let Some(Value::Object(patterns)) = map.get("patternProperties") {
                for (pattern, sub) in patterns {
                    let re = regex::Regex::new(pattern)
                        .map_err(|_| format!("pattern {pattern:?} cannot be checked"))?;
                    if re.is_match(key) {
                        matched = true;
                        collect(root, sub, rest, depth + 1, out)?;
                    }
                }
            }
            if !matched {
                for key in ["additionalProperties", "unevaluatedProperties"] {
                    if let Some(sub) = map.get(key) {
                        collect(root, sub, rest, depth + 1, out)?;
                    }
                }
            }
        }
        Seg::Index(index) => {
            let prefix = map.get("prefixItems").and_then(Value::as_array);
            match prefix.and_then(|p| p.get(*index)) {
                Some(sub) => collect(root, sub, rest, depth + 1, out)?,
                None => {
                    for key in ["items", "additionalItems", "unevaluatedItems"] {
                        match map.get(key) {
                            // Draft 4–2019 tuple form: `items: [..]`.
                            Some(Value::Array(tuple)) => {
                                if let Some(sub) = tuple.get(*index) {
                                    collect(root, sub, rest, depth + 1, out)?;
                                }
                            }
                            Some(sub) => collect(root, sub, rest, depth + 1, out)?,
                            None => {}
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A local reference: `#`, `#/json/pointer`, or `#anchor` (a `$anchor` anywhere in the root).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let fragment = reference.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(root);
    }
    if fragment.starts_with('/') {
        let decoded = percent_decode(fragment)?;
        return root.pointer(&decoded);
    }
    find_anchor(root, fragment)
}

fn find_anchor<'a>(value: &'a Value, anchor: &str) -> Option<&'a Value> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.get("$anchor").and_then(Value::as_str) == Some(anchor) {
                    return Some(v);
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    None
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first string keyword of `schema` that `value` fails.
fn string_violation(schema: &Value, value: &str) -> Option<String> {
    let map = schema.as_object()?;
    if let Some(format) = map.get("format").and_then(Value::as_str) {
        return Some(format!("the schema requires format {format:?}"));
    }
    for key in ["contentEncoding", "contentMediaType"] {
        if map.contains_key(key) {
            return Some(format!("the schema constrains the string with {key}"));
        }
    }
    if let Some(pattern) = map.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(value) => {}
            Ok(_) => return Some(format!("the schema requires pattern {pattern:?}")),
            Err(_) => return Some(format!("pattern {pattern:?} cannot be checked")),
        }
    }
    if let Some(Value::Array(allowed)) = map.get("enum")
        && !allowed.iter().any(|v| v.as_str() == Some(value))
    {
        return Some("the schema allows only listed values (enum)".into());
    }
    if let Some(constant) = map.get("const")
        && constant.as_str() != Some(value)
    {
        return Some("the schema requires a constant value".into());
    }
    let chars = value.chars().count() as u64;
    if let Some(max) = map.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        return Some(format!("the schema allows at most {max} characters"));
    }
    if let Some(min) = map.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        return Some(format!("the schema requires at least {min} characters"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Seg {
        Seg::Key(k.to_owned())
    }

    #[test]
    fn plain_strings_accept_a_mask() {
        let schema = json!({"type": "object", "properties": {"note": {"type": "string"}}});
        assert_eq!(violation(&schema, &[key("note")], "[REDACTED:email]"), None);
        // Unknown members fall to additionalProperties (absent: anything goes).
        assert_eq!(violation(&schema, &[key("other")], "x"), None);
    }

    #[test]
    fn format_pattern_enum_and_length_refuse_a_mask() {
        let schema = json!({"type": "object", "properties": {
            "email": {"type": "string", "format": "email"},
            "code": {"type": "string", "pattern": "^[0-9]+$"},
            "kind": {"enum": ["a", "b"]},
            "short": {"type": "string", "maxLength": 8},
            "loose": {"type": "string", "pattern": "REDACTED"}
        }});
        let mask = "[REDACTED:payment_card]";
        assert!(
            violation(&schema, &[key("email")], mask)
                .unwrap()
                .contains("format")
        );
        assert!(
            violation(&schema, &[key("code")], mask)
                .unwrap()
                .contains("pattern")
        );
        assert!(
            violation(&schema, &[key("kind")], mask)
                .unwrap()
                .contains("enum")
        );
        assert!(
            violation(&schema, &[key("short")], mask)
                .unwrap()
                .contains("at most 8")
        );
        assert_eq!(violation(&schema, &[key("loose")], mask), None);
    }

    #[test]
    fn references_arrays_and_combinators_are_followed() {
        let schema = json!({
            "$defs": {"contact": {"type": "object", "properties": {
                "email": {"$ref": "#/$defs/email"}, "name": {"type": "string"}}},
                "email": {"type": "string", "format": "email"}},
            "type": "object",
            "properties": {
                "contacts": {"type": "array", "items": {"$ref": "#/$defs/contact"}},
                "either": {"anyOf": [{"type": "string"}, {"type": "string", "pattern": "^x$"}]}
            }
        });
        let path = [key("contacts"), Seg::Index(3), key("email")];
        assert!(violation(&schema, &path, "[REDACTED:email]").is_some());
        let path = [key("contacts"), Seg::Index(0), key("name")];
        assert_eq!(violation(&schema, &path, "[REDACTED:email]"), None);
        assert!(violation(&schema, &[key("either")], "[REDACTED:email]").is_some());
    }

    #[test]
    fn unresolvable_references_count_as_violations() {
        let schema = json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}});
        assert!(
            violation(&schema, &[key("a")], "x")
                .unwrap()
                .contains("cannot be resolved")
        );
        let looping = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}});
        assert!(violation(&looping, &[key("x")], "x").is_some());
    }
}
