//! Personal data: emails, phone numbers, US SSNs, payment cards (Luhn), IBANs (mod-97), IP
//! addresses, dates of birth and passport-like numbers, each its own [`Category`].
//!
//! Numbers are found in one pass: a "numeric run" pattern (digit groups joined by one space,
//! dot, dash or parentheses, with an optional leading `+`) is matched, and each run is
//! classified by structure and checksum. A byte scan looks for runs only inside stretches of
//! number characters holding enough digits to matter (7, or 4 with 3 dots for an IPv4
//! address); emails only around `@`. Both of these patterns are matched by hand-written code
//! that gives exactly the regex's matches ([`matchers`]), since they run on most tool results.
//! IBANs are tried only where two letters meet two digits, and the date-of-birth and passport
//! patterns only in windows after their keywords (found by the shared prefilter). Checksums
//! (Luhn, mod-97), octet ranges and SSN validity rules keep random identifiers out.
//! Unseparated digit runs count as phone numbers only after a phone keyword or a `+`.

mod matchers;
mod stretches;

use regex::bytes::Regex;

use crate::bytemask::{ChunkMasks, TextMasks};
use crate::prefilter::{self, Hit, Lexicon, Owner, View};

use crate::{Category, Finding, ScanError, Severity, bytes_regex, char_span};

/// Compiled PII patterns.
#[derive(Debug)]
pub struct PiiDetector {
    /// The IBAN pattern anchored at the start, for candidate positions.
    iban_at: Regex,
    /// The keyword anchors, for scanning without the shared prefilter.
    lexicon: Lexicon,
    ipv6: Regex,
    dob: Regex,
    passport: Regex,
    phone_keyword: Regex,
}

impl PiiDetector {
    /// Compile the patterns.
    pub fn new() -> Result<Self, ScanError> {
        Ok(PiiDetector {
            iban_at: bytes_regex(
                "pii.iban",
                r"^(?:\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b)",
            )?,
            lexicon: Lexicon::new(Self::anchors())?,
            ipv6: bytes_regex(
                "pii.ipv6",
                r"(?i)(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|(?:[0-9a-f]{1,4}:){1,6}:(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4}",
            )?,
            dob: bytes_regex(
                "pii.dob",
                r"(?i)\b(?:born(?:\s+on)?|d\.?o\.?b\.?|date\s+of\s+birth|birth\s*date|birthday)\s*[:\-]?\s*(?:is\s+|was\s+|of\s+)?(\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4}|(?:\d{1,2}(?:st|nd|rd|th)?\s+)?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?:\d{1,2}(?:st|nd|rd|th)?,?\s+)?\d{4})",
            )?,
            passport: bytes_regex(
                "pii.passport",
                r"(?i)\bpassport(?:\s+(?:no|number|num|#|id))?\.?\s*(?:is\s+)?[:#]?\s*([A-Z0-9]{6,9})\b",
            )?,
            phone_keyword: bytes_regex(
                "pii.phone-keyword",
                r"(?i)(?:phone|tel|mobile|cell|fax|call|whatsapp|contact|sms|text)\b[^\n]{0,24}$",
            )?,
        })
    }

