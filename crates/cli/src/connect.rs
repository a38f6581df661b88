//! `portcullis connect URL`: a stdio bridge to a remote gateway's Streamable HTTP endpoint.
//!
//! A stdio-only MCP client (Claude Desktop, Cursor, …) launches `portcullis connect` as its
//! "server". Every newline-delimited JSON-RPC message read from stdin is POSTed to `URL` with the
//! token as `Authorization: Bearer`; every message the gateway answers (a JSON body, or each event
//! of an SSE stream) is written to stdout as one line. The bridge keeps what Streamable HTTP needs
//! between requests: the `Mcp-Session-Id` and negotiated version of a legacy session (sent on
//! every later request, `DELETE`d on stdin EOF), the standalone GET stream of that session, and
//! the mirrored `MCP-Protocol-Version` / `Mcp-Method` / `Mcp-Name` / `Mcp-Param-*` headers of
//! modern (2026-07-28) requests.
//!
//! Requests run concurrently (a long `tools/call` never holds up a `ping` or the client's answer
//! to a server→client request); one writer task owns stdout, so lines never interleave. HTTP
//! failures become JSON-RPC error responses for the request's id. stdout carries only MCP
//! messages; logs go to stderr. Everything is bounded: stdin lines, response bodies, SSE events,
//! requests in flight and the stdout queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use portcullis_core::envelope::{self, Envelope, Kind, Parsed};
use portcullis_core::era::{self, Era};
use portcullis_core::rawobj::RawObject;
use portcullis_core::sse::SseParser;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Longest message accepted on stdin (and longest SSE event relayed to stdout).
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Longest JSON response body relayed.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Longest error body read from a failed HTTP answer (only its message is used).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Requests (and, separately, notifications and answers) in flight; reading stdin waits beyond.
const MAX_IN_FLIGHT: usize = 64;
/// Messages queued toward stdout.
const OUT_BUFFER: usize = 256;
/// How long in-flight requests may still finish after stdin closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Tool input schemas remembered for modern `Mcp-Param-*` headers.
const MAX_TOOL_SCHEMAS: usize = 4096;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const JSON_AND_SSE: &str = "application/json, text/event-stream";

/// JSON-RPC codes of errors the bridge makes up (outside the ranges JSON-RPC and MCP reserve,
/// next to the gateway's own `-31000…` codes).
pub const UNAUTHORIZED: i64 = -31090;
/// The gateway does not know the legacy session any more: the client must initialize again.
pub const SESSION_GONE: i64 = -31091;
/// The gateway could not be reached or answered with an HTTP error.
pub const GATEWAY_ERROR: i64 = -31092;
const PARSE_ERROR: i64 = -32700;

/// What `portcullis connect` was started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub token: Option<String>,
    /// Extra request headers, `Name: value`.
    pub headers: Vec<String>,
}

