//! Approval requests in the control-plane store (SQLite or PostgreSQL, one code path).
//!
//! Tables (component `approvals`): `approvals` (one row per held call), `approval_decisions`
//! (one row per reviewer and request: the primary key makes a reviewer count once),
//! `approval_links` (hashed review-link nonces) and `approval_keys` (the link HMAC key, shared
//! by the replicas).
//!
//! Every transition is one transaction that first claims the row with
//! `UPDATE approvals … WHERE id = $1 AND status = 'pending'`: on PostgreSQL that locks the row,
//! on SQLite it takes the write lock, so concurrent decisions on any replicas are serialized and
//! exactly one final transition wins; a late decision finds a non-pending row and changes nothing.

use portcullis_store::{Migration, Store, StoreError, on_pool};
use rand::RngCore;
use sqlx::Row;

use crate::link;
use crate::machine::{self, DecideError, Facts, Outcome};
use crate::model::{
    Approval, Caller, Channel, DecisionRecord, NewApproval, Presentation, Reviewer, Role, Status,
    Verdict,
};

/// Store failures (the caller fails closed on any of them).
#[derive(Debug, thiserror::Error)]
pub enum ApprovalStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("approvals store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("approvals store: corrupt row {id}: {what}")]
    Corrupt { id: String, what: String },
}

/// Why a decision did not go through.
#[derive(Debug, thiserror::Error)]
pub enum DecideFailure {
    /// The state machine refused it; nothing was recorded.
    #[error(transparent)]
    Refused(#[from] DecideError),
    #[error(transparent)]
    Store(#[from] ApprovalStoreError),
}

impl From<sqlx::Error> for DecideFailure {
    fn from(error: sqlx::Error) -> Self {
        DecideFailure::Store(error.into())
    }
}

/// Why a review link was refused. Deliberately coarse: the holder of a bad link learns nothing
/// about which part was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this review link is unknown, expired, already used, or for another request")]
    Invalid,
}

const MIGRATIONS: &[Migration] = &[Migration {
    sqlite: "CREATE TABLE approvals (
            id TEXT PRIMARY KEY,
            created_ms INTEGER NOT NULL,
            deadline_ms INTEGER NOT NULL,
            agent TEXT NOT NULL,
            user_name TEXT,
            credential_id TEXT NOT NULL,
            server TEXT NOT NULL,
            tool TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            required_role TEXT NOT NULL,
            approvals_needed INTEGER NOT NULL,
            presentation TEXT NOT NULL,
            status TEXT NOT NULL,
            decided_ms INTEGER,
            reason TEXT,
            replica TEXT NOT NULL,
            holder TEXT NOT NULL,
            heartbeat_ms INTEGER NOT NULL,
            audit_ref TEXT
        );
        CREATE INDEX approvals_by_status ON approvals (status, created_ms);
        CREATE TABLE approval_decisions (
            approval_id TEXT NOT NULL REFERENCES approvals (id),
            reviewer TEXT NOT NULL,
            credential_id TEXT NOT NULL,
            role TEXT NOT NULL,
            verdict TEXT NOT NULL,
            reason TEXT,
            at_ms INTEGER NOT NULL,
            channel TEXT NOT NULL,
            PRIMARY KEY (approval_id, reviewer)
        );
        CREATE TABLE approval_links (
            digest TEXT PRIMARY KEY,
            approval_id TEXT NOT NULL REFERENCES approvals (id),
            verdict TEXT NOT NULL,
            expires_ms INTEGER NOT NULL,
            used_ms INTEGER
        );
        CREATE TABLE approval_keys (name TEXT PRIMARY KEY, secret TEXT NOT NULL);",
    postgres: "CREATE TABLE approvals (
            id TEXT PRIMARY KEY,
            created_ms BIGINT NOT NULL,
            deadline_ms BIGINT NOT NULL,
            agent TEXT NOT NULL,
            user_name TEXT,
            credential_id TEXT NOT NULL,
            server TEXT NOT NULL,
            tool TEXT NOT NULL,
            rule_id TEXT NOT NULL,
            required_role TEXT NOT NULL,
            approvals_needed BIGINT NOT NULL,
            presentation TEXT NOT NULL,
            status TEXT NOT NULL,
            decided_ms BIGINT,
            reason TEXT,
            replica TEXT NOT NULL,
            holder TEXT NOT NULL,
            heartbeat_ms BIGINT NOT NULL,
            audit_ref TEXT
        );
        CREATE INDEX approvals_by_status ON approvals (status, created_ms);
        CREATE TABLE approval_decisions (
            approval_id TEXT NOT NULL REFERENCES approvals (id),
            reviewer TEXT NOT NULL,
            credential_id TEXT NOT NULL,
            role TEXT NOT NULL,
            verdict TEXT NOT NULL,
            reason TEXT,
            at_ms BIGINT NOT NULL,
            channel TEXT NOT NULL,
            PRIMARY KEY (approval_id, reviewer)
        );
        CREATE TABLE approval_links (
            digest TEXT PRIMARY KEY,
            approval_id TEXT NOT NULL REFERENCES approvals (id),
            verdict TEXT NOT NULL,
            expires_ms BIGINT NOT NULL,
            used_ms BIGINT
        );
        CREATE TABLE approval_keys (name TEXT PRIMARY KEY, secret TEXT NOT NULL);",
}];

