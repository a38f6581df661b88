//! `telemetry:` — OpenTelemetry traces of governed requests, exported over OTLP/HTTP (JSON),
//! raw and compiled. Off unless `otlp_traces` is set.
//!
//! ```yaml
//! telemetry:
//!   otlp_traces: "http://127.0.0.1:4318"   # OTLP/HTTP receiver; `/v1/traces` when no path given
//!   service_name: portcullis               # the `service.name` resource attribute
//!   sample_ratio: 1.0                      # share of traces the gateway starts itself (0..1);
//!                                          # a client's traceparent decides for its own trace
//!   headers: { authorization: { env: OTLP_AUTH } }   # extra headers, each from env or file
//!   batch_size: 512                        # most spans per POST
//!   interval: 1s                           # flush at least this often
//!   max_queued_spans: 8192                 # spans waiting to be sent; more are dropped (counted)
//!   timeout: 5s                            # per POST
//! ```
//!
//! Secrets in `headers` are resolved here, so a missing variable is a config error naming its
//! path, not a failing exporter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raw::{HumanDuration, RawSecretSource, UniqueMap};
use crate::{ConfigError, Secret};

/// Default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Largest `batch_size` accepted.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Default `max_queued_spans`.
pub const DEFAULT_MAX_QUEUED_SPANS: usize = 8_192;
/// Largest `max_queued_spans` accepted (bounds the memory spans take while a receiver is down).
pub const MAX_QUEUED_SPANS: usize = 1_000_000;

/// `telemetry:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP traces endpoint (`http(s)://host:port[/path]`); `/v1/traces` is used when the
    /// URL has no path. Without it no spans are recorded.
    pub otlp_traces: Option<String>,
    /// The `service.name` resource attribute (default `portcullis`).
    pub service_name: Option<String>,
    /// Share of gateway-started traces recorded, 0.0 to 1.0 (default 1.0). A request carrying a
    /// valid `traceparent` follows that header's sampled flag.
    pub sample_ratio: Option<f64>,
    /// Extra request headers (e.g. an API key), each from `env` or `file`.
    pub headers: Option<UniqueMap<RawSecretSource>>,
    /// Most spans per POST (default 512, at most 10,000).
    pub batch_size: Option<u64>,
    /// Longest time a finished span waits before it is sent (default 1s).
    pub interval: Option<HumanDuration>,
    /// Most spans waiting to be sent (default 8192); spans finished while the queue is full are
    /// dropped and counted in `portcullis_trace_spans_dropped_total`.
    pub max_queued_spans: Option<u64>,
    /// Timeout of one POST (default 5s).
    pub timeout: Option<HumanDuration>,
}

/// `telemetry:`, compiled. `traces: None` means tracing is off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryConfig {
    pub traces: Option<TracesConfig>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    /// The full endpoint URL (`…/v1/traces`).
    pub url: String,
    pub service_name: String,
    pub sample_ratio: f64,
    /// Extra headers, lower-case names; values are secrets.
    pub headers: BTreeMap<String, Secret>,
    pub batch_size: usize,
    pub interval: Duration,
    pub max_queued_spans: usize,
    pub timeout: Duration,
}

/// What compiling needs from its surroundings.
pub(crate) struct TelemetryEnv<'a> {
    /// Reads an environment variable (Err: present but unreadable).
    pub var: &'a dyn Fn(&str) -> Result<Option<String>, String>,
    /// Directory relative header `file` paths are resolved against.
    pub base_dir: Option<&'a Path>,
}

const AT: &str = "telemetry";

