//! Scan phase: the proxy's hooks into [`crate::scanning`], one call each.
//!
//! - [`screen_request`] (after policy, before forward): a call to a quarantined tool, prompt or
//!   resource is refused ([`QUARANTINED`]); `tools/call` and `prompts/get` arguments and
//!   `completion/complete` arguments are scanned: `block` → [`SCAN_BLOCKED`] and nothing
//!   leaves, `approve` → a `tools/call` is held for a reviewer ([`approval_need`] →
//!   [`crate::approval::hold`], with the spans other findings redact already masked); what
//!   cannot be held (`prompts/get`, `completion/complete`) is refused with
//!   [`APPROVAL_REQUIRED`]; `redact` → the spans are masked in the forwarded bytes (the caller
//!   then decides the policy again on them: the value authorized is the value forwarded),
//!   `flag` → forwarded and alerted. A first `tools/call` on a server not listed yet lists its
//!   tools upstream first.
//! - [`screen_response`] (the final response of a call, JSON or stream, in `forward.rs`): tool
//!   results, resource contents, prompts and completions; block, redact (checked against the
//!   tool's `outputSchema`) or flag.
//! - [`screen_server_request`] (server→client sampling/elicitation, before relaying): block
//!   (refused; `approve` too, a server's question cannot be held), redact in place (raw member
//!   edits, the request keeps its shape) or flag.
//! - [`screen_list_items`] / [`screen_list_result`] (aggregate and transparent lists) and
//!   [`screen_instructions`] (initialize): tool metadata poisoning and pins. Quarantines and
//!   flags are written to the audit trail as `alert` records ([`record_metadata_alerts`]).
//!
//! Findings are logged (target `portcullis::alert` at warn for every act and flag) and returned
//! as a [`ScanReport`] for the audit record of the call or server request.

use portcullis_config::scanners::Direction;
use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use serde_json::json;
use serde_json::value::RawValue;

use super::Call;
use super::errors::{
    APPROVAL_REQUIRED, ProxyError, QUARANTINED, SCAN_BLOCKED, SCANNER_UNAVAILABLE,
};
use super::policy::ApprovalNeed;
use crate::scanning::content::{self, ScanReport, Scope, Verdict};
use crate::scanning::metadata::{ItemKind, Quarantine, short};
use crate::scanning::scanner;
use crate::state::{CatalogEntry, Gateway, Runtime};
use crate::upstream::UpstreamEvent;

/// Quarantine check and argument scan of a routed request (`message` as the upstream will see
/// it): the message to forward (redacted if need be) or the refusal, and what was found either
/// way (for the call's audit record).
///
/// A `tools/call` on a server whose tools this gateway has not listed yet (a client calling
/// straight from a cached list, or after a restart) first lists them upstream, once per server
/// and process, so the tool is judged on its current definition, never on none.
pub async fn screen_request(
    call: &Call,
    entry: &CatalogEntry,
    method: &str,
    message: Envelope,
) -> (Result<Envelope, ProxyError>, ScanReport) {
    let server = entry.config.name.as_str();
    if method == "tools/call"
        && !call.gateway.scanning.metadata.listed(server)
        && let Err(error) = list_tools_now(call, entry, &message).await
    {
        tracing::warn!(server, error = %error.message, "tools could not be listed before a first call; refused");
        let error = ProxyError::upstream(
            error.code,
            format!(
                "{server}'s tools could not be listed for review before this call: {}",
                error.message
            ),
        );
        return (Err(error), ScanReport::default());
    }
    let mut report = ScanReport::default();
    let result = screen_request_inner(call, server, method, message, &mut report);
    (result, report)
}

/// Pages followed when listing a server's tools before its first call.
const MAX_PRELIST_PAGES: usize = 50;

