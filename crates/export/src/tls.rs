//! TLS trust for outbound sinks: the system's roots, or only the CAs of a sink's `ca_file`.
//!
//! rustls with the ring provider (the gateway's one crypto backend) for `tls://` syslog, and the
//! hardened reqwest client of the HTTP sinks, built in one place ([`http_client`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ExportError;

/// Installs ring as the process's rustls provider if nothing else did (reqwest is built
/// without one).
fn ensure_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM certificates of `ca_file` (at least one).
fn ca_certs(ca_file: &Path) -> Result<Vec<CertificateDer<'static>>, ExportError> {
    let bad = |reason: String| ExportError::Tls {
        file: ca_file.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The rustls client config of a `tls://` syslog sink.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ExportError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in ca_certs(file)? {
                roots.add(cert).map_err(|e| ExportError::Tls {
                    file: file.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ExportError::Tls {
                    file: "(system roots)".into(),
                    reason: "no usable CA certificate found; set ca_file".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExportError::Tls {
            file: "(provider)".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The outbound client of an HTTP sink: rustls (ring), no redirects (a receiver cannot bounce
/// the sink's token elsewhere), connect and overall timeouts, and with `ca_file` only that
/// CA trusted.
pub fn http_client(
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ExportError> {
    ensure_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(4)
        .user_agent(concat!("portcullis-export/", env!("CARGO_PKG_VERSION")));
    if let Some(file) = ca_file {
        let bytes = std::fs::read(file).map_err(|e| ExportError::Tls {
            file: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| ExportError::Tls {
                file: file.display().to_string(),
                reason: e.to_string(),
            })?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| ExportError::Tls {
        file: ca_file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "(system roots)".into()),
        reason: e.to_string(),
    })
}
