//! `subscriptions/listen` (2026-07-28) through the gateway: fanned out on the aggregate `/mcp`
//! (one acknowledgement, notifications of every server re-tagged with the client's id, resource
//! URIs wrapped, cancellation on disconnect) and forwarded on `/mcp/{server}` (tags carry the
//! client's id, not the connector's upstream id).

mod support;

use std::time::Duration;

use portcullis_fixture::FixtureOptions;
use serde_json::{Value, json};
use support::{ALICE, EventStream, MODERN, modern, post_stream};
use tokio::net::TcpListener;

const SUB_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Opens a modern listen with `id` and `notifications` on `path`; the answer is read as it comes.
async fn listen(gw: &support::Gateway, path: &str, id: Value, notifications: Value) -> EventStream {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "subscriptions/listen",
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
        Some(ALICE),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "subscriptions/listen"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "a listen is answered with an event stream: {:?}",
        stream.headers
    );
    stream
}

/// Calls a tool with a modern request and checks it succeeded.
async fn call_tool(gw: &support::Gateway, path: &str, id: u64, name: &str) {
    let answer = modern(
        gw,
        path,
        ALICE,
        id,
        "tools/call",
        json!({"name": name, "arguments": {}}),
    )
    .await;
    assert!(
        answer.last().get("result").is_some(),
        "{name} failed: {answer:?}"
    );
}

/// The next message that is not a list change of `skip_server`-style noise: here, simply the
/// next message, checked to be a notification.
async fn next_notification(stream: &mut EventStream) -> Value {
    let message = stream.next().await;
    assert!(
        message.get("method").is_some() && message.get("id").is_none(),
        "expected a notification, got {message}"
    );
    message
}

#[tokio::test]
async fn aggregate_listen_acknowledges_once_and_relays_tagged_notifications() {
    let gw = support::gateway().await;
    let mut stream = listen(
        &gw,
        "/mcp",
        json!("listen-1"),
        json!({
            "toolsListChanged": true,
            "resourceSubscriptions": [
                "portcullis://fx/test://watched-resource",
                "portcullis://nowhere/test://watched-resource",
                "not-a-gateway-uri"
            ]
        }),
    )
    .await;

    let ack = next_notification(&mut stream).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(ack["params"]["_meta"][SUB_ID], "listen-1");
    assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!(["portcullis://fx/test://watched-resource"]),
        "only the URI its server granted: {ack}"
    );
    assert!(
        ack["params"]["notifications"]
            .get("promptsListChanged")
            .is_none()
    );

    // A list change on fx reaches the listen, tagged with the client's own id.
    call_tool(&gw, "/mcp", 2, "fx__test_trigger_tool_change").await;
    let changed = next_notification(&mut stream).await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(changed["params"]["_meta"][SUB_ID], "listen-1");

    // A resource update carries the gateway's wrapped URI.
    call_tool(&gw, "/mcp", 3, "fx__test_trigger_resource_update").await;
    let updated = next_notification(&mut stream).await;
    assert_eq!(
        updated["method"], "notifications/resources/updated",
        "{updated}"
    );
    assert_eq!(
        updated["params"]["uri"],
        "portcullis://fx/test://watched-resource"
    );
    assert_eq!(updated["params"]["_meta"][SUB_ID], "listen-1");

    // The stdio server's changes arrive on the same stream.
    call_tool(&gw, "/mcp", 4, "demo__test_trigger_tool_change").await;
    let changed = next_notification(&mut stream).await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(changed["params"]["_meta"][SUB_ID], "listen-1");

    // Types the client did not ask for never come: a prompt change, then a tool change.
    call_tool(&gw, "/mcp", 5, "fx__test_trigger_prompt_change").await;
    call_tool(&gw, "/mcp", 6, "fx__test_trigger_tool_change").await;
    let next = next_notification(&mut stream).await;
    assert_eq!(next["method"], "notifications/tools/list_changed", "{next}");

    drop(stream);
    gw.stop().await;
}

#[tokio::test]
async fn numeric_listen_ids_are_echoed_raw() {
    let gw = support::gateway().await;
    let mut stream = listen(
        &gw,
        "/mcp",
        json!(9007199254740993u64),
        json!({"toolsListChanged": true}),
    )
    .await;
    let ack = next_notification(&mut stream).await;
    assert_eq!(ack["params"]["_meta"][SUB_ID], json!(9007199254740993u64));
    call_tool(&gw, "/mcp", 2, "fx__test_trigger_tool_change").await;
    let changed = next_notification(&mut stream).await;
    assert_eq!(
        changed["params"]["_meta"][SUB_ID],
        json!(9007199254740993u64)
    );
    drop(stream);
    gw.stop().await;
}

