//! Lifecycle requests the gateway answers itself: legacy `initialize` (which opens a session),
//! modern `server/discover`, and `logging/setLevel` (relayed to every server of the route).
//!
//! On `/mcp/{server}` the gateway presents that server's own capabilities, `serverInfo` and
//! instructions (a transparent route); on `/mcp` it presents itself.

use std::sync::Arc;

use portcullis_core::envelope::{Envelope, to_raw};
use portcullis_core::era::{self, MODERN_VERSIONS};
use portcullis_core::rawobj::RawObject;
use serde_json::{Value, json};

use super::errors::{INVALID_PARAMS, ProxyError};
use super::{Call, Reply, adapt, target};
use crate::auth::Principal;
use crate::route::Route;
use crate::session::{NewSession, Session, SessionError};
use crate::state::{Gateway, Runtime};

/// What the gateway itself says about the aggregate endpoint.
fn aggregate_capabilities() -> Value {
    json!({
        "tools": { "listChanged": true },
        "prompts": { "listChanged": true },
        "resources": { "subscribe": true, "listChanged": true },
        "completions": {},
        "logging": {}
    })
}

fn gateway_info() -> Value {
    json!({ "name": "portcullis", "title": "Portcullis MCP gateway", "version": env!("CARGO_PKG_VERSION") })
}

/// The capabilities, server info and instructions to present on a route.
async fn presented(
    gateway: &Gateway,
    runtime: &Runtime,
    route: &Route,
    method: &str,
) -> Result<(Value, Value, Option<String>), ProxyError> {
    match route {
        Route::Aggregate => Ok((aggregate_capabilities(), gateway_info(), None)),
        Route::Server(name) => {
            let entry = runtime.server(name).ok_or_else(|| {
                ProxyError::client(
                    super::errors::UNKNOWN_SERVER,
                    format!("no catalog server named {name:?}"),
                )
            })?;
            let facts = entry.connector.facts().await?;
            Ok((
                facts.capabilities,
                facts.server_info.unwrap_or_else(gateway_info),
                // Instructions reach the model too: left out when poisoned.
                super::scanning::screen_instructions(
                    gateway,
                    runtime,
                    method,
                    name,
                    facts.instructions,
                ),
            ))
        }
    }
}

/// Answers a legacy `initialize` and opens the session it starts.
pub async fn initialize(
    gateway: &Arc<Gateway>,
    runtime: &Runtime,
    route: Route,
    principal: Principal,
    message: &Envelope,
) -> Result<(Envelope, Arc<Session>), ProxyError> {
    let params = message.params().and_then(RawObject::parse).ok_or_else(|| {
        ProxyError::client(INVALID_PARAMS, "initialize: params must be an object")
    })?;
    let requested = params.get_str("protocolVersion").ok_or_else(|| {
        ProxyError::client(
            INVALID_PARAMS,
            "initialize: params.protocolVersion must be a string",
        )
    })?;
    let capabilities: Value = params
        .get("capabilities")
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .ok()
        .flatten()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let client_info: Option<Value> = params
        .get("clientInfo")
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let version = era::negotiate_legacy(&requested);

    let (server_capabilities, server_info, instructions) =
        presented(gateway, runtime, &route, "initialize").await?;
    let session = gateway
        .sessions
        .create(
            NewSession {
                principal,
                route,
                protocol_version: version.into(),
                capabilities,
                client_info,
            },
            runtime.config.limits.max_sessions,
        )
        .map_err(|error| match error {
            SessionError::TooMany => {
                ProxyError::client(super::errors::INTERNAL_ERROR, error.to_string())
                    .with_status(http::StatusCode::SERVICE_UNAVAILABLE)
            }
            SessionError::NotFound => {
                ProxyError::client(super::errors::INTERNAL_ERROR, error.to_string())
            }
        })?;
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": server_capabilities,
        "serverInfo": server_info,
    });
    if let Some(instructions) = instructions {
        result["instructions"] = Value::String(instructions);
    }
    let id = message
        .id()
        .map(|raw| raw.to_owned())
        .unwrap_or_else(|| to_raw(&0));
    Ok((Envelope::result(id, to_raw(&result)), session))
}

/// Answers a modern `server/discover`.
pub async fn discover(call: &Call, message: &Envelope) -> Result<Reply, ProxyError> {
    // The gateway answers it itself: one audit record with the decision and the outcome.
    let mut recorded = message.clone();
    let audit = super::audit::CallRecord::begin(call, None, "server/discover", &mut recorded);
    audit.answered(discovered(call, message).await).await
}

async fn discovered(call: &Call, message: &Envelope) -> Result<Reply, ProxyError> {
    let (capabilities, server_info, instructions) =
        presented(&call.gateway, &call.runtime, &call.route, "server/discover").await?;
    let mut result = json!({
        "supportedVersions": MODERN_VERSIONS,
        "capabilities": capabilities,
        "serverInfo": server_info.clone(),
        "_meta": { "io.modelcontextprotocol/serverInfo": server_info },
    });
    if let Some(instructions) = instructions {
        result["instructions"] = Value::String(instructions);
    }
    let mut result = RawObject::parse(&to_raw(&result)).expect("an object");
    adapt::adapt_modern_result("server/discover", &mut result);
    let id = message
        .id()
        .map(|raw| raw.to_owned())
        .unwrap_or_else(|| to_raw(&0));
    Ok(Reply::ok(Envelope::result(id, result.to_raw())))
}

/// Relays `logging/setLevel` to every server of the route and answers `{}`.
pub async fn set_log_level(call: &Call, message: Envelope) -> Result<Reply, ProxyError> {
    let id = message
        .id()
        .map(|raw| raw.to_owned())
        .unwrap_or_else(|| to_raw(&0));
    for entry in target::servers_of(call) {
        match entry.connector.request(&call.caller, message.clone()).await {
            Ok(mut exchange) => {
                // Wait for the answer so the level is in force before we confirm.
                while let Some(event) = exchange.events.recv().await {
                    if matches!(event, crate::upstream::UpstreamEvent::Response(_)) {
                        break;
                    }
                }
            }
            Err(error) => {
                tracing::debug!(server = %entry.config.name, %error, "logging/setLevel not relayed")
            }
        }
    }
    Ok(Reply::ok(Envelope::result(id, to_raw(&json!({})))))
}