/// Runs the bridge until stdin closes (then ends the session and returns) or stdout breaks.
pub async fn run(options: Options) -> anyhow::Result<()> {
    // reqwest is built without a default rustls provider; a second install is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = reqwest::Url::parse(&options.url)
        .with_context(|| format!("invalid gateway URL {:?}", options.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!(
            "the gateway URL must be http:// or https://, not {:?}",
            url.scheme()
        );
    }
    let fixed = fixed_headers(&options)?;
    if options.token.is_none() {
        tracing::warn!(
            "no token given (--token or PORTCULLIS_TOKEN): the gateway will probably answer 401"
        );
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;

    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(OUT_BUFFER);
    let stdout_broken = Arc::new(Notify::new());
    let writer = tokio::spawn(write_stdout(out_rx, stdout_broken.clone()));
    let bridge = Arc::new(Bridge {
        http,
        url,
        fixed,
        has_token: options.token.is_some(),
        state: Mutex::new(SessionState::default()),
        tool_schemas: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashMap::new()),
        next_generation: AtomicU64::new(0),
        out: out_tx,
    });
    tracing::info!(url = %bridge.url, "portcullis connect: bridging stdio to the gateway");

    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let others = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut reader = BufReader::with_capacity(64 << 10, tokio::io::stdin());
    let mut line = Vec::new();
    let mut stdout_ok = true;
    loop {
        while tasks.try_join_next().is_some() {}
        line.clear();
        let read = tokio::select! {
            read = read_line(&mut reader, &mut line, MAX_LINE_BYTES) => read,
            _ = stdout_broken.notified() => {
                stdout_ok = false;
                break;
            }
        };
        match read {
            Ok(LineRead::Eof) => break,
            Ok(LineRead::TooLong) => {
                tracing::warn!(max = MAX_LINE_BYTES, "message on stdin too long; dropped");
                let error = Envelope::error(
                    None,
                    PARSE_ERROR,
                    &format!("message longer than {MAX_LINE_BYTES} bytes dropped"),
                    None,
                );
                bridge.emit(error.to_bytes()).await;
                continue;
            }
            Ok(LineRead::Line) => {}
            Err(error) => {
                tracing::error!(%error, "cannot read stdin");
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = Outgoing::new(std::mem::take(&mut line));
        if message.method() == Some("notifications/cancelled") {
            // Stop waiting for the answer: closing the request's stream is how a modern client
            // cancels, and a legacy session also gets the notification itself.
            bridge.cancel(&message);
            if !bridge.has_session() {
                continue;
            }
        }
        let tracked = bridge.track(&message);
        let semaphore = if message.expects_answer() {
            &requests
        } else {
            &others
        };
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let bridge = bridge.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match tracked {
                Some((key, generation, mut cancelled)) => {
                    tokio::select! {
                        _ = bridge.send(message) => {}
                        _ = &mut cancelled => tracing::debug!(id = key, "request cancelled by the client"),
                    }
                    bridge.untrack(&key, generation);
                }
                None => bridge.send(message).await,
            }
        });
    }

    if stdout_ok {
        // Let calls in flight finish (their answers still go out), within a grace period.
        if tokio::time::timeout(EXIT_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("requests still in flight after stdin closed; abandoned");
        }
    }
    tasks.shutdown().await;
    bridge.end_session().await;
    drop(bridge);
    let _ = writer.await;
    Ok(())
}

fn fixed_headers(options: &Options) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for raw in &options.headers {
        let Some((name, value)) = raw.split_once(':') else {
            bail!("--header must look like 'Name: value', got {raw:?}");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {raw:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {raw:?}"))?;
        headers.append(name, value);
    }
    if let Some(token) = &options.token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the token contains characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// The legacy session the client opened through the bridge.
#[derive(Default)]
struct SessionState {
    id: Option<String>,
    version: Option<String>,
    standalone: Option<JoinHandle<()>>,
}

struct Bridge {
    http: reqwest::Client,
    url: reqwest::Url,
    /// Authorization and the user's `--header`s.
    fixed: HeaderMap,
    has_token: bool,
    state: Mutex<SessionState>,
    /// `inputSchema` of tools with `x-mcp-header` annotations, by tool name (from tools/list).
    tool_schemas: Mutex<HashMap<String, Value>>,
    /// Requests in flight by id (normalized JSON text); dropping the sender abandons the request.
    in_flight: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next_generation: AtomicU64,
    out: mpsc::Sender<Vec<u8>>,
}

/// One message from stdin, with what the bridge needs to know about it.
struct Outgoing {
    body: Vec<u8>,
    /// None when it is a batch or could not be parsed (the gateway answers those itself).
    envelope: Option<Envelope>,
}

impl Outgoing {
    fn new(body: Vec<u8>) -> Outgoing {
        let limits = envelope::Limits {
            max_depth: envelope::MAX_SUPPORTED_DEPTH,
            max_batch: 1024,
        };
        match envelope::parse(&body, &limits) {
            Ok(Parsed::Single(envelope)) => Outgoing {
                body,
                envelope: Some(envelope),
            },
            Ok(Parsed::Batch(_)) | Err(_) => Outgoing {
                body,
                envelope: None,
            },
        }
    }

    fn kind(&self) -> Option<Kind> {
        self.envelope.as_ref().map(Envelope::kind)
    }

    fn method(&self) -> Option<&str> {
        self.envelope.as_ref().and_then(Envelope::method)
    }

    fn id(&self) -> Option<&RawValue> {
        self.envelope
            .as_ref()
            .filter(|e| e.kind() == Kind::Request)
            .and_then(Envelope::id)
    }

    /// Requests, batches and unreadable lines get something back on stdout.
    fn expects_answer(&self) -> bool {
        self.kind().is_none_or(|kind| kind == Kind::Request)
    }

    /// The modern protocol version in `params._meta`, when this is a 2026-07-28 message.
    fn modern_version(&self) -> Option<String> {
        let meta = self
            .envelope
            .as_ref()?
            .params()
            .and_then(RawObject::parse)?
            .get_object("_meta")?;
        let version = meta.get_str(era::META_PROTOCOL_VERSION)?;
        (era::era_of(&version) == Some(Era::Modern)).then_some(version)
    }

    fn param_str(&self, key: &str) -> Option<String> {
        self.envelope
            .as_ref()?
            .params()
            .and_then(RawObject::parse)?
            .get_str(key)
    }
}

impl Bridge {
    /// Registers a request so `notifications/cancelled` can abandon it. None for other
    /// messages, and for a request whose id is already in flight (a client bug).
    fn track(&self, message: &Outgoing) -> Option<(String, u64, oneshot::Receiver<()>)> {
        let key = id_key(message.id()?)?;
        let mut in_flight = self.in_flight.lock().expect("poisoned");
        if in_flight.contains_key(&key) {
            return None;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        in_flight.insert(key.clone(), (generation, tx));
        Some((key, generation, rx))
    }

    fn untrack(&self, key: &str, generation: u64) {
        let mut in_flight = self.in_flight.lock().expect("poisoned");
        if in_flight.get(key).is_some_and(|(g, _)| *g == generation) {
            in_flight.remove(key);
        }
    }

    /// Abandons the request a `notifications/cancelled` names (no answer will be written).
    fn cancel(&self, message: &Outgoing) {
        let params = message
            .envelope
            .as_ref()
            .and_then(Envelope::params)
            .and_then(RawObject::parse);
        let Some(key) = params
            .as_ref()
            .and_then(|p| p.get("requestId"))
            .and_then(id_key)
        else {
            return;
        };
        self.in_flight.lock().expect("poisoned").remove(&key); // dropping the sender cancels
    }

    fn has_session(&self) -> bool {
        self.state.lock().expect("poisoned").id.is_some()
    }

    async fn send(&self, mut message: Outgoing) {
        let initialize = message.method() == Some("initialize");
        let mut request = self
            .http
            .post(self.url.clone())
            .headers(self.fixed.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, JSON_AND_SSE);
        let mut session_used = None;
        if let Some(version) = message.modern_version() {
            request = request.headers(self.mirrored_headers(&message, &version));
        } else if !initialize {
            let (id, version) = {
                let state = self.state.lock().expect("poisoned");
                (state.id.clone(), state.version.clone())
            };
            if let Some(id) = id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
                request = request.header(SESSION_HEADER, id);
            }
            if let Some(version) = version
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                request = request.header(VERSION_HEADER, version);
            }
            session_used = id;
        }
        let response = match request.body(std::mem::take(&mut message.body)).send().await {
            Ok(response) => response,
            Err(error) => {
                let why = format!(
                    "cannot reach the Portcullis gateway at {}: {}",
                    self.url,
                    error_chain(&error)
                );
                self.fail(&message, GATEWAY_ERROR, &why, None).await;
                return;
            }
        };
        if !response.status().is_success() {
            self.http_failure(&message, response, session_used).await;
            return;
        }
        let new_session = if initialize {
            response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        } else {
            None
        };
        let method = message.method().unwrap_or_default().to_owned();
        let answered = self
            .relay(response, message.id(), |bytes| match method.as_str() {
                "initialize" => self.on_initialized(bytes, new_session.clone()),
                "tools/list" => self.remember_tool_schemas(bytes),
                _ => {}
            })
            .await;
        match answered {
            Ok(true) => {}
            Ok(false) if message.id().is_some() => {
                let why = "the gateway ended its answer without a response to this request";
                self.fail(&message, GATEWAY_ERROR, why, None).await;
            }
            Ok(false) => {}
            Err(why) => self.fail(&message, GATEWAY_ERROR, &why, None).await,
        }
    }

    /// `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` for a modern request.
    fn mirrored_headers(&self, message: &Outgoing, version: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let Some(envelope) = &message.envelope else {
            return headers;
        };
        let schema = match (message.method(), message.param_str("name")) {
            (Some("tools/call"), Some(name)) => self
                .tool_schemas
                .lock()
                .expect("poisoned")
                .get(&name)
                .cloned(),
            _ => None,
        };
        for (name, value) in
            portcullis_core::mirror::required_headers(envelope, version, schema.as_ref())
        {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => tracing::warn!(header = name, "mirrored header cannot be sent; omitted"),
            }
        }
        headers
    }

    /// Writes every message of a successful answer to stdout; `inspect` sees each one first.
    /// True when the response to `id` was among them (always true for id-less messages).
    async fn relay(
        &self,
        mut response: Response,
        id: Option<&RawValue>,
        inspect: impl Fn(&[u8]),
    ) -> Result<bool, String> {
        let mut answered = id.is_none();
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if !is_sse {
            let body = read_body(&mut response, MAX_BODY_BYTES).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(answered);
            }
            inspect(&body);
            answered |= id.is_some_and(|id| answers(&body, id));
            self.emit(body).await;
            return Ok(answered);
        }
        let mut parser = SseParser::new(MAX_LINE_BYTES);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(answered),
                Err(error) => {
                    return if answered {
                        Ok(true)
                    } else {
                        Err(format!(
                            "the gateway's event stream broke: {}",
                            error_chain(&error)
                        ))
                    };
                }
            };
            let events = parser
                .push(&chunk)
                .map_err(|error| format!("the gateway sent an unreadable event stream: {error}"))?;
            for event in events {
                if event.data.trim().is_empty() {
                    continue; // priming events and keep-alives carry no message
                }
                let data = event.data.into_bytes();
                inspect(&data);
                answered |= id.is_some_and(|id| answers(&data, id));
                self.emit(data).await;
            }
        }
    }

    /// Remembers the session an `initialize` answer opened (before the answer reaches the
    /// client, so its next request already carries it) and opens its standalone stream.
    fn on_initialized(&self, bytes: &[u8], session: Option<String>) {
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let Some(version) = value
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        else {
            return;
        };
        let mut state = self.state.lock().expect("poisoned");
        if let Some(old) = state.standalone.take() {
            old.abort();
        }
        if let Some(old) = state.id.take().filter(|old| session.as_ref() != Some(old)) {
            let request = self.delete_request(&old, state.version.as_deref());
            tokio::spawn(async move {
                let _ = request.send().await;
            });
        }
        state.version = Some(version.to_owned());
        state.id = session.clone();
        if let Some(session) = session {
            tracing::info!(version, "session opened");
            let stream = StandaloneStream {
                http: self.http.clone(),
                url: self.url.clone(),
                fixed: self.fixed.clone(),
                session,
                version: version.to_owned(),
                out: self.out.clone(),
            };
            state.standalone = Some(tokio::spawn(stream.run()));
        }
    }

    fn remember_tool_schemas(&self, bytes: &[u8]) {
        // Cheap pre-check: only annotated schemas matter.
        if !bytes.windows(12).any(|w| w == b"x-mcp-header") {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let Some(tools) = value.pointer("/result/tools").and_then(Value::as_array) else {
            return;
        };
        let mut schemas = self.tool_schemas.lock().expect("poisoned");
        for tool in tools {
            let (Some(name), Some(schema)) = (
                tool.get("name").and_then(Value::as_str),
                tool.get("inputSchema"),
            ) else {
                continue;
            };
            if !schema.to_string().contains("x-mcp-header") {
                continue;
            }
            if schemas.len() >= MAX_TOOL_SCHEMAS && !schemas.contains_key(name) {
                schemas.clear();
            }
            schemas.insert(name.to_owned(), schema.clone());
        }
    }

    /// Turns a non-2xx answer into a JSON-RPC error on stdout (or a log line, for messages that
    /// get no answer).
    async fn http_failure(
        &self,
        message: &Outgoing,
        mut response: Response,
        session_used: Option<String>,
    ) {
        let status = response.status();
        let body = read_body(&mut response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let body_json: Option<Value> = serde_json::from_slice(&body).ok();
        let gateway_says = body_json
            .as_ref()
            .and_then(|v| v.pointer("/error/message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let data = json!({ "httpStatus": status.as_u16(), "gateway": gateway_says });

        if status == StatusCode::UNAUTHORIZED {
            let why = if self.has_token {
                "the Portcullis gateway refused the token (HTTP 401): it is invalid, expired or revoked; check --token or PORTCULLIS_TOKEN"
            } else {
                "the Portcullis gateway requires a token (HTTP 401) and none was given: pass --token or set PORTCULLIS_TOKEN"
            };
            self.fail(message, UNAUTHORIZED, why, Some(data)).await;
            return;
        }
        if status == StatusCode::NOT_FOUND && session_used.is_some() {
            self.forget_session(session_used.as_deref());
            let why = "the gateway no longer knows this MCP session (it expired, was ended, or the gateway restarted); the client must initialize again";
            self.fail(message, SESSION_GONE, why, Some(data)).await;
            return;
        }
        // A JSON-RPC error naming the request is the gateway's real answer (e.g. 400 -32020,
        // 404 -32601 for a modern client): relay it unchanged.
        if let (Some(id), Some(value)) = (message.id(), &body_json)
            && value.get("error").is_some()
            && answers(&body, id)
        {
            self.emit(body).await;
            return;
        }
        let why = format!(
            "the gateway answered HTTP {}: {gateway_says}",
            status.as_u16()
        );
        self.fail(message, GATEWAY_ERROR, &why, Some(data)).await;
    }

    /// Reports a failure: a JSON-RPC error for requests (id-less for batches and unreadable
    /// lines), a log line for notifications and answers.
    async fn fail(&self, message: &Outgoing, code: i64, why: &str, data: Option<Value>) {
        tracing::warn!(method = message.method().unwrap_or("-"), code, "{why}");
        if !message.expects_answer() {
            return;
        }
        let id = message.id().map(ToOwned::to_owned);
        self.emit(Envelope::error(id, code, why, data).to_bytes())
            .await;
    }

    fn forget_session(&self, id: Option<&str>) {
        let mut state = self.state.lock().expect("poisoned");
        if state.id.as_deref() == id {
            state.id = None;
            state.version = None;
            if let Some(stream) = state.standalone.take() {
                stream.abort();
            }
        }
    }

    fn delete_request(&self, id: &str, version: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .delete(self.url.clone())
            .headers(self.fixed.clone())
            .timeout(Duration::from_secs(5));
        if let Ok(value) = HeaderValue::from_str(id) {
            request = request.header(SESSION_HEADER, value);
        }
        if let Some(version) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
            request = request.header(VERSION_HEADER, version);
        }
        request
    }

    /// Stops the standalone stream and DELETEs the session, if one is open.
    async fn end_session(&self) {
        let (id, version) = {
            let mut state = self.state.lock().expect("poisoned");
            if let Some(stream) = state.standalone.take() {
                stream.abort();
            }
            (state.id.take(), state.version.take())
        };
        let Some(id) = id else { return };
        match self.delete_request(&id, version.as_deref()).send().await {
            Ok(response) => tracing::info!(status = response.status().as_u16(), "session ended"),
            Err(error) => tracing::warn!(error = %error_chain(&error), "could not end the session"),
        }
    }

    async fn emit(&self, line: Vec<u8>) {
        if self.out.send(line).await.is_err() {
            tracing::debug!("stdout closed; message dropped");
        }
    }
}

/// The legacy session's standalone GET stream: server notifications and requests that belong to
/// no call, copied to stdout. Reconnects with backoff; ends on 404 / 405 or when aborted.
struct StandaloneStream {
    http: reqwest::Client,
    url: reqwest::Url,
    fixed: HeaderMap,
    session: String,
    version: String,
    out: mpsc::Sender<Vec<u8>>,
}

impl StandaloneStream {
    async fn run(self) {
        let mut failures = 0u32;
        let mut last_event_id = String::new();
        loop {
            let mut request = self
                .http
                .get(self.url.clone())
                .headers(self.fixed.clone())
                .header(header::ACCEPT, "text/event-stream")
                .header(VERSION_HEADER, self.version.as_str());
            if let Ok(value) = HeaderValue::from_str(&self.session) {
                request = request.header(SESSION_HEADER, value);
            }
            if !last_event_id.is_empty() {
                request = request.header("last-event-id", last_event_id.as_str());
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    failures = 0;
                    if let Some(id) = self.copy(response).await {
                        last_event_id = id;
                    }
                }
                Ok(response) if response.status() == StatusCode::METHOD_NOT_ALLOWED => {
                    tracing::debug!("the gateway offers no standalone stream");
                    return;
                }
                Ok(response)
                    if matches!(
                        response.status(),
                        StatusCode::NOT_FOUND
                            | StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::CONFLICT
                    ) =>
                {
                    tracing::info!(
                        status = response.status().as_u16(),
                        "standalone stream refused"
                    );
                    return;
                }
                Ok(response) => {
                    failures += 1;
                    tracing::warn!(
                        status = response.status().as_u16(),
                        "standalone stream failed"
                    );
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(error = %error_chain(&error), "standalone stream failed");
                }
            }
            if failures > 8 {
                tracing::warn!(
                    "standalone stream given up; server notifications outside calls will not arrive"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(failures.min(6)))).await;
        }
    }

    /// Copies one stream's messages to stdout; returns the last event id seen.
    async fn copy(&self, mut response: Response) -> Option<String> {
        let mut parser = SseParser::new(MAX_LINE_BYTES);
        let mut last = None;
        while let Ok(Some(chunk)) = response.chunk().await {
            let Ok(events) = parser.push(&chunk) else {
                tracing::warn!("unreadable standalone stream; reconnecting");
                break;
            };
            for event in events {
                if let Some(id) = event.id.filter(|id| !id.is_empty()) {
                    last = Some(id);
                }
                if event.data.trim().is_empty() {
                    continue;
                }
                if self
                    .out
                    .send(one_line(event.data.into_bytes()))
                    .await
                    .is_err()
                {
                    return last;
                }
            }
        }
        last
    }
}

/// A request id as normalized JSON text (`1`, `"a"`), so equal ids compare equal.
fn id_key(id: &RawValue) -> Option<String> {
    serde_json::from_str::<Value>(id.get())
        .ok()
        .filter(|id| id.is_string() || id.is_number())
        .map(|id| id.to_string())
}

/// Does this message (or batch) carry the final response to the request `id`?
fn answers(bytes: &[u8], id: &RawValue) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let Ok(id) = serde_json::from_str::<Value>(id.get()) else {
        return false;
    };
    let is_answer = |m: &Value| {
        m.get("id") == Some(&id) && (m.get("result").is_some() || m.get("error").is_some())
    };
    match &value {
        Value::Array(items) => items.iter().any(is_answer),
        other => is_answer(other),
    }
}