/// Lists `entry`'s tools upstream (as the caller, with its `_meta`) and screens them, so pins
/// and quarantine know every current definition.
async fn list_tools_now(
    call: &Call,
    entry: &CatalogEntry,
    message: &Envelope,
) -> Result<(), ProxyError> {
    let server = entry.config.name.as_str();
    let meta = message
        .params()
        .and_then(RawObject::parse)
        .and_then(|p| p.get("_meta").map(|raw| raw.to_owned()));
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PRELIST_PAGES {
        let mut params = RawObject::default();
        if let Some(meta) = &meta {
            params.set("_meta", meta.clone());
        }
        if let Some(cursor) = &cursor {
            params.set("cursor", to_raw(cursor));
        }
        let id = to_raw(&format!("portcullis-review-{page}"));
        let request = Envelope::request(id, "tools/list", Some(params.to_raw()));
        let mut exchange = entry.connector.request(&call.caller, request).await?;
        let response = tokio::time::timeout(entry.config.request_timeout, async {
            loop {
                match exchange.events.recv().await {
                    Some(UpstreamEvent::Response(response)) => return Some(response),
                    Some(UpstreamEvent::Notification(_)) => {}
                    Some(UpstreamEvent::Request { request, reply }) => {
                        let _ = reply.send(Envelope::error(
                            request.id().map(|r| r.to_owned()),
                            super::errors::METHOD_NOT_FOUND,
                            "server requests are not relayed while the gateway lists tools",
                            None,
                        ));
                    }
                    None => return None,
                }
            }
        })
        .await
        .map_err(|_| ProxyError::upstream(super::errors::UPSTREAM_TIMEOUT, "tools/list timed out"))?
        .ok_or_else(|| {
            ProxyError::upstream(
                super::errors::UPSTREAM_UNAVAILABLE,
                "tools/list ended without an answer",
            )
        })?;
        call.gateway.tool_schemas.observe_list(server, &response);
        let result = response
            .member("result")
            .and_then(RawObject::parse)
            .ok_or_else(|| {
                ProxyError::upstream(
                    super::errors::UPSTREAM_UNAVAILABLE,
                    "tools/list answered without a result",
                )
            })?;
        let items = result
            .get("tools")
            .and_then(|raw| serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()).ok())
            .unwrap_or_default();
        cursor = result.get_str("nextCursor");
        screen_list_items(&call.gateway, server, "tools", items, cursor.is_none());
        if cursor.is_none() {
            return Ok(());
        }
    }
    Err(ProxyError::upstream(
        super::errors::UPSTREAM_PROTOCOL,
        format!("tools/list has more than {MAX_PRELIST_PAGES} pages"),
    ))
}

fn screen_request_inner(
    call: &Call,
    server: &str,
    method: &str,
    message: Envelope,
    report: &mut ScanReport,
) -> Result<Envelope, ProxyError> {
    let profile = call.runtime.config.scanners.profile(server);
    let (kind, key) = match method {
        "tools/call" => (Some(ItemKind::Tool), "name"),
        "prompts/get" => (Some(ItemKind::Prompt), "name"),
        "resources/read" => (Some(ItemKind::Resource), "uri"),
        _ => (None, ""),
    };
    if let Some(kind) = kind
        && let Some(name) = message
            .params()
            .and_then(RawObject::parse)
            .and_then(|p| p.get_str(key))
        && let Err(quarantine) = call
            .gateway
            .scanning
            .metadata
            .check_call(server, kind, &name, profile)
    {
        tracing::warn!(target: "portcullis::alert", agent = %call.principal.agent, server, method, item = %name, event = quarantine.event(), "call to a quarantined {} refused", kind.label());
        return Err(quarantined(server, kind, &name, &quarantine));
    }
    let members: &[&str] = match method {
        "tools/call" | "prompts/get" => &["arguments", "inputResponses"],
        "completion/complete" => &["argument", "context"],
        _ => return Ok(message),
    };
    if !profile.content_enabled(Direction::Request) {
        return Ok(message);
    }
    let Some(raw) = message.params() else {
        return Ok(message);
    };
    // A message the scanner cannot read (a number beyond f64, `1e400`) is not forwarded unread.
    let value = message
        .params_value()
        .ok_or_else(|| unreadable("the arguments"))?;
    let scanner = scanner().map_err(unavailable)?;
    let screened = content::screen(
        scanner,
        profile,
        Direction::Request,
        raw,
        &value,
        Scope::Members(members),
        None,
    );
    let what = subject(server, method, &message);
    *report = screened.report;
    match screened.verdict {
        Verdict::Pass => {
            alert_flags(report, &what, call.principal.agent.as_ref());
            Ok(message)
        }
        Verdict::Redacted(params) => {
            tracing::warn!(target: "portcullis::alert", agent = %call.principal.agent, target = %what, findings = %report.summary(), "arguments redacted before forwarding");
            let mut message = message;
            message.set_member("params", params);
            // The value authorized is the value forwarded: `proxy::handle_request` decides the
            // policy again on these redacted bytes (a finding whose action is `redact`).
            Ok(message)
        }
        Verdict::Block(reason) => {
            tracing::warn!(target: "portcullis::alert", agent = %call.principal.agent, target = %what, findings = %report.summary(), "request blocked by the scanners");
            Err(blocked(
                &format!("the arguments of {what}"),
                &reason,
                report,
            ))
        }
        Verdict::Approve { reason, redacted } if method == "tools/call" => {
            // Held by the caller (`approval_need` → `crate::approval::hold`), with what other
            // findings redact already masked: the bytes a reviewer approves are those forwarded.
            tracing::warn!(target: "portcullis::alert", agent = %call.principal.agent, target = %what, findings = %report.summary(), reason, "arguments need approval (scanners): call held");
            let mut message = message;
            if let Some(params) = redacted {
                message.set_member("params", params);
            }
            Ok(message)
        }
        Verdict::Approve { reason, .. } => {
            tracing::warn!(target: "portcullis::alert", agent = %call.principal.agent, target = %what, findings = %report.summary(), "request needs approval (scanners) but cannot be held; refused");
            Err(ProxyError::client(
                APPROVAL_REQUIRED,
                format!(
                    "the arguments of {what} need approval: {reason}; only tools/call can be held for a reviewer"
                ),
            )
            .with_data(json!({ "rule": approval_rule(report), "findings": report.findings })))
        }
    }
}

