//! `portcullis.yaml` in two stages: the raw file ([`raw`]), which documents every field and
//! rejects unknown keys, and the compiled [`Config`] the gateway runs on, with defaults applied,
//! values checked and secrets resolved. Every problem is reported with the path of the offending
//! key (`servers.time.command`), all at once, so `portcullis check` can print them together.
//! (Syntax, type and unknown-key errors stop parsing, so only the first of those is reported,
//! with its line and column.)
//!
//! API contract used by the gateway and CLI (keep signatures):
//! - `load(path) -> Result<Config, ConfigErrors>` reads the file, applies `PORTCULLIS_*`
//!   environment overrides (`PORTCULLIS_LISTEN`, `PORTCULLIS_PUBLIC_URL`,
//!   `PORTCULLIS_STORAGE`), compiles.
//! - `from_yaml(text, source_name) -> Result<Config, ConfigErrors>` (no env overrides).
//! - `Config::warnings()` for non-fatal findings (`check` prints them).
//! - `watch(path)`: hot reload; a channel of freshly compiled configs (or their errors) after
//!   every change of the file. The receiver keeps its last good config on `Err`.
//! - [`Loader`]: the same operations against a fixed set of environment variables (tests,
//!   embedding), since the process environment cannot be changed safely at run time.
//!
//! `rules` compile into a [`portcullis_policy::Policy`] ([`Config::policy`]), `audit` into
//! [`AuditConfig`], `scanners` into [`ScannersConfig`] (actions per finding category, direction
//! and server; tool pinning).

pub mod approvals;
pub mod audit;
mod compile;
mod control;
pub mod raw;
pub mod scanners;
pub mod sinks;
pub mod telemetry;
pub mod tls;
pub mod upstream_oauth;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use audit::{AuditConfig, AuditRetention, AuditSync, OnAuditFailure};
pub use compile::{Loader, from_yaml, load, mask_url_password};
pub use control::{
    AdminConfig, AdminRole, AdminToken, RateBucket, RateConfig, RateLimit, RedisRate, RedisTls,
};
pub use scanners::ScannersConfig;
pub use upstream_oauth::OAuthClientCredentials;
pub use watch::{WatchError, watch};

/// The compiled, validated runtime configuration.
///
/// `Debug` hides secrets: [`Secret`] values print as `***` and a password in `storage` is masked.
#[derive(Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// Canonical external base URL, without trailing slash (`http://127.0.0.1:8686`). It is the
    /// OAuth resource identifier and the base of every printed URL.
    pub public_url: String,
    /// `sqlite://path` or `postgres://…`.
    pub storage: String,
    /// The catalog, in name order. Nothing else is reachable.
    pub servers: BTreeMap<String, ServerConfig>,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Origins (scheme://host[:port]) allowed in the `Origin` header besides `public_url`'s own.
    pub allowed_origins: Vec<String>,
    /// Where the file came from (for reload and messages); None for embedded configs.
    pub source: Option<PathBuf>,
    /// The compiled `rules:` (first match wins, no match = deny). Empty when the section is
    /// missing: every call is then denied.
    pub policy: std::sync::Arc<portcullis_policy::Policy>,
    /// Sections this build accepts but does not enforce yet (`scanners`), as
    /// written, keyed by section name. Each present section also adds a warning. Empty by default.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// `admin:`: who may use the admin API; task token limits.
    pub admin: AdminConfig,
    /// `approvals:`: how calls needing approval are held and announced.
    pub approvals: approvals::ApprovalsConfig,
    /// `audit:`: the tamper-evident trail (keys resolved, defaults applied).
    pub audit: AuditConfig,
    /// `scanners:`: the action for each finding category, direction and server; pinning.
    pub scanners: ScannersConfig,
    /// `telemetry:`: OpenTelemetry traces over OTLP (off unless `otlp_traces` is set).
    pub telemetry: telemetry::TelemetryConfig,
    /// `tls:`: serve HTTPS, optionally with client certificates (`None`: plain HTTP).
    pub tls: Option<tls::TlsConfig>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("storage", &compile::mask_url_password(&self.storage))
            .field("servers", &self.servers)
            .field("auth", &self.auth)
            .field("limits", &self.limits)
            .field("allowed_origins", &self.allowed_origins)
            .field("source", &self.source)
            .field("policy", &self.policy)
            // Opaque sections may hold secrets (sink tokens): show which are present, not what.
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .field("admin", &self.admin)
            .field("approvals", &self.approvals)
            .field("audit", &self.audit)
            .field("scanners", &self.scanners)
            .field("telemetry", &self.telemetry)
            .field("tls", &self.tls)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Config {
    /// Non-fatal findings (e.g. anonymous access reachable beyond loopback).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub transport: Transport,
    /// Per-call timeout toward this server (defaults to `limits.request_timeout`).
    pub request_timeout: Duration,
    /// Maximum calls in flight toward this server.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A local child process speaking MCP over stdio, supervised by the gateway.
    Stdio {
        /// Program and arguments; `command[0]` is resolved on PATH.
        command: Vec<String>,
        /// Extra environment (values may come from `env_from`); the child gets only these plus
        /// PATH, HOME, LANG and TZ from the gateway's environment.
        env: BTreeMap<String, Secret>,
        cwd: Option<PathBuf>,
    },
    /// A Streamable HTTP endpoint (`…/mcp`) or, with `transport: sse`, a legacy HTTP+SSE endpoint.
    Http {
        url: String,
        legacy_sse: bool,
        credentials: Option<Credentials>,
    },
}

/// The gateway's own credential toward an upstream. Client tokens never pass through.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// `Authorization: Bearer <secret>`.
    Bearer(Secret),
    /// Arbitrary headers (e.g. `X-Api-Key`).
    Headers(BTreeMap<String, Secret>),
    /// `Authorization: Bearer <token>`, the token obtained (and cached, refreshed) with the
    /// OAuth client-credentials grant.
    OAuthClientCredentials(OAuthClientCredentials),
}

