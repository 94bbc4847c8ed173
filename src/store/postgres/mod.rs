//! [`PostgresStore`]: the [`Storage`] contract on PostgreSQL, shared by the nodes
//! of a cluster. It keeps what the redb store keeps, in tables with the columns the
//! listings filter and order on, and the records themselves as JSON (`jsonb`), so
//! fields can be added without a migration, as in redb.
//!
//! What sharing adds (see `ARCHITECTURE.md`, "Several nodes"):
//! - every commit that changes keys appends their ids to a change log
//!   (`key_changes`, numbered under a transaction advisory lock so numbers commit in
//!   order) and notifies the other nodes, which read the log ([`Storage::changes`])
//!   when notified and every poll interval; a commit that changes a key another
//!   node changed after this node's position in the log is refused
//!   ([`StoreError::Conflict`]);
//! - a claimed alert job carries a lease (node, until); a delivery renews it, and a
//!   job whose lease ended is claimed again by any node;
//! - the node holding a session advisory lock runs the maintenance jobs
//!   ([`Storage::lead_maintenance`]); the server drops the lock with the session.
//!
//! It passes the same conformance tests as the other backends
//! (`store/conformance_tests.rs`) against a private PostgreSQL server the tests start.
//! Every call comes from a blocking thread. The client is tokio-postgres (the
//! PostgreSQL protocol, well kept, async) with deadpool-postgres's pool, driven by a
//! small runtime of the store's own: [`Storage`] is blocking, and its methods run on
//! blocking threads, where `block_on` is allowed.

mod export;
mod schema;
mod session;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, IsolationLevel, Transaction};
use uuid::Uuid;

use crate::config::PostgresConfig;
use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
};
use crate::store::error::StoreError;
use crate::store::page::{Page, Pager, MAX_PAGE};
use crate::store::storage::{AuditFilter, Change, JobFilter, KeyChanges, Storage, UsageUpdate};
use session::Session;

/// The database's clock in unix milliseconds: leases are taken and judged by it,
/// so that nodes whose clocks disagree do not take each other's live jobs.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint";

/// Most change-log entries read at once.
const FEED_BATCH: i64 = 20_000;

