//! [`Export`] on redb: every record of a kind, a page at a time in key order, each
//! page in its own read transaction.

use std::ops::Bound;

use redb::{ReadableTableMetadata, TableDefinition};
use uuid::Uuid;

use super::jobs::{JOBS, MESSAGES};
use super::tables::{decode, KEYS};
use super::{RedbStore, AUDIT, RETIRED};
use crate::model::{AuditEntry, KeyHash, KeyRecord, OperatorMessage, RetiredSecret};
use crate::store::error::StoreError;
use crate::store::export::{Export, RecordCounts, Snapshot, SnapshotInfo};

/// Up to `limit` records of `table` with keys above `after`, decoded.
fn page<K, T>(
    db: &super::reopen::Db,
    table: TableDefinition<K, &[u8]>,
    after: Option<K::SelfType<'_>>,
    limit: usize,
    each: impl Fn(K::SelfType<'_>, &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError>
where
    K: redb::Key + 'static,
{
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::with_capacity(limit.min(4096));
    for row in table.range::<K::SelfType<'_>>((from, Bound::Unbounded))? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        out.push(each(k.value(), v.value())?);
    }
    Ok(out)
}

impl Export for RedbStore {
    fn export_counts(&self) -> Result<RecordCounts, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(RecordCounts {
            keys: txn.open_table(KEYS)?.len()?,
            audit: txn.open_table(AUDIT)?.len()?,
            jobs: txn.open_table(JOBS)?.len()?,
            messages: txn.open_table(MESSAGES)?.len()?,
            retired: txn.open_table(RETIRED)?.len()?,
        })
    }

    fn export_keys(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        let after = after.map(|a| a.as_u128());
        page(&self.db, KEYS, after, limit, |_, v| decode("keys", v))
    }

    fn export_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        page(&self.db, AUDIT, Some(after), limit, |_, v| {
            decode("audit", v)
        })
    }

    fn export_retired(
        &self,
        after: Option<KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError> {
        let after = after.as_ref().map(|h| h.as_slice());
        page(&self.db, RETIRED, after, limit, |k, v| {
            let hash: KeyHash = k.try_into().map_err(|e| StoreError::Corrupt {
                table: "retired_secrets",
                source: Box::new(e),
            })?;
            Ok((hash, decode("retired_secrets", v)?))
        })
    }

    fn export_messages(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        page(&self.db, MESSAGES, Some(after), limit, |_, v| {
            decode("operator_messages", v)
        })
    }

    fn snapshot(&self, info: SnapshotInfo) -> Result<Snapshot, StoreError> {
        self.take_snapshot(info)
    }
}
