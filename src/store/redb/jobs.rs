//! Alert jobs and operator messages in redb.
//!
//! Tables: `alert_jobs` (job id → JSON job), `alert_due` ((run-at ms, job id) → ()),
//! an index holding exactly the jobs in state Scheduled, so the dispatcher reads the
//! next due job without holding any job in memory; `alert_running` (job id → ()), the
//! jobs claimed for delivery, read at start to find deliveries cut short by a crash;
//! `operator_messages` (sequence → JSON message); `alert_jobs_by_key` ((key, job id) →
//! owner) and `alert_jobs_by_owner` ((owner, job id) → ()), written with the job, so
//! listing one key's or one owner's jobs reads only theirs (built once at open for a
//! database written before they existed).

use chrono::{DateTime, Utc};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use uuid::Uuid;

use super::tables::{decode, encode, owner_of, Owners, KEYS};
use crate::model::{AlertJob, JobState, OperatorMessage};
use crate::store::error::StoreError;
use crate::store::page::{Page, Pager};
use crate::store::storage::{Change, JobFilter};

pub(super) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("alert_jobs");
pub(super) const DUE: TableDefinition<(i64, u128), ()> = TableDefinition::new("alert_due");
pub(super) const RUNNING: TableDefinition<u128, ()> = TableDefinition::new("alert_running");
pub(super) const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("operator_messages");
/// Number of jobs per state ([`JobState::index`]), kept by [`apply`] in the same
/// transaction as the jobs, so opening the store reads five rows, not every job.
pub(super) const STATE_COUNTS: TableDefinition<u8, i64> =
    TableDefinition::new("alert_job_state_counts");
/// The owner is the value so that a deleted job's owner entry can be found even
/// when its key was purged before it.
pub(super) const BY_KEY: TableDefinition<(u128, u128), &str> =
    TableDefinition::new("alert_jobs_by_key");
pub(super) const BY_OWNER: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("alert_jobs_by_owner");

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(JOBS)?;
    txn.open_table(DUE)?;
    txn.open_table(RUNNING)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(STATE_COUNTS)?;
    txn.open_table(BY_KEY)?;
    txn.open_table(BY_OWNER)?;
    Ok(())
}

/// Whether the job indexes must be built (`missing` tells whether a table exists).
pub(super) fn index_missing(missing: &impl Fn(&str) -> bool) -> bool {
    missing(BY_OWNER.name())
}

/// Build the key and owner indexes of the jobs of a database written before they
/// existed: one pass over the jobs, at open.
pub(super) fn index_jobs(txn: &WriteTransaction) -> Result<(), StoreError> {
    /// serde skips the rest of the job.
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        key_id: Uuid,
    }
    let jobs = txn.open_table(JOBS)?;
    let mut wanted = Vec::new();
    for row in jobs.iter()? {
        let (id, v) = row?;
        wanted.push((
            decode::<KeyOnly>("alert_jobs", v.value())?.key_id,
            id.value(),
        ));
    }
    add_to_indexes(txn, &wanted, &std::collections::HashMap::new())?;
    if !wanted.is_empty() {
        tracing::info!(jobs = wanted.len(), "alert jobs indexed by key and owner");
    }
    Ok(())
}

