//! Authenticate: turn a request's credentials into a [`Principal`], or refuse.
//!
//! The gateway is an OAuth 2.1 resource server. Credentials come only from the
//! `Authorization: Bearer` header: API keys ([`api_key`], stored as SHA-256 digests, with
//! expiry and revocation), bearer JWTs from the configured OpenID Connect provider ([`jwt`],
//! keys from [`jwks`]), and the explicit `anonymous` identity for requests without
//! credentials. Task tokens and mTLS plug in as further arms of [`Authenticator::authenticate`].
//! An [`Authenticator`] is built once per configuration revision (`state::Runtime`); the JWKS
//! cache carries over between revisions that name the same issuer.
//!
//! Architecture Invariant: nothing after this phase looks at the client's `Authorization`
//! header; connectors never receive it.

pub mod api_key;
pub mod client_cert;
pub mod jwks;
pub mod jwt;
pub mod task_token;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_config::{AuthConfig, Config};
use sha2::{Digest, Sha256};

use crate::route::Route;

/// Who is calling, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The agent (client application) identity that rules and audit records name.
    pub agent: Arc<str>,
    /// The end user on whose behalf the agent acts, when the credential says.
    pub user: Option<Arc<str>>,
    /// How the caller proved who it is.
    pub method: AuthMethod,
    /// A stable, non-secret id of the credential (key digest prefix; for JWTs a hash of issuer,
    /// agent and user, so that it survives token refresh), for audit and session binding.
    pub credential_id: Arc<str>,
    /// Roles the credential grants (policy `roles:`, admin API roles): the OIDC roles claim;
    /// empty for API keys.
    pub roles: Arc<[String]>,
    /// The id of the token that authenticated the call (JWT `jti`, task token id), for audit
    /// records and revocation.
    pub token_id: Option<Arc<str>>,
    /// The scope of the task token that authenticated the call ([`task_token`]), if any.
    pub task: Option<task_token::Task>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Anonymous,
    /// A bearer JWT from the configured OpenID Connect provider.
    Jwt,
    /// A short-lived task token minted by this gateway.
    TaskToken,
    /// A TLS client certificate.
    ClientCert,
}

/// Why authentication failed. `edge::render::auth_failure` turns each into its answer: 401 with
/// a `WWW-Authenticate` challenge, 403 for [`AuthError::InsufficientScope`], 503 for
/// [`AuthError::KeysUnavailable`]. Messages never echo the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (and no anonymous identity).
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    Missing,
    /// An `Authorization` header that is not one Bearer token (RFC 6750 `invalid_request`).
    #[error("the Authorization header is not a single Bearer token")]
    NotBearer,
    /// A credential that is not valid (RFC 6750 `invalid_token`), and why.
    #[error("invalid token: {0}")]
    Invalid(Cow<'static, str>),
    #[error("invalid token: the token has expired")]
    Expired,
    #[error("invalid token: the credential has been revoked")]
    Revoked,
    /// A valid token without the scopes `auth.oidc.required_scopes` names (403, step-up).
    #[error("the token lacks a required scope")]
    InsufficientScope,
    /// The issuer's signing keys could not be fetched yet; retrying later can help.
    #[error("the token issuer's signing keys are not available; retry later")]
    KeysUnavailable,
}

impl AuthError {
    pub fn invalid(why: impl Into<Cow<'static, str>>) -> AuthError {
        AuthError::Invalid(why.into())
    }
}

/// The credentials one configuration revision accepts.
pub struct Authenticator {
    api_keys: api_key::ApiKeys,
    anonymous: Option<Arc<str>>,
    jwt: Option<jwt::JwtVerifier>,
    /// `scope` of challenges: `auth.oidc.required_scopes`, space-separated.
    challenge_scope: Option<String>,
    /// Issuer of the task tokens accepted besides the configured credentials (set by
    /// [`Authenticator::with_task_tokens`]).
    task_tokens: Option<Arc<portcullis_control::Control>>,
}

impl Authenticator {
    /// The authenticator of a revision. The JWKS cache of `previous` is kept when it serves the
    /// same issuer; otherwise keys are discovered with `http` (in the background).
    pub fn for_revision(
        config: &Config,
        previous: Option<&Authenticator>,
        http: &reqwest::Client,
    ) -> Authenticator {
        let jwks = config.auth.oidc.as_ref().map(|oidc| {
            previous
                .and_then(|p| p.jwt.as_ref())
                .map(|verifier| verifier.jwks().clone())
                .filter(|cache| cache.serves(&oidc.issuer, oidc.jwks_refetch_interval))
                .unwrap_or_else(|| {
                    jwks::JwksCache::discover(
                        &oidc.issuer,
                        http.clone(),
                        oidc.jwks_refetch_interval,
                    )
                })
        });
        Authenticator::new(&config.auth, &config.public_url, jwks)
    }

    /// An authenticator with the given JWKS cache for `auth.oidc` (ignored without it).
    pub fn new(
        auth: &AuthConfig,
        public_url: &str,
        jwks: Option<Arc<jwks::JwksCache>>,
    ) -> Authenticator {
        let jwt = auth
            .oidc
            .as_ref()
            .zip(jwks)
            .map(|(oidc, jwks)| jwt::JwtVerifier::new(oidc, public_url, jwks));
        let challenge_scope = auth
            .oidc
            .as_ref()
            .filter(|oidc| !oidc.required_scopes.is_empty())
            .map(|oidc| oidc.required_scopes.join(" "));
        Authenticator {
            api_keys: api_key::ApiKeys::new(&auth.api_keys),
            anonymous: auth.anonymous.as_deref().map(Arc::from),
            jwt,
            challenge_scope,
            task_tokens: None,
        }
    }

