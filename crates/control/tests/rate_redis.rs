//! Rate limits shared through the real Redis at 127.0.0.1:6379 (`limits.rate.redis`): two
//! limiters stand for two replicas. Each test writes under its own key prefix and deletes its
//! keys at the end. Limits refill slowly (per hour), so no test depends on timing.

use std::time::Duration;

use portcullis_config::{RateBucket, RateConfig, RateLimit, RedisRate, Secret};
use portcullis_control::rate::{RateDenied, RateKey, RateLimiter};

const REDIS: &str = "redis://127.0.0.1:6379/0";

fn limit(id: &str, tools: &[&str], calls: u64, burst: u64, bucket: RateBucket) -> RateLimit {
    RateLimit {
        id: id.into(),
        agents: vec![],
        tools: tools.iter().map(|t| t.to_string()).collect(),
        calls,
        per: Duration::from_secs(3600),
        burst,
        bucket,
    }
}

/// A key prefix no other test (or run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("portcullis-test:{test}:{}:{nanos}", std::process::id())
}

fn shared(url: &str, prefix: &str, limits: Vec<RateLimit>) -> RateConfig {
    RateConfig {
        limits,
        redis: Some(RedisRate {
            url: Secret::new(url),
            key_prefix: prefix.to_owned(),
            tls: None,
        }),
    }
}

fn key<'a>(agent: &'a str, tool: Option<&'a str>) -> RateKey<'a> {
    RateKey {
        agent,
        tool,
        token: None,
    }
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379")
}

/// The keys under `prefix`, then deletes them.
async fn keys_then_clean(prefix: &str) -> Vec<String> {
    let mut connection = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    keys
}

#[tokio::test]
async fn two_replicas_share_one_bucket_through_redis() {
    let prefix = unique_prefix("share");
    let config = shared(
        REDIS,
        &prefix,
        vec![limit("five", &[], 5, 5, RateBucket::Agent)],
    );
    let first = RateLimiter::from_config(&config);
    let second = RateLimiter::from_config(&config);
    // Alternating replicas, the agent gets five calls in all, not five on each.
    let mut admitted = 0;
    for i in 0..10 {
        let replica = if i % 2 == 0 { &first } else { &second };
        match replica.take(&key("bot", None)).await {
            Ok(()) => admitted += 1,
            Err(RateDenied::Limited(refusal)) => {
                assert_eq!(refusal.limit, "five");
                // One token per 720 s: the wait is most of that.
                assert!(
                    refusal.retry_after > Duration::from_secs(600),
                    "{refusal:?}"
                );
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 5);
    // Another agent has its own bucket, on either replica.
    assert_eq!(second.take(&key("other", None)).await, Ok(()));
    let counted: Vec<(u64, u64)> = [&first, &second]
        .iter()
        .map(|l| (l.counters()[0].admitted, l.counters()[0].refused))
        .collect();
    assert_eq!(counted[0].0 + counted[1].0, 6);
    assert_eq!(counted[0].1 + counted[1].1, 5);
    // In memory (no redis), each replica would have had its own five.
    let local = RateConfig {
        limits: config.limits.clone(),
        redis: None,
    };
    let (a, b) = (
        RateLimiter::from_config(&local),
        RateLimiter::from_config(&local),
    );
    for _ in 0..5 {
        assert_eq!(a.take(&key("bot", None)).await, Ok(()));
        assert_eq!(b.take(&key("bot", None)).await, Ok(()));
    }
    assert_eq!(keys_then_clean(&prefix).await.len(), 2, "bot and other");
}

#[tokio::test]
async fn concurrent_calls_on_two_replicas_never_pass_the_limit() {
    let prefix = unique_prefix("race");
    let config = shared(
        REDIS,
        &prefix,
        vec![limit("global", &[], 7, 7, RateBucket::Global)],
    );
    let first = std::sync::Arc::new(RateLimiter::from_config(&config));
    let second = std::sync::Arc::new(RateLimiter::from_config(&config));
    let mut calls = Vec::new();
    for i in 0..40 {
        let limiter = if i % 2 == 0 { &first } else { &second }.clone();
        let agent = format!("agent-{i}");
        calls.push(tokio::spawn(async move {
            limiter.take(&key(&agent, None)).await
        }));
    }
    let mut admitted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(RateDenied::Limited(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 7, "a global bucket of 7 across both replicas");
    keys_then_clean(&prefix).await;
}

#[tokio::test]
async fn a_call_refused_by_one_shared_limit_takes_nothing_from_the_others() {
    let prefix = unique_prefix("atomic");
    let config = shared(
        REDIS,
        &prefix,
        vec![
            limit("wide", &[], 100, 3, RateBucket::Agent),
            limit("narrow", &["fx__add"], 1, 1, RateBucket::Tool),
        ],
    );
    let limiter = RateLimiter::from_config(&config);
    let other_replica = RateLimiter::from_config(&config);
    assert_eq!(limiter.take(&key("a", Some("fx__add"))).await, Ok(()));
    for _ in 0..5 {
        let Err(RateDenied::Limited(refusal)) =
            other_replica.take(&key("a", Some("fx__add"))).await
        else {
            panic!("narrow must refuse");
        };
        assert_eq!(refusal.limit, "narrow");
    }
    // `wide` lost one token (the admitted call), not six: two more calls of another tool pass,
    // then it refuses.
    assert_eq!(limiter.take(&key("a", Some("fx__echo"))).await, Ok(()));
    assert_eq!(other_replica.take(&key("a", None)).await, Ok(()));
    let Err(RateDenied::Limited(refusal)) = limiter.take(&key("a", None)).await else {
        panic!("wide must refuse its fourth call");
    };
    assert_eq!(refusal.limit, "wide");
    // Every bucket key carries a time to live (a full bucket needs no key).
    let keys = keys_then_clean(&prefix).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("{prefix}:"))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn shared_bucket_keys_expire_and_are_bounded_in_length() {
    let prefix = unique_prefix("ttl");
    let config = shared(
        REDIS,
        &prefix,
        vec![limit("ttl", &[], 2, 2, RateBucket::Agent)],
    );
    let limiter = RateLimiter::from_config(&config);
    let long_agent = "a".repeat(10_000);
    assert_eq!(limiter.take(&key(&long_agent, None)).await, Ok(()));
    let mut connection = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].len() < prefix.len() + 64, "{}", keys[0]);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    // Two tokens per hour with a burst of two: full again within an hour; the key lives that
    // long plus a second's margin (and a millisecond of rounding), no longer.
    assert!(ttl_ms > 3_590_000 && ttl_ms <= 3_601_001, "{ttl_ms}");
    keys_then_clean(&prefix).await;
}

#[tokio::test]
async fn unreachable_redis_refuses_limited_calls_fail_closed_bypass() {
    // Nothing listens on port 1 of the loopback.
    let config = shared(
        "redis://127.0.0.1:1/0",
        &unique_prefix("down"),
        vec![limit("bots", &["fx__*"], 1000, 1000, RateBucket::Agent)],
    );
    let limiter = RateLimiter::from_config(&config);
    for _ in 0..3 {
        let Err(RateDenied::Unavailable(why)) = limiter.take(&key("bot", Some("fx__add"))).await
        else {
            panic!("a limited call must be refused when Redis is unreachable");
        };
        assert!(why.contains("rate limit bots cannot be checked"), "{why}");
    }
    assert_eq!(limiter.counters()[0].refused, 3);
    // A call no limit applies to does not need Redis.
    assert_eq!(limiter.take(&key("bot", None)).await, Ok(()));
}
