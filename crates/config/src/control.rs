//! The control sections (issue 3): `admin:` (who may use the admin API, and how long task
//! tokens may live) and `limits.rate` (token-bucket rate limits and quotas), raw and compiled.
//!
//! ```yaml
//! admin:
//!   tokens:                                  # static admin API tokens, stored as SHA-256
//!     - { name: ops, sha256: "…", role: admin }       # viewer < approver < admin
//!   roles:                                   # OIDC roles (the principal's `roles`) → admin roles
//!     admin: ["portcullis:admin"]            # defaults: portcullis:viewer|approver|admin
//!   task_tokens: { max_ttl: 24h }            # longest lifetime a task token may ask for
//!   metrics: viewer                          # /metrics needs this admin role (default: public)
//! limits:
//!   rate:                                    # every matching entry applies; all must admit
//!     - { id: bots, agents: ["bot-*"], tools: ["billing__*"], calls: 10, per: 1s, burst: 20, bucket: agent }
//! ```
//!
//! Buckets live in each replica's memory unless `limits.rate` is a mapping naming a Redis
//! server, which every replica then shares (exact limits across replicas):
//!
//! ```yaml
//! limits:
//!   rate:
//!     redis: redis://127.0.0.1:6379/0        # redis://, rediss:// (TLS) or unix://; a password
//!                                            # may be in the URL
//!     # redis_tls:                           # with rediss:// only; default: the system's roots
//!     #   ca_file: redis-ca.pem              # trust only these CAs (PEM)
//!     #   client_cert_file: client.pem       # client certificate for mutual TLS, with
//!     #   client_key_file: client.key        # its key (both or neither)
//!     key_prefix: portcullis:rate            # default; keys are `{key_prefix}:{limit id}:{digest}`
//!     limits:
//!       - { id: bots, agents: ["bot-*"], calls: 10, per: 1s }
//! ```
//!
//! With `redis`, a call whose limits Redis cannot answer is refused (fail closed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raw::HumanDuration;
use crate::{ConfigError, Secret};

/// `admin:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Static admin API tokens (bearer), stored only as their SHA-256.
    pub tokens: Option<Vec<RawAdminToken>>,
    /// Which principal roles (from OIDC tokens) grant which admin role.
    pub roles: Option<RawAdminRoles>,
    /// Limits on gateway-issued task tokens.
    pub task_tokens: Option<RawTaskTokens>,
    /// Who may scrape `/metrics`: `public` (default) or the least admin role it needs
    /// (`viewer`, `approver`, `admin`).
    pub metrics: Option<String>,
}

/// One entry of `admin.tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    /// Who holds the token; named in audit records and responses (required).
    pub name: Option<String>,
    /// SHA-256 of the token as 64 hex characters (required): `printf %s "$TOKEN" | sha256sum`.
    pub sha256: Option<String>,
    /// `viewer`, `approver` or `admin` (required).
    pub role: Option<String>,
}

/// `admin.roles`: for each admin role, the principal roles that grant it. A list given here
/// replaces that role's default (`portcullis:viewer`, `portcullis:approver`, `portcullis:admin`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminRoles {
    pub viewer: Option<Vec<String>>,
    pub approver: Option<Vec<String>>,
    pub admin: Option<Vec<String>>,
}

/// `admin.task_tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTaskTokens {
    /// The longest `ttl` a task token may be issued with (default `24h`).
    pub max_ttl: Option<HumanDuration>,
}

/// One entry of `limits.rate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Names the limit in errors and metrics (default `rate[N]`).
    pub id: Option<String>,
    /// Agent globs this limit applies to (default: every agent).
    pub agents: Option<Vec<String>>,
    /// Aggregated tool globs (`{server}__{tool}`) this limit applies to (default: every call,
    /// tool or not; with `tools`, only tool calls whose name matches).
    pub tools: Option<Vec<String>>,
    /// Calls admitted per `per` (required, at least 1).
    pub calls: Option<u64>,
    /// The period `calls` refill over (default `1s`; `1d` makes a daily quota).
    pub per: Option<HumanDuration>,
    /// Calls that may be made at once after a quiet period (default `calls`).
    pub burst: Option<u64>,
    /// What one bucket counts: `agent` (default), `tool` (each agent and tool), `token` (each
    /// task token; other credentials count per agent), `global` (everyone matching together).
    pub bucket: Option<String>,
}

