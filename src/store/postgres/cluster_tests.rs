//! Several nodes on one database: each node is a [`PostgresStore`] of its own, as
//! each apikeyd process has, on a private server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;

use super::test_server::TestServer;
use super::PostgresStore;
use crate::config::PostgresConfig;
use crate::model::{AlertJob, JobKind, JobState, KeyKind, KeyRecord};
use crate::store::{Change, Storage, StoreError};

fn key(n: u8) -> KeyRecord {
    KeyRecord::new(
        "alice",
        &format!("k{n}"),
        &[n; 32],
        KeyKind::Imported,
        Utc::now(),
    )
}

/// What the log holds for `store` since its position, which then moves on.
fn read(store: &PostgresStore) -> crate::store::KeyChanges {
    let changes = store.changes().unwrap();
    store.changes_applied(changes.upto);
    changes
}

fn put(store: &PostgresStore, rec: &KeyRecord) -> Result<(), StoreError> {
    store.commit(Change {
        put_keys: vec![rec.clone()],
        ..Change::default()
    })
}

/// A key one node writes reaches the other through the change log (the writer
/// reads it back too: a commit whose outcome it missed is applied that way); a
/// purge arrives as gone; the position moves only when told.
#[test]
fn changes_reach_every_node_once_applied() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("feed");
    let a = PostgresStore::open(&url, None).unwrap();
    let b = PostgresStore::open(&url, None).unwrap();
    assert!(a.shared() && read(&a).is_empty());
    let mut rec = key(1);
    put(&a, &rec).unwrap();
    assert_eq!(read(&a).put.len(), 1, "the writer reads its change back");
    // Not applied yet: read again.
    assert_eq!(b.changes().unwrap().put.len(), 1);
    let got = read(&b);
    assert_eq!(got.put.iter().map(|r| r.id).collect::<Vec<_>>(), [rec.id]);
    assert!(
        got.lag.is_some_and(|l| (0.0..60.0).contains(&l)),
        "{:?}",
        got.lag
    );
    assert!(read(&b).is_empty(), "read twice");

    rec.name = "renamed".into();
    put(&b, &rec).unwrap();
    assert_eq!(read(&a).put[0].name, "renamed");
    read(&b);
    a.commit(Change {
        purge_keys: vec![rec.id],
        ..Change::default()
    })
    .unwrap();
    let got = read(&b);
    assert_eq!((got.put.len(), got.gone.clone()), (0, vec![rec.id]));
}

/// Two nodes changing one key at once: the second commit, made without having
/// read the first, is refused whole; once it has read it, it goes through.
#[test]
fn a_change_made_without_the_other_nodes_change_is_refused() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("conflict");
    let a = PostgresStore::open(&url, None).unwrap();
    let b = PostgresStore::open(&url, None).unwrap();
    let rec = key(2);
    put(&a, &rec).unwrap();
    read(&b);
    let mut on_a = rec.clone();
    on_a.name = "from-a".into();
    put(&a, &on_a).unwrap();
    let mut on_b = rec.clone();
    on_b.name = "from-b".into();
    let err = put(&b, &on_b).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("another node"), "{err}");
    assert_eq!(
        b.key(rec.id).unwrap().unwrap().name,
        "from-a",
        "half written"
    );
    // Other keys are not held up by it.
    put(&b, &key(3)).unwrap();
    read(&b);
    put(&b, &on_b).unwrap();
    assert_eq!(a.key(rec.id).unwrap().unwrap().name, "from-b");
}

