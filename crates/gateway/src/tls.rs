//! HTTPS on the gateway's listener (`tls:`), with optional client certificates.
//!
//! [`TlsListener::new`] reads and checks the PEM files once, at start (an error names the config
//! path); [`TlsListener::serve`] is the accept loop: each TCP connection gets a bounded TLS
//! handshake, then hyper serves HTTP/1.1 or HTTP/2 (ALPN) with the axum router. The verified
//! client certificate's identity ([`ClientCert`]) is set for every request of that connection
//! (task-local, [`crate::auth::client_cert::scope`]). Shutdown stops accepting, asks each
//! connection to finish gracefully, and waits for all of them, like `axum::serve`.
//!
//! The plain-HTTP path does not go through this module at all.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_config::tls::{ClientAuth, ClientCertConfig, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::client_cert::{self, ClientCert};

/// Longest time a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of the listener, built from `tls:` (cloned into each event loop).
#[derive(Clone)]
pub struct TlsListener {
    acceptor: tokio_rustls::TlsAcceptor,
    client: Option<Arc<ClientCertConfig>>,
}

impl TlsListener {
    /// Reads the certificate chain, key and client CAs; errors name the config path.
    pub fn new(config: &TlsConfig) -> anyhow::Result<TlsListener> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs(&config.cert_file, "tls.cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|error| {
            anyhow::anyhow!(
                "tls.key_file: no usable PEM private key in {}: {error}",
                config.key_file.display()
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &config.client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(&client.ca_file, "tls.client_ca_file")? {
                    roots.add(ca).map_err(|error| {
                        anyhow::anyhow!(
                            "tls.client_ca_file: bad CA certificate in {}: {error}",
                            client.ca_file.display()
                        )
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = match client.auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|error| anyhow::anyhow!("tls.client_ca_file: {error}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_single_cert(chain, key).map_err(|error| {
            anyhow::anyhow!("tls.key_file: does not match tls.cert_file: {error}")
        })?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            client: config.client.clone().map(Arc::new),
        })
    }

    /// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections
    /// to finish their requests (long-lived streams are closed by the caller's shutdown path).
    pub async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let connections = TaskTracker::new();
        let stopping = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let client = self.client.clone();
            let app = app.clone();
            let stopping = stopping.clone();
            connections.spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                // A handshake still under way at shutdown is dropped, not waited for.
                let stream = tokio::select! {
                    result = handshake => match result {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    () = stopping.cancelled() => return,
                };
                let cert = client.as_deref().and_then(|config| {
                    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
                    Some(Arc::new(ClientCert::from_der(leaf, config)))
                });
                serve_connection(stream, app, cert, stopping).await;
            });
        }
        stopping.cancel();
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    app: Router,
    cert: Option<Arc<ClientCert>>,
    stopping: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let app = app.clone();
            client_cert::scope(
                cert.clone(),
                app.oneshot(request.map(axum::body::Body::new)),
            )
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "TLS connection ended with an error");
    }
}

fn read_certs(path: &Path, config_path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            anyhow::anyhow!("{config_path}: cannot read {}: {error}", path.display())
        })?;
    if certs.is_empty() {
        anyhow::bail!("{config_path}: no PEM certificate in {}", path.display());
    }
    Ok(certs)
}