    /// Every PII finding in `text`.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let view = View::of(text, &self.lexicon);
        let mut hits = Vec::new();
        self.lexicon
            .find(text.as_bytes(), &view, |_| true, &mut hits);
        self.scan_prepared(text, &hits, view.masks())
    }

    /// Keywords of the date-of-birth and passport patterns and the `@` of emails, for the
    /// shared prefilter.
    pub(crate) fn anchors() -> impl Iterator<Item = (Owner, u16, &'static [&'static str])> {
        [
            (Owner::Pii, DOB_ITEM, DOB_KEYWORDS),
            (Owner::Pii, PASSPORT_ITEM, &["passport"][..]),
            (Owner::Pii, EMAIL_ITEM, &["@"][..]),
        ]
        .into_iter()
    }

    /// As [`PiiDetector::scan`], with keyword hits and class masks from the shared prefilter.
    pub(crate) fn scan_prepared(
        &self,
        text: &str,
        hits: &[Hit],
        masks: &TextMasks,
    ) -> Vec<Finding> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        // Emails: the pattern around each `@` (a local part is at most 64 bytes).
        let mut done_to = 0;
        let ats = hits
            .iter()
            .filter(|h| h.owner == Owner::Pii && h.item == EMAIL_ITEM)
            .map(|h| h.pos);
        for at in ats {
            if at < done_to {
                continue;
            }
            let (s, e) = prefilter::window(text, at, 65, 260);
            let mut from = s;
            while let Some((ms, me)) = matchers::email_find(&bytes[..e], from) {
                if ms > at {
                    break;
                }
                push(
                    &mut out,
                    text,
                    Category::Email,
                    "pii.email",
                    Severity::Medium,
                    ms,
                    me,
                );
                done_to = me;
                from = me.max(from + 1);
                if me > at {
                    break;
                }
            }
        }
        // IBAN candidates are rare in ordinary text: no allocation unless there is one.
        let mut iban_candidates: Vec<usize> = Vec::new();
        self.numeric_runs(text, masks, &mut out, &mut |c| iban_candidates.push(c));
        let mut iban_done = 0;
        let mut try_iban = |c: usize, out: &mut Vec<Finding>| {
            if c < iban_done {
                return;
            }
            let Some(m) = self.iban_at.find(&bytes[c..]) else {
                return;
            };
            let (ms, me) = (c + m.start(), c + m.end());
            iban_done = me;
            if iban_valid(&bytes[ms..me]) {
                push(
                    out,
                    text,
                    Category::Iban,
                    "pii.iban",
                    Severity::High,
                    ms,
                    me,
                );
            }
        };
        for &c in &iban_candidates {
            try_iban(c, &mut out);
        }
        let mut ipv6_done = 0;
        for (s, e) in ipv6_windows(bytes, masks) {
            let mut from = s.max(ipv6_done);
            while let Some(m) = self.ipv6.find_at(&bytes[..e], from) {
                let cand = &text[m.start()..m.end()];
                if cand.parse::<std::net::Ipv6Addr>().is_ok() {
                    push(
                        &mut out,
                        text,
                        Category::IpAddress,
                        "pii.ipv6",
                        Severity::Low,
                        m.start(),
                        m.end(),
                    );
                }
                from = m.end().max(from + 1);
            }
            ipv6_done = e;
        }
        let keyword_windows = |item: u16| {
            hits.iter()
                .filter(move |h| h.owner == Owner::Pii && h.item == item)
                .map(|h| prefilter::window(text, h.pos, 0, 80))
        };
        let mut done_to = 0;
        for (s, e) in keyword_windows(DOB_ITEM) {
            if let Some(c) = self.dob.captures_at(&bytes[..e], s.max(done_to))
                && let Some(g) = c.get(1)
            {
                push(
                    &mut out,
                    text,
                    Category::DateOfBirth,
                    "pii.date-of-birth",
                    Severity::Medium,
                    g.start(),
                    g.end(),
                );
                done_to = g.end();
            }
        }
        let mut done_to = 0;
        for (s, e) in keyword_windows(PASSPORT_ITEM) {
            if let Some(c) = self.passport.captures_at(&bytes[..e], s.max(done_to))
                && let Some(g) = c.get(1)
                && g.as_bytes().iter().any(u8::is_ascii_digit)
            {
                push(
                    &mut out,
                    text,
                    Category::Passport,
                    "pii.passport",
                    Severity::High,
                    g.start(),
                    g.end(),
                );
                done_to = g.end();
            }
        }
        dedup_overlaps(&mut out);
        out
    }

    /// The numeric-run matches, classified, exactly as `find_iter` of the pattern over the
    /// whole text would give them, but looked for only inside stretches of number characters
    /// (every match lies within one) that hold enough digits for `classify_numeric` to keep
    /// anything; IBAN candidates go to `iban`.
    fn numeric_runs(
        &self,
        text: &str,
        masks: &TextMasks,
        out: &mut Vec<Finding>,
        iban: &mut impl FnMut(usize),
    ) {
        let bytes = text.as_bytes();
        stretches::scan(
            bytes,
            masks,
            |s, e| {
                let mut pos = s;
                while let Some((ms, me)) = matchers::numeric_find(bytes, pos, e) {
                    self.classify_numeric(text, ms, me, out);
                    pos = me.max(pos + 1);
                }
            },
            iban,
        );
    }

    fn classify_numeric(&self, text: &str, start: usize, end: usize, out: &mut Vec<Finding>) {
        let bytes = text.as_bytes();
        // A run glued to letters on either side is an identifier, not a number.
        if start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
            return;
        }
        if end < bytes.len() && (bytes[end].is_ascii_alphabetic() || bytes[end] == b'_') {
            return;
        }
        let run = &bytes[start..end];
        let mut end = end;
        // Trailing sentence punctuation is not part of the number.
        let mut run = run;
        while let Some((&last, rest)) = run.split_last() {
            if last == b'.' || last == b'-' || last == b' ' || last == b'(' {
                run = rest;
                end -= 1;
            } else {
                break;
            }
        }
        // A date (or a timestamp) is none of the numbers below: no IPv4 address (four parts
        // split by dots only), SSN (3-2-4 digits, or split at spaces) or card number (12 or
        // more digits, split uniformly by spaces or dashes) has three date-shaped parts
        // before its first space. Looked at first, as dates are the most common runs.
        if is_date_like(run) {
            return;
        }
        // One pass for the digits, their groups and what separates them.
        let stats = RunStats::of(run);
        let n = stats.digit_count;
        let ipv4 = is_ipv4(run);
        if n < 7 && !ipv4 {
            return;
        }
        let groups = stats.groups;
        let plus = run.first() == Some(&b'+');

        if ipv4 {
            push(
                out,
                text,
                Category::IpAddress,
                "pii.ipv4",
                Severity::Low,
                start,
                end,
            );
            return;
        }
        if is_ssn(run) {
            push(
                out,
                text,
                Category::UsSsn,
                "pii.us-ssn",
                Severity::High,
                start,
                end,
            );
            return;
        }
        let uniform_seps = stats.seps_all_space || stats.seps_all_dash;
        let digits = &stats.digits[..n.min(19)];
        if !plus && (12..=19).contains(&n) && uniform_seps && card_prefix(digits) && luhn(digits) {
            push(
                out,
                text,
                Category::PaymentCard,
                "pii.payment-card",
                Severity::High,
                start,
                end,
            );
            return;
        }
        // A phone keyword in the 40 bytes before: looked for only when nothing else decides.
        let keyword = || {
            let from = start.saturating_sub(40);
            let from = char_span(text, from, from).0;
            self.phone_keyword.is_match(&bytes[from..start])
        };
        let structured =
            groups >= 2 && !stats.any_dot && n <= 15 && (groups != 2 || run.contains(&b'('));
        let dotted = groups >= 3 && stats.seps_all_dot && n <= 12;
        let phone = (7..=15).contains(&n)
            && (plus
                || structured
                || dotted
                || (groups == 2 && n >= 7 && stats.seps_all_space_or_dash && run.len() <= 9)
                || keyword());
        if phone {
            push(
                out,
                text,
                Category::Phone,
                "pii.phone",
                Severity::Medium,
                start,
                end,
            );
        }
    }
}

