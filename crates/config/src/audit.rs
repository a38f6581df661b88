//! The `audit:` section (issue 4), raw and compiled: the tamper-evident trail the data plane
//! writes, its signing key, its argument-fingerprint key, what happens when the store cannot
//! write, and retention.
//!
//! ```yaml
//! audit:
//!   enabled: true                      # default true; false only for benchmarks and tests
//!   chain_id: gw-eu-1                  # default {hostname}:{listen port}; one chain per replica
//!   signing_key_file: audit-key.pem    # Ed25519 PKCS#8 PEM or 64 hex digits; else $PORTCULLIS_AUDIT_KEY
//!   fingerprint_key_file: fp.key       # HMAC key of argument fingerprints; else
//!                                      # $PORTCULLIS_AUDIT_FINGERPRINT_KEY, else one kept in the store
//!   checkpoint: { every: 1000, interval: 10s }   # signed checkpoints (and one at shutdown)
//!   on_failure: fail_closed            # or `spool`: a local append-only file replayed later
//!   spool_file: audit.spool            # default: next to the SQLite file / ./portcullis-audit.spool
//!   sync: normal                       # SQLite (default `normal`): survives kill -9 and restarts;
//!                                      # `full` also survives a power cut, at the cost of an
//!                                      # fsync per group commit
//!   await_outcome: true                # the answer waits until its outcome record is durable
//!   retention: { days: 90, interval: 1h }        # older records deleted behind a signed tombstone
//!   sinks: [...]                       # SIEM export (crate::sinks; run by portcullis-export)
//! ```
//!
//! There is deliberately no setting that forwards a call without its record: the choices on a
//! store failure are refusing the call (the default) or keeping the record in the local spool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raw::HumanDuration;
use crate::{ConfigError, Secret};

/// Environment variable holding the checkpoint signing key (the same one `portcullis audit
/// verify` reads).
pub const ENV_AUDIT_KEY: &str = "PORTCULLIS_AUDIT_KEY";
/// Environment variable holding the argument-fingerprint key.
pub const ENV_FINGERPRINT_KEY: &str = "PORTCULLIS_AUDIT_FINGERPRINT_KEY";

/// Largest key file read.
const MAX_KEY_BYTES: u64 = 64 << 10;
/// Shortest fingerprint key accepted (bytes of text): shorter keys make fingerprints guessable.
const MIN_FINGERPRINT_KEY: usize = 16;

/// `audit:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Write the trail (default true). `false` turns every audit hook into a no-op.
    pub enabled: Option<bool>,
    /// This replica's chain (default `{hostname}:{listen port}`).
    pub chain_id: Option<String>,
    /// Checkpoint signing key file (PKCS#8 PEM or a 64-hex-digit seed); default
    /// `$PORTCULLIS_AUDIT_KEY`. Without either, no checkpoints are signed (a warning says so).
    pub signing_key_file: Option<PathBuf>,
    /// Key of the argument fingerprints (HMAC-SHA256); default
    /// `$PORTCULLIS_AUDIT_FINGERPRINT_KEY`, else a random key generated once and kept in the store.
    pub fingerprint_key_file: Option<PathBuf>,
    /// When to sign checkpoints.
    pub checkpoint: Option<RawCheckpoint>,
    /// `fail_closed` (default) or `spool`.
    pub on_failure: Option<String>,
    /// The spool file for `on_failure: spool`.
    pub spool_file: Option<PathBuf>,
    /// SQLite durability: `normal` (default) or `full`.
    pub sync: Option<String>,
    /// Hold each answer until its outcome record is durable (default true).
    pub await_outcome: Option<bool>,
    /// Delete records older than this, leaving a signed tombstone.
    pub retention: Option<RawRetention>,
    /// SIEM sinks, typed and compiled by [`crate::sinks`] (each entry's errors name its index).
    pub sinks: Option<Vec<serde_json::Value>>,
}

/// `audit.checkpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// Sign after this many records (default 1000).
    pub every: Option<u64>,
    /// ... or after this long with unsigned records (default 10s).
    pub interval: Option<HumanDuration>,
}

/// `audit.retention`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Keep records this many days (required, at least 1).
    pub days: Option<u64>,
    /// How often to look for expired records (default 1h).
    pub interval: Option<HumanDuration>,
}