/// The rule id of a scanner approval: `scanners:{family}.{category}` of its first `approve`
/// finding.
fn approval_rule(report: &ScanReport) -> Option<String> {
    report
        .findings
        .iter()
        .find(|f| f.action == "approve")
        .map(|f| format!("scanners:{}.{}", f.family, f.category))
}

/// A `tools/call` whose arguments tripped a scanner's `approve` action (`report` from
/// [`screen_request`], `message` as it will be forwarded) must be held for a reviewer, like a
/// call under an `approve` rule: its [`ApprovalNeed`] (the rule named `scanners:{family}.
/// {category}`, the default reviewer options of `approvals:`). None otherwise.
pub fn approval_need(
    server: &str,
    method: &str,
    message: &Envelope,
    report: &ScanReport,
) -> Option<ApprovalNeed> {
    if method != "tools/call" {
        return None;
    }
    let rule_id = approval_rule(report)?;
    let name = message
        .params()
        .and_then(RawObject::parse)
        .and_then(|p| p.get_str("name"))?;
    Some(ApprovalNeed {
        rule_id,
        options: portcullis_policy::ApprovalOptions::default(),
        tool: names::join(server, &name),
        args: None,
    })
}

/// Scans the final response of a call to `server` (`request` as sent upstream) and returns
/// what the client gets — unchanged, redacted, or an error in place of the result — and what
/// was found (for the call's outcome record).
pub fn screen_response(
    gateway: &Gateway,
    server: &str,
    method: &str,
    request: &Envelope,
    response: Envelope,
) -> (Envelope, ScanReport) {
    let mut report = ScanReport::default();
    let response = screen_response_inner(gateway, server, method, request, response, &mut report);
    (response, report)
}

