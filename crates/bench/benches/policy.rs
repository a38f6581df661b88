//! Criterion benchmarks of the policy phase (`portcullis_policy`), with 1,000 rules:
//!
//! - `policy_1000_rules/decide_indexed_tool`: a `tools/call` whose tool has exact-name rules,
//!   a server glob and general rules with conditions before the one that allows it;
//! - `policy_1000_rules/decide_default_deny`: a call no rule allows (every candidate checked);
//! - `policy_1000_rules/could_allow_for_list`: the per-item check of list filtering;
//! - `authn_plus_policy/api_key_1000_keys_and_1000_rules`: the per-call budget of DESIGN.md
//!   (≤ 20 µs p50): API key authentication among 1,000 keys, the arguments read from the
//!   envelope, and the decision.
//!
//! - `authn_plus_policy/jwt_rs256_cached_token_and_1000_rules`: the same with an OIDC bearer
//!   JWT (RS256, key in the JWKS cache) that has been verified before: the common case, an
//!   agent reusing its access token for many calls (hash + lookup, `exp` checked again);
//! - `authn_plus_policy/jwt_rs256_verify_and_1000_rules`: a first use of a token: header, key
//!   lookup, RS256 signature check, claims, and the decision.
//!
//! Run: `cargo bench -p portcullis-bench --bench policy`.

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_config::{ApiKey, AuthConfig, OidcConfig};
use portcullis_core::envelope::{self, Limits, Parsed};
use portcullis_gateway::auth::{Authenticator, Principal, jwks::JwksCache};
use portcullis_gateway::route::Route;
use portcullis_policy::{Effect, MatchSpec, Policy, Request, RuleSpec};
use sha2::{Digest as _, Sha256};

const RULES: usize = 1000;
const SERVERS: usize = 50;

fn strings(items: &[String]) -> Option<Vec<String>> {
    Some(items.to_vec())
}

/// 1,000 rules: per server a deny glob with a condition, exact-name allows per tool, and every
/// 40th rule a general rule (agent globs and a condition) that every call has to consider.
fn thousand_rules() -> Policy {
    let mut specs = Vec::with_capacity(RULES);
    for i in 0..RULES {
        let server = i % SERVERS;
        let (effect, m) = match i % 40 {
            0 => (
                Effect::Deny,
                MatchSpec {
                    agents: strings(&[format!("intruder-{i}-*")]),
                    when: Some("args.amount > 1000000 && args.currency == 'XXX'".into()),
                    ..Default::default()
                },
            ),
            1 => (
                Effect::Approve,
                MatchSpec {
                    tools: strings(&[format!("s{server}__refund*")]),
                    when: Some(format!("args.amount > {}", 100 + i)),
                    ..Default::default()
                },
            ),
            _ => (
                Effect::Allow,
                MatchSpec {
                    agents: strings(&[format!("agent-{}", i % 100), "support-*".into()]),
                    tools: strings(&[format!("s{server}__tool{i}")]),
                    ..Default::default()
                },
            ),
        };
        specs.push(RuleSpec {
            id: format!("rule-{i}"),
            effect: Some(effect),
            matcher: m,
            approval: None,
        });
    }
    Policy::compile(specs, "rules").expect("compiles")
}

fn policy_decisions(c: &mut Criterion) {
    let policy = thousand_rules();
    let args = serde_json::json!({"amount": 42, "currency": "EUR", "note": "bench"});
    // rule-987: server 37, allowed for agent-87 or support-*.
    let allowed = Request {
        agent: "support-bot",
        method: "tools/call",
        server: Some("s37"),
        tool: Some("s37__tool987"),
        args: Some(&args),
        now: 1_795_428_000,
        ..Default::default()
    };
    assert_eq!(policy.decide(&allowed).effect, Effect::Allow);
    let denied = Request {
        tool: Some("s37__unknown"),
        ..allowed
    };
    assert_eq!(policy.decide(&denied).rule_id, None);
    let mut group = c.benchmark_group("policy_1000_rules");
    group.bench_function("decide_indexed_tool", |b| {
        b.iter(|| black_box(policy.decide(black_box(&allowed))))
    });
    group.bench_function("decide_default_deny", |b| {
        b.iter(|| black_box(policy.decide(black_box(&denied))))
    });
    let listed = Request {
        args: None,
        ..allowed
    };
    group.bench_function("could_allow_for_list", |b| {
        b.iter(|| black_box(policy.could_allow(black_box(&listed))))
    });
    group.finish();
}

