//! Data-driven decision tests: one policy, many calls, each checked with [`check`].

use super::*;
use serde_json::json;

fn spec(id: &str, effect: Effect, m: MatchSpec) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        effect: Some(effect),
        matcher: m,
        approval: None,
    }
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

fn policy() -> Policy {
    Policy::compile(
        vec![
            spec(
                "no-delete",
                Effect::Deny,
                MatchSpec {
                    tools: strings(&["*__delete*"]),
                    ..Default::default()
                },
            ),
            spec(
                "big-refunds",
                Effect::Approve,
                MatchSpec {
                    tools: strings(&["billing__refund"]),
                    when: Some("args.amount > 100".into()),
                    ..Default::default()
                },
            ),
            spec(
                "refunds",
                Effect::Allow,
                MatchSpec {
                    agents: strings(&["support-bot"]),
                    tools: strings(&["billing__refund"]),
                    ..Default::default()
                },
            ),
            spec(
                "read-only",
                Effect::Allow,
                MatchSpec {
                    agents: strings(&["support-bot"]),
                    tools: strings(&["time__*"]),
                    ..Default::default()
                },
            ),
            spec(
                "hinted",
                Effect::Allow,
                MatchSpec {
                    agents: strings(&["reader"]),
                    annotations: Some(vec![("readOnlyHint".into(), json!(true))]),
                    ..Default::default()
                },
            ),
            spec(
                "office-hours",
                Effect::Allow,
                MatchSpec {
                    agents: strings(&["worker"]),
                    servers: strings(&["fs"]),
                    hours: Some("09:00-18:00".into()),
                    days: strings(&["mon", "tue", "wed", "thu", "fri"]),
                    ..Default::default()
                },
            ),
            spec(
                "no-sampling",
                Effect::Deny,
                MatchSpec {
                    methods: strings(&["sampling/createMessage"]),
                    ..Default::default()
                },
            ),
            spec(
                "admins",
                Effect::Allow,
                MatchSpec {
                    roles: strings(&["admin"]),
                    ..Default::default()
                },
            ),
        ],
        "rules",
    )
    .unwrap()
}

/// Monday 2026-11-23 10:00 UTC.
const MONDAY_10: u64 = 1_795_428_000;

/// Decides a call and renders it as `effect rule` (`deny -` for the default deny).
fn check(
    agent: &str,
    method: &str,
    tool: Option<&str>,
    args: Option<Value>,
    now: u64,
    expected: &str,
) {
    check_full(agent, &[], method, tool, args, None, now, expected)
}

#[allow(clippy::too_many_arguments)]
fn check_full(
    agent: &str,
    roles: &[&str],
    method: &str,
    tool: Option<&str>,
    args: Option<Value>,
    annotations: Option<Value>,
    now: u64,
    expected: &str,
) {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let server = tool.and_then(|t| t.split_once("__")).map(|(s, _)| s);
    let req = Request {
        agent,
        user: None,
        roles: &roles,
        method,
        server: server.or(if method == "tools/call" {
            None
        } else {
            Some("fs")
        }),
        tool,
        args: args.as_ref(),
        annotations: annotations.as_ref(),
        now,
    };
    let p = policy();
    let d = p.decide(&req);
    let got = format!("{} {}", d.effect, d.rule_id.as_deref().unwrap_or("-"));
    assert_eq!(got, expected, "{agent} {method} {tool:?}: {}", d.reason);
    // explain agrees with decide.
    assert_eq!(p.explain(&req).decision, d);
}

