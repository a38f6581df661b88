//! The one place where proxy outcomes become HTTP responses: status codes, JSON bodies, SSE
//! streams, session and challenge headers. Internal details never leak into bodies.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use portcullis_core::envelope::{Envelope, Kind};
use portcullis_core::era::Era;
use serde_json::value::RawValue;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::proxy::Reply;
use crate::proxy::errors::{
    HEADER_MISMATCH, METHOD_NOT_FOUND, MISSING_CLIENT_CAPABILITY, ProxyError,
    UNSUPPORTED_PROTOCOL_VERSION,
};

/// Renders a proxy reply for a client of `era`. Streams end when `shutdown` is cancelled.
pub fn reply(reply: Reply, era: Era, shutdown: &CancellationToken) -> Response {
    match reply {
        Reply::Accepted => empty(StatusCode::ACCEPTED),
        Reply::Message { message, status } => message_response(message, status, era),
        Reply::Resumable {
            session,
            stream,
            log,
        } => resumable(session, stream, log, 0, shutdown),
        Reply::Stream(receiver) => {
            let events = ReceiverStream::new(receiver)
                .take_until(shutdown.clone().cancelled_owned())
                .map(|message| {
                    Ok::<_, Infallible>(
                        Event::default().data(String::from_utf8_lossy(&message.to_bytes())),
                    )
                });
            sse(events)
        }
    }
}

/// The modern era gives some protocol errors their own HTTP status, whoever raised them (the
/// gateway or the upstream): unknown method 404; header mismatch, missing capability and
/// unsupported version 400.
fn modern_error_status(message: &Envelope) -> StatusCode {
    match error_code(message) {
        Some(METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        Some(HEADER_MISMATCH | MISSING_CLIENT_CAPABILITY | UNSUPPORTED_PROTOCOL_VERSION) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::OK,
    }
}

fn error_code(message: &Envelope) -> Option<i64> {
    if message.kind() != Kind::Error {
        return None;
    }
    let error: serde_json::Value = serde_json::from_str(message.member("error")?.get()).ok()?;
    error.get("code")?.as_i64()
}

/// A JSON-RPC error as its own response.
pub fn proxy_error(error: &ProxyError, id: Option<&RawValue>, modern: bool) -> Response {
    let era = if modern { Era::Modern } else { Era::Legacy };
    message_response(error.to_envelope(id), error.status, era)
}

/// One JSON-RPC message as a JSON body; modern protocol errors get their own status.
fn message_response(message: Envelope, status: StatusCode, era: Era) -> Response {
    let status = if status == StatusCode::OK && era == Era::Modern {
        modern_error_status(&message)
    } else {
        status
    };
    let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| retry_after_seconds(&message))
        .flatten();
    let mut response = json(status, message.to_bytes());
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `Retry-After` (whole seconds, rounded up) from a rate-limit error's `data.retryAfterMs`.
fn retry_after_seconds(message: &Envelope) -> Option<u64> {
    let error: serde_json::Value = serde_json::from_str(message.member("error")?.get()).ok()?;
    let ms = error.get("data")?.get("retryAfterMs")?.as_u64()?;
    Some(ms.div_ceil(1000).max(1))
}

/// A plain HTTP failure with an id-less JSON-RPC error body.
pub fn http_error(status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => -32001,
        _ => -32000,
    };
    json(
        status,
        Envelope::error(None, code, message, None).to_bytes(),
    )
}

