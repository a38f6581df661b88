//! Kill switches, task tokens, rate limits and the admin API, over real HTTP against an
//! in-process gateway (and the real binary for the CLI verbs). Attacks are named after the
//! bypass they pin.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const OPS: &str = "ops-admin-token";
const WATCHER: &str = "watcher-viewer-token";

/// Admin tokens for `ops` (admin) and `watcher` (viewer), a rate limit for bob on fx__add, and
/// `extra`.
fn control_yaml(extra: &str) -> String {
    format!(
        "admin:\n  tokens:\n    - {{ name: ops, sha256: \"{}\", role: admin }}\n    - {{ name: watcher, sha256: \"{}\", role: viewer }}\n  task_tokens: {{ max_ttl: 1h }}\nlimits:\n  rate:\n    - {{ id: bob-adds, agents: [bob], tools: [\"fx__add\"], calls: 2, per: 1m }}\n{extra}",
        portcullis_gateway::auth::key_digest_hex(OPS),
        portcullis_gateway::auth::key_digest_hex(WATCHER),
    )
}

async fn control_gateway() -> Gateway {
    gateway_with(&control_yaml("")).await
}

/// One admin API request: status, headers, JSON body.
async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gw
        .http
        .request(method, format!("{}/admin/api/v1{path}", gw.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

async fn kill(gw: &Gateway, scope: &str, name: Option<&str>) {
    let mut body = json!({ "scope": scope, "reason": "test incident" });
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    let (status, _, answer) = admin(gw, "POST", "/kill-switches", Some(OPS), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

async fn revive(gw: &Gateway, scope: &str, name: Option<&str>) -> u16 {
    let mut body = json!({ "scope": scope });
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    admin(gw, "POST", "/kill-switches/revive", Some(OPS), Some(body))
        .await
        .0
}

/// A modern `tools/call` of `tool` with `token`.
async fn call(gw: &Gateway, token: &str, tool: &str) -> Answer {
    let arguments = match tool {
        t if t.ends_with("__add") => json!({ "a": 1, "b": 2 }),
        _ => json!({ "text": "hi" }),
    };
    modern(
        gw,
        "/mcp",
        token,
        7,
        "tools/call",
        json!({ "name": tool, "arguments": arguments }),
    )
    .await
}

fn error_code(answer: &Answer) -> Option<i64> {
    answer.last()["error"]["code"].as_i64()
}

fn list_tools(answer: &Answer) -> Vec<String> {
    tool_names(answer)
}

async fn tools(gw: &Gateway, token: &str) -> Vec<String> {
    list_tools(&modern(gw, "/mcp", token, 1, "tools/list", json!({})).await)
}

/// Issues a task token with `credential` (an admin token or the agent's own key).
async fn issue(gw: &Gateway, credential: &str, body: Value) -> (String, String) {
    let (status, _, answer) = admin(gw, "POST", "/tokens", Some(credential), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    (
        answer["token"].as_str().unwrap().to_owned(),
        answer["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn admin_api_refuses_missing_credentials_and_low_roles() {
    let gw = control_gateway().await;
    // No credentials: 401 with a JSON error and a challenge.
    let (status, headers, body) = admin(&gw, "GET", "/kill-switches", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(headers.contains_key("www-authenticate"));
    // A wrong token is 401 as well.
    assert_eq!(
        admin(&gw, "GET", "/whoami", Some("nope"), None).await.0,
        401
    );

    // The viewer may read but not kill.
    let (status, _, body) = admin(&gw, "GET", "/whoami", Some(WATCHER), None).await;
    assert_eq!((status, body["role"].as_str()), (200, Some("viewer")));
    assert_eq!(
        admin(&gw, "GET", "/kill-switches", Some(WATCHER), None)
            .await
            .0,
        200
    );
    let kill_fx = json!({ "scope": "server", "name": "fx" });
    let (status, _, body) = admin(
        &gw,
        "POST",
        "/kill-switches",
        Some(WATCHER),
        Some(kill_fx.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    // An agent's API key has no admin role either.
    let (status, _, _) = admin(
        &gw,
        "POST",
        "/kill-switches",
        Some(ALICE),
        Some(kill_fx.clone()),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(first_text(&call(&gw, ALICE, "fx__echo").await), "hi");

    // The admin can; bad bodies are 400 with a reason.
    let (status, _, body) = admin(&gw, "POST", "/kill-switches", Some(OPS), Some(kill_fx)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created_by"], "ops");
    for bad in [
        json!({ "scope": "planet", "name": "x" }),
        json!({ "scope": "server" }),
        json!({ "scope": "all", "name": "x" }),
        json!({ "scope": "server", "name": "fx", "extra": 1 }),
    ] {
        let (status, _, body) = admin(&gw, "POST", "/kill-switches", Some(OPS), Some(bad)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    // The OpenAPI document is public and lists the routes.
    let (status, _, doc) = admin(&gw, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/kill-switches"]["post"].is_object(), "{doc}");
    gw.stop().await;
}

#[tokio::test]
async fn kill_server_ends_a_call_in_flight_and_hides_its_tools() {
    let gw = control_gateway().await;
    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({ "sampling": {} })).await;
    let (mut stream, _) = call_waiting_for_sampling(&mut client, "hold on").await;

    kill(&gw, "server", Some("fx")).await;
    let call_id = json!(client.last_id());
    let messages = stream.until_response(&call_id).await;
    let last = messages.last().unwrap();
    assert_eq!(last["error"]["code"], -31012, "{messages:?}");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("server:fx") && message.contains("test incident"),
        "{message}"
    );
    assert_eq!(last["error"]["data"]["rule"], "kill:server:fx");

    // New calls are refused; other servers still answer; lists leave fx out.
    assert_eq!(
        error_code(&call(&gw, ALICE, "fx__echo").await),
        Some(-31012)
    );
    assert_eq!(first_text(&call(&gw, ALICE, "demo__echo").await), "hi");
    let names = tools(&gw, ALICE).await;
    assert!(names.iter().all(|n| !n.starts_with("fx__")), "{names:?}");
    assert!(names.contains(&"demo__echo".to_owned()), "{names:?}");
    // The transparent route is refused too.
    let direct = modern(
        &gw,
        "/mcp/fx",
        ALICE,
        3,
        "tools/call",
        json!({ "name": "echo", "arguments": { "text": "x" } }),
    )
    .await;
    assert_eq!(error_code(&direct), Some(-31012));

    // Revive: fx is back; reviving again finds nothing.
    assert_eq!(revive(&gw, "server", Some("fx")).await, 200);
    assert_eq!(first_text(&call(&gw, ALICE, "fx__echo").await), "hi");
    assert_eq!(revive(&gw, "server", Some("fx")).await, 404);
    gw.stop().await;
}

#[tokio::test]
async fn kill_survives_a_gateway_restart() {
    let store = fresh_store_path();
    let yaml = control_yaml(&format!("storage: \"sqlite://{}\"\n", store.display()));
    let gw = gateway_with(&yaml).await;
    kill(&gw, "tool", Some("fx__ECHO")).await;
    assert_eq!(
        error_code(&call(&gw, ALICE, "fx__echo").await),
        Some(-31012)
    );
    gw.stop().await;

    let gw = gateway_with(&yaml).await;
    let answer = call(&gw, ALICE, "fx__echo").await;
    assert_eq!(error_code(&answer), Some(-31012), "{answer:?}");
    assert_eq!(first_text(&call(&gw, ALICE, "fx__add").await), "3");
    let names = tools(&gw, ALICE).await;
    assert!(!names.contains(&"fx__echo".to_owned()), "{names:?}");
    assert!(names.contains(&"fx__add".to_owned()), "{names:?}");
    let (_, _, listed) = admin(&gw, "GET", "/kill-switches", Some(WATCHER), None).await;
    assert_eq!(listed["switches"][0]["name"], "fx__echo", "{listed}");
    gw.stop().await;
}

#[tokio::test]
async fn lockdown_stops_every_agent_until_revived() {
    let gw = control_gateway().await;
    kill(&gw, "all", None).await;
    for token in [ALICE, BOB] {
        for tool in ["fx__echo", "demo__echo"] {
            let answer = call(&gw, token, tool).await;
            assert_eq!(error_code(&answer), Some(-31012), "{answer:?}");
            assert!(
                answer.last()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("lockdown")
            );
        }
        assert!(tools(&gw, token).await.is_empty());
    }
    assert_eq!(revive(&gw, "all", None).await, 200);
    assert_eq!(first_text(&call(&gw, BOB, "demo__echo").await), "hi");
    gw.stop().await;
}

#[tokio::test]
async fn kill_agent_stops_only_that_agent() {
    let gw = control_gateway().await;
    kill(&gw, "agent", Some("bob")).await;
    assert_eq!(error_code(&call(&gw, BOB, "fx__echo").await), Some(-31012));
    assert_eq!(first_text(&call(&gw, ALICE, "fx__echo").await), "hi");
    gw.stop().await;
}

#[tokio::test]
async fn task_token_cannot_call_outside_its_scope() {
    let gw = control_gateway().await;
    // Alice exchanges her own key for a token limited to fx__echo.
    let (token, _) = issue(
        &gw,
        ALICE,
        json!({ "servers": ["fx"], "tools": ["fx__echo"], "ttl": "10m" }),
    )
    .await;
    assert!(token.starts_with("pct_"), "{token}");
    assert_eq!(first_text(&call(&gw, &token, "fx__echo").await), "hi");
    for outside in ["fx__add", "demo__echo"] {
        let answer = call(&gw, &token, outside).await;
        assert_eq!(error_code(&answer), Some(-31014), "{outside}: {answer:?}");
        assert!(
            answer.last()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("does not cover")
        );
    }
    // Lists show only what the token covers.
    assert_eq!(tools(&gw, &token).await, vec!["fx__echo".to_owned()]);
    // Alice's own key still sees everything.
    assert!(tools(&gw, ALICE).await.len() > 1);
    gw.stop().await;
}

#[tokio::test]
async fn agent_cannot_mint_a_task_token_for_another_agent_or_from_a_task_token() {
    let gw = control_gateway().await;
    let (status, _, body) = admin(
        &gw,
        "POST",
        "/tokens",
        Some(ALICE),
        Some(json!({ "agent": "bob" })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (token, _) = issue(&gw, ALICE, json!({ "tools": ["fx__echo"] })).await;
    let (status, _, body) = admin(&gw, "POST", "/tokens", Some(&token), Some(json!({}))).await;
    assert_eq!(status, 403, "{body}");
    // Longer than admin.task_tokens.max_ttl: refused.
    let (status, _, _) = admin(
        &gw,
        "POST",
        "/tokens",
        Some(ALICE),
        Some(json!({ "ttl": "2h" })),
    )
    .await;
    assert_eq!(status, 400);
    // An admin may mint for any agent; the token acts as that agent.
    let (token, _) = issue(&gw, OPS, json!({ "agent": "bob", "ttl": 60 })).await;
    let (status, _, body) = admin(&gw, "GET", "/tokens", Some(BOB), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["tokens"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["tokens"][0]["agent"], "bob");
    assert!(
        !body.to_string().contains(&token),
        "the secret is never listed"
    );
    gw.stop().await;
}

#[tokio::test]
async fn expired_task_token_is_refused() {
    let gw = control_gateway().await;
    // Expiry is a whole Unix second, so a token issued for 3s lives more than 2s and at most
    // 3s; since calls in flight end at expiry, the first call needs that margin on a busy
    // machine.
    let (token, _) = issue(&gw, OPS, json!({ "agent": "alice", "ttl": "3s" })).await;
    let first = call(&gw, &token, "fx__echo").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first_text(&first), "hi", "{first:?}");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let answer = call(&gw, &token, "fx__echo").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .contains("expired")
    );
    gw.stop().await;
}

#[tokio::test]
async fn revoked_task_token_is_refused_at_once() {
    let gw = control_gateway().await;
    let (token, id) = issue(&gw, ALICE, json!({ "ttl": "5m" })).await;
    assert_eq!(first_text(&call(&gw, &token, "fx__echo").await), "hi");
    // Bob cannot revoke alice's token (it looks missing to him).
    assert_eq!(
        admin(&gw, "DELETE", &format!("/tokens/{id}"), Some(BOB), None)
            .await
            .0,
        404
    );
    let (status, _, body) = admin(&gw, "DELETE", &format!("/tokens/{id}"), Some(ALICE), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], true);
    let answer = call(&gw, &token, "fx__echo").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        admin(&gw, "DELETE", "/tokens/tt_missing", Some(OPS), None)
            .await
            .0,
        404
    );
    gw.stop().await;
}

#[tokio::test]
async fn task_token_max_calls_is_exact_under_concurrency() {
    let gw = control_gateway().await;
    let (token, _) = issue(&gw, ALICE, json!({ "max_calls": 5 })).await;
    let calls = (0..20).map(|_| call(&gw, &token, "fx__echo"));
    let answers = futures::future::join_all(calls).await;
    let ok = answers.iter().filter(|a| error_code(a).is_none()).count();
    let exhausted = answers
        .iter()
        .filter(|a| error_code(a) == Some(-31015))
        .count();
    assert_eq!((ok, exhausted), (5, 15), "{answers:?}");
    let (_, _, body) = admin(&gw, "GET", "/tokens", Some(ALICE), None).await;
    assert_eq!(body["tokens"][0]["calls_used"], 5, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_a_retry_hint() {
    let gw = control_gateway().await;
    for _ in 0..2 {
        assert_eq!(first_text(&call(&gw, BOB, "fx__add").await), "3");
    }
    let answer = call(&gw, BOB, "fx__add").await;
    assert_eq!(answer.status, 429, "{answer:?}");
    let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let error = &answer.last()["error"];
    assert_eq!(error["code"], -31013);
    assert_eq!(error["data"]["limit"], "bob-adds");
    assert!(
        error["data"]["retryAfterMs"].as_u64().unwrap() > 1000,
        "{error}"
    );
    // Other tools and other agents are not limited.
    assert_eq!(first_text(&call(&gw, BOB, "fx__echo").await), "hi");
    assert_eq!(first_text(&call(&gw, ALICE, "fx__add").await), "3");
    // A legacy session gets the same answer.
    let mut client = LegacyClient::connect(&gw, "/mcp", BOB, json!({})).await;
    let answer = client
        .request(
            "tools/call",
            json!({ "name": "fx__add", "arguments": { "a": 1, "b": 1 } }),
        )
        .await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.last()["error"]["code"], -31013);
    assert_eq!(answer.last()["id"], json!(client.last_id()));
    // The counts reach /metrics.
    let text = gw.metrics_text().await;
    for line in [
        "portcullis_rate_limit_calls_total{limit=\"bob-adds\",result=\"admitted\"} 2",
        "portcullis_rate_limit_calls_total{limit=\"bob-adds\",result=\"refused\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    gw.stop().await;
}

/// `admin.metrics` closes `/metrics` to everyone below the named admin role: no credentials,
/// a data-plane agent key and a lower admin role are all refused; the role itself scrapes.
#[tokio::test]
async fn metrics_scrape_without_the_admin_role_bypass() {
    let yaml = format!(
        "admin:\n  tokens:\n    - {{ name: ops, sha256: \"{}\", role: admin }}\n    - {{ name: watcher, sha256: \"{}\", role: viewer }}\n  metrics: approver\n",
        portcullis_gateway::auth::key_digest_hex(OPS),
        portcullis_gateway::auth::key_digest_hex(WATCHER),
    );
    let gw = gateway_with(&yaml).await;
    let scrape = |token: Option<&'static str>| {
        let mut request = gw.http.get(format!("{}/metrics", gw.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = scrape(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("portcullis_"), "{body}");
    let (status, body) = scrape(Some(BOB)).await;
    assert_eq!(status, 403, "an agent key is not an admin role: {body}");
    let (status, body) = scrape(Some(WATCHER)).await;
    assert_eq!(status, 403, "viewer is below approver: {body}");
    let (status, body) = scrape(Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = scrape(Some(OPS)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("portcullis_sessions_active"), "{body}");
    gw.stop().await;
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn cli_kill_revive_and_token_verbs_talk_to_the_admin_api() {
    let gw = control_gateway().await;
    let out = cli(
        &gw,
        &["kill", "server", "fx", "--reason", "cli test"],
        Some(OPS),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("killed server:fx"), "{out:?}");
    assert_eq!(
        error_code(&call(&gw, ALICE, "fx__echo").await),
        Some(-31012)
    );
    let out = cli(&gw, &["kill", "--list"], Some(WATCHER)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).contains("server:fx") && stdout(&out).contains("cli test"),
        "{out:?}"
    );
    // A viewer cannot revive (refused by the gateway: exit 1); nor can anyone without a token.
    assert_eq!(
        cli(&gw, &["revive", "server", "fx"], Some(WATCHER))
            .await
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        cli(&gw, &["revive", "server", "fx"], None)
            .await
            .status
            .code(),
        Some(1)
    );
    let out = cli(&gw, &["revive", "server", "fx"], Some(OPS)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(first_text(&call(&gw, ALICE, "fx__echo").await), "hi");
    // Nothing left to revive: exit 1.
    assert_eq!(
        cli(&gw, &["revive", "server", "fx"], Some(OPS))
            .await
            .status
            .code(),
        Some(1)
    );

    // token issue with the agent's own key prints just the token.
    let out = cli(
        &gw,
        &[
            "token",
            "issue",
            "--agent-key",
            ALICE,
            "--servers",
            "fx",
            "--tools",
            "fx__echo",
            "--ttl",
            "5m",
            "--max-calls",
            "3",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("pct_"), "{out:?}");
    assert_eq!(first_text(&call(&gw, &token, "fx__echo").await), "hi");
    let out = cli(&gw, &["token", "list", "--json"], Some(WATCHER)).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = listed["tokens"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["tokens"][0]["calls_used"], 1);
    let revoke = ["token", "revoke", id.as_str()];
    assert_eq!(cli(&gw, &revoke, Some(OPS)).await.status.code(), Some(0));
    assert_eq!(call(&gw, &token, "fx__echo").await.status, 401);

    // Usage errors and an unreachable gateway: exit 2.
    assert_eq!(cli(&gw, &["kill"], Some(OPS)).await.status.code(), Some(2));
    let out = portcullis_unreachable(&["kill", "--list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    gw.stop().await;
}

/// Runs the real binary against `gw` with `admin_token` in `PORTCULLIS_ADMIN_TOKEN`.
async fn cli(gw: &Gateway, args: &[&str], admin_token: Option<&str>) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(args)
        .env("PORTCULLIS_URL", &gw.base)
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_AGENT_KEY");
    if let Some(token) = admin_token {
        command.env("PORTCULLIS_ADMIN_TOKEN", token);
    }
    tokio::time::timeout(PEER_WAIT, command.output())
        .await
        .expect("the CLI finishes in time")
        .unwrap()
}

/// The CLI against a port nothing listens on.
fn portcullis_unreachable(args: &[&str]) -> std::process::Output {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_URL", url)
        .env("PORTCULLIS_ADMIN_TOKEN", OPS)
        .output()
        .unwrap()
}

/// Reads `response`'s body until it ends; panics if it is still open after [`PEER_WAIT`].
async fn body_ends(response: reqwest::Response) {
    use futures::StreamExt as _;
    let mut body = response.bytes_stream();
    tokio::time::timeout(PEER_WAIT, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .expect("the stream ends after the kill");
}

#[tokio::test]
async fn kill_agent_ends_its_open_get_and_legacy_sse_streams() {
    let gw = control_gateway().await;
    // The Streamable HTTP standalone GET stream of a legacy session.
    let client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let get = gw
        .http
        .get(format!("{}/mcp", gw.base))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("mcp-protocol-version", LEGACY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    // The old HTTP+SSE transport's stream.
    let sse = gw
        .http
        .get(format!("{}/sse", gw.base))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // Bob's stream is not alice's business.
    let bob = gw
        .http
        .get(format!("{}/sse", gw.base))
        .bearer_auth(BOB)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut bob_body = bob.bytes_stream();
    use futures::StreamExt as _;
    let endpoint = tokio::time::timeout(PEER_WAIT, bob_body.next())
        .await
        .unwrap();
    assert!(
        endpoint.is_some(),
        "bob's stream starts with its endpoint event"
    );

    kill(&gw, "agent", Some("alice")).await;
    body_ends(get).await;
    body_ends(sse).await;
    // Bob's stream is still open: nothing arrives, and it has not ended.
    let next = tokio::time::timeout(Duration::from_millis(300), bob_body.next()).await;
    assert!(next.is_err(), "bob's stream must stay open: {next:?}");
    gw.stop().await;
}

/// Opens a modern (2026-07-28) `subscriptions/listen` with `id` on `path` as `token`; the
/// answer is read as it arrives.
async fn listen(
    gw: &Gateway,
    path: &str,
    token: &str,
    id: &str,
    notifications: Value,
) -> EventStream {
    let body = json!({
        "jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
            },
            "notifications": notifications
        }
    });
    let stream = post_stream(
        gw,
        path,
        Some(token),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "subscriptions/listen"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(stream.status, 200);
    stream
}

/// Starts a call that stays open: the fixture's `test_sampling` asks the client for a sampling
/// answer and waits for it. Returns the call's stream and the question (already asserted to be
/// `sampling/createMessage`).
async fn call_waiting_for_sampling(
    client: &mut LegacyClient<'_>,
    prompt: &str,
) -> (EventStream, Value) {
    let mut stream = client
        .request_stream(
            "tools/call",
            json!({ "name": "fx__test_sampling", "arguments": { "prompt": prompt } }),
        )
        .await;
    assert_eq!(stream.status, 200);
    let question = stream.next_request().await;
    assert_eq!(question["method"], "sampling/createMessage", "{question}");
    (stream, question)
}

/// The listen's acknowledgement (its first message).
async fn acknowledged(stream: &mut EventStream) -> Value {
    let ack = stream.next().await;
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    ack
}

/// The listen's last message (the answer to request `id`), after which its stream ends.
async fn listen_ends(stream: &mut EventStream, id: &str) -> Value {
    let last = stream.until_response(&json!(id)).await.pop().unwrap();
    stream.closed().await;
    last
}

#[tokio::test]
async fn kill_server_ends_its_listen_stream() {
    let gw = control_gateway().await;
    let uri = "portcullis://fx/test://watched-resource";
    // On the aggregate, a listen to fx only; on fx's own route, a forwarded listen.
    let mut aggregate = listen(
        &gw,
        "/mcp",
        ALICE,
        "agg",
        json!({ "resourceSubscriptions": [uri] }),
    )
    .await;
    let ack = acknowledged(&mut aggregate).await;
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!([uri])
    );
    let mut direct = listen(
        &gw,
        "/mcp/fx",
        ALICE,
        "direct",
        json!({ "toolsListChanged": true }),
    )
    .await;
    acknowledged(&mut direct).await;

    kill(&gw, "server", Some("fx")).await;
    for (stream, id) in [(&mut aggregate, "agg"), (&mut direct, "direct")] {
        let last = listen_ends(stream, id).await;
        assert_eq!(last["error"]["code"], -31012, "{id}: {last}");
        assert_eq!(
            last["error"]["data"]["rule"], "kill:server:fx",
            "{id}: {last}"
        );
    }

    // While fx is killed: its route refuses a listen, the aggregate grants nothing of fx.
    let refused = modern(
        &gw,
        "/mcp/fx",
        ALICE,
        9,
        "subscriptions/listen",
        json!({ "notifications": { "toolsListChanged": true } }),
    )
    .await;
    assert_eq!(error_code(&refused), Some(-31012), "{refused:?}");
    let mut again = listen(
        &gw,
        "/mcp",
        ALICE,
        "again",
        json!({ "resourceSubscriptions": [uri] }),
    )
    .await;
    let ack = acknowledged(&mut again).await;
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!([])
    );
    gw.stop().await;
}

#[tokio::test]
async fn kill_agent_ends_its_listen_stream() {
    let gw = control_gateway().await;
    let mut alices = listen(&gw, "/mcp", ALICE, "a", json!({ "toolsListChanged": true })).await;
    acknowledged(&mut alices).await;
    let mut bobs = listen(&gw, "/mcp", BOB, "b", json!({ "toolsListChanged": true })).await;
    acknowledged(&mut bobs).await;

    kill(&gw, "agent", Some("alice")).await;
    let last = listen_ends(&mut alices, "a").await;
    assert_eq!(last["error"]["code"], -31012, "{last}");
    assert_eq!(last["error"]["data"]["rule"], "kill:agent:alice");
    // Bob's listen stays open: nothing arrives, and it has not ended.
    let next = tokio::time::timeout(Duration::from_millis(300), bobs.next()).await;
    assert!(next.is_err(), "bob's listen must stay open: {next:?}");
    // A new listen of alice is refused.
    let refused = modern(
        &gw,
        "/mcp",
        ALICE,
        9,
        "subscriptions/listen",
        json!({ "notifications": { "toolsListChanged": true } }),
    )
    .await;
    assert_eq!(error_code(&refused), Some(-31012), "{refused:?}");
    gw.stop().await;
}

/// The JSON-RPC messages of an open SSE response, as they arrive.
fn sse_messages(response: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) {
                    let _ = tx.send(message);
                }
            }
        }
    });
    rx
}

/// How many `notifications/tools/list_changed` arrive on `messages` within `window` of the
/// first one (which must come within [`PEER_WAIT`]).
async fn list_changes(
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    window: Duration,
) -> usize {
    let first = tokio::time::timeout(PEER_WAIT, messages.recv())
        .await
        .expect("a notification arrives")
        .unwrap();
    assert_eq!(
        first["method"], "notifications/tools/list_changed",
        "{first}"
    );
    let mut count = 1;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, messages.recv()).await {
        assert_eq!(
            message["method"], "notifications/tools/list_changed",
            "{message}"
        );
        count += 1;
    }
    count
}

/// Calls `tool` on the fixture itself (not through the gateway).
async fn call_fixture_directly(gw: &Gateway, tool: &str) {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": tool, "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
            }
        }
    });
    let response = gw
        .http
        .post(&gw.fixture_url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let answer = read_answer(response).await;
    assert!(answer.last().get("result").is_some(), "{answer:?}");
}

/// Calls `tool` (which announces a change) through the gateway and checks it succeeded.
async fn trigger(client: &mut LegacyClient<'_>, tool: &str) {
    let answer = client
        .request("tools/call", json!({ "name": tool, "arguments": {} }))
        .await;
    assert!(answer.last().get("result").is_some(), "{tool}: {answer:?}");
}

/// Triggers `tool` (a change on its server) until a list change reaches `messages` — a server's
/// upstream session for this client opens its GET stream in the background — then lets the
/// stream go quiet.
async fn until_changes_flow(
    client: &mut LegacyClient<'_>,
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    tool: &str,
) {
    for _ in 0..40 {
        trigger(client, tool).await;
        if let Ok(Some(first)) =
            tokio::time::timeout(Duration::from_millis(250), messages.recv()).await
        {
            assert_eq!(
                first["method"], "notifications/tools/list_changed",
                "{first}"
            );
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(500), messages.recv()).await
            {
            }
            return;
        }
    }
    panic!("{tool}'s list changes never reached the GET stream");
}

#[tokio::test]
async fn kill_server_stops_its_notifications_on_the_aggregate_get_stream() {
    // A second HTTP fixture, `fy`, next to `fx`: its changes keep flowing after fx is killed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fy_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(portcullis_fixture::serve_http(
        listener,
        portcullis_fixture::FixtureOptions {
            demo: true,
            ..Default::default()
        },
    ));
    let gw =
        gateway_with_servers(&[("fy", format!("{{ url: {fy_url} }}"))], &control_yaml("")).await;
    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let get = gw
        .http
        .get(format!("{}/mcp", gw.base))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("mcp-protocol-version", LEGACY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let mut messages = sse_messages(get);
    let window = Duration::from_millis(500);
    // Before the kill, both servers' list changes reach the stream; one change of fy is
    // counted (an upstream may announce a change on more than one of its sessions).
    until_changes_flow(&mut client, &mut messages, "fx__test_trigger_tool_change").await;
    until_changes_flow(&mut client, &mut messages, "fy__test_trigger_tool_change").await;
    trigger(&mut client, "fy__test_trigger_tool_change").await;
    let from_fy = list_changes(&mut messages, window).await;

    // After fx is killed, its change (made on the fixture directly: nobody may call fx through
    // the gateway now) no longer arrives; fy's still do, and the stream stays open.
    kill(&gw, "server", Some("fx")).await;
    call_fixture_directly(&gw, "test_trigger_tool_change").await;
    trigger(&mut client, "fy__test_trigger_tool_change").await;
    let after = list_changes(&mut messages, window).await;
    assert_eq!(after, from_fy, "only fy's change arrives after the kill");
    gw.stop().await;
}

#[tokio::test]
async fn revoked_task_token_ends_its_calls_in_flight() {
    let gw = control_gateway().await;
    let (token, id) = issue(&gw, ALICE, json!({ "ttl": "10m" })).await;
    let mut client = LegacyClient::connect(&gw, "/mcp", &token, json!({ "sampling": {} })).await;
    // Open on the token: the session's GET stream, a listen, and a call waiting for the
    // client's sampling answer.
    let get = gw
        .http
        .get(format!("{}/mcp", gw.base))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("mcp-protocol-version", LEGACY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let mut listening = listen(
        &gw,
        "/mcp",
        &token,
        "task",
        json!({ "toolsListChanged": true }),
    )
    .await;
    acknowledged(&mut listening).await;
    let (mut stream, _) = call_waiting_for_sampling(&mut client, "hold on").await;
    // Someone else's call is not affected.
    let mut bob = LegacyClient::connect(&gw, "/mcp", BOB, json!({ "sampling": {} })).await;
    let (mut bobs, bobs_question) = call_waiting_for_sampling(&mut bob, "mine").await;

    let (status, _, body) = admin(&gw, "DELETE", &format!("/tokens/{id}"), Some(ALICE), None).await;
    assert_eq!(status, 200, "{body}");

    let call_id = json!(client.last_id());
    let last = stream.until_response(&call_id).await.pop().unwrap();
    assert_eq!(last["error"]["code"], -31014, "{last}");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&id) && message.contains("revoked"),
        "{message}"
    );
    assert_eq!(last["error"]["data"]["rule"], format!("task-token:{id}"));
    let last = listen_ends(&mut listening, "task").await;
    assert_eq!(last["error"]["code"], -31014, "{last}");
    body_ends(get).await;

    bob.respond(
        &bobs_question["id"],
        json!({ "role": "assistant", "content": { "type": "text", "text": "ok" }, "model": "m", "stopReason": "endTurn" }),
    )
    .await;
    let bobs_last = bobs
        .until_response(&json!(bob.last_id()))
        .await
        .pop()
        .unwrap();
    assert_eq!(
        bobs_last["result"]["content"][0]["text"], "LLM response: ok",
        "{bobs_last}"
    );
    gw.stop().await;
}

/// `limits.rate` shared through Redis at `url` under `prefix`: bob may add three times an hour,
/// across every replica.
fn redis_rate_yaml(url: &str, prefix: &str) -> String {
    format!(
        "limits:\n  rate:\n    redis: {url}\n    key_prefix: \"{prefix}\"\n    limits:\n      - {{ id: bob-adds-global, agents: [bob], tools: [\"fx__add\"], calls: 3, per: 1h }}\n"
    )
}

fn unique_redis_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("portcullis-test:{test}:{}:{nanos}", std::process::id())
}

/// Deletes the keys under `prefix` in the real Redis; returns how many there were.
async fn delete_redis_keys(prefix: &str) -> usize {
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    keys.len()
}

#[tokio::test]
async fn redis_rate_limit_is_global_across_two_gateway_replicas() {
    let prefix = unique_redis_prefix("replicas");
    let yaml = redis_rate_yaml("redis://127.0.0.1:6379/0", &prefix);
    let first = gateway_with(&yaml).await;
    let second = gateway_with(&yaml).await;
    let (mut admitted, mut limited) = (0, 0);
    for i in 0..8 {
        let gw = if i % 2 == 0 { &first } else { &second };
        let answer = call(gw, BOB, "fx__add").await;
        match error_code(&answer) {
            None => {
                assert_eq!(first_text(&answer), "3");
                admitted += 1;
            }
            Some(-31013) => {
                assert_eq!(answer.status, 429, "{answer:?}");
                assert_eq!(answer.last()["error"]["data"]["limit"], "bob-adds-global");
                limited += 1;
            }
            other => panic!("{other:?}: {answer:?}"),
        }
    }
    // Per replica (in memory) each would have admitted three: six in all.
    assert_eq!((admitted, limited), (3, 5));
    // Calls no limit covers are not affected.
    assert_eq!(first_text(&call(&second, BOB, "fx__echo").await), "hi");
    assert_eq!(first_text(&call(&first, ALICE, "fx__add").await), "3");
    first.stop().await;
    second.stop().await;
    assert_eq!(delete_redis_keys(&prefix).await, 1, "one bucket: bob's");
}

#[tokio::test]
async fn unreachable_redis_refuses_rate_limited_calls_fail_closed_bypass() {
    // Nothing listens on port 1 of the loopback.
    let gw = gateway_with(&redis_rate_yaml(
        "redis://127.0.0.1:1/0",
        &unique_redis_prefix("down"),
    ))
    .await;
    let answer = call(&gw, BOB, "fx__add").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    let error = &answer.last()["error"];
    assert_eq!(error["code"], -31016, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("bob-adds-global") && message.contains("Redis"),
        "{message}"
    );
    // Calls no limit applies to do not depend on Redis.
    assert_eq!(first_text(&call(&gw, BOB, "fx__echo").await), "hi");
    gw.stop().await;
}

#[tokio::test]
async fn expired_task_token_ends_its_calls_in_flight() {
    let gw = control_gateway().await;
    let (token, id) = issue(&gw, OPS, json!({ "agent": "alice", "ttl": "4s" })).await;
    let mut client = LegacyClient::connect(&gw, "/mcp", &token, json!({ "sampling": {} })).await;
    // A call that waits for the client's sampling answer, which never comes.
    let (mut stream, _) = call_waiting_for_sampling(&mut client, "hold on").await;
    // Nobody revokes it: the token's expiry alone ends the call.
    let call_id = json!(client.last_id());
    let last = tokio::time::timeout(Duration::from_secs(30), stream.until_response(&call_id))
        .await
        .expect("the call ends once its task token expires")
        .pop()
        .unwrap();
    assert_eq!(last["error"]["code"], -31014, "{last}");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&id) && message.contains("expired"),
        "{message}"
    );
    assert_eq!(last["error"]["data"]["rule"], format!("task-token:{id}"));
    // And new calls are refused.
    assert_eq!(call(&gw, &token, "fx__echo").await.status, 401);
    gw.stop().await;
}
