//! Export end to end: records appended through the real `AuditWriter`, exported by
//! `portcullis_export::start` to real receivers (rsyslog, in `rsyslog.rs` of this binary) and
//! loopback ones. Store-backed tests run on SQLite and PostgreSQL (`store_test!`).
//!
//! What is pinned: every record arrives (at least once) across receiver outages and restarts of
//! the exporter; cursors persist; retries back off; batches stay bounded while a receiver is
//! down; the lag report counts records and seconds behind; two exporters on one database do not
//! both drive a chain.

mod rsyslog;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis_config::Secret;
use portcullis_config::sinks::{SinkKind, StartAt, SyslogFormat, SyslogTransport};
use support::http::{HEC_TOKEN, HOOK_SECRET, HttpReceiver};
use support::syslog::{Shared, TcpSyslog, UdpSyslog, seq_of};
use support::*;

fn file_kind(path: std::path::PathBuf) -> SinkKind {
    SinkKind::File { path, rotate: None }
}

fn syslog_kind(transport: SyslogTransport, port: u16, format: SyslogFormat) -> SinkKind {
    SinkKind::Syslog {
        transport,
        host: "127.0.0.1".into(),
        port,
        format,
        facility: 16,
        app_name: "portcullis".into(),
        hostname: Some("gw-test".into()),
        ca_file: None,
    }
}

fn webhook_kind(base: &str) -> SinkKind {
    SinkKind::Webhook {
        url: format!("{base}/hook"),
        secret: Secret::new(HOOK_SECRET),
        ca_file: None,
    }
}

fn file_seqs(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["seq"].as_u64().expect("seq")
        })
        .collect()
}

store_test!(file_sink_cursor_survives_restart, |db| {
    let path = db.path("audit.jsonl");
    let sinks = [sink("file", file_kind(path.clone()), 7)];
    let writer = db.writer("gw-1").await;
    append(&writer, 30, Duration::ZERO).await;

    let export = db.export(&sinks).await;
    wait_for("30 lines", || file_seqs(&path).len() == 30).await;
    wait_for("lag 0", || {
        lag_of(&export, "file", "gw-1").is_some_and(|l| l.records_behind == 0 && l.active)
    })
    .await;
    export.stop().await;

    // Appended while no exporter runs; a new one resumes at the stored cursor.
    append(&writer, 20, Duration::ZERO).await;
    let export = db.export(&sinks).await;
    wait_for("50 lines", || file_seqs(&path).len() >= 50).await;
    wait_for("caught up", || {
        lag_of(&export, "file", "gw-1").is_some_and(|l| l.records_behind == 0)
    })
    .await;
    export.stop().await;
    // Clean stops between idle polls: exactly once, in order.
    assert_eq!(file_seqs(&path), (1..=50).collect::<Vec<_>>());
});

store_test!(tcp_syslog_outage_loses_nothing, |db| {
    let seen: Shared = Arc::default();
    let receiver = TcpSyslog::start(0, None, seen.clone()).await;
    let port = receiver.port;
    let batch = 16;
    let sinks = [sink(
        "siem",
        syslog_kind(SyslogTransport::Tcp, port, SyslogFormat::Json),
        batch,
    )];
    let writer = db.writer("gw-1").await;
    append(&writer, 20, Duration::ZERO).await;
    let export = db.export(&sinks).await;
    wait_for("first 20", || seen.lock().unwrap().messages.len() == 20).await;
    wait_for("caught up", || {
        lag_of(&export, "siem", "gw-1").is_some_and(|l| l.records_behind == 0)
    })
    .await;

    // The receiver goes away; records pile up in the outbox, not in the exporter.
    receiver.stop().await;
    append(&writer, 300, Duration::ZERO).await;
    wait_for("failed retries", || {
        lag_of(&export, "siem", "gw-1")
            .is_some_and(|l| l.consecutive_failures >= 3 && l.records_behind == 300)
    })
    .await;
    let down = lag_of(&export, "siem", "gw-1").unwrap();
    assert_eq!(down.delivered_total, 20);
    assert!(down.last_error.is_some());

    // Back on the same port: everything arrives.
    let receiver = TcpSyslog::start(port, None, seen.clone()).await;
    wait_for("all 320", || {
        let s = seen.lock().unwrap();
        let set: std::collections::BTreeSet<u64> = s.messages.iter().map(|m| seq_of(m)).collect();
        set.len() == 320
    })
    .await;
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.errors, Vec::<String>::new(), "framing violations");
        let seqs: Vec<u64> = s.messages.iter().map(|m| seq_of(m)).collect();
        assert_complete(&seqs, 320);
        assert!(
            s.messages
                .iter()
                .all(|m| m.contains(" gw-test portcullis ")),
            "header fields"
        );
    }
    wait_for("lag 0", || {
        lag_of(&export, "siem", "gw-1")
            .is_some_and(|l| l.records_behind == 0 && l.consecutive_failures == 0)
    })
    .await;
    export.stop().await;
    receiver.stop().await;
});

