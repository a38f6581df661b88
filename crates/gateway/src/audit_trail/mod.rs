//! The audit trail on the data plane: the one writer of this replica's chain and the ways the
//! gateway puts records into it.
//!
//! [`AuditTrail::start`] opens the audit store on `storage` (the same database as the control
//! plane), starts the single [`AuditWriter`] of this replica's chain (group commit, signed
//! checkpoints every N records / T seconds / at shutdown), loads the argument-fingerprint key,
//! and starts the spool replay and retention jobs. Three ways in, by how much a record matters:
//!
//! - [`AuditTrail::record`]: durable before it returns (decision records of calls, denials,
//!   config changes). If the store refuses, the record goes to the spool when
//!   `audit.on_failure: spool`, else the caller gets [`AuditUnavailable`] and fails closed.
//! - [`AuditTrail::record_later`]: queued in order now, committed by the next group commit
//!   (outcome records when `audit.await_outcome: false`); failures are spooled or counted.
//! - [`AuditTrail::record_best_effort`]: never waits (authentication failures, refused
//!   server→client requests, which the network can produce at any rate); dropped and counted in
//!   `portcullis_audit_dropped_total` when the queue is full, so a flood cannot stall calls.
//!
//! The per-call records are built in [`crate::proxy::audit`]; trace context in [`trace`].

pub mod spool;
pub mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use portcullis_audit::store::{AuditStore, AuditWriter, Durability, WriterConfig, now_us};
use portcullis_audit::{AuditEvent, Outcome, RecordKind, SigningKeyFile};
use portcullis_config::{AuditSync, Config, OnAuditFailure};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::metrics::{KindLabel, Metrics};
use spool::Spool;

/// How often the spool is checked for records to replay.
const SPOOL_REPLAY_EVERY: Duration = Duration::from_secs(2);

/// The store refused a record that had to be durable, and no spool took it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail cannot record this call: {0}")]
pub struct AuditUnavailable(pub String);

/// The data plane's handle on the trail. Cheap to clone; a disabled trail (`audit.enabled:
/// false`) accepts every record and writes nothing.
#[derive(Clone)]
pub struct AuditTrail {
    inner: Option<Arc<Inner>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("chain_id", &self.inner.as_ref().map(|i| &i.chain_id))
            .finish()
    }
}

