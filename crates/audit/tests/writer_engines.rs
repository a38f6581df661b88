//! The writer's engines (`writer.rs`: the task engine, used on PostgreSQL and for SQLite with
//! `Durability::Full`; `sqlite_writer.rs`: the direct engine for SQLite with
//! `Durability::Normal`) store the same chain: the paths an append can take (committed on the
//! caller's thread, queued and group-committed by the writer's thread, through sqlx), a write
//! lock held by another connection, a full queue, WAL checkpoints and shutdown.

#![cfg(feature = "store")]

mod support;

use std::time::Duration;

use portcullis_audit::store::{
    AuditStore, AuditWriter, Backend, Durability, QueueFull, StoreError, WriterConfig,
};
use portcullis_audit::{AuditEvent, AuditRecord, Outcome, RecordKind};
use support::{ring, signer};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(RecordKind::Call, 1_700_000_000_000_000 + i as i64);
    e.trace_id = Some(format!("{i:032x}"));
    e.principal.agent = Some("agent".into());
    e.server = Some("fs".into());
    e.method = Some("tools/call".into());
    e.tool = Some("fs__read".into());
    e.decision = Some("allow".into());
    if i.is_multiple_of(2) {
        e.outcome = Some(Outcome::Ok);
        e.latency_us = Some(i as i64);
    }
    e
}

async fn sqlite(dir: &tempfile::TempDir, name: &str, durability: Durability) -> AuditStore {
    let url = format!("sqlite://{}", dir.path().join(name).display());
    AuditStore::connect_with(&url, None, durability)
        .await
        .expect("sqlite store")
}

fn config(chain: &str, direct: bool) -> WriterConfig {
    let mut config = WriterConfig::new(chain);
    config.checkpoint_every = 50;
    config.sqlite_direct = direct;
    config
}

async fn records(store: &AuditStore, chain: &str) -> Vec<AuditRecord> {
    store
        .read_page(chain, 0, 100_000)
        .await
        .expect("read")
        .into_iter()
        .map(|r| r.expect("decodable"))
        .collect()
}

