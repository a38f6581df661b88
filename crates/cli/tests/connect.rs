//! `portcullis connect`: the real binary as a stdio bridge in front of an in-process gateway,
//! driven line by line over its stdin/stdout, and by the official Python SDK's stdio client.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(30);

/// A running `portcullis connect` with piped stdio.
struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Messages read while waiting for something else.
    seen: Vec<Value>,
}

impl Bridge {
    fn spawn(url: &str, token: Option<&str>) -> Bridge {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .arg("connect")
            .arg(url)
            .env_remove("PORTCULLIS_TOKEN")
            .env("PORTCULLIS_LOG", "debug");
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("portcullis connect starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Bridge {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let mut line = message.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next line of stdout, which must be one JSON-RPC message.
    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("a message within the timeout")
            .unwrap()
            .expect("stdout still open");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
    }

    /// Sends a request and returns its response (other messages are kept in `seen`).
    async fn request(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.response(&id).await
    }

    async fn response(&mut self, id: &Value) -> Value {
        let answers = |message: &Value| {
            message.get("id") == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
        };
        if let Some(i) = self.seen.iter().position(answers) {
            return self.seen.remove(i);
        }
        loop {
            let message = self.recv().await;
            if answers(&message) {
                return message;
            }
            self.seen.push(message);
        }
    }

    /// Closes stdin and waits for the exit status.
    async fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits after stdin EOF")
            .unwrap()
    }
}

fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "connect-test", "version": "0"}
    })
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
async fn legacy_and_modern_clients_talk_through_the_bridge() {
    let gw = gateway().await;
    let mut bridge = Bridge::spawn(&format!("{}/mcp", gw.base), Some(ALICE));

    let init = bridge
        .request(json!(0), "initialize", json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}))
        .await;
    assert_eq!(init["result"]["protocolVersion"], LEGACY, "{init}");
    bridge
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(open_sessions(&gw).await, 1);

    let list = bridge.request(json!(1), "tools/list", json!({})).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"demo__echo"), "{names:?}");

    let call = bridge
        .request(
            json!("call-2"),
            "tools/call",
            json!({"name": "demo__echo", "arguments": {"text": "through connect"}}),
        )
        .await;
    assert_eq!(
        call["result"]["content"][0]["text"], "through connect",
        "{call}"
    );

    // Several requests in flight at once, answered whatever the order.
    for id in 10..15 {
        let text = format!("parallel {id}");
        bridge.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "demo__echo", "arguments": {"text": text}}})).await;
    }
    bridge
        .send(json!({"jsonrpc": "2.0", "id": 20, "method": "ping"}))
        .await;
    for id in (10..15).chain([20]) {
        let answer = bridge.response(&json!(id)).await;
        assert!(answer.get("result").is_some(), "{answer}");
        if id != 20 {
            assert_eq!(
                answer["result"]["content"][0]["text"],
                format!("parallel {id}")
            );
        }
    }

    // A modern (2026-07-28) request on the same bridge: stateless, with mirrored headers.
    let modern = bridge
        .request(json!(30), "tools/call", json!({"name": "demo__echo", "arguments": {"text": "modern via connect"}, "_meta": modern_meta()}))
        .await;
    assert_eq!(
        modern["result"]["content"][0]["text"], "modern via connect",
        "{modern}"
    );
    assert_eq!(modern["result"]["resultType"], "complete", "{modern}");

    // Mcp-Param-* headers: the bridge learns x-mcp-header annotations from a modern tools/list
    // and mirrors annotated arguments (the gateway refuses the call with -32020 otherwise).
    let list = bridge
        .request(json!(32), "tools/list", json!({"_meta": modern_meta()}))
        .await;
    assert!(
        list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "demo__test_header_params"),
        "{list}"
    );
    let params = json!({"name": "demo__test_header_params", "arguments": {"region": "eu-west", "priority": 3}, "_meta": modern_meta()});
    let mirrored = bridge.request(json!(33), "tools/call", params).await;
    assert!(mirrored.get("result").is_some(), "{mirrored}");
    assert_ne!(mirrored["result"]["isError"], true, "{mirrored}");

    // An unknown tool is the gateway's own JSON-RPC error, relayed unchanged.
    let unknown = bridge
        .request(
            json!(31),
            "tools/call",
            json!({"name": "nosuch__echo", "arguments": {}}),
        )
        .await;
    assert_eq!(unknown["error"]["code"], -31002, "{unknown}");

    let status = bridge.close().await;
    assert!(status.success(), "{status:?}");
    // stdin EOF ended the session with DELETE.
    assert_eq!(open_sessions(&gw).await, 0);
    gw.stop().await;
}

