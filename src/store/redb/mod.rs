//! The redb database, [`RedbStore`]: the only module that knows redb. Every function
//! here blocks; callers run it in `spawn_blocking` and never hold a transaction
//! across an `.await`.
//!
//! Tables: `keys` (id → JSON record) and `audit` (sequence → JSON entry). Records are
//! JSON so fields can be added without a migration. `audit_by_key` ((key, seq) → ())
//! and `audit_by_owner` ((owner, seq) → ()) index the audit trail, written in the
//! transaction that appends the entry, so a listing for one key or one owner reads
//! only their entries; a database written before they existed gets them built once,
//! when it is opened ([`RedbStore::open`]). `retired_secrets` (keyed hash → JSON
//! [`RetiredSecret`]) remembers imported secrets that left their key, written in the
//! transaction that removes, rotates or purges it.

mod export;
#[cfg(test)]
mod job_tests;
mod jobs;
mod reopen;
mod snapshot;
mod tables;

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use uuid::Uuid;

use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
};
use crate::store::error::StoreError;
use crate::store::page::{Page, Pager};
use crate::store::storage::{AuditFilter, Change, JobFilter, KeyChanges, Storage, UsageUpdate};
pub use reopen::CACHE_BYTES;
use tables::{decode, encode, owner_of, Owners, KEYS};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_BY_KEY: TableDefinition<(u128, u64), ()> = TableDefinition::new("audit_by_key");
const AUDIT_BY_OWNER: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_owner");
const RETIRED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retired_secrets");

/// How long a flush waits at most for changes about to commit, to make them
/// durable together (group commit).
const GROUP_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// The open database.
#[derive(Debug)]
pub struct RedbStore {
    db: reopen::Db,
    /// The database's directory: where a backup's scratch file goes.
    dir: std::path::PathBuf,
    /// Alert jobs per state ([`JobState::index`]), counted at open and kept up to
    /// date by every commit, so `/metrics` never scans the jobs.
    job_states: [AtomicI64; JobState::ALL.len()],
    /// Group commit: up to which change [`Storage::commit_pending`] numbered
    /// (`db.committed`) [`Storage::sync`] made them durable (`db.durable` too).
    durable: parking_lot::Mutex<u64>,
    /// Signalled by every [`Storage::commit_pending`], for a flush waiting for it.
    more: parking_lot::Condvar,
}

impl RedbStore {
    /// Open (or create) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // A missing state directory is made private, as the daemon makes it.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    source: e.into(),
                })?;
        }
        let db = reopen::open_file(path)?;
        let txn = db.begin_write()?;
        let existing: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
        let missing = |name: &str| !existing.iter().any(|t| t == name);
        let build_audit_index = missing(AUDIT_BY_OWNER.name());
        let build_job_index = jobs::index_missing(&missing);
        txn.open_table(KEYS)?;
        txn.open_table(AUDIT)?;
        txn.open_table(AUDIT_BY_KEY)?;
        txn.open_table(AUDIT_BY_OWNER)?;
        txn.open_table(RETIRED)?;
        jobs::create_tables(&txn)?;
        if build_audit_index {
            index_audit(&txn)?;
        }
        if build_job_index {
            jobs::index_jobs(&txn)?;
        }
        txn.commit()?;
        let job_states = jobs::load_state_counts(&db)?.map(AtomicI64::new);
        Ok(Self {
            db: reopen::Db::new(path, db),
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| ".".into(), Path::to_path_buf),
            job_states,
            durable: parking_lot::Mutex::new(0),
            more: parking_lot::Condvar::new(),
        })
    }

    /// Add a committed [`jobs::apply`]'s changes to the counts.
    fn add_job_states(&self, delta: &jobs::StateDelta) {
        for (count, d) in self.job_states.iter().zip(delta) {
            if *d != 0 {
                count.fetch_add(*d, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Write `batch` in one transaction committed with `durability`.
    fn write_change(&self, mut batch: Change, durability: Durability) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)
            .map_err(|e| StoreError::Transaction(Box::new(e)))?;
        let delta = apply_change(&txn, &mut batch)?;
        txn.commit()?;
        self.add_job_states(&delta);
        Ok(())
    }

    /// Pass every stored key, as `prepare` decodes its bytes (with a per-thread cache
    /// `C`), to `each` on this thread; returns how many there were. Decoding is most of
    /// a cold start, so one thread reads rows in chunks, one thread per CPU decodes
    /// them, and `each` consumes decoded chunks meanwhile.
    fn read_keys<T: Send, C: Default>(
        &self,
        prepare: impl Fn(&mut C, &[u8]) -> Result<T, StoreError> + Sync,
        each: &mut dyn FnMut(T),
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
                    let txn = self.db.begin_read()?;
                    let table = txn.open_table(KEYS)?;
                    let mut chunk: Raw = (Vec::new(), Vec::with_capacity(CHUNK));
                    let mut next = 0;
                    for row in table.iter()? {
                        let (_, v) = row?;
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
                    each(item);
                    count += 1;
                }
            }
            Ok(count)
        })
    }
}

