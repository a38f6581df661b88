//! `servers.<name>.credentials.oauth_client_credentials`: the gateway obtains its own access token
//! for an HTTP upstream with the OAuth 2.1 client-credentials grant (HTTP Basic client
//! authentication at `token_url`). The raw shape lives here too so the section stays in one file;
//! `compile.rs` only calls [`compile`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::Secret;

/// Raw form (see the README): `token_url`, `client_id`, exactly one of `client_secret_env` /
/// `client_secret_file`, optional `scope`, `audience`, `resource`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuthClientCredentials {
    /// The authorization server's token endpoint (https, or http on loopback).
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    /// Name of an environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret (relative paths from the config file's directory).
    pub client_secret_file: Option<PathBuf>,
    /// Space-separated scopes to request.
    pub scope: Option<String>,
    /// `audience` parameter (some providers name the API this way).
    pub audience: Option<String>,
    /// RFC 8707 resource indicator: the absolute URI of the upstream the token is meant for.
    pub resource: Option<String>,
}

/// Compiled form used by the gateway's token source.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthClientCredentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
}

/// What [`compile`] needs from the compiler (errors with paths, secret resolution).
pub(crate) trait SecretResolver {
    fn error(&mut self, path: String, message: String);
    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret>;
    fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret>;
}

/// Checks the section; every problem is reported under `path` (`….oauth_client_credentials`).
pub(crate) fn compile(
    resolver: &mut impl SecretResolver,
    path: &str,
    raw: RawOAuthClientCredentials,
) -> Option<OAuthClientCredentials> {
    let mut ok = true;
    let token_url = match raw.token_url.as_deref().map(url::Url::parse) {
        None => {
            resolver.error(format!("{path}.token_url"), "is required".into());
            ok = false;
            None
        }
        Some(Err(e)) => {
            resolver.error(format!("{path}.token_url"), format!("invalid URL ({e})"));
            ok = false;
            None
        }
        Some(Ok(url)) => {
            let plain_ok = url.scheme() == "http" && is_loopback(&url);
            if url.scheme() != "https" && !plain_ok {
                resolver.error(
                    format!("{path}.token_url"),
                    "must be https (plain http is allowed on loopback only)".into(),
                );
                ok = false;
            }
            if !url.username().is_empty() || url.password().is_some() {
                resolver.error(
                    format!("{path}.token_url"),
                    "must not contain credentials".into(),
                );
                ok = false;
            }
            Some(url.to_string())
        }
    };
    let client_id = match raw.client_id {
        Some(id) if !id.is_empty() && !id.chars().any(char::is_control) => Some(id),
        Some(_) => {
            resolver.error(
                format!("{path}.client_id"),
                "must be non-empty text without control characters".into(),
            );
            None
        }
        None => {
            resolver.error(format!("{path}.client_id"), "is required".into());
            None
        }
    };
    let client_secret = match (raw.client_secret_env, raw.client_secret_file) {
        (Some(var), None) => resolver.env_secret(&format!("{path}.client_secret_env"), &var),
        (None, Some(file)) => resolver.file_secret(&format!("{path}.client_secret_file"), file),
        _ => {
            resolver.error(
                path.to_owned(),
                "set exactly one of client_secret_env or client_secret_file".into(),
            );
            None
        }
    };
    if let Some(resource) = &raw.resource {
        match url::Url::parse(resource) {
            Ok(url) if url.fragment().is_none() => {}
            _ => {
                resolver.error(
                    format!("{path}.resource"),
                    "must be an absolute URI without a fragment (RFC 8707)".into(),
                );
                ok = false;
            }
        }
    }
    for (field, value) in [("scope", &raw.scope), ("audience", &raw.audience)] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.chars().any(char::is_control))
        {
            resolver.error(
                format!("{path}.{field}"),
                "must be non-empty text without control characters".into(),
            );
            ok = false;
        }
    }
    Some(OAuthClientCredentials {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        scope: raw.scope,
        audience: raw.audience,
        resource: raw.resource,
    })
    .filter(|_| ok)
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