/// The webhook receiver is down for a while: every request is signed, batches never exceed the
/// configured size, retries back off, and after recovery every record is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_outage_backoff_and_signed_bounded_batches() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    rx.control.down.store(true, Ordering::SeqCst);
    let mut config = sink("hook", webhook_kind(&rx.base), 25);
    config.max_backoff = Duration::from_millis(320);
    let writer = db.writer("gw-1").await;
    append(&writer, 200, Duration::ZERO).await;
    let export = db.export(&[config]).await;

    wait_for("8 failed attempts", || rx.seen().attempts.len() >= 8).await;
    let lag = lag_of(&export, "hook", "gw-1").unwrap();
    assert_eq!(lag.records_behind, 200);
    assert!(
        lag.last_error.as_deref().unwrap_or("").contains("503"),
        "{lag:?}"
    );
    {
        // Backoff: the k-th wait is at least half of min(20 ms * 2^(k-1), 320 ms) (equal
        // jitter). A slow machine only lengthens waits, so these lower bounds are safe.
        {
            let seen = rx.seen();
            for (k, pair) in seen.attempts.windows(2).take(7).enumerate() {
                let nominal = Duration::from_millis((20u64 << k).min(320));
                let gap = pair[1] - pair[0];
                assert!(
                    gap >= nominal / 2,
                    "retry {} came after {gap:?}, nominal {nominal:?}",
                    k + 1
                );
            }
        }

        rx.control.down.store(false, Ordering::SeqCst);
        wait_for("all 200", || {
            let s: std::collections::BTreeSet<u64> = rx.seen().seqs().into_iter().collect();
            s.len() == 200
        })
        .await;
        let seen = rx.seen();
        assert_eq!(
            seen.errors,
            Vec::<String>::new(),
            "signature or shape refused"
        );
        assert!(
            seen.batches.iter().all(|b| !b.is_empty() && b.len() <= 25),
            "batch sizes"
        );
        assert_complete(&seen.seqs(), 200);
        assert_eq!(seen.deliveries.len(), seen.batches.len());
    }
    wait_for("lag 0", || {
        lag_of(&export, "hook", "gw-1")
            .is_some_and(|l| l.records_behind == 0 && l.seconds_behind == 0.0)
    })
    .await;
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_with_the_wrong_secret_is_refused_and_nothing_is_skipped() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    let mut kind = webhook_kind(&rx.base);
    if let SinkKind::Webhook { secret, .. } = &mut kind {
        *secret = Secret::new("a-different-secret-value");
    }
    let writer = db.writer("gw-1").await;
    append(&writer, 5, Duration::ZERO).await;
    let export = db.export(&[sink("hook", kind, 10)]).await;
    wait_for("refusals", || rx.seen().errors.len() >= 2).await;
    assert!(
        rx.seen().errors[0].contains("signature does not match"),
        "{:?}",
        rx.seen().errors
    );
    assert!(rx.seen().batches.is_empty());
    let lag = lag_of(&export, "hook", "gw-1").unwrap();
    assert_eq!((lag.records_behind, lag.delivered_total), (5, 0));
    assert!(lag.last_error.unwrap().contains("401"));
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_token_and_event_batches() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    let good = SinkKind::SplunkHec {
        url: format!("{}/services/collector/event", rx.base),
        token: Secret::new(HEC_TOKEN),
        index: Some("security".into()),
        sourcetype: "portcullis:audit".into(),
        source: "portcullis".into(),
        ca_file: None,
    };
    let mut bad = good.clone();
    if let SinkKind::SplunkHec { token, .. } = &mut bad {
        *token = Secret::new("wrong-token");
    }
    let writer = db.writer("gw-1").await;
    append(&writer, 60, Duration::ZERO).await;
    let export = db
        .export(&[sink("hec", good, 20), sink("hec-bad-token", bad, 20)])
        .await;
    wait_for("60 events", || rx.seen().seqs().len() >= 60).await;
    wait_for("bad token retried", || {
        lag_of(&export, "hec-bad-token", "gw-1").is_some_and(|l| l.consecutive_failures >= 2)
    })
    .await;
    let bad_lag = lag_of(&export, "hec-bad-token", "gw-1").unwrap();
    assert_eq!(
        bad_lag.records_behind, 60,
        "a refused token never skips records"
    );
    assert!(bad_lag.last_error.unwrap().contains("403"));
    {
        let seen = rx.seen();
        assert_complete(&seen.seqs(), 60);
        assert!(seen.batches.iter().all(|b| b.len() <= 20));
        assert!(
            seen.errors.iter().all(|e| e.contains("HEC token")),
            "{:?}",
            seen.errors
        );
    }
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_request_shape_and_headers() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    let kind = SinkKind::OtlpLogs {
        url: format!("{}/v1/logs", rx.base),
        headers: [("x-api-key".to_owned(), Secret::new("otlp-key"))].into(),
        service_name: "portcullis-test".into(),
        ca_file: None,
    };
    let writer = db.writer("gw-1").await;
    append(&writer, 33, Duration::ZERO).await;
    let export = db.export(&[sink("otlp", kind, 10)]).await;
    wait_for("33 log records", || rx.seen().seqs().len() >= 33).await;
    {
        let seen = rx.seen();
        assert_eq!(seen.errors, Vec::<String>::new());
        assert_complete(&seen.seqs(), 33);
    }
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_413_halves_the_batch_until_it_fits() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    rx.control.max_records.store(6, Ordering::SeqCst);
    let writer = db.writer("gw-1").await;
    append(&writer, 40, Duration::ZERO).await;
    let export = db.export(&[sink("hook", webhook_kind(&rx.base), 25)]).await;
    wait_for("all 40", || {
        let s: std::collections::BTreeSet<u64> = rx.seen().seqs().into_iter().collect();
        s.len() == 40
    })
    .await;
    {
        let seen = rx.seen();
        assert!(
            seen.batches.iter().all(|b| b.len() <= 6),
            "{:?}",
            seen.batches
        );
        assert_complete(&seen.seqs(), 40);
    }
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_syslog_one_datagram_per_record_with_cef() {
    let db = Db::sqlite().await;
    let rx = UdpSyslog::start().await;
    let writer = db.writer("gw-1").await;
    append(&writer, 10, Duration::ZERO).await;
    let export = db
        .export(&[sink(
            "udp",
            syslog_kind(SyslogTransport::Udp, rx.port, SyslogFormat::Cef),
            5,
        )])
        .await;
    wait_for("10 datagrams", || {
        rx.seen.lock().unwrap().messages.len() >= 10
    })
    .await;
    {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.errors, Vec::<String>::new());
        let seqs: Vec<u64> = seen.messages.iter().map(|m| seq_of(m)).collect();
        assert_complete(&seqs, 10);
        assert!(
            seen.messages
                .iter()
                .all(|m| m.contains("] CEF:0|Portcullis|Portcullis Gateway|")
                    && m.contains(" suser=agent-1 ")),
            "{:?}",
            seen.messages.first()
        );
    }
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_syslog_trusts_only_its_ca_file() {
    let db = Db::sqlite().await;
    let seen: Shared = Arc::default();
    let rx = TcpSyslog::start(0, Some(support::syslog::test_acceptor()), seen.clone()).await;
    let tls = |ca: &str, host: &str| SinkKind::Syslog {
        transport: SyslogTransport::Tls,
        host: host.into(),
        port: rx.port,
        format: SyslogFormat::Json,
        facility: 4,
        app_name: "portcullis".into(),
        hostname: None,
        ca_file: Some(data(ca)),
    };
    let writer = db.writer("gw-1").await;
    append(&writer, 25, Duration::ZERO).await;
    let export = db
        .export(&[
            sink("tls", tls("ca.pem", "localhost"), 10),
            sink("tls-untrusted", tls("other-ca.pem", "127.0.0.1"), 10),
        ])
        .await;
    wait_for("25 over TLS", || seen.lock().unwrap().messages.len() >= 25).await;
    wait_for("untrusted CA refused", || {
        lag_of(&export, "tls-untrusted", "gw-1").is_some_and(|l| l.consecutive_failures >= 2)
    })
    .await;
    let untrusted = lag_of(&export, "tls-untrusted", "gw-1").unwrap();
    assert_eq!(untrusted.delivered_total, 0);
    assert!(untrusted.last_error.unwrap().contains("TLS handshake"));
    {
        let s = seen.lock().unwrap();
        let seqs: Vec<u64> = s.messages.iter().map(|m| seq_of(m)).collect();
        assert_complete(&seqs, 25);
        assert_eq!(seqs.len(), 25, "only the trusted sink got through");
        // auth (4) * 8 + informational (6) = 38.
        assert!(s.messages.iter().all(|m| m.starts_with("<38>1 ")));
    }
    export.stop().await;
    rx.stop().await;
}

