//! `subscriptions/listen` (2026-07-28) on the aggregate endpoint `/mcp`: one client stream fed
//! by one listen per catalog server.
//!
//! On `/mcp/{server}` a listen is an ordinary call forwarded to that server ([`super::forward`]);
//! the connector puts the client's request id back into every
//! `io.modelcontextprotocol/subscriptionId` tag, so the client sees its own id.
//!
//! On `/mcp`:
//! 1. **Fan-out.** Every catalog server gets one upstream listen carrying the client's params
//!    unchanged (its `_meta` included) except `notifications`: the list-changed flags the client
//!    asked for, plus the `resourceSubscriptions` URIs that belong to that server, unwrapped from
//!    `portcullis://{server}/{uri}`. A server with nothing to listen to gets no listen. Wrapped
//!    URIs naming no catalog server are simply not granted.
//! 2. **Acknowledgement.** The gateway waits (at most [`ACK_TIMEOUT`]) for every upstream
//!    acknowledgement, then sends the client exactly one
//!    `notifications/subscriptions/acknowledged`. Grant rule: a list-changed type is granted when
//!    at least one upstream granted it; a resource URI is granted when its own server granted
//!    it. A server that fails, ends, or has not acknowledged in time grants nothing (and its
//!    listen is dropped, which cancels it upstream). Upstream acknowledgements are never
//!    forwarded; notifications that arrive before the client's acknowledgement are buffered
//!    (at most [`EARLY_BUFFER`]).
//! 3. **Stream.** Each upstream notification of a type its server granted is re-tagged with the
//!    client's subscription id (the client's listen request id, raw) and, for
//!    `notifications/resources/updated`, gets its URI wrapped ([`adapt::notification`]).
//!    Progress, log and any other notification types are dropped; server→client requests on a
//!    listen are refused.
//! 4. **End.** When the client goes away (the stream's receiver is dropped) every upstream
//!    exchange is dropped, which cancels it upstream. When every upstream listen has ended, the
//!    client gets a final result tagged with its subscription id, or, if any server failed, a
//!    `-31000` error naming the servers that failed.
//! 5. **Kill switches and task tokens.** Servers a kill switch stops, or outside the caller's
//!    task token, get no listen. A kill switch set later on one server ends that server's
//!    listen (cancelled upstream; its notifications are no longer delivered); when no server
//!    is left because of kills the client gets the kill error (`-31012`). A lockdown, the
//!    agent's kill switch or the revocation of its task token ends the whole stream at once
//!    with that error ([`super::control::stream_killed`]).
//!
//! Both routes leave audit records like any call (`super::audit`): the decision record when the
//! listen opens (durable before any upstream listen starts) and the outcome record when it
//! ends. On `/mcp/{server}` the listen also passes the kill switches, task-token scope and rate
//! limits ([`super::control::admit`]) like other routed requests.
//!
//! Legacy upstreams (no `subscriptions/listen`) are translated:
//! - list-changed types are granted when the server declared `listChanged` for that primitive,
//!   and are taken from the connector's unsolicited messages ([`Connector::unsolicited`]) that
//!   came on a shared upstream session or on this caller's own one (caller key); a `ping` first
//!   makes sure the caller's upstream session (and with it, on HTTP, its GET stream) exists;
//! - resource URIs are subscribed with `resources/subscribe` (when the server declared
//!   `resources.subscribe`); a URI is granted when that call succeeded, and its
//!   `notifications/resources/updated` (the URI or a sub-resource of it) are forwarded.
//!
//! Known gaps: legacy subscriptions are not `resources/unsubscribe`d when the listen ends (a
//! shared stdio session is common to every caller, so unsubscribing could end another client's
//! subscription); the upstream session then keeps sending updates the gateway drops. A legacy
//! HTTP upstream without a standalone GET stream delivers nothing. Notifications a shared legacy
//! session carries because of another caller's change reach every listener of that type (they
//! carry no content beyond the change itself).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::era::Era;
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;

use super::audit::CallRecord;
use super::errors::{
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, ProxyError, UPSTREAM_UNAVAILABLE,
};
use super::{Call, Reply, adapt, control, target};
use crate::auth::Principal;
use crate::route::Route;
use crate::state::{CatalogEntry, Gateway};
use crate::upstream::{Caller, Connector, UpstreamEvent};

/// How long the gateway waits for the upstream acknowledgements before acknowledging the client.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages buffered toward the client's stream.
const CLIENT_BUFFER: usize = 64;
/// Events buffered from the upstream listens toward the task that merges them.
const EVENTS_BUFFER: usize = 256;
/// Upstream notifications kept while the client's acknowledgement is not sent yet.
pub const EARLY_BUFFER: usize = 64;
/// Most `resourceSubscriptions` URIs one listen may name.
pub const MAX_URIS: usize = 1024;
/// Concurrent `resources/subscribe` calls toward one legacy upstream.
const SUBSCRIBE_CONCURRENCY: usize = 8;

