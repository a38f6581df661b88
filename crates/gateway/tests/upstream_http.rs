//! The HTTP connector against in-process fixtures (a modern stateless server and a legacy
//! Streamable HTTP server, both ours, on 127.0.0.1:0) and against server-everything in its
//! `streamableHttp` and `sse` modes (bound to loopback by `scripts/peers/loopback-only.cjs`).

mod upstream_support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_config::{Credentials, Secret};
use portcullis_core::era::Era;
use portcullis_gateway::upstream::exchange::codes;
use portcullis_gateway::upstream::http::{HttpConnector, http_client};
use portcullis_gateway::upstream::{Connector, UpstreamError, UpstreamEvent};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use upstream_support::*;

// ---------------------------------------------------------------- in-process fixtures

#[derive(Default)]
struct Fixture {
    /// Every request's headers and body, in arrival order.
    seen: Mutex<Vec<(HeaderMap, Value)>>,
    /// Legacy: live session ids.
    sessions: Mutex<HashSet<String>>,
    initializes: AtomicUsize,
    /// Modern: set when the response stream of a `slow` call is dropped by the client.
    slow_closed: AtomicBool,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Sets the fixture's flag when the SSE body is dropped (the client closed the stream).
struct CloseGuard(Arc<Fixture>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.slow_closed.store(true, Ordering::SeqCst);
    }
}

async fn modern_endpoint(
    State(fixture): State<Arc<Fixture>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fixture
        .seen
        .lock()
        .unwrap()
        .push((headers.clone(), message.clone()));
    let id = message["id"].clone();
    let method = message["method"].as_str().unwrap_or_default();
    let mismatch = |what: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32020, "message": format!("header mismatch: {what}") } }),
        )
    };
    if header_str(&headers, "mcp-protocol-version") != "2026-07-28" {
        return mismatch("MCP-Protocol-Version");
    }
    if header_str(&headers, "mcp-method") != method {
        return mismatch("Mcp-Method");
    }
    let meta = &message["params"]["_meta"];
    if meta["io.modelcontextprotocol/protocolVersion"] != json!("2026-07-28") {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": "missing _meta" } }),
        );
    }
    match method {
        "server/discover" => json_response(
            StatusCode::OK,
            json!({ "jsonrpc": "2.0", "id": id, "result": {
                "resultType": "complete", "supportedVersions": ["2026-07-28"], "capabilities": { "tools": {} },
                "serverInfo": { "name": "modern-fixture", "version": "1" }, "ttlMs": 0, "cacheScope": "public" } }),
        ),
        "tools/call" => {
            let name = message["params"]["name"].as_str().unwrap_or_default();
            if header_str(&headers, "mcp-name") != name {
                return mismatch("Mcp-Name");
            }
            match name {
                "slow" => {
                    let progress = json!({ "jsonrpc": "2.0", "method": "notifications/progress",
                        "params": { "progressToken": meta["progressToken"], "progress": 1 } });
                    let first = format!("event: message\ndata: {progress}\n\n");
                    let guard = CloseGuard(fixture.clone());
                    let stream = futures::stream::unfold(
                        (Some(first), guard),
                        |(first, guard)| async move {
                            match first {
                                Some(event) => {
                                    Some((Ok::<_, Infallible>(Bytes::from(event)), (None, guard)))
                                }
                                None => futures::future::pending().await,
                            }
                        },
                    );
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(stream))
                        .unwrap()
                }
                _ => json_response(
                    StatusCode::OK,
                    json!({ "jsonrpc": "2.0", "id": id, "result": { "resultType": "complete", "content": [], "seenMeta": meta } }),
                ),
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "Method not found" } }),
        ),
    }
}

async fn legacy_endpoint(
    State(fixture): State<Arc<Fixture>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == axum::http::Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let session = header_str(&headers, "mcp-session-id").to_owned();
    if method == axum::http::Method::DELETE {
        fixture
            .seen
            .lock()
            .unwrap()
            .push((headers.clone(), json!({ "DELETE": session })));
        fixture.sessions.lock().unwrap().remove(&session);
        return StatusCode::OK.into_response();
    }
    let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fixture
        .seen
        .lock()
        .unwrap()
        .push((headers.clone(), message.clone()));
    let id = message["id"].clone();
    match message["method"].as_str().unwrap_or_default() {
        "initialize" => {
            let n = fixture.initializes.fetch_add(1, Ordering::SeqCst);
            let session = format!("session-{n}");
            fixture.sessions.lock().unwrap().insert(session.clone());
            let result = json!({ "protocolVersion": "2025-06-18", "capabilities": { "tools": {} }, "serverInfo": { "name": "legacy-fixture", "version": "1" } });
            let mut response = json_response(
                StatusCode::OK,
                json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            );
            response
                .headers_mut()
                .insert("mcp-session-id", session.parse().unwrap());
            response
        }
        _ if !fixture.sessions.lock().unwrap().contains(&session) => {
            if session.is_empty() {
                json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32000, "message": "Bad Request: Server not initialized" } }),
                )
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
        "notifications/initialized" => StatusCode::ACCEPTED.into_response(),
        "tools/call" => json_response(
            StatusCode::OK,
            json!({ "jsonrpc": "2.0", "id": id, "result": { "content": [], "session": session } }),
        ),
        _ => json_response(
            StatusCode::OK,
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "Method not found" } }),
        ),
    }
}

