//! The gateway as an OAuth 2.1 resource server against a real OpenID Connect provider that
//! nobody here wrote: the npm `oidc-provider` (started on loopback by
//! `scripts/peers/oidc-provider.mjs`), issuing RS256 JWT access tokens with the client
//! credentials grant and RFC 8707 resource indicators. Positive cases use the provider's own
//! tokens; attacks are crafted here (signed with our own keys, or with the provider's key through
//! its test-only signing endpoint for claims it would never issue). Each attack is a regression
//! test named after the bypass it pins.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use support::*;

/// A revoked API key (`carol`), next to alice's and bob's.
const CAROL: &str = "carol-token";
const POLICY_DENIED: i64 = -31010;

/// support-bot has the role `support`, intern-bot the role `intern`.
const CLIENTS: &str = r#"[
  {"client_id": "support-bot", "client_secret": "support-secret", "roles": ["support"]},
  {"client_id": "intern-bot", "client_secret": "intern-secret", "roles": ["intern"]}
]"#;

/// A running `oidc-provider`.
struct Provider {
    issuer: String,
    /// The kid of the key the provider signs with at start.
    kid: String,
    http: reqwest::Client,
    _process: ChildGuard,
}

impl Provider {
    async fn start() -> Provider {
        // reqwest is built without a default TLS provider (the gateway installs ring).
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
        let mut command = std::process::Command::new(node);
        command
            .arg(script)
            .env("OIDC_PROVIDER_MODULES", &modules)
            .env("OIDC_CLIENTS", CLIENTS)
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
            kid: started["kid"].as_str().unwrap().to_owned(),
            http: reqwest::Client::builder()
                .timeout(PEER_WAIT)
                .build()
                .unwrap(),
            _process: process,
        }
    }

    /// A real access token: client credentials grant for `resource` with `scope`.
    async fn token(&self, client: &str, resource: &str, scope: &str) -> String {
        let secret = format!("{}-secret", client.trim_end_matches("-bot"));
        let body = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            form_encode(scope),
            form_encode(resource)
        );
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "token request refused: {answer}");
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// A JWS signed by the provider's current key with claims the provider would not issue.
    async fn sign(&self, header: Value, payload: Value) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/__test/sign", self.issuer))
            .json(&json!({"header": header, "payload": payload}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["token"].as_str().expect("signed token").to_owned()
    }

    /// A new signing key; returns its kid.
    async fn rotate(&self) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/__test/rotate", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["kid"].as_str().unwrap().to_owned()
    }

    /// How many times the JWKS was fetched from the provider.
    async fn jwks_requests(&self) -> u64 {
        let answer: Value = self
            .http
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["jwks_requests"].as_u64().unwrap()
    }

    async fn public_key_pem(&self) -> String {
        self.http
            .get(format!("{}/__test/public-key.pem", self.issuer))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The gateway in front of the fixture, trusting `provider`, requiring the `mcp:tools` scope.
/// Interns may not use `fx__add`; support may use everything; alice and bob (API keys) too.
async fn gateway_for(provider: &Provider, oidc_extra: &str) -> Gateway {
    // `config_yaml` ends with alice's and bob's entries of `auth.api_keys`: lines indented
    // like them continue that list and the `auth:` mapping.
    let extra = format!(
        r#"    - {{ agent: carol, sha256: "{carol}", revoked: true }}
  oidc: {{ issuer: "{issuer}", agent_claim: client_id, required_scopes: [mcp:tools]{oidc_extra} }}
rules:
  - {{ id: no-interns-add, deny: {{ roles: [intern], tools: ["fx__add"] }} }}
  - {{ id: interns-fx, allow: {{ roles: [intern], servers: [fx] }} }}
  - {{ id: support-all, allow: {{ roles: [support] }} }}
  - {{ id: api-key-users, allow: {{ agents: [alice, bob] }} }}
"#,
        carol = portcullis_gateway::auth::key_digest_hex(CAROL),
        issuer = provider.issuer,
    );
    gateway_with(&extra).await
}

fn mcp(gw: &Gateway) -> String {
    format!("{}/mcp", gw.base)
}

async fn tools_call(gw: &Gateway, path: &str, token: &str, name: &str, arguments: Value) -> Answer {
    modern(
        gw,
        path,
        token,
        7,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
    .await
}

/// Asserts a 401 with an `invalid_token` challenge whose description contains `why`.
#[track_caller]
fn assert_invalid_token(answer: &Answer, why: &str) {
    assert_eq!(answer.status, 401, "{answer:?}");
    let challenge = answer.header("www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");
    let description = challenge
        .split("error_description=\"")
        .nth(1)
        .unwrap_or_default();
    assert!(description.contains(why), "{description:?} lacks {why:?}");
}

/// Claims the provider would put in a token for the gateway, for tokens signed here.
fn claims(provider: &Provider, gw: &Gateway) -> Value {
    let now = now();
    json!({
        "iss": provider.issuer,
        "aud": mcp(gw),
        "client_id": "support-bot",
        "sub": "support-bot",
        "roles": ["admin", "support"],
        "scope": "mcp:tools",
        "iat": now,
        "exp": now + 300,
        "jti": "crafted",
    })
}

/// An ES256 key of our own (an attacker's), with its public JWK under `kid`.
fn attacker_key(kid: &str) -> (EcdsaKeyPair, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    (pair, jwk)
}

fn signing_input(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

fn es256_sign(key: &EcdsaKeyPair, header: &Value, payload: &Value) -> String {
    let input = signing_input(header, payload);
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

// ----- the positive path: real tokens -----

#[tokio::test]
async fn real_provider_token_is_accepted_and_reaches_the_upstream() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let token = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "via oidc"})).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(first_text(&answer), "via oidc");
    // The same token again (answered from the verified-token cache) still works.
    let again = tools_call(&gw, "/mcp", &token, "fx__add", json!({"a": 2, "b": 3})).await;
    assert!(again.last().get("result").is_some(), "{again:?}");
    // API keys keep working next to OIDC.
    let alice = tools_call(&gw, "/mcp", ALICE, "fx__echo", json!({"text": "key"})).await;
    assert_eq!(first_text(&alice), "key");
    gw.stop().await;
}

