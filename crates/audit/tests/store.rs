//! Store tests, each run on SQLite (a temp file) and PostgreSQL (127.0.0.1:5432, a schema of its
//! own per test) through [`store_test!`]. The tamper tests are named after the attack they pin:
//! each edits the stored chain directly in SQL, as an attacker with database access would, and
//! asserts that verification names the record.

#![cfg(feature = "store")]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_audit::chain::ChainHead;
use portcullis_audit::store::{AuditStore, AuditWriter, Backend, WriterConfig};
use portcullis_audit::{AuditEvent, AuditRecord, Finding, Outcome, Problem, RecordKind, Report};
use sqlx::AssertSqlSafe;
use support::{ring, signer};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const RECORDS: u64 = 50;
const EVERY: u64 = 10;

/// A store for one test; PostgreSQL schemas are dropped on drop (also when the test fails).
struct Db {
    store: AuditStore,
    pg_schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = AuditStore::connect(&url).await.expect("sqlite store");
        Db {
            store,
            pg_schema: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "audit_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            portcullis_audit::store::now_us() % 1_000_000
        );
        let store = match AuditStore::connect_in_schema(PG_URL, Some(&schema)).await {
            Ok(store) => store,
            Err(e) => panic!(
                "PostgreSQL at {PG_URL} is unreachable or refused the test ({e}); the PostgreSQL \
                 variant of the store tests needs it (it runs on the dev machine and in CI)"
            ),
        };
        Db {
            store,
            pg_schema: Some(schema),
            _dir: None,
        }
    }

    /// Runs raw SQL (the attacker's edits), binding `$1` to the chain id.
    async fn exec(&self, sql: &str, chain: &str) -> u64 {
        let sql = sql.to_owned();
        let done = match self.store.backend() {
            Backend::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(chain)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Backend::Postgres(pool) => sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(chain)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        done.unwrap_or_else(|e| panic!("tamper SQL failed: {sql}: {e}"))
    }

    async fn verify(&self, chain: &str) -> Report {
        self.store
            .verify_chain(chain, &ring())
            .await
            .expect("verify")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(schema) = self.pg_schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime; do the cleanup on a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(PG_URL).await.ok()?;
                let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                sqlx::query(AssertSqlSafe(sql)).execute(&pool).await.ok()?;
                pool.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// Runs the same async test body on SQLite and on PostgreSQL.
macro_rules! store_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db).await;
            }
            #[tokio::test]
            async fn postgres() {
                let db = super::Db::postgres().await;
                super::$name(&db).await;
            }
        }
    };
}

/// An event with every field set, so each column can be tampered with.
fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(
        if i.is_multiple_of(7) {
            RecordKind::Denial
        } else {
            RecordKind::Call
        },
        1_700_000_000_000_000 + i as i64,
    );
    e.trace_id = Some(format!("{i:032x}"));
    e.principal.agent = Some(format!("agent-{}", i % 3));
    e.principal.user = Some("alice".into());
    e.principal.token_id = Some("tok-1".into());
    e.session = Some("sess-1".into());
    e.client_era = Some("2026-07-28".into());
    e.upstream_era = Some("2025-06-18".into());
    e.server = Some("fs".into());
    e.method = Some("tools/call".into());
    e.tool = Some(format!("fs__read_{}", i % 2));
    e.args_fingerprint = Some(format!("{:064x}", i));
    e.decision = Some("allow".into());
    e.rule_id = Some("r-1".into());
    e.approval_ref = Some(format!("appr-{i}"));
    e.findings = vec![Finding {
        rule: "secrets.aws".into(),
        severity: "high".into(),
        location: Some("arguments.x".into()),
    }];
    e.outcome = Some(if i.is_multiple_of(2) {
        Outcome::Error { code: -32001 }
    } else {
        Outcome::Ok
    });
    e.latency_us = Some(100 + i as i64);
    e.bytes_in = Some(200 + i as i64);
    e.bytes_out = Some(300 + i as i64);
    e
}

