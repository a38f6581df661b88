//! Criterion benchmarks of the approval gate's cost on the decision path:
//!
//! - `approval_gate/allowed_call_rules_without_options`: 1,000 rules, 100 of them `approve`
//!   rules written without options; a `tools/call` that an `allow` rule lets through;
//! - `approval_gate/allowed_call_rules_with_options`: the same rules, every `approve` rule with
//!   `timeout`, `approvers: 2` and `role: admin`; the same call. Equal to the first: options are
//!   kept aside at compile time and looked up only for calls that are held;
//! - `approval_gate/held_call_decision_and_options`: a call under an `approve` rule: the
//!   decision plus the options lookup (what a held call adds before it is recorded).
//!
//! Run: `cargo bench -p portcullis-bench --bench approvals`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_policy::{ApprovalSpec, Effect, MatchSpec, Policy, Request, RuleSpec};

const RULES: usize = 1000;
const SERVERS: usize = 50;

/// 1,000 rules over 50 servers: exact-name allows, every 10th rule an `approve` rule on its own
/// tool (with `options` or not), every 40th a general conditional `deny`.
fn rules(options: bool) -> Policy {
    let mut specs = Vec::with_capacity(RULES);
    for i in 0..RULES {
        let server = i % SERVERS;
        let tool = format!("s{server}__tool{i}");
        let (effect, matcher) = if i % 40 == 0 {
            (
                Effect::Deny,
                MatchSpec {
                    agents: Some(vec![format!("agent-{i}-*")]),
                    when: Some("args.amount > 1000000".into()),
                    ..Default::default()
                },
            )
        } else if i % 10 == 0 {
            (
                Effect::Approve,
                MatchSpec {
                    tools: Some(vec![tool]),
                    when: Some("args.amount > 100".into()),
                    ..Default::default()
                },
            )
        } else {
            (
                Effect::Allow,
                MatchSpec {
                    agents: Some(vec!["support-*".into()]),
                    tools: Some(vec![tool]),
                    ..Default::default()
                },
            )
        };
        let approval = (options && effect == Effect::Approve).then(|| ApprovalSpec {
            timeout: Some(Duration::from_secs(300)),
            approvers: Some(2),
            role: Some("admin".into()),
            self_approval: None,
        });
        specs.push(RuleSpec {
            id: format!("rule-{i}"),
            effect: Some(effect),
            matcher,
            approval,
        });
    }
    Policy::compile(specs, "rules").expect("compiles")
}

fn approval_gate(c: &mut Criterion) {
    let plain = rules(false);
    let with_options = rules(true);
    let args = serde_json::json!({"amount": 250, "currency": "EUR"});
    let allowed = Request {
        agent: "support-bot",
        method: "tools/call",
        server: Some("s37"),
        tool: Some("s37__tool987"),
        args: Some(&args),
        now: 1_795_428_000,
        ..Default::default()
    };
    let held = Request {
        server: Some("s10"),
        tool: Some("s10__tool910"),
        ..allowed
    };
    assert_eq!(plain.decide(&allowed).effect, Effect::Allow);
    assert_eq!(with_options.decide(&allowed).effect, Effect::Allow);
    let decision = with_options.decide(&held);
    assert_eq!(decision.effect, Effect::Approve);
    assert_eq!(
        with_options
            .approval(decision.rule_id.as_deref().unwrap())
            .map(|o| o.approvers),
        Some(2)
    );

    let mut group = c.benchmark_group("approval_gate");
    group.bench_function("allowed_call_rules_without_options", |b| {
        b.iter(|| black_box(plain.decide(black_box(&allowed))))
    });
    group.bench_function("allowed_call_rules_with_options", |b| {
        b.iter(|| black_box(with_options.decide(black_box(&allowed))))
    });
    group.bench_function("held_call_decision_and_options", |b| {
        b.iter(|| {
            let decision = with_options.decide(black_box(&held));
            let options = decision
                .rule_id
                .as_deref()
                .and_then(|id| with_options.approval(id))
                .copied();
            black_box((decision, options))
        })
    });
    group.finish();
}

criterion_group!(benches, approval_gate);
criterion_main!(benches);
