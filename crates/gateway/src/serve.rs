//! Running the gateway: bind the listener, serve it on the event loops
//! ([`crate::event_loops`]) until a shutdown signal, hot-reload the config file, reap idle
//! sessions, and stop every upstream (children reaped) on the way out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::Config;
use tokio::net::TcpListener;

use crate::edge;
use crate::event_loops::EventLoops;
use crate::state::Gateway;

/// A running gateway, for callers that need its address (tests, `serve` printing URLs).
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub local_addr: std::net::SocketAddr,
    /// Resolves when the server has stopped and every upstream is shut down.
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `config.listen` and serves on `event_loops` loops (None: one per CPU) until
/// `shutdown` resolves.
pub async fn start(
    config: Config,
    event_loops: Option<usize>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let loops = event_loops.unwrap_or_else(EventLoops::default_count);
    start_with(listener, config, loops, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0), one event loop per CPU.
pub async fn start_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    start_with(listener, config, EventLoops::default_count(), shutdown).await
}

/// Serves on `listener` with `event_loops` loops. Opens the store of `config.storage` first:
/// a gateway that cannot keep its state does not start.
async fn start_with(
    listener: TcpListener,
    config: Config,
    event_loops: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let local_addr = listener.local_addr()?;
    // `tls:` files are read before anything else starts: a bad key is a start-up error.
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsListener::new)
        .transpose()?;
    let source = config.source.clone();
    let idle = config.limits.session_idle_timeout;
    let store = portcullis_store::Store::connect(&config.storage)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot open storage {}: {error}",
                portcullis_config::mask_url_password(&config.storage)
            )
        })?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let audit = crate::audit_trail::AuditTrail::start(&config, &store, metrics).await?;
    let control = portcullis_control::Control::open(store.clone(), &config.limits.rate)
        .await
        .map_err(|error| anyhow::anyhow!("cannot load kill switches and task tokens: {error}"))?;
    let control = Arc::new(control);
    let gateway = Gateway::new(config, store, audit, control.clone());
    crate::proxy::control::register_metrics(&gateway);
    crate::scanning::start(&gateway).await?; // tool pins loaded before the first list
    crate::approval::start(&gateway).await?; // held calls of a previous process abandoned
    let export = crate::export::start(&gateway).await?; // audit.sinks, fed from the audit table
    let app = edge::router(gateway.clone());

    let reaper = tokio::spawn(reap_sessions(gateway.clone(), idle));
    // Other replicas' kill switches and task token changes, about once a second.
    let control_poller = tokio::spawn(control.poll_store(Duration::from_secs(1)));
    let watcher = source.map(|path| tokio::spawn(watch_config(gateway.clone(), path)));

    let state = gateway.clone();
    let streams = gateway.clone();
    let shutdown = async move {
        shutdown.await;
        streams.legacy_sse.close_all(); // open HTTP+SSE streams would hold the shutdown forever
    };
    let stop_serving = tokio_util::sync::CancellationToken::new();
    let mut loops = EventLoops::start(
        event_loops,
        listener,
        &stop_serving,
        move |listener, stop| {
            let app = app.clone();
            let tls = tls.clone();
            async move {
                match tls {
                    None => {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                    Some(tls) => tls.serve(listener, app, stop).await,
                }
            }
        },
    )?;
    let stopping = gateway.clone();
    let done = tokio::spawn(async move {
        shutdown.await;
        stopping.shutting_down.cancel();
        stop_serving.cancel();
        let result = loops.served().await;
        reaper.abort();
        control_poller.abort();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        if let Some(export) = export {
            export.stop().await; // before the audit store closes; cursors are persisted
        }
        state.shutdown().await;
        state.telemetry.shutdown().await; // queued spans sent (bounded wait)
        loops.release().await; // work the requests left on the loops ends with them
        result.map_err(anyhow::Error::from)
    });
    Ok(Running {
        gateway,
        local_addr,
        done,
    })
}

async fn reap_sessions(gateway: Arc<Gateway>, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(30).min(idle));
    loop {
        tick.tick().await;
        for session in gateway.sessions.reap_idle(idle) {
            tracing::info!(session = %session.id, "idle session ended");
            for entry in gateway.runtime().catalog.values() {
                entry.connector.release(&session.id).await;
            }
        }
    }
}

/// Applies every good revision of the config file; a bad one keeps the running config.
async fn watch_config(gateway: Arc<Gateway>, path: std::path::PathBuf) {
    let mut revisions = match portcullis_config::watch(path.clone()) {
        Ok(revisions) => revisions,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "config hot reload disabled");
            return;
        }
    };
    while let Some(revision) = revisions.recv().await {
        match revision {
            Ok(config) => {
                if config.telemetry != gateway.runtime().config.telemetry {
                    tracing::warn!(
                        "telemetry changed in the config file; it takes effect only after a restart"
                    );
                }
                if config.listen != gateway.runtime().config.listen {
                    tracing::warn!(
                        "listen address changed in the config file; it takes effect only after a restart"
                    );
                }
                for warning in config.warnings() {
                    tracing::warn!(%warning, "config warning");
                }
                gateway.reload(config).await;
                tracing::info!(path = %path.display(), "config reloaded");
                gateway.audit.config_change(&path, None).await;
            }
            Err(errors) => {
                tracing::error!(path = %path.display(), %errors, "config reload rejected; keeping the last good config");
                gateway
                    .audit
                    .config_change(&path, Some(&errors.to_string()))
                    .await;
            }
        }
    }
}
