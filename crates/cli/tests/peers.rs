//! End-to-end tests through the whole gateway (in-process on 127.0.0.1:0) against MCP peers
//! nobody here wrote: the official Rust SDK (`rmcp`) as a client and as a catalog server,
//! `mcp-server-time` (PyPI, stdio, dual-era), `@modelcontextprotocol/server-everything` (npm,
//! legacy-only Streamable HTTP) and the Python `mcp` SDK client — plus our fixture in
//! `modern_only` mode for the legacy-client → modern-only-server direction, and hot reload of a
//! real config file.
//!
//! The third-party peers come from `scripts/install-peers.sh` (found through `PORTCULLIS_PEERS`,
//! default `<repo>/.mcp-peers`); a missing peer fails the test. Loopback only, every wait
//! bounded, every started process killed and reaped by a guard.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The sampling answer the tests give in place of a model.
fn canned_sampling_result() -> Value {
    json!({"role":"assistant","content":{"type":"text","text":"canned"},"model":"test","stopReason":"endTurn"})
}

/// Text of every content block of a tools/call result.
fn all_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .unwrap_or_else(|| panic!("not a tools/call result: {result}"))
        .iter()
        .filter_map(|block| block["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn server_time_entry(extra: &str) -> String {
    let time = peers().server_time();
    format!(
        "{{ command: [\"{}\", --local-timezone, UTC]{extra} }}",
        time.display()
    )
}

// ---------------------------------------------------------------------------------------------
// 1. rmcp, the official Rust SDK
// ---------------------------------------------------------------------------------------------

mod rust_sdk {
    //! An rmcp server with two macro-defined tools, served over Streamable HTTP on
    //! 127.0.0.1:0, and an rmcp client connected to the gateway.

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
    pub struct SumRequest {
        /// Left operand.
        pub a: i64,
        /// Right operand.
        pub b: i64,
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[schemars(crate = "rmcp::schemars")]
    pub struct ShoutRequest {
        /// What to shout.
        pub text: String,
    }

    #[derive(Debug, Clone)]
    pub struct RsTools {
        tool_router: ToolRouter<Self>,
    }

    #[tool_router]
    impl RsTools {
        pub fn new() -> Self {
            Self {
                tool_router: Self::tool_router(),
            }
        }

        #[tool(description = "Adds two integers")]
        fn sum(&self, Parameters(SumRequest { a, b }): Parameters<SumRequest>) -> String {
            (a + b).to_string()
        }

        #[tool(description = "Upper-cases a text")]
        fn shout(&self, Parameters(ShoutRequest { text }): Parameters<ShoutRequest>) -> String {
            text.to_uppercase()
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for RsTools {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
                .with_instructions("rmcp test server behind Portcullis")
        }
    }

    /// The running rmcp server; aborted on drop.
    pub struct RsServer {
        pub url: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for RsServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn start() -> RsServer {
        let service: StreamableHttpService<RsTools, LocalSessionManager> =
            StreamableHttpService::new(
                || Ok(RsTools::new()),
                Default::default(),
                StreamableHttpServerConfig::default(),
            );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        RsServer {
            url: format!("http://{addr}/mcp"),
            task,
        }
    }
}

/// An rmcp client (`handler`) connected to the gateway's `/mcp` with alice's token.
async fn rmcp_connect<H: rmcp::ClientHandler>(
    handler: H,
    gw: &Gateway,
    mode: rmcp::ClientLifecycleMode,
    label: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, H> {
    use rmcp::ClientServiceExt as _;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", gw.base))
            .auth_header(ALICE),
    );
    match tokio::time::timeout(PEER_WAIT, handler.serve_with_lifecycle(transport, mode)).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => panic!("{label}: rmcp client connects: {error}"),
        Err(_) => panic!("{label}: rmcp client connects within {PEER_WAIT:?}"),
    }
}

#[tokio::test]
async fn rmcp_client_lists_and_calls_tools_through_the_gateway_in_both_eras() {
    use rmcp::ClientLifecycleMode;
    use rmcp::model::{CallToolRequestParams, ProtocolVersion};

    let gw = gateway().await;
    let modes = [
        ("initialize", ClientLifecycleMode::Initialize),
        (
            "discover",
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
    ];
    for (label, mode) in modes {
        let client = rmcp_connect((), &gw, mode, label).await;
        let tools = tokio::time::timeout(PEER_WAIT, client.list_all_tools())
            .await
            .unwrap_or_else(|_| panic!("{label}: tools/list in time"))
            .unwrap_or_else(|e| panic!("{label}: tools/list: {e}"));
        let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        for expected in ["demo__echo", "fx__echo"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{label}: {expected} in {names:?}"
            );
        }
        let arguments = json!({"text": format!("rmcp {label}")});
        let result = tokio::time::timeout(
            PEER_WAIT,
            client.call_tool(
                CallToolRequestParams::new("demo__echo")
                    .with_arguments(arguments.as_object().unwrap().clone()),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: tools/call in time"))
        .unwrap_or_else(|e| panic!("{label}: tools/call: {e}"));
        let result = serde_json::to_value(&result).unwrap();
        assert_eq!(all_text(&result), format!("rmcp {label}"), "{label}");
        assert_ne!(result["isError"], true, "{label}: {result}");
        let _ = tokio::time::timeout(PEER_WAIT, client.cancel()).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn rmcp_server_in_the_catalog_serves_legacy_and_modern_clients() {
    let server = rust_sdk::start().await;
    let gw = gateway_with_servers(&[("rs", format!("{{ url: {} }}", server.url))], "").await;

    let mut legacy = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let names = tool_names(&legacy.request("tools/list", json!({})).await);
    for expected in ["rs__sum", "rs__shout", "fx__echo"] {
        assert!(names.contains(&expected.to_owned()), "{names:?}");
    }
    let sum = legacy
        .request(
            "tools/call",
            json!({"name": "rs__sum", "arguments": {"a": 2, "b": 40}}),
        )
        .await;
    assert_eq!(first_text(&sum), "42", "{sum:?}");

    let list = modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(tool_names(&list).contains(&"rs__shout".to_owned()));
    let shout = modern(
        &gw,
        "/mcp",
        ALICE,
        2,
        "tools/call",
        json!({"name": "rs__shout", "arguments": {"text": "quiet please"}}),
    )
    .await;
    assert_eq!(first_text(&shout), "QUIET PLEASE", "{shout:?}");
    assert_eq!(
        shout.last()["result"]["resultType"],
        "complete",
        "{shout:?}"
    );

    // The transparent route keeps the server's own names.
    let direct = modern(
        &gw,
        "/mcp/rs",
        ALICE,
        3,
        "tools/call",
        json!({"name": "sum", "arguments": {"a": -1, "b": 1}}),
    )
    .await;
    assert_eq!(first_text(&direct), "0", "{direct:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. mcp-server-time (PyPI, stdio, dual-era)
// ---------------------------------------------------------------------------------------------

fn assert_utc_time(answer: &Answer) {
    let result = &answer.last()["result"];
    assert_ne!(result["isError"], true, "{answer:?}");
    let text = all_text(result);
    let time: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("time result is JSON ({e}): {text}"));
    assert_eq!(time["timezone"], "UTC", "{time}");
    let datetime = time["datetime"].as_str().unwrap_or_default();
    assert!(
        datetime.len() >= 19 && datetime.as_bytes()[4] == b'-' && datetime.contains('T'),
        "an ISO date-time: {time}"
    );
}

#[tokio::test]
async fn mcp_server_time_serves_legacy_and_modern_clients() {
    let gw = gateway_with_servers(&[("time", server_time_entry(""))], "").await;

    let mut legacy = LegacyClient::connect(&gw, "/mcp", ALICE, json!({})).await;
    let names = tool_names(&legacy.request("tools/list", json!({})).await);
    assert!(
        names.contains(&"time__get_current_time".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"time__convert_time".to_owned()),
        "{names:?}"
    );
    let call = legacy
        .request(
            "tools/call",
            json!({"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}),
        )
        .await;
    assert_utc_time(&call);

    let list = modern(&gw, "/mcp", BOB, 1, "tools/list", json!({})).await;
    assert!(
        tool_names(&list).contains(&"time__get_current_time".to_owned()),
        "{list:?}"
    );
    let call = modern(
        &gw,
        "/mcp",
        BOB,
        2,
        "tools/call",
        json!({"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}),
    )
    .await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.last()["result"]["resultType"], "complete", "{call:?}");
    assert_utc_time(&call);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. server-everything (legacy only) in front of modern and legacy clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn modern_client_lists_and_calls_legacy_only_server_everything() {
    let everything = start_everything().await;
    let gw = gateway_with_servers(&[("ev", format!("{{ url: {} }}", everything.url))], "").await;

    let direct = modern(&gw, "/mcp/ev", ALICE, 1, "tools/list", json!({})).await;
    assert_eq!(direct.status, 200, "{direct:?}");
    let names = tool_names(&direct);
    assert!(!names.is_empty(), "a modern client sees the legacy tools");
    assert!(names.contains(&"echo".to_owned()), "{names:?}");

    let aggregate = modern(&gw, "/mcp", ALICE, 2, "tools/list", json!({})).await;
    let names = tool_names(&aggregate);
    assert!(names.contains(&"ev__echo".to_owned()), "{names:?}");

    let call = modern(
        &gw,
        "/mcp",
        ALICE,
        3,
        "tools/call",
        json!({"name": "ev__echo", "arguments": {"message": "through portcullis"}}),
    )
    .await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(first_text(&call), "Echo: through portcullis", "{call:?}");
    assert_eq!(call.last()["result"]["resultType"], "complete", "{call:?}");
    gw.stop().await;
    drop(everything);
}

#[tokio::test]
async fn modern_client_answers_everything_sampling_through_input_required() {
    let everything = start_everything().await;
    let gw = gateway_with_servers(&[("ev", format!("{{ url: {} }}", everything.url))], "").await;
    let sampling = json!({"sampling": {}});
    let call_params = json!({
        "name": "ev__trigger-sampling-request",
        "arguments": {"prompt": "say something", "maxTokens": 20}
    });

    let list = modern_with(
        &gw,
        "/mcp",
        ALICE,
        1,
        "tools/list",
        json!({}),
        sampling.clone(),
    )
    .await;
    assert!(
        tool_names(&list).contains(&"ev__trigger-sampling-request".to_owned()),
        "{list:?}"
    );

    // Round 1: the upstream asks for sampling; a modern client gets input_required.
    let first = modern_with(
        &gw,
        "/mcp",
        ALICE,
        2,
        "tools/call",
        call_params.clone(),
        sampling.clone(),
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.last()["id"], 2, "{first:?}");
    let result = &first.last()["result"];
    assert_eq!(result["resultType"], "input_required", "{first:?}");
    let state = result["requestState"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        state.starts_with("pcx1."),
        "gateway-minted state: {first:?}"
    );
    let requests = result["inputRequests"].as_object().expect("inputRequests");
    assert_eq!(requests.len(), 1, "{first:?}");
    let (key, request) = requests.iter().next().unwrap();
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert!(
        request["params"]["messages"]
            .to_string()
            .contains("say something"),
        "the upstream's prompt is relayed: {request}"
    );

    let mut retry = call_params.clone();
    retry["inputResponses"] = json!({ key.as_str(): canned_sampling_result() });
    retry["requestState"] = json!(state);

    // Another principal cannot resume alice's call.
    let stolen = modern_with(
        &gw,
        "/mcp",
        BOB,
        3,
        "tools/call",
        retry.clone(),
        sampling.clone(),
    )
    .await;
    assert_eq!(
        stolen.last()["error"]["code"],
        -32602,
        "bob replays alice's requestState: {stolen:?}"
    );

    // Round 2: alice's retry gets the final result with the canned text.
    let done = modern_with(
        &gw,
        "/mcp",
        ALICE,
        4,
        "tools/call",
        retry.clone(),
        sampling.clone(),
    )
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        done.last()["id"],
        4,
        "the retry's own id answers it: {done:?}"
    );
    assert_eq!(done.last()["result"]["resultType"], "complete", "{done:?}");
    let text = all_text(&done.last()["result"]);
    assert!(text.contains("canned"), "final result: {done:?}");

    // Capabilities are never widened: a caller without `sampling` neither sees nor runs the
    // sampling tool (server-everything registers it per declared capabilities).
    let plain = modern(&gw, "/mcp", ALICE, 7, "tools/list", json!({})).await;
    assert!(
        !tool_names(&plain).contains(&"ev__trigger-sampling-request".to_owned()),
        "listed for a caller without sampling: {plain:?}"
    );
    let refused = modern(&gw, "/mcp", ALICE, 8, "tools/call", call_params.clone()).await;
    let refused = refused.last();
    assert!(
        refused.get("error").is_some() || refused["result"]["isError"] == true,
        "ran for a caller without sampling: {refused}"
    );
    assert_ne!(
        refused["result"]["resultType"], "input_required",
        "{refused}"
    );

    // The handle is single-use: replays by bob or alice fail.
    for (id, token) in [(5, BOB), (6, ALICE)] {
        let replay = modern_with(
            &gw,
            "/mcp",
            token,
            id,
            "tools/call",
            retry.clone(),
            sampling.clone(),
        )
        .await;
        assert_eq!(replay.last()["error"]["code"], -32602, "{replay:?}");
    }
    gw.stop().await;
    drop(everything);
}

#[tokio::test]
async fn legacy_client_answers_everything_sampling_on_the_post_stream() {
    let everything = start_everything().await;
    let gw = gateway_with_servers(&[("ev", format!("{{ url: {} }}", everything.url))], "").await;
    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({"sampling": {}})).await;
    let names = tool_names(&client.request("tools/list", json!({})).await);
    assert!(
        names.contains(&"ev__trigger-sampling-request".to_owned()),
        "{names:?}"
    );

    let mut stream = client
        .request_stream(
            "tools/call",
            json!({"name": "ev__trigger-sampling-request", "arguments": {"prompt": "legacy please", "maxTokens": 20}}),
        )
        .await;
    assert_eq!(stream.status, 200);
    let request = stream.next_request().await;
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert!(
        request["params"]["messages"]
            .to_string()
            .contains("legacy please"),
        "{request}"
    );
    client
        .respond(&request["id"], canned_sampling_result())
        .await;
    let call_id = json!(client.last_id());
    let messages = stream.until_response(&call_id).await;
    let response = messages.last().unwrap();
    assert!(
        all_text(&response["result"]).contains("canned"),
        "final result: {messages:?}"
    );
    drop(stream);
    gw.stop().await;
    drop(everything);
}

/// An rmcp client that declares `sampling` and answers it with a canned message.
#[derive(Clone)]
struct SamplingClient;

#[allow(deprecated)] // sampling is deprecated in 2026-07-28 but still in use
impl rmcp::ClientHandler for SamplingClient {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::builder()
                .enable_sampling()
                .build(),
            rmcp::model::Implementation::new("portcullis-peers-test", "0"),
        )
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let asked = serde_json::to_string(&params.messages).unwrap_or_default();
        Ok(rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text(format!(
                "canned (asked {} bytes)",
                asked.len()
            )),
            "test".into(),
        )
        .with_stop_reason(rmcp::model::CreateMessageResult::STOP_REASON_END_TURN))
    }
}

#[tokio::test]
async fn rmcp_client_answers_everything_sampling_in_both_eras() {
    use rmcp::ClientLifecycleMode;
    use rmcp::model::{CallToolRequestParams, ProtocolVersion};

    let everything = start_everything().await;
    let gw = gateway_with_servers(&[("ev", format!("{{ url: {} }}", everything.url))], "").await;
    let modes = [
        // Legacy: a server→client request on the POST's SSE stream.
        ("initialize", ClientLifecycleMode::Initialize),
        // Modern: input_required with a gateway-minted requestState, retried by rmcp.
        (
            "discover",
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
    ];
    for (label, mode) in modes {
        let client = rmcp_connect(SamplingClient, &gw, mode, label).await;
        let tools = tokio::time::timeout(PEER_WAIT, client.list_all_tools())
            .await
            .unwrap_or_else(|_| panic!("{label}: tools/list in time"))
            .unwrap_or_else(|e| panic!("{label}: tools/list: {e}"));
        assert!(
            tools
                .iter()
                .any(|t| t.name == "ev__trigger-sampling-request"),
            "{label}: {:?}",
            tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
        );
        let arguments = json!({"prompt": format!("rmcp {label}"), "maxTokens": 20});
        let result = tokio::time::timeout(
            PEER_WAIT,
            client.call_tool(
                CallToolRequestParams::new("ev__trigger-sampling-request")
                    .with_arguments(arguments.as_object().unwrap().clone()),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: tools/call in time"))
        .unwrap_or_else(|e| panic!("{label}: tools/call: {e}"));
        let result = serde_json::to_value(&result).unwrap();
        assert!(
            all_text(&result).contains("canned (asked"),
            "{label}: {result}"
        );
        let _ = tokio::time::timeout(PEER_WAIT, client.cancel()).await;
    }
    gw.stop().await;
    drop(everything);
}

// ---------------------------------------------------------------------------------------------
// 4. Legacy client in front of a modern-only server (our fixture with `modern_only`)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn legacy_client_uses_a_modern_only_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let server = tokio::spawn(portcullis_fixture::serve_http(
        listener,
        portcullis_fixture::FixtureOptions {
            modern_only: true,
            ..Default::default()
        },
    ));
    let gw = gateway_with_servers(&[("mo", format!("{{ url: {url} }}"))], "").await;

    let mut client = LegacyClient::connect(&gw, "/mcp", ALICE, json!({"sampling": {}})).await;
    let names = tool_names(&client.request("tools/list", json!({})).await);
    assert!(
        names.contains(&"mo__test_simple_text".to_owned()),
        "{names:?}"
    );
    let simple = client
        .request(
            "tools/call",
            json!({"name": "mo__test_simple_text", "arguments": {}}),
        )
        .await;
    assert_eq!(
        first_text(&simple),
        "This is a simple text response for testing."
    );

    // The upstream answers input_required; the gateway asks the legacy client on the POST
    // stream, retries upstream with the answer, and streams the final result.
    let mut stream = client
        .request_stream(
            "tools/call",
            json!({"name": "mo__test_input_required_result_sampling", "arguments": {}}),
        )
        .await;
    assert_eq!(stream.status, 200);
    let request = stream.next_request().await;
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert!(
        request["params"]["messages"]
            .to_string()
            .contains("capital of France"),
        "{request}"
    );
    client
        .respond(&request["id"], canned_sampling_result())
        .await;
    let call_id = json!(client.last_id());
    let messages = stream.until_response(&call_id).await;
    let response = messages.last().unwrap();
    assert_eq!(
        all_text(&response["result"]),
        "Sampling result: canned",
        "{messages:?}"
    );
    assert!(
        response["result"].get("resultType").is_none()
            || response["result"]["resultType"] == "complete",
        "{response}"
    );
    drop(stream);

    // A legacy caller that did not declare sampling is not asked; the call fails instead.
    let mut plain = LegacyClient::connect(&gw, "/mcp", BOB, json!({})).await;
    let refused = plain
        .request(
            "tools/call",
            json!({"name": "mo__test_input_required_result_sampling", "arguments": {}}),
        )
        .await;
    assert!(
        refused
            .messages
            .iter()
            .all(|m| m.get("method").is_none() || m.get("id").is_none()),
        "no server request to a caller without sampling: {refused:?}"
    );
    let last = refused.last();
    assert!(
        last.get("error").is_some() || last["result"]["isError"] == true,
        "{refused:?}"
    );
    gw.stop().await;
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// 5. Hot reload of a real config file
// ---------------------------------------------------------------------------------------------

async fn aggregate_tools(gw: &Gateway, id: u64) -> Vec<String> {
    let list = modern(gw, "/mcp", ALICE, id, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{list:?}");
    tool_names(&list)
}

#[tokio::test]
async fn hot_reload_adds_keeps_and_removes_servers() {
    const RELOAD_WAIT: Duration = Duration::from_secs(10);
    let dir = TempDir::new("reload");
    let gw = gateway_from_file(&dir.0, &[]).await;
    let names = aggregate_tools(&gw, 1).await;
    assert!(!names.iter().any(|n| n.starts_with("clock__")), "{names:?}");

    // Add a stdio server (marked through its environment so its pid can be found in /proc).
    let mark = format!(
        "clock-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    );
    let mark = mark.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let clock = server_time_entry(&format!(", env: {{ PORTCULLIS_PEERS_TEST_MARK: {mark} }}"));
    gw.rewrite_config(&[("clock", clock.clone())]);
    let mut id = 10;
    let added = poll(RELOAD_WAIT, || {
        id += 1;
        let gw = &gw;
        let id = id;
        async move {
            aggregate_tools(gw, id)
                .await
                .contains(&"clock__get_current_time".to_owned())
                .then_some(())
        }
    })
    .await;
    assert!(
        added.is_some(),
        "the added server's tools appear within {RELOAD_WAIT:?}"
    );
    let call = modern(
        &gw,
        "/mcp",
        ALICE,
        100,
        "tools/call",
        json!({"name": "clock__get_current_time", "arguments": {"timezone": "UTC"}}),
    )
    .await;
    assert_utc_time(&call);
    let pids = poll(RELOAD_WAIT, || async {
        let pids = children_with_env("PORTCULLIS_PEERS_TEST_MARK", &mark);
        (!pids.is_empty()).then_some(pids)
    })
    .await
    .expect("the stdio child is a child of this process");
    assert_eq!(pids.len(), 1, "one child per stdio server: {pids:?}");
    let pid = pids[0];

    // An invalid revision is rejected; the running config keeps serving.
    gw.write_config_text(&config_yaml(
        gw.addr,
        &gw.fixture_url,
        &[],
        "no_such_setting: true\n",
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await; // > debounce + max delay
    let names = aggregate_tools(&gw, 200).await;
    assert!(
        names.contains(&"clock__get_current_time".to_owned()),
        "{names:?}"
    );
    let call = modern(
        &gw,
        "/mcp",
        ALICE,
        201,
        "tools/call",
        json!({"name": "clock__get_current_time", "arguments": {"timezone": "UTC"}}),
    )
    .await;
    assert_utc_time(&call);
    let echo = modern(
        &gw,
        "/mcp",
        ALICE,
        202,
        "tools/call",
        json!({"name": "demo__echo", "arguments": {"text": "still here"}}),
    )
    .await;
    assert_eq!(first_text(&echo), "still here");
    assert!(alive(pid), "the stdio child survives a rejected revision");

    // Remove the server: its tools vanish and its child is stopped and reaped.
    gw.rewrite_config(&[]);
    let mut id = 300;
    let removed = poll(RELOAD_WAIT, || {
        id += 1;
        let gw = &gw;
        let id = id;
        async move {
            let names = aggregate_tools(gw, id).await;
            (!names.iter().any(|n| n.starts_with("clock__"))
                && names.contains(&"demo__echo".to_owned()))
            .then_some(())
        }
    })
    .await;
    assert!(
        removed.is_some(),
        "the removed server's tools vanish within {RELOAD_WAIT:?}"
    );
    let reaped = poll(RELOAD_WAIT, || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert!(
        reaped.is_some(),
        "the removed server's child {pid} is gone and reaped (alive: {})",
        alive(pid)
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. The Python `mcp` SDK client
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn python_sdk_client_through_the_gateway_in_every_mode() {
    let peers = peers();
    let python = peers.python();
    let script = repo_root().join("scripts/e2e_python.py");
    assert!(script.exists(), "{}", script.display());
    let gw = gateway().await;
    let url = format!("{}/mcp", gw.base);
    for mode in ["legacy", "modern", "auto"] {
        let expect = format!("python-{mode}");
        let child = tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&url)
            .arg("-") // no token on the command line: --token-env
            .arg("demo__echo")
            .arg(format!("text={expect}"))
            .arg("--token-env")
            .arg("PORTCULLIS_E2E_TOKEN")
            .arg("--mode")
            .arg(mode)
            .arg("--timeout")
            .arg("20")
            .arg("--expect")
            .arg(&expect)
            .env("PORTCULLIS_E2E_TOKEN", ALICE)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{mode}: e2e_python.py finishes in time"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{mode}: exit {:?}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(
            stdout.contains(&format!("[e2e-python {mode}] PASS")),
            "{mode}: {stdout}"
        );
        assert!(
            stdout.contains("demo__echo") && stdout.contains(&expect),
            "{mode}: {stdout}"
        );
        assert!(stdout.contains(&format!("{mode} ok")), "{mode}: {stdout}");
    }
    gw.stop().await;
}