#[tokio::test]
async fn roles_claim_reaches_policy() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let support = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let intern = provider.token("intern-bot", &mcp(&gw), "mcp:tools").await;
    // support (role `support`) may add; intern (role `intern`) is denied by the role rule.
    let allowed = tools_call(&gw, "/mcp", &support, "fx__add", json!({"a": 1, "b": 2})).await;
    assert!(allowed.last().get("result").is_some(), "{allowed:?}");
    let denied = tools_call(&gw, "/mcp", &intern, "fx__add", json!({"a": 1, "b": 2})).await;
    assert_eq!(denied.last()["error"]["code"], POLICY_DENIED, "{denied:?}");
    assert!(
        denied.last()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-interns-add"),
        "{denied:?}"
    );
    // The intern's role still allows the rest of fx, and nothing beyond it.
    let echo = tools_call(&gw, "/mcp", &intern, "fx__echo", json!({"text": "ok"})).await;
    assert_eq!(first_text(&echo), "ok");
    let list = modern(&gw, "/mcp", &intern, 1, "tools/list", json!({})).await;
    let names = tool_names(&list);
    assert!(names.contains(&"fx__echo".to_owned()), "{names:?}");
    assert!(!names.contains(&"fx__add".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("demo__")), "{names:?}");
    gw.stop().await;
}

