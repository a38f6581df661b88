//! Edge checks that run before anything is parsed: Origin and Host (DNS rebinding), media
//! types, and authentication with its challenge. Each failure is a plain HTTP status with a short
//! JSON-RPC error body (no id), never a panic.

use http::{HeaderMap, StatusCode, header};
use portcullis_config::Config;

/// Is this request's `Origin` acceptable? Absent is fine (non-browser clients send none).
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if origin.eq_ignore_ascii_case(&origin_of(&config.public_url)) {
        return true;
    }
    if config
        .allowed_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    config.listen.ip().is_loopback()
        && loopback_names(config.listen.port())
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
}

/// Is the `Host` header one this gateway answers to? Guards against DNS rebinding: a browser
/// page on `evil.example` resolving to 127.0.0.1 sends `Host: evil.example`.
pub fn host_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    }; // HTTP/2 may use :authority only
    let Ok(host) = host.to_str() else {
        return false;
    };
    let public_host = host_of(&config.public_url);
    if host.eq_ignore_ascii_case(&public_host)
        || host.eq_ignore_ascii_case(public_host.split(':').next().unwrap_or_default())
    {
        return true;
    }
    if !config.listen.ip().is_loopback() {
        // Bound beyond loopback: the operator chose public_url; other names are accepted only
        // through allowed_origins' hosts.
        return config
            .allowed_origins
            .iter()
            .any(|o| host.eq_ignore_ascii_case(&host_of(o)));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    )
}

fn loopback_names(port: u16) -> [String; 3] {
    [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
    ]
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
        }
        None => url.to_owned(),
    }
}

fn host_of(url: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Is the body declared as JSON?
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

/// What the client accepts: (json, sse). A missing `Accept` accepts both.
pub fn accepts(headers: &HeaderMap) -> (bool, bool) {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return (true, true);
    };
    let mut json = false;
    let mut sse = false;
    for part in accept.split(',') {
        match part
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "application/json" | "application/*" => json = true,
            "text/event-stream" | "text/*" => sse = true,
            "*/*" => {
                json = true;
                sse = true;
            }
            _ => {}
        }
    }
    (json, sse)
}

/// The URL of the Protected Resource Metadata for a route path (`/mcp`, `/mcp/time`).
pub fn resource_metadata_url(config: &Config, path: &str) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource{path}",
        config.public_url
    )
}

/// Authenticates a request on `route`: its principal, or the answer that refuses it (401 with
/// the challenge naming this route's resource metadata, 403 step-up, 503). More than one
/// `Authorization` header is refused: which one would count is ambiguous.
#[allow(clippy::result_large_err)]
pub async fn authenticate(
    runtime: &crate::state::Runtime,
    route: &crate::route::Route,
    headers: &HeaderMap,
) -> Result<crate::auth::Principal, axum::response::Response> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    let result = if values.next().is_some() {
        Err(crate::auth::AuthError::NotBearer)
    } else {
        runtime
            .auth
            .authenticate_with(
                route,
                first.map(|v| v.as_bytes()),
                crate::auth::client_cert::current().as_deref(),
            )
            .await
    };
    result.map_err(|error| {
        let server = match route {
            crate::route::Route::Server(name) => Some(&**name),
            crate::route::Route::Aggregate => None,
        };
        runtime.audit.auth_failure(server, headers, &error);
        super::render::auth_failure(
            &error,
            &resource_metadata_url(&runtime.config, &route.path()),
            runtime.auth.challenge_scope(),
        )
    })
}

/// The status used for a failed edge check.
pub const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;

/// Reads a request body within `limits.max_body_bytes` and parses it with the envelope's limits.
/// A body over the limit is answered 413; a malformed one with the envelope's JSON-RPC error.
pub async fn read_envelope(
    config: &Config,
    body: axum::body::Body,
) -> Result<portcullis_core::envelope::Parsed, axum::response::Response> {
    let bytes = axum::body::to_bytes(body, config.limits.max_body_bytes)
        .await
        .map_err(|_| {
            super::render::http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
            )
        })?;
    let limits = portcullis_core::envelope::Limits {
        max_depth: config.limits.max_json_depth,
        max_batch: config.limits.max_batch,
    };
    portcullis_core::envelope::parse(&bytes, &limits).map_err(|error| {
        super::render::proxy_error(&crate::proxy::errors::ProxyError::from(error), None, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config() -> Config {
        portcullis_config::from_yaml(
            "listen: 127.0.0.1:8686\nauth: { anonymous: { agent: t } }\n",
            "test",
        )
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn foreign_origin_is_refused() {
        let cfg = config();
        assert!(origin_allowed(&cfg, &headers(&[])));
        assert!(origin_allowed(
            &cfg,
            &headers(&[("origin", "http://127.0.0.1:8686")])
        ));
        assert!(origin_allowed(
            &cfg,
            &headers(&[("origin", "http://localhost:8686")])
        ));
        assert!(!origin_allowed(
            &cfg,
            &headers(&[("origin", "http://evil.example")])
        ));
        assert!(!origin_allowed(
            &cfg,
            &headers(&[("origin", "http://localhost:9999")])
        ));
    }

    #[test]
    fn dns_rebinding_host_is_refused() {
        let cfg = config();
        assert!(host_allowed(&cfg, &headers(&[("host", "127.0.0.1:8686")])));
        assert!(host_allowed(&cfg, &headers(&[("host", "localhost:8686")])));
        assert!(host_allowed(&cfg, &headers(&[("host", "[::1]:8686")])));
        assert!(!host_allowed(&cfg, &headers(&[("host", "evil.example")])));
        assert!(!host_allowed(
            &cfg,
            &headers(&[("host", "evil.example:8686")])
        ));
    }

    #[test]
    fn accept_parsing() {
        assert_eq!(
            accepts(&headers(&[(
                "accept",
                "application/json, text/event-stream"
            )])),
            (true, true)
        );
        assert_eq!(
            accepts(&headers(&[("accept", "application/json")])),
            (true, false)
        );
        assert_eq!(accepts(&headers(&[("accept", "*/*")])), (true, true));
        assert_eq!(
            accepts(&headers(&[("accept", "text/html")])),
            (false, false)
        );
    }
}