/// Records written a minute ago to a receiver that is down: the lag report says how many and
/// how old; once delivered it reads zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reports_records_and_seconds_behind() {
    let db = Db::sqlite().await;
    let rx = HttpReceiver::start().await;
    rx.control.down.store(true, Ordering::SeqCst);
    let writer = db.writer("gw-1").await;
    let export = db.export(&[sink("hook", webhook_kind(&rx.base), 50)]).await;
    // A sink that has seen no chain yet is still listed.
    let idle = export.lag();
    assert_eq!(idle.len(), 1);
    assert_eq!((idle[0].sink.as_str(), idle[0].kind), ("hook", "webhook"));

    append(&writer, 12, Duration::from_secs(60)).await;
    wait_for("lag seen", || {
        lag_of(&export, "hook", "gw-1")
            .is_some_and(|l| l.records_behind == 12 && l.failures_total > 0)
    })
    .await;
    let lag = lag_of(&export, "hook", "gw-1").unwrap();
    assert!(lag.seconds_behind >= 60.0, "{lag:?}");
    assert!(lag.active);

    rx.control.down.store(false, Ordering::SeqCst);
    wait_for("lag 0", || {
        lag_of(&export, "hook", "gw-1")
            .is_some_and(|l| l.records_behind == 0 && l.seconds_behind == 0.0)
    })
    .await;
    assert_eq!(lag_of(&export, "hook", "gw-1").unwrap().delivered_total, 12);
    export.stop().await;
}

