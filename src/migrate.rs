//! `apikeyd migrate`: copy every record from one store to another (redb to
//! PostgreSQL and back) through the [`Storage`] trait alone, so any pair of backends
//! works. Keys keep their ids, hashes, usage and last-used times; audit entries keep
//! their order (the target numbers them anew); jobs, messages and retired secrets
//! keep what they hold. The keyed hashes are copied as they are: the target's
//! daemon must run with the source's server secret.
//!
//! Nobody may use either store meanwhile: redb's file lock keeps a daemon out of a
//! redb file, and for PostgreSQL the operator stops the daemons (the source is
//! counted before and after, which catches most writes made during the copy).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::config::credential::read_password;
use crate::config::store::{check_postgres_url, UrlError, POSTGRES_PASSWORD_CREDENTIAL};
use crate::model::{AlertJob, KeyHash, KeyRecord, RetiredSecret};
use crate::store::{
    Change, JobFilter, PostgresStore, RecordCounts, RedbStore, Retire, Storage, StoreError,
};

/// Records per transaction on the target: large enough that commits do not
/// dominate, small enough that one batch is a few megabytes at most.
pub const BATCH: usize = 1000;

/// A store named on the command line: `redb:PATH` or `postgres:URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A redb database file.
    Redb(PathBuf),
    /// A PostgreSQL database: a libpq connection string or URL, without a password.
    Postgres(String),
}

/// An endpoint that names no usable store. The text given is never repeated: it may
/// hold a password.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Neither `redb:` nor `postgres:`.
    #[error("names no store: give redb:PATH or postgres:URL")]
    Unknown,
    /// `redb:` without a path.
    #[error("redb: needs the database file's path")]
    NoPath,
    /// The PostgreSQL connection string is unusable.
    #[error("postgres:URL {0}; the password comes from --password-file or the systemd credential {cred:?}", cred = POSTGRES_PASSWORD_CREDENTIAL)]
    Url(#[source] UrlError),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return Err(EndpointError::NoPath);
            }
            return Ok(Endpoint::Redb(PathBuf::from(path)));
        }
        // A URL may carry its own scheme: `postgres:postgresql://…` and
        // `postgresql://…` both name PostgreSQL.
        let url = match s.strip_prefix("postgres:") {
            Some(rest) if !rest.starts_with("//") => rest,
            _ if s.starts_with("postgres://") || s.starts_with("postgresql://") => s,
            _ => return Err(EndpointError::Unknown),
        };
        check_postgres_url(url).map_err(EndpointError::Url)?;
        Ok(Endpoint::Postgres(url.to_owned()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Redb(p) => write!(f, "redb:{}", p.display()),
            // Checked at parse: it holds no password.
            Endpoint::Postgres(url) => write!(f, "postgres:{url}"),
        }
    }
}

/// What the migration is allowed to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add to a target that already holds records (none of the same ids).
    pub into_non_empty: bool,
}

