//! Storage failures, by the operation that failed.

/// A boxed error from a backend, kept as the cause of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Storage failures, by the operation that failed; each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (held by another process, unreadable, ...).
    #[error("cannot open database {path}: {source} ({hint})", hint = open_hint(.source.as_ref()))]
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

/// What the disk said, somewhere in `e`'s causes.
fn problem_in(e: &(dyn std::error::Error + 'static)) -> Option<DiskProblem> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<EarlierWriteFailed>().is_some() {
            return Some(DiskProblem::Earlier);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return match (io.raw_os_error(), io.kind()) {
                (Some(libc::ENOSPC | libc::EDQUOT), _) | (None, ErrorKind::StorageFull) => {
                    Some(DiskProblem::Full)
                }
                (Some(libc::EROFS), _) | (None, ErrorKind::ReadOnlyFilesystem) => {
                    Some(DiskProblem::ReadOnly)
                }
                (Some(libc::EACCES | libc::EPERM), _) | (None, ErrorKind::PermissionDenied) => {
                    Some(DiskProblem::Denied)
                }
                _ => None,
            };
        }
        cause = e.source();
    }
    None
}

/// What to do about a database that cannot be opened.
fn open_hint(source: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    match problem_in(source) {
        Some(DiskProblem::Full) => "the disk is full: free space on it",
        Some(DiskProblem::ReadOnly) => "the file system is read-only: remount it read-write",
        Some(DiskProblem::Denied) => {
            "apikeyd's account may not read and write it: check the owner and mode of the file and its directory"
        }
        _ => "is another apikeyd running on it?",
    }
}

impl StoreError {
    /// Whether the disk caused this failure, and how: an I/O error somewhere in
    /// its causes (a backend keeps the `std::io::Error` itself as the cause).
    pub fn disk_problem(&self) -> Option<DiskProblem> {
        problem_in(self)
    }

    /// The same failure, for each of several changes one commit refused (the
    /// error itself cannot be cloned): what the disk said stays visible to
    /// [`Self::disk_problem`]; a cut connection stays [`StoreError::Interrupted`];
    /// anything else becomes [`StoreError::Unavailable`].
    pub fn again(&self) -> StoreError {
        use std::io::{Error, ErrorKind};
        let why = self.to_string();
        if let StoreError::Interrupted(_) = self {
            return StoreError::Interrupted(why.into());
        }
        let kind = match self.disk_problem() {
            Some(DiskProblem::Full) => ErrorKind::StorageFull,
            Some(DiskProblem::ReadOnly) => ErrorKind::ReadOnlyFilesystem,
            Some(DiskProblem::Denied) => ErrorKind::PermissionDenied,
            Some(DiskProblem::Earlier) => return StoreError::Storage(Box::new(EarlierWriteFailed)),
            None => return StoreError::Unavailable(why.into()),
        };
        StoreError::Storage(Box::new(Error::new(kind, why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(code: i32) -> StoreError {
        StoreError::Commit(Box::new(std::io::Error::from_raw_os_error(code)))
    }

    #[test]
    fn the_disk_s_errors_are_told_apart_through_their_causes() {
        assert_eq!(io(libc::ENOSPC).disk_problem(), Some(DiskProblem::Full));
        assert_eq!(io(libc::EDQUOT).disk_problem(), Some(DiskProblem::Full));
        assert_eq!(io(libc::EROFS).disk_problem(), Some(DiskProblem::ReadOnly));
        assert_eq!(io(libc::EACCES).disk_problem(), Some(DiskProblem::Denied));
        assert_eq!(io(libc::EIO).disk_problem(), None);
        let wrapped = StoreError::NotDurable(Box::new(io(libc::ENOSPC)));
        assert_eq!(wrapped.disk_problem(), Some(DiskProblem::Full));
        let latched = StoreError::Transaction(Box::new(EarlierWriteFailed));
        assert_eq!(latched.disk_problem(), Some(DiskProblem::Earlier));
        assert_eq!(StoreError::Conflict("x".into()).disk_problem(), None);
    }

    /// Regression: a database on a read-only or full disk failed to open with
    /// "(is another apikeyd running on it?)", which sent operators the wrong way.
    #[test]
    fn a_database_that_cannot_be_opened_says_why() {
        let open = |code| StoreError::Open {
            path: "/var/lib/apikeyd/apikeyd.redb".into(),
            source: Box::new(std::io::Error::from_raw_os_error(code)),
        };
        let said = open(libc::EROFS).to_string();
        assert!(said.contains("remount it read-write"), "{said}");
        assert!(!said.contains("another apikeyd"), "{said}");
        assert!(open(libc::ENOSPC).to_string().contains("the disk is full"));
        assert!(open(libc::EACCES).to_string().contains("owner and mode"));
        let held = StoreError::Open {
            path: "x".into(),
            source: "Database already open".into(),
        };
        assert!(held.to_string().contains("another apikeyd"));
    }

    /// Regression: the creations' group commit refused every change of a batch
    /// with `Unavailable(text)`, so a full disk met by several creations at once
    /// answered 503 "unavailable" instead of 507 "disk full".
    #[test]
    fn the_same_failure_again_keeps_what_the_disk_said() {
        for (e, problem) in [
            (io(libc::ENOSPC), Some(DiskProblem::Full)),
            (io(libc::EROFS), Some(DiskProblem::ReadOnly)),
            (io(libc::EACCES), Some(DiskProblem::Denied)),
            (
                StoreError::Storage(Box::new(EarlierWriteFailed)),
                Some(DiskProblem::Earlier),
            ),
            (StoreError::Refused("no".into()), None),
        ] {
            let again = e.again();
            assert_eq!(again.disk_problem(), problem, "{e}");
            assert!(
                again.to_string().contains(&e.to_string()) || problem == Some(DiskProblem::Earlier),
                "{again}"
            );
        }
        let cut = StoreError::Interrupted("gone".into()).again();
        assert!(matches!(cut, StoreError::Interrupted(_)));
    }
}
