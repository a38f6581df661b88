//! The raw YAML file, field by field: the first of the two config stages.
//!
//! These structs mirror `portcullis.yaml` exactly as an operator writes it. Every struct rejects
//! unknown keys (`deny_unknown_fields`), every map rejects duplicate keys, and values stay in the
//! form they were written in (addresses, URLs, durations and sizes are kept as text or numbers).
//! Checking, defaults and secret resolution happen in the second stage, [`crate::compile`], which
//! can then report every semantic problem at once with the dotted path of the key at fault.
//!
//! Durations ([`HumanDuration`]) accept `"250ms"`, `"30s"`, `"5m"`, `"1h"` or a plain integer
//! number of seconds. Sizes ([`HumanSize`]) accept a plain integer number of bytes or
//! `"16KiB"`, `"4MiB"`, `"1GiB"` (also `KB`/`MB`/`GB` as powers of 1000, and `B`).
//!
//! `rules` are checked field by field ([`RawRule`]), `audit` by [`crate::audit::RawAudit`],
//! `scanners` by [`crate::scanners::RawScanners`].

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

/// The whole `portcullis.yaml` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Socket address of the single HTTP listener, `host:port` (default `127.0.0.1:8686`).
    /// Overridden by the `PORTCULLIS_LISTEN` environment variable when loaded from a file.
    pub listen: Option<String>,
    /// Canonical external base URL (`http(s)://host[:port][/prefix]`); the OAuth resource
    /// identifier and the base of every printed URL. Defaults to `http://{listen}`. A trailing
    /// slash is removed. Overridden by `PORTCULLIS_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// Store: `sqlite://path` (default `sqlite://portcullis.db`) or `postgres://user@host/db`.
    /// Overridden by `PORTCULLIS_STORAGE`.
    pub storage: Option<String>,
    /// Browser origins (`scheme://host[:port]`) accepted in the `Origin` header besides
    /// `public_url`'s own.
    pub allowed_origins: Option<Vec<String>>,
    /// Resource limits of the listener and sessions.
    pub limits: Option<RawLimits>,
    /// The catalog of upstream MCP servers, by name. Nothing else is reachable.
    pub servers: Option<UniqueMap<RawServer>>,
    /// Who may connect: API keys, OIDC bearer tokens, or explicit anonymous access.
    pub auth: Option<RawAuth>,
    /// Policy rules, in order: the first rule that matches a call decides; no match = deny.
    pub rules: Option<Vec<RawRule>>,
    /// Content scanners and their actions per category, direction and server; tool pinning
    /// ([`crate::scanners::RawScanners`]).
    pub scanners: Option<crate::scanners::RawScanners>,
    /// The audit trail: signing key, fingerprint key, failure mode, retention, sinks
    /// ([`crate::audit::RawAudit`]).
    pub audit: Option<crate::audit::RawAudit>,
    /// The admin API: static admin tokens, OIDC role mapping, task token limits.
    pub admin: Option<crate::control::RawAdmin>,
    /// How calls that need approval are held and announced ([`crate::approvals::RawApprovals`]).
    pub approvals: Option<crate::approvals::RawApprovals>,
    /// OpenTelemetry traces over OTLP ([`crate::telemetry::RawTelemetry`]).
    pub telemetry: Option<crate::telemetry::RawTelemetry>,
    /// HTTPS on the listener and client certificates ([`crate::tls::RawTls`]).
    pub tls: Option<crate::tls::RawTls>,
}

/// One entry of `rules:`: an `id` and exactly one of `allow`, `deny` or `approve`.
///
/// `- { id: read-only, allow: { agents: [support-bot], tools: ["time__*"] } }`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name of the rule; errors, logs and audit records name it.
    pub id: Option<String>,
    /// Let matching calls through.
    pub allow: Option<RawMatch>,
    /// Refuse matching calls.
    pub deny: Option<RawMatch>,
    /// Hold matching calls until reviewers approve (see `timeout`, `approvers`, `role`).
    pub approve: Option<RawMatch>,
}

