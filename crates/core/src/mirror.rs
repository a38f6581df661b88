//! Modern-era (2026-07-28) HTTP header mirroring: the request headers that repeat body fields
//! (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-{Name}`), computed from an
//! envelope and checked against one. Pure: headers come in through a lookup closure and go out
//! as `(name, value)` pairs.
//!
//! The gateway decides on the body and never on mirrored headers: on the downstream face it
//! validates the client's headers with [`validate_headers`] (a failure is `400` + `-32020`
//! HeaderMismatch), and on the upstream face it regenerates them from the (possibly rewritten)
//! body with [`required_headers`], using the upstream tool's own `inputSchema`.
//!
//! Rules implemented (spec `basic/transports/streamable-http.mdx`, 2026-07-28, "Request
//! Metadata"):
//! - `Mcp-Name` is `params.name` for `tools/call` and `prompts/get`, `params.uri` for
//!   `resources/read`.
//! - `Mcp-Param-{Name}` for each `tools/call` argument whose schema carries `x-mcp-header:
//!   "{Name}"`; see [`header_params`] for which annotations are valid. Absent or `null`
//!   arguments produce no header, and then no header is expected.
//! - Values that are not plain header-safe ASCII (non-ASCII, control characters, leading or
//!   trailing whitespace, or text that looks like the sentinel) are sent as
//!   `=?base64?{Base64 of UTF-8}?=`. Only `Mcp-Name` and `Mcp-Param-*` use the sentinel.
//! - Validation: names are looked up case-insensitively (the closure's job), values compare
//!   case-sensitively after sentinel decoding, integers compare numerically (`42.0` = `42`), a
//!   missing required header or a header with invalid characters is a mismatch.
//!
//! Notifications: the spec defines no header requirements for notification POSTs, so only
//! headers that are present are checked.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::envelope::{Envelope, Kind};

pub const HEADER_PROTOCOL_VERSION: &str = "MCP-Protocol-Version";
pub const HEADER_METHOD: &str = "Mcp-Method";
pub const HEADER_NAME: &str = "Mcp-Name";
/// Prefix of the headers mirrored from tool arguments: `Mcp-Param-{Name}`.
pub const PARAM_HEADER_PREFIX: &str = "Mcp-Param-";
/// The JSON-RPC error code of a header/body mismatch.
pub const HEADER_MISMATCH_CODE: i64 = -32020;

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";
/// Largest integer a mirrored integer argument may hold (JavaScript's safe range).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Standard base64 with canonical padding, both ways: a sentinel whose padding is wrong or
/// missing is a header mismatch (the conformance suite checks that servers reject it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// What went wrong with one mirrored header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// A required header is absent.
    Missing,
    /// The header and the body disagree.
    Differs,
    /// The header value has invalid characters or a broken Base64 sentinel, or the tool's
    /// `x-mcp-header` annotations are themselves invalid.
    Malformed,
}

/// A `-32020` HeaderMismatch: reported to the client as `400` with this JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Header mismatch: {detail}")]
pub struct HeaderMismatch {
    /// Header name as the spec spells it (e.g. `Mcp-Name`, `Mcp-Param-Region`).
    pub header: String,
    pub kind: MismatchKind,
    /// Human-readable explanation, values shortened.
    pub detail: String,
}

impl HeaderMismatch {
    pub fn code(&self) -> i64 {
        HEADER_MISMATCH_CODE
    }

    /// The JSON-RPC error response for this mismatch.
    pub fn to_envelope(&self, id: Option<Box<RawValue>>) -> Envelope {
        Envelope::error(id, HEADER_MISMATCH_CODE, &self.to_string(), None)
    }

    fn new(header: &str, kind: MismatchKind, detail: String) -> Self {
        HeaderMismatch {
            header: header.to_owned(),
            kind,
            detail,
        }
    }

    fn missing(header: &str) -> Self {
        Self::new(
            header,
            MismatchKind::Missing,
            format!("required header {header} is missing"),
        )
    }

    fn differs(header: &str, got: &str, want: &str) -> Self {
        Self::new(
            header,
            MismatchKind::Differs,
            format!(
                "{header} header value '{}' does not match body value '{}'",
                shorten(got),
                shorten(want)
            ),
        )
    }