#[tokio::test]
async fn protected_resource_metadata_names_the_issuer_per_route() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    for (path, resource) in [
        ("/.well-known/oauth-protected-resource/mcp", mcp(&gw)),
        ("/.well-known/oauth-protected-resource", mcp(&gw)),
        (
            "/.well-known/oauth-protected-resource/mcp/fx",
            format!("{}/fx", mcp(&gw)),
        ),
    ] {
        let response = gw
            .http
            .get(format!("{}{path}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let metadata: Value = response.json().await.unwrap();
        assert_eq!(metadata["resource"], resource.as_str(), "{metadata}");
        assert_eq!(metadata["authorization_servers"], json!([provider.issuer]));
        assert_eq!(metadata["scopes_supported"], json!(["mcp:tools"]));
        assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    }
    let unknown = gw
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp/nope",
            gw.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn legacy_session_is_bound_to_the_jwt_identity_across_token_refresh() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let first = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let client = LegacyClient::connect(&gw, "/mcp", &first, json!({})).await;
    let tools = json!({"jsonrpc":"2.0","id":5,"method":"tools/list","params":{}}).to_string();
    let headers = [
        ("mcp-session-id", client.session.as_str()),
        ("mcp-protocol-version", LEGACY),
    ];
    // A fresh token of the same client continues the session.
    let refreshed = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    assert_ne!(refreshed, first);
    let same = post_raw(&gw, "/mcp", Some(&refreshed), &headers, tools.clone()).await;
    assert_eq!(same.status, 200, "{same:?}");
    // Another client presenting the session id gets 404, like an unknown session.
    let intern = provider.token("intern-bot", &mcp(&gw), "mcp:tools").await;
    let hijack = post_raw(&gw, "/mcp", Some(&intern), &headers, tools).await;
    assert_eq!(hijack.status, 404, "{hijack:?}");
    gw.stop().await;
}

// ----- challenges -----

#[tokio::test]
async fn missing_token_gets_401_with_resource_metadata_and_scope() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    for path in ["/mcp", "/mcp/fx"] {
        let answer = post_raw(&gw, path, None, &[], body.clone()).await;
        assert_eq!(answer.status, 401);
        let challenge = answer.header("www-authenticate").unwrap();
        assert_eq!(
            challenge,
            format!(
                "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource{path}\", scope=\"mcp:tools\"",
                gw.base
            )
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn token_without_required_scope_gets_403_insufficient_scope() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let token = provider.token("support-bot", &mcp(&gw), "mcp:admin").await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    let challenge = answer.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");
    assert!(challenge.contains("resource_metadata=\""), "{challenge}");
    gw.stop().await;
}

// ----- the attack battery -----

#[tokio::test]
async fn expired_token_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let mut payload = claims(&provider, &gw);
    payload["iat"] = json!(now() - 7200);
    payload["exp"] = json!(now() - 3600);
    let token = provider.sign(json!({"typ": "at+jwt"}), payload).await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "expired");
    gw.stop().await;
}

#[tokio::test]
async fn not_yet_valid_token_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let mut payload = claims(&provider, &gw);
    payload["nbf"] = json!(now() + 3600);
    payload["exp"] = json!(now() + 7200);
    let token = provider.sign(json!({}), payload).await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "not valid yet");
    gw.stop().await;
}

#[tokio::test]
async fn wrong_issuer_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    for iss in [
        "https://evil.example".to_owned(),
        format!("{}/", provider.issuer),
    ] {
        let mut payload = claims(&provider, &gw);
        payload["iss"] = json!(iss);
        let token = provider.sign(json!({}), payload).await;
        let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
        assert_invalid_token(&answer, "another issuer");
    }
    gw.stop().await;
}

#[tokio::test]
async fn wrong_audience_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    // A real token the provider minted for some other API.
    let token = provider
        .token("support-bot", "https://other-api.example/mcp", "mcp:tools")
        .await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "not meant for this resource");
    // A token without any audience.
    let mut payload = claims(&provider, &gw);
    payload.as_object_mut().unwrap().remove("aud");
    let token = provider.sign(json!({}), payload).await;
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "not meant for this resource");
    gw.stop().await;
}

#[tokio::test]
async fn token_for_another_resource_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    // RFC 8707: a real token for `/mcp/demo` works there and nowhere else.
    let demo_only = provider
        .token("support-bot", &format!("{}/demo", mcp(&gw)), "mcp:tools")
        .await;
    let list = modern(&gw, "/mcp/demo", &demo_only, 1, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{list:?}");
    for path in ["/mcp", "/mcp/fx"] {
        let answer = tools_call(&gw, path, &demo_only, "echo", json!({"text": "x"})).await;
        assert_invalid_token(&answer, "not meant for this resource");
    }
    gw.stop().await;
}