#[test]
fn decisions() {
    let t = Some;
    let now = MONDAY_10;
    check(
        "support-bot",
        "tools/call",
        t("time__now"),
        None,
        now,
        "allow read-only",
    );
    check(
        "support-bot",
        "tools/call",
        t("Time__now"),
        None,
        now,
        "deny -",
    );
    check(
        "support-bot",
        "tools/call",
        t("tіme__now"),
        None,
        now,
        "deny -",
    ); // Cyrillic і
    check(
        "support-bot",
        "tools/call",
        t("time__delete_zone"),
        None,
        now,
        "deny no-delete",
    );
    check("other", "tools/call", t("time__now"), None, now, "deny -");
    check(
        "support-bot",
        "tools/call",
        t("billing__refund"),
        Some(json!({"amount": 150})),
        now,
        "approve big-refunds",
    );
    check(
        "support-bot",
        "tools/call",
        t("billing__refund"),
        Some(json!({"amount": 50})),
        now,
        "allow refunds",
    );
    // A condition that cannot be evaluated makes the approve rule apply (fail closed).
    check(
        "support-bot",
        "tools/call",
        t("billing__refund"),
        Some(json!({"amount": "999"})),
        now,
        "approve big-refunds",
    );
    check(
        "support-bot",
        "tools/call",
        t("billing__refund"),
        Some(json!({})),
        now,
        "approve big-refunds",
    );
    check(
        "support-bot",
        "tools/call",
        t("billing__refund"),
        None,
        now,
        "approve big-refunds",
    );
    check(
        "support-bot",
        "tools/call",
        t("billing__Refund"),
        Some(json!({"amount": 1})),
        now,
        "deny -",
    );
    check(
        "worker",
        "resources/read",
        None,
        None,
        now,
        "allow office-hours",
    );
    check(
        "worker",
        "resources/read",
        None,
        None,
        MONDAY_10 + 9 * 3600,
        "deny -",
    );
    check(
        "worker",
        "resources/read",
        None,
        None,
        MONDAY_10 + 5 * 86_400,
        "deny -",
    ); // Saturday
    check(
        "worker",
        "sampling/createMessage",
        None,
        None,
        MONDAY_10 + 9 * 3600,
        "deny no-sampling",
    );
    check_full(
        "x",
        &["admin"],
        "prompts/get",
        None,
        None,
        None,
        now,
        "allow admins",
    );
    check_full(
        "x",
        &["admin"],
        "sampling/createMessage",
        None,
        None,
        None,
        now,
        "deny no-sampling",
    );
    check_full(
        "reader",
        &[],
        "tools/call",
        t("fs__read"),
        None,
        Some(json!({"readOnlyHint": true})),
        now,
        "allow hinted",
    );
    check_full(
        "reader",
        &[],
        "tools/call",
        t("fs__read"),
        None,
        Some(json!({"readOnlyHint": false})),
        now,
        "deny -",
    );
    // Unknown annotations never make an allow rule match.
    check_full(
        "reader",
        &[],
        "tools/call",
        t("fs__read"),
        None,
        None,
        now,
        "deny -",
    );
}

#[test]
fn index_keeps_first_match_order() {
    // A general rule before an indexed one still wins, and vice versa.
    let p = Policy::compile(
        vec![
            spec(
                "exact",
                Effect::Deny,
                MatchSpec {
                    tools: strings(&["a__x"]),
                    ..Default::default()
                },
            ),
            spec("any", Effect::Allow, MatchSpec::default()),
            spec(
                "server",
                Effect::Deny,
                MatchSpec {
                    tools: strings(&["a__*"]),
                    ..Default::default()
                },
            ),
        ],
        "rules",
    )
    .unwrap();
    let req = |tool| Request {
        agent: "z",
        method: "tools/call",
        server: Some("a"),
        tool: Some(tool),
        ..Default::default()
    };
    assert_eq!(p.decide(&req("a__x")).rule_id.as_deref(), Some("exact"));
    assert_eq!(p.decide(&req("a__y")).rule_id.as_deref(), Some("any"));
    // 1,000 rules: the decision only walks the candidates.
    let mut specs: Vec<RuleSpec> = (0..1000)
        .map(|i| {
            spec(
                &format!("r{i}"),
                Effect::Allow,
                MatchSpec {
                    tools: strings(&[&format!("s{}__t{i}", i % 50)]),
                    ..Default::default()
                },
            )
        })
        .collect();
    specs.push(spec("last", Effect::Deny, MatchSpec::default()));
    let p = Policy::compile(specs, "rules").unwrap();
    let e = p.explain(&Request {
        agent: "z",
        method: "tools/call",
        server: Some("s7"),
        tool: Some("s7__t507"),
        ..Default::default()
    });
    assert_eq!(e.decision.rule_id.as_deref(), Some("r507"));
    assert_eq!(e.steps.len(), 1);
}

#[test]
fn listing_ignores_conditions() {
    let p = policy();
    let req = |agent, tool| Request {
        agent,
        method: "tools/call",
        server: Some("billing"),
        tool: Some(tool),
        now: MONDAY_10,
        ..Default::default()
    };
    assert!(p.could_allow(&req("support-bot", "billing__refund")));
    assert!(!p.could_allow(&req("other", "billing__refund")));
    assert!(!p.could_allow(&req("support-bot", "billing__delete")));
}

#[test]
fn explanation_says_why() {
    let p = policy();
    let req = Request {
        agent: "other",
        method: "tools/call",
        server: Some("time"),
        tool: Some("time__now"),
        now: MONDAY_10,
        ..Default::default()
    };
    let text = p.explain(&req).to_string();
    assert_eq!(
        text,
        "decision: deny\nrule: (none: no rule matched, default deny)\nreason: no rule allows tools/call time__now for agent other\n  \
         no-delete: skipped, tool time__now not in [*__delete*]\n  \
         read-only: skipped, agent other not in [support-bot]\n  \
         hinted: skipped, agent other not in [reader]\n  \
         no-sampling: skipped, method tools/call not in [sampling/createMessage]\n  \
         admins: skipped, no role in [admin]\n"
    );
}

