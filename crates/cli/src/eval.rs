//! `portcullis eval [FILE...] [--json]`: score the content scanners on labelled JSONL files
//! (the schema of `../shared/eval/README.md`), file by file and kind by kind, never pooled.
//!
//! Each row goes to the scanner that would see it in the gateway: `tool_description` rows to
//! the poisoning scanner (the whole tool when the row carries one in `tool` or `meta.tool`),
//! `tool_result` rows to the injection scanner, `argument` rows to the PII scanner in a file
//! labelled `pii`, to the secret scanner in a file labelled `secret`, and to the injection
//! scanner otherwise. The secret scanner is also run over the benign rows of attack/benign
//! files ("ordinary text"). Exit 0 after measuring, 2 when an input cannot be read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_scan::{Category, Scanner, json::scan_tool};
use serde_json::{Value, json};

/// Breakdown keys looked up at the top level of a row, then in `meta`.
const BREAKDOWNS: &[&str] = &[
    "source",
    "attack_category",
    "attack",
    "suite",
    "position",
    "rule_id",
    "server",
];

/// PII span types the scanner targets, and the category that answers for each.
const PII_TARGETS: &[(&str, Category)] = &[
    ("EMAIL_ADDRESS", Category::Email),
    ("PHONE_NUMBER", Category::Phone),
    ("US_SSN", Category::UsSsn),
    ("CREDIT_CARD", Category::PaymentCard),
    ("IBAN_CODE", Category::Iban),
    ("IP_ADDRESS", Category::IpAddress),
    ("DATE_OF_BIRTH", Category::DateOfBirth),
    ("PASSPORT", Category::Passport),
];

fn gold_type(c: Category) -> Option<&'static str> {
    match c {
        Category::DateOfBirth => Some("DATE_TIME"),
        _ => PII_TARGETS.iter().find(|(_, k)| *k == c).map(|(t, _)| *t),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileFamily {
    Injection,
    Pii,
    Secrets,
}

#[derive(Default)]
struct Counts {
    positives: u64,
    detected: u64,
    benign: u64,
    false_positives: u64,
}

impl Counts {
    fn add(&mut self, positive: bool, benign: bool, flagged: bool) {
        if positive {
            self.positives += 1;
            self.detected += u64::from(flagged);
        }
        if benign {
            self.benign += 1;
            self.false_positives += u64::from(flagged);
        }
    }
    fn json(&self) -> Value {
        json!({"positives": self.positives, "detected": self.detected, "benign": self.benign, "false_positives": self.false_positives})
    }
}

#[derive(Default)]
struct SpanType {
    gold: u64,
    gold_found: u64,
    reported: u64,
    reported_correct: u64,
}

#[derive(Default)]
struct KindReport {
    counts: Counts,
    length_matched: Counts,
    breakdown: BTreeMap<String, BTreeMap<String, Counts>>,
    spans: BTreeMap<String, SpanType>,
    span_rows: u64,
    secret_flags_on_benign: u64,
    secret_flag_ids: Vec<String>,
}

/// Run the command.
pub fn run(files: &[PathBuf], as_json: bool) -> ExitCode {
    let files = if files.is_empty() {
        match default_files() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("portcullis eval: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        files.to_vec()
    };
    let scanner = match Scanner::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portcullis eval: {e}");
            return ExitCode::from(2);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("portcullis eval: cannot read {}: {e}", file.display());
                status = ExitCode::from(2);
                continue;
            }
        };
        let (reports, skipped) = score_file(&scanner, &text);
        if skipped > 0 {
            eprintln!(
                "portcullis eval: {}: {skipped} line(s) are not JSON objects with text/label/kind; skipped",
                file.display()
            );
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        for (kind, r) in &reports {
            if as_json {
                println!("{}", report_json(&name, kind, r));
            } else {
                print_report(&name, kind, r);
            }
        }
    }
    status
}

fn default_files() -> Result<Vec<PathBuf>, String> {
    let dir = if let Ok(d) = std::env::var("PORTCULLIS_EVAL_DIR") {
        PathBuf::from(d)
    } else {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            candidates.extend(cwd.ancestors().map(|a| a.join("../shared/eval")));
        }
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval"));
        candidates
            .into_iter()
            .find(|c| c.is_dir())
            .ok_or("no FILE given and no ../shared/eval found; set PORTCULLIS_EVAL_DIR")?
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

fn field<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
    row.get(key)
        .or_else(|| row.get("meta").and_then(|m| m.get(key)))
}

