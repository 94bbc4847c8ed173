//! Backups of the redb database: `Export::snapshot` copies every table, read in
//! ONE read transaction (redb keeps what it sees unchanged while writes go on),
//! into a fresh database in an unnamed file beside the live one; [`adopt_snapshot`]
//! checks such a file before a restore puts it in place.
//!
//! The copy is table by table, each with its own key and value types: a table
//! this code does not know (added later without a line here) fails the backup
//! rather than leaving it out, and a test checks that every table a store opens
//! is copied.

use std::path::Path;

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTableMetadata, TableDefinition,
    TableHandle, Value, WriteTransaction,
};

use super::jobs::{BY_KEY, BY_OWNER, DUE, JOBS, MESSAGES, RUNNING, STATE_COUNTS};
use super::tables::KEYS;
use super::{RedbStore, AUDIT, AUDIT_BY_KEY, AUDIT_BY_OWNER, RETIRED};
use crate::store::error::StoreError;
use crate::store::export::{RecordCounts, Snapshot, SnapshotInfo, SNAPSHOT_FORMAT};

/// The snapshot's own record: `info` → JSON [`SnapshotInfo`]. A restore removes it.
const SNAPSHOT: TableDefinition<&str, &str> = TableDefinition::new("apikeyd_snapshot");

/// The snapshot's page cache: it is written once, in key order, and read by no one.
const SNAPSHOT_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// A fresh database in `file` for a snapshot. redb's default cache (1 GiB) kept
/// every page written, as much as the database, in the daemon's memory until the
/// copy was closed: a backup of 1M keys took RSS from 530 MB to 1.1 GB (30 MB more
/// with this cache).
fn snapshot_database(file: std::fs::File) -> Result<Database, StoreError> {
    let backend =
        redb::backends::FileBackend::new(file).map_err(|e| StoreError::Storage(Box::new(e)))?;
    Database::builder()
        .set_cache_size(SNAPSHOT_CACHE_BYTES)
        .create_with_backend(backend)
        .map_err(|e| StoreError::Storage(Box::new(e)))
}

