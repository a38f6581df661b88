//! Approval gates end to end: real clients (the rmcp SDK, the harness's HTTP client in both
//! eras) → the gateway → a real upstream (an rmcp server that logs every call it executes),
//! with reviewers deciding through the CLI binary, the admin API and the chat webhook's links.
//!
//! Every test asserts what the upstream executed: a call that was not approved never reaches
//! it. Loopback only; every wait is bounded.

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const DANA: &str = "dana-approver-token";
const ERIN: &str = "erin-approver-token";
const VIC: &str = "vic-viewer-token";
/// An admin token named like the calling agent `alice`: its holder is the caller.
const ALICE_ADMIN: &str = "alice-admin-token";

const APPROVAL_DENIED: i64 = -31030;
const APPROVAL_EXPIRED: i64 = -31031;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

mod bank {
    //! The upstream: an rmcp server whose tools log each call they execute.

    use std::sync::{Arc, Mutex};

    use rmcp::handler::server::router::tool::ToolRouter;
    use rmcp::handler::server::wrapper::Parameters;
    use rmcp::model::{ServerCapabilities, ServerConfig};
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[schemars(crate = "rmcp::schemars")]
    pub struct Payment {
        /// Amount in cents.
        pub amount: i64,
        /// The customer's email (part of the input schema, so the scanners see PII; the fake
        /// bank does not use it).
        #[allow(dead_code)]
        pub email: String,
    }

    pub type Log = Arc<Mutex<Vec<String>>>;

    #[derive(Debug, Clone)]
    pub struct Bank {
        tool_router: ToolRouter<Self>,
        log: Log,
    }

    #[tool_router]
    impl Bank {
        pub fn new(log: Log) -> Self {
            Self {
                tool_router: Self::tool_router(),
                log,
            }
        }

        fn record(&self, what: String) -> String {
            self.log.lock().unwrap().push(what.clone());
            what
        }

