//! Storage failures, by the operation that failed.

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
    /// PostgreSQL could not be reached or refused this node at start.
    #[error("cannot connect to PostgreSQL ({url}): {why}")]
    Connect {
        /// The connection string (it never holds the password).
        url: String,
        /// Why, with every cause.
        why: String,
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
    /// The database is there but must not be used by this process (another one
    /// holds it, or it was written under another server secret).
    #[error("cannot use the database: {0}")]
    Refused(String),
    /// The database cannot be reached (down, restarting, cut off); nothing was
    /// written.
    #[error("the database is unavailable (nothing was written): {0}")]
    Unavailable(#[source] BoxError),
    /// The connection went during the commit: the change may have been written.
    /// (A node applies its own changes from the change log too, so its index
    /// follows whichever way it went once the database answers.)
    #[error("the connection to the database was lost during the commit: the change may or may not have been written; look before retrying once the database answers: {0}")]
    Interrupted(#[source] BoxError),
    /// The change was committed, but making it durable failed: it is in force in
    /// this process and may be lost when it stops.
    #[error("the change is in force but could not be written to disk, and may be lost when apikeyd stops (check the disk; a restart may be needed before changes are accepted again): {0}")]
    NotDurable(#[source] BoxError),
    /// Another node changed the same key first; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot do this (a backup of a PostgreSQL store, say).
    #[error("{0}")]
    Unsupported(String),
    /// A file given as a snapshot is not one apikeyd can restore.
    #[error("{0}")]
    NotSnapshot(String),
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

/// What the disk answered when a storage failure came from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskProblem {
    /// No space left (or the quota is used up).
    Full,
    /// The file system is mounted read-only.
    ReadOnly,
    /// The database file (or its directory) may not be written by this process.
    Denied,
    /// An earlier write failed: the database must be reopened before it is used.
    Earlier,
}

/// The cause kept when a write failed before and the database refuses every use
/// until it is reopened (redb's "previous I/O error").
#[derive(Debug, thiserror::Error)]
#[error("an earlier write to the database file failed (disk full, read-only or failing)")]
pub struct EarlierWriteFailed;

impl StoreError {
    /// Whether the disk caused this failure, and how: an I/O error somewhere in
    /// its causes (a backend keeps the `std::io::Error` itself as the cause).
    pub fn disk_problem(&self) -> Option<DiskProblem> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<EarlierWriteFailed>().is_some() {
                return Some(DiskProblem::Earlier);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return match io.raw_os_error() {
                    Some(libc::ENOSPC | libc::EDQUOT) => Some(DiskProblem::Full),
                    Some(libc::EROFS) => Some(DiskProblem::ReadOnly),
                    Some(libc::EACCES | libc::EPERM) => Some(DiskProblem::Denied),
                    _ => None,
                };
            }
            cause = e.source();
        }
        None
    }
}