/// `limits.rate` as written: a list of limits (buckets in memory), or a mapping with `redis`,
/// `key_prefix` and `limits` (buckets shared through Redis).
#[derive(Debug, Clone)]
pub enum RawRate {
    List(Vec<RawRateLimit>),
    Shared(RawSharedRate),
}

/// `limits.rate` as a mapping.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharedRate {
    /// URL of the Redis server that holds the buckets (`redis://`, `rediss://` or `unix://`).
    pub redis: Option<String>,
    /// Trust and client certificate for `rediss://`.
    pub redis_tls: Option<RawRedisTls>,
    /// Prefix of every key (default `portcullis:rate`).
    pub key_prefix: Option<String>,
    pub limits: Option<Vec<RawRateLimit>>,
}

/// `limits.rate.redis_tls` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for RawRate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawRate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of rate limits, or a mapping with redis, key_prefix and limits")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawRate, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawRate::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRate, A::Error> {
                RawSharedRate::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawRate::Shared)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// Admin API roles, in increasing power: each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminRole {
    /// Reads state: kill switches, tokens, approvals.
    Viewer,
    /// Also decides held calls.
    Approver,
    /// Also kills, revives, and issues or revokes task tokens for any agent.
    Admin,
}

impl AdminRole {
    pub fn parse(text: &str) -> Option<AdminRole> {
        match text {
            "viewer" => Some(AdminRole::Viewer),
            "approver" => Some(AdminRole::Approver),
            "admin" => Some(AdminRole::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Approver => "approver",
            AdminRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One static admin API token.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminToken {
    pub name: String,
    /// SHA-256 of the token, the only form in which it is stored.
    pub sha256: [u8; 32],
    pub role: AdminRole,
}

/// `admin:`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub tokens: Vec<AdminToken>,
    /// Principal role → admin role it grants (a principal gets the highest it holds).
    pub role_grants: Vec<(String, AdminRole)>,
    /// The longest lifetime a task token may be issued with.
    pub max_task_ttl: Duration,
    /// The least admin role `/metrics` needs; `None` leaves it open to anyone who can reach
    /// the listener (metric labels name agents, servers and tools).
    pub metrics_role: Option<AdminRole>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            tokens: Vec::new(),
            role_grants: vec![
                ("portcullis:viewer".into(), AdminRole::Viewer),
                ("portcullis:approver".into(), AdminRole::Approver),
                ("portcullis:admin".into(), AdminRole::Admin),
            ],
            max_task_ttl: Duration::from_secs(24 * 3600),
            metrics_role: None,
        }
    }
}

impl AdminConfig {
    /// The highest admin role that `roles` (a principal's roles) grant.
    pub fn role_for(&self, roles: &[String]) -> Option<AdminRole> {
        self.role_grants
            .iter()
            .filter(|(name, _)| roles.iter().any(|role| role == name))
            .map(|(_, role)| *role)
            .max()
    }
}

/// What one rate-limit bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateBucket {
    Agent,
    Tool,
    Token,
    Global,
}

/// One entry of `limits.rate`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub id: String,
    /// Agent globs (empty: every agent).
    pub agents: Vec<String>,
    /// Tool globs (empty: every call).
    pub tools: Vec<String>,
    pub calls: u64,
    pub per: Duration,
    pub burst: u64,
    pub bucket: RateBucket,
}

/// `limits.rate`, compiled: the limits and where their buckets live.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateConfig {
    pub limits: Vec<RateLimit>,
    /// Shared buckets in Redis; `None`: each replica keeps its own in memory.
    pub redis: Option<RedisRate>,
}

/// Where shared rate-limit buckets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisRate {
    /// The server's URL (may carry a password, hence a [`Secret`]).
    pub url: Secret,
    /// Prefix of every key this gateway writes.
    pub key_prefix: String,
    /// With a `rediss://` URL: what to trust and what to present (None: the system's roots).
    pub tls: Option<RedisTls>,
}

