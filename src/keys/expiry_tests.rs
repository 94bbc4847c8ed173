//! Expiry and inactivity with an injected clock: the limits on expiry dates, hard
//! expiry, inactivity, the one-minute last-used rule and the expiry sweep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, TimeZone, Utc};

use super::tests::is_invalid;
use super::*;
use crate::clock::Clock;
use crate::model::*;
use crate::test_support::*;

#[tokio::test]
async fn default_expiry_is_clamped_to_the_maximum_calendar_correctly() {
    let f = fixture();
    let issued = f.keys.create(&admin(), req("alice", "sync")).await.unwrap();
    // 2026-08-31 + p6m = 2027-02-28 (p1y default clamped to p6m max).
    assert_eq!(
        issued.view.expires_at.as_deref(),
        Some("2027-02-28T10:00:00Z")
    );
    assert_eq!(issued.view.scopes, ["catalog:read", "catalog:sync"]);
    assert_eq!(
        secret::shape(issued.key.expose(), 32),
        secret::Shape::Generated
    );
    assert!(
        !format!("{issued:?}").contains(issued.key.expose()),
        "Debug must redact the secret"
    );
}

#[tokio::test]
async fn expiry_must_lie_between_one_minute_and_the_maximum() {
    let f = fixture();
    let mut r = req("alice", "a");
    r.expires_in = Some("pt30s".into());
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "expires_at"
    ));
    let mut r = req("alice", "a");
    r.expires_at = Some("2027-03-01T10:00:00Z".into());
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "expires_at"
    ));
    let mut r = req("alice", "a");
    r.expires_at = Some("2027-02-28T10:00:00Z".into());
    f.keys.create(&admin(), r).await.unwrap();
    let mut r = req("alice", "b");
    r.expires_in = Some("pt1m".into());
    f.keys.create(&admin(), r).await.unwrap();
    let mut r = req("alice", "c");
    r.never_expires = true;
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "expires_at"
    ));
}

#[tokio::test]
async fn never_expires_only_when_max_is_empty() {
    let f = fixture_with(&CONFIG.replace(
        "MaxExpirationPeriod = \"p6m\"",
        "MaxExpirationPeriod = \"\"",
    ));
    let mut r = req("alice", "forever");
    r.never_expires = true;
    let issued = f.keys.create(&admin(), r).await.unwrap();
    assert_eq!(issued.view.expires_at, None);
}

#[tokio::test]
async fn hard_expiry_with_injected_clock() {
    let f = fixture();
    let mut r = req("alice", "short");
    r.expires_in = Some("p10d".into());
    let k = f
        .keys
        .create(&admin(), r)
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);
    f.clock.advance(Duration::days(10) - Duration::seconds(1));
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Expired);
}

#[tokio::test]
async fn inactivity_expires_unused_keys_and_use_extends() {
    let f = fixture();
    let a = f
        .keys
        .create(&admin(), req("alice", "used"))
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    let b = f
        .keys
        .create(&admin(), req("alice", "idle"))
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    // Use `a` after two months; leave `b` alone.
    f.clock.advance(Duration::days(60));
    assert_eq!(f.keys.verify(&a, None, None).code, Code::Valid);
    // 2026-08-31 + p3m = 2026-11-30: `b` is inactive from then on.
    f.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 30, 9, 59, 59).unwrap());
    assert_eq!(f.keys.verify(&b, None, None).code, Code::Valid);
    f.clock
        .set(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(
        f.keys.verify(&a, None, None).code,
        Code::Valid,
        "used on 2026-11-30 (and before)"
    );
    // `b` was used at 2026-11-30 09:59:59 above, so its deadline moved to 2027-02-28.
    f.clock
        .set(Utc.with_ymd_and_hms(2027, 2, 28, 10, 0, 0).unwrap());
    assert_eq!(
        f.keys.verify(&b, None, None).code,
        Code::Expired,
        "hard limit 2027-02-28 10:00"
    );
    let c = f
        .keys
        .create(&admin(), req("bob", "never-used"))
        .await
        .unwrap();
    f.clock.advance(Duration::days(95));
    assert_eq!(
        f.keys.verify(c.key.expose(), None, None).code,
        Code::Inactive
    );
    let view = f.keys.show(&admin(), &c.view.id.to_string()).await.unwrap();
    assert_eq!(view.status, "inactive");
    assert!(
        view.details.contains("through inactivity"),
        "{}",
        view.details
    );
}

