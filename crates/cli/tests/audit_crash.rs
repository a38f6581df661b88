//! `kill -9` under load loses no record of an answered call: the real `portcullis serve`
//! process (SQLite store, signed checkpoints) takes concurrent `tools/call` load, is killed
//! with SIGKILL mid-load, and then:
//!
//! - the calls answered last, while the test held SQLite's write lock, had their records only in
//!   the chain's append log when the process died;
//! - `portcullis audit verify` accepts the chain (exit 0), having replayed that log;
//! - every call the client saw answered has its decision record (written before the upstream
//!   was called) and its outcome record (written before the answer was released), found by the
//!   client's own trace id;
//! - no call reached the upstream without its decision record;
//! - a restarted gateway continues the same chain, and its graceful shutdown signs a final
//!   checkpoint over everything.

mod audit_upstream;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_audit::store::AuditStore;
use portcullis_audit::{Outcome, RecordKind};
use serde_json::{Value, json};
use support::{ChildGuard, TempDir, poll};

const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const TOKEN: &str = "crash-test-token";
/// Concurrent clients.
const CLIENTS: usize = 16;
/// Answered calls to wait for before the kill (the kill lands while all clients are busy).
const ANSWERED_BEFORE_KILL: usize = 300;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16, upstream: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("audit.key"), SEED).unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nstorage: \"sqlite://{db}\"\nservers:\n  rec: {{ url: {upstream} }}\nauth:\n  api_keys:\n    - {{ agent: loader, sha256: \"{digest}\" }}\nrules:\n  - {{ id: allow-loader, allow: {{ agents: [loader] }} }}\naudit:\n  chain_id: crash-chain\n  signing_key_file: audit.key\n  checkpoint: {{ every: 50, interval: 1s }}\n",
        db = dir.join("gw.db").display(),
        digest = portcullis_gateway::auth::key_digest_hex(TOKEN),
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start_gateway(config: &Path, dir: &Path, label: &str) -> ChildGuard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("PORTCULLIS_LOG", "warn")
        .env_remove("PORTCULLIS_AUDIT_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{label}.err"))).unwrap());
    ChildGuard::spawn(label, &mut command)
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    poll(Duration::from_secs(20), || async {
        let ok = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        ok.then_some(())
    })
    .await
    .expect("the gateway answers /healthz");
}

/// One modern `tools/call` carrying the client's own trace id; Some(trace) when answered with a
/// result.
async fn call(http: &reqwest::Client, base: &str, trace: &str) -> Option<()> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": "rec__echo", "arguments": {"trace": trace},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "traceparent": format!("00-{trace}-00f067aa0ba902b7-01")
            }
        }
    });
    let response = http
        .post(format!("{base}/mcp"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "rec__echo")
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    let value: Value = response.json().await.ok()?;
    value.get("result").map(|_| ())
}

