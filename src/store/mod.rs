//! Storage: everything the domain persists, behind one trait, [`Storage`].
//!
//! [`RedbStore`] (the embedded redb database, the default) implements it, and only
//! `src/store/redb` knows redb; [`MemoryStore`] implements it in memory for unit
//! tests. The services above ([`crate::keys::Keys`], [`crate::alerts::Alerts`]) hold
//! an `Arc<dyn Storage>` and never see a table, a transaction or a byte of JSON.
//!
//! # What a backend promises
//! - Every method may block: callers run them on blocking threads
//!   (`spawn_blocking`) and never on a runtime worker that serves verifications.
//! - [`Storage::commit`] applies a whole [`Change`] (key records, audit entries,
//!   retired secrets, job and message changes) atomically and durably, or nothing
//!   of it: a key and its alert job never disagree on disk.
//! - Loading at start ([`Storage::load_keys`]) yields typed rows ([`KeyRow`]); any
//!   decoding of the backend's format stays inside the backend.
//! - Listings (audit, jobs) are filtered and paged in the store ([`Page`]).
//!
//! # The single-writer assumption
//! One process owns the store, and within it the keys service serialises every
//! change through one writer lock: a change reads the current record, validates,
//! commits, then publishes to the in-memory index, and nothing else can commit in
//! between. So no method here reports a conflict, and nothing changes under the
//! index's feet. A backend shared by several nodes (PostgreSQL) differs in two
//! places: a commit may find that another node changed the same record first (a
//! conflict, to be reported as an error and retried by re-reading), and changes
//! made by other nodes must reach this node's index (a change feed the node
//! follows). Both would be added to this trait; nothing in the domain reads the
//! store in a way that assumes more than this list.

pub mod memory;
mod page;
mod redb;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
    UsageCounts,
};
pub use memory::MemoryStore;
pub(crate) use page::Pager;
pub use page::{Page, MAX_PAGE};
pub use redb::{RedbStore, CACHE_BYTES};

