//! SIEM export (`audit.sinks`): started with the gateway over its own audit store and
//! control-plane store (the cursors), with each sink's progress on `/metrics`:
//!
//! - `portcullis_export_lag_records{sink,chain}`: records appended and not yet acknowledged;
//! - `portcullis_export_lag_seconds{sink,chain}`: age of the oldest of them;
//! - `portcullis_export_delivered_records_total{sink,chain}`, `portcullis_export_failures_total{sink,chain}`.
//!
//! Sinks are read at start-up; a hot reload that changes `audit.sinks` takes effect at the next
//! restart (cursors are persisted, so nothing is lost in between). The delivery machinery is
//! the `portcullis-export` crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_export::ExportHandle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::state::Gateway;

/// Labels of the export series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkChainLabels {
    pub sink: String,
    pub chain: String,
}

/// Starts the sinks of the running config; None when there are none or the trail is off.
/// Fails when a sink cannot be built (unreadable CA file) or the cursor table cannot be made:
/// a gateway configured to export does not silently run without it.
pub async fn start(gateway: &Arc<Gateway>) -> anyhow::Result<Option<ExportHandle>> {
    let config = gateway.runtime().config.clone();
    let sinks = &config.audit.sinks;
    let Some(audit_store) = gateway.audit.store() else {
        if !sinks.is_empty() {
            tracing::warn!("audit.sinks ignored: audit.enabled is false");
        }
        return Ok(None);
    };
    if sinks.is_empty() {
        return Ok(None);
    }
    let handle = portcullis_export::start(
        sinks,
        audit_store.clone(),
        gateway.store.clone(),
        std::future::pending(),
    )
    .await?;
    register_metrics(&gateway.metrics, handle.clone());
    Ok(Some(handle))
}

fn register_metrics(metrics: &crate::metrics::Metrics, handle: ExportHandle) {
    let records = Family::<SinkChainLabels, Gauge>::default();
    let seconds = Family::<SinkChainLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let delivered = Family::<SinkChainLabels, Counter>::default();
    let failures = Family::<SinkChainLabels, Counter>::default();
    metrics.register(
        "export_lag_records",
        "Audit records not yet acknowledged by the sink",
        records.clone(),
    );
    metrics.register(
        "export_lag_seconds",
        "Age of the oldest audit record not yet acknowledged by the sink",
        seconds.clone(),
    );
    metrics.register(
        "export_delivered_records",
        "Audit records acknowledged by the sink",
        delivered.clone(),
    );
    metrics.register(
        "export_failures",
        "Failed delivery attempts (each retried with backoff)",
        failures.clone(),
    );
    // Counters only go up: add what changed since the last scrape.
    let last: Mutex<HashMap<SinkChainLabels, (u64, u64)>> = Mutex::default();
    metrics.on_scrape(move || {
        let Ok(mut last) = last.lock() else {
            return;
        };
        for lag in handle.lag() {
            let labels = SinkChainLabels {
                sink: lag.sink,
                chain: lag.chain_id,
            };
            records
                .get_or_create(&labels)
                .set(i64::try_from(lag.records_behind).unwrap_or(i64::MAX));
            seconds.get_or_create(&labels).set(lag.seconds_behind);
            let previous = last.entry(labels.clone()).or_default();
            delivered
                .get_or_create(&labels)
                .inc_by(lag.delivered_total.saturating_sub(previous.0));
            failures
                .get_or_create(&labels)
                .inc_by(lag.failures_total.saturating_sub(previous.1));
            *previous = (lag.delivered_total, lag.failures_total);
        }
    });
}
