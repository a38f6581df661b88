//! Streamable HTTP and legacy HTTP+SSE upstreams.
//!
//! Era and transport are detected once per connector (NOTES §2) and cached:
//! 1. a modern `server/discover` POST. A `DiscoverResult` listing 2026-07-28, or a recognised
//!    modern error (`-32022` naming a modern version we speak, `-32020`, `-32021`) → **modern**:
//!    stateless POSTs, each carrying the caller's own `_meta` and the mirrored headers
//!    (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`); closing the response stream (dropping the
//!    exchange) is the cancellation.
//! 2. otherwise a legacy `initialize` POST → **legacy Streamable HTTP**: one upstream session per
//!    [`Caller::key`], initialized with that caller's capabilities (never widened) and its protocol
//!    version when we speak it; `Mcp-Session-Id` and `MCP-Protocol-Version` on every request; a
//!    standalone GET stream per session for unsolicited messages (405 is fine); an upstream 404
//!    re-initializes the session once and retries; [`Connector::release`] DELETEs it.
//! 3. if that `initialize` fails with 400/404/405 and no modern error body → **HTTP+SSE
//!    (2024-11-05)**: per caller, `GET` the SSE URL, wait for the `endpoint` event (same origin
//!    only: credentials never go to another host), POST every message there, read everything from
//!    the GET stream. `legacy_sse: true` in the config skips detection.
//!
//! A modern upstream that starts answering like a legacy one (404/405 without a JSON-RPC body,
//! `-32022`) makes the connector forget the cached era and probe again on the next call.
//!
//! Only the gateway's own credentials ([`Credentials`]) are sent upstream, on every request;
//! nothing from the client is (the client's token never reaches this module). Everything is
//! bounded: JSON bodies and SSE events ([`MAX_MESSAGE_BYTES`]), calls in flight
//! (`max_in_flight` → [`UpstreamError::Overloaded`]), per-call time (`request_timeout`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use portcullis_config::{Credentials, ServerConfig, Transport};
use portcullis_core::envelope::{self, Envelope, Kind, Limits, Parsed, to_raw};
use portcullis_core::era::{self, Era, LATEST_LEGACY, LATEST_MODERN};
use portcullis_core::mirror;
use portcullis_core::sse::SseParser;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use super::exchange::{self, CallOptions, CallTable, Origin, Outbound, Unregister};
use super::oauth::TokenSource;
use super::stdio::{Discover, classify_discover, legacy_facts};
use super::{Caller, Connector, Exchange, ServerFacts, Unsolicited, UpstreamError, UpstreamEvent};

/// Largest JSON body or SSE event accepted from an upstream.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long era detection waits for `server/discover` and `initialize` answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the HTTP+SSE transport waits for the `endpoint` event.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on best-effort requests (DELETE, notifications, answers to server requests).
const SIDE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection backoff of the standalone GET stream.
const GET_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Times a Streamable HTTP response stream that ended early is resumed with `Last-Event-ID`.
const MAX_RESUMES: usize = 3;

const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const HEADER_SESSION: &str = "mcp-session-id";
const HEADER_VERSION: &str = "mcp-protocol-version";

