//! `/tokens`: issue, list and revoke task tokens.
//!
//! Who may issue what: an `admin` may issue a token for any agent; an agent authenticated with
//! its own credential (API key or JWT) may issue one for itself only — the exchange of a
//! long-lived credential for one scoped to a task. The token carries the issuer's user and
//! roles, never more, and policy still applies to every call made with it. A task token cannot
//! issue tokens. Revoking: an `admin` any token, an agent its own. Listing: admins (any role)
//! see every token, an agent its own.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{delete, get};
use http::StatusCode;
use portcullis_config::AdminRole;
use portcullis_config::raw::HumanDuration;
use portcullis_control::task::IssueRequest;
use serde::Deserialize;
use serde_json::json;

use super::kills::control_error;
use super::{AdminError, Caller, json_response};
use crate::auth::{AuthMethod, Principal};
use crate::state::Gateway;

/// A task token's lifetime when the request does not say.
pub const DEFAULT_TTL_SECONDS: u64 = 15 * 60;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/tokens", get(list).post(issue))
        .route("/tokens/{id}", delete(revoke))
}

/// The body of `POST /tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    agent: Option<String>,
    servers: Option<Vec<String>>,
    tools: Option<Vec<String>>,
    /// `"15m"`, `"1h"`, or integer seconds.
    ttl: Option<HumanDuration>,
    max_calls: Option<u64>,
}

/// Who the caller acts as on this route: a full admin, or a principal acting for itself.
enum Issuer {
    Admin(Arc<str>),
    Agent(Principal),
}

fn issuer(caller: Caller) -> Issuer {
    match caller {
        Caller::Admin(admin) if admin.role >= AdminRole::Admin => Issuer::Admin(admin.name),
        // A viewer or approver who authenticated as a principal acts for that principal.
        Caller::Admin(admin) => match admin.principal {
            Some(principal) => Issuer::Agent(principal),
            None => Issuer::Admin(admin.name),
        },
        Caller::Agent(principal) => Issuer::Agent(principal),
    }
}

async fn issue(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, AdminError> {
    let body: IssueBody = serde_json::from_slice(&body)
        .map_err(|error| AdminError::BadRequest(format!("invalid request body: {error}")))?;
    let runtime = gateway.runtime();
    let max_ttl = runtime.config.admin.max_task_ttl;
    let ttl = match &body.ttl {
        None => DEFAULT_TTL_SECONDS.min(max_ttl.as_secs().max(1)),
        Some(ttl) => ttl
            .parse()
            .map_err(|error| AdminError::BadRequest(format!("ttl: {error}")))?
            .as_secs(),
    };
    if ttl == 0 {
        return Err(AdminError::BadRequest("ttl must be at least 1s".into()));
    }
    if ttl > max_ttl.as_secs() {
        return Err(AdminError::BadRequest(format!(
            "ttl may be at most {}s (admin.task_tokens.max_ttl)",
            max_ttl.as_secs()
        )));
    }
    let mut request = IssueRequest {
        servers: body.servers.unwrap_or_default(),
        tools: body.tools.unwrap_or_default(),
        ttl_seconds: ttl,
        max_calls: body.max_calls,
        ..IssueRequest::default()
    };
    match issuer(caller) {
        Issuer::Admin(name) => {
            let agent = body.agent.map(|a| a.trim().to_owned()).unwrap_or_default();
            if agent.is_empty() || agent.len() > 256 || agent.chars().any(char::is_control) {
                return Err(AdminError::BadRequest(
                    "agent: name the agent the token acts as".into(),
                ));
            }
            request.agent = agent;
            request.created_by = name.to_string();
        }
        Issuer::Agent(principal) => {
            if principal.method == AuthMethod::TaskToken {
                return Err(AdminError::Forbidden(
                    "a task token cannot issue task tokens".into(),
                ));
            }
            if body
                .agent
                .as_deref()
                .is_some_and(|a| a != &*principal.agent)
            {
                return Err(AdminError::Forbidden(format!(
                    "agent {} may issue task tokens only for itself",
                    principal.agent
                )));
            }
            request.agent = principal.agent.to_string();
            request.user = principal.user.as_deref().map(str::to_owned);
            request.roles = principal.roles.to_vec();
            request.created_by = format!("agent:{}", principal.agent);
        }
    }
    let (secret, scope) = gateway
        .control
        .tokens
        .issue(request)
        .await
        .map_err(control_error)?;
    let mut answer = scope.to_json();
    answer["token"] = json!(secret);
    Ok(json_response(StatusCode::CREATED, &answer))
}

async fn list(State(gateway): State<Arc<Gateway>>, caller: Caller) -> Result<Response, AdminError> {
    let agent = match &caller {
        Caller::Admin(_) => None,
        Caller::Agent(principal) => Some(principal.agent.to_string()),
    };
    let tokens = gateway
        .control
        .tokens
        .list(agent.as_deref())
        .await
        .map_err(control_error)?;
    let tokens: Vec<_> = tokens.iter().map(|scope| scope.to_json()).collect();
    Ok(json_response(StatusCode::OK, &json!({ "tokens": tokens })))
}

async fn revoke(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let tokens = &gateway.control.tokens;
    let not_found = || AdminError::NotFound(format!("no task token {id}"));
    if let Issuer::Agent(principal) = issuer(caller) {
        // An agent may revoke its own tokens; others' look the same as missing ones.
        let owned = tokens
            .get(&id)
            .await
            .map_err(control_error)?
            .is_some_and(|scope| scope.agent == *principal.agent);
        if !owned {
            return Err(not_found());
        }
    }
    match tokens.revoke(&id).await.map_err(control_error)? {
        Some(scope) => Ok(json_response(StatusCode::OK, &scope.to_json())),
        None => Err(not_found()),
    }
}