/// What the data plane does when the audit store cannot take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnAuditFailure {
    /// Refuse the call with a JSON-RPC error (`-31020`); the upstream is not called.
    #[default]
    FailClosed,
    /// Append the record to a local spool file (fsynced) and go on; the spool is replayed into
    /// the store when it can write again.
    Spool,
}

/// SQLite commit durability of the audit store (PostgreSQL keeps the server's own settings,
/// e.g. `synchronous_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditSync {
    /// No fsync per record (the default): a record is in the chain's append log beside the
    /// database before the call goes on, so it survives the process being killed (`kill -9`)
    /// and restarted, not a power cut or a kernel crash.
    #[default]
    Normal,
    /// Every group commit is fsynced: durable against a power cut too, at the cost of an fsync
    /// (milliseconds on many disks) in the path of every call.
    Full,
}

/// `audit.retention`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRetention {
    /// Records older than this are deleted.
    pub max_age: Duration,
    /// How often the retention job runs.
    pub interval: Duration,
}

/// `audit:`, compiled with defaults and keys resolved.
#[derive(Clone, PartialEq)]
pub struct AuditConfig {
    pub enabled: bool,
    /// Explicit chain id; None: the gateway derives `{hostname}:{port}`.
    pub chain_id: Option<String>,
    /// Checkpoint signing key text (validated), from the file or the environment.
    pub signing_key: Option<Secret>,
    /// Fingerprint key; None: generated once and kept in the store.
    pub fingerprint_key: Option<Secret>,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub on_failure: OnAuditFailure,
    /// Spool file (relative paths resolved against the config file's directory); None: the
    /// gateway derives one from `storage`.
    pub spool_file: Option<PathBuf>,
    pub sync: AuditSync,
    pub await_outcome: bool,
    pub retention: Option<AuditRetention>,
    /// `audit.sinks`, typed and checked by [`crate::sinks`]; exported by `portcullis-export`.
    pub sinks: Vec<crate::sinks::SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            chain_id: None,
            signing_key: None,
            fingerprint_key: None,
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(10),
            on_failure: OnAuditFailure::FailClosed,
            spool_file: None,
            sync: AuditSync::Normal,
            await_outcome: true,
            retention: None,
            sinks: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("enabled", &self.enabled)
            .field("chain_id", &self.chain_id)
            .field("signing_key", &self.signing_key)
            .field("fingerprint_key", &self.fingerprint_key)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("on_failure", &self.on_failure)
            .field("spool_file", &self.spool_file)
            .field("sync", &self.sync)
            .field("await_outcome", &self.await_outcome)
            .field("retention", &self.retention)
            // Sinks may hold tokens: count them only.
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

/// What compiling `audit:` may consult: the environment and the config file's directory.
pub(crate) struct AuditEnv<'a> {
    /// An environment variable (the loader's view of it).
    pub var: &'a dyn Fn(&str) -> Result<Option<String>, String>,
    /// Directory relative paths are resolved against.
    pub base_dir: Option<&'a Path>,
}