/// The store on one PostgreSQL database.
pub struct PostgresStore {
    /// Dropped without waiting (see [`Drop`]): the store may be dropped on a runtime
    /// worker, where a runtime cannot be shut down by blocking.
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// This process, in the change log and on the jobs it claims.
    node: Uuid,
    /// How far this node has read the change log.
    cursor: Mutex<i64>,
    session: Arc<Session>,
    job_lease: chrono::Duration,
    retention: std::time::Duration,
    /// Whether the last call reached the database.
    up: AtomicBool,
    /// Longest a call may take: waiting for a connection, then the statement.
    call_timeout: std::time::Duration,
    /// The database's time at the last read of recent uses.
    uses_read_at: Mutex<DateTime<Utc>>,
    /// Jobs per state, counted in the background (`count_jobs`): `/metrics` reads
    /// them on a runtime worker, where this store must not block.
    job_states: Arc<Mutex<[(JobState, u64); JobState::ALL.len()]>>,
    /// Wakes the counting after this node changed jobs.
    jobs_changed: Arc<Notify>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A failure talking to the server: the server unreachable (no answer, connection
/// lost, shutting down, refusing connections) is [`StoreError::Unavailable`];
/// anything the server answered is a read or write failure.
fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let what = match db.constraint() {
            Some("keys_unique_secret") => Some("a key with the same secret"),
            Some("keys_unique_name") => Some("a key with the same owner and name"),
            _ => None,
        };
        if let Some(what) = what {
            return StoreError::Conflict(format!(
                "{what} was written on another node at the same time; nothing was written"
            ));
        }
    }
    let code = e.code().map(|c| c.code().to_owned());
    if let Some("40001" | "40P01") = code.as_deref() {
        return StoreError::Conflict(format!(
            "the database refused the change to avoid a conflict with another one ({e}); nothing was written: try again"
        ));
    }
    // No answer, a lost connection, a server shutting down or refusing
    // connections (08, 57P), out of resources (53), too slow (57014: the
    // statement timeout), or a primary turned read-only during a failover (25006).
    let unreachable = match code.as_deref() {
        None => true,
        Some(code) => {
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "57014"
                || code == "25006"
        }
    };
    if unreachable {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Storage(Box::new(e))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

/// `e` and its causes, as [`StoreError::Connect`]: a refused TLS handshake says
/// nothing useful without its cause (an unknown issuer, a name mismatch).
fn connect_err(url: &str, e: &(dyn std::error::Error + 'static)) -> StoreError {
    let mut why = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !why.contains(&text) {
            why = format!("{why}: {text}");
        }
        cause = c.source();
    }
    StoreError::Connect {
        url: url.to_owned(),
        why,
    }
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

fn begin_err(e: tokio_postgres::Error) -> StoreError {
    match pg(e) {
        StoreError::Storage(e) => StoreError::Transaction(e),
        other => other,
    }
}

fn commit_err(e: tokio_postgres::Error) -> StoreError {
    match pg(e) {
        StoreError::Storage(e) => StoreError::Commit(e),
        // The server may have committed before the connection went.
        StoreError::Unavailable(e) => StoreError::Interrupted(e),
        other => other,
    }
}

/// Who writes to the change log, and from where in it they read.
#[derive(Debug, Clone, Copy)]
struct Writer {
    node: Uuid,
    cursor: i64,
}

impl PostgresStore {
    /// Connect with the defaults to `url` (a libpq connection string or URL, without
    /// the password, which comes as `password`) and bring the schema up to date.
    pub fn open(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        Self::connect(&PostgresConfig::new(url), password)
    }

    /// Connect as `config` says and bring the schema up to date.
    pub fn connect(config: &PostgresConfig, password: Option<&str>) -> Result<Self, StoreError> {
        let url = &config.url;
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: url.to_owned(),
            source: e,
        };
        // One worker runs the connections; callers' `block_on` runs their queries.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("apikeyd-postgres")
            .enable_all()
            .build()
            .map_err(|e| open_err(e.into()))?;
        let mut pg_config: tokio_postgres::Config =
            url.parse().map_err(|e| open_err(Box::new(e)))?;
        if let Some(p) = password {
            pg_config.password(p);
        }
        pg_config
            .application_name("apikeyd")
            .connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(15))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3)
            .options(format!(
                "-c statement_timeout={}",
                config.statement_timeout.as_millis()
            ));
        let tls = tls::connector(config.ca_file.as_deref()).map_err(|e| open_err(e.into()))?;
        let manager = Manager::from_config(
            pg_config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _rt = rt.enter();
            Pool::builder(manager)
                .max_size(config.pool_size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.connect_timeout))
                .create_timeout(Some(config.connect_timeout))
                .build()
                .map_err(|e| open_err(Box::new(e)))?
        };
        let (cursor, opened_at) = rt
            .block_on(async {
                let mut client = pool.get().await.map_err(|e| match e {
                    deadpool_postgres::PoolError::Backend(e) => connect_err(url, &e),
                    other => connect_err(url, &other),
                })?;
                schema::migrate(&mut client).await?;
                // Where following starts: before the keys are loaded, so nothing
                // committed meanwhile is missed (it is applied twice at worst).
                // A log pruned empty starts after what was pruned, not at 0 (which
                // would ask for a reload at once).
                let row = client
                    .query_one(
                        "SELECT GREATEST(COALESCE(MAX(seq), 0),
                                         (SELECT pruned_through FROM key_changes_horizon)),
                                clock_timestamp()
                         FROM key_changes",
                        &[],
                    )
                    .await
                    .map_err(pg)?;
                let head: (i64, DateTime<Utc>) = (row.get(0), row.get(1));
                Ok::<_, StoreError>(head)
            })
            .map_err(|e| match e {
                StoreError::Connect { .. } | StoreError::Open { .. } => e,
                other => open_err(Box::new(other)),
            })?;
        // Counted in the background, the first time at once: not a scan of every
        // job on the way to serving.
        let job_states = Arc::new(Mutex::new(JobState::ALL.map(|s| (s, 0))));
        let jobs_changed = Arc::new(Notify::new());
        jobs_changed.notify_one();
        rt.spawn(count_jobs(
            pool.clone(),
            job_states.clone(),
            jobs_changed.clone(),
        ));
        let session = Arc::new(Session::default());
        rt.spawn(session::run(pg_config, tls, session.clone()));
        Ok(Self {
            rt: Some(rt),
            pool,
            node: Uuid::new_v4(),
            cursor: Mutex::new(cursor),
            session,
            job_lease: chrono::Duration::from_std(config.job_lease)
                .unwrap_or(chrono::Duration::minutes(1)),
            retention: config.change_log_retention,
            up: AtomicBool::new(true),
            call_timeout: config.connect_timeout + config.statement_timeout,
            uses_read_at: Mutex::new(opened_at),
            job_states,
            jobs_changed,
        })
    }

    /// This process's id among the nodes (in the change log and on claimed jobs).
    pub fn node(&self) -> Uuid {
        self.node
    }

    /// Check that the database was written under the same server secret
    /// (`secret_fingerprint`, derived from it; recorded by the first node to start):
    /// with another secret, every key would verify as NOT_FOUND.
    pub fn check_secret(&self, secret_fingerprint: &[u8]) -> Result<(), StoreError> {
        self.run(async |c| {
            // An apikeyd from before cluster mode holds this lock while it runs,
            // and writes no change log: nodes would never see its changes.
            let free: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&schema::OLD_NODE_LOCK])
                .await
                .map_err(pg)?
                .get(0);
            if !free {
                return Err(StoreError::Refused(
                    "an apikeyd older than cluster mode is using this database: stop it before starting this version (it does not tell other nodes about its changes)".into(),
                ));
            }
            c.execute("SELECT pg_advisory_unlock($1)", &[&schema::OLD_NODE_LOCK])
                .await
                .map_err(pg)?;
            // The first of several nodes starting at once records its fingerprint;
            // the others compare with it.
            c.execute(
                "INSERT INTO apikeyd_meta (name, value) VALUES ('secret_fingerprint', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&secret_fingerprint],
            )
            .await
            .map_err(pg)?;
            let stored: Vec<u8> = c
                .query_one(
                    "SELECT value FROM apikeyd_meta WHERE name = 'secret_fingerprint'",
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            if stored.as_slice() == secret_fingerprint {
                Ok(())
            } else {
                Err(StoreError::Refused(
                    "the database was written with another server secret: every key would verify as NOT_FOUND; start apikeyd with the server secret the database was written with (the same on every node)".into(),
                ))
            }
        })
    }

    /// Where this node writes from.
    fn writer(&self) -> Writer {
        Writer {
            node: self.node,
            cursor: *self.cursor.lock(),
        }
    }

    /// Run `f` on a pooled connection, to its end, and note whether the server
    /// answered.
    fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run_within(self.call_timeout, f)
    }

    /// [`Self::run`] with another bound on the whole call.
    fn run_within<T>(
        &self,
        call_timeout: std::time::Duration,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(rt) = &self.rt else {
            return Err(StoreError::Transaction("the store is closed".into()));
        };
        let result = rt.block_on(async {
            // A server that stops answering (a silent failover, a partition) is
            // cut off here rather than holding the caller for the kernel's
            // keepalive timeouts.
            let call = async {
                let mut client = self.pool.get().await.map_err(pool_error)?;
                f(&mut client).await
            };
            match tokio::time::timeout(call_timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(
                    format!("no answer within {call_timeout:?}").into(),
                )),
            }
        });
        match &result {
            Err(StoreError::Unavailable(e) | StoreError::Interrupted(e)) => {
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "PostgreSQL is unavailable: verification goes on from memory; changes are refused until it is back");
                }
            }
            _ => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!("PostgreSQL is available again");
                }
            }
        }
        result
    }
}

