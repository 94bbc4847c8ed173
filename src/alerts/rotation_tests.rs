//! The warning of a rotation waiting for its new secret's first use (`key rotate
//! --until-used`), with the injected clock: delivered once, before the max grace
//! ends, when the new secret is never used; dropped when the switch came first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, TimeZone, Utc};

use super::alert::{Alert, Deliver, DeliveryError};
use super::dispatch::deliver;
use crate::clock::Clock;
use crate::config::alerts::AlertSource;
use crate::keys::CreateKey;
use crate::model::{Code, JobKind, JobState};
use crate::test_support::{admin, fixture_with_alerts, Fixture, CONFIG};

/// Remembers what it was given to deliver.
#[derive(Default)]
struct Recorder(parking_lot::Mutex<Vec<Alert>>);

impl Deliver for Recorder {
    async fn deliver(&self, _source: &AlertSource, alert: &Alert) -> Result<(), DeliveryError> {
        self.0.lock().push(alert.clone());
        Ok(())
    }
}

fn fixture() -> Fixture {
    fixture_with_alerts(&CONFIG.replace(
        "[ApiKey]\n",
        "[ApiKey]\nDefaultAlertSource = \"operator\"\n",
    ))
}

/// Deliver what is due now through `to`; how many jobs were due.
async fn run_due(f: &Fixture, to: &Recorder) -> usize {
    let due = f.alerts.claim_due(f.clock.now(), 10).await.unwrap();
    let n = due.len();
    for job in due {
        deliver(&f.alerts, to, job).await;
    }
    n
}

/// A key of alice's rotated with `--until-used --max-grace p4d`: (id, old
/// secret, new secret, warning job).
async fn rotated(f: &Fixture) -> (String, String, String, uuid::Uuid) {
    let issued = f
        .keys
        .create(
            &admin(),
            CreateKey {
                user: Some("alice".into()),
                name: "ci".into(),
                no_notification: true,
                ..CreateKey::default()
            },
        )
        .await
        .unwrap();
    let id = issued.view.id.to_string();
    let new = f
        .keys
        .rotate_until_used(&admin(), &id, Some("p4d"))
        .await
        .unwrap();
    let job = new.view.rotation.as_ref().unwrap().warning_job.unwrap();
    (
        id,
        issued.key.expose().to_owned(),
        new.key.expose().to_owned(),
        job,
    )
}

#[tokio::test]
async fn a_new_secret_never_used_is_warned_about_once_before_the_old_one_stops() {
    let f = fixture();
    let to = Recorder::default();
    let (_, old, _, job) = rotated(&f).await;
    f.clock.advance(Duration::days(3) - Duration::seconds(1));
    assert_eq!(run_due(&f, &to).await, 0, "not yet");
    f.clock.advance(Duration::seconds(1));
    assert_eq!(run_due(&f, &to).await, 1);
    let sent = to.0.lock().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, JobKind::RotationWarning);
    assert_eq!(sent[0].job_id, job);
    assert_eq!(
        sent[0].reason,
        "has a new secret the client never picked up; the old one stops at 2026-09-04T10:00:00Z"
    );
    // The default wording asks for the new secret to be put in place, not for
    // another rotation (which would issue yet another secret).
    let text = sent[0].render(crate::config::alerts::DEFAULT_TEXT);
    assert!(
        text.contains("put the new secret it was given on 2026-08-31T10:00:00Z"),
        "{text}"
    );
    assert!(!text.contains("key rotate"), "{text}");
    assert_eq!(
        f.store.job(job).unwrap().unwrap().state,
        JobState::Completed
    );
    // The old secret still works until the max grace ends, then stops; no
    // second warning on the way.
    assert_eq!(f.keys.verify(&old, None, None).code, Code::Valid);
    f.clock.advance(Duration::days(1));
    assert_eq!(run_due(&f, &to).await, 0);
    assert_eq!(f.keys.verify(&old, None, None).code, Code::NotFound);
    f.clock.advance(Duration::days(30));
    assert_eq!(run_due(&f, &to).await, 0);
    assert_eq!(to.0.lock().len(), 1);
    assert_eq!(
        f.clock.now(),
        Utc.with_ymd_and_hms(2026, 10, 4, 10, 0, 0).unwrap()
    );
}

#[tokio::test]
async fn a_warning_claimed_as_the_new_secret_is_first_used_is_dropped() {
    let f = fixture();
    let to = Recorder::default();
    let (_, _, new, job) = rotated(&f).await;
    f.clock.advance(Duration::days(3));
    // Claimed (Running) before the switch commits: the switch cannot cancel it.
    let due = f.alerts.claim_due(f.clock.now(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(f.keys.verify(&new, None, None).code, Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 1);
    for j in due {
        deliver(&f.alerts, &to, j).await;
    }
    assert!(to.0.lock().is_empty(), "nothing to warn about any more");
    let job = f.store.job(job).unwrap().unwrap();
    assert_eq!(job.state, JobState::Canceled);
}
