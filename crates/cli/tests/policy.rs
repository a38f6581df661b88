//! End-to-end policy tests: the gateway in-process with `rules:`, in front of the fixture (`fx`)
//! and the demo server (`demo`). Regression tests are named after the bypass they pin.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// alice may use everything on `fx` except `fx__get_time`; bob only `fx__echo` and `fx__add`;
/// `fx__add` with `a > 100` needs approval (held; see `approvals.rs`); nobody may use `demo`.
const RULES: &str = r#"rules:
  - { id: no-get-time, deny: { tools: ["fx__get_time"] } }
  - { id: big-adds, approve: { tools: ["fx__add"], when: "args.a > 100" } }
  - { id: no-sampling-for-alice, deny: { agents: [alice], methods: [sampling/createMessage] } }
  - { id: alice-fx, allow: { agents: [alice], servers: [fx] } }
  - { id: bob-echo-add, allow: { agents: [bob], tools: ["fx__echo", "fx__add"] } }
"#;

const POLICY_DENIED: i64 = -31010;
const APPROVAL_EXPIRED: i64 = -31031;

async fn call(gw: &Gateway, path: &str, token: &str, name: &str, arguments: Value) -> Value {
    modern(
        gw,
        path,
        token,
        7,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
    .await
    .last()
    .clone()
}

#[track_caller]
fn assert_refused(answer: &Value, code: i64, message: &str) {
    assert_eq!(answer["error"]["code"], code, "{answer}");
    let text = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "{text:?} lacks {message:?}");
}

#[tokio::test]
async fn denied_tool_called_anyway_is_denied() {
    let gw = gateway_with(RULES).await;
    let answer = call(&gw, "/mcp", ALICE, "fx__get_time", json!({})).await;
    assert_refused(&answer, POLICY_DENIED, "denied by rule no-get-time");
    assert_eq!(answer["error"]["data"]["rule"], "no-get-time");
    // Allowed neighbours still work.
    let ok = call(&gw, "/mcp", ALICE, "fx__echo", json!({"text": "hi"})).await;
    assert!(ok.get("result").is_some(), "{ok}");
    gw.stop().await;
}

#[tokio::test]
async fn hidden_tool_called_by_name_is_denied() {
    let gw = gateway_with(RULES).await;
    let list = modern(&gw, "/mcp", BOB, 1, "tools/list", json!({})).await;
    assert!(!tool_names(&list).contains(&"fx__test_simple_text".to_owned()));
    let answer = call(&gw, "/mcp", BOB, "fx__test_simple_text", json!({})).await;
    // A denial, not "tool not found".
    assert_refused(
        &answer,
        POLICY_DENIED,
        "no rule allows tools/call fx__test_simple_text for agent bob",
    );
    gw.stop().await;
}