/// A server→client request arrives on stdout while its tools/call is in flight; the client's
/// answer on stdin is POSTed back and the call completes.
#[tokio::test]
async fn server_requests_are_answered_through_the_bridge() {
    let gw = gateway().await;
    let mut bridge = Bridge::spawn(&format!("{}/mcp", gw.base), Some(ALICE));
    let init = json!({"protocolVersion": LEGACY, "capabilities": {"elicitation": {}}, "clientInfo": {"name": "t", "version": "0"}});
    bridge.request(json!(0), "initialize", init).await;
    bridge
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    bridge
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "demo__test_elicitation", "arguments": {"message": "name?"}}}))
        .await;
    let request = loop {
        let message = bridge.recv().await;
        if message["method"] == "elicitation/create" {
            break message;
        }
        assert!(
            message.get("id") != Some(&json!(1)),
            "the call ended before asking: {message}"
        );
    };
    // While the call waits for the answer, other requests are served.
    let ping = bridge.request(json!(2), "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}));
    bridge
        .send(json!({"jsonrpc": "2.0", "id": request["id"],
            "result": {"action": "accept", "content": {"username": "bridged", "email": "b@example.com"}}}))
        .await;
    let result = bridge.response(&json!(1)).await;
    let text = result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    assert!(text.contains("bridged"), "{text}");

    // notifications/cancelled abandons a call in flight: no answer is written for it.
    bridge
        .send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "demo__test_elicitation", "arguments": {"message": "again?"}}}))
        .await;
    loop {
        let message = bridge.recv().await;
        if message["method"] == "elicitation/create" {
            break;
        }
    }
    bridge.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3, "reason": "changed my mind"}})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ping = bridge.request(json!(4), "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}));
    assert!(
        bridge.seen.iter().all(|m| m.get("id") != Some(&json!(3))),
        "{:?}",
        bridge.seen
    );
    assert!(bridge.close().await.success());
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_or_missing_token_is_a_json_rpc_error() {
    let gw = gateway().await;
    let url = format!("{}/mcp", gw.base);
    let init = json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}});

    let mut bridge = Bridge::spawn(&url, Some("not-a-valid-token"));
    let answer = bridge.request(json!(1), "initialize", init.clone()).await;
    assert_eq!(answer["error"]["code"], -31090, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("token") && message.contains("401"),
        "{message}"
    );
    // A notification gets no answer; the next request still does.
    bridge
        .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    let ping = bridge.request(json!(2), "ping", json!({})).await;
    assert_eq!(ping["error"]["code"], -31090, "{ping}");
    assert!(bridge.seen.is_empty(), "{:?}", bridge.seen);
    assert!(bridge.close().await.success());

    let mut bridge = Bridge::spawn(&url, None);
    let answer = bridge.request(json!("x"), "initialize", init).await;
    assert_eq!(answer["error"]["code"], -31090, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PORTCULLIS_TOKEN"),
        "{answer}"
    );
    assert!(bridge.close().await.success());
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_gateway_and_unknown_session_are_reported() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bridge = Bridge::spawn(&format!("http://127.0.0.1:{port}/mcp"), Some(ALICE));
    let answer = bridge
        .request(json!(1), "tools/list", json!({"_meta": modern_meta()}))
        .await;
    assert_eq!(answer["error"]["code"], -31092, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{answer}"
    );
    assert!(bridge.close().await.success());

    // A legacy session the gateway no longer knows (reaped after 1 s idle): the client is told
    // to initialize again.
    let gw = gateway_with("limits:\n  session_idle_timeout: 1s\n").await;
    let mut bridge = Bridge::spawn(&format!("{}/mcp", gw.base), Some(ALICE));
    let init = json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}});
    bridge.request(json!(0), "initialize", init.clone()).await;
    assert_eq!(open_sessions(&gw).await, 1);
    let reaped = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_sessions(&gw).await > 0 {
        assert!(
            tokio::time::Instant::now() < reaped,
            "the idle session was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = bridge.request(json!(1), "tools/list", json!({})).await;
    assert_eq!(answer["error"]["code"], -31091, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("initialize again"),
        "{answer}"
    );
    // Re-initializing works.
    let again = bridge.request(json!(2), "initialize", init).await;
    assert_eq!(again["result"]["protocolVersion"], LEGACY, "{again}");
    let list = bridge.request(json!(3), "tools/list", json!({})).await;
    assert!(list["result"]["tools"].is_array(), "{list}");
    assert!(bridge.close().await.success());
    gw.stop().await;
}

#[tokio::test]
async fn stdin_eof_exits_zero() {
    let gw = gateway().await;
    let bridge = Bridge::spawn(&format!("{}/mcp", gw.base), Some(ALICE));
    let status = bridge.close().await;
    assert_eq!(status.code(), Some(0));
    gw.stop().await;
}

fn peers_python() -> PathBuf {
    // `$PORTCULLIS_PEERS`, else the repo's `.mcp-peers` (the test fails if it is missing).
    peers().python()
}

/// The official Python SDK's stdio client launches `portcullis connect` as its server.
#[tokio::test]
async fn python_sdk_stdio_client_through_the_bridge() {
    let python = peers_python();
    let gw = gateway().await;
    let script = r#"
import asyncio, json, sys
from mcp import Client
from mcp.client.stdio import StdioServerParameters

async def main(exe, url, mode):
    params = StdioServerParameters(command=exe, args=["connect", url], env={"PORTCULLIS_TOKEN": sys.argv[4]})
    async with Client(params, mode=mode, read_timeout_seconds=30, cache=None) as client:
        tools = await client.list_tools()
        names = [t.name for t in tools.tools]
        result = await client.call_tool("demo__echo", {"text": "python via connect " + mode})
        texts = [getattr(c, "text", None) for c in result.content]
        print(json.dumps({"protocol": client.protocol_version, "names": names, "texts": texts}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"#;
    for mode in ["legacy", "auto"] {
        let output = tokio::time::timeout(
            Duration::from_secs(90),
            Command::new(&python)
                .arg("-c")
                .arg(script)
                .args([
                    env!("CARGO_BIN_EXE_portcullis"),
                    &format!("{}/mcp", gw.base),
                    mode,
                    ALICE,
                ])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the Python client finishes")
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "python ({mode}) failed: {stdout}\n{stderr}"
        );
        let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        assert!(
            report["names"]
                .as_array()
                .unwrap()
                .contains(&json!("demo__echo")),
            "{report}"
        );
        assert_eq!(
            report["texts"][0],
            format!("python via connect {mode}"),
            "{report}"
        );
        let expected = if mode == "legacy" { LEGACY } else { MODERN };
        assert_eq!(report["protocol"], expected, "{report}");
    }
    gw.stop().await;
}