async fn serve(fixture: Arc<Fixture>, modern: bool) -> String {
    let route = if modern {
        axum::routing::any(modern_endpoint)
    } else {
        axum::routing::any(legacy_endpoint)
    };
    let app = axum::Router::new().route("/mcp", route).with_state(fixture);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}/mcp")
}

fn with_bearer(mut config: portcullis_config::ServerConfig) -> portcullis_config::ServerConfig {
    if let portcullis_config::Transport::Http { credentials, .. } = &mut config.transport {
        *credentials = Some(Credentials::Bearer(Secret::new("gateway-token")));
    }
    config
}

// ---------------------------------------------------------------- modern

#[tokio::test]
async fn modern_upstream_gets_the_callers_meta_and_mirrored_headers() {
    init_tracing();
    let fixture = Arc::new(Fixture::default());
    let url = serve(fixture.clone(), true).await;
    let connector = HttpConnector::new(
        &with_bearer(http_server("modern", &url, false, Duration::from_secs(10))),
        http_client(),
    );
    let facts = connector.facts().await.unwrap();
    assert_eq!(facts.era, Era::Modern);
    assert_eq!(facts.server_info.unwrap()["name"], json!("modern-fixture"));
    let huge = "123456789012345678901234567890";
    let caller = caller("a", json!({ "elicitation": {} }));
    let mut exchange = connector
        .request(&caller, tool_call(huge, "echo", json!({ "x": 1 })))
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), huge);
    let seen_meta = &member(&response, "result")["seenMeta"];
    assert_eq!(
        seen_meta["io.modelcontextprotocol/clientCapabilities"],
        json!({ "elicitation": {} }),
        "the caller's own capabilities"
    );
    assert_eq!(
        seen_meta["io.modelcontextprotocol/clientInfo"]["name"],
        json!("upstream-test")
    );
    for (headers, _) in fixture.seen.lock().unwrap().iter() {
        assert_eq!(
            header_str(headers, "authorization"),
            "Bearer gateway-token",
            "only the gateway's credential"
        );
    }
    connector.shutdown().await;
}

#[tokio::test]
async fn modern_progress_is_remapped_and_dropping_the_exchange_closes_the_stream() {
    init_tracing();
    let fixture = Arc::new(Fixture::default());
    let url = serve(fixture.clone(), true).await;
    let connector = HttpConnector::new(
        &http_server("modern", &url, false, Duration::from_secs(10)),
        http_client(),
    );
    let call = request(
        "1",
        "tools/call",
        json!({ "name": "slow", "arguments": {}, "_meta": { "progressToken": "mine" } }),
    );
    let mut exchange = connector
        .request(&caller("a", json!({})), call)
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, exchange.events.recv())
        .await
        .unwrap()
        .unwrap();
    let UpstreamEvent::Notification(progress) = event else {
        panic!("expected progress")
    };
    assert_eq!(member(&progress, "params")["progressToken"], json!("mine"));
    let (_, sent) = fixture.seen.lock().unwrap().last().cloned().unwrap();
    assert_ne!(
        sent["params"]["_meta"]["progressToken"],
        json!("mine"),
        "upstream sees the gateway's token"
    );
    assert!(!fixture.slow_closed.load(Ordering::SeqCst));
    drop(exchange);
    assert!(
        eventually(|| fixture.slow_closed.load(Ordering::SeqCst)).await,
        "closing the stream is the modern cancel"
    );
    assert!(eventually(|| connector.in_flight() == 0).await);
}

#[tokio::test]
async fn http_timeout_gives_a_final_error() {
    init_tracing();
    let fixture = Arc::new(Fixture::default());
    let url = serve(fixture.clone(), true).await;
    let connector = HttpConnector::new(
        &http_server("modern", &url, false, Duration::from_millis(700)),
        http_client(),
    );
    connector.facts().await.unwrap();
    let mut exchange = connector
        .request(
            &caller("a", json!({})),
            tool_call("\"t\"", "slow", json!({})),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), "\"t\"");
    let error = member(&response, "error");
    assert_eq!(error["code"], json!(codes::UPSTREAM_TIMEOUT));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("upstream modern did not answer"),
        "{error}"
    );
    assert!(eventually(|| fixture.slow_closed.load(Ordering::SeqCst)).await);
}

