//! The admin API, `/admin/api/v1/…`: JSON in and out, every route authenticated.
//!
//! Who may call: the static tokens of `admin.tokens` (each with a role), and principals the
//! data plane authenticates (OIDC JWTs, API keys, task tokens) whose roles map to an admin role
//! through `admin.roles` (defaults `portcullis:viewer|approver|admin`). Roles are ordered,
//! `viewer` < `approver` < `admin`; a route states the least role it needs with one of the
//! extractors [`Viewer`], [`Approver`], [`Admin`] (or [`require`] by hand): no or bad
//! credentials → 401, too low a role → 403. Agents without an admin role may still reach the
//! routes that take a [`Caller`] (a task token exchange for themselves).
//!
//! Every failure is an [`AdminError`] rendered here, in one place, as
//! `{"error": {"code": "...", "message": "..."}}` with its HTTP status. The OpenAPI document is
//! [`openapi.json`](openapi.json), served unauthenticated at `/admin/api/v1/openapi.json`.
//!
//! Other modules add their routes in [`router`] (approvals, issue 6, go there).

pub mod catalog;
pub mod kills;
pub mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use portcullis_config::AdminRole;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, Principal};
use crate::edge::checks;
use crate::route::Route;
use crate::state::Gateway;

/// The path the admin API is mounted at.
pub const BASE_PATH: &str = "/admin/api/v1";

/// The admin API's routes, to be nested at [`BASE_PATH`].
pub fn router() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/whoami", get(whoami))
        .merge(kills::routes())
        .merge(catalog::routes())
        .merge(tokens::routes())
        .merge(crate::approval::api::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Request bodies of the admin API are small JSON documents.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Someone allowed into the admin API, and with what role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// The admin token's `name`, or the principal's user (else agent) for OIDC principals.
    pub name: Arc<str>,
    pub role: AdminRole,
    /// The data-plane principal, when the caller authenticated as one (None for admin tokens).
    pub principal: Option<Principal>,
}

/// Anyone who authenticated to the admin API: an admin (any role) or an agent without one.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin(AdminPrincipal),
    Agent(Principal),
}

/// A failure of an admin request; the only place admin errors become responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No credentials, or credentials that are not valid (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials whose role is too low for the route (403).
    #[error("{0}")]
    Forbidden(String),
    /// A malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// The named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Host or Origin not allowed (403, as on `/mcp`).
    #[error("Origin or Host not allowed")]
    BadOrigin,
    /// The store failed; details are logged, not sent (503: retrying may help).
    #[error("the control-plane store is unavailable; retry later")]
    Unavailable,
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::BadOrigin => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            AdminError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// Logs a store failure and hides it behind [`AdminError::Unavailable`].
    pub fn store(error: impl std::fmt::Display) -> AdminError {
        tracing::error!(%error, "admin API: store failure");
        AdminError::Unavailable
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = json_response(status, &body);
        match self {
            AdminError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                );
            }
            AdminError::Unavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Authenticates an admin API request: the static admin tokens first, then the data plane's
/// credentials. No `Authorization` header is always 401 here (the `anonymous` identity never
/// reaches the admin API).
pub async fn authenticate(gateway: &Gateway, headers: &HeaderMap) -> Result<Caller, AdminError> {
    let runtime = gateway.runtime();
    let config = &runtime.config;
    if !checks::host_allowed(config, headers) || !checks::origin_allowed(config, headers) {
        return Err(AdminError::BadOrigin);
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AdminError::Unauthorized(
            "missing credentials: send `Authorization: Bearer <admin token>`".into(),
        ));
    };
    if values.next().is_some() {
        return Err(AdminError::Unauthorized(
            "more than one Authorization header".into(),
        ));
    }
    if let Some(token) = bearer(value.as_bytes()) {
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Every configured token is compared, in constant time each, so timing does not tell
        // which one nearly matched.
        let found = config.admin.tokens.iter().fold(None, |found, admin| {
            if constant_time_eq(&admin.sha256, &digest) {
                Some(admin)
            } else {
                found
            }
        });
        if let Some(admin) = found {
            return Ok(Caller::Admin(AdminPrincipal {
                name: admin.name.as_str().into(),
                role: admin.role,
                principal: None,
            }));
        }
    }
    let principal = runtime
        .auth
        .authenticate(&Route::Aggregate, Some(value.as_bytes()))
        .await
        .map_err(|error| match error {
            AuthError::KeysUnavailable => AdminError::Unavailable,
            error => AdminError::Unauthorized(error.to_string()),
        })?;
    Ok(match config.admin.role_for(&principal.roles) {
        Some(role) => Caller::Admin(AdminPrincipal {
            name: principal
                .user
                .clone()
                .unwrap_or_else(|| principal.agent.clone()),
            role,
            principal: Some(principal),
        }),
        None => Caller::Agent(principal),
    })
}

/// The admin principal of a request whose role is at least `role`: 401 without valid
/// credentials, 403 with too low a role (or none).
pub async fn require(
    gateway: &Gateway,
    headers: &HeaderMap,
    role: AdminRole,
) -> Result<AdminPrincipal, AdminError> {
    match authenticate(gateway, headers).await? {
        Caller::Admin(admin) if admin.role >= role => Ok(admin),
        Caller::Admin(admin) => Err(AdminError::Forbidden(format!(
            "{} has the {} role; this needs {role}",
            admin.name, admin.role
        ))),
        Caller::Agent(principal) => Err(AdminError::Forbidden(format!(
            "agent {} has no admin role; this needs {role}",
            principal.agent
        ))),
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub AdminPrincipal);

        impl FromRequestParts<Arc<Gateway>> for $name {
            type Rejection = AdminError;

            async fn from_request_parts(
                parts: &mut Parts,
                gateway: &Arc<Gateway>,
            ) -> Result<Self, Self::Rejection> {
                require(gateway, &parts.headers, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    /// Extractor: an admin principal with at least the `viewer` role.
    Viewer,
    AdminRole::Viewer
);
role_extractor!(
    /// Extractor: an admin principal with at least the `approver` role.
    Approver,
    AdminRole::Approver
);
role_extractor!(
    /// Extractor: an admin principal with the `admin` role.
    Admin,
    AdminRole::Admin
);

impl FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(gateway, &parts.headers).await
    }
}

/// `GET /whoami`: the caller's admin name and role.
async fn whoami(Viewer(admin): Viewer) -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "name": &*admin.name, "role": admin.role.as_str() }),
    )
}

/// `GET /openapi.json`: the OpenAPI 3.1 document of this API (not secret, so not authenticated).
async fn openapi(State(_): State<Arc<Gateway>>) -> Response {
    let mut response = (StatusCode::OK, OPENAPI).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The OpenAPI document, written by hand next to the routes it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `Bearer <token>` (case-insensitive scheme) → the token.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_is_json_and_lists_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/whoami",
            "/kill-switches",
            "/kill-switches/revive",
            "/tokens",
            "/tokens/{id}",
        ] {
            assert!(paths.contains_key(path), "{path} missing from openapi.json");
        }
    }
}