async fn read_body(response: &mut Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(format!("the gateway's answer is larger than {max} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                return Err(format!(
                    "the gateway's answer broke off: {}",
                    error_chain(&error)
                ));
            }
        }
    }
}

/// A JSON text on one line: raw line breaks can only be whitespace between tokens (JSON strings
/// cannot contain them), so they become spaces.
fn one_line(mut bytes: Vec<u8>) -> Vec<u8> {
    for byte in &mut bytes {
        if *byte == b'\n' || *byte == b'\r' {
            *byte = b' ';
        }
    }
    bytes
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The single owner of stdout: one message per line, flushed as it goes.
async fn write_stdout(mut messages: mpsc::Receiver<Vec<u8>>, broken: Arc<Notify>) {
    let mut stdout = tokio::io::stdout();
    while let Some(message) = messages.recv().await {
        let mut line = one_line(message);
        line.push(b'\n');
        let written = async {
            stdout.write_all(&line).await?;
            if messages.is_empty() {
                stdout.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        if let Err(error) = written.await {
            tracing::error!(%error, "cannot write to stdout; stopping");
            broken.notify_one();
            return;
        }
    }
    let _ = stdout.flush().await;
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    Line,
    Eof,
    /// The line exceeded the limit; it was consumed and discarded.
    TooLong,
}

/// Reads one `\n`-terminated line (without the terminator) into `line`, never holding more than
/// `max` bytes. A last line without terminator counts as a line.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut too_long = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (part, used, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => (&buffer[..end], end + 1, true),
            None => (buffer, buffer.len(), false),
        };
        if !too_long {
            if line.len() + part.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(part);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_split() {
        let input: &[u8] = b"{\"a\":1}\r\n0123456789abcdef\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"{\"a\":1}\r");
        line.clear();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            LineRead::TooLong
        );
        line.clear();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(line, b"last");
        line.clear();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            LineRead::Eof
        );
    }

    #[test]
    fn answers_matches_final_responses_only() {
        let id = RawValue::from_string("7".into()).unwrap();
        assert!(answers(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#, &id));
        assert!(answers(
            br#"[{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"x"}}]"#,
            &id
        ));
        assert!(!answers(
            br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#,
            &id
        ));
        assert!(!answers(br#"{"jsonrpc":"2.0","id":"7","result":{}}"#, &id));
    }

    #[test]
    fn one_line_keeps_json_valid() {
        let pretty = b"{\n  \"a\": \"b\"\r\n}".to_vec();
        let line = one_line(pretty);
        assert!(!line.contains(&b'\n'));
        assert_eq!(
            serde_json::from_slice::<Value>(&line).unwrap(),
            json!({"a": "b"})
        );
    }

    #[test]
    fn bad_header_arguments_are_refused() {
        let options = |h: &str| Options {
            url: "http://x/mcp".into(),
            token: Some("t".into()),
            headers: vec![h.into()],
        };
        assert!(fixed_headers(&options("X-Team: blue")).is_ok());
        assert!(fixed_headers(&options("no colon")).is_err());
        assert!(fixed_headers(&options("Bad Name: v")).is_err());
        let headers = fixed_headers(&options("X-Team: blue")).unwrap();
        assert_eq!(headers.get("authorization").unwrap(), "Bearer t");
    }
}