/// The gateway's outbound HTTP client: rustls (ring), connect timeout, no redirects (an upstream
/// cannot bounce the gateway's credentials elsewhere), bounded idle pool. No overall timeout:
/// SSE streams are long-lived; per-call deadlines are enforced by the connectors.
///
/// # Panics
/// Only if the TLS backend cannot be initialised at all (a build problem, not an input).
pub fn http_client() -> reqwest::Client {
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .tcp_keepalive(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client (rustls with ring) can be built")
}

thread_local! {
    /// An event loop's own outbound client ([`crate::event_loops`]): the pooled connections a
    /// loop's calls use are driven by that loop, not by whichever loop opened them first.
    static LOOP_CLIENT: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

/// Gives the calling thread (an event loop) its own outbound client, built by [`http_client`]
/// like the gateway's shared one (every HTTP connector uses that configuration).
pub(crate) fn use_loop_client() {
    LOOP_CLIENT.with(|client| {
        let _ = client.set(http_client());
    });
}

/// The client for a request made on this thread: the event loop's own, else `shared` (the
/// gateway's, outside the event loops).
pub(crate) fn loop_client(shared: &reqwest::Client) -> reqwest::Client {
    LOOP_CLIENT
        .with(|client| client.get().cloned())
        .unwrap_or_else(|| shared.clone())
}

/// A Streamable HTTP or HTTP+SSE upstream.
pub struct HttpConnector {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// The endpoint, or why the configured one is unusable.
    url: Result<Url, String>,
    legacy_sse: bool,
    /// The gateway's own credential headers, marked sensitive.
    credentials: HeaderMap,
    /// Headers of every modern POST, built once: credentials, `Accept`, `Content-Type`.
    post_headers: HeaderMap,
    /// Where answers to server→client requests on a modern response stream go (nowhere).
    no_outbound: Arc<dyn Outbound>,
    /// The gateway's OAuth client-credentials token source, added to every request.
    token: Option<Arc<TokenSource>>,
    client: reqwest::Client,
    request_timeout: Duration,
    table: Arc<CallTable>,
    /// Bounds the calls in flight; a call finding no slot is `Overloaded`.
    in_flight: Arc<Semaphore>,
    /// The detected era/transport; the async lock serialises probing.
    mode: tokio::sync::Mutex<Option<Arc<Mode>>>,
    /// Input schemas with `x-mcp-header` parameters, for the `Mcp-Param-*` headers of modern
    /// `tools/call` requests (shared with the proxy, which learns them from `tools/list`).
    tool_schemas: OnceLock<Arc<crate::tool_schemas::ToolSchemas>>,
    /// Set when a modern upstream refused `initialize`: legacy callers then get modern requests.
    legacy_refused: std::sync::atomic::AtomicBool,
    /// Legacy upstream sessions, one per caller key.
    sessions: Mutex<HashMap<Arc<str>, Arc<SessionSlot>>>,
    /// Cancelled by shutdown (or drop); parent of every session's stop token.
    closed: CancellationToken,
    next_tag: AtomicU64,
}

#[derive(Clone, Debug)]
enum Mode {
    Modern { facts: ServerFacts },
    Streamable { facts: ServerFacts },
    Sse { facts: ServerFacts },
}

impl Mode {
    fn facts(&self) -> &ServerFacts {
        match self {
            Mode::Modern { facts } | Mode::Streamable { facts } | Mode::Sse { facts } => facts,
        }
    }
}

/// A caller's legacy session; the async lock serialises (re)initialization.
#[derive(Default)]
struct SessionSlot {
    current: tokio::sync::Mutex<Option<Arc<Session>>>,
}

struct Session {
    /// Routing tag of the calls on this session (see [`Origin::session`]).
    tag: u64,
    caller_key: Arc<str>,
    /// Where messages are POSTed: the endpoint (Streamable) or the `endpoint` event's URL (SSE).
    post_url: Url,
    /// `Mcp-Session-Id` given by the upstream (Streamable only).
    session_id: Option<String>,
    protocol_version: String,
    sse: bool,
    /// Ends the session's GET stream task.
    stop: CancellationToken,
    outbound: Arc<dyn Outbound>,
}

/// Posts answers and notifications to one session without waiting.
struct Poster {
    server: Arc<str>,
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    token: Option<Arc<TokenSource>>,
}

impl Poster {
    async fn post(&self, body: Vec<u8>) -> Result<reqwest::Response, SendError> {
        let request = loop_client(&self.client)
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        send(self.token.as_deref(), request).await
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
enum SendError {
    /// No access token could be obtained: the request was not sent at all.
    Token(String),
    Http(reqwest::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Token(reason) => write!(f, "could not obtain an access token: {reason}"),
            SendError::Http(error) => write!(f, "could not be reached ({})", error_chain(error)),
        }
    }
}

impl std::error::Error for SendError {}

/// Sends `request` with the OAuth token (if any). A 401 means the upstream refused the request
/// before processing it, so the token is dropped and the request sent once more with a fresh one.
/// Without a token the request is never sent.
async fn send(
    token: Option<&TokenSource>,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, SendError> {
    let Some(token) = token else {
        return request.send().await.map_err(SendError::Http);
    };
    let retry = request.try_clone();
    let header = token.token().await.map_err(SendError::Token)?;
    let response = request
        .header(reqwest::header::AUTHORIZATION, header.clone())
        .send()
        .await
        .map_err(SendError::Http)?;
    let Some(retry) = retry.filter(|_| response.status() == StatusCode::UNAUTHORIZED) else {
        return Ok(response);
    };
    drop(response);
    token.reject(&header).await;
    let header = token.token().await.map_err(SendError::Token)?;
    retry
        .header(reqwest::header::AUTHORIZATION, header)
        .send()
        .await
        .map_err(SendError::Http)
}

impl Outbound for Poster {
    fn send(&self, message: Envelope) {
        let poster = Poster {
            server: self.server.clone(),
            client: self.client.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            token: self.token.clone(),
        };
        tokio::spawn(async move {
            match tokio::time::timeout(SIDE_REQUEST_TIMEOUT, poster.post(message.to_bytes())).await
            {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => {
                    tracing::debug!(server = %poster.server, status = %response.status(), "upstream refused a message")
                }
                Ok(Err(error)) => {
                    tracing::debug!(server = %poster.server, %error, "could not post a message upstream")
                }
                Err(_) => {
                    tracing::debug!(server = %poster.server, "posting a message upstream timed out")
                }
            }
        });
    }
}

/// Modern upstreams take no responses: server→client requests are not allowed there.
struct NoOutbound {
    server: Arc<str>,
}

impl Outbound for NoOutbound {
    fn send(&self, _message: Envelope) {
        tracing::debug!(server = %self.server, "modern upstream: nothing can be sent back on a response stream");
    }
}

/// Why a session could not be opened.
enum OpenError {
    /// HTTP status without a modern JSON-RPC error body (drives the HTTP+SSE fallback).
    Status(StatusCode),
    /// Anything else, as a reason for [`UpstreamError::Unavailable`].
    Other(String),
    /// The upstream speaks no version we support.
    NoCommonVersion,
}

impl HttpConnector {
    pub fn new(config: &ServerConfig, client: reqwest::Client) -> HttpConnector {
        let (url, legacy_sse, credentials) = match &config.transport {
            Transport::Http {
                url,
                legacy_sse,
                credentials,
            } => {
                let url = Url::parse(url)
                    .map_err(|e| format!("has an invalid URL ({e})"))
                    .and_then(|u| {
                        if matches!(u.scheme(), "http" | "https") {
                            Ok(u)
                        } else {
                            Err("has a URL that is not http(s)".to_owned())
                        }
                    });
                (url, *legacy_sse, credentials.clone())
            }
            Transport::Stdio { .. } => (
                Err("is not configured as an HTTP server".to_owned()),
                false,
                None,
            ),
        };
        let token = match &credentials {
            Some(Credentials::OAuthClientCredentials(oauth)) => {
                Some(TokenSource::new(oauth.clone(), client.clone()))
            }
            _ => None,
        };
        let (credentials, url) = match credential_headers(credentials.as_ref()) {
            Ok(headers) => (headers, url),
            Err(reason) => (HeaderMap::new(), Err(reason)),
        };
        let mut post_headers = credentials.clone();
        post_headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(ACCEPT_BOTH),
        );
        post_headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let name: Arc<str> = config.name.as_str().into();
        HttpConnector {
            inner: Arc::new(Inner {
                no_outbound: Arc::new(NoOutbound {
                    server: name.clone(),
                }),
                name,
                url,
                legacy_sse,
                credentials,
                post_headers,
                token,
                client,
                request_timeout: config.request_timeout,
                table: CallTable::new(&config.name, config.request_timeout),
                in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                mode: tokio::sync::Mutex::new(None),
                legacy_refused: std::sync::atomic::AtomicBool::new(false),
                tool_schemas: OnceLock::new(),
                sessions: Mutex::new(HashMap::new()),
                closed: CancellationToken::new(),
                next_tag: AtomicU64::new(1),
            }),
        }
    }

    /// The detected era (probing on first use).
    /// Shares the gateway's cache of tool schemas (for `Mcp-Param-*` headers).
    pub fn with_tool_schemas(
        self,
        schemas: Arc<crate::tool_schemas::ToolSchemas>,
    ) -> HttpConnector {
        let _ = self.inner.tool_schemas.set(schemas);
        self
    }

    pub async fn era(&self) -> Result<Era, UpstreamError> {
        Ok(self.inner.mode().await?.facts().era)
    }

    /// Whether the upstream was found (or configured) to be a 2024-11-05 HTTP+SSE server.
    pub async fn is_legacy_sse(&self) -> Result<bool, UpstreamError> {
        Ok(matches!(*self.inner.mode().await?, Mode::Sse { .. }))
    }

    /// Calls in flight (tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.inner.table.len()
    }

    /// Number of open legacy upstream sessions.
    pub fn sessions(&self) -> usize {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for HttpConnector {
    fn drop(&mut self) {
        // Ends every session's background stream.
        self.inner.closed.cancel();
    }
}

fn credential_headers(credentials: Option<&Credentials>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let invalid = |what: &str| format!("has an invalid credential header {what}");
    match credentials {
        None => {}
        Some(Credentials::Bearer(secret)) => {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
                .map_err(|_| invalid("Authorization"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Some(Credentials::Headers(map)) => {
            for (name, secret) in map {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(name))?;
                let mut value =
                    HeaderValue::from_str(secret.expose()).map_err(|_| invalid(name))?;
                value.set_sensitive(true);
                headers.insert(header, value);
            }
        }
        // Added per request by the token source.
        Some(Credentials::OAuthClientCredentials(_)) => {}
    }
    Ok(headers)
}

fn header(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

impl Inner {
    fn unavailable(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.to_string(),
            reason: reason.into(),
        }
    }

    fn url(&self) -> Result<&Url, UpstreamError> {
        self.url
            .as_ref()
            .map_err(|reason| self.unavailable(reason.clone()))
    }

    fn next_tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Headers of every POST: credentials and `Accept`.
    fn base_headers(&self) -> HeaderMap {
        let mut headers = self.credentials.clone();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(ACCEPT_BOTH),
        );
        headers
    }

    fn session_headers(&self, session_id: Option<&str>, version: Option<&str>) -> HeaderMap {
        let mut headers = self.base_headers();
        if let Some(value) = session_id.and_then(header) {
            headers.insert(HEADER_SESSION, value);
        }
        if let Some(value) = version.and_then(header) {
            headers.insert(HEADER_VERSION, value);
        }
        headers
    }

    fn poster(&self, url: Url, headers: HeaderMap) -> Poster {
        Poster {
            server: self.name.clone(),
            client: self.client.clone(),
            url,
            headers,
            token: self.token.clone(),
        }
    }

    async fn mode(self: &Arc<Self>) -> Result<Arc<Mode>, UpstreamError> {
        if self.closed.is_cancelled() {
            return Err(self.unavailable("has been shut down"));
        }
        let mut mode = self.mode.lock().await;
        if let Some(mode) = &*mode {
            return Ok(Arc::clone(mode));
        }
        let detected = Arc::new(self.probe().await?);
        tracing::info!(server = %self.name, mode = ?detected, "upstream era detected");
        *mode = Some(Arc::clone(&detected));
        Ok(detected)
    }

    /// The mode a caller is served in. A dual-era upstream serves legacy callers in the legacy
    /// era (their own session, their own capabilities), so session-scoped features such as
    /// `resources/subscribe` and `logging/setLevel` work without translation; only when the
    /// upstream refuses `initialize` does a legacy caller fall back to modern requests.
    async fn mode_for(self: &Arc<Self>, caller: &Caller) -> Result<Arc<Mode>, UpstreamError> {
        let mode = self.mode().await?;
        let Mode::Modern { facts } = &*mode else {
            return Ok(mode);
        };
        if portcullis_core::era::era_of(&caller.protocol_version) != Some(Era::Legacy)
            || self.legacy_refused.load(Ordering::Relaxed)
        {
            return Ok(mode);
        }
        let legacy = Arc::new(Mode::Streamable {
            facts: facts.clone(),
        });
        match self.session_for(caller, &legacy).await {
            Ok(_) => Ok(legacy),
            Err(error) => {
                tracing::info!(server = %self.name, %error, "modern upstream refused a legacy session; legacy callers get modern requests");
                self.legacy_refused.store(true, Ordering::Relaxed);
                Ok(mode)
            }
        }
    }

    /// The input schema of the tool a `tools/call` names, when it mirrors parameters in headers.
    fn tool_schema(&self, request: &Envelope) -> Option<Arc<serde_json::Value>> {
        let schemas = self.tool_schemas.get()?;
        if request.method() != Some("tools/call") || schemas.is_empty() {
            return None;
        }
        let name = request
            .params()
            .and_then(portcullis_core::rawobj::RawObject::parse)?
            .get_str("name")?;
        schemas.get(&self.name, &name)
    }

    /// Forgets the cached era: the next call probes again.
    fn invalidate(&self) {
        if let Ok(mut mode) = self.mode.try_lock() {
            tracing::info!(server = %self.name, "upstream no longer behaves as detected; will probe again");
            *mode = None;
        }
    }

    async fn probe(self: &Arc<Self>) -> Result<Mode, UpstreamError> {
        let url = self.url()?.clone();
        let probe_caller = probe_caller();
        if self.legacy_sse {
            let session = self
                .open_sse(&probe_caller)
                .await
                .map_err(|e| self.open_error(e))?;
            let facts = session.1;
            self.end_session(&session.0).await;
            return Ok(Mode::Sse { facts });
        }
        let mut version = LATEST_MODERN.to_owned();
        for _attempt in 0..2 {
            let mut discover = Envelope::request(to_raw(&0), "server/discover", None);
            exchange::adapt_for_modern(&mut discover, &probe_caller, &version);
            let answer = self.probe_post(&url, &discover, &version).await?;
            let Some(response) = answer else { break };
            match classify_discover(&response) {
                Discover::Modern(facts) => return Ok(Mode::Modern { facts }),
                Discover::Retry(other) if other != version => version = other,
                Discover::Retry(_) => break,
                Discover::Legacy => {
                    if let Some(code) = error_code(&response)
                        && (-32021..=-32020).contains(&code)
                    {
                        // Recognised modern errors about our request, not about the era.
                        return Ok(Mode::Modern {
                            facts: modern_facts_unknown(&version),
                        });
                    }
                    break;
                }
            }
        }
        match self.open_streamable(&probe_caller).await {
            Ok((session, facts)) => {
                self.end_session(&session).await;
                Ok(Mode::Streamable { facts })
            }
            Err(OpenError::Status(status)) if matches!(status.as_u16(), 400 | 404 | 405) => {
                tracing::info!(server = %self.name, %status, "initialize refused; trying the HTTP+SSE transport");
                let (session, facts) = self
                    .open_sse(&probe_caller)
                    .await
                    .map_err(|e| self.open_error(e))?;
                self.end_session(&session).await;
                Ok(Mode::Sse { facts })
            }
            Err(error) => Err(self.open_error(error)),
        }
    }

    fn open_error(&self, error: OpenError) -> UpstreamError {
        match error {
            OpenError::Status(status) => self.unavailable(format!("answered HTTP {status}")),
            OpenError::Other(reason) => self.unavailable(reason),
            OpenError::NoCommonVersion => UpstreamError::NoCommonVersion {
                server: self.name.to_string(),
            },
        }
    }

    /// One modern probe POST; returns the JSON-RPC answer if the body held one.
    async fn probe_post(
        &self,
        url: &Url,
        request: &Envelope,
        version: &str,
    ) -> Result<Option<Envelope>, UpstreamError> {
        let mut headers = self.base_headers();
        for (name, value) in mirror::required_headers(request, version, None) {
            if let (Ok(name), Some(value)) =
                (HeaderName::from_bytes(name.as_bytes()), header(&value))
            {
                headers.insert(name, value);
            }
        }
        let post = loop_client(&self.client)
            .post(url.clone())
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_bytes());
        let send = send(self.token.as_deref(), post);
        let response = match tokio::time::timeout(PROBE_TIMEOUT, send).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(self.unavailable(error.to_string())),
            Err(_) => return Ok(None),
        };
        let mut answer = None;
        let read = tokio::time::timeout(
            PROBE_TIMEOUT,
            read_messages(&self.name, response, |message| {
                if matches!(message.kind(), Kind::Result | Kind::Error) {
                    answer = Some(message);
                    return false;
                }
                true
            }),
        )
        .await;
        if let Ok(Err(error)) = read {
            tracing::debug!(server = %self.name, %error, "unreadable answer to server/discover");
        }
        Ok(answer)
    }

    /// The caller's session, opened on first use.
    async fn session_for(
        self: &Arc<Self>,
        caller: &Caller,
        mode: &Mode,
    ) -> Result<Arc<Session>, UpstreamError> {
        let slot = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(sessions.entry(caller.key.clone()).or_default())
        };
        let mut current = slot.current.lock().await;
        if let Some(session) = &*current
            && !session.stop.is_cancelled()
        {
            return Ok(Arc::clone(session));
        }
        let session = self.open(caller, mode).await?;
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn open(
        self: &Arc<Self>,
        caller: &Caller,
        mode: &Mode,
    ) -> Result<Arc<Session>, UpstreamError> {
        let opened = match mode {
            Mode::Sse { .. } => self.open_sse(caller).await,
            _ => self.open_streamable(caller).await,
        };
        match opened {
            Ok((session, _)) => Ok(session),
            Err(error) => {
                if let OpenError::Status(_) = error {
                    self.invalidate();
                }
                Err(self.open_error(error))
            }
        }
    }

    /// Replaces a session the upstream no longer knows (404), once.
    async fn reopen(
        self: &Arc<Self>,
        caller: &Caller,
        stale: &Arc<Session>,
        mode: &Mode,
    ) -> Result<Arc<Session>, UpstreamError> {
        let slot = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.get(&caller.key).cloned()
        };
        let Some(slot) = slot else {
            return Err(self.unavailable("session was released"));
        };
        let mut current = slot.current.lock().await;
        if let Some(session) = &*current
            && !Arc::ptr_eq(session, stale)
            && !session.stop.is_cancelled()
        {
            return Ok(Arc::clone(session));
        }
        stale.stop.cancel();
        tracing::info!(server = %self.name, "upstream forgot the session (404); initializing again");
        let session = self.open(caller, mode).await?;
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Legacy Streamable HTTP `initialize` with the caller's own capabilities.
    async fn open_streamable(
        self: &Arc<Self>,
        caller: &Caller,
    ) -> Result<(Arc<Session>, ServerFacts), OpenError> {
        let url = self.url.clone().map_err(OpenError::Other)?;
        let tag = self.next_tag();
        let proposed = if era::era_of(&caller.protocol_version) == Some(Era::Legacy) {
            &*caller.protocol_version
        } else {
            LATEST_LEGACY
        };
        let initialize = initialize_request(caller, proposed);
        let poster = Arc::new(self.poster(url.clone(), self.base_headers()));
        let outbound: Arc<dyn Outbound> = poster.clone();
        let options = CallOptions {
            session: tag,
            timeout: PROBE_TIMEOUT.min(self.request_timeout),
            permit: None,
            internal: true,
        };
        let registered = self.table.register(caller, initialize, options, |_| {});
        let id = registered.id;
        let response =
            match tokio::time::timeout(PROBE_TIMEOUT, poster.post(registered.request.to_bytes()))
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    return Err(OpenError::Other(error.to_string()));
                }
                Err(_) => return Err(OpenError::Other("did not answer initialize in time".into())),
            };
        let status = response.status();
        let session_id = response
            .headers()
            .get(HEADER_SESSION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .map(str::to_owned);
        if !status.is_success() {
            let body = read_error_body(&self.name, response).await;
            if body
                .as_ref()
                .and_then(error_code)
                .is_some_and(|code| (-32022..=-32020).contains(&code))
            {
                // A modern server after all: probe again next time.
                self.invalidate();
                return Err(OpenError::Other(
                    "refused initialize with a modern-era error".into(),
                ));
            }
            self.table.fail(id, "refused initialize");
            return Err(OpenError::Status(status));
        }
        let origin = Origin {
            call: Some(id),
            session: tag,
            caller_key: Some(caller.key.clone()),
            outbound: &outbound,
        };
        let table = Arc::clone(&self.table);
        let read = read_messages(&self.name, response, |message| {
            table.dispatch(message, &origin);
            table.is_pending(id)
        })
        .await;
        if let Err(error) = read {
            self.table.fail(id, &error);
        }
        self.table.fail(id, "answered initialize without a result");
        let response = final_response(registered.exchange)
            .await
            .ok_or_else(|| OpenError::Other("initialize failed".into()))?;
        let facts = match legacy_facts(&response) {
            Ok(facts) => facts,
            Err(reason) if reason.starts_with("unsupported protocol version") => {
                return Err(OpenError::NoCommonVersion);
            }
            Err(reason) => return Err(OpenError::Other(format!("refused initialize ({reason})"))),
        };
        let version = facts.protocol_version.clone();
        let headers = self.session_headers(session_id.as_deref(), Some(&version));
        let poster = Arc::new(self.poster(url.clone(), headers));
        // notifications/initialized must be accepted before the session is used.
        let initialized = Envelope::notification("notifications/initialized", None);
        match tokio::time::timeout(PROBE_TIMEOUT, poster.post(initialized.to_bytes())).await {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                return Err(OpenError::Other(format!(
                    "refused notifications/initialized (HTTP {})",
                    response.status()
                )));
            }
            Ok(Err(error)) => return Err(OpenError::Other(error.to_string())),
            Err(_) => {
                return Err(OpenError::Other(
                    "did not accept notifications/initialized in time".into(),
                ));
            }
        }
        let session = Arc::new(Session {
            tag,
            caller_key: caller.key.clone(),
            post_url: url,
            session_id,
            protocol_version: version,
            sse: false,
            stop: self.closed.child_token(),
            outbound: poster,
        });
        tokio::spawn(standalone_stream(Arc::clone(self), Arc::clone(&session)));
        Ok((session, facts))
    }

    /// HTTP+SSE (2024-11-05): GET stream, `endpoint` event, `initialize` answered on the stream.
    async fn open_sse(
        self: &Arc<Self>,
        caller: &Caller,
    ) -> Result<(Arc<Session>, ServerFacts), OpenError> {
        let url = self.url.clone().map_err(OpenError::Other)?;
        let tag = self.next_tag();
        let mut headers = self.credentials.clone();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let get = send(
            self.token.as_deref(),
            self.client.get(url.clone()).headers(headers),
        );
        let response = match tokio::time::timeout(ENDPOINT_TIMEOUT, get).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(OpenError::Other(error.to_string())),
            Err(_) => {
                return Err(OpenError::Other(
                    "did not open its event stream in time".into(),
                ));
            }
        };
        if !response.status().is_success() || !is_event_stream(&response) {
            return Err(OpenError::Other(format!(
                "is neither Streamable HTTP nor HTTP+SSE (GET answered HTTP {})",
                response.status()
            )));
        }
        let stop = self.closed.child_token();
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        tokio::spawn(sse_stream(
            Arc::clone(self),
            response,
            url.clone(),
            tag,
            caller.key.clone(),
            stop.clone(),
            endpoint_tx,
        ));
        let endpoint = match tokio::time::timeout(ENDPOINT_TIMEOUT, endpoint_rx).await {
            Ok(Ok(Ok(endpoint))) => endpoint,
            Ok(Ok(Err(reason))) => {
                stop.cancel();
                return Err(OpenError::Other(reason));
            }
            _ => {
                stop.cancel();
                return Err(OpenError::Other("sent no endpoint event".into()));
            }
        };
        let poster = Arc::new(self.poster(endpoint.clone(), self.base_headers()));
        let proposed = if era::era_of(&caller.protocol_version) == Some(Era::Legacy) {
            &*caller.protocol_version
        } else {
            LATEST_LEGACY
        };
        let initialize = initialize_request(caller, proposed);
        let options = CallOptions {
            session: tag,
            timeout: PROBE_TIMEOUT.min(self.request_timeout),
            permit: None,
            internal: true,
        };
        let registered = self.table.register(caller, initialize, options, |_| {});
        let posted =
            tokio::time::timeout(PROBE_TIMEOUT, poster.post(registered.request.to_bytes())).await;
        match posted {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                stop.cancel();
                return Err(OpenError::Other(format!(
                    "refused initialize (HTTP {})",
                    response.status()
                )));
            }
            _ => {
                stop.cancel();
                return Err(OpenError::Other("could not post initialize".into()));
            }
        }
        let Some(response) = final_response(registered.exchange).await else {
            stop.cancel();
            return Err(OpenError::Other("initialize failed".into()));
        };
        let facts = match legacy_facts(&response) {
            Ok(facts) => facts,
            Err(reason) => {
                stop.cancel();
                if reason.starts_with("unsupported protocol version") {
                    return Err(OpenError::NoCommonVersion);
                }
                return Err(OpenError::Other(format!("refused initialize ({reason})")));
            }
        };
        poster.send(Envelope::notification("notifications/initialized", None));
        let session = Arc::new(Session {
            tag,
            caller_key: caller.key.clone(),
            post_url: endpoint,
            session_id: None,
            protocol_version: facts.protocol_version.clone(),
            sse: true,
            stop,
            outbound: poster,
        });
        Ok((session, facts))
    }

    /// Ends a session: stops its stream, fails its calls, DELETEs it upstream (Streamable).
    async fn end_session(&self, session: &Session) {
        session.stop.cancel();
        self.table.fail_session(session.tag, "session ended");
        if let (false, Some(session_id)) = (session.sse, &session.session_id) {
            let headers = self.session_headers(Some(session_id), Some(&session.protocol_version));
            let delete = send(
                self.token.as_deref(),
                self.client
                    .delete(session.post_url.clone())
                    .headers(headers),
            );
            match tokio::time::timeout(SIDE_REQUEST_TIMEOUT, delete).await {
                Ok(Ok(response)) => {
                    tracing::debug!(server = %self.name, status = %response.status(), "upstream session deleted")
                }
                Ok(Err(error)) => {
                    tracing::debug!(server = %self.name, %error, "could not delete upstream session")
                }
                Err(_) => {
                    tracing::debug!(server = %self.name, "deleting upstream session timed out")
                }
            }
        }
    }

    /// Starts a call: registers it and sets up the work that POSTs it and reads the answer (inline
    /// in the caller's task for a modern upstream, a spawned task for a legacy session).
    async fn call(
        self: &Arc<Self>,
        caller: &Caller,
        mut request: Envelope,
    ) -> Result<Exchange, UpstreamError> {
        let permit = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| UpstreamError::Overloaded {
                server: self.name.to_string(),
            })?;
        let mode = self.mode_for(caller).await?;
        match &*mode {
            Mode::Modern { facts } => {
                exchange::adapt_for_modern(&mut request, caller, &facts.protocol_version);
                let options = CallOptions {
                    session: 0,
                    timeout: self.request_timeout,
                    permit: Some(permit),
                    internal: false,
                };
                // Closing the response stream is the modern cancellation: the call's work (and
                // its request) is dropped when the watcher ends the call or the exchange goes.
                let (mut registered, watcher) =
                    self.table
                        .register_watched(caller, request, options, |_| {});
                let work = Arc::clone(self).modern_call(
                    caller.key.clone(),
                    registered.id,
                    registered.request,
                    Arc::clone(&mode),
                    watcher,
                );
                registered.exchange.events.set_driver(work.boxed());
                Ok(registered.exchange)
            }
            Mode::Streamable { .. } | Mode::Sse { .. } => {
                exchange::adapt_for_legacy(&mut request);
                let session = self.session_for(caller, &mode).await?;
                let cancel = CancellationToken::new();
                let token = cancel.clone();
                let outbound = Arc::clone(&session.outbound);
                let options = CallOptions {
                    session: session.tag,
                    timeout: self.request_timeout,
                    permit: Some(permit),
                    internal: false,
                };
                let registered = self.table.register(caller, request, options, move |id| {
                    token.cancel();
                    outbound.send(exchange::cancelled(id, "cancelled by the gateway"));
                });
                tokio::spawn(Arc::clone(self).legacy_call(
                    caller.clone(),
                    mode,
                    session,
                    registered.id,
                    registered.request,
                    cancel,
                ));
                Ok(registered.exchange)
            }
        }
    }

    /// One modern call, run inline while the caller awaits its events ([`super::events`]): the
    /// POST and a JSON answer are handled in the caller's task; an SSE answer is read on its own
    /// task (its events may be many and far apart). The call's watcher (deadline, abandonment)
    /// runs alongside throughout; whichever ends first ends the other.
    async fn modern_call(
        self: Arc<Self>,
        caller_key: Arc<str>,
        id: u64,
        request: Envelope,
        mode: Arc<Mode>,
        mut watcher: BoxFuture<'static, ()>,
    ) {
        let unregister = Unregister {
            table: Arc::clone(&self.table),
            id,
        };
        let version = &mode.facts().protocol_version;
        let response = tokio::select! {
            biased;
            () = &mut watcher => return,
            response = self.modern_post(id, &request, version) => response,
        };
        drop(request);
        let Some(response) = response else {
            return;
        };
        if is_event_stream(&response) {
            tokio::spawn(async move {
                let _unregister = unregister;
                tokio::select! {
                    biased;
                    () = watcher => {}
                    () = self.modern_read(caller_key, id, response) => {}
                }
            });
            return;
        }
        tokio::select! {
            biased;
            () = &mut watcher => {}
            () = self.modern_read(caller_key, id, response) => {}
        }
    }

    /// POSTs a modern request. `None` when the call already ended (failed, or answered with an
    /// HTTP error carrying a JSON-RPC error).
    async fn modern_post(
        &self,
        id: u64,
        request: &Envelope,
        version: &str,
    ) -> Option<reqwest::Response> {
        let Ok(url) = self.url() else {
            self.table.fail(id, "has no usable URL");
            return None;
        };
        let mut headers = self.post_headers.clone();
        let schema = self.tool_schema(request);
        for (name, value) in mirror::required_headers(request, version, schema.as_deref()) {
            if let (Ok(name), Some(value)) =
                (HeaderName::from_bytes(name.as_bytes()), header(&value))
            {
                headers.insert(name, value);
            }
        }
        let post = loop_client(&self.client)
            .post(url.clone())
            .headers(headers)
            .body(request.to_bytes());
        match send(self.token.as_deref(), post).await {
            Ok(response) if response.status().is_success() => Some(response),
            Ok(response) => {
                self.http_error(id, response.status(), response).await;
                None
            }
            Err(error) => {
                self.table.fail(id, &error.to_string());
                None
            }
        }
    }

    /// Reads a modern call's successful answer (JSON body or SSE stream) into its events.
    async fn modern_read(&self, caller_key: Arc<str>, id: u64, response: reqwest::Response) {
        let origin = Origin {
            call: Some(id),
            session: 0,
            caller_key: Some(caller_key),
            outbound: &self.no_outbound,
        };
        let read = read_messages(&self.name, response, |message| {
            if message.kind() == Kind::Request {
                tracing::warn!(server = %self.name, "modern upstream sent a request on a response stream; dropped");
                return true;
            }
            self.table.dispatch(message, &origin);
            self.table.is_pending(id)
        })
        .await;
        match read {
            Err(error) => self.table.fail(id, &error),
            Ok(_) => self
                .table
                .fail(id, "closed the response stream before answering"),
        }
    }

    /// A non-2xx answer: a JSON-RPC error body is the call's answer; anything else fails it.
    async fn http_error(&self, id: u64, status: StatusCode, response: reqwest::Response) {
        let body = read_error_body(&self.name, response).await;
        match body {
            Some(error) if error.kind() == Kind::Error => {
                if error_code(&error) == Some(-32022) {
                    self.invalidate();
                }
                self.table.complete(id, error)
            }
            _ => {
                if matches!(status.as_u16(), 404 | 405) {
                    self.invalidate();
                }
                self.table.fail(id, &format!("answered HTTP {status}"))
            }
        }
    }

    async fn legacy_call(
        self: Arc<Self>,
        caller: Caller,
        mode: Arc<Mode>,
        mut session: Arc<Session>,
        id: u64,
        request: Envelope,
        cancel: CancellationToken,
    ) {
        let body = request.to_bytes();
        let mut reopened = false;
        loop {
            let poster = self.poster(
                session.post_url.clone(),
                self.session_headers(
                    session.session_id.as_deref(),
                    Some(&session.protocol_version),
                ),
            );
            let response = tokio::select! {
                _ = cancel.cancelled() => return,
                response = poster.post(body.clone()) => response,
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => return self.table.fail(id, &error.to_string()),
            };
            let status = response.status();
            if status == StatusCode::NOT_FOUND && session.session_id.is_some() && !reopened {
                reopened = true;
                match self.reopen(&caller, &session, &mode).await {
                    Ok(fresh) => {
                        session = fresh;
                        continue;
                    }
                    Err(error) => {
                        return self.table.fail(id, &format!("lost its session ({error})"));
                    }
                }
            }
            if !status.is_success() {
                return self.http_error(id, status, response).await;
            }
            if session.sse {
                // HTTP+SSE: the answer comes on the session's GET stream.
                return;
            }
            let origin = Origin {
                call: Some(id),
                session: session.tag,
                caller_key: Some(caller.key.clone()),
                outbound: &session.outbound,
            };
            let mut response = Some(response);
            let mut resumes = 0;
            while let Some(current) = response.take() {
                let table = Arc::clone(&self.table);
                let read = tokio::select! {
                    _ = cancel.cancelled() => return,
                    read = read_messages(&self.name, current, |message| {
                        table.dispatch(message, &origin);
                        table.is_pending(id)
                    }) => read,
                };
                let end = match read {
                    Err(error) => return self.table.fail(id, &error),
                    Ok(end) => end,
                };
                if !self.table.is_pending(id) {
                    return;
                }
                // 2025-11-25 polling: the server may close early after an event id; resume once
                // per event id with GET + Last-Event-ID.
                let Some(last_event_id) = end.last_event_id.filter(|_| resumes < MAX_RESUMES)
                else {
                    break;
                };
                resumes += 1;
                if let Some(retry) = end.retry {
                    tokio::time::sleep(Duration::from_millis(retry.min(5_000))).await;
                }
                let mut headers = self.session_headers(
                    session.session_id.as_deref(),
                    Some(&session.protocol_version),
                );
                headers.insert(
                    reqwest::header::ACCEPT,
                    HeaderValue::from_static("text/event-stream"),
                );
                if let Some(value) = header(&last_event_id) {
                    headers.insert("last-event-id", value);
                }
                match send(
                    self.token.as_deref(),
                    self.client.get(session.post_url.clone()).headers(headers),
                )
                .await
                {
                    Ok(resumed) if resumed.status().is_success() => response = Some(resumed),
                    _ => break,
                }
            }
            if !status.is_success() || status == StatusCode::ACCEPTED {
                return self
                    .table
                    .fail(id, "accepted the request without answering it");
            }
            return self
                .table
                .fail(id, "closed the response stream before answering");
        }
    }
}

