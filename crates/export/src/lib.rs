//! `portcullis-export`: the audit trail to SIEMs, at least once.
//!
//! The audit table is the durable outbox ([`outbox`]): records are append-only and numbered per
//! chain without gaps, so each sink only needs a persisted cursor per chain ([`cursor`], in the
//! control-plane store). One task per sink ([`pump`]) reads a page after its cursor, delivers
//! it, and advances the cursor after the receiver acknowledged it; a failure is retried with
//! exponential backoff and jitter ([`backoff`]) and the cursor stays put, so a receiver outage
//! costs no records and no memory beyond one page. Progress is reported per sink and chain by
//! [`ExportHandle::lag`] (records and seconds behind the head) for `/metrics`.
//!
//! Wire formats are pure functions in [`format`]; the IO of each receiver is in `sink`
//! (JSON lines file, syslog UDP/TCP/TLS, Splunk HEC, signed webhook, OTLP/HTTP logs).
//! Configuration is `audit.sinks`, typed in [`portcullis_config::sinks`].
//!
//! Delivery is at least once: a crash between an acknowledgement and the cursor update sends
//! that batch again. Records carry `(chain_id, seq)` for receivers that deduplicate.

pub mod backoff;
pub mod cursor;
pub mod format;
mod lag;
pub mod outbox;
mod pump;
mod sink;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_audit::store::AuditStore;
use portcullis_config::sinks::SinkConfig;
use portcullis_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use lag::SinkLag;
pub use sink::DeliveryError;

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The cursor table could not be created or read.
    #[error("export: control store: {0}")]
    Store(#[from] portcullis_store::StoreError),
    /// A CA file or TLS setting is unusable.
    #[error("export: TLS trust for {file}: {reason}")]
    Tls { file: String, reason: String },
    /// A sink could not be built (a bug, not an input: the config compiler checks sinks).
    #[error("export: {0}")]
    Internal(String),
}

/// Tuning that is not configuration (tests shorten it).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Wait between polls of an idle outbox (default 1 s).
    pub poll_interval: Duration,
    /// First retry delay after a failed delivery (default 200 ms; doubles up to the sink's
    /// `max_backoff`).
    pub initial_backoff: Duration,
    /// This process's name in cursor leases (default: a random id).
    pub owner: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            poll_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(200),
            owner: None,
        }
    }
}

/// The running export: one task per sink. Cloning shares it.
#[derive(Debug, Clone)]
pub struct ExportHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    board: Arc<lag::LagBoard>,
    /// Cancelled by [`ExportHandle::stop`] or the shutdown future given to [`start`].
    stop: CancellationToken,
    /// The pump tasks, joined by [`ExportHandle::stop`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Starts one export task per sink, reading `audit` and keeping cursors in `control` (the same
/// database). Returns once every sink is built and the cursor table exists; deliveries happen
/// in the background until `shutdown` resolves or [`ExportHandle::stop`] is called.
pub async fn start(
    sinks: &[SinkConfig],
    audit: AuditStore,
    control: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ExportHandle, ExportError> {
    start_with(sinks, audit, control, shutdown, ExportOptions::default()).await
}

/// [`start`] with explicit [`ExportOptions`].
pub async fn start_with(
    sinks: &[SinkConfig],
    audit: AuditStore,
    control: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ExportOptions,
) -> Result<ExportHandle, ExportError> {
    let cursors = cursor::Cursors::open(control).await?;
    let board = Arc::new(lag::LagBoard::default());
    let stop = CancellationToken::new();
    let shared = pump::Shared {
        outbox: outbox::Outbox::new(audit),
        cursors,
        board: board.clone(),
        owner: options
            .owner
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
            .into(),
        poll_interval: options.poll_interval,
        initial_backoff: options.initial_backoff,
        stop: stop.clone(),
    };
    let mut pumps = Vec::with_capacity(sinks.len());
    for config in sinks {
        let sink = sink::Sink::build(config)?;
        board.register(&config.name, config.kind.label());
        pumps.push(pump::Pump::new(config.clone(), sink, shared.clone()));
    }
    let tasks = pumps
        .into_iter()
        .map(|p| tokio::spawn(p.run()))
        .collect::<Vec<_>>();
    if !sinks.is_empty() {
        tracing::info!(sinks = sinks.len(), "audit export started");
    }
    let on_shutdown = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => on_shutdown.cancel(),
            () = on_shutdown.cancelled() => {}
        }
    });
    Ok(ExportHandle {
        inner: Arc::new(Inner {
            board,
            stop,
            tasks: Mutex::new(tasks),
        }),
    })
}

impl ExportHandle {
    /// Per sink and chain: records and seconds behind the head, deliveries and failures. A
    /// sink that has seen no chain yet appears once with an empty `chain_id`.
    pub fn lag(&self) -> Vec<SinkLag> {
        self.inner.board.snapshot(portcullis_audit::store::now_us())
    }

    /// Stops every sink and waits for the tasks to end. An interrupted delivery is sent again
    /// by the next start (its cursor did not move).
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        let tasks = match self.inner.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
    }
}