/// File jobs (key, job id) not yet indexed under their key and their key's owner.
fn add_to_indexes(
    txn: &WriteTransaction,
    wanted: &[(Uuid, u128)],
    known: &Owners,
) -> Result<(), StoreError> {
    use std::borrow::Cow;
    if wanted.is_empty() {
        return Ok(());
    }
    // Opened only when a job's key is not among those written with it: the keys
    // table may be open on another thread (see `RedbStore::commit_all`).
    let mut keys = None;
    let mut by_key = txn.open_table(BY_KEY)?;
    let mut by_owner = txn.open_table(BY_OWNER)?;
    // Written in (owner, job) order: see the audit trail's owner index.
    let mut owned: Vec<(Cow<'_, str>, u128)> = Vec::new();
    for (key, id) in wanted {
        let k = (key.as_u128(), *id);
        if by_key.get(k)?.is_some() {
            continue;
        }
        // A job whose key is gone has no owner to be listed under. The owner of a
        // key written in the same change is known without reading its record.
        let owner = match known.get(key) {
            Some(owner) => Some(Cow::Borrowed(owner.as_str())),
            None => {
                let keys = match &mut keys {
                    Some(keys) => keys,
                    None => keys.insert(txn.open_table(KEYS)?),
                };
                owner_of(keys, *key)?.map(Cow::Owned)
            }
        };
        by_key.insert(k, owner.as_deref().unwrap_or(""))?;
        if let Some(owner) = owner {
            owned.push((owner, *id));
        }
    }
    owned.sort_unstable();
    for (owner, id) in &owned {
        by_owner.insert((owner.as_ref(), *id), ())?;
    }
    Ok(())
}

/// Take jobs (key, job id) out of the key and owner indexes.
fn drop_from_indexes(txn: &WriteTransaction, gone: &[(u128, u128)]) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    let mut by_key = txn.open_table(BY_KEY)?;
    let mut by_owner = txn.open_table(BY_OWNER)?;
    for (key, id) in gone {
        let owner = by_key.remove((*key, *id))?.map(|o| o.value().to_owned());
        if let Some(owner) = owner.filter(|o| !o.is_empty()) {
            by_owner.remove((owner.as_str(), *id))?;
        }
    }
    Ok(())
}

/// Change in the number of jobs per state ([`JobState::index`]) made by one
/// [`apply`], added to the store's counts once the transaction commits.
pub(super) type StateDelta = [i64; JobState::ALL.len()];

/// Apply `batch` inside an open write transaction. Every job write goes through
/// here, and each replaced or deleted job is read first anyway (to unindex it), so
/// this also returns how the batch changes the number of jobs in each state.
/// `owners`: the owners of the keys written with the jobs, which need not be read.
pub(super) fn apply(
    txn: &WriteTransaction,
    batch: &mut Change,
    owners: &Owners,
) -> Result<StateDelta, StoreError> {
    let mut delta = StateDelta::default();
    if batch.put_jobs.is_empty() && batch.delete_jobs.is_empty() && batch.messages.is_empty() {
        return Ok(delta);
    }
    let mut jobs = txn.open_table(JOBS)?;
    let mut due = txn.open_table(DUE)?;
    let mut running = txn.open_table(RUNNING)?;
    // Jobs leaving the key and owner indexes: (key, job id).
    let mut gone = Vec::new();
    let mut unindex = |jobs: &redb::Table<u128, &[u8]>,
                       id: u128|
     -> Result<Option<(JobState, Uuid)>, StoreError> {
        let old = jobs.get(id)?;
        let mut state = None;
        if let Some(old) = old {
            let old: AlertJob = decode("alert_jobs", old.value())?;
            due.remove((ms(old.run_at), id))?;
            state = Some((old.state, old.key_id));
        }
        running.remove(id)?;
        Ok(state)
    };
    for id in &batch.delete_jobs {
        if let Some((old, key)) = unindex(&jobs, id.as_u128())? {
            delta[old.index()] -= 1;
            gone.push((key.as_u128(), id.as_u128()));
        }
        jobs.remove(id.as_u128())?;
    }
    let mut index = Vec::new();
    for job in &batch.put_jobs {
        let id = job.id.as_u128();
        if let Some((old, key)) = unindex(&jobs, id)? {
            delta[old.index()] -= 1;
            if key != job.key_id {
                gone.push((key.as_u128(), id));
            }
        }
        delta[job.state.index()] += 1;
        let bytes = encode("alert_jobs", job)?;
        jobs.insert(id, bytes.as_slice())?;
        index.push((id, job.state, ms(job.run_at)));
    }
    for (id, state, run_at) in index {
        match state {
            JobState::Scheduled => {
                due.insert((run_at, id), ())?;
            }
            JobState::Running => {
                running.insert(id, ())?;
            }
            _ => {}
        }
    }
    drop_from_indexes(txn, &gone)?;
    let filed: Vec<(Uuid, u128)> = batch
        .put_jobs
        .iter()
        .map(|j| (j.key_id, j.id.as_u128()))
        .collect();
    add_to_indexes(txn, &filed, owners)?;
    if !batch.messages.is_empty() {
        let mut table = txn.open_table(MESSAGES)?;
        let mut next = match table.last()? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        for m in &mut batch.messages {
            if m.id == 0 {
                m.id = next;
                next += 1;
            }
            let bytes = encode("operator_messages", m)?;
            table.insert(m.id, bytes.as_slice())?;
        }
    }
    add_state_counts(txn, &delta)?;
    Ok(delta)
}

