//! The stdio connector against real peers (`mcp-server-time`, server-everything) and against a
//! scripted `sh` upstream whose every input line is logged, for what a real server cannot show
//! (cancellations on the wire, crashes on demand, oversized lines, grandchildren).

mod upstream_support;

use std::time::Duration;

use portcullis_core::era::Era;
use portcullis_gateway::upstream::exchange::codes;
use portcullis_gateway::upstream::stdio::StdioConnector;
use portcullis_gateway::upstream::{Connector, UpstreamError, UpstreamEvent};
use serde_json::json;
use upstream_support::*;

/// A legacy stdio server in POSIX sh. `$1` is a log file receiving every line it reads.
/// Tools: `echo` answers, `hang` never answers, `crash` exits 3, `huge` writes a 300 kB line,
/// `ask` sends `sampling/createMessage` (id "srv-1") and answers the call with whatever reply
/// line comes back. It starts a `sleep` grandchild to check that the process group dies too.
const SCRIPTED: &str = r#"
log="$1"
sleep 300 &
asked=0
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  id=$(printf '%s\n' "$line" | sed -n 's/^.*"id":\([0-9][0-9]*\).*$/\1/p')
  case "$line" in
    *'"id":"srv-1"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[],"reply":%s}}\n' "$asked" "$line" ;;
    *'"method":"server/discover"'*) printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"Method not found"}}\n' "$id" ;;
    *'"method":"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"scripted","version":"0"}}}\n' "$id" ;;
    *'"name":"hang"'*) : ;;
    *'"name":"crash"'*) exit 3 ;;
    *'"name":"huge"'*) head -c 300000 /dev/zero | tr '\0' 'x'; printf '\n' ;;
    *'"name":"ask"'*) asked=$id; printf '{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{"messages":[],"maxTokens":5}}\n' ;;
    *'"name":"echo"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[],"echo":true}}\n' "$id" ;;
  esac
done
"#;

struct Scripted {
    connector: StdioConnector,
    log: std::path::PathBuf,
    _dir: TempDir,
}

/// A throwaway directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scripted(timeout: Duration, max_in_flight: usize) -> Scripted {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-upstream-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("input.log");
    let command = vec![
        "sh".into(),
        "-c".into(),
        SCRIPTED.into(),
        "sh".into(),
        log.display().to_string(),
    ];
    let mut config = stdio_server("scripted", command, timeout);
    config.max_in_flight = max_in_flight;
    Scripted {
        connector: StdioConnector::spawn(&config),
        log,
        _dir: TempDir(dir),
    }
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn scripted_legacy_server_is_initialized_once() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    let facts = s.connector.facts().await.unwrap();
    assert_eq!(facts.era, Era::Legacy);
    assert_eq!(facts.protocol_version, "2025-11-25");
    let mut exchange = s
        .connector
        .request(
            &caller("a", json!({})),
            tool_call("\"x-1\"", "echo", json!({})),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), "\"x-1\"");
    assert_eq!(member(&response, "result")["echo"], json!(true));
    let lines = log_lines(&s.log);
    assert!(lines[0].contains("server/discover"), "{lines:?}");
    assert!(lines[1].contains("\"method\":\"initialize\""), "{lines:?}");
    assert!(
        lines[1].contains("\"sampling\":{}"),
        "shared legacy session declares relayable capabilities: {lines:?}"
    );
    assert!(lines[2].contains("notifications/initialized"), "{lines:?}");
    s.connector.shutdown().await;
}

#[tokio::test]
async fn dropping_an_exchange_sends_cancellation_upstream() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    let exchange = s
        .connector
        .request(
            &caller("a", json!({})),
            tool_call("\"caller-7\"", "hang", json!({})),
        )
        .await
        .unwrap();
    assert!(
        eventually(|| log_lines(&s.log)
            .iter()
            .any(|l| l.contains("\"name\":\"hang\"")))
        .await
    );
    let hang = log_lines(&s.log)
        .into_iter()
        .find(|l| l.contains("\"name\":\"hang\""))
        .unwrap();
    let upstream_id = parse(&hang).id().unwrap().get().to_owned();
    assert_ne!(
        upstream_id, "\"caller-7\"",
        "the upstream sees the gateway's id, not the caller's"
    );
    drop(exchange);
    let wanted = format!("\"requestId\":{upstream_id}");
    assert!(
        eventually(|| log_lines(&s.log)
            .iter()
            .any(|l| l.contains("notifications/cancelled") && l.contains(&wanted)))
        .await,
        "{:?}",
        log_lines(&s.log)
    );
    assert!(eventually(|| s.connector.in_flight() == 0).await);
    s.connector.shutdown().await;
}

