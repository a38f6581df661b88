//! Portcullis control: who may still call, and how often — kill switches ([`kill`]), task
//! tokens ([`task`]) and rate limits ([`rate`]).
//!
//! This crate knows no HTTP and no JSON-RPC: the gateway asks [`Control::admit`] about each
//! routed call (after route, before policy) and turns a [`Refusal`] into its own error. Kill
//! switches and task tokens are kept in the control-plane store (component `control`, tables
//! `control_*`) and mirrored in memory, so the hot path reads memory only — except that a call
//! on a task token with `max_calls` is counted in the store, the one place that is exact across
//! replicas. [`Control::poll_store`] picks up other replicas' changes about once a second.
//!
//! Rate-limit buckets are in memory, per replica, unless `limits.rate.redis` names a Redis
//! server: then every replica takes from the same buckets there ([`rate_shared`]), and a call
//! Redis cannot answer is refused as [`Refusal::Unavailable`] (fail closed).

pub mod kill;
pub mod rate;
pub mod rate_shared;
pub mod task;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_config::RateConfig;
use portcullis_store::{Migration, Store};

use kill::{KillSwitch, KillSwitches};
use rate::{RateCounter, RateDenied, RateKey, RateLimiter, RateRefusal};
use task::{ConsumeError, ScopeError, TaskScope, TaskTokens};

/// Failures of control operations.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A request that cannot be carried out as asked (bad name, zero ttl, …).
    #[error("{0}")]
    Invalid(String),
    #[error("control store: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
}

/// The schema of the `control` component, append-only.
pub const MIGRATIONS: &[Migration] = &[Migration {
    sqlite: "CREATE TABLE control_kill_switches (
            scope TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL,
            created_by TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (scope, name));
        CREATE TABLE control_task_tokens (
            id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, agent TEXT NOT NULL,
            user_name TEXT, roles TEXT NOT NULL, servers TEXT NOT NULL, tools TEXT NOT NULL,
            expires_at BIGINT NOT NULL, max_calls BIGINT, calls_used BIGINT NOT NULL DEFAULT 0,
            revoked_at BIGINT, created_by TEXT NOT NULL, created_at BIGINT NOT NULL);
        CREATE INDEX control_task_tokens_expires ON control_task_tokens (expires_at);",
    postgres: "CREATE TABLE control_kill_switches (
            scope TEXT NOT NULL, name TEXT NOT NULL, reason TEXT NOT NULL,
            created_by TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (scope, name));
        CREATE TABLE control_task_tokens (
            id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, agent TEXT NOT NULL,
            user_name TEXT, roles TEXT NOT NULL, servers TEXT NOT NULL, tools TEXT NOT NULL,
            expires_at BIGINT NOT NULL, max_calls BIGINT, calls_used BIGINT NOT NULL DEFAULT 0,
            revoked_at BIGINT, created_by TEXT NOT NULL, created_at BIGINT NOT NULL);
        CREATE INDEX control_task_tokens_expires ON control_task_tokens (expires_at);",
}];

/// A routed call as the control checks see it.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    pub agent: &'a str,
    /// The catalog server the call goes to.
    pub server: &'a str,
    /// The aggregated `{server}__{tool}` of a `tools/call`.
    pub tool: Option<&'a str>,
    /// The task token the caller authenticated with, if any.
    pub task: Option<&'a TaskScope>,
}

/// Why a call may not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A kill switch stops it.
    Killed(Arc<KillSwitch>),
    /// Outside the task token's servers or tools, or its calls are used up.
    OutOfScope(ScopeError),
    /// A rate limit refuses it for now.
    RateLimited(RateRefusal),
    /// The store could not record the call (fail closed); a retry may help.
    Unavailable(String),
}

/// Refusal counters for metrics (the rate limits' own are in [`ControlCounters::rate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlCounters {
    /// Calls refused by a kill switch.
    pub killed: u64,
    /// Calls refused for being outside a task token's scope or past its `max_calls`.
    pub out_of_scope: u64,
    /// Per rate limit: admitted and refused.
    pub rate: Vec<RateCounter>,
}

/// The control state of one gateway process.
pub struct Control {
    pub kills: KillSwitches,
    pub tokens: TaskTokens,
    rates: RwLock<Arc<RateLimiter>>,
    killed: AtomicU64,
    out_of_scope: AtomicU64,
}

impl Control {
    /// Migrates the `control` tables of `store` and loads the switches and live tokens.
    pub async fn open(store: Store, rates: &RateConfig) -> Result<Control, ControlError> {
        store.migrate("control", MIGRATIONS).await?;
        Ok(Control {
            kills: KillSwitches::load(store.clone()).await?,
            tokens: TaskTokens::load(store).await?,
            rates: RwLock::new(Arc::new(RateLimiter::from_config(rates))),
            killed: AtomicU64::new(0),
            out_of_scope: AtomicU64::new(0),
        })
    }

    /// Applies the rate limits of a new configuration. Unchanged limits keep their buckets and
    /// counters (and their Redis connection, when shared).
    pub fn configure(&self, rates: &RateConfig) {
        let mut current = self.rates.write().expect("poisoned");
        if !current.is_for(rates) {
            *current = Arc::new(RateLimiter::from_config(rates));
        }
    }

    /// Decides a routed call, in this order: kill switches, the task token's scope, rate
    /// limits, then the task token's call count (so that a call refused earlier does not use
    /// one of the token's calls).
    pub async fn admit(&self, call: &CallFacts<'_>) -> Result<(), Refusal> {
        if let Some(switch) =
            self.kills
                .snapshot()
                .matching(call.agent, Some(call.server), call.tool)
        {
            self.killed.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Killed(switch.clone()));
        }
        if let Some(task) = call.task
            && let Err(error) = task.permits(call.server, call.tool)
        {
            self.out_of_scope.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::OutOfScope(error));
        }
        let limiter = self.rates.read().expect("poisoned").clone();
        let key = RateKey {
            agent: call.agent,
            tool: call.tool,
            token: call.task.map(|task| task.id.as_str()),
        };
        limiter.take(&key).await.map_err(|denied| match denied {
            RateDenied::Limited(refusal) => Refusal::RateLimited(refusal),
            RateDenied::Unavailable(why) => Refusal::Unavailable(why),
        })?;
        if let Some(task) = call.task {
            match self.tokens.consume_call(task).await {
                Ok(()) => {}
                Err(ConsumeError::Scope(error)) => {
                    self.out_of_scope.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal::OutOfScope(error));
                }
                Err(error @ ConsumeError::Unavailable) => {
                    return Err(Refusal::Unavailable(error.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Re-reads kill switches and tokens from the store (other replicas' changes).
    pub async fn refresh(&self) -> Result<(), ControlError> {
        self.kills.refresh().await?;
        self.tokens.refresh().await
    }

    /// Refreshes every `every` until dropped; failures are logged and retried (the last known
    /// state stays in force).
    pub async fn poll_store(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "control: cannot refresh kill switches and task tokens from the store");
            }
        }
    }

    /// Counters for metrics.
    pub fn counters(&self) -> ControlCounters {
        ControlCounters {
            killed: self.killed.load(Ordering::Relaxed),
            out_of_scope: self.out_of_scope.load(Ordering::Relaxed),
            rate: self.rate_limit_counters(),
        }
    }

    /// Admitted and refused calls per rate limit (`limit` = the limit's id).
    pub fn rate_limit_counters(&self) -> Vec<RateCounter> {
        self.rates.read().expect("poisoned").counters()
    }
}
