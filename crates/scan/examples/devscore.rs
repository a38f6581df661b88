//! Development aid: score every row of the eval JSONL files and print one JSON line per row
//! (file, id, label, kind, flagged, rules), for error analysis next to `portcullis eval`.
//!
//! `cargo run -p portcullis-scan --example devscore -- ../shared/eval/*.jsonl`

use portcullis_scan::{Scanner, json::scan_tool};
use serde_json::{Value, json};

fn main() {
    let scanner = Scanner::new().expect("scanner compiles");
    // `DEVSCORE_SCANNER=injection` scores every row with the result (injection) scanner, as an
    // over-defence check on ordinary text of other kinds.
    let force_injection = std::env::var("DEVSCORE_SCANNER").is_ok_and(|v| v == "injection");
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).expect("readable file");
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let pii = text.contains("\"label\": \"pii\"");
        let secret = text.contains("\"label\": \"secret\"");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line).expect("json row");
            let t = row["text"].as_str().unwrap_or("");
            let kind = row["kind"].as_str().unwrap_or("");
            let findings = if force_injection {
                scanner.injection(t)
            } else if pii {
                scanner.pii(t)
            } else if secret {
                scanner.secrets(t)
            } else if kind == "tool_description" {
                match row["meta"].get("tool").filter(|v| v.is_object()) {
                    Some(tool) => scan_tool(&scanner, tool)
                        .into_iter()
                        .map(|p| p.finding)
                        .collect(),
                    None => scanner.poisoning(t),
                }
            } else {
                scanner.injection(t)
            };
            let rules: Vec<&str> = findings.iter().map(|f| f.rule).collect();
            let severities: Vec<String> = findings
                .iter()
                .map(|f| format!("{:?}", f.severity))
                .collect();
            println!(
                "{}",
                json!({"file": name, "id": row["id"], "label": row["label"], "kind": kind,
                       "flagged": !findings.is_empty(), "rules": rules, "severities": severities, "meta": row["meta"], "source": row["source"], "len": t.chars().count()})
            );
        }
    }
}