/// TLS to Redis beyond the system's roots (paths resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// Trust only the CAs in this PEM file.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The default `limits.rate.key_prefix`.
pub const DEFAULT_RATE_KEY_PREFIX: &str = "portcullis:rate";

/// Compiles `admin:`; problems are appended to `errors` with their paths.
pub(crate) fn compile_admin(raw: Option<RawAdmin>, errors: &mut Vec<ConfigError>) -> AdminConfig {
    let mut config = AdminConfig::default();
    let Some(raw) = raw else { return config };
    let mut error = |path: String, message: &str| {
        errors.push(ConfigError {
            path,
            message: message.to_owned(),
        })
    };
    let mut names = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for (i, token) in raw.tokens.unwrap_or_default().into_iter().enumerate() {
        let path = format!("admin.tokens[{i}]");
        let name = match token.name.map(|n| n.trim().to_owned()) {
            Some(name) if !name.is_empty() => {
                if !names.insert(name.clone()) {
                    error(format!("{path}.name"), "another admin token has this name");
                }
                Some(name)
            }
            _ => {
                error(format!("{path}.name"), "required");
                None
            }
        };
        let mut sha256 = [0u8; 32];
        let digest_ok = match token.sha256.as_deref().map(str::trim) {
            None => {
                error(format!("{path}.sha256"), "required");
                false
            }
            Some(text) if hex::decode_to_slice(text, &mut sha256).is_err() => {
                error(format!("{path}.sha256"), "expected 64 hex characters");
                false
            }
            Some(_) if !digests.insert(sha256) => {
                error(
                    format!("{path}.sha256"),
                    "same token as another admin token",
                );
                false
            }
            Some(_) => true,
        };
        let role = match token.role.as_deref().map(str::trim) {
            None => {
                error(
                    format!("{path}.role"),
                    "required (viewer, approver or admin)",
                );
                None
            }
            Some(text) => {
                let role = AdminRole::parse(text);
                if role.is_none() {
                    error(format!("{path}.role"), "expected viewer, approver or admin");
                }
                role
            }
        };
        if let (Some(name), true, Some(role)) = (name, digest_ok, role) {
            config.tokens.push(AdminToken { name, sha256, role });
        }
    }
    if let Some(roles) = raw.roles {
        for (role, list) in [
            (AdminRole::Viewer, roles.viewer),
            (AdminRole::Approver, roles.approver),
            (AdminRole::Admin, roles.admin),
        ] {
            let Some(list) = list else { continue };
            config.role_grants.retain(|(_, granted)| *granted != role);
            for (i, name) in list.into_iter().enumerate() {
                if name.trim().is_empty() {
                    error(format!("admin.roles.{role}[{i}]"), "must not be empty");
                } else {
                    config.role_grants.push((name, role));
                }
            }
        }
    }
    if let Some(max_ttl) = raw.task_tokens.and_then(|t| t.max_ttl) {
        match max_ttl.parse() {
            Ok(ttl) if !ttl.is_zero() => config.max_task_ttl = ttl,
            Ok(_) => error("admin.task_tokens.max_ttl".into(), "must be positive"),
            Err(message) => error("admin.task_tokens.max_ttl".into(), &message),
        }
    }
    match raw.metrics.as_deref().map(str::trim) {
        None | Some("public") => {}
        Some(text) => match AdminRole::parse(text) {
            Some(role) => config.metrics_role = Some(role),
            None => error(
                "admin.metrics".into(),
                "expected public, viewer, approver or admin",
            ),
        },
    }
    config
}

