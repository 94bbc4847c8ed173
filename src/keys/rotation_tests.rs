//! Rotation that waits for the new secret's first use, with the injected clock:
//! pending → first use → overlap → old refused; never used → max grace → old
//! refused; racing first uses; a rotation while one is pending; disable and
//! remove while pending; an expiry before the max grace; a restart while pending.
//! (The warning's delivery is in `alerts/rotation_tests.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use super::tests::is_invalid;
use super::*;
use crate::model::*;
use crate::store::JobFilter;
use crate::test_support::*;

/// The test configuration with the operator messages as the default alert source.
fn config() -> String {
    CONFIG.replace(
        "[ApiKey]\n",
        "[ApiKey]\nDefaultAlertSource = \"operator\"\n",
    )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap()
}

/// A key of alice's: (id, secret).
async fn key(keys: &Keys, extra: CreateKey) -> (String, String) {
    let issued = keys
        .create(
            &admin(),
            CreateKey {
                user: Some("alice".into()),
                name: format!("k{}", Uuid::now_v7()),
                no_notification: true,
                ..extra
            },
        )
        .await
        .unwrap();
    (issued.view.id.to_string(), issued.key.expose().to_owned())
}

fn code(keys: &Keys, secret: &str) -> Code {
    keys.verify(secret, None, None).code
}

fn jobs(store: &dyn crate::store::Storage, id: &str) -> Vec<AlertJob> {
    let filter = JobFilter {
        key: Some(Uuid::parse_str(id).unwrap()),
        state: None,
        owner: None,
        before: None,
        limit: 100,
    };
    let mut jobs = store.jobs(&filter).unwrap().items;
    jobs.sort_by_key(|j| j.created_at);
    jobs
}

async fn rotation(keys: &Keys, id: &str) -> RotationView {
    keys.show(&admin(), id).await.unwrap().rotation.unwrap()
}

async fn switches(keys: &Keys, id: &str) -> Vec<AuditEntry> {
    audit(keys, &admin(), Some(id), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "rotate-switch")
        .collect()
}

#[tokio::test]
async fn the_old_secret_works_until_the_new_ones_first_use_and_the_overlap() {
    let f = fixture_with_alerts(&config());
    let (id, old) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let new = new.key.expose().to_owned();
    let r = rotation(&f.keys, &id).await;
    assert_eq!(r.state, "pending");
    // The default max grace: a week.
    assert_eq!(
        r.summary,
        "pending: waiting for the new secret's first use; old secret valid until 2026-09-07T10:00:00Z (max grace)"
    );
    let warning = r.warning_job.unwrap();

    f.clock.advance(Duration::hours(2));
    assert_eq!(code(&f.keys, &old), Code::Valid, "the old secret waits");
    assert_eq!(
        f.keys.switch_first_uses().await.unwrap(),
        0,
        "not a use of the new one"
    );
    assert_eq!(code(&f.keys, &new), Code::Valid);
    // Verification only queued it: the record changes in the background.
    assert_eq!(rotation(&f.keys, &id).await.state, "pending");
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 1);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);

    let r = rotation(&f.keys, &id).await;
    assert_eq!(r.state, "switched");
    assert_eq!(
        r.summary,
        "switched at 2026-08-31T12:00:00Z; old secret valid until 2026-08-31T12:05:00Z"
    );
    assert_eq!(r.warning_job, None);
    let entries = switches(&f.keys, &id).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].detail,
        "rotation switched: new secret first used at 2026-08-31T12:00:00Z; old secret retired at 2026-08-31T12:05:00Z"
    );
    assert_eq!(entries[0].actor, "apikeyd");
    // The warning is not wanted any more.
    let job = f.store.job(warning).unwrap().unwrap();
    assert_eq!(job.state, JobState::Canceled);
    assert_eq!(job.last_error.as_deref(), Some("the new secret was used"));

    f.clock.advance(Duration::minutes(4));
    assert_eq!(code(&f.keys, &old), Code::Valid, "in the overlap");
    f.clock.advance(Duration::minutes(1));
    assert_eq!(code(&f.keys, &old), Code::NotFound, "the overlap is over");
    assert_eq!(code(&f.keys, &new), Code::Valid);
    assert_eq!(
        rotation(&f.keys, &id).await.summary,
        "switched at 2026-08-31T12:00:00Z; old secret retired at 2026-08-31T12:05:00Z"
    );
    // Later uses of the new secret change nothing.
    assert_eq!(code(&f.keys, &new), Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);
}

