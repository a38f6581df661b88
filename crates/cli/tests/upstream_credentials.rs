//! The gateway's own OAuth client-credentials token toward an HTTP upstream
//! (`servers.<name>.credentials.oauth_client_credentials`), against the real npm `oidc-provider`
//! (`scripts/peers/oidc-provider.mjs`). Between the gateway and the provider's token endpoint sits
//! a counting proxy (it can also play "down"); the upstream is the fixture behind a guard that
//! verifies every request's bearer token (RS256 signature against the provider's JWKS, audience,
//! expiry, client) and records every `Authorization` header it receives.

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::*;

const CLIENT_ID: &str = "upstream-bot";
const CLIENT_SECRET: &str = "upstream-secret with:odd/chars";

/// A running `oidc-provider` with one client-credentials client.
struct Provider {
    issuer: String,
    _process: ChildGuard,
}

impl Provider {
    async fn start(token_ttl_seconds: u64) -> Provider {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let peers = peers();
        let node = peers.node();
        let script = peers.path("OIDC_PROVIDER", "../scripts/peers/oidc-provider.mjs");
        let modules = peers.root.join("npm/node_modules");
        assert!(
            modules.join("oidc-provider").exists(),
            "oidc-provider is not installed in {}; run scripts/install-peers.sh",
            modules.display()
        );
        let clients = json!([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}]);
        let mut command = std::process::Command::new(node);
        command
            .arg(script)
            .env("OIDC_PROVIDER_MODULES", &modules)
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_TOKEN_TTL", token_ttl_seconds.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut process = ChildGuard::spawn("oidc-provider", &mut command);
        let stdout = process.child.stdout.take().expect("piped stdout");
        let first_line = tokio::time::timeout(
            PEER_WAIT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                    .map(|_| line)
            }),
        )
        .await
        .expect("oidc-provider printed its issuer in time")
        .unwrap()
        .unwrap();
        let started: Value = serde_json::from_str(&first_line)
            .unwrap_or_else(|e| panic!("oidc-provider did not start ({e}): {first_line:?}"));
        Provider {
            issuer: started["issuer"].as_str().unwrap().to_owned(),
            _process: process,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PEER_WAIT)
        .build()
        .unwrap()
}

/// Counts token requests and forwards them to the provider, or answers 503 while `down`.
#[derive(Clone)]
struct TokenProxy {
    target: String,
    hits: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    http: reqwest::Client,
}

async fn token_proxy(State(proxy): State<TokenProxy>, request: Request) -> Response {
    proxy.hits.fetch_add(1, Ordering::SeqCst);
    if proxy.down.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Body::from(r#"{"error":"temporarily_unavailable"}"#))
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
    let mut forward = proxy.http.post(format!("{}/token", proxy.target));
    for name in ["authorization", "content-type", "accept"] {
        if let Some(value) = parts.headers.get(name) {
            forward = forward.header(name, value.clone());
        }
    }
    let answer = forward.body(body).send().await.unwrap();
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await.unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

/// The upstream's gate: only requests bearing a valid token for `audience` reach the fixture.
#[derive(Clone)]
struct Guard {
    fixture: String,
    audience: Arc<Mutex<String>>,
    /// The provider's JWKS (`keys`).
    keys: Arc<Vec<Value>>,
    /// Every `Authorization` value received, in order.
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// Requests let through to the fixture.
    passed: Arc<AtomicU64>,
    /// While set, the next valid request is answered 401 (then cleared): a revoked token.
    refuse_next: Arc<AtomicBool>,
    http: reqwest::Client,
}

impl Guard {
    fn verify(&self, authorization: Option<&str>) -> Result<(), String> {
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or("no bearer token")?;
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err("not a JWS".into());
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string());
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
        let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|e| e.to_string())?;
        if header["alg"] != "RS256" {
            return Err("not RS256".into());
        }
        let key = self
            .keys
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .ok_or("unknown kid")?;
        let component = |name: &str| decode(key[name].as_str().unwrap_or_default());
        let (n, e) = (component("n")?, component("e")?);
        ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &token.as_bytes()[..token.rfind('.').unwrap()],
                &decode(signature)?,
            )
            .map_err(|_| "bad signature")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
            return Err("expired".into());
        }
        if claims["aud"] != *self.audience.lock().unwrap() {
            return Err(format!("wrong audience {}", claims["aud"]));
        }
        if claims["client_id"] != CLIENT_ID {
            return Err("wrong client".into());
        }
        Ok(())
    }
}

