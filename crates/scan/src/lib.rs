//! Portcullis content scanners: pure functions from text (or JSON) to findings.
//!
//! The gateway meets attacker-controlled text in four places: tool metadata (`tools/list`), tool
//! results and resources, and the arguments a model sends out. This crate finds, in any of them,
//!
//! - **tool metadata poisoning** ([`poisoning`]): hidden instructions, credential/file theft,
//!   cross-tool shadowing, exfiltration, secrecy towards the user, persuasion;
//! - **indirect prompt injection** ([`injection`]) in tool results and resource text;
//! - **deceptive unicode** ([`unicode`]): zero-width, bidi overrides, tag characters, homoglyphs;
//! - **encoded payloads** ([`decode`]): base64, hex and URL-encoding, decoded and rescanned;
//! - **PII** ([`pii`]): emails, phones, US SSN, payment cards (Luhn), IBAN (mod-97), IP addresses,
//!   dates of birth, passport-like numbers;
//! - **secrets** ([`secrets`]): provider formats plus entropy-checked generic assignments.
//!
//! Every finding carries a [`Category`], a [`Severity`], the rule that fired and a byte span into
//! the scanned text. [`redact()`] masks spans in place; [`json`] walks a `serde_json::Value` and
//! scans or redacts every string while keeping the JSON valid and its shape.
//!
//! Architecture Invariant: this crate does no IO and never panics on any input. Acting on
//! findings (block, redact, approve, flag), pinning tool definitions and caching by definition
//! hash belong to the gateway; the seams are [`Scanner::scan`] and [`json::scan_value`] /
//! [`json::redact_value`].

pub mod decode;
pub mod injection;
pub mod json;
pub mod pii;
pub mod poisoning;
pub mod secrets;
pub mod unicode;

mod bytemask;
mod cues;
mod hijack;
mod prefilter;
mod redact;
#[cfg(test)]
mod test_text;

pub use redact::{REDACTION_MASK, redact};

use serde::Serialize;

/// What a finding is about. PII categories are separate so a policy can name each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Tool metadata that steers the model (hidden instructions, shadowing, exfiltration, …).
    ToolPoisoning,
    /// Instructions addressed to the model inside data (tool results, resources).
    PromptInjection,
    /// Invisible or direction-changing characters: zero-width, bidi controls, tag characters.
    InvisibleUnicode,
    /// A name or word mixing scripts so that it looks like another (Cyrillic `а` in `pаypal`).
    Homoglyph,
    /// A base64, hex or URL-encoded payload whose decoded text is itself a finding.
    EncodedPayload,
    /// An email address.
    Email,
    /// A phone number (international or North-American formats).
    Phone,
    /// A US Social Security number.
    UsSsn,
    /// A payment card number that passes the Luhn check.
    PaymentCard,
    /// An IBAN that passes the ISO 13616 mod-97 check.
    Iban,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A date of birth (a date next to "born", "DOB", "date of birth", …).
    DateOfBirth,
    /// A passport-like document number next to the word "passport".
    Passport,
    /// A credential: provider key, token, private key, password in a URL or assignment.
    Secret,
}

/// The scanner families, as the gateway's config names them (`scanners: { pii: redact, … }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Tool metadata poisoning, including deceptive unicode and encoded payloads in metadata.
    Poisoning,
    /// Prompt injection in results and resources (and deceptive unicode / encoded payloads there).
    Injection,
    /// Personal data.
    Pii,
    /// Credentials.
    Secrets,
}

impl Category {
    /// The family whose config decides what happens to this finding. Unicode and encoding tricks
    /// are reported under the family of the scan that found them, so they map to `None` here.
    pub fn family(self) -> Option<Family> {
        match self {
            Category::ToolPoisoning => Some(Family::Poisoning),
            Category::PromptInjection => Some(Family::Injection),
            Category::InvisibleUnicode | Category::Homoglyph | Category::EncodedPayload => None,
            Category::Secret => Some(Family::Secrets),
            _ => Some(Family::Pii),
        }
    }