    fn malformed(header: &str, why: &str) -> Self {
        Self::new(
            header,
            MismatchKind::Malformed,
            format!("{header} header {why}"),
        )
    }
}

/// Primitive type of a mirrored argument, from its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Boolean,
}

/// One valid `x-mcp-header` annotation of a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderParam {
    /// The annotation's value: the header is `Mcp-Param-{name}`.
    pub name: String,
    /// Property names from the `arguments` object down to the annotated property.
    pub path: Vec<String>,
    pub ty: ParamType,
}

impl HeaderParam {
    /// `Mcp-Param-{name}`.
    pub fn header_name(&self) -> String {
        format!("{PARAM_HEADER_PREFIX}{}", self.name)
    }
}

/// Why a tool's `x-mcp-header` annotations are invalid (the tool must then be dropped from
/// `tools/list` by an HTTP client, the gateway's upstream face included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid x-mcp-header annotation at {path}: {reason}")]
pub struct InvalidAnnotation {
    /// JSON-pointer-like location inside `inputSchema`.
    pub path: String,
    pub reason: String,
}

const ANNOTATION: &str = "x-mcp-header";

/// The valid `x-mcp-header` annotations of a tool's `inputSchema`, sorted by header name
/// (case-insensitively), so the result does not depend on how JSON objects are ordered.
///
/// An annotation is valid when its value is a non-empty HTTP token (RFC 9110 `tchar`s), unique
/// case-insensitively, on a property of type `string`, `integer` or `boolean` (a type array
/// that adds only `"null"` is accepted too) reached from the root through `properties` keys
/// only. An annotation anywhere else (under `items`, `oneOf`, `$defs`, `if`, …) makes the whole
/// tool invalid, as does a non-object `inputSchema`.
pub fn header_params(input_schema: &Value) -> Result<Vec<HeaderParam>, InvalidAnnotation> {
    let mut out = Vec::new();
    let root = input_schema.as_object().ok_or_else(|| InvalidAnnotation {
        path: "/".into(),
        reason: "inputSchema is not an object".into(),
    })?;
    if root.contains_key(ANNOTATION) {
        return Err(InvalidAnnotation {
            path: "/".into(),
            reason: "the root schema cannot be mirrored".into(),
        });
    }
    walk_schema(root, &mut Vec::new(), &mut out)?;
    out.sort_by_cached_key(|p| p.name.to_ascii_lowercase());
    for pair in out.windows(2) {
        if let [b, a] = pair
            && b.name.eq_ignore_ascii_case(&a.name)
        {
            return Err(InvalidAnnotation {
                path: pointer(&a.path),
                reason: format!(
                    "header name {:?} is used more than once (case-insensitively)",
                    a.name
                ),
            });
        }
    }
    Ok(out)
}

/// Visits one object schema reached through `properties` keys only.
fn walk_schema(
    schema: &serde_json::Map<String, Value>,
    path: &mut Vec<String>,
    out: &mut Vec<HeaderParam>,
) -> Result<(), InvalidAnnotation> {
    for (keyword, value) in schema {
        if keyword == "properties" {
            let Some(props) = value.as_object() else {
                continue;
            };
            for (name, sub) in props {
                path.push(name.clone());
                match sub.as_object() {
                    Some(sub) => {
                        if let Some(annotation) = sub.get(ANNOTATION) {
                            out.push(annotation_at(sub, annotation, path)?);
                        }
                        walk_schema(sub, path, out)?;
                    }
                    None => forbid_annotation(sub, path)?,
                }
                path.pop();
            }
        } else if keyword != ANNOTATION {
            path.push(keyword.clone());
            forbid_annotation(value, path)?;
            path.pop();
        }
    }
    Ok(())
}

