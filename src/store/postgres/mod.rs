//! [`PostgresStore`]: the [`Storage`] contract on PostgreSQL, the first step of cluster
//! mode (issue 11). It keeps what the redb store keeps, in tables with the columns
//! the listings filter and order on, and the records themselves as JSON (`jsonb`), so
//! fields can be added without a migration, as in redb.
//!
//! It passes the same conformance tests as the other backends
//! (`store/conformance_tests.rs`), against a private PostgreSQL server the tests
//! start, and the daemon uses it with `[store] backend = "postgres"`. Every call
//! comes from a blocking thread (this store's `block_on` would panic on a runtime
//! worker). Nodes sharing one database need what is not built yet: a change log
//! they follow, job leases and a leader for maintenance (the job counts here are
//! this process's view). Until then [`PostgresStore::claim_sole_use`] keeps a
//! second node out.
//!
//! The client is tokio-postgres (the PostgreSQL protocol, well kept, async) driven by
//! a small runtime of the store's own: [`Storage`] is blocking, and its methods run on
//! blocking threads, where `block_on` is allowed.

mod export;
mod schema;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_postgres::{Client, NoTls, Transaction};
use uuid::Uuid;

use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
};
use crate::store::error::StoreError;
use crate::store::export::RecordCounts;
use crate::store::page::{Page, Pager, MAX_PAGE};
use crate::store::storage::{AuditFilter, Change, JobFilter, Storage, UsageUpdate};

/// The store on one PostgreSQL database.
pub struct PostgresStore {
    /// Dropped without waiting (see [`Drop`]): the store may be dropped on a runtime
    /// worker, where a runtime cannot be shut down by blocking.
    rt: Option<tokio::runtime::Runtime>,
    /// One connection: changes are serialised by the key service's writer anyway.
    client: Mutex<Client>,
    /// Jobs per state as of the last change of jobs through this store: `/metrics`
    /// reads them on a runtime worker, where this store must not block.
    job_states: Mutex<[(JobState, u64); JobState::ALL.len()]>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Storage(Box::new(e))
}

fn corrupt(table: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt {
        table,
        source: Box::new(e),
    }
}

fn encode<T: serde::Serialize>(
    table: &'static str,
    value: &T,
) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|source| StoreError::Encode { table, source })
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    value: serde_json::Value,
) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| corrupt(table, e))
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Counts and ids are `bigint`; ours are unsigned.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PostgresStore {
    /// Connect to `url` (a libpq connection string or URL, without the password,
    /// which comes as `password`) and bring the schema up to date.
    pub fn open(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: url.to_owned(),
            source: e,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_err(e.into()))?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| open_err(Box::new(e)))?;
        if let Some(p) = password {
            config.password(p);
        }
        let mut client = rt
            .block_on(async {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::error!(error = %e, "PostgreSQL connection ended");
                    }
                });
                Ok::<_, tokio_postgres::Error>(client)
            })
            .map_err(|e| open_err(Box::new(e)))?;
        rt.block_on(schema::migrate(&mut client))?;
        let job_states = rt.block_on(count_job_states(&client))?;
        Ok(Self {
            rt: Some(rt),
            client: Mutex::new(client),
            job_states: Mutex::new(job_states),
        })
    }

    /// Make this process the only apikeyd on the database, for as long as the store
    /// is open, and check that the database was written under the same server secret
    /// (`secret_fingerprint`, derived from it; recorded on first use). Until nodes
    /// follow each other's changes (cluster mode), a second node would serve stale
    /// keys; with another secret, every key would verify as NOT_FOUND.
    pub fn claim_sole_use(&self, secret_fingerprint: &[u8]) -> Result<(), StoreError> {
        self.run(async |c| {
                let held: bool = c
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&schema::NODE_LOCK])
                    .await
                    .map_err(pg)?
                    .get(0);
                if !held {
                    return Err(StoreError::Refused(
                        "another apikeyd is using this PostgreSQL database; several nodes on one database need cluster mode, which is not finished (issue 11)".into(),
                    ));
                }
                let stored: Option<Vec<u8>> = c
                    .query_opt(
                        "SELECT value FROM apikeyd_meta WHERE name = 'secret_fingerprint'",
                        &[],
                    )
                    .await
                    .map_err(pg)?
                    .map(|r| r.get(0));
                match stored {
                    Some(s) if s.as_slice() != secret_fingerprint => Err(StoreError::Refused(
                        "the database was written with another server secret: every key would verify as NOT_FOUND; start apikeyd with the server secret the database was written with".into(),
                    )),
                    Some(_) => Ok(()),
                    None => c
                        .execute(
                            "INSERT INTO apikeyd_meta (name, value) VALUES ('secret_fingerprint', $1)",
                            &[&secret_fingerprint],
                        )
                        .await
                        .map(|_| ())
                        .map_err(pg),
                }
            })
    }

    /// Count the jobs per state again after a change of jobs.
    fn recount(&self) -> Result<(), StoreError> {
        let counts = self.run(async |c| count_job_states(c).await)?;
        *self.job_states.lock() = counts;
        Ok(())
    }

    /// Run `f` on the connection, to its end.
    fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client.lock();
        match &self.rt {
            Some(rt) => rt.block_on(f(&mut client)),
            None => Err(StoreError::Transaction("the store is closed".into())),
        }
    }
}