/// Appends `RECORDS` records one at a time (checkpoints at 10, 20, ... 50).
async fn fill(db: &Db, chain: &str) {
    let mut config = WriterConfig::new(chain);
    config.checkpoint_every = EVERY;
    let writer = AuditWriter::start(db.store.clone(), config, Some(signer()))
        .await
        .expect("writer");
    for i in 1..=RECORDS {
        let appended = writer.append(event(i)).await.expect("append");
        assert_eq!(appended.seq, i);
    }
    writer.shutdown().await.expect("shutdown");
}

async fn records(db: &Db, chain: &str) -> Vec<AuditRecord> {
    db.store
        .read_page(chain, 0, 10_000)
        .await
        .expect("read")
        .into_iter()
        .map(|r| r.expect("decodable"))
        .collect()
}

fn first(report: &Report) -> &Problem {
    report
        .problems
        .first()
        .unwrap_or_else(|| panic!("tampering not detected in {}", report.chain_id))
}

// ---------------------------------------------------------------------------------------------

async fn intact_chain_round_trips_and_verifies(db: &Db) {
    fill(db, "r1").await;
    let report = db.verify("r1").await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        (report.records, report.last_seq, report.signed_through),
        (50, 50, 50)
    );
    assert_eq!(report.checkpoints, 5);
    let stored = records(db, "r1").await;
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(
            r.event,
            event(i as u64 + 1),
            "record {} reads back as written",
            i + 1
        );
    }
    // A restarted writer continues the chain where it ended.
    let writer = AuditWriter::start(db.store.clone(), WriterConfig::new("r1"), Some(signer()))
        .await
        .unwrap();
    assert_eq!(writer.append(event(51)).await.unwrap().seq, 51);
    writer.shutdown().await.unwrap();
    let report = db.verify("r1").await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.signed_through, 51,
        "shutdown signs a final checkpoint"
    );
}
store_test!(intact_chain_round_trips_and_verifies);

