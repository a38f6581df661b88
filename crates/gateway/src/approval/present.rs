//! What a reviewer is shown about a held call: the arguments with PII and secrets masked by the
//! content scanners, the scanners' findings on them (category, severity, rule and JSON pointer,
//! never the text) — those of the scan phase, which may already have redacted the arguments
//! (`scanners:`), and those of the reviewer's own redaction pass — and the tool's description and
//! annotations as its server last listed them.
//!
//! Fail closed: if the scanners cannot run, the arguments are withheld rather than shown
//! unredacted.

use portcullis_approvals::Presentation;
use portcullis_core::envelope::Envelope;
use portcullis_core::names;
use portcullis_scan::json::{redact_value, scan_value};
use portcullis_scan::{Family, Surface};
use serde_json::{Value, json};

use crate::proxy::policy::ApprovalNeed;
use crate::state::Gateway;

/// What replaces the arguments when they cannot be redacted.
pub const WITHHELD: &str = "[arguments withheld: the scanners are unavailable]";

/// Builds the presentation of a held `tools/call` (`message` as the upstream will see it).
pub fn presentation(
    gateway: &Gateway,
    server: &str,
    message: &Envelope,
    need: &ApprovalNeed,
    scanned: &[portcullis_audit::Finding],
) -> Presentation {
    let arguments = need.args.clone().unwrap_or_else(|| {
        message
            .params_value()
            .and_then(|mut params| params.get_mut("arguments").map(Value::take))
            .unwrap_or(Value::Null)
    });
    let (arguments, own) = redacted(arguments);
    let findings = scanned
        .iter()
        .map(|f| {
            json!({
                "pointer": f.location,
                "category": f.rule,
                "severity": f.severity,
                "rule": f.rule,
            })
        })
        .chain(own)
        .collect();
    let info =
        names::split(&need.tool).and_then(|(_, tool)| gateway.tool_schemas.info(server, tool));
    Presentation {
        arguments,
        description: info.as_ref().and_then(|i| i.description.clone()),
        annotations: info.as_ref().and_then(|i| i.annotations.clone()),
        findings,
    }
}

/// The arguments with PII and secrets masked, and every finding on them.
pub fn redacted(mut arguments: Value) -> (Value, Vec<Value>) {
    let Ok(scanner) = crate::scanning::scanner() else {
        return (Value::String(WITHHELD.to_owned()), Vec::new());
    };
    let findings = scan_value(scanner, &arguments, Surface::Argument)
        .into_iter()
        .map(|found| {
            json!({
                "pointer": found.pointer,
                "category": found.finding.category.name(),
                "severity": found.finding.severity,
                "rule": found.finding.rule,
            })
        })
        .collect();
    redact_value(scanner, &mut arguments, Surface::Argument, |finding| {
        matches!(
            finding.category.family(),
            Some(Family::Pii | Family::Secrets)
        )
    });
    (arguments, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pii_and_secrets_are_masked_and_reported_without_their_text() {
        let (args, findings) = redacted(json!({
            "amount": 250,
            "email": "carol.customer@example.com",
            "note": "use key AKIAZ3MN7QW2ERTY5UIO",
        }));
        let text = args.to_string();
        assert!(!text.contains("carol.customer@example.com"), "{text}");
        assert!(!text.contains("AKIAZ3MN7QW2ERTY5UIO"), "{text}");
        assert_eq!(args["amount"], 250, "other values are shown as they are");
        let listed = serde_json::to_string(&findings).unwrap();
        assert!(
            listed.contains("\"/email\"") && listed.contains("\"email\""),
            "{listed}"
        );
        assert!(listed.contains("secret"), "{listed}");
        assert!(
            !listed.contains("AKIAZ3MN"),
            "findings never carry the text"
        );
    }
}
