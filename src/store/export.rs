//! What a migration between stores reads: [`Export`], every record of a kind, a
//! page at a time in a stable order, so that `crate::migrate` copies a whole store
//! through [`crate::store::Storage`] (of which it is a part). Alert jobs are read
//! with `Storage::jobs`.

use uuid::Uuid;

use super::error::StoreError;
use crate::model::{AuditEntry, KeyHash, KeyRecord, OperatorMessage, RetiredSecret};

/// Every record of a kind, a page at a time (part of every store).
pub trait Export {
    /// How many records of each kind are stored.
    fn export_counts(&self) -> Result<RecordCounts, StoreError>;

    /// Up to `limit` key records with ids above `after` (all without it), in id order.
    fn export_keys(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<KeyRecord>, StoreError>;

    /// Up to `limit` audit entries with a `seq` above `after`, oldest first.
    fn export_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Up to `limit` retired secrets with keyed hashes above `after` (all without
    /// it), in hash order.
    fn export_retired(
        &self,
        after: Option<KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError>;

    /// Up to `limit` operator messages with ids above `after`, oldest first.
    fn export_messages(&self, after: u64, limit: usize)
        -> Result<Vec<OperatorMessage>, StoreError>;
}

/// How many records of each kind a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Key records (every state, removed ones included).
    pub keys: u64,
    /// Audit entries.
    pub audit: u64,
    /// Alert jobs (every state).
    pub jobs: u64,
    /// Operator messages.
    pub messages: u64,
    /// Retired secrets.
    pub retired: u64,
}

impl RecordCounts {
    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for RecordCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} keys, {} audit entries, {} alert jobs, {} operator messages, {} retired secrets",
            self.keys, self.audit, self.jobs, self.messages, self.retired
        )
    }
}