/// What `classify_numeric` asks of a run; "separators" are its non-digit bytes (a statement
/// about all of them holds when there are none).
struct RunStats {
    digit_count: usize,
    /// The first 19 digits.
    digits: [u8; 19],
    /// Maximal runs of digits.
    groups: usize,
    any_dot: bool,
    seps_all_space: bool,
    seps_all_dash: bool,
    seps_all_dot: bool,
    seps_all_space_or_dash: bool,
}

impl RunStats {
    fn of(run: &[u8]) -> Self {
        let mut st = RunStats {
            digit_count: 0,
            digits: [0; 19],
            groups: 0,
            any_dot: false,
            seps_all_space: true,
            seps_all_dash: true,
            seps_all_dot: true,
            seps_all_space_or_dash: true,
        };
        let mut in_group = false;
        for &b in run {
            if b.is_ascii_digit() {
                if let Some(slot) = st.digits.get_mut(st.digit_count) {
                    *slot = b;
                }
                st.digit_count += 1;
                st.groups += usize::from(!in_group);
                in_group = true;
            } else {
                in_group = false;
                st.any_dot |= b == b'.';
                st.seps_all_space &= b == b' ';
                st.seps_all_dash &= b == b'-';
                st.seps_all_dot &= b == b'.';
                st.seps_all_space_or_dash &= b == b' ' || b == b'-';
            }
        }
        st
    }
}

