//! Delivery cursors: per sink and chain, the last seq a receiver acknowledged, persisted in the
//! control-plane store (`export_cursors`, migrated as component `export`).
//!
//! A cursor only moves forward, and only after delivery: a crash between delivery and
//! [`Cursors::advance`] re-sends that batch (at least once), never skips it.
//!
//! Replicas sharing PostgreSQL all run the same sinks; a lease on each row (`owner`,
//! `lease_until_us`) lets one replica at a time export a given chain to a given sink. A replica
//! takes a row whose lease has expired, renews it while it works, and advances only while it
//! still owns it ([`Cursors::advance`] is fenced on the owner), so a replica that stalled past
//! its lease cannot move a cursor another replica now drives.

use portcullis_store::{Migration, Store, StoreError, on_pool};
use sqlx::Row;

/// The `export` component's schema steps (append-only).
pub const MIGRATIONS: &[Migration] = &[Migration {
    sqlite: "CREATE TABLE export_cursors (
        sink           TEXT    NOT NULL,
        chain_id       TEXT    NOT NULL,
        seq            INTEGER NOT NULL,
        updated_us     INTEGER NOT NULL,
        owner          TEXT,
        lease_until_us INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sink, chain_id)
    )",
    postgres: "CREATE TABLE export_cursors (
        sink           TEXT   NOT NULL,
        chain_id       TEXT   NOT NULL,
        seq            BIGINT NOT NULL,
        updated_us     BIGINT NOT NULL,
        owner          TEXT,
        lease_until_us BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (sink, chain_id)
    )",
}];

/// One cursor row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRow {
    /// Last delivered seq (0: nothing yet).
    pub seq: i64,
    /// The replica holding the lease, if any.
    pub owner: Option<String>,
    /// Lease expiry, µs since the epoch.
    pub lease_until_us: i64,
}

/// The cursor table.
#[derive(Debug, Clone)]
pub struct Cursors {
    store: Store,
}

impl Cursors {
    /// Migrates the `export` component and wraps the store.
    pub async fn open(store: Store) -> Result<Self, StoreError> {
        store.migrate("export", MIGRATIONS).await?;
        Ok(Cursors { store })
    }

    /// The row of `(sink, chain)`, if any.
    pub async fn get(&self, sink: &str, chain: &str) -> Result<Option<CursorRow>, StoreError> {
        let sql = "SELECT seq, owner, lease_until_us FROM export_cursors WHERE sink = $1 AND chain_id = $2";
        let row = on_pool!(self.store.backend(), pool => {
            sqlx::query(sql).bind(sink).bind(chain).fetch_optional(pool).await?
                .map(|r| -> Result<CursorRow, sqlx::Error> {
                    Ok(CursorRow {
                        seq: r.try_get("seq")?,
                        owner: r.try_get("owner")?,
                        lease_until_us: r.try_get("lease_until_us")?,
                    })
                })
        });
        Ok(row.transpose()?)
    }

    /// Takes (or renews) the lease of `(sink, chain)` for `owner` until `until_us`, creating the
    /// row at `initial_seq` if it does not exist. Returns the cursor's seq when `owner` holds the
    /// lease, None when another replica's lease is still valid at `now_us`.
    pub async fn claim(
        &self,
        sink: &str,
        chain: &str,
        owner: &str,
        initial_seq: i64,
        now_us: i64,
        until_us: i64,
    ) -> Result<Option<i64>, StoreError> {
        let insert = "INSERT INTO export_cursors (sink, chain_id, seq, updated_us, owner, lease_until_us) \
                      VALUES ($1, $2, $3, $4, NULL, 0) ON CONFLICT (sink, chain_id) DO NOTHING";
        let take = "UPDATE export_cursors SET owner = $3, lease_until_us = $4 \
                    WHERE sink = $1 AND chain_id = $2 AND (owner = $3 OR owner IS NULL OR lease_until_us < $5)";
        let taken = on_pool!(self.store.backend(), pool => {
            sqlx::query(insert).bind(sink).bind(chain).bind(initial_seq).bind(now_us)
                .execute(pool).await?;
            sqlx::query(take).bind(sink).bind(chain).bind(owner).bind(until_us).bind(now_us)
                .execute(pool).await?.rows_affected()
        });
        if taken == 0 {
            return Ok(None);
        }
        Ok(self.get(sink, chain).await?.map(|row| row.seq))
    }

    /// Moves the cursor of `(sink, chain)` forward to `seq` and renews the lease, if `owner`
    /// still holds it. Returns false when the lease was lost (another replica took over) or
    /// the cursor is already at or past `seq`.
    pub async fn advance(
        &self,
        sink: &str,
        chain: &str,
        owner: &str,
        seq: i64,
        now_us: i64,
        until_us: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE export_cursors SET seq = $3, updated_us = $4, lease_until_us = $5 \
                   WHERE sink = $1 AND chain_id = $2 AND owner = $6 AND seq < $3";
        let n = on_pool!(self.store.backend(), pool => {
            sqlx::query(sql).bind(sink).bind(chain).bind(seq).bind(now_us).bind(until_us).bind(owner)
                .execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Gives up the lease of `(sink, chain)` if `owner` holds it (clean shutdown: another
    /// replica may take over at once).
    pub async fn release(&self, sink: &str, chain: &str, owner: &str) -> Result<(), StoreError> {
        let sql = "UPDATE export_cursors SET owner = NULL, lease_until_us = 0 \
                   WHERE sink = $1 AND chain_id = $2 AND owner = $3";
        on_pool!(self.store.backend(), pool => {
            sqlx::query(sql).bind(sink).bind(chain).bind(owner).execute(pool).await?;
        });
        Ok(())
    }
}
