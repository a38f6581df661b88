//! The legacy HTTP+SSE transport (2024-11-05), served for old clients next to Streamable HTTP.
//!
//! `GET /sse` (aggregate) or `GET /mcp/{server}/sse` opens a connection: an SSE stream whose
//! first event is `endpoint`, with data `/message?sessionId=<connection id>` (a path relative to
//! the gateway's origin, under `public_url`'s path). The client POSTs every message there and
//! gets `202 Accepted`; every server message (responses, notifications, server→client requests,
//! and the session's unsolicited messages) goes out as a `message` event on the GET stream.
//!
//! Nothing here re-implements the proxy: `initialize` opens a session through
//! [`lifecycle::initialize`], every other message runs through [`proxy::handle`] with the same
//! [`Call`](crate::proxy::Call) Streamable HTTP builds for a legacy session, and what the
//! [`Reply`] holds is written into the connection's bounded outbox instead of an HTTP response.
//!
//! Both the GET and every POST are authenticated and checked (Host/Origin) like `/mcp`. A
//! connection id is bound to the principal that opened it: another principal's POST is answered
//! `404` exactly like an unknown id. When the GET stream closes, the connection and its session
//! end and upstream state kept for the session is released.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::response::sse::Event;
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use portcullis_core::envelope::{Envelope, Kind, Parsed, to_raw};
use rand::RngCore;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{checks, mcp, render, unsolicited};
use crate::auth::Principal;
use crate::proxy::errors::{INVALID_REQUEST, ProxyError};
use crate::proxy::{self, Reply, lifecycle};
use crate::route::Route;
use crate::session::Session;
use crate::state::{Gateway, Runtime};

/// Messages queued toward one connection's stream before senders wait.
const OUTBOX: usize = 256;
/// Messages of one connection handled at once; further POSTs wait for a slot.
const MAX_IN_FLIGHT: usize = 32;
/// How often an open stream marks its session as in use (so the idle reaper leaves it alone).
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// The open connections, by id.
#[derive(Debug)]
pub struct Connections {
    map: Mutex<HashMap<Arc<str>, Arc<Connection>>>,
    /// Set at shutdown: every stream ends (graceful shutdown waits for open responses).
    closing: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            map: Mutex::default(),
            closing: watch::channel(false).0,
        }
    }
}

