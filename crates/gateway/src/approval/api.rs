//! Reviewers' routes, merged into the admin API (`/admin/api/v1`):
//!
//! | route | role | does |
//! | --- | --- | --- |
//! | `GET /approvals?status=pending&limit=N` | viewer | list requests, newest first |
//! | `GET /approvals/{id}` | viewer | one request with its decisions |
//! | `POST /approvals/{id}/approve` `{reason?}` | approver | approve (counts once per reviewer) |
//! | `POST /approvals/{id}/deny` `{reason}` | approver | deny, with a reason |
//! | `GET /approvals/{id}/review?verdict=…&t=…` | none | the page a chat link opens: asks for an admin token, decides nothing |
//! | `POST /approvals/{id}/review` `{verdict, t, reason?}` | approver | redeem a chat link |
//!
//! The reviewer is the admin credential, never a name in the body. The caller of a held call is
//! refused (403) whatever its admin role; so is a reviewer below the rule's `role`. Deciding a
//! request that is no longer pending, or twice as the same reviewer, is 409 and changes nothing.
//! A link is checked before it is consumed, so a refused reviewer does not burn it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use portcullis_approvals::machine::{self, Facts};
use portcullis_approvals::store::well_formed_id;
use portcullis_approvals::{
    Approval, Channel, DecideError, DecideFailure, Outcome, Reviewer, Role, Status, Verdict, now_ms,
};
use portcullis_audit::store::now_us;
use portcullis_audit::{AuditEvent, RecordKind};
use portcullis_config::AdminRole;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{AdminError, AdminPrincipal, Approver, Viewer, json_response};
use crate::state::Gateway;

/// Most requests one list returns.
const MAX_LIST: u32 = 500;

/// The approvals routes (relative to the admin API's base path).
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{id}", get(show))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/approvals/{id}/review", get(review_page).post(review))
}

/// A refusal of these routes: the admin API's errors, plus 409 for decisions that come too late
/// or twice (same body shape: `{"error": {"code", "message"}}`).
enum ApiError {
    Admin(AdminError),
    Conflict(String),
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        ApiError::Admin(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Admin(error) => error.into_response(),
            ApiError::Conflict(message) => json_response(
                StatusCode::CONFLICT,
                &json!({ "error": { "code": "conflict", "message": message } }),
            ),
        }
    }
}

/// `key=value&…` pairs of a query string (values here are plain ASCII: statuses, numbers,
/// verdicts, base64url nonces; anything percent-encoded is refused).
fn query_pairs(query: Option<&str>) -> Result<Vec<(&str, &str)>, AdminError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if pair.contains('%') || pair.contains('+') {
                return Err(AdminError::BadRequest(format!(
                    "unexpected encoding in query parameter {key:?}"
                )));
            }
            Ok((key, value))
        })
        .collect()
}

fn checked_id(id: &str) -> Result<&str, AdminError> {
    if well_formed_id(id) {
        Ok(id)
    } else {
        Err(AdminError::NotFound(format!("no approval request {id:?}")))
    }
}

/// The JSON form of a request.
fn approval_json(approval: &Approval) -> serde_json::Value {
    let mut value = serde_json::to_value(approval).unwrap_or_default();
    value["approvals"] = json!(approval.approvals());
    value
}

/// `GET /approvals`.
async fn list(
    State(gateway): State<Arc<Gateway>>,
    Viewer(_): Viewer,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut status = None;
    let mut limit = 100;
    for (key, value) in query_pairs(query.as_deref())? {
        match key {
            "status" => {
                status = Some(Status::parse(value).ok_or_else(|| {
                    AdminError::BadRequest(format!(
                        "unknown status {value:?} (pending, approved, denied, expired, abandoned)"
                    ))
                })?)
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!("limit must be 1 to {MAX_LIST}"))
                    })?
            }
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {other:?} (status, limit)"
                ))
                .into());
            }
        }
    }
    let approvals = gateway
        .approvals
        .store
        .list(status, limit)
        .await
        .map_err(AdminError::store)?;
    let items: Vec<_> = approvals.iter().map(approval_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "approvals": items }),
    ))
}

/// `GET /approvals/{id}`.
async fn show(
    State(gateway): State<Arc<Gateway>>,
    Viewer(_): Viewer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let approval = fetch(&gateway, &id).await?;
    Ok(json_response(StatusCode::OK, &approval_json(&approval)))
}

async fn fetch(gateway: &Gateway, id: &str) -> Result<Approval, AdminError> {
    let id = checked_id(id)?;
    gateway
        .approvals
        .store
        .get(id)
        .await
        .map_err(AdminError::store)?
        .ok_or_else(|| AdminError::NotFound(format!("no approval request {id:?}")))
}

/// The body of approve / deny.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
}

fn decision_body(body: &Bytes) -> Result<DecisionBody, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| AdminError::BadRequest(format!("expected {{\"reason\": \"…\"}}: {error}")))
}

