//! The PostgreSQL schema: embedded, versioned migrations, applied at open under an
//! advisory lock, so that several processes opening one database at once apply each
//! migration once.

use tokio_postgres::Client;

use crate::store::error::StoreError;

/// Migrations, in order; the database records how many it has applied. Never edit
/// one that has shipped: add the next.
pub(super) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE keys (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    record jsonb NOT NULL
);
CREATE TABLE audit (
    seq bigserial PRIMARY KEY,
    key_id uuid,
    owner text,
    entry jsonb NOT NULL
);
CREATE INDEX audit_by_key ON audit (key_id, seq);
CREATE INDEX audit_by_owner ON audit (owner, seq);
CREATE TABLE retired_secrets (
    hash bytea PRIMARY KEY,
    entry jsonb NOT NULL
);
CREATE TABLE alert_jobs (
    id uuid PRIMARY KEY,
    key_id uuid NOT NULL,
    owner text,
    state text NOT NULL,
    run_at_ms bigint NOT NULL,
    job jsonb NOT NULL
);
CREATE INDEX alert_jobs_due ON alert_jobs (run_at_ms, id) WHERE state = 'Scheduled';
CREATE INDEX alert_jobs_by_state ON alert_jobs (state);
CREATE INDEX alert_jobs_by_key ON alert_jobs (key_id, id);
CREATE INDEX alert_jobs_by_owner ON alert_jobs (owner, id);
CREATE TABLE operator_messages (
    id bigint PRIMARY KEY,
    message jsonb NOT NULL
);
",
    r"
CREATE TABLE apikeyd_meta (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
",
    // Cluster mode: the change log nodes follow, and job leases.
    r"
CREATE TABLE key_changes (
    seq bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    node uuid NOT NULL,
    key_id uuid NOT NULL
);
CREATE INDEX key_changes_by_key ON key_changes (key_id, seq);
CREATE INDEX key_changes_by_time ON key_changes (at);
CREATE TABLE key_changes_horizon (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    pruned_through bigint NOT NULL
);
INSERT INTO key_changes_horizon (pruned_through) VALUES (0);
ALTER TABLE alert_jobs ADD COLUMN claimed_by uuid, ADD COLUMN lease_until_ms bigint;
CREATE INDEX alert_jobs_leases ON alert_jobs (lease_until_ms) WHERE state = 'Running';
",
    // What a node checks in its index before a change, the database enforces for
    // changes made on two nodes at once: one key per secret, and names unique per
    // owner (ignoring case) among keys not removed.
    r"
CREATE UNIQUE INDEX keys_unique_secret ON keys ((record->>'hash'))
    WHERE record->>'state' <> 'removed';
CREATE UNIQUE INDEX keys_unique_name ON keys (owner, lower(record->>'name'))
    WHERE record->>'state' <> 'removed';
",
    // When a node last wrote a key's usage: the others read recent last uses from
    // it (inactivity is judged on the latest use across the cluster).
    r"
ALTER TABLE keys ADD COLUMN usage_written_at timestamptz;
CREATE INDEX keys_by_usage_written ON keys (usage_written_at)
    WHERE usage_written_at IS NOT NULL;
",
];

/// A number no other application's advisory lock is likely to use ("apikeyd" in ASCII).
const LOCK: i64 = 0x0061_7069_6b65_7964;
/// Held by an apikeyd from before cluster mode for as long as it ran (one node
/// at a time then): a node of this version refuses to start beside one.
pub(super) const OLD_NODE_LOCK: i64 = LOCK + 1;
/// Held (for its transaction) by every commit that writes the change log, so that
/// change numbers are committed in their order: a node that has read up to
/// change N never finds N - 1 appear later.
pub(super) const CHANGE_LOCK: i64 = LOCK + 2;
/// Held (for its session) by the node that runs the maintenance jobs.
pub(super) const MAINTENANCE_LOCK: i64 = LOCK + 3;
/// The channel a commit that changes keys notifies.
pub(super) const CHANNEL: &str = "apikeyd_changes";

fn storage(e: tokio_postgres::Error) -> StoreError {
    StoreError::Storage(Box::new(e))
}

/// Apply the migrations the database lacks.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx_err = |e: tokio_postgres::Error| StoreError::Transaction(Box::new(e));
    let tx = client.transaction().await.map_err(tx_err)?;
    // Held until the transaction ends: a second process waits here, then finds the
    // migrations applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(storage)?;
    // Without this, every start after the first logs the server's notice that the
    // table already exists.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS apikeyd_schema (version integer NOT NULL)",
    )
    .await
    .map_err(storage)?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM apikeyd_schema",
            &[],
        )
        .await
        .map_err(storage)?
        .get(0);
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Open {
            path: "PostgreSQL".into(),
            source: format!(
                "the database is at schema version {applied}, newer than this apikeyd knows ({}); upgrade apikeyd",
                MIGRATIONS.len()
            )
            .into(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await.map_err(storage)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO apikeyd_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(storage)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit()
        .await
        .map_err(|e| StoreError::Commit(Box::new(e)))
}
