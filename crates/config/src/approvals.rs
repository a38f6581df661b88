//! `approvals:` — how calls that a rule marks `approve` are held, raw and compiled. The rule's
//! own options (`timeout`, `approvers`, `role`, `self_approval`) sit on the rule itself.
//!
//! ```yaml
//! approvals:
//!   timeout: 5m                # hold limit when the rule sets none; no decision = denied
//!   progress_interval: 10s     # notifications/progress to callers that sent a progressToken
//!   webhook: { url_env: SLACK_APPROVALS_WEBHOOK }   # or { url: https://… }: new requests are
//!                              # posted there (Slack-compatible), with single-use review links
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::raw::HumanDuration;
use crate::{ConfigError, Secret};

/// `approvals:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// How long a call may be held when its rule sets no `timeout` (default `5m`, at most `24h`).
    /// When it passes without a decision the call is denied.
    pub timeout: Option<HumanDuration>,
    /// How often a held caller that sent a `progressToken` gets `notifications/progress`
    /// (default `10s`). Streams of callers without one get SSE keep-alive comments.
    pub progress_interval: Option<HumanDuration>,
    /// Chat webhook (Slack-compatible incoming webhook) told about every new request.
    pub webhook: Option<RawWebhook>,
}

/// `approvals.webhook`: set exactly one of `url`, `url_env`, `url_file` (webhook URLs usually
/// embed a secret, so prefer the environment or a file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// The URL, written in the file (`https://`, or `http://` to a loopback address).
    pub url: Option<String>,
    /// Name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// Path of a file holding the URL (surrounding whitespace removed).
    pub url_file: Option<std::path::PathBuf>,
}

/// `approvals:`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalsConfig {
    /// Default hold limit.
    pub timeout: Duration,
    /// Interval of progress notifications to held callers.
    pub progress_interval: Duration,
    /// Where new requests are announced (a secret: prints as `***`).
    pub webhook: Option<Secret>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout: Duration::from_secs(300),
            progress_interval: Duration::from_secs(10),
            webhook: None,
        }
    }
}

/// What compiling needs from its surroundings.
pub(crate) struct ApprovalsEnv<'a> {
    /// Reads an environment variable (Err: present but unreadable).
    pub var: &'a dyn Fn(&str) -> Result<Option<String>, String>,
    /// Directory relative `url_file` paths are resolved against.
    pub base_dir: Option<&'a std::path::Path>,
}

/// Longest hold the config may ask for (the same bound as a rule's `timeout`).
const MAX_TIMEOUT: Duration = portcullis_policy::MAX_APPROVAL_TIMEOUT;

/// Compiles `approvals:`; problems are appended to `errors` with their paths.
pub(crate) fn compile(
    raw: Option<RawApprovals>,
    env: &ApprovalsEnv<'_>,
    errors: &mut Vec<ConfigError>,
) -> ApprovalsConfig {
    let mut config = ApprovalsConfig::default();
    let Some(raw) = raw else { return config };
    let mut error = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.to_owned(),
            message,
        })
    };
    let mut duration = |path: &str, value: Option<HumanDuration>, default: Duration| match value
        .map(|v| v.parse())
    {
        None => default,
        Some(Ok(d)) if !d.is_zero() && d <= MAX_TIMEOUT => d,
        Some(Ok(_)) => {
            error(path, "must be more than 0s and at most 24h".to_owned());
            default
        }
        Some(Err(message)) => {
            error(path, message);
            default
        }
    };
    config.timeout = duration("approvals.timeout", raw.timeout, config.timeout);
    config.progress_interval = duration(
        "approvals.progress_interval",
        raw.progress_interval,
        config.progress_interval,
    );
    if let Some(hook) = raw.webhook {
        config.webhook = webhook(hook, env, &mut error);
    }
    config
}