/// Compiles `telemetry:`; problems are appended to `errors` with their paths.
pub(crate) fn compile(
    raw: Option<RawTelemetry>,
    env: &TelemetryEnv<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> TelemetryConfig {
    let Some(raw) = raw else {
        return TelemetryConfig::default();
    };
    let mut error = |path: String, message: String| errors.push(ConfigError { path, message });
    let Some(text) = raw.otlp_traces.as_deref() else {
        let set: Vec<&str> = [
            ("service_name", raw.service_name.is_some()),
            ("sample_ratio", raw.sample_ratio.is_some()),
            ("headers", raw.headers.is_some()),
            ("batch_size", raw.batch_size.is_some()),
            ("interval", raw.interval.is_some()),
            ("max_queued_spans", raw.max_queued_spans.is_some()),
            ("timeout", raw.timeout.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        if !set.is_empty() {
            error(
                format!("{AT}.otlp_traces"),
                format!(
                    "required when {} is set (tracing is off without it)",
                    set.join(", ")
                ),
            );
        }
        return TelemetryConfig::default();
    };
    let url = endpoint(text, &mut error, warnings);
    let service_name = match raw.service_name {
        None => "portcullis".to_owned(),
        Some(name) if !name.trim().is_empty() && !name.chars().any(char::is_control) => name,
        Some(_) => {
            error(
                format!("{AT}.service_name"),
                "must be a non-empty name without control characters".to_owned(),
            );
            String::new()
        }
    };
    let sample_ratio = match raw.sample_ratio {
        None => 1.0,
        Some(r) if r.is_finite() && (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            error(
                format!("{AT}.sample_ratio"),
                format!("{r} is not between 0.0 and 1.0"),
            );
            1.0
        }
    };
    let mut count = |key: &str, value: Option<u64>, default: usize, max: usize| match value {
        None => default,
        Some(n) if n >= 1 && n <= max as u64 => n as usize,
        Some(n) => {
            error(
                format!("{AT}.{key}"),
                format!("{n} is not between 1 and {max}"),
            );
            default
        }
    };
    let batch_size = count(
        "batch_size",
        raw.batch_size,
        DEFAULT_BATCH_SIZE,
        MAX_BATCH_SIZE,
    );
    let max_queued_spans = count(
        "max_queued_spans",
        raw.max_queued_spans,
        DEFAULT_MAX_QUEUED_SPANS,
        MAX_QUEUED_SPANS,
    );
    let mut duration = |key: &str, value: Option<HumanDuration>, default: Duration| match value
        .map(|v| v.parse())
    {
        None => default,
        Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
        Some(Ok(_)) => {
            error(
                format!("{AT}.{key}"),
                "must be more than 0s and at most 1h".to_owned(),
            );
            default
        }
        Some(Err(message)) => {
            error(format!("{AT}.{key}"), message);
            default
        }
    };
    let interval = duration("interval", raw.interval, Duration::from_secs(1));
    let timeout = duration("timeout", raw.timeout, Duration::from_secs(5));
    let headers = headers(raw.headers, env, &mut error);
    match (url, headers) {
        (Some(url), Some(headers)) => TelemetryConfig {
            traces: Some(TracesConfig {
                url,
                service_name,
                sample_ratio,
                headers,
                batch_size,
                interval,
                max_queued_spans,
                timeout,
            }),
        },
        _ => TelemetryConfig::default(),
    }
}

/// The endpoint URL with `/v1/traces` as the default path; None (and an error) when invalid.
fn endpoint(
    text: &str,
    error: &mut impl FnMut(String, String),
    warnings: &mut Vec<String>,
) -> Option<String> {
    let key = format!("{AT}.otlp_traces");
    let mut url = match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        _ => {
            error(key, format!("{text:?} is not an http:// or https:// URL"));
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        error(
            key,
            "credentials in the URL are not accepted (use `headers` with env or file)".to_owned(),
        );
        return None;
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/v1/traces");
    }
    if url.scheme() == "http" && !loopback(&url) {
        warnings.push(format!(
            "{key}: spans (agents, tools, rules) are sent over plain http to a non-loopback host"
        ));
    }
    Some(url.to_string())
}

fn loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `headers`: names checked, values read from the environment or files. None when any failed.
fn headers(
    raw: Option<UniqueMap<RawSecretSource>>,
    env: &TelemetryEnv<'_>,
    error: &mut impl FnMut(String, String),
) -> Option<BTreeMap<String, Secret>> {
    let mut headers = BTreeMap::new();
    let mut ok = true;
    for (name, source) in raw.iter().flat_map(UniqueMap::iter) {
        let key = format!("{AT}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            error(key, "not a valid header name".to_owned());
            ok = false;
            continue;
        }
        if matches!(
            lower.as_str(),
            "host" | "content-type" | "content-length" | "transfer-encoding" | "connection"
        ) {
            error(key, "this header is set by the gateway".to_owned());
            ok = false;
            continue;
        }
        let value = match (&source.env, &source.file) {
            (Some(var), None) => match (env.var)(var) {
                Ok(Some(value)) if !value.is_empty() => Some(value),
                Ok(_) => {
                    error(
                        format!("{key}.env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
                Err(message) => {
                    error(format!("{key}.env"), message);
                    None
                }
            },
            (None, Some(file)) => {
                let file: PathBuf = match env.base_dir {
                    Some(base) if file.is_relative() => base.join(file),
                    _ => file.clone(),
                };
                match std::fs::read_to_string(&file) {
                    Ok(text) => Some(text.trim().to_owned()),
                    Err(e) => {
                        error(
                            format!("{key}.file"),
                            format!("cannot read {}: {e}", file.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                error(key.clone(), "set exactly one of env or file".to_owned());
                None
            }
        };
        match value {
            Some(v) if v.bytes().all(|b| b == b'\t' || (32..127).contains(&b)) => {
                headers.insert(lower, Secret::new(v));
            }
            Some(_) => {
                error(key, "the value cannot be sent in a header".to_owned());
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(
        yaml: &str,
        vars: &[(&str, &str)],
    ) -> (TelemetryConfig, Vec<String>, Vec<String>) {
        let raw: RawTelemetry = serde_yaml_ng::from_str(yaml).unwrap();
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let var = |name: &str| Ok(vars.get(name).cloned());
        let env = TelemetryEnv {
            var: &var,
            base_dir: None,
        };
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let config = compile(Some(raw), &env, &mut errors, &mut warnings);
        (
            config,
            errors.iter().map(ToString::to_string).collect(),
            warnings,
        )
    }

    #[test]
    fn defaults_and_path() {
        let (config, errors, warnings) =
            compile_yaml("otlp_traces: \"http://127.0.0.1:4318\"", &[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        let traces = config.traces.unwrap();
        assert_eq!(traces.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces.service_name, "portcullis");
        assert_eq!(traces.sample_ratio, 1.0);
        assert_eq!(traces.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(traces.max_queued_spans, DEFAULT_MAX_QUEUED_SPANS);
        assert_eq!(traces.interval, Duration::from_secs(1));
        assert_eq!(traces.timeout, Duration::from_secs(5));
    }

    #[test]
    fn full_section_with_header_from_env() {
        let (config, errors, _) = compile_yaml(
            "otlp_traces: \"https://otel.example.com/custom/traces\"\nservice_name: gw-eu\nsample_ratio: 0.25\nheaders: { Authorization: { env: OTLP_AUTH } }\nbatch_size: 100\ninterval: 250ms\nmax_queued_spans: 1000\ntimeout: 2s",
            &[("OTLP_AUTH", "Bearer abc")],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let traces = config.traces.unwrap();
        assert_eq!(traces.url, "https://otel.example.com/custom/traces");
        assert_eq!(traces.service_name, "gw-eu");
        assert_eq!(traces.sample_ratio, 0.25);
        assert_eq!(traces.headers["authorization"].expose(), "Bearer abc");
        assert_eq!(traces.batch_size, 100);
        assert_eq!(traces.interval, Duration::from_millis(250));
        assert_eq!(traces.max_queued_spans, 1000);
        assert_eq!(traces.timeout, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_their_keys() {
        let (config, errors, _) = compile_yaml(
            "otlp_traces: \"ftp://x\"\nsample_ratio: 1.5\nheaders: { host: { env: X }, x-key: { env: MISSING } }\nbatch_size: 0\ninterval: 0s",
            &[],
        );
        assert_eq!(config, TelemetryConfig::default());
        for expected in [
            "telemetry.otlp_traces: \"ftp://x\" is not an http:// or https:// URL",
            "telemetry.sample_ratio: 1.5 is not between 0.0 and 1.0",
            "telemetry.headers.host: this header is set by the gateway",
            "telemetry.headers.x-key.env: environment variable MISSING is not set",
            "telemetry.batch_size: 0 is not between 1 and 10000",
            "telemetry.interval: must be more than 0s and at most 1h",
        ] {
            assert!(
                errors.iter().any(|e| e == expected),
                "missing {expected:?} in {errors:?}"
            );
        }
        let (_, errors, _) = compile_yaml("service_name: x", &[]);
        assert_eq!(
            errors,
            vec![
                "telemetry.otlp_traces: required when service_name is set (tracing is off without it)"
            ]
        );
    }

    #[test]
    fn plain_http_off_loopback_warns_and_credentials_refused() {
        let (config, errors, warnings) =
            compile_yaml("otlp_traces: \"http://collector:4318\"", &[]);
        assert!(errors.is_empty());
        assert!(config.traces.is_some());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (_, errors, _) = compile_yaml("otlp_traces: \"https://u:p@collector\"", &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("telemetry.otlp_traces: credentials"));
    }
}