impl Storage for RedbStore {
    fn key_count(&self) -> Result<usize, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KEYS)?;
        Ok(usize::try_from(table.len()?).unwrap_or(0))
    }

    fn load_keys(&self, each: &mut dyn FnMut(KeyRow)) -> Result<usize, StoreError> {
        self.read_keys(crate::store::load::prepare, each)
    }

    fn keys(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = table.get(id.as_u128())? {
                out.push(decode("keys", v.value())?);
            }
        }
        Ok(out)
    }

    fn write_usage(&self, updates: &[UsageUpdate]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let mut written = 0;
        {
            let mut keys = txn.open_table(KEYS)?;
            for u in updates {
                let Some(mut rec) = keys
                    .get(u.id.as_u128())?
                    .map(|v| decode::<KeyRecord>("keys", v.value()))
                    .transpose()?
                else {
                    continue;
                };
                rec.last_used_at = rec.last_used_at.max(u.last_used_at);
                rec.usage.add(&u.counts);
                let bytes = encode("keys", &rec)?;
                keys.insert(rec.id.as_u128(), bytes.as_slice())?;
                written += 1;
            }
        }
        txn.commit()?;
        Ok(written)
    }

    fn commit(&self, batch: Change) -> Result<(), StoreError> {
        self.write_change(batch, Durability::Immediate)
    }

    /// A big import is half keys and audit trail, half their indexes and alert
    /// jobs: when every job and audit entry is about a key written in the same
    /// change (so no key record is read for its owner), the audit indexes and the
    /// jobs are written on a second thread (redb lets one transaction's tables be
    /// written from several).
    fn commit_all(&self, mut changes: Vec<Change>) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        let mut delta = jobs::StateDelta::default();
        let mut add = |d: jobs::StateDelta| {
            for (sum, d) in delta.iter_mut().zip(d) {
                *sum += d;
            }
        };
        let owners: Vec<Owners> = if changes.len() > 1 {
            changes.iter().map(owners_written).collect()
        } else {
            Vec::new()
        };
        if !owners.is_empty() && changes.iter().zip(&owners).all(self_contained) {
            // Numbered here as `apply_keys` numbers them, for the other thread.
            let mut next = next_seq(&txn.open_table(AUDIT)?)?;
            let job_parts: Vec<(Change, Vec<AboutKey>, Owners)> = changes
                .iter_mut()
                .zip(owners)
                .map(|(c, owners)| {
                    for entry in &mut c.audit {
                        entry.seq = next;
                        next += 1;
                    }
                    (take_jobs(c), about_keys(&c.audit), owners)
                })
                .collect();
            let txn = &txn;
            std::thread::scope(|s| {
                // Refused (not a panic) when no thread can be had: the transaction
                // is then aborted as any failed write is.
                let jobs = std::thread::Builder::new()
                    .name("redb-jobs".into())
                    .spawn_scoped(s, move || {
                        let mut delta = jobs::StateDelta::default();
                        for (mut part, audit, owners) in job_parts {
                            file_audit(txn, &audit, |key| {
                                Ok(owners.get(&key).map(|o| Cow::Borrowed(o.as_str())))
                            })?;
                            let d = jobs::apply(txn, &mut part, &owners)?;
                            for (sum, d) in delta.iter_mut().zip(d) {
                                *sum += d;
                            }
                        }
                        Ok::<_, StoreError>(delta)
                    })
                    .map_err(|e| StoreError::Transaction(Box::new(e)))?;
                let keys = changes
                    .iter_mut()
                    .try_for_each(|batch| apply_keys(txn, batch, false));
                // Joined whatever happened here: a thread left running (or
                // panicked) must not outlive its tables.
                let jobs = jobs.join().map_err(|_| {
                    StoreError::Transaction(Box::new(std::io::Error::other(
                        "writing the alert jobs failed",
                    )))
                });
                keys?;
                add(jobs??);
                Ok::<_, StoreError>(())
            })?;
        } else {
            for batch in &mut changes {
                add(apply_change(&txn, batch)?);
            }
        }
        txn.commit()?;
        self.add_job_states(&delta);
        Ok(())
    }

    /// A commit without its fsync: redb keeps it in this process until a durable
    /// commit follows, which [`Self::sync`] makes (one for every change waiting).
    fn commit_pending(&self, batch: Change) -> Result<u64, StoreError> {
        self.write_change(batch, Durability::None)?;
        // redb serialises write transactions, so a number taken after this commit
        // returned is at least every number of a commit that returned before.
        let ticket = self.db.committed.fetch_add(1, Ordering::AcqRel) + 1;
        self.more.notify_all();
        Ok(ticket)
    }

    fn sync(&self, ticket: u64, more_coming: &dyn Fn() -> bool) -> Result<(), StoreError> {
        // A flush holds redb's write lock, so a change about to commit would wait
        // for it and need a flush of its own: let those commit first, for a short
        // while at most. Then the first waiter makes every change committed so far
        // durable; those behind it find theirs among them and return.
        let deadline = std::time::Instant::now() + GROUP_COMMIT_WAIT;
        let mut durable = self.durable.lock();
        while *durable < ticket && more_coming() {
            if self.more.wait_until(&mut durable, deadline).timed_out() {
                break;
            }
        }
        if *durable >= ticket {
            return Ok(());
        }
        let upto = self.db.committed.load(Ordering::Acquire);
        let not_durable = |e: StoreError| StoreError::NotDurable(Box::new(e));
        let txn = self.db.begin_write().map_err(not_durable)?;
        txn.commit().map_err(|e| not_durable(e.into()))?;
        *durable = upto;
        self.db.durable.store(upto, Ordering::Release);
        drop(durable);
        // Those waiting for changes to come are among the ones just made durable.
        self.more.notify_all();
        Ok(())
    }

    fn retired(&self, hash: &KeyHash) -> Result<Option<RetiredSecret>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RETIRED)?;
        table
            .get(hash.as_slice())?
            .map(|v| decode("retired_secrets", v.value()))
            .transpose()
    }

    /// A key or owner filter reads that index, so the page decodes only the
    /// entries it returns.
    fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry, u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut page = Pager::new(limit);
        // Rows before the cursor: all of them without one.
        let Some(hi) = before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else {
            return Ok(page.done());
        };
        let fetch = |page: &mut Pager<AuditEntry, u64>, seq: u64| -> Result<(), StoreError> {
            if let Some(v) = table.get(seq)? {
                page.items.push(decode("audit", v.value())?);
            }
            Ok(())
        };
        if let Some(key) = filter.key {
            let index = txn.open_table(AUDIT_BY_KEY)?;
            let k = key.as_u128();
            for row in index.range((k, 0)..=(k, hi))?.rev() {
                let seq = row?.0.value().1;
                if !page.admit(seq) {
                    break;
                }
                fetch(&mut page, seq)?;
            }
        } else if let Some(owner) = &filter.owner {
            let index = txn.open_table(AUDIT_BY_OWNER)?;
            let o = owner.as_str();
            for row in index.range((o, 0)..=(o, hi))?.rev() {
                let seq = row?.0.value().1;
                if !page.admit(seq) {
                    break;
                }
                fetch(&mut page, seq)?;
            }
        } else {
            for row in table.range(..=hi)?.rev() {
                let (k, v) = row?;
                if !page.admit(k.value()) {
                    break;
                }
                page.items.push(decode("audit", v.value())?);
            }
        }
        Ok(page.done())
    }

    fn job(&self, id: Uuid) -> Result<Option<AlertJob>, StoreError> {
        self.db.with(|db| jobs::read_job(db, id))
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Page<AlertJob, u128>, StoreError> {
        self.db.with(|db| jobs::list_jobs(db, filter))
    }

    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError> {
        let (claimed, delta) = self.db.with(|db| jobs::claim(db, now, limit))?;
        self.add_job_states(&delta);
        Ok(claimed)
    }

    fn running_jobs(&self, _now: DateTime<Utc>) -> Result<Vec<AlertJob>, StoreError> {
        self.db.with(jobs::running)
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.db.with(jobs::first_due)
    }

    /// Kept in memory (see [`jobs::apply`]): no scan.
    fn job_state_counts(&self) -> [(JobState, u64); JobState::ALL.len()] {
        JobState::ALL.map(|s| {
            let n = self.job_states[s.index()].load(std::sync::atomic::Ordering::Relaxed);
            (s, u64::try_from(n).unwrap_or(0))
        })
    }

    fn messages(
        &self,
        unacknowledged_only: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        self.db
            .with(|db| jobs::list_messages(db, unacknowledged_only, limit))
    }

    /// Nobody else writes this database: the only change to report is that a
    /// reopen after a failed write lost changes the index shows.
    fn changes(&self) -> Result<KeyChanges, StoreError> {
        let (reload, upto) = self.db.reload_wanted();
        Ok(KeyChanges {
            reload,
            upto,
            ..KeyChanges::default()
        })
    }

    fn changes_applied(&self, upto: u64) {
        self.db.reloaded(upto);
    }

    fn message(&self, id: u64) -> Result<Option<OperatorMessage>, StoreError> {
        self.db.with(|db| jobs::read_message(db, id))
    }
}