struct Inner {
    writer: AuditWriter,
    store: AuditStore,
    chain_id: String,
    /// HMAC key of argument fingerprints (per deployment, never logged).
    fingerprint_key: Vec<u8>,
    /// Where records go when the store refuses (`on_failure: spool`).
    spool: Option<Arc<Spool>>,
    await_outcome: bool,
    /// Spool replay and retention jobs, stopped at shutdown.
    jobs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl AuditTrail {
    /// A trail that records nothing (`audit.enabled: false`).
    pub fn disabled(metrics: Arc<Metrics>) -> AuditTrail {
        AuditTrail {
            inner: None,
            metrics,
        }
    }

    /// Opens the audit store on `config.storage`, starts this replica's writer and the jobs.
    /// `store` is the control-plane store of the same database (it keeps the generated
    /// fingerprint key). Fails when the store, the key or the writer cannot start: a gateway
    /// that cannot record does not serve.
    pub async fn start(
        config: &Config,
        store: &portcullis_store::Store,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<AuditTrail> {
        let settings = &config.audit;
        if !settings.enabled {
            tracing::warn!("audit.enabled is false: calls leave no audit record");
            return Ok(AuditTrail::disabled(metrics));
        }
        let masked = portcullis_config::mask_url_password(&config.storage);
        let durability = match settings.sync {
            AuditSync::Full => Durability::Full,
            AuditSync::Normal => Durability::Normal,
        };
        let audit_store = AuditStore::connect_with(&config.storage, None, durability)
            .await
            .with_context(|| format!("cannot open the audit store {masked}"))?;
        let signer = match &settings.signing_key {
            Some(text) => Some(Arc::new(
                SigningKeyFile::parse(text.expose()).context("audit.signing_key_file")?,
            )),
            None => None,
        };
        let chain_id = settings
            .chain_id
            .clone()
            .unwrap_or_else(|| default_chain_id(config.listen));
        let mut writer_config = WriterConfig::new(chain_id.clone());
        writer_config.checkpoint_every = settings.checkpoint_every;
        writer_config.checkpoint_interval = settings.checkpoint_interval;
        let writer = AuditWriter::start(audit_store.clone(), writer_config, signer.clone())
            .await
            .with_context(|| format!("cannot start the audit writer on {masked}"))?;
        let fingerprint_key = match &settings.fingerprint_key {
            Some(key) => key.expose().as_bytes().to_vec(),
            None => stored_fingerprint_key(store)
                .await
                .with_context(|| format!("cannot load the audit fingerprint key from {masked}"))?,
        };
        let spool = (settings.on_failure == OnAuditFailure::Spool).then(|| {
            Arc::new(Spool::new(
                settings
                    .spool_file
                    .clone()
                    .unwrap_or_else(|| default_spool_path(&config.storage)),
            ))
        });
        if signer.is_none() {
            tracing::warn!(
                "audit: no signing key (audit.signing_key_file or PORTCULLIS_AUDIT_KEY): \
                 checkpoints are not signed, so `audit verify` cannot detect a truncated trail"
            );
        }
        tracing::info!(chain = %chain_id, signed = signer.is_some(), spool = ?spool.as_ref().map(|s| s.path().display().to_string()), "audit trail started");
        let inner = Arc::new(Inner {
            writer,
            store: audit_store,
            chain_id,
            fingerprint_key,
            spool,
            await_outcome: settings.await_outcome,
            jobs: Mutex::new(Vec::new()),
        });
        {
            let weak = Arc::downgrade(&inner);
            let backlog = metrics.audit_backlog.clone();
            let spool_backlog = metrics.audit_spool_backlog.clone();
            metrics.on_scrape(move || {
                if let Some(inner) = weak.upgrade() {
                    backlog.set(i64::try_from(inner.writer.backlog()).unwrap_or(i64::MAX));
                    if let Some(spool) = &inner.spool {
                        spool_backlog.set(i64::try_from(spool.backlog()).unwrap_or(i64::MAX));
                    }
                }
            });
        }
        let mut jobs = Vec::new();
        if let Some(spool) = inner.spool.clone() {
            jobs.push(tokio::spawn(replay_spool(
                spool,
                inner.writer.clone(),
                metrics.clone(),
            )));
        }
        if let Some(retention) = settings.retention.clone() {
            jobs.push(tokio::spawn(retention_job(
                inner.store.clone(),
                inner.writer.clone(),
                inner.chain_id.clone(),
                signer,
                retention,
            )));
        }
        *inner.jobs.lock().expect("poisoned") = jobs;
        Ok(AuditTrail {
            inner: Some(inner),
            metrics,
        })
    }

    /// Is anything recorded?
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The audit store (None when disabled): the outbox SIEM export reads.
    pub fn store(&self) -> Option<&AuditStore> {
        self.inner.as_ref().map(|i| &i.store)
    }

    /// This replica's chain id (None when disabled).
    pub fn chain_id(&self) -> Option<&str> {
        self.inner.as_ref().map(|i| i.chain_id.as_str())
    }

    /// Does the answer to a call wait until its outcome record is durable?
    pub fn awaits_outcome(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.await_outcome)
    }

    /// The gateway's metrics (the trail reports its latency and backlog there).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The keyed fingerprint of an argument value (canonical JSON under HMAC-SHA256), so equal
    /// arguments link across records without the trail holding them. None when disabled or
    /// when the value is not JSON.
    pub fn fingerprint(&self, arguments: &RawValue) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let value: serde_json::Value = serde_json::from_str(arguments.get()).ok()?;
        Some(portcullis_audit::record::fingerprint_arguments(
            &inner.fingerprint_key,
            &value,
        ))
    }

    /// Appends `event` and waits until it is durable (in the append log on SQLite, a group
    /// commit elsewhere). On a store failure the record is spooled (`on_failure: spool`) or
    /// the caller gets [`AuditUnavailable`].
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let started = Instant::now();
        // Only a spool needs the event back after the writer took it.
        let copy = inner.spool.as_ref().map(|_| event.clone());
        let result = match inner.writer.enqueue(event).await {
            Ok(pending) => pending.durable().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(_) => {
                self.metrics
                    .audit_append
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(error) => {
                self.metrics.audit_failures.inc();
                self.fallback(inner, copy, &error.to_string())
            }
        }
    }

