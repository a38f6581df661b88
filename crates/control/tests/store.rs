//! Kill switches and task tokens against the real stores: every test runs on a fresh SQLite
//! file and again on a fresh schema of the real PostgreSQL (`portcullis_store::testing`).

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{RateBucket, RateConfig, RateLimit};
use portcullis_control::kill::{Scope, Target, wait_for_kill};
use portcullis_control::task::{IssueRequest, ScopeError, TokenRefusal, wait_for_revocation};
use portcullis_control::{CallFacts, Control, Refusal};
use portcullis_store::{Store, on_pool};

/// Runs `$body` (an async fn taking two stores on the same database, as two replicas would
/// have) on SQLite and on PostgreSQL.
macro_rules! store_test {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("control.db").display());
                let a = portcullis_store::Store::connect(&url).await.unwrap();
                let b = portcullis_store::Store::connect(&url).await.unwrap();
                super::$body(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let a = portcullis_store::testing::postgres("control_test").await;
                // The second replica shares the first one's schema.
                let schema: String = portcullis_store::on_pool!(a.backend(), pool => {
                    sqlx::query_scalar("SELECT current_schema()::text").fetch_one(pool).await.unwrap()
                });
                let b = portcullis_store::Store::connect_in_schema(
                    &portcullis_store::testing::postgres_url(),
                    Some(&schema),
                )
                .await
                .unwrap();
                super::$body(a, b).await;
            }
        }
    };
}

fn facts<'a>(agent: &'a str, server: &'a str, tool: Option<&'a str>) -> CallFacts<'a> {
    CallFacts {
        agent,
        server,
        tool,
        task: None,
    }
}

fn issue(
    agent: &str,
    servers: &[&str],
    tools: &[&str],
    ttl: u64,
    max: Option<u64>,
) -> IssueRequest {
    IssueRequest {
        agent: agent.into(),
        servers: servers.iter().map(|s| s.to_string()).collect(),
        tools: tools.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: ttl,
        max_calls: max,
        created_by: "test".into(),
        ..IssueRequest::default()
    }
}

store_test!(
    kill_survives_restart_and_reaches_other_replicas,
    kill_persistence
);
async fn kill_persistence(a: Store, b: Store) {
    let first = Control::open(a.clone(), &RateConfig::default())
        .await
        .unwrap();
    let other = Control::open(b, &RateConfig::default()).await.unwrap();
    first
        .kills
        .kill(
            Target::new(Scope::Server, Some("fx")).unwrap(),
            "incident 42",
            "ops",
        )
        .await
        .unwrap();
    assert!(matches!(
        first.admit(&facts("alice", "fx", None)).await,
        Err(Refusal::Killed(switch)) if switch.reason == "incident 42"
    ));
    // The other replica sees it after its next refresh, not before.
    assert!(other.admit(&facts("alice", "fx", None)).await.is_ok());
    other.refresh().await.unwrap();
    assert!(other.admit(&facts("alice", "fx", None)).await.is_err());
    assert!(other.admit(&facts("alice", "demo", None)).await.is_ok());

    // A restart (a new Control on the same database) loads it.
    drop(first);
    let restarted = Control::open(a, &RateConfig::default()).await.unwrap();
    assert_eq!(restarted.kills.snapshot().switches().len(), 1);
    assert!(
        restarted
            .admit(&facts("bob", "fx", Some("fx__echo")))
            .await
            .is_err()
    );

    // Revive removes it everywhere; reviving again says there was nothing.
    let target = Target::new(Scope::Server, Some("fx")).unwrap();
    assert!(restarted.kills.revive(&target).await.unwrap().is_some());
    assert!(restarted.kills.revive(&target).await.unwrap().is_none());
    assert!(restarted.admit(&facts("bob", "fx", None)).await.is_ok());
    other.refresh().await.unwrap();
    assert!(other.admit(&facts("alice", "fx", None)).await.is_ok());
}

