//! Content scanning and tool pinning end to end: the gateway in-process in front of real
//! servers — our fixture in its hostile variants (`poisoned`, `rug_pull_after`, `data_tools`),
//! server-everything (npm) for "ordinary tools pass untouched" — and the real `portcullis`
//! binary for `catalog` and `scan`.
//!
//! What the upstream received is read from the fixture itself (`Fixture::received_calls`), not
//! from the echo the client gets back. Redacted results are validated against the tool's
//! `outputSchema` by the Python `jsonschema` package from the peers (Draft 2020-12 with format
//! checking), a validator nobody here wrote. Attack tests are named after the bypass they pin.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use portcullis_fixture::{Fixture, FixtureOptions};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

const QUARANTINED: i64 = -31041;
const SCAN_BLOCKED: i64 = -31040;

/// A fixture on HTTP with `opts`; the handle reads what it received.
async fn fixture(opts: FixtureOptions) -> (String, Fixture) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let fixture = Fixture::new(opts);
    tokio::spawn(portcullis_fixture::http::serve(listener, fixture.clone()));
    (url, fixture)
}

fn server(url: &str) -> String {
    format!("{{ url: {url} }}")
}

/// The error object of an answer (panics when it is a result).
fn error_of(answer: &Answer) -> &Value {
    answer
        .last()
        .get("error")
        .unwrap_or_else(|| panic!("expected an error: {answer:?}"))
}

