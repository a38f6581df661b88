//! The store on SQLite and on the real PostgreSQL, same tests (`both!`).

use portcullis_store::testing;
use serde_json::json;

use super::*;

async fn open_sqlite(dir: &std::path::Path) -> ApprovalStore {
    ApprovalStore::open(testing::sqlite(dir).await)
        .await
        .unwrap()
}

async fn open_postgres() -> ApprovalStore {
    ApprovalStore::open(testing::postgres("approvals_test").await)
        .await
        .unwrap()
}

/// Runs `$body(store)` once on a fresh SQLite file and once on a fresh PostgreSQL schema.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::open_sqlite(dir.path()).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::open_postgres().await).await;
            }
        }
    };
}

fn caller() -> Caller {
    Caller {
        agent: "support-bot".into(),
        user: Some("carol".into()),
        credential_id: "key:0a0b0c".into(),
    }
}

fn new_approval(needed: u8, timeout_ms: i64) -> NewApproval {
    NewApproval {
        caller: caller(),
        server: "billing".into(),
        tool: "billing__refund".into(),
        rule_id: "big-refunds".into(),
        required_role: Role::Approver,
        approvals_needed: needed,
        presentation: Presentation {
            arguments: json!({"amount": 250, "email": "[REDACTED]"}),
            description: Some("Refund a charge".into()),
            annotations: Some(json!({"destructiveHint": true})),
            findings: vec![json!({"pointer": "/email", "category": "email"})],
        },
        timeout_ms,
        replica: "replica-a".into(),
        holder: "holder-1".into(),
    }
}

fn reviewer(name: &str) -> Reviewer {
    Reviewer {
        name: name.into(),
        credential_id: format!("admin:{name}"),
        role: Role::Approver,
        agent: None,
    }
}

const T0: i64 = 1_700_000_000_000;

async fn round_trip(store: ApprovalStore) {
    let created = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    assert!(well_formed_id(&created.id), "{}", created.id);
    assert_eq!(created.deadline_ms, T0 + 60_000);
    let got = store.get(&created.id).await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(store.get(&new_id()).await.unwrap().is_none());
    let other = store
        .create(&new_approval(2, 60_000), T0 + 1)
        .await
        .unwrap();
    store
        .decide(
            &other.id,
            &reviewer("dana"),
            Verdict::Deny,
            Some("no"),
            Channel::Api,
            T0 + 2,
        )
        .await
        .unwrap();
    let pending = store.list(Some(Status::Pending), 50).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| &a.id).collect::<Vec<_>>(),
        [&created.id]
    );
    let all = store.list(None, 50).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, other.id, "newest first");
    assert_eq!(all[0].decisions.len(), 1);
    assert_eq!(all[0].reason.as_deref(), Some("no"));
}
both!(round_trip);

async fn single_approval_wins_once(store: ApprovalStore) {
    let a = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let out = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            Some("ok"),
            Channel::Api,
            T0 + 5,
        )
        .await
        .unwrap();
    assert_eq!(out, Outcome::Final(Status::Approved));
    // A later denial changes nothing.
    let late = store
        .decide(
            &a.id,
            &reviewer("erin"),
            Verdict::Deny,
            Some("too late"),
            Channel::Api,
            T0 + 6,
        )
        .await;
    assert!(
        matches!(
            late,
            Err(DecideFailure::Refused(DecideError::NotPending(
                Status::Approved
            )))
        ),
        "{late:?}"
    );
    let a = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(a.status, Status::Approved);
    assert_eq!(a.decided_ms, Some(T0 + 5));
    assert_eq!(a.decisions.len(), 1);
    assert_eq!(a.decisions[0].reviewer, "dana");
    assert_eq!(a.decisions[0].channel, Channel::Api);
    // Unknown ids are named as such.
    let unknown = store
        .decide(
            &new_id(),
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0,
        )
        .await;
    assert!(matches!(
        unknown,
        Err(DecideFailure::Refused(DecideError::NotFound))
    ));
}
both!(single_approval_wins_once);

async fn two_person_rule(store: ApprovalStore) {
    let a = store.create(&new_approval(2, 60_000), T0).await.unwrap();
    let first = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        Outcome::Recorded {
            approvals: 1,
            needed: 2
        }
    );
    assert_eq!(
        store.status(&a.id).await.unwrap().unwrap().0,
        Status::Pending
    );
    let twice = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Link,
            T0 + 2,
        )
        .await;
    assert!(matches!(
        twice,
        Err(DecideFailure::Refused(DecideError::AlreadyDecided(_)))
    ));
    assert_eq!(
        store.status(&a.id).await.unwrap().unwrap().0,
        Status::Pending
    );
    let second = store
        .decide(
            &a.id,
            &reviewer("erin"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 3,
        )
        .await
        .unwrap();
    assert_eq!(second, Outcome::Final(Status::Approved));
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().approvals(), 2);
}
both!(two_person_rule);