#[tokio::test]
async fn alg_none_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let payload = claims(&provider, &gw);
    for alg in ["none", "None", "NONE"] {
        let input = signing_input(&json!({"alg": alg, "kid": provider.kid}), &payload);
        // With an empty signature part, and with some bytes in it.
        for token in [format!("{input}."), format!("{input}.AAAA")] {
            let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
            assert_eq!(answer.status, 401, "{alg}: {answer:?}");
            assert!(
                answer
                    .header("www-authenticate")
                    .unwrap()
                    .contains("invalid_token")
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    // Load the provider's keys into the gateway's cache first, so that the key is known.
    let real = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let ok = tools_call(&gw, "/mcp", &real, "fx__echo", json!({"text": "x"})).await;
    assert_eq!(ok.status, 200);
    // The classic confusion: the RSA public key (PEM, and the JWK's n) as an HMAC secret.
    let pem = provider.public_key_pem().await;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let payload = claims(&provider, &gw);
    for alg in ["HS256", "HS384", "HS512"] {
        let input = signing_input(&json!({"alg": alg, "kid": provider.kid}), &payload);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        let token = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
        assert_invalid_token(&answer, "HMAC");
    }
    gw.stop().await;
}

#[tokio::test]
async fn tampered_signature_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let token = provider.token("intern-bot", &mcp(&gw), "mcp:tools").await;
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    // 1. Upgrade the intern to support (and admin) and keep the provider's signature.
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["client_id"], "intern-bot");
    claims["roles"] = json!(["support", "admin"]);
    let swapped = format!(
        "{head}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let answer = tools_call(&gw, "/mcp", &swapped, "fx__add", json!({"a": 1, "b": 1})).await;
    assert_invalid_token(&answer, "signature does not verify");
    // 2. Flip one bit of the signature itself.
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 0x01;
    let flipped = format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode(raw));
    let answer = tools_call(&gw, "/mcp", &flipped, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "signature does not verify");
    // 3. Truncated signature.
    let truncated = &token[..token.len() - 4];
    let answer = tools_call(&gw, "/mcp", truncated, "fx__echo", json!({"text": "x"})).await;
    assert_eq!(answer.status, 401);
    // The untouched token still works.
    let ok = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "fine"})).await;
    assert_eq!(first_text(&ok), "fine");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_is_still_rejected() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    // Keys are loaded at start (in the background) or by the first token.
    let real = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let ok = tools_call(&gw, "/mcp", &real, "fx__echo", json!({"text": "x"})).await;
    assert_eq!(ok.status, 200);
    let before = provider.jwks_requests().await;
    assert!(before >= 1);

    let (attacker, _) = attacker_key("attacker-1");
    let forged = es256_sign(
        &attacker,
        &json!({"alg": "ES256", "kid": "attacker-1"}),
        &claims(&provider, &gw),
    );
    let answer = tools_call(&gw, "/mcp", &forged, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "no signing key");
    assert_eq!(
        provider.jwks_requests().await,
        before + 1,
        "an unknown kid refetches the JWKS once"
    );
    // More unknown kids within the refetch interval (30 s by default) cause no more fetches.
    for i in 2..6 {
        let kid = format!("attacker-{i}");
        let forged = es256_sign(
            &attacker,
            &json!({"alg": "ES256", "kid": kid}),
            &claims(&provider, &gw),
        );
        let answer = tools_call(&gw, "/mcp", &forged, "fx__echo", json!({"text": "x"})).await;
        assert_invalid_token(&answer, "no signing key");
    }
    assert_eq!(provider.jwks_requests().await, before + 1, "rate-limited");
    gw.stop().await;
}

#[tokio::test]
async fn rotated_key_is_accepted_after_refetch() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let old = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let ok = tools_call(&gw, "/mcp", &old, "fx__echo", json!({"text": "old"})).await;
    assert_eq!(first_text(&ok), "old");
    let before = provider.jwks_requests().await;

    let new_kid = provider.rotate().await;
    assert_ne!(new_kid, provider.kid);
    let new = provider.token("support-bot", &mcp(&gw), "mcp:tools").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid.as_str(), "signed with the new key");
    let answer = tools_call(&gw, "/mcp", &new, "fx__echo", json!({"text": "new"})).await;
    assert_eq!(first_text(&answer), "new");
    assert_eq!(provider.jwks_requests().await, before + 1);
    // Tokens signed by the old key (still published) keep working.
    let still = tools_call(&gw, "/mcp", &old, "fx__echo", json!({"text": "old"})).await;
    assert_eq!(first_text(&still), "old");
    gw.stop().await;
}

