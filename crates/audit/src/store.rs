//! The audit store: SQLite (WAL) or PostgreSQL through one code path, with group commit.
//!
//! This is the IO half of the crate (feature `store`); everything it persists is built and
//! checked by the pure modules. One table of records (one column per field, so exports and
//! filters are plain SQL, primary key `(chain_id, seq)`), one table of checkpoints, versioned
//! migrations under `migrations/sqlite` and `migrations/postgres` (the dialects differ only in
//! integer types; keep them in step).
//!
//! Every query is written once: [`on_pool!`] expands the same body for the SQLite and the
//! PostgreSQL pool (both accept `$N` placeholders), so the two backends cannot drift. sqlx's
//! `any` feature is not needed (and not used): the typed pools keep PostgreSQL's parameter types
//! inferred from the columns, which `Any` loses for `NULL` binds.
//!
//! [`AuditWriter`] ([`crate::writer`]) is the single writer of one chain (one per replica); on a
//! SQLite file with [`Durability::Normal`] (the default) an append is durable in the chain's
//! append log and reaches SQLite in batches ([`crate::sqlite_writer`], [`crate::append_log`]):
//! it survives the process being killed (`kill -9`), not a power cut, and every read here
//! first replays the log of a writer that died and waits briefly for a live one to catch up.
//! Elsewhere (PostgreSQL, [`Durability::Full`], which fsyncs every commit) the writer uses
//! [`write_batch`] on a connection it holds.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
// `AssertSqlSafe`: the only dynamic SQL is built from constants and a quoted identifier.
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row, Sqlite};

use crate::chain::{ChainHead, Hash};
use crate::checkpoint::{Checkpoint, KeyError, KeyRing, SigningKeyFile};
use crate::record::{AuditEvent, AuditRecord, Finding, Outcome, Principal, RecordKind};
use crate::verify::{Problem, Report, Undecodable, Verifier};

/// Store failures. `retryable` tells callers (fail-closed data plane) whether trying again helps.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("audit storage: unsupported URL scheme in {0:?} (use sqlite://PATH or postgres://...)")]
    Url(String),
    /// The database refused or is unreachable.
    #[error("audit storage: {0}")]
    Db(#[from] sqlx::Error),
    /// The SQLite file refused a write of the direct writer.
    #[error("audit storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed.
    #[error("audit storage: migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The writer task is gone (shut down or crashed).
    #[error("audit writer stopped")]
    WriterStopped,
    /// The append log of a chain (beside its SQLite file) could not be read or written.
    #[error("audit append log {path}: {source}")]
    Log {
        /// The log file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Another writer (another gateway process on the same file and chain id) holds the
    /// chain's append log.
    #[error(
        "audit chain is already being written by another process (its append log {0} is locked); \
         give each replica its own audit.chain_id"
    )]
    ChainBusy(std::path::PathBuf),
    /// A value does not fit the store (seq or size beyond i64).
    #[error("audit storage: value out of range: {0}")]
    Range(&'static str),
    /// Retention without a signing key: deleting without a signed tombstone would leave a
    /// silent gap, so nothing is deleted.
    #[error(
        "audit retention needs a signing key (its tombstone must be signed); nothing was deleted"
    )]
    NoSigner,
}

impl StoreError {
    /// Whether a retry may succeed (connection trouble, writer restart) as opposed to a bug or
    /// a misconfiguration.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Db(_) | Self::Sqlite(_) | Self::Log { .. } | Self::WriterStopped
        )
    }
}

/// The pool behind a store.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Embedded SQLite (WAL).
    Sqlite(SqlitePool),
    /// Shared PostgreSQL.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the backend holds: one query text, two