store_test!(kill_wakes_calls_in_flight, kill_wakes);
async fn kill_wakes(a: Store, _b: Store) {
    let control = Arc::new(Control::open(a, &RateConfig::default()).await.unwrap());
    let mut sets = control.kills.subscribe();
    let waiting = tokio::spawn(async move {
        wait_for_kill(&mut sets, "alice", Some("fx"), Some("fx__slow")).await
    });
    // An unrelated switch does not end it.
    control
        .kills
        .kill(Target::new(Scope::Agent, Some("bob")).unwrap(), "", "ops")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    control
        .kills
        .kill(
            Target::new(Scope::Tool, Some("fx__sl*")).unwrap(),
            "runaway",
            "ops",
        )
        .await
        .unwrap();
    let switch = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the kill wakes the waiting call")
        .unwrap();
    assert_eq!(switch.target.to_string(), "tool:fx__sl*");
}

store_test!(lockdown_stops_every_agent, lockdown);
async fn lockdown(a: Store, _b: Store) {
    let control = Control::open(a, &RateConfig::default()).await.unwrap();
    control
        .kills
        .kill(Target::new(Scope::All, None).unwrap(), "breach", "ops")
        .await
        .unwrap();
    for agent in ["alice", "bob", "anyone"] {
        assert!(matches!(
            control.admit(&facts(agent, "fx", None)).await,
            Err(Refusal::Killed(s)) if s.target.scope == Scope::All
        ));
    }
    assert_eq!(control.counters().killed, 3);
}

store_test!(task_token_lifecycle, token_lifecycle);
async fn token_lifecycle(a: Store, b: Store) {
    let control = Control::open(a.clone(), &RateConfig::default())
        .await
        .unwrap();
    let other = Control::open(b, &RateConfig::default()).await.unwrap();
    let (secret, scope) = control
        .tokens
        .issue(issue("bot", &["fx"], &["fx__echo"], 600, None))
        .await
        .unwrap();
    assert!(secret.starts_with("pct_") && secret.len() == 68, "{secret}");
    assert!(!scope.id.is_empty());
    // Only the digest is stored.
    let stored: Vec<String> = on_pool!(a.backend(), pool => {
        sqlx::query_scalar("SELECT token_sha256 FROM control_task_tokens").fetch_all(pool).await.unwrap()
    });
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], secret);
    assert!(!stored[0].contains(&secret[4..]));

    let found = control
        .tokens
        .authenticate(secret.as_bytes())
        .await
        .unwrap();
    assert_eq!(found.agent, "bot");
    // Another replica that has never seen it looks it up in the store.
    let there = other.tokens.authenticate(secret.as_bytes()).await.unwrap();
    assert_eq!(there.id, scope.id);
    assert_eq!(
        control.tokens.authenticate(b"pct_0000").await.unwrap_err(),
        TokenRefusal::Unknown
    );

    // Scope before policy.
    let call = |server, tool| CallFacts {
        agent: "bot",
        server,
        tool,
        task: Some(&found),
    };
    assert!(control.admit(&call("fx", Some("fx__echo"))).await.is_ok());
    assert!(matches!(
        control.admit(&call("fx", Some("fx__delete"))).await,
        Err(Refusal::OutOfScope(ScopeError::Tool { .. }))
    ));
    assert!(matches!(
        control.admit(&call("demo", Some("demo__echo"))).await,
        Err(Refusal::OutOfScope(ScopeError::Server { .. }))
    ));

    // Revocation: at once here, at the next refresh on the other replica; calls and streams
    // in flight on the token (waiting on the revocation watch) wake on both.
    let waiter = |control: &Control, scope: Arc<portcullis_control::task::TaskScope>| {
        let mut revocations = control.tokens.subscribe_revocations();
        tokio::spawn(async move { wait_for_revocation(&mut revocations, &scope).await })
    };
    let here_waits = waiter(&control, found.clone());
    let there_waits = waiter(&other, there.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!here_waits.is_finished() && !there_waits.is_finished());
    control.tokens.revoke(&scope.id).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), here_waits)
        .await
        .expect("a waiter on this replica wakes at the revocation")
        .unwrap();
    assert!(
        !there_waits.is_finished(),
        "the other replica learns at its refresh"
    );
    assert_eq!(
        control
            .tokens
            .authenticate(secret.as_bytes())
            .await
            .unwrap_err(),
        TokenRefusal::Revoked
    );
    other.refresh().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), there_waits)
        .await
        .expect("a waiter on the other replica wakes at its refresh")
        .unwrap();
    assert_eq!(
        other
            .tokens
            .authenticate(secret.as_bytes())
            .await
            .unwrap_err(),
        TokenRefusal::Revoked
    );
    assert!(control.tokens.revoke("tt_nope").await.unwrap().is_none());
    let listed = control.tokens.list(Some("bot")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_revoked());
    assert!(control.tokens.list(Some("alice")).await.unwrap().is_empty());
}

