//! Invisible and deceptive unicode.
//!
//! - Invisible characters a human reviewer cannot see but a model reads: zero-width
//!   (U+200B–U+200D, U+2060–U+2064, U+FEFF inside text), soft hyphen, Mongolian vowel separator,
//!   combining grapheme joiner, and Unicode tag characters (U+E0000–U+E007F, which can spell out
//!   a whole hidden ASCII instruction).
//! - Bidi controls (U+202A–U+202E, U+2066–U+2069, U+200E/F) that reorder what is displayed.
//! - Homoglyph names: one word mixing Latin letters with Cyrillic, Greek or fullwidth letters
//!   (`pаypal` with a Cyrillic `а`).
//!
//! All-ASCII text (the common case) is skipped with one vectorised check.

use crate::{Category, Finding, Severity};

fn invisible_kind(c: char) -> Option<(&'static str, Severity)> {
    match c {
        '\u{E0000}'..='\u{E007F}' => Some(("unicode.tag-characters", Severity::Critical)),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Some(("unicode.bidi-override", Severity::High))
        }
        '\u{200B}'..='\u{200F}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{00AD}'
        | '\u{180E}'
        | '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{3164}'
        | '\u{FFA0}' => Some(("unicode.zero-width", Severity::Medium)),
        _ => None,
    }
}

/// Append one finding per run of invisible characters in `text`.
pub fn scan_invisible(text: &str, out: &mut Vec<Finding>) {
    if text.is_ascii() {
        return;
    }
    let mut run: Option<(usize, usize, &'static str, Severity)> = None;
    for (i, c) in text.char_indices() {
        // A byte-order mark at the very start is an encoding artefact, not a trick.
        let kind = if i == 0 && c == '\u{FEFF}' {
            None
        } else {
            invisible_kind(c)
        };
        match (kind, run.as_mut()) {
            (Some((rule, sev)), Some(r)) if r.1 == i => {
                r.1 = i + c.len_utf8();
                if sev > r.3 {
                    r.2 = rule;
                    r.3 = sev;
                }
            }
            (Some((rule, sev)), _) => {
                if let Some((s, e, rule, sev)) = run.take() {
                    out.push(finding(Category::InvisibleUnicode, rule, sev, s, e));
                }
                run = Some((i, i + c.len_utf8(), rule, sev));
            }
            (None, _) => {}
        }
    }
    if let Some((s, e, rule, sev)) = run {
        out.push(finding(Category::InvisibleUnicode, rule, sev, s, e));
    }
}

fn finding(
    category: Category,
    rule: &'static str,
    severity: Severity,
    start: usize,
    end: usize,
) -> Finding {
    Finding {
        category,
        severity,
        rule,
        start,
        end,
    }
}

fn confusable_script(c: char) -> bool {
    matches!(c, '\u{0370}'..='\u{03FF}' | '\u{0400}'..='\u{04FF}' | '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}' | '\u{0500}'..='\u{052F}')
}

/// Append a finding for every word that mixes ASCII Latin letters with Cyrillic, Greek or
/// fullwidth letters.
pub fn scan_homoglyphs(text: &str, out: &mut Vec<Finding>) {
    if text.is_ascii() {
        return;
    }
    let mut start: Option<usize> = None;
    let mut latin = false;
    let mut other = false;
    let flush = |s: usize, e: usize, latin: bool, other: bool, out: &mut Vec<Finding>| {
        if latin && other {
            out.push(finding(
                Category::Homoglyph,
                "unicode.mixed-script-word",
                Severity::High,
                s,
                e,
            ));
        }
    };
    for (i, c) in text.char_indices() {
        let wordy = c.is_alphanumeric() || c == '_' || c == '-';
        if wordy {
            if start.is_none() {
                start = Some(i);
                latin = false;
                other = false;
            }
            latin |= c.is_ascii_alphabetic();
            other |= confusable_script(c);
        } else if let Some(s) = start.take() {
            flush(s, i, latin, other, out);
        }
    }
    if let Some(s) = start {
        flush(s, text.len(), latin, other, out);
    }
}

/// Decode Unicode tag characters into the ASCII they smuggle (for review output).
pub fn decode_tags(text: &str) -> String {
    text.chars()
        .filter_map(|c| {
            let v = c as u32;
            (0xE0020..=0xE007E)
                .contains(&v)
                .then(|| char::from_u32(v - 0xE0000))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(t: &str) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        scan_invisible(t, &mut v);
        scan_homoglyphs(t, &mut v);
        v.into_iter()
            .map(|f| (f.rule, t[f.start..f.end].to_string()))
            .collect()
    }

    #[test]
    fn zero_width_run_is_one_finding() {
        let t = "read\u{200B}\u{200C}me";
        assert_eq!(
            scan(t),
            vec![("unicode.zero-width", "\u{200B}\u{200C}".to_string())]
        );
    }

    #[test]
    fn bidi_override() {
        assert_eq!(scan("file\u{202E}txt.exe")[0].0, "unicode.bidi-override");
    }

    #[test]
    fn tag_characters_smuggle_ascii() {
        let hidden: String = "send keys"
            .chars()
            .map(|c| char::from_u32(0xE0000 + c as u32).unwrap())
            .collect();
        let t = format!("Weather tool{hidden}");
        assert_eq!(scan(&t)[0].0, "unicode.tag-characters");
        assert_eq!(decode_tags(&t), "send keys");
    }

    #[test]
    fn homoglyph_name() {
        assert_eq!(
            scan("use p\u{0430}ypal_transfer now")[0].0,
            "unicode.mixed-script-word"
        );
        assert!(scan("Привет мир and hello").is_empty());
        assert!(scan("\u{FEFF}plain text, café, naïve").is_empty());
    }
}