/// 401 with the challenge that points clients at the Protected Resource Metadata.
pub fn unauthorized(resource_metadata: &str, why: &str) -> Response {
    let mut response = http_error(StatusCode::UNAUTHORIZED, &format!("Unauthorized: {why}"));
    let challenge = format!("Bearer resource_metadata=\"{resource_metadata}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The answer to a failed authentication (RFC 6750, RFC 9728, MCP authorization): 401 with
/// `WWW-Authenticate: Bearer resource_metadata=…, scope=…` and, for a bad credential,
/// `error="invalid_token"` with a description; 403 `insufficient_scope` naming every scope
/// needed (step-up); 503 with `Retry-After` when the issuer's keys cannot be fetched.
pub fn auth_failure(
    error: &crate::auth::AuthError,
    resource_metadata: &str,
    scope: Option<&str>,
) -> Response {
    use crate::auth::AuthError;
    if *error == AuthError::KeysUnavailable {
        let mut response = http_error(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    let (status, code) = match error {
        AuthError::Missing => (StatusCode::UNAUTHORIZED, None),
        AuthError::NotBearer => (StatusCode::UNAUTHORIZED, Some("invalid_request")),
        AuthError::InsufficientScope => (StatusCode::FORBIDDEN, Some("insufficient_scope")),
        _ => (StatusCode::UNAUTHORIZED, Some("invalid_token")),
    };
    let mut challenge = format!("Bearer resource_metadata=\"{resource_metadata}\"");
    if let Some(scope) = scope {
        challenge.push_str(&format!(", scope=\"{scope}\""));
    }
    if let Some(code) = code {
        // The description is our own text; keep it a valid quoted-string all the same.
        let description: String = error
            .to_string()
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        challenge.push_str(&format!(
            ", error=\"{code}\", error_description=\"{description}\""
        ));
    }
    let prefix = if status == StatusCode::FORBIDDEN {
        "Forbidden"
    } else {
        "Unauthorized"
    };
    let mut response = http_error(status, &format!("{prefix}: {error}"));
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

pub fn method_not_allowed() -> Response {
    let mut response = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

pub fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

pub fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A batch answer: the responses as one JSON array (202 when there are none).
pub fn batch(responses: Vec<Envelope>) -> Response {
    if responses.is_empty() {
        return empty(StatusCode::ACCEPTED);
    }
    let mut body = Vec::from(*b"[");
    for (i, message) in responses.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&message.to_bytes());
    }
    body.push(b']');
    json(StatusCode::OK, body)
}

/// Adds the `Mcp-Session-Id` header to an initialize answer.
pub fn with_session(mut response: Response, session_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(session_id) {
        response
            .headers_mut()
            .insert(super::mcp::SESSION_HEADER, value);
    }
    response
}

/// How long a client waits before reconnecting to a resumable stream (SSE `retry`).
const RETRY_MS: u64 = 1000;

/// An SSE response reading a session's stream log from message `from` on. A fresh stream
/// (`from == 0`) starts with the priming event: the event id to resume from, `retry`, and an
/// empty `data:` line (written by our own SSE writer so the event is dispatched by clients).
/// Once the log has been read to its end it is forgotten.
pub fn resumable(
    session: std::sync::Arc<crate::session::Session>,
    stream: u64,
    log: std::sync::Arc<crate::stream_log::StreamLog>,
    from: usize,
    shutdown: &CancellationToken,
) -> Response {
    use crate::stream_log::event_id;
    use portcullis_core::sse::{SseEvent, write_event};
    let priming = (from == 0).then(|| SseEvent {
        id: Some(event_id(stream, 0)),
        retry: Some(RETRY_MS),
        ..SseEvent::default()
    });
    let messages = log.read_from(from).map(move |(index, message)| SseEvent {
        id: Some(event_id(stream, index + 1)),
        data: String::from_utf8_lossy(&message.to_bytes()).into_owned(),
        ..SseEvent::default()
    });
    let finished = futures::stream::once(async move {
        session.streams.remove(stream);
    })
    .filter_map(|()| async { None });
    let events = futures::stream::iter(priming)
        .chain(messages)
        .chain(finished)
        .take_until(shutdown.clone().cancelled_owned())
        .map(|event| Ok::<_, Infallible>(bytes::Bytes::from(write_event(&event))));
    let mut response = (StatusCode::OK, Body::from_stream(events)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An SSE response over `events`, with keep-alive comments and the headers that stop proxies
/// from buffering it.
pub fn sse<S>(events: S) -> Response
where
    S: futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    no_buffering(&mut response);
    response
}

/// Headers every SSE response carries.
fn no_buffering(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}