const LISTEN: &str = "subscriptions/listen";
const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
const TOOLS_CHANGED: &str = "notifications/tools/list_changed";
const PROMPTS_CHANGED: &str = "notifications/prompts/list_changed";
const RESOURCES_CHANGED: &str = "notifications/resources/list_changed";
const RESOURCE_UPDATED: &str = "notifications/resources/updated";

/// Handles `subscriptions/listen`: forwarded on `/mcp/{server}`, fanned out on `/mcp`.
pub async fn listen(call: &Call, message: Envelope) -> Result<Reply, ProxyError> {
    if let Route::Server(_) = call.route {
        let (entry, mut message) = target::resolve(call, message)?;
        let server = entry.config.name.clone();
        let mut audit = CallRecord::begin(call, Some(&server), LISTEN, &mut message);
        audit
            .check(control::admit(call, &server, LISTEN, &message).await)
            .await?;
        let rule = audit
            .check(super::policy::authorize_request(
                call, &server, LISTEN, &message,
            ))
            .await?;
        audit.set_rule(rule);
        // Decision record, the forwarded listen (which a kill switch or a revoked task token
        // ends), the outcome record when it ends.
        return super::proceed(call, &entry, message, LISTEN, audit).await;
    }
    if call.face.era != Era::Modern {
        return Err(ProxyError::client(
            METHOD_NOT_FOUND,
            format!(
                "{LISTEN} does not exist in protocol version {}",
                call.face.version
            ),
        ));
    }
    if !call.face.accepts_sse {
        return Err(ProxyError::client(
            INVALID_REQUEST,
            format!("{LISTEN} answers with an event stream: Accept must include text/event-stream"),
        ));
    }
    let client_id = message
        .id()
        .map(|raw| raw.to_owned())
        .ok_or_else(|| ProxyError::client(INVALID_REQUEST, format!("{LISTEN} needs an id")))?;
    if message.params().and_then(RawObject::parse).is_none() {
        return Err(ProxyError::client(
            INVALID_PARAMS,
            format!("{LISTEN}: params must be an object"),
        ));
    }
    // The record of this listen (its trace context goes upstream in the params' `_meta`).
    let mut message = message;
    let mut audit = CallRecord::begin(call, None, LISTEN, &mut message);
    let params = message
        .params()
        .and_then(RawObject::parse)
        .unwrap_or_default();
    let wanted = params
        .get_object("notifications")
        .ok_or_else(|| {
            ProxyError::client(
                INVALID_PARAMS,
                format!("{LISTEN}: params.notifications must be an object"),
            )
        })
        .and_then(|raw| Filter::from_client(&raw))?;

    // A lockdown or the agent's kill switch refuses the listen.
    let kills = call.gateway.control.kills.snapshot();
    if let Some(switch) = kills.agent(&call.principal.agent) {
        return audit.check(Err(control::killed_error(switch))).await;
    }
    // Only the servers whose notifications the caller may listen to: policy (per server), kill
    // switches and the caller's task token.
    let entries: Vec<Arc<CatalogEntry>> = call
        .runtime
        .catalog
        .values()
        .filter(|entry| super::policy::allows(call, &entry.config.name, LISTEN))
        .filter(|entry| !control::server_closed(&kills, &call.principal, &entry.config.name))
        .cloned()
        .collect();
    let requested = route_uris(&entries, wanted.uris.as_deref().unwrap_or(&[]));
    let plans: Vec<Plan> = entries
        .into_iter()
        .filter_map(|entry| {
            let uris: Vec<String> = requested
                .iter()
                .filter_map(|(_, target)| match target {
                    Some((server, original)) if *server == entry.config.name => {
                        Some(original.clone())
                    }
                    _ => None,
                })
                .collect();
            let filter = Filter {
                tools: wanted.tools,
                prompts: wanted.prompts,
                resources: wanted.resources,
                uris: (!uris.is_empty()).then_some(uris),
            };
            (!filter.is_empty()).then_some(Plan { entry, filter })
        })
        .collect();

    let listen = Listen {
        gateway: call.gateway.clone(),
        principal: call.principal.clone(),
        caller: call.caller.clone(),
        client_id,
        params,
        wants_uris: wanted.uris.is_some(),
        requested,
    };
    // Durable decision record before any upstream listen starts (fail closed).
    audit.decision().await?;
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(merge(listen, plans, tx));
    // The outcome record follows the listen's final message (or the client leaving).
    audit.outcome(Ok(Reply::Stream(rx))).await
}

