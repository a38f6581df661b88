//! Credentials: provider formats (cloud, VCS, chat, payment, AI keys, JWTs, PEM private keys,
//! database URLs with passwords, HTTP auth headers, `curl -u`) plus entropy-checked generic
//! `key = value` assignments.
//!
//! Provider rules run as one `RegexSet` pass; only the rules that matched are searched again
//! for spans. Every candidate value goes through the placeholder allow-list (`EXAMPLE`, `xxxx`,
//! `<your-key>`, `${VAR}`, repeated characters, …), and generic values must also look random
//! (Shannon entropy, mixed character classes).

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use crate::{Category, Finding, ScanError, Severity, bytes_regex, char_span};

/// A provider rule: id, pattern (group 1, if any, is the secret value), and whether the value
/// must also pass the randomness check.
struct Rule {
    id: &'static str,
    pattern: &'static str,
    severity: Severity,
    entropy: bool,
}

const RULES: &[Rule] = &[
    Rule {
        id: "secret.aws-access-key",
        pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.aws-secret-key",
        pattern: r#"(?i)aws.{0,20}?(?:secret|private).{0,20}?['"=:\s]\s*['"]?([A-Za-z0-9/+]{40})\b"#,
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.aws-bedrock-key",
        pattern: r"\b(ABSK[A-Za-z0-9+/]{100,300}={0,2})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.gcp-api-key",
        pattern: r"\b(AIza[0-9A-Za-z_\-]{35})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.gcp-service-account",
        pattern: r#""type"\s*:\s*"service_account""#,
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.private-key",
        pattern: r"-----BEGIN[ A-Z0-9]{0,20} PRIVATE KEY(?: BLOCK)?-----",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.azure-ad-client-secret",
        pattern: r"(?:^|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:$|[^A-Za-z0-9_~.\-])",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.azure-storage-key",
        pattern: r"AccountKey=([A-Za-z0-9+/]{86}==)",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.github-token",
        pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.github-fine-grained-pat",
        pattern: r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.gitlab-token",
        pattern: r"\b(gl(?:pat|ptt|rt|dt|oas|cbt|soat|ft|imt|agent)-[A-Za-z0-9_\-]{20,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.slack-token",
        pattern: r"\b(xox[abposr]-[0-9A-Za-z\-]{10,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.slack-webhook",
        pattern: r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,})",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.stripe-key",
        pattern: r"\b((?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{16,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.openai-key",
        pattern: r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,})\b",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.openai-project-key",
        pattern: r"\b(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.anthropic-key",
        pattern: r"\b(sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{80,120}AA)",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.huggingface-token",
        pattern: r"\b(hf_[A-Za-z]{34})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.onepassword-service-token",
        pattern: r"\b(ops_eyJ[A-Za-z0-9+/=]{250,})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.jwt",
        pattern: r"\b(eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,})",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.facebook-token",
        pattern: r"\b(EAA[A-Za-z0-9]{90,})",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.facebook-app-token",
        pattern: r"(?i)facebook[^\n]{0,30}?\b(\d{15,16}(?:\||%7C)[A-Za-z0-9_\-]{27})\b",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.intra42-secret",
        pattern: r"\b(s-s4t2(?:ud|af)-[a-f0-9]{64})\b",
        severity: Severity::High,
        entropy: false,
    },
    Rule {
        id: "secret.sendgrid-key",
        pattern: r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.twilio-key",
        pattern: r"\b(SK[0-9a-f]{32})\b",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.npm-token",
        pattern: r"\b(npm_[A-Za-z0-9]{36})\b",
        severity: Severity::Critical,
        entropy: true,
    },
    Rule {
        id: "secret.pypi-token",
        pattern: r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.db-url-password",
        pattern: r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver|jdbc:[a-z]+)://[^:/@\s]{1,64}:([^@/\s]{3,128})@[A-Za-z0-9.\-]+",
        severity: Severity::Critical,
        entropy: false,
    },
    Rule {
        id: "secret.url-basic-auth",
        pattern: r"(?i)\bhttps?://[A-Za-z0-9._%\-]{1,64}:([^@/\s:]{6,128})@[A-Za-z0-9.\-]+",
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.http-authorization",
        pattern: r#"(?i)\b(?:authorization|proxy-authorization)["']?\s*:\s*(?:(?:bearer|basic|token|api-token|apikey|digest)\s+)?([A-Za-z0-9._~+/=\-]{8,})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.api-key-header",
        pattern: r#"(?i)\b(?:x-[a-z\-]*api-?key|api-?key|api-token|x-auth-token|token|x-api-token)["']?\s*:\s*["']?([A-Za-z0-9._~+/=\-]{8,})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.curl-user",
        pattern: r#"(?:-u|--user)\s+['"]?[^\s:'"]{0,64}['"]?:['"]?([^\s'"]{6,128})"#,
        severity: Severity::High,
        entropy: true,
    },
    Rule {
        id: "secret.generic-assignment",
        pattern: r#"(?i)(?:api[_\-.]?key|apikey|secret|secret[_\-.]?key|client[_\-.]?secret|access[_\-.]?key|access[_\-.]?token|auth[_\-.]?token|refresh[_\-.]?token|private[_\-.]?key|passw(?:or)?d|passwd|pwd|token|credentials?)[A-Za-z0-9_\-.]{0,20}["']?\s*(?:[:=]|:=|=>)\s*["']?([A-Za-z0-9_~+/=.\-!@#$%^&*]{10,200})"#,
        severity: Severity::High,
        entropy: true,
    },
];

/// Compiled secret rules.
#[derive(Debug)]
pub struct SecretDetector {
    set: RegexSet,
    each: Vec<(&'static str, Regex, Severity, bool)>,
}

impl SecretDetector {
    /// Compile the rules.
    pub fn new() -> Result<Self, ScanError> {
        let set = RegexSetBuilder::new(RULES.iter().map(|r| r.pattern))
            .unicode(false)
            .size_limit(1 << 25)
            .dfa_size_limit(1 << 25)
            .build()
            .map_err(|source| ScanError::Pattern {
                rule: "secret-set",
                source,
            })?;
        let mut each = Vec::with_capacity(RULES.len());
        for r in RULES {
            each.push((r.id, bytes_regex(r.id, r.pattern)?, r.severity, r.entropy));
        }
        Ok(SecretDetector { set, each })
    }

    /// Every secret in `text`; the span is the secret value itself where the rule isolates it.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let bytes = text.as_bytes();
        let mut out: Vec<Finding> = Vec::new();
        for i in self.set.matches(bytes).into_iter() {
            let (rule, re, severity, entropy) = &self.each[i];
            for c in re.captures_iter(bytes) {
                let Some(m) = c.get(1).or_else(|| c.get(0)) else {
                    continue;
                };
                let value = &bytes[m.start()..m.end()];
                let value = trim_value(value);
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
        out
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
    fn entropy_math() {
        assert!(entropy(b"aaaa") < 0.01);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