#[tokio::test]
async fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    let provider = Provider::start().await;
    // An attacker's JWKS server, counting the requests it gets.
    let (attacker, jwk) = attacker_key("attacker");
    let hits = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let attacker_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let served = json!({ "keys": [jwk.clone()] }).to_string();
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        let served = served.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            served
        }
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = gateway_for(&provider, "").await;
    for header in [
        json!({"alg": "ES256", "kid": "attacker", "jku": attacker_url}),
        json!({"alg": "ES256", "kid": "attacker", "x5u": attacker_url}),
        json!({"alg": "ES256", "kid": "attacker", "jwk": jwk}),
        json!({"alg": "ES256", "jwk": jwk}),
    ] {
        let forged = es256_sign(&attacker, &header, &claims(&provider, &gw));
        let answer = tools_call(&gw, "/mcp", &forged, "fx__echo", json!({"text": "x"})).await;
        assert_invalid_token(&answer, "no signing key");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the gateway never fetched jku/x5u"
    );
    server.abort();
    gw.stop().await;
}

#[tokio::test]
async fn revoked_api_key_bypass() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let answer = tools_call(&gw, "/mcp", CAROL, "fx__echo", json!({"text": "x"})).await;
    assert_invalid_token(&answer, "revoked");
    gw.stop().await;
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}).to_string();
    let response = gw
        .http
        .post(format!("{}/mcp", gw.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {CAROL}"))
        .header("authorization", format!("Bearer {ALICE}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let answer = read_answer(response).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_request\"")
    );
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_issuer_fails_closed_with_503() {
    // An issuer nobody listens on: keys can never be loaded.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let extra = format!("  oidc: {{ issuer: \"http://127.0.0.1:{port}\" }}\nrules: []\n");
    let gw = gateway_with(&extra).await;
    let (attacker, _) = attacker_key("k");
    let token = es256_sign(
        &attacker,
        &json!({"alg": "ES256", "kid": "k"}),
        &json!({"iss": format!("http://127.0.0.1:{port}"), "aud": mcp(&gw), "exp": now() + 60, "azp": "x"}),
    );
    let answer = tools_call(&gw, "/mcp", &token, "fx__echo", json!({"text": "x"})).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.header("retry-after").is_some());
    gw.stop().await;
}

#[tokio::test]
async fn server_bound_token_works_on_that_servers_legacy_sse_connection() {
    use futures::StreamExt as _;
    let provider = Provider::start().await;
    let gw = gateway_for(&provider, "").await;
    let demo_only = provider
        .token("support-bot", &format!("{}/demo", mcp(&gw)), "mcp:tools")
        .await;
    let stream = reqwest::Client::new()
        .get(format!("{}/mcp/demo/sse", gw.base))
        .header("accept", "text/event-stream")
        .bearer_auth(&demo_only)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // The first event names the POST endpoint.
    let mut body = stream.bytes_stream();
    let mut text = String::new();
    let endpoint = tokio::time::timeout(PEER_WAIT, async {
        loop {
            text.push_str(&String::from_utf8_lossy(
                &body.next().await.unwrap().unwrap(),
            ));
            if let Some(line) = text.lines().find_map(|l| l.strip_prefix("data:"))
                && text.contains("\n\n")
            {
                return line.trim().to_owned();
            }
        }
    })
    .await
    .expect("endpoint event");
    let initialize = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let post = |token: String| {
        gw.http
            .post(format!("{}{endpoint}", gw.base))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(initialize.to_string())
            .send()
    };
    assert_eq!(post(demo_only.clone()).await.unwrap().status(), 202);
    // A token for another server's resource is still refused on this connection.
    let fx_only = provider
        .token("support-bot", &format!("{}/fx", mcp(&gw)), "mcp:tools")
        .await;
    assert_eq!(post(fx_only).await.unwrap().status(), 401);
    gw.stop().await;
}