#[tokio::test]
async fn timeout_gives_a_final_error_naming_the_server() {
    init_tracing();
    let s = scripted(Duration::from_millis(800), 8);
    s.connector.ready().await.unwrap();
    let mut exchange = s
        .connector
        .request(&caller("a", json!({})), tool_call("1", "hang", json!({})))
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    let error = member(&response, "error");
    assert_eq!(error["code"], json!(codes::UPSTREAM_TIMEOUT));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("upstream scripted did not answer"),
        "{error}"
    );
    assert_eq!(response.id().unwrap().get(), "1");
    // The upstream is told to stop working on it.
    assert!(
        eventually(|| log_lines(&s.log)
            .iter()
            .any(|l| l.contains("notifications/cancelled")))
        .await
    );
    s.connector.shutdown().await;
}

#[tokio::test]
async fn crash_fails_calls_in_flight_and_the_supervisor_restarts_the_child() {
    init_tracing();
    let s = scripted(Duration::from_secs(20), 8);
    s.connector.ready().await.unwrap();
    let first_pid = s.connector.pid().unwrap();
    let mut hanging = s
        .connector
        .request(&caller("a", json!({})), tool_call("1", "hang", json!({})))
        .await
        .unwrap();
    let mut crashing = s
        .connector
        .request(&caller("b", json!({})), tool_call("2", "crash", json!({})))
        .await
        .unwrap();
    for exchange in [&mut hanging, &mut crashing] {
        let (_, response) = finish(exchange).await;
        let error = member(&response, "error");
        assert_eq!(error["code"], json!(codes::UPSTREAM_FAILED));
        assert_eq!(
            error["message"],
            json!("upstream scripted exited with status 3; call failed")
        );
    }
    // Restarted after the backoff; a new call works on the new child.
    let mut exchange = s
        .connector
        .request(&caller("a", json!({})), tool_call("3", "echo", json!({})))
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(member(&response, "result")["echo"], json!(true));
    let second_pid = s.connector.pid().unwrap();
    assert_ne!(first_pid, second_pid);
    assert!(!alive(first_pid));
    assert!(
        eventually(|| group_members(first_pid).is_empty()).await,
        "the crashed child's grandchildren were killed too"
    );
    s.connector.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_process_behind() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    s.connector.ready().await.unwrap();
    let pid = s.connector.pid().unwrap();
    assert!(alive(pid));
    assert!(
        eventually(|| group_members(pid).len() >= 2).await,
        "sh and its sleep grandchild run in their own group"
    );
    s.connector.shutdown().await;
    assert!(!alive(pid), "child reaped");
    // SIGKILL to the group is sent before shutdown returns; the kernel
    // finishes the grandchild's exit asynchronously.
    assert!(
        eventually(|| group_members(pid).is_empty()).await,
        "grandchildren killed: {:?}",
        group_members(pid)
    );
    let refused = s
        .connector
        .request(&caller("a", json!({})), tool_call("1", "echo", json!({})))
        .await;
    assert!(matches!(refused, Err(UpstreamError::Unavailable { .. })));
}

#[tokio::test]
async fn dropping_the_connector_stops_the_child() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    s.connector.ready().await.unwrap();
    let pid = s.connector.pid().unwrap();
    drop(s.connector);
    assert!(eventually(|| !alive(pid) && group_members(pid).is_empty()).await);
}

#[tokio::test]
async fn oversized_line_kills_the_connection_instead_of_growing() {
    init_tracing();
    let mut s = scripted(Duration::from_secs(10), 8);
    s.connector = s.connector.with_max_line(100_000);
    s.connector.ready().await.unwrap();
    let mut exchange = s
        .connector
        .request(&caller("a", json!({})), tool_call("1", "huge", json!({})))
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    let error = member(&response, "error");
    assert_eq!(
        error["message"],
        json!("upstream scripted sent a message longer than 100000 bytes; call failed")
    );
    s.connector.shutdown().await;
}

