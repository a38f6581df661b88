//! Fetching a server's metadata outside the data plane, for `portcullis scan` and
//! `portcullis catalog pin`: the gateway's own connectors (stdio supervisor, Streamable HTTP,
//! legacy HTTP+SSE) list tools, prompts, resources and resource templates, following
//! pagination up to a bound, and report the server's `instructions`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use portcullis_config::{ServerConfig, Transport};
use portcullis_core::envelope::{Envelope, to_raw};
use portcullis_core::rawobj::RawObject;
use serde_json::{Value, json};

use crate::upstream::http::{HttpConnector, http_client};
use crate::upstream::stdio::StdioConnector;
use crate::upstream::{Caller, Connector, UpstreamEvent};

/// Pages followed per list before giving up (a server that paginates forever).
const MAX_PAGES: usize = 50;

/// What a server shows a model before any call.
#[derive(Debug, Clone, Default)]
pub struct ServerMetadata {
    pub tools: Vec<Value>,
    pub prompts: Vec<Value>,
    pub resources: Vec<Value>,
    pub templates: Vec<Value>,
    pub instructions: Option<String>,
}

/// A catalog entry for a server given only by URL (`--url`).
pub fn url_server(name: &str, url: &str, timeout: Duration) -> ServerConfig {
    ServerConfig {
        name: name.to_owned(),
        transport: Transport::Http {
            url: url.to_owned(),
            legacy_sse: false,
            credentials: None,
        },
        request_timeout: timeout,
        max_in_flight: 4,
    }
}

/// A catalog entry for a server given only by its command (`-- cmd args`).
pub fn command_server(name: &str, command: Vec<String>, timeout: Duration) -> ServerConfig {
    ServerConfig {
        name: name.to_owned(),
        transport: Transport::Stdio {
            command,
            env: Default::default(),
            cwd: None,
        },
        request_timeout: timeout,
        max_in_flight: 4,
    }
}

/// Connects to `server`, lists everything, and shuts the connector down (a stdio child is
/// reaped). `tools/list` must succeed; the other lists are optional (left empty on error).
pub async fn fetch(server: &ServerConfig) -> anyhow::Result<ServerMetadata> {
    let connector: Arc<dyn Connector> = match &server.transport {
        Transport::Stdio { .. } => Arc::new(StdioConnector::spawn(server)),
        Transport::Http { .. } => Arc::new(HttpConnector::new(server, http_client())),
    };
    let result = fetch_with(&*connector, server.request_timeout).await;
    connector.shutdown().await;
    result
}

async fn fetch_with(
    connector: &dyn Connector,
    timeout: Duration,
) -> anyhow::Result<ServerMetadata> {
    let caller = Caller {
        key: "portcullis-scan".into(),
        protocol_version: "2025-11-25".into(),
        capabilities: Arc::new(json!({})),
        client_info: Some(Arc::new(
            json!({"name": "portcullis-scan", "version": env!("CARGO_PKG_VERSION")}),
        )),
    };
    let facts = tokio::time::timeout(timeout, connector.facts())
        .await
        .map_err(|_| anyhow!("the server did not answer within {timeout:?}"))?
        .context("cannot connect")?;
    let tools = list(connector, &caller, "tools/list", "tools", timeout).await?;
    let mut optional = Vec::new();
    for (method, field) in [
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ] {
        optional.push(
            list(connector, &caller, method, field, timeout)
                .await
                .unwrap_or_default(),
        );
    }
    let templates = optional.pop().unwrap_or_default();
    let resources = optional.pop().unwrap_or_default();
    let prompts = optional.pop().unwrap_or_default();
    Ok(ServerMetadata {
        tools,
        prompts,
        resources,
        templates,
        instructions: facts.instructions,
    })
}

async fn list(
    connector: &dyn Connector,
    caller: &Caller,
    method: &str,
    field: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let request = Envelope::request(to_raw(&(page + 1)), method, Some(to_raw(&params)));
        let mut exchange = connector.request(caller, request).await?;
        let response = tokio::time::timeout(timeout, async {
            loop {
                match exchange.events.recv().await {
                    Some(UpstreamEvent::Response(response)) => return Some(response),
                    Some(UpstreamEvent::Notification(_)) => {}
                    Some(UpstreamEvent::Request { request, reply }) => {
                        let _ = reply.send(Envelope::error(
                            request.id().map(|r| r.to_owned()),
                            -32601,
                            "not supported while scanning",
                            None,
                        ));
                    }
                    None => return None,
                }
            }
        })
        .await
        .map_err(|_| anyhow!("{method}: no answer within {timeout:?}"))?
        .ok_or_else(|| anyhow!("{method}: the server ended the call without an answer"))?;
        if let Some(error) = response.member("error") {
            bail!(
                "{method}: the server answered with an error: {}",
                error.get()
            );
        }
        let result = response
            .member("result")
            .and_then(RawObject::parse)
            .ok_or_else(|| anyhow!("{method}: the result is not an object"))?;
        if let Some(raw) = result.get(field) {
            let page: Vec<Value> = serde_json::from_str(raw.get())
                .map_err(|_| anyhow!("{method}: `{field}` is not an array"))?;
            items.extend(page);
        }
        cursor = result.get_str("nextCursor");
        if cursor.is_none() {
            return Ok(items);
        }
    }
    bail!("{method}: more than {MAX_PAGES} pages")
}
