//! The redb database: the only module that knows redb. Every function here blocks;
//! callers run it in `spawn_blocking` and never hold a transaction across an `.await`.
//!
//! Tables: `keys` (id → JSON record) and `audit` (sequence → JSON entry). Records are
//! JSON so fields can be added without a migration.

pub mod jobs;

use std::path::Path;
use std::sync::atomic::AtomicI64;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use uuid::Uuid;

use crate::alerts::job::JobState;
use crate::keys::model::{AuditEntry, KeyRecord};
pub use jobs::{AlertBatch, JobFilter};

const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("keys");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// redb's page cache. Its default (1 GiB) filled up while loading the keys at start and
/// stayed resident; every read path that matters (verification, listing keys) runs from
/// memory, and the alert dispatcher reads only the head of the due index, so a small
/// cache costs nothing measurable and keeps a 1M-key daemon well under 600 MB.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (held by another process, unreadable, ...).
    #[error("cannot open database {path}: {message} (is another apikeyd running on it?)")]
    Open {
        /// Database file.
        path: String,
        /// redb's message.
        message: String,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table}: {message}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Decoder message.
        message: String,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A set of changes committed in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to insert or replace.
    pub put_keys: Vec<KeyRecord>,
    /// Audit entries to append (their `seq` is assigned here).
    pub audit: Vec<AuditEntry>,
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// Alert jobs per state ([`JobState::index`]), counted at open and kept up to
    /// date by every commit, so `/metrics` never scans the jobs.
    job_states: [AtomicI64; JobState::ALL.len()],
}

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

