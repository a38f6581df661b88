//! `portcullis audit verify|tail|export` as scripts use them: exit codes and output on an
//! intact, a tampered and a missing store (SQLite; the store itself is tested on both backends in
//! `crates/audit/tests/store.rs`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use portcullis_audit::checkpoint::SigningKeyFile;
use portcullis_audit::store::{AuditStore, AuditWriter, WriterConfig};
use portcullis_audit::{AuditEvent, RecordKind};

const SEED: &str = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-audit-cli-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 30 records (agent-0/agent-1 alternating), checkpoints every 10.
async fn trail(dir: &std::path::Path) -> String {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    let store = AuditStore::connect(&url).await.unwrap();
    let mut config = WriterConfig::new("replica-1");
    config.checkpoint_every = 10;
    let signer = Arc::new(SigningKeyFile::parse(SEED).unwrap());
    let writer = AuditWriter::start(store.clone(), config, Some(signer))
        .await
        .unwrap();
    for i in 1..=30i64 {
        let mut e = AuditEvent::new(RecordKind::Call, 1_795_248_000_000_000 + i * 1_000_000);
        e.principal.agent = Some(format!("agent-{}", i % 2));
        e.tool = Some(if i == 5 {
            "fs__read,\"x\"".into()
        } else {
            "fs__read".into()
        });
        writer.append(e).await.unwrap();
    }
    writer.shutdown().await.unwrap();
    store.close().await;
    std::fs::write(dir.join("key.hex"), SEED).unwrap();
    url
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_LOG", "error")
        .env_remove("PORTCULLIS_AUDIT_KEY")
        .env_remove("PORTCULLIS_STORAGE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn verify_exit_codes_and_tamper_location() {
    let dir = scratch("verify");
    let url = trail(&dir).await;
    let key = dir.join("key.hex");
    let key = key.to_str().unwrap();

    let ok = portcullis(&["audit", "--storage", &url, "verify", "--key-file", key]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).contains(
        "chain replica-1: 30 records, last seq 30, 3 checkpoints, signed through seq 30: OK"
    ));

    let sqlite = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_records SET agent = 'someone-else' WHERE seq = 17")
        .execute(&sqlite)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_records WHERE seq > 27")
        .execute(&sqlite)
        .await
        .unwrap();
    sqlite.close().await;

    let bad = portcullis(&["audit", "--storage", &url, "verify", "--key-file", key]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(
        text.contains("chain replica-1 seq 17: record 17 was edited"),
        "{text}"
    );
    assert!(
        text.contains("signed checkpoint covers seq 30 but the chain ends at 27"),
        "{text}"
    );

    let json = portcullis(&[
        "audit",
        "--storage",
        &url,
        "verify",
        "--key-file",
        key,
        "--json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        reports[0]["problems"][0],
        serde_json::json!({ "problem": "edited", "seq": 17 })
    );

    let missing = format!("sqlite://{}", dir.join("nope.db").display());
    let unreachable = portcullis(&["audit", "--storage", &missing, "verify"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        !dir.join("nope.db").exists(),
        "verify never creates a store"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tail_and_export_with_filters() {
    let dir = scratch("export");
    let url = trail(&dir).await;

    let tail = portcullis(&["audit", "--storage", &url, "tail", "-n", "2"]);
    assert_eq!(tail.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = stdout(&tail)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()),
        (Some(29), Some(30))
    );
    assert_eq!(lines[1]["time"], "2026-11-21T08:00:30.000000Z");

    let jsonl = portcullis(&[
        "audit",
        "--storage",
        &url,
        "export",
        "--format",
        "jsonl",
        "--agent",
        "agent-1",
        "--since",
        "2026-11-21T08:00:10Z",
        "--until",
        "2026-11-21T08:00:20Z",
    ]);
    let seqs: Vec<u64> = stdout(&jsonl)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![11, 13, 15, 17, 19]);

    let csv = portcullis(&["audit", "--storage", &url, "export", "--format", "csv"]);
    let text = stdout(&csv);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 31, "header + 30 records");
    assert!(rows[0].starts_with("time,chain_id,seq,kind,"));
    assert!(
        rows[5].contains(",\"fs__read,\"\"x\"\"\","),
        "quoted: {}",
        rows[5]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tail_follow_prints_new_records() {
    use std::io::{BufRead, BufReader};
    let dir = scratch("follow");
    let url = trail(&dir).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "--storage", &url, "tail", "-n", "1", "--follow"])
        .env("PORTCULLIS_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let seq =
        |line: String| serde_json::from_str::<serde_json::Value>(&line).unwrap()["seq"].as_u64();
    let wait = std::time::Duration::from_secs(10);
    assert_eq!(seq(rx.recv_timeout(wait).unwrap()), Some(30));
    let store = AuditStore::connect(&url).await.unwrap();
    let writer = AuditWriter::start(store, WriterConfig::new("replica-1"), None)
        .await
        .unwrap();
    writer
        .append(AuditEvent::new(RecordKind::ConfigChange, 1))
        .await
        .unwrap();
    let next = rx.recv_timeout(wait);
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(seq(next.unwrap()), Some(31));
    let _ = std::fs::remove_dir_all(&dir);
}