#[tokio::test]
async fn too_many_http_calls_in_flight_is_overloaded() {
    init_tracing();
    let fixture = Arc::new(Fixture::default());
    let url = serve(fixture.clone(), true).await;
    let mut config = http_server("modern", &url, false, Duration::from_secs(10));
    config.max_in_flight = 1;
    let connector = HttpConnector::new(&config, http_client());
    let _slow = connector
        .request(&caller("a", json!({})), tool_call("1", "slow", json!({})))
        .await
        .unwrap();
    let refused = connector
        .request(&caller("a", json!({})), tool_call("2", "echo", json!({})))
        .await;
    assert!(matches!(refused, Err(UpstreamError::Overloaded { .. })));
}

#[tokio::test]
async fn unreachable_upstream_is_unavailable() {
    init_tracing();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    drop(listener);
    let connector = HttpConnector::new(
        &http_server("gone", &url, false, Duration::from_secs(5)),
        http_client(),
    );
    let refused = connector
        .request(&caller("a", json!({})), tool_call("1", "echo", json!({})))
        .await;
    assert!(
        matches!(refused, Err(UpstreamError::Unavailable { .. })),
        "{refused:?}"
    );
}

// ---------------------------------------------------------------- legacy (in-process)

#[tokio::test]
async fn legacy_sessions_are_per_caller_reinitialized_on_404_and_deleted_on_release() {
    init_tracing();
    let fixture = Arc::new(Fixture::default());
    let url = serve(fixture.clone(), false).await;
    let connector = HttpConnector::new(
        &with_bearer(http_server("legacy", &url, false, Duration::from_secs(10))),
        http_client(),
    );
    assert_eq!(connector.facts().await.unwrap().era, Era::Legacy);
    let probes = fixture.initializes.load(Ordering::SeqCst);

    let alice = caller("alice", json!({ "roots": {} }));
    let bob = caller("bob", json!({}));
    let mut a = connector
        .request(&alice, tool_call("1", "x", json!({})))
        .await
        .unwrap();
    let mut b = connector
        .request(&bob, tool_call("1", "x", json!({})))
        .await
        .unwrap();
    let session_a = member(&finish(&mut a).await.1, "result")["session"].clone();
    let session_b = member(&finish(&mut b).await.1, "result")["session"].clone();
    assert_ne!(session_a, session_b, "one upstream session per caller");
    assert_eq!(connector.sessions(), 2);
    {
        let seen = fixture.seen.lock().unwrap();
        let alice_init = seen.iter().rev().find(|(_, m)| {
            m["method"] == "initialize" && m["params"]["capabilities"] == json!({ "roots": {} })
        });
        assert!(
            alice_init.is_some(),
            "alice's session was initialized with alice's capabilities only"
        );
        assert!(
            seen.iter()
                .all(|(h, _)| header_str(h, "authorization") == "Bearer gateway-token")
        );
        let call = seen
            .iter()
            .find(|(_, m)| m["method"] == "tools/call")
            .unwrap();
        assert_eq!(header_str(&call.0, "mcp-protocol-version"), "2025-06-18");
    }

    // The upstream restarts and forgets every session: the next call re-initializes once.
    fixture.sessions.lock().unwrap().clear();
    let mut again = connector
        .request(&alice, tool_call("2", "x", json!({})))
        .await
        .unwrap();
    let (_, response) = finish(&mut again).await;
    assert_eq!(response.id().unwrap().get(), "2");
    assert_ne!(member(&response, "result")["session"], session_a);
    assert_eq!(fixture.initializes.load(Ordering::SeqCst), probes + 3);

    connector.release("alice").await;
    assert_eq!(connector.sessions(), 1);
    assert!(
        fixture
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.get("DELETE").is_some())
    );
    connector.shutdown().await;
}

// ---------------------------------------------------------------- server-everything

/// A server-everything process bound to 127.0.0.1 on an ephemeral port.
struct Everything {
    _child: tokio::process::Child,
    port: u16,
}

async fn everything(mode: &str) -> Option<Everything> {
    let peers = peers();
    let js = peers.everything_js()?;
    let mut child = tokio::process::Command::new(peers.node())
        .arg("-r")
        .arg(peers.loopback_preload())
        .arg(js)
        .arg(mode)
        .env("PORT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("[loopback-only] listening on 127.0.0.1:") {
                return rest.trim().parse::<u16>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("server-everything reports its port");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Everything {
        _child: child,
        port,
    })
}

