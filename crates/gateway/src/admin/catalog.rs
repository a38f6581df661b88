//! `/catalog`: pinned tool definitions and the versions waiting for approval (viewer), and
//! `/catalog/approve` (approver): pin a waiting version, which releases the tool from
//! quarantine on this replica at once and on others within a second (store revision poll).
//! The same operations as `portcullis catalog list|approve` ([`crate::scanning::catalog`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{AdminError, Approver, Viewer, json_response};
use crate::scanning::catalog::{self, ApproveError};
use crate::state::Gateway;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/catalog", get(list))
        .route("/catalog/approve", post(approve))
}

async fn list(
    State(gateway): State<Arc<Gateway>>,
    Viewer(_): Viewer,
) -> Result<Response, AdminError> {
    let entries = catalog::entries(&gateway.store)
        .await
        .map_err(AdminError::store)?;
    let tools: Vec<_> = entries
        .iter()
        .map(|((server, tool), entry)| entry.to_json(server, tool))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "tools": tools })))
}

/// The body of `POST /catalog/approve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    server: String,
    tool: String,
    /// A prefix of the version's SHA-256 (default: the waiting version seen last).
    sha256: Option<String>,
}

async fn approve(
    State(gateway): State<Arc<Gateway>>,
    Approver(admin): Approver,
    body: Bytes,
) -> Result<Response, AdminError> {
    let body: ApproveBody = serde_json::from_slice(&body)
        .map_err(|error| AdminError::BadRequest(format!("invalid request body: {error}")))?;
    let by = format!("admin:{}", admin.name);
    let approved = catalog::approve(
        &gateway.store,
        &body.server,
        &body.tool,
        body.sha256.as_deref(),
        &by,
    )
    .await
    .map_err(|error| match error {
        ApproveError::Store(error) => AdminError::store(error),
        ApproveError::UnknownTool(_) | ApproveError::NoSuchVersion(..) => {
            AdminError::NotFound(error.to_string())
        }
        ApproveError::Ambiguous(..) | ApproveError::NothingWaiting(_) => {
            AdminError::BadRequest(error.to_string())
        }
    })?;
    // Effective here at once; other replicas read the store's new revision.
    if let Err(error) = gateway.scanning.pins().refresh(&gateway.store).await {
        tracing::warn!(%error, "pins not reloaded after an approval; the poll will catch up");
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "server": body.server,
            "tool": body.tool,
            "sha256": approved.hash,
            "previous": approved.previous,
            "by": by,
        }),
    ))
}
