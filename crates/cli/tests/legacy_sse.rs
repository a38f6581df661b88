//! The legacy HTTP+SSE transport (2024-11-05) served by the gateway: `GET /sse` and
//! `GET /mcp/{server}/sse` streams with POSTs to `/message?sessionId=…`, driven with raw HTTP
//! and with the MCP Inspector CLI (an old-transport client from the official tooling).

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_core::sse::{SseEvent, SseParser};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const OLD: &str = "2024-11-05";

/// One open GET stream.
struct Connection {
    response: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    /// The POST URL from the `endpoint` event, made absolute.
    endpoint: String,
}

impl Connection {
    async fn open(gw: &Gateway, path: &str, token: &str) -> Connection {
        let response = gw
            .http
            .get(format!("{}{path}", gw.base))
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut connection = Connection {
            response,
            parser: SseParser::new(1 << 20),
            pending: VecDeque::new(),
            endpoint: String::new(),
        };
        let first = connection.event().await;
        assert_eq!(first.event.as_deref(), Some("endpoint"), "{first:?}");
        assert!(first.data.starts_with("/message?sessionId="), "{first:?}");
        connection.endpoint = format!("{}{}", gw.base, first.data);
        connection
    }

    async fn event(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event within the timeout")
                .unwrap();
            let chunk = chunk.expect("the stream is still open");
            self.pending.extend(self.parser.push(&chunk).unwrap());
        }
    }

    /// The next `message` event, as JSON.
    async fn message(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event.event.is_none() || event.event.as_deref() == Some("message") {
                return serde_json::from_str(&event.data)
                    .unwrap_or_else(|e| panic!("{e}: {event:?}"));
            }
        }
    }

    /// The response to `id`, skipping other messages.
    async fn response(&mut self, id: &Value) -> Value {
        loop {
            let message = self.message().await;
            if message.get("id") == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                return message;
            }
        }
    }

    async fn post(&self, gw: &Gateway, token: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = gw
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send().await.unwrap()
    }

    async fn request(&mut self, gw: &Gateway, id: Value, method: &str, params: Value) -> Value {
        let status = self
            .post(
                gw,
                Some(ALICE),
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            )
            .await
            .status();
        assert_eq!(status, 202);
        self.response(&id).await
    }

    async fn initialize(&mut self, gw: &Gateway) -> Value {
        self.initialize_with(gw, json!({})).await
    }

    async fn initialize_with(&mut self, gw: &Gateway, capabilities: Value) -> Value {
        let params = json!({"protocolVersion": OLD, "capabilities": capabilities, "clientInfo": {"name": "old-client", "version": "0"}});
        let init = self.request(gw, json!(0), "initialize", params).await;
        let status = self
            .post(
                gw,
                Some(ALICE),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await
            .status();
        assert_eq!(status, 202);
        init
    }
}