#[tokio::test]
async fn a_new_secret_never_used_leaves_the_old_one_until_the_max_grace() {
    let f = fixture_with_alerts(&config());
    let (id, old) = key(&f.keys, CreateKey::default()).await;
    let new = f
        .keys
        .rotate_until_used(&alice(), &id, Some("p4d"))
        .await
        .unwrap();
    // One warning, a day before the max grace ends, through the default source.
    let all = jobs(&*f.store, &id);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].kind, JobKind::RotationWarning);
    assert_eq!(all[0].source, "operator");
    assert_eq!(all[0].due_at, t0() + Duration::days(3));
    assert_eq!(new.view.rotation.unwrap().warning_job, Some(all[0].id));

    f.clock.advance(Duration::days(4) - Duration::seconds(1));
    assert_eq!(code(&f.keys, &old), Code::Valid);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(code(&f.keys, &old), Code::NotFound, "the max grace is over");
    let r = rotation(&f.keys, &id).await;
    assert_eq!(r.state, "lapsed");
    assert_eq!(
        r.summary,
        "lapsed: the new secret was never used; old secret retired at 2026-09-04T10:00:00Z (max grace)"
    );
    // A late first use records the switch; the old secret stays retired.
    assert_eq!(code(&f.keys, new.key.expose()), Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 1);
    assert_eq!(code(&f.keys, &old), Code::NotFound);
    assert_eq!(
        switches(&f.keys, &id).await[0].detail,
        "rotation switched: new secret first used at 2026-09-04T10:00:00Z; old secret retired at 2026-09-04T10:00:00Z"
    );
}

#[tokio::test]
async fn first_uses_racing_commit_the_switch_once() {
    let f = fixture_with_alerts(&config());
    let (id, _) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let new = new.key.expose().to_owned();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(code(&f.keys, &new), Code::Valid);
                }
            });
        }
    });
    // A change published meanwhile gives the key a new entry, whose first use
    // is claimed again: the switch still commits once.
    f.keys
        .edit(
            &alice(),
            &id,
            EditKey {
                description: Some("moved".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(code(&f.keys, &new), Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 1);
    assert_eq!(switches(&f.keys, &id).await.len(), 1);
    assert_eq!(rotation(&f.keys, &id).await.state, "switched");
}

#[tokio::test]
async fn a_rotation_while_one_is_pending_replaces_it_and_keeps_the_secret_in_use() {
    let f = fixture_with_alerts(&config());
    let (id, first) = key(&f.keys, CreateKey::default()).await;
    let second = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let job1 = second.view.rotation.as_ref().unwrap().warning_job.unwrap();
    let second = second.key.expose().to_owned();
    f.clock.advance(Duration::hours(1));
    let third = f
        .keys
        .rotate_until_used(&alice(), &id, Some("p2d"))
        .await
        .unwrap();
    let job2 = third.view.rotation.as_ref().unwrap().warning_job.unwrap();
    let third = third.key.expose().to_owned();
    // The client still uses the first secret: it stays the old one, and the
    // second, never used, is gone (rotating again must not cut the client off).
    assert_eq!(code(&f.keys, &second), Code::NotFound);
    assert_eq!(code(&f.keys, &first), Code::Valid);
    let old_job = f.store.job(job1).unwrap().unwrap();
    assert_eq!(old_job.state, JobState::Canceled);
    assert_eq!(
        old_job.last_error.as_deref(),
        Some("the key was rotated again")
    );
    assert_eq!(
        f.store.job(job2).unwrap().unwrap().state,
        JobState::Scheduled
    );
    let r = rotation(&f.keys, &id).await;
    assert_eq!(r.state, "pending");
    assert_eq!(r.started_at, "2026-08-31T11:00:00Z");
    assert_eq!(r.max_grace_until, "2026-09-02T11:00:00Z");
    // Using the previous secret is no first use of the new one.
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);
    assert_eq!(code(&f.keys, &third), Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 1);

    // A rotation of another kind ends the one waiting, and its warning.
    let fourth = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let job3 = fourth.view.rotation.as_ref().unwrap().warning_job.unwrap();
    let plain = f.keys.rotate(&alice(), &id, Some("pt1h")).await.unwrap();
    assert_eq!(plain.view.rotation, None);
    assert_eq!(
        f.store.job(job3).unwrap().unwrap().state,
        JobState::Canceled
    );
    // The third secret, the one in use, works for the plain rotation's grace; the
    // fourth was never used and is gone.
    assert_eq!(code(&f.keys, &third), Code::Valid, "its grace");
    assert_eq!(code(&f.keys, fourth.key.expose()), Code::NotFound);
    assert_eq!(code(&f.keys, plain.key.expose()), Code::Valid);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);
}

