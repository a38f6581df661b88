//! Task tokens: short-lived bearer credentials the gateway mints for one task, scoped to some
//! servers and tools, with an expiry and an optional maximum number of calls, revocable at once.
//!
//! A token is `pct_` followed by 64 hex characters of randomness. Only its SHA-256 is stored
//! (`control_task_tokens`), with its scope, its counters and who issued it; the secret is shown
//! once, in the answer that issues it. Each process keeps the live tokens in memory (so the data
//! plane does not wait on the store to authenticate one); a token this process has not seen yet
//! (minted by another replica a moment ago) is looked up in the store once.
//!
//! Call counting is exact: a call first reserves one of the token's calls in memory (atomic,
//! never past `max_calls`), then, for tokens with `max_calls`, in the store with
//! `UPDATE … SET calls_used = calls_used + 1 WHERE calls_used < max_calls` — the store's answer
//! decides across replicas. A call refused by the store is refused (fail closed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_policy::glob::Glob;
use portcullis_store::{Store, on_pool, unix_now};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::watch;

use crate::ControlError;

/// The prefix of every task token.
pub const PREFIX: &str = "pct_";

/// What a task token allows, and its live counters.
#[derive(Debug)]
pub struct TaskScope {
    /// Public id (for listing and revocation); not a secret.
    pub id: String,
    /// The agent the token acts as.
    pub agent: String,
    /// The end user the issuing credential named, if any.
    pub user: Option<String>,
    /// The roles of the issuing credential (a token never has more than its issuer).
    pub roles: Vec<String>,
    /// Server globs (empty: every server).
    pub servers: Vec<Glob>,
    /// `{server}__{tool}` globs (empty: every tool of its servers).
    pub tools: Vec<Glob>,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    pub max_calls: Option<u64>,
    pub created_by: String,
    pub created_at: i64,
    used: AtomicU64,
    revoked: AtomicBool,
}

/// Why a call is outside a token's scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("task token {id} does not cover server {server}")]
    Server { id: String, server: String },
    #[error("task token {id} does not cover tool {tool}")]
    Tool { id: String, tool: String },
    #[error("task token {id} covers only tool calls (its scope names tools)")]
    NotATool { id: String },
    #[error("task token {id} has used all of its {max} calls")]
    Exhausted { id: String, max: u64 },
}

impl TaskScope {
    /// May this token reach `server` at all (lists, resources, prompts)?
    pub fn allows_server(&self, server: &str) -> bool {
        self.servers.is_empty() || self.servers.iter().any(|glob| glob.matches(server))
    }

    /// May this token call the tool `aggregated` (`{server}__{tool}`) on `server`?
    pub fn allows_tool(&self, server: &str, aggregated: &str) -> bool {
        self.allows_server(server)
            && (self.tools.is_empty() || self.tools.iter().any(|glob| glob.matches(aggregated)))
    }

    /// Checks a call to `server` (with the tool's aggregated name for `tools/call`). A token
    /// whose scope names tools reaches nothing but those tools' calls (and lists, filtered).
    pub fn permits(&self, server: &str, aggregated_tool: Option<&str>) -> Result<(), ScopeError> {
        if !self.allows_server(server) {
            return Err(ScopeError::Server {
                id: self.id.clone(),
                server: server.to_owned(),
            });
        }
        match aggregated_tool {
            Some(tool) if !self.allows_tool(server, tool) => Err(ScopeError::Tool {
                id: self.id.clone(),
                tool: tool.to_owned(),
            }),
            None if !self.tools.is_empty() => Err(ScopeError::NotATool {
                id: self.id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Calls made so far (as far as this process knows).
    pub fn calls_used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Has the token's lifetime ended (whole Unix seconds, as [`TaskTokens::authenticate`]
    /// decides)?
    pub fn is_expired(&self) -> bool {
        unix_now() >= self.expires_at
    }

    /// Reserves one call in memory: false when the token has none left.
    fn reserve(&self) -> bool {
        match self.max_calls {
            None => {
                self.used.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used < max).then_some(used + 1)
                })
                .is_ok(),
        }
    }

    /// The token as the admin API lists it (never the secret).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "agent": self.agent,
            "servers": self.servers.iter().map(Glob::as_str).collect::<Vec<_>>(),
            "tools": self.tools.iter().map(Glob::as_str).collect::<Vec<_>>(),
            "expires_at": self.expires_at,
            "max_calls": self.max_calls,
            "calls_used": self.calls_used(),
            "revoked": self.is_revoked(),
            "created_by": self.created_by,
            "created_at": self.created_at,
        })
    }
}