/// What a rule matches; every key left out matches anything (`allow: {}` matches every call).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Agent names (globs: `*` any run, `?` one character; case-sensitive).
    pub agents: Option<Vec<String>>,
    /// End-user names (globs). A rule naming users never matches a call without a user.
    pub users: Option<Vec<String>>,
    /// Roles of the caller (globs); one match is enough.
    pub roles: Option<Vec<String>>,
    /// Catalog server names (globs).
    pub servers: Option<Vec<String>>,
    /// Aggregated tool names `{server}__{tool}` (globs, e.g. `time__*`), whatever the route.
    /// Only `tools/call` carries a tool name.
    pub tools: Option<Vec<String>>,
    /// JSON-RPC methods: `tools/call`, `resources/read`, `prompts/get`, `completion/complete`,
    /// `resources/subscribe`, `subscriptions/listen`, and from servers `sampling/createMessage`,
    /// `elicitation/create`, `roots/list`.
    pub methods: Option<Vec<String>>,
    /// Tool annotations as the server lists them (untrusted hints): `{ readOnlyHint: true }`.
    pub annotations: Option<UniqueMap<serde_json::Value>>,
    /// Time of day, UTC: `"09:00-18:00"` (may wrap midnight).
    pub hours: Option<String>,
    /// Days of the week, UTC: `[mon, tue, wed, thu, fri]`.
    pub days: Option<Vec<String>>,
    /// A condition over the call: `"args.amount > 100"` (see `portcullis_policy::expr`).
    pub when: Option<String>,
    /// `approve` only: how long the call may be held (default `approvals.timeout`); no
    /// decision in time = denied.
    pub timeout: Option<HumanDuration>,
    /// `approve` only: distinct reviewers needed, 1 (default) or 2.
    pub approvers: Option<u64>,
    /// `approve` only: the least admin role of a reviewer, `approver` (default) or `admin`.
    pub role: Option<String>,
    /// `approve` only: may the end user approve at the client (MCP elicitation)? Default false.
    pub self_approval: Option<bool>,
}

/// `limits:`; every field is optional and falls back to [`crate::LimitsConfig::default`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted request body (a size, default `4MiB`).
    pub max_body_bytes: Option<HumanSize>,
    /// Deepest accepted JSON nesting (default 64).
    pub max_json_depth: Option<u64>,
    /// Largest accepted request header section (a size, default `16KiB`).
    pub max_header_bytes: Option<HumanSize>,
    /// Most concurrent legacy sessions (default 10000).
    pub max_sessions: Option<u64>,
    /// Most open SSE streams per session (default 8).
    pub max_streams_per_session: Option<u64>,
    /// Default per-call timeout toward upstreams (a duration, default `120s`).
    pub request_timeout: Option<HumanDuration>,
    /// Idle legacy sessions are ended after this long (a duration, default `1h`).
    pub session_idle_timeout: Option<HumanDuration>,
    /// Most messages in one JSON-RPC batch (default 64).
    pub max_batch: Option<u64>,
    /// Token-bucket rate limits and quotas per agent, tool or task token (a list, or a mapping
    /// that also names the Redis server sharing the buckets: [`crate::control::RawRate`]).
    pub rate: Option<crate::control::RawRate>,
}

/// One catalog server under `servers.<name>`: set exactly one of `command` (stdio) or `url`
/// (HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Stdio upstream: program and arguments (`[uvx, mcp-server-time]`), supervised by the
    /// gateway. `command[0]` is resolved on PATH.
    pub command: Option<Vec<String>>,
    /// Stdio only: literal environment variables for the child (numbers and booleans are taken
    /// as written: `PORT: 8080`).
    pub env: Option<UniqueMap<EnvValue>>,
    /// Stdio only: environment variables for the child whose values are read from the gateway's
    /// environment (`{ env: HOST_VAR }`) or a file (`{ file: /path }`) when the config loads.
    pub env_from: Option<UniqueMap<RawSecretSource>>,
    /// Stdio only: working directory of the child (relative paths are taken from the config
    /// file's directory).
    pub cwd: Option<PathBuf>,
    /// HTTP upstream: the endpoint URL (`https://mcp.example.com/mcp`).
    pub url: Option<String>,
    /// HTTP only: `streamable-http` (the default) or `sse` (legacy HTTP+SSE).
    pub transport: Option<RawTransportKind>,
    /// HTTP only: the gateway's own credential toward this upstream. Client tokens never pass.
    pub credentials: Option<RawCredentials>,
    /// Per-call timeout toward this server (a duration; default `limits.request_timeout`).
    pub request_timeout: Option<HumanDuration>,
    /// Most calls in flight toward this server (default 256).
    pub max_in_flight: Option<u64>,
}

