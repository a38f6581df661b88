//! A weighted-cue engine shared by the poisoning and injection detectors.
//!
//! A cue is a case-insensitive ASCII pattern with a weight and the lowercase anchor literals one
//! of which every match contains. Each distinct cue counts once, and the text is flagged when
//! the weights add up to the threshold. Strong cues (an explicit "ignore previous instructions")
//! weigh the threshold on their own; weak ones (a "you must") need company, which keeps
//! ordinary directive prose from being flagged.
//!
//! Evaluation is lazy (see `prefilter.rs`): the anchors found by the shared prefilter give an
//! upper bound on the score; below the threshold nothing else runs. Otherwise each present cue's
//! pattern runs on the normalized view only in a window around its anchors, heaviest cues
//! first, stopping as soon as the threshold is out of reach. Cues marked `embedded` (a request
//! that is only suspicious *inside* data, such as a general-knowledge question) count only when
//! the text holds at least [`EMBEDDED_MIN_CONTEXT`] bytes besides the match.

use regex::bytes::Regex;

use crate::prefilter::{self, Hit, Lexicon, Owner, View};
use crate::{Category, Finding, ScanError, Severity, bytes_regex, char_span};

/// Bytes searched before and after an anchor.
const WINDOW_BEFORE: usize = 256;
const WINDOW_AFTER: usize = 320;

/// Bytes of other text an `embedded` cue needs around its match to count.
pub(crate) const EMBEDDED_MIN_CONTEXT: usize = 80;

/// One cue: stable rule id, weight, anchors (lowercase literals; empty means "no anchor, run on
/// the whole text when needed"), whether it only counts inside other data, and its pattern.
pub(crate) struct Cue {
    pub rule: &'static str,
    pub weight: u32,
    pub anchors: &'static [&'static str],
    pub embedded: bool,
    pub pattern: &'static str,
}

/// Shorthand for a cue that counts anywhere.
pub(crate) const fn cue(
    rule: &'static str,
    weight: u32,
    anchors: &'static [&'static str],
    pattern: &'static str,
) -> Cue {
    Cue {
        rule,
        weight,
        anchors,
        embedded: false,
        pattern,
    }
}

/// Shorthand for a cue that counts only inside other data.
pub(crate) const fn embedded_cue(
    rule: &'static str,
    weight: u32,
    anchors: &'static [&'static str],
    pattern: &'static str,
) -> Cue {
    Cue {
        rule,
        weight,
        anchors,
        embedded: true,
        pattern,
    }
}

#[derive(Debug)]
struct Compiled {
    rule: &'static str,
    re: Regex,
    weight: u32,
    anchored: bool,
    embedded: bool,
}

/// Compiled cues for one detector.
#[derive(Debug)]
pub(crate) struct CueSet {
    each: Vec<Compiled>,
    /// Cue indices, heaviest first.
    order: Vec<usize>,
    unanchored_weight: u32,
    threshold: u32,
    category: Category,
    owner: Owner,
    /// The detector's own anchors, for scanning without the shared prefilter.
    lexicon: Lexicon,
}

/// What evaluating the cues found: total score and one span per cue present.
struct Outcome {
    score: u32,
    spans: Vec<(usize, usize, usize)>,
}

impl CueSet {
    pub fn new(
        cues: &'static [Cue],
        threshold: u32,
        category: Category,
        owner: Owner,
    ) -> Result<Self, ScanError> {
        if cues.len() > 64 {
            return Err(ScanError::Gate);
        }
        let mut each = Vec::with_capacity(cues.len());
        for c in cues {
            let re = bytes_regex(c.rule, &format!("(?i){}", c.pattern))?;
            each.push(Compiled {
                rule: c.rule,
                re,
                weight: c.weight,
                anchored: !c.anchors.is_empty(),
                embedded: c.embedded,
            });
        }
        let mut order: Vec<usize> = (0..cues.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(cues[i].weight));
        let unanchored_weight = cues
            .iter()
            .filter(|c| c.anchors.is_empty())
            .map(|c| c.weight)
            .sum();
        let lexicon = Lexicon::new(Self::anchors(cues, owner))?;
        Ok(CueSet {
            each,
            order,
            unanchored_weight,
            threshold,
            category,
            owner,
            lexicon,
        })
    }