/// Appends `n` events from `n` concurrent tasks and checks the chain: every seq once, verified,
/// signed through the end by the shutdown checkpoint.
async fn concurrent_appends(store: &AuditStore, config: WriterConfig, n: u64) {
    let chain = config.chain_id.clone();
    let writer = AuditWriter::start(store.clone(), config, Some(signer()))
        .await
        .expect("writer");
    let tasks: Vec<_> = (1..=n)
        .map(|i| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(event(i)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().expect("append").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    writer.shutdown().await.expect("shutdown");
    let report = store.verify_chain(&chain, &ring()).await.unwrap();
    assert!(report.is_ok(), "{chain}: {:?}", report.problems);
    assert_eq!((report.records, report.signed_through), (n, n), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_verify_on_every_engine_and_durability() {
    let dir = tempfile::tempdir().unwrap();
    for (name, durability, direct) in [
        ("direct-normal", Durability::Normal, true),
        ("task-full", Durability::Full, true),
        ("task-normal", Durability::Normal, false),
    ] {
        let store = sqlite(&dir, &format!("{name}.db"), durability).await;
        concurrent_appends(&store, config(name, direct), 400).await;
        store.close().await;
    }
    let schema = format!(
        "audit_engines_{}_{}",
        std::process::id(),
        portcullis_audit::store::now_us() % 1_000_000
    );
    let pg = AuditStore::connect_in_schema(PG_URL, Some(&schema))
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    concurrent_appends(&pg, config("pg", true), 400).await;
    if let Backend::Postgres(pool) = pg.backend() {
        let sql = format!("DROP SCHEMA \"{schema}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    pg.close().await;
}

/// One event at a time through each engine: the stored records are identical (same links,
/// same hashes, same columns), whichever path wrote them.
#[tokio::test]
async fn engines_store_identical_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    for (name, durability, direct) in [
        ("direct-normal", Durability::Normal, true),
        ("task-full", Durability::Full, true),
        ("task-normal", Durability::Normal, false),
    ] {
        let store = sqlite(&dir, &format!("{name}.db"), durability).await;
        let writer = AuditWriter::start(store.clone(), config("same", direct), Some(signer()))
            .await
            .unwrap();
        for i in 1..=120 {
            assert_eq!(writer.append(event(i)).await.unwrap().seq, i);
        }
        writer.shutdown().await.unwrap();
        let report = store.verify_chain("same", &ring()).await.unwrap();
        assert!(report.is_ok(), "{name}: {:?}", report.problems);
        assert_eq!(
            report.checkpoints, 3,
            "{name}: at 50, 100 and shutdown (120)"
        );
        stored.push((name, records(&store, "same").await));
        store.close().await;
    }
    let (first, expected) = &stored[0];
    assert_eq!(expected.len(), 120);
    for (i, r) in expected.iter().enumerate() {
        assert_eq!(r.event, event(i as u64 + 1));
    }
    for (name, got) in &stored[1..] {
        assert_eq!(got, expected, "{name} differs from {first}");
    }
}

/// Another connection holds SQLite's write lock (the control plane shares the file): an append
/// is not lost and does not fail; it waits on the writer's thread and lands once the lock is
/// released, in order. Meanwhile a full queue refuses best-effort records instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_waits_for_a_write_lock_held_by_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "busy.db", Durability::Normal).await;
    let mut config = config("busy", true);
    config.queue = 2;
    let writer = AuditWriter::start(store.clone(), config, Some(signer()))
        .await
        .unwrap();
    assert_eq!(writer.append(event(1)).await.unwrap().seq, 1);

    let Backend::Sqlite(pool) = store.backend() else {
        unreachable!("a SQLite store")
    };
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *other)
        .await
        .unwrap();

    // Past the gap below which appends go straight to the group commit: the second append
    // tries to commit on its own thread, finds the lock taken and is handed to the writer's
    // thread, which waits for the lock.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = {
        let w = writer.clone();
        tokio::spawn(async move { w.append(event(2)).await })
    };
    for _ in 0..200 {
        if writer.backlog() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(writer.backlog(), 1, "the second append is waiting");
    let third = writer.enqueue(event(3)).await.expect("room for one more");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the write lock is still held");
    assert_eq!(writer.backlog(), 2);
    assert_eq!(
        writer.try_enqueue(event(4)).err(),
        Some(QueueFull::Full),
        "a best-effort record does not wait for room"
    );

    sqlx::query("ROLLBACK").execute(&mut *other).await.unwrap();
    drop(other);
    assert_eq!(second.await.unwrap().unwrap().seq, 2);
    assert_eq!(third.durable().await.unwrap().seq, 3);
    writer.shutdown().await.unwrap();
    let report = store.verify_chain("busy", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.signed_through), (3, 3));
    let traces: Vec<_> = records(&store, "busy")
        .await
        .into_iter()
        .map(|r| r.event.trace_id.unwrap())
        .collect();
    assert_eq!(
        traces,
        (1..=3).map(|i| format!("{i:032x}")).collect::<Vec<_>>()
    );
}

/// The direct engine turns SQLite's automatic WAL checkpoints off on its connection; its WAL
/// thread copies the WAL into the database file instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_copied_into_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "wal.db", Durability::Normal).await;
    let db_file = dir.path().join("wal.db");
    let empty = std::fs::metadata(&db_file).unwrap().len();
    let writer = AuditWriter::start(store.clone(), config("wal", true), Some(signer()))
        .await
        .unwrap();
    for i in 1..=3_000 {
        writer.append(event(i)).await.unwrap();
    }
    let mut size = 0;
    for _ in 0..100 {
        size = std::fs::metadata(&db_file).unwrap().len();
        if size > empty + 500_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        size > empty + 500_000,
        "3,000 records reached the database file ({empty} -> {size} bytes)"
    );
    writer.shutdown().await.unwrap();
    let report = store.verify_chain("wal", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 3_000);
}

/// After shutdown nothing is accepted, and the error says the writer stopped.
/// Regression: a call's outcome record follows its decision record after one upstream round
/// trip. The direct writer used to queue an append for its thread whenever the last gap was
/// short next to twice a cost estimate that only inline commits updated: one slow commit (here
/// a 4 MiB record) raised the estimate, every later append was queued, and the estimate never
/// came down, so each record paid two thread wake-ups for good. Appends spaced like calls at
/// 1,000 a second are committed on the caller's thread whatever came before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_paced_appends_after_one_slow_commit_stay_on_the_callers_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(&dir, "paced.db", Durability::Normal).await;
    let writer = AuditWriter::start(store.clone(), config("paced", true), Some(signer()))
        .await
        .expect("writer");
    let mut big = event(1);
    big.rule_id = Some("x".repeat(4 << 20));
    tokio::time::sleep(Duration::from_millis(10)).await;
    writer.append(big).await.expect("big append");
    let mut inline = 0;
    for i in 2..=61 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let pending = writer.enqueue(event(i)).await.expect("enqueue");
        inline += usize::from(pending.settled_on_enqueue());
        pending.durable().await.expect("durable");
    }
    assert!(
        inline >= 55,
        "only {inline} of 60 paced appends committed inline"
    );
    writer.shutdown().await.expect("shutdown");
    let stored = records(&store, "paced").await;
    assert_eq!(stored.len(), 61);
    assert!(stored.iter().zip(1..).all(|(r, seq)| r.seq == seq));
}

#[tokio::test]
async fn appends_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, direct) in [("direct", true), ("sqlx", false)] {
        let store = sqlite(&dir, &format!("{name}.db"), Durability::Normal).await;
        let writer = AuditWriter::start(store.clone(), config(name, direct), Some(signer()))
            .await
            .unwrap();
        writer.append(event(1)).await.unwrap();
        writer.shutdown().await.unwrap();
        let error = writer.append(event(2)).await.unwrap_err();
        assert!(
            matches!(*error, StoreError::WriterStopped),
            "{name}: {error}"
        );
        assert_eq!(
            writer.try_enqueue(event(3)).err(),
            Some(QueueFull::Stopped),
            "{name}"
        );
        assert_eq!(records(&store, name).await.len(), 1, "{name}");
    }
}