#[tokio::test]
async fn disable_and_remove_while_pending() {
    let f = fixture_with_alerts(&config());
    let (id, old) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let job = new.view.rotation.as_ref().unwrap().warning_job.unwrap();
    let new = new.key.expose().to_owned();

    // Disabled, neither secret works, and a refused use is no first use.
    f.keys.set_enabled(&alice(), &id, false).await.unwrap();
    assert_eq!(code(&f.keys, &old), Code::Disabled);
    assert_eq!(code(&f.keys, &new), Code::Disabled);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);
    assert_eq!(rotation(&f.keys, &id).await.state, "pending");
    assert_eq!(
        f.store.job(job).unwrap().unwrap().state,
        JobState::Scheduled
    );
    // Enabled again, the rotation goes on waiting.
    f.keys.set_enabled(&alice(), &id, true).await.unwrap();
    assert_eq!(code(&f.keys, &old), Code::Valid);

    // Removed: both secrets stop, the rotation and its warning end.
    f.keys.remove(&alice(), &id).await.unwrap();
    assert_eq!(code(&f.keys, &old), Code::NotFound);
    assert_eq!(code(&f.keys, &new), Code::NotFound);
    assert_eq!(f.keys.switch_first_uses().await.unwrap(), 0);
    assert_eq!(f.keys.show(&admin(), &id).await.unwrap().rotation, None);
    let job = f.store.job(job).unwrap().unwrap();
    assert_eq!(job.state, JobState::Canceled);
    assert_eq!(job.last_error.as_deref(), Some("the key was removed"));
}

#[tokio::test]
async fn an_expiry_before_the_max_grace_ends_the_old_secret_with_the_key() {
    let f = fixture_with_alerts(&config());
    let (id, old) = key(
        &f.keys,
        CreateKey {
            expires_in: Some("p2d".into()),
            ..CreateKey::default()
        },
    )
    .await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let r = new.view.rotation.unwrap();
    let expiry = t0() + Duration::days(2);
    assert_eq!(r.max_grace_until, rfc3339(expiry));
    assert_eq!(r.old_secret_until, Some(rfc3339(expiry)));
    // The warning keeps its lead: a quarter of the two days.
    let warning = f.store.job(r.warning_job.unwrap()).unwrap().unwrap();
    assert_eq!(warning.due_at, expiry - Duration::hours(12));
    f.clock.advance(Duration::days(2));
    assert_eq!(code(&f.keys, &old), Code::NotFound);
    assert_eq!(code(&f.keys, new.key.expose()), Code::Expired);
}