/// What was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records written to the target, by kind (checked against both stores).
    pub moved: RecordCounts,
    /// The target held operator messages already, so the moved ones got new ids.
    pub renumbered_messages: bool,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A redb source file that does not exist (opening it would create it empty).
    #[error("no database at {0}")]
    NoSource(String),
    /// The PostgreSQL password file could not be read.
    #[error("cannot read the PostgreSQL password from {path}: {source}")]
    Password {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A store could not be opened.
    #[error("cannot open {endpoint}: {source}")]
    Open {
        /// Which store.
        endpoint: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The target holds records and `into_non_empty` is off.
    #[error("the target is not empty (it holds {0}); migrate into an empty database, or pass --into-non-empty to add to it. Nothing was written")]
    NotEmpty(RecordCounts),
    /// A record of the source is in the target already.
    #[error("{0} is in both the source and the target; nothing was written")]
    Collision(String),
    /// Reading the source failed.
    #[error("reading the source failed: {0}")]
    Source(#[source] StoreError),
    /// Reading the target failed.
    #[error("reading the target failed: {0}")]
    TargetRead(#[source] StoreError),
    /// Writing the target failed part way.
    #[error("writing the target failed: {0}. The batches written before stay there: empty the target before trying again")]
    Target(#[source] StoreError),
    /// A key record reads back from the target unlike the source's.
    #[error("key {0} reads back from the target unlike the source's record")]
    KeyMismatch(Uuid),
    /// After the copy, the counts do not add up.
    #[error("the counts do not add up after the migration: {0}")]
    Counts(String),
}

/// Which side of the migration a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Read from; must exist.
    Source,
    /// Written to; a redb file is created when missing.
    Target,
}

/// Open `endpoint`. A PostgreSQL password comes from the systemd credential
/// `postgres-password` in `credentials_dir`, else from `password_file`, else none.
pub fn open(
    endpoint: &Endpoint,
    side: Side,
    credentials_dir: Option<&Path>,
    password_file: Option<&Path>,
) -> Result<Box<dyn Storage>, MigrateError> {
    let open_err = |source| MigrateError::Open {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Redb(path) => {
            if side == Side::Source && !path.exists() {
                return Err(MigrateError::NoSource(path.display().to_string()));
            }
            Ok(Box::new(RedbStore::open(path).map_err(open_err)?))
        }
        Endpoint::Postgres(url) => {
            let password =
                read_password(credentials_dir, POSTGRES_PASSWORD_CREDENTIAL, password_file)
                    .map_err(|e| MigrateError::Password {
                        path: e.path.display().to_string(),
                        source: e.source,
                    })?;
            Ok(Box::new(
                PostgresStore::open(url, password.as_deref()).map_err(open_err)?,
            ))
        }
    }
}

/// Copy every record of `from` into `to`, in batches of [`BATCH`] records per
/// transaction, then check the counts on both sides. Blocks: run it off any async
/// runtime (the PostgreSQL store drives its own).
pub fn migrate(
    from: &dyn Storage,
    to: &dyn Storage,
    options: &Options,
) -> Result<Report, MigrateError> {
    let source_counts = from.export_counts().map_err(MigrateError::Source)?;
    let before = to.export_counts().map_err(MigrateError::TargetRead)?;
    if !before.is_empty() {
        if !options.into_non_empty {
            return Err(MigrateError::NotEmpty(before));
        }
        find_collisions(from, to)?;
    }
    let renumbered_messages = before.messages > 0;
    let moved = RecordCounts {
        keys: copy_keys(from, to)?,
        audit: copy_audit(from, to)?,
        jobs: copy_jobs(from, to)?,
        messages: copy_messages(from, to, renumbered_messages)?,
        retired: copy_retired(from, to)?,
    };
    check_counts(&source_counts, &before, &moved, from, to)?;
    Ok(Report {
        moved,
        renumbered_messages,
    })
}

fn write(to: &dyn Storage, change: Change) -> Result<(), MigrateError> {
    to.commit(change).map_err(MigrateError::Target)
}

/// Hand each page `read` gives to `each`, the next page read from after the last
/// record of the one before (`None`: from the start), until a page is empty;
/// returns how many records there were.
fn for_each_page<T, C>(
    read: impl Fn(Option<C>) -> Result<Vec<T>, StoreError>,
    cursor: impl Fn(&T) -> C,
    mut each: impl FnMut(Vec<T>) -> Result<(), MigrateError>,
) -> Result<u64, MigrateError> {
    let mut seen = 0;
    let mut after = None;
    loop {
        let page = read(after).map_err(MigrateError::Source)?;
        let Some(last) = page.last() else {
            return Ok(seen);
        };
        after = Some(cursor(last));
        seen += u64::try_from(page.len()).unwrap_or(u64::MAX);
        each(page)?;
    }
}

fn key_pages(
    from: &dyn Storage,
    each: impl FnMut(Vec<KeyRecord>) -> Result<(), MigrateError>,
) -> Result<u64, MigrateError> {
    for_each_page(|after| from.export_keys(after, BATCH), |r| r.id, each)
}

fn retired_pages(
    from: &dyn Storage,
    each: impl FnMut(Vec<(KeyHash, RetiredSecret)>) -> Result<(), MigrateError>,
) -> Result<u64, MigrateError> {
    for_each_page(|after| from.export_retired(after, BATCH), |r| r.0, each)
}

/// Every job of the source, a page at a time (newest first, as listings go).
fn job_pages(
    from: &dyn Storage,
    mut each: impl FnMut(Vec<AlertJob>) -> Result<(), MigrateError>,
) -> Result<u64, MigrateError> {
    let mut seen = 0;
    let mut before = None;
    loop {
        let page = from
            .jobs(&JobFilter {
                before,
                limit: BATCH,
                ..JobFilter::default()
            })
            .map_err(MigrateError::Source)?;
        seen += u64::try_from(page.items.len()).unwrap_or(u64::MAX);
        if !page.items.is_empty() {
            each(page.items)?;
        }
        match page.next {
            Some(next) => before = Some(next),
            None => return Ok(seen),
        }
    }
}

/// Keys with their usage, each batch read back from the target and compared.
fn copy_keys(from: &dyn Storage, to: &dyn Storage) -> Result<u64, MigrateError> {
    key_pages(from, |batch| {
        let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
        write(
            to,
            Change {
                put_keys: batch.clone(),
                ..Change::default()
            },
        )?;
        // In the order asked for, missing ones skipped: the first record that
        // differs is the first one lost or changed.
        let mut back = to.keys(&ids).map_err(MigrateError::TargetRead)?.into_iter();
        match batch.iter().find(|rec| back.next().as_ref() != Some(*rec)) {
            Some(rec) => Err(MigrateError::KeyMismatch(rec.id)),
            None => Ok(()),
        }
    })
}

/// Oldest first, so the target numbers them in the same order; after the keys, so
/// each entry is filed under its key's owner.
fn copy_audit(from: &dyn Storage, to: &dyn Storage) -> Result<u64, MigrateError> {
    for_each_page(
        |after| from.export_audit(after.unwrap_or(0), BATCH),
        |e| e.seq,
        |mut audit| {
            for entry in &mut audit {
                entry.seq = 0;
            }
            write(
                to,
                Change {
                    audit,
                    ..Change::default()
                },
            )
        },
    )
}

/// Jobs keep ids, states and attempts; after the keys, so each is filed under its
/// key's owner.
fn copy_jobs(from: &dyn Storage, to: &dyn Storage) -> Result<u64, MigrateError> {
    job_pages(from, |put_jobs| {
        write(
            to,
            Change {
                put_jobs,
                ..Change::default()
            },
        )
    })
}

/// Messages keep their ids and acknowledgements; into a target that has messages
/// already they are appended with new ids instead of replacing its own.
fn copy_messages(
    from: &dyn Storage,
    to: &dyn Storage,
    renumber: bool,
) -> Result<u64, MigrateError> {
    for_each_page(
        |after| from.export_messages(after.unwrap_or(0), BATCH),
        |m| m.id,
        |mut messages| {
            if renumber {
                for m in &mut messages {
                    m.id = 0;
                }
            }
            write(
                to,
                Change {
                    messages,
                    ..Change::default()
                },
            )
        },
    )
}

/// Retired secrets: without them, an imported token removed or rotated in the
/// source could be imported again on the target.
fn copy_retired(from: &dyn Storage, to: &dyn Storage) -> Result<u64, MigrateError> {
    retired_pages(from, |batch| {
        let retire = batch
            .into_iter()
            .map(|(hash, entry)| Retire {
                hash,
                entry,
                refresh_only: false,
            })
            .collect();
        write(
            to,
            Change {
                retire,
                ..Change::default()
            },
        )
    })
}

/// Before writing into a non-empty target: no key, job or retired secret of the
/// source may be there already (writing it would replace the target's, and the
/// counts could not tell).
fn find_collisions(from: &dyn Storage, to: &dyn Storage) -> Result<(), MigrateError> {
    key_pages(from, |batch| {
        let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
        match to.keys(&ids).map_err(MigrateError::TargetRead)?.first() {
            Some(there) => Err(MigrateError::Collision(format!("key {}", there.id))),
            None => Ok(()),
        }
    })?;
    job_pages(from, |jobs| {
        for job in jobs {
            if to.job(job.id).map_err(MigrateError::TargetRead)?.is_some() {
                return Err(MigrateError::Collision(format!("alert job {}", job.id)));
            }
        }
        Ok(())
    })?;
    retired_pages(from, |batch| {
        for (hash, entry) in &batch {
            if to
                .retired(hash)
                .map_err(MigrateError::TargetRead)?
                .is_some()
            {
                // The hash itself stays unsaid; the key that held it is enough.
                return Err(MigrateError::Collision(format!(
                    "a retired secret (last held by key {})",
                    entry.key_id
                )));
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// Everything the source held was read (it did not change meanwhile), and the
/// target now holds what it held before plus what was moved.
fn check_counts(
    source: &RecordCounts,
    before: &RecordCounts,
    moved: &RecordCounts,
    from: &dyn Storage,
    to: &dyn Storage,
) -> Result<(), MigrateError> {
    let source_now = from.export_counts().map_err(MigrateError::Source)?;
    if source_now != *source || moved != source {
        return Err(MigrateError::Counts(format!(
            "the source held {source} at the start and {source_now} at the end, and {moved} were copied; was an apikeyd using it?"
        )));
    }
    let after = to.export_counts().map_err(MigrateError::TargetRead)?;
    let expected = RecordCounts {
        keys: before.keys + moved.keys,
        audit: before.audit + moved.audit,
        jobs: before.jobs + moved.jobs,
        messages: before.messages + moved.messages,
        retired: before.retired + moved.retired,
    };
    if after != expected {
        return Err(MigrateError::Counts(format!(
            "the target holds {after}, expected {expected}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