    /// The snake_case name used in logs, audit records and policy.
    pub fn name(self) -> &'static str {
        match self {
            Category::ToolPoisoning => "tool_poisoning",
            Category::PromptInjection => "prompt_injection",
            Category::InvisibleUnicode => "invisible_unicode",
            Category::Homoglyph => "homoglyph",
            Category::EncodedPayload => "encoded_payload",
            Category::Email => "email",
            Category::Phone => "phone",
            Category::UsSsn => "us_ssn",
            Category::PaymentCard => "payment_card",
            Category::Iban => "iban",
            Category::IpAddress => "ip_address",
            Category::DateOfBirth => "date_of_birth",
            Category::Passport => "passport",
            Category::Secret => "secret",
        }
    }
}

/// How bad a finding is; the gateway may act only above a chosen severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth recording, not worth acting on alone.
    Low,
    /// Likely a problem.
    Medium,
    /// Almost certainly a problem.
    High,
    /// A live credential, a private key, an explicit attack.
    Critical,
}

/// One finding: what, how bad, which rule, and where (byte offsets into the scanned `&str`,
/// always on char boundaries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found.
    pub category: Category,
    /// How bad it is.
    pub severity: Severity,
    /// The rule that fired (stable id, e.g. `secret.aws-access-key`, `injection.override`).
    pub rule: &'static str,
    /// Start byte offset (inclusive).
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
}

/// Where the text comes from; decides which detectors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Surface {
    /// Tool, prompt or resource metadata (names, descriptions, schemas): poisoning + unicode +
    /// encoded payloads.
    ToolMetadata,
    /// A tool result, resource content, or sampling/elicitation text from a server: injection +
    /// unicode + encoded payloads + PII + secrets.
    ToolResult,
    /// An argument the model sends out: PII + secrets (+ unicode).
    Argument,
}

/// Errors building a scanner. Only reachable if a built-in pattern fails to compile, which the
/// tests rule out; kept typed so the gateway can fail closed instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A built-in pattern did not compile.
    #[error("scanner pattern {rule} does not compile: {source}")]
    Pattern {
        /// The rule whose pattern failed.
        rule: &'static str,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// A keyword prefilter (Aho-Corasick) did not build.
    #[error("scanner keyword prefilter does not build")]
    Gate,
}

/// All detectors, compiled once. Cheap to share (`&Scanner` across threads).
#[derive(Debug)]
pub struct Scanner {
    poisoning: poisoning::PoisoningDetector,
    injection: injection::InjectionDetector,
    pii: pii::PiiDetector,
    secrets: secrets::SecretDetector,
    /// Anchors of every detector that reads tool results, searched in one pass.
    results: prefilter::Lexicon,
    /// Anchors of the detectors that read arguments (PII, secrets).
    arguments: prefilter::Lexicon,
    /// Anchors of the metadata (poisoning) cues.
    metadata: prefilter::Lexicon,
}

/// A text prepared once for several detectors: its normalized view (with the class masks of
/// its chunks) and anchor hits.
#[derive(Default)]
struct Prepared {
    view: prefilter::View,
    hits: Vec<prefilter::Hit>,
}

/// Largest normalized-view buffer a thread keeps between scans (its class masks take as many
/// bytes again).
const RETAINED_BUFFER: usize = 1 << 20;

thread_local! {
    /// Buffers reused across calls on one thread, so a scan allocates nothing for them.
    static PREPARED: std::cell::RefCell<Prepared> = std::cell::RefCell::default();
}

/// Run `f` on `text` prepared with `lexicon`, in this thread's reusable buffers (fresh ones
/// if they are already in use further up the stack).
fn with_prepared<R>(text: &str, lexicon: &prefilter::Lexicon, f: impl FnOnce(&Prepared) -> R) -> R {
    let fill = |p: &mut Prepared| {
        p.view.fill(text, lexicon);
        p.hits.clear();
        lexicon.find(text.as_bytes(), &p.view, |_| true, &mut p.hits);
    };
    PREPARED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut p) => {
            fill(&mut p);
            let out = f(&p);
            // Keep no more than 1 MiB of view (and 1 MiB of masks) per thread after an
            // unusually large text: shrunk, not freed, so that the next large text does not
            // fault all of its buffers in again.
            if p.view.capacity() > RETAINED_BUFFER {
                p.view.shrink_to(RETAINED_BUFFER);
                p.hits = Vec::new();
            }
            out
        }
        Err(_) => {
            let mut p = Prepared::default();
            fill(&mut p);
            f(&p)
        }
    })
}

