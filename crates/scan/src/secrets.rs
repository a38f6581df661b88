//! Credentials: provider formats (cloud, VCS, chat, payment, AI keys, JWTs, PEM private keys,
//! database URLs with passwords, HTTP auth headers, `curl -u`) plus entropy-checked generic
//! `key = value` assignments.
//!
//! Provider rules run as one `RegexSet` pass; only the rules that matched are searched again
//! for spans. Every candidate value goes through the placeholder allow-list (`EXAMPLE`, `xxxx`,
//! `<your-key>`, `${VAR}`, repeated characters, …), and generic values must also look random
//! (Shannon entropy, mixed character classes).

use regex::bytes::Regex;

use crate::prefilter::{self, Hit, Lexicon, Owner, View};

use crate::{Category, Finding, ScanError, Severity, bytes_regex, char_span};

/// A provider rule: id, pattern (group 1, if any, is the secret value), and whether the value
/// must also pass the randomness check.
struct Rule {
    id: &'static str,
    pattern: &'static str,
    severity: Severity,
    entropy: bool,
    /// Lowercase anchors (see `prefilter.rs`): one occurs in or next to every match.
    anchors: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        id: "secret.aws-access-key",
        anchors: &["akia*", "asia*", "abia*", "acca*"],
        pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.aws-secret-key",
        anchors: &["aws"],
        pattern: r#"(?i)aws.{0,20}?(?:secret|private).{0,20}?['"=:\s]\s*['"]?([A-Za-z0-9/+]{40})\b"#,
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.aws-bedrock-key",
        anchors: &["absk*"],
        pattern: r"\b(ABSK[A-Za-z0-9+/]{100,300}={0,2})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.gcp-api-key",
        anchors: &["aiza*"],
        pattern: r"\b(AIza[0-9A-Za-z_\-]{35})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.gcp-service-account",
        anchors: &["service_account"],
        pattern: r#""type"\s*:\s*"service_account""#,
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.private-key",
        anchors: &["-----begin"],
        pattern: r"-----BEGIN[ A-Z0-9]{0,20} PRIVATE KEY(?: BLOCK)?-----",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.azure-ad-client-secret",
        anchors: &["q~"],
        pattern: r"(?:^|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:$|[^A-Za-z0-9_~.\-])",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.azure-storage-key",
        anchors: &["accountkey"],
        pattern: r"AccountKey=([A-Za-z0-9+/]{86}==)",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.github-token",
        anchors: &["ghp_*", "gho_*", "ghu_*", "ghs_*", "ghr_*"],
        pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.github-fine-grained-pat",
        anchors: &["github_pat_"],
        pattern: r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.gitlab-token",
        anchors: &[
            "glpat", "glptt", "glrt", "gldt", "gloas", "glcbt", "glsoat", "glft", "glimt",
            "glagent",
        ],
        pattern: r"\b(gl(?:pat|ptt|rt|dt|oas|cbt|soat|ft|imt|agent)-[A-Za-z0-9_\-]{20,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.slack-token",
        anchors: &["xoxa", "xoxb", "xoxp", "xoxo", "xoxs", "xoxr"],
        pattern: r"\b(xox[abposr]-[0-9A-Za-z\-]{10,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.slack-webhook",
        anchors: &["hooks"],
        pattern: r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,})",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.stripe-key",
        anchors: &[
            "sk_live", "sk_test", "sk_prod", "rk_live", "rk_test", "rk_prod",
        ],
        pattern: r"\b((?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{16,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.openai-key",
        anchors: &["sk"],
        pattern: r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,})\b",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.openai-project-key",
        anchors: &["sk"],
        pattern: r"\b(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.anthropic-key",
        anchors: &["sk"],
        pattern: r"\b(sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{80,120}AA)",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.huggingface-token",
        anchors: &["hf_*"],
        pattern: r"\b(hf_[A-Za-z]{34})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.onepassword-service-token",
        anchors: &["ops_*"],
        pattern: r"\b(ops_eyJ[A-Za-z0-9+/=]{250,})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.jwt",
        anchors: &["eyj*"],
        pattern: r"\b(eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,})",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.facebook-token",
        anchors: &["eaa*"],
        pattern: r"\b(EAA[A-Za-z0-9]{90,})",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.facebook-app-token",
        anchors: &["facebook"],
        pattern: r"(?i)facebook[^\n]{0,30}?\b(\d{15,16}(?:\||%7C)[A-Za-z0-9_\-]{27})\b",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.intra42-secret",
        anchors: &["s4t2ud", "s4t2af"],
        pattern: r"\b(s-s4t2(?:ud|af)-[a-f0-9]{64})\b",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.sendgrid-key",
        anchors: &["sg"],
        pattern: r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.twilio-key",
        anchors: &[
            "sk0*", "sk1*", "sk2*", "sk3*", "sk4*", "sk5*", "sk6*", "sk7*", "sk8*", "sk9*", "ska*",
            "skb*", "skc*", "skd*", "ske*", "skf*",
        ],
        pattern: r"\b(SK[0-9a-f]{32})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.npm-token",
        anchors: &["npm_*"],
        pattern: r"\b(npm_[A-Za-z0-9]{36})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.pypi-token",
        anchors: &["pypi"],
        pattern: r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.db-url-password",
        anchors: &[
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
            "mongodb",
            "redis",
            "rediss",
            "amqp",
            "amqps",
            "mssql",
            "sqlserver",
            "jdbc",
        ],
        pattern: r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver|jdbc:[a-z]+)://[^:/@\s]{1,64}:([^@/\s]{3,128})@[A-Za-z0-9.\-]+",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.url-basic-auth",
        anchors: &["@"],
        pattern: r"(?i)\bhttps?://[A-Za-z0-9._%\-]{1,64}:([^@/\s:]{6,128})@[A-Za-z0-9.\-]+",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.http-authorization",
        anchors: &["authorization"],
        pattern: r#"(?i)\b(?:authorization|proxy-authorization)["']?\s*:\s*(?:(?:bearer|basic|token|api-token|apikey|digest)\s+)?([A-Za-z0-9._~+/=\-]{8,})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.api-key-header",
        anchors: &["key", "apikey", "token"],
        pattern: r#"(?i)\b(?:x-[a-z\-]*api-?key|api-?key|api-token|x-auth-token|token|x-api-token)["']?\s*:\s*["']?([A-Za-z0-9._~+/=\-]{8,})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.curl-user",
        anchors: &["curl", "user"],
        pattern: r#"(?:-u|--user)\s+['"]?[^\s:'"]{0,64}['"]?:['"]?([^\s'"]{6,128})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.generic-assignment",
        anchors: &[
            "key",
            "keys",
            "apikey",
            "secret",
            "password",
            "passwd",
            "pwd",
            "token",
            "credential",
            "credentials",
            "auth",
        ],
        pattern: r#"(?i)(?:api[_\-.]?key|apikey|secret|secret[_\-.]?key|client[_\-.]?secret|access[_\-.]?key|access[_\-.]?token|auth[_\-.]?token|refresh[_\-.]?token|private[_\-.]?key|passw(?:or)?d|passwd|pwd|token|credentials?)[A-Za-z0-9_\-.]{0,20}["']?\s*(?:[:=]|:=|=>)\s*["']?([A-Za-z0-9_~+/=.\-!@#$%^&*]{10,200})"#,
        severity: Severity::High,
        entropy: true,
    },
];

