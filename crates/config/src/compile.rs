//! Raw → compiled: the second config stage.
//!
//! [`Loader::from_yaml`] parses the text into [`crate::raw::RawConfig`] (syntax errors, type
//! errors, unknown and duplicate keys stop there, with the first problem's path, line and
//! column), then compiles it in one pass that collects *every* semantic problem with its dotted
//! path (`servers.time.command: must not be empty`) before giving up. Secrets named by the file
//! (`bearer_env`, `bearer_file`, `env_from`) are resolved here, so a missing variable or an
//! unreadable file is a config error that names its key, never a failure at the first call.
//!
//! [`Loader::load`] also reads the file and applies the environment overrides, which win over
//! the file:
//!
//! | variable | overrides |
//! | --- | --- |
//! | `PORTCULLIS_LISTEN` | `listen` |
//! | `PORTCULLIS_PUBLIC_URL` | `public_url` |
//! | `PORTCULLIS_STORAGE` | `storage` |
//!
//! An empty override counts as unset. Relative secret files and `cwd` are taken from the config
//! file's directory (from the process's working directory for [`from_yaml`]).

use crate::raw::{self, RawConfig, RawSecretSource, RawTransportKind, UniqueMap};
use crate::{
    ApiKey, AuthConfig, Config, ConfigError, ConfigErrors, Credentials, LimitsConfig, OidcConfig,
    Secret, ServerConfig, Transport,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8686";
/// Default `storage`.
pub const DEFAULT_STORAGE: &str = "sqlite://portcullis.db";
/// Default `servers.<name>.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Environment variable overriding `listen` (see [`Loader::load`]).
pub const ENV_LISTEN: &str = "PORTCULLIS_LISTEN";
/// Environment variable overriding `public_url` (see [`Loader::load`]).
pub const ENV_PUBLIC_URL: &str = "PORTCULLIS_PUBLIC_URL";
/// Environment variable overriding `storage` (see [`Loader::load`]).
pub const ENV_STORAGE: &str = "PORTCULLIS_STORAGE";

/// Largest config file read (a guard against pointing `--config` at a device or a log).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Headers an upstream credential may not set: the gateway owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Reads `path`, applies `PORTCULLIS_*` environment overrides, compiles. Secrets come from the
/// process environment. Same as `Loader::new().load(path)`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    Loader::new().load(path)
}

/// Compiles YAML text without environment overrides (`source_name` only labels errors).
/// Secrets come from the process environment. Same as `Loader::new().from_yaml(..)`.
pub fn from_yaml(text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
    Loader::new().from_yaml(text, source_name)
}

/// Loads configs against an environment: the process's ([`Loader::new`]) or a fixed set of
/// variables ([`Loader::with_vars`], for tests and embedding: the process environment cannot be
/// changed safely from a multi-threaded program).
#[derive(Debug, Clone, Default)]
pub struct Loader {
    /// Some: only these variables exist. None: the process environment.
    vars: Option<BTreeMap<String, String>>,
}

impl Loader {
    /// A loader reading the process environment.
    pub fn new() -> Self {
        Loader { vars: None }
    }

    /// A loader that sees only `vars` as its environment (overrides and secrets alike).
    pub fn with_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Loader {
            vars: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// An environment variable: Ok(None) when unset, Err when not valid UTF-8.
    fn var(&self, name: &str) -> Result<Option<String>, String> {
        match &self.vars {
            Some(vars) => Ok(vars.get(name).cloned()),
            None => match std::env::var(name) {
                Ok(v) => Ok(Some(v)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {name} is not valid UTF-8"))
                }
            },
        }
    }

    /// Reads `path` (an error names it), applies the `PORTCULLIS_LISTEN`,
    /// `PORTCULLIS_PUBLIC_URL` and `PORTCULLIS_STORAGE` overrides, compiles, and sets
    /// [`Config::source`].
    pub fn load(&self, path: &Path) -> Result<Config, ConfigErrors> {
        let name = crate::source_name(path);
        let text = read_bounded(path, MAX_CONFIG_BYTES).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {name}: {e}"),
            }],
        })?;
        let base_dir = path.parent().map(Path::to_path_buf);
        let mut config = self.compile_text(&text, &name, base_dir, true)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Compiles YAML text without environment overrides; `source_name` labels errors.
    pub fn from_yaml(&self, text: &str, source_name: &str) -> Result<Config, ConfigErrors> {
        self.compile_text(text, source_name, None, false)
    }

    fn compile_text(
        &self,
        text: &str,
        source_name: &str,
        base_dir: Option<PathBuf>,
        overrides: bool,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: source_name.to_owned(),
            errors,
        };
        let raw = parse(text).map_err(|e| fail(vec![e]))?;
        let mut cx = Cx {
            loader: self,
            base_dir,
            errors: Vec::new(),
            warnings: Vec::new(),
            overridden: BTreeMap::new(),
        };
        let raw = if overrides {
            cx.apply_overrides(raw)
        } else {
            raw
        };
        let config = cx.compile(raw);
        if cx.errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(cx.errors))
        }
    }
}