store_test!(two_exporters_share_a_chain_without_duplicates, |db| {
    let path = db.path("shared.jsonl");
    let sinks = [sink("file", file_kind(path.clone()), 5)];
    let a = db.export_as(&sinks, Some("replica-a")).await;
    let b = db.export_as(&sinks, Some("replica-b")).await;
    let writer = db.writer("gw-1").await;
    append(&writer, 40, Duration::ZERO).await;
    wait_for("40 lines", || file_seqs(&path).len() >= 40).await;
    wait_for("both see it caught up", || {
        [&a, &b]
            .iter()
            .all(|h| lag_of(h, "file", "gw-1").is_some_and(|l| l.records_behind == 0))
    })
    .await;
    // One lease holder at a time: each record once, in order.
    assert_eq!(file_seqs(&path), (1..=40).collect::<Vec<_>>());
    let active: Vec<bool> = [&a, &b]
        .iter()
        .map(|h| lag_of(h, "file", "gw-1").unwrap().active)
        .collect();
    assert_eq!(active.iter().filter(|x| **x).count(), 1, "{active:?}");
    a.stop().await;
    b.stop().await;
});

store_test!(several_chains_and_start_latest, |db| {
    let all = db.path("all.jsonl");
    let new_only = db.path("new.jsonl");
    let w1 = db.writer("gw-1").await;
    let w2 = db.writer("gw-2").await;
    append(&w1, 10, Duration::ZERO).await;
    append(&w2, 7, Duration::ZERO).await;
    let mut latest = sink("new", file_kind(new_only.clone()), 100);
    latest.start = StartAt::Latest;
    let export = db
        .export(&[sink("all", file_kind(all.clone()), 100), latest])
        .await;
    wait_for("17 lines", || file_seqs(&all).len() >= 17).await;
    wait_for("latest cursor placed", || {
        ["gw-1", "gw-2"]
            .iter()
            .all(|c| lag_of(&export, "new", c).is_some_and(|l| l.records_behind == 0))
    })
    .await;
    append(&w2, 3, Duration::ZERO).await;
    wait_for("3 new", || file_seqs(&new_only).len() >= 3).await;
    wait_for("20 lines", || file_seqs(&all).len() >= 20).await;
    assert_eq!(file_seqs(&new_only), vec![8, 9, 10]);
    let chains: std::collections::BTreeSet<String> = std::fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["chain_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(chains.len(), 2);
    export.stop().await;
});

/// A row damaged in the database (as an attacker with SQL access would) is exported as
/// `unreadable` with its seq, not skipped and not a stuck sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_is_exported_as_unreadable_not_skipped() {
    let db = Db::sqlite().await;
    let path = db.path("audit.jsonl");
    let writer = db.writer("gw-1").await;
    append(&writer, 5, Duration::ZERO).await;
    // A read through the store waits for the writer to copy its append log into SQLite, where
    // the row is damaged.
    assert_eq!(db.audit.read_page("gw-1", 0, 10).await.unwrap().len(), 5);
    let portcullis_audit::store::Backend::Sqlite(pool) = db.audit.backend().clone() else {
        unreachable!()
    };
    sqlx::query("UPDATE audit_records SET kind = 'bogus' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let export = db
        .export(&[sink("file", file_kind(path.clone()), 10)])
        .await;
    wait_for("5 lines", || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            >= 5
    })
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[2]["unreadable"]["seq"], 3);
    assert!(
        lines[2]["unreadable"]["reason"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
    assert_eq!(lines[3]["seq"], 4);
    export.stop().await;
}
