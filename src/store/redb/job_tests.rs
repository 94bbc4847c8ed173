//! The redb job tables: state counts that survive a reopen, and paging.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod state_counts {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::RedbStore;
    use crate::model::job::JobKind;
    use crate::model::{AlertJob, JobState};
    use crate::store::storage::Change;
    use crate::store::Storage;
    use chrono::Utc;
    use uuid::Uuid;

    fn counts(store: &RedbStore) -> [u64; 5] {
        store.job_state_counts().map(|(_, n)| n)
    }

    #[test]
    fn job_state_counts_follow_commits_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(counts(&store), [0; 5]);
        let now = Utc::now();
        let a = AlertJob::new(Uuid::now_v7(), JobKind::Notification, "s", now, now);
        let b = AlertJob::new(Uuid::now_v7(), JobKind::Notification, "s", now, now);
        store
            .commit(Change {
                put_jobs: vec![a.clone(), b.clone()],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(counts(&store), [2, 0, 0, 0, 0]);
        assert_eq!(store.claim_due(now, 1).unwrap().len(), 1);
        assert_eq!(counts(&store), [1, 1, 0, 0, 0]);
        let mut done = store.running_jobs(chrono::Utc::now()).unwrap().remove(0);
        done.state = JobState::Completed;
        let other = if done.id == a.id { b.id } else { a.id };
        store
            .commit(Change {
                put_jobs: vec![done],
                // Deleting a job that does not exist changes nothing.
                delete_jobs: vec![other, Uuid::now_v7()],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(counts(&store), [0, 0, 1, 0, 0]);
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(counts(&store), [0, 0, 1, 0, 0]);
    }
}

mod paging {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::tests::record;
    use super::super::RedbStore;
    use crate::model::job::JobKind;
    use crate::model::{AlertJob, JobState};
    use crate::store::storage::{Change, JobFilter};
    use crate::store::Storage;
    use crate::store::MAX_PAGE;
    use chrono::Utc;
    use uuid::Uuid;

    fn decodes() -> usize {
        super::super::tables::DECODES.with(std::cell::Cell::get)
    }

    /// Walk every page of `filter`; returns the ids seen and the most records one
    /// page decoded.
    fn walk(store: &RedbStore, filter: &JobFilter) -> (Vec<Uuid>, usize) {
        let mut filter = filter.clone();
        let mut seen = Vec::new();
        let mut most = 0;
        for _ in 0..10_000 {
            let at = decodes();
            let page = store.jobs(&filter).unwrap();
            most = most.max(decodes() - at);
            assert!(page.items.len() <= filter.limit);
            seen.extend(page.items.iter().map(|j| j.id));
            match page.next {
                Some(n) => filter.before = Some(n),
                None => return (seen, most),
            }
        }
        panic!("the pages never end");
    }

    /// Non-admin `job list` read every job (`usize::MAX`) and filtered by owner
    /// afterwards. The owner index gives exactly the owner's jobs, newest first,
    /// page after page without gaps or repeats, each page decoding only its jobs;
    /// a rare state ends a page after MAX_PAGE jobs examined, with a cursor.
    #[test]
    fn job_pages_of_one_owner_read_only_their_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let now = Utc::now();
        let (alice, bob) = (record("alice", now), record("bob", now));
        let (a, b) = (alice.id, bob.id);
        store
            .commit(Change {
                put_keys: vec![alice, bob],
                ..Change::default()
            })
            .unwrap();
        let mut all = Vec::new();
        let mut alices = Vec::new();
        let n = MAX_PAGE + 500;
        for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
            let mut put_jobs = Vec::new();
            for i in chunk {
                let key = if i % 400 == 0 { a } else { b };
                let mut job = AlertJob::new(key, JobKind::Notification, "s", now, now);
                if i % 4000 == 1 {
                    job.state = JobState::Failed;
                }
                if key == a {
                    alices.push(job.id);
                }
                all.push((job.id, job.state));
                put_jobs.push(job);
            }
            store
                .commit(Change {
                    put_jobs,
                    ..Change::default()
                })
                .unwrap();
        }
        alices.sort_unstable_by(|x, y| y.cmp(x));
        assert_eq!(alices.len(), 27);
        let owner = JobFilter {
            owner: Some("alice".into()),
            limit: 4,
            ..JobFilter::default()
        };
        let (seen, most) = walk(&store, &owner);
        assert_eq!(seen, alices);
        assert!(most <= 4, "a page of 4 decoded {most}");
        // One key's jobs (and the owner must match, if given).
        let key = JobFilter {
            key: Some(a),
            limit: 10,
            ..owner.clone()
        };
        assert_eq!(walk(&store, &key).0, alices);
        let not_hers = JobFilter {
            key: Some(b),
            ..key.clone()
        };
        assert_eq!(walk(&store, &not_hers).0, Vec::<Uuid>::new());
        // A rare state over the whole table: pages end after MAX_PAGE examined.
        let mut failed: Vec<Uuid> = all
            .iter()
            .filter(|(_, s)| *s == JobState::Failed)
            .map(|(id, _)| *id)
            .collect();
        failed.sort_unstable_by(|x, y| y.cmp(x));
        let rare = JobFilter {
            state: Some(JobState::Failed),
            limit: 100,
            ..JobFilter::default()
        };
        let (seen, most) = walk(&store, &rare);
        assert_eq!(seen, failed);
        assert!(most <= MAX_PAGE, "a page decoded {most}");
        // Deleting a job takes it out of the owner's listing.
        store
            .commit(Change {
                delete_jobs: vec![alices[0]],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(walk(&store, &owner).0, alices[1..]);
    }
}

/// The due index holds exactly the Scheduled jobs and the running index the Running
/// ones, whatever a commit does to a job: claimed, finished, or cancelled while
/// waiting (a cancelled job left in the due index would be claimed and delivered).
mod indexes {
    use chrono::{Duration, TimeZone, Utc};
    use redb::ReadableTableMetadata;
    use uuid::Uuid;

    use super::super::jobs::{DUE, RUNNING};
    use super::super::RedbStore;
    use crate::model::{AlertJob, JobKind, JobState};
    use crate::store::storage::Change;
    use crate::store::Storage;

    fn due_and_running(store: &RedbStore) -> (u64, u64) {
        let txn = store.db.begin_read().unwrap();
        let due = txn.open_table(DUE).unwrap().len().unwrap();
        let running = txn.open_table(RUNNING).unwrap().len().unwrap();
        (due, running)
    }

    #[test]
    fn the_due_and_running_indexes_follow_every_state_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap();
        let key = Uuid::now_v7();
        let a = AlertJob::new(
            key,
            JobKind::Notification,
            "s",
            t0 + Duration::seconds(10),
            t0,
        );
        let b = AlertJob::new(
            key,
            JobKind::Notification,
            "s",
            t0 + Duration::seconds(20),
            t0,
        );
        store
            .commit(Change {
                put_jobs: vec![a.clone(), b.clone()],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(due_and_running(&store), (2, 0));
        let claimed = store.claim_due(t0 + Duration::seconds(15), 10).unwrap();
        assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [a.id]);
        assert_eq!(due_and_running(&store), (1, 1));
        let mut done = claimed[0].clone();
        done.state = JobState::Completed;
        let mut cancelled = b.clone();
        cancelled.cancel("cancelled by admin".into(), t0);
        store
            .commit(Change {
                put_jobs: vec![done],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(due_and_running(&store), (1, 0));
        store
            .commit(Change {
                put_jobs: vec![cancelled],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(due_and_running(&store), (0, 0));
        assert_eq!(store.next_due().unwrap(), None);
        assert!(store
            .claim_due(t0 + Duration::hours(1), 10)
            .unwrap()
            .is_empty());
    }
}
