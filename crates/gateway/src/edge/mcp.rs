//! Streamable HTTP on `/mcp` and `/mcp/{server}`: POST (JSON or SSE answers), GET (the legacy
//! standalone stream), DELETE (end a legacy session). This is where the edge, authenticate,
//! envelope and session/era phases of a call run; the rest is [`crate::proxy`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode};
use portcullis_core::envelope::{Envelope, Kind, Parsed};
use portcullis_core::era::{self, Era};
use portcullis_core::rawobj::RawObject;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::render;
use super::{checks, unsolicited};
use crate::auth::Principal;
use crate::proxy::errors::{
    INVALID_PARAMS, INVALID_REQUEST, ProxyError, UNSUPPORTED_PROTOCOL_VERSION,
};
use crate::proxy::{self, Call, Face, Reply, lifecycle};
use crate::route::Route;
use crate::session::Session;
use crate::state::{Gateway, Runtime};
use crate::upstream::Caller;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

pub async fn aggregate(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(gateway, Route::Aggregate, method, headers, body).await
}

pub async fn server(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if gateway.runtime().server(&name).is_none() {
        return render::http_error(StatusCode::NOT_FOUND, "no such catalog server");
    }
    handle(gateway, Route::Server(name.into()), method, headers, body).await
}

async fn handle(
    gateway: Arc<Gateway>,
    route: Route,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = gateway.telemetry.received(); // Some only when tracing is on
    let runtime = gateway.runtime();
    let config = &runtime.config;
    if !checks::host_allowed(config, &headers) || !checks::origin_allowed(config, &headers) {
        return render::http_error(
            StatusCode::FORBIDDEN,
            "Forbidden: Origin or Host not allowed",
        );
    }
    let principal = match checks::authenticate(&runtime, &route, &headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    match method {
        Method::POST => {
            let post = post(
                gateway.clone(),
                runtime.clone(),
                route,
                principal,
                headers,
                body,
            );
            crate::telemetry::edge_scope(received, post).await // `authenticate` span
        }
        Method::GET => get(gateway.clone(), &runtime, route, principal, &headers),
        Method::DELETE => delete(&gateway, &runtime, route, principal, &headers).await,
        _ => render::method_not_allowed(),
    }
}

async fn post(
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    route: Route,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = &runtime.config;
    if !checks::is_json(&headers) {
        return render::http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let (accepts_json, accepts_sse) = checks::accepts(&headers);
    if !accepts_json && !accepts_sse {
        return render::http_error(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must include application/json or text/event-stream",
        );
    }
    let parsed = match checks::read_envelope(config, body).await {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let parsed = crate::audit_trail::trace::adopt_header(headers.get("traceparent"), parsed);
    let message = match parsed {
        Parsed::Single(message) => message,
        Parsed::Batch(messages) => {
            return batch(
                gateway,
                runtime,
                route,
                principal,
                &headers,
                messages,
                accepts_sse,
            )
            .await;
        }
    };

    if message.kind() == Kind::Request
        && message.method() == Some("initialize")
        && !carries_modern_meta(&message)
    {
        return match lifecycle::initialize(&gateway, &runtime, route.clone(), principal, &message)
            .await
        {
            Ok((response, session)) => render::with_session(
                render::reply(Reply::ok(response), Era::Legacy, &gateway.shutting_down),
                &session.id,
            ),
            Err(error) => render::proxy_error(&error, message.id(), false),
        };
    }

    let call = match establish(
        gateway,
        runtime.clone(),
        route,
        principal,
        &headers,
        &message,
        accepts_sse,
    ) {
        Ok(call) => call,
        Err(response) => return response,
    };
    let era = call.face.era;
    let shutdown = call.gateway.shutting_down.clone();
    render::reply(proxy::handle(&call, message).await, era, &shutdown)
}

/// Session/era phase: a legacy session from `Mcp-Session-Id`, or a modern stateless caller
/// from the request's `_meta`.
#[allow(clippy::result_large_err)]
fn establish(
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    route: Route,
    principal: Principal,
    headers: &HeaderMap,
    message: &Envelope,
    accepts_sse: bool,
) -> Result<Call, Response> {
    let session_id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    let header_version = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok());
    if let Some(session_id) = session_id {
        let session = gateway
            .sessions
            .get(session_id, &principal, &route)
            .map_err(|error| render::http_error(StatusCode::NOT_FOUND, &error.to_string()))?;
        if let Some(version) = header_version
            && era::era_of(version) != Some(Era::Legacy)
        {
            return Err(render::http_error(
                StatusCode::BAD_REQUEST,
                &format!("Bad Request: unsupported MCP-Protocol-Version {version:?}"),
            ));
        }
        return Ok(session_call(
            gateway,
            runtime,
            principal,
            session,
            accepts_sse,
        ));
    }

    let meta = message
        .params()
        .and_then(RawObject::parse)
        .and_then(|params| params.get_object("_meta"));
    let meta_version = meta
        .as_ref()
        .and_then(|meta| meta.get_str(era::META_PROTOCOL_VERSION));
    let id = message.id();
    let Some(version) = meta_version else {
        let modern_header = header_version.is_some_and(|v| era::era_of(v) == Some(Era::Modern));
        if modern_header && message.kind() == Kind::Request {
            let error = ProxyError::client(
                INVALID_PARAMS,
                format!("missing params._meta[\"{}\"]", era::META_PROTOCOL_VERSION),
            )
            .with_status(StatusCode::BAD_REQUEST);
            return Err(render::proxy_error(&error, id, true));
        }
        if modern_header {
            return Ok(Call {
                face: Face {
                    era: Era::Modern,
                    version: era::LATEST_MODERN.into(),
                    accepts_sse,
                },
                caller: Caller {
                    key: modern_caller_key(&principal, &json!({})).into(),
                    protocol_version: era::LATEST_MODERN.into(),
                    capabilities: Arc::new(json!({})),
                    client_info: None,
                },
                gateway,
                runtime,
                route,
                principal,
                session: None,
            });
        }
        return Err(render::http_error(
            StatusCode::BAD_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (or send a 2026-07-28 request with params._meta)",
        ));
    };
    if let Err(mismatch) = portcullis_core::mirror::validate_headers(
        |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
        message,
        mirrored_tool_schema(&gateway, &runtime, &route, message).as_deref(),
    ) {
        let error = ProxyError::client(crate::proxy::errors::HEADER_MISMATCH, mismatch.to_string())
            .with_status(StatusCode::BAD_REQUEST);
        return Err(render::proxy_error(&error, id, true));
    }
    if era::era_of(&version) != Some(Era::Modern) {
        let error = ProxyError::client(
            UNSUPPORTED_PROTOCOL_VERSION,
            format!("unsupported protocol version {version:?}"),
        )
        .with_data(json!({ "supported": era::MODERN_VERSIONS, "requested": version }))
        .with_status(StatusCode::BAD_REQUEST);
        return Err(render::proxy_error(&error, id, true));
    }
    let meta = meta.expect("version came from meta");
    let capabilities: serde_json::Value = match meta
        .get(era::META_CLIENT_CAPABILITIES)
        .map(|raw| serde_json::from_str(raw.get()))
    {
        Some(Ok(value @ serde_json::Value::Object(_))) => value,
        _ => {
            let error = ProxyError::client(
                INVALID_PARAMS,
                format!(
                    "params._meta[\"{}\"] must be an object",
                    era::META_CLIENT_CAPABILITIES
                ),
            )
            .with_status(StatusCode::BAD_REQUEST);
            return Err(render::proxy_error(&error, id, true));
        }
    };
    let client_info = meta
        .get(era::META_CLIENT_INFO)
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let caller = Caller {
        key: modern_caller_key(&principal, &capabilities).into(),
        protocol_version: version.as_str().into(),
        capabilities: Arc::new(capabilities),
        client_info: client_info.map(Arc::new),
    };
    let face = Face {
        era: Era::Modern,
        version: version.into(),
        accepts_sse,
    };
    Ok(Call {
        gateway,
        runtime,
        route,
        principal,
        session: None,
        caller,
        face,
    })
}

/// The call of a message on a legacy session (this transport or the HTTP+SSE one).
pub(crate) fn session_call(
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    principal: Principal,
    session: Arc<Session>,
    accepts_sse: bool,
) -> Call {
    let face = Face {
        era: Era::Legacy,
        version: session.caller.protocol_version.clone(),
        accepts_sse,
    };
    Call {
        gateway,
        runtime,
        route: session.route.clone(),
        principal,
        caller: session.caller.clone(),
        session: Some(session),
        face,
    }
}

/// Modern callers have no session; per-caller upstream state is keyed by who they are and what
/// they declared, so two callers never share an upstream session.
fn modern_caller_key(principal: &Principal, capabilities: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(principal.credential_id.as_bytes());
    hasher.update([0]);
    hasher.update(principal.agent.as_bytes());
    hasher.update([0]);
    hasher.update(capabilities.to_string().as_bytes());
    format!("m-{}", hex::encode(&hasher.finalize()[..12]))
}

/// JSON-RPC batches: accepted only on sessions that negotiated 2025-03-26.
async fn batch(
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    route: Route,
    principal: Principal,
    headers: &HeaderMap,
    messages: Vec<Envelope>,
    accepts_sse: bool,
) -> Response {
    let Some(first) = messages.first() else {
        return render::http_error(StatusCode::BAD_REQUEST, "empty batch");
    };
    let call = match establish(
        gateway,
        runtime,
        route,
        principal,
        headers,
        first,
        accepts_sse,
    ) {
        Ok(call) => call,
        Err(response) => return response,
    };
    if call.face.era != Era::Legacy || !era::allows_batches(&call.face.version) {
        let error = ProxyError::client(
            INVALID_REQUEST,
            format!(
                "JSON-RPC batches are not allowed in protocol version {}",
                call.face.version
            ),
        )
        .with_status(StatusCode::BAD_REQUEST);
        return render::proxy_error(&error, None, false);
    }
    let json_only = Call {
        face: Face {
            accepts_sse: false,
            ..call.face.clone()
        },
        ..call
    };
    let mut responses = Vec::new();
    for message in messages {
        if message.method() == Some("initialize") {
            let error =
                ProxyError::client(INVALID_REQUEST, "initialize must not be part of a batch");
            responses.push(error.to_envelope(message.id()));
            continue;
        }
        if let Reply::Message { message, .. } = proxy::handle(&json_only, message).await {
            responses.push(message);
        }
    }
    render::batch(responses)
}

fn get(
    gateway: Arc<Gateway>,
    runtime: &Arc<Runtime>,
    route: Route,
    principal: Principal,
    headers: &HeaderMap,
) -> Response {
    let Some(session_id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return render::method_not_allowed();
    };
    let (_, accepts_sse) = checks::accepts(headers);
    if !accepts_sse {
        return render::http_error(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must include text/event-stream",
        );
    }
    let session = match gateway.sessions.get(session_id, &principal, &route) {
        Ok(session) => session,
        Err(error) => return render::http_error(StatusCode::NOT_FOUND, &error.to_string()),
    };
    // Resumption of a POST stream: replay what the client missed, then follow the rest.
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::stream_log::parse_event_id);
    if let Some((stream, index)) = last_event
        && let Some(log) = session.streams.get(stream)
    {
        let resumed = render::resumable(session, stream, log, index, &gateway.shutting_down);
        return crate::proxy::control::end_stream_on_kill(&gateway, &principal, &route, resumed);
    }
    match unsolicited::standalone_stream(&gateway, runtime, &session, &gateway.shutting_down) {
        // A kill switch that stops this agent (or this server's route) ends the stream.
        Some(stream) => {
            crate::proxy::control::end_stream_on_kill(&gateway, &principal, &route, stream)
        }
        None => render::http_error(
            StatusCode::CONFLICT,
            "too many open streams on this session",
        ),
    }
}

async fn delete(
    gateway: &Arc<Gateway>,
    runtime: &Runtime,
    route: Route,
    principal: Principal,
    headers: &HeaderMap,
) -> Response {
    let Some(session_id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return render::method_not_allowed();
    };
    let session = match gateway.sessions.remove(session_id, &principal, &route) {
        Ok(session) => session,
        Err(error) => return render::http_error(StatusCode::NOT_FOUND, &error.to_string()),
    };
    for entry in runtime.catalog.values() {
        entry.connector.release(&session.id).await;
    }
    render::empty(StatusCode::OK)
}

/// Does a request carry the 2026-07-28 per-request `_meta` (so it is a modern request, whatever
/// its method)?
fn carries_modern_meta(message: &Envelope) -> bool {
    message
        .params()
        .and_then(RawObject::parse)
        .and_then(|params| params.get_object("_meta"))
        .is_some_and(|meta| meta.get(era::META_PROTOCOL_VERSION).is_some())
}

/// The input schema of the tool a modern `tools/call` names, when its parameters are mirrored
/// in `Mcp-Param-*` headers (learned from earlier `tools/list` answers).
fn mirrored_tool_schema(
    gateway: &Gateway,
    runtime: &Runtime,
    route: &Route,
    message: &Envelope,
) -> Option<Arc<serde_json::Value>> {
    if message.method() != Some("tools/call") || gateway.tool_schemas.is_empty() {
        return None;
    }
    let name = message
        .params()
        .and_then(RawObject::parse)?
        .get_str("name")?;
    let (server, tool) = match route {
        Route::Server(server) => (server.to_string(), name),
        Route::Aggregate => {
            let (server, tool) = portcullis_core::names::split(&name)?;
            (server.to_owned(), tool.to_owned())
        }
    };
    runtime.server(&server)?;
    gateway.tool_schemas.get(&server, &tool)
}
