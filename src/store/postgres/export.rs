//! The export methods of [`Storage`](crate::store::Storage) on PostgreSQL: every
//! record of a kind, a page at a time in primary-key order.

use uuid::Uuid;

use super::{decode, int, pg, uint, PostgresStore};
use crate::model::{AuditEntry, KeyHash, KeyRecord, OperatorMessage, RetiredSecret};
use crate::store::error::StoreError;
use crate::store::export::RecordCounts;

fn page_size(limit: usize) -> i64 {
    int(u64::try_from(limit).unwrap_or(u64::MAX))
}

pub(super) fn counts(store: &PostgresStore) -> Result<RecordCounts, StoreError> {
    let row = store.run(async |c| {
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

pub(super) fn keys(
    store: &PostgresStore,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<KeyRecord>, StoreError> {
    let rows = store.run(async |c| {
        c.query(
            "SELECT record FROM keys WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
            &[&after, &page_size(limit)],
        )
        .await
        .map_err(pg)
    })?;
    rows.into_iter().map(|r| decode("keys", r.get(0))).collect()
}

pub(super) fn audit(
    store: &PostgresStore,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = store.run(async |c| {
        c.query(
            "SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&int(after), &page_size(limit)],
        )
        .await
        .map_err(pg)
    })?;
    rows.iter().map(super::audit_entry).collect()
}

pub(super) fn retired(
    store: &PostgresStore,
    after: Option<KeyHash>,
    limit: usize,
) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError> {
    let after = after.as_ref().map(|h| h.as_slice());
    let rows = store.run(async |c| {
        c.query(
            "SELECT hash, entry FROM retired_secrets WHERE $1::bytea IS NULL OR hash > $1
                 ORDER BY hash LIMIT $2",
            &[&after, &page_size(limit)],
        )
        .await
        .map_err(pg)
    })?;
    rows.into_iter()
        .map(|r| {
            let hash: &[u8] = r.get(0);
            let hash: KeyHash = hash.try_into().map_err(|e| StoreError::Corrupt {
                table: "retired_secrets",
                source: Box::new(e),
            })?;
            Ok((hash, decode("retired_secrets", r.get(1))?))
        })
        .collect()
}

pub(super) fn messages(
    store: &PostgresStore,
    after: u64,
    limit: usize,
) -> Result<Vec<OperatorMessage>, StoreError> {
    let rows = store.run(async |c| {
        c.query(
            "SELECT message FROM operator_messages WHERE id > $1 ORDER BY id LIMIT $2",
            &[&int(after), &page_size(limit)],
        )
        .await
        .map_err(pg)
    })?;
    rows.into_iter()
        .map(|r| decode("operator_messages", r.get(0)))
        .collect()
}
