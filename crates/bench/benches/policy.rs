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
//! Run: `cargo bench -p portcullis-bench --bench policy`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_config::{ApiKey, AuthConfig};
use portcullis_core::envelope::{self, Limits, Parsed};
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
            })
            .collect(),
        anonymous: None,
        oidc: None,
    };
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
                portcullis_gateway::auth::authenticate(&config, Some(black_box(&header)))
                    .expect("authenticates");
            let args = message
                .params_value()
                .and_then(|mut p| p.get_mut("arguments").map(serde_json::Value::take));
            let tool = portcullis_core::names::join("s37", "tool987");
            let decision = policy.decide(&Request {
                agent: &principal.agent,
                user: principal.user.as_deref(),
                method: "tools/call",
                server: Some("s37"),
                tool: Some(&tool),
                args: args.as_ref(),
                now: 1_795_428_000,
                ..Default::default()
            });
            assert_eq!(decision.effect, Effect::Allow);
            black_box(decision)
        })
    });
    group.finish();
}

criterion_group!(benches, policy_decisions, authn_plus_policy);
criterion_main!(benches);