/// Apply a change inside `tx`, in the order the redb store does: keys, audit
/// entries (filed under the owner their key has now, so before any purge), purges,
/// retired secrets, jobs, messages. Changed keys go to the change log first, unless
/// another node changed one of them since `writer` read the log.
async fn apply(tx: &Transaction<'_>, writer: Writer, mut change: Change) -> Result<(), StoreError> {
    // Row locks first, in id order, then the log's lock: the cluster-wide lock is
    // held briefly, and never while waiting for a row another node holds.
    keep_stored_usage(tx, &mut change.put_keys).await?;
    log_key_changes(tx, writer, &change).await?;
    // Typed statements (parse, bind and execute in one round trip) throughout the
    // paths every change takes: a statement sent as plain text is prepared first,
    // one more round trip each.
    // Many records (a sweep, a migration) go in one statement per thousand.
    for chunk in change.put_keys.chunks(1000) {
        let ids: Vec<Uuid> = chunk.iter().map(|r| r.id).collect();
        let owners: Vec<&str> = chunk.iter().map(|r| r.owner.as_str()).collect();
        let records = chunk
            .iter()
            .map(|r| encode("keys", r))
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute_typed(
            "INSERT INTO keys (id, owner, record)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, record = EXCLUDED.record",
            &[
                (&ids, Type::UUID_ARRAY),
                (&owners, Type::TEXT_ARRAY),
                (&records, Type::JSONB_ARRAY),
            ],
        )
        .await
        .map_err(pg)?;
    }
    for chunk in change.audit.chunks(1000) {
        let keys: Vec<Option<Uuid>> = chunk.iter().map(|e| e.key_id).collect();
        let entries = chunk
            .iter()
            .map(|e| encode("audit", e))
            .collect::<Result<Vec<_>, _>>()?;
        // In the order given: the sequence numbers follow it.
        tx.execute_typed(
            "INSERT INTO audit (key_id, owner, entry)
             SELECT a.key_id, k.owner, a.entry
             FROM unnest($1::uuid[], $2::jsonb[]) WITH ORDINALITY AS a(key_id, entry, n)
             LEFT JOIN keys k ON k.id = a.key_id
             ORDER BY a.n",
            &[(&keys, Type::UUID_ARRAY), (&entries, Type::JSONB_ARRAY)],
        )
        .await
        .map_err(pg)?;
    }
    if !change.purge_keys.is_empty() {
        tx.execute_typed(
            "DELETE FROM keys WHERE id = ANY($1)",
            &[(&change.purge_keys, Type::UUID_ARRAY)],
        )
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
        tx.execute_typed(sql, &[(&hash, Type::BYTEA), (&entry, Type::JSONB)])
            .await
            .map_err(pg)?;
    }
    if !change.delete_jobs.is_empty() {
        tx.execute_typed(
            "DELETE FROM alert_jobs WHERE id = ANY($1)",
            &[(&change.delete_jobs, Type::UUID_ARRAY)],
        )
        .await
        .map_err(pg)?;
    }
    for job in &change.put_jobs {
        let encoded = encode("alert_jobs", job)?;
        // A job is filed under the owner its key had when the job was first written.
        tx.execute_typed(
            "INSERT INTO alert_jobs (id, key_id, owner, state, run_at_ms, job)
             VALUES ($1, $2, (SELECT owner FROM keys WHERE id = $2), $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                 run_at_ms = EXCLUDED.run_at_ms, job = EXCLUDED.job,
                 claimed_by = NULL, lease_until_ms = NULL",
            &[
                (&job.id, Type::UUID),
                (&job.key_id, Type::UUID),
                (&job.state.as_str(), Type::TEXT),
                (&ms(job.run_at), Type::INT8),
                (&encoded, Type::JSONB),
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

/// Records replacing stored ones keep the stored usage (see
/// [`KeyRecord::keep_usage_of`]); the rows stay locked until commit, so a usage
/// write of another node waits rather than being overwritten.
async fn keep_stored_usage(
    tx: &Transaction<'_>,
    records: &mut [KeyRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let rows = tx
        .query_typed(
            "SELECT id, record FROM keys WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[(&ids, Type::UUID_ARRAY)],
        )
        .await
        .map_err(pg)?;
    let mut stored = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let rec: KeyRecord = decode("keys", row.get(1))?;
        stored.insert(row.get::<_, Uuid>(0), rec);
    }
    for rec in records.iter_mut() {
        if let Some(s) = stored.get(&rec.id) {
            rec.keep_usage_of(s);
        }
    }
    Ok(())
}

/// A job another node is delivering under a live lease is that node's to finish:
/// a change to it from here (an outcome recorded after this node lost the job, a
/// cancel, a reschedule) is refused whole, and can be tried again once it is done.
async fn refuse_jobs_of_other_nodes(
    tx: &Transaction<'_>,
    writer: Writer,
    change: &Change,
) -> Result<(), StoreError> {
    let mut ids: Vec<Uuid> = change.put_jobs.iter().map(|j| j.id).collect();
    ids.extend(&change.delete_jobs);
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    let held = tx
        .query_typed_opt(
            &format!(
                "SELECT id FROM alert_jobs WHERE id = ANY($1) AND state = 'Running'
                     AND claimed_by <> $2 AND lease_until_ms >= {DB_NOW_MS}
                     ORDER BY id LIMIT 1 FOR UPDATE"
            ),
            &[(&ids, Type::UUID_ARRAY), (&writer.node, Type::UUID)],
        )
        .await
        .map_err(pg)?;
    match held {
        Some(row) => Err(StoreError::Conflict(format!(
            "alert job {} is being delivered by another node; nothing was written: try again once it is done",
            row.get::<_, Uuid>(0)
        ))),
        None => Ok(()),
    }
}

/// Append the keys `change` changes to the change log and notify the other nodes
/// (at commit), or refuse the change if another node changed one of those keys
/// after this node's position in the log.
async fn log_key_changes(
    tx: &Transaction<'_>,
    writer: Writer,
    change: &Change,
) -> Result<(), StoreError> {
    let mut ids: Vec<Uuid> = change.put_keys.iter().map(|r| r.id).collect();
    ids.extend(&change.purge_keys);
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    // Until commit: change numbers then commit in their order. A statement of its
    // own: the next one's snapshot must be taken after the lock is held, to see
    // every change committed before.
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&schema::CHANGE_LOCK, Type::INT8)],
    )
    .await
    .map_err(pg)?;
    // The conflict check, the log entries and the notification (sent at commit),
    // in one round trip; nothing is logged if another node changed a key first.
    let row = tx
        .query_typed_one(
            "WITH clash AS (
                 SELECT key_id FROM key_changes
                 WHERE key_id = ANY($1) AND seq > $2 AND node <> $3 LIMIT 1),
             logged AS (
                 INSERT INTO key_changes (node, key_id)
                 SELECT $3, k FROM unnest($1::uuid[]) AS k
                 WHERE NOT EXISTS (SELECT 1 FROM clash)
                 RETURNING 1),
             notified AS (
                 SELECT pg_notify($4, '') WHERE NOT EXISTS (SELECT 1 FROM clash))
             SELECT (SELECT key_id FROM clash),
                    (SELECT COUNT(*) FROM logged) + (SELECT COUNT(*) FROM notified)",
            &[
                (&ids, Type::UUID_ARRAY),
                (&writer.cursor, Type::INT8),
                (&writer.node, Type::UUID),
                (&schema::CHANNEL, Type::TEXT),
            ],
        )
        .await
        .map_err(pg)?;
    match row.get::<_, Option<Uuid>>(0) {
        Some(id) => Err(StoreError::Conflict(format!(
            "key {id} was changed on another node at the same time; nothing was written: try again"
        ))),
        None => Ok(()),
    }
}

/// Keep `counts` current for `/metrics`: after this node changes jobs (at most once
/// a second: a count reads every job's state), and every 10 s for other nodes'
/// changes. A failure keeps the old counts.
async fn count_jobs(
    pool: Pool,
    counts: Arc<Mutex<[(JobState, u64); JobState::ALL.len()]>>,
    changed: Arc<Notify>,
) {
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
        let counted = async {
            let client = pool.get().await.map_err(pool_error)?;
            count_job_states(&client).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), counted).await {
            Ok(Ok(c)) => *counts.lock() = c,
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot count alert jobs for /metrics"),
            Err(_) => tracing::debug!("counting alert jobs for /metrics took over 30 s"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
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

async fn commit(client: &mut Client, writer: Writer, change: Change) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(begin_err)?;
    refuse_jobs_of_other_nodes(&tx, writer, &change).await?;
    apply(&tx, writer, change).await?;
    tx.commit().await.map_err(commit_err)
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
            let tx = c.transaction().await.map_err(begin_err)?;
            // The text of each record, read by the decoder that skips what the
            // index does not keep (the redb store's).
            tx.batch_execute(
                "DECLARE keys_load NO SCROLL CURSOR FOR SELECT record::text FROM keys",
            )
            .await
            .map_err(pg)?;
            let mut n = 0;
            let mut cache = crate::store::load::LoadCache::default();
            let mut rows = tx.query_typed(CHUNK, &[]).await.map_err(pg)?;
            while !rows.is_empty() {
                // The server reads and sends the next chunk while this thread
                // decodes this one (the connection runs on the store's worker).
                let decode = async {
                    for row in &rows {
                        let text: &str = row.get(0);
                        each(crate::store::load::prepare(&mut cache, text.as_bytes())?);
                        n += 1;
                    }
                    Ok::<_, StoreError>(())
                };
                let (next, decoded) = tokio::join!(tx.query_typed(CHUNK, &[]), decode);
                decoded?;
                rows = next.map_err(pg)?;
            }
            tx.commit().await.map_err(commit_err)?;
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
        let mut by_id: std::collections::HashMap<Uuid, &UsageUpdate> =
            updates.iter().map(|u| (u.id, u)).collect();
        let mut ids: Vec<Uuid> = by_id.keys().copied().collect();
        // Rows are locked in id order on every node: two nodes flushing the same
        // keys wait for each other instead of deadlocking.
        ids.sort_unstable();
        self.run(async |c| {
            let tx = c.transaction().await.map_err(begin_err)?;
            let rows = tx
                .query(
                    "SELECT id, record FROM keys WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    &[&ids],
                )
                .await
                .map_err(pg)?;
            let mut ids = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for row in rows {
                let id: Uuid = row.get(0);
                let Some(u) = by_id.remove(&id) else {
                    continue;
                };
                let mut rec: KeyRecord = decode("keys", row.get(1))?;
                rec.last_used_at = rec.last_used_at.max(u.last_used_at);
                rec.usage.add(&u.counts);
                ids.push(id);
                records.push(encode("keys", &rec)?);
            }
            // One statement per thousand keys, not a round trip per key.
            for (ids, records) in ids.chunks(1000).zip(records.chunks(1000)) {
                tx.execute(
                    "UPDATE keys SET record = v.record, usage_written_at = clock_timestamp()
                         FROM unnest($1::uuid[], $2::jsonb[]) AS v(id, record)
                         WHERE keys.id = v.id",
                    &[&ids, &records],
                )
                .await
                .map_err(pg)?;
            }
            let written = ids.len();
            tx.commit().await.map_err(commit_err)?;
            Ok(written)
        })
    }

    fn commit(&self, change: Change) -> Result<(), StoreError> {
        let jobs_changed = !change.put_jobs.is_empty() || !change.delete_jobs.is_empty();
        let writer = self.writer();
        self.run(async |c| commit(c, writer, change).await)?;
        if jobs_changed {
            self.jobs_changed.notify_one();
        }
        Ok(())
    }

    /// One transaction, the changes applied one after another: each batch's
    /// statements are bounded by `statement_timeout`, and the whole call by the call
    /// timeout once per batch (a million-key import is a hundred of them), not once.
    fn commit_all(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let jobs_changed = changes
            .iter()
            .any(|c| !c.put_jobs.is_empty() || !c.delete_jobs.is_empty());
        let writer = self.writer();
        let batches = u32::try_from(changes.len()).unwrap_or(u32::MAX).max(1);
        self.run_within(self.call_timeout.saturating_mul(batches), async |c| {
            let tx = c.transaction().await.map_err(begin_err)?;
            for change in changes {
                refuse_jobs_of_other_nodes(&tx, writer, &change).await?;
                apply(&tx, writer, change).await?;
            }
            tx.commit().await.map_err(commit_err)
        })?;
        if jobs_changed {
            self.jobs_changed.notify_one();
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

    /// Jobs whose lease ended (their node died or was cut off) first, then due
    /// Scheduled jobs; each leaves with this node's lease.
    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError> {
        let n = int(u64::try_from(limit.max(1)).unwrap_or(1));
        let writer = self.writer();
        let lease = self.job_lease.num_milliseconds();
        let claimed = self.run(async |c| {
            let tx = c.transaction().await.map_err(begin_err)?;
            let mut rows = tx
                .query(
                    &format!(
                        "SELECT job, claimed_by FROM alert_jobs
                             WHERE state = 'Running' AND lease_until_ms < {DB_NOW_MS}
                             ORDER BY lease_until_ms LIMIT $1 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&n],
                )
                .await
                .map_err(pg)?;
            let left = n - i64::try_from(rows.len()).unwrap_or(n);
            if left > 0 {
                rows.extend(
                    tx.query(
                        "SELECT job, claimed_by FROM alert_jobs
                             WHERE state = 'Scheduled' AND run_at_ms <= $1
                             ORDER BY run_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                        &[&ms(now), &left],
                    )
                    .await
                    .map_err(pg)?,
                );
            }
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let mut job: AlertJob = decode("alert_jobs", row.get(0))?;
                if job.state == JobState::Running {
                    let from: Option<Uuid> = row.get(1);
                    tracing::warn!(job_id = %job.id, node = ?from, "took over an alert job whose node stopped renewing its lease");
                }
                job.state = JobState::Running;
                job.attempts += 1;
                job.updated_at = now;
                job.started_at.get_or_insert(now);
                claimed.push(job);
            }
            if claimed.is_empty() {
                return Ok(claimed);
            }
            let ids: Vec<Uuid> = claimed.iter().map(|j| j.id).collect();
            apply(
                &tx,
                writer,
                Change {
                    put_jobs: claimed.clone(),
                    ..Change::default()
                },
            )
            .await?;
            tx.execute(
                &format!(
                    "UPDATE alert_jobs SET claimed_by = $1, lease_until_ms = {DB_NOW_MS} + $2
                         WHERE id = ANY($3)"
                ),
                &[&writer.node, &lease, &ids],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(commit_err)?;
            Ok(claimed)
        })?;
        if !claimed.is_empty() {
            self.jobs_changed.notify_one();
        }
        Ok(claimed)
    }

    /// Only jobs Running without a lease (written before leases, or moved here by
    /// `apikeyd migrate`): a job whose lease ended is claimed again by
    /// [`Storage::claim_due`], which no other node can do at the same time.
    fn running_jobs(&self, _now: DateTime<Utc>) -> Result<Vec<AlertJob>, StoreError> {
        let rows = self.run(async |c| {
            c.query(
                "SELECT job FROM alert_jobs WHERE state = 'Running' AND lease_until_ms IS NULL",
                &[],
            )
            .await
            .map_err(pg)
        })?;
        rows.into_iter()
            .map(|r| decode("alert_jobs", r.get(0)))
            .collect()
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> = self.run(async |c| {
            // A Running job whose lease ends may be claimed again then.
            Ok(c.query_one(
                "SELECT LEAST(
                     (SELECT MIN(run_at_ms) FROM alert_jobs WHERE state = 'Scheduled'),
                     (SELECT MIN(lease_until_ms) FROM alert_jobs WHERE state = 'Running'))",
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

    fn shared(&self) -> bool {
        true
    }

    fn changes(&self) -> Result<KeyChanges, StoreError> {
        let cursor = *self.cursor.lock();
        self.run(async |c| {
            // One snapshot: the horizon and the log agree, and since numbers
            // commit in order, the log read is a prefix of what will ever be there.
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(begin_err)?;
            let pruned: i64 = tx
                .query_one("SELECT pruned_through FROM key_changes_horizon", &[])
                .await
                .map_err(pg)?
                .get(0);
            let head: i64 = tx
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM key_changes", &[])
                .await
                .map_err(pg)?
                .get(0);
            // Behind the pruned part, or ahead of the whole log: after a failover
            // to a replica that lacked the latest changes, numbers this node has
            // read may be handed out again, and only a reload is sure.
            let behind_log = head < cursor && pruned < cursor;
            if behind_log {
                tracing::warn!(position = cursor, head, "the change log is behind this node (a failover to a replica that lacked the latest changes?): reloading every key");
            }
            if cursor < pruned || behind_log {
                return Ok(KeyChanges {
                    reload: true,
                    upto: uint(head.max(pruned)),
                    ..KeyChanges::default()
                });
            }
            let rows = tx
                .query(
                    "SELECT seq, key_id, EXTRACT(EPOCH FROM clock_timestamp() - at)::float8
                         FROM key_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&cursor, &FEED_BATCH],
                )
                .await
                .map_err(pg)?;
            let mut upto = cursor;
            let mut ids = Vec::new();
            let mut lag: Option<f64> = None;
            for row in &rows {
                upto = row.get(0);
                ids.push(row.get::<_, Uuid>(1));
                let age: f64 = row.get(2);
                lag = Some(lag.map_or(age, |l| l.max(age)));
            }
            ids.sort_unstable();
            ids.dedup();
            let mut changes = KeyChanges {
                lag,
                more: i64::try_from(rows.len()).unwrap_or(0) == FEED_BATCH,
                upto: uint(upto),
                ..KeyChanges::default()
            };
            if !ids.is_empty() {
                let found = tx
                    .query("SELECT id, record FROM keys WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(pg)?;
                let mut present = std::collections::HashSet::new();
                for row in found {
                    let id: Uuid = row.get(0);
                    match decode::<KeyRecord>("keys", row.get(1)) {
                        Ok(rec) => {
                            present.insert(id);
                            changes.put.push(rec);
                        }
                        // Fail closed: a newer node's record this one cannot read
                        // (say during an upgrade) stops verifying here.
                        Err(e) => {
                            tracing::error!(key_id = %id, error = %e, "a key changed on another node cannot be read here; refused on this node until it can");
                        }
                    }
                }
                changes.gone = ids.into_iter().filter(|id| !present.contains(id)).collect();
            }
            tx.commit().await.map_err(commit_err)?;
            Ok(changes)
        })
    }

    fn recent_uses(&self) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        let since = *self.uses_read_at.lock();
        // A usage write that took its time stamp before our last read may commit
        // after it: look back further than the longest call.
        let margin = chrono::Duration::from_std(self.call_timeout * 2)
            .unwrap_or(chrono::Duration::minutes(1));
        let (uses, read_at) = self.run(async |c| {
            let read_at: DateTime<Utc> = c
                .query_one("SELECT clock_timestamp()", &[])
                .await
                .map_err(pg)?
                .get(0);
            let rows = c
                .query(
                    "SELECT id, record->>'last_used_at' FROM keys
                         WHERE usage_written_at > $1",
                    &[&(since - margin)],
                )
                .await
                .map_err(pg)?;
            let uses = rows
                .iter()
                .filter_map(|r| {
                    let at: Option<&str> = r.get(1);
                    let at = DateTime::parse_from_rfc3339(at?).ok()?;
                    Some((r.get::<_, Uuid>(0), at.with_timezone(&Utc)))
                })
                .collect();
            Ok((uses, read_at))
        })?;
        *self.uses_read_at.lock() = read_at;
        Ok(uses)
    }

    fn changes_applied(&self, upto: u64) {
        let mut cursor = self.cursor.lock();
        *cursor = (*cursor).max(int(upto));
    }

    fn change_signal(&self) -> Option<Arc<Notify>> {
        Some(self.session.changed.clone())
    }

    fn lead_maintenance(&self) -> Result<bool, StoreError> {
        match &self.rt {
            Some(rt) => rt.block_on(self.session.lead()).map_err(pg),
            None => Ok(false),
        }
    }

    fn prune_changes(&self) -> Result<u64, StoreError> {
        let keep = self.retention.as_secs_f64();
        let mut total = 0;
        // In chunks, each its own transaction: a log of millions of rows (after a
        // migration) is pruned over several calls, never in one statement that
        // outlasts the statement timeout.
        loop {
            let gone = self.run(async |c| {
                let tx = c.transaction().await.map_err(begin_err)?;
                let row = tx
                    .query_one(
                        "WITH gone AS (
                             DELETE FROM key_changes WHERE seq IN (
                                 SELECT seq FROM key_changes
                                 WHERE at < clock_timestamp() - make_interval(secs => $1)
                                 ORDER BY seq LIMIT 50000)
                             RETURNING seq)
                         SELECT COUNT(*), MAX(seq) FROM gone",
                        &[&keep],
                    )
                    .await
                    .map_err(pg)?;
                let (n, through): (i64, Option<i64>) = (row.get(0), row.get(1));
                if let Some(through) = through {
                    // A node that has not read this far must reload every key.
                    tx.execute(
                        "UPDATE key_changes_horizon
                             SET pruned_through = GREATEST(pruned_through, $1)",
                        &[&through],
                    )
                    .await
                    .map_err(pg)?;
                }
                tx.commit().await.map_err(commit_err)?;
                Ok(uint(n))
            })?;
            total += gone;
            if gone < 50_000 {
                return Ok(total);
            }
        }
    }

    fn job_lease(&self) -> Option<std::time::Duration> {
        self.job_lease.to_std().ok()
    }

    fn renew_lease(&self, id: Uuid, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        let lease = self.job_lease.num_milliseconds();
        let node = self.node;
        self.run(async |c| {
            let n = c
                .execute(
                    &format!(
                        "UPDATE alert_jobs SET lease_until_ms = {DB_NOW_MS} + $3
                             WHERE id = $1 AND claimed_by = $2 AND state = 'Running'"
                    ),
                    &[&id, &node, &lease],
                )
                .await
                .map_err(pg)?;
            Ok(n == 1)
        })
    }

    fn available(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;