#[tokio::test]
async fn case_variant_of_denied_tool_name_bypass() {
    let gw = gateway_with(RULES).await;
    // bob's allow rule names fx__echo exactly: no case folding.
    for name in ["fx__Echo", "fx__ECHO"] {
        let answer = call(&gw, "/mcp", BOB, name, json!({"text": "x"})).await;
        assert_refused(&answer, POLICY_DENIED, "no rule allows");
    }
    // alice may use fx, but a case variant of the denied tool is not the denied tool: it never
    // runs get_time (the upstream knows no such tool).
    let answer = call(&gw, "/mcp", ALICE, "fx__GET_TIME", json!({})).await;
    let text = answer.to_string();
    assert!(
        answer.get("error").is_some() || answer["result"]["isError"] == true,
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unicode_homoglyph_tool_name_bypass() {
    let gw = gateway_with(RULES).await;
    // Legacy era: no mirrored `Mcp-Name` header, whose value could not carry these names.
    let mut client = LegacyClient::connect(&gw, "/mcp", BOB, json!({})).await;
    // Cyrillic е (U+0435) in place of Latin e; a fullwidth variant; a zero-width joiner.
    for name in ["fx__\u{0435}cho", "fx__\u{ff45}cho", "fx__e\u{200d}cho"] {
        let answer = client
            .request(
                "tools/call",
                json!({"name": name, "arguments": {"text": "x"}}),
            )
            .await;
        assert_refused(answer.last(), POLICY_DENIED, "no rule allows");
    }
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_key_argument_condition_bypass() {
    let gw = gateway_with(RULES).await;
    // `args.a > 100` must not be dodged by a second `a` that a later parser would prefer.
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"fx__add","arguments":{"a":500,"a":1,"b":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let answer = post_raw(
        &gw,
        "/mcp",
        Some(BOB),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "fx__add"),
        ],
        body.to_owned(),
    )
    .await;
    let last = answer.last();
    assert!(last.get("result").is_none(), "{last}");
    assert_eq!(last["error"]["code"], -32700, "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate"),
        "{last}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn transparent_route_uses_aggregated_name_for_rules() {
    let gw = gateway_with(RULES).await;
    let answer = call(&gw, "/mcp/fx", ALICE, "get_time", json!({})).await;
    assert_refused(&answer, POLICY_DENIED, "tools/call fx__get_time");
    let answer = call(&gw, "/mcp/fx", BOB, "echo", json!({"text": "hi"})).await;
    assert_eq!(first_text_of(&answer), "hi");
    let answer = call(&gw, "/mcp/fx", BOB, "test_simple_text", json!({})).await;
    assert_refused(
        &answer,
        POLICY_DENIED,
        "no rule allows tools/call fx__test_simple_text",
    );
    // The transparent list is filtered like the aggregate's, with the server's own names.
    let list = modern(&gw, "/mcp/fx", BOB, 1, "tools/list", json!({})).await;
    let mut names = tool_names(&list);
    names.sort();
    assert_eq!(names, ["add", "echo"]);
    gw.stop().await;
}

#[tokio::test]
async fn approve_holds_and_no_decision_is_a_denial() {
    // The approval flow itself is tested in approvals.rs; here: the rule holds the call, and
    // without a reviewer it fails closed when the hold times out.
    let gw = gateway_with(&format!("{RULES}approvals: {{ timeout: 1s }}\n")).await;
    let answer = call(&gw, "/mcp", ALICE, "fx__add", json!({"a": 150, "b": 1})).await;
    assert_refused(
        &answer,
        APPROVAL_EXPIRED,
        "fx__add was denied: no reviewer decided before the approval timed out (rule big-adds",
    );
    assert_eq!(answer["error"]["data"]["rule"], "big-adds");
    gw.stop().await;
}

#[tokio::test]
async fn default_deny_names_no_rule() {
    let gw = gateway_with(RULES).await;
    let answer = call(&gw, "/mcp", BOB, "demo__echo", json!({"text": "x"})).await;
    assert_refused(
        &answer,
        POLICY_DENIED,
        "no rule allows tools/call demo__echo for agent bob",
    );
    assert_eq!(answer["error"]["data"]["rule"], Value::Null);
    // Resources and prompts of servers nobody may use are refused too.
    let answer = modern(
        &gw,
        "/mcp",
        ALICE,
        2,
        "prompts/get",
        json!({"name": "demo__test_simple_prompt"}),
    )
    .await;
    assert_refused(
        answer.last(),
        POLICY_DENIED,
        "no rule allows prompts/get on server demo",
    );
    gw.stop().await;
}

#[tokio::test]
async fn lists_show_only_what_each_principal_may_use() {
    let gw = gateway_with(RULES).await;
    let alice = tool_names(&modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await);
    let bob = tool_names(&modern(&gw, "/mcp", BOB, 1, "tools/list", json!({})).await);
    assert!(alice.contains(&"fx__echo".to_owned()), "{alice:?}");
    assert!(
        alice.contains(&"fx__test_simple_text".to_owned()),
        "{alice:?}"
    );
    assert!(!alice.contains(&"fx__get_time".to_owned()), "{alice:?}");
    assert!(alice.iter().all(|n| n.starts_with("fx__")), "{alice:?}");
    // fx__add is listed for bob although large values need approval: conditions may hold.
    let mut bob_sorted = bob.clone();
    bob_sorted.sort();
    assert_eq!(bob_sorted, ["fx__add", "fx__echo"]);
    // Prompts and resources follow method-level rules per server.
    let prompts = |a: &Answer| a.last()["result"]["prompts"].as_array().map_or(0, Vec::len);
    let alice_prompts = modern(&gw, "/mcp", ALICE, 2, "prompts/list", json!({})).await;
    let bob_prompts = modern(&gw, "/mcp", BOB, 2, "prompts/list", json!({})).await;
    assert!(prompts(&alice_prompts) > 0, "{alice_prompts:?}");
    assert_eq!(prompts(&bob_prompts), 0, "{bob_prompts:?}");
    let bob_resources = modern(&gw, "/mcp", BOB, 3, "resources/list", json!({})).await;
    assert_eq!(bob_resources.last()["result"]["resources"], json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn argument_condition_allows_and_denies() {
    // Held calls time out after 1s without a reviewer (a denial).
    let gw = gateway_with(&format!("{RULES}approvals: {{ timeout: 1s }}\n")).await;
    let small = call(&gw, "/mcp", BOB, "fx__add", json!({"a": 2, "b": 3})).await;
    assert_eq!(first_text_of(&small), "5");
    let big = call(&gw, "/mcp", BOB, "fx__add", json!({"a": 101, "b": 3})).await;
    assert_refused(&big, APPROVAL_EXPIRED, "rule big-adds");
    // A condition that cannot be evaluated (a string where a number is compared) fails closed.
    let odd = call(&gw, "/mcp", BOB, "fx__add", json!({"a": "500", "b": 3})).await;
    assert_refused(&odd, APPROVAL_EXPIRED, "rule big-adds");
    gw.stop().await;
}

#[tokio::test]
async fn server_to_client_sampling_is_screened_by_policy() {
    let gw = gateway_with(RULES).await;
    let mut client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({"sampling": {}})).await;
    // The sampling request from fx is refused by rule no-sampling-for-alice: the client is
    // never asked, and the call ends without an LLM answer.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(
            "tools/call",
            json!({"name": "test_sampling", "arguments": {"prompt": "hi"}}),
        ),
    )
    .await
    .expect("the call ends without asking the client");
    assert!(
        answer
            .messages
            .iter()
            .all(|m| m["method"] != "sampling/createMessage"),
        "{answer:?}"
    );
    let text = answer.last().to_string();
    assert!(!text.contains("LLM response"), "{text}");
    assert!(text.contains("no-sampling-for-alice"), "{text}");
    gw.stop().await;
}

fn first_text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {answer}"))
        .to_owned()
}