/// Why a presented task token is refused (each is a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown task token")]
    Unknown,
    #[error("the task token has expired")]
    Expired,
    #[error("the task token has been revoked")]
    Revoked,
    /// The store could not be asked about a token this process has not seen.
    #[error("task tokens cannot be checked right now")]
    Unavailable,
}

/// What to issue.
#[derive(Debug, Clone, Default)]
pub struct IssueRequest {
    pub agent: String,
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub servers: Vec<String>,
    pub tools: Vec<String>,
    /// Lifetime in seconds (at least 1).
    pub ttl_seconds: u64,
    pub max_calls: Option<u64>,
    pub created_by: String,
}

/// The task tokens of one process.
pub struct TaskTokens {
    store: Store,
    /// Live tokens by the SHA-256 of their secret.
    by_digest: RwLock<HashMap<[u8; 32], Arc<TaskScope>>>,
    /// Bumped whenever this process learns of a revocation (its own or, at a refresh, another
    /// replica's): calls and streams in flight on a task token wait on it
    /// ([`wait_for_revocation`]).
    revocations: watch::Sender<u64>,
}

/// Tokens expired longer ago than this are dropped from memory (they stay in the store).
const FORGET_AFTER_SECONDS: i64 = 3600;

const COLUMNS: &str = "id, token_sha256, agent, user_name, roles, servers, tools, expires_at, \
                       max_calls, calls_used, revoked_at, created_by, created_at";

impl TaskTokens {
    /// Loads the live tokens from `store` (migrated by the caller).
    pub async fn load(store: Store) -> Result<TaskTokens, ControlError> {
        let tokens = TaskTokens {
            store,
            by_digest: RwLock::new(HashMap::new()),
            revocations: watch::channel(0).0,
        };
        tokens.refresh().await?;
        Ok(tokens)
    }