async fn call(gw: &Gateway, path: &str, id: u64, tool: &str, arguments: Value) -> Answer {
    modern(
        gw,
        path,
        ALICE,
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
    .await
}

async fn list_tools(gw: &Gateway, path: &str, id: u64) -> Vec<String> {
    let answer = modern(gw, path, ALICE, id, "tools/list", json!({})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    tool_names(&answer)
}

/// Runs the real `portcullis` binary.
fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .expect("portcullis runs")
}

/// [`portcullis`] off the test's runtime (in-process servers keep answering meanwhile).
async fn portcullis_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        portcullis(&args)
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Validates `instance` against `schema` with the Python `jsonschema` package (Draft 2020-12,
/// formats checked). Ok or the validator's message.
fn validate_with_python(schema: &Value, instance: &Value) -> Result<(), String> {
    let script = "import json, sys, jsonschema\n\
        doc = json.load(sys.stdin)\n\
        v = jsonschema.Draft202012Validator(doc['schema'], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)\n\
        errors = [e.message for e in v.iter_errors(doc['instance'])]\n\
        print(json.dumps(errors))\n\
        sys.exit(1 if errors else 0)\n";
    let mut child = Command::new(peers().python())
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python from the peers");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                json!({"schema": schema, "instance": instance})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    match output.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(stdout(&output)),
        other => panic!(
            "jsonschema check did not run ({other:?}): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Tool poisoning
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn poisoned_tool_description_is_quarantined() {
    let (url, bad) = fixture(FixtureOptions {
        poisoned: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("bad", server(&url))], "").await;

    let names = list_tools(&gw, "/mcp", 1).await;
    assert!(
        names.contains(&"bad__test_simple_text".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"bad__get_weather".to_owned()),
        "hidden: {names:?}"
    );
    let direct = list_tools(&gw, "/mcp/bad", 2).await;
    assert!(direct.contains(&"test_simple_text".to_owned()));
    assert!(!direct.contains(&"get_weather".to_owned()), "{direct:?}");

    for (path, tool) in [("/mcp", "bad__get_weather"), ("/mcp/bad", "get_weather")] {
        let answer = call(
            &gw,
            path,
            3,
            tool,
            json!({"city": "Paris", "sidenote": "-----BEGIN OPENSSH PRIVATE KEY-----"}),
        )
        .await;
        let error = error_of(&answer);
        assert_eq!(error["code"], QUARANTINED, "{answer:?}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("bad__get_weather"), "{message}");
        assert!(message.contains("hidden instructions"), "{message}");
        assert_eq!(error["data"]["event"], "poisoned");
    }
    // The ordinary tools of the same server still work.
    let ok = call(&gw, "/mcp", 4, "bad__test_simple_text", json!({})).await;
    assert!(ok.last().get("result").is_some(), "{ok:?}");
    assert!(
        bad.received_calls()
            .iter()
            .all(|(name, _)| name != "get_weather"),
        "the upstream never saw a call to the poisoned tool"
    );
    gw.stop().await;
}

#[tokio::test]
async fn calling_a_poisoned_tool_without_listing_first_bypass() {
    // A client that kept an old tool list calls straight away: the gateway lists the server
    // itself before the first call, so the poisoned definition is still judged.
    let (url, bad) = fixture(FixtureOptions {
        poisoned: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("bad", server(&url))], "").await;
    let answer = call(&gw, "/mcp", 1, "bad__get_weather", json!({"city": "Paris"})).await;
    assert_eq!(error_of(&answer)["code"], QUARANTINED, "{answer:?}");
    assert!(bad.received_calls().is_empty());
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rug pulls and `portcullis catalog`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rug_pull_blocks_the_changed_tool_until_catalog_approve() {
    let (url, rug) = fixture(FixtureOptions {
        rug_pull_after: Some(1),
        ..Default::default()
    })
    .await;
    let store = fresh_store_path();
    let storage = format!("sqlite://{}", store.display());
    let gw = gateway_with_servers(
        &[("rug", server(&url))],
        &format!("storage: \"{storage}\"\n"),
    )
    .await;

    // First sight: pinned (first use) and callable.
    assert!(
        list_tools(&gw, "/mcp", 1)
            .await
            .contains(&"rug__translate".to_owned())
    );
    let ok = call(&gw, "/mcp", 2, "rug__translate", json!({"text": "hello"})).await;
    assert_eq!(first_text(&ok), "[fr] hello", "{ok:?}");

    // The server changes the description: the tool is hidden and refused.
    let names = list_tools(&gw, "/mcp", 3).await;
    assert!(!names.contains(&"rug__translate".to_owned()), "{names:?}");
    assert!(
        names.contains(&"rug__test_simple_text".to_owned()),
        "{names:?}"
    );
    let refused = call(&gw, "/mcp", 4, "rug__translate", json!({"text": "hello"})).await;
    let error = error_of(&refused);
    assert_eq!(error["code"], QUARANTINED, "{refused:?}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("rug__translate"), "{message}");
    assert!(message.contains("changed since it was pinned"), "{message}");
    assert!(
        message.contains("portcullis catalog approve rug translate"),
        "{message}"
    );
    assert_eq!(error["data"]["event"], "changed");
    let calls_before = rug.received_calls().len();

    // The operator reviews the diff (written to the store by the gateway in the background).
    let diff = poll(Duration::from_secs(10), || async {
        let out =
            portcullis_async(&["catalog", "diff", "rug", "translate", "--storage", &storage]).await;
        (out.status.code() == Some(1)).then_some(out)
    })
    .await
    .expect("catalog diff shows the change");
    let text = stdout(&diff);
    assert!(text.contains("--- rug/translate pinned sha256:"), "{text}");
    assert!(
        text.contains("-  \"description\": \"Translate a short text to French.\""),
        "{text}"
    );
    assert!(
        text.contains("+  \"description\": \"Translate a short text to French. <IMPORTANT>"),
        "{text}"
    );
    assert!(text.contains("~/.aws/credentials"), "{text}");

    let listed = portcullis_async(&["catalog", "list", "--storage", &storage, "--json"]).await;
    assert_eq!(listed.status.code(), Some(0));
    let entries: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let translate = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["server"] == "rug" && e["tool"] == "translate")
        .unwrap();
    assert_eq!(translate["state"], "changed", "{translate}");

    // Approval releases the new version (the gateway notices the pin within a second).
    let approved = portcullis_async(&[
        "catalog",
        "approve",
        "rug",
        "translate",
        "--storage",
        &storage,
        "--by",
        "reviewer",
    ])
    .await;
    assert_eq!(approved.status.code(), Some(0), "{approved:?}");
    assert!(stdout(&approved).contains("approved rug/translate sha256:"));
    let released = poll(Duration::from_secs(10), || async {
        let answer = call(&gw, "/mcp", 5, "rug__translate", json!({"text": "bonjour"})).await;
        answer.last().get("result").is_some().then_some(answer)
    })
    .await
    .expect("the approved tool is callable again");
    assert_eq!(first_text(&released), "[fr] bonjour");
    assert!(
        list_tools(&gw, "/mcp", 6)
            .await
            .contains(&"rug__translate".to_owned())
    );
    assert_eq!(
        rug.received_calls().len(),
        calls_before + 1,
        "refused calls never left"
    );
    let listed = portcullis_async(&["catalog", "list", "--storage", &storage, "--json"]).await;
    let entries: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["tool"] == "translate"
                && e["state"] == "pinned"
                && e["pinned"]["by"] == "reviewer"),
        "{entries}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn rug_pull_released_through_the_admin_api() {
    const APPROVER: &str = "catalog-approver-token";
    const VIEWER: &str = "catalog-viewer-token";
    let (url, _rug) = fixture(FixtureOptions {
        rug_pull_after: Some(1),
        ..Default::default()
    })
    .await;
    let yaml = format!(
        "admin:\n  tokens:\n    - {{ name: reviewer, sha256: \"{}\", role: approver }}\n    - {{ name: watcher, sha256: \"{}\", role: viewer }}\n",
        portcullis_gateway::auth::key_digest_hex(APPROVER),
        portcullis_gateway::auth::key_digest_hex(VIEWER),
    );
    let gw = gateway_with_servers(&[("rug", server(&url))], &yaml).await;
    let admin = |token: &'static str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = gw
            .http
            .request(method, format!("{}/admin/api/v1{path}", gw.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    list_tools(&gw, "/mcp", 1).await;
    assert!(
        !list_tools(&gw, "/mcp", 2)
            .await
            .contains(&"rug__translate".to_owned())
    );

    // The definition record is written in the background: wait until the catalog shows it.
    let waiting = poll(Duration::from_secs(10), || async {
        let (status, body) = admin(VIEWER, reqwest::Method::GET, "/catalog", None).await;
        assert_eq!(status, 200, "{body}");
        body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["server"] == "rug" && t["tool"] == "translate" && t["state"] == "changed")
            .cloned()
    })
    .await
    .expect("the changed tool is listed");
    let seen = waiting["waiting"][0]["sha256"].as_str().unwrap().to_owned();

    let body = json!({"server": "rug", "tool": "translate"});
    let (status, _) = admin(
        VIEWER,
        reqwest::Method::POST,
        "/catalog/approve",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 403, "a viewer cannot approve");
    let (status, answer) = admin(
        APPROVER,
        reqwest::Method::POST,
        "/catalog/approve",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sha256"], seen.as_str());
    assert_eq!(answer["by"], "admin:reviewer");
    // Effective at once on this replica.
    let ok = call(&gw, "/mcp", 3, "rug__translate", json!({"text": "hi"})).await;
    assert_eq!(first_text(&ok), "[fr] hi", "{ok:?}");
    let (status, _) = admin(
        APPROVER,
        reqwest::Method::POST,
        "/catalog/approve",
        Some(json!({"server": "rug", "tool": "nope"})),
    )
    .await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn catalog_pin_refuses_poisoned_tools_and_pins_the_rest() {
    let (url, _bad) = fixture(FixtureOptions {
        poisoned: true,
        ..Default::default()
    })
    .await;
    let dir = TempDir::new("catalog-pin");
    let storage = format!("sqlite://{}", dir.0.join("store.db").display());
    let config = dir.0.join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "storage: \"{storage}\"\nservers:\n  bad: {{ url: {url} }}\nrules:\n  - {{ id: all, allow: {{}} }}\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = portcullis_async(&["catalog", "pin", "bad", "--config", config]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a poisoned tool was refused: {out:?}"
    );
    let text = stdout(&out);
    assert!(text.contains("refused bad/get_weather"), "{text}");
    assert!(
        text.contains("pinned bad/test_simple_text sha256:"),
        "{text}"
    );
    let listed = portcullis_async(&["catalog", "list", "--config", config, "--json"]).await;
    let entries: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["tool"] == "test_simple_text" && e["state"] == "pinned")
    );
    assert!(!entries.iter().any(|e| e["tool"] == "get_weather"));
    // Approving something that is not waiting is an error, not a silent pin.
    let none = portcullis_async(&[
        "catalog",
        "approve",
        "bad",
        "test_simple_text",
        "--config",
        config,
    ])
    .await;
    assert_eq!(none.status.code(), Some(2), "{none:?}");
}

// ---------------------------------------------------------------------------------------------
// Results: injection, redaction against the outputSchema
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn prompt_injection_in_a_tool_result_is_blocked() {
    let (url, _data) = fixture(FixtureOptions {
        data_tools: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__fetch_page",
        json!({"url": "https://example.com"}),
    )
    .await;
    let error = error_of(&answer);
    assert_eq!(error["code"], SCAN_BLOCKED, "{answer:?}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("the result of data__fetch_page"),
        "{message}"
    );
    assert!(
        message.contains("prompt_injection (injection)"),
        "{message}"
    );
    assert!(
        !answer.last().to_string().contains("id_rsa"),
        "no data leaves: {answer:?}"
    );
    assert!(
        error["data"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["category"] == "prompt_injection" && f["pointer"] == "/content/0/text")
    );

    // The same through a legacy session (SSE-capable client).
    let mut legacy = LegacyClient::connect(&gw, "/mcp/data", ALICE, json!({})).await;
    let answer = legacy
        .request(
            "tools/call",
            json!({"name": "fetch_page", "arguments": {"url": "x"}}),
        )
        .await;
    assert_eq!(error_of(&answer)["code"], SCAN_BLOCKED, "{answer:?}");
    gw.stop().await;
}

#[tokio::test]
async fn redacted_result_still_validates_against_the_output_schema() {
    let (url, _data) = fixture(FixtureOptions {
        data_tools: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let list = modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;
    let tools = list.last()["result"]["tools"].as_array().unwrap().clone();
    let schema = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))["outputSchema"]
            .clone()
    };

    let answer = call(&gw, "/mcp", 2, "data__customer_record", json!({"id": "c1"})).await;
    let result = &answer.last()["result"];
    let structured = &result["structuredContent"];
    assert_eq!(structured["email"], "[REDACTED:email]", "{answer:?}");
    assert_eq!(structured["name"], "Ada Lovelace");
    assert_eq!(
        structured["note"],
        "Card on file: [REDACTED:payment_card], renews in May."
    );
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        !text.contains("ada.lovelace@") && !text.contains("4111"),
        "{text}"
    );
    validate_with_python(&schema("data__customer_record"), structured)
        .expect("the redacted structuredContent still validates");

    // A mask cannot be an email: under `format: email` the gateway blocks instead.
    let answer = call(
        &gw,
        "/mcp",
        3,
        "data__customer_contact",
        json!({"id": "c1"}),
    )
    .await;
    let error = error_of(&answer);
    assert_eq!(error["code"], SCAN_BLOCKED, "{answer:?}");
    assert!(
        error["message"].as_str().unwrap().contains("format"),
        "{error}"
    );
    assert!(!answer.last().to_string().contains("ada.lovelace@"));
    let contact_schema = schema("data__customer_contact");
    assert!(
        validate_with_python(
            &contact_schema,
            &json!({"id": "c1", "email": "[REDACTED:email]"})
        )
        .is_err(),
        "the redacted value would have been invalid"
    );
    validate_with_python(
        &contact_schema,
        &json!({"id": "c1", "email": "a@b.example"}),
    )
    .expect("the checker accepts a real email");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Arguments: what the upstream receives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn card_number_in_arguments_is_redacted_before_the_upstream_sees_it() {
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        data_tools: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__echo",
        json!({"text": "charge 4111 1111 1111 1111 today"}),
    )
    .await;
    assert!(answer.last().get("result").is_some(), "{answer:?}");
    let (name, args) = data
        .received_calls()
        .pop()
        .expect("the upstream got the call");
    assert_eq!(name, "echo");
    assert_eq!(
        args,
        json!({"text": "charge [REDACTED:payment_card] today"})
    );
    assert_eq!(first_text(&answer), "charge [REDACTED:payment_card] today");
    gw.stop().await;
}

#[tokio::test]
async fn unicode_escaped_card_number_bypass() {
    // Digits written as JSON escapes are the same string once decoded: still redacted, and the
    // upstream gets the mask, not the escaped digits.
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"data__echo","arguments":{"text":"\u0034\u0031\u0031\u0031 1111 1111 1111"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"0"}}}}"#;
    let answer = post_raw(
        &gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "data__echo"),
        ],
        body.to_owned(),
    )
    .await;
    assert!(answer.last().get("result").is_some(), "{answer:?}");
    let (_, args) = data.received_calls().pop().unwrap();
    assert_eq!(args["text"], "[REDACTED:payment_card]");
    gw.stop().await;
}

