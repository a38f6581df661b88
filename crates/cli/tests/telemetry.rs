//! OpenTelemetry traces over OTLP/HTTP, end to end: the in-process gateway in front of a
//! recording upstream (which answers with the `traceparent` it received), exporting to a
//! loopback OTLP/HTTP receiver written here. A client → gateway phases → upstream call is one
//! trace; denials are error spans naming their rule; sampling follows the client's flag; queued
//! spans are sent at shutdown; a receiver that hangs neither fails nor holds calls (its spans are
//! dropped and counted in `/metrics`).

mod audit_upstream;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use support::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A loopback OTLP/HTTP traces receiver: keeps every span it is sent, and the `x-otlp-key`
/// header of each request.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<String>>>,
}

type Shared = (Arc<Mutex<Vec<Value>>>, Arc<Mutex<Vec<String>>>);

async fn receive(
    State((spans, keys)): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    if let Some(key) = headers.get("x-otlp-key").and_then(|v| v.to_str().ok()) {
        keys.lock().unwrap().push(key.to_owned());
    }
    let request: Value = serde_json::from_slice(&body).expect("OTLP/JSON body");
    for resource in request["resourceSpans"].as_array().expect("resourceSpans") {
        assert_eq!(
            resource["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "gw-test"}})
        );
        for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
            let new = scope["spans"].as_array().expect("spans").clone();
            spans.lock().unwrap().extend(new);
        }
    }
    "{}"
}

async fn start_receiver() -> Receiver {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state((spans.clone(), keys.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, spans, keys }
}

impl Receiver {
    /// The spans of `trace_id` once its `mcp.request` span with JSON-RPC id `request_id` arrived.
    async fn trace(&self, trace_id: &str, request_id: &str) -> Vec<Value> {
        poll(Duration::from_secs(10), || async {
            let spans = self.spans.lock().unwrap();
            let of_trace: Vec<Value> = spans
                .iter()
                .filter(|s| s["traceId"] == trace_id)
                .cloned()
                .collect();
            of_trace
                .iter()
                .any(|s| {
                    s["name"] == "mcp.request"
                        && attr(s, "rpc.jsonrpc.request_id").as_deref() == Some(request_id)
                })
                .then_some(of_trace)
        })
        .await
        .unwrap_or_else(|| panic!("no mcp.request span for trace {trace_id} id {request_id}"))
    }
}

/// A span attribute's value as a string (`stringValue` or `intValue`).
fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .or(v["intValue"].as_str())
                .map(str::to_owned)
        })
}

fn nanos(span: &Value, key: &str) -> u128 {
    span[key].as_str().unwrap().parse().unwrap()
}

/// The `mcp.request` span among `spans` with JSON-RPC id `request_id`, and its children.
fn request_and_children(spans: &[Value], request_id: &str) -> (Value, Vec<Value>) {
    let server = spans
        .iter()
        .find(|s| {
            s["name"] == "mcp.request"
                && attr(s, "rpc.jsonrpc.request_id").as_deref() == Some(request_id)
        })
        .unwrap()
        .clone();
    let children = spans
        .iter()
        .filter(|s| s["parentSpanId"] == server["spanId"])
        .cloned()
        .collect();
    (server, children)
}