fn score_file(scanner: &Scanner, text: &str) -> (BTreeMap<String, KindReport>, usize) {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v)
                if v.get("text").is_some_and(Value::is_string)
                    && v.get("label").is_some_and(Value::is_string) =>
            {
                rows.push(v)
            }
            _ => skipped += 1,
        }
    }
    let label = |r: &Value| r["label"].as_str().unwrap_or("").to_string();
    let family = if rows.iter().any(|r| label(r) == "pii") {
        FileFamily::Pii
    } else if rows.iter().any(|r| label(r) == "secret") {
        FileFamily::Secrets
    } else {
        FileFamily::Injection
    };
    let mut reports: BTreeMap<String, KindReport> = BTreeMap::new();
    for row in &rows {
        let text = row["text"].as_str().unwrap_or("");
        let kind = row
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let lab = label(row);
        let positive = matches!(lab.as_str(), "attack" | "pii" | "secret");
        let benign = lab == "benign";
        let report = reports.entry(kind.clone()).or_default();
        let mut pii_findings = Vec::new();
        let flagged = match (kind.as_str(), family) {
            (_, FileFamily::Pii) => {
                pii_findings = scanner.pii(text);
                !pii_findings.is_empty()
            }
            (_, FileFamily::Secrets) => !scanner.secrets(text).is_empty(),
            ("tool_description", _) => match field(row, "tool").filter(|t| t.is_object()) {
                Some(tool) => !scan_tool(scanner, tool).is_empty(),
                None => !scanner.poisoning(text).is_empty(),
            },
            _ => !scanner.injection(text).is_empty(),
        };
        report.counts.add(positive, benign, flagged);
        if kind == "tool_description" && text.chars().count() >= 200 {
            report.length_matched.add(positive, benign, flagged);
        }
        for key in BREAKDOWNS {
            if let Some(v) = field(row, key).and_then(Value::as_str) {
                report
                    .breakdown
                    .entry((*key).to_string())
                    .or_default()
                    .entry(v.to_string())
                    .or_default()
                    .add(positive, benign, flagged);
            }
        }
        if family == FileFamily::Injection && benign && !scanner.secrets(text).is_empty() {
            report.secret_flags_on_benign += 1;
            if let Some(id) = row.get("id").and_then(Value::as_str) {
                report.secret_flag_ids.push(id.to_string());
            }
        }
        if family == FileFamily::Pii {
            score_spans(report, row, text, &pii_findings);
        }
    }
    (reports, skipped)
}

fn score_spans(
    report: &mut KindReport,
    row: &Value,
    text: &str,
    findings: &[portcullis_scan::Finding],
) {
    report.span_rows += 1;
    // Gold offsets are code points; map them to bytes.
    let mut cp_to_byte: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    cp_to_byte.push(text.len());
    let gold: Vec<(usize, usize, String)> = row
        .get("spans")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let st = usize::try_from(s.get("start")?.as_u64()?).ok()?;
                    let en = usize::try_from(s.get("end")?.as_u64()?).ok()?;
                    let ty = s.get("type")?.as_str()?.to_string();
                    Some((*cp_to_byte.get(st)?, *cp_to_byte.get(en)?, ty))
                })
                .collect()
        })
        .unwrap_or_default();
    let reported: Vec<(usize, usize, &'static str)> = findings
        .iter()
        .filter_map(|f| gold_type(f.category).map(|t| (f.start, f.end, t)))
        .collect();
    for (gs, ge, ty) in &gold {
        let e = report.spans.entry(ty.clone()).or_default();
        e.gold += 1;
        if reported
            .iter()
            .any(|(s, en, t)| t == ty && s < ge && gs < en)
        {
            e.gold_found += 1;
        }
    }
    for (s, en, t) in &reported {
        let e = report.spans.entry((*t).to_string()).or_default();
        e.reported += 1;
        if gold.iter().any(|(gs, ge, ty)| ty == t && s < ge && gs < en) {
            e.reported_correct += 1;
        }
    }
}

fn targeted(ty: &str) -> bool {
    PII_TARGETS.iter().any(|(t, _)| *t == ty) || ty == "DATE_TIME"
}

/// Pooled span figures over the targeted types (DATE_TIME counts only as reported, since the
/// scanner targets dates of birth, not every date).
fn span_totals(r: &KindReport) -> (u64, u64, u64, u64) {
    let (mut gold, mut found, mut rep, mut ok) = (0, 0, 0, 0);
    for (ty, s) in &r.spans {
        if targeted(ty) && ty != "DATE_TIME" {
            gold += s.gold;
            found += s.gold_found;
        }
        rep += s.reported;
        ok += s.reported_correct;
    }
    (gold, found, rep, ok)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn f_beta(p: f64, r: f64, beta: f64) -> f64 {
    let b2 = beta * beta;
    if p + r == 0.0 {
        0.0
    } else {
        (1.0 + b2) * p * r / (b2 * p + r)
    }
}

/// 95% Wilson score interval for k successes out of n.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let z = 1.959_964f64;
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) / n_f) + z * z / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn rate(k: u64, n: u64) -> String {
    if n == 0 {
        return "n/a (0 rows)".to_string();
    }
    let (lo, hi) = wilson(k, n);
    format!(
        "{k}/{n} = {:.1}% [95% CI {:.1}–{:.1}%]",
        100.0 * ratio(k, n),
        100.0 * lo,
        100.0 * hi
    )
}

