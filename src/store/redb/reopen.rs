//! The open database, reopened after a write failed. redb latches the first I/O
//! error (a full disk, a file system gone read-only) and refuses every later use,
//! reads included, until the database is closed and opened again; without this,
//! freeing space would not be enough: apikeyd would refuse changes until it was
//! restarted. A transaction begun on a latched database reopens it first, and the
//! disk's own error comes back while it still refuses writes.
//!
//! A change committed without its fsync (group commit) whose fsync then failed is
//! lost by the reopen (its caller was told it may be), while the key index shows
//! it: the store then asks the keys service to reload the index from the database
//! (`Storage::changes`), so the two agree again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::store::error::{DiskProblem, StoreError};

/// redb's page cache. Its default (1 GiB) filled up while loading the keys at start and
/// stayed resident; every read path that matters (verification, listing keys) runs from
/// memory, and the alert dispatcher reads only the head of the due index, so a small
/// cache costs nothing measurable and keeps a 1M-key daemon well under 600 MB.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Open (or create) the database file readable by its owner only, whatever the umask:
/// it holds every key's hash and owner. An existing file that others may read is
/// tightened to 0600, with a warning.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // What redb's own `create` does, plus the mode.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "database was readable by group or others; its mode is now 0600");
    }
    Ok(file)
}

/// The database file, opened (or not, between a failed reopen and the next try).
#[derive(Debug)]
pub(super) struct Db {
    path: PathBuf,
    open: RwLock<Option<Database>>,
    /// Group commit: the last change committed without its fsync, and up to which
    /// one they were made durable. While they differ, a reopen would lose changes
    /// the key index shows.
    pub(super) committed: AtomicU64,
    pub(super) durable: AtomicU64,
    /// Reopens that lost changes the key index shows, and up to which of them
    /// the index was reloaded since ([`Self::reload_wanted`]).
    lost: AtomicU64,
    reloaded: AtomicU64,
    /// Reopens so far: a caller that saw the database latched reopens it only if
    /// nobody did since.
    generation: AtomicU64,
}

/// Open the database file at `path` (readable by its owner only).
pub(super) fn open_file(path: &Path) -> Result<Database, StoreError> {
    let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
        path: path.display().to_string(),
        source: e,
    };
    let file = open_private(path).map_err(|e| open_err(e.into()))?;
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(
            redb::backends::FileBackend::new(file).map_err(|e| open_err(e.into()))?,
        )
        .map_err(|e| {
            open_err(match e {
                // The disk's own error, for StoreError::disk_problem.
                redb::DatabaseError::Storage(s) => super::tables::cause(s),
                e => e.into(),
            })
        })
}

impl Db {
    pub(super) fn new(path: &Path, db: Database) -> Self {
        Self {
            path: path.to_path_buf(),
            open: RwLock::new(Some(db)),
            committed: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            reloaded: AtomicU64::new(0),
        }
    }

    /// Whether the key index must be reloaded, and the reopen to pass to
    /// [`Self::reloaded`] once it was (read before the reload reads the keys).
    pub(super) fn reload_wanted(&self) -> (bool, u64) {
        let lost = self.lost.load(Ordering::Acquire);
        (lost != self.reloaded.load(Ordering::Acquire), lost)
    }

    /// The index was reloaded after the reopen `upto`.
    pub(super) fn reloaded(&self, upto: u64) {
        self.reloaded.fetch_max(upto, Ordering::AcqRel);
    }

    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.with(|db| db.begin_read().map_err(StoreError::from))
    }

    pub(super) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.with(|db| db.begin_write().map_err(StoreError::from))
    }

    /// `f` on the database; if an earlier write left it latched, reopen it and run
    /// `f` again (what failed on a latched database wrote nothing).
    pub(super) fn with<T>(
        &self,
        f: impl Fn(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let seen = self.generation.load(Ordering::Acquire);
        let first = match &*self.open.read() {
            Some(db) => f(db),
            None => Err(closed()),
        };
        match first {
            Err(e) if latched(&e) => {
                self.reopen(seen)?;
                match &*self.open.read() {
                    Some(db) => f(db),
                    None => Err(closed()),
                }
            }
            other => other,
        }
    }

    /// Close the database and open it again, unless another caller did since
    /// `seen`. A failure leaves it closed; the next use tries again.
    fn reopen(&self, seen: u64) -> Result<(), StoreError> {
        let mut open = self.open.write();
        if self.generation.load(Ordering::Acquire) != seen && open.is_some() {
            return Ok(());
        }
        if let Some(db) = open.take() {
            // It refuses everything: its close can only fail; the file's lock goes.
            let _ = db.close();
        }
        let db = open_file(&self.path)?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Changes committed without their fsync are gone with the old handle,
        // though the key index shows them: the keys service reloads it.
        let committed = self.committed.load(Ordering::Acquire);
        if self.durable.swap(committed, Ordering::AcqRel) != committed {
            self.lost.fetch_add(1, Ordering::AcqRel);
            tracing::error!(db = %self.path.display(), "database reopened after a failed write; changes not yet on disk were lost (their callers were told), the key index is reloaded from it");
        } else {
            tracing::warn!(db = %self.path.display(), "database reopened after a failed write");
        }
        *open = Some(db);
        Ok(())
    }
}

/// Whether `e` says the database refuses every use after an earlier I/O error.
fn latched(e: &StoreError) -> bool {
    e.disk_problem() == Some(DiskProblem::Earlier)
}

fn closed() -> StoreError {
    StoreError::Transaction(Box::new(crate::store::error::EarlierWriteFailed))
}
