//! What a migration between stores reads: [`Export`], every record of a kind, a
//! page at a time in a stable order, so that `crate::migrate` copies a whole store
//! through [`crate::store::Storage`] (of which it is a part). Alert jobs are read
//! with `Storage::jobs`. A backup reads it too: [`Export::snapshot`], the whole
//! store as of one moment, in a file of the store's own format.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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

    /// A consistent copy of every record as of one moment, taken while the store
    /// keeps serving writes: a fresh database of the store's own format in an
    /// unnamed file (gone when closed), read from its start, with `info` (its counts
    /// filled in) recorded in it. A store that cannot refuses with
    /// [`StoreError::Unsupported`].
    fn snapshot(&self, info: SnapshotInfo) -> Result<Snapshot, StoreError> {
        let _ = info;
        Err(StoreError::Unsupported(
            "apikeyctl backup copies the embedded redb database, and this daemon keeps its records in PostgreSQL: back that database up with pg_dump (it takes a consistent snapshot while apikeyd runs) and keep the server secret with it".into(),
        ))
    }
}

/// What a snapshot says about itself, recorded inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Always [`SNAPSHOT_FORMAT`]: what tells a snapshot from any other database.
    pub format: String,
    /// When the snapshot's read began.
    pub taken_at: DateTime<Utc>,
    /// The apikeyd version that took it.
    pub apikeyd: String,
    /// The keyed hash (hex) of a fixed text under the server secret the records
    /// were written with: a restore under another secret is refused (every key
    /// would verify as NOT_FOUND). It reveals nothing of the secret.
    pub secret_fingerprint: String,
    /// What the snapshot holds.
    pub counts: RecordCounts,
}

/// What [`SnapshotInfo::format`] says, with the version of the layout.
pub const SNAPSHOT_FORMAT: &str = "apikeyd-snapshot-1";

impl SnapshotInfo {
    /// A snapshot to be taken now (the store fills in the counts).
    pub fn new(taken_at: DateTime<Utc>, secret_fingerprint: &[u8]) -> Self {
        Self {
            format: SNAPSHOT_FORMAT.to_owned(),
            taken_at,
            apikeyd: env!("CARGO_PKG_VERSION").to_owned(),
            secret_fingerprint: hex::encode(secret_fingerprint),
            counts: RecordCounts::default(),
        }
    }
}

/// A snapshot taken by [`Export::snapshot`].
#[derive(Debug)]
pub struct Snapshot {
    /// The database, unnamed, positioned at its start.
    pub file: std::fs::File,
    /// Its length in bytes.
    pub bytes: u64,
    /// What it says about itself.
    pub info: SnapshotInfo,
}

/// How many records of each kind a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
