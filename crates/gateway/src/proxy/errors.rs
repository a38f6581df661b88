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
/// Policy or scanners: the matching rule (or a scanner's `approve` action) requires approval,
/// and this request cannot be held for one (a server→client request, a `subscriptions/listen`,
/// `prompts/get`, a result): refused (fail closed).
pub const APPROVAL_REQUIRED: i64 = -31011;
// -31012…-31016: kill switches, task tokens, rate limits (`super::control`). `data.rule` names
// what refused: `kill:{scope}:{name}`, `task-token:{id}`, `rate:{limit id}`.
/// A kill switch stops this call: the agent, the server, the tool, or everything (lockdown).
/// The message names the switch and its reason; `data.switch` holds it. Also ends calls in
/// flight and open streams it matches.
pub const KILLED: i64 = -31012;
/// A rate limit or quota (`limits.rate`) refuses the call for now; `data.retryAfterMs` says
/// when to retry and `data.limit` names the limit. A single request is answered with HTTP 429
/// and `Retry-After`.
pub const RATE_LIMITED: i64 = -31013;
/// The call is outside the servers or tools of the task token that authenticated it; also
/// ends calls and streams in flight on a task token revoked meanwhile (`data.token` names it).
pub const OUT_OF_TASK_SCOPE: i64 = -31014;
/// The task token has used all of its `max_calls`.
pub const TASK_CALLS_EXHAUSTED: i64 = -31015;
/// The control-plane store could not record the call against its task token: refused (fail
/// closed); retrying later can help.
pub const CONTROL_UNAVAILABLE: i64 = -31016;
// -31030…-31039: approval gates (issue 6; `crate::approval`). `data` carries `rule`,
// `approval` (the request id) and, where there is one, `reason`.
/// A reviewer denied the held call; the message and `data.reason` carry the reviewer's reason.
pub const APPROVAL_DENIED: i64 = -31030;
/// Nobody decided before the hold's timeout: the call is denied.
pub const APPROVAL_EXPIRED: i64 = -31031;
/// The hold ended without a decision because the caller went away or the gateway is stopping;
/// the call was not executed.
pub const APPROVAL_ABANDONED: i64 = -31032;
/// The approvals store could not record or follow the request: refused (fail closed); retrying
/// later can help.
pub const APPROVAL_UNAVAILABLE: i64 = -31033;
// -31040…-31049: content scanning and tool pinning (`super::scanning`).
/// A scanner found what the config blocks (`scanners:`) in the arguments, the result or a
/// server's request; nothing was forwarded. The message names each finding's category and
/// location, never the matched text; `data.findings` lists family, category, severity, rule,
/// JSON pointer and action.
pub const SCAN_BLOCKED: i64 = -31040;
/// The tool, prompt or resource is quarantined: poisoned, changed since it was pinned (a rug
/// pull), or new and not approved. The message names it and the change; `data` holds `server`,
/// `name`, `event` (`changed`, `new`, `poisoned`, `not_reviewed`) and the short hashes.
/// `portcullis catalog approve` releases it.
pub const QUARANTINED: i64 = -31041;
/// The content scanners could not run; the call was refused (fail closed).
pub const SCANNER_UNAVAILABLE: i64 = -31042;
// -31020…-31029: the audit trail.
/// The audit trail could not record the call (store down and no spool): the call was not
/// forwarded (fail closed). `data.reason` says why; retrying later can help.
pub const AUDIT_UNAVAILABLE: i64 = -31020;

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