/// YAML text → raw structs. Stops at the first syntax, type, unknown-key or duplicate-key error,
/// which carries its dotted path and, where the parser knows it, line and column.
pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Option<RawConfig>>(de) {
        Ok(raw) => Ok(raw.unwrap_or_default()),
        Err(e) => {
            // Syntax errors have no meaningful path (`.` or `?`-segments): report none.
            let mut path = e.path().to_string();
            while let Some(parent) = path.strip_suffix('?') {
                path = parent.trim_end_matches('.').to_owned();
            }
            if path == "." {
                path.clear();
            }
            let inner = e.inner();
            let mut message = yaml_message(inner, &path);
            // Duplicate keys: point at the key itself.
            for prefix in ["duplicate key `", "duplicate field `"] {
                if let Some(key) = message
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix('`'))
                {
                    path = if path.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    message = "duplicate key".to_owned();
                    break;
                }
            }
            if let Some(loc) = inner.location() {
                message.push_str(&format!(" (line {}, column {})", loc.line(), loc.column()));
            }
            Err(ConfigError { path, message })
        }
    }
}

/// The parser's message in our words: without serde_yaml_ng's own path prefix and location
/// suffix (both are reported separately, in our format), and without Rust type names.
fn yaml_message(e: &serde_yaml_ng::Error, path: &str) -> String {
    let mut text = e.to_string();
    if let Some(loc) = e.location() {
        let at = format!(" at line {} column {}", loc.line(), loc.column());
        text = text.replacen(&at, "", 1);
    }
    // serde_yaml_ng prefixes custom messages with its own path (`servers.time: unknown field…`),
    // which is always a prefix of ours.
    if let Some((prefix, rest)) = text.split_once(": ") {
        let prefix = prefix.trim_end_matches('?').trim_end_matches('.');
        if !prefix.is_empty() && path.starts_with(prefix) {
            text = rest.to_owned();
        }
    }
    // `unknown field `comand`, expected …`: the path already names the field.
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some((_, tail)) = rest.split_once("`, ")
    {
        text = format!("unknown field, {tail}");
    }
    for (rust, words) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
    ] {
        text = text.replace(rust, words);
    }
    if let Some(at) = text.find("expected struct Raw") {
        text.truncate(at);
        text.push_str("expected a mapping");
    }
    text
}

/// Compilation state: the environment, and every problem found so far.
struct Cx<'a> {
    loader: &'a Loader,
    /// Directory relative secret files and `cwd` are resolved against.
    base_dir: Option<PathBuf>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Top-level keys set by an environment override → the variable's name.
    overridden: BTreeMap<&'static str, &'static str>,
}

