//! The proxy: what happens to one JSON-RPC message after the edge has authenticated it and
//! established its session or era. Phases, in order (see ARCHITECTURE.md):
//!
//! 1. classify: request, notification, or a client's answer to a server→client request;
//! 2. route: `{server}__{name}` / wrapped URI on the aggregate, the server itself on
//!    `/mcp/{server}` ([`target`]);
//! 3. policy: the config's rules decide on the aggregated name `{server}__{tool}`; denials are
//!    errors that name the rule ([`policy`]); lists show only what the caller may use;
//! 4. forward: hand the authorized envelope to the server's connector ([`forward`]);
//! 5. adapt: reshape results, notifications and server→client requests for the client's era and
//!    route ([`adapt`]); lists of the aggregate are merged and paginated here ([`lists`]).
//!
//! The proxy never parses a message a second time with another parser: it edits raw members
//! (see `portcullis_core::rawobj`), so the bytes forwarded are the bytes that were authorized.

pub mod adapt;
pub mod audit;
pub mod control;
pub mod errors;
pub mod forward;
pub mod held;
pub mod lifecycle;
pub mod listen;
pub mod lists;
pub mod policy;
pub mod scanning;
pub mod target;

use std::sync::Arc;

use http::StatusCode;
use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::era::Era;
use portcullis_core::rawobj::RawObject;
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::route::Route;
use crate::session::Session;
use crate::state::{Gateway, Runtime};
use crate::upstream::Caller;
use errors::{METHOD_NOT_FOUND, ProxyError};

/// How the client on the other end talks: its era, version, and whether it takes SSE.
#[derive(Debug, Clone)]
pub struct Face {
    pub era: Era,
    pub version: Arc<str>,
    /// The client listed `text/event-stream` in `Accept` (so we may stream a POST's answer).
    pub accepts_sse: bool,
}

/// Everything the proxy knows about the message being handled.
#[derive(Clone)]
pub struct Call {
    pub gateway: Arc<Gateway>,
    pub runtime: Arc<Runtime>,
    pub route: Route,
    pub principal: Principal,
    /// The legacy session, when the client has one.
    pub session: Option<Arc<Session>>,
    /// How upstream connectors see this client.
    pub caller: Caller,
    pub face: Face,
}

/// What to send back to the client.
#[derive(Debug)]
pub enum Reply {
    /// A notification or response was accepted (HTTP 202, no body).
    Accepted,
    /// One message, as a plain JSON body.
    Message {
        message: Envelope,
        status: StatusCode,
    },
    /// Several messages (notifications, server→client requests, then the final response), as
    /// an SSE stream. The channel closes after the final response.
    Stream(mpsc::Receiver<Envelope>),
    /// Like `Stream`, for a legacy session that can resume it: the messages go to a log in the
    /// session, replayable with `Last-Event-ID` (see [`crate::stream_log`]).
    Resumable {
        session: Arc<Session>,
        stream: u64,
        log: Arc<crate::stream_log::StreamLog>,
    },
}

impl Reply {
    pub fn ok(message: Envelope) -> Reply {
        Reply::Message {
            message,
            status: StatusCode::OK,
        }
    }

    fn error(error: &ProxyError, id: Option<&serde_json::value::RawValue>) -> Reply {
        Reply::Message {
            message: error.to_envelope(id),
            status: error.status,
        }
    }
}

/// Handles one message (not `initialize`, which the edge sends to [`lifecycle::initialize`]).
pub async fn handle(call: &Call, message: Envelope) -> Reply {
    match message.kind() {
        Kind::Notification => {
            handle_notification(call, message).await;
            Reply::Accepted
        }
        Kind::Result | Kind::Error => {
            handle_client_answer(call, message);
            Reply::Accepted
        }
        Kind::Request => {
            let id = message.id().map(|raw| raw.to_owned());
            match handle_request(call, message).await {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(code = error.code, message = %error.message, "request refused");
                    Reply::error(&error, id.as_deref())
                }
            }
        }
    }
}