    /// Mints a token. Returns the secret (shown once) and its scope.
    pub async fn issue(
        &self,
        request: IssueRequest,
    ) -> Result<(String, Arc<TaskScope>), ControlError> {
        if request.ttl_seconds == 0 {
            return Err(ControlError::Invalid("ttl must be positive".into()));
        }
        if request.max_calls == Some(0) {
            return Err(ControlError::Invalid("max_calls must be at least 1".into()));
        }
        for glob in request.servers.iter().chain(&request.tools) {
            if glob.trim().is_empty() || glob.len() > 256 || glob.chars().any(char::is_control) {
                return Err(ControlError::Invalid(format!(
                    "bad server or tool pattern {glob:?}"
                )));
            }
        }
        let mut secret_bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut secret_bytes);
        let secret = format!("{PREFIX}{}", hex::encode(secret_bytes));
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut id_bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut id_bytes);
        let id = format!("tt_{}", hex::encode(id_bytes));
        let now = unix_now();
        let ttl = i64::try_from(request.ttl_seconds).unwrap_or(i64::MAX);
        let scope = Arc::new(TaskScope {
            id,
            agent: request.agent,
            user: request.user,
            roles: request.roles,
            servers: request.servers.iter().map(|s| Glob::new(s)).collect(),
            tools: request.tools.iter().map(|s| Glob::new(s)).collect(),
            expires_at: now.saturating_add(ttl),
            max_calls: request.max_calls,
            created_by: request.created_by,
            created_at: now,
            used: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        });
        let json_list = |globs: &[Glob]| {
            serde_json::to_string(&globs.iter().map(Glob::as_str).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into())
        };
        let max_calls = scope
            .max_calls
            .map(|max| i64::try_from(max).unwrap_or(i64::MAX));
        on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "INSERT INTO control_task_tokens (id, token_sha256, agent, user_name, roles, \
                 servers, tools, expires_at, max_calls, calls_used, revoked_at, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, NULL, $10, $11)",
            )
            .bind(&scope.id)
            .bind(hex::encode(digest))
            .bind(&scope.agent)
            .bind(scope.user.as_deref())
            .bind(serde_json::to_string(&scope.roles).unwrap_or_else(|_| "[]".into()))
            .bind(json_list(&scope.servers))
            .bind(json_list(&scope.tools))
            .bind(scope.expires_at)
            .bind(max_calls)
            .bind(&scope.created_by)
            .bind(scope.created_at)
            .execute(pool)
            .await?;
        });
        self.by_digest
            .write()
            .expect("poisoned")
            .insert(digest, scope.clone());
        tracing::info!(id = %scope.id, agent = %scope.agent, by = %scope.created_by, expires_at = scope.expires_at, "task token issued");
        Ok((secret, scope))
    }

    /// The scope of a presented token (`pct_…`), or why it is refused.
    pub async fn authenticate(&self, token: &[u8]) -> Result<Arc<TaskScope>, TokenRefusal> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let cached = self
            .by_digest
            .read()
            .expect("poisoned")
            .get(&digest)
            .cloned();
        let scope = match cached {
            Some(scope) => scope,
            None => {
                // Possibly minted by another replica since the last refresh.
                let found = self
                    .fetch(&hex::encode(digest))
                    .await
                    .map_err(|error| {
                        tracing::error!(%error, "task token lookup failed");
                        TokenRefusal::Unavailable
                    })?
                    .ok_or(TokenRefusal::Unknown)?;
                let scope = Arc::new(found);
                self.by_digest
                    .write()
                    .expect("poisoned")
                    .insert(digest, scope.clone());
                scope
            }
        };
        if scope.is_revoked() {
            return Err(TokenRefusal::Revoked);
        }
        if scope.is_expired() {
            return Err(TokenRefusal::Expired);
        }
        Ok(scope)
    }

    /// Counts one call against the token: refused when its calls are used up (here or, for
    /// tokens with `max_calls`, in the store shared by every replica).
    pub async fn consume_call(&self, scope: &TaskScope) -> Result<(), ConsumeError> {
        let exhausted = || {
            ConsumeError::Scope(ScopeError::Exhausted {
                id: scope.id.clone(),
                max: scope.max_calls.unwrap_or(0),
            })
        };
        if !scope.reserve() {
            return Err(exhausted());
        }
        if scope.max_calls.is_none() {
            return Ok(());
        }
        let updated = on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "UPDATE control_task_tokens SET calls_used = calls_used + 1 \
                 WHERE id = $1 AND revoked_at IS NULL AND calls_used < max_calls",
            )
            .bind(&scope.id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(|error| {
            tracing::error!(%error, id = %scope.id, "task token call count not recorded; refusing the call");
            ConsumeError::Unavailable
        })?;
        if updated == 1 {
            Ok(())
        } else {
            // Other replicas used the rest (or it was revoked there): remember, and refuse.
            if let Some(max) = scope.max_calls {
                scope.used.fetch_max(max, Ordering::AcqRel);
            }
            Err(exhausted())
        }
    }

    /// Revokes a token at once (here; other replicas at their next refresh). `None` if there
    /// is no token with this id. Revoking twice is not an error.
    pub async fn revoke(&self, id: &str) -> Result<Option<Arc<TaskScope>>, ControlError> {
        let now = unix_now();
        on_pool!(self.store.backend(), pool => {
            sqlx::query("UPDATE control_task_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?;
        });
        let scope = self.get(id).await?;
        if let Some(scope) = &scope {
            scope.revoked.store(true, Ordering::Release);
            self.revocations.send_modify(|n| *n += 1);
            tracing::info!(id, agent = %scope.agent, "task token revoked");
        }
        Ok(scope)
    }

    /// A receiver that sees every revocation this process learns of; see
    /// [`wait_for_revocation`].
    pub fn subscribe_revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// The token with this id (from memory, else the store), revoked or expired included.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<TaskScope>>, ControlError> {
        if let Some(scope) = self
            .by_digest
            .read()
            .expect("poisoned")
            .values()
            .find(|scope| scope.id == id)
        {
            return Ok(Some(scope.clone()));
        }
        let row = on_pool!(self.store.backend(), pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM control_task_tokens WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| scope_from_row(&row))
                .transpose()?
        });
        Ok(row.map(|(_, scope)| Arc::new(scope)))
    }

    /// Tokens not expired for more than an hour, of `agent` or of everyone, newest first.
    pub async fn list(&self, agent: Option<&str>) -> Result<Vec<Arc<TaskScope>>, ControlError> {
        self.refresh().await?;
        let mut tokens: Vec<Arc<TaskScope>> = self
            .by_digest
            .read()
            .expect("poisoned")
            .values()
            .filter(|scope| agent.is_none_or(|agent| scope.agent == agent))
            .cloned()
            .collect();
        tokens.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(tokens)
    }

    /// Re-reads the live tokens from the store: tokens issued, revoked or used by other
    /// replicas; forgets tokens long expired.
    pub async fn refresh(&self) -> Result<(), ControlError> {
        let horizon = unix_now() - FORGET_AFTER_SECONDS;
        let rows = on_pool!(self.store.backend(), pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM control_task_tokens WHERE expires_at > $1")))
                .bind(horizon)
                .fetch_all(pool)
                .await?
                .iter()
                .map(scope_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let mut map = self.by_digest.write().expect("poisoned");
        let mut fresh = HashMap::with_capacity(rows.len());
        let mut newly_revoked = false;
        for (digest, stored) in rows {
            let scope = match map.remove(&digest) {
                Some(known) => {
                    known.used.fetch_max(stored.calls_used(), Ordering::AcqRel);
                    if stored.is_revoked() && !known.revoked.swap(true, Ordering::AcqRel) {
                        newly_revoked = true;
                    }
                    known
                }
                None => Arc::new(stored),
            };
            fresh.insert(digest, scope);
        }
        *map = fresh;
        drop(map);
        if newly_revoked {
            self.revocations.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn fetch(&self, digest_hex: &str) -> Result<Option<TaskScope>, ControlError> {
        let found = on_pool!(self.store.backend(), pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM control_task_tokens WHERE token_sha256 = $1")))
                .bind(digest_hex)
                .fetch_optional(pool)
                .await?
                .map(|row| scope_from_row(&row))
                .transpose()?
        });
        Ok(found.map(|(_, scope)| scope))
    }
}

/// Waits until `scope` is revoked (checked first, then at every revocation published on
/// `revocations`). Pending forever if the sender is gone (the gateway is stopping anyway).
pub async fn wait_for_revocation(revocations: &mut watch::Receiver<u64>, scope: &TaskScope) {
    loop {
        revocations.borrow_and_update();
        if scope.is_revoked() {
            return;
        }
        if revocations.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Waits until `scope` expires: the moment its `expires_at` second begins by the wall clock,
/// when [`TaskTokens::authenticate`] starts refusing it; at once if it has already expired.
/// Calls and streams in flight on the token end then, as on a revocation.
pub async fn wait_for_expiry(scope: &TaskScope) {
    let expires = Duration::from_secs(u64::try_from(scope.expires_at).unwrap_or(0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // tokio clamps a far-away deadline (a token that never expires) to its own far future.
    tokio::time::sleep(expires.saturating_sub(now)).await;
    // The timer may fire a hair early by the wall clock; never end a call before the token
    // is expired by the same test `authenticate` uses.
    while !scope.is_expired() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Why a call could not be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("the task token's call count cannot be recorded right now")]
    Unavailable,
}

fn scope_from_row<R>(row: &R) -> Result<([u8; 32], TaskScope), sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let decode = |what: &str, error: String| sqlx::Error::ColumnDecode {
        index: what.to_owned(),
        source: error.into(),
    };
    let list = |column: &str| -> Result<Vec<String>, sqlx::Error> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| decode(column, e.to_string()))
    };
    let digest_hex: String = row.try_get("token_sha256")?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&digest_hex, &mut digest)
        .map_err(|e| decode("token_sha256", e.to_string()))?;
    let max_calls: Option<i64> = row.try_get("max_calls")?;
    let calls_used: i64 = row.try_get("calls_used")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let scope = TaskScope {
        id: row.try_get("id")?,
        agent: row.try_get("agent")?,
        user: row.try_get("user_name")?,
        roles: list("roles")?,
        servers: list("servers")?.iter().map(|s| Glob::new(s)).collect(),
        tools: list("tools")?.iter().map(|s| Glob::new(s)).collect(),
        expires_at: row.try_get("expires_at")?,
        // A negative count in the store would mean corruption: treat it as no calls left.
        max_calls: max_calls.map(|max| u64::try_from(max).unwrap_or(0)),
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        used: AtomicU64::new(u64::try_from(calls_used).unwrap_or(u64::MAX)),
        revoked: AtomicBool::new(revoked_at.is_some()),
    };
    Ok((digest, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(servers: &[&str], tools: &[&str], max_calls: Option<u64>) -> TaskScope {
        TaskScope {
            id: "tt_1".into(),
            agent: "bot".into(),
            user: None,
            roles: vec![],
            servers: servers.iter().map(|s| Glob::new(s)).collect(),
            tools: tools.iter().map(|s| Glob::new(s)).collect(),
            expires_at: i64::MAX,
            max_calls,
            created_by: "ops".into(),
            created_at: 0,
            used: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    #[tokio::test]
    async fn expiry_wait_ends_when_the_token_expires_and_not_before() {
        let mut expired = scope(&[], &[], None);
        expired.expires_at = unix_now() - 1;
        assert!(expired.is_expired());
        tokio::time::timeout(Duration::from_secs(5), wait_for_expiry(&expired))
            .await
            .expect("an expired token's wait ends at once");

        let mut soon = scope(&[], &[], None);
        soon.expires_at = unix_now() + 1;
        assert!(!soon.is_expired());
        tokio::time::timeout(Duration::from_secs(5), wait_for_expiry(&soon))
            .await
            .expect("the wait ends once the second of expiry begins");
        assert!(soon.is_expired(), "never before the token is expired");

        let never = scope(&[], &[], None);
        tokio::select! {
            () = wait_for_expiry(&never) => panic!("a token expiring at i64::MAX ended"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }

    #[test]
    fn scope_covers_only_its_servers_and_tools() {
        let s = scope(&["fx"], &["fx__echo", "fx__add*"], None);
        assert_eq!(s.permits("fx", Some("fx__echo")), Ok(()));
        assert_eq!(s.permits("fx", Some("fx__add_numbers")), Ok(()));
        assert!(matches!(
            s.permits("fx", Some("fx__delete")),
            Err(ScopeError::Tool { .. })
        ));
        assert!(matches!(
            s.permits("demo", Some("demo__echo")),
            Err(ScopeError::Server { .. })
        ));
        assert!(matches!(
            s.permits("fx", None),
            Err(ScopeError::NotATool { .. })
        ));
        // A glob naming another server's tool does not open that server.
        let s = scope(&["fx"], &["*"], None);
        assert!(s.permits("demo", Some("demo__echo")).is_err());
        // No lists: everything (policy still applies).
        let s = scope(&[], &[], None);
        assert_eq!(s.permits("demo", None), Ok(()));
    }

    #[test]
    fn reservations_never_pass_max_calls() {
        let s = Arc::new(scope(&[], &[], Some(50)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..20).filter(|_| s.reserve()).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 50);
        assert_eq!(s.calls_used(), 50);
    }
}
