//! What a reviewer sees, as a Slack-compatible chat payload (`text` for notifications and
//! clients without blocks, `blocks` for the layout, two URL buttons for the review links).
//!
//! Everything shown comes from the stored request, whose arguments are already redacted. Text
//! that came from the caller or the upstream (arguments, tool description) is escaped for Slack
//! `mrkdwn` (`&`, `<`, `>`), so it cannot forge links or mentions, and bounded in length.

use serde_json::{Value, json};

use crate::model::Approval;

/// Longest argument dump shown in chat, in characters.
const MAX_ARGS_CHARS: usize = 2500;
/// Longest tool description shown in chat, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// The review links of one request (absolute URLs; each opens a page that asks for an admin
/// credential before it decides anything).
#[derive(Debug, Clone)]
pub struct Links {
    pub approve: String,
    pub deny: String,
}

/// Escapes Slack `mrkdwn` control characters.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

/// One line naming the call: tool, agent, user.
pub fn headline(a: &Approval) -> String {
    let user = a
        .caller
        .user
        .as_deref()
        .map(|u| format!(" for user {u}"))
        .unwrap_or_default();
    format!(
        "Approval needed: {} called by agent {}{user} (rule {})",
        a.tool, a.caller.agent, a.rule_id
    )
}

/// The chat payload for a new request.
pub fn slack_payload(a: &Approval, links: &Links) -> Value {
    let args = serde_json::to_string_pretty(&a.presentation.arguments).unwrap_or_default();
    let args = bounded(&args, MAX_ARGS_CHARS).replace('`', "'");
    let description = a
        .presentation
        .description
        .as_deref()
        .map(|d| bounded(d, MAX_DESCRIPTION_CHARS))
        .unwrap_or_else(|| "(not listed)".to_owned());
    let annotations = a
        .presentation
        .annotations
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "(none listed)".to_owned());
    let findings = if a.presentation.findings.is_empty() {
        "none".to_owned()
    } else {
        a.presentation
            .findings
            .iter()
            .map(|f| {
                format!(
                    "{} ({}) at {}",
                    f["category"].as_str().unwrap_or("?"),
                    f["severity"].as_str().unwrap_or("?"),
                    f["pointer"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let needed = if a.approvals_needed > 1 {
        format!("{} distinct approvers", a.approvals_needed)
    } else {
        "1 approver".to_owned()
    };
    let user = a.caller.user.as_deref().unwrap_or("-");
    let text = escape(&headline(a));
    json!({
        "text": text,
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": bounded(&format!("Approval needed: {}", a.tool), 140) } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Agent*\n{}", escape(&a.caller.agent)) },
                { "type": "mrkdwn", "text": format!("*User*\n{}", escape(user)) },
                { "type": "mrkdwn", "text": format!("*Server*\n{}", escape(&a.server)) },
                { "type": "mrkdwn", "text": format!("*Tool*\n{}", escape(&a.tool)) },
                { "type": "mrkdwn", "text": format!("*Rule*\n{}", escape(&a.rule_id)) },
                { "type": "mrkdwn", "text": format!("*Needs*\n{needed} (role {})", a.required_role) },
            ] },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*Tool description* (as listed by the server)\n{}\n*Annotations* {}", escape(&description), escape(&annotations)) } },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*Arguments* (PII and secrets redacted)\n```{}```", escape(&args)) } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("Scanner findings: {} · request {} · expires <!date^{}^{{date_short_pretty}} {{time}}|at {} ms>", escape(&findings), a.id, a.deadline_ms / 1000, a.deadline_ms) },
            ] },
            { "type": "actions", "elements": [
                { "type": "button", "style": "primary", "text": { "type": "plain_text", "text": "Approve" }, "url": links.approve, "action_id": "approve" },
                { "type": "button", "style": "danger", "text": { "type": "plain_text", "text": "Deny" }, "url": links.deny, "action_id": "deny" },
            ] },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Caller, Presentation, Role, Status};

    fn approval() -> Approval {
        Approval {
            id: "apr_000000000000000000000001".into(),
            created_ms: 0,
            deadline_ms: 300_000,
            caller: Caller {
                agent: "support-bot".into(),
                user: Some("carol".into()),
                credential_id: "key:1".into(),
            },
            server: "billing".into(),
            tool: "billing__refund".into(),
            rule_id: "big-refunds".into(),
            required_role: Role::Approver,
            approvals_needed: 2,
            presentation: Presentation {
                arguments: json!({"amount": 250, "note": "<https://evil.example|click> `x`"}),
                description: Some("Refund a charge".into()),
                annotations: Some(json!({"destructiveHint": true})),
                findings: vec![
                    json!({"pointer": "/email", "category": "email", "severity": "medium", "rule": "pii.email"}),
                ],
            },
            status: Status::Pending,
            decided_ms: None,
            reason: None,
            decisions: Vec::new(),
            replica: "r1".into(),
            audit_ref: None,
        }
    }

    #[test]
    fn payload_names_everything_a_reviewer_needs_and_escapes_caller_text() {
        let links = Links {
            approve: "https://gw/admin/approvals/apr_1/approve?t=a".into(),
            deny: "https://gw/admin/approvals/apr_1/deny?t=d".into(),
        };
        let p = slack_payload(&approval(), &links);
        let text = p.to_string();
        for needle in [
            "support-bot",
            "carol",
            "billing__refund",
            "big-refunds",
            "Refund a charge",
            "destructiveHint",
            "2 distinct approvers",
            "email (medium) at /email",
            "PII and secrets redacted",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(p["text"].as_str().unwrap().starts_with("Approval needed"));
        // Caller-controlled text cannot forge a Slack link or close the code block.
        assert!(!text.contains("<https://evil"), "{text}");
        assert!(text.contains("&lt;https://evil.example|click&gt;"));
        assert!(!text.contains("`x`"));
        let actions = &p["blocks"][5]["elements"];
        assert_eq!(actions[0]["url"], links.approve);
        assert_eq!(actions[1]["url"], links.deny);
    }
}