/// Any annotation below a non-`properties` keyword makes the tool invalid.
fn forbid_annotation(value: &Value, path: &[String]) -> Result<(), InvalidAnnotation> {
    // Iterative, so a deeply nested schema cannot exhaust the stack.
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.contains_key(ANNOTATION) {
                    return Err(InvalidAnnotation {
                        path: pointer(path),
                        reason: "x-mcp-header is only allowed on properties reached through `properties` keys".into(),
                    });
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

fn annotation_at(
    schema: &serde_json::Map<String, Value>,
    annotation: &Value,
    path: &[String],
) -> Result<HeaderParam, InvalidAnnotation> {
    let bad = |reason: &str| InvalidAnnotation {
        path: pointer(path),
        reason: reason.to_owned(),
    };
    let name = annotation
        .as_str()
        .ok_or_else(|| bad("the value must be a string"))?;
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad("the value must be a non-empty HTTP token"));
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => primitive(t),
        Some(Value::Array(types)) => {
            let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
            match (non_null.next(), non_null.next()) {
                (Some(Value::String(t)), None) => primitive(t),
                _ => None,
            }
        }
        _ => None,
    };
    let ty =
        ty.ok_or_else(|| bad("only string, integer and boolean properties can be mirrored"))?;
    Ok(HeaderParam {
        name: name.to_owned(),
        path: path.to_vec(),
        ty,
    })
}

fn primitive(t: &str) -> Option<ParamType> {
    match t {
        "string" => Some(ParamType::String),
        "integer" => Some(ParamType::Integer),
        "boolean" => Some(ParamType::Boolean),
        _ => None,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Encodes a value for `Mcp-Name` / `Mcp-Param-*`: as-is when it is plain header-safe ASCII,
/// otherwise as the Base64 sentinel.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !looks_like_sentinel(value);
    if plain {
        value.to_owned()
    } else {
        format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            general_purpose::STANDARD.encode(value)
        )
    }
}

/// Decodes a header value: the Base64 sentinel is unwrapped, plain values are checked for
/// characters a header may not carry. None when the value is malformed.
pub fn decode_value(header: &str) -> Option<Cow<'_, str>> {
    if looks_like_sentinel(header) {
        let inner = &header[SENTINEL_PREFIX.len()..header.len() - SENTINEL_SUFFIX.len()];
        let bytes = BASE64.decode(inner).ok()?;
        return String::from_utf8(bytes).ok().map(Cow::Owned);
    }
    header
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
        .then_some(Cow::Borrowed(header))
}

fn looks_like_sentinel(value: &str) -> bool {
    value.len() >= SENTINEL_PREFIX.len() + SENTINEL_SUFFIX.len()
        && value.starts_with(SENTINEL_PREFIX)
        && value.ends_with(SENTINEL_SUFFIX)
}

/// The borrowed bits of `params` that headers mirror.
#[derive(Deserialize, Default)]
struct ParamsView<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// `_meta` of a modern request; the key is [`crate::era::META_PROTOCOL_VERSION`].
#[derive(Deserialize)]
struct MetaView<'a> {
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<&'a RawValue>,
}

fn params_view(envelope: &Envelope) -> ParamsView<'_> {
    envelope
        .params()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default()
}

fn raw_str(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(raw?.get()).ok()
}

/// The body field `Mcp-Name` mirrors, for the methods that have one.
fn name_source(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// The argument value at `path`, if present and not null.
fn argument_at<'v>(arguments: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = arguments;
    for step in path {
        v = v.as_object()?.get(step)?;
    }
    (!v.is_null()).then_some(v)
}

/// Header text of a primitive argument value; None for objects and arrays.
fn param_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match integer_of(n) {
            Some(i) => i.to_string(),
            None => n.to_string(),
        }),
        _ => None,
    }
}

/// The integer a JSON number denotes, if it is one (`42.0` is 42).
fn integer_of(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64).then_some(f as i128)
}

/// Parses an integer header value numerically (`42`, `-7`, `42.0`, `4.2e1`).
fn parse_integer_header(text: &str) -> Option<i128> {
    if let Ok(i) = text.parse::<i128>() {
        return Some(i);
    }
    // Only JSON-number syntax, not Rust extras such as `inf` or `NaN`.
    let n: serde_json::Number = serde_json::from_str(text).ok()?;
    integer_of(&n)
}

