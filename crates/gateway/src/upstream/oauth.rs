//! The gateway's own access token toward an HTTP upstream, from the OAuth 2.1
//! client-credentials grant ([`OAuthClientCredentials`]).
//!
//! [`TokenSource::token`] returns the cached token, fetching a new one when there is none or the
//! cached one is within its refresh margin of `expires_in` (proactive refresh). Fetches are
//! single-flight: the cache sits behind an async lock held during the fetch, so concurrent
//! callers wait for and share one request to the token endpoint. [`TokenSource::reject`] drops a
//! token the upstream answered 401 to, so the next call fetches a fresh one. A failed fetch is an
//! error for the caller (the request is not sent); nothing is cached on failure.
//!
//! The client authenticates with HTTP Basic (id and secret form-encoded first, RFC 6749 §2.3.1).
//! Neither the secret nor tokens are logged: tokens are kept as sensitive header values.

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::OAuthClientCredentials;
use reqwest::header::HeaderValue;
use tokio::time::Instant;

/// Bound on one token request (connect + answer).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// A token is refreshed this long before it expires (at most a quarter of its lifetime).
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Fetches, caches and refreshes one upstream's access token.
pub struct TokenSource {
    config: OAuthClientCredentials,
    client: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    refresh_at: Instant,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.config.token_url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(config: OAuthClientCredentials, client: reqwest::Client) -> Arc<TokenSource> {
        Arc::new(TokenSource {
            config,
            client,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization` header value to send, fetching a token if needed.
    pub async fn token(&self) -> Result<HeaderValue, String> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && Instant::now() < current.refresh_at
        {
            return Ok(current.header.clone());
        }
        let fresh = self.fetch().await?;
        let header = fresh.header.clone();
        *cached = Some(fresh);
        Ok(header)
    }

    /// Forgets `rejected` (answered 401 by the upstream) unless a newer token replaced it.
    pub async fn reject(&self, rejected: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.header == *rejected) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, String> {
        let mut form = String::from("grant_type=client_credentials");
        for (name, value) in [
            ("scope", &self.config.scope),
            ("audience", &self.config.audience),
            ("resource", &self.config.resource),
        ] {
            if let Some(value) = value {
                form.push_str(&format!("&{name}={}", form_encode(value)));
            }
        }
        let request = self
            .client
            .post(&self.config.token_url)
            .basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(self.config.client_secret.expose())),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send();
        let started = Instant::now();
        let response = tokio::time::timeout(TOKEN_TIMEOUT, request)
            .await
            .map_err(|_| "the token endpoint did not answer in time".to_owned())?
            .map_err(|e| format!("the token endpoint could not be reached ({e})"))?;
        let status = response.status();
        let body = read_bounded(response).await?;
        if !status.is_success() {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
            return Err(match code {
                Some(code) => format!("the token endpoint answered HTTP {status} ({code})"),
                None => format!("the token endpoint answered HTTP {status}"),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| "the token endpoint's answer is not a token response".to_owned())?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "the token endpoint issued an unsupported token type {:?}",
                answer.token_type
            ));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .ok()
            .filter(|_| !answer.access_token.is_empty())
            .ok_or("the token endpoint issued an unusable access token")?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let margin = MAX_REFRESH_MARGIN.min(lifetime / 4);
        Ok(Cached {
            header,
            refresh_at: started + lifetime.saturating_sub(margin),
        })
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the token endpoint's answer could not be read ({e})"))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err("the token endpoint's answer is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/x-www-form-urlencoded` encoding of one value (for Basic client credentials).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::form_encode;

    #[test]
    fn client_credentials_are_form_encoded_before_basic_auth() {
        assert_eq!(form_encode("a b:c%/é"), "a+b%3Ac%25%2F%C3%A9");
        assert_eq!(form_encode("plain-ID_1.x"), "plain-ID_1.x");
    }
}