/// Compiles `limits.rate` (files relative to `base_dir`); problems are appended to `errors`
/// with their paths.
pub(crate) fn compile_rates(
    raw: Option<RawRate>,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> RateConfig {
    match raw {
        None => RateConfig::default(),
        Some(RawRate::List(list)) => RateConfig {
            limits: compile_rate_list(list, "limits.rate", errors),
            redis: None,
        },
        Some(RawRate::Shared(shared)) => {
            let redis = compile_redis(shared.redis, shared.key_prefix, errors).map(|redis| {
                let tls = compile_redis_tls(&redis, shared.redis_tls, base_dir, errors);
                RedisRate { tls, ..redis }
            });
            RateConfig {
                limits: compile_rate_list(
                    shared.limits.unwrap_or_default(),
                    "limits.rate.limits",
                    errors,
                ),
                redis,
            }
        }
    }
}

fn compile_redis(
    url: Option<String>,
    key_prefix: Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<RedisRate> {
    let mut error = |path: &str, message: &str| {
        errors.push(ConfigError {
            path: path.to_owned(),
            message: message.to_owned(),
        })
    };
    let key_prefix = match key_prefix {
        None => DEFAULT_RATE_KEY_PREFIX.to_owned(),
        Some(prefix)
            if prefix.is_empty()
                || prefix.len() > 200
                || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            error(
                "limits.rate.key_prefix",
                "expected 1 to 200 characters without spaces or control characters",
            );
            return None;
        }
        Some(prefix) => prefix,
    };
    let url = url.map(|url| url.trim().to_owned());
    match url.as_deref() {
        None | Some("") => {
            error(
                "limits.rate.redis",
                "required when limits.rate is a mapping (or write limits.rate as a list)",
            );
            None
        }
        Some(url)
            if url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://") =>
        {
            Some(RedisRate {
                url: Secret::new(url),
                key_prefix,
                tls: None,
            })
        }
        Some(_) => {
            error(
                "limits.rate.redis",
                "expected a redis://, rediss:// (TLS) or unix:// URL",
            );
            None
        }
    }
}

/// Compiles `limits.rate.redis_tls` for `redis`: only with a `rediss://` URL, readable files,
/// a client certificate with its key.
fn compile_redis_tls(
    redis: &RedisRate,
    raw: Option<RawRedisTls>,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<RedisTls> {
    let raw = raw?;
    let mut error = |path: &str, message: String| {
        errors.push(ConfigError {
            path: format!("limits.rate.redis_tls{path}"),
            message,
        })
    };
    if !redis.url.expose().starts_with("rediss://") {
        error(
            "",
            "only with a rediss:// URL in limits.rate.redis (TLS to Redis)".into(),
        );
        return None;
    }
    let mut file = |key: &str, file: Option<PathBuf>| {
        let file = match (file, base_dir) {
            (Some(file), Some(base)) if file.is_relative() && !base.as_os_str().is_empty() => {
                Some(base.join(file))
            }
            (file, _) => file,
        }?;
        match std::fs::File::open(&file) {
            Ok(_) => Some(file),
            Err(e) => {
                error(key, format!("cannot read {}: {e}", file.display()));
                None
            }
        }
    };
    let ca_file = file(".ca_file", raw.ca_file.clone());
    let cert = file(".client_cert_file", raw.client_cert_file.clone());
    let key = file(".client_key_file", raw.client_key_file.clone());
    let client = match (
        raw.client_cert_file.is_some(),
        raw.client_key_file.is_some(),
    ) {
        (true, true) => Some((cert?, key?)),
        (false, false) => None,
        _ => {
            error(
                "",
                "client_cert_file and client_key_file go together (mutual TLS needs both)".into(),
            );
            return None;
        }
    };
    if raw.ca_file.is_some() && ca_file.is_none() {
        return None;
    }
    Some(RedisTls { ca_file, client })
}

fn compile_rate_list(
    raw: Vec<RawRateLimit>,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<RateLimit> {
    let mut error = |path: String, message: String| errors.push(ConfigError { path, message });
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let path = format!("{base}[{i}]");
        let id = entry.id.unwrap_or_else(|| format!("rate[{i}]"));
        if !ids.insert(id.clone()) {
            error(
                format!("{path}.id"),
                format!("another limit is named {id:?}"),
            );
        }
        let calls = match entry.calls {
            Some(0) => {
                error(format!("{path}.calls"), "must be at least 1".into());
                None
            }
            Some(calls) => Some(calls),
            None => {
                error(format!("{path}.calls"), "required".into());
                None
            }
        };
        let per = match entry.per.map(|per| per.parse()) {
            None => Some(Duration::from_secs(1)),
            Some(Ok(per)) if per.is_zero() => {
                error(format!("{path}.per"), "must be positive".into());
                None
            }
            Some(Ok(per)) => Some(per),
            Some(Err(message)) => {
                error(format!("{path}.per"), message);
                None
            }
        };
        let burst = match entry.burst {
            Some(0) => {
                error(format!("{path}.burst"), "must be at least 1".into());
                None
            }
            other => Some(other),
        };
        let bucket = match entry.bucket.as_deref() {
            None | Some("agent") => Some(RateBucket::Agent),
            Some("tool") => Some(RateBucket::Tool),
            Some("token") => Some(RateBucket::Token),
            Some("global") => Some(RateBucket::Global),
            Some(_) => {
                error(
                    format!("{path}.bucket"),
                    "expected agent, tool, token or global".into(),
                );
                None
            }
        };
        let list = |globs: Option<Vec<String>>| globs.unwrap_or_default();
        if let (Some(calls), Some(per), Some(burst), Some(bucket)) = (calls, per, burst, bucket) {
            out.push(RateLimit {
                id,
                agents: list(entry.agents),
                tools: list(entry.tools),
                calls,
                per,
                burst: burst.unwrap_or(calls),
                bucket,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(yaml: &str) -> (AdminConfig, Vec<ConfigError>) {
        let raw: RawAdmin = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        (compile_admin(Some(raw), &mut errors), errors)
    }

    fn rates(yaml: &str) -> (Vec<RateLimit>, Vec<ConfigError>) {
        let (config, errors) = rate_config(yaml);
        assert_eq!(config.redis, None);
        (config.limits, errors)
    }

    fn rate_config(yaml: &str) -> (RateConfig, Vec<ConfigError>) {
        let raw: RawRate = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        (compile_rates(Some(raw), None, &mut errors), errors)
    }

    #[test]
    fn admin_tokens_compile_with_roles() {
        let digest = "ab".repeat(32);
        let (config, errors) = admin(&format!(
            "tokens: [{{ name: ops, sha256: \"{digest}\", role: approver }}]\nroles: {{ admin: [idp-admins] }}\ntask_tokens: {{ max_ttl: 1h }}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.tokens[0].role, AdminRole::Approver);
        assert_eq!(config.tokens[0].sha256, [0xab; 32]);
        assert_eq!(config.max_task_ttl, Duration::from_secs(3600));
        assert_eq!(config.metrics_role, None, "/metrics is public by default");
        assert_eq!(
            config.role_for(&["idp-admins".into(), "portcullis:viewer".into()]),
            Some(AdminRole::Admin)
        );
        // The replaced default no longer grants admin; the others still apply.
        assert_eq!(
            config.role_for(&["portcullis:admin".into()]),
            None,
            "portcullis:admin was replaced by idp-admins"
        );
        assert_eq!(
            config.role_for(&["portcullis:viewer".into()]),
            Some(AdminRole::Viewer)
        );
        assert_eq!(config.role_for(&[]), None);
    }

    #[test]
    fn bad_admin_entries_name_their_paths() {
        let (config, errors) = admin(
            "tokens: [{ name: ops, sha256: nothex, role: root }, { sha256: \"00\" }]\ntask_tokens: { max_ttl: 0 }\nmetrics: everyone",
        );
        assert!(config.tokens.is_empty());
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "admin.tokens[0].sha256: expected 64 hex characters",
                "admin.tokens[0].role: expected viewer, approver or admin",
                "admin.tokens[1].name: required",
                "admin.tokens[1].sha256: expected 64 hex characters",
                "admin.tokens[1].role: required (viewer, approver or admin)",
                "admin.task_tokens.max_ttl: must be positive",
                "admin.metrics: expected public, viewer, approver or admin",
            ]
        );
    }

    #[test]
    fn rate_limits_compile_with_defaults() {
        let (limits, errors) = rates(
            "- { agents: [bot], calls: 5 }\n- { id: daily, calls: 1000, per: 1d, burst: 10, bucket: token }",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(limits[0].id, "rate[0]");
        assert_eq!(
            (
                limits[0].calls,
                limits[0].per,
                limits[0].burst,
                limits[0].bucket
            ),
            (5, Duration::from_secs(1), 5, RateBucket::Agent)
        );
        assert_eq!(limits[1].per, Duration::from_secs(86400));
        assert_eq!(limits[1].bucket, RateBucket::Token);
    }

    #[test]
    fn bad_rate_limits_name_their_paths() {
        let (limits, errors) = rates(
            "- { calls: 0, per: 0s, bucket: user }\n- { id: x, calls: 1 }\n- { id: x, burst: 0 }",
        );
        assert_eq!(limits.len(), 1);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "limits.rate[0].calls: must be at least 1",
                "limits.rate[0].per: must be positive",
                "limits.rate[0].bucket: expected agent, tool, token or global",
                "limits.rate[2].id: another limit is named \"x\"",
                "limits.rate[2].calls: required",
                "limits.rate[2].burst: must be at least 1",
            ]
        );
    }

    #[test]
    fn rate_limits_as_a_mapping_share_buckets_through_redis() {
        let (config, errors) =
            rate_config("redis: redis://:pw@127.0.0.1:6379/2\nlimits:\n  - { id: bots, calls: 5 }");
        assert!(errors.is_empty(), "{errors:?}");
        let redis = config.redis.expect("redis");
        assert_eq!(redis.url.expose(), "redis://:pw@127.0.0.1:6379/2");
        assert_eq!(redis.key_prefix, DEFAULT_RATE_KEY_PREFIX);
        assert!(!format!("{redis:?}").contains("pw"), "the URL is a secret");
        assert_eq!(config.limits[0].id, "bots");
        assert_eq!(config.limits[0].calls, 5);
    }

    #[test]
    fn redis_over_tls_takes_its_files_relative_to_the_config_and_bad_ones_name_their_paths() {
        let dir = std::env::temp_dir().join(format!("portcullis-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let compile = |yaml: &str| {
            let raw: RawRate = serde_yaml_ng::from_str(yaml).unwrap();
            let mut errors = Vec::new();
            let config = compile_rates(Some(raw), Some(&dir), &mut errors);
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (config, errors)
        };
        let (config, errors) = compile("redis: rediss://127.0.0.1:6380/0\nlimits: []");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.redis.expect("redis").tls, None, "the system's roots");

        let (config, errors) = compile(
            "redis: rediss://127.0.0.1:6380\nredis_tls: { ca_file: ca.pem, client_cert_file: client.pem, client_key_file: client.key }\nlimits: []",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let tls = config.redis.expect("redis").tls.expect("tls");
        assert_eq!(tls.ca_file, Some(dir.join("ca.pem")));
        assert_eq!(
            tls.client,
            Some((dir.join("client.pem"), dir.join("client.key")))
        );

        let cases = [
            (
                "redis: redis://x\nredis_tls: { ca_file: ca.pem }",
                "limits.rate.redis_tls: only with a rediss:// URL",
            ),
            (
                "redis: rediss://x\nredis_tls: { ca_file: missing.pem }",
                "limits.rate.redis_tls.ca_file: cannot read",
            ),
            (
                "redis: rediss://x\nredis_tls: { client_cert_file: client.pem }",
                "limits.rate.redis_tls: client_cert_file and client_key_file go together",
            ),
        ];
        for (yaml, expected) in cases {
            let (config, errors) = compile(yaml);
            assert!(
                errors.iter().any(|t| t.starts_with(expected)),
                "{yaml}: {errors:?}"
            );
            assert!(config.redis.is_none_or(|r| r.tls.is_none()), "{yaml}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_redis_rate_settings_name_their_paths() {
        let cases = [
            ("limits: []", "limits.rate.redis: required when"),
            ("redis: http://x", "limits.rate.redis: expected a redis://"),
            (
                "redis: redis://x\nkey_prefix: \"a b\"",
                "limits.rate.key_prefix: expected",
            ),
            (
                "redis: redis://x\nlimits: [{ calls: 0 }]",
                "limits.rate.limits[0].calls: must be at least 1",
            ),
        ];
        for (yaml, expected) in cases {
            let (config, errors) = rate_config(yaml);
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert!(
                text.iter().any(|t| t.starts_with(expected)),
                "{yaml}: {text:?}"
            );
            assert!(config.limits.is_empty(), "{yaml}");
        }
        let unknown = serde_yaml_ng::from_str::<RawRate>("redis: redis://x\nbucket: agent");
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `bucket`"),
            "a mistyped key is an error"
        );
    }
}