/// A claimed job is not claimed again while its lease runs; once the lease ends
/// (its node died) another node takes it, and renewing keeps it.
#[test]
fn a_job_whose_lease_ended_is_taken_over_by_another_node() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("leases");
    let mut config = PostgresConfig::new(&url);
    // Leases run on the database's clock: a short one, waited out.
    config.job_lease = Duration::from_millis(1500);
    let a = PostgresStore::connect(&config, None).unwrap();
    let b = PostgresStore::connect(&config, None).unwrap();
    let now = Utc::now();
    let rec = key(4);
    let job = AlertJob::new(rec.id, JobKind::Notification, "mail", now, now);
    let other = AlertJob::new(rec.id, JobKind::Notification, "mail", now, now);
    a.commit(Change {
        put_keys: vec![rec],
        put_jobs: vec![job.clone(), other.clone()],
        ..Change::default()
    })
    .unwrap();
    let mine = a.claim_due(now, 1).unwrap();
    let theirs = b.claim_due(now, 10).unwrap();
    assert_eq!(mine.len() + theirs.len(), 2, "each job claimed once");
    assert!(b.claim_due(now, 10).unwrap().is_empty());
    // The dispatcher wakes when a lease may end.
    let wake = a.next_due().unwrap().unwrap();
    assert!(
        wake > now && wake <= Utc::now() + chrono::Duration::seconds(2),
        "{wake}"
    );
    assert!(
        !b.renew_lease(mine[0].id, now).unwrap(),
        "renewed someone else's lease"
    );
    assert!(
        b.running_jobs(now).unwrap().is_empty(),
        "leased jobs listed as abandoned"
    );
    // A finish from B of A's job, while A holds it, is refused whole.
    let mut finished = mine[0].clone();
    finished.state = JobState::Completed;
    let err = b
        .commit(Change {
            put_jobs: vec![finished],
            ..Change::default()
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("being delivered by another node"),
        "{err}"
    );
    // A keeps renewing its job; B's lease (as if B died) runs out.
    let deadline = std::time::Instant::now() + Duration::from_millis(1800);
    while std::time::Instant::now() < deadline {
        assert!(a.renew_lease(mine[0].id, now).unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    let taken = a.claim_due(Utc::now(), 10).unwrap();
    assert_eq!(
        taken.iter().map(|j| j.id).collect::<Vec<_>>(),
        [theirs[0].id]
    );
    assert_eq!((taken[0].state, taken[0].attempts), (JobState::Running, 2));
    // A's own job, renewed, is still A's.
    assert!(b.claim_due(Utc::now(), 10).unwrap().is_empty());
}

/// One node at a time runs maintenance; when it goes, another takes over.
#[test]
fn maintenance_runs_on_one_node_at_a_time() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("leader");
    let wait_lead = |s: &PostgresStore| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.lead_maintenance().unwrap() {
            assert!(Instant::now() < deadline, "no node took the lead");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let a = PostgresStore::open(&url, None).unwrap();
    let b = PostgresStore::open(&url, None).unwrap();
    wait_lead(&a);
    assert!(a.lead_maintenance().unwrap(), "lost the lead it held");
    assert!(!b.lead_maintenance().unwrap(), "two leaders");
    drop(a);
    wait_lead(&b);
}

/// A node further behind than the change log keeps is told to reload every key.
#[test]
fn a_node_behind_the_pruned_log_reloads() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("prune");
    let mut config = PostgresConfig::new(&url);
    config.change_log_retention = Duration::from_millis(1);
    let a = PostgresStore::connect(&config, None).unwrap();
    let b = PostgresStore::connect(&config, None).unwrap();
    put(&a, &key(5)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.prune_changes().unwrap(), 1);
    assert!(read(&b).reload);
    // Then it follows from there.
    assert!(read(&b).is_empty());
    put(&a, &key(6)).unwrap();
    assert_eq!(read(&b).put.len(), 1);
}

/// Two nodes creating keys that clash (same secret, or same owner and name) at
/// the same moment, before either has read the other's: the database refuses the
/// second, as each node's index refuses a clash it can see.
#[test]
fn clashing_creations_on_two_nodes_are_refused_by_the_database() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("clash");
    let a = PostgresStore::open(&url, None).unwrap();
    let b = PostgresStore::open(&url, None).unwrap();
    let first = key(7);
    put(&a, &first).unwrap();
    // Same secret, another name.
    let mut same_secret = key(7);
    same_secret.name = "other".into();
    let err = put(&b, &same_secret).unwrap_err();
    assert!(
        err.to_string().contains("a key with the same secret"),
        "{err}"
    );
    // Same owner and name (other case), another secret.
    let mut same_name = key(8);
    same_name.name = "K7".into();
    let err = put(&b, &same_name).unwrap_err();
    assert!(err.to_string().contains("same owner and name"), "{err}");
    // Once the first is removed, both are allowed.
    let mut removed = first.clone();
    removed.state = crate::model::KeyState::Removed;
    put(&a, &removed).unwrap();
    put(&b, &same_secret).unwrap();
    put(&b, &same_name).unwrap();
}

/// A last use one node writes is read by the others (inactivity is judged on the
/// latest use across the cluster), and not again once read (beyond a margin).
#[test]
fn last_uses_written_by_one_node_reach_the_others() {
    use crate::store::UsageUpdate;
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("uses");
    let a = PostgresStore::open(&url, None).unwrap();
    let b = PostgresStore::open(&url, None).unwrap();
    let rec = key(9);
    put(&a, &rec).unwrap();
    assert!(b.recent_uses().unwrap().is_empty());
    let at = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    a.write_usage(&[UsageUpdate {
        id: rec.id,
        last_used_at: Some(at),
        counts: Default::default(),
    }])
    .unwrap();
    assert_eq!(b.recent_uses().unwrap(), [(rec.id, at)]);
}

/// A node of this version does not start beside an apikeyd from before cluster
/// mode (which holds its one-node lock and writes no change log); once that one
/// is gone, it does.
#[test]
fn a_node_refuses_to_start_beside_an_apikeyd_from_before_cluster_mode() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("upgrade");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (old, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    rt.block_on(old.execute(
        "SELECT pg_advisory_lock($1)",
        &[&super::schema::OLD_NODE_LOCK],
    ))
    .unwrap();
    let store = PostgresStore::open(&url, None).unwrap();
    let err = store.check_secret(b"fingerprint").unwrap_err();
    assert!(err.to_string().contains("older than cluster mode"), "{err}");
    // The old node stops: its connection closes with its runtime.
    drop(old);
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.check_secret(b"fingerprint").is_err() {
        assert!(
            Instant::now() < deadline,
            "still refused after the old node left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