/// drivers.
macro_rules! on_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Decodes one row of `audit_records` (any backend) into a record, never panicking.
macro_rules! decode_record {
    ($row:expr) => {{
        let row = $row;
        let seq_raw: i64 = row.try_get("seq").unwrap_or(-1);
        (|| -> Result<AuditRecord, String> {
            let text = |c: &str| {
                row.try_get::<Option<String>, _>(c)
                    .map_err(|e| format!("{c}: {e}"))
            };
            let req = |c: &str| row.try_get::<String, _>(c).map_err(|e| format!("{c}: {e}"));
            let int = |c: &str| {
                row.try_get::<Option<i64>, _>(c)
                    .map_err(|e| format!("{c}: {e}"))
            };
            let seq = u64::try_from(seq_raw).map_err(|_| format!("seq {seq_raw} is negative"))?;
            let hash = |c: &str| -> Result<Hash, String> {
                let s = req(c)?;
                Hash::from_hex(&s).ok_or_else(|| format!("{c} is not 64 hex digits"))
            };
            let kind_s = req("kind")?;
            let kind =
                RecordKind::parse(&kind_s).ok_or_else(|| format!("unknown kind {kind_s:?}"))?;
            let findings_s = req("findings")?;
            let findings: Vec<Finding> =
                serde_json::from_str(&findings_s).map_err(|e| format!("findings: {e}"))?;
            let outcome = match text("outcome")?.as_deref() {
                // An error code next to a non-error outcome is not something the writer stores.
                None | Some("ok") if int("error_code")?.is_some() => {
                    return Err("error_code set without outcome error".into());
                }
                None => None,
                Some("ok") => Some(Outcome::Ok),
                Some("error") => Some(Outcome::Error {
                    code: int("error_code")?.ok_or("outcome error without error_code")?,
                }),
                Some(other) => return Err(format!("unknown outcome {other:?}")),
            };
            Ok(AuditRecord {
                chain_id: req("chain_id")?,
                seq,
                prev_hash: hash("prev_hash")?,
                hash: hash("hash")?,
                event: AuditEvent {
                    time_us: row
                        .try_get::<i64, _>("time_us")
                        .map_err(|e| format!("time_us: {e}"))?,
                    kind,
                    trace_id: text("trace_id")?,
                    principal: Principal {
                        agent: text("agent")?,
                        user: text("user_id")?,
                        token_id: text("token_id")?,
                    },
                    session: text("session")?,
                    client_era: text("client_era")?,
                    upstream_era: text("upstream_era")?,
                    server: text("server")?,
                    method: text("method")?,
                    tool: text("tool")?,
                    args_fingerprint: text("args_fingerprint")?,
                    decision: text("decision")?,
                    rule_id: text("rule_id")?,
                    approval_ref: text("approval_ref")?,
                    findings,
                    outcome,
                    latency_us: int("latency_us")?,
                    bytes_in: int("bytes_in")?,
                    bytes_out: int("bytes_out")?,
                },
            })
        })()
        .map_err(|reason| Undecodable {
            seq: seq_raw,
            reason,
        })
    }};
}

/// The columns of `audit_records`, in insert order.
const RECORD_COLUMNS: &str = "chain_id, seq, prev_hash, hash, time_us, kind, trace_id, agent, user_id, \
     token_id, session, client_era, upstream_era, server, method, tool, args_fingerprint, decision, \
     rule_id, approval_ref, findings, outcome, error_code, latency_us, bytes_in, bytes_out";

/// Rows per INSERT statement (25 binds each; well under SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_INSERT: usize = 200;

/// Filters for [`AuditStore::query`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Records at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    /// Records before this time (µs since the epoch).
    pub until_us: Option<i64>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this tool (`{server}__{tool}`).
    pub tool: Option<String>,
    /// At most this many (the latest ones when `latest` is set).
    pub limit: Option<i64>,
    /// Take the last `limit` records by time instead of the first.
    pub latest: bool,
    /// Keyset cursor for paging in ascending order: only records after this
    /// `(time_us, chain_id, seq)`.
    pub after: Option<(i64, String, i64)>,
}

/// SQLite commit durability (PostgreSQL commits are governed by the server's settings, e.g.
/// `synchronous_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The default: an append is in the chain's append log (the OS page cache) before it is
    /// acknowledged, and SQLite runs `synchronous = NORMAL` in WAL mode, so it survives the
    /// process being killed (`kill -9`) and restarted, not a power cut or a kernel crash.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is fsynced (survives a power cut), at the cost of an
    /// fsync per group commit.
    Full,
}

/// A SQLite store's file and commit durability (what the direct writer opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteFile {
    /// The database file.
    pub path: PathBuf,
    /// Its commit durability.
    pub durability: Durability,
}

/// An audit store: a pool plus the schema.
#[derive(Debug, Clone)]
pub struct AuditStore {
    backend: Backend,
    /// Set for a SQLite file (not an in-memory database).
    sqlite_file: Option<SqliteFile>,
}