/// What the client opted in to, or what an upstream granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    /// `resourceSubscriptions`; None when absent.
    uris: Option<Vec<String>>,
}

impl Filter {
    /// The client's `notifications`, strictly: flags must be booleans, URIs strings.
    fn from_client(raw: &RawObject) -> Result<Filter, ProxyError> {
        let flag = |key: &str| -> Result<bool, ProxyError> {
            match raw.get(key) {
                None => Ok(false),
                Some(value) => serde_json::from_str::<bool>(value.get()).map_err(|_| {
                    ProxyError::client(
                        INVALID_PARAMS,
                        format!("{LISTEN}: notifications.{key} must be a boolean"),
                    )
                }),
            }
        };
        let uris = match raw.get("resourceSubscriptions") {
            None => None,
            Some(value) => {
                let list: Vec<String> = serde_json::from_str(value.get()).map_err(|_| {
                    ProxyError::client(
                        INVALID_PARAMS,
                        format!(
                            "{LISTEN}: notifications.resourceSubscriptions must be an array of strings"
                        ),
                    )
                })?;
                if list.len() > MAX_URIS {
                    return Err(ProxyError::client(
                        INVALID_PARAMS,
                        format!("{LISTEN}: at most {MAX_URIS} resourceSubscriptions per listen"),
                    ));
                }
                let mut seen = HashSet::new();
                Some(
                    list.into_iter()
                        .filter(|u| seen.insert(u.clone()))
                        .collect(),
                )
            }
        };
        Ok(Filter {
            tools: flag("toolsListChanged")?,
            prompts: flag("promptsListChanged")?,
            resources: flag("resourcesListChanged")?,
            uris,
        })
    }

    /// What an upstream acknowledged, leniently, and never more than `asked`.
    fn granted_by_upstream(notification: &Envelope, asked: &Filter) -> Filter {
        let granted = notification
            .params()
            .and_then(RawObject::parse)
            .and_then(|params| params.get_object("notifications"))
            .unwrap_or_default();
        let flag = |key: &str| {
            granted
                .get(key)
                .is_some_and(|raw| serde_json::from_str::<bool>(raw.get()).unwrap_or(false))
        };
        let uris: HashSet<String> = granted
            .get("resourceSubscriptions")
            .and_then(|raw| serde_json::from_str::<Vec<Value>>(raw.get()).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect();
        Filter {
            tools: asked.tools && flag("toolsListChanged"),
            prompts: asked.prompts && flag("promptsListChanged"),
            resources: asked.resources && flag("resourcesListChanged"),
            uris: asked.uris.as_ref().map(|asked| {
                asked
                    .iter()
                    .filter(|u| uris.contains(*u))
                    .cloned()
                    .collect()
            }),
        }
    }

    fn is_empty(&self) -> bool {
        !self.tools
            && !self.prompts
            && !self.resources
            && self.uris.as_ref().is_none_or(Vec::is_empty)
    }

    fn has_uris(&self) -> bool {
        self.uris.as_ref().is_some_and(|u| !u.is_empty())
    }

    /// Does this grant let a notification of `method` through?
    fn admits(&self, method: &str) -> bool {
        match method {
            TOOLS_CHANGED => self.tools,
            PROMPTS_CHANGED => self.prompts,
            RESOURCES_CHANGED => self.resources,
            RESOURCE_UPDATED => self.has_uris(),
            _ => false,
        }
    }

    fn to_raw(&self) -> Box<RawValue> {
        let mut object = RawObject::default();
        for (key, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                object.set(key, to_raw(&true));
            }
        }
        if let Some(uris) = &self.uris {
            object.set("resourceSubscriptions", to_raw(uris));
        }
        object.to_raw()
    }
}

/// The client's URIs in its order, each with (server, original URI) when it names a catalog
/// server.
fn route_uris(entries: &[Arc<CatalogEntry>], wrapped: &[String]) -> Vec<(String, Target)> {
    wrapped
        .iter()
        .map(|uri| {
            let target = names::unwrap_uri(uri).and_then(|(server, original)| {
                entries
                    .iter()
                    .any(|e| e.config.name == server)
                    .then(|| (server.to_owned(), original.to_owned()))
            });
            if target.is_none() {
                tracing::debug!(uri, "listen: URI names no catalog server; not granted");
            }
            (uri.clone(), target)
        })
        .collect()
}

/// The catalog server and original URI a wrapped URI names.
type Target = Option<(String, String)>;

/// One upstream to listen to, and what to ask it for.
struct Plan {
    entry: Arc<CatalogEntry>,
    filter: Filter,
}

