//! `tls:` — serve the listener over TLS, optionally asking clients for a certificate that then
//! identifies the agent (mTLS), raw and compiled. Off unless the section is present.
//!
//! ```yaml
//! tls:
//!   cert_file: /etc/portcullis/server.pem     # PEM chain, leaf first
//!   key_file: /etc/portcullis/server.key      # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!   client_ca_file: /etc/portcullis/ca.pem    # trust anchors for client certificates
//!   client_auth: required                     # required (default) | optional
//!   identity:
//!     agent_from: cn                          # cn (default) | san_uri | san_dns
//!     roles_from_ou: false                    # subject OUs become the principal's roles
//! ```
//!
//! Relative paths are resolved against the config file's directory. The files are read and
//! parsed when the gateway starts; here they must exist. With `tls:` the default `public_url`
//! is `https://<listen>`, and an explicit `http://` one is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

/// `tls:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
    pub identity: Option<RawIdentity>,
}

/// `tls.identity:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub agent_from: Option<AgentFrom>,
    pub roles_from_ou: Option<bool>,
}

/// Whether a client must present a certificate signed by `client_ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The handshake fails without a valid client certificate.
    Required,
    /// A client may connect without a certificate (and then needs a bearer credential); a
    /// certificate it does present must still be valid.
    Optional,
}

/// Which part of a verified client certificate names the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentFrom {
    /// The subject's common name.
    Cn,
    /// The first URI subject alternative name (e.g. a SPIFFE id).
    SanUri,
    /// The first DNS subject alternative name.
    SanDns,
}

/// `tls:`, compiled. `Config::tls` is `None` when the listener speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificate verification; `None` when clients are not asked for certificates.
    pub client: Option<ClientCertConfig>,
}

/// How client certificates are verified and mapped to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertConfig {
    pub ca_file: PathBuf,
    pub auth: ClientAuth,
    pub agent_from: AgentFrom,
    pub roles_from_ou: bool,
}

/// What [`compile`] needs from the loader.
pub struct TlsEnv<'a> {
    pub base_dir: Option<&'a Path>,
    /// `public_url` was written (or set by environment), not derived from `listen`.
    pub public_url_explicit: bool,
}

/// Compiles `tls:`; with TLS on, rewrites a derived `http://` `public_url` to `https://`.
pub fn compile(
    raw: Option<RawTls>,
    env: &TlsEnv<'_>,
    public_url: &mut String,
    errors: &mut Vec<ConfigError>,
) -> Option<TlsConfig> {
    let raw = raw?;
    let mut error = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.to_owned(),
            message,
        })
    };
    let file = |path: &str, value: Option<PathBuf>, error: &mut dyn FnMut(&str, String)| {
        let Some(value) = value else {
            error(path, "is required when tls is set".to_owned());
            return None;
        };
        let resolved = match env.base_dir {
            Some(base) if value.is_relative() => base.join(&value),
            _ => value,
        };
        if !resolved.is_file() {
            error(path, format!("cannot read {}", resolved.display()));
        }
        Some(resolved)
    };
    let cert_file = file("tls.cert_file", raw.cert_file, &mut error);
    let key_file = file("tls.key_file", raw.key_file, &mut error);
    let client = match raw.client_ca_file {
        Some(ca) => {
            let ca_file = file("tls.client_ca_file", Some(ca), &mut error);
            let identity = raw.identity.unwrap_or_default();
            ca_file.map(|ca_file| ClientCertConfig {
                ca_file,
                auth: raw.client_auth.unwrap_or(ClientAuth::Required),
                agent_from: identity.agent_from.unwrap_or(AgentFrom::Cn),
                roles_from_ou: identity.roles_from_ou.unwrap_or(false),
            })
        }
        None => {
            if raw.client_auth.is_some() {
                error(
                    "tls.client_auth",
                    "needs tls.client_ca_file to verify client certificates".to_owned(),
                );
            }
            if raw.identity.is_some() {
                error(
                    "tls.identity",
                    "needs tls.client_ca_file to verify client certificates".to_owned(),
                );
            }
            None
        }
    };
    if let Some(rest) = public_url.strip_prefix("http://") {
        if env.public_url_explicit {
            error(
                "public_url",
                "must be https:// when tls is set (the listener does not speak plain HTTP)"
                    .to_owned(),
            );
        } else {
            *public_url = format!("https://{rest}");
        }
    }
    Some(TlsConfig {
        cert_file: cert_file?,
        key_file: key_file?,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, url: &str, explicit: bool) -> (Option<TlsConfig>, String, Vec<ConfigError>) {
        // One directory per call: tests run in parallel and each removes its own.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("portcullis-tls-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let raw: RawTls = serde_yaml_ng::from_str(yaml).unwrap();
        let mut public_url = url.to_owned();
        let mut errors = Vec::new();
        let env = TlsEnv {
            base_dir: Some(&dir),
            public_url_explicit: explicit,
        };
        let tls = compile(Some(raw), &env, &mut public_url, &mut errors);
        let _ = std::fs::remove_dir_all(&dir);
        (tls, public_url, errors)
    }

    fn paths(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn client_auth_defaults_to_required_and_public_url_becomes_https() {
        let (tls, url, errors) = run(
            "{cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem}",
            "http://127.0.0.1:8686",
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let client = tls.unwrap().client.unwrap();
        assert_eq!(client.auth, ClientAuth::Required);
        assert_eq!(client.agent_from, AgentFrom::Cn);
        assert!(client.ca_file.is_absolute());
        assert_eq!(url, "https://127.0.0.1:8686");
    }

    #[test]
    fn errors_name_their_path() {
        let (_, _, errors) = run(
            "{cert_file: missing.pem, client_auth: optional}",
            "http://gw.example",
            true,
        );
        assert_eq!(
            paths(&errors),
            [
                "tls.cert_file",
                "tls.key_file",
                "tls.client_auth",
                "public_url"
            ]
        );
    }
}