#[tokio::test]
async fn the_max_grace_is_checked_against_the_policy() {
    let f = fixture_with_alerts(&config());
    let (id, _) = key(&f.keys, CreateKey::default()).await;
    let e = f
        .keys
        .rotate_until_used(&alice(), &id, Some("p1y"))
        .await
        .unwrap_err();
    assert!(is_invalid(&e, "max_grace"), "{e}");
    assert!(e.to_string().contains("MaxExpirationPeriod (p6m)"), "{e}");
    let e = f
        .keys
        .rotate_until_used(&alice(), &id, Some("pt30s"))
        .await
        .unwrap_err();
    assert!(is_invalid(&e, "max_grace"), "{e}");
    let both = RotateKey {
        grace: Some("pt1h".into()),
        until_used: true,
        max_grace: None,
    };
    let e = f.keys.rotate_as(&alice(), &id, &both).await.unwrap_err();
    assert!(is_invalid(&e, "grace"), "{e}");
    let alone = RotateKey {
        max_grace: Some("p1d".into()),
        ..RotateKey::default()
    };
    let e = f.keys.rotate_as(&alice(), &id, &alone).await.unwrap_err();
    assert!(is_invalid(&e, "max_grace"), "{e}");
    // Nothing changed.
    assert_eq!(f.keys.show(&admin(), &id).await.unwrap().rotation, None);
    // A policy shorter than the default max grace shortens it.
    let short = config().replace(
        "MaxExpirationPeriod = \"p6m\"",
        "MaxExpirationPeriod = \"p3d\"",
    );
    let f = fixture_with_alerts(&short);
    let (id, _) = key(&f.keys, CreateKey::default()).await;
    let r = f
        .keys
        .rotate_until_used(&alice(), &id, None)
        .await
        .unwrap()
        .view
        .rotation
        .unwrap();
    assert_eq!(r.max_grace_until, rfc3339(t0() + Duration::days(3)));
}

#[tokio::test]
async fn without_an_alert_source_the_rotation_waits_unwarned() {
    let f =
        fixture_with_alerts(&CONFIG.replace("[ApiKey]\n", "[ApiKey]\nDefaultAlertSource = \"\"\n"));
    let (id, _) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    assert_eq!(new.view.rotation.unwrap().warning_job, None);
    assert!(jobs(&*f.store, &id).is_empty());
    let entry = audit(&f.keys, &admin(), Some(&id), 1).await.unwrap();
    assert!(
        entry[0]
            .detail
            .contains("no warning: the key has no alert source"),
        "{}",
        entry[0].detail
    );
}

#[tokio::test]
async fn a_restart_while_pending_keeps_waiting_for_the_first_use() {
    let f = fixture_on_redb(&config());
    let (id, old) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    let new = new.key.expose().to_owned();
    // Read back through the decoder a start uses.
    let keys = f.reopen(settings(&config()));
    assert_eq!(code(&keys, &old), Code::Valid);
    assert_eq!(code(&keys, &new), Code::Valid);
    assert_eq!(keys.switch_first_uses().await.unwrap(), 1);
    assert_eq!(rotation(&keys, &id).await.state, "switched");
    let keys = f.reopen(settings(&config()));
    assert_eq!(code(&keys, &new), Code::Valid);
    assert_eq!(
        keys.switch_first_uses().await.unwrap(),
        0,
        "switched for good"
    );
    f.clock.advance(Duration::minutes(5));
    assert_eq!(code(&keys, &old), Code::NotFound);
}

#[tokio::test]
async fn the_overlap_follows_the_configuration() {
    let text = config().replace(
        "[ApiKey]\n",
        "[ApiKey]\nRotationOverlapPeriod = \"pt30s\"\n",
    );
    let f = fixture_with_alerts(&text);
    let (id, old) = key(&f.keys, CreateKey::default()).await;
    let new = f.keys.rotate_until_used(&alice(), &id, None).await.unwrap();
    assert_eq!(code(&f.keys, new.key.expose()), Code::Valid);
    f.keys.switch_first_uses().await.unwrap();
    f.clock.advance(Duration::seconds(30));
    assert_eq!(code(&f.keys, &old), Code::NotFound);
    for bad in ["p1m", "p2d", "nope"] {
        let text = config().replace(
            "[ApiKey]\n",
            &format!("[ApiKey]\nRotationOverlapPeriod = \"{bad}\"\n"),
        );
        let e = crate::config::from_text(&text).unwrap_err();
        assert!(
            e.to_string().contains("ApiKey.RotationOverlapPeriod"),
            "{e}"
        );
    }
}