/// Compiled secret rules.
#[derive(Debug)]
pub struct SecretDetector {
    each: Vec<(&'static str, Regex, Severity, bool)>,
    /// Per rule, bytes every match contains (see [`REQUIRED`]), as a prepared searcher.
    required: Vec<Option<memchr::memmem::Finder<'static>>>,
    /// The rules' anchors, for scanning without the shared prefilter.
    lexicon: Lexicon,
}

/// Bytes that every match of a rule contains, exactly (these patterns match them
/// case-sensitively or they hold no letters): a window without them is not searched. This
/// matters for anchors that ordinary text has (`@` of an email, `user` of `user_agent`).
const REQUIRED: &[(&str, &[u8])] = &[
    ("secret.url-basic-auth", b"://"),
    ("secret.db-url-password", b"://"),
    ("secret.curl-user", b"-u"),
];

/// Bytes searched before an anchor (a match may start up to here: `https://user:pass@` before
/// its `@`) and after it; a window is then widened to the end of the token it cuts.
const WINDOW_BEFORE: usize = 256;
const WINDOW_AFTER: usize = 512;

impl SecretDetector {
    /// Compile the rules.
    pub fn new() -> Result<Self, ScanError> {
        let mut each = Vec::with_capacity(RULES.len());
        for r in RULES {
            each.push((r.id, bytes_regex(r.id, r.pattern)?, r.severity, r.entropy));
        }
        let required = RULES
            .iter()
            .map(|r| {
                REQUIRED
                    .iter()
                    .find(|(id, _)| *id == r.id)
                    .map(|(_, b)| memchr::memmem::Finder::new(*b))
            })
            .collect();
        Ok(SecretDetector {
            each,
            required,
            lexicon: Lexicon::new(Self::anchors())?,
        })
    }