impl Store {
    /// Open (or create) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // A missing state directory is made private, as the daemon makes it.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| open_err(&e))?;
        }
        let file = open_private(path).map_err(|e| open_err(&e))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(|e| open_err(&e))?)
            .map_err(|e| open_err(&e))?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(KEYS).map_err(db_err)?;
        txn.open_table(AUDIT).map_err(db_err)?;
        jobs::create_tables(&txn)?;
        txn.commit().map_err(db_err)?;
        let job_states = jobs::load_state_counts(&db)?.map(AtomicI64::new);
        Ok(Self { db, job_states })
    }

    /// Pass every stored key, as `prepare` decodes its bytes (with a per-thread cache
    /// `C`), to `each` on this thread; returns how many there were. Decoding is most of
    /// a cold start, so one thread reads rows in chunks, one thread per CPU decodes
    /// them, and `each` consumes decoded chunks meanwhile.
    pub fn load_keys<T: Send, C: Default>(
        &self,
        prepare: impl Fn(&mut C, &[u8]) -> Result<T, StoreError> + Sync,
        mut each: impl FnMut(T) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        const CHUNK: usize = 8_192;
        let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        /// A chunk of rows: their bytes back to back, and where each ends.
        type Raw = (Vec<u8>, Vec<usize>);
        let prepare = &prepare;
        std::thread::scope(|s| {
            // reader → decoders (round robin) → this thread, which builds the index
            // while the next chunks are read and decoded.
            let (done_tx, done_rx) =
                std::sync::mpsc::sync_channel::<Result<Vec<T>, StoreError>>(decoders * 2);
            let mut raw_txs = Vec::new();
            for _ in 0..decoders {
                let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Raw>(2);
                raw_txs.push(raw_tx);
                let done_tx = done_tx.clone();
                s.spawn(move || {
                    let mut cache = C::default();
                    for (bytes, ends) in raw_rx {
                        let mut start = 0;
                        let mut out = Vec::with_capacity(ends.len());
                        let mut failed = None;
                        for end in ends {
                            match prepare(&mut cache, &bytes[start..end]) {
                                Ok(t) => out.push(t),
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            start = end;
                        }
                        let msg = match failed {
                            Some(e) => Err(e),
                            None => Ok(out),
                        };
                        if done_tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
            }
            let reader_done = done_tx;
            s.spawn(move || {
                let read = || -> Result<(), StoreError> {
                    let txn = self.db.begin_read().map_err(db_err)?;
                    let table = txn.open_table(KEYS).map_err(db_err)?;
                    let mut chunk: Raw = (Vec::new(), Vec::with_capacity(CHUNK));
                    let mut next = 0;
                    for row in table.iter().map_err(db_err)? {
                        let (_, v) = row.map_err(db_err)?;
                        chunk.0.extend_from_slice(v.value());
                        chunk.1.push(chunk.0.len());
                        if chunk.1.len() == CHUNK {
                            let cap = chunk.0.len();
                            let full = std::mem::replace(
                                &mut chunk,
                                (Vec::with_capacity(cap), Vec::with_capacity(CHUNK)),
                            );
                            if raw_txs[next % raw_txs.len()].send(full).is_err() {
                                return Ok(());
                            }
                            next += 1;
                        }
                    }
                    if !chunk.1.is_empty() {
                        let _ = raw_txs[next % raw_txs.len()].send(chunk);
                    }
                    Ok(())
                };
                if let Err(e) = read() {
                    let _ = reader_done.send(Err(e));
                }
                // Dropping the senders ends the decoders, then the receiver below.
            });
            let mut count = 0;
            for chunk in done_rx {
                for item in chunk? {
                    each(item)?;
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    /// Number of stored keys (all states).
    pub fn key_count(&self) -> Result<usize, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(KEYS).map_err(db_err)?;
        Ok(usize::try_from(table.len().map_err(db_err)?).unwrap_or(0))
    }

    /// One key's full record.
    pub fn key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys(&[id])?.pop())
    }

    /// The full records of `ids` (in that order; missing ids are skipped).
    pub fn keys(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(KEYS).map_err(db_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = table.get(id.as_u128()).map_err(db_err)? {
                out.push(decode("keys", v.value())?);
            }
        }
        Ok(out)
    }

    /// Write usage (last use and counters) into the stored records of keys, in one
    /// transaction. Keys no longer stored (purged) are skipped. Returns keys written.
    pub fn write_usage(&self, updates: &[UsageUpdate]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut written = 0;
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            for u in updates {
                let Some(mut rec) = keys
                    .get(u.id.as_u128())
                    .map_err(db_err)?
                    .map(|v| decode::<KeyRecord>("keys", v.value()))
                    .transpose()?
                else {
                    continue;
                };
                rec.last_used_at = rec.last_used_at.max(u.last_used_at);
                rec.usage = u.counts.clone();
                let bytes = serde_json::to_vec(&rec).map_err(db_err)?;
                keys.insert(rec.id.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
                written += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(written)
    }

    /// Commit a batch atomically.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.commit_with(batch, AlertBatch::default())
    }

    /// Commit key changes and job changes in one transaction.
    pub fn commit_with(&self, mut batch: Batch, alerts: AlertBatch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            for rec in &batch.put_keys {
                let bytes = serde_json::to_vec(rec).map_err(db_err)?;
                keys.insert(rec.id.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            let first = match audit.last().map_err(db_err)? {
                Some((k, _)) => k.value() + 1,
                None => 1,
            };
            for (seq, entry) in (first..).zip(&mut batch.audit) {
                entry.seq = seq;
                let bytes = serde_json::to_vec(entry).map_err(db_err)?;
                audit.insert(entry.seq, bytes.as_slice()).map_err(db_err)?;
            }
        }
        let delta = jobs::apply(&txn, alerts)?;
        txn.commit().map_err(db_err)?;
        self.add_job_states(&delta);
        Ok(())
    }

    /// The newest `limit` audit entries, optionally for one key, newest first.
    pub fn audit(&self, key: Option<Uuid>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)?.rev() {
            let (_, v) = row.map_err(db_err)?;
            let entry: AuditEntry = decode("audit", v.value())?;
            if key.is_none() || entry.key_id == key {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Usage of one key as the flush writes it.
#[derive(Debug, Clone)]
pub struct UsageUpdate {
    /// The key.
    pub id: Uuid,
    /// Newest last use known in memory.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Counters known in memory.
    pub counts: crate::keys::model::UsageCounts,
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        message: e.to_string(),
    })
}