async fn handle_request(call: &Call, message: Envelope) -> Result<Reply, ProxyError> {
    let method = message.method().unwrap_or_default().to_owned();
    if call.face.era == Era::Modern
        && matches!(method.as_str(), "initialize" | "ping" | "logging/setLevel")
    {
        return Err(ProxyError::client(
            METHOD_NOT_FOUND,
            format!(
                "{method} does not exist in protocol version {}",
                call.face.version
            ),
        ));
    }
    match method.as_str() {
        "ping" => Ok(Reply::ok(Envelope::result(
            message
                .id()
                .map(|r| r.to_owned())
                .unwrap_or_else(|| to_raw(&0)),
            to_raw(&serde_json::json!({})),
        ))),
        "initialize" => Err(ProxyError::client(
            errors::INVALID_REQUEST,
            "initialize must be the first message of a session and is sent without Mcp-Session-Id",
        )),
        "server/discover" => lifecycle::discover(call, &message).await,
        "logging/setLevel" => lifecycle::set_log_level(call, message).await,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            let mut message = message;
            let mut audit = audit::CallRecord::begin(call, None, &method, &mut message);
            audit.decision().await?;
            audit.phase("upstream");
            audit.outcome(lists::list(call, message).await).await
        }
        "subscriptions/listen" => listen::listen(call, message).await,
        _ => {
            let (entry, mut upstream_message) = target::resolve(call, message)?;
            // Audit: trace context and the record of this call (denials via `audit.check`).
            let mut audit = audit::CallRecord::begin(
                call,
                Some(&entry.config.name),
                &method,
                &mut upstream_message,
            );
            // Kill switches, task-token scope and rate limits, before the policy decision.
            audit.phase("admit");
            audit
                .check(control::admit(call, &entry.config.name, &method, &upstream_message).await)
                .await?;
            audit.phase("policy");
            let mut decided = audit
                .check(policy::decide_request(
                    call,
                    &entry.config.name,
                    &method,
                    &upstream_message,
                ))
                .await?;
            audit.set_rule(decided.rule());
            // Scan: quarantined tools, then the arguments (block, redact, approve, flag).
            audit.phase("scan.request");
            let (screened, findings) =
                scanning::screen_request(call, &entry, &method, upstream_message).await;
            audit.add_findings(findings.to_audit());
            let upstream_message = audit.check(screened).await?;
            if findings.findings.iter().any(|f| f.action == "redact") {
                // The decision that counts is the one on the (redacted) bytes forwarded.
                decided = audit
                    .check(policy::decide_request(
                        call,
                        &entry.config.name,
                        &method,
                        &upstream_message,
                    ))
                    .await?;
            }
            // A scanner whose action is `approve` holds the call like an `approve` rule.
            if let policy::Decided::Allowed(_) = decided
                && let Some(need) = scanning::approval_need(
                    &entry.config.name,
                    &method,
                    &upstream_message,
                    &findings,
                )
            {
                decided = policy::Decided::Approve(need);
            }
            // Approval: a call under an `approve` rule is held until reviewers decide.
            if let policy::Decided::Approve(need) = decided {
                audit.phase("approval.hold");
                return crate::approval::hold(call, entry, upstream_message, method, audit, need)
                    .await;
            }
            proceed(call, &entry, upstream_message, &method, audit).await
        }
    }
}

/// The end of every governed call that may go on: the durable decision record, the upstream
/// call, the outcome record. (Also where an approved held call resumes.)
pub(crate) async fn proceed(
    call: &Call,
    entry: &Arc<crate::state::CatalogEntry>,
    message: Envelope,
    method: &str,
    mut audit: audit::CallRecord,
) -> Result<Reply, ProxyError> {
    // Durable decision record before the upstream is called (fail closed).
    audit.decision().await?;
    let findings = audit.late_findings();
    audit.phase("upstream"); // the forward phase runs under the request's span (telemetry)
    let forwarded = forward::forward_recorded(call, entry, message, method, findings);
    let reply = audit.span().scoped(forwarded).await;
    audit.outcome(reply).await
}

async fn handle_notification(call: &Call, message: Envelope) {
    let method = message.method().unwrap_or_default();
    match method {
        "notifications/initialized" => {}
        "notifications/cancelled" => {
            let request_id = message
                .params()
                .and_then(RawObject::parse)
                .and_then(|params| params.get("requestId").map(|raw| raw.get().to_owned()));
            if let (Some(session), Some(request_id)) = (&call.session, request_id)
                && session.cancel_call(&request_id)
            {
                tracing::debug!(request_id, "call cancelled by the client");
            }
        }
        _ => {
            // Client notifications other than cancellation (roots/list_changed, vendor ones)
            // go to every server of the route that this client may be talking to.
            for entry in target::servers_of(call) {
                if let Err(error) = entry.connector.notify(&call.caller, message.clone()).await {
                    tracing::debug!(server = %entry.config.name, %error, method, "notification not forwarded");
                }
            }
        }
    }
}

/// A client's result or error answering a server→client request the gateway forwarded.
fn handle_client_answer(call: &Call, message: Envelope) {
    let Some(session) = &call.session else {
        tracing::debug!("response from a client without a session dropped");
        return;
    };
    let Some(id) = message.id().map(|raw| raw.get().to_owned()) else {
        return;
    };
    if !session.answer_client_request(&id, message) {
        tracing::debug!(
            id,
            "answer to an unknown or finished server request dropped"
        );
    }
}

/// The error for methods the aggregate cannot route.
pub(crate) fn not_routable(method: &str) -> ProxyError {
    ProxyError::client(
        METHOD_NOT_FOUND,
        format!(
            "method {method} cannot be routed on the aggregate endpoint /mcp; use /mcp/{{server}}"
        ),
    )
}
