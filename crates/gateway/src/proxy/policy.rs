//! Policy phase: the rules of the running config ([`portcullis_config::Config::policy`]) applied
//! to one message. It sits between route ([`super::target`]) and forward ([`super::forward`]),
//! filters lists, and screens server→client requests before they are relayed.
//!
//! The decision is made on the aggregated tool name `{server}__{tool}` whichever route the call
//! came in on, never waits on the network, and fails closed: `deny` and the default deny answer
//! [`POLICY_DENIED`], `approve` answers [`APPROVAL_REQUIRED`] (this build has no approval flow).
//! Both messages name the rule; both are logged with the principal and the tool. A denial is
//! never disguised as "tool not found".

use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_core::envelope::Envelope;
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use portcullis_policy::{Decision, Effect, Policy, Request};
use serde_json::Value;

use super::Call;
use super::errors::{APPROVAL_REQUIRED, POLICY_DENIED, ProxyError};
use crate::auth::Principal;

/// Unix seconds now (time windows of rules).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decides a routed client request (`message` as the upstream will see it, un-namespaced) for
/// `server`. Ok: the call may go on.
pub fn authorize_request(
    call: &Call,
    server: &str,
    method: &str,
    message: &Envelope,
) -> Result<(), ProxyError> {
    let policy = &call.runtime.config.policy;
    let tool = (method == "tools/call")
        .then(|| {
            message
                .params()
                .and_then(RawObject::parse)
                .and_then(|p| p.get_str("name"))
        })
        .flatten()
        .map(|name| names::join(server, &name));
    // The arguments as the envelope parsed them (duplicate keys were refused there): the value
    // authorized is the value forwarded. Only parsed when some rule has a condition.
    let args: Option<Value> = match (&tool, policy.has_conditions()) {
        (Some(_), true) => message
            .params_value()
            .and_then(|mut p| p.get_mut("arguments").map(Value::take)),
        _ => None,
    };
    let request = Request {
        agent: &call.principal.agent,
        user: call.principal.user.as_deref(),
        roles: &[],
        method,
        server: Some(server),
        tool: tool.as_deref(),
        args: args.as_ref(),
        annotations: None,
        now: now(),
    };
    enforce(&call.principal, &request, policy.decide(&request))
}

/// Would a method-level call (no tool) on `server` be allowed for the caller? No logging: for
/// aggregate operations that leave out what the caller may not use.
pub fn allows(call: &Call, server: &str, method: &str) -> bool {
    let request = Request {
        agent: &call.principal.agent,
        user: call.principal.user.as_deref(),
        roles: &[],
        method,
        server: Some(server),
        now: now(),
        ..Request::default()
    };
    call.runtime.config.policy.decide(&request).effect == Effect::Allow
}

/// Decides a server→client request (`sampling/createMessage`, `elicitation/create`,
/// `roots/list`) from `server` on behalf of `principal`; Err carries the refusal message.
pub fn authorize_server_request(
    policy: &Policy,
    principal: &Principal,
    server: &str,
    method: &str,
) -> Result<(), ProxyError> {
    let request = Request {
        agent: &principal.agent,
        user: principal.user.as_deref(),
        roles: &[],
        method,
        server: Some(server),
        now: now(),
        ..Request::default()
    };
    enforce(principal, &request, policy.decide(&request))
}

/// May the caller see this list item of `server`? Tools: could some rule allow calling it
/// (conditions taken as "may hold")? Prompts and resources: could some rule allow
/// `prompts/get` / `resources/read` on the server? `item` is the upstream's own (un-namespaced)
/// item, with its annotations.
pub fn visible(
    policy: &Policy,
    principal: &Principal,
    list_method: &str,
    server: &str,
    item: &Value,
) -> bool {
    let (method, tool) = match list_method {
        "tools/list" => match item.get("name").and_then(Value::as_str) {
            Some(name) => ("tools/call", Some(names::join(server, name))),
            None => return false,
        },
        "prompts/list" => ("prompts/get", None),
        "resources/list" | "resources/templates/list" => ("resources/read", None),
        _ => return true,
    };
    policy.could_allow(&Request {
        agent: &principal.agent,
        user: principal.user.as_deref(),
        roles: &[],
        method,
        server: Some(server),
        tool: tool.as_deref(),
        annotations: item.get("annotations"),
        now: now(),
        ..Request::default()
    })
}

/// Filters the items of a list result (`tools`, `prompts`, …) in place; the upstream's own
/// names. Returns the result unchanged when it is not a list result.
pub fn filter_list_result(
    policy: &Policy,
    principal: &Principal,
    list_method: &str,
    server: &str,
    result: &mut RawObject,
) {
    let field = match list_method {
        "tools/list" => "tools",
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        "resources/templates/list" => "resourceTemplates",
        _ => return,
    };
    let Some(raw) = result.get(field) else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(raw.get()) else {
        return;
    };
    let kept: Vec<_> = items
        .into_iter()
        .filter(|item| {
            serde_json::from_str::<Value>(item.get())
                .is_ok_and(|v| visible(policy, principal, list_method, server, &v))
        })
        .collect();
    result.set(field, portcullis_core::envelope::to_raw(&kept));
}

fn enforce(
    principal: &Principal,
    request: &Request<'_>,
    decision: Decision,
) -> Result<(), ProxyError> {
    let target = request.tool.or(request.server).unwrap_or("-");
    let rule = decision.rule_id.as_deref().unwrap_or("-");
    match decision.effect {
        Effect::Allow => {
            tracing::debug!(agent = %principal.agent, method = request.method, target, rule, "policy: allowed");
            Ok(())
        }
        Effect::Deny => {
            tracing::warn!(agent = %principal.agent, user = principal.user.as_deref().unwrap_or("-"), method = request.method, target, rule, reason = %decision.reason, "policy: denied");
            Err(
                ProxyError::client(POLICY_DENIED, decision.reason.clone()).with_data(
                    serde_json::json!({ "rule": decision.rule_id, "reason": decision.reason }),
                ),
            )
        }
        Effect::Approve => {
            tracing::warn!(agent = %principal.agent, user = principal.user.as_deref().unwrap_or("-"), method = request.method, target, rule, "policy: approval required, not available (refused)");
            let message = format!(
                "call requires approval (rule {rule}); approvals are not available in this build"
            );
            Err(ProxyError::client(APPROVAL_REQUIRED, message).with_data(
                serde_json::json!({ "rule": decision.rule_id, "reason": decision.reason }),
            ))
        }
    }
}