impl AuditStore {
    /// Connects to `sqlite://PATH` (created if missing; WAL, [`Durability::Normal`]) or
    /// `postgres://...`, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_in_schema(url, None).await
    }

    /// Like [`AuditStore::connect`]; on PostgreSQL, every connection uses `schema` (created if
    /// missing) as its `search_path`. Tests use this to isolate runs.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        Self::connect_with(url, schema, Durability::default()).await
    }

    /// [`AuditStore::connect_in_schema`] with the SQLite commit durability chosen
    /// ([`Durability::Normal`] survives `kill -9` but not a power cut, [`Durability::Full`]
    /// fsyncs each commit; PostgreSQL ignores it).
    pub async fn connect_with(
        url: &str,
        schema: Option<&str>,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let store = Self::open(url, schema, true, durability).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an existing store for reading (verify, tail, export): never creates a SQLite file
    /// and never migrates, so a mistyped path is an error rather than an empty, "valid" trail.
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None, false, Durability::Full).await
    }

    async fn open(
        url: &str,
        schema: Option<&str>,
        create: bool,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let mut sqlite_file = None;
        let backend = if url.starts_with("sqlite:") {
            // An in-memory database exists per connection: keep exactly one (tests, demos).
            let memory = url.contains(":memory:");
            let opts = SqliteConnectOptions::from_str(url)?;
            if !memory {
                sqlite_file = Some(SqliteFile {
                    path: opts.get_filename().to_path_buf(),
                    durability,
                });
            }
            let opts = opts
                .create_if_missing(create)
                .journal_mode(if memory {
                    SqliteJournalMode::Memory
                } else {
                    SqliteJournalMode::Wal
                })
                .synchronous(match durability {
                    Durability::Full => SqliteSynchronous::Full,
                    Durability::Normal => SqliteSynchronous::Normal,
                })
                .busy_timeout(Duration::from_secs(5));
            Backend::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(if memory { 1 } else { 4 })
                    .connect_with(opts)
                    .await?,
            )
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut opts = PgConnectOptions::from_str(url)?;
            if let Some(schema) = schema {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(schema)
                )))
                .execute(&admin)
                .await?;
                admin.close().await;
                opts = opts.options([("search_path", schema)]);
            }
            Backend::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(opts)
                    .await?,
            )
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        Ok(Self {
            backend,
            sqlite_file,
        })
    }

    /// The pool.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The SQLite file and its durability (None for PostgreSQL and in-memory SQLite).
    pub fn sqlite_file(&self) -> Option<&SqliteFile> {
        self.sqlite_file.as_ref()
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Backend::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Before a read of a SQLite file: replays the append logs that writers which did not stop
    /// cleanly left beside it, and waits briefly for live writers to ingest what they logged
    /// ([`crate::append_log::catch_up`]), so that a record whose append returned is read.
    async fn settle(&self) -> Result<(), StoreError> {
        let Some(file) = &self.sqlite_file else {
            return Ok(());
        };
        let path = file.path.clone();
        tokio::task::spawn_blocking(move || crate::append_log::catch_up(&path))
            .await
            .map_err(|e| StoreError::Log {
                path: file.path.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(&self.backend, pool => pool.close().await)
    }

    /// Every chain with records or checkpoints.
    pub async fn chains(&self) -> Result<Vec<String>, StoreError> {
        self.settle().await?;
        let sql = "SELECT chain_id FROM audit_records UNION SELECT chain_id FROM audit_checkpoints \
                   UNION SELECT chain_id FROM audit_tombstones ORDER BY 1";
        let chains = on_pool!(&self.backend, pool => {
            sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await?
        });
        Ok(chains)
    }

    /// The head of `chain_id` as stored (empty chain if none).
    pub async fn head(&self, chain_id: &str) -> Result<ChainHead, StoreError> {
        self.settle().await?;
        let sql =
            "SELECT seq, hash FROM audit_records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1";
        let row: Option<(i64, String)> = on_pool!(&self.backend, pool => {
            sqlx::query_as(sql).bind(chain_id).fetch_optional(pool).await?
        });
        let mut head = ChainHead::new(chain_id);
        // Retention may have deleted every record: the chain then continues after its tombstone.
        let row = match row {
            Some(row) => Some(row),
            None => self
                .tombstones(chain_id)
                .await?
                .0
                .pop()
                .and_then(|t| Some((i64::try_from(t.seq).ok()?, t.head_hash.to_hex()))),
        };
        if let Some((seq, hash)) = row {
            // A corrupt head is the verifier's business; the writer continues after it so the
            // damage stays visible rather than being papered over.
            head.seq = u64::try_from(seq).unwrap_or(0);
            head.hash = Hash::from_hex(&hash).unwrap_or(Hash::ZERO);
        }
        Ok(head)
    }

    /// Up to `limit` rows of `chain_id` with seq greater than `after`, in seq order.
    pub async fn read_page(
        &self,
        chain_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Result<AuditRecord, Undecodable>>, StoreError> {
        self.settle().await?;
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = on_pool!(&self.backend, pool => {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(chain_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| decode_record!(row))
                .collect::<Vec<_>>()
        });
        Ok(rows)
    }

    /// Records across chains matching `q`, ordered by time then chain and seq.
    pub async fn query(
        &self,
        q: &Query,
    ) -> Result<Vec<Result<AuditRecord, Undecodable>>, StoreError> {
        self.settle().await?;
        let rows = on_pool!(&self.backend, pool => {
            let mut b = QueryBuilder::new(format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE 1 = 1"));
            if let Some(since) = q.since_us {
                b.push(" AND time_us >= ").push_bind(since);
            }
            if let Some(until) = q.until_us {
                b.push(" AND time_us < ").push_bind(until);
            }
            if let Some(agent) = &q.agent {
                b.push(" AND agent = ").push_bind(agent.clone());
            }
            if let Some(tool) = &q.tool {
                b.push(" AND tool = ").push_bind(tool.clone());
            }
            if let Some((time_us, chain, seq)) = &q.after {
                b.push(" AND (time_us, chain_id, seq) > (")
                    .push_bind(*time_us)
                    .push(", ")
                    .push_bind(chain.clone())
                    .push(", ")
                    .push_bind(*seq)
                    .push(")");
            }
            let dir = if q.latest { "DESC" } else { "ASC" };
            b.push(format!(" ORDER BY time_us {dir}, chain_id {dir}, seq {dir}"));
            if let Some(limit) = q.limit {
                b.push(" LIMIT ").push_bind(limit);
            }
            b.build().fetch_all(pool).await?.iter().map(|row| decode_record!(row)).collect::<Vec<_>>()
        });
        let mut rows = rows;
        if q.latest {
            rows.reverse();
        }
        Ok(rows)
    }

    /// The checkpoints of `chain_id` in seq order; rows that cannot be read are returned as
    /// problems.
    pub async fn checkpoints(
        &self,
        chain_id: &str,
    ) -> Result<(Vec<Checkpoint>, Vec<Problem>), StoreError> {
        self.signed_heads("audit_checkpoints", chain_id).await
    }

    /// The retention tombstones of `chain_id` in seq order (the last one counts).
    pub async fn tombstones(
        &self,
        chain_id: &str,
    ) -> Result<(Vec<Checkpoint>, Vec<Problem>), StoreError> {
        self.signed_heads("audit_tombstones", chain_id).await
    }

    async fn signed_heads(
        &self,
        table: &'static str,
        chain_id: &str,
    ) -> Result<(Vec<Checkpoint>, Vec<Problem>), StoreError> {
        self.settle().await?;
        let sql = format!(
            "SELECT seq, head_hash, time_us, key_id, signature FROM {table} \
             WHERE chain_id = $1 ORDER BY seq, key_id"
        );
        let rows: Vec<(i64, String, i64, String, String)> = on_pool!(&self.backend, pool => {
            sqlx::query_as(AssertSqlSafe(sql.clone())).bind(chain_id).fetch_all(pool).await?
        });
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (seq, head, time_us, key_id, signature) in rows {
            match (u64::try_from(seq), Hash::from_hex(&head)) {
                (Ok(seq_u), Some(head_hash)) => out.push(Checkpoint {
                    chain_id: chain_id.to_owned(),
                    seq: seq_u,
                    head_hash,
                    time_us,
                    key_id,
                    signature,
                }),
                _ => problems.push(Problem::Undecodable {
                    seq,
                    reason: format!("{table} row with a negative seq or a malformed head hash"),
                }),
            }
        }
        Ok((out, problems))
    }

    /// Appends records (and optionally a checkpoint) atomically ([`write_batch`] on a
    /// connection of the pool).
    pub async fn insert(
        &self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let mut conn = WriterConn::acquire(&self.backend).await?;
        write_batch(&mut conn, records, checkpoint).await
    }

    /// Retention: deletes the records of `chain_id` older than `before_us` (the oldest prefix
    /// of the chain, up to the first record at or after `before_us`), behind a tombstone signed
    /// by `signer`, in one transaction with the deletion. Checkpoints inside the deleted prefix
    /// go too; older tombstones are superseded. Returns the tombstone, or None when nothing is
    /// old enough. Without a signer nothing is deleted ([`StoreError::NoSigner`]).
    ///
    /// Safe next to a running writer of the same chain: it only removes records below the
    /// first young one, and the writer appends above the head.
    pub async fn apply_retention(
        &self,
        chain_id: &str,
        before_us: i64,
        signer: Option<&SigningKeyFile>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        self.settle().await?;
        let signer = signer.ok_or(StoreError::NoSigner)?;
        let first_young: Option<i64> = on_pool!(&self.backend, pool => {
            sqlx::query_scalar("SELECT MIN(seq) FROM audit_records WHERE chain_id = $1 AND time_us >= $2")
                .bind(chain_id)
                .bind(before_us)
                .fetch_one(pool)
                .await?
        });
        let through: Option<i64> = match first_young {
            Some(seq) => Some(seq - 1),
            None => on_pool!(&self.backend, pool => {
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_records WHERE chain_id = $1")
                    .bind(chain_id)
                    .fetch_one(pool)
                    .await?
            }),
        };
        let Some(through) = through.filter(|s| *s > 0) else {
            return Ok(None);
        };
        let head: Option<String> = on_pool!(&self.backend, pool => {
            sqlx::query_scalar("SELECT hash FROM audit_records WHERE chain_id = $1 AND seq = $2")
                .bind(chain_id)
                .bind(through)
                .fetch_optional(pool)
                .await?
        });
        // The record at the boundary is gone: an earlier run already deleted this prefix.
        let Some(head) = head.and_then(|h| Hash::from_hex(&h)) else {
            return Ok(None);
        };
        let seq = u64::try_from(through).map_err(|_| StoreError::Range("seq"))?;
        let tombstone = signer.sign_tombstone(chain_id, seq, head, now_us());
        on_pool!(&self.backend, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO audit_tombstones (chain_id, seq, head_hash, time_us, key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(chain_id)
            .bind(through)
            .bind(tombstone.head_hash.to_hex())
            .bind(tombstone.time_us)
            .bind(tombstone.key_id.clone())
            .bind(tombstone.signature.clone())
            .execute(&mut *tx)
            .await?;
            for sql in [
                "DELETE FROM audit_records WHERE chain_id = $1 AND seq <= $2",
                "DELETE FROM audit_checkpoints WHERE chain_id = $1 AND seq <= $2",
                "DELETE FROM audit_tombstones WHERE chain_id = $1 AND seq < $2",
            ] {
                sqlx::query(sql).bind(chain_id).bind(through).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(Some(tombstone))
    }

    /// Verifies every chain in the store against its checkpoints.
    pub async fn verify(&self, ring: &KeyRing) -> Result<Vec<Report>, StoreError> {
        let mut reports = Vec::new();
        for chain in self.chains().await? {
            reports.push(self.verify_chain(&chain, ring).await?);
        }
        Ok(reports)
    }

    /// Verifies one chain, paging through its records.
    pub async fn verify_chain(&self, chain_id: &str, ring: &KeyRing) -> Result<Report, StoreError> {
        const PAGE: i64 = 5_000;
        let (checkpoints, mut bad_rows) = self.checkpoints(chain_id).await?;
        let (tombstones, bad_tombstones) = self.tombstones(chain_id).await?;
        bad_rows.extend(bad_tombstones);
        let mut verifier = Verifier::with_tombstones(chain_id, &checkpoints, &tombstones, ring);
        let mut after = i64::MIN;
        loop {
            let page = self.read_page(chain_id, after, PAGE).await?;
            let n = page.len();
            let mut last = after;
            for row in page {
                let seq = match &row {
                    Ok(r) => i64::try_from(r.seq).unwrap_or(i64::MAX),
                    Err(u) => u.seq,
                };
                last = last.max(seq);
                verifier.push(row);
            }
            if i64::try_from(n).unwrap_or(i64::MAX) < PAGE || last == after {
                break;
            }
            after = last;
        }
        let mut report = verifier.finish();
        if !bad_rows.is_empty() {
            report.problems.extend(bad_rows);
            report.problems.sort_by_key(Problem::position);
        }
        Ok(report)
    }
}

/// A connection held by a writer (one acquire, not one per batch).
#[derive(Debug)]
pub(crate) enum WriterConn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl WriterConn {
    pub(crate) async fn acquire(backend: &Backend) -> Result<Self, StoreError> {
        Ok(match backend {
            Backend::Sqlite(pool) => Self::Sqlite(pool.acquire().await?),
            Backend::Postgres(pool) => Self::Postgres(pool.acquire().await?),
        })
    }
}

/// Writes `records` and `checkpoint` atomically on `conn`: one multi-row `INSERT` in autocommit
/// (atomic by itself) when there is no checkpoint and the records fit one statement, which is
/// one round trip to the database; otherwise one transaction.
pub(crate) async fn write_batch(
    conn: &mut WriterConn,
    records: &[AuditRecord],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), StoreError> {
    let mut encoded = Vec::with_capacity(records.len());
    for r in records {
        encoded.push(Encoded::new(r)?);
    }
    let cp_seq = match checkpoint {
        Some(cp) => Some(i64::try_from(cp.seq).map_err(|_| StoreError::Range("checkpoint seq"))?),
        None => None,
    };
    let one_statement = checkpoint.is_none() && encoded.len() <= ROWS_PER_INSERT;
    macro_rules! write_on {
        ($exec:expr, $placeholders:expr) => {{
            let mut rest = encoded.into_iter().peekable();
            while rest.peek().is_some() {
                let n = rest.len().min(ROWS_PER_INSERT);
                let mut q = sqlx::query(insert_records_sql(n, $placeholders));
                for e in rest.by_ref().take(n) {
                    q = q
                        .bind(e.chain_id)
                        .bind(e.seq)
                        .bind(e.prev_hash)
                        .bind(e.hash)
                        .bind(e.time_us)
                        .bind(e.kind);
                    for text in e.text {
                        q = q.bind(text);
                    }
                    q = q
                        .bind(e.findings)
                        .bind(e.outcome)
                        .bind(e.error_code)
                        .bind(e.latency_us)
                        .bind(e.bytes_in)
                        .bind(e.bytes_out);
                }
                q.execute($exec).await?;
            }
            if let (Some(cp), Some(seq)) = (checkpoint, cp_seq) {
                sqlx::query(INSERT_CHECKPOINT)
                    .bind(cp.chain_id.clone())
                    .bind(seq)
                    .bind(cp.head_hash.to_hex())
                    .bind(cp.time_us)
                    .bind(cp.key_id.clone())
                    .bind(cp.signature.clone())
                    .execute($exec)
                    .await?;
            }
        }};
    }
    match conn {
        WriterConn::Sqlite(conn) if one_statement => write_on!(&mut **conn, Placeholders::Question),
        WriterConn::Postgres(conn) if one_statement => {
            write_on!(&mut **conn, Placeholders::Dollar)
        }
        WriterConn::Sqlite(conn) => {
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            write_on!(&mut *tx, Placeholders::Question);
            tx.commit().await?;
        }
        WriterConn::Postgres(conn) => {
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            write_on!(&mut *tx, Placeholders::Dollar);
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The checkpoint insert.
const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints \
     (chain_id, seq, head_hash, time_us, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)";

/// Batches up to this many records reuse a prebuilt statement text (the common sizes on the
/// data plane); larger ones build theirs. Either way the driver caches the prepared statement
/// per connection by its text.
const PREBUILT_INSERTS: usize = 32;

/// Bind placeholders of a dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    /// SQLite: anonymous `?`, bound by position. (Numbered `$N` work too, but SQLite looks a
    /// named parameter up by a linear scan, which made a 200-row insert quadratic.)
    Question,
    /// PostgreSQL: `$1`, `$2`, ...
    Dollar,
}

/// `INSERT INTO audit_records (...) VALUES (...), ...` for `n` rows.
fn insert_records_sql(
    n: usize,
    placeholders: Placeholders,
) -> AssertSqlSafe<std::borrow::Cow<'static, str>> {
    static PREBUILT: [OnceLock<Vec<String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let build = |n: usize| {
        let columns = RECORD_COLUMNS.split(',').count();
        let mut sql = format!("INSERT INTO audit_records ({RECORD_COLUMNS}) VALUES ");
        for row in 0..n {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for col in 0..columns {
                if col > 0 {
                    sql.push_str(", ");
                }
                match placeholders {
                    Placeholders::Question => sql.push('?'),
                    Placeholders::Dollar => {
                        sql.push('$');
                        sql.push_str(&(row * columns + col + 1).to_string());
                    }
                }
            }
            sql.push(')');
        }
        sql
    };
    AssertSqlSafe(if (1..=PREBUILT_INSERTS).contains(&n) {
        let prebuilt = PREBUILT[usize::from(placeholders == Placeholders::Dollar)]
            .get_or_init(|| (1..=PREBUILT_INSERTS).map(build).collect());
        std::borrow::Cow::Borrowed(prebuilt[n - 1].as_str())
    } else {
        std::borrow::Cow::Owned(build(n))
    })
}

/// A record as bind values.
pub(crate) struct Encoded {
    pub(crate) chain_id: String,
    pub(crate) seq: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    pub(crate) time_us: i64,
    pub(crate) kind: &'static str,
    /// trace_id, agent, user_id, token_id, session, client_era, upstream_era, server, method,
    /// tool, args_fingerprint, decision, rule_id, approval_ref.
    pub(crate) text: [Option<String>; 14],
    pub(crate) findings: String,
    pub(crate) outcome: Option<&'static str>,
    pub(crate) error_code: Option<i64>,
    pub(crate) latency_us: Option<i64>,
    pub(crate) bytes_in: Option<i64>,
    pub(crate) bytes_out: Option<i64>,
}

impl Encoded {
    pub(crate) fn new(r: &AuditRecord) -> Result<Self, StoreError> {
        let e = &r.event;
        let (outcome, error_code) = outcome_columns(e.outcome);
        Ok(Self {
            chain_id: r.chain_id.clone(),
            seq: i64::try_from(r.seq).map_err(|_| StoreError::Range("seq"))?,
            prev_hash: r.prev_hash.to_hex(),
            hash: r.hash.to_hex(),
            time_us: e.time_us,
            kind: e.kind.as_str(),
            text: [
                e.trace_id.clone(),
                e.principal.agent.clone(),
                e.principal.user.clone(),
                e.principal.token_id.clone(),
                e.session.clone(),
                e.client_era.clone(),
                e.upstream_era.clone(),
                e.server.clone(),
                e.method.clone(),
                e.tool.clone(),
                e.args_fingerprint.clone(),
                e.decision.clone(),
                e.rule_id.clone(),
                e.approval_ref.clone(),
            ],
            findings: findings_column(&e.findings),
            outcome,
            error_code,
            latency_us: e.latency_us,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
        })
    }
}

/// The `findings` column: canonical JSON of the list (`[]` without findings, the common case).
pub(crate) fn findings_column(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "[]".to_owned();
    }
    let mut out = Vec::new();
    crate::record::canonical_json(
        &serde_json::to_value(findings).unwrap_or(serde_json::Value::Array(Vec::new())),
        &mut out,
    );
    String::from_utf8(out).unwrap_or_default()
}

/// The `outcome` and `error_code` columns.
pub(crate) fn outcome_columns(outcome: Option<Outcome>) -> (Option<&'static str>, Option<i64>) {
    match outcome {
        None => (None, None),
        Some(Outcome::Ok) => (Some("ok"), None),
        Some(Outcome::Error { code }) => (Some("error"), Some(code)),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Loading checkpoint keys from files and the environment (the IO around
/// [`SigningKeyFile::parse`] and [`KeyRing::add_text`]).
pub mod keys {
    use super::*;

    /// The environment variable holding the signing key (PEM or 64 hex digits).
    pub const ENV: &str = "PORTCULLIS_AUDIT_KEY";

    /// Reads a signing key from `file`, or else from [`ENV`]; `Ok(None)` when neither is set.
    pub fn load_signer(file: Option<&Path>) -> Result<Option<SigningKeyFile>, KeyError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return SigningKeyFile::parse(&text).map(Some);
        }
        match std::env::var(ENV) {
            Ok(text) => SigningKeyFile::parse(&text).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(KeyError::Read {
                what: ENV.into(),
                reason: e.to_string(),
            }),
        }
    }

    /// Reads trusted keys (private or public PEM, or hex seed) from `file`, or else from [`ENV`].
    pub fn load_ring(file: Option<&Path>) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?;
            ring.add_text(&text)?;
        } else if let Ok(text) = std::env::var(ENV) {
            ring.add_text(&text)?;
        }
        Ok(ring)
    }
}

pub use crate::writer::{
    AppendError, Appended, AuditWriter, PendingAppend, QueueFull, WriterConfig,
};