#[test]
fn compile_errors_name_their_path() {
    let bad = vec![
        spec(
            "a",
            Effect::Allow,
            MatchSpec {
                when: Some("args.x >".into()),
                ..Default::default()
            },
        ),
        spec(
            "a",
            Effect::Approve,
            MatchSpec {
                hours: Some("9-17".into()),
                days: strings(&["monday"]),
                ..Default::default()
            },
        ),
        RuleSpec {
            id: String::new(),
            effect: None,
            matcher: MatchSpec::default(),
            approval: None,
        },
        spec(
            "m",
            Effect::Deny,
            MatchSpec {
                methods: strings(&["tools/lsit"]),
                tools: strings(&["refund"]),
                agents: Some(vec![]),
                ..Default::default()
            },
        ),
    ];
    let errors: Vec<String> = Policy::compile(bad, "rules")
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "rules[0].allow.when: unexpected end of expression (at byte 8)",
            "rules[1].id: duplicate rule id \"a\" (also rules[0])",
            "rules[1].approve.hours: invalid hours \"9-17\": expected \"HH:MM-HH:MM\" (UTC), e.g. \"09:00-18:00\"",
            "rules[1].approve.days[0]: unknown day \"monday\" (one of mon, tue, wed, thu, fri, sat, sun)",
            "rules[2].id: required: every rule has an id",
            "rules[2]: set exactly one of `allow`, `deny` or `approve`",
            "rules[3].deny.agents: must not be empty (leave the key out to match any)",
            "rules[3].deny.methods[0]: unknown method \"tools/lsit\" (one of tools/call, resources/read, resources/subscribe, resources/unsubscribe, prompts/get, completion/complete, subscriptions/listen, sampling/createMessage, elicitation/create, roots/list)",
            "rules[3].deny.tools[0]: \"refund\" is not an aggregated name: tools are named server__tool",
        ]
    );
}

#[test]
fn approve_rules_carry_their_options() {
    use std::time::Duration;
    let mut two_person = spec(
        "refunds",
        Effect::Approve,
        MatchSpec {
            tools: strings(&["billing__refund"]),
            ..Default::default()
        },
    );
    two_person.approval = Some(ApprovalSpec {
        timeout: Some(Duration::from_secs(300)),
        approvers: Some(2),
        role: Some("admin".into()),
        self_approval: Some(true),
    });
    let plain = spec("deletes", Effect::Approve, MatchSpec::default());
    let policy = Policy::compile(vec![two_person, plain], "rules").unwrap();
    assert_eq!(
        policy.approval("refunds"),
        Some(&ApprovalOptions {
            timeout: Some(Duration::from_secs(300)),
            approvers: 2,
            role: ReviewerRole::Admin,
            self_approval: true,
        })
    );
    assert_eq!(
        policy.approval("deletes"),
        Some(&ApprovalOptions::default())
    );
    assert_eq!(policy.approval("nope"), None);
}

#[test]
fn bad_approval_options_name_their_paths() {
    let mut bad = spec("a", Effect::Approve, MatchSpec::default());
    bad.approval = Some(ApprovalSpec {
        timeout: Some(std::time::Duration::ZERO),
        approvers: Some(3),
        role: Some("root".into()),
        self_approval: None,
    });
    let mut misplaced = spec("b", Effect::Allow, MatchSpec::default());
    misplaced.approval = Some(ApprovalSpec {
        approvers: Some(2),
        ..Default::default()
    });
    let errors: Vec<String> = Policy::compile(vec![bad, misplaced], "rules")
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "rules[0].approve.timeout: must be more than 0s and at most 24h",
            "rules[0].approve.approvers: must be 1 or 2 (distinct reviewers), not 3",
            "rules[0].approve.role: unknown reviewer role \"root\" (approver or admin)",
            "rules[1].allow.approvers: only `approve` rules take `approvers`",
        ]
    );
}

#[test]
fn tools_held_for_approval_stay_listed() {
    let p = Policy::compile(
        vec![
            spec(
                "hold-wires",
                Effect::Approve,
                MatchSpec {
                    tools: strings(&["bank__wire"]),
                    ..Default::default()
                },
            ),
            spec(
                "no-deletes",
                Effect::Deny,
                MatchSpec {
                    tools: strings(&["bank__delete"]),
                    ..Default::default()
                },
            ),
        ],
        "rules",
    )
    .unwrap();
    let req = |tool| Request {
        agent: "a",
        method: "tools/call",
        server: Some("bank"),
        tool: Some(tool),
        ..Default::default()
    };
    assert!(p.could_allow(&req("bank__wire")));
    assert!(!p.could_allow(&req("bank__delete")));
    assert!(!p.could_allow(&req("bank__other")), "default deny hides");
}