impl Connections {
    /// Opens a connection with a random 128-bit id; None when `max` are already open.
    fn open(
        &self,
        principal: Principal,
        route: Route,
        max: usize,
    ) -> Option<(Arc<Connection>, mpsc::Receiver<Envelope>)> {
        let mut map = self.map.lock().expect("poisoned");
        if map.len() >= max {
            return None;
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let id: Arc<str> = hex::encode(bytes).into();
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        let connection = Arc::new(Connection {
            id: id.clone(),
            principal,
            route,
            outbox,
            session: Mutex::new(None),
            initializing: tokio::sync::Mutex::new(()),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        map.insert(id, connection.clone());
        Some((connection, receiver))
    }

    /// The connection `id` if `principal` opened it; another principal's is not found.
    fn get(&self, id: &str, principal: &Principal) -> Option<Arc<Connection>> {
        let map = self.map.lock().expect("poisoned");
        let connection = map.get(id)?;
        (connection.principal.agent == principal.agent
            && connection.principal.credential_id == principal.credential_id)
            .then(|| connection.clone())
    }

    /// The route of connection `id`, if open (to authenticate a `/message` against it).
    fn route_of(&self, id: &str) -> Option<Route> {
        let map = self.map.lock().expect("poisoned");
        map.get(id).map(|connection| connection.route.clone())
    }

    fn remove(&self, id: &str) -> Option<Arc<Connection>> {
        self.map.lock().expect("poisoned").remove(id)
    }

    /// Ends every open stream, and any opened later (server shutdown: a graceful shutdown
    /// waits for open responses, and these never end on their own).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Connections::close_all`] was called.
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client's GET stream and what it is bound to.
#[derive(Debug)]
struct Connection {
    id: Arc<str>,
    principal: Principal,
    route: Route,
    /// Everything for the client goes through here onto its stream.
    outbox: mpsc::Sender<Envelope>,
    /// The session `initialize` opened on this connection.
    session: Mutex<Option<Arc<Session>>>,
    /// Serializes `initialize` so one connection never opens two sessions.
    initializing: tokio::sync::Mutex<()>,
    in_flight: Arc<Semaphore>,
}

impl Connection {
    fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().expect("poisoned").clone()
    }

    async fn send(&self, message: Envelope) {
        if self.outbox.send(message).await.is_err() {
            tracing::debug!(connection = %self.id, "stream closed; message dropped");
        }
    }
}

/// `GET /sse`: a connection on the aggregate.
pub async fn aggregate_stream(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    open(gateway, Route::Aggregate, &headers).await
}

/// `GET /mcp/{server}/sse`: a connection on one server's transparent route.
pub async fn server_stream(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if gateway.runtime().server(&name).is_none() {
        return render::http_error(StatusCode::NOT_FOUND, "no such catalog server");
    }
    open(gateway, Route::Server(name.into()), &headers).await
}

/// Host/Origin checks and authentication, as on `/mcp`.
#[allow(clippy::result_large_err)]
async fn admit(
    runtime: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let config = &runtime.config;
    if !checks::host_allowed(config, headers) || !checks::origin_allowed(config, headers) {
        return Err(render::http_error(
            StatusCode::FORBIDDEN,
            "Forbidden: Origin or Host not allowed",
        ));
    }
    checks::authenticate(runtime, route, headers).await
}

async fn open(gateway: Arc<Gateway>, route: Route, headers: &HeaderMap) -> Response {
    let runtime = gateway.runtime();
    let principal = match admit(&runtime, &route, headers).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let (_, accepts_sse) = checks::accepts(headers);
    if !accepts_sse {
        return render::http_error(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must include text/event-stream",
        );
    }
    let Some((connection, receiver)) =
        gateway
            .legacy_sse
            .open(principal, route, runtime.config.limits.max_sessions)
    else {
        return render::http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open connections; try again later",
        );
    };
    tracing::debug!(connection = %connection.id, route = %connection.route.path(), "legacy HTTP+SSE connection opened");
    let endpoint = format!(
        "{}/message?sessionId={}",
        base_path(&runtime.config.public_url),
        connection.id
    );
    let closer = Closer {
        gateway: gateway.clone(),
        id: connection.id.clone(),
    };
    let first = futures::stream::once(futures::future::ready(
        Event::default().event("endpoint").data(endpoint),
    ));
    let messages = ReceiverStream::new(receiver).map(move |message| {
        let _closer = &closer; // ends the connection when the stream is dropped
        Event::default()
            .event("message")
            .data(one_line(&message.to_bytes()))
    });
    let events = first
        .chain(messages)
        .take_until(gateway.legacy_sse.closed())
        .map(Ok::<_, Infallible>);
    // A kill switch that stops this agent (or this server's route) ends the connection.
    crate::proxy::control::end_stream_on_kill(
        &gateway,
        &connection.principal,
        &connection.route,
        render::sse(events),
    )
}

/// The path of `public_url` (empty, or a prefix such as `/portcullis`), so the endpoint is right
/// behind a reverse proxy that mounts the gateway under a path.
fn base_path(public_url: &str) -> &str {
    let rest = public_url
        .split_once("://")
        .map_or(public_url, |(_, rest)| rest);
    rest.find('/')
        .map_or("", |i| rest[i..].trim_end_matches('/'))
}

/// An event's data on one line: raw line breaks in JSON are whitespace between tokens.
fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace(['\r', '\n'], " ")
}

/// Ends a connection when its stream goes away: the connection is forgotten, its session ended
/// and upstream state kept for the session released.
struct Closer {
    gateway: Arc<Gateway>,
    id: Arc<str>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let Some(connection) = self.gateway.legacy_sse.remove(&self.id) else {
            return;
        };
        tracing::debug!(connection = %self.id, "legacy HTTP+SSE connection closed");
        let Some(session) = connection.session.lock().expect("poisoned").take() else {
            return;
        };
        let _ = self
            .gateway
            .sessions
            .remove(&session.id, &session.principal, &session.route);
        let gateway = self.gateway.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for entry in gateway.runtime().catalog.values() {
                    entry.connector.release(&session.id).await;
                }
            });
        }
    }
}

