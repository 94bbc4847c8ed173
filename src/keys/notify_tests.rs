//! Notification rules and job outcomes with an injected clock: no sleeping, no SMTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::alerts::job::JobState;
use crate::clock::{Clock, ManualClock};
use crate::config::{self, Environment};
use crate::keys::secret::{KeyHasher, ServerSecret};
use crate::keys::{CreateKey, EditKey, Settings};

const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
DefaultAlertSource = "operator"
[alerts]
max_attempts = 4
retry_initial = "pt10s"
retry_max = "pt25s"
[groups.Admin]
scopes = ["catalog:read"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
"#;

struct F {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<ManualClock>,
    keys: Keys,
}

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> Keys {
    let c = config::parse(
        std::path::Path::new("t.toml"),
        CONFIG,
        &Environment::default(),
    )
    .unwrap();
    let store = Arc::new(Store::open(path).unwrap());
    let hasher = KeyHasher::new(&ServerSecret::from_bytes(vec![7; 32]).unwrap());
    let keys = Keys::open(
        store,
        hasher,
        clock,
        Settings {
            policy: c.policy,
            directory: c.directory,
        },
    )
    .unwrap();
    keys.set_alert_config(c.alerts);
    keys
}

fn fixture() -> F {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap());
    let keys = open(&path, clock.clone());
    F {
        _dir: dir,
        path,
        clock,
        keys,
    }
}

fn admin() -> Actor {
    Actor {
        name: "admin".into(),
        admin: true,
    }
}

async fn key_with(f: &F, notify_at: Option<&str>, expires_in: &str) -> (String, Uuid) {
    let issued = f
        .keys
        .create(
            &admin(),
            CreateKey {
                name: format!("k{}", Uuid::now_v7()),
                expires_in: Some(expires_in.into()),
                notify_at: notify_at.map(str::to_owned),
                ..CreateKey::default()
            },
        )
        .await
        .unwrap();
    (issued.view.id.to_string(), issued.view.alert_job.unwrap())
}

/// Claim what is due now; how many.
async fn claim(f: &F) -> usize {
    f.keys
        .claim_due_jobs(f.clock.now(), 10)
        .await
        .unwrap()
        .len()
}

fn failed() -> Outcome {
    Outcome::Failed {
        error: "SMTP down".into(),
        permanent: false,
    }
}

#[tokio::test]
async fn retries_back_off_exponentially_up_to_retry_max_then_fail_with_a_message() {
    let f = fixture();
    let (key, job) = key_with(&f, Some("2026-08-31T11:00:00Z"), "p30d").await;
    assert!(f
        .keys
        .claim_due_jobs(f.clock.now(), 10)
        .await
        .unwrap()
        .is_empty());
    f.clock.advance(Duration::hours(1));
    let mut delays = Vec::new();
    for attempt in 1..=4u32 {
        let claimed = f.keys.claim_due_jobs(f.clock.now(), 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
        assert_eq!(claimed[0].state, JobState::Running);
        assert_eq!(claimed[0].attempts, attempt);
        let j = f.keys.finish_job(job, failed()).await.unwrap();
        if attempt < 4 {
            assert_eq!(j.state, JobState::Scheduled);
            let delay = j.run_at - f.clock.now();
            delays.push(delay.num_seconds());
            // Not due a second early.
            f.clock.advance(delay - Duration::seconds(1));
            assert!(f
                .keys
                .claim_due_jobs(f.clock.now(), 10)
                .await
                .unwrap()
                .is_empty());
            f.clock.advance(Duration::seconds(1));
        } else {
            assert_eq!(j.state, JobState::Failed);
            assert_eq!(j.last_error.as_deref(), Some("SMTP down"));
        }
    }
    assert_eq!(delays, [10, 20, 25]);
    let msgs = f.keys.messages(&admin(), true, 10).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].job_id, Some(job));
    assert_eq!(msgs[0].key_id.map(|k| k.to_string()), Some(key));
    assert!(msgs[0].text.contains("SMTP down") && msgs[0].text.contains("4 attempt"));
}

#[tokio::test]
async fn a_permanent_failure_fails_at_once() {
    let f = fixture();
    let (_, job) = key_with(&f, Some("2026-08-31T10:00:05Z"), "p30d").await;
    f.clock.advance(Duration::seconds(5));
    assert_eq!(claim(&f).await, 1);
    let j = f
        .keys
        .finish_job(
            job,
            Outcome::Failed {
                error: "no such source".into(),
                permanent: true,
            },
        )
        .await
        .unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Failed, 1));
}