    /// The rules' anchors, for the shared prefilter.
    pub(crate) fn anchors() -> impl Iterator<Item = (Owner, u16, &'static [&'static str])> {
        RULES.iter().enumerate().map(|(i, r)| {
            (
                Owner::Secret,
                u16::try_from(i).unwrap_or(u16::MAX),
                r.anchors,
            )
        })
    }

    /// Every secret in `text`; the span is the secret value itself where the rule isolates it.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let view = View::of(text, &self.lexicon);
        let mut hits = Vec::new();
        self.lexicon
            .find(text.as_bytes(), &view, |_| true, &mut hits);
        self.scan_prepared(text, &hits)
    }

    /// As [`SecretDetector::scan`], with anchor hits from the shared prefilter: each rule runs
    /// only in windows around its own anchors, rules in order (an earlier rule's span wins).
    pub(crate) fn scan_prepared(&self, text: &str, hits: &[Hit]) -> Vec<Finding> {
        let mut out: Vec<Finding> = Vec::new();
        // Rules whose anchors occur (fewer than 64 rules, checked by a test).
        let mut present = 0u64;
        for h in hits.iter().filter(|h| h.owner == Owner::Secret) {
            present |= 1u64.checked_shl(u32::from(h.item)).unwrap_or(0);
        }
        let mut rest = present;
        while rest != 0 {
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let Some(rule) = self.each.get(i) else {
                break;
            };
            let required = self.required.get(i).and_then(Option::as_ref);
            let search = |s: usize, e: usize, out: &mut Vec<Finding>| {
                if required.is_none_or(|lit| lit.find(&text.as_bytes()[s..e]).is_some()) {
                    Self::scan_window(rule, text, s, e, out);
                }
            };
            let mut current: Option<(usize, usize)> = None;
            for h in hits
                .iter()
                .filter(|h| h.owner == Owner::Secret && usize::from(h.item) == i)
            {
                let (s, e) = self.window(text, h.pos);
                current = match current {
                    Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                    Some((cs, ce)) => {
                        search(cs, ce, &mut out);
                        Some((s, e))
                    }
                    None => Some((s, e)),
                };
            }
            if let Some((cs, ce)) = current {
                search(cs, ce, &mut out);
            }
        }
        out
    }

    /// The window around an anchor at `pos`, its end moved to the end of the token it cuts.
    fn window(&self, text: &str, pos: usize) -> (usize, usize) {
        let bytes = text.as_bytes();
        let (s, e) = prefilter::window(text, pos, WINDOW_BEFORE, WINDOW_AFTER);
        let token_end = bytes[e..]
            .iter()
            .take(4096)
            .position(|b| b.is_ascii_whitespace())
            .map_or_else(|| (e + 4096).min(bytes.len()), |p| e + p);
        (s, char_span(text, token_end, token_end).1)
    }

    fn scan_window(
        (rule, re, severity, entropy): &(&'static str, Regex, Severity, bool),
        text: &str,
        s: usize,
        e: usize,
        out: &mut Vec<Finding>,
    ) {
        let bytes = text.as_bytes();
        let hay = &bytes[..e];
        let mut at = s;
        while at <= hay.len() {
            let Some(c) = re.captures_at(hay, at) else {
                break;
            };
            let Some(whole) = c.get(0) else {
                break;
            };
            at = if whole.end() > whole.start() {
                whole.end()
            } else {
                whole.end() + 1
            };
            let Some(m) = c.get(1).or(Some(whole)) else {
                continue;
            };
            let value = trim_value(&bytes[m.start()..m.end()]);
            if value.is_empty() || is_placeholder(value) {
                continue;
            }
            if *entropy && !looks_random(value) {
                continue;
            }
            let (start, end) = char_span(text, m.start(), m.start() + value.len());
            if out.iter().any(|f| f.start < end && start < f.end) {
                continue;
            }
            out.push(Finding {
                category: Category::Secret,
                severity: *severity,
                rule,
                start,
                end,
            });
        }
    }
}