/// Build the audit indexes of a database written before they existed: one pass
/// over the trail, at open. Entries of keys already purged have no owner to file
/// them under and stay out of the owner index (no owner listing showed them before).
fn index_audit(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    /// serde skips the rest of the entry.
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        #[serde(default)]
        key_id: Option<Uuid>,
    }
    let audit = txn.open_table(AUDIT)?;
    let keys = txn.open_table(KEYS)?;
    let mut by_key = txn.open_table(AUDIT_BY_KEY)?;
    let mut by_owner = txn.open_table(AUDIT_BY_OWNER)?;
    let mut owners: std::collections::HashMap<Uuid, Option<String>> = Default::default();
    let mut n = 0usize;
    for row in audit.iter()? {
        let (seq, v) = row?;
        let seq = seq.value();
        let Some(key) = decode::<KeyOnly>("audit", v.value())?.key_id else {
            continue;
        };
        by_key.insert((key.as_u128(), seq), ())?;
        let owner = match owners.get(&key) {
            Some(o) => o.clone(),
            None => {
                let o = owner_of(&keys, key)?;
                owners.insert(key, o.clone());
                o
            }
        };
        if let Some(owner) = owner {
            by_owner.insert((owner.as_str(), seq), ())?;
        }
        n += 1;
    }
    if n > 0 {
        tracing::info!(entries = n, "audit trail indexed by key and owner");
    }
    Ok(())
}