/// Compiles `audit:`; every problem is pushed to `errors` with its dotted path.
pub(crate) fn compile(
    raw: Option<RawAudit>,
    env: &AuditEnv<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> AuditConfig {
    let raw = raw.unwrap_or_default();
    let d = AuditConfig::default();
    let enabled = raw.enabled.unwrap_or(true);

    let chain_id = raw.chain_id.filter(|id| {
        let ok = !id.is_empty() && id.len() <= 200 && !id.chars().any(char::is_control);
        if !ok {
            push(
                errors,
                "audit.chain_id",
                "must be 1 to 200 characters without control characters",
            );
        }
        ok
    });

    let resolve = |file: PathBuf| match env.base_dir {
        Some(base) if file.is_relative() && !base.as_os_str().is_empty() => base.join(file),
        _ => file,
    };

    let path = "audit.signing_key_file";
    let signing_key = key_text(
        raw.signing_key_file.map(resolve),
        ENV_AUDIT_KEY,
        env,
        path,
        errors,
    )
    .and_then(
        |(text, source)| match portcullis_audit::SigningKeyFile::parse(&text) {
            Ok(_) => Some(Secret::new(text.trim())),
            Err(e) => {
                push(errors, path, format!("{source}: {e}"));
                None
            }
        },
    );
    // Running without a signing key is allowed (verify then cannot detect truncation); the
    // gateway says so in its log at start rather than in every `check` of every config.

    let path = "audit.fingerprint_key_file";
    let fingerprint_key = key_text(
        raw.fingerprint_key_file.map(resolve),
        ENV_FINGERPRINT_KEY,
        env,
        path,
        errors,
    )
    .and_then(|(text, source)| {
        let text = text.trim();
        if text.len() < MIN_FINGERPRINT_KEY {
            push(
                errors,
                path,
                format!("{source}: the fingerprint key must be at least {MIN_FINGERPRINT_KEY} characters"),
            );
            return None;
        }
        Some(Secret::new(text))
    });

    let checkpoint = raw.checkpoint.unwrap_or_default();
    let checkpoint_every = match checkpoint.every {
        None => d.checkpoint_every,
        Some(0) => {
            push(errors, "audit.checkpoint.every", "must be at least 1");
            d.checkpoint_every
        }
        Some(n) => n,
    };
    let checkpoint_interval = duration(
        errors,
        "audit.checkpoint.interval",
        checkpoint.interval.as_ref(),
        d.checkpoint_interval,
    );

    let retention = raw.retention.map(|r| {
        let interval = duration(
            errors,
            "audit.retention.interval",
            r.interval.as_ref(),
            Duration::from_secs(3600),
        );
        let days = match r.days {
            Some(days @ 1..=36_500) => days,
            Some(_) => {
                push(
                    errors,
                    "audit.retention.days",
                    "must be between 1 and 36500",
                );
                1
            }
            None => {
                push(
                    errors,
                    "audit.retention.days",
                    "required: how many days records are kept",
                );
                1
            }
        };
        AuditRetention {
            max_age: Duration::from_secs(days * 86_400),
            interval,
        }
    });

    if enabled && retention.is_some() && signing_key.is_none() {
        push(
            errors,
            "audit.retention",
            format!(
                "needs a signing key (audit.signing_key_file or {ENV_AUDIT_KEY}): deleted records \
                 must be covered by a signed tombstone, never a silent gap"
            ),
        );
    }

    let on_failure = match raw.on_failure.as_deref() {
        None | Some("fail_closed") => OnAuditFailure::FailClosed,
        Some("spool") => OnAuditFailure::Spool,
        Some(other) => {
            push(
                errors,
                "audit.on_failure",
                format!(
                    "unknown value {other:?}: expected `fail_closed` or `spool` (a call is never \
                     forwarded without its record)"
                ),
            );
            OnAuditFailure::FailClosed
        }
    };
    let sync = match raw.sync.as_deref() {
        None | Some("normal") => AuditSync::Normal,
        Some("full") => AuditSync::Full,
        Some(other) => {
            push(
                errors,
                "audit.sync",
                format!("unknown value {other:?}: expected `normal` or `full`"),
            );
            AuditSync::Normal
        }
    };
    if !enabled {
        warnings.push(
            "audit.enabled is false: calls leave no audit record (benchmarks and tests only)"
                .to_owned(),
        );
    }

    AuditConfig {
        enabled,
        chain_id,
        signing_key,
        fingerprint_key,
        checkpoint_every,
        checkpoint_interval,
        on_failure,
        spool_file: raw.spool_file.map(resolve),
        sync,
        await_outcome: raw.await_outcome.unwrap_or(true),
        retention,
        sinks: crate::sinks::compile_values(raw.sinks.unwrap_or_default(), env, errors, warnings),
    }
}

fn push(errors: &mut Vec<ConfigError>, path: &str, message: impl Into<String>) {
    errors.push(ConfigError {
        path: path.to_owned(),
        message: message.into(),
    });
}

/// A key's text from `file`, else from the environment variable `var`; with where it came from.
fn key_text(
    file: Option<PathBuf>,
    var: &str,
    env: &AuditEnv<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(String, String)> {
    let found = match file {
        Some(file) => read_key(&file).map(|text| Some((text, file.display().to_string()))),
        None => (env.var)(var).map(|text| {
            text.filter(|t| !t.trim().is_empty())
                .map(|t| (t, var.to_owned()))
        }),
    };
    found.unwrap_or_else(|message| {
        push(errors, path, message);
        None
    })
}

fn duration(
    errors: &mut Vec<ConfigError>,
    path: &str,
    value: Option<&HumanDuration>,
    default: Duration,
) -> Duration {
    match value.map(HumanDuration::parse) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            push(errors, path, "must be greater than zero");
            default
        }
        Some(Ok(d)) => d,
        Some(Err(message)) => {
            push(errors, path, message);
            default
        }
    }
}

