//! End-to-end tests of the gateway in-process, in front of our fixture server (Streamable HTTP)
//! and the demo server (stdio child of the gateway). Regression tests are named after the bypass
//! they pin.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn legacy_client_calls_a_tool_on_the_transparent_route() {
    let gw = gateway().await;
    let mut client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let tools = client.request("tools/list", json!({})).await;
    assert!(tool_names(&tools).contains(&"echo".to_owned()), "{tools:?}");
    let answer = client
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi there"}}),
        )
        .await;
    assert_eq!(first_text(&answer), "hi there");
    assert_eq!(answer.last()["id"], 3);
    gw.stop().await;
}

#[tokio::test]
async fn aggregate_namespaces_every_catalog_server() {
    let gw = gateway().await;
    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let names = tool_names(&client.request("tools/list", json!({})).await);
    assert!(names.contains(&"fx__echo".to_owned()), "{names:?}");
    assert!(names.contains(&"demo__echo".to_owned()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("fx__") || n.starts_with("demo__")),
        "{names:?}"
    );

    let via_stdio = client
        .request(
            "tools/call",
            json!({"name": "demo__add", "arguments": {"a": 2, "b": 3}}),
        )
        .await;
    assert_eq!(first_text(&via_stdio), "5");
    let via_http = client
        .request(
            "tools/call",
            json!({"name": "fx__echo", "arguments": {"text": "x"}}),
        )
        .await;
    assert_eq!(first_text(&via_http), "x");
    let unknown = client
        .request(
            "tools/call",
            json!({"name": "nosuch__echo", "arguments": {}}),
        )
        .await;
    assert_eq!(unknown.last()["error"]["code"], -31002, "{unknown:?}");
    gw.stop().await;
}

