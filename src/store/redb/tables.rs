//! What the redb store's files share: the `keys` table, the JSON encoding of
//! records, and how redb's errors become [`StoreError`]s.

use redb::{ReadableTable, TableDefinition};
use uuid::Uuid;

use crate::store::error::{BoxError, EarlierWriteFailed, StoreError};

/// Key id → JSON [`crate::model::KeyRecord`].
pub(super) const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("keys");

/// The cause to keep of a redb storage failure: the I/O error itself when there
/// is one, so [`StoreError::disk_problem`] can tell a full or read-only disk.
pub(super) fn cause(e: redb::StorageError) -> BoxError {
    match e {
        redb::StorageError::Io(io) => Box::new(io),
        redb::StorageError::PreviousIo => Box::new(EarlierWriteFailed),
        e => Box::new(e),
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        StoreError::Transaction(match e {
            redb::TransactionError::Storage(s) => cause(s),
            e => Box::new(e),
        })
    }
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        StoreError::Table(match e {
            redb::TableError::Storage(s) => cause(s),
            e => Box::new(e),
        })
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        StoreError::Storage(cause(e))
    }
}

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        StoreError::Commit(match e {
            redb::CommitError::Storage(s) => cause(s),
            e => Box::new(e),
        })
    }
}

/// A record as stored: JSON, so fields can be added without a migration.
pub(super) fn encode<T: serde::Serialize>(
    table: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { table, source })
}

/// The owner of key `id` as stored, if it is; only the owner is decoded.
pub(super) fn owner_of(
    keys: &impl ReadableTable<u128, &'static [u8]>,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    /// serde skips the rest of the record.
    #[derive(serde::Deserialize)]
    struct OwnerOnly {
        owner: String,
    }
    keys.get(id.as_u128())?
        .map(|v| decode::<OwnerOnly>("keys", v.value()).map(|r| r.owner))
        .transpose()
}

#[cfg(test)]
thread_local! {
    /// Records decoded by this thread: what the paging tests count.
    pub(crate) static DECODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    #[cfg(test)]
    DECODES.with(|d| d.set(d.get() + 1));
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        source: Box::new(e),
    })
}

/// Owners of the keys a change writes, by id.
pub(super) type Owners = std::collections::HashMap<uuid::Uuid, String>;