fn verify(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify", "--storage"])
        .arg(format!("sqlite://{}", dir.join("gw.db").display()))
        .arg("--key-file")
        .arg(dir.join("audit.key"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "audit verify failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_record_of_an_answered_call() {
    let dir = TempDir::new("audit-crash");
    let upstream = audit_upstream::start().await;
    let port = free_port();
    let config = write_config(&dir.0, port, &upstream.url);
    let base = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let mut gateway = start_gateway(&config, &dir.0, "first");
    wait_healthy(&http, &base).await;

    // Load: CLIENTS tasks calling back to back, each call with a fresh trace id.
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, base, answered, stop) =
            (http.clone(), base.clone(), answered.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let trace = format!("{:016x}{:016x}", client as u64 + 1, n);
                if call(&http, &base, &trace).await.is_some() {
                    answered.lock().unwrap().push(trace);
                } else if stop.load(Ordering::Relaxed) {
                    break;
                } else {
                    // The gateway is gone (killed): stop this client.
                    break;
                }
            }
        }));
    }
    poll(Duration::from_secs(60), || async {
        (answered.lock().unwrap().len() >= ANSWERED_BEFORE_KILL).then_some(())
    })
    .await
    .expect("the gateway answers calls under load");
    // The last calls before the kill are answered while another connection holds SQLite's
    // write lock: their records are then only in the chain's append log (the writer cannot
    // copy them into SQLite), and the kill must not lose them.
    let db_url = format!("sqlite://{}", dir.0.join("gw.db").display());
    let lock_pool = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    let mut lock = lock_pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held_from = answered.lock().unwrap().len();
    poll(Duration::from_secs(3), || async {
        (answered.lock().unwrap().len() >= held_from + 50).then_some(())
    })
    .await
    .expect("calls are answered while SQLite's write lock is held");
    let chain_hex: String = "crash-chain".bytes().map(|b| format!("{b:02x}")).collect();
    let log = dir.0.join(format!("gw.db.chain-{chain_hex}.log"));
    let logged = std::fs::metadata(&log).unwrap().len();
    assert!(
        logged > 1_000,
        "the answered calls' records wait in the append log ({logged} bytes)"
    );
    // SIGKILL mid-load: no shutdown, no final checkpoint, calls in flight.
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
    drop(lock);
    lock_pool.close().await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let answered: Vec<String> = answered.lock().unwrap().clone();
    assert!(answered.len() >= ANSWERED_BEFORE_KILL);

    // The chain verifies after the crash.
    let report = verify(&dir.0);
    assert!(
        report.contains("chain crash-chain:") && report.contains(": OK"),
        "{report}"
    );

    // Every answered call has both records; every call the upstream saw has a decision record.
    let url = format!("sqlite://{}", dir.0.join("gw.db").display());
    let store = AuditStore::open_existing(&url).await.unwrap();
    let rows = store.read_page("crash-chain", 0, 1_000_000).await.unwrap();
    store.close().await;
    let mut by_trace: HashMap<String, (usize, usize)> = HashMap::new();
    for row in rows {
        let record = row.expect("every stored row decodes");
        assert_eq!(record.event.kind, RecordKind::Call);
        let trace = record
            .event
            .trace_id
            .clone()
            .expect("calls carry a trace id");
        let entry = by_trace.entry(trace).or_default();
        match record.event.outcome {
            None => entry.0 += 1,
            Some(Outcome::Ok) => entry.1 += 1,
            Some(other) => panic!("unexpected outcome {other:?}"),
        }
    }
    let mut missing = Vec::new();
    for trace in &answered {
        match by_trace.get(trace) {
            Some((1, 1)) => {}
            other => missing.push((trace.clone(), other.copied())),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered calls lack their records: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(10)]
    );
    let reached: HashSet<String> = upstream
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|p| p["arguments"]["trace"].as_str().unwrap().to_owned())
        .collect();
    for trace in &reached {
        assert!(
            by_trace.get(trace).is_some_and(|(d, _)| *d == 1),
            "call {trace} reached the upstream without a decision record"
        );
    }
    println!(
        "answered {}, reached upstream {}, traces in the trail {}",
        answered.len(),
        reached.len(),
        by_trace.len()
    );

    // A restarted gateway continues the chain; SIGTERM signs a final checkpoint over it.
    let mut gateway = start_gateway(&config, &dir.0, "second");
    wait_healthy(&http, &base).await;
    for n in 0..5 {
        let trace = format!("{:016x}{:016x}", 999, n);
        assert!(call(&http, &base, &trace).await.is_some());
    }
    nix_term(gateway.child.id());
    let status = tokio::task::spawn_blocking(move || gateway.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful shutdown: {status}");
    let report = verify(&dir.0);
    let last = report
        .split("last seq ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    assert!(
        report.contains(&format!("signed through seq {last}: OK")),
        "the final checkpoint covers the whole chain: {report}"
    );
}

/// SIGTERM (graceful shutdown) to `pid`.
fn nix_term(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