/// A secret value: prints as `***`, compares by value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    pub api_keys: Vec<ApiKey>,
    /// Explicit opt-in: unauthenticated callers become this agent.
    pub anonymous: Option<String>,
    /// Bearer JWTs from an OpenID Connect provider (None by default).
    pub oidc: Option<OidcConfig>,
}

/// `auth.oidc`, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcConfig {
    /// Issuer URL as written (no trailing slash added or removed); must equal the tokens' `iss`.
    pub issuer: String,
    /// Expected `aud` of tokens (default `{public_url}/mcp`).
    pub audience: String,
    /// Claim naming the agent (default `azp`).
    pub agent_claim: String,
    /// Claim naming the human user (default `sub`).
    pub user_claim: String,
    /// Claim holding the roles, a string or list of strings (default `roles`).
    pub roles_claim: String,
    /// Scopes every token must carry (empty: none required).
    pub required_scopes: Vec<String>,
    /// Tolerance for `exp`, `nbf` and `iat` (default 60 s).
    pub clock_skew: Duration,
    /// Accepted JWS `alg` values, a subset of [`OIDC_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// Least time between two JWKS refetches triggered by an unknown `kid` (default 30 s).
    pub jwks_refetch_interval: Duration,
}

/// Every JWS algorithm `auth.oidc.algorithms` may name: asymmetric signatures only.
pub const OIDC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub agent: String,
    /// SHA-256 of the key, the only form in which keys are stored.
    pub sha256: [u8; 32],
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
    /// Refused at once (`revoked: true`).
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_header_bytes: usize,
    pub max_sessions: usize,
    /// Open SSE streams (GET + POST streams) per session.
    pub max_streams_per_session: usize,
    pub request_timeout: Duration,
    /// Idle legacy sessions are ended after this long.
    pub session_idle_timeout: Duration,
    pub max_batch: usize,
    /// `limits.rate`: token-bucket rate limits and quotas, and where their buckets live.
    pub rate: RateConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            max_header_bytes: 16 * 1024,
            max_sessions: 10_000,
            max_streams_per_session: 8,
            request_timeout: Duration::from_secs(120),
            session_idle_timeout: Duration::from_secs(3600),
            max_batch: 64,
            rate: RateConfig::default(),
        }
    }
}

impl ApiKey {
    /// SHA-256 of a presented key, the form in which [`ApiKey::sha256`] stores it.
    pub fn digest(key: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).into()
    }
}

/// One problem in a config file, with the dotted path of the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found: sections in a fixed order (listen, public_url, storage,
/// allowed_origins, limits, servers, auth, rules), entries within a section in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} error(s) in {source_name}:\n{}", errors.len(), errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

/// Helper for callers that only have a path.
pub fn source_name(path: &Path) -> String {
    path.display().to_string()
}