impl Cx<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let mut message = message.into();
        let top = path.split(['.', '[']).next().unwrap_or("");
        if let Some(var) = self.overridden.get(top) {
            message.push_str(&format!(" (set by {var})"));
        }
        self.errors.push(ConfigError { path, message });
    }

    fn apply_overrides(&mut self, mut raw: RawConfig) -> RawConfig {
        for (var, key) in [
            (ENV_LISTEN, "listen"),
            (ENV_PUBLIC_URL, "public_url"),
            (ENV_STORAGE, "storage"),
        ] {
            let value = match self.loader.var(var) {
                Ok(Some(v)) if !v.is_empty() => v,
                Ok(_) => continue,
                Err(message) => {
                    self.error(key, message);
                    continue;
                }
            };
            self.overridden.insert(key, var);
            match key {
                "listen" => raw.listen = Some(value),
                "public_url" => raw.public_url = Some(value),
                _ => raw.storage = Some(value),
            }
        }
        raw
    }

    fn compile(&mut self, raw: RawConfig) -> Config {
        let listen = self.listen(raw.listen.as_deref());
        let mut public_url = self.public_url(raw.public_url.as_deref(), listen);
        let tls = crate::tls::compile(
            raw.tls,
            &crate::tls::TlsEnv {
                base_dir: self.base_dir.as_deref(),
                public_url_explicit: raw.public_url.is_some(),
            },
            &mut public_url,
            &mut self.errors,
        );
        let storage = self.storage(raw.storage.as_deref());
        let allowed_origins = self.origins(raw.allowed_origins.unwrap_or_default());
        let limits = self.limits(raw.limits.unwrap_or_default());
        let servers = self.servers(raw.servers.unwrap_or_default(), &limits);
        let auth = self.auth(raw.auth.unwrap_or_default(), listen, &public_url);

        let policy = self.rules(raw.rules);
        let admin = crate::control::compile_admin(raw.admin, &mut self.errors);

        let extensions = BTreeMap::new();
        let audit = crate::audit::compile(
            raw.audit,
            &crate::audit::AuditEnv {
                var: &|name| self.loader.var(name),
                base_dir: self.base_dir.as_deref(),
            },
            &mut self.errors,
            &mut self.warnings,
        );
        let server_names: Vec<&str> = servers.keys().map(String::as_str).collect();
        let scanners = crate::scanners::compile(raw.scanners, &server_names, &mut self.errors);
        let approvals = crate::approvals::compile(
            raw.approvals,
            &crate::approvals::ApprovalsEnv {
                var: &|name| self.loader.var(name),
                base_dir: self.base_dir.as_deref(),
            },
            &mut self.errors,
        );
        let telemetry = crate::telemetry::compile(
            raw.telemetry,
            &crate::telemetry::TelemetryEnv {
                var: &|name| self.loader.var(name),
                base_dir: self.base_dir.as_deref(),
            },
            &mut self.errors,
            &mut self.warnings,
        );

        Config {
            listen: listen.unwrap_or_else(default_listen),
            public_url,
            storage,
            servers,
            auth,
            limits,
            allowed_origins,
            source: None,
            policy: std::sync::Arc::new(policy),
            extensions,
            admin,
            approvals,
            audit,
            scanners,
            telemetry,
            tls,
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    /// `rules:` → the compiled [`portcullis_policy::Policy`] (empty, so everything is denied,
    /// when the section is missing).
    fn rules(&mut self, raw: Option<Vec<raw::RawRule>>) -> portcullis_policy::Policy {
        use portcullis_policy::{Effect, MatchSpec, Policy, RuleSpec};
        let Some(raw) = raw else {
            return Policy::default();
        };
        let mut specs = Vec::with_capacity(raw.len());
        for (i, rule) in raw.into_iter().enumerate() {
            let mut effects: Vec<(Effect, raw::RawMatch)> = [
                (Effect::Allow, rule.allow),
                (Effect::Deny, rule.deny),
                (Effect::Approve, rule.approve),
            ]
            .into_iter()
            .filter_map(|(effect, m)| m.map(|m| (effect, m)))
            .collect();
            if effects.len() > 1 {
                self.error(
                    format!("rules[{i}]"),
                    "set exactly one of `allow`, `deny` or `approve`, not several".to_owned(),
                );
                effects.truncate(1);
            }
            let (effect, m) = match effects.pop() {
                Some((effect, m)) => (Some(effect), m),
                None => (None, raw::RawMatch::default()),
            };
            let approval = self.approval_spec(i, effect, &m);
            specs.push(RuleSpec {
                id: rule.id.unwrap_or_default(),
                effect,
                approval,
                matcher: MatchSpec {
                    agents: m.agents,
                    users: m.users,
                    roles: m.roles,
                    servers: m.servers,
                    tools: m.tools,
                    methods: m.methods,
                    annotations: m.annotations.map(|a| a.0),
                    hours: m.hours,
                    days: m.days,
                    when: m.when,
                },
            });
        }
        match Policy::compile(specs, "rules") {
            Ok(policy) => policy,
            Err(errors) => {
                for error in errors {
                    self.error(&error.path, error.message);
                }
                Policy::default()
            }
        }
    }

    /// The approval options written on rule `i` (`timeout`, `approvers`, `role`,
    /// `self_approval`); the policy checks them and refuses them on `allow`/`deny` rules.
    fn approval_spec(
        &mut self,
        i: usize,
        effect: Option<portcullis_policy::Effect>,
        m: &raw::RawMatch,
    ) -> Option<portcullis_policy::ApprovalSpec> {
        let key = effect.map_or("approve", |e| e.as_str());
        let timeout = match m.timeout.as_ref().map(raw::HumanDuration::parse) {
            None => None,
            Some(Ok(timeout)) => Some(timeout),
            Some(Err(message)) => {
                self.error(format!("rules[{i}].{key}.timeout"), message);
                None
            }
        };
        if m.self_approval == Some(true) {
            self.warnings.push(format!(
                "rules[{i}].{key}.self_approval: end-user self-approval (MCP elicitation) is not \
                 available in this build; held calls wait for reviewers"
            ));
        }
        let any = timeout.is_some()
            || m.approvers.is_some()
            || m.role.is_some()
            || m.self_approval.is_some();
        any.then(|| portcullis_policy::ApprovalSpec {
            timeout,
            approvers: m.approvers,
            role: m.role.clone(),
            self_approval: m.self_approval,
        })
    }

    fn listen(&mut self, text: Option<&str>) -> Option<SocketAddr> {
        let text = text.unwrap_or(DEFAULT_LISTEN);
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    "listen",
                    format!(
                        "invalid socket address {text:?} (expected ip:port, e.g. 127.0.0.1:8686)"
                    ),
                );
                None
            }
        }
    }

    fn public_url(&mut self, text: Option<&str>, listen: Option<SocketAddr>) -> String {
        let text = match text {
            Some(t) => t.to_owned(),
            None => {
                let listen = listen.unwrap_or_else(default_listen);
                if listen.ip().is_unspecified() {
                    self.warnings.push(format!(
                        "public_url: not set, so it defaults to http://{listen}, which clients \
                         cannot reach and OAuth audiences will not match; set public_url"
                    ));
                }
                format!("http://{listen}")
            }
        };
        match http_url(&text) {
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                self.error("public_url", "must not have a query or fragment");
                text
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                self.error("public_url", "must not contain credentials");
                text
            }
            Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
            Err(message) => {
                self.error("public_url", message);
                text
            }
        }
    }

    fn storage(&mut self, text: Option<&str>) -> String {
        let text = text.unwrap_or(DEFAULT_STORAGE).trim();
        let ok = if let Some(rest) = text.strip_prefix("sqlite:") {
            !rest.trim_start_matches("//").is_empty()
        } else {
            matches!(text.split_once("://"), Some(("postgres" | "postgresql", rest)) if !rest.is_empty())
        };
        if !ok {
            self.error(
                "storage",
                format!(
                    "expected sqlite://path or postgres://user@host/db, got {:?}",
                    mask_url_password(text)
                ),
            );
        }
        text.to_owned()
    }

    fn origins(&mut self, origins: Vec<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(origins.len());
        for (i, origin) in origins.into_iter().enumerate() {
            let path = format!("allowed_origins[{i}]");
            match http_url(&origin) {
                Ok(url)
                    if url.path() == "/" && url.query().is_none() && url.fragment().is_none() =>
                {
                    let origin = url.origin().ascii_serialization();
                    if !out.contains(&origin) {
                        out.push(origin);
                    }
                }
                Ok(_) => self.error(
                    path,
                    format!("expected scheme://host[:port] without a path, got {origin:?}"),
                ),
                Err(message) => self.error(path, message),
            }
        }
        out
    }

    fn limits(&mut self, raw: raw::RawLimits) -> LimitsConfig {
        let d = LimitsConfig::default();
        LimitsConfig {
            max_body_bytes: self.size(
                "limits.max_body_bytes",
                raw.max_body_bytes,
                d.max_body_bytes,
            ),
            max_json_depth: self.count(
                "limits.max_json_depth",
                raw.max_json_depth,
                d.max_json_depth,
            ),
            max_header_bytes: self.size(
                "limits.max_header_bytes",
                raw.max_header_bytes,
                d.max_header_bytes,
            ),
            max_sessions: self.count("limits.max_sessions", raw.max_sessions, d.max_sessions),
            max_streams_per_session: self.count(
                "limits.max_streams_per_session",
                raw.max_streams_per_session,
                d.max_streams_per_session,
            ),
            request_timeout: self.duration(
                "limits.request_timeout",
                raw.request_timeout.as_ref(),
                d.request_timeout,
            ),
            session_idle_timeout: self.duration(
                "limits.session_idle_timeout",
                raw.session_idle_timeout.as_ref(),
                d.session_idle_timeout,
            ),
            max_batch: self.count("limits.max_batch", raw.max_batch, d.max_batch),
            rate: crate::control::compile_rates(
                raw.rate,
                self.base_dir.as_deref(),
                &mut self.errors,
            ),
        }
    }

    /// A positive count that fits `usize`.
    fn count(&mut self, path: &str, value: Option<u64>, default: usize) -> usize {
        let Some(value) = value else { return default };
        match usize::try_from(value) {
            Ok(0) => {
                self.error(path, "must be at least 1");
                default
            }
            Ok(v) => v,
            Err(_) => {
                self.error(path, format!("{value} is too large"));
                default
            }
        }
    }

    fn size(&mut self, path: &str, value: Option<raw::HumanSize>, default: usize) -> usize {
        let Some(value) = value else { return default };
        match value.parse() {
            Ok(bytes) => self.count(path, Some(bytes), default),
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&raw::HumanDuration>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match value.parse() {
            Ok(d) if d.is_zero() => {
                self.error(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    fn servers(
        &mut self,
        raw: UniqueMap<raw::RawServer>,
        limits: &LimitsConfig,
    ) -> BTreeMap<String, ServerConfig> {
        let mut out = BTreeMap::new();
        for (name, server) in raw.0 {
            let path = format!("servers.{name}");
            if !portcullis_core::names::valid_server_name(&name) {
                self.error(
                    &path,
                    "server names must match [a-z0-9][a-z0-9-]* (at most 63 characters)",
                );
            }
            if let Some(server) = self.server(&path, &name, server, limits) {
                out.insert(name, server);
            }
        }
        out
    }

    fn server(
        &mut self,
        path: &str,
        name: &str,
        raw: raw::RawServer,
        limits: &LimitsConfig,
    ) -> Option<ServerConfig> {
        let request_timeout = self.duration(
            &format!("{path}.request_timeout"),
            raw.request_timeout.as_ref(),
            limits.request_timeout,
        );
        let max_in_flight = self.count(
            &format!("{path}.max_in_flight"),
            raw.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT,
        );
        let transport = match (raw.command, raw.url) {
            (Some(command), None) => {
                if raw.transport.is_some() {
                    self.error(format!("{path}.transport"), "only applies to url servers");
                }
                if raw.credentials.is_some() {
                    self.error(
                        format!("{path}.credentials"),
                        "only applies to url servers (give stdio servers secrets with env_from)",
                    );
                }
                self.stdio(path, command, raw.env, raw.env_from, raw.cwd)
            }
            (None, Some(url)) => {
                for (key, set) in [
                    ("env", raw.env.is_some()),
                    ("env_from", raw.env_from.is_some()),
                    ("cwd", raw.cwd.is_some()),
                ] {
                    if set {
                        self.error(
                            format!("{path}.{key}"),
                            "only applies to command (stdio) servers",
                        );
                    }
                }
                self.http(path, &url, raw.transport, raw.credentials)
            }
            _ => {
                self.error(path, "set exactly one of command or url");
                None
            }
        }?;
        Some(ServerConfig {
            name: name.to_owned(),
            transport,
            request_timeout,
            max_in_flight,
        })
    }

    fn stdio(
        &mut self,
        path: &str,
        command: Vec<String>,
        env: Option<UniqueMap<raw::EnvValue>>,
        env_from: Option<UniqueMap<RawSecretSource>>,
        cwd: Option<PathBuf>,
    ) -> Option<Transport> {
        let before = self.errors.len();
        if command.is_empty() {
            self.error(format!("{path}.command"), "must not be empty");
        }
        for (i, arg) in command.iter().enumerate() {
            if i == 0 && arg.trim().is_empty() {
                self.error(
                    format!("{path}.command[0]"),
                    "the program must not be empty",
                );
            } else if arg.contains('\0') {
                self.error(format!("{path}.command[{i}]"), "must not contain NUL");
            }
        }
        let mut vars = BTreeMap::new();
        for (key, raw::EnvValue(value)) in env.unwrap_or_default().0 {
            let p = format!("{path}.env.{key}");
            if self.env_name(&p, &key) {
                if value.contains('\0') {
                    self.error(p, "must not contain NUL");
                } else {
                    vars.insert(key, Secret::new(value));
                }
            }
        }
        for (key, source) in env_from.unwrap_or_default().0 {
            let p = format!("{path}.env_from.{key}");
            if !self.env_name(&p, &key) {
                continue;
            }
            if vars.contains_key(&key) {
                self.error(&p, format!("{key} is also set in {path}.env"));
                continue;
            }
            if let Some(secret) = self.secret_source(&p, &source) {
                vars.insert(key, secret);
            }
        }
        let cwd = cwd.map(|dir| self.relative_to_config(dir));
        (self.errors.len() == before).then_some(Transport::Stdio {
            command,
            env: vars,
            cwd,
        })
    }

    /// Is `name` usable as an environment variable name? Reports at `path` when not.
    fn env_name(&mut self, path: &str, name: &str) -> bool {
        let ok = !name.is_empty() && !name.contains(['=', '\0']);
        if !ok {
            self.error(path, "invalid environment variable name");
        }
        ok
    }

    fn http(
        &mut self,
        path: &str,
        text: &str,
        kind: Option<RawTransportKind>,
        credentials: Option<raw::RawCredentials>,
    ) -> Option<Transport> {
        let before = self.errors.len();
        let url = match http_url(text) {
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                self.error(
                    format!("{path}.url"),
                    "must not contain credentials; use credentials: instead",
                );
                None
            }
            Ok(url) => {
                if url.scheme() == "http" && credentials.is_some() && !is_loopback(&url) {
                    self.warnings.push(format!(
                        "{path}.url: credentials are sent over plain http beyond loopback"
                    ));
                }
                Some(url.to_string())
            }
            Err(message) => {
                self.error(format!("{path}.url"), message);
                None
            }
        };
        let credentials =
            credentials.and_then(|c| self.credentials(&format!("{path}.credentials"), c));
        match url {
            Some(url) if self.errors.len() == before => Some(Transport::Http {
                url,
                legacy_sse: kind == Some(RawTransportKind::Sse),
                credentials,
            }),
            _ => None,
        }
    }

    fn credentials(&mut self, path: &str, raw: raw::RawCredentials) -> Option<Credentials> {
        if let Some(oauth) = raw.oauth_client_credentials {
            if raw.bearer_env.is_some() || raw.bearer_file.is_some() || raw.headers.is_some() {
                self.error(
                    path,
                    "set exactly one of bearer_env, bearer_file, headers or oauth_client_credentials",
                );
                return None;
            }
            let path = format!("{path}.oauth_client_credentials");
            return crate::upstream_oauth::compile(self, &path, oauth)
                .map(Credentials::OAuthClientCredentials);
        }
        match (raw.bearer_env, raw.bearer_file, raw.headers) {
            (Some(var), None, None) => {
                let secret = self.env_secret(&format!("{path}.bearer_env"), &var)?;
                self.header_value(&format!("{path}.bearer_env"), &secret)
                    .then_some(Credentials::Bearer(secret))
            }
            (None, Some(file), None) => {
                let secret = self.file_secret(&format!("{path}.bearer_file"), file)?;
                self.header_value(&format!("{path}.bearer_file"), &secret)
                    .then_some(Credentials::Bearer(secret))
            }
            (None, None, Some(headers)) => {
                let before = self.errors.len();
                if headers.is_empty() {
                    self.error(format!("{path}.headers"), "must not be empty");
                }
                let mut out = BTreeMap::new();
                for (name, source) in headers.0 {
                    let p = format!("{path}.headers.{name}");
                    if name.is_empty() || !name.bytes().all(is_token_byte) {
                        self.error(p, "invalid HTTP header name");
                        continue;
                    }
                    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        self.error(p, "is set by the gateway and cannot be configured");
                        continue;
                    }
                    if out.keys().any(|k: &String| k.eq_ignore_ascii_case(&name)) {
                        self.error(p, "duplicate header (names are case-insensitive)");
                        continue;
                    }
                    if let Some(secret) = self.secret_source(&p, &source)
                        && self.header_value(&p, &secret)
                    {
                        out.insert(name, secret);
                    }
                }
                (self.errors.len() == before).then_some(Credentials::Headers(out))
            }
            _ => {
                self.error(
                    path,
                    "set exactly one of bearer_env, bearer_file, headers or oauth_client_credentials",
                );
                None
            }
        }
    }

    /// Can `secret` travel in an HTTP header? (Never prints the value.)
    fn header_value(&mut self, path: &str, secret: &Secret) -> bool {
        let ok = secret
            .expose()
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !ok {
            self.error(
                path,
                "the value contains control characters and cannot be sent in a header",
            );
        }
        ok
    }

    fn secret_source(&mut self, path: &str, source: &RawSecretSource) -> Option<Secret> {
        match (&source.env, &source.file) {
            (Some(var), None) => self.env_secret(&format!("{path}.env"), var),
            (None, Some(file)) => self.file_secret(&format!("{path}.file"), file.clone()),
            _ => {
                self.error(path, "set exactly one of env or file");
                None
            }
        }
    }

    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret> {
        if var.is_empty() || var.contains(['=', '\0']) {
            self.error(path, format!("invalid environment variable name {var:?}"));
            return None;
        }
        match self.loader.var(var) {
            Ok(Some(v)) if v.is_empty() => {
                self.error(path, format!("environment variable {var} is empty"));
                None
            }
            Ok(Some(v)) => Some(Secret::new(v)),
            Ok(None) => {
                self.error(path, format!("environment variable {var} is not set"));
                None
            }
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret> {
        let file = self.relative_to_config(file);
        match read_bounded(&file, MAX_SECRET_BYTES) {
            Ok(text) if text.trim().is_empty() => {
                self.error(path, format!("{} is empty", file.display()));
                None
            }
            Ok(text) => Some(Secret::new(text.trim())),
            Err(e) => {
                self.error(path, format!("cannot read {}: {e}", file.display()));
                None
            }
        }
    }

    fn relative_to_config(&self, path: PathBuf) -> PathBuf {
        match &self.base_dir {
            Some(base) if path.is_relative() && !base.as_os_str().is_empty() => base.join(path),
            _ => path,
        }
    }

    fn auth(
        &mut self,
        raw: raw::RawAuth,
        listen: Option<SocketAddr>,
        public_url: &str,
    ) -> AuthConfig {
        let mut api_keys: Vec<ApiKey> = Vec::new();
        let mut first_index: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for (i, key) in raw.api_keys.unwrap_or_default().into_iter().enumerate() {
            let path = format!("auth.api_keys[{i}]");
            let agent = self.agent_name(&format!("{path}.agent"), key.agent);
            let sha256 = match key.sha256.as_deref().map(str::trim) {
                None => {
                    self.error(format!("{path}.sha256"), "required");
                    None
                }
                Some(text) => {
                    let mut out = [0u8; 32];
                    match hex::decode_to_slice(text, &mut out) {
                        Ok(()) => Some(out),
                        Err(_) => {
                            self.error(format!("{path}.sha256"), "expected 64 hex characters");
                            None
                        }
                    }
                }
            };
            if let Some(hash) = sha256 {
                if let Some(first) = first_index.get(&hash) {
                    self.error(
                        format!("{path}.sha256"),
                        format!("same key as auth.api_keys[{first}]"),
                    );
                } else {
                    first_index.insert(hash, i);
                }
            }
            let expires_at = match key.expires_at.map(|t| t.parse()) {
                None => None,
                Some(Ok(t)) => {
                    if t <= now {
                        self.warnings.push(format!(
                            "{path}.expires_at: the key has expired and every call with it is refused"
                        ));
                    }
                    Some(t)
                }
                Some(Err(message)) => {
                    self.error(format!("{path}.expires_at"), message);
                    None
                }
            };
            if let (Some(agent), Some(sha256)) = (agent, sha256) {
                api_keys.push(ApiKey {
                    agent,
                    sha256,
                    expires_at,
                    revoked: key.revoked.unwrap_or(false),
                });
            }
        }

        let anonymous = raw
            .anonymous
            .and_then(|a| self.agent_name("auth.anonymous.agent", a.agent));
        if anonymous.is_some()
            && let Some(addr) = listen
            && !addr.ip().is_loopback()
        {
            self.warnings.push(format!(
                "auth.anonymous: unauthenticated callers are accepted and the listener {addr} is \
                 reachable beyond loopback"
            ));
        }

        let oidc = raw.oidc.and_then(|o| self.oidc(o, public_url));

        let none_configured = first_index.is_empty() && anonymous.is_none() && oidc.is_none();
        if none_configured {
            self.warnings.push(
                "auth: no api_keys, oidc or anonymous access configured: every call will be \
                 refused with 401"
                    .to_owned(),
            );
        }

        AuthConfig {
            api_keys,
            anonymous,
            oidc,
        }
    }

    /// A required agent name: non-empty, no surrounding whitespace, no control characters.
    fn agent_name(&mut self, path: &str, name: Option<String>) -> Option<String> {
        match name {
            None => {
                self.error(path, "required");
                None
            }
            Some(n) if n.trim().is_empty() => {
                self.error(path, "must not be empty");
                None
            }
            Some(n) if n.trim() != n || n.chars().any(char::is_control) => {
                self.error(
                    path,
                    "must not have surrounding whitespace or control characters",
                );
                None
            }
            Some(n) => Some(n),
        }
    }

    fn oidc(&mut self, raw: raw::RawOidc, public_url: &str) -> Option<OidcConfig> {
        let before = self.errors.len();
        let issuer = match raw.issuer {
            None => {
                self.error("auth.oidc.issuer", "required");
                String::new()
            }
            Some(text) => {
                match http_url(&text) {
                    Ok(url) => {
                        if url.scheme() == "http" && !is_loopback(&url) {
                            self.warnings.push(
                                "auth.oidc.issuer: plain http beyond loopback; keys and discovery \
                                 can be tampered with in transit"
                                    .to_owned(),
                            );
                        }
                    }
                    Err(message) => self.error("auth.oidc.issuer", message),
                }
                text
            }
        };
        let field = |cx: &mut Self, key: &str, value: Option<String>, default: String| match value {
            Some(v) if v.trim().is_empty() => {
                cx.error(format!("auth.oidc.{key}"), "must not be empty");
                default
            }
            Some(v) => v,
            None => default,
        };
        let audience = field(self, "audience", raw.audience, format!("{public_url}/mcp"));
        let agent_claim = field(self, "agent_claim", raw.agent_claim, "azp".to_owned());
        let user_claim = field(self, "user_claim", raw.user_claim, "sub".to_owned());
        let roles_claim = field(self, "roles_claim", raw.roles_claim, "roles".to_owned());
        let required_scopes = raw.required_scopes.unwrap_or_default();
        for (i, scope) in required_scopes.iter().enumerate() {
            // RFC 6749 scope-token: visible ASCII except `"` and `\` (it is quoted in challenges).
            let valid = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
            if scope.is_empty() || !scope.bytes().all(valid) {
                self.error(
                    format!("auth.oidc.required_scopes[{i}]"),
                    "a scope is non-empty visible ASCII without `\"` or `\\`",
                );
            }
        }
        let clock_skew = match raw.clock_skew.as_ref().map(raw::HumanDuration::parse) {
            None => Duration::from_secs(60),
            Some(Ok(skew)) => skew,
            Some(Err(message)) => {
                self.error("auth.oidc.clock_skew", message);
                Duration::ZERO
            }
        };
        let algorithms = match raw.algorithms {
            None => crate::OIDC_ALGORITHMS.map(str::to_owned).to_vec(),
            Some(list) if list.is_empty() => {
                self.error("auth.oidc.algorithms", "must name at least one algorithm");
                Vec::new()
            }
            Some(list) => {
                for (i, alg) in list.iter().enumerate() {
                    if !crate::OIDC_ALGORITHMS.contains(&alg.as_str()) {
                        self.error(
                            format!("auth.oidc.algorithms[{i}]"),
                            format!(
                                "unsupported algorithm {alg:?}: expected one of {} (`none` and HMAC \
                                 algorithms are never accepted)",
                                crate::OIDC_ALGORITHMS.join(", ")
                            ),
                        );
                    }
                }
                list
            }
        };
        let jwks_refetch_interval = self.duration(
            "auth.oidc.jwks_refetch_interval",
            raw.jwks_refetch_interval.as_ref(),
            Duration::from_secs(30),
        );
        (self.errors.len() == before).then_some(OidcConfig {
            issuer,
            audience,
            agent_claim,
            user_claim,
            roles_claim,
            required_scopes,
            clock_skew,
            algorithms,
            jwks_refetch_interval,
        })
    }
}

/// Reads a UTF-8 text file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(text)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8686))
}

/// Does `url` point at this machine (`localhost`, 127.0.0.0/8, `::1`)?
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn http_url(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text.trim()) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Err("must be http(s)".to_owned()),
        Ok(url) if url.host().is_none() => Err(format!("{text:?} has no host")),
        Ok(url) => Ok(url),
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            Err(format!("must be http(s): {text:?} is not an absolute URL"))
        }
        Err(e) => Err(format!("invalid URL {text:?}: {e}")),
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`; anything else unchanged.
pub fn mask_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return text.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => text.to_owned(),
    }
}

impl crate::upstream_oauth::SecretResolver for Cx<'_> {
    fn error(&mut self, path: String, message: String) {
        Cx::error(self, path, message);
    }
    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret> {
        Cx::env_secret(self, path, var)
    }
    fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret> {
        Cx::file_secret(self, path, file)
    }
}
