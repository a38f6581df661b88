//! `audit.sinks`: where the audit trail is exported (SIEMs, log pipelines), raw and compiled.
//!
//! ```yaml
//! audit:
//!   sinks:                                   # each entry names exactly one kind
//!     - { file: /var/log/portcullis.jsonl }  # JSON lines, fsync per batch; max_bytes + keep rotate
//!     - { syslog: "tcp://127.0.0.1:514", format: cef }   # udp:// tcp:// tls:// (RFC 5424)
//!     - { splunk_hec: "https://splunk:8088", token_env: SPLUNK_TOKEN }
//!     - { webhook: "https://hooks.example.com/audit", secret_env: HOOK_SECRET }
//!     - { otlp_logs: "http://127.0.0.1:4318" }
//! ```
//!
//! Options every kind takes: `name` (the cursor's key and the metric label; default
//! `{kind}:{target}` without credentials or query), `batch_size` (records per delivery,
//! default 500, at most 10,000), `timeout` (per delivery, default 10s), `max_backoff` (longest
//! wait between retries, default 60s), `start` (`oldest`, the default: a new sink receives the
//! whole trail; `latest`: only records appended after it first ran). The rest belong to one kind
//! and are refused on the others, with the path of the key. Secrets (`token_env`, `secret_env`,
//! `headers`) are resolved here, so a missing variable is a config error, not a failing sink.
//! The sinks themselves live in the `portcullis-export` crate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::raw::{HumanDuration, HumanSize, RawSecretSource, UniqueMap};
use crate::{ConfigError, Secret};

/// Default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Largest `batch_size` accepted (bounds the memory a sink holds while its receiver is down).
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `max_backoff`.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One entry of `audit.sinks`, as written. Set exactly one of `file`, `syslog`, `splunk_hec`,
/// `webhook` or `otlp_logs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// JSON lines appended to this file (relative paths are taken from the config file's
    /// directory).
    pub file: Option<PathBuf>,
    /// RFC 5424 syslog receiver: `udp://host:port`, `tcp://host:port` (RFC 6587 octet
    /// counting) or `tls://host:port` (octet counting over TLS). Default ports 514 / 514 / 6514.
    pub syslog: Option<String>,
    /// Splunk HTTP Event Collector base URL (`https://splunk:8088`); events go to
    /// `/services/collector/event` unless the URL already names a path.
    pub splunk_hec: Option<String>,
    /// Any HTTPS endpoint receiving JSON batches signed with HMAC-SHA256.
    pub webhook: Option<String>,
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`); logs go to `/v1/logs` unless the
    /// URL already names a path.
    pub otlp_logs: Option<String>,

    /// The sink's name: key of its delivery cursor and label of its lag metric.
    pub name: Option<String>,
    /// Records per delivery (default 500, at most 10,000).
    pub batch_size: Option<u64>,
    /// Deadline of one delivery (default 10s).
    pub timeout: Option<HumanDuration>,
    /// Longest wait between two retries of a failed delivery (default 60s).
    pub max_backoff: Option<HumanDuration>,
    /// Where a sink without a cursor starts: `oldest` (default) or `latest`.
    pub start: Option<String>,

    /// `file`: rotate when the file reaches this size (`100MiB`); off by default.
    pub max_bytes: Option<HumanSize>,
    /// `file`: rotated files kept (`path.1` … `path.N`, default 5) when `max_bytes` is set.
    pub keep: Option<u64>,

    /// `syslog`: the message body, `json` (default: the record as JSON) or `cef`.
    pub format: Option<String>,
    /// `syslog`: facility name (`local0` default, `auth`, `authpriv`, `daemon`, `user`, …).
    pub facility: Option<String>,
    /// `syslog`: APP-NAME (default `portcullis`).
    pub app_name: Option<String>,
    /// `syslog`: HOSTNAME (default: this machine's host name).
    pub hostname: Option<String>,

    /// `tls://` syslog and `https://` sinks: trust only the CA certificates in this PEM file
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,

    /// `splunk_hec`: environment variable holding the HEC token.
    pub token_env: Option<String>,
    /// `splunk_hec`: file holding the HEC token.
    pub token_file: Option<PathBuf>,
    /// `splunk_hec`: the index events go to (default: the token's).
    pub index: Option<String>,
    /// `splunk_hec`: sourcetype (default `portcullis:audit`).
    pub sourcetype: Option<String>,
    /// `splunk_hec`: source (default `portcullis`).
    pub source: Option<String>,

    /// `webhook`: environment variable holding the HMAC key.
    pub secret_env: Option<String>,
    /// `webhook`: file holding the HMAC key.
    pub secret_file: Option<PathBuf>,

    /// `otlp_logs`: extra request headers (e.g. an API key), each from `env` or `file`.
    pub headers: Option<UniqueMap<RawSecretSource>>,
    /// `otlp_logs`: the `service.name` resource attribute (default `portcullis`).
    pub service_name: Option<String>,
}

