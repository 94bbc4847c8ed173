//! Storage: everything the domain persists, behind one trait, [`Storage`].
//!
//! [`RedbStore`] (the embedded redb database, the default) implements it, and only
//! `src/store/redb` knows redb; [`MemoryStore`] implements it in memory for unit
//! tests; [`PostgresStore`] on PostgreSQL, shared by the nodes of a cluster. The services above ([`crate::keys::Keys`], [`crate::alerts::Alerts`]) hold
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
//! - Stored usage (counters, last use) changes only by [`Storage::write_usage`],
//!   which adds; a commit that replaces a record keeps the stored usage.
//!
//! # One writer, or several nodes
//! Within a process the keys service serialises every change through one writer
//! lock: a change reads the current record, validates, commits, then publishes to
//! the in-memory index, and nothing else of this process commits in between. A
//! store one process owns (redb, memory) needs no more. A store shared by several
//! nodes (PostgreSQL) adds, through the trait's cluster methods: a commit refused
//! with [`StoreError::Conflict`] when another node changed the same record after
//! this node last read the change feed; the change feed itself
//! ([`Storage::changes`]), applied under the same writer; leases on claimed jobs;
//! and one node at a time for maintenance.

mod error;
mod export;
mod load;
pub mod memory;
mod page;
pub mod postgres;
mod redb;
mod storage;

pub use error::{BoxError, DiskProblem, EarlierWriteFailed, StoreError};
pub use export::{Export, RecordCounts, Snapshot, SnapshotInfo, SNAPSHOT_FORMAT};
pub use memory::MemoryStore;
pub use page::{Page, MAX_PAGE};
pub use postgres::PostgresStore;
pub use redb::{RedbStore, CACHE_BYTES};
pub use storage::{AuditFilter, Change, JobFilter, KeyChanges, Retire, Storage, UsageUpdate};

#[cfg(test)]
mod conformance_tests;