async fn group_commit_under_concurrency(db: &Db) {
    let mut config = WriterConfig::new("g");
    config.checkpoint_every = 100;
    let writer = AuditWriter::start(db.store.clone(), config, Some(signer()))
        .await
        .unwrap();
    let tasks: Vec<_> = (1..=500)
        .map(|i| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(event(i)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    writer.shutdown().await.unwrap();
    let report = db.verify("g").await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.signed_through, 500);
}
store_test!(group_commit_under_concurrency);

/// Every column of record 25, edited in SQL, is caught and the record named.
async fn tampered_field_of_stored_record(db: &Db) {
    let flip_hex = |c: &str| {
        format!("CASE WHEN substr({c}, 1, 1) = '0' THEN '1' ELSE '0' END || substr({c}, 2)")
    };
    let text = |c: &str| format!("COALESCE({c}, '') || 'x'");
    let int = |c: &str| format!("COALESCE({c}, 0) + 1");
    let edits: Vec<(&str, String)> = vec![
        ("chain_id", text("chain_id")),
        ("seq", "seq + 1000".into()),
        ("prev_hash", flip_hex("prev_hash")),
        ("hash", flip_hex("hash")),
        ("time_us", int("time_us")),
        (
            "kind",
            "CASE WHEN kind = 'call' THEN 'denial' ELSE 'call' END".into(),
        ),
        ("trace_id", text("trace_id")),
        ("agent", text("agent")),
        ("user_id", text("user_id")),
        ("token_id", text("token_id")),
        ("session", text("session")),
        ("client_era", text("client_era")),
        ("upstream_era", text("upstream_era")),
        ("server", text("server")),
        ("method", text("method")),
        ("tool", text("tool")),
        ("args_fingerprint", flip_hex("args_fingerprint")),
        ("decision", "'deny'".into()),
        ("rule_id", text("rule_id")),
        ("approval_ref", text("approval_ref")),
        ("findings", "'[]'".into()),
        ("outcome", "'error'".into()),
        ("error_code", int("error_code")),
        ("latency_us", int("latency_us")),
        ("bytes_in", int("bytes_in")),
        ("bytes_out", int("bytes_out")),
    ];
    for (column, expr) in edits {
        let chain = format!("f-{column}");
        fill(db, &chain).await;
        let sql =
            format!("UPDATE audit_records SET {column} = {expr} WHERE chain_id = $1 AND seq = 25");
        assert_eq!(db.exec(&sql, &chain).await, 1, "{column}: one row edited");
        let report = db.verify(&chain).await;
        let p = first(&report);
        assert_eq!(
            p.position(),
            25,
            "{column}: first problem names record 25: {:?}",
            report.problems
        );
        println!("{column}: {p}");
    }
}
store_test!(tampered_field_of_stored_record);

async fn deleted_record(db: &Db) {
    fill(db, "d").await;
    db.exec(
        "DELETE FROM audit_records WHERE chain_id = $1 AND seq = 25",
        "d",
    )
    .await;
    let report = db.verify("d").await;
    assert_eq!(
        report.problems,
        vec![Problem::Missing {
            after: 24,
            from: 25,
            to: 25
        }]
    );
}
store_test!(deleted_record);

/// The attacker renumbers records 25.. to make room and inserts a forged record 25 with a
/// correct hash of its own.
async fn inserted_record(db: &Db) {
    fill(db, "i").await;
    let original = records(db, "i").await;
    db.exec(
        "UPDATE audit_records SET seq = seq + 1000 WHERE chain_id = $1 AND seq >= 25",
        "i",
    )
    .await;
    db.exec(
        "UPDATE audit_records SET seq = seq - 999 WHERE chain_id = $1 AND seq >= 1025",
        "i",
    )
    .await;
    let mut head = ChainHead {
        chain_id: "i".into(),
        seq: 24,
        hash: original[23].hash,
    };
    let mut forged = event(25);
    forged.decision = Some("allow".into());
    forged.tool = Some("fs__write".into());
    let forged = head.append(forged);
    db.store.insert(&[forged], None).await.unwrap();
    let report = db.verify("i").await;
    assert_eq!(
        first(&report),
        &Problem::Inserted {
            seq: 25,
            displaced: 26
        },
        "{:?}",
        report.problems
    );
    assert!(report.problems.contains(&Problem::CheckpointMismatch {
        seq: 30,
        absent: false
    }));
}
store_test!(inserted_record);

async fn swapped_records(db: &Db) {
    fill(db, "s").await;
    db.exec(
        "UPDATE audit_records SET seq = -22 WHERE chain_id = $1 AND seq = 22",
        "s",
    )
    .await;
    db.exec(
        "UPDATE audit_records SET seq = 22 WHERE chain_id = $1 AND seq = 23",
        "s",
    )
    .await;
    db.exec(
        "UPDATE audit_records SET seq = 23 WHERE chain_id = $1 AND seq = -22",
        "s",
    )
    .await;
    let report = db.verify("s").await;
    assert_eq!(
        report.problems,
        vec![
            Problem::Moved {
                found_at: 22,
                belongs_at: 23
            },
            Problem::Moved {
                found_at: 23,
                belongs_at: 22
            }
        ]
    );
}
store_test!(swapped_records);

async fn truncated_tail(db: &Db) {
    fill(db, "t").await;
    db.exec(
        "DELETE FROM audit_records WHERE chain_id = $1 AND seq > 45",
        "t",
    )
    .await;
    let report = db.verify("t").await;
    assert_eq!(
        report.problems,
        vec![Problem::Truncated {
            checkpoint_seq: 50,
            chain_end: 45
        }]
    );
}
store_test!(truncated_tail);

/// The attacker rewrites the chain from record 25 on with correct hashes: only the signed
/// checkpoints can tell, and they do.
async fn rewritten_chain_tail(db: &Db) {
    fill(db, "w").await;
    let original = records(db, "w").await;
    db.exec(
        "DELETE FROM audit_records WHERE chain_id = $1 AND seq >= 25",
        "w",
    )
    .await;
    let mut head = ChainHead {
        chain_id: "w".into(),
        seq: 24,
        hash: original[23].hash,
    };
    let rewritten: Vec<AuditRecord> = original[24..]
        .iter()
        .map(|r| {
            let mut e = r.event.clone();
            if r.seq == 25 {
                e.decision = Some("allow".into());
                e.principal.agent = Some("innocent".into());
            }
            head.append(e)
        })
        .collect();
    db.store.insert(&rewritten, None).await.unwrap();
    let report = db.verify("w").await;
    assert_eq!(
        first(&report),
        &Problem::CheckpointMismatch {
            seq: 30,
            absent: false
        },
        "{:?}",
        report.problems
    );
}
store_test!(rewritten_chain_tail);

/// A checkpoint moved forward to claim coverage it never signed, and one signed by a key
/// nobody trusts.
async fn forged_checkpoint_signature(db: &Db) {
    fill(db, "k").await;
    db.exec(
        "UPDATE audit_checkpoints SET seq = 45 WHERE chain_id = $1 AND seq = 40",
        "k",
    )
    .await;
    let stranger = portcullis_audit::checkpoint::SigningKeyFile::from_seed(&[7; 32]);
    let recs = records(db, "k").await;
    let cp = stranger.sign("k", 50, recs[49].hash, 1);
    db.store.insert(&[], Some(&cp)).await.unwrap();
    let report = db.verify("k").await;
    assert_eq!(
        report.problems,
        vec![
            Problem::BadSignature {
                seq: 45,
                key_id: signer().key_id().to_owned()
            },
            Problem::UnknownKey {
                seq: 50,
                key_id: stranger.key_id().to_owned()
            }
        ]
    );
}
store_test!(forged_checkpoint_signature);

async fn corrupt_row_is_a_finding_not_a_crash(db: &Db) {
    fill(db, "x").await;
    db.exec("UPDATE audit_records SET kind = 'bogus', findings = 'not json' WHERE chain_id = $1 AND seq = 7", "x").await;
    let report = db.verify("x").await;
    assert!(
        matches!(first(&report), Problem::Undecodable { seq: 7, .. }),
        "{:?}",
        report.problems
    );
    let all = db.store.verify(&ring()).await.unwrap();
    assert_eq!(all.len(), 1);
}
store_test!(corrupt_row_is_a_finding_not_a_crash);

/// Without enough records for a count-based checkpoint, the timer signs one (every T seconds).
async fn checkpoint_after_interval(db: &Db) {
    let mut config = WriterConfig::new("timer");
    config.checkpoint_every = 1_000_000;
    config.checkpoint_interval = std::time::Duration::from_millis(100);
    let writer = AuditWriter::start(db.store.clone(), config, Some(signer()))
        .await
        .unwrap();
    for i in 1..=3 {
        writer.append(event(i)).await.unwrap();
    }
    let mut signed = 0;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        signed = db.verify("timer").await.signed_through;
        if signed == 3 {
            break;
        }
    }
    assert_eq!(
        signed, 3,
        "the interval checkpoint covers the three records"
    );
    writer.shutdown().await.unwrap();
}
store_test!(checkpoint_after_interval);