/// A compiled sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Unique among the sinks; the cursor key and metric label.
    pub name: String,
    pub kind: SinkKind,
    /// Records per delivery, 1..=[`MAX_BATCH_SIZE`].
    pub batch_size: usize,
    /// Deadline of one delivery.
    pub timeout: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Where a new cursor starts.
    pub start: StartAt,
}

/// Where a sink without a stored cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// From the first record of every chain.
    Oldest,
    /// After the records present when the sink first ran.
    Latest,
}

/// What a sink delivers to.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON lines in a local file.
    File {
        path: PathBuf,
        /// Size-based rotation.
        rotate: Option<Rotate>,
    },
    /// RFC 5424 syslog.
    Syslog {
        transport: SyslogTransport,
        host: String,
        port: u16,
        format: SyslogFormat,
        /// Facility code (0..=23).
        facility: u8,
        app_name: String,
        /// None: the machine's host name, read when the sink starts.
        hostname: Option<String>,
        ca_file: Option<PathBuf>,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        /// Full endpoint URL (`…/services/collector/event`).
        url: String,
        token: Secret,
        index: Option<String>,
        sourcetype: String,
        source: String,
        ca_file: Option<PathBuf>,
    },
    /// Signed JSON batches.
    Webhook {
        url: String,
        secret: Secret,
        ca_file: Option<PathBuf>,
    },
    /// OTLP logs over HTTP/JSON.
    OtlpLogs {
        /// Full endpoint URL (`…/v1/logs`).
        url: String,
        headers: BTreeMap<String, Secret>,
        service_name: String,
        ca_file: Option<PathBuf>,
    },
}

impl SinkKind {
    /// `file`, `syslog`, `splunk_hec`, `webhook` or `otlp_logs`.
    pub fn label(&self) -> &'static str {
        match self {
            SinkKind::File { .. } => "file",
            SinkKind::Syslog { .. } => "syslog",
            SinkKind::SplunkHec { .. } => "splunk_hec",
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::OtlpLogs { .. } => "otlp_logs",
        }
    }
}