fn owners_written(batch: &Change) -> Owners {
    batch
        .put_keys
        .iter()
        .map(|r| (r.id, r.owner.clone()))
        .collect()
}

/// Whether every job `batch` files and every audit entry it appends is about a
/// key it writes (`owners`: [`owners_written`] of it).
fn self_contained((batch, owners): (&Change, &Owners)) -> bool {
    batch
        .put_jobs
        .iter()
        .all(|j| owners.contains_key(&j.key_id))
        && batch
            .audit
            .iter()
            .all(|e| e.key_id.is_none_or(|k| owners.contains_key(&k)))
}

/// The jobs and operator messages of `batch`, taken out of it.
fn take_jobs(batch: &mut Change) -> Change {
    Change {
        put_jobs: std::mem::take(&mut batch.put_jobs),
        delete_jobs: std::mem::take(&mut batch.delete_jobs),
        messages: std::mem::take(&mut batch.messages),
        ..Change::default()
    }
}

/// Write `batch` into `txn`; returns the change in job counts per state.
fn apply_change(
    txn: &redb::WriteTransaction,
    batch: &mut Change,
) -> Result<jobs::StateDelta, StoreError> {
    apply_keys(txn, batch, true)?;
    let owners = owners_written(batch);
    jobs::apply(txn, batch, &owners)
}

