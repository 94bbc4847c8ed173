//! [`Export`] on PostgreSQL: every record of a kind, a page at a time in
//! primary-key order.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{corrupt, decode, int, pg, uint, PostgresStore};
use crate::model::{AuditEntry, KeyHash, KeyRecord, OperatorMessage, RetiredSecret};
use crate::store::error::StoreError;
use crate::store::export::{Export, RecordCounts};

fn page_size(limit: usize) -> i64 {
    int(u64::try_from(limit).unwrap_or(u64::MAX))
}

/// The rows of one page.
fn rows(
    store: &PostgresStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    store.run(async |c| c.query(sql, params).await.map_err(pg))
}

/// The rows of one page whose first column is a record of `table`, decoded.
fn records<T: serde::de::DeserializeOwned>(
    store: &PostgresStore,
    table: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<T>, StoreError> {
    rows(store, sql, params)?
        .into_iter()
        .map(|r| decode(table, r.get(0)))
        .collect()
}

impl Export for PostgresStore {
    fn export_counts(&self) -> Result<RecordCounts, StoreError> {
        let row = self.run(async |c| {
            c.query_one(
                "SELECT (SELECT COUNT(*) FROM keys), (SELECT COUNT(*) FROM audit),
                    (SELECT COUNT(*) FROM alert_jobs), (SELECT COUNT(*) FROM operator_messages),
                    (SELECT COUNT(*) FROM retired_secrets)",
                &[],
            )
            .await
            .map_err(pg)
        })?;
        Ok(RecordCounts {
            keys: uint(row.get(0)),
            audit: uint(row.get(1)),
            jobs: uint(row.get(2)),
            messages: uint(row.get(3)),
            retired: uint(row.get(4)),
        })
    }

    fn export_keys(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        records(
            self,
            "keys",
            "SELECT record FROM keys WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
            &[&after, &page_size(limit)],
        )
    }

    fn export_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        rows(
            self,
            "SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&int(after), &page_size(limit)],
        )?
        .iter()
        .map(super::audit_entry)
        .collect()
    }

    fn export_retired(
        &self,
        after: Option<KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError> {
        let after = after.as_ref().map(|h| h.as_slice());
        rows(
            self,
            "SELECT hash, entry FROM retired_secrets WHERE $1::bytea IS NULL OR hash > $1
             ORDER BY hash LIMIT $2",
            &[&after, &page_size(limit)],
        )?
        .into_iter()
        .map(|r| {
            let hash: &[u8] = r.get(0);
            let hash: KeyHash = hash.try_into().map_err(|e| corrupt("retired_secrets", e))?;
            Ok((hash, decode("retired_secrets", r.get(1))?))
        })
        .collect()
    }

    fn export_messages(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        records(
            self,
            "operator_messages",
            "SELECT message FROM operator_messages WHERE id > $1 ORDER BY id LIMIT $2",
            &[&int(after), &page_size(limit)],
        )
    }
}