/// `portcullis policy explain`: the decision, the rule, and exit codes 0 / 1 / 2.
#[test]
fn policy_explain_prints_the_decision_and_the_rule() {
    let dir = TempDir::new("policy-explain");
    let path = dir.0.join("portcullis.yaml");
    std::fs::write(&path, format!("servers: {{}}\n{RULES}")).unwrap();
    let explain = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["policy", "explain", "--config"])
            .arg(&path)
            .args(extra)
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, out) = explain(&[
        "--agent",
        "bob",
        "--tool",
        "fx__add",
        "--args",
        r#"{"a":2}"#,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("decision: allow\nrule: bob-echo-add\n"),
        "{out}"
    );
    assert!(
        out.contains("big-adds: skipped, condition `args.a > 100` is false"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--agent",
        "bob",
        "--tool",
        "fx__add",
        "--args",
        r#"{"a":150}"#,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("decision: approve\nrule: big-adds\n"),
        "{out}"
    );
    let (code, out) = explain(&["--agent", "bob", "--tool", "demo__echo"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("reason: no rule allows tools/call demo__echo for agent bob"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--agent",
        "alice",
        "--method",
        "sampling/createMessage",
        "--server",
        "fx",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rule: no-sampling-for-alice"), "{out}");
    let (code, _) = explain(&["--agent", "bob", "--tool", "fx__add", "--args", "{not json"]);
    assert_eq!(code, Some(2));
}
