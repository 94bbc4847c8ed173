//! The [`Storage`] contract, run against every backend: what the domain relies on
//! (atomic commits with assigned sequence numbers, paged and filtered listings, due
//! jobs in order, counts) must not depend on which store is underneath. The unit
//! tests of the key and job rules run on [`MemoryStore`]; these make sure that it
//! answers as [`RedbStore`] does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use super::postgres::test_server::TestServer;
use super::{
    AuditFilter, Change, JobFilter, MemoryStore, PostgresStore, RedbStore, Retire, Storage,
    UsageUpdate,
};
use crate::model::{
    AlertJob, AuditEntry, JobKind, JobState, KeyKind, KeyRecord, OperatorMessage, RetiredSecret,
    Severity, UsageCounts,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap()
}

/// Run `check` on a fresh store of each backend: in memory, redb in a temporary
/// directory, and PostgreSQL on a private server (see `postgres/test_server.rs`).
fn each_backend(check: impl Fn(&dyn Storage)) {
    check(&MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    check(&RedbStore::open(&dir.path().join("db.redb")).unwrap());
    if let Some(server) = TestServer::start() {
        let store = PostgresStore::open(&server.database("conformance"), None).unwrap();
        check(&store);
        // A second open of the same database finds the schema applied.
        drop(store);
        PostgresStore::open(&server.url("conformance"), None).unwrap();
    }
}

/// The job counts become `want`: at once in a store one process owns; within a
/// few seconds in a shared one, which counts in the background.
fn counts_become(s: &dyn Storage, want: [u64; 5]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let counts = s.job_state_counts().map(|(_, n)| n);
        if counts == want {
            return;
        }
        assert!(
            s.shared() && std::time::Instant::now() < deadline,
            "job counts {counts:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn key(owner: &str, n: u8) -> KeyRecord {
    KeyRecord::new(owner, &format!("k{n}"), &[n; 32], KeyKind::Imported, t0())
}

fn entry(key: Option<Uuid>, action: &str) -> AuditEntry {
    AuditEntry::new(t0(), "admin", action, key, String::new())
}

fn message(title: &str) -> OperatorMessage {
    OperatorMessage {
        id: 0,
        at: t0(),
        severity: Severity::Warning,
        title: title.into(),
        text: String::new(),
        key_id: None,
        job_id: None,
        acknowledged_by: None,
        acknowledged_at: None,
    }
}

#[test]
fn a_change_is_committed_whole_with_sequence_numbers_and_ids_assigned() {
    each_backend(|s| {
        let (a, b) = (key("alice", 1), key("bob", 2));
        let (a_id, b_id) = (a.id, b.id);
        s.commit(Change {
            put_keys: vec![a.clone(), b],
            audit: vec![entry(Some(a_id), "create"), entry(Some(b_id), "create")],
            messages: vec![message("one"), message("two")],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.key_count().unwrap(), 2);
        assert_eq!(s.key(a_id).unwrap(), Some(a.clone()));
        // Missing ids are skipped; the order asked for is kept.
        let got: Vec<Uuid> = s
            .keys(&[b_id, Uuid::now_v7(), a_id])
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(got, [b_id, a_id]);
        let mut rows = Vec::new();
        assert_eq!(s.load_keys(&mut |r| rows.push(r.id)).unwrap(), 2);
        rows.sort();
        let mut want = vec![a_id, b_id];
        want.sort();
        assert_eq!(rows, want);
        let trail = s.audit_page(&AuditFilter::default(), None, 10).unwrap();
        assert_eq!(
            trail.items.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 1]
        );
        let msgs = s.messages(false, 10).unwrap();
        assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), [2, 1]);
        // A message with its id replaces it (an acknowledgement).
        let mut ack = s.message(1).unwrap().unwrap();
        ack.acknowledged_by = Some("admin".into());
        ack.acknowledged_at = Some(t0());
        s.commit(Change {
            messages: vec![ack],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.messages(true, 10).unwrap().len(), 1);
        assert_eq!(s.messages(false, 10).unwrap().len(), 2);
        // Purging a key keeps its audit entries filed under its owner.
        s.commit(Change {
            purge_keys: vec![a_id],
            audit: vec![entry(Some(a_id), "purge")],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.key(a_id).unwrap(), None);
        let alice = AuditFilter {
            key: None,
            owner: Some("alice".into()),
        };
        let hers = s.audit_page(&alice, None, 10).unwrap();
        assert_eq!(
            hers.items
                .iter()
                .map(|e| e.action.as_str())
                .collect::<Vec<_>>(),
            ["purge", "create"]
        );
    });
}

/// A bulk import's commit: several changes of keys, each with its audit entry and
/// alert job, as one unit. Every backend numbers the entries in order across the
/// changes and files entries and jobs under their key and owner (redb writes them
/// on two threads, PostgreSQL in one transaction of several batches).
#[test]
fn a_bulk_commit_numbers_and_files_every_change_in_order() {
    each_backend(|s| {
        let owners = ["alice", "bob", "carol"];
        let mut changes = Vec::new();
        let mut ids = Vec::new();
        for b in 0..4u8 {
            let mut c = Change::default();
            for i in 0..25u8 {
                let rec = key(owners[usize::from(b * 25 + i) % 3], b * 25 + i);
                let at = t0() + Duration::minutes(i64::from(i));
                c.put_jobs
                    .push(AlertJob::new(rec.id, JobKind::Notification, "s", at, t0()));
                c.audit.push(entry(Some(rec.id), "import"));
                ids.push(rec.id);
                c.put_keys.push(rec);
            }
            changes.push(c);
        }
        s.commit_all(changes).unwrap();
        assert_eq!(s.key_count().unwrap(), 100);
        let all = s.audit_page(&AuditFilter::default(), None, 1000).unwrap();
        let in_order: Vec<Option<Uuid>> = all.items.iter().rev().map(|e| e.key_id).collect();
        assert_eq!(in_order, ids.iter().copied().map(Some).collect::<Vec<_>>());
        let seqs: Vec<u64> = all.items.iter().rev().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
        for (n, owner) in owners.iter().enumerate() {
            let want = 34 - usize::from(n > 0);
            let filter = AuditFilter {
                key: None,
                owner: Some((*owner).to_owned()),
            };
            assert_eq!(
                s.audit_page(&filter, None, 1000).unwrap().items.len(),
                want,
                "{owner}"
            );
            let jobs = s
                .jobs(&JobFilter {
                    owner: Some((*owner).to_owned()),
                    limit: 1000,
                    ..JobFilter::default()
                })
                .unwrap();
            assert_eq!(jobs.items.len(), want, "{owner}");
        }
        let one = s
            .jobs(&JobFilter {
                key: Some(ids[60]),
                limit: 10,
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(one.items.len(), 1);
        counts_become(s, [100, 0, 0, 0, 0]);
        assert_eq!(s.next_due().unwrap(), Some(t0()));
    });
}

#[test]
fn audit_pages_by_key_and_owner_end_with_a_cursor() {
    each_backend(|s| {
        let (a, b) = (key("alice", 1), key("bob", 2));
        let (a_id, b_id) = (a.id, b.id);
        s.commit(Change {
            put_keys: vec![a, b],
            ..Change::default()
        })
        .unwrap();
        let mut audit = Vec::new();
        for i in 0..25 {
            audit.push(entry(Some(if i % 5 == 0 { a_id } else { b_id }), "edit"));
        }
        audit.push(entry(None, "seed"));
        s.commit(Change {
            audit,
            ..Change::default()
        })
        .unwrap();
        let by_key = AuditFilter {
            key: Some(a_id),
            owner: None,
        };
        let first = s.audit_page(&by_key, None, 3).unwrap();
        assert_eq!(
            first.items.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [21, 16, 11]
        );
        assert_eq!(first.next, Some(11));
        let rest = s.audit_page(&by_key, first.next, 3).unwrap();
        assert_eq!(rest.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 1]);
        assert_eq!(rest.next, None);
        let bobs = AuditFilter {
            key: None,
            owner: Some("bob".into()),
        };
        assert_eq!(s.audit_page(&bobs, None, 100).unwrap().items.len(), 20);
        // Without a filter, entries about no key are listed too.
        let all = s.audit_page(&AuditFilter::default(), None, 100).unwrap();
        assert_eq!(all.items.len(), 26);
        assert_eq!(all.items[0].action, "seed");
    });
}

#[test]
fn due_jobs_are_claimed_in_run_order_and_counted_by_state() {
    each_backend(|s| {
        let rec = key("alice", 1);
        let k = rec.id;
        s.commit(Change {
            put_keys: vec![rec],
            ..Change::default()
        })
        .unwrap();
        let late = AlertJob::new(
            k,
            JobKind::Notification,
            "s",
            t0() + Duration::seconds(20),
            t0(),
        );
        let early = AlertJob::new(
            k,
            JobKind::Notification,
            "s",
            t0() + Duration::seconds(10),
            t0(),
        );
        let future = AlertJob::new(
            k,
            JobKind::Notification,
            "s",
            t0() + Duration::hours(1),
            t0(),
        );
        s.commit(Change {
            put_jobs: vec![late.clone(), early.clone(), future.clone()],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.next_due().unwrap(), Some(t0() + Duration::seconds(10)));
        let now = t0() + Duration::seconds(30);
        let claimed = s.claim_due(now, 1).unwrap();
        assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [early.id]);
        assert_eq!(
            (claimed[0].state, claimed[0].attempts),
            (JobState::Running, 1)
        );
        assert_eq!(claimed[0].started_at, Some(now));
        assert_eq!(s.claim_due(now, 10).unwrap()[0].id, late.id);
        assert!(s.claim_due(now, 10).unwrap().is_empty());
        let mut running: Vec<Uuid> = s
            .running_jobs(now + chrono::Duration::days(1))
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        running.sort();
        // A shared store leaves claimed jobs to their leases (claim_due takes them
        // over); a store one process owns lists them for replacement at start.
        let mut want = if s.shared() {
            Vec::new()
        } else {
            vec![early.id, late.id]
        };
        want.sort();
        assert_eq!(running, want);
        counts_become(s, [1, 2, 0, 0, 0]);
        let mut done = s.job(early.id).unwrap().unwrap();
        done.state = JobState::Completed;
        s.commit(Change {
            put_jobs: vec![done],
            delete_jobs: vec![late.id, Uuid::now_v7()],
            ..Change::default()
        })
        .unwrap();
        counts_become(s, [1, 0, 1, 0, 0]);
        assert_eq!(s.job(late.id).unwrap(), None);
        assert_eq!(s.next_due().unwrap(), Some(t0() + Duration::hours(1)));
        // Listed newest first, by owner and by key, with a state filter.
        let mine = JobFilter {
            owner: Some("alice".into()),
            limit: 10,
            ..JobFilter::default()
        };
        let listed: Vec<Uuid> = s.jobs(&mine).unwrap().items.iter().map(|j| j.id).collect();
        let mut want = vec![early.id, future.id];
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(listed, want);
        let others = JobFilter {
            owner: Some("bob".into()),
            ..mine.clone()
        };
        assert!(s.jobs(&others).unwrap().items.is_empty());
        let completed = JobFilter {
            key: Some(k),
            state: Some(JobState::Completed),
            limit: 10,
            ..JobFilter::default()
        };
        let listed: Vec<Uuid> = s
            .jobs(&completed)
            .unwrap()
            .items
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, [early.id]);
    });
}

#[test]
fn usage_never_moves_back_and_retired_secrets_are_remembered() {
    each_backend(|s| {
        let rec = key("alice", 1);
        let id = rec.id;
        s.commit(Change {
            put_keys: vec![rec.clone()],
            ..Change::default()
        })
        .unwrap();
        let counts = UsageCounts {
            verifications: 3,
            ..UsageCounts::default()
        };
        let update = |at| UsageUpdate {
            id,
            last_used_at: Some(at),
            counts: counts.clone(),
        };
        let purged = UsageUpdate {
            id: Uuid::now_v7(),
            ..update(t0())
        };
        assert_eq!(s.write_usage(&[update(t0()), purged]).unwrap(), 1);
        s.write_usage(&[update(t0() - Duration::hours(1))]).unwrap();
        let stored = s.key(id).unwrap().unwrap();
        assert_eq!(stored.last_used_at, Some(t0()));
        // Counts are added (each node writes what it counted since its last write).
        assert_eq!(stored.usage.verifications, 6);
        // A change of the key keeps the stored usage, whatever its copy says.
        s.commit(Change {
            put_keys: vec![rec.clone()],
            ..Change::default()
        })
        .unwrap();
        let stored = s.key(id).unwrap().unwrap();
        assert_eq!(stored.last_used_at, Some(t0()));
        assert_eq!(stored.usage.verifications, 6);
        let retire = |hash, refresh_only| Retire {
            hash,
            entry: RetiredSecret::of(&rec, None, t0()),
            refresh_only,
        };
        s.commit(Change {
            retire: vec![retire([1; 32], false), retire([2; 32], true)],
            ..Change::default()
        })
        .unwrap();
        assert_eq!(s.retired(&[1; 32]).unwrap().unwrap().owner, "alice");
        // Refresh-only entries do not create one.
        assert!(s.retired(&[2; 32]).unwrap().is_none());
    });
}

/// The export methods (what `crate::migrate` reads): every record once, in a stable
/// order, page after page from the cursor of the last one, and counts that agree.
#[test]
fn export_pages_every_record_once_in_order() {
    each_backend(|s| {
        let keys: Vec<KeyRecord> = (1..=5)
            .map(|n| key(["alice", "bob"][usize::from(n % 2)], n))
            .collect();
        let retire = |n: u8| Retire {
            hash: [n; 32],
            entry: RetiredSecret::of(&keys[0], None, t0()),
            refresh_only: false,
        };
        s.commit(Change {
            put_keys: keys.clone(),
            audit: (0..5).map(|i| entry(Some(keys[i].id), "create")).collect(),
            messages: (0..5).map(|i| message(&format!("m{i}"))).collect(),
            retire: vec![retire(9), retire(3), retire(7)],
            put_jobs: vec![AlertJob::new(
                keys[0].id,
                JobKind::Notification,
                "ops",
                t0(),
                t0(),
            )],
            ..Change::default()
        })
        .unwrap();
        let c = s.export_counts().unwrap();
        assert_eq!(
            (c.keys, c.audit, c.jobs, c.messages, c.retired),
            (5, 5, 1, 5, 3)
        );

        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = s.export_keys(after, 2).unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= 2);
            after = Some(last.id);
            ids.extend(page.iter().map(|r| r.id));
        }
        let mut sorted: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(
            s.export_keys(None, 10).unwrap()[0],
            *keys.iter().min_by_key(|k| k.id).unwrap()
        );

        let audit = s.export_audit(0, 10).unwrap();
        let seqs: Vec<u64> = audit.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(audit[0].key_id, Some(keys[0].id));
        let rest: Vec<u64> = s
            .export_audit(3, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(rest, [4, 5]);
        assert_eq!(s.export_audit(2, 2).unwrap().len(), 2);

        let titles: Vec<String> = s
            .export_messages(2, 2)
            .unwrap()
            .into_iter()
            .map(|m| format!("{}:{}", m.id, m.title))
            .collect();
        assert_eq!(titles, ["3:m2", "4:m3"]);

        let hashes: Vec<u8> = s
            .export_retired(None, 2)
            .unwrap()
            .iter()
            .map(|(h, _)| h[0])
            .collect();
        assert_eq!(hashes, [3, 7]);
        let rest = s.export_retired(Some([7; 32]), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, [9; 32]);
        assert_eq!(rest[0].1.owner, keys[0].owner);
    });
}