fn screen_response_inner(
    gateway: &Gateway,
    server: &str,
    method: &str,
    request: &Envelope,
    response: Envelope,
    found: &mut ScanReport,
) -> Envelope {
    if !matches!(
        method,
        "tools/call" | "resources/read" | "prompts/get" | "completion/complete"
    ) || response.kind() != Kind::Result
    {
        return response;
    }
    let runtime = gateway.runtime();
    let profile = runtime.config.scanners.profile(server);
    if !profile.content_enabled(Direction::Response) {
        return response;
    }
    let Some(raw) = response.member("result") else {
        return response;
    };
    let Some(value) = response.member_value("result") else {
        tracing::warn!(target: "portcullis::alert", server, method, "result could not be read by the scanners; blocked");
        return unreadable("the result").to_envelope(response.id());
    };
    let scanner = match scanner() {
        Ok(scanner) => scanner,
        Err(error) => return unavailable(error).to_envelope(response.id()),
    };
    let tool = (method == "tools/call")
        .then(|| {
            request
                .params()
                .and_then(RawObject::parse)
                .and_then(|p| p.get_str("name"))
        })
        .flatten();
    let schema = tool
        .as_deref()
        .and_then(|tool| gateway.scanning.metadata.output_schema(server, tool));
    let screened = content::screen(
        scanner,
        profile,
        Direction::Response,
        raw,
        &value,
        Scope::Whole,
        schema.as_deref(),
    );
    let what = subject(server, method, request);
    *found = screened.report;
    let report = &*found;
    match screened.verdict {
        Verdict::Pass => {
            alert_flags(report, &what, "-");
            response
        }
        Verdict::Redacted(result) => {
            tracing::warn!(target: "portcullis::alert", target = %what, findings = %report.summary(), "result redacted before reaching the client");
            let mut response = response;
            response.set_member("result", result);
            response
        }
        Verdict::Block(reason) => {
            tracing::warn!(target: "portcullis::alert", target = %what, findings = %report.summary(), "result blocked by the scanners");
            blocked(&format!("the result of {what}"), &reason, report).to_envelope(response.id())
        }
        Verdict::Approve { reason, .. } => {
            tracing::warn!(target: "portcullis::alert", target = %what, findings = %report.summary(), "result needs approval (scanners), which a result cannot wait for; refused");
            ProxyError::upstream(
                APPROVAL_REQUIRED,
                format!(
                    "the result of {what} needs approval: {reason}; a result cannot be held for a reviewer"
                ),
            )
            .with_data(json!({ "findings": report.findings }))
            .to_envelope(response.id())
        }
    }
}

/// Scans a server→client request (sampling, elicitation) before it is relayed: Ok(None) to
/// relay it as it is, Ok(Some(request)) to relay it with the spans `redact` masks replaced in
/// place (raw edits of `params`, every other byte as received), Err: the refusal to answer the
/// upstream with instead (`block`, or `approve`: a server's question cannot be held). With what
/// was found, for the request's audit record.
pub fn screen_server_request(
    gateway: &Gateway,
    server: &str,
    request: &Envelope,
) -> (Result<Option<Envelope>, ProxyError>, ScanReport) {
    let mut report = ScanReport::default();
    let verdict = screen_server_request_inner(gateway, server, request, &mut report);
    (verdict, report)
}

fn screen_server_request_inner(
    gateway: &Gateway,
    server: &str,
    request: &Envelope,
    found: &mut ScanReport,
) -> Result<Option<Envelope>, ProxyError> {
    let method = request.method().unwrap_or_default();
    if !matches!(method, "sampling/createMessage" | "elicitation/create") {
        return Ok(None);
    }
    let runtime = gateway.runtime();
    let profile = runtime.config.scanners.profile(server);
    if !profile.content_enabled(Direction::Response) {
        return Ok(None);
    }
    let Some(raw) = request.params() else {
        return Ok(None);
    };
    let what = format!("{method} from {server}");
    let value = request.params_value().ok_or_else(|| unreadable(&what))?;
    let scanner = scanner().map_err(unavailable)?;
    let screened = content::screen(
        scanner,
        profile,
        Direction::Response,
        raw,
        &value,
        Scope::Whole,
        None,
    );
    *found = screened.report;
    let report = &*found;
    let reason = match screened.verdict {
        Verdict::Pass => {
            alert_flags(report, &what, "-");
            return Ok(None);
        }
        Verdict::Redacted(params) => {
            tracing::warn!(target: "portcullis::alert", target = %what, findings = %report.summary(), "server request redacted before reaching the client");
            let mut request = request.clone();
            request.set_member("params", params);
            return Ok(Some(request));
        }
        Verdict::Block(reason) => reason,
        Verdict::Approve { reason, .. } => {
            format!("{reason} (needs approval, which a server's request cannot wait for)")
        }
    };
    tracing::warn!(target: "portcullis::alert", target = %what, findings = %report.summary(), "server request refused by the scanners");
    Err(blocked(&what, &reason, report))
}

/// The visible items of an aggregate list page of `server` (`field`: `tools`, `prompts`, …).
pub fn screen_list_items(
    gateway: &Gateway,
    server: &str,
    field: &str,
    items: Vec<Box<RawValue>>,
    last_page: bool,
) -> Vec<Box<RawValue>> {
    let Some(kind) = ItemKind::of_field(field) else {
        return items;
    };
    let scanner = match scanner() {
        Ok(scanner) => scanner,
        Err(error) => {
            tracing::error!(
                server,
                error,
                "metadata scanner unavailable; list left empty"
            );
            return Vec::new();
        }
    };
    let runtime = gateway.runtime();
    let profile = runtime.config.scanners.profile(server);
    let kept = gateway
        .scanning
        .metadata
        .screen_items(scanner, server, kind, items, profile, last_page);
    record_metadata_alerts(gateway);
    kept
}

