//! The gateway's own JSON-RPC error codes and the one error type the proxy returns.
//!
//! Codes from the JSON-RPC standard are used for generic failures; gateway-specific failures use
//! codes outside the ranges reserved by JSON-RPC and MCP (`-32768..-32000`), all listed in this
//! file. Every error says who is at fault (client, upstream, gateway) and whether a retry can
//! help; the edge turns that into an HTTP status.

use http::StatusCode;
use portcullis_core::envelope::{Envelope, EnvelopeError};
use serde_json::Value;
use serde_json::value::RawValue;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Modern era: mirrored header does not match the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// Modern era: the request needs a client capability the caller did not declare.
pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
/// Modern era: unsupported protocol version.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// The upstream server could not be reached, crashed, or broke the protocol.
pub const UPSTREAM_UNAVAILABLE: i64 = -31000;
/// The upstream server has too many calls in flight.
pub const UPSTREAM_OVERLOADED: i64 = -31001;
/// The name or URI names no catalog server reachable on this route.
pub const UNKNOWN_SERVER: i64 = -31002;
/// The upstream did not answer within the server's `request_timeout`.
pub const UPSTREAM_TIMEOUT: i64 = -31003;
/// The upstream answered something that is not valid MCP.
pub const UPSTREAM_PROTOCOL: i64 = -31004;
// -31010…-31019: policy decisions. -31090…-31099: errors `portcullis connect` makes up itself.
/// Policy: a rule denied the call, or no rule allowed it (default deny). The message names the
/// rule (or says that no rule allows the call); `data.rule` holds its id (null for the default).
pub const POLICY_DENIED: i64 = -31010;
/// Policy: the matching rule requires approval, which this build cannot grant (fail closed).
pub const APPROVAL_REQUIRED: i64 = -31011;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

/// A failure the proxy answers with a JSON-RPC error.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    pub fault: Fault,
    /// HTTP status for the response carrying this error (200 where the protocol wants a
    /// JSON-RPC error in a normal response).
    pub status: StatusCode,
}

impl ProxyError {
    pub fn client(code: i64, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            data: None,
            fault: Fault::Client,
            status: StatusCode::OK,
        }
    }

    pub fn upstream(code: i64, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            data: None,
            fault: Fault::Upstream,
            status: StatusCode::OK,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The error response for a request with this id (None → `"id": null`).
    pub fn to_envelope(&self, id: Option<&RawValue>) -> Envelope {
        Envelope::error(
            id.map(|raw| raw.to_owned()),
            self.code,
            &self.message,
            self.data.clone(),
        )
    }
}

impl From<EnvelopeError> for ProxyError {
    fn from(error: EnvelopeError) -> Self {
        ProxyError::client(error.code(), error.to_string()).with_status(StatusCode::BAD_REQUEST)
    }
}

impl From<crate::upstream::UpstreamError> for ProxyError {
    fn from(error: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError;
        let code = match error {
            UpstreamError::Overloaded { .. } => UPSTREAM_OVERLOADED,
            _ => UPSTREAM_UNAVAILABLE,
        };
        ProxyError::upstream(code, error.to_string())
    }
}