/// Anchors of the date-of-birth pattern (see `prefilter.rs`): `born`, `birth…`, `dob`. The
/// dotted `d.o.b.` has no word of two letters to anchor on and is not looked for.
const DOB_KEYWORDS: &[&str] = &["born", "birth", "dob"];

/// Item ids of the keyword patterns in the shared prefilter.
const DOB_ITEM: u16 = 0;
const PASSPORT_ITEM: u16 = 1;
/// Every `@` (the shared prefilter finds it anyway, for the URL credentials rule).
const EMAIL_ITEM: u16 = 2;

/// Windows that may hold an IPv6 address: around a `::`, or a chain of at least seven
/// colons joining groups of one to four hex digits (`masks` are those of `bytes`).
fn ipv6_windows<'a>(
    bytes: &'a [u8],
    masks: &'a TextMasks,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    // Only a colon followed by a colon or a letter or digit can start a `::` or a chain (the
    // next chunk's first byte is not known here: a colon at the end counts).
    let starts = |m: &ChunkMasks| m.colon & ((m.colon | m.letter | m.digit) >> 1 | 1 << 63);
    let (mut k, mut bits) = (0, masks.chunks.first().map_or(0, starts));
    let mut colons = std::iter::from_fn(move || {
        while bits == 0 {
            k += 1;
            bits = starts(masks.chunks.get(k)?);
        }
        let j = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(64 * k + j)
    });
    let mut done_to = 0;
    std::iter::from_fn(move || {
        for c in colons.by_ref() {
            if c < done_to {
                continue;
            }
            let double = bytes.get(c + 1) == Some(&b':');
            let mut chain = 1;
            let mut j = c;
            while chain < 7 {
                let group = bytes[j + 1..]
                    .iter()
                    .take(5)
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
                if (1..=4).contains(&group) && bytes.get(j + 1 + group) == Some(&b':') {
                    j += 1 + group;
                    chain += 1;
                } else {
                    break;
                }
            }
            if double || chain >= 7 {
                let s = c.saturating_sub(40);
                let e = (j + 48).min(bytes.len());
                done_to = e;
                return Some((s, e));
            }
        }
        None
    })
}

fn push(
    out: &mut Vec<Finding>,
    text: &str,
    category: Category,
    rule: &'static str,
    severity: Severity,
    start: usize,
    end: usize,
) {
    let (start, end) = char_span(text, start, end);
    if start < end {
        out.push(Finding {
            category,
            severity,
            rule,
            start,
            end,
        });
    }
}

/// Drop findings contained in an earlier, longer one of another category (an IBAN's digits
/// are not also a phone number).
fn dedup_overlaps(out: &mut Vec<Finding>) {
    if out.len() < 2 {
        return;
    }
    out.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut last: Option<(usize, usize)> = None;
    out.retain(|f| {
        if let Some((s, e)) = last
            && f.start >= s
            && f.end <= e
        {
            return false;
        }
        last = Some((f.start, f.end));
        true
    });
}