store_test!(expired_task_token_is_refused, token_expiry);
async fn token_expiry(a: Store, _b: Store) {
    let control = Control::open(a, &RateConfig::default()).await.unwrap();
    let (secret, _) = control
        .tokens
        .issue(issue("bot", &[], &[], 1, None))
        .await
        .unwrap();
    assert!(control.tokens.authenticate(secret.as_bytes()).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        control
            .tokens
            .authenticate(secret.as_bytes())
            .await
            .unwrap_err(),
        TokenRefusal::Expired
    );
    assert!(
        control
            .tokens
            .issue(issue("bot", &[], &[], 0, None))
            .await
            .is_err()
    );
    assert!(
        control
            .tokens
            .issue(issue("bot", &[], &[], 60, Some(0)))
            .await
            .is_err()
    );
}

store_test!(
    max_calls_is_exact_across_concurrent_calls_and_replicas,
    max_calls_exact
);
async fn max_calls_exact(a: Store, b: Store) {
    let first = Arc::new(Control::open(a, &RateConfig::default()).await.unwrap());
    let second = Arc::new(Control::open(b, &RateConfig::default()).await.unwrap());
    let (secret, _) = first
        .tokens
        .issue(issue("bot", &[], &[], 600, Some(20)))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let control = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            let scope = control
                .tokens
                .authenticate(secret.as_bytes())
                .await
                .unwrap();
            control
                .admit(&CallFacts {
                    agent: "bot",
                    server: "fx",
                    tool: None,
                    task: Some(&scope),
                })
                .await
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(Refusal::OutOfScope(ScopeError::Exhausted { max: 20, .. })) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(admitted, 20);
    let listed = first.tokens.list(None).await.unwrap();
    assert_eq!(listed[0].calls_used(), 20);
}

#[tokio::test]
async fn rate_limits_follow_config_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let store = portcullis_store::testing::sqlite(dir.path()).await;
    let limit = RateLimit {
        id: "one-per-minute".into(),
        agents: vec![],
        tools: vec![],
        calls: 1,
        per: Duration::from_secs(60),
        burst: 1,
        bucket: RateBucket::Agent,
    };
    let rates = RateConfig {
        limits: vec![limit],
        redis: None,
    };
    let control = Control::open(store, &rates).await.unwrap();
    assert!(control.admit(&facts("a", "fx", None)).await.is_ok());
    let Err(Refusal::RateLimited(refusal)) = control.admit(&facts("a", "fx", None)).await else {
        panic!("second call must be rate limited");
    };
    assert_eq!(refusal.limit, "one-per-minute");
    assert!(refusal.retry_after > Duration::from_secs(50));
    // The same limits again keep the buckets; no limits lift them.
    control.configure(&rates);
    assert!(control.admit(&facts("a", "fx", None)).await.is_err());
    control.configure(&RateConfig::default());
    assert!(control.admit(&facts("a", "fx", None)).await.is_ok());
}
