//! The table of calls in flight toward one upstream, shared by the stdio and HTTP connectors.
//!
//! Every call gets a gateway-unique integer upstream id (one process-wide counter, so ids never
//! collide even when several downstream sessions share one upstream connection). The table
//! remembers, per upstream id: the caller's raw id and raw `progressToken`, the caller's key and
//! capabilities, the sender of the call's [`UpstreamEvent`]s and a deadline. Messages read from
//! the upstream go through [`CallTable::dispatch`]:
//!
//! - responses get the caller's raw id back (byte for byte) and end the call;
//! - `notifications/progress` is routed by token (the upstream token *is* the upstream id) and
//!   gets the caller's raw token back; other notifications go to the call named by
//!   `_meta.progressToken` or `_meta["io.modelcontextprotocol/subscriptionId"]`, else to the call
//!   whose HTTP stream carried them, else to [`Unsolicited`];
//! - server→client requests go to the owning call (see [`CallTable::dispatch`] for the rule) with
//!   a reply channel; the reply is written back upstream with the upstream's own request id.
//!   `ping` is answered by the connector itself: liveness of the upstream link is the gateway's.
//!
//! A watcher per call enforces the deadline (final error response naming the server) and
//! notices an abandoned [`Exchange`] (its `events` receiver or `cancel` sender dropped); the
//! transport's cancel hook then tells the upstream (`notifications/cancelled`, or closing a modern
//! HTTP stream) and late responses are dropped because the entry is gone. The watcher is its own
//! task, except for calls whose work runs inline in the caller's task (modern HTTP, see
//! [`super::events`]): there it runs inside that work ([`CallTable::register_watched`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::era::{META_CLIENT_CAPABILITIES, META_CLIENT_INFO, META_PROTOCOL_VERSION};
use portcullis_core::rawobj::RawObject;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot};

use super::{Caller, Events, Exchange, Unsolicited, UpstreamEvent};

/// The gateway's JSON-RPC error codes the connector uses in final responses it makes up itself
/// (one list for the whole gateway: `crate::proxy::errors`).
pub mod codes {
    pub use crate::proxy::errors::{
        UPSTREAM_PROTOCOL, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE as UPSTREAM_FAILED,
    };
}

/// Capacity of each call's event channel. Notifications beyond it are dropped (with a log line)
/// rather than blocking the reader that serves every other call; the final response is always
/// delivered.
pub(crate) const EVENTS_CAPACITY: usize = 64;

/// `_meta` key of modern subscription streams (equals the `subscriptions/listen` request id).
pub(crate) const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Hard maximum lifetime of a `subscriptions/listen` call: a listen is long-lived by design, so
/// the per-call timeout does not apply to it, but this bound does.
pub(crate) const LISTEN_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Process-wide upstream id counter: ids are unique across every connector of the gateway.
static NEXT_UPSTREAM_ID: AtomicU64 = AtomicU64::new(1);

/// How a transport sends something upstream without waiting: answers to server→client requests
/// and cancellations. Best effort; failures are logged by the implementation.
pub(crate) trait Outbound: Send + Sync + 'static {
    fn send(&self, message: Envelope);
}

/// The gateway's own `clientInfo`.
pub(crate) fn gateway_client_info() -> Value {
    serde_json::json!({ "name": "portcullis", "version": env!("CARGO_PKG_VERSION") })
}

/// Where a message read from the upstream came from.
pub(crate) struct Origin<'a> {
    /// The call whose HTTP response stream carried the message, if any.
    pub call: Option<u64>,
    /// The upstream session / stream generation the message arrived on; routing by lookup is
    /// limited to calls registered with the same tag.
    pub session: u64,
    /// Reported on [`Unsolicited`] messages: the caller whose upstream session it came on.
    pub caller_key: Option<Arc<str>>,
    /// Where answers to server→client requests go.
    pub outbound: &'a Arc<dyn Outbound>,
}

