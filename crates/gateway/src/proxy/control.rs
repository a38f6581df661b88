//! Kill switches, task-token scope and rate limits on the data plane (DESIGN step 6), between
//! route and policy. The decisions are [`portcullis_control`]'s; this module feeds it the call
//! and turns its refusals into JSON-RPC errors (codes in [`super::errors`], `data.rule` naming
//! what refused so that audit records show it):
//!
//! - a kill switch → [`KILLED`]; calls in flight and open streams it matches end with the same
//!   error ([`killed`], [`stream_killed`]); so do those of a task token revoked meanwhile
//!   ([`OUT_OF_TASK_SCOPE`], [`revoked_error`]) or reaching its expiry ([`expired_error`], a
//!   timer at the token's `expires_at`);
//! - outside the task token's servers or tools → [`OUT_OF_TASK_SCOPE`]; past its `max_calls`
//!   → [`TASK_CALLS_EXHAUSTED`];
//! - a rate limit → [`RATE_LIMITED`] with `data.retryAfterMs`, HTTP 429 for a single request
//!   (the edge adds `Retry-After`); shared buckets (`limits.rate.redis`) that Redis cannot
//!   answer → [`CONTROL_UNAVAILABLE`], HTTP 503 (fail closed).
//!
//! Lists leave out what a kill switch stops and what the caller's task token does not cover
//! ([`screen_list_items`], [`screen_list_result`]); policy filters them as well.

use std::sync::Arc;

use http::StatusCode;
use portcullis_control::kill::{KillSet, KillSwitch, Scope, wait_for_kill};
use portcullis_control::task::{ScopeError, TaskScope, wait_for_expiry, wait_for_revocation};
use portcullis_control::{CallFacts, Refusal};
use portcullis_core::envelope::Envelope;
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use serde_json::json;
use serde_json::value::RawValue;

use super::Call;
use super::errors::{
    CONTROL_UNAVAILABLE, KILLED, OUT_OF_TASK_SCOPE, ProxyError, RATE_LIMITED, TASK_CALLS_EXHAUSTED,
};
use crate::auth::Principal;
use crate::state::Gateway;

/// Admits a routed request (`message` as the upstream will see it) for `server`, or refuses
/// it. Counts the call against the caller's task token when it is admitted.
pub async fn admit(
    call: &Call,
    server: &str,
    method: &str,
    message: &Envelope,
) -> Result<(), ProxyError> {
    let tool = tool_of(server, method, message);
    let facts = CallFacts {
        agent: &call.principal.agent,
        server,
        tool: tool.as_deref(),
        task: call.principal.task.as_deref(),
    };
    call.gateway.control.admit(&facts).await.map_err(|refusal| {
        let error = refusal_error(refusal);
        tracing::warn!(agent = %call.principal.agent, server, tool = tool.as_deref().unwrap_or("-"), code = error.code, reason = %error.message, "control: refused");
        error
    })
}

/// The aggregated `{server}__{tool}` of a `tools/call`.
fn tool_of(server: &str, method: &str, message: &Envelope) -> Option<String> {
    (method == "tools/call")
        .then(|| {
            message
                .params()
                .and_then(RawObject::parse)
                .and_then(|p| p.get_str("name"))
        })
        .flatten()
        .map(|name| names::join(server, &name))
}