/// Size-based rotation of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotate {
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` is the newest).
    pub keep: usize,
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One message per datagram (RFC 5426); best effort, nothing acknowledges it.
    Udp,
    /// Octet counting (RFC 6587 §3.4.1).
    Tcp,
    /// Octet counting over TLS (RFC 5425).
    Tls,
}

/// The MSG part of a syslog message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// The record as JSON, with the key fields also in structured data.
    Json,
    /// ArcSight Common Event Format.
    Cef,
}

/// What compiling sinks needs from the config compiler: secret resolution, relative paths, and
/// where problems and warnings go.
pub(crate) trait SinkCx {
    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret>;
    fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret>;
    fn relative_to_config(&self, file: PathBuf) -> PathBuf;
    fn error(&mut self, path: String, message: String);
    fn warn(&mut self, message: String);
}

/// Compiles `audit.sinks` as kept by [`crate::audit`] (YAML values): each entry is typed into a
/// [`RawSink`] (unknown keys and wrong types are errors naming the entry's path), then compiled.
pub(crate) fn compile_values(
    values: Vec<serde_json::Value>,
    env: &crate::audit::AuditEnv<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Vec<SinkConfig> {
    let mut raw = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        match serde_path_to_error::deserialize::<_, RawSink>(value) {
            Ok(sink) => raw.push((i, sink)),
            Err(error) => {
                let inner = error.path().to_string();
                errors.push(ConfigError {
                    path: if inner == "." {
                        format!("{SINKS_PATH}[{i}]")
                    } else {
                        format!("{SINKS_PATH}[{i}].{inner}")
                    },
                    message: error.into_inner().to_string(),
                });
            }
        }
    }
    let mut cx = EnvCx {
        env,
        errors,
        warnings,
    };
    compile_sinks(&mut cx, SINKS_PATH, raw)
}

/// Where the sinks live in the file.
const SINKS_PATH: &str = "audit.sinks";

/// [`SinkCx`] over the environment `audit:` is compiled against.
struct EnvCx<'a, 'e> {
    env: &'a crate::audit::AuditEnv<'e>,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<String>,
}

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;

impl SinkCx for EnvCx<'_, '_> {
    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret> {
        if var.is_empty() || var.contains(['=', '\0']) {
            self.error(
                path.into(),
                format!("invalid environment variable name {var:?}"),
            );
            return None;
        }
        match (self.env.var)(var) {
            Ok(Some(v)) if !v.is_empty() => Some(Secret::new(v)),
            Ok(Some(_)) => {
                self.error(path.into(), format!("environment variable {var} is empty"));
                None
            }
            Ok(None) => {
                self.error(
                    path.into(),
                    format!("environment variable {var} is not set"),
                );
                None
            }
            Err(message) => {
                self.error(path.into(), message);
                None
            }
        }
    }

    fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret> {
        use std::io::Read;
        let file = self.relative_to_config(file);
        let mut text = String::new();
        let read = std::fs::File::open(&file)
            .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_string(&mut text));
        match read {
            Err(e) => {
                self.error(path.into(), format!("cannot read {}: {e}", file.display()));
                None
            }
            Ok(_) if text.len() as u64 > MAX_SECRET_BYTES => {
                self.error(
                    path.into(),
                    format!("{} is larger than {MAX_SECRET_BYTES} bytes", file.display()),
                );
                None
            }
            Ok(_) if text.trim().is_empty() => {
                self.error(path.into(), format!("{} is empty", file.display()));
                None
            }
            Ok(_) => Some(Secret::new(text.trim())),
        }
    }

    fn relative_to_config(&self, file: PathBuf) -> PathBuf {
        match self.env.base_dir {
            Some(base) if file.is_relative() && !base.as_os_str().is_empty() => base.join(file),
            _ => file,
        }
    }

    fn error(&mut self, path: String, message: String) {
        self.errors.push(ConfigError { path, message });
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }
}

/// Compiles the entries of the list at `path` (with their indices in the file), reporting every
/// problem with the path of its key; entries with problems are left out (the caller fails on
/// any error).
pub(crate) fn compile_sinks(
    cx: &mut dyn SinkCx,
    path: &str,
    raw: Vec<(usize, RawSink)>,
) -> Vec<SinkConfig> {
    let mut out: Vec<SinkConfig> = Vec::with_capacity(raw.len());
    for (i, sink) in raw {
        let at = format!("{path}[{i}]");
        if let Some(compiled) = compile_one(cx, &at, sink) {
            if out.iter().any(|s| s.name == compiled.name) {
                cx.error(
                    format!("{at}.name"),
                    format!(
                        "another sink is already named {:?}; give each sink a unique name",
                        compiled.name
                    ),
                );
                continue;
            }
            out.push(compiled);
        }
    }
    out
}

/// Options that belong to one kind only, with the kinds that accept them.
fn misplaced_options(raw: &RawSink, kind: &str) -> Vec<&'static str> {
    let only = |set: bool, name: &'static str, kinds: &[&str]| {
        (set && !kinds.contains(&kind)).then_some(name)
    };
    [
        only(raw.max_bytes.is_some(), "max_bytes", &["file"]),
        only(raw.keep.is_some(), "keep", &["file"]),
        only(raw.format.is_some(), "format", &["syslog"]),
        only(raw.facility.is_some(), "facility", &["syslog"]),
        only(raw.app_name.is_some(), "app_name", &["syslog"]),
        only(raw.hostname.is_some(), "hostname", &["syslog"]),
        only(
            raw.ca_file.is_some(),
            "ca_file",
            &["syslog", "splunk_hec", "webhook", "otlp_logs"],
        ),
        only(raw.token_env.is_some(), "token_env", &["splunk_hec"]),
        only(raw.token_file.is_some(), "token_file", &["splunk_hec"]),
        only(raw.index.is_some(), "index", &["splunk_hec"]),
        only(raw.sourcetype.is_some(), "sourcetype", &["splunk_hec"]),
        only(raw.source.is_some(), "source", &["splunk_hec"]),
        only(raw.secret_env.is_some(), "secret_env", &["webhook"]),
        only(raw.secret_file.is_some(), "secret_file", &["webhook"]),
        only(raw.headers.is_some(), "headers", &["otlp_logs"]),
        only(raw.service_name.is_some(), "service_name", &["otlp_logs"]),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn compile_one(cx: &mut dyn SinkCx, at: &str, raw: RawSink) -> Option<SinkConfig> {
    let kinds = [
        ("file", raw.file.is_some()),
        ("syslog", raw.syslog.is_some()),
        ("splunk_hec", raw.splunk_hec.is_some()),
        ("webhook", raw.webhook.is_some()),
        ("otlp_logs", raw.otlp_logs.is_some()),
    ];
    let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
    let kind_name = match set.as_slice() {
        [one] => *one,
        [] => {
            cx.error(
                at.to_owned(),
                "set exactly one of file, syslog, splunk_hec, webhook or otlp_logs".into(),
            );
            return None;
        }
        many => {
            cx.error(
                at.to_owned(),
                format!(
                    "set exactly one of file, syslog, splunk_hec, webhook or otlp_logs (found {})",
                    many.join(", ")
                ),
            );
            return None;
        }
    };
    let mut failed = false;
    for option in misplaced_options(&raw, kind_name) {
        cx.error(
            format!("{at}.{option}"),
            format!("not an option of {kind_name} sinks"),
        );
        failed = true;
    }

    let batch_size = match raw.batch_size {
        None => DEFAULT_BATCH_SIZE,
        Some(n) if n >= 1 && n <= MAX_BATCH_SIZE as u64 => n as usize,
        Some(n) => {
            cx.error(
                format!("{at}.batch_size"),
                format!("{n} is out of range (1 to {MAX_BATCH_SIZE})"),
            );
            failed = true;
            DEFAULT_BATCH_SIZE
        }
    };
    let mut duration = |key: &str, value: Option<HumanDuration>, default: Duration| match value {
        None => Some(default),
        Some(v) => match v.parse() {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                cx.error(format!("{at}.{key}"), "must be greater than zero".into());
                None
            }
            Err(message) => {
                cx.error(format!("{at}.{key}"), message);
                None
            }
        },
    };
    let timeout = duration("timeout", raw.timeout.clone(), DEFAULT_TIMEOUT);
    let max_backoff = duration("max_backoff", raw.max_backoff.clone(), DEFAULT_MAX_BACKOFF);
    let start = match raw.start.as_deref() {
        None | Some("oldest") => StartAt::Oldest,
        Some("latest") => StartAt::Latest,
        Some(other) => {
            cx.error(
                format!("{at}.start"),
                format!("unknown value {other:?} (use oldest or latest)"),
            );
            failed = true;
            StartAt::Oldest
        }
    };
    let ca_file = raw.ca_file.clone().map(|f| {
        let f = cx.relative_to_config(f);
        if let Err(e) = std::fs::metadata(&f) {
            cx.error(
                format!("{at}.ca_file"),
                format!("cannot read {}: {e}", f.display()),
            );
            failed = true;
        }
        f
    });

    let (kind, target) = match kind_name {
        "file" => compile_file(cx, at, &raw),
        "syslog" => compile_syslog(cx, at, &raw, ca_file),
        "splunk_hec" => compile_hec(cx, at, &raw, ca_file),
        "webhook" => compile_webhook(cx, at, &raw, ca_file),
        _ => compile_otlp(cx, at, &raw, ca_file),
    }?;
    let name = match raw.name {
        None => format!("{kind_name}:{target}"),
        Some(name) if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) => {
            cx.error(
                format!("{at}.name"),
                "must be 1 to 200 characters without control characters".into(),
            );
            return None;
        }
        Some(name) => name,
    };
    if failed {
        return None;
    }
    Some(SinkConfig {
        name,
        kind,
        batch_size,
        timeout: timeout?,
        max_backoff: max_backoff?,
        start,
    })
}

fn compile_file(cx: &mut dyn SinkCx, at: &str, raw: &RawSink) -> Option<(SinkKind, String)> {
    let path = raw.file.clone()?;
    if path.as_os_str().is_empty() {
        cx.error(format!("{at}.file"), "must not be empty".into());
        return None;
    }
    let path = cx.relative_to_config(path);
    let rotate = match &raw.max_bytes {
        None => {
            if raw.keep.is_some() {
                cx.error(
                    format!("{at}.keep"),
                    "only meaningful with max_bytes".into(),
                );
                return None;
            }
            None
        }
        Some(size) => match size.parse() {
            Ok(max_bytes) if max_bytes >= 4096 => Some(Rotate {
                max_bytes,
                keep: match raw.keep {
                    None => 5,
                    Some(k @ 1..=1000) => k as usize,
                    Some(k) => {
                        cx.error(
                            format!("{at}.keep"),
                            format!("{k} is out of range (1 to 1000)"),
                        );
                        return None;
                    }
                },
            }),
            Ok(_) => {
                cx.error(format!("{at}.max_bytes"), "must be at least 4KiB".into());
                return None;
            }
            Err(message) => {
                cx.error(format!("{at}.max_bytes"), message);
                return None;
            }
        },
    };
    let target = path.display().to_string();
    Some((SinkKind::File { path, rotate }, target))
}

/// Syslog facility names (RFC 5424 §6.2.1) and their codes.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

fn compile_syslog(
    cx: &mut dyn SinkCx,
    at: &str,
    raw: &RawSink,
    ca_file: Option<PathBuf>,
) -> Option<(SinkKind, String)> {
    let text = raw.syslog.as_deref()?;
    let key = format!("{at}.syslog");
    let Ok(url) = url::Url::parse(text) else {
        cx.error(
            key,
            format!(
                "{text:?} is not a URL (use udp://host:port, tcp://host:port or tls://host:port)"
            ),
        );
        return None;
    };
    let (transport, default_port) = match url.scheme() {
        "udp" => (SyslogTransport::Udp, 514),
        "tcp" => (SyslogTransport::Tcp, 514),
        "tls" => (SyslogTransport::Tls, 6514),
        other => {
            cx.error(
                key,
                format!("unsupported scheme {other:?} (use udp://, tcp:// or tls://)"),
            );
            return None;
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => {
            cx.error(key, format!("{text:?} has no host"));
            return None;
        }
    };
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || !url.username().is_empty()
    {
        cx.error(
            key,
            format!("{text:?}: only scheme://host:port is accepted (no path, query or user)"),
        );
        return None;
    }
    if transport != SyslogTransport::Tls && ca_file.is_some() {
        cx.error(
            format!("{at}.ca_file"),
            "only meaningful with tls:// syslog".into(),
        );
        return None;
    }
    let port = url.port().unwrap_or(default_port);
    let format = match raw.format.as_deref() {
        None | Some("json") => SyslogFormat::Json,
        Some("cef") => SyslogFormat::Cef,
        Some(other) => {
            cx.error(
                format!("{at}.format"),
                format!("unknown format {other:?} (use json or cef)"),
            );
            return None;
        }
    };
    let facility = match raw.facility.as_deref() {
        None => 16,
        Some(name) => match FACILITIES.iter().find(|(n, _)| *n == name) {
            Some((_, code)) => *code,
            None => {
                cx.error(
                    format!("{at}.facility"),
                    format!("unknown facility {name:?} (kern, user, daemon, auth, authpriv, local0 … local7, …)"),
                );
                return None;
            }
        },
    };
    let header_field = |value: &Option<String>, max: usize| match value {
        None => Ok(None),
        Some(v)
            if !v.is_empty() && v.len() <= max && v.bytes().all(|b| (33..=126).contains(&b)) =>
        {
            Ok(Some(v.clone()))
        }
        Some(_) => Err(format!(
            "must be 1 to {max} printable ASCII characters without spaces"
        )),
    };
    let app_name = match header_field(&raw.app_name, 48) {
        Ok(v) => v.unwrap_or_else(|| "portcullis".into()),
        Err(message) => {
            cx.error(format!("{at}.app_name"), message);
            return None;
        }
    };
    let hostname = match header_field(&raw.hostname, 255) {
        Ok(v) => v,
        Err(message) => {
            cx.error(format!("{at}.hostname"), message);
            return None;
        }
    };
    if transport == SyslogTransport::Udp {
        cx.warn(format!(
            "{at}: syslog over UDP is best effort (no acknowledgement); records can be lost in transit"
        ));
    }
    let target = format!("{}://{}", url.scheme(), join_host_port(&host, port));
    Some((
        SinkKind::Syslog {
            transport,
            host,
            port,
            format,
            facility,
            app_name,
            hostname,
            ca_file,
        },
        target,
    ))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Checks an `http(s)://` sink URL; appends `default_path` when the URL has none. Returns the
