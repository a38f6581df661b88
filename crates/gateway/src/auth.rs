//! Authenticate: turn a request's credentials into a [`Principal`], or refuse with 401.
//!
//! This build knows API keys (stored as SHA-256 digests, compared in constant time, with
//! expiry) and the explicit `anonymous` identity. OIDC JWTs, task tokens and mTLS plug in here.
//! Architecture Invariant: nothing after this phase looks at the client's `Authorization`
//! header; connectors never receive it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_config::AuthConfig;
use sha2::{Digest, Sha256};

/// Who is calling, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The agent (client application) identity that rules and audit records name.
    pub agent: Arc<str>,
    /// The end user on whose behalf the agent acts, when the credential says.
    pub user: Option<Arc<str>>,
    /// How the caller proved who it is.
    pub method: AuthMethod,
    /// A stable, non-secret id of the credential (key digest prefix), for audit and binding.
    pub credential_id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Anonymous,
}

/// Why authentication failed. Each maps to 401 with a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("invalid token")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// Authenticates one request from its `Authorization` header value (if any).
pub fn authenticate(
    config: &AuthConfig,
    authorization: Option<&[u8]>,
) -> Result<Principal, AuthError> {
    let Some(header) = authorization else {
        return match &config.anonymous {
            Some(agent) => Ok(Principal {
                agent: agent.as_str().into(),
                user: None,
                method: AuthMethod::Anonymous,
                credential_id: "anonymous".into(),
            }),
            None => Err(AuthError::Missing),
        };
    };
    let token = bearer_token(header).ok_or(AuthError::NotBearer)?;
    let digest: [u8; 32] = Sha256::digest(token).into();
    let key = config
        .api_keys
        .iter()
        .find(|key| constant_time_eq(&key.sha256, &digest))
        .ok_or(AuthError::Invalid)?;
    if let Some(expires_at) = key.expires_at
        && unix_now() >= expires_at
    {
        return Err(AuthError::Expired);
    }
    Ok(Principal {
        agent: key.agent.as_str().into(),
        user: None,
        method: AuthMethod::ApiKey,
        credential_id: format!("key:{}", hex::encode(&digest[..6])).into(),
    })
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

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    fn config(expires_at: Option<u64>) -> AuthConfig {
        AuthConfig {
            api_keys: vec![ApiKey {
                agent: "bot".into(),
                sha256: Sha256::digest(b"secret-token").into(),
                expires_at,
            }],
            anonymous: None,
            oidc: None,
        }
    }

    #[test]
    fn api_key_maps_to_its_agent() {
        let principal = authenticate(&config(None), Some(b"Bearer secret-token")).unwrap();
        assert_eq!(&*principal.agent, "bot");
        assert_eq!(principal.method, AuthMethod::ApiKey);
        assert_eq!(
            authenticate(&config(None), Some(b"bearer  secret-token "))
                .unwrap()
                .agent,
            principal.agent
        );
    }

    #[test]
    fn wrong_missing_and_expired_keys_are_refused() {
        assert_eq!(
            authenticate(&config(None), Some(b"Bearer nope")),
            Err(AuthError::Invalid)
        );
        assert_eq!(authenticate(&config(None), None), Err(AuthError::Missing));
        assert_eq!(
            authenticate(&config(None), Some(b"Basic abc")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            authenticate(&config(Some(1)), Some(b"Bearer secret-token")),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn anonymous_is_used_only_without_credentials() {
        let mut cfg = config(None);
        cfg.anonymous = Some("local-dev".into());
        assert_eq!(&*authenticate(&cfg, None).unwrap().agent, "local-dev");
        // A bad credential is not downgraded to anonymous.
        assert_eq!(
            authenticate(&cfg, Some(b"Bearer nope")),
            Err(AuthError::Invalid)
        );
    }
}