async fn open_sessions(gw: &Gateway) -> u64 {
    let ready: Value = serde_json::from_str(
        &gw.http
            .get(format!("{}/readyz", gw.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    ready["sessions"].as_u64().unwrap()
}

#[tokio::test]
async fn old_client_uses_the_aggregate_over_http_sse() {
    let gw = gateway().await;
    let mut connection = Connection::open(&gw, "/sse", ALICE).await;

    // Before initialize only ping is served.
    let early = connection
        .request(&gw, json!("early"), "tools/list", json!({}))
        .await;
    assert_eq!(early["error"]["code"], -32600, "{early}");

    let init = connection.initialize(&gw).await;
    assert_eq!(init["result"]["protocolVersion"], OLD, "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "portcullis", "{init}");
    assert_eq!(open_sessions(&gw).await, 1);

    let list = connection
        .request(&gw, json!(1), "tools/list", json!({}))
        .await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"demo__echo"), "{names:?}");

    let call = connection
        .request(
            &gw,
            json!("c"),
            "tools/call",
            json!({"name": "demo__echo", "arguments": {"text": "over old sse"}}),
        )
        .await;
    assert_eq!(
        call["result"]["content"][0]["text"], "over old sse",
        "{call}"
    );

    let ping = connection.request(&gw, json!(3), "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}), "{ping}");

    // A second initialize on the same connection is refused.
    let again = connection
        .request(
            &gw,
            json!(4),
            "initialize",
            json!({"protocolVersion": OLD, "capabilities": {}}),
        )
        .await;
    assert_eq!(again["error"]["code"], -32600, "{again}");

    // Another principal cannot use the connection (404 like an unknown id); no token is 401.
    let foreign = connection
        .post(
            &gw,
            Some(BOB),
            json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
        )
        .await;
    assert_eq!(foreign.status(), 404);
    let anonymous = connection
        .post(
            &gw,
            None,
            json!({"jsonrpc": "2.0", "id": 6, "method": "ping"}),
        )
        .await;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let unknown = gw
        .http
        .post(format!(
            "{}/message?sessionId=0123456789abcdef0123456789abcdef",
            gw.base
        ))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    // The connection still works for its owner, and nothing leaked onto its stream.
    let after = connection.request(&gw, json!(8), "ping", json!({})).await;
    assert_eq!(after["result"], json!({}));

    // Closing the stream ends the session; the connection id is dead afterwards.
    let endpoint = connection.endpoint.clone();
    drop(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_sessions(&gw).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closing the stream did not end the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = gw
        .http
        .post(endpoint)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn server_route_and_edge_checks() {
    let gw = gateway().await;
    let mut connection = Connection::open(&gw, "/mcp/demo/sse", ALICE).await;
    connection.initialize(&gw).await;
    let list = connection
        .request(&gw, json!(1), "tools/list", json!({}))
        .await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    let call = connection
        .request(
            &gw,
            json!(2),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "transparent"}}),
        )
        .await;
    assert_eq!(
        call["result"]["content"][0]["text"], "transparent",
        "{call}"
    );
    drop(connection);

    let get = |path: &str, token: Option<&str>, origin: Option<&str>| {
        let mut request = gw
            .http
            .get(format!("{}{path}", gw.base))
            .header("accept", "text/event-stream");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let unauthenticated = get("/sse", None, None).await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert!(unauthenticated.headers().contains_key("www-authenticate"));
    assert_eq!(
        get("/sse", Some("wrong"), None).await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/sse", Some(ALICE), Some("http://evil.example"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        get("/mcp/nosuch/sse", Some(ALICE), None)
            .await
            .unwrap()
            .status(),
        404
    );
    gw.stop().await;
}

/// A server→client request (elicitation) raised during a call reaches the client as a
/// `message` event; the client's answer, POSTed back, completes the call.
#[tokio::test]
async fn server_requests_go_out_on_the_stream_and_answers_come_back() {
    let gw = gateway().await;
    let mut connection = Connection::open(&gw, "/sse", ALICE).await;
    connection
        .initialize_with(&gw, json!({"elicitation": {}}))
        .await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "demo__test_elicitation", "arguments": {"message": "who are you?"}}});
    assert_eq!(connection.post(&gw, Some(ALICE), call).await.status(), 202);
    let request = loop {
        let message = connection.message().await;
        if message["method"] == "elicitation/create" {
            break message;
        }
        assert!(
            message.get("id") != Some(&json!(1)),
            "the call ended before asking: {message}"
        );
    };
    assert_eq!(request["params"]["message"], "who are you?", "{request}");
    let answer = json!({"jsonrpc": "2.0", "id": request["id"],
        "result": {"action": "accept", "content": {"username": "old-timer", "email": "old@example.com"}}});
    assert_eq!(
        connection.post(&gw, Some(ALICE), answer).await.status(),
        202
    );
    let result = connection.response(&json!(1)).await;
    let text = result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    assert!(
        text.contains("accept") && text.contains("old-timer"),
        "{text}"
    );
    drop(connection);
    gw.stop().await;
}

/// The MCP Inspector CLI (from `.mcp-peers`) as an old HTTP+SSE client.
#[tokio::test]
async fn mcp_inspector_cli_over_http_sse() {
    let peers = peers();
    let path_of = |key: &str| peers.path(key, key);
    let inspector = path_of("INSPECTOR");
    let node_bin = path_of("NODE22_BIN");
    let run_dir = path_of("PEERS_RUN");
    assert!(
        inspector.exists(),
        "{} is missing; run scripts/install-peers.sh",
        inspector.display()
    );
    let path = format!(
        "{}:{}",
        node_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let gw = gateway().await;
    let url = format!("{}/sse", gw.base);
    let inspect = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(&inspector);
        command
            .args(["--cli", &url, "--transport", "sse"])
            .args(&args)
            .args([
                "--header",
                &format!("Authorization: Bearer {ALICE}"),
                "--format",
                "json",
                "-q",
            ])
            .env("PATH", &path)
            .env("MCP_CATALOG_PATH", run_dir.join("inspector-catalog.json"))
            .kill_on_drop(true);
        async move {
            let output = tokio::time::timeout(Duration::from_secs(90), command.output())
                .await
                .expect("the inspector finishes")
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(
                output.status.success(),
                "inspector {args:?} failed: {stdout}\n{stderr}"
            );
            stdout
        }
    };
    let list = inspect(vec!["--method".into(), "tools/list".into()]).await;
    assert!(list.contains("\"demo__echo\""), "{list}");
    let call = inspect(
        [
            "--method",
            "tools/call",
            "--tool-name",
            "demo__echo",
            "--tool-arg",
            "text=via-inspector-sse",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(call.contains("via-inspector-sse"), "{call}");
    // The inspector's connections are closed, so their sessions ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_sessions(&gw).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "inspector sessions were not ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.stop().await;
}

/// Stopping the gateway ends open HTTP+SSE streams instead of waiting for them forever.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let gw = gateway().await;
    let mut connection = Connection::open(&gw, "/sse", ALICE).await;
    connection.initialize(&gw).await;
    gw.stop().await; // panics when the gateway does not stop in time
    let end = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = connection.response.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream was not closed");
}