        #[tool(
            description = "Refund a charge to the customer",
            annotations(destructive_hint = true, idempotent_hint = false)
        )]
        fn refund(&self, Parameters(p): Parameters<Payment>) -> String {
            self.record(format!("refunded {}", p.amount))
        }

        #[tool(description = "Wire money out of the company account")]
        fn wire(&self, Parameters(p): Parameters<Payment>) -> String {
            self.record(format!("wired {}", p.amount))
        }

        #[tool(description = "A call whose approval times out quickly")]
        fn quick(&self, Parameters(p): Parameters<Payment>) -> String {
            self.record(format!("quick {}", p.amount))
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for Bank {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }
    }

    /// The running server; aborted on drop.
    pub struct BankServer {
        pub url: String,
        pub log: Log,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for BankServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn start() -> BankServer {
        let log: Log = Arc::default();
        let shared = log.clone();
        let service: StreamableHttpService<Bank, LocalSessionManager> = StreamableHttpService::new(
            move || Ok(Bank::new(shared.clone())),
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        BankServer {
            url: format!("http://{addr}/mcp"),
            log,
            task,
        }
    }
}

fn digest(token: &str) -> String {
    portcullis_gateway::auth::key_digest_hex(token)
}

/// Admin tokens, the approval rules, and `approvals:` settings (plus `extra`).
fn approvals_yaml(extra: &str) -> String {
    format!(
        r#"admin:
  tokens:
    - {{ name: dana, sha256: "{dana}", role: approver }}
    - {{ name: erin, sha256: "{erin}", role: approver }}
    - {{ name: vic, sha256: "{vic}", role: viewer }}
    - {{ name: alice, sha256: "{alice}", role: admin }}
rules:
  - {{ id: refunds, approve: {{ tools: ["bank__refund"] }} }}
  - {{ id: wires, approve: {{ tools: ["bank__wire"], approvers: 2 }} }}
  - {{ id: quick, approve: {{ tools: ["bank__quick"], timeout: 1s }} }}
  - {{ id: allow-rest, allow: {{}} }}
approvals:
  timeout: 60s
  progress_interval: 200ms
{extra}"#,
        dana = digest(DANA),
        erin = digest(ERIN),
        vic = digest(VIC),
        alice = digest(ALICE_ADMIN),
    )
}

/// A gateway with the bank upstream and the approval rules.
async fn setup(extra: &str) -> (Gateway, bank::BankServer) {
    let bank = bank::start().await;
    let gw = gateway_with_servers(
        &[("bank", format!("{{ url: {} }}", bank.url))],
        &approvals_yaml(extra),
    )
    .await;
    (gw, bank)
}

/// One admin API request; (status, JSON body).
async fn admin(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{base}/admin/api/v1{path}");
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("admin API answers in time")
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The CLI binary against the gateway at `base`; (exit code, stdout, stderr).
async fn cli(base: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("PORTCULLIS_URL", base)
            .env("PORTCULLIS_ADMIN_TOKEN", token)
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the CLI finishes in time")
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until the admin API lists a request for `tool` with `status`; returns it.
async fn wait_for(base: &str, tool: &str, status: &str) -> Value {
    poll(WAIT, || async {
        let (code, answer) = admin(base, "GET", "/approvals?limit=50", Some(VIC), None).await;
        assert_eq!(code, 200, "{answer}");
        answer["approvals"]
            .as_array()?
            .iter()
            .find(|a| a["tool"] == tool && a["status"] == status)
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no {status} approval for {tool} within {WAIT:?}"))
}

/// A modern (2026-07-28) `tools/call` whose answer is read as it arrives.
async fn modern_call(
    gw: &Gateway,
    id: u64,
    tool: &str,
    arguments: Value,
    progress_token: Option<&str>,
) -> EventStream {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    if let Some(token) = progress_token {
        meta["progressToken"] = json!(token);
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta}});
    post_stream(
        gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ],
        body.to_string(),
    )
    .await
}

/// Lists the tools through the gateway once (so it learns descriptions and annotations).
async fn list_tools(gw: &Gateway) {
    let list = modern(gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;
    let names = tool_names(&list);
    assert!(names.contains(&"bank__refund".to_owned()), "{names:?}");
}

fn executed(bank: &bank::BankServer) -> Vec<String> {
    bank.log.lock().unwrap().clone()
}

#[tokio::test]
async fn held_call_approved_via_cli_reaches_the_rmcp_client() {
    use rmcp::ClientServiceExt as _;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let (gw, bank) = setup("").await;
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", gw.base))
            .auth_header(ALICE),
    );
    let client = tokio::time::timeout(
        WAIT,
        ().serve_with_lifecycle(transport, rmcp::ClientLifecycleMode::Initialize),
    )
    .await
    .expect("rmcp connects in time")
    .expect("rmcp connects");
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "bank__refund"),
        "held tools stay listed"
    );
    let client = Arc::new(client);
    let caller = client.clone();
    let call = tokio::spawn(async move {
        let arguments = json!({"amount": 250, "email": "carol.customer@example.com"});
        caller
            .call_tool(
                CallToolRequestParams::new("bank__refund")
                    .with_arguments(arguments.as_object().unwrap().clone()),
            )
            .await
    });

    // The reviewer finds it with the CLI: redacted arguments, tool description and annotations,
    // scanner findings, who asked and under which rule.
    let pending = poll(WAIT, || async {
        let (code, out, err) = cli(&gw.base, VIC, &["approvals", "list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let answer: Value = serde_json::from_str(&out).unwrap();
        answer["approvals"].as_array()?.first().cloned()
    })
    .await
    .expect("the held call is listed");
    let id = pending["id"].as_str().unwrap().to_owned();
    assert_eq!(pending["tool"], "bank__refund");
    assert_eq!(pending["rule_id"], "refunds");
    assert_eq!(pending["caller"]["agent"], "alice");
    let shown = pending["presentation"].to_string();
    assert!(!shown.contains("carol.customer@example.com"), "{shown}");
    assert_eq!(pending["presentation"]["arguments"]["amount"], 250);
    assert_eq!(
        pending["presentation"]["description"],
        "Refund a charge to the customer"
    );
    assert_eq!(
        pending["presentation"]["annotations"]["destructiveHint"],
        true
    );
    assert!(
        pending["presentation"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["pointer"].as_str().unwrap().ends_with("/email")
                && f["category"].as_str().unwrap().contains("email")),
        "{shown}"
    );
    let (code, text, _) = cli(&gw.base, VIC, &["approvals", "list"]).await;
    assert_eq!(code, 0);
    assert!(text.contains(&id) && text.contains("agent=alice"), "{text}");
    assert!(
        executed(&bank).is_empty(),
        "nothing runs before the approval"
    );

    // A viewer cannot approve; an approver can, once.
    let (code, _, err) = cli(&gw.base, VIC, &["approvals", "approve", &id]).await;
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = cli(
        &gw.base,
        DANA,
        &["approvals", "approve", &id, "--reason", "known customer"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved"), "{out}");

    let result = tokio::time::timeout(WAIT, call)
        .await
        .expect("the approved call answers in time")
        .unwrap()
        .expect("the call succeeds");
    let result = serde_json::to_value(&result).unwrap();
    assert_eq!(result["content"][0]["text"], "refunded 250", "{result}");
    assert_eq!(executed(&bank), ["refunded 250"]);

    // Records: decision, reviewer, reason, timing; approving again changes nothing.
    let (code, out, _) = cli(&gw.base, VIC, &["approvals", "show", &id, "--json"]).await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "approved");
    assert_eq!(shown["decisions"][0]["reviewer"], "dana");
    assert_eq!(shown["decisions"][0]["reason"], "known customer");
    assert_eq!(shown["decisions"][0]["channel"], "api");
    assert!(shown["decided_ms"].as_i64().unwrap() >= shown["created_ms"].as_i64().unwrap());
    let (code, _, err) = cli(&gw.base, ERIN, &["approvals", "approve", &id]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already approved"), "{err}");
    assert_eq!(executed(&bank).len(), 1);
    drop(client);
    gw.stop().await;
}

#[tokio::test]
async fn held_call_denied_gets_a_json_rpc_error_with_the_reason() {
    let (gw, bank) = setup("").await;
    let mut stream = modern_call(
        &gw,
        5,
        "bank__refund",
        json!({"amount": 9000, "email": "x@example.com"}),
        None,
    )
    .await;
    assert_eq!(stream.status, 200);
    let pending = wait_for(&gw.base, "bank__refund", "pending").await;
    let id = pending["id"].as_str().unwrap();
    // A denial needs a reason (clap refuses the command without one).
    let (code, _, _) = cli(&gw.base, DANA, &["approvals", "deny", id]).await;
    assert_eq!(code, 2);
    let (code, out, err) = cli(
        &gw.base,
        DANA,
        &["approvals", "deny", id, "--reason", "amount too high"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("denied"), "{out}");
    let answer = stream.until_response(&json!(5)).await;
    let error = &answer.last().unwrap()["error"];
    assert_eq!(error["code"], APPROVAL_DENIED, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("amount too high") && message.contains("rule refunds"),
        "{message}"
    );
    assert_eq!(error["data"]["rule"], "refunds");
    assert_eq!(error["data"]["reason"], "amount too high");
    assert_eq!(error["data"]["approval"], id);
    assert!(executed(&bank).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn held_call_times_out_as_a_denial_and_a_late_approval_changes_nothing() {
    let (gw, bank) = setup("").await;
    let mut stream = modern_call(
        &gw,
        6,
        "bank__quick",
        json!({"amount": 1, "email": "y@example.com"}),
        None,
    )
    .await;
    let answer = stream.until_response(&json!(6)).await;
    let error = &answer.last().unwrap()["error"];
    assert_eq!(error["code"], APPROVAL_EXPIRED, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("timed out"),
        "{error}"
    );
    let id = error["data"]["approval"].as_str().unwrap().to_owned();
    let (code, answer) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(DANA),
        None,
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    let (_, shown) = admin(
        &gw.base,
        "GET",
        &format!("/approvals/{id}"),
        Some(VIC),
        None,
    )
    .await;
    assert_eq!(shown["status"], "expired");
    assert!(shown["decisions"].as_array().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(executed(&bank).is_empty(), "an expired call never runs");
    gw.stop().await;
}

#[tokio::test]
async fn two_person_rule_needs_two_distinct_reviewers_and_never_the_caller() {
    let store = fresh_store_path();
    let (gw, bank) = setup(&format!("storage: \"sqlite://{}\"\n", store.display())).await;
    let mut stream = modern_call(
        &gw,
        8,
        "bank__wire",
        json!({"amount": 10, "email": "z@example.com"}),
        None,
    )
    .await;
    let pending = wait_for(&gw.base, "bank__wire", "pending").await;
    let id = pending["id"].as_str().unwrap();
    assert_eq!(pending["approvals_needed"], 2);
    let path = format!("/approvals/{id}/approve");
    let (code, first) = admin(
        &gw.base,
        "POST",
        &path,
        Some(DANA),
        Some(json!({"reason": "ok"})),
    )
    .await;
    assert_eq!(
        (code, &first["final"], &first["approvals"]),
        (200, &json!(false), &json!(1)),
        "{first}"
    );
    // The same reviewer twice is not a second approval.
    let (code, again) = admin(&gw.base, "POST", &path, Some(DANA), None).await;
    assert_eq!(code, 409, "{again}");
    // The caller cannot approve its own call, whatever its admin role.
    let (code, own) = admin(&gw.base, "POST", &path, Some(ALICE_ADMIN), None).await;
    assert_eq!(code, 403, "{own}");
    assert!(
        own["error"]["message"]
            .as_str()
            .unwrap()
            .contains("separation of duties")
    );
    // Nor can the caller's own API key, nor a viewer.
    let (code, _) = admin(&gw.base, "POST", &path, Some(ALICE), None).await;
    assert_eq!(code, 403);
    let (code, _) = admin(&gw.base, "POST", &path, Some(VIC), None).await;
    assert_eq!(code, 403);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(executed(&bank).is_empty(), "one approval is not enough");
    let (code, second) = admin(&gw.base, "POST", &path, Some(ERIN), None).await;
    assert_eq!(
        (code, &second["final"], &second["status"]),
        (200, &json!(true), &json!("approved")),
        "{second}"
    );
    let answer = stream.until_response(&json!(8)).await;
    assert_eq!(
        answer.last().unwrap()["result"]["content"][0]["text"],
        "wired 10"
    );
    assert_eq!(executed(&bank), ["wired 10"]);
    let (_, shown) = admin(
        &gw.base,
        "GET",
        &format!("/approvals/{id}"),
        Some(VIC),
        None,
    )
    .await;
    let reviewers: Vec<&str> = shown["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reviewer"].as_str().unwrap())
        .collect();
    assert_eq!(reviewers, ["dana", "erin"]);
    gw.stop().await;

    // The audit chain: the request, each reviewer's decision, the outcome, and the call's own
    // records referencing the approval.
    let (code, out, err) = cli(
        "http://unused",
        "",
        &[
            "audit",
            "export",
            "--storage",
            &format!("sqlite://{}", store.display()),
            "--tool",
            "bank__wire",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut approval_events: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["principal"]["user"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    // (The holder may see the second approval before the route has recorded it.)
    approval_events.sort();
    assert_eq!(
        approval_events,
        [
            ("approval_approved", "-"),
            ("approval_requested", "-"),
            ("reviewer_approve_via_api", "dana"),
            ("reviewer_approve_via_api", "erin"),
        ],
        "{out}"
    );
    assert!(records.iter().all(|r| r["approval_ref"] == id), "{out}");
    let calls: Vec<&Value> = records.iter().filter(|r| r["kind"] == "call").collect();
    assert_eq!(calls.len(), 2, "decision and outcome records: {out}");
    assert!(calls.iter().all(|r| r["rule_id"] == "wires"), "{out}");
}

/// A loopback receiver for the chat webhook; returns its URL and the payloads it got.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received)
}

/// `verdict` and `t` of a review link.
fn link_parts(link: &str) -> (String, String, String) {
    let (path, query) = link.split_once('?').unwrap();
    let mut verdict = String::new();
    let mut nonce = String::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap() {
            ("verdict", v) => verdict = v.to_owned(),
            ("t", t) => nonce = t.to_owned(),
            _ => {}
        }
    }
    (path.to_owned(), verdict, nonce)
}

#[tokio::test]
async fn webhook_links_are_single_use_bound_and_need_a_reviewer_who_is_not_the_caller() {
    let (hook, received) = webhook_receiver().await;
    let (gw, bank) = setup(&format!("  webhook: {{ url: \"{hook}\" }}\n")).await;
    list_tools(&gw).await;
    let mut stream = modern_call(
        &gw,
        9,
        "bank__wire",
        json!({"amount": 77, "email": "dave.doe@example.com"}),
        None,
    )
    .await;
    let pending = wait_for(&gw.base, "bank__wire", "pending").await;
    let id = pending["id"].as_str().unwrap().to_owned();
    let payload = poll(WAIT, || async { received.lock().unwrap().first().cloned() })
        .await
        .expect("the webhook is told");
    let text = payload.to_string();
    assert!(
        payload["text"].as_str().unwrap().contains("bank__wire"),
        "{text}"
    );
    for needle in [
        "alice",
        "wires",
        "Wire money out of the company account",
        "77",
        "2 distinct approvers",
        &id,
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(
        !text.contains("dave.doe@example.com"),
        "arguments are redacted: {text}"
    );
    let buttons = payload["blocks"].as_array().unwrap().last().unwrap()["elements"].clone();
    let approve_link = buttons[0]["url"].as_str().unwrap().to_owned();
    let deny_link = buttons[1]["url"].as_str().unwrap().to_owned();
    assert!(
        approve_link.starts_with(&gw.base) && approve_link.contains(&id),
        "{approve_link}"
    );

    // Opening the link shows a page that asks for a token and decides nothing.
    let page = reqwest::get(&approve_link).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(page.text().await.unwrap().contains("Admin token"));
    let (path, verdict, nonce) = link_parts(&approve_link);
    let review_path = path
        .strip_prefix(&format!("{}/admin/api/v1", gw.base))
        .unwrap()
        .to_owned();
    let body = json!({"verdict": verdict, "t": nonce});
    // The link alone is not enough.
    let (code, _) = admin(&gw.base, "POST", &review_path, None, Some(body.clone())).await;
    assert_eq!(code, 401);
    // The caller holding the link is refused, and does not burn it; so is a viewer.
    let (code, own) = admin(
        &gw.base,
        "POST",
        &review_path,
        Some(ALICE_ADMIN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, 403, "{own}");
    let (code, _) = admin(
        &gw.base,
        "POST",
        &review_path,
        Some(VIC),
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, 403);
    let (_, shown) = admin(
        &gw.base,
        "GET",
        &format!("/approvals/{id}"),
        Some(VIC),
        None,
    )
    .await;
    assert!(shown["decisions"].as_array().unwrap().is_empty(), "{shown}");
    // A reviewer redeems it: one approval of two.
    let (code, first) = admin(
        &gw.base,
        "POST",
        &review_path,
        Some(DANA),
        Some(body.clone()),
    )
    .await;
    assert_eq!((code, &first["final"]), (200, &json!(false)), "{first}");
    // Replayed by another reviewer: refused.
    let (code, replay) = admin(
        &gw.base,
        "POST",
        &review_path,
        Some(ERIN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, 403, "{replay}");
    assert!(
        replay["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{replay}"
    );
    // The deny link's nonce is bound to `deny`: it does not approve.
    let (_, _, deny_nonce) = link_parts(&deny_link);
    let (code, _) = admin(
        &gw.base,
        "POST",
        &review_path,
        Some(ERIN),
        Some(json!({"verdict": "approve", "t": deny_nonce})),
    )
    .await;
    assert_eq!(code, 403);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(executed(&bank).is_empty());
    // Erin decides through the API; the call runs.
    let (code, _) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(ERIN),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let answer = stream.until_response(&json!(9)).await;
    assert_eq!(
        answer.last().unwrap()["result"]["content"][0]["text"],
        "wired 77"
    );
    let (_, shown) = admin(
        &gw.base,
        "GET",
        &format!("/approvals/{id}"),
        Some(VIC),
        None,
    )
    .await;
    assert_eq!(shown["decisions"][0]["channel"], "link");
    assert_eq!(shown["decisions"][1]["channel"], "api");
    gw.stop().await;
}

#[tokio::test]
async fn client_disconnect_abandons_the_request_and_the_call_never_runs() {
    let (gw, bank) = setup("").await;
    // Modern client: closing the stream is the cancellation.
    let stream = modern_call(
        &gw,
        11,
        "bank__refund",
        json!({"amount": 3, "email": "q@example.com"}),
        Some("p-11"),
    )
    .await;
    let pending = wait_for(&gw.base, "bank__refund", "pending").await;
    drop(stream);
    let abandoned = wait_for(&gw.base, "bank__refund", "abandoned").await;
    assert_eq!(abandoned["id"], pending["id"]);
    assert_eq!(abandoned["reason"], "the client disconnected");
    let id = abandoned["id"].as_str().unwrap();
    let (code, _) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(DANA),
        None,
    )
    .await;
    assert_eq!(code, 409, "an abandoned request cannot be approved");

    // Legacy client: notifications/cancelled.
    let mut legacy = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let _held = legacy
        .request_stream(
            "tools/call",
            json!({"name": "bank__wire", "arguments": {"amount": 4, "email": "r@example.com"}}),
        )
        .await;
    let request_id = legacy.last_id();
    wait_for(&gw.base, "bank__wire", "pending").await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}});
    assert_eq!(legacy.send(cancel.to_string()).await.status, 202);
    let cancelled = wait_for(&gw.base, "bank__wire", "abandoned").await;
    assert_eq!(cancelled["reason"], "the client cancelled the call");

    // A legacy session that ends (DELETE) abandons what it held.
    let mut ending = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let _held = ending
        .request_stream(
            "tools/call",
            json!({"name": "bank__refund", "arguments": {"amount": 5, "email": "s@example.com"}}),
        )
        .await;
    poll(WAIT, || async {
        let (_, answer) = admin(
            &gw.base,
            "GET",
            "/approvals?status=pending",
            Some(VIC),
            None,
        )
        .await;
        (!answer["approvals"].as_array()?.is_empty()).then_some(())
    })
    .await
    .expect("held");
    let deleted = gw
        .http
        .delete(format!("{}/mcp", gw.base))
        .bearer_auth(ALICE)
        .header("mcp-session-id", &ending.session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let ended = poll(WAIT, || async {
        let (_, answer) = admin(
            &gw.base,
            "GET",
            "/approvals?status=abandoned",
            Some(VIC),
            None,
        )
        .await;
        answer["approvals"]
            .as_array()?
            .iter()
            .find(|a| a["reason"] == "the client's session ended")
            .cloned()
    })
    .await;
    assert!(ended.is_some(), "the session's held call is abandoned");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(executed(&bank).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn legacy_client_gets_progress_notifications_while_held() {
    let (gw, bank) = setup("").await;
    let mut legacy = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let mut stream = legacy
        .request_stream(
            "tools/call",
            json!({"name": "bank__refund", "arguments": {"amount": 12, "email": "t@example.com"},
                   "_meta": {"progressToken": "tok-7"}}),
        )
        .await;
    let id = legacy.last_id();
    let mut progress = Vec::new();
    while progress.len() < 3 {
        let message = stream.next().await;
        assert_eq!(message["method"], "notifications/progress", "{message}");
        assert_eq!(message["params"]["progressToken"], "tok-7");
        assert!(
            message["params"]["message"]
                .as_str()
                .unwrap()
                .contains("waiting for approval")
        );
        progress.push(message["params"]["progress"].as_u64().unwrap());
    }
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    let pending = wait_for(&gw.base, "bank__refund", "pending").await;
    let (code, _) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{}/approve", pending["id"].as_str().unwrap()),
        Some(ERIN),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let answer = stream.until_response(&json!(id)).await;
    assert_eq!(
        answer.last().unwrap()["result"]["content"][0]["text"],
        "refunded 12"
    );
    assert_eq!(executed(&bank), ["refunded 12"]);
    gw.stop().await;
}

#[tokio::test]
async fn json_only_client_waits_for_a_plain_answer() {
    let (gw, bank) = setup("").await;
    let mut legacy = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let body = json!({"jsonrpc": "2.0", "id": 40, "method": "tools/call",
        "params": {"name": "bank__refund", "arguments": {"amount": 40, "email": "u@example.com"}}});
    let base = gw.base.clone();
    let session = legacy.session.clone();
    let call = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/mcp"))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", LEGACY)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    });
    let pending = wait_for(&gw.base, "bank__refund", "pending").await;
    let (code, _) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{}/approve", pending["id"].as_str().unwrap()),
        Some(DANA),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let response = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        answer["result"]["content"][0]["text"], "refunded 40",
        "{answer}"
    );
    assert_eq!(executed(&bank), ["refunded 40"]);
    let _ = legacy.request("ping", json!({})).await;
    gw.stop().await;
}

/// A gateway process (the real binary) serving `config`; killed and reaped on drop.
fn spawn_gateway(config: &std::path::Path, log: &std::path::Path) -> ChildGuard {
    ChildGuard::spawn(
        "portcullis serve",
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(config)
            .env("PORTCULLIS_REPLICA_ID", "restart-test")
            .env("PORTCULLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    )
}

async fn wait_ready(base: &str, gateway: &mut ChildGuard, log: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            panic!(
                "the gateway exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway not ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn restart_while_pending_abandons_the_request_and_never_executes_it() {
    // reqwest is built without a default TLS provider (the in-process gateway installs one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bank = bank::start().await;
    let dir = TempDir::new("approvals-restart");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.0.join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstorage: \"sqlite://{}\"\nservers:\n  bank: {{ url: {} }}\nauth:\n  api_keys:\n    - {{ agent: alice, sha256: \"{}\" }}\n{}",
            dir.0.join("store.db").display(),
            bank.url,
            digest(ALICE),
            approvals_yaml(""),
        ),
    )
    .unwrap();
    let log = dir.0.join("first.log");
    let mut first = spawn_gateway(&config, &log);
    wait_ready(&base, &mut first, &log).await;

    // A modern call is held on the first process.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}});
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "bank__refund", "arguments": {"amount": 99, "email": "v@example.com"}, "_meta": meta}});
    let held = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "bank__refund")
        .body(body.to_string())
        .send();
    let held = tokio::spawn(held);
    let pending = wait_for(&base, "bank__refund", "pending").await;
    let id = pending["id"].as_str().unwrap().to_owned();

    // kill -9: nothing gets to clean up.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _ = tokio::time::timeout(WAIT, held).await;

    let log = dir.0.join("second.log");
    let mut second = spawn_gateway(&config, &log);
    wait_ready(&base, &mut second, &log).await;
    let (code, shown) = admin(&base, "GET", &format!("/approvals/{id}"), Some(VIC), None).await;
    assert_eq!(code, 200, "{shown}");
    assert_eq!(shown["status"], "abandoned", "{shown}");
    assert_eq!(shown["reason"], "the gateway holding the call restarted");
    let (code, answer) = admin(
        &base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(DANA),
        None,
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        executed(&bank).is_empty(),
        "the upstream never saw the call"
    );
    drop(second);
}

#[tokio::test]
async fn a_decision_on_one_replica_releases_the_call_held_on_another() {
    // Two gateways share one PostgreSQL store (a fresh schema): the call is held by replica A,
    // the reviewer talks to replica B.
    let base_url = portcullis_store::testing::postgres_url();
    let schema = format!(
        "approvals_replicas_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin_pool = sqlx::PgPool::connect(&base_url)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin_pool)
        .await
        .unwrap();
    let storage = format!("storage: \"{base_url}?options[search_path]={schema}\"\n");
    let bank = bank::start().await;
    let servers = [("bank", format!("{{ url: {} }}", bank.url))];
    let a = gateway_with_servers(&servers, &approvals_yaml(&storage)).await;
    let b = gateway_with_servers(&servers, &approvals_yaml(&storage)).await;
    let mut stream = modern_call(
        &a,
        21,
        "bank__refund",
        json!({"amount": 21, "email": "w@example.com"}),
        None,
    )
    .await;
    let pending = wait_for(&b.base, "bank__refund", "pending").await;
    let id = pending["id"].as_str().unwrap();
    let (code, answer) = admin(
        &b.base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(DANA),
        None,
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let answer = stream.until_response(&json!(21)).await;
    assert_eq!(
        answer.last().unwrap()["result"]["content"][0]["text"],
        "refunded 21"
    );
    assert_eq!(
        executed(&bank),
        ["refunded 21"],
        "executed once, by the replica holding it"
    );
    a.stop().await;
    b.stop().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&admin_pool)
    .await;
}

#[tokio::test]
async fn scanner_approve_action_holds_the_call_for_a_reviewer() {
    // No rule holds fx__echo (allow-rest allows it); the PII scanner's `approve` action does.
    let (gw, _bank) = setup("scanners: { pii: { request: approve } }\n").await;
    let mut stream = modern_call(
        &gw,
        11,
        "fx__echo",
        json!({"text": "mail ada.lovelace@example.com"}),
        None,
    )
    .await;
    assert_eq!(stream.status, 200);
    let pending = wait_for(&gw.base, "fx__echo", "pending").await;
    let id = pending["id"].as_str().unwrap().to_owned();
    assert_eq!(pending["rule_id"], "scanners:pii.email", "{pending}");
    assert_eq!(pending["caller"]["agent"], "alice");
    let shown = pending["presentation"].to_string();
    assert!(!shown.contains("ada.lovelace@example.com"), "{shown}");
    assert!(
        pending["presentation"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["pointer"] == "/arguments/text"),
        "the scanner's finding is shown: {shown}"
    );
    // Held: nothing answers before a reviewer decides.
    let early = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(early.is_err(), "{early:?}");

    let (code, answer) = admin(
        &gw.base,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(DANA),
        Some(json!({"reason": "known contact"})),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let last = stream.until_response(&json!(11)).await.pop().unwrap();
    let text = last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("the approved call ran: {last}"));
    assert!(text.starts_with("mail "), "{text}");
    let (_, shown) = admin(
        &gw.base,
        "GET",
        &format!("/approvals/{id}"),
        Some(VIC),
        None,
    )
    .await;
    assert_eq!(shown["status"], "approved");
    assert_eq!(shown["decisions"][0]["reviewer"], "dana");
    gw.stop().await;
}