/// `POST /approvals/{id}/approve`.
async fn approve(
    State(gateway): State<Arc<Gateway>>,
    Approver(admin): Approver,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = decision_body(&body)?;
    decide(
        &gateway,
        &admin,
        &id,
        Verdict::Approve,
        body.reason,
        Channel::Api,
    )
    .await
}

/// `POST /approvals/{id}/deny`.
async fn deny(
    State(gateway): State<Arc<Gateway>>,
    Approver(admin): Approver,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = decision_body(&body)?;
    decide(
        &gateway,
        &admin,
        &id,
        Verdict::Deny,
        body.reason,
        Channel::Api,
    )
    .await
}

/// The reviewer identity of an admin principal.
pub fn reviewer(admin: &AdminPrincipal) -> Reviewer {
    Reviewer {
        name: admin.name.to_string(),
        credential_id: admin
            .principal
            .as_ref()
            .map(|p| p.credential_id.to_string())
            .unwrap_or_else(|| format!("admin-token:{}", admin.name)),
        role: match admin.role {
            AdminRole::Viewer => Role::Viewer,
            AdminRole::Approver => Role::Approver,
            AdminRole::Admin => Role::Admin,
        },
        agent: admin.principal.as_ref().map(|p| p.agent.to_string()),
    }
}

/// Maps a refused decision to its response.
fn refused(error: DecideError) -> ApiError {
    match error {
        DecideError::NotFound => ApiError::Admin(AdminError::NotFound(error.to_string())),
        DecideError::SelfApproval | DecideError::Role { .. } => {
            ApiError::Admin(AdminError::Forbidden(error.to_string()))
        }
        DecideError::ReasonRequired | DecideError::ReasonTooLong => {
            ApiError::Admin(AdminError::BadRequest(error.to_string()))
        }
        DecideError::NotPending(_) | DecideError::Expired | DecideError::AlreadyDecided(_) => {
            ApiError::Conflict(error.to_string())
        }
    }
}

/// Applies one reviewer's verdict, wakes the holder if it is this process, records it in the
/// audit trail.
async fn decide(
    gateway: &Arc<Gateway>,
    admin: &AdminPrincipal,
    id: &str,
    verdict: Verdict,
    reason: Option<String>,
    channel: Channel,
) -> Result<Response, ApiError> {
    let id = checked_id(id)?;
    let reviewer = reviewer(admin);
    let outcome = gateway
        .approvals
        .store
        .decide(id, &reviewer, verdict, reason.as_deref(), channel, now_ms())
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(DecideFailure::Refused(error)) => {
            tracing::warn!(approval = id, reviewer = %reviewer.name, verdict = verdict.as_str(), %error, "approval decision refused");
            return Err(refused(error));
        }
        Err(DecideFailure::Store(error)) => return Err(AdminError::store(error).into()),
    };
    let approval = gateway.approvals.store.get(id).await.ok().flatten();
    record_decision(gateway, approval.as_ref(), &reviewer, verdict, channel).await;
    // Wake the holder after the decision is in the trail (it polls the store anyway).
    gateway.approvals.wake(id);
    tracing::info!(approval = id, reviewer = %reviewer.name, verdict = verdict.as_str(), channel = channel.as_str(), "approval decision recorded");
    let body = match outcome {
        Outcome::Final(status) => json!({ "id": id, "status": status, "final": true }),
        Outcome::Recorded { approvals, needed } => json!({
            "id": id, "status": Status::Pending, "final": false,
            "approvals": approvals, "needed": needed,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// A reviewer's decision in the audit trail (the request's own records reference the same id).
async fn record_decision(
    gateway: &Gateway,
    approval: Option<&Approval>,
    reviewer: &Reviewer,
    verdict: Verdict,
    channel: Channel,
) {
    let Some(approval) = approval else { return };
    let mut event = AuditEvent::new(RecordKind::Approval, now_us());
    event.principal.agent = reviewer.agent.clone();
    event.principal.user = Some(reviewer.name.clone());
    event.principal.token_id = Some(reviewer.credential_id.clone());
    event.server = Some(approval.server.clone());
    event.method = Some("tools/call".to_owned());
    event.tool = Some(approval.tool.clone());
    event.rule_id = Some(approval.rule_id.clone());
    event.approval_ref = Some(approval.id.clone());
    event.decision = Some(format!(
        "reviewer_{}_via_{}",
        verdict.as_str(),
        channel.as_str()
    ));
    super::hold::chain(gateway, event).await;
}

/// `GET /approvals/{id}/review?verdict=approve|deny&t=NONCE`: the page a chat link opens. It
/// shows nothing about the request (the link may have been forwarded) and decides nothing (chat
/// apps prefetch links); its form posts the link with the reviewer's admin token.
async fn review_page(Path(id): Path<String>, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref()).unwrap_or_default();
    let verdict = pairs
        .iter()
        .find(|(k, _)| *k == "verdict")
        .and_then(|(_, v)| Verdict::parse(v));
    let has_nonce = pairs
        .iter()
        .any(|(k, v)| *k == "t" && portcullis_approvals::link::well_formed(v));
    let (Some(verdict), true, true) = (verdict, has_nonce, well_formed_id(&id)) else {
        return AdminError::BadRequest("this is not a valid review link".into()).into_response();
    };
    let html = review_html(&id, verdict);
    let mut response = (StatusCode::OK, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src '{}'; style-src 'unsafe-inline'; connect-src 'self'; \
         form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        script_hash()
    )) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body of a link redemption.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    verdict: String,
    /// The link's nonce.
    t: String,
    reason: Option<String>,
}

/// `POST /approvals/{id}/review`: redeems a chat link with the reviewer's admin credential.
async fn review(
    State(gateway): State<Arc<Gateway>>,
    Approver(admin): Approver,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ReviewBody = serde_json::from_slice(&body).map_err(|error| {
        AdminError::BadRequest(format!(
            "expected {{\"verdict\": \"approve|deny\", \"t\": \"…\", \"reason\": \"…\"}}: {error}"
        ))
    })?;
    let verdict = Verdict::parse(&body.verdict)
        .ok_or_else(|| AdminError::BadRequest("verdict must be approve or deny".into()))?;
    let approval = fetch(&gateway, &id).await?;
    // Check first, consume second: a reviewer who may not decide does not burn the link.
    let reviewer = reviewer(&admin);
    machine::decide(
        Facts::from(&approval),
        &reviewer,
        verdict,
        body.reason.as_deref(),
        now_ms(),
    )
    .map_err(refused)?;
    let redeemed = gateway
        .approvals
        .store
        .redeem_link(&approval.id, verdict, &body.t, now_ms())
        .await
        .map_err(AdminError::store)?;
    if let Err(error) = redeemed {
        tracing::warn!(approval = %approval.id, reviewer = %reviewer.name, "review link refused (unknown, expired, replayed or for another request)");
        return Err(AdminError::Forbidden(error.to_string()).into());
    }
    decide(
        &gateway,
        &admin,
        &approval.id,
        verdict,
        body.reason,
        Channel::Link,
    )
    .await
}

/// The review page's script: posts the link's nonce with the token typed into the form.
const REVIEW_SCRIPT: &str = r#"
document.getElementById('f').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = new URLSearchParams(location.search);
  const out = document.getElementById('out');
  const res = await fetch(location.pathname, {
    method: 'POST',
    headers: { 'content-type': 'application/json',
               'authorization': 'Bearer ' + document.getElementById('token').value },
    body: JSON.stringify({ verdict: q.get('verdict'), t: q.get('t'),
                           reason: document.getElementById('reason').value || null }),
  });
  const body = await res.json().catch(() => ({}));
  out.textContent = res.ok ? ('Recorded: ' + body.status)
                           : ('Refused: ' + ((body.error && body.error.message) || res.status));
});
"#;

