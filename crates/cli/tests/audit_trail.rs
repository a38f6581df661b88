//! The audit trail on the data plane, end to end through the in-process gateway: every governed
//! message leaves its records (decision before the upstream, outcome after), denials name their
//! rule, authentication failures and config reloads are recorded, the trace reaches the
//! upstream in `_meta.traceparent`, the gateway fails closed when the store cannot write (the
//! upstream is never called), `on_failure: spool` keeps the records and replays them, and
//! `/metrics` counts it all. Records are read back from the store with `portcullis-audit`.

mod audit_upstream;
mod support;

use std::path::Path;
use std::time::Duration;

use portcullis_audit::store::AuditStore;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use serde_json::{Value, json};
use support::*;

/// A 32-byte signing key seed (hex), written to `dir/audit.key`.
const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn write_key(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("audit.key");
    std::fs::write(&path, SEED).unwrap();
    path
}

/// The gateway's YAML for a store at `db` with a signing key, plus `extra`.
fn audit_yaml(dir: &Path, db: &Path, extra: &str) -> String {
    format!(
        "storage: \"sqlite://{}\"\naudit:\n  chain_id: test-chain\n  signing_key_file: \"{}\"\n{extra}",
        db.display(),
        write_key(dir).display()
    )
}

async fn records(db: &Path) -> Vec<AuditRecord> {
    let store = AuditStore::open_existing(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = store.read_page("test-chain", 0, 10_000).await.unwrap();
    store.close().await;
    rows.into_iter().map(|r| r.unwrap()).collect()
}

/// Records until `pred` holds for them (best-effort records are committed asynchronously).
async fn records_until(db: &Path, pred: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
    poll(Duration::from_secs(10), || async {
        let r = records(db).await;
        pred(&r).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("the expected records never appeared in {}", db.display()))
}

/// `portcullis audit verify` of the store at `db` with the key written in `dir`.
fn audit_verify(dir: &Path, db: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify", "--storage"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--key-file")
        .arg(dir.join("audit.key"))
        .output()
        .unwrap()
}

fn echo(text: &str) -> Value {
    json!({"name": "rec__echo", "arguments": {"text": text}})
}

#[tokio::test]
async fn a_call_leaves_a_durable_decision_record_then_its_outcome() {
    let dir = TempDir::new("audit-call");
    let db = dir.0.join("gw.db");
    let upstream = audit_upstream::start().await;
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(&dir.0, &db, ""),
    )
    .await;
    let answer = modern(&gw, "/mcp", ALICE, 1, "tools/call", echo("hello")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let same_args = modern(&gw, "/mcp", ALICE, 2, "tools/call", echo("hello")).await;
    let other_args = modern(&gw, "/mcp", ALICE, 3, "tools/call", echo("other")).await;
    assert_eq!(same_args.status, 200);
    assert_eq!(other_args.status, 200);

    let r = records(&db).await;
    assert_eq!(r.len(), 6, "decision + outcome per call: {r:#?}");
    let (decision, outcome) = (&r[0].event, &r[1].event);
    assert_eq!((r[0].seq, r[1].seq), (1, 2));
    assert_eq!(decision.kind, RecordKind::Call);
    assert_eq!(
        decision.outcome, None,
        "the decision record precedes the answer"
    );
    assert_eq!(decision.decision.as_deref(), Some("allow"));
    assert_eq!(decision.rule_id.as_deref(), Some("allow-all-test"));
    assert_eq!(decision.tool.as_deref(), Some("rec__echo"));
    assert_eq!(decision.server.as_deref(), Some("rec"));
    assert_eq!(decision.method.as_deref(), Some("tools/call"));
    assert_eq!(decision.principal.agent.as_deref(), Some("alice"));
    assert!(
        decision
            .principal
            .token_id
            .as_deref()
            .is_some_and(|t| t.starts_with("key:")),
        "{decision:?}"
    );
    assert_eq!(decision.client_era.as_deref(), Some(MODERN));
    assert!(decision.bytes_in.unwrap() > 50);
    let trace = decision.trace_id.clone().unwrap();
    assert_eq!(trace.len(), 32);
    let fingerprint = decision.args_fingerprint.clone().unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert!(!fingerprint.contains("hello"));

    assert_eq!(outcome.outcome, Some(Outcome::Ok));
    assert_eq!(
        outcome.upstream_era.as_deref(),
        Some(MODERN),
        "the recorder speaks 2026-07-28"
    );
    assert_eq!(outcome.trace_id.as_deref(), Some(trace.as_str()));
    assert_eq!(outcome.decision.as_deref(), Some("allow"));
    assert!(outcome.latency_us.unwrap() > 0);
    assert!(outcome.bytes_out.unwrap() > 20);
    assert!(outcome.time_us >= decision.time_us);

    // Equal arguments link, different ones do not; each call has its own trace.
    assert_eq!(
        r[2].event.args_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    assert_ne!(
        r[4].event.args_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    assert_ne!(r[2].event.trace_id.as_deref(), Some(trace.as_str()));

    // Shutdown signs a final checkpoint; `portcullis audit verify` accepts the chain.
    gw.stop().await;
    let out = audit_verify(&dir.0, &db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("chain test-chain: 6 records, last seq 6")
            && stdout.contains("signed through seq 6: OK"),
        "{stdout}"
    );
}

#[tokio::test]
async fn traceparent_reaches_the_upstream_with_the_clients_trace_id() {
    let dir = TempDir::new("audit-trace");
    let db = dir.0.join("gw.db");
    let upstream = audit_upstream::start().await;
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(&dir.0, &db, ""),
    )
    .await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{client_trace}-00f067aa0ba902b7-01");
    // In the HTTP header (legacy client, transparent route: names unchanged).
    let mut client = LegacyClient::connect(&gw, "/mcp/rec", ALICE, json!({})).await;
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"t"}}});
    let answer = post_raw(
        &gw,
        "/mcp/rec",
        Some(ALICE),
        &[
            ("mcp-session-id", &client.session),
            ("mcp-protocol-version", LEGACY),
            ("traceparent", &parent),
        ],
        body.to_string(),
    )
    .await;
    let seen = first_text(&answer);
    assert!(seen.starts_with(&format!("00-{client_trace}-")), "{seen}");
    assert_ne!(seen, parent, "the gateway is a hop with its own span id");
    // No traceparent at all: the gateway starts a trace and the upstream still gets one.
    let answer = client
        .request(
            "tools/call",
            json!({"name":"echo","arguments":{"text":"u"}}),
        )
        .await;
    let minted = first_text(&answer);
    assert_eq!(minted.len(), 55, "{minted}");
    assert!(!minted.contains(client_trace));
    // An invalid value in `_meta` is replaced, never passed on.
    let answer = client
        .request(
            "tools/call",
            json!({"name":"echo","arguments":{"text":"v"},"_meta":{"traceparent":"00-zz-evil-01"}}),
        )
        .await;
    assert!(!first_text(&answer).contains("evil"));

    let r = records(&db).await;
    let traces: Vec<&str> = r
        .iter()
        .filter(|r| r.event.outcome.is_none())
        .map(|r| r.event.trace_id.as_deref().unwrap())
        .collect();
    assert_eq!(traces.len(), 3, "{r:#?}");
    assert_eq!(traces[0], client_trace);
    assert_eq!(
        &minted[3..35],
        traces[1],
        "the upstream's trace is the record's"
    );
    assert_eq!(r[0].event.session.as_deref(), Some(client.session.as_str()));
    assert_eq!(r[0].event.client_era.as_deref(), Some(LEGACY));
    assert_eq!(upstream.count(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_denial_is_recorded_naming_the_rule_and_never_reaches_the_upstream() {
    let dir = TempDir::new("audit-deny");
    let db = dir.0.join("gw.db");
    let upstream = audit_upstream::start().await;
    let rules = "rules:\n  - { id: no-echo-for-bob, deny: { agents: [bob], tools: [\"rec__echo\"] } }\n  - { id: everyone, allow: {} }\n";
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(&dir.0, &db, rules),
    )
    .await;
    let answer = modern(&gw, "/mcp", BOB, 1, "tools/call", echo("x")).await;
    assert_eq!(answer.last()["error"]["code"], -31010, "{answer:?}");
    assert_eq!(upstream.count(), 0);
    let r = records(&db).await;
    assert_eq!(r.len(), 1, "{r:#?}");
    let e = &r[0].event;
    assert_eq!(e.kind, RecordKind::Denial);
    assert_eq!(e.decision.as_deref(), Some("deny"));
    assert_eq!(e.rule_id.as_deref(), Some("no-echo-for-bob"));
    assert_eq!(e.tool.as_deref(), Some("rec__echo"));
    assert_eq!(e.principal.agent.as_deref(), Some("bob"));
    assert_eq!(e.outcome, Some(Outcome::Error { code: -31010 }));
    gw.stop().await;
}

#[tokio::test]
async fn authentication_failures_are_recorded_without_the_token() {
    let dir = TempDir::new("audit-auth");
    let db = dir.0.join("gw.db");
    let gw = gateway_with(&audit_yaml(&dir.0, &db, "")).await;
    let answer = post_raw(
        &gw,
        "/mcp/fx",
        Some("not-a-valid-token"),
        &[],
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 401);
    let r = records_until(&db, |r| !r.is_empty()).await;
    let e = &r[0].event;
    assert_eq!(e.kind, RecordKind::AuthFailure);
    assert_eq!(e.server.as_deref(), Some("fx"));
    assert_eq!(e.rule_id.as_deref(), Some("auth:invalid"));
    assert_eq!(e.outcome, Some(Outcome::Error { code: 401 }));
    let token_id = e.principal.token_id.clone().unwrap();
    assert!(
        token_id.starts_with("key:") && !token_id.contains("not-a-valid"),
        "{token_id}"
    );
    assert_eq!(e.principal.agent, None);
    gw.stop().await;
}

#[tokio::test]
async fn list_requests_are_recorded() {
    let dir = TempDir::new("audit-list");
    let db = dir.0.join("gw.db");
    let gw = gateway_with(&audit_yaml(&dir.0, &db, "")).await;
    let answer = modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;
    assert_eq!(answer.status, 200);
    let r = records(&db).await;
    assert_eq!(r.len(), 2, "{r:#?}");
    assert_eq!(r[0].event.method.as_deref(), Some("tools/list"));
    assert_eq!(r[0].event.server, None, "the aggregate list spans servers");
    assert_eq!(r[1].event.outcome, Some(Outcome::Ok));
    gw.stop().await;
}

/// The invariant: when the store cannot write, calls fail closed with -31020 and the upstream
/// is never called for them. The SQLite writer learns that the store refuses when it copies its
/// append log into SQLite, one batch (milliseconds) after the break: calls answered meanwhile
/// have their records durable in the log, and once the store can write again every one of
/// them reaches it, in a chain that verifies.
#[tokio::test]
async fn unwritable_store_fails_closed_and_the_upstream_is_not_called() {
    let dir = TempDir::new("audit-fail");
    let db = dir.0.join("gw.db");
    let upstream = audit_upstream::start().await;
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(&dir.0, &db, ""),
    )
    .await;
    assert_eq!(
        modern(&gw, "/mcp", ALICE, 1, "tools/call", echo("before"))
            .await
            .status,
        200
    );
    assert_eq!(upstream.count(), 1);
    break_store(&db).await;
    let (answered, refusal) = calls_until_refused(&gw, false).await;
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("not forwarded"),
        "{refusal}"
    );
    assert_eq!(
        upstream.count(),
        1 + answered,
        "the upstream was called only for the answered calls"
    );
    let again = modern(&gw, "/mcp", ALICE, 999, "tools/call", echo("still down")).await;
    assert_eq!(again.last()["error"]["code"], -31020, "{again:?}");
    assert_eq!(
        upstream.count(),
        1 + answered,
        "the upstream was not called"
    );
    gw.stop().await;

    repair_store(&db).await;
    let r = records(&db).await;
    // Every answered call has its decision record. (An outcome record the store refused is
    // logged and the answer still goes out: the upstream has already acted.)
    let decisions = r
        .iter()
        .filter(|r| r.event.tool.as_deref() == Some("rec__echo") && r.event.outcome.is_none())
        .count();
    assert_eq!(decisions, 1 + answered, "{r:#?}");
    let verify = audit_verify(&dir.0, &db);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Calls `rec__echo` until the gateway refuses one with -31020 (or, with `spool`, until
/// `/metrics` counts at least two spooled records); the calls answered before that, and the
/// refusal's error.
async fn calls_until_refused(gw: &Gateway, spool: bool) -> (usize, Value) {
    for id in 2..200u64 {
        let answer = modern(gw, "/mcp", ALICE, id, "tools/call", echo("during")).await;
        let error = &answer.last()["error"];
        if !error.is_null() {
            assert_eq!(error["code"], -31020, "{answer:?}");
            return (usize::try_from(id).unwrap() - 2, error.clone());
        }
        assert_eq!(answer.status, 200, "{answer:?}");
        if spool && spooled(gw).await >= 2 {
            return (usize::try_from(id).unwrap() - 1, Value::Null);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the gateway never noticed that the store refuses writes");
}

/// `portcullis_audit_spooled_total` from `/metrics`.
async fn spooled(gw: &Gateway) -> usize {
    let metrics = gw.metrics_text().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_audit_spooled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Makes every later insert into the audit table fail, as a full disk or a revoked grant would.
async fn break_store(db: &Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_records RENAME TO audit_records_gone")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn repair_store(db: &Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_records_gone RENAME TO audit_records")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// `on_failure: spool`: with the store down calls go on, their records go to the spool once
/// the writer has seen the store refuse (those answered before are in its append log), and
/// every record reaches the store once it can write again; the chain verifies.
#[tokio::test]
async fn spool_keeps_records_while_the_store_is_down_and_replays_them() {
    let dir = TempDir::new("audit-spool");
    let db = dir.0.join("gw.db");
    let spool = dir.0.join("audit.spool");
    let upstream = audit_upstream::start().await;
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(
            &dir.0,
            &db,
            &format!(
                "  on_failure: spool\n  spool_file: \"{}\"\n",
                spool.display()
            ),
        ),
    )
    .await;
    break_store(&db).await;
    let (answered, _) = calls_until_refused(&gw, true).await;
    assert_eq!(upstream.count(), answered, "every call went on");
    let in_spool = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(
        in_spool.lines().count(),
        spooled(&gw).await,
        "the spool holds what the metric counts: {in_spool}"
    );
    repair_store(&db).await;
    let r = records_until(&db, |r| {
        r.iter()
            .filter(|r| r.event.outcome == Some(Outcome::Ok))
            .count()
            >= answered
    })
    .await;
    let calls = r
        .iter()
        .filter(|r| r.event.tool.as_deref() == Some("rec__echo"));
    assert_eq!(
        calls.clone().filter(|r| r.event.outcome.is_none()).count(),
        answered
    );
    assert_eq!(
        calls
            .filter(|r| r.event.outcome == Some(Outcome::Ok))
            .count(),
        answered
    );
    gw.stop().await;
}

/// A config reload (applied or rejected) is recorded (default chain id and store of the
/// test config: the store path is read back from the file).
#[tokio::test]
async fn config_reloads_are_recorded() {
    let dir = TempDir::new("audit-reload");
    let gw = gateway_from_file(&dir.0, &[]).await;
    let path = gw.config_path.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("storage: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let reload_records = || async {
        let store = AuditStore::open_existing(&url).await.unwrap();
        let mut out = Vec::new();
        for chain in store.chains().await.unwrap() {
            for row in store.read_page(&chain, 0, 1_000).await.unwrap() {
                let r = row.unwrap();
                if r.event.kind == RecordKind::ConfigChange {
                    out.push(r.event);
                }
            }
        }
        store.close().await;
        out
    };
    // The watcher starts in the background: touch the file until a reload is recorded.
    let mut tick = 0;
    let applied = poll(Duration::from_secs(20), || {
        if tick % 10 == 0 {
            gw.write_config_text(&format!("{text}\n# touched {tick}\n"));
        }
        tick += 1;
        async {
            let r = reload_records().await;
            (!r.is_empty()).then_some(r)
        }
    })
    .await
    .expect("the applied reload is recorded");
    assert_eq!(applied[0].decision.as_deref(), Some("applied"));
    assert_eq!(applied[0].method.as_deref(), Some("config/reload"));
    gw.write_config_text("listen: [not valid\n");
    let rejected = poll(Duration::from_secs(10), || async {
        let r = reload_records().await;
        r.iter()
            .any(|e| e.decision.as_deref() == Some("rejected"))
            .then_some(r)
    })
    .await;
    assert!(rejected.is_some(), "the rejected reload is recorded");
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_denials_and_audit_appends() {
    let dir = TempDir::new("audit-metrics");
    let db = dir.0.join("gw.db");
    let upstream = audit_upstream::start().await;
    let rules =
        "rules:\n  - { id: no-bob, deny: { agents: [bob] } }\n  - { id: everyone, allow: {} }\n";
    let gw = gateway_with_servers(
        &[("rec", format!("{{ url: {} }}", upstream.url))],
        &audit_yaml(&dir.0, &db, rules),
    )
    .await;
    for id in 0..3 {
        modern(&gw, "/mcp", ALICE, id, "tools/call", echo("m")).await;
    }
    modern(&gw, "/mcp", BOB, 9, "tools/call", echo("m")).await;
    // The backlog is what the writer has made durable and not yet copied into SQLite: it
    // drains within a batch.
    let text = poll(Duration::from_secs(5), || async {
        let response = gw
            .http
            .get(format!("{}/metrics", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = response.text().await.unwrap();
        text.contains("portcullis_audit_backlog 0").then_some(text)
    })
    .await
    .expect("the audit backlog drains");
    for expected in [
        r#"portcullis_requests_total{server="rec",tool="rec__echo",method="tools/call",decision="allow",outcome="ok"} 3"#,
        r#"portcullis_requests_total{server="rec",tool="rec__echo",method="tools/call",decision="deny",outcome="refused"} 1"#,
        r#"portcullis_request_duration_seconds_count{server="rec",method="tools/call"} 4"#,
        r#"portcullis_upstream_up{server="rec"} 1"#,
        "portcullis_audit_append_seconds_count 7",
        "portcullis_audit_backlog 0",
        "portcullis_sessions_active 0",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    gw.stop().await;
}

/// The same durability and fail-closed behaviour on PostgreSQL (the shared store of several
/// replicas): records land in the chain, and once the audit table is gone the call fails closed
/// without reaching the upstream.
#[tokio::test]
async fn postgres_store_records_calls_and_fails_closed_when_its_table_is_dropped() {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (db test) is needed for this test");
    let schema = format!(
        "audit_gw_{}_{}",
        std::process::id(),
        portcullis_audit::store::now_us() % 1_000_000_000
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin)
        .await
        .unwrap();
    let url =
        format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}");
    let dir = TempDir::new("audit-pg");
    let upstream = audit_upstream::start().await;
    let yaml = format!(
        "storage: \"{url}\"\naudit:\n  chain_id: pg-chain\n  signing_key_file: \"{}\"\n",
        write_key(&dir.0).display()
    );
    let gw = gateway_with_servers(&[("rec", format!("{{ url: {} }}", upstream.url))], &yaml).await;
    let answer = modern(&gw, "/mcp", ALICE, 1, "tools/call", echo("pg")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let store = AuditStore::open_existing(&url).await.unwrap();
    let rows: Vec<AuditRecord> = store
        .read_page("pg-chain", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    store.close().await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[0].event.tool.as_deref(), Some("rec__echo"));
    assert_eq!(rows[1].event.outcome, Some(Outcome::Ok));

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{schema}\".audit_records"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let answer = modern(&gw, "/mcp", ALICE, 2, "tools/call", echo("pg-down")).await;
    assert_eq!(answer.last()["error"]["code"], -31020, "{answer:?}");
    assert_eq!(upstream.count(), 1, "the upstream was not called");
    gw.stop().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
}

/// Governed messages outside `tools/call`: a relayed server→client request, `server/discover`
/// (answered by the gateway itself: one record) and `subscriptions/listen` (a decision record
/// when it opens, an outcome record when it closes).
#[tokio::test]
async fn relayed_server_requests_discovery_and_listens_are_recorded() {
    let dir = TempDir::new("audit-more");
    let db = dir.0.join("gw.db");
    let gw = gateway_with(&audit_yaml(&dir.0, &db, "")).await;

    let discovered = modern(&gw, "/mcp", ALICE, 1, "server/discover", json!({})).await;
    assert!(discovered.last().get("result").is_some(), "{discovered:?}");

    // fx asks the (legacy) client for a sampling answer during a call; the gateway relays it.
    let mut client = LegacyClient::connect(&gw, "/mcp/fx", ALICE, json!({"sampling": {}})).await;
    let mut stream = client
        .request_stream(
            "tools/call",
            json!({"name": "test_sampling", "arguments": {"prompt": "hi"}}),
        )
        .await;
    let question = stream.next_request().await;
    assert_eq!(question["method"], "sampling/createMessage");
    client
        .respond(
            &question["id"],
            json!({"role": "assistant", "content": {"type": "text", "text": "hello"}, "model": "m", "stopReason": "endTurn"}),
        )
        .await;
    let last = stream
        .until_response(&json!(client.last_id()))
        .await
        .pop()
        .unwrap();
    assert_eq!(last["result"]["content"][0]["text"], "LLM response: hello");

    // A listen on the aggregate: acknowledged, then the client goes away.
    let body = json!({
        "jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
            },
            "notifications": {"toolsListChanged": true}
        }
    });
    let mut listen = post_stream(
        &gw,
        "/mcp",
        Some(ALICE),
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "subscriptions/listen"),
        ],
        body.to_string(),
    )
    .await;
    let ack = listen.next().await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    drop(listen);

    let method = |e: &portcullis_audit::AuditEvent, m: &str| e.method.as_deref() == Some(m);
    let r = records_until(&db, |r| {
        r.iter()
            .filter(|r| method(&r.event, "subscriptions/listen"))
            .count()
            == 2
            && r.iter().any(|r| method(&r.event, "sampling/createMessage"))
    })
    .await;

    let discover: Vec<_> = r
        .iter()
        .filter(|r| method(&r.event, "server/discover"))
        .collect();
    assert_eq!(
        discover.len(),
        1,
        "one record for a request the gateway answers: {r:#?}"
    );
    let e = &discover[0].event;
    assert_eq!(e.kind, RecordKind::Call);
    assert_eq!(e.decision.as_deref(), Some("allow"));
    assert_eq!(e.outcome, Some(Outcome::Ok));
    assert_eq!(e.principal.agent.as_deref(), Some("alice"));
    assert_eq!(e.client_era.as_deref(), Some(MODERN));

    let sampling: Vec<_> = r
        .iter()
        .filter(|r| method(&r.event, "sampling/createMessage"))
        .collect();
    assert_eq!(
        sampling.len(),
        2,
        "the question and the client's answer: {r:#?}"
    );
    let answer = &sampling[1].event;
    assert_eq!(answer.outcome, Some(Outcome::Ok), "{answer:?}");
    assert!(answer.bytes_out.is_some_and(|n| n > 0), "{answer:?}");
    assert_eq!(answer.session, sampling[0].event.session);
    let e = &sampling[0].event;
    assert_eq!(e.outcome, None, "the question's record: {e:?}");
    assert_eq!(e.kind, RecordKind::Call);
    assert_eq!(e.decision.as_deref(), Some("allow"));
    assert_eq!(e.rule_id.as_deref(), Some("allow-all-test"));
    assert_eq!(e.server.as_deref(), Some("fx"));
    assert_eq!(e.principal.agent.as_deref(), Some("alice"));
    assert!(e.session.is_some(), "the legacy client's session: {e:?}");
    // It happened during the call, between the call's decision and outcome records.
    let call_seqs: Vec<u64> = r
        .iter()
        .filter(|r| method(&r.event, "tools/call"))
        .map(|r| r.seq)
        .collect();
    assert_eq!(call_seqs.len(), 2, "{r:#?}");
    assert!(call_seqs[0] < sampling[0].seq && sampling[1].seq < call_seqs[1]);

    let listens: Vec<_> = r
        .iter()
        .filter(|r| method(&r.event, "subscriptions/listen"))
        .collect();
    let (opened, closed) = (&listens[0].event, &listens[1].event);
    assert_eq!(opened.decision.as_deref(), Some("allow"));
    assert_eq!(
        opened.outcome, None,
        "the decision record when the listen opens"
    );
    assert_eq!(opened.server, None, "the aggregate listen spans servers");
    assert!(
        matches!(closed.outcome, Some(Outcome::Error { .. })),
        "closed by the client leaving: {closed:?}"
    );
    assert_eq!(closed.trace_id, opened.trace_id);
    gw.stop().await;
}

/// A modern client answers a legacy upstream's question (server-everything's sampling request)
/// in `inputResponses` on its retry: the answer is recorded like a legacy client's. A retry
/// that leaves the question unanswered is recorded as no answer, never as nothing.
#[tokio::test]
async fn a_modern_clients_answer_in_input_responses_is_recorded() {
    let everything = start_everything().await;
    let dir = TempDir::new("audit-modern-answer");
    let db = dir.0.join("gw.db");
    let gw = gateway_with_servers(
        &[("ev", format!("{{ url: {} }}", everything.url))],
        &audit_yaml(&dir.0, &db, ""),
    )
    .await;
    let sampling = json!({"sampling": {}});
    let call = json!({
        "name": "ev__trigger-sampling-request",
        "arguments": {"prompt": "say something", "maxTokens": 20}
    });
    let ask = |id: u64| {
        modern_with(
            &gw,
            "/mcp",
            ALICE,
            id,
            "tools/call",
            call.clone(),
            sampling.clone(),
        )
    };
    let state_and_key = |answer: &Answer| {
        let result = &answer.last()["result"];
        assert_eq!(result["resultType"], "input_required", "{answer:?}");
        let requests = result["inputRequests"].as_object().expect("inputRequests");
        let key = requests.keys().next().unwrap().clone();
        (result["requestState"].clone(), key)
    };

    let (state, key) = state_and_key(&ask(1).await);
    let mut retry = call.clone();
    retry["requestState"] = state;
    retry["inputResponses"] = json!({ key: {
        "role": "assistant",
        "content": {"type": "text", "text": "canned words"},
        "model": "m",
        "stopReason": "endTurn"
    }});
    let done = modern_with(&gw, "/mcp", ALICE, 2, "tools/call", retry, sampling.clone()).await;
    assert!(
        done.last()["result"].to_string().contains("canned words"),
        "{done:?}"
    );

    let (state, _) = state_and_key(&ask(3).await);
    let mut unanswered = call.clone();
    unanswered["requestState"] = state;
    unanswered["inputResponses"] = json!({});
    let _ = modern_with(&gw, "/mcp", ALICE, 4, "tools/call", unanswered, sampling).await;

    let answer_of = |r: &AuditRecord| {
        r.event.method.as_deref() == Some("sampling/createMessage") && r.event.outcome.is_some()
    };
    let r = records_until(&db, |r| r.iter().filter(|r| answer_of(r)).count() >= 2).await;
    let answers: Vec<_> = r
        .iter()
        .filter(|r| answer_of(r))
        .map(|r| &r.event)
        .collect();
    assert_eq!(answers.len(), 2, "one answer record per question: {r:#?}");
    assert_eq!(answers[0].outcome, Some(Outcome::Ok), "{:?}", answers[0]);
    assert!(
        answers[0].bytes_out.is_some_and(|n| n > 0),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[0].principal.agent.as_deref(), Some("alice"));
    assert_eq!(answers[0].server.as_deref(), Some("ev"));
    assert_eq!(
        answers[1].outcome,
        Some(Outcome::Error { code: -32600 }),
        "the unanswered question: {:?}",
        answers[1]
    );
    gw.stop().await;
    drop(everything);
}