#[tokio::test]
async fn card_number_sent_as_a_json_number_bypass() {
    // A number cannot be masked without changing its type: the call is blocked instead.
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__echo",
        json!({"text": "hi", "card": 4111111111111111u64}),
    )
    .await;
    let error = error_of(&answer);
    assert_eq!(error["code"], SCAN_BLOCKED, "{answer:?}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("payment_card (pii) at /arguments/card")
    );
    assert!(
        !error.to_string().contains("4111"),
        "the refusal never echoes the value"
    );
    assert!(data.received_calls().is_empty(), "nothing left the gateway");
    gw.stop().await;
}

#[tokio::test]
async fn out_of_range_number_hides_arguments_from_the_scanner_bypass() {
    // `1e400` is valid JSON the envelope keeps raw, but no f64: a scanner that skipped what it
    // cannot parse would forward the card unread. It is refused instead.
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"data__echo","arguments":{"text":"4111 1111 1111 1111","n":1e400},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"0"}}}}"#;
    let answer = post_raw(
        &gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "data__echo"),
        ],
        body.to_owned(),
    )
    .await;
    // Today the envelope already refuses it (-32700, HTTP 400); the scan phase would refuse it
    // too (`scanning::content` unit tests), should the envelope ever accept it.
    let error = error_of(&answer);
    assert_eq!(error["code"], -32700, "{answer:?}");
    assert!(data.received_calls().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn secret_in_arguments_is_blocked() {
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(&[("data", server(&url))], "").await;
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__echo",
        json!({"text": "use key AKIAZ3MN7QW2ERTY5UIO for the upload"}),
    )
    .await;
    let error = error_of(&answer);
    assert_eq!(error["code"], SCAN_BLOCKED, "{answer:?}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("secret (secrets)"),
        "{error}"
    );
    assert!(data.received_calls().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn per_server_override_flags_instead_of_redacting() {
    let (url, data) = fixture(FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await;
    let gw = gateway_with_servers(
        &[("data", server(&url))],
        "scanners:\n  servers:\n    data: { pii: flag }\n",
    )
    .await;
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__echo",
        json!({"text": "mail ada@example.com"}),
    )
    .await;
    assert_eq!(first_text(&answer), "mail ada@example.com", "{answer:?}");
    assert_eq!(
        data.received_calls().pop().unwrap().1["text"],
        "mail ada@example.com"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// No false quarantine; the cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_everything_tools_pass_untouched() {
    let everything = start_everything().await;
    let gw = gateway_with_servers(&[("ev", server(&everything.url))], "").await;
    // What the server itself lists, through the gateway's connector but not its proxy.
    let direct = portcullis_gateway::scanning::fetch::fetch(
        &portcullis_gateway::scanning::fetch::url_server("ev", &everything.url, PEER_WAIT),
    )
    .await
    .unwrap();
    let mut expected: Vec<String> = direct
        .tools
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert!(expected.contains(&"echo".to_owned()), "{expected:?}");
    for round in 0..2 {
        let mut names = list_tools(&gw, "/mcp/ev", round + 1).await;
        names.sort();
        assert_eq!(names, expected, "round {round}: no tool hidden");
    }
    let answer = call(
        &gw,
        "/mcp",
        3,
        "ev__echo",
        json!({"message": "through portcullis"}),
    )
    .await;
    assert_eq!(
        first_text(&answer),
        "Echo: through portcullis",
        "{answer:?}"
    );
    gw.stop().await;
    drop(everything);
}

#[tokio::test]
async fn unchanged_tools_list_is_not_scanned_again() {
    let gw = gateway().await;
    let first = list_tools(&gw, "/mcp", 1).await;
    // fx and demo serve the same definitions: one scan per distinct definition hash.
    let scans = gw.state.scanning.metadata.scans();
    assert!(
        scans > 0 && scans as usize <= first.len(),
        "{scans} scans for {} tools",
        first.len()
    );
    for id in 2..6 {
        assert_eq!(list_tools(&gw, "/mcp", id).await, first);
    }
    let _ = list_tools(&gw, "/mcp/fx", 7).await;
    assert_eq!(
        gw.state.scanning.metadata.scans(),
        scans,
        "an unchanged tools/list costs no scan"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// `portcullis scan`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn scan_command_reports_poisoning_with_severity_and_exit_codes() {
    let (bad_url, _bad) = fixture(FixtureOptions {
        poisoned: true,
        ..Default::default()
    })
    .await;
    let (clean_url, _clean) = fixture(FixtureOptions {
        demo: true,
        data_tools: true,
        ..Default::default()
    })
    .await;
    let out = portcullis_async(&["scan", "--url", &bad_url, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["name"] == "get_weather"
            && f["category"] == "tool_poisoning"
            && f["severity"].as_str().is_some()),
        "{report}"
    );
    assert!(
        findings.iter().all(|f| f["name"] == "get_weather"),
        "only the poisoned tool: {report}"
    );

    let out = portcullis_async(&["scan", "--url", &clean_url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("0 findings"), "{}", stdout(&out));

    // A stdio server given by its command.
    let exe = env!("CARGO_BIN_EXE_portcullis");
    let out = portcullis_async(&["scan", "--json", "--", exe, "demo-server"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["tools"].as_u64().unwrap() > 0);

    // Unreachable: exit 2.
    let out =
        portcullis_async(&["scan", "--url", "http://127.0.0.1:9/mcp", "--timeout", "5"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Findings in the audit trail; server→client requests
// ---------------------------------------------------------------------------------------------

/// The trail as `portcullis audit export` (the real binary) prints it, one JSON record per line.
async fn exported(storage: &str) -> Vec<Value> {
    let out = portcullis_async(&["audit", "--storage", storage, "export"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Polls the exported trail until a record satisfies `matches` (some records are committed in
/// the background); returns it.
async fn exported_record(storage: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let found = poll(Duration::from_secs(10), || async {
        exported(storage).await.into_iter().find(|r| matches(r))
    })
    .await;
    match found {
        Some(record) => record,
        None => panic!(
            "no such record in the exported trail: {:#?}",
            exported(storage).await
        ),
    }
}

fn has_finding(record: &Value, rule_prefix: &str, location: &str) -> bool {
    record["findings"].as_array().is_some_and(|findings| {
        findings.iter().any(|f| {
            f["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with(rule_prefix))
                && f["location"] == location
                && f["severity"].as_str().is_some()
        })
    })
}

#[tokio::test]
async fn result_findings_and_rug_pull_alerts_reach_the_exported_audit_trail() {
    let (data_url, _data) = fixture(FixtureOptions {
        data_tools: true,
        ..Default::default()
    })
    .await;
    let (rug_url, _rug) = fixture(FixtureOptions {
        rug_pull_after: Some(1),
        ..Default::default()
    })
    .await;
    let storage = format!("sqlite://{}", fresh_store_path().display());
    let gw = gateway_with_servers(
        &[("data", server(&data_url)), ("rug", server(&rug_url))],
        &format!("storage: \"{storage}\"\n"),
    )
    .await;

    // A result carrying an injection is blocked: the call's outcome record names the finding
    // (rule, severity, where in the result), never the text.
    let answer = call(
        &gw,
        "/mcp",
        1,
        "data__fetch_page",
        json!({"url": "https://example.com"}),
    )
    .await;
    assert_eq!(error_of(&answer)["code"], SCAN_BLOCKED, "{answer:?}");
    let outcome = exported_record(&storage, |r| {
        r["kind"] == "call" && r["tool"] == "data__fetch_page" && !r["outcome"].is_null()
    })
    .await;
    assert_eq!(outcome["outcome"]["code"], SCAN_BLOCKED, "{outcome}");
    assert!(
        has_finding(&outcome, "injection", "/content/0/text"),
        "the result's finding is on the outcome record: {outcome}"
    );
    assert!(!outcome.to_string().contains("id_rsa"), "{outcome}");
    let decision = exported_record(&storage, |r| {
        r["kind"] == "call" && r["tool"] == "data__fetch_page" && r["outcome"].is_null()
    })
    .await;
    assert_eq!(
        decision["findings"],
        json!([]),
        "nothing was found in the arguments: {decision}"
    );

    // A rug pull: the changed tool is quarantined and an alert record says so, with the
    // definition's hashes and the poisoning findings.
    assert!(
        list_tools(&gw, "/mcp", 2)
            .await
            .contains(&"rug__translate".to_owned())
    );
    assert!(
        !list_tools(&gw, "/mcp", 3)
            .await
            .contains(&"rug__translate".to_owned())
    );
    let alert = exported_record(&storage, |r| {
        r["kind"] == "alert" && r["tool"] == "rug__translate"
    })
    .await;
    assert_eq!(alert["server"], "rug");
    assert_eq!(alert["decision"], "quarantine");
    assert_eq!(alert["rule_id"], "pin:changed");
    assert_eq!(alert["method"], "tools/list");
    let findings = alert["findings"].as_array().unwrap();
    let pin = findings
        .iter()
        .find(|f| f["rule"] == "metadata.changed")
        .unwrap_or_else(|| panic!("{alert}"));
    assert!(
        pin["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("tool translate (sha256 ") && l.contains(" → ")),
        "{pin}"
    );
    assert!(
        findings.len() > 1,
        "the changed description's poisoning findings come along: {alert}"
    );
    // The alert is raised once: listing again adds none.
    list_tools(&gw, "/mcp", 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alerts = exported(&storage)
        .await
        .into_iter()
        .filter(|r| r["kind"] == "alert" && r["tool"] == "rug__translate")
        .count();
    assert_eq!(alerts, 1);

    // The chain with its new kind of record still verifies.
    let verified = portcullis_async(&["audit", "--storage", &storage, "verify"]).await;
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    gw.stop().await;
}

#[tokio::test]
async fn sampling_request_with_an_email_is_redacted_in_place_and_a_secret_is_refused() {
    let storage = format!("sqlite://{}", fresh_store_path().display());
    // Arguments pass (flag), so the fixture's sampling request carries what the prompt said;
    // the server's request is then screened on its way to the client (response direction:
    // PII redacted, secrets blocked — the defaults).
    let gw = gateway_with(&format!(
        "storage: \"{storage}\"\nscanners: {{ pii: {{ request: flag }}, secrets: {{ request: flag }} }}\n"
    ))
    .await;
    let mut client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({"sampling": {}})).await;
    let mut stream = client
        .request_stream(
            "tools/call",
            json!({"name": "test_sampling", "arguments": {"prompt": "Write to ada.lovelace@example.com about the invoice"}}),
        )
        .await;
    let question = stream.next_request().await;
    assert_eq!(question["method"], "sampling/createMessage");
    let text = question["params"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("the request keeps its shape: {question}"));
    assert_eq!(text, "Write to [REDACTED:email] about the invoice");
    assert_eq!(question["params"]["maxTokens"], 100, "{question}");
    assert_eq!(question["params"]["messages"][0]["role"], "user");
    client
        .respond(
            &question["id"],
            json!({"role": "assistant", "content": {"type": "text", "text": "Sent."}, "model": "test", "stopReason": "endTurn"}),
        )
        .await;
    let messages = stream.until_response(&json!(client.last_id())).await;
    let result = &messages.last().unwrap()["result"];
    assert_eq!(
        result["content"][0]["text"], "LLM response: Sent.",
        "{messages:?}"
    );
    let relayed = exported_record(&storage, |r| {
        r["method"] == "sampling/createMessage" && r["decision"] == "allow"
    })
    .await;
    assert_eq!(relayed["kind"], "call");
    assert_eq!(relayed["server"], "fx");
    assert_eq!(relayed["principal"]["agent"], "alice");
    assert!(
        has_finding(&relayed, "pii", "/messages/0/content/text"),
        "{relayed}"
    );
    assert!(
        relayed["outcome"].is_null(),
        "the question's record: {relayed}"
    );
    // The client's answer has its own record: outcome, latency and size of the answer.
    let answered = exported_record(&storage, |r| {
        r["method"] == "sampling/createMessage" && !r["outcome"].is_null() && r["kind"] == "call"
    })
    .await;
    assert_eq!(answered["outcome"]["status"], "ok", "{answered}");
    assert_eq!(answered["server"], "fx");
    assert_eq!(answered["principal"]["agent"], "alice");
    assert_eq!(answered["session"], relayed["session"], "{answered}");
    assert!(
        answered["bytes_out"].as_i64().is_some_and(|n| n > 0),
        "{answered}"
    );
    assert!(answered["latency_us"].as_i64().is_some(), "{answered}");

    // A secret in the server's request is not rewritten but refused: the client is never
    // asked, and the upstream gets the scanners' error.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(
            "tools/call",
            json!({"name": "test_sampling", "arguments": {"prompt": "use key AKIAZ3MN7QW2ERTY5UIO"}}),
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
    assert!(!text.contains("AKIAZ3MN"), "{text}");
    assert!(text.contains("blocked by the gateway's scanners"), "{text}");
    let refused = exported_record(&storage, |r| {
        r["method"] == "sampling/createMessage" && r["kind"] == "denial"
    })
    .await;
    assert_eq!(refused["outcome"]["code"], SCAN_BLOCKED, "{refused}");
    assert!(
        has_finding(&refused, "secret", "/messages/0/content/text"),
        "{refused}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn poisoned_server_instructions_leave_an_alert_record_in_the_trail() {
    let (url, _fx) = fixture(FixtureOptions {
        poisoned_instructions: true,
        ..Default::default()
    })
    .await;
    let storage = format!("sqlite://{}", fresh_store_path().display());
    let gw = gateway_with_servers(
        &[("bad", server(&url))],
        &format!("storage: \"{storage}\"\n"),
    )
    .await;
    for id in 0..2 {
        let body = json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":LEGACY,"capabilities":{},"clientInfo":{"name":"test","version":"0"}}});
        let answer = post_raw(&gw, "/mcp/bad", Some(ALICE), &[], body.to_string()).await;
        let result = &answer.last()["result"];
        assert!(result["protocolVersion"].is_string(), "{answer:?}");
        assert!(
            result["instructions"].is_null(),
            "poisoned instructions are left out: {result}"
        );
    }
    let alert = exported_record(&storage, |r| r["kind"] == "alert" && r["server"] == "bad").await;
    assert_eq!(alert["method"], "initialize", "{alert}");
    assert_eq!(alert["decision"], "quarantine", "{alert}");
    assert_eq!(alert["rule_id"], "poisoning", "{alert}");
    let findings = alert["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["rule"] == "metadata.poisoned"
            && f["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("instructions (sha256 "))),
        "{alert}"
    );
    assert!(
        findings.len() > 1,
        "the scanner's findings come along: {alert}"
    );
    assert!(
        !alert.to_string().contains("id_rsa"),
        "never the text: {alert}"
    );
    // Alerted once per server and text, not once per session.
    let alerts = exported(&storage)
        .await
        .into_iter()
        .filter(|r| r["kind"] == "alert")
        .count();
    assert_eq!(alerts, 1);
    gw.stop().await;
}