fn initialize_request(caller: &Caller, version: &str) -> Envelope {
    let client_info = caller
        .client_info
        .as_deref()
        .cloned()
        .unwrap_or_else(exchange::gateway_client_info);
    let params = serde_json::json!({
        "protocolVersion": version,
        "capabilities": &*caller.capabilities,
        "clientInfo": client_info,
    });
    Envelope::request(to_raw(&0), "initialize", Some(to_raw(&params)))
}

/// The identity used for era detection: no capabilities, the gateway's client info.
fn probe_caller() -> Caller {
    Caller {
        key: "".into(),
        protocol_version: LATEST_MODERN.into(),
        capabilities: Arc::new(serde_json::json!({})),
        client_info: None,
    }
}

fn modern_facts_unknown(version: &str) -> ServerFacts {
    ServerFacts {
        era: Era::Modern,
        protocol_version: version.to_owned(),
        capabilities: serde_json::json!({}),
        server_info: None,
        instructions: None,
    }
}

fn error_code(message: &Envelope) -> Option<i64> {
    let error: Value = serde_json::from_str(message.member("error")?.get()).ok()?;
    error.get("code")?.as_i64()
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    content_type(response).starts_with("text/event-stream")
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

async fn final_response(mut exchange: Exchange) -> Option<Envelope> {
    while let Some(event) = exchange.events.recv().await {
        if let UpstreamEvent::Response(response) = event {
            return Some(response);
        }
    }
    None
}

/// What was learned while reading a response stream.
#[derive(Default)]
struct StreamEnd {
    last_event_id: Option<String>,
    retry: Option<u64>,
}

/// Reads the messages of a response (JSON body or SSE stream), handing each to `on_message`
/// until it returns false or the body ends. Err when the body breaks a bound or the transport.
async fn read_messages(
    server: &str,
    response: reqwest::Response,
    mut on_message: impl FnMut(Envelope) -> bool,
) -> Result<StreamEnd, String> {
    let limits = Limits::default();
    let sse = is_event_stream(&response);
    let mut body = response.bytes_stream();
    let mut end = StreamEnd::default();
    if !sse {
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("broke the response ({})", error_chain(&e)))?;
            if buf.len() + chunk.len() > MAX_MESSAGE_BYTES {
                return Err(format!(
                    "sent a response larger than {MAX_MESSAGE_BYTES} bytes"
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(end);
        }
        match envelope::parse(&buf, &limits) {
            Ok(Parsed::Single(message)) => {
                on_message(message);
            }
            Ok(Parsed::Batch(messages)) => {
                for message in messages {
                    if !on_message(message) {
                        break;
                    }
                }
            }
            Err(error) => return Err(format!("sent an invalid message ({error})")),
        }
        return Ok(end);
    }
    let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("broke the event stream ({})", error_chain(&e)))?;
        let events = parser
            .push(&chunk)
            .map_err(|e| format!("sent a bad event stream ({e})"))?;
        for event in events {
            if let Some(id) = event.id.as_ref().filter(|id| !id.is_empty()) {
                end.last_event_id = Some(id.clone());
            }
            if event.retry.is_some() {
                end.retry = event.retry;
            }
            if !matches!(event.event.as_deref(), None | Some("message"))
                || event.data.trim().is_empty()
            {
                continue;
            }
            match envelope::parse(event.data.as_bytes(), &limits) {
                Ok(Parsed::Single(message)) => {
                    if !on_message(message) {
                        return Ok(end);
                    }
                }
                Ok(Parsed::Batch(messages)) => {
                    for message in messages {
                        if !on_message(message) {
                            return Ok(end);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(server = %server, %error, "upstream event is not JSON-RPC; ignored")
                }
            }
        }
    }
    Ok(end)
}

/// Reads a (bounded) non-2xx body as one JSON-RPC message, if it is one.
async fn read_error_body(server: &str, response: reqwest::Response) -> Option<Envelope> {
    let mut first = None;
    let read = tokio::time::timeout(
        SIDE_REQUEST_TIMEOUT,
        read_messages(server, response, |message| {
            first = Some(message);
            false
        }),
    )
    .await;
    match read {
        Ok(Ok(_)) => first,
        _ => None,
    }
}

/// The standalone GET stream of a legacy Streamable HTTP session: unsolicited messages, tagged
/// with the caller's key. 405 (or any 4xx) means the server offers none; breaks are retried
/// with backoff until the session ends.
async fn standalone_stream(inner: Arc<Inner>, session: Arc<Session>) {
    let mut backoff = Duration::from_secs(1);
    // The task must not keep the connector alive: it ends with the session's stop token, which
    // the connector's shutdown or drop cancels.
    let stop = session.stop.clone();
    loop {
        let mut headers = inner.session_headers(
            session.session_id.as_deref(),
            Some(&session.protocol_version),
        );
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let get = send(
            inner.token.as_deref(),
            inner.client.get(session.post_url.clone()).headers(headers),
        );
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            response = get => response,
        };
        match response {
            Ok(response) if response.status().is_success() && is_event_stream(&response) => {
                backoff = Duration::from_secs(1);
                let origin = Origin {
                    call: None,
                    session: session.tag,
                    caller_key: Some(session.caller_key.clone()),
                    outbound: &session.outbound,
                };
                let table = Arc::clone(&inner.table);
                let read = tokio::select! {
                    _ = stop.cancelled() => return,
                    read = read_messages(&inner.name, response, |message| {
                        table.dispatch(message, &origin);
                        true
                    }) => read,
                };
                if let Err(error) = read {
                    tracing::debug!(server = %inner.name, %error, "standalone stream ended");
                }
            }
            Ok(response) if response.status().is_client_error() => {
                tracing::debug!(server = %inner.name, status = %response.status(), "upstream offers no standalone stream");
                return;
            }
            Ok(response) => {
                tracing::debug!(server = %inner.name, status = %response.status(), "standalone stream refused")
            }
            Err(error) => tracing::debug!(server = %inner.name, %error, "standalone stream failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(GET_BACKOFF_MAX);
    }
}

/// The GET stream of an HTTP+SSE session: first the `endpoint` event (reported on `endpoint`),
/// then every message of the session. When it ends, the session's calls fail and the session
/// is marked stopped so the next call opens a new one.
async fn sse_stream(
    inner: Arc<Inner>,
    response: reqwest::Response,
    base: Url,
    tag: u64,
    caller_key: Arc<str>,
    stop: CancellationToken,
    endpoint: oneshot::Sender<Result<Url, String>>,
) {
    let limits = Limits::default();
    let mut endpoint = Some(endpoint);
    let mut outbound: Option<Arc<dyn Outbound>> = None;
    let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
    let mut body = response.bytes_stream();
    let reason = loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => break "session ended".to_owned(),
            chunk = body.next() => chunk,
        };
        let chunk = match chunk {
            None => break "closed its event stream".to_owned(),
            Some(Err(error)) => break format!("broke its event stream ({})", error_chain(&error)),
            Some(Ok(chunk)) => chunk,
        };
        let events = match parser.push(&chunk) {
            Ok(events) => events,
            Err(error) => break format!("sent a bad event stream ({error})"),
        };
        for event in events {
            if event.event.as_deref() == Some("endpoint") {
                let Some(reply) = endpoint.take() else {
                    continue;
                };
                let resolved = base
                    .join(event.data.trim())
                    .map_err(|e| format!("sent an invalid endpoint ({e})"))
                    .and_then(|url| {
                        if url.origin() == base.origin() {
                            Ok(url)
                        } else {
                            Err("sent an endpoint on another origin; refused".to_owned())
                        }
                    });
                if let Ok(url) = &resolved {
                    outbound = Some(Arc::new(inner.poster(url.clone(), inner.base_headers())));
                }
                let _ = reply.send(resolved);
                continue;
            }
            let Some(outbound) = &outbound else { continue };
            if !matches!(event.event.as_deref(), None | Some("message"))
                || event.data.trim().is_empty()
            {
                continue;
            }
            let origin = Origin {
                call: None,
                session: tag,
                caller_key: Some(caller_key.clone()),
                outbound,
            };
            match envelope::parse(event.data.as_bytes(), &limits) {
                Ok(Parsed::Single(message)) => inner.table.dispatch(message, &origin),
                Ok(Parsed::Batch(messages)) => messages
                    .into_iter()
                    .for_each(|m| inner.table.dispatch(m, &origin)),
                Err(error) => {
                    tracing::warn!(server = %inner.name, %error, "upstream event is not JSON-RPC; ignored")
                }
            }
        }
    };
    if let Some(reply) = endpoint.take() {
        let _ = reply.send(Err(reason.clone()));
    }
    stop.cancel();
    inner.table.fail_session(tag, &reason);
}

impl Connector for HttpConnector {
    fn request(
        &self,
        caller: &Caller,
        request: Envelope,
    ) -> BoxFuture<'_, Result<Exchange, UpstreamError>> {
        let caller = caller.clone();
        async move { self.inner.call(&caller, request).await }.boxed()
    }

    fn notify(
        &self,
        caller: &Caller,
        notification: Envelope,
    ) -> BoxFuture<'_, Result<(), UpstreamError>> {
        let caller = caller.clone();
        async move {
            let inner = &self.inner;
            let method = notification.method().unwrap_or_default();
            if matches!(
                method,
                "notifications/initialized" | "notifications/cancelled"
            ) {
                return Ok(());
            }
            let mode = inner.mode().await?;
            if let Mode::Modern { .. } = *mode {
                // Modern HTTP has no client→server notifications besides cancellation.
                return Ok(());
            }
            let session = inner.session_for(&caller, &mode).await?;
            session.outbound.send(notification);
            Ok(())
        }
        .boxed()
    }

    fn facts(&self) -> BoxFuture<'_, Result<ServerFacts, UpstreamError>> {
        async move { Ok(self.inner.mode().await?.facts().clone()) }.boxed()
    }

    fn unsolicited(&self) -> broadcast::Receiver<Unsolicited> {
        self.inner.table.subscribe()
    }

    fn release(&self, caller_key: &str) -> BoxFuture<'_, ()> {
        let caller_key = caller_key.to_owned();
        async move {
            let slot = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(caller_key.as_str());
            if let Some(slot) = slot {
                let session = slot.current.lock().await.take();
                if let Some(session) = session {
                    self.inner.end_session(&session).await;
                }
            }
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            let keys: Vec<Arc<str>> = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            for key in keys {
                self.release(&key).await;
            }
            self.inner.closed.cancel();
            self.inner.table.fail_all("was shut down");
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_sensitive_headers() {
        let headers = credential_headers(Some(&Credentials::Bearer(
            portcullis_config::Secret::new("s3cret"),
        )))
        .unwrap();
        let value = headers.get(reqwest::header::AUTHORIZATION).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(
            credential_headers(Some(&Credentials::Bearer(portcullis_config::Secret::new(
                "bad\nvalue"
            ))))
            .is_err()
        );
    }

    #[tokio::test]
    async fn upstream_redirect_is_not_followed_bypass() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An upstream answering 307 to another host must not make the gateway resend its
        // request (and credentials) there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut served = 0;
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_secs(2), listener.accept()).await
            {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(reply.as_bytes()).await;
                served += 1;
            }
            served
        });
        let response = http_client()
            .post(format!("http://{addr}/mcp"))
            .header("authorization", "Bearer gateway-secret")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            server.await.unwrap(),
            1,
            "exactly one request reached the upstream"
        );
        // A second client in the same process must build too (provider installed once).
        let _second = http_client();
    }
}