/// One chain per replica in a shared store; verify checks them all and names the chain.
async fn one_chain_per_replica(db: &Db) {
    let (a, b) = tokio::join!(fill(db, "replica-a"), fill(db, "replica-b"));
    let ((), ()) = (a, b);
    db.exec(
        "UPDATE audit_records SET tool = 'fs__rm' WHERE chain_id = $1 AND seq = 3",
        "replica-b",
    )
    .await;
    let reports = db.store.verify(&ring()).await.unwrap();
    let summary: Vec<(String, Vec<Problem>)> = reports
        .into_iter()
        .map(|r| (r.chain_id, r.problems))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("replica-a".to_owned(), vec![]),
            ("replica-b".to_owned(), vec![Problem::Edited { seq: 3 }])
        ]
    );
}
store_test!(one_chain_per_replica);

/// Retention deletes the oldest records behind a signed tombstone; verify accepts it, the
/// writer continues the chain after it (even when every record went), and tampering with what
/// is left is still caught.
async fn retention_leaves_a_signed_tombstone(db: &Db) {
    fill(db, "ret").await;
    // Records 1..=50 carry times base+1 ..= base+50: keep those at base+21 and later.
    let before = 1_700_000_000_000_000 + 21;
    let tomb = db
        .store
        .apply_retention("ret", before, Some(&signer()))
        .await
        .unwrap()
        .expect("something to delete");
    assert_eq!(tomb.seq, 20);
    let left = records(db, "ret").await;
    assert_eq!(left.first().map(|r| r.seq), Some(21));
    let report = db.verify("ret").await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.deleted_through, report.last_seq), (20, 50));
    // Nothing more is old enough: no second tombstone.
    assert!(
        db.store
            .apply_retention("ret", before, Some(&signer()))
            .await
            .unwrap()
            .is_none()
    );
    // Without a key, nothing is deleted.
    assert!(matches!(
        db.store.apply_retention("ret", i64::MAX, None).await,
        Err(portcullis_audit::store::StoreError::NoSigner)
    ));
    assert_eq!(records(db, "ret").await.len(), 30);

    // Everything deleted: the writer continues at 51 after the tombstone and verify agrees.
    db.store
        .apply_retention("ret", i64::MAX, Some(&signer()))
        .await
        .unwrap()
        .expect("all records are old");
    assert!(records(db, "ret").await.is_empty());
    let writer = AuditWriter::start(db.store.clone(), WriterConfig::new("ret"), Some(signer()))
        .await
        .unwrap();
    assert_eq!(writer.append(event(51)).await.unwrap().seq, 51);
    writer.shutdown().await.unwrap();
    let report = db.verify("ret").await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.deleted_through, report.last_seq), (50, 51));
}
store_test!(retention_leaves_a_signed_tombstone);