    /// Queues `event` in order and returns without waiting for the commit; a failed commit is
    /// spooled or counted.
    pub async fn record_later(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else {
            return;
        };
        let copy = inner.spool.as_ref().map(|_| event.clone());
        match inner.writer.enqueue(event).await {
            Ok(pending) => {
                let trail = self.clone();
                tokio::spawn(async move {
                    if let Err(error) = pending.durable().await
                        && let Some(inner) = &trail.inner
                    {
                        trail.metrics.audit_failures.inc();
                        let _ = trail.fallback(inner, copy, &error.to_string());
                    }
                });
            }
            Err(error) => {
                self.metrics.audit_failures.inc();
                let _ = self.fallback(inner, copy, &error.to_string());
            }
        }
    }

    /// Queues `event` if the queue has room now; otherwise drops it and counts the drop.
    pub fn record_best_effort(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else {
            return;
        };
        let kind = event.kind;
        if inner.writer.try_enqueue(event).is_err() {
            self.metrics
                .audit_dropped
                .get_or_create(&KindLabel {
                    kind: kind.as_str().to_owned(),
                })
                .inc();
            tracing::warn!(
                kind = kind.as_str(),
                "audit queue full: best-effort record dropped"
            );
        }
    }

    fn fallback(
        &self,
        inner: &Inner,
        event: Option<AuditEvent>,
        error: &str,
    ) -> Result<(), AuditUnavailable> {
        match (&inner.spool, event) {
            (Some(spool), Some(event)) => match spool.append(&event) {
                Ok(()) => {
                    self.metrics.audit_spooled.inc();
                    tracing::warn!(%error, spool = %spool.path().display(), "audit store unavailable: record spooled");
                    Ok(())
                }
                Err(spool_error) => {
                    tracing::error!(%error, %spool_error, "audit store and spool both unavailable");
                    Err(AuditUnavailable(format!("{error}; {spool_error}")))
                }
            },
            _ => {
                tracing::error!(%error, "audit store unavailable: failing closed");
                Err(AuditUnavailable(error.to_owned()))
            }
        }
    }

    /// Records a refused authentication (HTTP 401) on `server`'s route (None: the aggregate).
    /// The presented token is identified only by the same digest prefix valid keys are known
    /// by (`key:…`), never stored.
    pub fn auth_failure(
        &self,
        server: Option<&str>,
        headers: &http::HeaderMap,
        reason: &impl std::fmt::Debug,
    ) {
        if self.inner.is_none() {
            return;
        }
        let mut event = AuditEvent::new(RecordKind::AuthFailure, now_us());
        event.trace_id = Some(
            headers
                .get(trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(trace::TraceParent::parse)
                .unwrap_or_else(trace::TraceParent::mint)
                .trace_id,
        );
        event.principal.token_id = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().get(7..))
            .map(|token| {
                let digest = Sha256::digest(token.trim_ascii());
                format!("key:{}", hex::encode(&digest[..6]))
            });
        event.server = server.map(str::to_owned);
        event.decision = Some("deny".to_owned());
        event.rule_id = Some(format!("auth:{}", reason_name(reason)));
        event.outcome = Some(Outcome::Error { code: 401 });
        self.record_best_effort(event);
    }

    /// Records a configuration revision: applied, or rejected with its first error.
    pub async fn config_change(&self, source: &std::path::Path, rejected: Option<&str>) {
        if self.inner.is_none() {
            return;
        }
        let mut event = AuditEvent::new(RecordKind::ConfigChange, now_us());
        event.method = Some("config/reload".to_owned());
        event.decision = Some(
            if rejected.is_some() {
                "rejected"
            } else {
                "applied"
            }
            .to_owned(),
        );
        event.rule_id = Some(source.display().to_string());
        event.outcome = Some(match rejected {
            None => Outcome::Ok,
            Some(_) => Outcome::Error { code: -32602 },
        });
        if let Err(error) = self.record(event).await {
            tracing::error!(%error, "config change not recorded");
        }
    }

    /// Flushes the queue, signs a final checkpoint, stops the jobs.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        for job in inner.jobs.lock().expect("poisoned").drain(..) {
            job.abort();
        }
        if let Err(error) = inner.writer.shutdown().await {
            tracing::error!(%error, "audit writer: final checkpoint failed");
        }
        inner.store.close().await;
    }
}

/// `Invalid`, `Expired { .. }` → `invalid`, `expired`.
fn reason_name(reason: &impl std::fmt::Debug) -> String {
    let text = format!("{reason:?}");
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// `{hostname}:{listen port}`: unique per replica, stable across restarts.
fn default_chain_id(listen: SocketAddr) -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "portcullis".to_owned());
    format!("{host}:{}", listen.port())
}