/// `POST /message?sessionId=…`: one client message for a connection; answered 202, the
/// outcome goes to the connection's stream.
pub async fn message(
    State(gateway): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let runtime = gateway.runtime();
    let Some(id) = query.as_deref().and_then(|q| query_value(q, "sessionId")) else {
        return render::http_error(
            StatusCode::BAD_REQUEST,
            "Bad Request: the sessionId query parameter is required",
        );
    };
    // Authenticate before looking the connection up, so ids cannot be probed. The challenge
    // names the aggregate's metadata: an unauthenticated request may not learn the route.
    let principal = match admit(&runtime, &Route::Aggregate, &headers).await {
        Ok(principal) => principal,
        // A token bound to one server's resource (RFC 8707 audience `/mcp/{server}`) is good
        // for that server's connections; the connection check below still applies.
        Err(response) => match gateway.legacy_sse.route_of(id) {
            Some(route @ Route::Server(_)) => match admit(&runtime, &route, &headers).await {
                Ok(principal) => principal,
                Err(_) => return response,
            },
            _ => return response,
        },
    };
    let Some(connection) = gateway.legacy_sse.get(id, &principal) else {
        return render::http_error(
            StatusCode::NOT_FOUND,
            "unknown or closed connection; open a new one with GET",
        );
    };
    let config = &runtime.config;
    if !checks::is_json(&headers) {
        return render::http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let parsed = match checks::read_envelope(config, body).await {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let parsed = crate::audit_trail::trace::adopt_header(headers.get("traceparent"), parsed);
    let message = match parsed {
        Parsed::Single(message) => message,
        Parsed::Batch(_) => {
            let error = ProxyError::client(
                INVALID_REQUEST,
                "JSON-RPC batches are not part of the HTTP+SSE transport",
            )
            .with_status(StatusCode::BAD_REQUEST);
            return render::proxy_error(&error, None, false);
        }
    };

    if message.kind() == Kind::Request && message.method() == Some("initialize") {
        initialize(&gateway, &runtime, &connection, principal, message).await;
        return render::empty(StatusCode::ACCEPTED);
    }
    let Some(session) = connection.session() else {
        not_initialized(&connection, message).await;
        return render::empty(StatusCode::ACCEPTED);
    };
    // The session must still be live (not reaped, not ended); this also marks it as in use.
    if gateway
        .sessions
        .get(&session.id, &principal, &session.route)
        .is_err()
    {
        gateway.legacy_sse.remove(&connection.id); // its stream ends once the senders are gone
        return render::http_error(
            StatusCode::NOT_FOUND,
            "the session of this connection has ended; open a new connection",
        );
    }
    // Wait for a slot (backpressure on a client that floods), then answer 202 at once: the
    // message is handled while the client goes on, as the transport expects.
    let Ok(permit) = connection.in_flight.clone().acquire_owned().await else {
        return render::http_error(StatusCode::SERVICE_UNAVAILABLE, "connection closing");
    };
    let call = mcp::session_call(gateway.clone(), runtime.clone(), principal, session, true);
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            reply = proxy::handle(&call, message) => deliver(&connection, reply).await,
            // The stream went away: dropping the call cancels it upstream.
            _ = connection.outbox.closed() => {}
        }
    });
    render::empty(StatusCode::ACCEPTED)
}

/// Opens the connection's session and sends the `initialize` answer (or error) to its stream.
async fn initialize(
    gateway: &Arc<Gateway>,
    runtime: &Arc<Runtime>,
    connection: &Arc<Connection>,
    principal: Principal,
    message: Envelope,
) {
    let _once = connection.initializing.lock().await;
    if connection.session().is_some() {
        let error = ProxyError::client(
            INVALID_REQUEST,
            "this connection is already initialized; open a new connection for a new session",
        );
        connection.send(error.to_envelope(message.id())).await;
        return;
    }
    match lifecycle::initialize(
        gateway,
        runtime,
        connection.route.clone(),
        principal,
        &message,
    )
    .await
    {
        Ok((response, session)) => {
            *session.sse_outbox.lock().expect("poisoned") = Some(connection.outbox.clone());
            *connection.session.lock().expect("poisoned") = Some(session.clone());
            tokio::spawn(pump_unsolicited(
                gateway.clone(),
                runtime.clone(),
                connection.clone(),
                session,
            ));
            connection.send(response).await;
        }
        Err(error) => connection.send(error.to_envelope(message.id())).await,
    }
}