/// A boxed error from a backend, kept as the cause of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Storage failures, by the operation that failed; each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (held by another process, unreadable, ...).
    #[error("cannot open database {path}: {source} (is another apikeyd running on it?)")]
    Open {
        /// Database file (or address).
        path: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A transaction could not be started.
    #[error("cannot start a database transaction: {0}")]
    Transaction(#[source] BoxError),
    /// A table could not be opened.
    #[error("cannot open a database table: {0}")]
    Table(#[source] BoxError),
    /// A read or a write inside a transaction failed.
    #[error("database read or write failed: {0}")]
    Storage(#[source] BoxError),
    /// The transaction could not be committed; none of it was written.
    #[error("cannot commit to the database (nothing was written): {0}")]
    Commit(#[source] BoxError),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table}: {source}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// A record could not be encoded for storage.
    #[error("cannot encode a record for table {table}: {source}")]
    Encode {
        /// Table name.
        table: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

impl From<crate::model::row::BadHash> for StoreError {
    fn from(e: crate::model::row::BadHash) -> Self {
        StoreError::Corrupt {
            table: "keys",
            source: Box::new(e),
        }
    }
}

/// Everything one change writes, committed atomically by [`Storage::commit`].
#[derive(Debug, Default)]
pub struct Change {
    /// Key records to insert or replace.
    pub put_keys: Vec<KeyRecord>,
    /// Key records to delete (purge).
    pub purge_keys: Vec<Uuid>,
    /// Audit entries to append (their `seq` is assigned by the store).
    pub audit: Vec<AuditEntry>,
    /// Secrets that leave their key in this change.
    pub retire: Vec<Retire>,
    /// Alert jobs to insert or replace.
    pub put_jobs: Vec<AlertJob>,
    /// Alert jobs to delete.
    pub delete_jobs: Vec<Uuid>,
    /// Operator messages to append (id 0: assigned by the store) or replace.
    pub messages: Vec<OperatorMessage>,
}

impl Change {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_keys.is_empty()
            && self.purge_keys.is_empty()
            && self.audit.is_empty()
            && self.retire.is_empty()
            && self.put_jobs.is_empty()
            && self.delete_jobs.is_empty()
            && self.messages.is_empty()
    }
}

/// A secret to remember as retired ([`Storage::retired`]).
#[derive(Debug, Clone)]
pub struct Retire {
    /// The secret's keyed hash.
    pub hash: KeyHash,
    /// Who held it.
    pub entry: RetiredSecret,
    /// Only replace an entry already there: a rotated key's previous secret is
    /// retired when it is rotated away if it was imported, and only then matters.
    pub refresh_only: bool,
}

/// Usage of one key as the flush writes it.
#[derive(Debug, Clone)]
pub struct UsageUpdate {
    /// The key.
    pub id: Uuid,
    /// Newest last use known in memory.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Counters known in memory.
    pub counts: UsageCounts,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this key's.
    pub key: Option<Uuid>,
    /// Only entries about keys of this owner (as the key's owner was when the
    /// entry was written).
    pub owner: Option<String>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this key's.
    pub key: Option<Uuid>,
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only jobs about keys of this owner.
    pub owner: Option<String>,
    /// Only jobs older than this one (a [`Page::next`]).
    pub before: Option<u128>,
    /// At most this many (newest first; at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// Everything the domain persists. See the module documentation for what every
/// backend promises.
pub trait Storage: Send + Sync + std::fmt::Debug {
    // ------------------------------------------------------------ keys

    /// Number of stored keys (all states): sizes the index before loading.
    fn key_count(&self) -> Result<usize, StoreError>;

    /// Hand every stored key, as a row, to `each` on this thread; returns how many.
    fn load_keys(&self, each: &mut dyn FnMut(KeyRow)) -> Result<usize, StoreError>;

    /// The full records of `ids`, in that order; missing ids are skipped.
    fn keys(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>, StoreError>;

    /// One key's full record.
    fn key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys(&[id])?.pop())
    }

    /// Who last held the secret with keyed hash `hash`, if it was retired.
    fn retired(&self, hash: &KeyHash) -> Result<Option<RetiredSecret>, StoreError>;

    /// Write usage (last use, never moved backwards, and counters) into the stored
    /// records, in one transaction. Keys no longer stored are skipped. Returns keys
    /// written.
    fn write_usage(&self, updates: &[UsageUpdate]) -> Result<usize, StoreError>;

    // ------------------------------------------------------------ changes

    /// Commit `change` atomically: all of it, or nothing.
    fn commit(&self, change: Change) -> Result<(), StoreError>;

    /// Audit entries matching `filter`, newest first, older than `before` (a `seq`
    /// from [`Page::next`]), at most `limit`.
    fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry, u64>, StoreError>;

    // ------------------------------------------------------------ alert jobs

    /// One job.
    fn job(&self, id: Uuid) -> Result<Option<AlertJob>, StoreError>;

    /// Jobs matching `filter`, newest first (ids are UUID v7, so id order is age). A
    /// page ends after [`MAX_PAGE`] jobs examined even if it holds fewer matches,
    /// with a cursor to go on from there.
    fn jobs(&self, filter: &JobFilter) -> Result<Page<AlertJob, u128>, StoreError>;

    /// Claim up to `limit` Scheduled jobs due at `now`, earliest first: each is
    /// marked Running (attempts + 1) in one transaction before anything is
    /// delivered.
    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError>;

    /// Jobs left Running (a delivery was under way when the daemon stopped).
    fn running_jobs(&self) -> Result<Vec<AlertJob>, StoreError>;

    /// When the earliest Scheduled job should run (millisecond precision).
    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Number of jobs in each state, without a scan.
    fn job_state_counts(&self) -> [(JobState, u64); JobState::ALL.len()];

    // ------------------------------------------------------------ operator messages

    /// Operator messages, newest first.
    fn messages(
        &self,
        unacknowledged_only: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError>;

    /// One operator message.
    fn message(&self, id: u64) -> Result<Option<OperatorMessage>, StoreError>;
}

#[cfg(test)]
mod conformance_tests;