/// Headers a modern client must send with this request, in this order: `MCP-Protocol-Version`,
/// `Mcp-Method`, `Mcp-Name` (when the method has one and the body carries it), then one
/// `Mcp-Param-{Name}` per present, non-null annotated argument (`tools/call` only).
///
/// `tool_input_schema` is the *target* tool's `inputSchema` (for the upstream face: the
/// upstream's own). When its annotations are invalid no `Mcp-Param-*` header is produced;
/// such a tool should have been dropped from `tools/list` (see [`header_params`]).
/// `Mcp-Method` is emitted as-is; header construction at the edge must use checked
/// constructors.
pub fn required_headers(
    envelope: &Envelope,
    protocol_version: &str,
    tool_input_schema: Option<&Value>,
) -> Vec<(String, String)> {
    let mut out = vec![(
        HEADER_PROTOCOL_VERSION.to_owned(),
        protocol_version.to_owned(),
    )];
    let Some(method) = envelope.method() else {
        return out;
    };
    out.push((HEADER_METHOD.to_owned(), method.to_owned()));
    let Some(source) = name_source(method) else {
        return out;
    };
    let view = params_view(envelope);
    let name = if source == "name" {
        view.name
    } else {
        view.uri
    };
    if let Some(name) = raw_str(name) {
        out.push((HEADER_NAME.to_owned(), encode_value(&name)));
    }
    if method != "tools/call" {
        return out;
    }
    let (Some(schema), Some(arguments)) = (tool_input_schema, view.arguments) else {
        return out;
    };
    let Ok(params) = header_params(schema) else {
        return out;
    };
    if params.is_empty() {
        return out;
    }
    let Ok(arguments) = serde_json::from_str::<Value>(arguments.get()) else {
        return out;
    };
    for param in &params {
        if let Some(text) = argument_at(&arguments, &param.path).and_then(param_text) {
            out.push((param.header_name(), encode_value(&text)));
        }
    }
    out
}

/// Checks a modern request's mirrored headers against its body (the `-32020` rules).
///
/// `headers` looks a header up by name, case-insensitively, and returns its value (the edge
/// should refuse repeated mirrored headers rather than pick one). `tool_input_schema` is the
/// `inputSchema` of the tool being called, as advertised to this client; without it no
/// `Mcp-Param-*` header is checked. `Mcp-Param-*` headers the schema does not declare are not
/// checked here: the gateway regenerates upstream headers from the body, so they are never
/// trusted or forwarded as-is.
///
/// Checks, in order: `MCP-Protocol-Version` present (and equal to the body's
/// `_meta["io.modelcontextprotocol/protocolVersion"]` when the body has one); `Mcp-Method`
/// equals `method`; `Mcp-Name` equals `params.name` / `params.uri` after sentinel decoding;
/// every annotated argument that is present and non-null has its header, equal after decoding
/// (integers numerically), and an annotated argument that is absent or null has no header.
pub fn validate_headers(
    headers: impl Fn(&str) -> Option<String>,
    envelope: &Envelope,
    tool_input_schema: Option<&Value>,
) -> Result<(), HeaderMismatch> {
    let required = envelope.kind() == Kind::Request;
    let view = params_view(envelope);

    // MCP-Protocol-Version.
    match headers(HEADER_PROTOCOL_VERSION) {
        None if required => return Err(HeaderMismatch::missing(HEADER_PROTOCOL_VERSION)),
        None => {}
        Some(got) => {
            let body = view
                .meta
                .and_then(|m| serde_json::from_str::<MetaView>(m.get()).ok());
            if let Some(want) = body.and_then(|m| raw_str(m.protocol_version))
                && got != want
            {
                return Err(HeaderMismatch::differs(
                    HEADER_PROTOCOL_VERSION,
                    &got,
                    &want,
                ));
            }
        }
    }

    // Mcp-Method (never Base64-encoded).
    let Some(method) = envelope.method() else {
        return Ok(());
    };
    match headers(HEADER_METHOD) {
        None if required => return Err(HeaderMismatch::missing(HEADER_METHOD)),
        None => {}
        Some(got) if got != method => {
            return Err(HeaderMismatch::differs(HEADER_METHOD, &got, method));
        }
        Some(_) => {}
    }

    // Mcp-Name.
    let Some(source) = name_source(method) else {
        return Ok(());
    };
    let body_name = raw_str(if source == "name" {
        view.name
    } else {
        view.uri
    });
    match (headers(HEADER_NAME), body_name) {
        (None, None) => {}
        (None, Some(_)) => return Err(HeaderMismatch::missing(HEADER_NAME)),
        (Some(_), None) => {
            return Err(HeaderMismatch::new(
                HEADER_NAME,
                MismatchKind::Differs,
                format!("{HEADER_NAME} header is present but the body has no params.{source}"),
            ));
        }
        (Some(got), Some(want)) => {
            let decoded = decode_value(&got).ok_or_else(|| {
                HeaderMismatch::malformed(HEADER_NAME, "has invalid characters or Base64")
            })?;
            if decoded != want {
                return Err(HeaderMismatch::differs(HEADER_NAME, &decoded, &want));
            }
        }
    }

    // Mcp-Param-{Name}.
    if method != "tools/call" {
        return Ok(());
    }
    let Some(schema) = tool_input_schema else {
        return Ok(());
    };
    let params = header_params(schema).map_err(|e| {
        HeaderMismatch::new(
            PARAM_HEADER_PREFIX,
            MismatchKind::Malformed,
            format!("the tool's inputSchema is unusable: {e}"),
        )
    })?;
    if params.is_empty() {
        return Ok(());
    }
    let arguments = match view.arguments {
        Some(raw) => serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null),
        None => Value::Null,
    };
    for param in &params {
        let header = param.header_name();
        let body = argument_at(&arguments, &param.path);
        match (headers(&header), body) {
            (None, None) => {}
            (None, Some(_)) => return Err(HeaderMismatch::missing(&header)),
            (Some(_), None) => {
                return Err(HeaderMismatch::new(
                    &header,
                    MismatchKind::Differs,
                    format!("{header} header is present but the argument is absent or null"),
                ));
            }
            (Some(got), Some(want)) => {
                let decoded = decode_value(&got).ok_or_else(|| {
                    HeaderMismatch::malformed(&header, "has invalid characters or Base64")
                })?;
                let equal = match want {
                    Value::Number(n) => match (integer_of(n), parse_integer_header(&decoded)) {
                        (Some(a), Some(b)) => a == b,
                        _ => param_text(want).is_some_and(|w| w == decoded),
                    },
                    other => param_text(other).is_some_and(|w| w == decoded),
                };
                if !equal {
                    let want_text =
                        param_text(want).unwrap_or_else(|| "(not a primitive value)".into());
                    return Err(HeaderMismatch::differs(&header, &decoded, &want_text));
                }
            }
        }
    }
    Ok(())
}