/// Luhn checksum over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Issuer prefixes of the major card networks (Visa 4, Mastercard 51–55 and 2221–2720, Amex
/// 34/37, Diners 30/36/38, Discover/UnionPay/Maestro 6, JCB 35 and 1800/2131).
fn card_prefix(d: &[u8]) -> bool {
    match d.first() {
        Some(b'3' | b'4' | b'5' | b'6') => true,
        Some(b'2') => {
            d.starts_with(b"2131")
                || (d.len() >= 4 && (b"2221"[..] <= d[..4] && d[..4] <= b"2720"[..]))
        }
        Some(b'1') => d.starts_with(b"1800"),
        _ => false,
    }
}

fn is_ipv4(run: &[u8]) -> bool {
    let mut parts = 0;
    for p in run.split(|&b| b == b'.') {
        parts += 1;
        let octet = parts <= 4
            && !p.is_empty()
            && p.len() <= 3
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u16, |v, &d| v * 10 + u16::from(d - b'0')) <= 255;
        if !octet {
            return false;
        }
    }
    parts == 4
}

fn is_ssn(run: &[u8]) -> bool {
    if run.len() != 11 {
        return false;
    }
    let parts = [&run[..3], &run[4..6], &run[7..]];
    if !matches!(run[3], b'-' | b' ') || !parts.iter().all(|p| p.iter().all(u8::is_ascii_digit)) {
        return false;
    }
    let sep_ok = run[3] == run[6];
    let area = parts[0];
    sep_ok
        && area != b"000"
        && area != b"666"
        && area[0] != b'9'
        && parts[1] != b"00"
        && parts[2] != b"0000"
}

