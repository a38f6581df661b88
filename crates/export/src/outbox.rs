//! The outbox: the audit table itself, read in seq order per chain.
//!
//! Records are append-only and numbered per chain without gaps, so "everything after seq N of
//! chain C" is a complete, ordered, restartable description of what a sink has not seen. No
//! second copy of the records is kept, nothing is queued in memory: a sink holds at most one
//! page (its `batch_size`) however long its receiver is down.

use portcullis_audit::store::{AuditStore, Backend, StoreError};

use crate::format::ExportItem;

/// Runs `$body` with `$pool` bound to the audit store's pool (one query text, two drivers).
macro_rules! on_audit_pool {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// The newest record of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub time_us: i64,
}

/// Read access to the audit table for export.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: AuditStore,
}

impl Outbox {
    pub fn new(store: AuditStore) -> Self {
        Outbox { store }
    }

    /// Every chain with records, in order. A loose index scan over the primary key (one probe
    /// per chain), so it stays cheap however many records the chains hold.
    pub async fn chains(&self) -> Result<Vec<String>, StoreError> {
        let sql = "WITH RECURSIVE c(id) AS ( \
                     SELECT MIN(chain_id) FROM audit_records \
                     UNION ALL \
                     SELECT (SELECT MIN(chain_id) FROM audit_records WHERE chain_id > c.id) FROM c WHERE c.id IS NOT NULL \
                   ) SELECT id FROM c WHERE id IS NOT NULL";
        let chains = on_audit_pool!(self.store.backend(), pool => {
            sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await?
        });
        Ok(chains)
    }

    /// The newest record of `chain`, if it has any.
    pub async fn head(&self, chain: &str) -> Result<Option<Head>, StoreError> {
        let sql =
            "SELECT seq, time_us FROM audit_records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1";
        let row: Option<(i64, i64)> = on_audit_pool!(self.store.backend(), pool => {
            sqlx::query_as(sql).bind(chain).fetch_optional(pool).await?
        });
        Ok(row.map(|(seq, time_us)| Head { seq, time_us }))
    }

    /// The time of the first record of `chain` after `seq` (the oldest one not yet delivered).
    pub async fn time_after(&self, chain: &str, seq: i64) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT time_us FROM audit_records WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT 1";
        let time = on_audit_pool!(self.store.backend(), pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(chain).bind(seq).fetch_optional(pool).await?
        });
        Ok(time)
    }

    /// Up to `limit` rows of `chain` after `seq`, in seq order.
    pub async fn page(
        &self,
        chain: &str,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<ExportItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .store
            .read_page(chain, seq, limit)
            .await?
            .into_iter()
            .map(|row| ExportItem::from_row(chain, row))
            .collect())
    }
}