/// The client's listen, owned by the merging task.
struct Listen {
    gateway: Arc<Gateway>,
    /// Whose listen (kill switches and task-token revocation end it).
    principal: Principal,
    caller: Caller,
    /// The client's raw request id: the subscription id on everything the client gets.
    client_id: Box<RawValue>,
    /// The client's params (its `_meta` included), sent upstream with `notifications` replaced.
    params: RawObject,
    /// The client sent `resourceSubscriptions` (so the acknowledgement carries the member).
    wants_uris: bool,
    /// The client's URIs in its order, with their routing.
    requested: Vec<(String, Target)>,
}

/// What an upstream listen reports to the merging task.
enum Event {
    Acked {
        server: usize,
        granted: Filter,
    },
    Notification {
        server: usize,
        message: Envelope,
    },
    Ended {
        server: usize,
        failure: Option<String>,
    },
}

#[derive(Debug)]
enum State {
    Waiting,
    Active(Filter),
    Done,
}

/// Aborts the upstream tasks (dropping their exchanges cancels them upstream) when dropped.
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs the client's stream: starts the upstream listens, acknowledges, relays, ends.
async fn merge(listen: Listen, plans: Vec<Plan>, tx: mpsc::Sender<Envelope>) {
    let (events_tx, mut events) = mpsc::channel(EVENTS_BUFFER);
    let names: Vec<String> = plans.iter().map(|p| p.entry.config.name.clone()).collect();
    let mut tasks = Tasks(Vec::with_capacity(plans.len()));
    for (index, plan) in plans.into_iter().enumerate() {
        let task = tokio::spawn(upstream(
            index,
            plan,
            listen.caller.clone(),
            listen.params.clone(),
            listen.client_id.clone(),
            events_tx.clone(),
        ));
        tasks.0.push(task.abort_handle());
    }
    drop(events_tx);

    let mut states: Vec<State> = names.iter().map(|_| State::Waiting).collect();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut early: Vec<(usize, Envelope)> = Vec::new();
    // A lockdown, the agent's kill switch or its task token's revocation ends the whole listen.
    let stopped = control::stream_killed(&listen.gateway, &listen.principal, None);
    tokio::pin!(stopped);
    // A server's kill switch ends that server's listen.
    let mut kills = listen.gateway.control.kills.subscribe();
    let mut killed: Option<ProxyError> = None;

    // Phase 1: the upstream acknowledgements, bounded by ACK_TIMEOUT.
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    while states.iter().any(|s| matches!(s, State::Waiting)) {
        let event = tokio::select! {
            _ = tx.closed() => return,
            error = &mut stopped => {
                let _ = tx.send(error.to_envelope(Some(&listen.client_id))).await;
                return;
            }
            Ok(()) = kills.changed() => {
                end_killed(&listen, &names, &mut states, &tasks, &mut killed);
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            Event::Acked { server, granted } => {
                if let Some(state @ State::Waiting) = states.get_mut(server) {
                    *state = State::Active(granted);
                }
            }
            Event::Notification { server, message } => {
                if early.len() < EARLY_BUFFER {
                    early.push((server, message));
                } else {
                    tracing::warn!(server = %names[server], "listen: notification before the acknowledgement dropped (buffer full)");
                }
            }
            Event::Ended { server, failure } => {
                end(&mut states, &mut failures, &names, server, failure);
            }
        }
    }
    for (index, state) in states.iter_mut().enumerate() {
        if matches!(state, State::Waiting) {
            tasks.0[index].abort();
            *state = State::Done;
            failures.push((
                names[index].clone(),
                format!("did not acknowledge within {} s", ACK_TIMEOUT.as_secs()),
            ));
        }
    }

    let granted = client_grant(&listen, &names, &states);
    let acknowledgement = tagged_notification(ACKNOWLEDGED, &listen.client_id, granted.to_raw());
    if tx.send(acknowledgement).await.is_err() {
        return;
    }
    for (server, message) in early {
        if !deliver(&listen, &names, &states, server, message, &tx).await {
            return;
        }
    }

    // Phase 2: relay until the client leaves or every upstream listen has ended.
    while states.iter().any(|s| matches!(s, State::Active(_))) {
        let event = tokio::select! {
            _ = tx.closed() => return,
            error = &mut stopped => {
                let _ = tx.send(error.to_envelope(Some(&listen.client_id))).await;
                return;
            }
            Ok(()) = kills.changed() => {
                end_killed(&listen, &names, &mut states, &tasks, &mut killed);
                continue;
            }
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            Event::Acked { .. } => {}
            Event::Notification { server, message } => {
                if !deliver(&listen, &names, &states, server, message, &tx).await {
                    return;
                }
            }
            Event::Ended { server, failure } => {
                end(&mut states, &mut failures, &names, server, failure);
            }
        }
    }
    drop(tasks);
    let last = match killed {
        // Nothing left to listen to because of kill switches: the client learns why.
        Some(error) if failures.is_empty() => error.to_envelope(Some(&listen.client_id)),
        _ => final_message(&listen.client_id, &failures),
    };
    let _ = tx.send(last).await;
}

/// Ends the upstream listens of servers a kill switch (or the caller's task token) now closes:
/// their tasks are aborted (which cancels them upstream) and they count as done; `killed` keeps
/// the first such error for the client.
fn end_killed(
    listen: &Listen,
    names: &[String],
    states: &mut [State],
    tasks: &Tasks,
    killed: &mut Option<ProxyError>,
) {
    let kills = listen.gateway.control.kills.snapshot();
    for (index, state) in states.iter_mut().enumerate() {
        if matches!(state, State::Done) {
            continue;
        }
        let name = &names[index];
        let Some(switch) = kills.server(name) else {
            continue;
        };
        tracing::info!(server = %name, agent = %listen.principal.agent, "listen: server stopped by a kill switch; its listen ends");
        tasks.0[index].abort();
        *state = State::Done;
        killed.get_or_insert_with(|| control::killed_error(switch));
    }
}

/// Records the end of one upstream listen.
fn end(
    states: &mut [State],
    failures: &mut Vec<(String, String)>,
    names: &[String],
    server: usize,
    failure: Option<String>,
) {
    let Some(state) = states.get_mut(server) else {
        return;
    };
    if matches!(state, State::Done) {
        return;
    }
    *state = State::Done;
    if let Some(reason) = failure {
        tracing::debug!(server = %names[server], reason, "listen: upstream listen failed");
        failures.push((names[server].clone(), reason));
    }
}

/// What the gateway grants the client: a list-changed type if at least one upstream granted
/// it; each URI if its own server granted it (URIs in the client's order).
fn client_grant(listen: &Listen, names: &[String], states: &[State]) -> Filter {
    let active: Vec<(&str, &Filter)> = names
        .iter()
        .zip(states)
        .filter_map(|(name, state)| match state {
            State::Active(granted) => Some((name.as_str(), granted)),
            _ => None,
        })
        .collect();
    let uris = listen.wants_uris.then(|| {
        listen
            .requested
            .iter()
            .filter(|(_, target)| {
                target.as_ref().is_some_and(|(server, original)| {
                    active.iter().any(|(name, granted)| {
                        name == server
                            && granted.uris.as_ref().is_some_and(|u| u.contains(original))
                    })
                })
            })
            .map(|(wrapped, _)| wrapped.clone())
            .collect()
    });
    Filter {
        tools: active.iter().any(|(_, g)| g.tools),
        prompts: active.iter().any(|(_, g)| g.prompts),
        resources: active.iter().any(|(_, g)| g.resources),
        uris,
    }
}

/// Sends one upstream notification to the client if its server granted its type; false when
/// the client has gone.
async fn deliver(
    listen: &Listen,
    names: &[String],
    states: &[State],
    server: usize,
    message: Envelope,
    tx: &mpsc::Sender<Envelope>,
) -> bool {
    let Some(State::Active(granted)) = states.get(server) else {
        return true;
    };
    if control::server_closed(
        &listen.gateway.control.kills.snapshot(),
        &listen.principal,
        &names[server],
    ) {
        return true; // stopped a moment ago; `end_killed` ends its listen
    }
    let method = message.method().unwrap_or_default();
    if !granted.admits(method) {
        tracing::debug!(server = %names[server], method, "listen: notification not granted; dropped");
        return true;
    }
    let Some(message) = adapt::notification(&Route::Aggregate, &names[server], message) else {
        return true;
    };
    let Some(message) = tag(message, &listen.client_id) else {
        return true;
    };
    tx.send(message).await.is_ok()
}

/// Sets `params._meta[subscriptionId]` to the client's id, keeping every other member; None
/// when `params` is not an object.
fn tag(mut message: Envelope, client_id: &RawValue) -> Option<Envelope> {
    let mut params = match message.params() {
        Some(raw) => RawObject::parse(raw)?,
        None => RawObject::default(),
    };
    let mut meta = match params.get("_meta") {
        Some(raw) => RawObject::parse(raw)?,
        None => RawObject::default(),
    };
    meta.set(META_SUBSCRIPTION_ID, client_id.to_owned());
    params.set("_meta", meta.to_raw());
    message.set_member("params", params.to_raw());
    Some(message)
}

/// A notification to the client tagged with its subscription id.
fn tagged_notification(
    method: &str,
    client_id: &RawValue,
    notifications: Box<RawValue>,
) -> Envelope {
    let mut meta = RawObject::default();
    meta.set(META_SUBSCRIPTION_ID, client_id.to_owned());
    let mut params = RawObject::default();
    params.set("_meta", meta.to_raw());
    params.set("notifications", notifications);
    Envelope::notification(method, Some(params.to_raw()))
}

/// The listen's final message: a tagged result, or an error naming the servers that failed.
fn final_message(client_id: &RawValue, failures: &[(String, String)]) -> Envelope {
    if failures.is_empty() {
        let mut meta = RawObject::default();
        meta.set(META_SUBSCRIPTION_ID, client_id.to_owned());
        let mut result = RawObject::default();
        result.set("resultType", to_raw("complete"));
        result.set("_meta", meta.to_raw());
        return Envelope::result(client_id.to_owned(), result.to_raw());
    }
    let servers: Vec<&str> = failures.iter().map(|(name, _)| name.as_str()).collect();
    let detail: Vec<String> = failures
        .iter()
        .map(|(name, reason)| format!("{name}: {reason}"))
        .collect();
    Envelope::error(
        Some(client_id.to_owned()),
        UPSTREAM_UNAVAILABLE,
        &format!(
            "{LISTEN} ended; upstream listen failed on {} ({})",
            servers.join(", "),
            detail.join("; ")
        ),
        Some(serde_json::json!({ "servers": servers })),
    )
}

/// One upstream's side of the listen: a modern listen, or the legacy translation.
async fn upstream(
    server: usize,
    plan: Plan,
    caller: Caller,
    params: RawObject,
    client_id: Box<RawValue>,
    events: mpsc::Sender<Event>,
) {
    let connector = &plan.entry.connector;
    let failure = match connector.facts().await {
        Err(error) => Some(error.to_string()),
        Ok(facts) if facts.era == Era::Legacy => {
            legacy(server, &plan, &caller, &facts.capabilities, &events).await
        }
        Ok(_) => modern(server, &plan, &caller, params, client_id, &events).await,
    };
    let _ = events.send(Event::Ended { server, failure }).await;
}

/// A modern upstream: one `subscriptions/listen` with this server's filter. Returns the
/// failure, if the listen did not end with a result.
async fn modern(
    server: usize,
    plan: &Plan,
    caller: &Caller,
    mut params: RawObject,
    client_id: Box<RawValue>,
    events: &mpsc::Sender<Event>,
) -> Option<String> {
    params.set("notifications", plan.filter.to_raw());
    let request = Envelope::request(client_id, LISTEN, Some(params.to_raw()));
    let exchange = match plan.entry.connector.request(caller, request).await {
        Ok(exchange) => exchange,
        Err(error) => return Some(error.to_string()),
    };
    // Held until the task ends: dropping it (or the events) cancels the listen upstream.
    let _cancel = exchange.cancel;
    let mut upstream_events = exchange.events;
    let mut acked = false;
    loop {
        let Some(event) = upstream_events.recv().await else {
            return Some("ended the listen without a response".into());
        };
        let sent = match event {
            UpstreamEvent::Notification(message) if message.method() == Some(ACKNOWLEDGED) => {
                if acked {
                    continue;
                }
                acked = true;
                let granted = Filter::granted_by_upstream(&message, &plan.filter);
                events.send(Event::Acked { server, granted }).await
            }
            UpstreamEvent::Notification(message) => {
                events.send(Event::Notification { server, message }).await
            }
            UpstreamEvent::Request { request, reply } => {
                let _ = reply.send(Envelope::error(
                    request.id().map(|raw| raw.to_owned()),
                    METHOD_NOT_FOUND,
                    "server requests are not relayed on a subscription stream",
                    None,
                ));
                continue;
            }
            UpstreamEvent::Response(response) => {
                return match response.kind() {
                    Kind::Error => Some(format!(
                        "answered with an error: {}",
                        error_message(&response)
                    )),
                    _ => None,
                };
            }
        };
        if sent.is_err() {
            return None; // the client's stream is gone; dropping the exchange cancels upstream
        }
    }
}

/// The `error.message` of an error response (bounded), for the client's final error.
fn error_message(response: &Envelope) -> String {
    let message = response
        .member("error")
        .and_then(RawObject::parse)
        .and_then(|error| error.get_str("message"))
        .unwrap_or_else(|| "no message".into());
    message.chars().take(200).collect()
}

/// A legacy upstream: list-changed notifications from the connector's unsolicited messages,
/// resource URIs through `resources/subscribe`. Runs until the client leaves or the connector
/// goes away.
async fn legacy(
    server: usize,
    plan: &Plan,
    caller: &Caller,
    capabilities: &Value,
    events: &mpsc::Sender<Event>,
) -> Option<String> {
    // Subscribe before anything is sent upstream, so nothing is missed.
    let mut unsolicited = plan.entry.connector.unsolicited();
    let declared = |primitive: &str, feature: &str| {
        capabilities
            .get(primitive)
            .and_then(|c| c.get(feature))
            .and_then(Value::as_bool)
            == Some(true)
    };
    let asked = &plan.filter;
    let uris = match &asked.uris {
        Some(uris) if declared("resources", "subscribe") => {
            Some(subscribe(plan, caller, uris).await)
        }
        Some(_) => Some(Vec::new()),
        None => None,
    };
    let granted = Filter {
        tools: asked.tools && declared("tools", "listChanged"),
        prompts: asked.prompts && declared("prompts", "listChanged"),
        resources: asked.resources && declared("resources", "listChanged"),
        uris,
    };
    if granted.is_empty() {
        let _ = events.send(Event::Acked { server, granted }).await;
        return None;
    }
    if asked.uris.is_none() {
        // Opens this caller's upstream session (and its GET stream) if it has none yet.
        open_session(plan, caller).await;
    }
    if events
        .send(Event::Acked {
            server,
            granted: granted.clone(),
        })
        .await
        .is_err()
    {
        return None;
    }
    loop {
        let item = match unsolicited.recv().await {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(server = %plan.entry.config.name, missed, "listen: legacy notifications missed (lagging)");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Some("connection closed".into());
            }
        };
        if item
            .caller_key
            .as_deref()
            .is_some_and(|key| *key != *caller.key)
        {
            continue;
        }
        let message = item.message;
        let method = message.method().unwrap_or_default();
        let wanted = match method {
            RESOURCE_UPDATED => message
                .params()
                .and_then(RawObject::parse)
                .and_then(|params| params.get_str("uri"))
                .is_some_and(|uri| {
                    granted
                        .uris
                        .iter()
                        .flatten()
                        .any(|subscribed| covers(subscribed, &uri))
                }),
            _ => granted.admits(method),
        };
        if wanted
            && events
                .send(Event::Notification { server, message })
                .await
                .is_err()
        {
            return None;
        }
    }
}