#[tokio::test]
async fn shortening_the_expiry_moves_the_notification_with_it() {
    let f = fixture();
    let (id, _) = key_with(&f, None, "p30d").await;
    let v = f
        .keys
        .notify(
            &admin(),
            &id,
            NotifyRequest {
                before: Some("p7d".into()),
                ..NotifyRequest::default()
            },
        )
        .await
        .unwrap();
    let job = v.alert_job.unwrap();
    assert_eq!(v.notify_at.as_deref(), Some("2026-09-23T10:00:00Z"));
    let v = f
        .keys
        .edit(
            &admin(),
            &id,
            EditKey {
                expires_in: Some("p10d".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        v.notify_at.as_deref(),
        Some("2026-09-03T10:00:00Z"),
        "7 days before"
    );
    assert_eq!(v.alert_job, Some(job), "the same job, rescheduled");
    let j = f.keys.job(&admin(), &job.to_string()).await.unwrap();
    assert_eq!(
        j.due_at,
        Utc.with_ymd_and_hms(2026, 9, 3, 10, 0, 0).unwrap()
    );
    // Closer than the lead time: the notification comes now.
    let v = f
        .keys
        .edit(
            &admin(),
            &id,
            EditKey {
                expires_in: Some("p2d".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v.notify_at.as_deref(), Some("2026-08-31T10:00:00Z"));
}

#[tokio::test]
async fn edit_while_running_makes_a_new_job_and_the_old_one_finishes() {
    let f = fixture();
    let (id, j1) = key_with(&f, Some("2026-08-31T10:00:10Z"), "p30d").await;
    f.clock.advance(Duration::seconds(10));
    assert_eq!(claim(&f).await, 1);
    let v = f
        .keys
        .notify(
            &admin(),
            &id,
            NotifyRequest {
                at: Some("2026-09-10T00:00:00Z".into()),
                ..NotifyRequest::default()
            },
        )
        .await
        .unwrap();
    let j2 = v.alert_job.unwrap();
    assert_ne!(j1, j2);
    // A failure of the superseded job is not retried.
    let old = f.keys.finish_job(j1, failed()).await.unwrap();
    assert_eq!(old.state, JobState::Canceled);
    assert!(old.last_error.unwrap().contains("no longer tracks"));
    let new = f.keys.job(&admin(), &j2.to_string()).await.unwrap();
    assert_eq!((new.state, new.attempts), (JobState::Scheduled, 0));
}

#[tokio::test]
async fn a_job_left_running_is_replaced_at_start_and_the_key_tracks_the_new_one() {
    let f = fixture();
    let (id, j1) = key_with(&f, Some("2026-08-31T10:00:10Z"), "p30d").await;
    f.clock.advance(Duration::seconds(30));
    assert_eq!(claim(&f).await, 1);
    // The daemon dies here; a new one opens the same database.
    let F {
        _dir,
        path,
        clock,
        keys,
    } = f;
    drop(keys);
    let keys = open(&path, clock.clone());
    assert_eq!(keys.recover_running_jobs().await.unwrap(), 1);
    let old = keys.job(&admin(), &j1.to_string()).await.unwrap();
    assert_eq!(old.state, JobState::Canceled);
    let j2 = old.replaced_by.unwrap();
    let new = keys.job(&admin(), &j2.to_string()).await.unwrap();
    assert_eq!(new.state, JobState::Scheduled);
    assert_eq!(new.origin, j1, "same Message-ID");
    assert_eq!(new.run_at, clock.now(), "due at once");
    assert_eq!(new.replaces, Some(j1));
    assert_eq!(keys.show(&admin(), &id).unwrap().alert_job, Some(j2));
    // And it is delivered.
    assert_eq!(keys.claim_due_jobs(clock.now(), 10).await.unwrap().len(), 1);
    let done = keys.finish_job(j2, Outcome::Delivered).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(keys.recover_running_jobs().await.unwrap(), 0);
}

#[tokio::test]
async fn the_due_index_holds_only_scheduled_jobs() {
    let f = fixture();
    let (_, a) = key_with(&f, Some("2026-08-31T10:00:10Z"), "p30d").await;
    let (_, b) = key_with(&f, Some("2026-08-31T10:00:20Z"), "p30d").await;
    let store = f.keys.store().clone();
    assert_eq!(store.job_counts().unwrap(), (2, 0));
    assert_eq!(
        store.next_due().unwrap(),
        Some(Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 10).unwrap())
    );
    f.clock.advance(Duration::seconds(15));
    let claimed = f.keys.claim_due_jobs(f.clock.now(), 10).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [a]);
    assert_eq!(store.job_counts().unwrap(), (1, 1));
    f.keys.finish_job(a, Outcome::Delivered).await.unwrap();
    assert_eq!(store.job_counts().unwrap(), (1, 0));
    f.keys
        .cancel_or_delete_job(&admin(), &b.to_string(), false)
        .await
        .unwrap();
    assert_eq!(store.job_counts().unwrap(), (0, 0));
    assert_eq!(store.next_due().unwrap(), None);
}