const APPROVAL_COLUMNS: &str = "id, created_ms, deadline_ms, agent, user_name, credential_id, \
     server, tool, rule_id, required_role, approvals_needed, presentation, status, decided_ms, \
     reason, replica, audit_ref";

const DECISION_COLUMNS: &str =
    "approval_id, reviewer, credential_id, role, verdict, reason, at_ms, channel";

/// One row of `approvals`, as text and numbers (checked by [`RawRow::into_approval`]).
struct RawRow {
    id: String,
    created_ms: i64,
    deadline_ms: i64,
    agent: String,
    user_name: Option<String>,
    credential_id: String,
    server: String,
    tool: String,
    rule_id: String,
    required_role: String,
    approvals_needed: i64,
    presentation: String,
    status: String,
    decided_ms: Option<i64>,
    reason: Option<String>,
    replica: String,
    audit_ref: Option<String>,
}

/// Reads a [`RawRow`] from a row of either driver (expanded once per driver).
macro_rules! raw_row {
    ($row:expr) => {{
        let row = $row;
        RawRow {
            id: row.try_get("id")?,
            created_ms: row.try_get("created_ms")?,
            deadline_ms: row.try_get("deadline_ms")?,
            agent: row.try_get("agent")?,
            user_name: row.try_get("user_name")?,
            credential_id: row.try_get("credential_id")?,
            server: row.try_get("server")?,
            tool: row.try_get("tool")?,
            rule_id: row.try_get("rule_id")?,
            required_role: row.try_get("required_role")?,
            approvals_needed: row.try_get("approvals_needed")?,
            presentation: row.try_get("presentation")?,
            status: row.try_get("status")?,
            decided_ms: row.try_get("decided_ms")?,
            reason: row.try_get("reason")?,
            replica: row.try_get("replica")?,
            audit_ref: row.try_get("audit_ref")?,
        }
    }};
}

/// One row of `approval_decisions`: (approval id, record fields as text).
type RawDecision = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
);

macro_rules! raw_decision {
    ($row:expr) => {{
        let row = $row;
        (
            row.try_get::<String, _>("approval_id")?,
            row.try_get::<String, _>("reviewer")?,
            row.try_get::<String, _>("credential_id")?,
            row.try_get::<String, _>("role")?,
            row.try_get::<String, _>("verdict")?,
            row.try_get::<Option<String>, _>("reason")?,
            row.try_get::<i64, _>("at_ms")?,
            row.try_get::<String, _>("channel")?,
        )
    }};
}