#[tokio::test]
async fn closing_the_aggregate_listen_cancels_the_upstream_listens() {
    // A second fixture whose catalog entry allows one call in flight: while the listen holds
    // that slot, calls are refused as overloaded; once the client has gone, they pass again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(portcullis_fixture::serve_http(
        listener,
        FixtureOptions {
            demo: true,
            ..Default::default()
        },
    ));
    let gw = support::gateway_with_servers(
        &[("one", format!("{{ url: \"{url}\", max_in_flight: 1 }}"))],
        "",
    )
    .await;
    // Connect `one` first (era detection) so the check below measures only the listen.
    call_tool(&gw, "/mcp", 1, "one__echo").await;

    let mut stream = listen(&gw, "/mcp", json!("l"), json!({"toolsListChanged": true})).await;
    let ack = next_notification(&mut stream).await;
    assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);

    let busy = modern(
        &gw,
        "/mcp",
        ALICE,
        2,
        "tools/call",
        json!({"name": "one__echo", "arguments": {"message": "x"}}),
    )
    .await;
    assert_eq!(
        busy.last()["error"]["code"],
        -31001,
        "the listen holds the only slot: {busy:?}"
    );

    drop(stream);
    let freed = support::poll(Duration::from_secs(10), || async {
        let answer = modern(
            &gw,
            "/mcp",
            ALICE,
            3,
            "tools/call",
            json!({"name": "one__echo", "arguments": {"message": "x"}}),
        )
        .await;
        answer.last().get("result").is_some().then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "the upstream listen was not cancelled after the client left"
    );
    gw.stop().await;
}

#[tokio::test]
async fn aggregate_listen_with_nothing_to_listen_to_ends_with_a_tagged_result() {
    let gw = support::gateway().await;
    let mut stream = listen(
        &gw,
        "/mcp",
        json!("empty"),
        json!({"resourceSubscriptions": ["portcullis://nowhere/x"]}),
    )
    .await;
    let ack = next_notification(&mut stream).await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"resourceSubscriptions": []})
    );
    let done = stream.next().await;
    assert_eq!(done["id"], "empty");
    assert_eq!(done["result"]["resultType"], "complete");
    assert_eq!(done["result"]["_meta"][SUB_ID], "empty");
    gw.stop().await;
}

#[tokio::test]
async fn aggregate_listen_refuses_malformed_filters() {
    let gw = support::gateway().await;
    let answer = modern(
        &gw,
        "/mcp",
        ALICE,
        1,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": "yes"}}),
    )
    .await;
    assert_eq!(answer.last()["error"]["code"], -32602, "{answer:?}");
    let answer = modern(&gw, "/mcp", ALICE, 2, "subscriptions/listen", json!({})).await;
    assert_eq!(answer.last()["error"]["code"], -32602, "{answer:?}");
    gw.stop().await;
}

#[tokio::test]
async fn server_route_listen_is_tagged_with_the_clients_id() {
    let gw = support::gateway().await;
    for (path, tool) in [
        ("/mcp/fx", "test_trigger_tool_change"),
        ("/mcp/demo", "test_trigger_tool_change"),
    ] {
        let mut stream = listen(
            &gw,
            path,
            json!("my-sub"),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["test://watched-resource"]}),
        )
        .await;
        let ack = next_notification(&mut stream).await;
        assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
        assert_eq!(ack["params"]["_meta"][SUB_ID], "my-sub", "{path}: {ack}");
        assert_eq!(
            ack["params"]["notifications"]["resourceSubscriptions"],
            json!(["test://watched-resource"])
        );

        call_tool(&gw, path, 2, tool).await;
        let changed = next_notification(&mut stream).await;
        assert_eq!(changed["method"], "notifications/tools/list_changed");
        assert_eq!(
            changed["params"]["_meta"][SUB_ID], "my-sub",
            "{path}: {changed}"
        );

        call_tool(&gw, path, 3, "test_trigger_resource_update").await;
        let updated = next_notification(&mut stream).await;
        assert_eq!(updated["method"], "notifications/resources/updated");
        assert_eq!(updated["params"]["uri"], "test://watched-resource");
        assert_eq!(
            updated["params"]["_meta"][SUB_ID], "my-sub",
            "{path}: {updated}"
        );
        drop(stream);
    }
    gw.stop().await;
}
