//! Migrating a SQLite trail written under an older schema: migration 0003 rewrites
//! `audit_records` as a `WITHOUT ROWID` table, and every record written before it must read
//! back unchanged, verify against its signed checkpoints, and be continued by a new writer.

#![cfg(feature = "store")]

mod support;

use std::borrow::Cow;

use portcullis_audit::store::{AuditStore, AuditWriter, Backend, WriterConfig};
use portcullis_audit::{AuditEvent, Finding, Outcome, RecordKind};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use support::{ring, signer};

const CHAINS: [&str; 2] = ["replica-a", "replica-b"];
const RECORDS: u64 = 40;

/// An event with every column set (and a few left empty), distinct per chain and index.
fn event(chain: &str, i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(
        if i.is_multiple_of(5) {
            RecordKind::Denial
        } else {
            RecordKind::Call
        },
        1_700_000_000_000_000 + i as i64 * 1_000,
    );
    e.trace_id = Some(format!("{i:032x}"));
    e.principal.agent = Some(format!("{chain}-agent"));
    e.principal.user = i.is_multiple_of(2).then(|| "alice".to_owned());
    e.principal.token_id = Some("tok-9".into());
    e.session = Some(format!("sess-{}", i % 3));
    e.server = Some("fs".into());
    e.method = Some("tools/call".into());
    e.tool = Some(format!("fs__read_{}", i % 4));
    e.args_fingerprint = Some(format!("{i:064x}"));
    e.decision = Some("allow".into());
    e.rule_id = Some(format!("rule-{i}"));
    e.findings = vec![Finding {
        rule: "pii.email".into(),
        severity: "medium".into(),
        location: Some(format!("arguments.a{i}")),
    }];
    e.outcome = Some(if i.is_multiple_of(3) {
        Outcome::Error { code: -32_002 }
    } else {
        Outcome::Ok
    });
    e.latency_us = Some(i as i64 * 11);
    e.bytes_in = Some(i as i64 * 13);
    e.bytes_out = Some(i as i64 * 17);
    e
}

/// Creates `url`'s database with the migrations before 0003 only: the schema of a gateway
/// released before the table was rewritten.
async fn create_old_schema(url: &str) {
    let opts: SqliteConnectOptions = url.parse().expect("url");
    let pool = SqlitePool::connect_with(opts.create_if_missing(true))
        .await
        .expect("pool");
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    let old: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 3)
        .cloned()
        .collect();
    assert_eq!(old.len(), 2, "migrations 0001 and 0002 precede the rewrite");
    migrator.migrations = Cow::Owned(old);
    migrator.run(&pool).await.expect("old migrations");
    pool.close().await;
}

async fn table_sql(pool: &SqlitePool, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await
        .expect("sqlite_master")
}

#[tokio::test]
async fn records_written_before_the_without_rowid_rewrite_still_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    create_old_schema(&url).await;

    // Write two chains with the old schema in place (open_existing never migrates).
    let old = AuditStore::open_existing(&url).await.expect("open old");
    let Backend::Sqlite(pool) = old.backend() else {
        panic!("sqlite store")
    };
    let sql = table_sql(pool, "audit_records").await.expect("old table");
    assert!(!sql.contains("WITHOUT ROWID"), "old schema: {sql}");
    for chain in CHAINS {
        let mut config = WriterConfig::new(chain);
        config.checkpoint_every = 10;
        let writer = AuditWriter::start(old.clone(), config, Some(signer()))
            .await
            .expect("writer on the old schema");
        for i in 1..=RECORDS {
            assert_eq!(writer.append(event(chain, i)).await.expect("append").seq, i);
        }
        writer.shutdown().await.expect("shutdown");
    }
    old.close().await;

    // Connecting migrates.
    let store = AuditStore::connect(&url).await.expect("migrating connect");
    let Backend::Sqlite(pool) = store.backend() else {
        panic!("sqlite store")
    };
    let sql = table_sql(pool, "audit_records").await.expect("new table");
    assert!(sql.contains("WITHOUT ROWID"), "migrated schema: {sql}");
    assert!(
        table_sql(pool, "audit_records_time").await.is_some(),
        "the time index is rebuilt"
    );
    assert!(
        table_sql(pool, "audit_records_v3").await.is_none(),
        "no temporary table left"
    );

    for chain in CHAINS {
        let report = store.verify_chain(chain, &ring()).await.expect("verify");
        assert!(report.is_ok(), "{chain}: {:?}", report.problems);
        assert_eq!(
            (report.records, report.last_seq, report.signed_through),
            (RECORDS, RECORDS, RECORDS),
            "{chain}: every record kept and covered by its checkpoints"
        );
        let stored = store.read_page(chain, 0, 1_000).await.expect("read");
        assert_eq!(stored.len() as u64, RECORDS);
        for (i, row) in stored.into_iter().enumerate() {
            let record = row.expect("decodable");
            assert_eq!(
                record.event,
                event(chain, i as u64 + 1),
                "{chain} record {}",
                i + 1
            );
        }
    }

    // The default (direct) writer continues a migrated chain, and it still verifies.
    let writer = AuditWriter::start(store.clone(), WriterConfig::new(CHAINS[0]), Some(signer()))
        .await
        .expect("writer after migration");
    for i in RECORDS + 1..=RECORDS + 5 {
        assert_eq!(
            writer
                .append(event(CHAINS[0], i))
                .await
                .expect("append")
                .seq,
            i
        );
    }
    writer.shutdown().await.expect("shutdown");
    let report = store
        .verify_chain(CHAINS[0], &ring())
        .await
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        (report.records, report.signed_through),
        (RECORDS + 5, RECORDS + 5)
    );

    // Tampering with a migrated record is still caught, and named.
    sqlx::query("UPDATE audit_records SET tool = 'other' WHERE chain_id = ? AND seq = 7")
        .bind(CHAINS[1])
        .execute(pool)
        .await
        .expect("tamper");
    let report = store
        .verify_chain(CHAINS[1], &ring())
        .await
        .expect("verify");
    let problem = report.problems.first().expect("tampering detected");
    assert!(format!("{problem:?}").contains('7'), "{problem:?}");
    store.close().await;
}