/// The JSON-RPC error for a refusal.
pub fn refusal_error(refusal: Refusal) -> ProxyError {
    match refusal {
        Refusal::Killed(switch) => killed_error(&switch),
        Refusal::OutOfScope(error) => {
            let (code, id) = match &error {
                ScopeError::Exhausted { id, .. } => (TASK_CALLS_EXHAUSTED, id),
                ScopeError::Server { id, .. }
                | ScopeError::Tool { id, .. }
                | ScopeError::NotATool { id } => (OUT_OF_TASK_SCOPE, id),
            };
            ProxyError::client(code, error.to_string())
                .with_data(json!({ "rule": format!("task-token:{id}"), "token": id }))
        }
        Refusal::RateLimited(refusal) => {
            let retry_ms = u64::try_from(refusal.retry_after.as_millis()).unwrap_or(u64::MAX);
            ProxyError::client(
                RATE_LIMITED,
                format!(
                    "rate limit {} exceeded; retry in {retry_ms} ms",
                    refusal.limit
                ),
            )
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_data(json!({
                "rule": format!("rate:{}", refusal.limit),
                "limit": refusal.limit,
                "retryAfterMs": retry_ms,
            }))
        }
        Refusal::Unavailable(why) => ProxyError {
            fault: super::errors::Fault::Gateway,
            ..ProxyError::client(CONTROL_UNAVAILABLE, format!("call refused: {why}"))
        }
        .with_status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The error a kill switch answers with.
pub fn killed_error(switch: &KillSwitch) -> ProxyError {
    let what = match switch.target.scope {
        Scope::All => "the gateway is in lockdown".to_owned(),
        Scope::Agent => format!("agent {} is killed", switch.target.name),
        Scope::Server => format!("server {} is killed", switch.target.name),
        Scope::Tool => format!("tools matching {} are killed", switch.target.name),
    };
    let reason = if switch.reason.is_empty() {
        String::new()
    } else {
        format!(" (reason: {})", switch.reason)
    };
    ProxyError::client(
        KILLED,
        format!("killed: {what} by kill switch {}{reason}", switch.target),
    )
    .with_data(json!({
        "rule": format!("kill:{}", switch.target),
        "switch": switch.to_json(),
    }))
}

/// The error that ends the calls and streams of a task token revoked while they were open.
pub fn revoked_error(task: &TaskScope) -> ProxyError {
    ProxyError::client(
        OUT_OF_TASK_SCOPE,
        format!(
            "task token {} has been revoked; the call was stopped",
            task.id
        ),
    )
    .with_data(json!({ "rule": format!("task-token:{}", task.id), "token": task.id }))
}

/// The error that ends the calls and streams of a task token that expired while they were open.
pub fn expired_error(task: &TaskScope) -> ProxyError {
    ProxyError::client(
        OUT_OF_TASK_SCOPE,
        format!("task token {} has expired; the call was stopped", task.id),
    )
    .with_data(json!({ "rule": format!("task-token:{}", task.id), "token": task.id }))
}

/// Resolves (with the error to end it) when this call in flight must stop: a kill switch that
/// stops `principal`'s agent calling `server` (`message` being the request as sent upstream),
/// or the revocation or expiry of the principal's task token.
pub async fn killed(
    gateway: &Gateway,
    principal: &Principal,
    server: &str,
    method: &str,
    message: &Envelope,
) -> ProxyError {
    let tool = tool_of(server, method, message);
    stopped(gateway, principal, Some(server), tool.as_deref()).await
}

/// Resolves (with the error to end it) when an open stream of `principal` must stop: a
/// lockdown, the agent's switch, for a stream of one server that server's switch, or the
/// revocation or expiry of the principal's task token.
pub async fn stream_killed(
    gateway: &Gateway,
    principal: &Principal,
    server: Option<&str>,
) -> ProxyError {
    stopped(gateway, principal, server, None).await
}

async fn stopped(
    gateway: &Gateway,
    principal: &Principal,
    server: Option<&str>,
    tool: Option<&str>,
) -> ProxyError {
    // Subscribed before the current state is read, so no change is missed in between.
    let mut sets = gateway.control.kills.subscribe();
    let mut revocations = gateway.control.tokens.subscribe_revocations();
    let kill = wait_for_kill(&mut sets, &principal.agent, server, tool);
    match &principal.task {
        None => killed_error(&*kill.await),
        Some(task) => tokio::select! {
            switch = kill => killed_error(&switch),
            () = wait_for_revocation(&mut revocations, task) => revoked_error(task),
            () = wait_for_expiry(task) => expired_error(task),
        },
    }
}

/// Is `server` closed to `principal` now: stopped by a kill switch (lockdown, the agent's or the
/// server's), outside the principal's task token, or that token revoked or expired? For what reaches a
/// caller from a server outside any call: listens and standalone streams on the aggregate.
pub fn server_closed(kills: &KillSet, principal: &Principal, server: &str) -> bool {
    kills.agent(&principal.agent).is_some()
        || kills.server(server).is_some()
        || principal.task.as_ref().is_some_and(|task| {
            task.is_revoked() || task.is_expired() || !task.allows_server(server)
        })
}

/// Leaves out of a page of list items (the upstream's own names, `field` = `tools`, …) what a
/// kill switch stops and what the caller's task token does not cover.
pub fn screen_list_items(
    gateway: &Gateway,
    principal: &Principal,
    server: &str,
    field: &str,
    items: Vec<Box<RawValue>>,
) -> Vec<Box<RawValue>> {
    let kills = gateway.control.kills.snapshot();
    if kills.is_empty() && principal.task.is_none() {
        return items;
    }
    items
        .into_iter()
        .filter(|item| visible(&kills, principal, server, field, item))
        .collect()
}

/// The same for a whole list result on the transparent route.
pub fn screen_list_result(
    gateway: &Gateway,
    principal: &Principal,
    server: &str,
    method: &str,
    result: &mut RawObject,
) {
    let field = match method {
        "tools/list" => "tools",
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        "resources/templates/list" => "resourceTemplates",
        _ => return,
    };
    let Some(raw) = result.get(field) else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) else {
        return;
    };
    let kept = screen_list_items(gateway, principal, server, field, items);
    result.set(field, portcullis_core::envelope::to_raw(&kept));
}

fn visible(
    kills: &Arc<KillSet>,
    principal: &Principal,
    server: &str,
    field: &str,
    item: &RawValue,
) -> bool {
    if kills.agent(&principal.agent).is_some() || kills.server(server).is_some() {
        return false;
    }
    if field != "tools" {
        // A task token that names tools covers only those tools' calls.
        return principal
            .task
            .as_ref()
            .is_none_or(|task| task.allows_server(server) && task.tools.is_empty());
    }
    let Some(name) = RawObject::parse(item).and_then(|item| item.get_str("name")) else {
        return false;
    };
    let aggregated = names::join(server, &name);
    kills.tool(server, &aggregated).is_none()
        && principal
            .task
            .as_ref()
            .is_none_or(|task| task.allows_tool(server, &aggregated))
}

/// Ends a streaming response (an SSE body) when a kill switch stops streams of `principal` on
/// `route`, or its task token is revoked or expires ([`stream_killed`]): the body simply ends, as on
/// shutdown. The watch lives inside the body, so it goes away with the stream.
pub fn end_stream_on_kill(
    gateway: &Arc<Gateway>,
    principal: &Principal,
    route: &crate::route::Route,
    response: axum::response::Response,
) -> axum::response::Response {
    use futures::StreamExt as _;
    let gateway = gateway.clone();
    let principal = principal.clone();
    let server = match route {
        crate::route::Route::Server(name) => Some(name.clone()),
        crate::route::Route::Aggregate => None,
    };
    let killed = async move {
        let error = stream_killed(&gateway, &principal, server.as_deref()).await;
        tracing::info!(agent = %principal.agent, reason = %error.message, "open stream ended by a kill switch or a revoked or expired task token");
    };
    response.map(|body| {
        axum::body::Body::from_stream(body.into_data_stream().take_until(Box::pin(killed)))
    })
}

/// Registers the control counters with the gateway's `/metrics`:
/// `portcullis_rate_limit_calls_total{limit, result="admitted"|"refused"}` and
/// `portcullis_control_refusals_total{reason="killed"|"task_scope"}`. The counts live in
/// [`portcullis_control::Control::counters`]; each scrape adds what happened since the last.
pub fn register_metrics(gateway: &Arc<Gateway>) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use std::collections::HashMap;
    use std::sync::Mutex;

    type Labels = Vec<(String, String)>;
    let rate: Family<Labels, Counter> = Family::default();
    let refusals: Family<Labels, Counter> = Family::default();
    gateway.metrics.register(
        "rate_limit_calls",
        "Calls checked by each rate limit (limits.rate), admitted or refused",
        rate.clone(),
    );
    gateway.metrics.register(
        "control_refusals",
        "Calls refused by a kill switch or for being outside a task token's scope",
        refusals.clone(),
    );
    let control = Arc::downgrade(&gateway.control);
    let seen: Mutex<HashMap<Labels, u64>> = Mutex::new(HashMap::new());
    gateway.metrics.on_scrape(move || {
        let Some(control) = control.upgrade() else {
            return;
        };
        let counters = control.counters();
        let mut seen = seen.lock().expect("poisoned");
        let mut add = |family: &Family<Labels, Counter>, labels: Labels, now: u64| {
            let last = seen.entry(labels.clone()).or_insert(0);
            // A reload with new limits restarts their counts: count from the new start.
            let delta = now.checked_sub(*last).unwrap_or(now);
            family.get_or_create(&labels).inc_by(delta);
            *last = now;
        };
        for (reason, now) in [
            ("killed", counters.killed),
            ("task_scope", counters.out_of_scope),
        ] {
            add(&refusals, vec![("reason".into(), reason.into())], now);
        }
        for limit in counters.rate {
            for (result, now) in [("admitted", limit.admitted), ("refused", limit.refused)] {
                let labels = vec![
                    ("limit".into(), limit.limit.clone()),
                    ("result".into(), result.into()),
                ];
                add(&rate, labels, now);
            }
        }
    });
}