/// Copy `table` from `from` into `to`.
fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    use redb::ReadableTable;
    let source = from.open_table(table)?;
    let mut target = to.open_table(table)?;
    for row in source.iter()? {
        let (k, v) = row?;
        target.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Every table of the store, copied (the list is [`copy_names`]'s).
fn copy_all(from: &ReadTransaction, to: &WriteTransaction) -> Result<(), StoreError> {
    copy(from, to, KEYS)?;
    copy(from, to, AUDIT)?;
    copy(from, to, AUDIT_BY_KEY)?;
    copy(from, to, AUDIT_BY_OWNER)?;
    copy(from, to, RETIRED)?;
    copy(from, to, JOBS)?;
    copy(from, to, DUE)?;
    copy(from, to, RUNNING)?;
    copy(from, to, MESSAGES)?;
    copy(from, to, STATE_COUNTS)?;
    copy(from, to, BY_KEY)?;
    copy(from, to, BY_OWNER)
}

/// The counts of a snapshot's records, read in `txn`.
fn counts(txn: &ReadTransaction) -> Result<RecordCounts, StoreError> {
    Ok(RecordCounts {
        keys: txn.open_table(KEYS)?.len()?,
        audit: txn.open_table(AUDIT)?.len()?,
        jobs: txn.open_table(JOBS)?.len()?,
        messages: txn.open_table(MESSAGES)?.len()?,
        retired: txn.open_table(RETIRED)?.len()?,
    })
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Storage(Box::new(e))
}

impl RedbStore {
    /// See [`Export::snapshot`]: the unnamed file is made in the database's own
    /// directory (private to the daemon, and on the disk the database fits on).
    pub(super) fn take_snapshot(&self, mut info: SnapshotInfo) -> Result<Snapshot, StoreError> {
        use std::io::Seek;
        let read = self.db.begin_read()?;
        let known = copy_names();
        for table in read.list_tables()? {
            if !known.iter().any(|k| k == table.name()) {
                return Err(StoreError::Unsupported(format!(
                    "the database holds a table this apikeyd cannot back up ({}); back up with a matching apikeyd version",
                    table.name()
                )));
            }
        }
        info.counts = counts(&read)?;
        let mut file = tempfile::tempfile_in(&self.dir).map_err(io)?;
        let db = snapshot_database(file.try_clone().map_err(io)?)?;
        let write = db.begin_write()?;
        copy_all(&read, &write)?;
        drop(read);
        {
            let mut meta = write.open_table(SNAPSHOT)?;
            let text = serde_json::to_string(&info).map_err(|source| StoreError::Encode {
                table: "apikeyd_snapshot",
                source,
            })?;
            meta.insert("info", text.as_str())?;
        }
        write.commit()?;
        db.close().map_err(|e| StoreError::Storage(Box::new(e)))?;
        let bytes = file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        file.rewind().map_err(io)?;
        Ok(Snapshot { file, bytes, info })
    }
}

/// The names of the tables a snapshot copies (and a store opens).
fn copy_names() -> Vec<String> {
    [
        KEYS.name(),
        AUDIT.name(),
        AUDIT_BY_KEY.name(),
        AUDIT_BY_OWNER.name(),
        RETIRED.name(),
        JOBS.name(),
        DUE.name(),
        RUNNING.name(),
        MESSAGES.name(),
        STATE_COUNTS.name(),
        BY_KEY.name(),
        BY_OWNER.name(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// "Not a snapshot", and why.
fn not(why: impl std::fmt::Display) -> StoreError {
    StoreError::NotSnapshot(format!("not an apikeyd snapshot ({why})"))
}

/// What the snapshot in `db` says about itself, checked against what it holds.
fn read_info(db: &impl ReadableDatabase) -> Result<SnapshotInfo, StoreError> {
    let read = db.begin_read()?;
    let meta = read.open_table(SNAPSHOT).map_err(|_| {
        not("no snapshot record: apikeyctl backup writes one; a live apikeyd.redb has none")
    })?;
    let text = meta
        .get("info")?
        .ok_or_else(|| not("empty snapshot record"))?;
    let info: SnapshotInfo = serde_json::from_str(text.value())
        .map_err(|e| not(format!("unreadable snapshot record: {e}")))?;
    if info.format != SNAPSHOT_FORMAT {
        return Err(StoreError::NotSnapshot(format!(
            "a snapshot of format {:?}, which this apikeyd ({}) cannot restore (it reads {SNAPSHOT_FORMAT:?})",
            info.format,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let held = counts(&read)?;
    if held != info.counts {
        return Err(StoreError::NotSnapshot(format!(
            "the snapshot is incomplete: it says it holds {}, and holds {held}",
            info.counts
        )));
    }
    Ok(info)
}

impl RedbStore {
    /// What the snapshot at `path` says about itself, checked against what it
    /// holds, without writing it (apikeyctl checks the file it wrote).
    pub fn inspect_snapshot(path: &Path) -> Result<SnapshotInfo, StoreError> {
        let db = redb::ReadOnlyDatabase::open(path)
            .map_err(|e| not(format!("not a readable redb database: {e}")))?;
        read_info(&db)
    }

    /// Check that the database at `path` (a copy the restore made, which this
    /// writes) is a whole apikeyd snapshot: a redb database whose pages check out,
    /// with the snapshot's record and every count it gives; then drop that record,
    /// so the file is an ordinary database. Returns what the snapshot said about
    /// itself.
    pub fn adopt_snapshot(path: &Path) -> Result<SnapshotInfo, StoreError> {
        let mut db =
            Database::open(path).map_err(|e| not(format!("not a readable redb database: {e}")))?;
        if !db
            .check_integrity()
            .map_err(|e| StoreError::NotSnapshot(format!("the snapshot is damaged: {e}")))?
        {
            return Err(StoreError::NotSnapshot(
                "the snapshot is damaged: redb had to repair it".into(),
            ));
        }
        let info = read_info(&db)?;
        let write = db.begin_write()?;
        write.delete_table(SNAPSHOT)?;
        write.commit()?;
        db.close().map_err(|e| StoreError::Storage(Box::new(e)))?;
        Ok(info)
    }

    /// Whether the database at `path` is open in another process (a running
    /// apikeyd): redb holds a lock on the file while it is open.
    pub fn in_use(path: &Path) -> Result<bool, StoreError> {
        match redb::ReadOnlyDatabase::open(path) {
            // A file a crash left unclean needs a repair that a read-only open does
            // not make; nobody holds it either way.
            Ok(_) | Err(redb::DatabaseError::RepairAborted) => Ok(false),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(true),
            Err(e) => Err(StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::model::{AuditEntry, KeyKind, KeyRecord};
    use crate::store::{Change, Export, Storage};

    fn info() -> SnapshotInfo {
        SnapshotInfo::new(Utc::now(), &[7; 32])
    }

    /// Every table a store opens is copied: a table added to the store without a
    /// line in `copy_all` fails here, not in an operator's restore.
    #[test]
    fn a_snapshot_copies_every_table_a_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let read = store.db.begin_read().unwrap();
        let mut opened: Vec<String> = read
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        opened.sort();
        let mut copied = copy_names();
        copied.sort();
        assert_eq!(opened, copied);
    }

    /// One key and its audit entry per commit, while the snapshot is taken: a
    /// snapshot read table by table in separate transactions could hold a key
    /// without its entry; one read transaction cannot.
    #[test]
    fn a_snapshot_taken_during_commits_is_one_moment_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("db.redb")).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut hash = [0u8; 32];
                    hash[..4].copy_from_slice(&n.to_be_bytes());
                    let rec = KeyRecord::new(
                        "alice",
                        &format!("k{n}"),
                        &hash,
                        KeyKind::Generated,
                        Utc::now(),
                    );
                    let entry = AuditEntry::new(
                        Utc::now(),
                        "alice",
                        "create",
                        Some(rec.id),
                        "created".into(),
                    );
                    store
                        .commit(Change {
                            put_keys: vec![rec],
                            audit: vec![entry],
                            ..Change::default()
                        })
                        .unwrap();
                    n += 1;
                }
                n
            })
        };
        while store.export_counts().unwrap().keys < 50 {
            std::thread::yield_now();
        }
        let snap = store.snapshot(info()).unwrap();
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert_eq!(snap.info.counts.keys, snap.info.counts.audit);
        assert!(snap.info.counts.keys >= 50 && snap.info.counts.keys <= u64::from(written));
        // The file is a snapshot that says so, and opens as a store afterwards.
        let path = dir.path().join("copy.redb");
        let mut out = std::fs::File::create(&path).unwrap();
        let mut file = snap.file;
        let copied = std::io::copy(&mut file, &mut out).unwrap();
        assert_eq!(copied, snap.bytes);
        assert_eq!(RedbStore::inspect_snapshot(&path).unwrap(), snap.info);
        // Every table named in copy_names was copied, and only those.
        let copy = redb::ReadOnlyDatabase::open(&path).unwrap();
        let mut held: Vec<String> = copy
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .filter(|t| t != SNAPSHOT.name())
            .collect();
        held.sort();
        let mut named = copy_names();
        named.sort();
        assert_eq!(held, named);
        drop(copy);
        assert_eq!(RedbStore::adopt_snapshot(&path).unwrap(), snap.info);
        let restored = RedbStore::open(&path).unwrap();
        assert_eq!(restored.export_counts().unwrap(), snap.info.counts);
        // Adopted: an ordinary database now, no longer a snapshot.
        drop(restored);
        assert!(matches!(
            RedbStore::inspect_snapshot(&path),
            Err(StoreError::NotSnapshot(_))
        ));
    }

    #[test]
    fn a_store_in_use_is_seen_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = RedbStore::open(&path).unwrap();
        assert!(RedbStore::in_use(&path).unwrap());
        drop(store);
        assert!(!RedbStore::in_use(&path).unwrap());
    }
}
