//! Shared helpers of the upstream connector tests: peer discovery, configs, callers, messages.
//!
//! Third-party peers (`mcp-server-time`, `@modelcontextprotocol/server-everything`) are found
//! through `$PORTCULLIS_PEERS` or `<repo>/.mcp-peers` (created by `scripts/install-peers.sh`;
//! `peers.json` when present, else the default folder layout). A test that needs a peer that is
//! not installed says so on stderr and returns, unless `PORTCULLIS_REQUIRE_PEERS=1`, which turns
//! the missing peer into a failure (set it in CI after running the installer).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{ServerConfig, Transport};
use portcullis_core::envelope::{self, Envelope, Limits, Parsed};
use portcullis_gateway::upstream::{Caller, Exchange, UpstreamEvent};
use serde_json::Value;

/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Peers {
    pub root: PathBuf,
    pub json: Value,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn peers() -> Peers {
    let root = std::env::var_os("PORTCULLIS_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".mcp-peers"));
    let json = std::fs::read_to_string(root.join("peers.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    Peers { root, json }
}

impl Peers {
    fn path(&self, key: &str, fallback: &str) -> Option<PathBuf> {
        let path = self
            .json
            .get(key)
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join(fallback));
        if path.exists() {
            Some(path)
        } else {
            missing(&format!("{key} ({})", path.display()));
            None
        }
    }

    pub fn server_time(&self) -> Option<PathBuf> {
        self.path("MCP_SERVER_TIME", "venv/bin/mcp-server-time")
    }

    pub fn everything_js(&self) -> Option<PathBuf> {
        self.path(
            "EVERYTHING_JS",
            "npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        )
    }

    /// Node to run server-everything with (Node 22 from the peers when installed, else PATH).
    pub fn node(&self) -> String {
        self.json
            .get("NODE22")
            .and_then(Value::as_str)
            .filter(|p| Path::new(p).exists())
            .unwrap_or("node")
            .to_owned()
    }

    /// `node -r loopback-only.cjs`: makes server-everything bind 127.0.0.1 only.
    pub fn loopback_preload(&self) -> PathBuf {
        self.json
            .get("LOOPBACK_PRELOAD")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("scripts/peers/loopback-only.cjs"))
    }
}

fn missing(what: &str) {
    if std::env::var("PORTCULLIS_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("peer {what} is not installed; run scripts/install-peers.sh");
    }
    eprintln!(
        "SKIPPED: peer {what} is not installed; run scripts/install-peers.sh (PORTCULLIS_REQUIRE_PEERS=1 makes this fail)"
    );
}

pub fn stdio_server(name: &str, command: Vec<String>, timeout: Duration) -> ServerConfig {
    ServerConfig {
        name: name.to_owned(),
        transport: Transport::Stdio {
            command,
            env: BTreeMap::new(),
            cwd: None,
        },
        request_timeout: timeout,
        max_in_flight: 64,
    }
}

pub fn http_server(name: &str, url: &str, legacy_sse: bool, timeout: Duration) -> ServerConfig {
    ServerConfig {
        name: name.to_owned(),
        transport: Transport::Http {
            url: url.to_owned(),
            legacy_sse,
            credentials: None,
        },
        request_timeout: timeout,
        max_in_flight: 64,
    }
}

pub fn caller(key: &str, capabilities: Value) -> Caller {
    Caller {
        key: key.into(),
        protocol_version: "2025-11-25".into(),
        capabilities: Arc::new(capabilities),
        client_info: Some(Arc::new(
            serde_json::json!({ "name": "upstream-test", "version": "0" }),
        )),
    }
}

pub fn parse(text: &str) -> Envelope {
    match envelope::parse(text.as_bytes(), &Limits::default()).expect("test message parses") {
        Parsed::Single(envelope) => envelope,
        Parsed::Batch(_) => panic!("batch"),
    }
}

/// A request with a raw id token (kept byte for byte).
pub fn request(raw_id: &str, method: &str, params: Value) -> Envelope {
    parse(&format!(
        r#"{{"jsonrpc":"2.0","id":{raw_id},"method":{},"params":{params}}}"#,
        serde_json::to_string(method).unwrap()
    ))
}

pub fn tool_call(raw_id: &str, tool: &str, arguments: Value) -> Envelope {
    request(
        raw_id,
        "tools/call",
        serde_json::json!({ "name": tool, "arguments": arguments }),
    )
}

/// Collects an exchange's events up to the final response.
pub async fn finish(exchange: &mut Exchange) -> (Vec<Envelope>, Envelope) {
    let mut notifications = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, exchange.events.recv())
            .await
            .expect("event in time")
            .expect("a final response");
        match event {
            UpstreamEvent::Notification(n) => notifications.push(n),
            UpstreamEvent::Response(r) => return (notifications, r),
            UpstreamEvent::Request { request, .. } => {
                panic!("unexpected server request {}", text(&request))
            }
        }
    }
}

pub fn text(envelope: &Envelope) -> String {
    String::from_utf8(envelope.to_bytes()).unwrap()
}

pub fn member(envelope: &Envelope, name: &str) -> Value {
    envelope
        .member(name)
        .map(|raw| serde_json::from_str(raw.get()).unwrap())
        .unwrap_or(Value::Null)
}

/// Is a process with this pid alive (zombies count as gone)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of the processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] = state, fields[1] = ppid, fields[2] = pgrp
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            out.push(pid);
        }
    }
    out
}

/// Polls `check` until it holds or `WAIT` passes.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}