/// The number the next audit entry gets.
fn next_seq(audit: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(match audit.last()? {
        Some((k, _)) => k.value() + 1,
        None => 1,
    })
}

/// An audit entry about a key: (seq, key).
type AboutKey = (u64, Uuid);

/// The numbered `entries` that are about a key.
fn about_keys(entries: &[AuditEntry]) -> Vec<AboutKey> {
    entries
        .iter()
        .filter_map(|e| Some((e.seq, e.key_id?)))
        .collect()
}

/// File audit entries (seq, key) under their key and under their key's owner, as
/// `owner_of` gives it (none: a key already purged).
fn file_audit<'a>(
    txn: &redb::WriteTransaction,
    entries: &[AboutKey],
    mut owner_of: impl FnMut(Uuid) -> Result<Option<Cow<'a, str>>, StoreError>,
) -> Result<(), StoreError> {
    let mut by_key = txn.open_table(AUDIT_BY_KEY)?;
    let mut by_owner = txn.open_table(AUDIT_BY_OWNER)?;
    // Owners' entries interleave in a batch: written in (owner, seq) order, each
    // owner's run lands on one page instead of each entry on another.
    let mut owned: Vec<(Cow<'a, str>, u64)> = Vec::with_capacity(entries.len());
    for (seq, key) in entries {
        by_key.insert((key.as_u128(), *seq), ())?;
        if let Some(owner) = owner_of(*key)? {
            owned.push((owner, *seq));
        }
    }
    owned.sort_unstable();
    for (owner, seq) in &owned {
        by_owner.insert((owner.as_ref(), *seq), ())?;
    }
    Ok(())
}

/// Write the keys, audit entries and retired secrets of `batch` into `txn`; with
/// `index_audit`, file the entries in the audit indexes too (else the caller does:
/// see [`RedbStore::commit_all`]).
fn apply_keys(
    txn: &redb::WriteTransaction,
    batch: &mut Change,
    index_audit: bool,
) -> Result<(), StoreError> {
    {
        let mut keys = txn.open_table(KEYS)?;
        for rec in &mut batch.put_keys {
            let stored = keys
                .get(rec.id.as_u128())?
                .map(|v| decode::<KeyRecord>("keys", v.value()))
                .transpose()?;
            if let Some(stored) = stored {
                rec.keep_usage_of(&stored);
            }
            let bytes = encode("keys", &*rec)?;
            keys.insert(rec.id.as_u128(), bytes.as_slice())?;
        }
        let mut audit = txn.open_table(AUDIT)?;
        let first = next_seq(&audit)?;
        for (seq, entry) in (first..).zip(&mut batch.audit) {
            // Numbered already for the other thread's indexes: the numbers must
            // be these, or the indexes would point at other entries.
            if !index_audit && entry.seq != seq {
                return Err(StoreError::Transaction(Box::new(std::io::Error::other(
                    format!(
                        "audit entry numbered {} ahead, {seq} in the table",
                        entry.seq
                    ),
                ))));
            }
            entry.seq = seq;
            let bytes = encode("audit", entry)?;
            audit.insert(entry.seq, bytes.as_slice())?;
        }
        if index_audit {
            // A sweep writes thousands of records with an entry each: look owners
            // up by id, not by a search of the batch per entry.
            let written: std::collections::HashMap<Uuid, &str> = batch
                .put_keys
                .iter()
                .map(|r| (r.id, r.owner.as_str()))
                .collect();
            file_audit(txn, &about_keys(&batch.audit), |key| {
                Ok(match written.get(&key) {
                    Some(owner) => Some(Cow::Borrowed(*owner)),
                    None => owner_of(&keys, key)?.map(Cow::Owned),
                })
            })?;
        }
    }
    if !batch.retire.is_empty() {
        let mut retired = txn.open_table(RETIRED)?;
        for r in &batch.retire {
            if r.refresh_only && retired.get(r.hash.as_slice())?.is_none() {
                continue;
            }
            let bytes = encode("retired_secrets", &r.entry)?;
            retired.insert(r.hash.as_slice(), bytes.as_slice())?;
        }
    }
    if !batch.purge_keys.is_empty() {
        // After the audit entries, which file a purged key under its owner.
        let mut keys = txn.open_table(KEYS)?;
        for id in &batch.purge_keys {
            keys.remove(id.as_u128())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