impl RawRow {
    fn into_approval(self, decisions: Vec<DecisionRecord>) -> Result<Approval, ApprovalStoreError> {
        let corrupt = |what: &str| ApprovalStoreError::Corrupt {
            id: self.id.clone(),
            what: what.to_owned(),
        };
        let status = Status::parse(&self.status).ok_or_else(|| corrupt("status"))?;
        let required_role =
            Role::parse(&self.required_role).ok_or_else(|| corrupt("required_role"))?;
        let approvals_needed =
            u8::try_from(self.approvals_needed).map_err(|_| corrupt("approvals_needed"))?;
        let presentation: Presentation =
            serde_json::from_str(&self.presentation).map_err(|_| corrupt("presentation"))?;
        Ok(Approval {
            id: self.id,
            created_ms: self.created_ms,
            deadline_ms: self.deadline_ms,
            caller: Caller {
                agent: self.agent,
                user: self.user_name,
                credential_id: self.credential_id,
            },
            server: self.server,
            tool: self.tool,
            rule_id: self.rule_id,
            required_role,
            approvals_needed,
            presentation,
            status,
            decided_ms: self.decided_ms,
            reason: self.reason,
            decisions,
            replica: self.replica,
            audit_ref: self.audit_ref,
        })
    }
}

fn decision_record(raw: RawDecision) -> Result<DecisionRecord, ApprovalStoreError> {
    let (id, reviewer, credential_id, role, verdict, reason, at_ms, channel) = raw;
    let corrupt = |what: &str| ApprovalStoreError::Corrupt {
        id: id.clone(),
        what: format!("decision {what}"),
    };
    Ok(DecisionRecord {
        role: Role::parse(&role).ok_or_else(|| corrupt("role"))?,
        verdict: Verdict::parse(&verdict).ok_or_else(|| corrupt("verdict"))?,
        channel: Channel::parse(&channel).ok_or_else(|| corrupt("channel"))?,
        reviewer,
        credential_id,
        reason,
        at_ms,
    })
}

/// A new approval id: `apr_` and 24 hex characters (96 random bits).
pub fn new_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("apr_{}", hex::encode(bytes))
}