/// Writes the metadata alerts raised since the last call (quarantines and flags of tools,
/// prompts and resources, each once per version and process) to the audit trail as `alert`
/// records: the server, the item (`tool` = `{server}__{tool}` for tools), the event as the rule
/// (`pin:changed`, `pin:new`, `poisoning`; decision `quarantine` or `flag`), the definition
/// hashes and the poisoning findings.
///
/// Written in the background, durably (spooled when the store is down, as configured): the list
/// answer that raised them does not wait, and these are rare (first sight of a version).
pub fn record_metadata_alerts(gateway: &Gateway) {
    let alerts = gateway.scanning.metadata.take_alerts();
    if alerts.is_empty() || !gateway.audit.is_enabled() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let trail = gateway.audit.clone();
    runtime.spawn(async move {
        for alert in alerts {
            let event = alert_event(alert);
            if let Err(error) = trail.record(event).await {
                tracing::error!(%error, "metadata alert not recorded in the audit trail");
            }
        }
    });
}

fn alert_event(alert: crate::scanning::metadata::MetadataAlert) -> portcullis_audit::AuditEvent {
    use portcullis_audit::{AuditEvent, Finding, RecordKind};
    let mut event = AuditEvent::new(RecordKind::Alert, portcullis_audit::store::now_us());
    let list_method = match alert.kind {
        ItemKind::Tool => "tools/list",
        ItemKind::Prompt => "prompts/list",
        ItemKind::Resource => "resources/list",
        ItemKind::Template => "resources/templates/list",
    };
    event.method = Some(list_method.to_owned());
    if alert.kind == ItemKind::Tool {
        event.tool = Some(names::join(&alert.server, &alert.name));
    }
    let (decision, rule) = match alert.event {
        "flagged" => ("flag", "poisoning".to_owned()),
        "poisoned" => ("quarantine", "poisoning".to_owned()),
        other => ("quarantine", format!("pin:{other}")),
    };
    event.decision = Some(decision.to_owned());
    event.rule_id = Some(rule);
    let version = match &alert.pinned {
        Some(pinned) => format!("sha256 {} → {}", short(pinned), short(&alert.seen)),
        None => format!("sha256 {}", short(&alert.seen)),
    };
    event.findings.push(Finding {
        rule: format!("metadata.{}", alert.event),
        severity: if alert.event == "flagged" {
            "medium"
        } else {
            "high"
        }
        .to_owned(),
        location: Some(format!("{} {} ({version})", alert.kind.label(), alert.name)),
    });
    event.findings.extend(alert.findings);
    event.server = Some(alert.server);
    event
}

/// The same for a whole list result on the transparent route.
pub fn screen_list_result(gateway: &Gateway, server: &str, method: &str, result: &mut RawObject) {
    let Some(kind) = ItemKind::of_list(method) else {
        return;
    };
    let Some(raw) = result.get(kind.field()) else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) else {
        return;
    };
    let last_page = result
        .get("nextCursor")
        .is_none_or(|raw| raw.get() == "null");
    let kept = screen_list_items(gateway, server, kind.field(), items, last_page);
    result.set(kind.field(), portcullis_core::envelope::to_raw(&kept));
}

/// A server's `instructions`, left out when poisoned; findings on them (once per server and
/// text) become an `alert` record in the audit trail, with `method` the request that
/// presented them.
pub fn screen_instructions(
    gateway: &Gateway,
    runtime: &Runtime,
    method: &str,
    server: &str,
    instructions: Option<String>,
) -> Option<String> {
    instructions.as_ref()?;
    let profile = runtime.config.scanners.profile(server);
    let scanner = match scanner() {
        Ok(scanner) => scanner,
        Err(error) => {
            tracing::error!(
                server,
                error,
                "metadata scanner unavailable; instructions left out"
            );
            return None;
        }
    };
    let screened =
        gateway
            .scanning
            .metadata
            .screen_instructions(scanner, profile, server, instructions);
    if let Some(alert) = screened.alert
        && gateway.audit.is_enabled()
        && let Ok(handle) = tokio::runtime::Handle::try_current()
    {
        let trail = gateway.audit.clone();
        let event = instructions_alert_event(alert, method);
        handle.spawn(async move {
            if let Err(error) = trail.record(event).await {
                tracing::error!(%error, "instructions alert not recorded in the audit trail");
            }
        });
    }
    screened.text
}

