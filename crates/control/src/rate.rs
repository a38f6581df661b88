//! Rate limits and quotas (`limits.rate`): token buckets per agent, per agent and tool, per task
//! token, or shared, in memory on each replica.
//!
//! Every limit whose `agents` and `tools` globs match a call applies; the call is admitted only
//! if every one of them has a token left, and then takes one from each (all under one lock, so
//! a refused call costs nothing). A refusal says which limit refused and when a token will be
//! back. Buckets are created on first use and capped in number ([`MAX_BUCKETS`]): when full,
//! buckets that have refilled completely (which a fresh bucket would equal) are dropped; if none
//! can be, the call is refused rather than memory grown (fail closed).
//!
//! With `limits.rate.redis` the buckets are kept in Redis instead, shared by every replica
//! ([`crate::rate_shared`]): the same arithmetic, done by a script on the server; a call Redis
//! cannot answer is refused ([`RateDenied::Unavailable`]). Without it, nothing here waits.
//!
//! Counters per limit (admitted, refused) are kept for metrics: [`RateLimiter::counters`]
//! (this replica's decisions, in both modes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_config::{RateBucket, RateConfig, RateLimit, RedisRate};
use portcullis_policy::glob::Glob;

use crate::rate_shared::{SharedBucket, SharedBuckets, SharedVerdict};

/// Most buckets kept at once.
pub const MAX_BUCKETS: usize = 100_000;

/// A call as rate limits see it.
#[derive(Debug, Clone, Copy)]
pub struct RateKey<'a> {
    pub agent: &'a str,
    /// The aggregated `{server}__{tool}` of a `tools/call`.
    pub tool: Option<&'a str>,
    /// The task token id, for `bucket: token`.
    pub token: Option<&'a str>,
}

/// A refused call: which limit, and how long until it would be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    pub limit: String,
    pub retry_after: Duration,
}

/// Why [`RateLimiter::take`] did not admit a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateDenied {
    /// A limit refuses it for now.
    Limited(RateRefusal),
    /// The shared buckets (Redis) could not be asked: refused, fail closed.
    Unavailable(String),
}

/// One limit's counters, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCounter {
    /// The limit's `id` (bounded: one per configured limit).
    pub limit: String,
    pub admitted: u64,
    pub refused: u64,
}

struct Compiled {
    config: RateLimit,
    agents: Vec<Glob>,
    tools: Vec<Glob>,
    /// Tokens added per second.
    rate: f64,
    admitted: AtomicU64,
    refused: AtomicU64,
}

impl Compiled {
    fn applies(&self, key: &RateKey<'_>) -> bool {
        (self.agents.is_empty() || self.agents.iter().any(|g| g.matches(key.agent)))
            && (self.tools.is_empty()
                || key
                    .tool
                    .is_some_and(|tool| self.tools.iter().any(|g| g.matches(tool))))
    }

