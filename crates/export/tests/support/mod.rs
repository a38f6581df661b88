//! Fixtures for the export tests: an audit store plus control store on SQLite or PostgreSQL
//! (`store_test!` runs a test on both), record appends, sink configs, and loopback receivers
//! (octet-counting syslog over TCP/TLS, UDP syslog, an HTTP server for HEC, webhooks and OTLP).
//! Every wait is bounded ([`WAIT`]); every socket is on 127.0.0.1.

#![allow(dead_code)]

pub mod http;
pub mod syslog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use portcullis_audit::store::{AuditStore, AuditWriter, WriterConfig};
use portcullis_audit::{AuditEvent, RecordKind};
use portcullis_config::sinks::{SinkConfig, SinkKind, StartAt};
use portcullis_export::{ExportHandle, ExportOptions, SinkLag};
use portcullis_store::Store;

/// Longest any condition is waited for.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs `$body` (an async block using `db: Db`) once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::support::Db::sqlite().await;
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let $db = $crate::support::Db::postgres().await;
                $body
            }
        }
    };
}

/// An audit store and a control store in the same database.
pub struct Db {
    pub audit: AuditStore,
    pub control: Store,
    /// For file sinks and SQLite.
    pub dir: tempfile::TempDir,
    pg_schema: Option<String>,
}

impl Db {
    pub async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("portcullis.db").display());
        let audit = AuditStore::connect(&url).await.expect("audit store");
        let control = Store::connect(&url).await.expect("control store");
        Db {
            audit,
            control,
            dir,
            pg_schema: None,
        }
    }

    pub async fn postgres() -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "export_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            portcullis_audit::store::now_us() % 1_000_000
        );
        let url = portcullis_store::testing::postgres_url();
        let audit = AuditStore::connect_in_schema(&url, Some(&schema))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by this test: {e}"));
        let control = Store::connect_in_schema(&url, Some(&schema))
            .await
            .expect("control store");
        Db {
            audit,
            control,
            dir: tempfile::tempdir().expect("temp dir"),
            pg_schema: Some(schema),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A writer of `chain`.
    pub async fn writer(&self, chain: &str) -> AuditWriter {
        AuditWriter::start(self.audit.clone(), WriterConfig::new(chain), None)
            .await
            .expect("writer")
    }

    /// Starts export of `sinks` with short poll and retry intervals.
    pub async fn export(&self, sinks: &[SinkConfig]) -> ExportHandle {
        self.export_as(sinks, None).await
    }

    /// Like [`Db::export`], as the lease owner `owner`.
    pub async fn export_as(&self, sinks: &[SinkConfig], owner: Option<&str>) -> ExportHandle {
        portcullis_export::start_with(
            sinks,
            self.audit.clone(),
            self.control.clone(),
            std::future::pending(),
            ExportOptions {
                poll_interval: Duration::from_millis(20),
                initial_backoff: Duration::from_millis(20),
                owner: owner.map(str::to_owned),
            },
        )
        .await
        .expect("export starts")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(schema) = self.pg_schema.take() else {
            return;
        };
        // Best effort, on a thread of its own: Drop cannot await inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(store) = Store::connect(&portcullis_store::testing::postgres_url()).await
                {
                    portcullis_store::on_pool!(store.backend(), pool => {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {} CASCADE",
                            portcullis_store::quote_ident(&schema)
                        )))
                        .execute(pool)
                        .await;
                    });
                    store.close().await;
                }
            });
        })
        .join();
    }
}

/// Appends `n` call records to `writer`, `time_us` now (or `age` in the past).
pub async fn append(writer: &AuditWriter, n: usize, age: Duration) {
    let time = portcullis_audit::store::now_us() - age.as_micros() as i64;
    for i in 0..n {
        let mut e = AuditEvent::new(RecordKind::Call, time);
        e.principal.agent = Some("agent-1".into());
        e.server = Some("time".into());
        e.method = Some("tools/call".into());
        e.tool = Some(format!("time__tool_{}", i % 3));
        e.decision = Some("allow".into());
        e.rule_id = Some("allow-time".into());
        writer.append(e).await.expect("append");
    }
}

/// A sink with short retry settings.
pub fn sink(name: &str, kind: SinkKind, batch_size: usize) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind,
        batch_size,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(300),
        start: StartAt::Oldest,
    }
}

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lag entry of `sink` on `chain`.
pub fn lag_of(handle: &ExportHandle, sink: &str, chain: &str) -> Option<SinkLag> {
    handle
        .lag()
        .into_iter()
        .find(|l| l.sink == sink && l.chain_id == chain)
}

/// Asserts `seqs` holds every seq from 1 to `n` (duplicates allowed: at least once).
pub fn assert_complete(seqs: &[u64], n: u64) {
    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = (1..=n).filter(|s| !set.contains(s)).collect();
    assert!(missing.is_empty(), "records lost: {missing:?}");
    assert!(
        set.iter().all(|s| *s >= 1 && *s <= n),
        "unexpected seqs: {set:?}"
    );
}

/// The test CA and server certificate (see `tests/data/README.md`).
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}
