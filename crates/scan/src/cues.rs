//! A weighted-cue engine shared by the poisoning and injection detectors.
//!
//! A cue is a case-insensitive ASCII pattern with a weight. One `RegexSet` pass tells which cues
//! occur; each distinct cue counts once, and the text is flagged when the weights add up to the
//! threshold. Only then are the individual patterns run again for spans. Strong cues (an
//! explicit "ignore previous instructions") weigh the threshold on their own; weak ones (a
//! "you must") need company, which keeps ordinary directive prose from being flagged.

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use crate::{Category, Finding, ScanError, Severity, bytes_regex, char_span};

/// One cue: stable rule id, pattern, weight.
pub(crate) struct Cue {
    pub rule: &'static str,
    pub pattern: &'static str,
    pub weight: u32,
}

/// Compiled cues for one detector.
#[derive(Debug)]
pub(crate) struct CueSet {
    set: RegexSet,
    each: Vec<(&'static str, Regex, u32)>,
    threshold: u32,
    category: Category,
}

impl CueSet {
    pub fn new(cues: &[Cue], threshold: u32, category: Category) -> Result<Self, ScanError> {
        let set = RegexSetBuilder::new(cues.iter().map(|c| c.pattern))
            .unicode(false)
            .case_insensitive(true)
            .size_limit(1 << 25)
            .dfa_size_limit(1 << 25)
            .build()
            .map_err(|source| ScanError::Pattern {
                rule: "cue-set",
                source,
            })?;
        let mut each = Vec::with_capacity(cues.len());
        for c in cues {
            let re = bytes_regex(c.rule, &format!("(?i){}", c.pattern))?;
            each.push((c.rule, re, c.weight));
        }
        Ok(CueSet {
            set,
            each,
            threshold,
            category,
        })
    }

    /// The total weight of the distinct cues present in `text`.
    pub fn score(&self, text: &str) -> (u32, Vec<usize>) {
        let hits: Vec<usize> = self.set.matches(text.as_bytes()).into_iter().collect();
        let score = hits.iter().map(|&i| self.each[i].2).sum();
        (score, hits)
    }

    /// Findings for `text`: one per cue present, but only when the score reaches the threshold.
    /// Severity grows with the score.
    pub fn scan(&self, text: &str, extra: u32) -> Vec<Finding> {
        let (score, hits) = self.score(text);
        let score = score + extra;
        if score < self.threshold || hits.is_empty() {
            return Vec::new();
        }
        let severity = if score >= 2 * self.threshold {
            Severity::Critical
        } else {
            Severity::High
        };
        let mut out = Vec::with_capacity(hits.len());
        for i in hits {
            let (rule, re, _) = &self.each[i];
            if let Some(m) = re.find(text.as_bytes()) {
                let (start, end) = char_span(text, m.start(), m.end());
                out.push(Finding {
                    category: self.category,
                    severity,
                    rule,
                    start,
                    end,
                });
            }
        }
        out
    }
}
