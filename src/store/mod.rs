//! Storage: everything the domain persists, behind one trait, [`Storage`].
//!
//! [`RedbStore`] (the embedded redb database, the default) implements it, and only
//! `src/store/redb` knows redb; [`MemoryStore`] implements it in memory for unit
//! tests; [`PostgresStore`] on PostgreSQL, the first step of cluster mode (not yet
//! used by the daemon: see its documentation). The services above ([`crate::keys::Keys`], [`crate::alerts::Alerts`]) hold
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

mod error;
mod export;
pub mod memory;
mod page;
pub mod postgres;
mod redb;
mod storage;

pub use error::{BoxError, StoreError};
pub use export::RecordCounts;
pub use memory::MemoryStore;
pub use page::{Page, MAX_PAGE};
pub use postgres::PostgresStore;
pub use redb::{RedbStore, CACHE_BYTES};
pub use storage::{AuditFilter, Change, JobFilter, KeyChanges, Retire, Storage, UsageUpdate};

#[cfg(test)]
mod conformance_tests;