/// Before `initialize` only `ping` is answered; other requests get an error, the rest is dropped.
async fn not_initialized(connection: &Connection, message: Envelope) {
    if message.kind() != Kind::Request {
        return;
    }
    let id = message.id().map(ToOwned::to_owned);
    let answer = if message.method() == Some("ping") {
        Envelope::result(
            id.unwrap_or_else(|| to_raw(&0)),
            to_raw(&serde_json::json!({})),
        )
    } else {
        ProxyError::client(INVALID_REQUEST, "send initialize first").to_envelope(id.as_deref())
    };
    connection.send(answer).await;
}

/// Writes a proxy reply into the connection's outbox.
async fn deliver(connection: &Connection, reply: Reply) {
    match reply {
        Reply::Accepted => {}
        Reply::Message { message, .. } => connection.send(message).await,
        Reply::Stream(mut receiver) => {
            while let Some(message) = receiver.recv().await {
                if connection.outbox.send(message).await.is_err() {
                    return; // dropping the receiver ends the call upstream
                }
            }
        }
        Reply::Resumable {
            session,
            stream,
            log,
        } => {
            let mut messages = std::pin::pin!(log.read_from(0));
            while let Some((_, message)) = messages.next().await {
                if connection
                    .outbox
                    .send(Envelope::clone(&message))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            session.streams.remove(stream);
        }
    }
}

/// Copies the session's unsolicited messages to the stream, and keeps the session marked as in
/// use while the stream is open. Ends with the stream, or closes the connection when its session
/// was ended some other way.
async fn pump_unsolicited(
    gateway: Arc<Gateway>,
    runtime: Arc<Runtime>,
    connection: Arc<Connection>,
    session: Arc<Session>,
) {
    let mut messages = unsolicited::messages(&gateway, &runtime, &session);
    let mut more = true;
    let mut touch = tokio::time::interval(TOUCH_EVERY);
    loop {
        tokio::select! {
            message = messages.next(), if more => match message {
                Some(message) => connection.send(message).await,
                None => more = false,
            },
            _ = touch.tick() => {
                if gateway.sessions.get(&session.id, &session.principal, &session.route).is_err() {
                    gateway.legacy_sse.remove(&connection.id); // the stream ends once its senders are gone
                    return;
                }
            }
            _ = connection.outbox.closed() => return,
        }
    }
}

/// The value of `key` in a query string (our ids need no percent-decoding; others never match).
fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_path_follows_public_url() {
        assert_eq!(base_path("http://127.0.0.1:8686"), "");
        assert_eq!(base_path("https://gw.example/"), "");
        assert_eq!(base_path("https://gw.example/portcullis/"), "/portcullis");
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("sessionId=abc", "sessionId"), Some("abc"));
        assert_eq!(query_value("x=1&sessionId=abc&y", "sessionId"), Some("abc"));
        assert_eq!(query_value("sessionid=abc", "sessionId"), None);
        assert_eq!(query_value("", "sessionId"), None);
    }

    #[test]
    fn connections_are_bound_to_their_principal_and_bounded() {
        let principal = |agent: &str| Principal {
            agent: agent.into(),
            user: None,
            method: crate::auth::AuthMethod::ApiKey,
            credential_id: format!("key:{agent}").into(),
            roles: std::sync::Arc::from([]),
            token_id: None,
            task: None,
        };
        let table = Connections::default();
        let (a, _rx) = table.open(principal("alice"), Route::Aggregate, 1).unwrap();
        assert!(
            table
                .open(principal("alice"), Route::Aggregate, 1)
                .is_none()
        );
        assert!(table.get(&a.id, &principal("alice")).is_some());
        assert!(table.get(&a.id, &principal("mallory")).is_none());
        assert_eq!(a.id.len(), 32);
        assert!(table.remove(&a.id).is_some());
        assert!(table.is_empty());
    }
}
