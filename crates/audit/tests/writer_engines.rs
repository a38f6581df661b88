//! The writer's engines (`writer.rs`: the task engine, used on PostgreSQL and for SQLite with
//! `Durability::Full`; `sqlite_writer.rs`: the direct engine for SQLite with
//! `Durability::Normal`) store the same chain: the paths an append can take (through the direct
//! engine's append log, group-committed through sqlx), a write lock held by another
//! connection, a store that refuses writes, a full queue, WAL checkpoints and shutdown.

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

/// Another connection holds SQLite's write lock (the control plane shares the file): appends
/// are not held up by it. They are durable in the append log and acknowledged at once, while
/// their copy into SQLite waits for the lock; the backlog counts them, and once it is full an
/// append waits for room and a best-effort record is refused. When the lock is released every
/// acknowledged record lands, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_do_not_wait_for_a_write_lock_held_by_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "busy.db", Durability::Normal).await;
    let mut config = config("busy", true);
    config.queue = 3;
    let writer = AuditWriter::start(store.clone(), config, Some(signer()))
        .await
        .unwrap();
    assert_eq!(writer.append(event(1)).await.unwrap().seq, 1);
    wait_for_backlog(&writer, 0).await;

    let Backend::Sqlite(pool) = store.backend() else {
        unreachable!("a SQLite store")
    };
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *other)
        .await
        .unwrap();

    for i in 2..=3 {
        let appended = tokio::time::timeout(Duration::from_secs(1), writer.append(event(i)))
            .await
            .expect("an append does not wait for SQLite's write lock");
        assert_eq!(appended.unwrap().seq, i);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        writer.backlog(),
        2,
        "both wait for the lock to reach SQLite"
    );
    let fourth = writer.enqueue(event(4)).await.expect("room for one more");
    assert_eq!(
        writer.try_enqueue(event(99)).err(),
        Some(QueueFull::Full),
        "a best-effort record does not wait for room"
    );
    let fifth = {
        let w = writer.clone();
        tokio::spawn(async move { w.append(event(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fifth.is_finished(),
        "the backlog is full: the append waits for room"
    );

    sqlx::query("ROLLBACK").execute(&mut *other).await.unwrap();
    drop(other);
    assert_eq!(fourth.durable().await.unwrap().seq, 4);
    assert_eq!(fifth.await.unwrap().unwrap().seq, 5);
    writer.shutdown().await.unwrap();
    let report = store.verify_chain("busy", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.signed_through), (5, 5));
    let traces: Vec<_> = records(&store, "busy")
        .await
        .into_iter()
        .map(|r| r.event.trace_id.unwrap())
        .collect();
    assert_eq!(
        traces,
        (1..=5).map(|i| format!("{i:032x}")).collect::<Vec<_>>()
    );
}

async fn wait_for_backlog(writer: &AuditWriter, n: usize) {
    for _ in 0..400 {
        if writer.backlog() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(writer.backlog(), n, "backlog");
}

/// When SQLite refuses the writes (a damaged table, a full disk), what was acknowledged stays
/// in the append log, new appends fail closed once the writer has seen the refusal, and when
/// the store can write again every acknowledged record reaches it, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_fails_appends_closed_and_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "broken.db", Durability::Normal).await;
    let writer = AuditWriter::start(store.clone(), config("broken", true), Some(signer()))
        .await
        .unwrap();
    writer.append(event(1)).await.unwrap();
    wait_for_backlog(&writer, 0).await;
    let Backend::Sqlite(pool) = store.backend() else {
        unreachable!("a SQLite store")
    };
    sqlx::query("ALTER TABLE audit_records RENAME TO audit_records_gone")
        .execute(pool)
        .await
        .unwrap();

    let mut acknowledged = 1;
    let refusal = loop {
        match writer.append(event(acknowledged + 1)).await {
            Ok(appended) => {
                acknowledged += 1;
                assert_eq!(appended.seq, acknowledged);
                assert!(acknowledged < 200, "appends were never refused");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(error) => break error,
        }
    };
    assert!(
        refusal.to_string().contains("no such table"),
        "SQLite's reason: {refusal}"
    );
    assert!(writer.backlog() as u64 >= acknowledged - 1);

    sqlx::query("ALTER TABLE audit_records_gone RENAME TO audit_records")
        .execute(pool)
        .await
        .unwrap();
    let next = acknowledged + 1;
    let mut recovered = false;
    for _ in 0..200 {
        if let Ok(appended) = writer.append(event(next)).await {
            assert_eq!(
                appended.seq, next,
                "refused appends took no place in the chain"
            );
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recovered,
        "appends are taken again once the store can write"
    );
    writer.shutdown().await.unwrap();
    let report = store.verify_chain("broken", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.signed_through), (next, next));
}

/// SQLite's automatic WAL checkpoints run on the writer's connection after its batches: under
/// a steady stream of appends the records reach the database file, not only the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_copied_into_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "wal.db", Durability::Normal).await;
    let db_file = dir.path().join("wal.db");
    let empty = std::fs::metadata(&db_file).unwrap().len();
    let writer = AuditWriter::start(store.clone(), config("wal", true), Some(signer()))
        .await
        .unwrap();
    let mut size = 0;
    let mut appended = 0;
    for round in 0..200 {
        for _ in 0..1_000 {
            appended += 1;
            writer.append(event(appended)).await.unwrap();
        }
        size = std::fs::metadata(&db_file).unwrap().len();
        if size > empty + 2_000_000 || round == 199 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        size > empty + 2_000_000,
        "{appended} records reached the database file ({empty} -> {size} bytes)"
    );
    writer.shutdown().await.unwrap();
    let report = store.verify_chain("wal", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, appended);
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

/// One process writes a chain: a second writer of the same chain on the same SQLite file is
/// refused with an error that says so (two would fork the chain), and once the first has shut
/// down a new writer takes the chain over and continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_a_chain_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir, "one.db", Durability::Normal).await;
    let first = AuditWriter::start(store.clone(), config("one", true), Some(signer()))
        .await
        .unwrap();
    first.append(event(1)).await.unwrap();
    let second = AuditWriter::start(store.clone(), config("one", true), Some(signer())).await;
    let error = second.expect_err("the chain is being written");
    assert!(matches!(error, StoreError::ChainBusy(_)), "{error}");
    assert!(error.to_string().contains("audit.chain_id"), "{error}");
    let other_chain = AuditWriter::start(store.clone(), config("two", true), Some(signer()))
        .await
        .expect("another chain in the same file has its own log");
    other_chain.shutdown().await.unwrap();

    first.shutdown().await.unwrap();
    let next = AuditWriter::start(store.clone(), config("one", true), Some(signer()))
        .await
        .expect("the first writer released the chain");
    assert_eq!(next.append(event(2)).await.unwrap().seq, 2);
    next.shutdown().await.unwrap();
    let report = store.verify_chain("one", &ring()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.signed_through), (2, 2));
}