#[tokio::test]
async fn last_used_is_persisted_at_most_once_a_minute_per_key() {
    let f = fixture();
    let k = f
        .keys
        .create(&admin(), req("alice", "k"))
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    assert_eq!(
        f.keys.flush_last_used(false).await.unwrap(),
        0,
        "never used: nothing to write"
    );
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);
    assert_eq!(f.keys.flush_last_used(false).await.unwrap(), 1);
    f.clock.advance(Duration::seconds(20));
    f.keys.verify(&k, None, None);
    assert_eq!(
        f.keys.flush_last_used(false).await.unwrap(),
        0,
        "20 s after the last write"
    );
    f.clock.advance(Duration::seconds(39));
    assert_eq!(
        f.keys.flush_last_used(false).await.unwrap(),
        0,
        "59 s after the last write"
    );
    f.clock.advance(Duration::seconds(1));
    assert_eq!(
        f.keys.flush_last_used(false).await.unwrap(),
        1,
        "60 s after the last write"
    );
    assert_eq!(
        f.keys.flush_last_used(false).await.unwrap(),
        0,
        "nothing new"
    );
    f.clock.advance(Duration::seconds(5));
    f.keys.verify(&k, None, None);
    assert_eq!(
        f.keys.flush_last_used(true).await.unwrap(),
        1,
        "shutdown writes everything"
    );
    // What was written is what a reopened store sees.
    let expected = f.clock.now();
    let reopened = f.reopen(settings(CONFIG));
    let list = list(&reopened, &admin(), None, false).await.unwrap();
    assert_eq!(
        list[0].last_used_at.as_deref(),
        Some(rfc3339(expected).as_str())
    );
}

#[tokio::test]
async fn expiry_sweep_records_expired_and_inactive_keys_once() {
    let f = fixture();
    let create = |name: &'static str, expires: Option<&'static str>| {
        let keys = &f.keys;
        async move {
            let mut r = req("alice", name);
            r.expires_in = expires.map(Into::into);
            let issued = keys.create(&admin(), r).await.unwrap();
            (issued.view.id.to_string(), issued.key.expose().to_owned())
        }
    };
    let (short, _) = create("short", Some("p10d")).await;
    let (idle, _) = create("idle", None).await;
    let (used, used_key) = create("used", None).await;
    let (off, _) = create("off", Some("p10d")).await;
    let (gone, _) = create("gone", Some("p10d")).await;
    f.keys.set_enabled(&alice(), &off, false).await.unwrap();
    f.keys.remove(&admin(), &gone).await.unwrap();
    assert_eq!(
        maintenance::sweep_expired(&f.keys).await.unwrap(),
        0,
        "nothing lapsed yet"
    );
    f.clock.advance(Duration::days(60));
    assert_eq!(f.keys.verify(&used_key, None, None).code, Code::Valid);
    f.clock.advance(Duration::days(31)); // p3m of inactivity have passed for "idle"
    assert_eq!(maintenance::sweep_expired(&f.keys).await.unwrap(), 2);
    let action_of = |id: String| {
        let keys = &f.keys;
        async move {
            let entries = audit(keys, &admin(), Some(&id), 10).await.unwrap();
            entries.first().map(|e| e.action.clone()).unwrap()
        }
    };
    assert_eq!(action_of(short).await, "expired");
    assert_eq!(action_of(idle).await, "inactive");
    assert_eq!(action_of(used).await, "create", "used 31 days ago: active");
    assert_eq!(
        action_of(off).await,
        "disable",
        "disabled comes before expired"
    );
    assert_eq!(action_of(gone).await, "remove");
    assert_eq!(
        maintenance::sweep_expired(&f.keys).await.unwrap(),
        0,
        "recorded once"
    );
}