async fn guard_handler(State(guard): State<Guard>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("<binary>").to_owned());
    guard.seen.lock().unwrap().push(authorization.clone());
    if let Err(why) = guard.verify(authorization.as_deref()) {
        return Response::builder()
            .status(401)
            .header(
                "www-authenticate",
                format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
            )
            .body(Body::empty())
            .unwrap();
    }
    if guard.refuse_next.swap(false, Ordering::SeqCst) {
        return Response::builder().status(401).body(Body::empty()).unwrap();
    }
    guard.passed.fetch_add(1, Ordering::SeqCst);
    let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    let url = format!("{}{}", guard.fixture, parts.uri.path());
    let mut forward = guard.http.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "authorization" | "content-length") {
            forward = forward.header(name, value.clone());
        }
    }
    let answer = match forward.body(body).send().await {
        Ok(answer) => answer,
        Err(_) => return Response::builder().status(502).body(Body::empty()).unwrap(),
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            response = response.header(name, value.clone());
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}

async fn listen(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// Provider, token proxy, guarded fixture and a gateway whose `guarded` server uses them.
struct Setup {
    _provider: Provider,
    proxy: TokenProxy,
    guard: Guard,
    gw: Gateway,
    /// Holds the client secret file (removed with it).
    _secret_dir: TempDir,
}

async fn setup(token_ttl_seconds: u64) -> Setup {
    let provider = Provider::start(token_ttl_seconds).await;
    let http = client();
    let proxy = TokenProxy {
        target: provider.issuer.clone(),
        hits: Arc::default(),
        down: Arc::default(),
        http: http.clone(),
    };
    let token_url = format!(
        "{}/token",
        listen(
            axum::Router::new()
                .fallback(token_proxy)
                .with_state(proxy.clone())
        )
        .await
    );
    let jwks: Value = http
        .get(format!("{}/jwks", provider.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fixture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fixture_base = format!("http://{}", fixture.local_addr().unwrap());
    tokio::spawn(portcullis_fixture::serve_http(
        fixture,
        portcullis_fixture::FixtureOptions {
            demo: true,
            ..Default::default()
        },
    ));
    let guard = Guard {
        fixture: fixture_base,
        audience: Arc::default(),
        keys: Arc::new(jwks["keys"].as_array().unwrap().clone()),
        seen: Arc::default(),
        passed: Arc::default(),
        refuse_next: Arc::default(),
        http,
    };
    let upstream = format!(
        "{}/mcp",
        listen(
            axum::Router::new()
                .fallback(guard_handler)
                .with_state(guard.clone())
        )
        .await
    );
    *guard.audience.lock().unwrap() = upstream.clone();
    let secret_dir = TempDir::new("upstream-secret");
    let secret_file = secret_dir.0.join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let server = format!(
        "{{ url: \"{upstream}\", credentials: {{ oauth_client_credentials: {{ token_url: \"{token_url}\", client_id: {CLIENT_ID}, client_secret_file: \"{}\", scope: \"mcp:tools\", resource: \"{upstream}\" }} }} }}",
        secret_file.display()
    );
    let gw = gateway_with_servers(&[("guarded", server)], "").await;
    Setup {
        _provider: provider,
        proxy,
        guard,
        gw,
        _secret_dir: secret_dir,
    }
}

async fn echo(gw: &Gateway, id: u64, text: &str) -> Answer {
    modern(
        gw,
        "/mcp",
        ALICE,
        id,
        "tools/call",
        json!({"name": "guarded__echo", "arguments": {"text": text}}),
    )
    .await
}

#[tokio::test]
async fn gateway_token_reaches_the_upstream_and_is_cached() {
    let s = setup(300).await;
    for i in 0..5 {
        let answer = echo(&s.gw, 10 + i, &format!("call {i}")).await;
        assert_eq!(first_text(&answer), format!("call {i}"), "{answer:?}");
    }
    // Concurrent calls share the cached token too.
    let calls = (0..4).map(|i| echo(&s.gw, 20 + i, "together"));
    for answer in futures::future::join_all(calls).await {
        assert_eq!(first_text(&answer), "together", "{answer:?}");
    }
    assert_eq!(
        s.proxy.hits.load(Ordering::SeqCst),
        1,
        "one token request for every call"
    );
    let seen = s.guard.seen.lock().unwrap().clone();
    assert!(seen.len() >= 9, "every call reached the upstream: {seen:?}");
    assert!(
        seen.iter()
            .all(|a| a.as_deref().is_some_and(|a| a.starts_with("Bearer ey"))),
        "every upstream request carried the gateway's JWT"
    );
    assert!(
        seen.iter()
            .all(|a| !a.as_deref().unwrap_or_default().contains(ALICE)),
        "the client's own credential never reaches the upstream"
    );
    assert_eq!(s.guard.passed.load(Ordering::SeqCst) as usize, seen.len());
    s.gw.stop().await;
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    // Tokens live 2 s; the gateway refreshes them a quarter of their lifetime early.
    let s = setup(2).await;
    let first = echo(&s.gw, 1, "before").await;
    assert_eq!(first_text(&first), "before", "{first:?}");
    assert_eq!(s.proxy.hits.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let second = echo(&s.gw, 2, "after").await;
    assert_eq!(first_text(&second), "after", "{second:?}");
    assert_eq!(
        s.proxy.hits.load(Ordering::SeqCst),
        2,
        "a fresh token was fetched"
    );
    let seen = s.guard.seen.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = seen.iter().flatten().collect();
    assert_eq!(
        distinct.len(),
        2,
        "two different tokens reached the upstream"
    );
    assert_eq!(
        s.guard.passed.load(Ordering::SeqCst) as usize,
        seen.len(),
        "no request was refused"
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn upstream_401_refetches_the_token_and_retries_once() {
    let s = setup(300).await;
    let warm = echo(&s.gw, 1, "warm").await;
    assert_eq!(first_text(&warm), "warm", "{warm:?}");
    let before = s.guard.seen.lock().unwrap().len();
    s.guard.refuse_next.store(true, Ordering::SeqCst);
    let retried = echo(&s.gw, 2, "retried").await;
    assert_eq!(first_text(&retried), "retried", "{retried:?}");
    assert_eq!(
        s.proxy.hits.load(Ordering::SeqCst),
        2,
        "the refused token was replaced"
    );
    assert_eq!(
        s.guard.seen.lock().unwrap().len() - before,
        2,
        "one refused request, one retry"
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_down_fails_closed_without_an_unauthenticated_request() {
    let s = setup(300).await;
    s.proxy.down.store(true, Ordering::SeqCst);
    let answer = echo(&s.gw, 1, "never").await;
    let error = &answer.last()["error"];
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("guarded") && message.contains("access token"),
        "clear error naming the server: {answer:?}"
    );
    assert_eq!(
        error["code"],
        portcullis_gateway::proxy::errors::UPSTREAM_UNAVAILABLE,
        "{answer:?}"
    );
    assert!(answer.last().get("result").is_none(), "{answer:?}");
    assert!(
        s.proxy.hits.load(Ordering::SeqCst) >= 1,
        "the token endpoint was asked"
    );
    assert!(
        s.guard.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream without a token"
    );
    // Back up: the next call fetches a token and succeeds.
    s.proxy.down.store(false, Ordering::SeqCst);
    let answer = echo(&s.gw, 2, "recovered").await;
    assert_eq!(first_text(&answer), "recovered", "{answer:?}");
    s.gw.stop().await;
}