impl Scanner {
    /// Compile every detector.
    pub fn new() -> Result<Self, ScanError> {
        Ok(Scanner {
            poisoning: poisoning::PoisoningDetector::new()?,
            injection: injection::InjectionDetector::new()?,
            pii: pii::PiiDetector::new()?,
            secrets: secrets::SecretDetector::new()?,
            results: prefilter::Lexicon::new(
                injection::InjectionDetector::anchors()
                    .chain(pii::PiiDetector::anchors())
                    .chain(secrets::SecretDetector::anchors()),
            )?,
            arguments: prefilter::Lexicon::new(
                pii::PiiDetector::anchors().chain(secrets::SecretDetector::anchors()),
            )?,
            metadata: prefilter::Lexicon::new(poisoning::PoisoningDetector::anchors())?,
        })
    }

    /// Tool metadata poisoning in one piece of metadata text (a description, a parameter
    /// description, a title), including deceptive unicode and encoded payloads.
    pub fn poisoning(&self, text: &str) -> Vec<Finding> {
        let mut out = with_prepared(text, &self.metadata, |p| {
            self.poisoning.scan_prepared(text, p.view.lower(), &p.hits)
        });
        unicode::scan_invisible(text, &mut out);
        unicode::scan_homoglyphs(text, &mut out);
        decode::scan_encoded(text, &mut out, |decoded| {
            !self.poisoning.scan(decoded).is_empty() || !self.injection.scan(decoded).is_empty()
        });
        sort(&mut out);
        out
    }

    /// Indirect prompt injection in a tool result or resource text, including deceptive unicode
    /// and encoded payloads.
    pub fn injection(&self, text: &str) -> Vec<Finding> {
        let mut out = with_prepared(text, &self.results, |p| self.injection_prepared(text, p));
        sort(&mut out);
        out
    }

    fn injection_prepared(&self, text: &str, p: &Prepared) -> Vec<Finding> {
        let mut out = self.injection.scan_prepared(text, p.view.lower(), &p.hits);
        if !p.view.is_ascii() {
            unicode::scan_invisible(text, &mut out);
        }
        decode::scan_encoded_with(text, p.view.masks(), &mut out, |decoded| {
            !self.injection.scan(decoded).is_empty()
        });
        out
    }

    /// Personal data.
    pub fn pii(&self, text: &str) -> Vec<Finding> {
        let mut out = with_prepared(text, &self.arguments, |p| {
            self.pii.scan_prepared(text, &p.hits, p.view.masks())
        });
        sort(&mut out);
        out
    }

    /// Credentials.
    pub fn secrets(&self, text: &str) -> Vec<Finding> {
        let mut out = with_prepared(text, &self.arguments, |p| {
            self.secrets.scan_prepared(text, &p.hits)
        });
        sort(&mut out);
        out
    }

    /// Every detector that applies to `surface`, findings sorted by position. The text is
    /// normalized and its anchors found once for all of them.
    pub fn scan(&self, text: &str, surface: Surface) -> Vec<Finding> {
        let mut out = match surface {
            Surface::ToolMetadata => return self.poisoning(text),
            Surface::ToolResult => with_prepared(text, &self.results, |p| {
                let mut out = self.injection_prepared(text, p);
                append(
                    &mut out,
                    self.pii.scan_prepared(text, &p.hits, p.view.masks()),
                );
                append(&mut out, self.secrets.scan_prepared(text, &p.hits));
                out
            }),
            Surface::Argument => with_prepared(text, &self.arguments, |p| {
                let mut out = Vec::new();
                if !p.view.is_ascii() {
                    unicode::scan_invisible(text, &mut out);
                }
                append(
                    &mut out,
                    self.pii.scan_prepared(text, &p.hits, p.view.masks()),
                );
                append(&mut out, self.secrets.scan_prepared(text, &p.hits));
                out
            }),
        };
        sort(&mut out);
        out
    }
}