/// Shortens a value for an error message (by characters, never splitting one).
fn shorten(s: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Limits, Parsed, parse};
    use serde_json::json;

    fn env(text: &str) -> Envelope {
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Parsed::Single(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    fn call(arguments: Value) -> Envelope {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": "execute_sql",
                "arguments": arguments,
                "_meta": { "io.modelcontextprotocol/protocolVersion": "2026-07-28" }
            }
        });
        env(&body.to_string())
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "region": { "type": "string", "x-mcp-header": "Region" },
                "limit": { "type": "integer", "x-mcp-header": "Limit" },
                "confirm": { "type": ["boolean", "null"], "x-mcp-header": "Confirm" },
                "options": {
                    "type": "object",
                    "properties": { "tenant": { "type": "string", "x-mcp-header": "Tenant" } }
                },
                "query": { "type": "string" }
            }
        })
    }

    /// Case-insensitive lookup over a fixed header list.
    fn lookup(headers: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    fn with(
        mut headers: Vec<(String, String)>,
        name: &str,
        value: Option<&str>,
    ) -> Vec<(String, String)> {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            headers.push((name.to_owned(), v.to_owned()));
        }
        headers
    }

    #[test]
    fn spec_example_headers() {
        let e = call(json!({ "region": "us-west1", "query": "SELECT * FROM users" }));
        let h = required_headers(&e, "2026-07-28", Some(&schema()));
        let expected: Vec<(String, String)> = [
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "execute_sql"),
            ("Mcp-Param-Region", "us-west1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(h, expected);
        assert_eq!(validate_headers(lookup(&h), &e, Some(&schema())), Ok(()));
    }

    #[test]
    fn all_primitive_types_and_nested_properties() {
        let e = call(
            json!({ "region": "eu", "limit": 42, "confirm": true, "options": { "tenant": "acme" } }),
        );
        let h = required_headers(&e, "2026-07-28", Some(&schema()));
        let params: Vec<_> = h
            .iter()
            .skip(3)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            params,
            [
                ("Mcp-Param-Confirm", "true"),
                ("Mcp-Param-Limit", "42"),
                ("Mcp-Param-Region", "eu"),
                ("Mcp-Param-Tenant", "acme")
            ]
        );
        assert_eq!(validate_headers(lookup(&h), &e, Some(&schema())), Ok(()));
    }

    #[test]
    fn spec_encoding_examples() {
        assert_eq!(encode_value("us-west1"), "us-west1");
        assert_eq!(
            encode_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(encode_value(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(encode_value("line1\nline2"), "=?base64?bGluZTEKbGluZTI=?=");
        assert_eq!(
            encode_value("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
        assert_eq!(encode_value("tab\there"), "=?base64?dGFiCWhlcmU=?=");
        for v in [
            "us-west1",
            "Hello, 世界",
            " padded ",
            "line1\nline2",
            "=?base64?literal?=",
            "",
            "a\u{0}b",
        ] {
            assert_eq!(decode_value(&encode_value(v)).as_deref(), Some(v));
        }
        // Padding is required: an unpadded sentinel is a mismatch, as the conformance suite
        // expects servers to reject it.
        assert_eq!(decode_value("=?base64?SGVsbG8sIOS4lueVjA?="), None);
        assert_eq!(
            decode_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_value("=?base64?!!!?="), None);
        assert_eq!(decode_value("=?base64?/w==?="), None, "not UTF-8");
        assert_eq!(decode_value("a\nb"), None);
        assert_eq!(
            decode_value("=?BASE64?YQ==?=").as_deref(),
            Some("=?BASE64?YQ==?="),
            "markers are case-sensitive"
        );
    }

    #[test]
    fn encoded_name_and_params_validate() {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": "wetter_für_ort", "arguments": { "region": "Zürich " } }
        });
        let e = env(&body.to_string());
        let h = required_headers(&e, "2026-07-28", Some(&schema()));
        assert!(lookup(&h)("mcp-name").unwrap().starts_with("=?base64?"));
        assert!(
            lookup(&h)("mcp-param-region")
                .unwrap()
                .starts_with("=?base64?")
        );
        assert_eq!(validate_headers(lookup(&h), &e, Some(&schema())), Ok(()));
    }

    #[test]
    fn header_names_are_case_insensitive_values_are_not() {
        let e = call(json!({ "region": "us-west1" }));
        let h: Vec<(String, String)> = required_headers(&e, "2026-07-28", Some(&schema()))
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        assert_eq!(validate_headers(lookup(&h), &e, Some(&schema())), Ok(()));
        let h = with(h, "Mcp-Param-Region", Some("US-WEST1"));
        let err = validate_headers(lookup(&h), &e, Some(&schema())).unwrap_err();
        assert_eq!(
            (err.header.as_str(), err.kind),
            ("Mcp-Param-Region", MismatchKind::Differs)
        );
        assert_eq!(err.code(), -32020);
    }

    #[test]
    fn mcp_name_routing_bypass() {
        // A load balancer routes on the header; the body calls another tool.
        let e = call(json!({}));
        let h = with(
            required_headers(&e, "2026-07-28", None),
            "Mcp-Name",
            Some("harmless_tool"),
        );
        let err = validate_headers(lookup(&h), &e, None).unwrap_err();
        assert_eq!(err.kind, MismatchKind::Differs);
        assert_eq!(
            err.to_string(),
            "Header mismatch: Mcp-Name header value 'harmless_tool' does not match body value 'execute_sql'"
        );
        // The same name hidden behind the sentinel is decoded first, so it is still caught.
        let h = with(
            h,
            "Mcp-Name",
            Some(&format!(
                "=?base64?{}?=",
                general_purpose::STANDARD.encode("harmless_tool")
            )),
        );
        assert_eq!(
            validate_headers(lookup(&h), &e, None).unwrap_err().kind,
            MismatchKind::Differs
        );
        // Encoding a plain name is allowed (decoded before comparing).
        let h = with(
            h,
            "Mcp-Name",
            Some(&format!(
                "=?base64?{}?=",
                general_purpose::STANDARD.encode("execute_sql")
            )),
        );
        assert_eq!(validate_headers(lookup(&h), &e, None), Ok(()));
    }

    #[test]
    fn missing_headers_are_mismatches() {
        let e = call(json!({ "region": "us-west1", "limit": 3 }));
        let full = required_headers(&e, "2026-07-28", Some(&schema()));
        for name in [
            "MCP-Protocol-Version",
            "Mcp-Method",
            "Mcp-Name",
            "Mcp-Param-Region",
            "Mcp-Param-Limit",
        ] {
            let h = with(full.clone(), name, None);
            let err = validate_headers(lookup(&h), &e, Some(&schema())).unwrap_err();
            assert_eq!(
                (err.header.as_str(), err.kind),
                (name, MismatchKind::Missing)
            );
        }
    }

    #[test]
    fn absent_or_null_arguments_expect_no_header() {
        let e = call(json!({ "region": null }));
        let h = required_headers(&e, "2026-07-28", Some(&schema()));
        assert!(lookup(&h)("Mcp-Param-Region").is_none());
        assert_eq!(validate_headers(lookup(&h), &e, Some(&schema())), Ok(()));
        let h = with(h, "Mcp-Param-Region", Some("us-west1"));
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .kind,
            MismatchKind::Differs
        );
    }

    #[test]
    fn integers_compare_numerically() {
        let e = call(json!({ "limit": 42 }));
        for ok in ["42", "42.0", "4.2e1", "042"] {
            let h = with(
                required_headers(&e, "2026-07-28", Some(&schema())),
                "Mcp-Param-Limit",
                Some(ok),
            );
            assert_eq!(
                validate_headers(lookup(&h), &e, Some(&schema())),
                Ok(()),
                "{ok}"
            );
        }
        for bad in ["43", "42.5", "forty-two", "", "inf", "NaN"] {
            let h = with(
                required_headers(&e, "2026-07-28", Some(&schema())),
                "Mcp-Param-Limit",
                Some(bad),
            );
            assert!(
                validate_headers(lookup(&h), &e, Some(&schema())).is_err(),
                "{bad}"
            );
        }
        let e = call(json!({ "limit": 42.0 }));
        assert_eq!(
            lookup(&required_headers(&e, "2026-07-28", Some(&schema())))("Mcp-Param-Limit")
                .as_deref(),
            Some("42")
        );
    }

    #[test]
    fn protocol_version_must_match_meta() {
        let e = call(json!({}));
        let h = with(
            required_headers(&e, "2026-07-28", None),
            "MCP-Protocol-Version",
            Some("2025-11-25"),
        );
        let err = validate_headers(lookup(&h), &e, None).unwrap_err();
        assert_eq!(
            (err.header.as_str(), err.kind),
            ("MCP-Protocol-Version", MismatchKind::Differs)
        );
    }

    #[test]
    fn method_mismatch_and_malformed_values() {
        let e = call(json!({ "region": "x" }));
        let h = with(
            required_headers(&e, "2026-07-28", Some(&schema())),
            "Mcp-Method",
            Some("tools/list"),
        );
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .header,
            "Mcp-Method"
        );
        let h = with(
            required_headers(&e, "2026-07-28", Some(&schema())),
            "Mcp-Param-Region",
            Some("=?base64?***?="),
        );
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .kind,
            MismatchKind::Malformed
        );
        let h = with(
            required_headers(&e, "2026-07-28", Some(&schema())),
            "Mcp-Param-Region",
            Some("x\u{7f}"),
        );
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .kind,
            MismatchKind::Malformed
        );
    }

    #[test]
    fn non_primitive_argument_cannot_match() {
        let e = call(json!({ "region": ["us", "eu"] }));
        let h = required_headers(&e, "2026-07-28", Some(&schema()));
        assert!(lookup(&h)("Mcp-Param-Region").is_none());
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .kind,
            MismatchKind::Missing
        );
        let h = with(h, "Mcp-Param-Region", Some("[\"us\",\"eu\"]"));
        assert_eq!(
            validate_headers(lookup(&h), &e, Some(&schema()))
                .unwrap_err()
                .kind,
            MismatchKind::Differs
        );
    }

    #[test]
    fn resources_read_and_prompts_get_names() {
        let e = env(
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///projects/myapp/config.json"}}"#,
        );
        let h = required_headers(&e, "2026-07-28", None);
        assert_eq!(
            lookup(&h)("Mcp-Name").as_deref(),
            Some("file:///projects/myapp/config.json")
        );
        assert_eq!(validate_headers(lookup(&h), &e, None), Ok(()));
        let e = env(r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"greet"}}"#);
        assert_eq!(
            lookup(&required_headers(&e, "2026-07-28", None))("Mcp-Name").as_deref(),
            Some("greet")
        );
        let e =
            env(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"name":"ignored"}}"#);
        let h = required_headers(&e, "2026-07-28", None);
        assert_eq!(h.len(), 2);
        assert_eq!(validate_headers(lookup(&h), &e, None), Ok(()));
    }

    #[test]
    fn notifications_check_only_present_headers() {
        let e =
            env(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#);
        assert_eq!(validate_headers(|_| None, &e, None), Ok(()));
        let h = vec![("Mcp-Method".to_owned(), "other".to_owned())];
        assert!(validate_headers(lookup(&h), &e, None).is_err());
    }

    #[test]
    fn invalid_annotations() {
        let invalid = [
            json!({"type":"object","properties":{"a":{"type":"number","x-mcp-header":"A"}}}),
            json!({"type":"object","properties":{"a":{"type":"object","x-mcp-header":"A"}}}),
            json!({"type":"object","properties":{"a":{"x-mcp-header":"A"}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":""}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"Bad Name"}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A\r\nX-Evil"}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":7}}}),
            json!({"type":"object","properties":{"a":{"type":"string","x-mcp-header":"A"},"b":{"type":"string","x-mcp-header":"a"}}}),
            json!({"type":"object","properties":{"a":{"type":"array","items":{"type":"string","x-mcp-header":"A"}}}}),
            json!({"type":"object","oneOf":[{"properties":{"a":{"type":"string","x-mcp-header":"A"}}}]}),
            json!({"type":"object","$defs":{"x":{"type":"string","x-mcp-header":"A"}}}),
            json!({"type":"object","properties":{"a":{"$ref":"#/$defs/x","if":{"properties":{"b":{"type":"string","x-mcp-header":"B"}}}}}}),
            json!({"type":"object","x-mcp-header":"Root"}),
            json!("not a schema"),
        ];
        for schema in invalid {
            assert!(header_params(&schema).is_err(), "{schema}");
            // Validation fails closed; generation just leaves the params out.
            let e = call(json!({ "a": "x" }));
            let h = required_headers(&e, "2026-07-28", Some(&schema));
            assert_eq!(h.len(), 3);
            assert_eq!(
                validate_headers(lookup(&h), &e, Some(&schema))
                    .unwrap_err()
                    .kind,
                MismatchKind::Malformed
            );
        }
        let ok = header_params(&schema()).unwrap();
        assert_eq!(ok.len(), 4);
        assert_eq!(
            ok[3],
            HeaderParam {
                name: "Tenant".into(),
                path: vec!["options".into(), "tenant".into()],
                ty: ParamType::String
            }
        );
        // A property literally named "properties" is still a property.
        let odd = json!({"type":"object","properties":{"properties":{"type":"string","x-mcp-header":"P"}}});
        assert_eq!(
            header_params(&odd).unwrap()[0].path,
            vec!["properties".to_string()]
        );
    }

    #[test]
    fn meta_key_matches_era_constant() {
        assert_eq!(
            crate::era::META_PROTOCOL_VERSION,
            "io.modelcontextprotocol/protocolVersion"
        );
    }

    #[test]
    fn mismatch_becomes_a_json_rpc_error() {
        let err = HeaderMismatch::missing("Mcp-Name");
        let bytes = err
            .to_envelope(Some(crate::envelope::to_raw(&1)))
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], -32020);
        assert_eq!(
            v["error"]["message"],
            "Header mismatch: required header Mcp-Name is missing"
        );
    }
}