    /// The bucket name for this call under this limit.
    fn bucket_name(&self, key: &RateKey<'_>) -> String {
        match self.config.bucket {
            RateBucket::Global => String::new(),
            RateBucket::Agent => key.agent.to_owned(),
            RateBucket::Tool => format!("{}\u{0}{}", key.agent, key.tool.unwrap_or("")),
            RateBucket::Token => match key.token {
                Some(token) => format!("token\u{0}{token}"),
                None => format!("agent\u{0}{}", key.agent),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The limits of one configuration and their buckets.
pub struct RateLimiter {
    limits: Vec<Compiled>,
    /// (limit index, bucket name) → bucket.
    buckets: Mutex<HashMap<(usize, String), Bucket>>,
    /// Where the buckets live when they are shared: `Some` with `limits.rate.redis`.
    shared: Option<(RedisRate, SharedBuckets)>,
    /// Set when `limits.rate.redis` could not be used: every limited call is refused.
    broken: Option<String>,
}

impl RateLimiter {
    pub fn new(limits: &[RateLimit]) -> RateLimiter {
        RateLimiter {
            limits: limits
                .iter()
                .map(|limit| Compiled {
                    agents: limit.agents.iter().map(|g| Glob::new(g)).collect(),
                    tools: limit.tools.iter().map(|g| Glob::new(g)).collect(),
                    rate: limit.calls as f64 / limit.per.as_secs_f64(),
                    config: limit.clone(),
                    admitted: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                })
                .collect(),
            buckets: Mutex::new(HashMap::new()),
            shared: None,
            broken: None,
        }
    }

    /// The limiter of `limits.rate`: buckets in memory, or in Redis when it names one. A Redis
    /// URL the client library rejects leaves every call refused (fail closed), with the reason.
    pub fn from_config(config: &RateConfig) -> RateLimiter {
        let mut limiter = RateLimiter::new(&config.limits);
        if let Some(redis) = &config.redis {
            match SharedBuckets::new(redis) {
                Ok(buckets) => limiter.shared = Some((redis.clone(), buckets)),
                Err(error) => {
                    tracing::error!(%error, "limits.rate.redis: cannot use this Redis URL; rate-limited calls will be refused");
                    limiter.broken = Some(error.to_string());
                }
            }
        }
        limiter
    }

    /// Is this the limiter of `config` (same limits, same store)?
    pub fn is_for(&self, config: &RateConfig) -> bool {
        self.limits().eq(config.limits.iter())
            && self.shared.as_ref().map(|(redis, _)| redis) == config.redis.as_ref()
            && self.broken.is_none()
    }

    /// The limits this limiter enforces.
    pub fn limits(&self) -> impl Iterator<Item = &RateLimit> {
        self.limits.iter().map(|c| &c.config)
    }

    /// Admits one call now, taking a token from each bucket it falls under, or says why not.
    /// In memory this is [`RateLimiter::check`]; with shared buckets, one Redis round trip.
    pub async fn take(&self, key: &RateKey<'_>) -> Result<(), RateDenied> {
        if let Some(why) = &self.broken {
            return self.unavailable(key, why.clone());
        }
        let Some((_, shared)) = &self.shared else {
            return self.check(key, Instant::now()).map_err(RateDenied::Limited);
        };
        let applicable: Vec<usize> = self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, limit)| limit.applies(key))
            .map(|(i, _)| i)
            .collect();
        if applicable.is_empty() {
            return Ok(());
        }
        let buckets: Vec<SharedBucket> = applicable
            .iter()
            .map(|&i| {
                let limit = &self.limits[i];
                SharedBucket {
                    key: shared.key(&limit.config.id, &limit.bucket_name(key)),
                    per_second: limit.rate,
                    burst: limit.config.burst,
                }
            })
            .collect();
        match shared.take(&buckets).await {
            Ok(SharedVerdict::Admitted) => {
                for i in applicable {
                    self.limits[i].admitted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(SharedVerdict::Refused { index, wait_ms }) => {
                let limit = &self.limits[applicable[index]];
                limit.refused.fetch_add(1, Ordering::Relaxed);
                Err(RateDenied::Limited(RateRefusal {
                    limit: limit.config.id.clone(),
                    retry_after: Duration::from_millis(wait_ms.max(1)),
                }))
            }
            Err(why) => {
                tracing::warn!(error = %why, "rate limits: Redis did not answer; refusing the call");
                self.unavailable(key, why)
            }
        }
    }

    /// Refuses a call that some limit applies to because the shared buckets cannot be asked;
    /// a call no limit applies to goes on.
    fn unavailable(&self, key: &RateKey<'_>, why: String) -> Result<(), RateDenied> {
        match self.limits.iter().find(|limit| limit.applies(key)) {
            None => Ok(()),
            Some(limit) => {
                limit.refused.fetch_add(1, Ordering::Relaxed);
                Err(RateDenied::Unavailable(format!(
                    "rate limit {} cannot be checked: the shared rate-limit store (Redis) is unavailable ({why})",
                    limit.config.id
                )))
            }
        }
    }

    /// Admits one call at `now`, or says which limit refuses it and for how long.
    pub fn check(&self, key: &RateKey<'_>, now: Instant) -> Result<(), RateRefusal> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let applicable: Vec<(usize, String)> = self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, limit)| limit.applies(key))
            .map(|(i, limit)| (i, limit.bucket_name(key)))
            .collect();
        if applicable.is_empty() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("poisoned");
        if buckets.len() + applicable.len() > MAX_BUCKETS {
            self.forget_full(&mut buckets, now);
            if buckets.len() + applicable.len() > MAX_BUCKETS {
                let (index, _) = &applicable[0];
                let limit = &self.limits[*index];
                limit.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(limit = %limit.config.id, "rate limiter is tracking too many buckets; refusing");
                return Err(RateRefusal {
                    limit: limit.config.id.clone(),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        // First refill and look, then take: a refused call takes nothing from any bucket.
        let mut refusal: Option<(usize, Duration)> = None;
        for (index, name) in &applicable {
            let limit = &self.limits[*index];
            let burst = limit.config.burst as f64;
            let bucket = buckets.entry((*index, name.clone())).or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * limit.rate).min(burst);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / limit.rate);
                if refusal.is_none_or(|(_, longest)| wait > longest) {
                    refusal = Some((*index, wait));
                }
            }
        }
        if let Some((index, wait)) = refusal {
            let limit = &self.limits[index];
            limit.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RateRefusal {
                limit: limit.config.id.clone(),
                // Round up to whole milliseconds, at least one.
                retry_after: Duration::from_millis(
                    u64::try_from(wait.as_nanos().div_ceil(1_000_000))
                        .unwrap_or(u64::MAX)
                        .max(1),
                ),
            });
        }
        for (index, name) in applicable {
            if let Some(bucket) = buckets.get_mut(&(index, name)) {
                bucket.tokens -= 1.0;
            }
            self.limits[index].admitted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drops buckets that have refilled completely.
    fn forget_full(&self, buckets: &mut HashMap<(usize, String), Bucket>, now: Instant) {
        buckets.retain(|(index, _), bucket| {
            let limit = &self.limits[*index];
            let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
            bucket.tokens + elapsed * limit.rate < limit.config.burst as f64
        });
    }

    /// Admitted and refused calls per limit, in config order.
    pub fn counters(&self) -> Vec<RateCounter> {
        self.limits
            .iter()
            .map(|limit| RateCounter {
                limit: limit.config.id.clone(),
                admitted: limit.admitted.load(Ordering::Relaxed),
                refused: limit.refused.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(
        id: &str,
        agents: &[&str],
        tools: &[&str],
        calls: u64,
        per: u64,
        burst: u64,
        bucket: RateBucket,
    ) -> RateLimit {
        RateLimit {
            id: id.into(),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            tools: tools.iter().map(|s| s.to_string()).collect(),
            calls,
            per: Duration::from_secs(per),
            burst,
            bucket,
        }
    }

    fn key<'a>(agent: &'a str, tool: Option<&'a str>) -> RateKey<'a> {
        RateKey {
            agent,
            tool,
            token: None,
        }
    }

    #[test]
    fn bucket_admits_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::new(&[limit("l", &[], &[], 2, 1, 3, RateBucket::Agent)]);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(&key("a", None), t0), Ok(()));
        }
        let refusal = limiter.check(&key("a", None), t0).unwrap_err();
        assert_eq!(refusal.limit, "l");
        assert_eq!(refusal.retry_after, Duration::from_millis(500));
        // Another agent has its own bucket.
        assert_eq!(limiter.check(&key("b", None), t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check(&key("a", None), t1), Ok(()));
        assert!(limiter.check(&key("a", None), t1).is_err());
        assert_eq!(
            limiter.counters(),
            vec![RateCounter {
                limit: "l".into(),
                admitted: 5,
                refused: 2
            }]
        );
    }

    #[test]
    fn limits_apply_by_agent_and_tool_globs() {
        let limiter = RateLimiter::new(&[limit(
            "billing",
            &["bot-*"],
            &["billing__*"],
            1,
            60,
            1,
            RateBucket::Tool,
        )]);
        let t = Instant::now();
        assert!(
            limiter
                .check(&key("bot-1", Some("billing__refund")), t)
                .is_ok()
        );
        assert!(
            limiter
                .check(&key("bot-1", Some("billing__refund")), t)
                .is_err()
        );
        // Another tool of the same agent is a separate bucket under `bucket: tool`.
        assert!(
            limiter
                .check(&key("bot-1", Some("billing__charge")), t)
                .is_ok()
        );
        // Not matched: another agent, another tool, or no tool at all.
        for _ in 0..3 {
            assert!(
                limiter
                    .check(&key("alice", Some("billing__refund")), t)
                    .is_ok()
            );
            assert!(limiter.check(&key("bot-1", Some("time__now")), t).is_ok());
            assert!(limiter.check(&key("bot-1", None), t).is_ok());
        }
    }

    #[test]
    fn a_refused_call_takes_nothing_from_other_limits() {
        let limiter = RateLimiter::new(&[
            limit("wide", &[], &[], 10, 1, 10, RateBucket::Agent),
            limit("narrow", &[], &[], 1, 60, 1, RateBucket::Global),
        ]);
        let t = Instant::now();
        assert!(limiter.check(&key("a", None), t).is_ok());
        for _ in 0..20 {
            assert_eq!(
                limiter.check(&key("a", None), t).unwrap_err().limit,
                "narrow"
            );
        }
        let counters = limiter.counters();
        assert_eq!((counters[0].admitted, counters[0].refused), (1, 0));
        assert_eq!((counters[1].admitted, counters[1].refused), (1, 20));
    }

    #[test]
    fn token_buckets_are_per_task_token() {
        let limiter = RateLimiter::new(&[limit("t", &[], &[], 1, 60, 1, RateBucket::Token)]);
        let t = Instant::now();
        let with = |token| RateKey {
            agent: "a",
            tool: None,
            token,
        };
        assert!(limiter.check(&with(Some("tt_1")), t).is_ok());
        assert!(limiter.check(&with(Some("tt_1")), t).is_err());
        assert!(limiter.check(&with(Some("tt_2")), t).is_ok());
        assert!(limiter.check(&with(None), t).is_ok());
        assert!(limiter.check(&with(None), t).is_err());
    }
}