fn trim_value(v: &[u8]) -> &[u8] {
    let mut v = v;
    while let Some((&last, rest)) = v.split_last() {
        if matches!(last, b'.' | b',' | b';' | b'\'' | b'"' | b')' | b'}') {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Known placeholders and templated values: never reported.
pub fn is_placeholder(value: &[u8]) -> bool {
    let lower: Vec<u8> = value.iter().map(u8::to_ascii_lowercase).collect();
    const WORDS: &[&[u8]] = &[
        b"example",
        b"xxxx",
        b"your",
        b"placeholder",
        b"changeme",
        b"change_me",
        b"redacted",
        b"dummy",
        b"sample",
        b"fake",
        b"test1234",
        b"secret123",
        b"password123",
        b"insert",
        b"replace",
        b"todo",
        b"<",
        b"${",
        b"{{",
        b"%(",
        b"process.env",
        b"os.environ",
        b"getenv",
        b"****",
        b"....",
        b"abcdef",
        b"123456789",
        b"000000",
        b"env(",
        b"$(",
    ];
    if WORDS
        .iter()
        .any(|w| memchr::memmem::find(&lower, w).is_some())
    {
        return true;
    }
    // A single character repeated (`aaaaaaaa`, `********`) or a short alphabet walk.
    let distinct = {
        let mut seen = [false; 256];
        let mut n = 0;
        for &b in value {
            if !seen[b as usize] {
                seen[b as usize] = true;
                n += 1;
            }
        }
        n
    };
    distinct <= 3
}

/// Shannon entropy in bits per byte.
pub fn entropy(value: &[u8]) -> f64 {
    if value.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in value {
        counts[b as usize] += 1;
    }
    let n = value.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Random-looking: enough entropy for its length and at least two character classes, not a
/// plain word or identifier (`my_database_name`).
pub fn looks_random(value: &[u8]) -> bool {
    let classes = [
        value.iter().any(u8::is_ascii_lowercase),
        value.iter().any(u8::is_ascii_uppercase),
        value.iter().any(u8::is_ascii_digit),
        value.iter().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&x| x)
    .count();
    let has_digit = value.iter().any(u8::is_ascii_digit);
    let min = if value.len() >= 32 { 3.5 } else { 2.8 };
    // Identifiers made of words (`get_user_name`, `MyPasswordField`) have no digits and low
    // entropy; real keys of 8–16 characters usually mix digits in.
    classes >= 2 && entropy(value) >= min && (has_digit || value.len() >= 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&'static str> {
        SecretDetector::new()
            .unwrap()
            .scan(text)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn provider_formats() {
        assert_eq!(
            rules("key AKIAZ3MN7QW2ERTY5UIO here"),
            vec!["secret.aws-access-key"]
        );
        assert_eq!(
            rules("token=ghp_R2d2C3poLuke7Skywalker0Han8Solo9Leia1"),
            vec!["secret.github-token"]
        );
        assert_eq!(
            rules("xoxb-2918273645-9182736450-Zq8WvR3tYp6LmN4kJh2GfD1s"),
            vec!["secret.slack-token"]
        );
        assert_eq!(
            rules("-----BEGIN RSA PRIVATE KEY-----\nMIIE..."),
            vec!["secret.private-key"]
        );
        assert_eq!(
            rules("DATABASE_URL=postgres://app:S3cr3tPw9@db.internal:5432/app"),
            vec!["secret.db-url-password"]
        );
        assert_eq!(
            rules(
                "auth eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
            ),
            vec!["secret.jwt"]
        );
        assert_eq!(
            rules("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            vec!["secret.stripe-key"]
        );
    }

    #[test]
    fn generic_assignment_needs_entropy() {
        assert_eq!(
            rules("api_key = \"Zx81kLq0Pw7Rt2Nv5Bm9\""),
            vec!["secret.generic-assignment"]
        );
        assert!(rules("password = password_field_name").is_empty());
        assert!(rules("api_key: \"<your-api-key>\"").is_empty());
        assert!(rules("AWS key AKIAIOSFODNN7EXAMPLE").is_empty());
        assert!(rules("token = xxxxxxxxxxxxxxxxxxxxxxxx").is_empty());
        assert!(rules("secret: ${SECRET_FROM_VAULT_123}").is_empty());
    }

    #[test]
    fn ordinary_prose_is_clean() {
        assert!(
            rules("The token bucket refills every second; the secret of good bread is time.")
                .is_empty()
        );
        assert!(rules("Password managers keep your credentials safe.").is_empty());
    }

    #[test]
    fn rules_fit_the_presence_mask() {
        assert!(RULES.len() <= 64);
    }

    #[test]
    fn required_literals_belong_to_rules_whose_matches_hold_them() {
        for (id, lit) in REQUIRED {
            let rule = RULES
                .iter()
                .find(|r| r.id == *id)
                .expect("a rule of that id");
            let re = bytes_regex(rule.id, rule.pattern).unwrap();
            for sample in [
                &b"see https://admin:Zx81kLq0Pw7R@example.com/x"[..],
                b"DATABASE_URL=postgres://app:S3cr3tPw9@db.internal:5432/app",
                b"curl -u admin:Qm7r2XwL9vKp4TzN https://api.example.com",
                b"curl --user 'admin:Qm7r2XwL9vKp4TzN' https://api.example.com",
            ] {
                if let Some(m) = re.find(sample) {
                    assert!(memchr::memmem::find(m.as_bytes(), lit).is_some(), "{id}");
                }
            }
        }
    }

    #[test]
    fn secrets_inside_identifiers_and_long_tokens() {
        assert_eq!(
            rules("export STRIPE_API_KEY=Zx81kLq0Pw7Rt2Nv5Bm9"),
            vec!["secret.generic-assignment"]
        );
        assert_eq!(
            rules("const dbPassword = \"Qm7r2XwL9vKp4TzN\";"),
            vec!["secret.generic-assignment"]
        );
        assert_eq!(
            rules("gh token:ghp_R2d2C3poLuke7Skywalker0Han8Solo9Leia1 ok"),
            vec!["secret.github-token"]
        );
    }

    #[test]
    fn entropy_math() {
        assert!(entropy(b"aaaa") < 0.01);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