#[tokio::test]
async fn modern_client_is_served_statelessly() {
    let gw = gateway().await;
    let list = modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.last()["result"]["resultType"], "complete");
    assert_eq!(list.last()["result"]["cacheScope"], "private");
    assert!(tool_names(&list).contains(&"demo__echo".to_owned()));
    let call = modern(
        &gw,
        "/mcp",
        ALICE,
        2,
        "tools/call",
        json!({"name": "demo__echo", "arguments": {"text": "modern"}}),
    )
    .await;
    assert_eq!(first_text(&call), "modern", "{call:?}");
    assert_eq!(call.last()["result"]["resultType"], "complete");
    let discover = modern(&gw, "/mcp/fx", ALICE, 3, "server/discover", json!({})).await;
    assert_eq!(
        discover.last()["result"]["supportedVersions"][0],
        MODERN,
        "{discover:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn modern_request_with_unsupported_version_gets_32022() {
    let gw = gateway().await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"1999-01-01","io.modelcontextprotocol/clientCapabilities":{}}}});
    let answer = post_raw(
        &gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-protocol-version", "1999-01-01"),
            ("mcp-method", "tools/list"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.last()["error"]["code"], -32022);
    assert_eq!(answer.last()["error"]["data"]["supported"][0], MODERN);
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_key_argument_bypass() {
    let gw = gateway().await;
    let client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"/tmp/x","text":"/etc/passwd"}}}"#;
    let answer = client.send(body.to_owned()).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.last()["error"]["code"], -32700);
    assert!(
        answer.last()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate"),
        "{answer:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn session_reused_by_another_principal_bypass() {
    let gw = gateway().await;
    let alice = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    let stolen = post_raw(
        &gw,
        "/mcp/fx",
        Some(BOB),
        &[
            ("mcp-session-id", &alice.session),
            ("mcp-protocol-version", LEGACY),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(stolen.status, 404, "{stolen:?}");
    let other_route = post_raw(
        &gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-session-id", &alice.session),
            ("mcp-protocol-version", LEGACY),
        ],
        body,
    )
    .await;
    assert_eq!(other_route.status, 404, "{other_route:?}");
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_bad_token_gets_401_with_resource_metadata() {
    let gw = gateway().await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    for token in [None, Some("wrong")] {
        let answer = post_raw(&gw, "/mcp", token, &[], body.clone()).await;
        assert_eq!(answer.status, 401);
        let challenge = answer.header("www-authenticate").unwrap();
        assert!(
            challenge.contains(&format!(
                "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                gw.base
            )),
            "{challenge}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn foreign_origin_dns_rebinding_bypass() {
    let gw = gateway().await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    let answer = post_raw(
        &gw,
        "/mcp",
        Some(ALICE),
        &[("origin", "http://evil.example")],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 403);
    let answer = post_raw(&gw, "/mcp", Some(ALICE), &[("host", "evil.example")], body).await;
    assert_eq!(answer.status, 403);
    gw.stop().await;
}

#[tokio::test]
async fn deleted_session_is_gone() {
    let gw = gateway().await;
    let client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let response = gw
        .http
        .delete(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("mcp-session-id", &client.session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let after = client
        .send(json!({"jsonrpc":"2.0","id":9,"method":"tools/list"}).to_string())
        .await;
    assert_eq!(after.status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn huge_integer_id_is_echoed_byte_for_byte() {
    let gw = gateway().await;
    let client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let response = gw
        .http
        .post(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-session-id", &client.session)
        .body(r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"tools/list","params":{}}"#)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#""id":123456789012345678901234567890"#),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let gw = gateway_with("limits: { max_body_bytes: 1024 }\n").await;
    let big = "x".repeat(4096);
    let body =
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad": big}}).to_string();
    let answer = post_raw(&gw, "/mcp", Some(ALICE), &[], body).await;
    assert_eq!(answer.status, 413);
    gw.stop().await;
}

#[tokio::test]
async fn aggregate_resources_round_trip_through_wrapped_uris() {
    let gw = gateway().await;
    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let list = client.request("resources/list", json!({})).await;
    let uris: Vec<String> = list.last()["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap().to_owned())
        .collect();
    let static_text = uris
        .iter()
        .find(|u| u.starts_with("portcullis://fx/") && u.ends_with("static-text"))
        .unwrap_or_else(|| panic!("{uris:?}"));
    let read = client
        .request("resources/read", json!({"uri": static_text}))
        .await;
    let contents = &read.last()["result"]["contents"][0];
    assert!(contents["text"].is_string(), "{read:?}");
    gw.stop().await;
}

#[tokio::test]
async fn open_standalone_stream_does_not_block_shutdown() {
    let gw = gateway().await;
    let client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let stream = gw
        .http
        .get(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // `stop` fails the test if the gateway is not down within its bound.
    gw.stop().await;
    drop(stream);
}

#[tokio::test]
async fn modern_client_without_session_gets_405_on_get() {
    let gw = gateway().await;
    let response = gw
        .http
        .get(format!("{}/mcp", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    gw.stop().await;
}

#[tokio::test]
async fn dropped_post_stream_is_resumed_with_last_event_id() {
    use futures::StreamExt;
    let gw = gateway().await;
    let client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({})).await;
    let body = json!({"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"test_tool_with_progress","arguments":{},"_meta":{"progressToken":"p1"}}});
    let response = gw
        .http
        .post(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("mcp-protocol-version", LEGACY)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Read only the priming event, then drop the connection mid-call.
    let mut chunks = response.bytes_stream();
    let mut first = String::new();
    while !first.contains("\n\n") {
        first.push_str(&String::from_utf8_lossy(
            &chunks.next().await.unwrap().unwrap(),
        ));
    }
    drop(chunks);
    let priming_id = first
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().to_owned())
        .expect("priming event has an id");
    assert!(
        first.contains("retry:"),
        "priming event carries retry: {first}"
    );

    let resumed = gw
        .http
        .get(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {ALICE}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("last-event-id", &priming_id)
        .send()
        .await
        .unwrap();
    let answer = read_answer(resumed).await;
    let last = answer.last();
    assert_eq!(last["id"], 41, "{answer:?}");
    assert!(last["result"]["content"].is_array(), "{answer:?}");
    assert!(
        answer
            .messages
            .iter()
            .any(|m| m["method"] == "notifications/progress"),
        "progress is replayed too: {answer:?}"
    );

    // Another principal cannot resume it.
    let stolen = gw
        .http
        .get(format!("{}/mcp/fx", gw.base))
        .header("authorization", format!("Bearer {BOB}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &client.session)
        .header("last-event-id", &priming_id)
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let gw = gateway_with("limits: { max_header_bytes: 2KiB }\n").await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    let big = "y".repeat(4096);
    let answer = post_raw(&gw, "/mcp", Some(ALICE), &[("x-padding", &big)], body).await;
    assert_eq!(answer.status, 431);
    gw.stop().await;
}