/// Options of one call.
pub(crate) struct CallOptions {
    /// Tag of the upstream session / process generation that carries the call.
    pub session: u64,
    pub timeout: Duration,
    /// Slot of the connector's in-flight bound, released when the call ends.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Connector-internal call (handshake): never owns server→client requests.
    pub internal: bool,
}

/// A call just registered: its upstream id, the request rewritten for the upstream, and the
/// exchange to hand to the proxy.
pub(crate) struct Registered {
    pub id: u64,
    pub request: Envelope,
    pub exchange: Exchange,
}

struct Pending {
    caller_key: Arc<str>,
    capabilities: Arc<Value>,
    caller_id: Box<RawValue>,
    caller_token: Option<Box<RawValue>>,
    /// Feeds the call's `Exchange::events`.
    events: mpsc::Sender<UpstreamEvent>,
    /// Start order, for the "most recent pending call" rule.
    seq: u64,
    session: u64,
    internal: bool,
    /// Dropped when the entry is removed; wakes the call's watcher so it exits.
    _done: oneshot::Sender<()>,
    /// Held for the call's lifetime: one slot of the connector's in-flight bound.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Calls in flight toward one upstream.
pub(crate) struct CallTable {
    server: Arc<str>,
    calls: Mutex<HashMap<u64, Pending>>,
    /// Server→client requests delivered to a call and not answered yet (raw upstream id → call).
    server_requests: Mutex<HashMap<String, u64>>,
    seq: AtomicU64,
    /// Fan-out of messages that belong to no call ([`super::Connector::unsolicited`]).
    unsolicited: broadcast::Sender<Unsolicited>,
    /// How long a server→client request may wait for the proxy's reply.
    reply_timeout: Duration,
}

enum End {
    Abandoned,
    Timeout,
}

impl CallTable {
    pub(crate) fn new(server: &str, reply_timeout: Duration) -> Arc<CallTable> {
        let (unsolicited, _) = broadcast::channel(256);
        Arc::new(CallTable {
            server: server.into(),
            calls: Mutex::new(HashMap::new()),
            server_requests: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            unsolicited,
            reply_timeout,
        })
    }

    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Unsolicited> {
        self.unsolicited.subscribe()
    }