fn add_state_counts(txn: &WriteTransaction, delta: &StateDelta) -> Result<(), StoreError> {
    if delta.iter().all(|d| *d == 0) {
        return Ok(());
    }
    let mut counts = txn.open_table(STATE_COUNTS)?;
    for (i, d) in delta.iter().enumerate().filter(|(_, d)| **d != 0) {
        let i = u8::try_from(i).unwrap_or(u8::MAX);
        let old = counts.get(i)?.map_or(0, |v| v.value());
        counts.insert(i, old + d)?;
    }
    Ok(())
}

/// The number of stored jobs per state, from the counts table. A database written
/// before that table existed has no rows in it: its jobs are counted once here and
/// the counts stored, after which [`apply`] keeps them.
pub(super) fn load_state_counts(db: &Database) -> Result<StateDelta, StoreError> {
    let mut counts = StateDelta::default();
    {
        let txn = db.begin_read()?;
        let stored = txn.open_table(STATE_COUNTS)?;
        let mut any = false;
        for row in stored.iter()? {
            let (k, v) = row?;
            if let Some(c) = counts.get_mut(usize::from(k.value())) {
                *c = v.value();
            }
            any = true;
        }
        let jobs = txn.open_table(JOBS)?;
        if any || jobs.is_empty()? {
            return Ok(counts);
        }
    }
    /// Only the state is needed; serde skips the rest of the record.
    #[derive(serde::Deserialize)]
    struct StateOnly {
        state: JobState,
    }
    let txn = db.begin_write()?;
    {
        let jobs = txn.open_table(JOBS)?;
        for row in jobs.iter()? {
            let (_, v) = row?;
            let job: StateOnly = decode("alert_jobs", v.value())?;
            counts[job.state.index()] += 1;
        }
    }
    add_state_counts(&txn, &counts)?;
    txn.commit()?;
    Ok(counts)
}

pub(super) fn read_job(db: &Database, id: Uuid) -> Result<Option<AlertJob>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(JOBS)?;
    let v = table.get(id.as_u128())?;
    v.map(|v| decode("alert_jobs", v.value())).transpose()
}