fn authn_plus_policy(c: &mut Criterion) {
    let policy = thousand_rules();
    let tokens: Vec<String> = (0..1000)
        .map(|i| format!("pc_bench_key_{i:04}_0123456789abcdef0123456789"))
        .collect();
    let config = AuthConfig {
        api_keys: tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ApiKey {
                agent: format!("support-{i}"),
                sha256: Sha256::digest(t.as_bytes()).into(),
                expires_at: None,
                revoked: false,
            })
            .collect(),
        anonymous: None,
        oidc: None,
    };
    let authenticator = Authenticator::new(&config, "https://gw.example", None);
    let header = format!("Bearer {}", tokens[500]).into_bytes();
    let body = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "tool987", "arguments": {"amount": 42, "currency": "EUR", "note": "bench"}}
    }))
    .expect("serializes");
    let Ok(Parsed::Single(message)) = envelope::parse(&body, &Limits::default()) else {
        panic!("parses");
    };
    let mut group = c.benchmark_group("authn_plus_policy");
    group.bench_function("api_key_1000_keys_and_1000_rules", |b| {
        b.iter(|| {
            let principal =
                ready(authenticator.authenticate(&Route::Aggregate, Some(black_box(&header))))
                    .expect("authenticates");
            black_box(decide(&policy, &message, &principal))
        })
    });

    // OIDC: an RS256 token from a provider whose key is in the JWKS cache.
    let jwt_config = AuthConfig {
        api_keys: Vec::new(),
        anonymous: None,
        oidc: Some(OidcConfig {
            issuer: "https://idp.example".into(),
            audience: "https://gw.example/mcp".into(),
            agent_claim: "azp".into(),
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            required_scopes: vec!["mcp:tools".into()],
            clock_skew: Duration::from_secs(60),
            algorithms: portcullis_config::OIDC_ALGORITHMS
                .map(str::to_owned)
                .to_vec(),
            jwks_refetch_interval: Duration::from_secs(30),
        }),
    };
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": BENCH_RSA_N, "e": "AQAB"}
    ]});
    let jwt_auth = Authenticator::new(
        &jwt_config,
        "https://gw.example",
        Some(JwksCache::fixed(&jwks.to_string()).expect("JWKS parses")),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = rs256_token(
        &serde_json::json!({"alg": "RS256", "kid": "bench", "typ": "at+jwt"}),
        &serde_json::json!({
            "iss": "https://idp.example", "aud": "https://gw.example/mcp",
            "iat": now, "exp": now + 86_400, "jti": "bench-token",
            "azp": "support-bot", "sub": "alice@example.com", "roles": ["support"],
            "scope": "mcp:tools",
        }),
    );
    let jwt_header = format!("Bearer {token}").into_bytes();
    let verifier = jwt_auth.jwt().expect("oidc configured");
    group.bench_function("jwt_rs256_cached_token_and_1000_rules", |b| {
        b.iter(|| {
            let principal =
                ready(jwt_auth.authenticate(&Route::Aggregate, Some(black_box(&jwt_header))))
                    .expect("authenticates");
            black_box(decide(&policy, &message, &principal))
        })
    });
    group.bench_function("jwt_rs256_verify_and_1000_rules", |b| {
        b.iter(|| {
            let principal = ready(verifier.verify_uncached(
                black_box(token.as_bytes()),
                &Route::Aggregate,
                now,
            ))
            .expect("verifies");
            black_box(decide(&policy, &message, &principal))
        })
    });
    group.finish();
}

/// The per-call work after authentication: arguments from the envelope, then the decision.
fn decide(
    policy: &Policy,
    message: &envelope::Envelope,
    principal: &Principal,
) -> portcullis_policy::Decision {
    let args = message
        .params_value()
        .and_then(|mut p| p.get_mut("arguments").map(serde_json::Value::take));
    let tool = portcullis_core::names::join("s37", "tool987");
    let decision = policy.decide(&Request {
        agent: &principal.agent,
        user: principal.user.as_deref(),
        roles: &principal.roles,
        method: "tools/call",
        server: Some("s37"),
        tool: Some(&tool),
        args: args.as_ref(),
        now: 1_795_428_000,
        ..Default::default()
    });
    assert_eq!(decision.effect, Effect::Allow);
    decision
}

/// Runs a future that must not wait (authentication with cached keys never does).
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("authentication waited although its keys are cached"),
    }
}