/// Subscribes each URI on a legacy upstream; returns the ones the server accepted.
async fn subscribe(plan: &Plan, caller: &Caller, uris: &[String]) -> Vec<String> {
    let calls: Vec<_> = uris
        .iter()
        .map(|uri| {
            let connector = Arc::clone(&plan.entry.connector);
            let caller = caller.clone();
            let uri = uri.clone();
            async move {
                let request = Envelope::request(
                    to_raw(&0),
                    "resources/subscribe",
                    Some(to_raw(&serde_json::json!({ "uri": uri }))),
                );
                let ok = tokio::time::timeout(ACK_TIMEOUT, call_ok(connector, caller, request))
                    .await
                    .unwrap_or(false);
                ok.then_some(uri)
            }
        })
        .collect();
    futures::stream::iter(calls)
        .buffered(SUBSCRIBE_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await
}

/// A `ping` through the connector, which opens the caller's legacy upstream session.
async fn open_session(plan: &Plan, caller: &Caller) {
    let ping = Envelope::request(to_raw(&0), "ping", None);
    let call = call_ok(Arc::clone(&plan.entry.connector), caller.clone(), ping);
    let _ = tokio::time::timeout(ACK_TIMEOUT, call).await;
}

/// Makes one call and tells whether it ended with a result.
async fn call_ok(connector: Arc<dyn Connector>, caller: Caller, request: Envelope) -> bool {
    let Ok(mut exchange) = connector.request(&caller, request).await else {
        return false;
    };
    loop {
        match exchange.events.recv().await {
            Some(UpstreamEvent::Response(response)) => return response.kind() == Kind::Result,
            Some(UpstreamEvent::Notification(_)) => {}
            Some(UpstreamEvent::Request { request, reply }) => {
                let _ = reply.send(Envelope::error(
                    request.id().map(|raw| raw.to_owned()),
                    METHOD_NOT_FOUND,
                    "server requests are not relayed while subscribing",
                    None,
                ));
            }
            None => return false,
        }
    }
}

/// Is `uri` the subscribed resource or a sub-resource of it?
fn covers(subscribed: &str, uri: &str) -> bool {
    match uri.strip_prefix(subscribed) {
        Some("") => true,
        Some(rest) => subscribed.ends_with('/') || rest.starts_with(['/', '#', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::envelope::{Limits, Parsed, parse};

    fn envelope(text: &str) -> Envelope {
        match parse(text.as_bytes(), &Limits::default()).unwrap() {
            Parsed::Single(e) => e,
            Parsed::Batch(_) => panic!("batch"),
        }
    }

    fn object(value: Value) -> RawObject {
        RawObject::parse(&to_raw(&value)).unwrap()
    }

    fn value(message: &Envelope) -> Value {
        serde_json::from_slice(&message.to_bytes()).unwrap()
    }

    #[test]
    fn client_filters_are_strict_and_deduplicated() {
        let filter = Filter::from_client(&object(serde_json::json!({
            "toolsListChanged": true,
            "promptsListChanged": false,
            "resourceSubscriptions": ["a", "b", "a"]
        })))
        .unwrap();
        assert!(filter.tools && !filter.prompts && !filter.resources);
        assert_eq!(filter.uris, Some(vec!["a".to_owned(), "b".to_owned()]));
        for bad in [
            serde_json::json!({"toolsListChanged": "yes"}),
            serde_json::json!({"resourceSubscriptions": "a"}),
            serde_json::json!({"resourceSubscriptions": [1]}),
            serde_json::json!({"resourceSubscriptions": vec!["u"; MAX_URIS + 1]}),
        ] {
            assert!(Filter::from_client(&object(bad)).is_err());
        }
    }

    #[test]
    fn upstream_grants_never_exceed_what_was_asked() {
        let asked = Filter {
            tools: true,
            prompts: false,
            resources: false,
            uris: Some(vec!["test://a".into(), "test://b".into()]),
        };
        let ack = envelope(
            r#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{"toolsListChanged":true,"promptsListChanged":true,"resourceSubscriptions":["test://b","test://c",7]}}}"#,
        );
        let granted = Filter::granted_by_upstream(&ack, &asked);
        assert_eq!(
            granted,
            Filter {
                tools: true,
                prompts: false,
                resources: false,
                uris: Some(vec!["test://b".into()]),
            }
        );
        let garbage = envelope(
            r#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":"all"}}"#,
        );
        assert!(!Filter::granted_by_upstream(&garbage, &asked).tools);
    }

    #[test]
    fn notifications_are_tagged_with_the_raw_client_id_keeping_other_meta() {
        let message = envelope(
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":41,"x":1}}}"#,
        );
        let id = RawValue::from_string("123456789012345678901234567890".into()).unwrap();
        let tagged = tag(message, &id).unwrap();
        let text = String::from_utf8(tagged.to_bytes()).unwrap();
        assert!(
            text.contains(
                r#""io.modelcontextprotocol/subscriptionId":123456789012345678901234567890"#
            ),
            "{text}"
        );
        assert!(text.contains(r#""x":1"#));
        let bare = envelope(r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#);
        assert_eq!(
            value(&tag(bare, &to_raw("s")).unwrap())["params"]["_meta"][META_SUBSCRIPTION_ID],
            "s"
        );
        let odd = envelope(
            r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed","params":[]}"#,
        );
        assert!(tag(odd, &to_raw("s")).is_none());
    }

    #[test]
    fn final_messages_are_tagged_results_or_errors_naming_servers() {
        let ok = value(&final_message(&to_raw("l"), &[]));
        assert_eq!(ok["id"], "l");
        assert_eq!(ok["result"]["resultType"], "complete");
        assert_eq!(ok["result"]["_meta"][META_SUBSCRIPTION_ID], "l");
        let failed = value(&final_message(
            &to_raw(&3),
            &[("fx".into(), "answered HTTP 500".into())],
        ));
        assert_eq!(failed["id"], 3);
        assert_eq!(failed["error"]["code"], UPSTREAM_UNAVAILABLE);
        assert_eq!(
            failed["error"]["data"]["servers"],
            serde_json::json!(["fx"])
        );
        assert!(failed["error"]["message"].as_str().unwrap().contains("fx"));
    }

    #[test]
    fn grants_admit_only_their_types() {
        let grant = Filter {
            tools: true,
            uris: Some(vec![]),
            ..Filter::default()
        };
        assert!(grant.admits(TOOLS_CHANGED));
        assert!(!grant.admits(PROMPTS_CHANGED));
        assert!(!grant.admits(RESOURCE_UPDATED));
        assert!(!grant.admits("notifications/progress"));
        assert!(!grant.admits("notifications/message"));
        assert!(!grant.admits(ACKNOWLEDGED));
    }

    #[test]
    fn sub_resources_are_covered() {
        assert!(covers("file:///a", "file:///a"));
        assert!(covers("file:///a", "file:///a/b"));
        assert!(covers("file:///a/", "file:///a/b"));
        assert!(!covers("file:///a", "file:///ab"));
        assert!(!covers("file:///a/b", "file:///a"));
    }
}
