//! Notification rules and job outcomes with an injected clock: no sleeping, no SMTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, TimeZone, Utc};
use uuid::Uuid;

use super::Outcome;
use crate::clock::Clock;
use crate::keys::{CreateKey, EditKey, NotifyRequest};
use crate::model::JobState;
use crate::store::Storage;
use crate::test_support::{admin, fixture_with_alerts, Fixture};

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

/// Jobs Scheduled and Running.
fn due_and_running(store: &dyn Storage) -> (u64, u64) {
    let counts = store.job_state_counts();
    (
        counts[JobState::Scheduled.index()].1,
        counts[JobState::Running.index()].1,
    )
}

fn fixture() -> Fixture {
    fixture_with_alerts(CONFIG)
}

async fn key_with(f: &Fixture, notify_at: Option<&str>, expires_in: &str) -> (String, Uuid) {
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
async fn claim(f: &Fixture) -> usize {
    f.alerts.claim_due(f.clock.now(), 10).await.unwrap().len()
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
        .alerts
        .claim_due(f.clock.now(), 10)
        .await
        .unwrap()
        .is_empty());
    f.clock.advance(Duration::hours(1));
    let mut delays = Vec::new();
    for attempt in 1..=4u32 {
        let claimed = f.alerts.claim_due(f.clock.now(), 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
        assert_eq!(claimed[0].state, JobState::Running);
        assert_eq!(claimed[0].attempts, attempt);
        let j = f.alerts.finish_job(job, failed()).await.unwrap();
        if attempt < 4 {
            assert_eq!(j.state, JobState::Scheduled);
            let delay = j.run_at - f.clock.now();
            delays.push(delay.num_seconds());
            // Not due a second early.
            f.clock.advance(delay - Duration::seconds(1));
            assert!(f
                .alerts
                .claim_due(f.clock.now(), 10)
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
    let msgs = f.alerts.messages(&admin(), true, 10).await.unwrap();
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
        .alerts
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
    let j = f.alerts.job(&admin(), &job.to_string()).await.unwrap();
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
    let old = f.alerts.finish_job(j1, failed()).await.unwrap();
    assert_eq!(old.state, JobState::Canceled);
    assert!(old.last_error.unwrap().contains("no longer tracks"));
    let new = f.alerts.job(&admin(), &j2.to_string()).await.unwrap();
    assert_eq!((new.state, new.attempts), (JobState::Scheduled, 0));
}

#[tokio::test]
async fn a_job_left_running_is_replaced_at_start_and_the_key_tracks_the_new_one() {
    let f = fixture();
    let (id, j1) = key_with(&f, Some("2026-08-31T10:00:10Z"), "p30d").await;
    f.clock.advance(Duration::seconds(30));
    assert_eq!(claim(&f).await, 1);
    // The daemon dies here; a new one opens the same database.
    let (keys, alerts) = f.restart(CONFIG);
    let clock = f.clock.clone();
    assert_eq!(alerts.recover_running_jobs().await.unwrap(), 1);
    let old = alerts.job(&admin(), &j1.to_string()).await.unwrap();
    assert_eq!(old.state, JobState::Canceled);
    let j2 = old.replaced_by.unwrap();
    let new = alerts.job(&admin(), &j2.to_string()).await.unwrap();
    assert_eq!(new.state, JobState::Scheduled);
    assert_eq!(new.origin, j1, "same Message-ID");
    assert_eq!(new.run_at, clock.now(), "due at once");
    assert_eq!(new.replaces, Some(j1));
    assert_eq!(keys.show(&admin(), &id).await.unwrap().alert_job, Some(j2));
    // And it is delivered.
    assert_eq!(alerts.claim_due(clock.now(), 10).await.unwrap().len(), 1);
    let done = alerts.finish_job(j2, Outcome::Delivered).await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(alerts.recover_running_jobs().await.unwrap(), 0);
}

#[tokio::test]
async fn the_due_index_holds_only_scheduled_jobs() {
    let f = fixture();
    let (_, a) = key_with(&f, Some("2026-08-31T10:00:10Z"), "p30d").await;
    let (_, b) = key_with(&f, Some("2026-08-31T10:00:20Z"), "p30d").await;
    let store = f.store.clone();
    assert_eq!(due_and_running(&*store), (2, 0));
    assert_eq!(
        store.next_due().unwrap(),
        Some(Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 10).unwrap())
    );
    f.clock.advance(Duration::seconds(15));
    let claimed = f.alerts.claim_due(f.clock.now(), 10).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [a]);
    assert_eq!(due_and_running(&*store), (1, 1));
    f.alerts.finish_job(a, Outcome::Delivered).await.unwrap();
    assert_eq!(due_and_running(&*store), (1, 0));
    f.alerts
        .cancel_or_delete_job(&admin(), &b.to_string(), false)
        .await
        .unwrap();
    assert_eq!(due_and_running(&*store), (0, 0));
    assert_eq!(store.next_due().unwrap(), None);
}
