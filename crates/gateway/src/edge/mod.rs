//! The HTTP edge: one listener serving the MCP endpoints, health probes and the OAuth
//! discovery document. [`router`] is a plain function of the shared state so tests drive it
//! in-process.

pub mod checks;
pub mod legacy_sse;
pub mod mcp;
pub mod render;
pub mod unsolicited;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{any, get, post};
use http::StatusCode;
use serde_json::json;

use crate::state::Gateway;

/// All HTTP routes of the gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp", any(mcp::aggregate))
        .route("/mcp/", any(mcp::aggregate))
        .route("/mcp/{server}", any(mcp::server))
        .route("/sse", get(legacy_sse::aggregate_stream))
        .route("/mcp/{server}/sse", get(legacy_sse::server_stream))
        .route("/message", post(legacy_sse::message))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::scrape))
        .nest(crate::admin::BASE_PATH, crate::admin::router())
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server}",
            get(server_protected_resource),
        )
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            limit_headers,
        ))
        .with_state(gateway)
}

/// Refuses requests whose headers are larger than `limits.max_header_bytes` (431), before any
/// handler runs.
async fn limit_headers(
    State(gateway): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let max = gateway.runtime().config.limits.max_header_bytes;
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > max {
        return render::http_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
    }
    next.run(request).await
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let runtime = gateway.runtime();
    render::json(
        StatusCode::OK,
        json!({ "status": "ready", "servers": runtime.catalog.len(), "sessions": gateway.sessions.len() }).to_string().into_bytes(),
    )
}

/// RFC 9728 Protected Resource Metadata for the aggregate `/mcp` (also served at the root
/// well-known path).
async fn protected_resource(State(gateway): State<Arc<Gateway>>) -> Response {
    let runtime = gateway.runtime();
    resource_metadata(&runtime, format!("{}/mcp", runtime.config.public_url))
}

/// RFC 9728 Protected Resource Metadata for `/mcp/{server}`: its own resource identifier,
/// which is also an accepted token audience on that route (RFC 8707).
async fn server_protected_resource(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(server): axum::extract::Path<String>,
) -> Response {
    let runtime = gateway.runtime();
    if runtime.server(&server).is_none() {
        return render::http_error(StatusCode::NOT_FOUND, "no such catalog server");
    }
    resource_metadata(
        &runtime,
        format!("{}/mcp/{server}", runtime.config.public_url),
    )
}

/// The metadata document: the resource, the OIDC issuer as authorization server when
/// `auth.oidc` is configured, and the required scopes.
fn resource_metadata(runtime: &crate::state::Runtime, resource: String) -> Response {
    let mut body = json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "Portcullis MCP gateway",
    });
    if let Some(issuer) = runtime.auth.issuer() {
        body["authorization_servers"] = json!([issuer]);
    }
    if let Some(oidc) = &runtime.config.auth.oidc
        && !oidc.required_scopes.is_empty()
    {
        body["scopes_supported"] = json!(oidc.required_scopes);
    }
    render::json(StatusCode::OK, body.to_string().into_bytes())
}