fn instructions_alert_event(
    alert: crate::scanning::metadata::InstructionsAlert,
    method: &str,
) -> portcullis_audit::AuditEvent {
    use portcullis_audit::{AuditEvent, Finding, RecordKind};
    let mut event = AuditEvent::new(RecordKind::Alert, portcullis_audit::store::now_us());
    event.method = Some(method.to_owned());
    let (decision, severity) = match alert.event {
        "flagged" => ("flag", "medium"),
        _ => ("quarantine", "high"),
    };
    event.decision = Some(decision.to_owned());
    event.rule_id = Some("poisoning".to_owned());
    event.findings.push(Finding {
        rule: format!("metadata.{}", alert.event),
        severity: severity.to_owned(),
        location: Some(format!("instructions (sha256 {})", short(&alert.seen))),
    });
    event.findings.extend(alert.findings);
    event.server = Some(alert.server);
    event
}

/// `{server}__{tool}` (or `{method} on {server}`) for messages.
fn subject(server: &str, method: &str, message: &Envelope) -> String {
    let params = message.params().and_then(RawObject::parse);
    let name = params.as_ref().and_then(|p| p.get_str("name"));
    match (method, name) {
        ("tools/call", Some(tool)) => names::join(server, &tool),
        ("prompts/get", Some(prompt)) => format!("prompt {}", names::join(server, &prompt)),
        _ => match params.and_then(|p| p.get_str("uri")) {
            Some(uri) => format!("{method} of {}", names::wrap_uri(server, &uri)),
            None => format!("{method} on {server}"),
        },
    }
}

fn alert_flags(report: &ScanReport, what: &str, agent: &str) {
    if !report.is_empty() {
        tracing::warn!(target: "portcullis::alert", agent, target = %what, findings = %report.summary(), "scanner findings flagged (forwarded)");
    }
}

fn blocked(what: &str, reason: &str, report: &ScanReport) -> ProxyError {
    ProxyError::client(
        SCAN_BLOCKED,
        format!("{what} blocked by the gateway's scanners: {reason}"),
    )
    .with_data(json!({ "findings": report.findings }))
}

/// A member the scanners could not parse (e.g. a number beyond f64): refused, never forwarded
/// unscanned.
fn unreadable(what: &str) -> ProxyError {
    ProxyError::client(
        SCAN_BLOCKED,
        format!(
            "{what} could not be read by the gateway's scanners (a number out of range?); refused"
        ),
    )
}

fn unavailable(error: &str) -> ProxyError {
    ProxyError {
        code: SCANNER_UNAVAILABLE,
        message: format!("content scanners unavailable ({error}); refused"),
        data: None,
        fault: super::errors::Fault::Gateway,
        status: http::StatusCode::OK,
    }
}

/// The refusal of a call to a quarantined item.
fn quarantined(server: &str, kind: ItemKind, name: &str, quarantine: &Quarantine) -> ProxyError {
    let shown = match kind {
        ItemKind::Tool | ItemKind::Prompt => names::join(server, name),
        ItemKind::Resource | ItemKind::Template => names::wrap_uri(server, name),
    };
    let hint = match (kind, quarantine) {
        (ItemKind::Tool, Quarantine::NotReviewed) => format!(
            "; list the tools first, or pin it with `portcullis catalog pin {server} {name}`"
        ),
        (ItemKind::Tool, _) => format!(
            "; review with `portcullis catalog diff {server} {name}` and approve with `portcullis catalog approve {server} {name}`"
        ),
        _ => String::new(),
    };
    let (pinned, seen) = match quarantine {
        Quarantine::Changed { pinned, seen } => (Some(short(pinned)), Some(short(seen))),
        other => (None, other.seen().map(short)),
    };
    ProxyError::client(
        QUARANTINED,
        format!(
            "{} {shown} is quarantined: {}{hint}",
            kind.label(),
            quarantine.describe()
        ),
    )
    .with_data(json!({
        "server": server,
        "kind": kind.label(),
        "name": name,
        "event": quarantine.event(),
        "pinned": pinned,
        "seen": seen,
    }))
}