fn read_key(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_KEY_BYTES {
        return Err(format!(
            "{} is larger than {MAX_KEY_BYTES} bytes",
            path.display()
        ));
    }
    if text.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use crate::{AuditSync, Loader, OnAuditFailure};

    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn errors_of(yaml: &str) -> Vec<String> {
        match Loader::with_vars([("X", "y")]).from_yaml(yaml, "t") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_fail_closed_with_normal_sync() {
        let config = Loader::with_vars([("X", "y")])
            .from_yaml("listen: 127.0.0.1:1\n", "t")
            .unwrap();
        assert!(config.audit.enabled);
        assert_eq!(config.audit.on_failure, OnAuditFailure::FailClosed);
        assert_eq!(config.audit.sync, AuditSync::Normal);
        assert!(config.audit.await_outcome);
        assert!(config.audit.signing_key.is_none());
        assert!(config.warnings().iter().all(|w| !w.contains("audit")));
    }

    #[test]
    fn typed_fields_and_env_keys() {
        let config = Loader::with_vars([
            ("PORTCULLIS_AUDIT_KEY", SEED),
            ("PORTCULLIS_AUDIT_FINGERPRINT_KEY", "0123456789abcdef0123"),
        ])
        .from_yaml(
            "audit:\n  chain_id: gw-1\n  on_failure: spool\n  sync: full\n  await_outcome: false\n  checkpoint: { every: 5, interval: 2s }\n  retention: { days: 30 }\n  sinks: [{ file: /tmp/x.jsonl }]\n",
            "t",
        )
        .unwrap();
        let a = &config.audit;
        assert_eq!(a.chain_id.as_deref(), Some("gw-1"));
        assert_eq!(a.on_failure, OnAuditFailure::Spool);
        assert_eq!(a.sync, AuditSync::Full);
        assert!(!a.await_outcome);
        assert_eq!(a.checkpoint_every, 5);
        assert_eq!(a.checkpoint_interval.as_secs(), 2);
        assert_eq!(a.retention.as_ref().unwrap().max_age.as_secs(), 30 * 86_400);
        assert_eq!(a.signing_key.as_ref().unwrap().expose(), SEED);
        assert_eq!(
            a.fingerprint_key.as_ref().unwrap().expose(),
            "0123456789abcdef0123"
        );
        assert_eq!(a.sinks.len(), 1);
        assert!(!format!("{config:?}").contains(SEED), "keys never printed");
    }

    #[test]
    fn every_bad_value_names_its_path() {
        let errors = errors_of(
            "audit:\n  on_failure: forward\n  sync: off\n  checkpoint: { every: 0, interval: 0s }\n  retention: { interval: 1h }\n  signing_key_file: /nonexistent/key.pem\n",
        );
        for path in [
            "audit.on_failure",
            "audit.sync",
            "audit.checkpoint.every",
            "audit.checkpoint.interval",
            "audit.retention.days",
            "audit.signing_key_file",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(path)),
                "{path} not in {errors:?}"
            );
        }
        assert!(errors.iter().any(|e| e.contains("never forwarded")));
    }

    #[test]
    fn retention_without_a_signing_key_is_refused() {
        let errors = errors_of("audit:\n  retention: { days: 30 }\n");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("audit.retention:") && e.contains("silent gap")),
            "{errors:?}"
        );
    }

    #[test]
    fn malformed_signing_key_and_short_fingerprint_key_are_errors() {
        let errors = match Loader::with_vars([
            ("PORTCULLIS_AUDIT_KEY", "not a key"),
            ("PORTCULLIS_AUDIT_FINGERPRINT_KEY", "short"),
        ])
        .from_yaml("listen: 127.0.0.1:1\n", "t")
        {
            Ok(_) => panic!("accepted"),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        };
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("audit.signing_key_file")
                    && e.contains("PORTCULLIS_AUDIT_KEY")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("audit.fingerprint_key_file")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_audit_key_is_refused() {
        let errors = errors_of("audit:\n  forward_without_record: true\n");
        assert!(errors.iter().any(|e| e.contains("audit")), "{errors:?}");
    }
}