/// URL and its display form without credentials or query (the default sink name).
fn http_url(
    cx: &mut dyn SinkCx,
    key: &str,
    text: &str,
    default_path: &str,
) -> Option<(String, String)> {
    let mut url = match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        _ => {
            cx.error(
                key.to_owned(),
                format!("{text:?} is not an http:// or https:// URL"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        cx.error(
            key.to_owned(),
            "credentials in the URL are not accepted (use the sink's secret options)".into(),
        );
        return None;
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(default_path);
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        cx.warn(format!(
            "{key}: audit records are sent over plain http to a non-loopback host"
        ));
    }
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    Some((url.to_string(), shown.to_string()))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Exactly one of an environment variable or a file.
fn secret(
    cx: &mut dyn SinkCx,
    at: &str,
    (env_key, env): (&str, &Option<String>),
    (file_key, file): (&str, &Option<PathBuf>),
) -> Option<Secret> {
    match (env, file) {
        (Some(var), None) => cx.env_secret(&format!("{at}.{env_key}"), var),
        (None, Some(file)) => cx.file_secret(&format!("{at}.{file_key}"), file.clone()),
        _ => {
            cx.error(
                at.to_owned(),
                format!("set exactly one of {env_key} or {file_key}"),
            );
            None
        }
    }
}

fn compile_hec(
    cx: &mut dyn SinkCx,
    at: &str,
    raw: &RawSink,
    ca_file: Option<PathBuf>,
) -> Option<(SinkKind, String)> {
    let text = raw.splunk_hec.as_deref()?;
    let url = http_url(
        cx,
        &format!("{at}.splunk_hec"),
        text,
        "/services/collector/event",
    );
    let token = secret(
        cx,
        at,
        ("token_env", &raw.token_env),
        ("token_file", &raw.token_file),
    );
    let (url, shown) = url?;
    Some((
        SinkKind::SplunkHec {
            url,
            token: token?,
            index: raw.index.clone(),
            sourcetype: raw
                .sourcetype
                .clone()
                .unwrap_or_else(|| "portcullis:audit".into()),
            source: raw.source.clone().unwrap_or_else(|| "portcullis".into()),
            ca_file,
        },
        shown,
    ))
}

fn compile_webhook(
    cx: &mut dyn SinkCx,
    at: &str,
    raw: &RawSink,
    ca_file: Option<PathBuf>,
) -> Option<(SinkKind, String)> {
    let text = raw.webhook.as_deref()?;
    let url = http_url(cx, &format!("{at}.webhook"), text, "/");
    let secret = secret(
        cx,
        at,
        ("secret_env", &raw.secret_env),
        ("secret_file", &raw.secret_file),
    );
    if let Some(s) = &secret
        && s.expose().len() < 16
    {
        cx.error(
            at.to_owned(),
            "the webhook secret must be at least 16 bytes".into(),
        );
        return None;
    }
    let (url, shown) = url?;
    Some((
        SinkKind::Webhook {
            url,
            secret: secret?,
            ca_file,
        },
        shown,
    ))
}

fn compile_otlp(
    cx: &mut dyn SinkCx,
    at: &str,
    raw: &RawSink,
    ca_file: Option<PathBuf>,
) -> Option<(SinkKind, String)> {
    let text = raw.otlp_logs.as_deref()?;
    let url = http_url(cx, &format!("{at}.otlp_logs"), text, "/v1/logs");
    let mut headers = BTreeMap::new();
    let mut ok = true;
    for (name, source) in raw.headers.iter().flat_map(UniqueMap::iter) {
        let key = format!("{at}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            cx.error(key, "not a valid header name".into());
            ok = false;
            continue;
        }
        if matches!(
            lower.as_str(),
            "host" | "content-type" | "content-length" | "transfer-encoding" | "connection"
        ) {
            cx.error(key, "this header is set by the gateway".into());
            ok = false;
            continue;
        }
        let value = match (&source.env, &source.file) {
            (Some(var), None) => cx.env_secret(&format!("{key}.env"), var),
            (None, Some(file)) => cx.file_secret(&format!("{key}.file"), file.clone()),
            _ => {
                cx.error(key.clone(), "set exactly one of env or file".into());
                None
            }
        };
        match value {
            Some(v)
                if v.expose()
                    .bytes()
                    .all(|b| b == b'\t' || (32..127).contains(&b)) =>
            {
                headers.insert(lower, v);
            }
            Some(_) => {
                cx.error(key, "the value cannot be sent in a header".into());
                ok = false;
            }
            None => ok = false,
        }
    }
    let (url, shown) = url?;
    if !ok {
        return None;
    }
    Some((
        SinkKind::OtlpLogs {
            url,
            headers,
            service_name: raw
                .service_name
                .clone()
                .unwrap_or_else(|| "portcullis".into()),
            ca_file,
        },
        shown,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compiler context with a fixed environment that records problems.
    #[derive(Default)]
    struct TestCx {
        vars: BTreeMap<String, String>,
        errors: Vec<String>,
        warnings: Vec<String>,
    }

    impl SinkCx for TestCx {
        fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret> {
            match self.vars.get(var) {
                Some(v) => Some(Secret::new(v.clone())),
                None => {
                    self.errors
                        .push(format!("{path}: environment variable {var} is not set"));
                    None
                }
            }
        }
        fn file_secret(&mut self, path: &str, file: PathBuf) -> Option<Secret> {
            self.errors
                .push(format!("{path}: cannot read {}", file.display()));
            None
        }
        fn relative_to_config(&self, file: PathBuf) -> PathBuf {
            file
        }
        fn error(&mut self, path: String, message: String) {
            self.errors.push(format!("{path}: {message}"));
        }
        fn warn(&mut self, message: String) {
            self.warnings.push(message);
        }
    }

    fn compile(yaml: &str, vars: &[(&str, &str)]) -> (Vec<SinkConfig>, TestCx) {
        let raw: Vec<RawSink> = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut cx = TestCx {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..TestCx::default()
        };
        let sinks = compile_sinks(
            &mut cx,
            "audit.sinks",
            raw.into_iter().enumerate().collect(),
        );
        (sinks, cx)
    }

    #[test]
    fn every_kind_from_the_documented_example() {
        let (sinks, cx) = compile(
            r#"
- { file: /var/log/portcullis.jsonl }
- { syslog: "tcp://127.0.0.1:514", format: cef }
- { splunk_hec: "https://splunk.example:8088", token_env: SPLUNK_TOKEN }
- { webhook: "https://hooks.example/audit?x=1", secret_env: HOOK_SECRET }
- { otlp_logs: "http://127.0.0.1:4318" }
"#,
            &[
                ("SPLUNK_TOKEN", "tok"),
                ("HOOK_SECRET", "0123456789abcdef0123"),
            ],
        );
        assert_eq!(cx.errors, Vec::<String>::new());
        let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "file:/var/log/portcullis.jsonl",
                "syslog:tcp://127.0.0.1:514",
                "splunk_hec:https://splunk.example:8088/services/collector/event",
                "webhook:https://hooks.example/audit",
                "otlp_logs:http://127.0.0.1:4318/v1/logs",
            ]
        );
        assert!(matches!(
            &sinks[1].kind,
            SinkKind::Syslog {
                transport: SyslogTransport::Tcp,
                port: 514,
                format: SyslogFormat::Cef,
                facility: 16,
                ..
            }
        ));
        match &sinks[2].kind {
            SinkKind::SplunkHec { token, url, .. } => {
                assert_eq!(token.expose(), "tok");
                assert!(url.ends_with("/services/collector/event"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sinks[0].batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(sinks[0].start, StartAt::Oldest);
    }

    #[test]
    fn errors_name_the_entry_and_key() {
        let (sinks, cx) = compile(
            r#"
- { file: /tmp/a.jsonl, format: cef }
- { syslog: "smtp://host:25" }
- { syslog: "tcp://h", webhook: "https://x" }
- { splunk_hec: "https://s", token_env: MISSING }
- { webhook: "https://w", secret_env: SHORT }
- { otlp_logs: "ftp://x" }
- { file: /tmp/b.jsonl, batch_size: 0, start: middle, timeout: 0 }
- { file: /tmp/a.jsonl }
- { file: /tmp/c.jsonl, name: same }
- { file: /tmp/d.jsonl, name: same }
- {}
"#,
            &[("SHORT", "short")],
        );
        assert_eq!(
            cx.errors,
            [
                "audit.sinks[0].format: not an option of file sinks",
                "audit.sinks[1].syslog: unsupported scheme \"smtp\" (use udp://, tcp:// or tls://)",
                "audit.sinks[2]: set exactly one of file, syslog, splunk_hec, webhook or otlp_logs (found syslog, webhook)",
                "audit.sinks[3].token_env: environment variable MISSING is not set",
                "audit.sinks[4]: the webhook secret must be at least 16 bytes",
                "audit.sinks[5].otlp_logs: \"ftp://x\" is not an http:// or https:// URL",
                "audit.sinks[6].batch_size: 0 is out of range (1 to 10000)",
                "audit.sinks[6].timeout: must be greater than zero",
                "audit.sinks[6].start: unknown value \"middle\" (use oldest or latest)",
                "audit.sinks[9].name: another sink is already named \"same\"; give each sink a unique name",
                "audit.sinks[10]: set exactly one of file, syslog, splunk_hec, webhook or otlp_logs",
            ]
        );
        // The entries without problems compile.
        assert_eq!(sinks.len(), 2);
    }

    #[test]
    fn loader_reports_sink_errors_with_their_path() {
        let errors = crate::Loader::with_vars([("T", "x")])
            .from_yaml(
                "audit:\n  sinks:\n    - { file: /tmp/a.jsonl }\n    - { syslog: \"tcp://h:1\", colour: red }\n    - { splunk_hec: \"https://s\", token_env: NOPE }\n    - { webhook: \"https://w\", secret_file: /nonexistent/secret }\n",
                "t",
            )
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>();
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("audit.sinks[1].colour: unknown field `colour`")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|m| m == "audit.sinks[2].token_env: environment variable NOPE is not set"),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|m| m
                    .starts_with("audit.sinks[3].secret_file: cannot read /nonexistent/secret")),
            "{errors:?}"
        );
        let config = crate::Loader::with_vars([("T", "0123456789abcdef")])
            .from_yaml(
                "audit:\n  sinks: [{ webhook: \"http://127.0.0.1:9/h\", secret_env: T, batch_size: 7 }]\n",
                "t",
            )
            .unwrap();
        assert_eq!(config.audit.sinks[0].batch_size, 7);
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn unknown_keys_are_refused_by_the_raw_stage() {
        let error = serde_yaml_ng::from_str::<Vec<RawSink>>("- { file: /x, colour: red }")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
    }

    #[test]
    fn syslog_defaults_and_udp_warning() {
        let (sinks, cx) = compile(
            r#"
- { syslog: "udp://[::1]", facility: authpriv, app_name: gw }
- { syslog: "tls://logs.example", hostname: "bad host" }
"#,
            &[],
        );
        assert_eq!(
            cx.errors,
            ["audit.sinks[1].hostname: must be 1 to 255 printable ASCII characters without spaces"]
        );
        assert_eq!(cx.warnings.len(), 1, "{:?}", cx.warnings);
        match &sinks[0].kind {
            SinkKind::Syslog {
                transport,
                host,
                port,
                facility,
                app_name,
                ..
            } => {
                assert_eq!(*transport, SyslogTransport::Udp);
                assert_eq!(host, "::1");
                assert_eq!(*port, 514);
                assert_eq!(*facility, 10);
                assert_eq!(app_name, "gw");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sinks[0].name, "syslog:udp://[::1]:514");
    }
}
