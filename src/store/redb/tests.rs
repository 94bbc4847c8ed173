//! The redb store's audit tables: paging by owner and by key, and the indexes built
//! for a database written before they existed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};

use super::*;
use crate::model::job::{AlertJob, JobKind};
use crate::model::key::KeyKind;
use redb::Database;

pub(crate) fn record(owner: &str, now: DateTime<Utc>) -> KeyRecord {
    let name = format!("k-{}", Uuid::now_v7());
    KeyRecord::new(owner, &name, &[0; 32], KeyKind::Generated, now)
}

fn entry(key: Uuid, action: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Utc::now(),
        actor: "admin".into(),
        action: action.into(),
        key_id: Some(key),
        detail: String::new(),
    }
}

fn decodes() -> usize {
    tables::DECODES.with(std::cell::Cell::get)
}

/// A store with keys of alice (2), bob (1) and carol (1); every `every`-th audit
/// entry of `n` is about one of alice's keys, the others about bob's, carol has
/// one. Returns alice's entries' seqs and those of her first key, newest first.
fn trail(store: &RedbStore, n: usize, every: usize) -> (Vec<u64>, (Uuid, Vec<u64>)) {
    let now = Utc::now();
    let (a1, a2, b, c) = (
        record("alice", now),
        record("alice", now),
        record("bob", now),
        record("carol", now),
    );
    let ids = [a1.id, a2.id];
    let bob = b.id;
    let carol = c.id;
    store
        .commit(Change {
            put_keys: vec![a1, a2, b, c],
            audit: vec![entry(carol, "create")],
            ..Change::default()
        })
        .unwrap();
    // Entries written in several commits, and entries of keys committed in the
    // same batch as their record (below), both get their owner.
    let mut alice = Vec::new();
    let mut first = Vec::new();
    let mut seq = 1;
    for chunk in (0..n).collect::<Vec<_>>().chunks(97) {
        let mut audit = Vec::new();
        for i in chunk {
            seq += 1;
            if i % every == 0 {
                let k = (i / every) % 2;
                audit.push(entry(ids[k], "edit"));
                alice.push(seq);
                if k == 0 {
                    first.push(seq);
                }
            } else {
                audit.push(entry(bob, "edit"));
            }
        }
        store
            .commit(Change {
                put_keys: vec![],
                audit,
                ..Change::default()
            })
            .unwrap();
    }
    let late = record("alice", now);
    let late_id = late.id;
    store
        .commit(Change {
            put_keys: vec![late],
            audit: vec![entry(late_id, "create")],
            ..Change::default()
        })
        .unwrap();
    alice.push(seq + 1);
    alice.reverse();
    first.reverse();
    (alice, (ids[0], first))
}

/// Walk every page of an owner's (or a key's) audit entries.
fn walk(store: &RedbStore, filter: &AuditFilter, limit: usize) -> (Vec<u64>, usize, usize) {
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    let mut most_decoded = 0;
    loop {
        let at = decodes();
        let page = store.audit_page(filter, before, limit).unwrap();
        most_decoded = most_decoded.max(decodes() - at);
        pages += 1;
        assert!(page.items.len() <= limit);
        seen.extend(page.items.iter().map(|e| e.seq));
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
        assert!(pages < 10_000, "the pages never end");
    }
    (seen, pages, most_decoded)
}

/// Non-admin `audit` read the whole trail (`usize::MAX` entries) and filtered it
/// by owner afterwards: a user with few entries made the daemon decode all of
/// them. The owner index gives exactly the owner's entries, page after page,
/// in order, without gaps or repeats, each page decoding only its own entries.
#[test]
fn audit_pages_of_one_owner_read_only_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
    let (alice, (k1, first)) = trail(&store, 3000, 50);
    assert_eq!(alice.len(), 61);
    let owner = AuditFilter {
        key: None,
        owner: Some("alice".into()),
    };
    for limit in [1, 7, 61, 100] {
        let (seen, pages, most_decoded) = walk(&store, &owner, limit);
        assert_eq!(seen, alice, "limit {limit}");
        assert_eq!(pages, alice.len().div_ceil(limit).max(1), "limit {limit}");
        assert!(
            most_decoded <= limit,
            "a page of {limit} decoded {most_decoded}"
        );
    }
    // One key's entries through the key index.
    let key = AuditFilter {
        key: Some(k1),
        owner: None,
    };
    let (seen, _, most_decoded) = walk(&store, &key, 5);
    assert_eq!(seen.len(), 30);
    assert_eq!(seen, first);
    assert!(most_decoded <= 5);
    // No filter: the whole trail, newest first, across pages.
    let (all, _, _) = walk(&store, &AuditFilter::default(), 1000);
    assert_eq!(all, (1..=3002).rev().collect::<Vec<u64>>());
    // Someone without entries: one empty page.
    let nobody = AuditFilter {
        key: None,
        owner: Some("dave".into()),
    };
    assert_eq!(walk(&store, &nobody, 10), (vec![], 1, 0));
    // A cursor at the very start: nothing before it.
    assert!(store
        .audit_page(&owner, Some(0), 10)
        .unwrap()
        .items
        .is_empty());
}