/// The review page around [`REVIEW_SCRIPT`]; `{{ID}}` and `{{VERDICT}}` are filled in (both
/// validated: a hex id, `approve` or `deny`).
const REVIEW_HEAD: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Portcullis review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}
input,textarea,button{display:block;width:100%;margin:.5rem 0;padding:.5rem;font:inherit}</style>
</head><body><h1>Review {{ID}}</h1>
<p>You are about to <strong>{{VERDICT}}</strong> this held call. This link works once and only
together with your approver token; the details of the call are in the chat message, the CLI
(<code>portcullis approvals list</code>) and the admin API.</p>
<form id="f"><label>Admin token <input id="token" type="password" autocomplete="off" required></label>
<label>Reason <textarea id="reason" rows="3"></textarea></label>
<button type="submit">{{VERDICT}}</button></form><p id="out" role="status"></p>
"#;

fn review_html(id: &str, verdict: Verdict) -> String {
    let head = REVIEW_HEAD
        .replace("{{ID}}", id)
        .replace("{{VERDICT}}", verdict.as_str());
    format!("{head}<script>{REVIEW_SCRIPT}</script></body></html>")
}

/// `sha256-…` of [`REVIEW_SCRIPT`], for the page's Content-Security-Policy.
fn script_hash() -> &'static str {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let digest = Sha256::digest(REVIEW_SCRIPT.as_bytes());
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_embeds_exactly_the_hashed_script() {
        let page = review_html("apr_000000000000000000000001", Verdict::Deny);
        assert!(page.contains(&format!("<script>{REVIEW_SCRIPT}</script>")));
        assert!(page.contains("<strong>deny</strong>"));
        assert!(script_hash().starts_with("sha256-"));
    }

    #[test]
    fn the_openapi_document_lists_these_routes() {
        let doc: serde_json::Value = serde_json::from_str(crate::admin::OPENAPI).unwrap();
        for path in [
            "/approvals",
            "/approvals/{id}",
            "/approvals/{id}/approve",
            "/approvals/{id}/deny",
            "/approvals/{id}/review",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }

    #[test]
    fn query_strings_are_parsed_strictly() {
        assert_eq!(
            query_pairs(Some("status=pending&limit=5")).unwrap(),
            [("status", "pending"), ("limit", "5")]
        );
        assert!(query_pairs(Some("status=pen%64ing")).is_err());
        assert!(query_pairs(None).unwrap().is_empty());
    }
}
