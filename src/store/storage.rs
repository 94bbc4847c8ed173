//! The [`Storage`] trait and what it takes and gives (see the module documentation
//! of [`crate::store`] for what every backend promises).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use super::error::StoreError;
use super::export::Export;
use super::page::Page;
use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
    UsageCounts,
};

/// Everything one change writes, committed atomically by [`Storage::commit`].
#[derive(Debug, Clone, Default)]
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

    /// Whether it schedules an alert job (the dispatcher is woken once it is written).
    pub fn schedules_jobs(&self) -> bool {
        self.put_jobs.iter().any(|j| j.state == JobState::Scheduled)
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

/// Key changes other nodes committed, as [`Storage::changes`] hands them over.
#[derive(Debug, Default)]
pub struct KeyChanges {
    /// This node is further behind than the change log reaches: reload every key.
    pub reload: bool,
    /// The current records of keys other nodes changed.
    pub put: Vec<KeyRecord>,
    /// Keys other nodes purged.
    pub gone: Vec<Uuid>,
    /// Age in seconds (by the database's clock) of the oldest change read, if any.
    pub lag: Option<f64>,
    /// The log holds more than one read returns: read again.
    pub more: bool,
    /// Where in the log these changes end: pass it to [`Storage::changes_applied`]
    /// once they (or, after `reload`, every key) are in the index.
    pub upto: u64,
}

impl KeyChanges {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        !self.reload && self.put.is_empty() && self.gone.is_empty()
    }
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
    /// At most this many (newest first; at most [`crate::store::MAX_PAGE`]).
    pub limit: usize,
}

/// Everything the domain persists. See the module documentation for what every
/// backend promises.
pub trait Storage: Export + Send + Sync + std::fmt::Debug {
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

    /// Commit `change` atomically and durably: all of it, or nothing.
    fn commit(&self, change: Change) -> Result<(), StoreError>;

    /// Commit `change` atomically, visible to every later read at once but
    /// perhaps not yet durable; returns a ticket for [`Storage::sync`]. A crash
    /// before that sync loses all of the change or none of it. Nothing may be
    /// acknowledged before its sync returned.
    fn commit_pending(&self, change: Change) -> Result<u64, StoreError> {
        self.commit(change).map(|()| 0)
    }

    /// Commit `changes` (a bulk import, in batches) as one unit, durably: all of
    /// them, or none if any fails.
    fn commit_all(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let mut all = Change::default();
        for c in changes {
            all.put_keys.extend(c.put_keys);
            all.purge_keys.extend(c.purge_keys);
            all.audit.extend(c.audit);
            all.retire.extend(c.retire);
            all.put_jobs.extend(c.put_jobs);
            all.delete_jobs.extend(c.delete_jobs);
            all.messages.extend(c.messages);
        }
        self.commit(all)
    }

    /// Make every change [`Storage::commit_pending`] committed up to `ticket`
    /// durable. Callers waiting at the same time share one flush (group commit);
    /// while `more_coming` says other changes are about to commit, the flush may
    /// wait a moment for them (as PostgreSQL's `commit_delay` does, only when
    /// there are such changes). On failure the change is still visible and a
    /// later sync may yet persist it ([`StoreError::NotDurable`]).
    fn sync(&self, _ticket: u64, _more_coming: &dyn Fn() -> bool) -> Result<(), StoreError> {
        Ok(())
    }

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
    /// page ends after [`crate::store::MAX_PAGE`] jobs examined even if it holds fewer matches,
    /// with a cursor to go on from there.
    fn jobs(&self, filter: &JobFilter) -> Result<Page<AlertJob, u128>, StoreError>;

    /// Claim up to `limit` Scheduled jobs due at `now`, earliest first: each is
    /// marked Running (attempts + 1) in one transaction before anything is
    /// delivered.
    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError>;

    /// Jobs left Running whose delivery is no longer under way at `now`: for a store
    /// one process owns (called at start), every Running job; for a shared store,
    /// those no node holds a lease on (a job whose lease ended is claimed again).
    fn running_jobs(&self, now: DateTime<Utc>) -> Result<Vec<AlertJob>, StoreError>;

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

    // ------------------------------------------------------------ several nodes
    // A store one process owns keeps these defaults.

    /// Whether other processes (nodes) change this store too.
    fn shared(&self) -> bool {
        false
    }

    /// Key changes committed since this node's position in the change log (its
    /// own too: a commit whose outcome it could not learn is applied this way),
    /// oldest first. Called under the key service's writer, as commits are: a
    /// [`Storage::commit`] that changes a key another node changed after that
    /// position fails with [`StoreError::Conflict`]. A record this node cannot
    /// decode comes as gone: refused here rather than served as it was.
    fn changes(&self) -> Result<KeyChanges, StoreError> {
        Ok(KeyChanges::default())
    }

    /// Last uses other nodes wrote since the previous call (some may come again):
    /// (key, last use). Empty for a store nobody else uses.
    fn recent_uses(&self) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Move this node's position in the change log to `upto` (from
    /// [`KeyChanges::upto`]), once the index shows those changes.
    fn changes_applied(&self, _upto: u64) {}

    /// Signalled when another node may have changed keys (in PostgreSQL, a
    /// notification); `None` if nothing but this process changes the store.
    fn change_signal(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Whether this process runs the maintenance jobs now (one node at a time).
    fn lead_maintenance(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Drop changes older than the log keeps (the maintenance node does); returns
    /// how many.
    fn prune_changes(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// How long a claimed job stays with this process without being renewed
    /// ([`Storage::renew_lease`]); `None` if claims never lapse (one process).
    fn job_lease(&self) -> Option<std::time::Duration> {
        None
    }

    /// Keep job `id`, which this process claimed and is delivering, from being taken
    /// over by another node for one more lease from now (a shared store judges
    /// leases by its own clock); `false` if it is no longer this process's to
    /// deliver.
    fn renew_lease(&self, _id: Uuid, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Whether the store worked the last time it was used (without blocking).
    fn available(&self) -> bool {
        true
    }
}