/// A database written before the indexes existed gets them built when opened,
/// and they give the same pages as indexes written with the entries.
#[test]
fn audit_and_job_indexes_are_built_for_an_older_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let store = RedbStore::open(&path).unwrap();
    let (alice, _) = trail(&store, 300, 10);
    let key = record("alice", Utc::now());
    let key_id = key.id;
    store
        .commit(Change {
            put_keys: vec![key],
            audit: vec![],
            ..Change::default()
        })
        .unwrap();
    let now = Utc::now();
    let job = AlertJob::new(key_id, JobKind::Notification, "s", now, now);
    store
        .commit(Change {
            put_jobs: vec![job.clone()],
            ..Change::default()
        })
        .unwrap();
    drop(store);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        for t in [
            "audit_by_key",
            "audit_by_owner",
            "alert_jobs_by_key",
            "alert_jobs_by_owner",
        ] {
            assert!(txn
                .delete_table(redb::TableDefinition::<u8, ()>::new(t))
                .unwrap());
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let owner = AuditFilter {
        key: None,
        owner: Some("alice".into()),
    };
    assert_eq!(walk(&store, &owner, 8).0, alice);
    let jobs = store
        .jobs(&JobFilter {
            owner: Some("alice".into()),
            limit: 10,
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(
        jobs.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [job.id]
    );
}

/// Keys of alice, bob and carol in turn, each with its audit entry and alert job,
/// as a bulk import writes them, in `batches` changes of `per` keys.
fn import_batches(batches: usize, per: usize) -> Vec<Change> {
    let now = Utc::now();
    let owners = ["alice", "bob", "carol"];
    (0..batches)
        .map(|b| {
            let mut change = Change::default();
            for i in 0..per {
                let rec = record(owners[(b * per + i) % 3], now);
                let at = now + chrono::Duration::minutes(i64::try_from(i % 5).unwrap());
                change
                    .put_jobs
                    .push(AlertJob::new(rec.id, JobKind::Notification, "s", at, now));
                change.audit.push(entry(rec.id, "import"));
                change.put_keys.push(rec);
            }
            change
        })
        .collect()
}

/// Audit entries (seq, key), jobs by owner, jobs of one key.
type Indexed = (Vec<(u64, Option<Uuid>)>, Vec<Uuid>, Vec<Uuid>);

/// What the indexes give for one owner and one key: audit entries (seq, key),
/// jobs by owner, jobs of the key.
fn indexed(store: &RedbStore, owner: &str, key: Uuid) -> Indexed {
    let filter = AuditFilter {
        key: None,
        owner: Some(owner.into()),
    };
    let audit = store
        .audit_page(&filter, None, 1000)
        .unwrap()
        .items
        .iter()
        .map(|e| (e.seq, e.key_id))
        .collect();
    let jobs = |filter: JobFilter| -> Vec<Uuid> {
        store
            .jobs(&filter)
            .unwrap()
            .items
            .iter()
            .map(|j| j.id)
            .collect()
    };
    let by_owner = jobs(JobFilter {
        owner: Some(owner.into()),
        limit: 1000,
        ..JobFilter::default()
    });
    let by_key = jobs(JobFilter {
        key: Some(key),
        limit: 1000,
        ..JobFilter::default()
    });
    (audit, by_owner, by_key)
}

/// A bulk import's changes (every job's key in its own change) are written with
/// the jobs on a second thread; the tables come out as the same changes committed
/// one by one leave them, and a change filing a job of a key written earlier (its
/// owner read from the keys table) still finds the owner.
#[test]
fn a_bulk_commit_writes_the_same_tables_as_commits_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let bulk = RedbStore::open(&dir.path().join("bulk.redb")).unwrap();
    let single = RedbStore::open(&dir.path().join("single.redb")).unwrap();
    let changes = import_batches(4, 150);
    // Key 300 of 600, in the third change: alice's.
    let alices = changes[2].put_keys[0].id;
    assert_eq!(changes[2].put_keys[0].owner, "alice");
    bulk.commit_all(changes.clone()).unwrap();
    for c in changes {
        single.commit(c).unwrap();
    }
    for owner in ["alice", "bob", "carol"] {
        let (audit, by_owner, by_key) = indexed(&bulk, owner, alices);
        assert_eq!(audit.len(), 200, "{owner}");
        assert_eq!(by_owner.len(), 200, "{owner}");
        assert_eq!(
            (audit, by_owner, by_key),
            indexed(&single, owner, alices),
            "{owner}"
        );
    }
    assert_eq!(bulk.job_state_counts(), single.job_state_counts());
    assert_eq!(bulk.next_due().unwrap(), single.next_due().unwrap());
    assert_eq!(bulk.key_count().unwrap(), 600);

    // Two changes again, the second filing a job of a key of the first commit:
    // written in order on one thread.
    let now = Utc::now();
    let mut more = import_batches(2, 3);
    more[1]
        .put_jobs
        .push(AlertJob::new(alices, JobKind::Notification, "s", now, now));
    bulk.commit_all(more.clone()).unwrap();
    for c in more {
        single.commit(c).unwrap();
    }
    let (_, by_owner, by_key) = indexed(&bulk, "alice", alices);
    assert_eq!(by_key.len(), 2);
    assert_eq!(by_owner.len(), 203);
    assert_eq!(
        indexed(&bulk, "alice", alices),
        indexed(&single, "alice", alices)
    );
    assert_eq!(bulk.job_state_counts(), single.job_state_counts());
}