/// Deleting the oldest record left after retention is a gap, not retention.
async fn deletion_behind_a_tombstone(db: &Db) {
    fill(db, "ret-del").await;
    db.store
        .apply_retention("ret-del", 1_700_000_000_000_000 + 11, Some(&signer()))
        .await
        .unwrap()
        .unwrap();
    db.exec(
        "DELETE FROM audit_records WHERE chain_id = $1 AND seq = 11",
        "ret-del",
    )
    .await;
    let report = db.verify("ret-del").await;
    assert_eq!(
        report.problems,
        vec![Problem::Missing {
            after: 10,
            from: 11,
            to: 11
        }]
    );
}
store_test!(deletion_behind_a_tombstone);

/// A tombstone moved forward in SQL (to excuse deleting more) no longer verifies.
async fn forged_tombstone(db: &Db) {
    fill(db, "ret-forge").await;
    db.store
        .apply_retention("ret-forge", 1_700_000_000_000_000 + 11, Some(&signer()))
        .await
        .unwrap()
        .unwrap();
    db.exec(
        "DELETE FROM audit_records WHERE chain_id = $1 AND seq <= 15",
        "ret-forge",
    )
    .await;
    db.exec(
        "UPDATE audit_tombstones SET seq = 15 WHERE chain_id = $1",
        "ret-forge",
    )
    .await;
    let report = db.verify("ret-forge").await;
    assert_eq!(report.deleted_through, 0);
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::BadTombstone { seq: 15, .. })),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.contains(&Problem::Missing {
            after: 0,
            from: 1,
            to: 15
        }),
        "{:?}",
        report.problems
    );
}
store_test!(forged_tombstone);