async fn caller_and_viewer_cannot_decide(store: ApprovalStore) {
    let a = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let me = Reviewer {
        name: "ops".into(),
        credential_id: "key:0a0b0c".into(),
        role: Role::Admin,
        agent: None,
    };
    let refused = store
        .decide(&a.id, &me, Verdict::Approve, None, Channel::Api, T0 + 1)
        .await;
    assert!(matches!(
        refused,
        Err(DecideFailure::Refused(DecideError::SelfApproval))
    ));
    let viewer = Reviewer {
        role: Role::Viewer,
        ..reviewer("vic")
    };
    let refused = store
        .decide(&a.id, &viewer, Verdict::Approve, None, Channel::Api, T0 + 1)
        .await;
    assert!(matches!(
        refused,
        Err(DecideFailure::Refused(DecideError::Role { .. }))
    ));
    let a = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(a.status, Status::Pending);
    assert!(a.decisions.is_empty(), "refusals record nothing");
}
both!(caller_and_viewer_cannot_decide);

async fn approve_after_timeout_has_no_effect(store: ApprovalStore) {
    let a = store.create(&new_approval(1, 1_000), T0).await.unwrap();
    // Not yet overdue: expire() leaves it pending.
    assert_eq!(
        store.expire(&a.id, T0 + 999).await.unwrap(),
        Status::Pending
    );
    let late = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 1_000,
        )
        .await;
    assert!(
        matches!(late, Err(DecideFailure::Refused(DecideError::Expired))),
        "{late:?}"
    );
    let a2 = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!(a2.status, Status::Expired);
    assert!(a2.decisions.is_empty());
    let again = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 2_000,
        )
        .await;
    assert!(matches!(
        again,
        Err(DecideFailure::Refused(DecideError::NotPending(
            Status::Expired
        )))
    ));
    // The holder's own expiry agrees.
    let b = store.create(&new_approval(1, 1_000), T0).await.unwrap();
    assert_eq!(
        store.expire(&b.id, T0 + 1_000).await.unwrap(),
        Status::Expired
    );
    // Expiry never overrides a decision that won first.
    let c = store.create(&new_approval(1, 1_000), T0).await.unwrap();
    store
        .decide(
            &c.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 10,
        )
        .await
        .unwrap();
    assert_eq!(
        store.expire(&c.id, T0 + 5_000).await.unwrap(),
        Status::Approved
    );
    // The sweep expires what no holder expired, and nothing else.
    let d = store.create(&new_approval(1, 1_000), T0).await.unwrap();
    let e = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    assert_eq!(
        store.expire_overdue(T0 + 2_000, T0 + 2_000).await.unwrap(),
        1
    );
    assert_eq!(
        store.status(&d.id).await.unwrap().unwrap().0,
        Status::Expired
    );
    assert_eq!(
        store.status(&e.id).await.unwrap().unwrap().0,
        Status::Pending
    );
}
both!(approve_after_timeout_has_no_effect);

async fn abandoned_requests_stay_abandoned(store: ApprovalStore) {
    let a = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    assert_eq!(
        store
            .abandon(&a.id, "client disconnected", T0 + 1)
            .await
            .unwrap(),
        Status::Abandoned
    );
    let late = store
        .decide(
            &a.id,
            &reviewer("dana"),
            Verdict::Approve,
            None,
            Channel::Api,
            T0 + 2,
        )
        .await;
    assert!(matches!(
        late,
        Err(DecideFailure::Refused(DecideError::NotPending(
            Status::Abandoned
        )))
    ));
    assert_eq!(
        store.get(&a.id).await.unwrap().unwrap().reason.as_deref(),
        Some("client disconnected")
    );

    // Restart: the new process of replica-a abandons what its predecessor held, not its own.
    let old = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let mut mine = new_approval(1, 60_000);
    mine.holder = "holder-2".into();
    let mine = store.create(&mine, T0).await.unwrap();
    let mut elsewhere = new_approval(1, 60_000);
    elsewhere.replica = "replica-b".into();
    elsewhere.holder = "holder-9".into();
    let elsewhere = store.create(&elsewhere, T0).await.unwrap();
    assert_eq!(
        store
            .abandon_replica("replica-a", "holder-2", T0 + 5)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.status(&old.id).await.unwrap().unwrap().0,
        Status::Abandoned
    );
    assert_eq!(
        store.status(&mine.id).await.unwrap().unwrap().0,
        Status::Pending
    );
    assert_eq!(
        store.status(&elsewhere.id).await.unwrap().unwrap().0,
        Status::Pending
    );

    // A holder that stops renewing its heartbeat loses its requests to any replica's sweep.
    assert_eq!(store.heartbeat("holder-2", T0 + 30_000).await.unwrap(), 1);
    assert_eq!(
        store.abandon_stale(T0 + 20_000, T0 + 30_000).await.unwrap(),
        1
    );
    assert_eq!(
        store.status(&elsewhere.id).await.unwrap().unwrap().0,
        Status::Abandoned
    );
    assert_eq!(
        store.status(&mine.id).await.unwrap().unwrap().0,
        Status::Pending
    );
}
both!(abandoned_requests_stay_abandoned);