    /// Authenticates one request on `route` from its `Authorization` header value (if any).
    /// A present but bad credential is never downgraded to anonymous.
    pub async fn authenticate(
        &self,
        route: &Route,
        authorization: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        self.authenticate_with(route, authorization, None).await
    }

    /// [`Authenticator::authenticate`] on a connection that presented the verified client
    /// certificate `cert`: a bearer credential, when sent, wins; otherwise the certificate
    /// names the caller (see [`client_cert`]).
    pub async fn authenticate_with(
        &self,
        route: &Route,
        authorization: Option<&[u8]>,
        cert: Option<&client_cert::ClientCert>,
    ) -> Result<Principal, AuthError> {
        let Some(header) = authorization else {
            if let Some(cert) = cert {
                return cert.principal();
            }
            return match &self.anonymous {
                Some(agent) => Ok(Principal {
                    agent: agent.clone(),
                    user: None,
                    method: AuthMethod::Anonymous,
                    credential_id: "anonymous".into(),
                    roles: Arc::from([]),
                    token_id: None,
                    task: None,
                }),
                None => Err(AuthError::Missing),
            };
        };
        let token = bearer_token(header).ok_or(AuthError::NotBearer)?;
        let now = unix_now();
        if let Some(control) = &self.task_tokens
            && task_token::looks_like_task_token(token)
        {
            return task_token::authenticate(control, token).await;
        }
        match &self.jwt {
            Some(verifier) if jwt::looks_like_jws(token) => {
                verifier.verify(token, route, now).await
            }
            _ => self.api_keys.authenticate(token, now),
        }
    }

    /// The `scope` to name in challenges (`auth.oidc.required_scopes`), if any.
    pub fn challenge_scope(&self) -> Option<&str> {
        self.challenge_scope.as_deref()
    }

    /// The OIDC issuer tokens are accepted from, if any (Protected Resource Metadata).
    pub fn issuer(&self) -> Option<&str> {
        self.jwt.as_ref().map(jwt::JwtVerifier::issuer)
    }

    /// The JWT verifier, when `auth.oidc` is configured.
    pub fn jwt(&self) -> Option<&jwt::JwtVerifier> {
        self.jwt.as_ref()
    }
}

/// `Bearer <token>` with a case-insensitive scheme and a non-empty token of visible ASCII.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty() && token.iter().all(|b| b.is_ascii_graphic())).then_some(token)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The SHA-256 hex digest of a token, the form in which `auth.api_keys` stores keys.
pub fn key_digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::ApiKey;

    fn key(token: &[u8], expires_at: Option<u64>, revoked: bool) -> ApiKey {
        ApiKey {
            agent: "bot".into(),
            sha256: Sha256::digest(token).into(),
            expires_at,
            revoked,
        }
    }

    fn authenticator(keys: Vec<ApiKey>, anonymous: Option<&str>) -> Authenticator {
        let auth = AuthConfig {
            api_keys: keys,
            anonymous: anonymous.map(str::to_owned),
            oidc: None,
        };
        Authenticator::new(&auth, "http://127.0.0.1:8686", None)
    }

    fn run(a: &Authenticator, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        futures::executor::block_on(a.authenticate(&Route::Aggregate, header))
    }

    #[test]
    fn api_key_maps_to_its_agent() {
        let a = authenticator(vec![key(b"secret-token", None, false)], None);
        let principal = run(&a, Some(b"Bearer secret-token")).unwrap();
        assert_eq!(&*principal.agent, "bot");
        assert_eq!(principal.method, AuthMethod::ApiKey);
        assert!(principal.credential_id.starts_with("key:"));
        assert_eq!(
            run(&a, Some(b"bearer  secret-token ")).unwrap().agent,
            principal.agent
        );
    }

    #[test]
    fn wrong_missing_expired_and_revoked_keys_are_refused() {
        let a = authenticator(
            vec![
                key(b"secret-token", None, false),
                key(b"old-token", Some(1), false),
                key(b"revoked-token", None, true),
            ],
            None,
        );
        assert!(matches!(
            run(&a, Some(b"Bearer nope")),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(run(&a, None), Err(AuthError::Missing));
        assert_eq!(run(&a, Some(b"Basic abc")), Err(AuthError::NotBearer));
        assert_eq!(run(&a, Some(b"Bearer old-token")), Err(AuthError::Expired));
        assert_eq!(
            run(&a, Some(b"Bearer revoked-token")),
            Err(AuthError::Revoked)
        );
    }

    #[test]
    fn anonymous_is_used_only_without_credentials() {
        let a = authenticator(vec![key(b"secret-token", None, false)], Some("local-dev"));
        assert_eq!(&*run(&a, None).unwrap().agent, "local-dev");
        // A bad credential is not downgraded to anonymous.
        assert!(matches!(
            run(&a, Some(b"Bearer nope")),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn jwt_shaped_tokens_are_api_keys_when_oidc_is_off() {
        let a = authenticator(vec![key(b"a.b.c", None, false)], None);
        assert_eq!(&*run(&a, Some(b"Bearer a.b.c")).unwrap().agent, "bot");
    }
}