/// A compact JWS signed RS256 with the benchmark key.
fn rs256_token(header: &serde_json::Value, payload: &serde_json::Value) -> String {
    let der = STANDARD.decode(BENCH_RSA_PKCS1).expect("base64");
    let key = ring::signature::RsaKeyPair::from_der(&der).expect("PKCS#1 RSA key");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("signs");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// An RSA-2048 key (PKCS#1 DER) generated for this benchmark only (`openssl genpkey -algorithm
/// RSA -pkeyopt rsa_keygen_bits:2048 -outform DER`, OpenSSL 3.0); it protects nothing.
const BENCH_RSA_PKCS1: &str = "MIIEpAIBAAKCAQEA20cOQ/hKFJEwtgz2DL7rGKyvSIsc7cT/uq/3+4RZNTwdAO/3bI7+LiDQvPtuhNYNNHVOwHWG50gqAIgWbEYMpMjQOdEKtEnG1EIvxDff/vHKz0XE6/ogMjzw+HdtUXMW6616cfZin0Kk0ZhJa/lHQvtdAgtm+bh6zkRufOMS7HLLroDpOZWRWxzhWYlXmi2XKgfVjxHmTbb+Ole9Chmu3MsDxRQ8/71xcDXzg4V69dVMrHrufuyFTSftRYh//Xil16xXD+Zh7hDnBerGUFaE37nOLtO81eUl2s0LYX3I2xcW3jcpA2wRErUxHi3lhaPzEGYyaQiwmtNxeiT1EJQMWwIDAQABAoIBAAdOQT/rfFBeHADcwq/fBocubbKdi+uyFhEavsje+nfnFlJLLHOt+fMAfePl/qMnXI5EYEjSQZngEiItZo3Z8Z7l3+YlPFWQZbL5t4yyjeB5Htg0C2EPVtZFqIOmuvotOvTENWGpo1SKDGK9T6jsx76IEGu6hIZKarEHn6TCjgVZp/T6TeP+aGaUO3s3QaeY2ZwJrq6URsz+hgLGVb0Wpje18XdTZBfhK7TRPTJ6Vnl5UHAk8u8GOJpRxeHhlAaMVaPertk5cY5OoxJMsMoL7lIURn0zIk4YM9GRRI7xHXFvfJUBo53bf/IXkqk8SiZcCrLWr+LNmUOY6LNOQe+II7ECgYEA/EZWw+1CHKoqG4q7KnY1r2/z4lzCmlwuMcEmLNJDRbFMZ2eQ74sWCCXMVJ1zJlvf/Dt+ow7GCj4LA/kJu+kwieD4jO1kVRBiQQXE84NBfnOfx6X1erkN0ZqcMa5YnBYe4sG/ZdlBPvbNFRc+fSPWzAjIFcVi4ZR4Chc0FkgAxBECgYEA3oP6rX/gvvdWTgzbjqUraMQRZ0uFmB6iiHACFBEaFS6GJvk6cg/4TIJJBoQca0BZzUBXyy1rwaJxenxzwYsutD0CnCC3EeDEPEE+2CqdvvYk3MyPw3al+uFFw3Upd72IaQwWJKcTdC/G9WsCARLQ1rt7UrB80wv25Eif8b4wxasCgYBspN45ArS2I5J+ygBRCReVtmER22DzmT9LriMCqorOOMzuu2tvvjZ+y8hzqFsu6eJMflLLZlFjl9SmoVnP011UA88G4jWTbLrjxdhMBvrtul3VXWOatpd87VjXDH6cueoTPd1vv2CZ/S/VJW2D9ytKM3334knzXD1WGygTcG7kAQKBgQCvJREueaZsigDbxJEZEXc+qn3MYYyRNSPX4tov81olbA5aJPhVCa72geJ7B4fa/7bvsQKpwWG882EA+W6f3C7x3cftHm8a2mF70BtoSPsLcXGIfld2kjCJbcHc3J68SmpRzRqs1PmiDW08hXL5Z1cMflvOtW47LIK0I1oKDRsUqwKBgQDfGUmYWW6Gib2SqGR5sGOkiQsP9lxQJtzVA7xLC7mBInk0J4SGdcdXf0bnkdj8QJptKZOagUcJf8r50jk6KLM9POiNA796oFvtPCJPUs7BUbqUDS3k3qiYMQc7jNnbU/dUN+IONH4yHus5WowxJ2s7Q5M3T92xVKfrGj1BppjeEw==";
/// Its modulus, base64url (the JWK `n`).
const BENCH_RSA_N: &str = "20cOQ_hKFJEwtgz2DL7rGKyvSIsc7cT_uq_3-4RZNTwdAO_3bI7-LiDQvPtuhNYNNHVOwHWG50gqAIgWbEYMpMjQOdEKtEnG1EIvxDff_vHKz0XE6_ogMjzw-HdtUXMW6616cfZin0Kk0ZhJa_lHQvtdAgtm-bh6zkRufOMS7HLLroDpOZWRWxzhWYlXmi2XKgfVjxHmTbb-Ole9Chmu3MsDxRQ8_71xcDXzg4V69dVMrHrufuyFTSftRYh__Xil16xXD-Zh7hDnBerGUFaE37nOLtO81eUl2s0LYX3I2xcW3jcpA2wRErUxHi3lhaPzEGYyaQiwmtNxeiT1EJQMWw";

criterion_group!(benches, policy_decisions, authn_plus_policy);
criterion_main!(benches);