fn print_report(file: &str, kind: &str, r: &KindReport) {
    println!("== {file} · {kind}");
    println!(
        "  detection rate:      {}",
        rate(r.counts.detected, r.counts.positives)
    );
    println!(
        "  false-positive rate: {}",
        rate(r.counts.false_positives, r.counts.benign)
    );
    if kind == "tool_description" {
        println!(
            "  length-matched (≥200 chars): detection {}; FPR {}",
            rate(r.length_matched.detected, r.length_matched.positives),
            rate(r.length_matched.false_positives, r.length_matched.benign)
        );
    }
    for (key, values) in &r.breakdown {
        if values.len() < 2 && key == "source" {
            continue;
        }
        println!("  by {key}:");
        for (v, c) in values {
            let mut parts = Vec::new();
            if c.positives > 0 {
                parts.push(format!("detected {}/{}", c.detected, c.positives));
            }
            if c.benign > 0 {
                parts.push(format!("FP {}/{}", c.false_positives, c.benign));
            }
            println!("    {v}: {}", parts.join(", "));
        }
    }
    if !r.spans.is_empty() {
        println!("  spans by type (precision = correct/reported, recall = found/gold):");
        for (ty, s) in &r.spans {
            let note = if targeted(ty) { "" } else { "  (not targeted)" };
            println!(
                "    {ty}: precision {}/{} recall {}/{}{note}",
                s.reported_correct, s.reported, s.gold_found, s.gold
            );
        }
        let (gold, found, rep, ok) = span_totals(r);
        let (p, rc) = (ratio(ok, rep), ratio(found, gold));
        println!(
            "  targeted types: precision {ok}/{rep} = {:.3}, recall {found}/{gold} = {:.3}, F2 = {:.3}",
            p,
            rc,
            f_beta(p, rc, 2.0)
        );
    }
    if r.secret_flags_on_benign > 0 || r.counts.benign > 0 && r.spans.is_empty() {
        println!(
            "  secret scanner on benign rows (ordinary text): {}/{} flagged {}",
            r.secret_flags_on_benign,
            r.counts.benign,
            if r.secret_flag_ids.is_empty() {
                String::new()
            } else {
                format!("{:?}", r.secret_flag_ids)
            }
        );
    }
}

fn report_json(file: &str, kind: &str, r: &KindReport) -> Value {
    let mut obj = json!({
        "file": file,
        "kind": kind,
        "positives": r.counts.positives,
        "detected": r.counts.detected,
        "benign": r.counts.benign,
        "false_positives": r.counts.false_positives,
        "secret_flags_on_benign": r.secret_flags_on_benign,
    });
    if kind == "tool_description" {
        obj["length_matched"] = r.length_matched.json();
    }
    let breakdown: serde_json::Map<String, Value> = r
        .breakdown
        .iter()
        .map(|(k, vs)| {
            (
                k.clone(),
                Value::Object(vs.iter().map(|(v, c)| (v.clone(), c.json())).collect()),
            )
        })
        .collect();
    obj["breakdown"] = Value::Object(breakdown);
    if !r.spans.is_empty() {
        let (gold, found, rep, ok) = span_totals(r);
        let (p, rc) = (ratio(ok, rep), ratio(found, gold));
        obj["spans_gold"] = json!(gold);
        obj["spans_gold_found"] = json!(found);
        obj["spans_reported"] = json!(rep);
        obj["spans_reported_correct"] = json!(ok);
        obj["span_precision"] = json!(p);
        obj["span_recall"] = json!(rc);
        obj["f2"] = json!(f_beta(p, rc, 2.0));
        obj["spans_by_type"] = Value::Object(
            r.spans
                .iter()
                .map(|(t, s)| {
                    (t.clone(), json!({"gold": s.gold, "gold_found": s.gold_found, "reported": s.reported, "reported_correct": s.reported_correct, "targeted": targeted(t)}))
                })
                .collect(),
        );
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_bounds() {
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.404).abs() < 0.01 && (hi - 0.596).abs() < 0.01);
        assert_eq!(wilson(0, 0), (0.0, 0.0));
    }

    #[test]
    fn f2_weights_recall() {
        assert!(f_beta(0.5, 1.0, 2.0) > f_beta(1.0, 0.5, 2.0));
    }
}