fn webhook(
    raw: RawWebhook,
    env: &ApprovalsEnv<'_>,
    error: &mut impl FnMut(&str, String),
) -> Option<Secret> {
    let set = [
        raw.url.is_some(),
        raw.url_env.is_some(),
        raw.url_file.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    if set != 1 {
        error(
            "approvals.webhook",
            "set exactly one of `url`, `url_env` or `url_file`".to_owned(),
        );
        return None;
    }
    let (path, value) = if let Some(url) = raw.url {
        ("approvals.webhook.url", url)
    } else if let Some(var) = raw.url_env {
        match (env.var)(&var) {
            Ok(Some(value)) if !value.trim().is_empty() => ("approvals.webhook.url_env", value),
            Ok(_) => {
                error(
                    "approvals.webhook.url_env",
                    format!("environment variable {var} is not set"),
                );
                return None;
            }
            Err(message) => {
                error("approvals.webhook.url_env", message);
                return None;
            }
        }
    } else {
        let file = raw.url_file.expect("counted above");
        let file = match env.base_dir {
            Some(base) if file.is_relative() => base.join(file),
            _ => file,
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => ("approvals.webhook.url_file", text),
            Err(e) => {
                error(
                    "approvals.webhook.url_file",
                    format!("cannot read {}: {e}", file.display()),
                );
                return None;
            }
        }
    };
    let value = value.trim().to_owned();
    match url::Url::parse(&value) {
        Ok(url) if url.scheme() == "https" => Some(Secret::new(value)),
        Ok(url) if url.scheme() == "http" && loopback(&url) => Some(Secret::new(value)),
        Ok(_) => {
            // Never echo the value: it may embed the webhook's secret.
            error(
                path,
                "the webhook URL must be https:// (http:// only to a loopback address)".to_owned(),
            );
            None
        }
        Err(_) => {
            error(path, "not a valid URL".to_owned());
            None
        }
    }
}

fn loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(yaml: &str, vars: &[(&str, &str)]) -> (ApprovalsConfig, Vec<String>) {
        let raw: RawApprovals = serde_yaml_ng::from_str(yaml).unwrap();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var =
            move |name: &str| Ok(vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
        let env = ApprovalsEnv {
            var: &var,
            base_dir: None,
        };
        let mut errors = Vec::new();
        let config = compile(Some(raw), &env, &mut errors);
        (config, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn rule_options_compile_into_the_policy() {
        let yaml = "rules:\n  - { id: refunds, approve: { tools: [billing__refund], when: \"args.amount > 100\", timeout: 90s, approvers: 2, role: admin, self_approval: false } }\n  - { id: plain, approve: { tools: [\"billing__*\"] } }\n";
        let config = crate::from_yaml(yaml, "test").unwrap_or_else(|e| panic!("{e}"));
        let options = config.policy.approval("refunds").unwrap();
        assert_eq!(options.timeout, Some(Duration::from_secs(90)));
        assert_eq!(options.approvers, 2);
        assert_eq!(options.role, portcullis_policy::ReviewerRole::Admin);
        assert!(!options.self_approval);
        assert_eq!(config.policy.approval("plain").unwrap().approvers, 1);
        assert_eq!(config.approvals, ApprovalsConfig::default());
        assert!(
            !config
                .warnings()
                .iter()
                .any(|w| w.contains("self_approval")),
            "{:?}",
            config.warnings()
        );
        let asks_self =
            "rules:\n  - { id: mine, approve: { tools: [a__b], self_approval: true } }\n";
        let config = crate::from_yaml(asks_self, "test").unwrap();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.starts_with("rules[0].approve.self_approval:")),
            "{:?}",
            config.warnings()
        );

        let bad = "rules:\n  - { id: a, approve: { timeout: soon, approvers: 0 } }\n  - { id: b, deny: { role: admin } }\n";
        let errors = crate::from_yaml(bad, "test").unwrap_err();
        let text: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "rules[0].approve.timeout: invalid duration \"soon\": expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\" or integer seconds",
                "rules[0].approve.approvers: must be 1 or 2 (distinct reviewers), not 0",
                "rules[1].deny.role: only `approve` rules take `role`",
            ]
        );
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(ApprovalsConfig::default().timeout, Duration::from_secs(300));
        let (config, errors) = compile_yaml(
            "timeout: 90s\nprogress_interval: 2s\nwebhook: { url_env: HOOK }",
            &[("HOOK", "https://hooks.example/T/B/secret")],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.timeout, Duration::from_secs(90));
        assert_eq!(config.progress_interval, Duration::from_secs(2));
        assert_eq!(
            config.webhook.as_ref().map(Secret::expose),
            Some("https://hooks.example/T/B/secret")
        );
        assert!(
            !format!("{config:?}").contains("secret"),
            "the URL is a secret"
        );
    }

    #[test]
    fn bad_values_name_their_paths_without_echoing_secrets() {
        let (_, errors) = compile_yaml(
            "timeout: 0s\nprogress_interval: 2d\nwebhook: { url: \"http://hooks.example/T/secret\" }",
            &[],
        );
        assert_eq!(
            errors,
            [
                "approvals.timeout: must be more than 0s and at most 24h",
                "approvals.progress_interval: must be more than 0s and at most 24h",
                "approvals.webhook.url: the webhook URL must be https:// (http:// only to a loopback address)",
            ]
        );
        let (_, errors) = compile_yaml(
            "webhook: { url: \"http://127.0.0.1:9/x\", url_env: X }",
            &[],
        );
        assert_eq!(
            errors,
            ["approvals.webhook: set exactly one of `url`, `url_env` or `url_file`"]
        );
        let (_, errors) = compile_yaml("webhook: { url_env: MISSING }", &[]);
        assert_eq!(
            errors,
            ["approvals.webhook.url_env: environment variable MISSING is not set"]
        );
        let (config, errors) = compile_yaml("webhook: { url: \"http://127.0.0.1:9/x\" }", &[]);
        assert!(errors.is_empty() && config.webhook.is_some());
    }
}