/// Move `more` to the end of `out`, taking its allocation when `out` is empty.
fn append(out: &mut Vec<Finding>, mut more: Vec<Finding>) {
    if out.is_empty() {
        *out = more;
    } else {
        out.append(&mut more);
    }
}

fn sort(findings: &mut [Finding]) {
    findings.sort_by_key(|f| (f.start, f.end, f.category));
}

/// Widen `[start, end)` to char boundaries of `text` (never panics, clamps to the length).
pub(crate) fn char_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut s = start.min(text.len());
    while s > 0 && !text.is_char_boundary(s) {
        s -= 1;
    }
    let mut e = end.min(text.len()).max(s);
    while e < text.len() && !text.is_char_boundary(e) {
        e += 1;
    }
    (s, e)
}

/// Build a regex over bytes: ASCII-only classes (`unicode(false)`), so UTF-8 text of any script
/// passes through at DFA speed. Case-insensitive patterns use `(?i)` inside.
pub(crate) fn bytes_regex(
    rule: &'static str,
    pattern: &str,
) -> Result<regex::bytes::Regex, ScanError> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(1 << 24)
        .dfa_size_limit(1 << 24)
        .build()
        .map_err(|source| ScanError::Pattern { rule, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_compiles() {
        Scanner::new().unwrap();
    }

    #[test]
    fn char_span_clamps_and_aligns() {
        let t = "aé b";
        assert_eq!(char_span(t, 2, 2), (1, 3));
        assert_eq!(char_span(t, 0, 100), (0, t.len()));
        assert_eq!(char_span(t, 1, 2), (1, 3));
    }

    #[test]
    fn buffers_stay_usable_after_a_large_text() {
        let scanner = Scanner::new().unwrap();
        let small = "mail jane.doe@example.com or call +44 20 7946 0958";
        let want = scanner.scan(small, Surface::ToolResult);
        assert_eq!(want.len(), 2);
        // Over the retained 1 MiB: the buffers are shrunk after this scan.
        let large = format!("{}{small}", "word ".repeat(220_000));
        let offset = large.len() - small.len();
        for _ in 0..2 {
            let found = scanner.scan(&large, Surface::ToolResult);
            let moved: Vec<(&str, usize, usize)> = found
                .iter()
                .map(|f| (f.rule, f.start - offset, f.end - offset))
                .collect();
            let expected: Vec<(&str, usize, usize)> =
                want.iter().map(|f| (f.rule, f.start, f.end)).collect();
            assert_eq!(moved, expected);
            assert_eq!(scanner.scan(small, Surface::ToolResult), want);
        }
    }

    #[test]
    fn no_panic_on_random_input() {
        let scanner = Scanner::new().unwrap();
        let mut rng = test_text::Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..400 {
            let len = (round * 7) % 600;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                // bias towards interesting ASCII and multi-byte leads
                let b = (rng.next() & 0xff) as u8;
                bytes.push(match b % 5 {
                    0 => b"0123456789-+@.:/=_ \n"[(b as usize) % 20],
                    1 => b"AKIAghp_sk-eyJ%XQ~"[(b as usize) % 18],
                    _ => b,
                });
            }
            let text = String::from_utf8_lossy(&bytes);
            for surface in [
                Surface::ToolMetadata,
                Surface::ToolResult,
                Surface::Argument,
            ] {
                let findings = scanner.scan(&text, surface);
                for f in &findings {
                    assert!(f.start <= f.end && f.end <= text.len());
                    assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
                }
                let red = redact(&text, &findings);
                assert!(red.len() <= text.len() + 64 * findings.len());
            }
        }
    }
}