#[tokio::test]
async fn legacy_streamable_http_server_is_detected_and_ids_restored() {
    init_tracing();
    let Some(server) = everything("streamableHttp").await else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let connector = HttpConnector::new(
        &http_server("everything", &url, false, Duration::from_secs(20)),
        http_client(),
    );
    let facts = connector.facts().await.unwrap();
    assert_eq!(facts.era, Era::Legacy);
    assert_eq!(facts.protocol_version, "2025-11-25");
    assert!(!connector.is_legacy_sse().await.unwrap());
    let huge = "123456789012345678901234567890";
    let mut exchange = connector
        .request(
            &caller("a", json!({})),
            tool_call(huge, "get-sum", json!({ "a": 2, "b": 3 })),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), huge);
    assert!(
        text(&response).contains("The sum of 2 and 3 is 5"),
        "{}",
        text(&response)
    );
    connector.shutdown().await;
}

#[tokio::test]
async fn http_progress_of_two_callers_with_the_same_token() {
    init_tracing();
    let Some(server) = everything("streamableHttp").await else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let connector = HttpConnector::new(
        &http_server("everything", &url, false, Duration::from_secs(20)),
        http_client(),
    );
    let call = || {
        request(
            "\"same-id\"",
            "tools/call",
            json!({ "name": "trigger-long-running-operation", "arguments": { "duration": 1, "steps": 2 }, "_meta": { "progressToken": 7 } }),
        )
    };
    let mut a = connector
        .request(&caller("a", json!({})), call())
        .await
        .unwrap();
    let mut b = connector
        .request(&caller("b", json!({})), call())
        .await
        .unwrap();
    let ((progress_a, response_a), (progress_b, response_b)) =
        tokio::join!(finish(&mut a), finish(&mut b));
    for (progress, response) in [(progress_a, response_a), (progress_b, response_b)] {
        assert_eq!(response.id().unwrap().get(), "\"same-id\"");
        assert_eq!(progress.len(), 2);
        assert!(
            progress
                .iter()
                .all(|n| member(n, "params")["progressToken"] == json!(7))
        );
    }
    connector.shutdown().await;
}

#[tokio::test]
async fn http_sampling_request_is_answered_through_the_reply_channel() {
    init_tracing();
    let Some(server) = everything("streamableHttp").await else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let connector = HttpConnector::new(
        &http_server("everything", &url, false, Duration::from_secs(20)),
        http_client(),
    );
    let call = tool_call(
        "1",
        "trigger-sampling-request",
        json!({ "prompt": "hi", "maxTokens": 5 }),
    );
    let mut exchange = connector
        .request(&caller("sampler", json!({ "sampling": {} })), call)
        .await
        .unwrap();
    let response = loop {
        match tokio::time::timeout(WAIT, exchange.events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            UpstreamEvent::Request { request, reply } => {
                assert_eq!(request.method(), Some("sampling/createMessage"));
                reply
                    .send(parse(r#"{"jsonrpc":"2.0","id":1,"result":{"role":"assistant","content":{"type":"text","text":"canned over http"},"model":"t"}}"#))
                    .unwrap();
            }
            UpstreamEvent::Notification(_) => {}
            UpstreamEvent::Response(response) => break response,
        }
    };
    assert!(
        text(&response).contains("canned over http"),
        "{}",
        text(&response)
    );
    connector.shutdown().await;
}

#[tokio::test]
async fn legacy_http_sse_server_is_found_by_fallback() {
    init_tracing();
    let Some(server) = everything("sse").await else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/sse", server.port);
    let connector = HttpConnector::new(
        &http_server("old", &url, false, Duration::from_secs(20)),
        http_client(),
    );
    assert!(connector.is_legacy_sse().await.unwrap());
    assert_eq!(connector.facts().await.unwrap().era, Era::Legacy);
    let mut exchange = connector
        .request(
            &caller("a", json!({})),
            tool_call("\"sse-1\"", "echo", json!({ "message": "via sse" })),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), "\"sse-1\"");
    assert!(text(&response).contains("via sse"), "{}", text(&response));
    let call = request(
        "2",
        "tools/call",
        json!({ "name": "trigger-long-running-operation", "arguments": { "duration": 1, "steps": 2 }, "_meta": { "progressToken": "p" } }),
    );
    let mut exchange = connector
        .request(&caller("a", json!({})), call)
        .await
        .unwrap();
    let (progress, _) = finish(&mut exchange).await;
    assert_eq!(progress.len(), 2);
    assert!(
        progress
            .iter()
            .all(|n| member(n, "params")["progressToken"] == json!("p"))
    );
    connector.shutdown().await;

    // Configured explicitly, no probing.
    let connector = HttpConnector::new(
        &http_server("old", &url, true, Duration::from_secs(20)),
        http_client(),
    );
    let mut exchange = connector
        .request(
            &caller("b", json!({})),
            tool_call("3", "get-sum", json!({ "a": 1, "b": 2 })),
        )
        .await
        .unwrap();
    assert!(text(&finish(&mut exchange).await.1).contains("The sum of 1 and 2 is 3"));
    connector.shutdown().await;
}
