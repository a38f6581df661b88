//! The OTLP/HTTP JSON wire format of traces (`POST /v1/traces`, an
//! `ExportTraceServiceRequest`), as small serde structs.
//!
//! The protobuf JSON mapping OTLP uses: field names in lowerCamelCase, trace and span ids as
//! lowercase hex (not base64, an OTLP exception), 64-bit integers (`*UnixNano`, `intValue`) as
//! decimal strings, enums (`kind`, `status.code`) as their integer values.

use serde::Serialize;

/// `SPAN_KIND_INTERNAL`: a phase inside the gateway.
pub const KIND_INTERNAL: u8 = 1;
/// `SPAN_KIND_SERVER`: the gateway serving a client's request.
pub const KIND_SERVER: u8 = 2;
/// `SPAN_KIND_CLIENT`: the gateway calling an upstream.
pub const KIND_CLIENT: u8 = 3;

/// `STATUS_CODE_ERROR`.
pub const STATUS_ERROR: u8 = 2;

/// The request body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest<'a> {
    pub resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpans<'a> {
    pub resource: Resource,
    pub scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Debug, Serialize)]
pub struct Resource {
    pub attributes: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub struct ScopeSpans<'a> {
    pub scope: Scope,
    pub spans: &'a [Span],
}

#[derive(Debug, Serialize)]
pub struct Scope {
    pub name: &'static str,
    pub version: &'static str,
}

/// One finished span.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(serialize_with = "as_hex")]
    pub trace_id: TraceId,
    #[serde(serialize_with = "as_hex")]
    pub span_id: SpanId,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_hex_opt")]
    pub parent_span_id: Option<SpanId>,
    pub name: &'static str,
    pub kind: u8,
    #[serde(serialize_with = "as_decimal")]
    pub start_time_unix_nano: u64,
    #[serde(serialize_with = "as_decimal")]
    pub end_time_unix_nano: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub code: u8,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// An attribute.
#[derive(Debug, Clone, Serialize)]
pub struct KeyValue {
    pub key: &'static str,
    pub value: AnyValue,
}

/// An attribute value (the kinds the gateway writes).
#[derive(Debug, Clone, Serialize)]
pub enum AnyValue {
    #[serde(rename = "stringValue")]
    String(String),
    #[serde(rename = "intValue", serialize_with = "as_decimal_i64")]
    Int(i64),
}

impl KeyValue {
    pub fn string(key: &'static str, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key,
            value: AnyValue::String(value.into()),
        }
    }

    pub fn int(key: &'static str, value: i64) -> KeyValue {
        KeyValue {
            key,
            value: AnyValue::Int(value),
        }
    }
}

/// A W3C trace id (16 bytes, not all zero).
pub type TraceId = [u8; 16];
/// A span id (8 bytes, not all zero).
pub type SpanId = [u8; 8];

/// Lowercase hex of an id, without allocating.
fn as_hex<S: serde::Serializer, const N: usize>(id: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    let mut text = [0u8; 32];
    let text = &mut text[..2 * N];
    hex::encode_to_slice(id, text).expect("twice the length");
    s.serialize_str(std::str::from_utf8(text).expect("hex is ASCII"))
}

fn as_hex_opt<S: serde::Serializer>(id: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => as_hex(id, s),
        None => s.serialize_none(),
    }
}

fn as_decimal<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn as_decimal_i64<S: serde::Serializer>(value: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// The JSON body for `spans` from a service called `service_name`.
pub fn encode(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: vec![
                    KeyValue::string("service.name", service_name),
                    KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
                ],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "portcullis.gateway",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans,
            }],
        }],
    };
    // About 300 bytes a span: one allocation for the whole body in the usual case.
    let mut body = Vec::with_capacity(512 + 384 * spans.len());
    serde_json::to_writer(&mut body, &request).expect("spans serialize");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn hex_id<const N: usize>(text: &str) -> [u8; N] {
        let mut id = [0u8; N];
        hex::decode_to_slice(text, &mut id).unwrap();
        id
    }

    #[test]
    fn request_shape_follows_the_otlp_json_mapping() {
        let spans = [Span {
            trace_id: hex_id("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: hex_id("00f067aa0ba902b7"),
            parent_span_id: Some(hex_id("1111111111111111")),
            name: "mcp.request",
            kind: KIND_SERVER,
            start_time_unix_nano: 1_714_564_800_123_456_789,
            end_time_unix_nano: 1_714_564_800_223_456_789,
            attributes: vec![
                KeyValue::string("mcp.method", "tools/call"),
                KeyValue::int("rpc.jsonrpc.error_code", -31010),
            ],
            status: Some(Status {
                code: STATUS_ERROR,
                message: "denied".into(),
            }),
        }];
        let body: Value = serde_json::from_slice(&encode("gw", &spans)).unwrap();
        let resource = &body["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "gw"}})
        );
        let scope = &resource["scopeSpans"][0];
        assert_eq!(scope["scope"]["name"], "portcullis.gateway");
        assert_eq!(
            scope["spans"][0],
            json!({
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "spanId": "00f067aa0ba902b7",
                "parentSpanId": "1111111111111111",
                "name": "mcp.request",
                "kind": 2,
                "startTimeUnixNano": "1714564800123456789",
                "endTimeUnixNano": "1714564800223456789",
                "attributes": [
                    {"key": "mcp.method", "value": {"stringValue": "tools/call"}},
                    {"key": "rpc.jsonrpc.error_code", "value": {"intValue": "-31010"}}
                ],
                "status": {"code": 2, "message": "denied"}
            })
        );
    }

    #[test]
    fn root_spans_have_no_parent_and_no_status() {
        let spans = [Span {
            trace_id: hex_id("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: hex_id("00f067aa0ba902b7"),
            parent_span_id: None,
            name: "policy",
            kind: KIND_INTERNAL,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![],
            status: None,
        }];
        let body: Value = serde_json::from_slice(&encode("gw", &spans)).unwrap();
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none());
        assert!(span.get("status").is_none());
        assert!(span.get("attributes").is_none());
    }
}