/// `servers.<name>.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawTransportKind {
    /// Streamable HTTP (a single `…/mcp` endpoint).
    StreamableHttp,
    /// Legacy HTTP+SSE (a GET event stream plus a POST endpoint).
    Sse,
}

/// `servers.<name>.credentials`: set exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// `Authorization: Bearer <value of this environment variable>`.
    pub bearer_env: Option<String>,
    /// `Authorization: Bearer <contents of this file>` (surrounding whitespace removed; relative
    /// paths are taken from the config file's directory).
    pub bearer_file: Option<PathBuf>,
    /// Arbitrary headers (e.g. `X-Api-Key`), each value from an environment variable or a file.
    pub headers: Option<UniqueMap<RawSecretSource>>,
    /// A token from the OAuth client-credentials grant (see [`crate::upstream_oauth`]).
    pub oauth_client_credentials: Option<crate::upstream_oauth::RawOAuthClientCredentials>,
}

/// Where a secret comes from: set exactly one of `env` or `file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    /// Name of an environment variable of the gateway process.
    pub env: Option<String>,
    /// Path of a file whose contents (surrounding whitespace removed) are the value; relative
    /// paths are taken from the config file's directory.
    pub file: Option<PathBuf>,
}

/// `auth:`. With none of `api_keys`, `oidc` or `anonymous`, every call is refused with 401.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Static API keys, stored only as their SHA-256.
    pub api_keys: Option<Vec<RawApiKey>>,
    /// Bearer JWTs from an OpenID Connect provider.
    pub oidc: Option<RawOidc>,
    /// Explicit opt-in: unauthenticated callers become this agent (tests, local use).
    pub anonymous: Option<RawAnonymous>,
}

/// One entry of `auth.api_keys`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// The agent name callers with this key act as (required).
    pub agent: Option<String>,
    /// SHA-256 of the key as 64 hex characters (required): `printf %s "$KEY" | sha256sum`.
    pub sha256: Option<String>,
    /// When the key stops working: RFC 3339 (`2027-01-01T00:00:00Z`) or Unix seconds.
    pub expires_at: Option<Timestamp>,
    /// `true` refuses the key at once (kept in the file so the revocation stays visible).
    pub revoked: Option<bool>,
}

/// `auth.anonymous`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymous {
    /// The agent name unauthenticated callers act as (required).
    pub agent: Option<String>,
}

/// `auth.oidc`: bearer JWTs validated against the issuer's discovery document and JWKS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// Issuer URL (`https://idp.example.com`), required; must match the tokens' `iss`.
    pub issuer: Option<String>,
    /// Expected `aud` of tokens (default `{public_url}/mcp`).
    pub audience: Option<String>,
    /// Claim naming the agent (default `azp`).
    pub agent_claim: Option<String>,
    /// Claim naming the human user (default `sub`).
    pub user_claim: Option<String>,
    /// Claim holding the roles, a string or a list of strings (default `roles`).
    pub roles_claim: Option<String>,
    /// Scopes every token must carry (`scope` or `scp` claim); a valid token without them is
    /// answered 403 `insufficient_scope`. Also advertised in challenges and resource metadata.
    pub required_scopes: Option<Vec<String>>,
    /// Tolerance for `exp`, `nbf` and `iat` against this host's clock (default `60s`; `0s`
    /// allowed).
    pub clock_skew: Option<HumanDuration>,
    /// Accepted signature algorithms (default all of RS256, RS384, RS512, PS256, PS384, PS512,
    /// ES256, ES384, EdDSA). `none` and HMAC algorithms are never accepted.
    pub algorithms: Option<Vec<String>>,
    /// Least time between two JWKS refetches triggered by an unknown `kid` (default `30s`).
    pub jwks_refetch_interval: Option<HumanDuration>,
}