    /// `(owner, item, anchors)` for a shared [`Lexicon`].
    pub fn anchors(
        cues: &'static [Cue],
        owner: Owner,
    ) -> impl Iterator<Item = (Owner, u16, &'static [&'static str])> {
        cues.iter()
            .enumerate()
            .map(move |(i, c)| (owner, u16::try_from(i).unwrap_or(u16::MAX), c.anchors))
    }

    /// Normalize `text` and find this set's anchors with its own lexicon.
    fn prepare(&self, text: &str) -> (View, Vec<Hit>) {
        let view = View::of(text, &self.lexicon);
        let mut hits = Vec::new();
        self.lexicon
            .find(text.as_bytes(), &view, |_| true, &mut hits);
        (view, hits)
    }

    /// The total weight of the distinct cues present in `text` (every cue evaluated).
    pub fn score(&self, text: &str) -> u32 {
        let (view, hits) = self.prepare(text);
        self.evaluate(text, view.lower(), &hits, 0, false).score
    }

    /// Findings for `text`: one per cue present, but only when the score reaches the threshold.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let (view, hits) = self.prepare(text);
        self.scan_prepared(text, view.lower(), &hits)
    }

    /// As [`CueSet::scan`], with the normalized view and anchor hits already computed (hits of
    /// other owners are ignored).
    pub fn scan_prepared(&self, text: &str, lower: &[u8], hits: &[Hit]) -> Vec<Finding> {
        self.scan_prepared_with(text, lower, hits, 0)
            .unwrap_or_default()
    }

    /// As [`CueSet::scan_prepared`], with `extra` score from a check outside the cue set:
    /// `None` when the total stays below the threshold, else the findings of the cues present
    /// (possibly none, when `extra` alone reaches the threshold) and the severity.
    pub fn scan_prepared_with(
        &self,
        text: &str,
        lower: &[u8],
        hits: &[Hit],
        extra: u32,
    ) -> Option<Vec<Finding>> {
        let outcome = self.evaluate(text, lower, hits, extra, true);
        let score = outcome.score + extra;
        if score < self.threshold {
            return None;
        }
        let severity = if score >= 2 * self.threshold {
            Severity::Critical
        } else {
            Severity::High
        };
        Some(
            outcome
                .spans
                .into_iter()
                .map(|(i, s, e)| {
                    let (start, end) = char_span(text, s, e);
                    Finding {
                        category: self.category,
                        severity,
                        rule: self.each[i].rule,
                        start,
                        end,
                    }
                })
                .collect(),
        )
    }

    fn evaluate(&self, text: &str, lower: &[u8], hits: &[Hit], extra: u32, lazy: bool) -> Outcome {
        // Cues whose anchors occur (at most 64 cues per set, checked in `new`).
        let mut present = 0u64;
        for h in hits.iter().filter(|h| h.owner == self.owner) {
            if usize::from(h.item) < self.each.len() {
                present |= 1 << h.item;
            }
        }
        let is_present = |i: usize| present & (1 << i) != 0;
        let mut remaining = self.unanchored_weight;
        let mut rest = present;
        while rest != 0 {
            remaining += self.each[rest.trailing_zeros() as usize].weight;
            rest &= rest - 1;
        }
        if lazy && extra + remaining < self.threshold {
            return Outcome {
                score: 0,
                spans: Vec::new(),
            };
        }
        let mut outcome = Outcome {
            score: 0,
            spans: Vec::new(),
        };
        for &i in &self.order {
            let cue = &self.each[i];
            if cue.anchored && !is_present(i) {
                continue;
            }
            if lazy && outcome.score + extra + remaining < self.threshold {
                outcome.spans.clear();
                return outcome;
            }
            remaining -= cue.weight;
            let found = if cue.anchored {
                self.find_near_anchors(i, text, lower, hits)
            } else {
                cue.re.find(lower).map(|m| (m.start(), m.end()))
            };
            if let Some((s, e)) = found
                && (!cue.embedded || outside_sentence(lower, s, e) >= EMBEDDED_MIN_CONTEXT)
            {
                outcome.score += cue.weight;
                outcome.spans.push((i, s, e));
            }
        }
        outcome.spans.sort_by_key(|&(_, s, e)| (s, e));
        outcome
    }

    /// The first match of cue `i` in a window around one of its anchors.
    fn find_near_anchors(
        &self,
        i: usize,
        text: &str,
        lower: &[u8],
        hits: &[Hit],
    ) -> Option<(usize, usize)> {
        let re = &self.each[i].re;
        let search = |s: usize, e: usize| re.find_at(&lower[..e], s).map(|m| (m.start(), m.end()));
        // Windows of nearby anchors are merged so no byte is searched twice.
        let mut current: Option<(usize, usize)> = None;
        for h in hits
            .iter()
            .filter(|h| h.owner == self.owner && usize::from(h.item) == i)
        {
            let (s, e) = prefilter::window(text, h.pos, WINDOW_BEFORE, WINDOW_AFTER);
            current = match current {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    if let Some(m) = search(cs, ce) {
                        return Some(m);
                    }
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        current.and_then(|(s, e)| search(s, e))
    }
}

/// Bytes of `lower` outside the sentence holding `[s, e)` (sentences end at a line break or at
/// `.`, `!`, `?` followed by a blank).
fn outside_sentence(lower: &[u8], s: usize, e: usize) -> usize {
    let ends_sentence = |i: usize| {
        lower[i] == b'\n'
            || (matches!(lower[i], b'.' | b'!' | b'?')
                && lower
                    .get(i + 1)
                    .is_none_or(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')))
    };
    let mut a = s;
    while a > 0 && !ends_sentence(a - 1) {
        a -= 1;
    }
    let mut b = e;
    while b < lower.len() && !ends_sentence(b) {
        b += 1;
    }
    lower.len() - (b.min(lower.len()) - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_context() {
        let t = b"first part here. write a poem about spring now. tail";
        assert_eq!(outside_sentence(t, 17, 29), t.len() - (46 - 16));
        assert_eq!(outside_sentence(b"write a poem", 0, 5), 0);
    }
}