/// Apply a change inside `tx`, in the order the redb store does: keys, audit
/// entries (filed under the owner their key has now, so before any purge), purges,
/// retired secrets, jobs, messages.
async fn apply(tx: &Transaction<'_>, mut change: Change) -> Result<(), StoreError> {
    for rec in &change.put_keys {
        tx.execute(
            "INSERT INTO keys (id, owner, record) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, record = EXCLUDED.record",
            &[&rec.id, &rec.owner, &encode("keys", rec)?],
        )
        .await
        .map_err(pg)?;
    }
    for entry in change.audit.drain(..) {
        tx.execute(
            "INSERT INTO audit (key_id, owner, entry)
             VALUES ($1, (SELECT owner FROM keys WHERE id = $1), $2)",
            &[&entry.key_id, &encode("audit", &entry)?],
        )
        .await
        .map_err(pg)?;
    }
    if !change.purge_keys.is_empty() {
        tx.execute("DELETE FROM keys WHERE id = ANY($1)", &[&change.purge_keys])
            .await
            .map_err(pg)?;
    }
    for r in &change.retire {
        let hash: &[u8] = &r.hash;
        let entry = encode("retired_secrets", &r.entry)?;
        let sql = if r.refresh_only {
            "UPDATE retired_secrets SET entry = $2 WHERE hash = $1"
        } else {
            "INSERT INTO retired_secrets (hash, entry) VALUES ($1, $2)
             ON CONFLICT (hash) DO UPDATE SET entry = EXCLUDED.entry"
        };
        tx.execute(sql, &[&hash, &entry]).await.map_err(pg)?;
    }
    if !change.delete_jobs.is_empty() {
        tx.execute(
            "DELETE FROM alert_jobs WHERE id = ANY($1)",
            &[&change.delete_jobs],
        )
        .await
        .map_err(pg)?;
    }
    for job in &change.put_jobs {
        // A job is filed under the owner its key had when the job was first written.
        tx.execute(
            "INSERT INTO alert_jobs (id, key_id, owner, state, run_at_ms, job)
             VALUES ($1, $2, (SELECT owner FROM keys WHERE id = $2), $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                 run_at_ms = EXCLUDED.run_at_ms, job = EXCLUDED.job",
            &[
                &job.id,
                &job.key_id,
                &job.state.as_str(),
                &ms(job.run_at),
                &encode("alert_jobs", job)?,
            ],
        )
        .await
        .map_err(pg)?;
    }
    for m in change.messages.iter_mut() {
        if m.id == 0 {
            let next: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM operator_messages",
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            m.id = uint(next);
        }
        tx.execute(
            "INSERT INTO operator_messages (id, message) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET message = EXCLUDED.message",
            &[&int(m.id), &encode("operator_messages", m)?],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

async fn count_job_states(
    client: &Client,
) -> Result<[(JobState, u64); JobState::ALL.len()], StoreError> {
    let rows = client
        .query("SELECT state, COUNT(*) FROM alert_jobs GROUP BY state", &[])
        .await
        .map_err(pg)?;
    Ok(JobState::ALL.map(|s| {
        let n = rows
            .iter()
            .find(|r| r.get::<_, &str>(0) == s.as_str())
            .map_or(0, |r| uint(r.get(1)));
        (s, n)
    }))
}

async fn commit(client: &mut Client, change: Change) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| StoreError::Transaction(Box::new(e)))?;
    apply(&tx, change).await?;
    tx.commit()
        .await
        .map_err(|e| StoreError::Commit(Box::new(e)))
}

fn audit_entry(row: &tokio_postgres::Row) -> Result<AuditEntry, StoreError> {
    let mut entry: AuditEntry = decode("audit", row.get("entry"))?;
    entry.seq = uint(row.get("seq"));
    Ok(entry)
}

impl Storage for PostgresStore {
    fn key_count(&self) -> Result<usize, StoreError> {
        self.run(async |c| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM keys", &[])
                .await
                .map_err(pg)?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    /// Through a cursor, a chunk at a time: a million records are never all in
    /// memory at once.
    fn load_keys(&self, each: &mut dyn FnMut(KeyRow)) -> Result<usize, StoreError> {
        const CHUNK: &str = "FETCH 8192 FROM keys_load";
        self.run(async |c| {
            let tx = c
                .transaction()
                .await
                .map_err(|e| StoreError::Transaction(Box::new(e)))?;
            tx.batch_execute("DECLARE keys_load NO SCROLL CURSOR FOR SELECT record FROM keys")
                .await
                .map_err(pg)?;
            let mut n = 0;
            loop {
                let rows = tx.query(CHUNK, &[]).await.map_err(pg)?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let rec: KeyRecord = decode("keys", row.get(0))?;
                    each(KeyRow::from_record(&rec).map_err(StoreError::from)?);
                    n += 1;
                }
            }
            tx.commit()
                .await
                .map_err(|e| StoreError::Commit(Box::new(e)))?;
            Ok(n)
        })
    }

    fn keys(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self.run(async |c| {
            c.query("SELECT id, record FROM keys WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(pg)
        })?;
        let mut by_id = std::collections::HashMap::new();
        for row in rows {
            let id: Uuid = row.get(0);
            by_id.insert(id, row.get::<_, serde_json::Value>(1));
        }
        // In the order asked for; missing ids skipped.
        ids.iter()
            .filter_map(|id| by_id.remove(id))
            .map(|v| decode("keys", v))
            .collect()
    }

    fn retired(&self, hash: &KeyHash) -> Result<Option<RetiredSecret>, StoreError> {
        let hash: &[u8] = hash;
        let row = self.run(async |c| {
            c.query_opt(
                "SELECT entry FROM retired_secrets WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(pg)
        })?;
        row.map(|r| decode("retired_secrets", r.get(0))).transpose()
    }

    fn write_usage(&self, updates: &[UsageUpdate]) -> Result<usize, StoreError> {
        self.run(async |c| {
            let tx = c
                .transaction()
                .await
                .map_err(|e| StoreError::Transaction(Box::new(e)))?;
            let mut written = 0;
            for u in updates {
                let Some(row) = tx
                    .query_opt("SELECT record FROM keys WHERE id = $1 FOR UPDATE", &[&u.id])
                    .await
                    .map_err(pg)?
                else {
                    continue;
                };
                let mut rec: KeyRecord = decode("keys", row.get(0))?;
                rec.last_used_at = rec.last_used_at.max(u.last_used_at);
                rec.usage = u.counts.clone();
                tx.execute(
                    "UPDATE keys SET record = $2 WHERE id = $1",
                    &[&u.id, &encode("keys", &rec)?],
                )
                .await
                .map_err(pg)?;
                written += 1;
            }
            tx.commit()
                .await
                .map_err(|e| StoreError::Commit(Box::new(e)))?;
            Ok(written)
        })
    }

    fn commit(&self, change: Change) -> Result<(), StoreError> {
        let jobs_changed = !change.put_jobs.is_empty() || !change.delete_jobs.is_empty();
        self.run(async |c| commit(c, change).await)?;
        if jobs_changed {
            self.recount()?;
        }
        Ok(())
    }

    fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry, u64>, StoreError> {
        let mut page = Pager::new(limit);
        let Some(hi) = before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else {
            return Ok(page.done());
        };
        // One more than a page can hold tells the pager where the next one starts.
        let fetch = int(u64::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(1) + 1);
        let rows = self.run(async |c| {
            let hi = int(hi);
            let rows = match (&filter.key, &filter.owner) {
                (Some(k), _) => {
                    c.query(
                        "SELECT seq, entry FROM audit WHERE key_id = $1 AND seq <= $2
                             ORDER BY seq DESC LIMIT $3",
                        &[k, &hi, &fetch],
                    )
                    .await
                }
                (None, Some(o)) => {
                    c.query(
                        "SELECT seq, entry FROM audit WHERE owner = $1 AND key_id IS NOT NULL
                             AND seq <= $2 ORDER BY seq DESC LIMIT $3",
                        &[o, &hi, &fetch],
                    )
                    .await
                }
                (None, None) => {
                    c.query(
                        "SELECT seq, entry FROM audit WHERE seq <= $1
                             ORDER BY seq DESC LIMIT $2",
                        &[&hi, &fetch],
                    )
                    .await
                }
            };
            rows.map_err(pg)
        })?;
        for row in &rows {
            if !page.admit(uint(row.get("seq"))) {
                break;
            }
            page.items.push(audit_entry(row)?);
        }
        Ok(page.done())
    }

    fn job(&self, id: Uuid) -> Result<Option<AlertJob>, StoreError> {
        let row = self.run(async |c| {
            c.query_opt("SELECT job FROM alert_jobs WHERE id = $1", &[&id])
                .await
                .map_err(pg)
        })?;
        row.map(|r| decode("alert_jobs", r.get(0))).transpose()
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Page<AlertJob, u128>, StoreError> {
        let mut page = Pager::new(filter.limit);
        let Some(hi) = filter.before.map_or(Some(u128::MAX), |b| b.checked_sub(1)) else {
            return Ok(page.done());
        };
        // Without a state filter a page needs one row more than it holds; with one,
        // as many as a page may examine.
        let fetch = match filter.state {
            None => int(u64::try_from(filter.limit.clamp(1, MAX_PAGE)).unwrap_or(1) + 1),
            Some(_) => int(u64::try_from(MAX_PAGE).unwrap_or(u64::MAX) + 1),
        };
        let rows = self.run(async |c| {
            let hi = Uuid::from_u128(hi);
            let rows = match (&filter.key, &filter.owner) {
                (Some(k), _) => {
                    c.query(
                        "SELECT id, owner, job FROM alert_jobs WHERE key_id = $1 AND id <= $2
                             ORDER BY id DESC LIMIT $3",
                        &[k, &hi, &fetch],
                    )
                    .await
                }
                (None, Some(o)) => {
                    c.query(
                        "SELECT id, owner, job FROM alert_jobs WHERE owner = $1 AND id <= $2
                             ORDER BY id DESC LIMIT $3",
                        &[o, &hi, &fetch],
                    )
                    .await
                }
                (None, None) => {
                    c.query(
                        "SELECT id, owner, job FROM alert_jobs WHERE id <= $1
                             ORDER BY id DESC LIMIT $2",
                        &[&hi, &fetch],
                    )
                    .await
                }
            };
            rows.map_err(pg)
        })?;
        for row in rows {
            let id: Uuid = row.get("id");
            if !page.admit(id.as_u128()) {
                break;
            }
            let owner: Option<String> = row.get("owner");
            if filter.key.is_some()
                && filter
                    .owner
                    .as_deref()
                    .is_some_and(|o| owner.as_deref().unwrap_or("") != o)
            {
                continue;
            }
            let job: AlertJob = decode("alert_jobs", row.get("job"))?;
            if filter.state.is_none_or(|s| s == job.state) {
                page.items.push(job);
            }
        }
        Ok(page.done())
    }

    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError> {
        let n = int(u64::try_from(limit.max(1)).unwrap_or(1));
        let claimed = self.run(async |c| {
            let tx = c
                .transaction()
                .await
                .map_err(|e| StoreError::Transaction(Box::new(e)))?;
            let rows = tx
                .query(
                    "SELECT job FROM alert_jobs WHERE state = 'Scheduled' AND run_at_ms <= $1
                         ORDER BY run_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&ms(now), &n],
                )
                .await
                .map_err(pg)?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let mut job: AlertJob = decode("alert_jobs", row.get(0))?;
                job.state = JobState::Running;
                job.attempts += 1;
                job.updated_at = now;
                job.started_at.get_or_insert(now);
                claimed.push(job);
            }
            if claimed.is_empty() {
                return Ok(claimed);
            }
            apply(
                &tx,
                Change {
                    put_jobs: claimed.clone(),
                    ..Change::default()
                },
            )
            .await?;
            tx.commit()
                .await
                .map_err(|e| StoreError::Commit(Box::new(e)))?;
            Ok(claimed)
        })?;
        if !claimed.is_empty() {
            self.recount()?;
        }
        Ok(claimed)
    }

    fn running_jobs(&self) -> Result<Vec<AlertJob>, StoreError> {
        let rows = self.run(async |c| {
            c.query("SELECT job FROM alert_jobs WHERE state = 'Running'", &[])
                .await
                .map_err(pg)
        })?;
        rows.into_iter()
            .map(|r| decode("alert_jobs", r.get(0)))
            .collect()
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> = self.run(async |c| {
            Ok(c.query_one(
                "SELECT MIN(run_at_ms) FROM alert_jobs WHERE state = 'Scheduled'",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0))
        })?;
        Ok(at.and_then(DateTime::from_timestamp_millis))
    }

    fn job_state_counts(&self) -> [(JobState, u64); JobState::ALL.len()] {
        *self.job_states.lock()
    }

    fn messages(
        &self,
        unacknowledged_only: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        let n = int(u64::try_from(limit.max(1)).unwrap_or(u64::MAX));
        let rows = self.run(async |c| {
            c.query(
                "SELECT message FROM operator_messages
                     WHERE NOT $1 OR message->>'acknowledged_at' IS NULL
                     ORDER BY id DESC LIMIT $2",
                &[&unacknowledged_only, &n],
            )
            .await
            .map_err(pg)
        })?;
        rows.into_iter()
            .map(|r| decode("operator_messages", r.get(0)))
            .collect()
    }

    fn message(&self, id: u64) -> Result<Option<OperatorMessage>, StoreError> {
        let row = self.run(async |c| {
            c.query_opt(
                "SELECT message FROM operator_messages WHERE id = $1",
                &[&int(id)],
            )
            .await
            .map_err(pg)
        })?;
        row.map(|r| decode("operator_messages", r.get(0)))
            .transpose()
    }

    // ---- export (migration): in `export.rs`.

    fn export_counts(&self) -> Result<RecordCounts, StoreError> {
        self.count_records()
    }

    fn export_keys(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys_after(after, limit)
    }

    fn export_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_after(after, limit)
    }

    fn export_retired(
        &self,
        after: Option<KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError> {
        self.retired_after(after, limit)
    }

    fn export_messages(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        self.messages_after(after, limit)
    }
}

#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;
