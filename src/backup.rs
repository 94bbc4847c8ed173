//! `apikeyd restore FILE`: put a snapshot taken by `apikeyctl backup` in place of
//! the daemon's database, on this machine or a new one. The daemon must be
//! stopped (redb's lock on the database tells), the server secret must be the one
//! the snapshot was taken under (its fingerprint is in the snapshot), and an
//! existing database is replaced only when asked, and then kept beside the new
//! one. The snapshot is checked whole before anything is replaced: it is copied
//! into the state directory, checked there (pages, its record, every count), and
//! renamed over the database only then.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Environment, StoreConfig};
use crate::keys::secret::{load_or_create_server_secret, KeyHasher, SecretFileError};
use crate::store::{Export, RecordCounts, RedbStore, SnapshotInfo, StoreError};

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// What the snapshot said about itself.
    pub info: SnapshotInfo,
    /// The database now in place.
    pub database: PathBuf,
    /// Where the database it replaced was kept (with `force`).
    pub replaced: Option<PathBuf>,
}

/// Why a restore was refused or failed. Nothing was replaced unless it says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Cluster mode: the records are in PostgreSQL.
    #[error("this configuration keeps the records in PostgreSQL: restore a pg_dump with pg_restore (apikeyctl backup and apikeyd restore cover the embedded redb database)")]
    Postgres,
    /// The snapshot file cannot be read.
    #[error("cannot read the snapshot {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No server secret where the configuration says it is.
    #[error("no server secret at {0}: put the secret the backup was taken under there (mode 0600) before restoring; with a new one every key would verify as NOT_FOUND")]
    NoSecret(String),
    /// The server secret cannot be read.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// A daemon holds the database.
    #[error("{0} is open in a running apikeyd: stop it before restoring")]
    Running(String),
    /// A database is there and `force` is off.
    #[error("a database exists at {path} ({counts}): pass --force to replace it (it is kept as {path}.replaced-TIME). Nothing was changed")]
    Exists {
        /// The database.
        path: String,
        /// What it holds, when it could be read.
        counts: String,
    },
    /// The snapshot was taken under another server secret.
    #[error("the snapshot was taken under another server secret: with this one every key would verify as NOT_FOUND. Put the secret the backup was taken under in place (see apikeyctl backup's reminder). Nothing was changed")]
    WrongSecret,
    /// The file is not a whole apikeyd snapshot.
    #[error("{path}: {source}. Nothing was changed")]
    Snapshot {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: StoreError,
    },
    /// The restored database reads back unlike the snapshot.
    #[error(
        "the restored database holds {held}, and the snapshot {expected}. Nothing was changed"
    )]
    Mismatch {
        /// What the snapshot said.
        expected: RecordCounts,
        /// What the copy held.
        held: RecordCounts,
    },
    /// Writing into the state directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// Restore `snapshot` as the database `config` names. Blocks (run it off any async
/// runtime).
pub fn restore(
    config: &Config,
    env: &Environment,
    snapshot: &Path,
    force: bool,
) -> Result<Restored, RestoreError> {
    if let StoreConfig::Postgres(_) = config.store {
        return Err(RestoreError::Postgres);
    }
    let fingerprint = secret_fingerprint(config, env)?;
    std::fs::File::open(snapshot).map_err(|source| RestoreError::Unreadable {
        path: snapshot.display().to_string(),
        source,
    })?;
    let database = config.server.database_path();
    if database.exists() {
        if RedbStore::in_use(&database)? {
            return Err(RestoreError::Running(database.display().to_string()));
        }
        if !force {
            let counts = RedbStore::open(&database)
                .and_then(|s| s.export_counts())
                .map_or_else(|e| format!("unreadable: {e}"), |c| c.to_string());
            return Err(RestoreError::Exists {
                path: database.display().to_string(),
                counts,
            });
        }
    }
    {
        // A new machine: the state directory is made private, as the daemon makes it.
        use std::os::unix::fs::DirBuilderExt;
        let dir = &config.server.state_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
    }
    // In the state directory, so the final rename stays on one file system.
    let copy = database.with_extension("redb.restoring");
    let _ = std::fs::remove_file(&copy);
    let placed = place(snapshot, &copy, &database, &fingerprint, force);
    if placed.is_err() {
        let _ = std::fs::remove_file(&copy);
    }
    placed
}

/// The fingerprint of the configured server secret, which must exist: a restore
/// never creates one.
fn secret_fingerprint(config: &Config, env: &Environment) -> Result<String, RestoreError> {
    let credential = env
        .credentials_directory
        .as_ref()
        .map(|d| d.join("server-secret"))
        .filter(|c| c.exists());
    if credential.is_none() && !config.server.secret_file.exists() {
        return Err(RestoreError::NoSecret(
            config.server.secret_file.display().to_string(),
        ));
    }
    let (secret, _) = load_or_create_server_secret(
        &config.server.secret_file,
        env.credentials_directory.as_deref(),
    )?;
    Ok(hex::encode(KeyHasher::new(&secret).fingerprint()))
}

/// Copy `snapshot` to `copy`, check it, and rename it over `database` (kept aside
/// first when there is one).
fn place(
    snapshot: &Path,
    copy: &Path,
    database: &Path,
    fingerprint: &str,
    force: bool,
) -> Result<Restored, RestoreError> {
    std::fs::copy(snapshot, copy).map_err(io(format!(
        "cannot copy {} to {}",
        snapshot.display(),
        copy.display()
    )))?;
    std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot make {} private", copy.display())))?;
    let info = RedbStore::adopt_snapshot(copy).map_err(|source| RestoreError::Snapshot {
        path: snapshot.display().to_string(),
        source,
    })?;
    if info.secret_fingerprint != fingerprint {
        return Err(RestoreError::WrongSecret);
    }
    // Opened as the daemon opens it; the counts must still be the snapshot's.
    let held = RedbStore::open(copy)?.export_counts()?;
    if held != info.counts {
        return Err(RestoreError::Mismatch {
            expected: info.counts,
            held,
        });
    }
    give_to_state_dir_owner(copy, database)?;
    let mut replaced = None;
    if database.exists() {
        if !force {
            // A daemon started meanwhile made one.
            return Err(RestoreError::Exists {
                path: database.display().to_string(),
                counts: "created during the restore".into(),
            });
        }
        let aside = PathBuf::from(format!(
            "{}.replaced-{}",
            database.display(),
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::rename(database, &aside)
            .map_err(io(format!("cannot move {} aside", database.display())))?;
        replaced = Some(aside);
    }
    std::fs::rename(copy, database).map_err(io(format!(
        "cannot rename {} to {}",
        copy.display(),
        database.display()
    )))?;
    if let Some(dir) = database.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("cannot sync {}", dir.display())))?;
    }
    Ok(Restored {
        info,
        database: database.to_path_buf(),
        replaced,
    })
}

/// Run as root (the usual way to restore), the new database would be root's, and
/// a daemon running under its own account could not open it: give it to the
/// account that owns the state directory.
fn give_to_state_dir_owner(copy: &Path, database: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = database.parent() else {
        return Ok(());
    };
    let owner = std::fs::metadata(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    let mine = std::fs::metadata(copy).map_err(io(format!("cannot read {}", copy.display())))?;
    if (mine.uid(), mine.gid()) == (owner.uid(), owner.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(copy, Some(owner.uid()), Some(owner.gid())).map_err(io(format!(
        "cannot give {} to the owner of {} (uid {})",
        copy.display(),
        dir.display(),
        owner.uid()
    )))
}

#[cfg(test)]
mod tests;