/// A key or owner filter reads that index; a state filter is checked on each job
/// read.
pub(super) fn list_jobs(
    db: &Database,
    filter: &JobFilter,
) -> Result<Page<AlertJob, u128>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(JOBS)?;
    let mut page = Pager::new(filter.limit);
    // Jobs before the cursor: all of them without one.
    let Some(hi) = filter.before.map_or(Some(u128::MAX), |b| b.checked_sub(1)) else {
        return Ok(page.done());
    };
    let visit = |page: &mut Pager<AlertJob, u128>, bytes: &[u8]| -> Result<(), StoreError> {
        let job: AlertJob = decode("alert_jobs", bytes)?;
        if filter.key.is_none_or(|k| k == job.key_id) && filter.state.is_none_or(|s| s == job.state)
        {
            page.items.push(job);
        }
        Ok(())
    };
    if let Some(key) = filter.key {
        let index = txn.open_table(BY_KEY)?;
        let k = key.as_u128();
        for row in index.range((k, 0)..=(k, hi))?.rev() {
            let (at, owner) = row?;
            let id = at.value().1;
            if !page.admit(id) {
                break;
            }
            if filter.owner.as_deref().is_some_and(|o| o != owner.value()) {
                continue;
            }
            if let Some(v) = table.get(id)? {
                visit(&mut page, v.value())?;
            }
        }
    } else if let Some(owner) = &filter.owner {
        let index = txn.open_table(BY_OWNER)?;
        let o = owner.as_str();
        for row in index.range((o, 0)..=(o, hi))?.rev() {
            let id = row?.0.value().1;
            if !page.admit(id) {
                break;
            }
            if let Some(v) = table.get(id)? {
                visit(&mut page, v.value())?;
            }
        }
    } else {
        for row in table.range(..=hi)?.rev() {
            let (id, v) = row?;
            if !page.admit(id.value()) {
                break;
            }
            visit(&mut page, v.value())?;
        }
    }
    Ok(page.done())
}

pub(super) fn first_due(db: &Database) -> Result<Option<DateTime<Utc>>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DUE)?;
    let first = table.first()?;
    Ok(first.and_then(|(k, _)| DateTime::from_timestamp_millis(k.value().0)))
}

pub(super) fn running(db: &Database) -> Result<Vec<AlertJob>, StoreError> {
    let txn = db.begin_read()?;
    let running = txn.open_table(RUNNING)?;
    let jobs = txn.open_table(JOBS)?;
    let mut out = Vec::new();
    for row in running.iter()? {
        let (k, _) = row?;
        if let Some(v) = jobs.get(k.value())? {
            out.push(decode("alert_jobs", v.value())?);
        }
    }
    Ok(out)
}

pub(super) fn list_messages(
    db: &Database,
    unacknowledged_only: bool,
    limit: usize,
) -> Result<Vec<OperatorMessage>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let mut out = Vec::new();
    for row in table.iter()?.rev() {
        let (_, v) = row?;
        let m: OperatorMessage = decode("operator_messages", v.value())?;
        if unacknowledged_only && m.acknowledged_at.is_some() {
            continue;
        }
        out.push(m);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) fn read_message(db: &Database, id: u64) -> Result<Option<OperatorMessage>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let v = table.get(id)?;
    v.map(|v| decode("operator_messages", v.value()))
        .transpose()
}

/// An index entry without its job (which no commit leaves behind) is dropped
/// rather than spun on.
pub(super) fn claim(
    db: &Database,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<(Vec<AlertJob>, StateDelta), StoreError> {
    let txn = db.begin_write()?;
    let mut claimed = Vec::new();
    let dropped = {
        let mut due = txn.open_table(DUE)?;
        let jobs = txn.open_table(JOBS)?;
        let mut orphans = Vec::new();
        for row in due.range(..=(ms(now), u128::MAX))? {
            let (k, _) = row?;
            let key = k.value();
            match jobs.get(key.1)? {
                Some(v) => claimed.push(decode::<AlertJob>("alert_jobs", v.value())?),
                None => orphans.push(key),
            }
            if claimed.len() >= limit {
                break;
            }
        }
        let dropped = !orphans.is_empty();
        for key in orphans {
            tracing::error!(job_id = %Uuid::from_u128(key.1), "due index entry without its job; dropped");
            due.remove(key)?;
        }
        dropped
    };
    if claimed.is_empty() {
        // Nothing due: no commit (and no fsync) unless an orphan was dropped.
        if dropped {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        return Ok((claimed, StateDelta::default()));
    }
    for job in &mut claimed {
        job.state = JobState::Running;
        job.attempts += 1;
        job.updated_at = now;
        job.started_at.get_or_insert(now);
    }
    let delta = apply(
        &txn,
        &mut Change {
            put_jobs: claimed.clone(),
            ..Change::default()
        },
        &Owners::new(),
    )?;
    txn.commit()?;
    Ok((claimed, delta))
}