/// Next to the SQLite file, else `portcullis-audit.spool` in the working directory.
fn default_spool_path(storage: &str) -> PathBuf {
    match storage.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() && !path.contains(":memory:") => PathBuf::from(format!(
            "{}.audit-spool",
            path.split('?').next().unwrap_or(path)
        )),
        _ => PathBuf::from("portcullis-audit.spool"),
    }
}

/// The fingerprint key kept in the store: generated once (random 32 bytes), shared by every
/// replica of the database, stable across restarts.
async fn stored_fingerprint_key(store: &portcullis_store::Store) -> anyhow::Result<Vec<u8>> {
    use portcullis_store::{Migration, on_pool};
    use rand::RngCore;
    const STEPS: &[Migration] = &[Migration {
        sqlite: "CREATE TABLE audit_trail_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        postgres: "CREATE TABLE audit_trail_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    }];
    store.migrate("audit_trail", STEPS).await?;
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let fresh = hex::encode(fresh);
    let value: String = on_pool!(store.backend(), pool => {
        sqlx::query("INSERT INTO audit_trail_keys (name, value) VALUES ('fingerprint', $1) ON CONFLICT (name) DO NOTHING")
            .bind(&fresh)
            .execute(pool)
            .await?;
        sqlx::query_scalar("SELECT value FROM audit_trail_keys WHERE name = 'fingerprint'")
            .fetch_one(pool)
            .await?
    });
    hex::decode(value.trim()).context("stored fingerprint key is not hex")
}

/// Replays spooled records into the store whenever there are some and the store takes them.
async fn replay_spool(spool: Arc<Spool>, writer: AuditWriter, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(SPOOL_REPLAY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let events = match spool.take_for_replay() {
            Ok(events) if events.is_empty() => continue,
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, "audit spool unreadable");
                continue;
            }
        };
        let mut done = 0;
        for event in &events {
            if writer.append(event.clone()).await.is_err() {
                break;
            }
            done += 1;
        }
        if let Err(error) = spool.finish_replay(&events, done) {
            tracing::error!(%error, "audit spool: cannot record replay progress");
        }
        metrics
            .audit_spool_backlog
            .set(i64::try_from(events.len() - done).unwrap_or(i64::MAX));
        if done > 0 {
            tracing::info!(
                replayed = done,
                left = events.len() - done,
                "audit spool replayed into the store"
            );
        }
    }
}

/// Deletes this chain's records older than `audit.retention` behind a signed tombstone, every
/// `interval`, and records that it did (a `retention` record naming the last seq deleted).
async fn retention_job(
    store: AuditStore,
    writer: AuditWriter,
    chain_id: String,
    signer: Option<Arc<SigningKeyFile>>,
    retention: portcullis_config::AuditRetention,
) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let max_age = i64::try_from(retention.max_age.as_micros()).unwrap_or(i64::MAX);
        let before = now_us().saturating_sub(max_age);
        match store
            .apply_retention(&chain_id, before, signer.as_deref())
            .await
        {
            Ok(Some(tombstone)) => {
                tracing::info!(chain = %chain_id, through = tombstone.seq, "audit retention: old records deleted behind a signed tombstone");
                let mut event = AuditEvent::new(RecordKind::Retention, now_us());
                event.method = Some("audit/retention".to_owned());
                event.decision = Some("deleted".to_owned());
                event.rule_id = Some(format!(
                    "retention: records 1..={} older than {} days",
                    tombstone.seq,
                    retention.max_age.as_secs() / 86_400
                ));
                event.outcome = Some(Outcome::Ok);
                if let Err(error) = writer.append(event).await {
                    tracing::error!(%error, "audit retention: the retention record was not written");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "audit retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_reasons_become_rule_names() {
        #[derive(Debug)]
        #[allow(dead_code)]
        enum E {
            Invalid,
            NotBearer,
            Expired { at: u64 },
        }
        assert_eq!(reason_name(&E::Invalid), "invalid");
        assert_eq!(reason_name(&E::NotBearer), "not_bearer");
        assert_eq!(reason_name(&E::Expired { at: 1 }), "expired");
    }

    #[test]
    fn spool_defaults_next_to_the_sqlite_file() {
        assert_eq!(
            default_spool_path("sqlite:///var/lib/p.db?mode=rwc"),
            PathBuf::from("/var/lib/p.db.audit-spool")
        );
        assert_eq!(
            default_spool_path("postgres://u@h/db"),
            PathBuf::from("portcullis-audit.spool")
        );
    }
}
