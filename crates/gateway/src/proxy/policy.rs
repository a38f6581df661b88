//! Policy phase: the rules of the running config ([`portcullis_config::Config::policy`]) applied
//! to one message. It sits between route ([`super::target`]) and forward ([`super::forward`]),
//! filters lists, and screens server→client requests before they are relayed.
//!
//! The decision is made on the aggregated tool name `{server}__{tool}` whichever route the call
//! came in on, never waits on the network, and fails closed: `deny` and the default deny answer
//! [`POLICY_DENIED`]. `approve` on a `tools/call` is [`Decided::Approve`]: the proxy hands the
//! call to [`crate::approval`], which holds it for reviewers; anything else an `approve` rule
//! matches cannot be held and answers [`APPROVAL_REQUIRED`]. Messages name the rule and are
//! logged with the principal and the tool. A denial is never disguised as "tool not found".

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

/// What the policy says about a routed request that it does not refuse.
#[derive(Debug)]
pub enum Decided {
    /// Go on, with the id of the rule that allowed it (for the audit record).
    Allowed(Option<String>),
    /// A `tools/call` under an `approve` rule: hold it until reviewers decide.
    Approve(ApprovalNeed),
}

impl Decided {
    /// The rule that decided.
    pub fn rule(&self) -> Option<String> {
        match self {
            Decided::Allowed(rule) => rule.clone(),
            Decided::Approve(need) => Some(need.rule_id.clone()),
        }
    }
}

/// Why and how a call must be held (see [`crate::approval`]).
#[derive(Debug, Clone)]
pub struct ApprovalNeed {
    pub rule_id: String,
    pub options: portcullis_policy::ApprovalOptions,
    /// The aggregated tool name `{server}__{tool}`.
    pub tool: String,
    /// The arguments as parsed for the decision, when a rule needed them.
    pub args: Option<Value>,
}

/// Decides a routed client request for callers that cannot hold a call: an `approve` decision
/// is refused with [`APPROVAL_REQUIRED`] (fail closed).
pub fn authorize_request(
    call: &Call,
    server: &str,
    method: &str,
    message: &Envelope,
) -> Result<Option<String>, ProxyError> {
    match decide_request(call, server, method, message)? {
        Decided::Allowed(rule) => Ok(rule),
        Decided::Approve(need) => {
            tracing::warn!(agent = %call.principal.agent, method, rule = %need.rule_id, "policy: approval required, but this request cannot be held (refused)");
            Err(ProxyError::client(
                APPROVAL_REQUIRED,
                format!(
                    "{method} requires approval (rule {}), which cannot be given to this request",
                    need.rule_id
                ),
            )
            .with_data(serde_json::json!({ "rule": need.rule_id })))
        }
    }
}

/// Decides a routed client request (`message` as the upstream will see it, un-namespaced) for
/// `server`: refused (Err), allowed, or to be held for approval.
pub fn decide_request(
    call: &Call,
    server: &str,
    method: &str,
    message: &Envelope,
) -> Result<Decided, ProxyError> {
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
        roles: &call.principal.roles,
        method,
        server: Some(server),
        tool: tool.as_deref(),
        args: args.as_ref(),
        annotations: None,
        now: now(),
    };
    let decision = policy.decide(&request);
    if decision.effect == Effect::Approve
        && let (Some(tool), Some(rule_id)) = (&tool, &decision.rule_id)
    {
        tracing::info!(agent = %call.principal.agent, user = call.principal.user.as_deref().unwrap_or("-"), tool = %tool, rule = %rule_id, "policy: approval required, holding the call");
        return Ok(Decided::Approve(ApprovalNeed {
            rule_id: rule_id.clone(),
            options: policy.approval(rule_id).copied().unwrap_or_default(),
            tool: tool.clone(),
            args,
        }));
    }
    enforce(&call.principal, &request, decision).map(Decided::Allowed)
}

/// Would a method-level call (no tool) on `server` be allowed for the caller? No logging: for
/// aggregate operations that leave out what the caller may not use.
pub fn allows(call: &Call, server: &str, method: &str) -> bool {
    let request = Request {
        agent: &call.principal.agent,
        user: call.principal.user.as_deref(),
        roles: &call.principal.roles,
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
) -> Result<Option<String>, ProxyError> {
    let request = Request {
        agent: &principal.agent,
        user: principal.user.as_deref(),
        roles: &principal.roles,
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
        roles: &principal.roles,
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
) -> Result<Option<String>, ProxyError> {
    let target = request.tool.or(request.server).unwrap_or("-");
    let rule = decision.rule_id.as_deref().unwrap_or("-");
    match decision.effect {
        Effect::Allow => {
            tracing::debug!(agent = %principal.agent, method = request.method, target, rule, "policy: allowed");
            Ok(decision.rule_id)
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
            tracing::warn!(agent = %principal.agent, user = principal.user.as_deref().unwrap_or("-"), method = request.method, target, rule, "policy: approval required, but this request cannot be held (refused)");
            let message = format!(
                "{} requires approval (rule {rule}), which cannot be given to this request",
                request.method
            );
            Err(ProxyError::client(APPROVAL_REQUIRED, message).with_data(
                serde_json::json!({ "rule": decision.rule_id, "reason": decision.reason }),
            ))
        }
    }
}
