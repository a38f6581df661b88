//! Masking: replace each finding's span with a mask naming its category.

use crate::{Category, Finding};

/// The mask written over a span: `[REDACTED:<category>]`.
pub const REDACTION_MASK: &str = "[REDACTED:";

/// `text` with every finding's span replaced by `[REDACTED:<category>]`. Overlapping spans are
/// merged (the earliest finding names the mask); spans out of range or off char boundaries are
/// clamped, never panic.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut spans: Vec<(usize, usize, Category)> = findings
        .iter()
        .map(|f| {
            let (s, e) = crate::char_span(text, f.start, f.end);
            (s, e, f.category)
        })
        .filter(|(s, e, _)| s < e)
        .collect();
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < spans.len() {
        let (s, mut e, cat) = spans[i];
        i += 1;
        while i < spans.len() && spans[i].0 < e {
            e = e.max(spans[i].1);
            i += 1;
        }
        let s = s.max(pos);
        out.push_str(&text[pos..s]);
        out.push_str(REDACTION_MASK);
        out.push_str(cat.name());
        out.push(']');
        pos = e;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    fn f(category: Category, start: usize, end: usize) -> Finding {
        Finding {
            category,
            severity: Severity::High,
            rule: "t",
            start,
            end,
        }
    }

    #[test]
    fn masks_in_place() {
        let t = "mail a@b.co now";
        assert_eq!(
            redact(t, &[f(Category::Email, 5, 11)]),
            "mail [REDACTED:email] now"
        );
    }

    #[test]
    fn overlaps_merge_and_bad_spans_clamp() {
        let t = "héllo world";
        let out = redact(
            t,
            &[
                f(Category::Secret, 0, 3),
                f(Category::Email, 2, 6),
                f(Category::Phone, 50, 60),
            ],
        );
        assert_eq!(out, "[REDACTED:secret] world");
    }
}