/// Is `id` shaped like one of ours? Lets routes refuse garbage before touching the store.
pub fn well_formed_id(id: &str) -> bool {
    id.len() == 28
        && id.starts_with("apr_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Approval requests, decisions and review links.
#[derive(Debug, Clone)]
pub struct ApprovalStore {
    store: Store,
}

impl ApprovalStore {
    /// The approvals tables of `store` (no IO; call [`ApprovalStore::migrate`] before use).
    pub fn new(store: Store) -> Self {
        ApprovalStore { store }
    }

    /// Creates or upgrades the approvals tables.
    pub async fn migrate(&self) -> Result<(), ApprovalStoreError> {
        self.store.migrate("approvals", MIGRATIONS).await?;
        Ok(())
    }

    /// [`ApprovalStore::new`] and [`ApprovalStore::migrate`].
    pub async fn open(store: Store) -> Result<Self, ApprovalStoreError> {
        let approvals = ApprovalStore::new(store);
        approvals.migrate().await?;
        Ok(approvals)
    }

    /// Records a held call; it is pending until `now_ms + timeout_ms`.
    pub async fn create(
        &self,
        new: &NewApproval,
        now_ms: i64,
    ) -> Result<Approval, ApprovalStoreError> {
        let id = new_id();
        let deadline_ms = now_ms.saturating_add(new.timeout_ms.max(0));
        let presentation = serde_json::to_string(&new.presentation).map_err(|error| {
            ApprovalStoreError::Corrupt {
                id: id.clone(),
                what: error.to_string(),
            }
        })?;
        on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "INSERT INTO approvals (id, created_ms, deadline_ms, agent, user_name, credential_id, \
                 server, tool, rule_id, required_role, approvals_needed, presentation, status, \
                 replica, holder, heartbeat_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $14, $2)",
            )
            .bind(&id)
            .bind(now_ms)
            .bind(deadline_ms)
            .bind(&new.caller.agent)
            .bind(&new.caller.user)
            .bind(&new.caller.credential_id)
            .bind(&new.server)
            .bind(&new.tool)
            .bind(&new.rule_id)
            .bind(new.required_role.as_str())
            .bind(i64::from(new.approvals_needed))
            .bind(&presentation)
            .bind(&new.replica)
            .bind(&new.holder)
            .execute(pool)
            .await?;
        });
        Ok(Approval {
            id,
            created_ms: now_ms,
            deadline_ms,
            caller: new.caller.clone(),
            server: new.server.clone(),
            tool: new.tool.clone(),
            rule_id: new.rule_id.clone(),
            required_role: new.required_role,
            approvals_needed: new.approvals_needed,
            presentation: new.presentation.clone(),
            status: Status::Pending,
            decided_ms: None,
            reason: None,
            decisions: Vec::new(),
            replica: new.replica.clone(),
            audit_ref: None,
        })
    }

    /// One request with its decisions.
    pub async fn get(&self, id: &str) -> Result<Option<Approval>, ApprovalStoreError> {
        let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1");
        let dsql = format!(
            "SELECT {DECISION_COLUMNS} FROM approval_decisions WHERE approval_id = $1 ORDER BY at_ms, reviewer"
        );
        let (row, decisions) = on_pool!(self.store.backend(), pool => {
            let row = match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => raw_row!(&row),
                None => return Ok(None),
            };
            let mut decisions = Vec::new();
            for d in sqlx::query(sqlx::AssertSqlSafe(dsql)).bind(id).fetch_all(pool).await? {
                decisions.push(raw_decision!(&d));
            }
            (row, decisions)
        });
        let decisions = decisions
            .into_iter()
            .map(decision_record)
            .collect::<Result<_, _>>()?;
        Ok(Some(row.into_approval(decisions)?))
    }

    /// Requests, newest first, optionally only those with `status`; at most `limit`.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: u32,
    ) -> Result<Vec<Approval>, ApprovalStoreError> {
        let filter = if status.is_some() {
            "WHERE status = $2"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals {filter} ORDER BY created_ms DESC, id LIMIT $1"
        );
        let rows = on_pool!(self.store.backend(), pool => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(limit));
            if let Some(status) = status {
                query = query.bind(status.as_str());
            }
            let mut rows = Vec::new();
            for row in query.fetch_all(pool).await? {
                rows.push(raw_row!(&row));
            }
            rows
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let decisions = self.decisions(&row.id).await?;
            out.push(row.into_approval(decisions)?);
        }
        Ok(out)
    }

    async fn decisions(&self, id: &str) -> Result<Vec<DecisionRecord>, ApprovalStoreError> {
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM approval_decisions WHERE approval_id = $1 ORDER BY at_ms, reviewer"
        );
        let raw = on_pool!(self.store.backend(), pool => {
            let mut out = Vec::new();
            for d in sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(pool).await? {
                out.push(raw_decision!(&d));
            }
            out
        });
        raw.into_iter().map(decision_record).collect()
    }

    /// The status and final reason of a request (what a holder polls).
    pub async fn status(
        &self,
        id: &str,
    ) -> Result<Option<(Status, Option<String>)>, ApprovalStoreError> {
        let row: Option<(String, Option<String>)> = on_pool!(self.store.backend(), pool => {
            sqlx::query_as("SELECT status, reason FROM approvals WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        match row {
            None => Ok(None),
            Some((status, reason)) => {
                let status = Status::parse(&status).ok_or_else(|| ApprovalStoreError::Corrupt {
                    id: id.to_owned(),
                    what: "status".into(),
                })?;
                Ok(Some((status, reason)))
            }
        }
    }

    /// Applies one reviewer's decision atomically. A decision arriving after the deadline marks
    /// the request expired (and is refused); on any refusal nothing is recorded.
    pub async fn decide(
        &self,
        id: &str,
        reviewer: &Reviewer,
        verdict: Verdict,
        reason: Option<&str>,
        channel: Channel,
        now_ms: i64,
    ) -> Result<Outcome, DecideFailure> {
        let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1");
        let dsql =
            format!("SELECT {DECISION_COLUMNS} FROM approval_decisions WHERE approval_id = $1");
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        on_pool!(self.store.backend(), pool => {
            let mut tx = pool.begin().await?;
            // Claim the row: locks it (PostgreSQL) / takes the write lock (SQLite).
            let claimed = sqlx::query(
                "UPDATE approvals SET heartbeat_ms = heartbeat_ms WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                tx.rollback().await?;
                return Err(match self.status(id).await? {
                    None => DecideError::NotFound.into(),
                    Some((status, _)) => DecideError::NotPending(status).into(),
                });
            }
            let row = match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => raw_row!(&row),
                None => return Err(DecideError::NotFound.into()),
            };
            let mut raw = Vec::new();
            for d in sqlx::query(sqlx::AssertSqlSafe(dsql)).bind(id).fetch_all(&mut *tx).await? {
                raw.push(raw_decision!(&d));
            }
            let decisions = raw
                .into_iter()
                .map(decision_record)
                .collect::<Result<Vec<_>, _>>()?;
            let approval = row.into_approval(decisions)?;
            let outcome = match machine::decide(Facts::from(&approval), reviewer, verdict, reason, now_ms) {
                Ok(outcome) => outcome,
                Err(DecideError::Expired) => {
                    sqlx::query(
                        "UPDATE approvals SET status = 'expired', decided_ms = $2, \
                         reason = 'no decision before the deadline' WHERE id = $1 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Err(DecideError::Expired.into());
                }
                Err(refused) => {
                    tx.rollback().await?;
                    return Err(refused.into());
                }
            };
            sqlx::query(
                "INSERT INTO approval_decisions (approval_id, reviewer, credential_id, role, verdict, reason, at_ms, channel) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(&reviewer.name)
            .bind(&reviewer.credential_id)
            .bind(reviewer.role.as_str())
            .bind(verdict.as_str())
            .bind(reason)
            .bind(now_ms)
            .bind(channel.as_str())
            .execute(&mut *tx)
            .await?;
            if let Outcome::Final(status) = outcome {
                let final_reason = reason.map(str::to_owned);
                sqlx::query(
                    "UPDATE approvals SET status = $2, decided_ms = $3, reason = $4 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(id)
                .bind(status.as_str())
                .bind(now_ms)
                .bind(final_reason)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Ends a pending request with `status` (expired or abandoned) and a reason; returns the
    /// status the request has afterwards (another transition may have won).
    async fn end(
        &self,
        id: &str,
        status: Status,
        reason: &str,
        extra: &str,
        now_ms: i64,
    ) -> Result<Status, ApprovalStoreError> {
        let sql = format!(
            "UPDATE approvals SET status = $2, decided_ms = $3, reason = $4 \
             WHERE id = $1 AND status = 'pending'{extra}"
        );
        on_pool!(self.store.backend(), pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(status.as_str())
                .bind(now_ms)
                .bind(reason)
                .execute(pool)
                .await?;
        });
        match self.status(id).await? {
            Some((status, _)) => Ok(status),
            None => Err(ApprovalStoreError::Corrupt {
                id: id.to_owned(),
                what: "vanished".into(),
            }),
        }
    }

    /// The holder's deadline passed: pending → expired (if still pending and really overdue).
    /// Returns the final status; `Approved` means a decision won the race and the call may run.
    pub async fn expire(&self, id: &str, now_ms: i64) -> Result<Status, ApprovalStoreError> {
        self.end(
            id,
            Status::Expired,
            "no decision before the deadline",
            " AND deadline_ms <= $3",
            now_ms,
        )
        .await
    }

    /// The caller went away: pending → abandoned. Returns the final status.
    pub async fn abandon(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Status, ApprovalStoreError> {
        self.end(id, Status::Abandoned, reason, "", now_ms).await
    }

    /// At start-up: every pending request held by an earlier process of `replica` lost its
    /// holder. Returns how many were abandoned.
    pub async fn abandon_replica(
        &self,
        replica: &str,
        holder: &str,
        now_ms: i64,
    ) -> Result<u64, ApprovalStoreError> {
        Ok(on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "UPDATE approvals SET status = 'abandoned', decided_ms = $3, \
                 reason = 'the gateway holding the call restarted' \
                 WHERE status = 'pending' AND replica = $1 AND holder <> $2",
            )
            .bind(replica)
            .bind(holder)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Any replica: pending requests whose holder has not renewed its heartbeat since
    /// `stale_before_ms` lost their holder (a crashed replica that never came back).
    pub async fn abandon_stale(
        &self,
        stale_before_ms: i64,
        now_ms: i64,
    ) -> Result<u64, ApprovalStoreError> {
        Ok(on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "UPDATE approvals SET status = 'abandoned', decided_ms = $2, \
                 reason = 'the gateway holding the call stopped' \
                 WHERE status = 'pending' AND heartbeat_ms < $1",
            )
            .bind(stale_before_ms)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Pending requests whose deadline passed before `before_ms` and that no holder expired
    /// (its waiter stopped): → expired. Returns how many.
    pub async fn expire_overdue(
        &self,
        before_ms: i64,
        now_ms: i64,
    ) -> Result<u64, ApprovalStoreError> {
        Ok(on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "UPDATE approvals SET status = 'expired', decided_ms = $2, \
                 reason = 'no decision before the deadline' \
                 WHERE status = 'pending' AND deadline_ms < $1",
            )
            .bind(before_ms)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// The holder is alive: renews the heartbeat of every pending request it holds.
    pub async fn heartbeat(&self, holder: &str, now_ms: i64) -> Result<u64, ApprovalStoreError> {
        Ok(on_pool!(self.store.backend(), pool => {
            sqlx::query("UPDATE approvals SET heartbeat_ms = $2 WHERE holder = $1 AND status = 'pending'")
                .bind(holder)
                .bind(now_ms)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Links the request to the audit record of its call.
    pub async fn set_audit_ref(&self, id: &str, audit_ref: &str) -> Result<(), ApprovalStoreError> {
        on_pool!(self.store.backend(), pool => {
            sqlx::query("UPDATE approvals SET audit_ref = $2 WHERE id = $1")
                .bind(id)
                .bind(audit_ref)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The link HMAC key, created on first use and shared by every replica of the store.
    async fn link_key(&self) -> Result<Vec<u8>, ApprovalStoreError> {
        let fresh = link::new_key();
        let secret: String = on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "INSERT INTO approval_keys (name, secret) VALUES ('link', $1) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&fresh)
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT secret FROM approval_keys WHERE name = 'link'")
                .fetch_one(pool)
                .await?
        });
        hex::decode(secret).map_err(|_| ApprovalStoreError::Corrupt {
            id: "approval_keys/link".into(),
            what: "not hex".into(),
        })
    }

    /// Issues a single-use review link nonce for (`id`, `verdict`), valid until `expires_ms`.
    pub async fn issue_link(
        &self,
        id: &str,
        verdict: Verdict,
        expires_ms: i64,
    ) -> Result<String, ApprovalStoreError> {
        let key = self.link_key().await?;
        let nonce = link::new_nonce();
        let digest = link::digest(&key, id, verdict, &nonce);
        on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "INSERT INTO approval_links (digest, approval_id, verdict, expires_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&digest)
            .bind(id)
            .bind(verdict.as_str())
            .bind(expires_ms)
            .execute(pool)
            .await?;
        });
        Ok(nonce)
    }

    /// Consumes a review link: exactly once, before it expires, only for the approval and verdict
    /// it was issued for. The caller then applies the decision with the reviewer's credential.
    pub async fn redeem_link(
        &self,
        id: &str,
        verdict: Verdict,
        nonce: &str,
        now_ms: i64,
    ) -> Result<Result<(), LinkError>, ApprovalStoreError> {
        if !link::well_formed(nonce) {
            return Ok(Err(LinkError::Invalid));
        }
        let key = self.link_key().await?;
        let digest = link::digest(&key, id, verdict, nonce);
        let used = on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "UPDATE approval_links SET used_ms = $4 WHERE digest = $1 AND approval_id = $2 \
                 AND verdict = $3 AND used_ms IS NULL AND expires_ms > $4",
            )
            .bind(&digest)
            .bind(id)
            .bind(verdict.as_str())
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(if used == 1 {
            Ok(())
        } else {
            Err(LinkError::Invalid)
        })
    }
}

#[cfg(test)]
mod tests;