fn names(spans: &[Value]) -> Vec<String> {
    spans
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A gateway with the recording upstream `rec`, bob denied `rec__echo`, and `telemetry`.
async fn traced_gateway(
    upstream: &audit_upstream::Recorder,
    dir: &TempDir,
    telemetry: &str,
) -> Gateway {
    let key_file = dir.0.join("otlp.key");
    std::fs::write(&key_file, "k-123\n").unwrap();
    let yaml = format!(
        "rules:\n  - {{ id: no-echo-for-bob, deny: {{ agents: [bob], tools: [\"rec__echo\"] }} }}\n  - {{ id: everyone, allow: {{}} }}\ntelemetry:\n  service_name: gw-test\n  headers: {{ x-otlp-key: {{ file: \"{}\" }} }}\n{telemetry}",
        key_file.display()
    );
    gateway_with_servers(&[("rec", format!("{{ url: {} }}", upstream.url))], &yaml).await
}

/// A `tools/call` of `echo` on `/mcp/rec` with the client's `traceparent` header.
async fn call_with_trace(
    gw: &Gateway,
    client: &LegacyClient<'_>,
    token: &str,
    id: u64,
    traceparent: &str,
) -> Answer {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":"t"}}});
    post_raw(
        gw,
        "/mcp/rec",
        Some(token),
        &[
            ("mcp-session-id", &client.session),
            ("mcp-protocol-version", LEGACY),
            ("traceparent", traceparent),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_call_is_one_trace_from_the_client_through_the_gateway_phases_to_the_upstream() {
    let receiver = start_receiver().await;
    let upstream = audit_upstream::start().await;
    let dir = TempDir::new("telemetry-trace");
    let gw = traced_gateway(
        &upstream,
        &dir,
        &format!("  otlp_traces: \"{}\"\n  interval: 100ms\n", receiver.url),
    )
    .await;
    let client = LegacyClient::connect(&gw, "/mcp/rec", ALICE, json!({})).await;
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let answer = call_with_trace(&gw, &client, ALICE, 41, &parent).await;
    // What the upstream received: the client's trace, the gateway's span as parent.
    let seen = first_text(&answer);
    let upstream_parent = seen
        .strip_prefix(&format!("00-{CLIENT_TRACE}-"))
        .and_then(|rest| rest.strip_suffix("-01"))
        .unwrap_or_else(|| panic!("upstream saw {seen}"));

    let spans = receiver.trace(CLIENT_TRACE, "41").await;
    let (server, children) = request_and_children(&spans, "41");
    // The gateway's server span continues the client's span.
    assert_eq!(server["parentSpanId"], CLIENT_SPAN);
    assert_eq!(server["kind"], 2, "SPAN_KIND_SERVER");
    assert!(server.get("status").is_none(), "{server}");
    for (key, value) in [
        ("mcp.method", "tools/call"),
        ("mcp.server", "rec"),
        ("mcp.tool", "rec__echo"),
        ("portcullis.agent", "alice"),
        ("portcullis.decision", "allow"),
        ("portcullis.rule", "everyone"),
        ("portcullis.outcome", "ok"),
    ] {
        assert_eq!(
            attr(&server, key).as_deref(),
            Some(value),
            "{key} in {server}"
        );
    }
    // One child per phase, in the order they ran, inside the request's span.
    assert_eq!(
        names(&children),
        [
            "authenticate",
            "admit",
            "policy",
            "scan.request",
            "audit.decision",
            "upstream",
            "scan.response",
            "audit.outcome"
        ],
        "{children:#?}"
    );
    let (start, end) = (
        nanos(&server, "startTimeUnixNano"),
        nanos(&server, "endTimeUnixNano"),
    );
    let mut previous_end = start;
    for child in &children {
        let (s, e) = (
            nanos(child, "startTimeUnixNano"),
            nanos(child, "endTimeUnixNano"),
        );
        assert!(
            previous_end <= s && s <= e && e <= end,
            "{child} outside its parent [{start}, {end}] or before the previous phase"
        );
        previous_end = e;
        assert_eq!(child["traceId"], CLIENT_TRACE);
    }
    // The upstream's traceparent names the gateway's `upstream` client span, so the upstream's
    // own spans nest under it.
    let upstream_span = children.iter().find(|s| s["name"] == "upstream").unwrap();
    assert_eq!(upstream_span["spanId"], upstream_parent);
    assert_eq!(upstream_span["kind"], 3, "SPAN_KIND_CLIENT");
    // Span ids are distinct 16-hex-digit ids.
    let mut ids: Vec<&str> = spans
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    assert!(
        ids.iter()
            .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), spans.len());
    // The configured header (from a file) reached the receiver.
    assert!(receiver.keys.lock().unwrap().iter().all(|k| k == "k-123"));
    assert!(!receiver.keys.lock().unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_denied_call_is_an_error_span_naming_its_rule() {
    let receiver = start_receiver().await;
    let upstream = audit_upstream::start().await;
    let dir = TempDir::new("telemetry-deny");
    let gw = traced_gateway(
        &upstream,
        &dir,
        &format!("  otlp_traces: \"{}\"\n  interval: 100ms\n", receiver.url),
    )
    .await;
    let client = LegacyClient::connect(&gw, "/mcp/rec", BOB, json!({})).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = call_with_trace(
        &gw,
        &client,
        BOB,
        9,
        &format!("00-{trace}-b7ad6b7169203331-01"),
    )
    .await;
    let code = answer.last()["error"]["code"].as_i64().expect("denied");
    assert_eq!(
        upstream.count(),
        0,
        "a denied call never reaches the upstream"
    );

    let spans = receiver.trace(trace, "9").await;
    let (server, children) = request_and_children(&spans, "9");
    assert_eq!(server["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(server["status"]["code"], 2, "STATUS_CODE_ERROR: {server}");
    assert!(
        server["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&code.to_string()),
        "{server}"
    );
    assert_eq!(
        attr(&server, "portcullis.rule").as_deref(),
        Some("no-echo-for-bob")
    );
    assert_eq!(
        attr(&server, "portcullis.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(attr(&server, "portcullis.agent").as_deref(), Some("bob"));
    assert_eq!(
        attr(&server, "portcullis.outcome").as_deref(),
        Some("error")
    );
    assert_eq!(
        attr(&server, "rpc.jsonrpc.error_code"),
        Some(code.to_string())
    );
    // The phase that refused carries the error; nothing went upstream.
    assert_eq!(names(&children), ["authenticate", "admit", "policy"]);
    assert_eq!(children[2]["status"]["code"], 2, "{:?}", children[2]);
    assert!(children[1].get("status").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn sampling_follows_the_clients_flag_and_the_ratio_and_shutdown_flushes() {
    let receiver = start_receiver().await;
    let upstream = audit_upstream::start().await;
    let dir = TempDir::new("telemetry-sampling");
    // Nothing of the gateway's own traces (ratio 0), and no periodic flush within the test.
    let gw = traced_gateway(
        &upstream,
        &dir,
        &format!(
            "  otlp_traces: \"{}\"\n  sample_ratio: 0\n  interval: 1h\n",
            receiver.url
        ),
    )
    .await;
    let mut client = LegacyClient::connect(&gw, "/mcp/rec", ALICE, json!({})).await;
    let sampled = "11111111111111111111111111111111";
    let unsampled = "22222222222222222222222222222222";
    call_with_trace(
        &gw,
        &client,
        ALICE,
        1,
        &format!("00-{sampled}-1111111111111111-01"),
    )
    .await;
    call_with_trace(
        &gw,
        &client,
        ALICE,
        2,
        &format!("00-{unsampled}-2222222222222222-00"),
    )
    .await;
    // No traceparent: the gateway starts the trace, and ratio 0 records none of those.
    let answer = client
        .request(
            "tools/call",
            json!({"name":"echo","arguments":{"text":"x"}}),
        )
        .await;
    let minted = first_text(&answer);
    assert_eq!(upstream.count(), 3);
    assert!(
        receiver.spans.lock().unwrap().is_empty(),
        "nothing is sent before the interval or a full batch"
    );
    // Stopping the gateway sends what is queued.
    gw.stop().await;
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(!spans.is_empty(), "queued spans were flushed at shutdown");
    assert!(spans.iter().all(|s| s["traceId"] == sampled), "{spans:#?}");
    assert!(
        !spans
            .iter()
            .any(|s| minted.contains(s["traceId"].as_str().unwrap()))
    );
    let (server, _) = request_and_children(&spans, "1");
    assert_eq!(server["parentSpanId"], "1111111111111111");
}

/// Accepts connections and never answers: an OTLP receiver that hangs.
async fn hanging_receiver() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // kept open, never read or answered
        }
    });
    (url, task)
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hanging_receiver_neither_fails_nor_holds_calls_and_drops_are_counted() {
    let (url, receiver) = hanging_receiver().await;
    let upstream = audit_upstream::start().await;
    let dir = TempDir::new("telemetry-down");
    // A small queue: the first batch hangs in flight, the queue fills, the rest are dropped.
    let gw = traced_gateway(
        &upstream,
        &dir,
        &format!(
            "  otlp_traces: \"{url}\"\n  interval: 100ms\n  batch_size: 10\n  max_queued_spans: 20\n  timeout: 30s\n"
        ),
    )
    .await;
    let mut client = LegacyClient::connect(&gw, "/mcp/rec", ALICE, json!({})).await;
    for i in 0..30 {
        let answer = client
            .request(
                "tools/call",
                json!({"name":"echo","arguments":{"text":format!("{i}")}}),
            )
            .await;
        assert!(answer.last().get("result").is_some(), "{answer:?}");
        if i == 0 {
            // Let the exporter take the first batch and hang on it.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(upstream.count(), 30);
    let metrics = gw.metrics_text().await;
    let dropped = counter(
        &metrics,
        "portcullis_trace_spans_dropped_total{reason=\"queue_full\"}",
    );
    assert!(dropped > 0, "{metrics}");
    let queued = counter(&metrics, "portcullis_trace_spans_queued ");
    assert!(queued <= 20, "the queue stays within its bound: {metrics}");
    assert_eq!(
        counter(&metrics, "portcullis_trace_spans_exported_total"),
        0
    );
    // Shutdown does not wait on the hanging receiver beyond its bounded flush.
    gw.stop().await;
    receiver.abort();
}