fn is_date_like(run: &[u8]) -> bool {
    // A timestamp is a date followed by a time: judge the part before the first space.
    let head = run.split(|&b| b == b' ').next().unwrap_or(run);
    let mut lens = [0usize; 3];
    let mut parts = 0;
    for part in head.split(|&b| b == b'-' || b == b'/' || b == b'.') {
        if parts == 3 || part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        lens[parts] = part.len();
        parts += 1;
    }
    parts == 3
        && matches!(
            lens,
            [4, 1..=2, 1..=2] | [1..=2, 1..=2, 4] | [1..=2, 1..=2, 2]
        )
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// ISO 13616 check: known country, its length, and the mod-97 remainder 1. Spaces are ignored,
/// letters of any case accepted.
pub fn iban_valid(raw: &[u8]) -> bool {
    let s: Vec<u8> = raw
        .iter()
        .filter(|b| **b != b' ')
        .map(u8::to_ascii_uppercase)
        .collect();
    if s.len() < 15 || s.len() > 34 || !s.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| c[..] == s[..2]) else {
        return false;
    };
    if s.len() != len || !s[2].is_ascii_digit() || !s[3].is_ascii_digit() {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in s[4..].iter().chain(&s[..4]) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            let v = u32::from(b - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_not_phone_numbers() {
        assert!(cats("2024-05-14 11:02:09 INFO request served").is_empty());
        assert!(cats("at 2024/05/14 09:30 the job ran").is_empty());
        assert_eq!(
            cats("call +1 415 555 0132 after 2024-05-14"),
            vec![(Category::Phone, "+1 415 555 0132".into())]
        );
    }

    fn cats(text: &str) -> Vec<(Category, String)> {
        let d = PiiDetector::new().unwrap();
        d.scan(text)
            .into_iter()
            .map(|f| (f.category, text[f.start..f.end].to_string()))
            .collect()
    }

    #[test]
    fn run_stats_match_their_definitions() {
        let alphabet = b"0123456789 .-()+xet";
        let mut rng = crate::test_text::Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..5000 {
            let run: Vec<u8> = (0..round % 30)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let st = RunStats::of(&run);
            let seps = || run.iter().copied().filter(|b| !b.is_ascii_digit());
            let digits: Vec<u8> = run.iter().copied().filter(u8::is_ascii_digit).collect();
            assert_eq!(st.digit_count, digits.len());
            assert_eq!(
                &st.digits[..digits.len().min(19)],
                &digits[..digits.len().min(19)]
            );
            let groups = run
                .split(|b| !b.is_ascii_digit())
                .filter(|g| !g.is_empty())
                .count();
            assert_eq!(st.groups, groups);
            assert_eq!(st.any_dot, seps().any(|c| c == b'.'));
            assert_eq!(st.seps_all_space, seps().all(|c| c == b' '));
            assert_eq!(st.seps_all_dash, seps().all(|c| c == b'-'));
            assert_eq!(st.seps_all_dot, seps().all(|c| c == b'.'));
            assert_eq!(
                st.seps_all_space_or_dash,
                seps().all(|c| c == b' ' || c == b'-')
            );
        }
    }

    #[test]
    fn luhn_checksum() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b""));
        assert!(!luhn(b"12a4"));
    }

    #[test]
    fn iban_checksum() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB29 NWBK 6016 1331 9268 19"));
        assert!(iban_valid(b"gb29nwbk60161331926819"));
        assert!(!iban_valid(b"GB29NWBK60161331926818"));
        assert!(!iban_valid(b"US29NWBK60161331926819"));
        assert!(!iban_valid(b"DE8937040044053201300"));
    }

    #[test]
    fn emails() {
        assert_eq!(
            cats("write to jane.doe+x@mail.example.org today"),
            vec![(Category::Email, "jane.doe+x@mail.example.org".into())]
        );
        assert!(cats("a @ b and user@localhost").is_empty());
    }

    #[test]
    fn cards_need_luhn_and_issuer() {
        assert_eq!(
            cats("card 4111 1111 1111 1111 ok"),
            vec![(Category::PaymentCard, "4111 1111 1111 1111".into())]
        );
        assert_eq!(
            cats("amex 378282246310005."),
            vec![(Category::PaymentCard, "378282246310005".into())]
        );
        assert!(cats("order 4111111111111112").is_empty());
        assert!(cats("id 9111111111111111").is_empty());
    }

    #[test]
    fn ssn_rules() {
        assert_eq!(
            cats("SSN 123-45-6789"),
            vec![(Category::UsSsn, "123-45-6789".into())]
        );
        assert!(
            !cats("no 000-12-3456")
                .iter()
                .any(|(c, _)| *c == Category::UsSsn)
        );
        assert!(
            !cats("no 666-12-3456")
                .iter()
                .any(|(c, _)| *c == Category::UsSsn)
        );
    }

    #[test]
    fn phones_international() {
        for p in [
            "+44 20 7946 0958",
            "(212) 555-0199",
            "212-555-0199",
            "+33 1 23 45 67 89",
            "06 12 34 56 78",
            "+1-202-555-0147x12",
        ] {
            let found = cats(&format!("call me at {p} please"));
            assert!(
                found.iter().any(|(c, v)| *c == Category::Phone && v == p),
                "{p}: {found:?}"
            );
        }
        assert!(cats("version 3.14159 and 2024-05-14 and $2,099.00").is_empty());
        assert!(cats("order number 12345678 shipped").is_empty());
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            cats("from 192.168.10.254 x"),
            vec![(Category::IpAddress, "192.168.10.254".into())]
        );
        assert!(
            cats("from 999.168.10.254 x")
                .iter()
                .all(|(c, _)| *c != Category::IpAddress)
        );
        assert_eq!(
            cats("host 2001:db8::ff00:42:8329"),
            vec![(Category::IpAddress, "2001:db8::ff00:42:8329".into())]
        );
        assert!(cats("at 12:30:45 today").is_empty());
    }

    #[test]
    fn iban_in_text() {
        assert_eq!(
            cats("pay to DE89 3704 0044 0532 0130 00 now"),
            vec![(Category::Iban, "DE89 3704 0044 0532 0130 00".into())]
        );
    }

    #[test]
    fn dob_and_passport() {
        let f = cats("Maria Lopez, born on 12/03/1987, passport number X1234567");
        assert!(
            f.contains(&(Category::DateOfBirth, "12/03/1987".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&(Category::Passport, "X1234567".into())),
            "{f:?}"
        );
        assert!(cats("the passport office is open").is_empty());
    }
}