/// A duration as written: an integer number of seconds or text such as `"250ms"`, `"30s"`,
/// `"5m"`, `"1h"`. Parsed by [`HumanDuration::parse`] during compilation so that every bad value
/// is reported, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HumanDuration {
    /// A plain integer: seconds.
    Seconds(u64),
    /// Text, parsed later.
    Text(String),
}

impl HumanDuration {
    /// The duration, or a message saying what is accepted.
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        match self {
            HumanDuration::Seconds(s) => Ok(std::time::Duration::from_secs(*s)),
            HumanDuration::Text(text) => parse_duration(text),
        }
    }
}

/// A size as written: an integer number of bytes or text such as `"16KiB"`, `"4MiB"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HumanSize {
    /// A plain integer: bytes.
    Bytes(u64),
    /// Text, parsed later.
    Text(String),
}

impl HumanSize {
    /// The size in bytes, or a message saying what is accepted.
    pub fn parse(&self) -> Result<u64, String> {
        match self {
            HumanSize::Bytes(b) => Ok(*b),
            HumanSize::Text(text) => parse_size(text),
        }
    }
}

/// A point in time as written: Unix seconds or RFC 3339 text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timestamp {
    /// A plain integer: Unix seconds.
    Unix(u64),
    /// RFC 3339 text (`2027-01-01T00:00:00Z`), parsed later.
    Text(String),
}

impl Timestamp {
    /// Unix seconds, or a message saying what is accepted.
    pub fn parse(&self) -> Result<u64, String> {
        match self {
            Timestamp::Unix(s) => Ok(*s),
            Timestamp::Text(text) => parse_rfc3339(text).ok_or_else(|| {
                format!(
                    "invalid timestamp {text:?}: expected RFC 3339 (2027-01-01T00:00:00Z) or Unix seconds"
                )
            }),
        }
    }
}

/// Deserializes "integer or string" scalars into one of the enums above.
struct IntOrText<T> {
    expecting: &'static str,
    int: fn(u64) -> T,
    text: fn(String) -> T,
}

impl<'de, T> Visitor<'de> for IntOrText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.int)(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(self.int)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.text)(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok((self.text)(v))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrText {
            expecting: "a duration such as \"250ms\", \"30s\", \"5m\", \"1h\" or integer seconds",
            int: HumanDuration::Seconds,
            text: HumanDuration::Text,
        })
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrText {
            expecting: "a size such as \"16KiB\", \"4MiB\" or integer bytes",
            int: HumanSize::Bytes,
            text: HumanSize::Text,
        })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrText {
            expecting: "an RFC 3339 timestamp (2027-01-01T00:00:00Z) or Unix seconds",
            int: Timestamp::Unix,
            text: Timestamp::Text,
        })
    }
}

/// A literal environment value: a string, or a number or boolean taken as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string-keyed mapping that keeps file order and rejects duplicate keys (a plain map would
/// silently keep the last of two `time:` servers).
#[derive(Debug, Clone, PartialEq)]
pub struct UniqueMap<V>(pub Vec<(String, V)>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<V> UniqueMap<V> {
    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                // `servers:` with nothing after it: an empty mapping.
                Ok(UniqueMap::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let value = map.next_value::<V>()?;
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"` or bare digits (seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\" or integer seconds"
        )
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis_per = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let millis = n
        .checked_mul(millis_per)
        .ok_or_else(|| format!("duration {text:?} is too large"))?;
    Ok(std::time::Duration::from_millis(millis))
}

/// `"16KiB"`, `"4MiB"`, `"1GiB"`, `"500KB"`, `"10B"` or bare digits (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {text:?}: expected e.g. \"16KiB\", \"4MiB\" or integer bytes");
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let per: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// RFC 3339 (`2027-01-01T00:00:00Z`, `2027-01-01T01:00:00.5+01:00`) to Unix seconds (fractions
/// are dropped). None for anything else, including times before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs).ok()
}
