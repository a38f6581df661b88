//! A recording MCP upstream for the audit tests: Streamable HTTP on 127.0.0.1, both eras, one
//! tool `echo`. It keeps the `params` of every `tools/call` it receives (so a test can tell
//! whether a call reached it, and what `_meta.traceparent` it carried) and answers with the
//! `traceparent` it saw as the result text.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A running recording upstream.
pub struct Recorder {
    /// Its MCP endpoint.
    pub url: String,
    /// `params` of each `tools/call` received, in arrival order.
    pub calls: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    /// How many `tools/call` requests reached it.
    pub fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

/// Starts the upstream on a free loopback port.
pub async fn start() -> Recorder {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/mcp", post(handle).delete(|| async { "" }))
        .with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Recorder { url, calls }
}

fn answer(body: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(State(calls): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return answer(
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}),
        );
    };
    let Some(id) = message.get("id").cloned() else {
        return axum::http::StatusCode::ACCEPTED.into_response();
    };
    let result = match message["method"].as_str().unwrap_or_default() {
        "server/discover" => json!({
            "resultType": "complete",
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "recorder", "version": "0"}
        }),
        "initialize" => json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "recorder", "version": "0"}
        }),
        "tools/list" => json!({
            "tools": [{"name": "echo", "description": "Echoes.", "inputSchema": {"type": "object"}}]
        }),
        "tools/call" => {
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            let seen = params["_meta"]["traceparent"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            calls.lock().unwrap().push(params);
            json!({"resultType": "complete", "content": [{"type": "text", "text": seen}], "isError": false})
        }
        "ping" => json!({}),
        _ => {
            return answer(
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"method not found"}}),
            );
        }
    };
    answer(json!({"jsonrpc":"2.0","id":id,"result":result}))
}