    pub(crate) fn publish(&self, caller_key: Option<Arc<str>>, message: Envelope) {
        // No receiver is fine: nobody listens for unsolicited messages yet.
        let _ = self.unsolicited.send(Unsolicited {
            caller_key,
            message,
        });
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_server_requests(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.server_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Number of calls in flight (tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a call: allocates the upstream id, rewrites the request's id and
    /// `_meta.progressToken`, and starts the watcher that enforces `timeout` and runs `on_cancel`
    /// (at most once) if the call is abandoned or times out while still pending.
    pub(crate) fn register(
        self: &Arc<Self>,
        caller: &Caller,
        request: Envelope,
        options: CallOptions,
        on_cancel: impl FnOnce(u64) + Send + 'static,
    ) -> Registered {
        let (registered, watcher) = self.register_watched(caller, request, options, on_cancel);
        tokio::spawn(watcher);
        registered
    }

    /// [`CallTable::register`] without starting the watcher: the caller must run the returned
    /// future for the call's whole life (it ends once the call's entry is gone), and remove the
    /// entry itself if it stops running it earlier ([`Unregister`]).
    pub(crate) fn register_watched(
        self: &Arc<Self>,
        caller: &Caller,
        mut request: Envelope,
        options: CallOptions,
        on_cancel: impl FnOnce(u64) + Send + 'static,
    ) -> (Registered, BoxFuture<'static, ()>) {
        let id = NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed);
        let caller_id = request
            .id()
            .map(|raw| raw.to_owned())
            .unwrap_or_else(|| to_raw(&Value::Null));
        request.set_id(to_raw(&id));
        let mut caller_token = None;
        if let Some(mut params) = request.params().and_then(RawObject::parse)
            && let Some(mut meta) = params.get_object("_meta")
            && let Some(token) = meta.get("progressToken")
        {
            caller_token = Some(token.to_owned());
            meta.set("progressToken", to_raw(&id));
            params.set("_meta", meta.to_raw());
            request.set_member("params", params.to_raw());
        }
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let pending = Pending {
            caller_key: caller.key.clone(),
            capabilities: caller.capabilities.clone(),
            caller_id,
            caller_token,
            events: events_tx.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            session: options.session,
            internal: options.internal,
            _done: done_tx,
            _permit: options.permit,
        };
        self.lock().insert(id, pending);

        let table = Arc::clone(self);
        let timeout = if request.method() == Some("subscriptions/listen") {
            options.timeout.max(LISTEN_MAX_LIFETIME)
        } else {
            options.timeout
        };
        let watcher = async move {
            let end = tokio::select! {
                biased;
                _ = done_rx => return,
                _ = cancel_rx => End::Abandoned,
                _ = events_tx.closed() => End::Abandoned,
                _ = tokio::time::sleep(timeout) => End::Timeout,
            };
            drop(events_tx);
            let Some(pending) = table.remove(id) else {
                return;
            };
            match end {
                End::Abandoned => {
                    tracing::debug!(server = %table.server, upstream_id = id, "call abandoned by the caller; cancelling upstream");
                }
                End::Timeout => {
                    tracing::warn!(server = %table.server, upstream_id = id, timeout_ms = timeout.as_millis() as u64, "upstream call timed out");
                    let message = format!(
                        "upstream {} did not answer within {} ms; call failed",
                        table.server,
                        timeout.as_millis()
                    );
                    finish(
                        pending,
                        Envelope::error(None, codes::UPSTREAM_TIMEOUT, &message, None),
                    );
                }
            }
            on_cancel(id);
        };

        let registered = Registered {
            id,
            request,
            exchange: Exchange {
                events: Events::new(events_rx),
                cancel: Some(cancel_tx),
            },
        };
        (registered, watcher.boxed())
    }

    fn remove(&self, id: u64) -> Option<Pending> {
        self.lock().remove(&id)
    }

    /// Is this call still waiting for its response?
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Ends one call with an error response naming the server: `upstream {server} {reason};
    /// call failed`.
    pub(crate) fn fail(&self, id: u64, reason: &str) {
        if let Some(pending) = self.remove(id) {
            finish(pending, self.failure(reason));
        }
    }

    /// Ends one call with the given final message (an upstream error body, for example); its
    /// id is replaced by the caller's.
    pub(crate) fn complete(&self, id: u64, response: Envelope) {
        if let Some(pending) = self.remove(id) {
            finish(pending, response);
        }
    }

    /// Ends every call of one session / generation (the stream or process carrying them died).
    pub(crate) fn fail_session(&self, session: u64, reason: &str) {
        let ended: Vec<Pending> = {
            let mut calls = self.lock();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, p)| p.session == session)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for pending in ended {
            finish(pending, self.failure(reason));
        }
    }

    /// Ends every call (the connector is going away).
    pub(crate) fn fail_all(&self, reason: &str) {
        let ended: Vec<Pending> = self.lock().drain().map(|(_, p)| p).collect();
        for pending in ended {
            finish(pending, self.failure(reason));
        }
    }

    fn failure(&self, reason: &str) -> Envelope {
        let message = format!("upstream {} {reason}; call failed", self.server);
        Envelope::error(None, codes::UPSTREAM_FAILED, &message, None)
    }

    /// Routes one message read from the upstream.
    ///
    /// Owner of a server→client request, in order: the call whose HTTP stream carried it; the
    /// call named by its `_meta.progressToken`; otherwise, among the non-internal calls pending
    /// on the same session/process, the most recently started one — but only when all of them
    /// belong to the same caller. When calls of several callers share the upstream (one stdio
    /// process for everybody) and nothing links the request to a call, nobody owns it: content
    /// injected by an upstream must never reach another principal's client, so the upstream gets
    /// an error instead. A request whose capability (`sampling`, `elicitation`, `roots`) the
    /// owning caller did not declare is refused upstream as well (`roots/list` gets an empty
    /// list), which is what lets a shared legacy session declare those capabilities once.
    pub(crate) fn dispatch(&self, message: Envelope, origin: &Origin<'_>) {
        match message.kind() {
            Kind::Result | Kind::Error => self.on_response(message, origin),
            Kind::Notification => self.on_notification(message, origin),
            Kind::Request => self.on_request(message, origin),
        }
    }

    fn on_response(&self, mut message: Envelope, origin: &Origin<'_>) {
        let id = message.id().and_then(upstream_id);
        let id = match (id, origin.call) {
            (Some(id), _) => id,
            // An id-less error on a call's own HTTP stream answers that call.
            (None, Some(call)) if message.kind() == Kind::Error => call,
            _ => {
                tracing::warn!(server = %self.server, "upstream sent a response with an id the gateway never used; dropped");
                return;
            }
        };
        let Some(pending) = self.remove(id) else {
            tracing::debug!(server = %self.server, upstream_id = id, "late response to a finished or cancelled call dropped");
            return;
        };
        // A listen stream's final result names its subscription by the upstream id.
        if message.kind() == Kind::Result
            && let Some(mut result) = message.member("result").and_then(RawObject::parse)
            && let Some(mut meta) = result.get_object("_meta")
            && meta.get(META_SUBSCRIPTION_ID).and_then(upstream_id) == Some(id)
        {
            meta.set(META_SUBSCRIPTION_ID, pending.caller_id.clone());
            result.set("_meta", meta.to_raw());
            message.set_member("result", result.to_raw());
        }
        finish(pending, message);
    }

    fn on_notification(&self, mut message: Envelope, origin: &Origin<'_>) {
        let method = message.method().unwrap_or_default().to_owned();
        let params = message.params().and_then(RawObject::parse);
        if method == "notifications/cancelled" {
            // Cancels a server→client request: goes to the call that received that request.
            let request_id = params
                .as_ref()
                .and_then(|p| p.get("requestId"))
                .map(|r| r.get().to_owned());
            let owner = request_id
                .and_then(|r| self.lock_server_requests().remove(&r))
                .or(origin.call);
            let calls = self.lock();
            if let Some(id) = owner
                && let Some(pending) = calls.get(&id)
            {
                deliver_notification(&self.server, id, pending, message);
            }
            return;
        }
        let calls = self.lock();
        if method == "notifications/progress" {
            let target = params
                .as_ref()
                .and_then(|p| p.get("progressToken"))
                .and_then(upstream_id);
            let Some((id, pending)) = target.and_then(|id| calls.get(&id).map(|p| (id, p))) else {
                tracing::debug!(server = %self.server, "progress for an unknown or finished call dropped");
                return;
            };
            if let (Some(mut params), Some(token)) = (params, pending.caller_token.as_ref()) {
                params.set("progressToken", token.clone());
                message.set_member("params", params.to_raw());
            }
            deliver_notification(&self.server, id, pending, message);
            return;
        }
        let meta = params.as_ref().and_then(|p| p.get_object("_meta"));
        if let (Some(mut params), Some(mut meta)) = (params.clone(), meta.clone())
            && let Some(id) = meta.get(META_SUBSCRIPTION_ID).and_then(upstream_id)
            && let Some(pending) = calls.get(&id)
        {
            meta.set(META_SUBSCRIPTION_ID, pending.caller_id.clone());
            params.set("_meta", meta.to_raw());
            message.set_member("params", params.to_raw());
            deliver_notification(&self.server, id, pending, message);
            return;
        }
        let by_token = meta
            .as_ref()
            .and_then(|m| m.get("progressToken"))
            .and_then(upstream_id);
        if let Some(id) = by_token.or(origin.call)
            && let Some(pending) = calls.get(&id)
        {
            deliver_notification(&self.server, id, pending, message);
            return;
        }
        drop(calls);
        self.publish(origin.caller_key.clone(), message);
    }

    fn on_request(&self, request: Envelope, origin: &Origin<'_>) {
        let method = request.method().unwrap_or_default().to_owned();
        let Some(upstream_request_id) = request.id().map(|r| r.to_owned()) else {
            return;
        };
        let answer = |response: Envelope| {
            let mut response = response;
            response.set_id(upstream_request_id.clone());
            origin.outbound.send(response);
        };
        if method == "ping" {
            answer(Envelope::result(
                to_raw(&Value::Null),
                to_raw(&serde_json::json!({})),
            ));
            return;
        }
        let calls = self.lock();
        let owner = self.owner_of(&calls, &request, origin);
        let Some((call, pending)) = owner.and_then(|id| calls.get(&id).map(|p| (id, p))) else {
            drop(calls);
            if method == "roots/list" {
                answer(Envelope::result(
                    to_raw(&Value::Null),
                    to_raw(&serde_json::json!({ "roots": [] })),
                ));
            } else {
                tracing::warn!(server = %self.server, method = %method, "upstream sent a request that no call can own; answered with an error");
                answer(Envelope::error(
                    None,
                    -32601,
                    "the gateway cannot relay this request: no client call is associated with it",
                    None,
                ));
            }
            return;
        };
        let needed = match method.as_str() {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        if let Some(capability) = needed
            && pending.capabilities.get(capability).is_none()
        {
            drop(calls);
            if method == "roots/list" {
                answer(Envelope::result(
                    to_raw(&Value::Null),
                    to_raw(&serde_json::json!({ "roots": [] })),
                ));
            } else {
                tracing::info!(server = %self.server, method = %method, "refused a server request: the client did not declare {capability}");
                answer(Envelope::error(
                    None,
                    -32601,
                    &format!("the client did not declare the {capability} capability"),
                    None,
                ));
            }
            return;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let delivered = pending.events.try_send(UpstreamEvent::Request {
            request,
            reply: reply_tx,
        });
        drop(calls);
        if delivered.is_err() {
            answer(Envelope::error(
                None,
                -32603,
                "the client is not reading; request dropped by the gateway",
                None,
            ));
            return;
        }
        let key = upstream_request_id.get().to_owned();
        self.lock_server_requests().insert(key.clone(), call);
        let outbound = Arc::clone(origin.outbound);
        let wait = self.reply_timeout;
        let server = self.server.clone();
        // The table is not kept alive by the task: it only needs the map entry removed, which a
        // later request with the same id would overwrite anyway.
        tokio::spawn(async move {
            let reply = tokio::time::timeout(wait, reply_rx).await;
            let mut response = match reply {
                Ok(Ok(reply)) if matches!(reply.kind(), Kind::Result | Kind::Error) => reply,
                Ok(Ok(_)) => {
                    Envelope::error(None, -32603, "the gateway received an invalid reply", None)
                }
                Ok(Err(_)) => Envelope::error(
                    None,
                    -32603,
                    "the request was declined by the gateway",
                    None,
                ),
                Err(_) => {
                    tracing::warn!(server = %server, "no reply to a server request in time");
                    Envelope::error(None, -32603, "the client did not answer in time", None)
                }
            };
            response.set_id(upstream_request_id);
            outbound.send(response);
        });
        // Bound the map: forget entries for calls that are gone.
        let mut map = self.lock_server_requests();
        if map.len() > 1024 {
            let live = self.lock();
            map.retain(|_, call| live.contains_key(call));
        }
    }

    fn owner_of(
        &self,
        calls: &HashMap<u64, Pending>,
        request: &Envelope,
        origin: &Origin<'_>,
    ) -> Option<u64> {
        if let Some(call) = origin.call {
            return calls.contains_key(&call).then_some(call);
        }
        let by_token = request
            .params()
            .and_then(RawObject::parse)
            .and_then(|p| p.get_object("_meta"))
            .and_then(|m| m.get("progressToken").and_then(upstream_id));
        if let Some(id) = by_token
            && calls
                .get(&id)
                .is_some_and(|p| !p.internal && p.session == origin.session)
        {
            return Some(id);
        }
        let mut candidates = calls
            .iter()
            .filter(|(_, p)| !p.internal && p.session == origin.session);
        let (first_id, first) = candidates.next()?;
        let mut best = (first.seq, *first_id);
        for (id, pending) in candidates {
            if pending.caller_key != first.caller_key {
                return None;
            }
            best = best.max((pending.seq, *id));
        }
        Some(best.1)
    }
}

/// Removes a call's entry when dropped (ending it without an answer and releasing its in-flight
/// slot): held by work that runs the call's watcher itself, in case that work is dropped first.
pub(crate) struct Unregister {
    pub table: Arc<CallTable>,
    pub id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

fn deliver_notification(server: &str, id: u64, pending: &Pending, message: Envelope) {
    if let Err(TrySendError::Full(_)) = pending
        .events
        .try_send(UpstreamEvent::Notification(message))
    {
        tracing::warn!(server = %server, upstream_id = id, "client too slow; notification dropped");
    }
}

/// Delivers the final response with the caller's id; consuming `pending` ends the call.
fn finish(pending: Pending, mut response: Envelope) {
    response.set_id(pending.caller_id.clone());
    match pending.events.try_send(UpstreamEvent::Response(response)) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(event)) => {
            let events = pending.events.clone();
            tokio::spawn(async move {
                let _ = events.send(event).await;
            });
        }
    }
}

/// Reads an upstream id (integer, or a string holding one) from a raw JSON token.
pub(crate) fn upstream_id(raw: &RawValue) -> Option<u64> {
    let text = raw.get().trim();
    text.parse::<u64>()
        .ok()
        .or_else(|| serde_json::from_str::<String>(text).ok()?.parse().ok())
}

/// Adds the modern per-request `_meta` (version, the caller's own capabilities, client info).
pub(crate) fn adapt_for_modern(request: &mut Envelope, caller: &Caller, version: &str) {
    let mut params = match request.params() {
        Some(raw) => match RawObject::parse(raw) {
            Some(params) => params,
            None => return,
        },
        None => RawObject::default(),
    };
    let mut meta = params.get_object("_meta").unwrap_or_default();
    meta.set(META_PROTOCOL_VERSION, to_raw(version));
    meta.set(META_CLIENT_CAPABILITIES, to_raw(&*caller.capabilities));
    match &caller.client_info {
        Some(info) => meta.set(META_CLIENT_INFO, to_raw(&**info)),
        None => {
            if meta.get(META_CLIENT_INFO).is_none() {
                meta.set(META_CLIENT_INFO, to_raw(&gateway_client_info()));
            }
        }
    }
    params.set("_meta", meta.to_raw());
    request.set_member("params", params.to_raw());
}

/// Removes modern per-request `_meta` keys a legacy upstream does not know.
pub(crate) fn adapt_for_legacy(request: &mut Envelope) {
    let Some(mut params) = request.params().and_then(RawObject::parse) else {
        return;
    };
    let Some(mut meta) = params.get_object("_meta") else {
        return;
    };
    let mut changed = false;
    for key in [
        META_PROTOCOL_VERSION,
        META_CLIENT_CAPABILITIES,
        META_CLIENT_INFO,
    ] {
        changed |= meta.remove(key).is_some();
    }
    if changed {
        if meta.is_empty() {
            params.remove("_meta");
        } else {
            params.set("_meta", meta.to_raw());
        }
        request.set_member("params", params.to_raw());
    }
}

/// `notifications/cancelled` for an upstream id.
pub(crate) fn cancelled(id: u64, reason: &str) -> Envelope {
    Envelope::notification(
        "notifications/cancelled",
        Some(to_raw(
            &serde_json::json!({ "requestId": id, "reason": reason }),
        )),
    )
}
