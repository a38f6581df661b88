//! `/kill-switches`: list (viewer), set and revive (admin) kill switches. Effect is immediate
//! on this replica (calls in flight and open streams that a new switch matches end at once) and
//! reaches other replicas through the store within about a second.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use portcullis_control::ControlError;
use portcullis_control::kill::{Scope, Target};
use serde::Deserialize;
use serde_json::json;

use super::{Admin, AdminError, Viewer, json_response};
use crate::state::Gateway;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/kill-switches", get(list).post(kill))
        .route("/kill-switches/revive", post(revive))
}

/// The body of `POST /kill-switches` and `POST /kill-switches/revive`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    /// `agent`, `server`, `tool` or `all`.
    scope: String,
    /// The agent or server name, or the tool glob; absent for `all`.
    name: Option<String>,
    /// Why (kill only).
    reason: Option<String>,
}

impl SwitchBody {
    fn parse(body: &[u8]) -> Result<SwitchBody, AdminError> {
        serde_json::from_slice(body)
            .map_err(|error| AdminError::BadRequest(format!("invalid request body: {error}")))
    }

    fn target(&self) -> Result<Target, AdminError> {
        let scope = Scope::parse(&self.scope).ok_or_else(|| {
            AdminError::BadRequest("scope must be agent, server, tool or all".into())
        })?;
        Target::new(scope, self.name.as_deref()).map_err(control_error)
    }
}

async fn list(State(gateway): State<Arc<Gateway>>, Viewer(_): Viewer) -> Response {
    let switches: Vec<_> = gateway
        .control
        .kills
        .snapshot()
        .switches()
        .iter()
        .map(|switch| switch.to_json())
        .collect();
    json_response(StatusCode::OK, &json!({ "switches": switches }))
}

async fn kill(
    State(gateway): State<Arc<Gateway>>,
    Admin(admin): Admin,
    body: Bytes,
) -> Result<Response, AdminError> {
    let body = SwitchBody::parse(&body)?;
    let target = body.target()?;
    let switch = gateway
        .control
        .kills
        .kill(
            target,
            body.reason.as_deref().unwrap_or_default(),
            &admin.name,
        )
        .await
        .map_err(control_error)?;
    Ok(json_response(StatusCode::CREATED, &switch.to_json()))
}

async fn revive(
    State(gateway): State<Arc<Gateway>>,
    Admin(admin): Admin,
    body: Bytes,
) -> Result<Response, AdminError> {
    let body = SwitchBody::parse(&body)?;
    if body.reason.is_some() {
        return Err(AdminError::BadRequest("revive takes no reason".into()));
    }
    let target = body.target()?;
    match gateway.control.kills.revive(&target).await {
        Ok(Some(switch)) => {
            tracing::warn!(%target, by = %admin.name, "kill switch revived");
            Ok(json_response(StatusCode::OK, &switch.to_json()))
        }
        Ok(None) => Err(AdminError::NotFound(format!("no kill switch {target}"))),
        Err(error) => Err(control_error(error)),
    }
}

/// Invalid requests are the caller's fault (400); store failures are hidden (503).
pub(super) fn control_error(error: ControlError) -> AdminError {
    match error {
        ControlError::Invalid(message) => AdminError::BadRequest(message),
        error => AdminError::store(error),
    }
}