#[tokio::test]
async fn too_many_calls_in_flight_is_overloaded() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 1);
    let _first = s
        .connector
        .request(&caller("a", json!({})), tool_call("1", "hang", json!({})))
        .await
        .unwrap();
    let second = s
        .connector
        .request(&caller("a", json!({})), tool_call("2", "echo", json!({})))
        .await;
    assert!(matches!(second, Err(UpstreamError::Overloaded { .. })));
    s.connector.shutdown().await;
}

#[tokio::test]
async fn server_request_goes_to_the_caller_that_declared_the_capability() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    let with_sampling = caller("a", json!({ "sampling": {} }));
    let mut exchange = s
        .connector
        .request(&with_sampling, tool_call("\"call-1\"", "ask", json!({})))
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, exchange.events.recv())
        .await
        .unwrap()
        .unwrap();
    let UpstreamEvent::Request { request, reply } = event else {
        panic!("expected a server request")
    };
    assert_eq!(request.method(), Some("sampling/createMessage"));
    let canned = parse(
        r#"{"jsonrpc":"2.0","id":99,"result":{"role":"assistant","content":{"type":"text","text":"canned"},"model":"m"}}"#,
    );
    reply.send(canned).unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), "\"call-1\"");
    let reply_seen = &member(&response, "result")["reply"];
    assert_eq!(
        reply_seen["id"],
        json!("srv-1"),
        "the reply carries the upstream's own request id"
    );
    assert_eq!(reply_seen["result"]["content"]["text"], json!("canned"));

    // A caller that did not declare sampling never sees the request; the upstream gets an error.
    let mut exchange = s
        .connector
        .request(&caller("b", json!({})), tool_call("2", "ask", json!({})))
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    let reply_seen = &member(&response, "result")["reply"];
    assert_eq!(reply_seen["error"]["code"], json!(-32601), "{reply_seen}");
    s.connector.shutdown().await;
}

#[tokio::test]
async fn server_request_is_never_routed_across_callers() {
    init_tracing();
    let s = scripted(Duration::from_secs(10), 8);
    let sampling = json!({ "sampling": {} });
    let _other = s
        .connector
        .request(
            &caller("other", sampling.clone()),
            tool_call("1", "hang", json!({})),
        )
        .await
        .unwrap();
    let mut exchange = s
        .connector
        .request(&caller("asker", sampling), tool_call("2", "ask", json!({})))
        .await
        .unwrap();
    // Two callers have calls pending on the shared process and nothing links the request to
    // either: nobody gets it, the upstream gets an error.
    let (_, response) = finish(&mut exchange).await;
    let reply_seen = &member(&response, "result")["reply"];
    assert_eq!(reply_seen["error"]["code"], json!(-32601), "{reply_seen}");
    s.connector.shutdown().await;
}

// ---------------------------------------------------------------- real peers

#[tokio::test]
async fn modern_stdio_server_is_detected_and_huge_ids_survive() {
    init_tracing();
    let Some(time) = peers().server_time() else {
        return;
    };
    let config = stdio_server(
        "time",
        vec![
            time.display().to_string(),
            "--local-timezone".into(),
            "UTC".into(),
        ],
        Duration::from_secs(20),
    );
    let connector = StdioConnector::spawn(&config);
    let facts = connector.facts().await.unwrap();
    assert_eq!(facts.era, Era::Modern);
    assert_eq!(facts.protocol_version, "2026-07-28");
    let huge = "123456789012345678901234567890";
    let call = tool_call(huge, "get_current_time", json!({ "timezone": "UTC" }));
    let mut exchange = connector
        .request(&caller("a", json!({})), call)
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), huge);
    let result = member(&response, "result");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("UTC"),
        "{result}"
    );
    connector.shutdown().await;
}

fn everything(peers: &Peers, timeout: Duration) -> Option<StdioConnector> {
    let js = peers.everything_js()?;
    let command = vec![peers.node(), js.display().to_string(), "stdio".into()];
    Some(StdioConnector::spawn(&stdio_server(
        "everything",
        command,
        timeout,
    )))
}