async fn review_links_are_single_use_expiring_and_bound(store: ApprovalStore) {
    let a = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let b = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let nonce = store
        .issue_link(&a.id, Verdict::Approve, T0 + 60_000)
        .await
        .unwrap();
    // Bound to its approval and verdict.
    assert_eq!(
        store
            .redeem_link(&b.id, Verdict::Approve, &nonce, T0 + 1)
            .await
            .unwrap(),
        Err(LinkError::Invalid)
    );
    assert_eq!(
        store
            .redeem_link(&a.id, Verdict::Deny, &nonce, T0 + 1)
            .await
            .unwrap(),
        Err(LinkError::Invalid)
    );
    assert_eq!(
        store
            .redeem_link(&a.id, Verdict::Approve, "garbage", T0 + 1)
            .await
            .unwrap(),
        Err(LinkError::Invalid)
    );
    assert_eq!(
        store
            .redeem_link(&a.id, Verdict::Approve, &nonce, T0 + 1)
            .await
            .unwrap(),
        Ok(())
    );
    // Replay.
    assert_eq!(
        store
            .redeem_link(&a.id, Verdict::Approve, &nonce, T0 + 2)
            .await
            .unwrap(),
        Err(LinkError::Invalid)
    );
    // Expiry.
    let late = store
        .issue_link(&a.id, Verdict::Deny, T0 + 10)
        .await
        .unwrap();
    assert_eq!(
        store
            .redeem_link(&a.id, Verdict::Deny, &late, T0 + 10)
            .await
            .unwrap(),
        Err(LinkError::Invalid)
    );
    // The stored form is not the nonce.
    let stored: Vec<String> = on_pool!(store.store.backend(), pool => {
        sqlx::query_scalar("SELECT digest FROM approval_links").fetch_all(pool).await.unwrap()
    });
    assert!(stored.iter().all(|d| d != &nonce && d.len() == 64));
}
both!(review_links_are_single_use_expiring_and_bound);

async fn concurrent_decisions_transition_exactly_once(store: ApprovalStore) {
    // Eight reviewers approve a two-person request at once: exactly two decisions count.
    let a = store.create(&new_approval(2, 60_000), T0).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let id = a.id.clone();
        tasks.push(tokio::spawn(async move {
            store
                .decide(
                    &id,
                    &reviewer(&format!("r{i}")),
                    Verdict::Approve,
                    None,
                    Channel::Api,
                    T0 + 1,
                )
                .await
        }));
    }
    let mut finals = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Outcome::Final(Status::Approved)) => finals += 1,
            Ok(Outcome::Recorded { .. }) => {}
            Err(DecideFailure::Refused(DecideError::NotPending(Status::Approved))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(finals, 1);
    let a = store.get(&a.id).await.unwrap().unwrap();
    assert_eq!((a.status, a.decisions.len()), (Status::Approved, 2));

    // Approve and deny race on a one-person request: exactly one wins.
    let b = store.create(&new_approval(1, 60_000), T0).await.unwrap();
    let (p, q) = (reviewer("p"), reviewer("q"));
    let (x, y) = tokio::join!(
        store.decide(&b.id, &p, Verdict::Approve, None, Channel::Api, T0 + 1),
        store.decide(&b.id, &q, Verdict::Deny, Some("no"), Channel::Api, T0 + 1),
    );
    assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "{x:?} {y:?}");
    assert_eq!(store.get(&b.id).await.unwrap().unwrap().decisions.len(), 1);
}
both!(concurrent_decisions_transition_exactly_once);
