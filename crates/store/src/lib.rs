//! The control-plane store: the state that must survive restarts and be shared by replicas
//! (kill switches, task tokens, tool pins, approvals), in the same database as the audit trail
//! (`storage:` in the config) — embedded SQLite by default, PostgreSQL for several replicas.
//!
//! Each component owns its tables and a list of migration steps ([`Migration`]); [`Store::migrate`]
//! applies the steps a database has not seen yet, recorded per component in `portcullis_schema`
//! (the audit trail keeps its own sqlx migrations). Steps are append-only: never edit one that
//! shipped, add the next.
//!
//! Queries are written once for both backends with [`on_pool!`] (both drivers accept `$N`
//! placeholders), so SQLite and PostgreSQL cannot drift.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("storage: unsupported URL scheme in {0:?} (use sqlite://PATH or postgres://...)")]
    Url(String),
    /// The database refused or is unreachable.
    #[error("storage: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration step failed; names the component and step.
    #[error("storage: migration {component} step {version} failed: {source}")]
    Migration {
        component: &'static str,
        version: usize,
        source: sqlx::Error,
    },
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
#[macro_export]
macro_rules! on_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}

/// One schema step of a component, in both dialects (they usually differ only in integer types
/// and `AUTOINCREMENT` vs `GENERATED`).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// A connected control-plane store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing; WAL, synchronous FULL),
    /// `sqlite::memory:` or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_in_schema(url, None).await
    }

    /// Like [`Store::connect`]; on PostgreSQL every connection uses `schema` (created if missing)
    /// as its `search_path`. Tests use this to isolate runs.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:");
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(if memory {
                    SqliteJournalMode::Memory
                } else {
                    SqliteJournalMode::Wal
                })
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            // An in-memory database exists per connection: keep exactly one.
            let max = if memory { 1 } else { 4 };
            Backend::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
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
        Ok(Store { backend })
    }

    /// The pool (use with [`on_pool!`]).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Is this the PostgreSQL backend (shared by replicas)?
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Applies the steps of `component` that this database has not applied yet, each in its own
    /// transaction together with its bookkeeping row. Safe to call from several replicas at
    /// once: a concurrent duplicate fails on the bookkeeping primary key and is retried.
    pub async fn migrate(
        &self,
        component: &'static str,
        steps: &[Migration],
    ) -> Result<(), StoreError> {
        const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS portcullis_schema (\
             component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))";
        on_pool!(&self.backend, pool => {
            sqlx::query(BOOKKEEPING).execute(pool).await?;
        });
        for attempt in 0..3 {
            match self.apply_pending(component, steps).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < 2 => {
                    tracing::debug!(component, %error, "migration raced another replica; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn apply_pending(
        &self,
        component: &'static str,
        steps: &[Migration],
    ) -> Result<(), StoreError> {
        let applied: i64 = on_pool!(&self.backend, pool => {
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM portcullis_schema WHERE component = $1")
                .bind(component)
                .fetch_one(pool)
                .await?
                .try_get::<i64, _>("v")?
        });
        let applied = usize::try_from(applied).unwrap_or(0);
        for (index, step) in steps.iter().enumerate().skip(applied) {
            let version = index + 1;
            let fail = |source| StoreError::Migration {
                component,
                version,
                source,
            };
            on_pool!(&self.backend, pool => {
                let mut tx = pool.begin().await?;
                let sql = match &self.backend {
                    Backend::Sqlite(_) => step.sqlite,
                    Backend::Postgres(_) => step.postgres,
                };
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await.map_err(fail)?;
                sqlx::query("INSERT INTO portcullis_schema (component, version) VALUES ($1, $2)")
                    .bind(component)
                    .bind(version as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                tx.commit().await?;
            });
        }
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(&self.backend, pool => pool.close().await)
    }
}

/// `"ident"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Test support: a store on a fresh SQLite file and, for the same tests, one on a fresh schema of
/// the real PostgreSQL at `PORTCULLIS_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`).
pub mod testing {
    use super::*;

    /// The PostgreSQL URL tests use.
    pub fn postgres_url() -> String {
        std::env::var("PORTCULLIS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// A store on a new SQLite file inside `dir`.
    pub async fn sqlite(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}", dir.join("store.db").display());
        Store::connect(&url).await.expect("sqlite store")
    }

    /// A store on a new, uniquely named PostgreSQL schema (`prefix` + pid + counter).
    pub async fn postgres(prefix: &str) -> Store {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            unix_now(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Store::connect_in_schema(&postgres_url(), Some(&schema))
            .await
            .expect("postgres store (is PostgreSQL running on 127.0.0.1:5432?)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Migration] = &[
        Migration {
            sqlite: "CREATE TABLE t (a INTEGER NOT NULL)",
            postgres: "CREATE TABLE t (a BIGINT NOT NULL)",
        },
        Migration {
            sqlite: "ALTER TABLE t ADD COLUMN b TEXT",
            postgres: "ALTER TABLE t ADD COLUMN b TEXT",
        },
    ];

    async fn exercise(store: Store) {
        store.migrate("test", &STEPS[..1]).await.unwrap();
        // Re-running is a no-op; a later step is applied on top.
        store.migrate("test", &STEPS[..1]).await.unwrap();
        store.migrate("test", STEPS).await.unwrap();
        on_pool!(store.backend(), pool => {
            sqlx::query("INSERT INTO t (a, b) VALUES ($1, $2)")
                .bind(1i64)
                .bind("x")
                .execute(pool)
                .await
                .unwrap();
        });
        let versions: Vec<i64> = on_pool!(store.backend(), pool => {
            sqlx::query_scalar("SELECT version FROM portcullis_schema WHERE component = 'test' ORDER BY version")
                .fetch_all(pool)
                .await
                .unwrap()
        });
        assert_eq!(versions, vec![1, 2]);
        // A broken step names its component and version and is not recorded.
        let broken = [Migration {
            sqlite: "CREATE TABLE",
            postgres: "CREATE TABLE",
        }];
        let error = store.migrate("broken", &broken).await.unwrap_err();
        assert!(
            error.to_string().contains("migration broken step 1"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn migrations_apply_once_in_order_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        exercise(testing::sqlite(dir.path()).await).await;
    }

    #[tokio::test]
    async fn migrations_apply_once_in_order_on_postgres() {
        exercise(testing::postgres("store_test").await).await;
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused_by_name() {
        let error = Store::connect("mysql://x").await.unwrap_err();
        assert!(error.to_string().contains("mysql://x"));
    }
}