#[tokio::test]
async fn legacy_stdio_server_is_detected() {
    init_tracing();
    let Some(connector) = everything(&peers(), Duration::from_secs(20)) else {
        return;
    };
    let facts = connector.facts().await.unwrap();
    assert_eq!(facts.era, Era::Legacy);
    assert_eq!(facts.protocol_version, "2025-11-25");
    let mut exchange = connector
        .request(
            &caller("a", json!({})),
            tool_call("5", "get-sum", json!({ "a": 2, "b": 3 })),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(response.id().unwrap().get(), "5");
    assert!(
        member(&response, "result")["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains('5')
    );
    connector.shutdown().await;
}

#[tokio::test]
async fn progress_tokens_of_two_callers_are_remapped_both_ways() {
    init_tracing();
    let Some(connector) = everything(&peers(), Duration::from_secs(20)) else {
        return;
    };
    let call = |id: &str| {
        request(
            id,
            "tools/call",
            json!({ "name": "trigger-long-running-operation", "arguments": { "duration": 1, "steps": 2 }, "_meta": { "progressToken": "same" } }),
        )
    };
    let mut a = connector
        .request(&caller("a", json!({})), call("1"))
        .await
        .unwrap();
    let mut b = connector
        .request(&caller("b", json!({})), call("1"))
        .await
        .unwrap();
    let ((progress_a, response_a), (progress_b, response_b)) =
        tokio::join!(finish(&mut a), finish(&mut b));
    for (progress, response) in [(progress_a, response_a), (progress_b, response_b)] {
        assert_eq!(response.id().unwrap().get(), "1");
        assert_eq!(progress.len(), 2, "each caller sees its own two steps");
        for (step, notification) in progress.iter().enumerate() {
            let params = member(notification, "params");
            assert_eq!(params["progressToken"], json!("same"));
            assert_eq!(params["progress"], json!(step + 1));
        }
    }
    connector.shutdown().await;
}

#[tokio::test]
async fn sampling_request_from_a_real_server_is_answered_through_the_reply_channel() {
    init_tracing();
    let Some(connector) = everything(&peers(), Duration::from_secs(20)) else {
        return;
    };
    let call = tool_call(
        "\"s\"",
        "trigger-sampling-request",
        json!({ "prompt": "hello", "maxTokens": 5 }),
    );
    let mut exchange = connector
        .request(&caller("a", json!({ "sampling": {} })), call)
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
                let canned = parse(
                    r#"{"jsonrpc":"2.0","id":0,"result":{"role":"assistant","content":{"type":"text","text":"canned reply"},"model":"test"}}"#,
                );
                reply.send(canned).unwrap();
            }
            UpstreamEvent::Notification(_) => {}
            UpstreamEvent::Response(response) => break response,
        }
    };
    assert_eq!(response.id().unwrap().get(), "\"s\"");
    assert!(
        text(&response).contains("canned reply"),
        "{}",
        text(&response)
    );
    connector.shutdown().await;
}

#[tokio::test]
async fn killed_real_server_fails_the_call_and_comes_back() {
    init_tracing();
    let Some(connector) = everything(&peers(), Duration::from_secs(20)) else {
        return;
    };
    connector.ready().await.unwrap();
    let pid = connector.pid().unwrap();
    let call = tool_call(
        "1",
        "trigger-long-running-operation",
        json!({ "duration": 15, "steps": 3 }),
    );
    let mut exchange = connector
        .request(&caller("a", json!({})), call)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert_eq!(
        member(&response, "error")["message"],
        json!("upstream everything was killed by signal 9; call failed")
    );
    let mut exchange = connector
        .request(
            &caller("a", json!({})),
            tool_call("2", "get-sum", json!({ "a": 1, "b": 1 })),
        )
        .await
        .unwrap();
    let (_, response) = finish(&mut exchange).await;
    assert!(member(&response, "result")["content"].is_array());
    assert_ne!(connector.pid(), Some(pid));
    connector.shutdown().await;
}

#[test]
fn runtime_shutdown_without_shutdown_call_leaves_no_process() {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (connector, pid) = runtime.block_on(async {
        let s = scripted(Duration::from_secs(10), 8);
        s.connector.ready().await.unwrap();
        let pid = s.connector.pid().unwrap();
        assert!(eventually(|| group_members(pid).len() >= 2).await);
        (s, pid)
    });
    // The supervisor task is dropped with the runtime: kill_on_drop and the group guard act.
    drop(runtime);
    drop(connector);
    let deadline = std::time::Instant::now() + WAIT;
    while (alive(pid) || !group_members(pid).is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid));
    assert!(group_members(pid).is_empty(), "{:?}", group_members(pid));
}
