//! The benchmark upstream: a minimal, fast MCP server over Streamable HTTP.
//!
//! It exists to be cheap, so that the gateway (not the upstream) is what the load generator
//! measures. It reads only `id` and `method` of each POST (borrowed, nothing else is built), keeps
//! no session state, and answers with pre-formatted JSON. It speaks both eras:
//!
//! - modern (2026-07-28): stateless POSTs; `server/discover` answers
//!   `{"resultType":"complete","supportedVersions":["2026-07-28"],...}`; `tools/call` results
//!   carry `"resultType":"complete"`.
//! - legacy: `initialize` mints an `Mcp-Session-Id` (a counter; later requests are not checked
//!   against it), notifications are accepted with 202, the standalone GET stream is refused with
//!   405 (allowed by the spec), `DELETE` is accepted.
//!
//! With `legacy_only`, `server/discover` is refused with `-32601` (as a legacy server would), so
//! the gateway falls back to `initialize` and opens one upstream session per caller.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

/// The modern protocol version the upstream speaks.
pub const MODERN: &str = "2026-07-28";
/// The legacy protocol version it answers `initialize` with.
pub const LEGACY: &str = "2025-11-25";

struct Upstream {
    legacy_only: bool,
    next_session: AtomicU64,
}

/// Only what the upstream needs from a request; every other member is skipped unparsed.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
}

/// Serves the upstream on `listener` until the process ends.
pub async fn serve(listener: TcpListener, legacy_only: bool) -> anyhow::Result<()> {
    let state = Arc::new(Upstream {
        legacy_only,
        next_session: AtomicU64::new(1),
    });
    let app = Router::new()
        .route(
            "/mcp",
            post(handle_post)
                .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                .delete(|| async { StatusCode::OK }),
        )
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(id: &str, code: i64, message: &str) -> Response {
    json(
        StatusCode::OK,
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":"{message}"}}}}"#),
    )
}

async fn handle_post(
    State(state): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(incoming) = serde_json::from_slice::<Incoming<'_>>(&body) else {
        return error("null", -32700, "parse error");
    };
    let Some(id) = incoming.id.map(RawValue::get) else {
        // A notification (or a response to a server request, which this server never sends).
        return StatusCode::ACCEPTED.into_response();
    };
    let legacy_request = headers.contains_key("mcp-session-id");
    match incoming.method.as_deref() {
        Some("tools/call") => {
            let result_type = if legacy_request {
                ""
            } else {
                r#""resultType":"complete","#
            };
            json(
                StatusCode::OK,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{{result_type}"content":[{{"type":"text","text":"ok"}}],"isError":false}}}}"#
                ),
            )
        }
        Some("server/discover") if !state.legacy_only => json(
            StatusCode::OK,
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"complete","supportedVersions":["{MODERN}"],"capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"portcullis-bench-upstream","version":"0"}}}}}}"#
            ),
        ),
        Some("initialize") => {
            let session = state.next_session.fetch_add(1, Ordering::Relaxed);
            let mut response = json(
                StatusCode::OK,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":"{LEGACY}","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"portcullis-bench-upstream","version":"0"}}}}}}"#
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bench-{session}")) {
                response.headers_mut().insert("mcp-session-id", value);
            }
            response
        }
        Some("tools/list") => json(
            StatusCode::OK,
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"echo","description":"Answers ok.","inputSchema":{{"type":"object"}}}}]}}}}"#
            ),
        ),
        Some("ping") => json(
            StatusCode::OK,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#),
        ),
        _ => error(id, -32601, "method not found"),
    }
}
