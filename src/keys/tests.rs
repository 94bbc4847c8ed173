//! Key rules with an injected clock: expiry, inactivity, the one-minute last-used
//! rule, rotation grace, permissions, and "bad input changes nothing".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, TimeZone, Utc};

use super::secret::Secret;
use super::status::{counted_as, Lapse, StatusCounts};
use super::*;
use crate::clock::Clock;
use crate::model::*;
use crate::test_support::*;
use std::collections::BTreeMap;

fn is_invalid(e: &KeyError, field: &str) -> bool {
    matches!(e, KeyError::Invalid { field: f, .. } if *f == field)
}

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
    let view = f.keys.show(&admin(), &c.view.id.to_string()).unwrap();
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
async fn disable_remove_and_rotate_take_effect_on_the_next_verification() {
    let f = fixture();
    let issued = f.keys.create(&admin(), req("alice", "k")).await.unwrap();
    let id = issued.view.id.to_string();
    let k = issued.key.expose().to_owned();
    f.keys.set_enabled(&alice(), &id, false).await.unwrap();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Disabled);
    f.keys.set_enabled(&alice(), &id, true).await.unwrap();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);

    let rotated = f.keys.rotate(&alice(), &id, None).await.unwrap();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::NotFound);
    assert_eq!(
        f.keys.verify(rotated.key.expose(), None, None).code,
        Code::Valid
    );

    let graced = f.keys.rotate(&alice(), &id, Some("pt1h")).await.unwrap();
    assert_eq!(
        f.keys.verify(rotated.key.expose(), None, None).code,
        Code::Valid,
        "old key in grace"
    );
    assert_eq!(
        f.keys.verify(graced.key.expose(), None, None).code,
        Code::Valid
    );
    f.clock.advance(Duration::hours(1));
    assert_eq!(
        f.keys.verify(rotated.key.expose(), None, None).code,
        Code::NotFound,
        "grace over"
    );
    assert_eq!(
        f.keys.verify(graced.key.expose(), None, None).code,
        Code::Valid
    );

    f.keys.remove(&alice(), &id).await.unwrap();
    assert_eq!(
        f.keys.verify(graced.key.expose(), None, None).code,
        Code::NotFound
    );
    assert!(matches!(
        f.keys.rotate(&alice(), &id, None).await,
        Err(KeyError::Conflict(_))
    ));
}

#[tokio::test]
async fn ip_filters_and_scopes() {
    let f = fixture();
    let mut r = req("alice", "k");
    r.ip = vec!["10.0.0.0/255.0.0.0".into(), "2001:db8::/32".into()];
    r.scopes = Some(vec!["catalog:read".into()]);
    let k = f
        .keys
        .create(&admin(), r)
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    let ip = |s: &str| Some(s.parse().unwrap());
    assert_eq!(f.keys.verify(&k, None, None).code, Code::IpNotAllowed);
    assert_eq!(
        f.keys.verify(&k, None, ip("11.0.0.1")).code,
        Code::IpNotAllowed
    );
    assert_eq!(f.keys.verify(&k, None, ip("10.9.9.9")).code, Code::Valid);
    assert_eq!(f.keys.verify(&k, None, ip("2001:db8::1")).code, Code::Valid);
    assert_eq!(
        f.keys.verify(&k, Some("catalog:sync"), ip("10.9.9.9")).code,
        Code::InsufficientScope
    );
    assert_eq!(
        f.keys.verify(&k, Some("catalog:read"), ip("10.9.9.9")).code,
        Code::Valid
    );
    assert_eq!(f.keys.verify("akd_nope", None, None).code, Code::Malformed);
    assert_eq!(
        f.keys.verify(secret::generate().expose(), None, None).code,
        Code::NotFound
    );
}

#[tokio::test]
async fn permissions_follow_groups() {
    let f = fixture();
    // alice may create for herself, not for bob.
    f.keys
        .create(
            &alice(),
            CreateKey {
                name: "mine".into(),
                ..CreateKey::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        f.keys.create(&alice(), req("bob", "x")).await,
        Err(KeyError::Forbidden(_))
    ));
    // carol's group (User) may not create keys, even through an admin.
    assert!(matches!(
        f.keys.create(&admin(), req("carol", "x")).await,
        Err(KeyError::Forbidden(_))
    ));
    // Scopes must be a subset of what the owner's groups grant.
    let mut r = req("alice", "s");
    r.scopes = Some(vec!["apikeyd:admin".into()]);
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "scopes"
    ));
    assert!(is_invalid(
        &f.keys
            .create(&admin(), req("nobody", "x"))
            .await
            .unwrap_err(),
        "user"
    ));
    // Non-admins see and touch only their own keys.
    let bobs = f
        .keys
        .create(&admin(), req("bob", "b"))
        .await
        .unwrap()
        .view
        .id
        .to_string();
    assert!(matches!(
        f.keys.show(&alice(), &bobs),
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        f.keys.set_enabled(&alice(), &bobs, false).await,
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        list(&f.keys, &alice(), Some("bob"), false).await,
        Err(KeyError::Forbidden(_))
    ));
    assert_eq!(list(&f.keys, &alice(), None, false).await.unwrap().len(), 1);
    assert_eq!(list(&f.keys, &admin(), None, false).await.unwrap().len(), 2);
}

#[tokio::test]
async fn names_are_unique_per_owner_and_never_a_key() {
    let f = fixture();
    f.keys.create(&admin(), req("alice", "Sync")).await.unwrap();
    assert!(matches!(
        f.keys.create(&admin(), req("alice", "sYNC")).await,
        Err(KeyError::Conflict(_))
    ));
    f.keys.create(&admin(), req("bob", "sync")).await.unwrap();
    let pasted = secret::generate();
    let r = req("alice", pasted.expose());
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "name"
    ));
    let mut r = req("alice", "d");
    r.description = Some(format!("key is {}", pasted.expose()));
    assert!(is_invalid(
        &f.keys.create(&admin(), r).await.unwrap_err(),
        "description"
    ));
}

#[tokio::test]
async fn edit_narrows_scopes_and_only_shortens_expiry() {
    let f = fixture();
    let id = f
        .keys
        .create(&admin(), req("alice", "k"))
        .await
        .unwrap()
        .view
        .id
        .to_string();
    let later = EditKey {
        expires_at: Some("2027-02-28T10:00:01Z".into()),
        ..EditKey::default()
    };
    assert!(is_invalid(
        &f.keys.edit(&alice(), &id, later).await.unwrap_err(),
        "expires_at"
    ));
    let earlier = EditKey {
        expires_in: Some("p1m".into()),
        ..EditKey::default()
    };
    let v = f.keys.edit(&alice(), &id, earlier).await.unwrap();
    assert_eq!(v.expires_at.as_deref(), Some("2026-09-30T10:00:00Z"));
    let wider = EditKey {
        scopes: Some(vec!["catalog:read".into(), "catalog:write".into()]),
        ..EditKey::default()
    };
    assert!(is_invalid(
        &f.keys.edit(&alice(), &id, wider).await.unwrap_err(),
        "scopes"
    ));
    let narrower = EditKey {
        scopes: Some(vec!["catalog:read".into()]),
        description: Some("reads only".into()),
        ip: Some(vec!["192.168.1.0/24".into()]),
        headers: Some(vec!["X-Key=${key.id}".into()]),
        ..EditKey::default()
    };
    let v = f.keys.edit(&alice(), &id, narrower).await.unwrap();
    assert_eq!(v.scopes, ["catalog:read"]);
    assert_eq!(v.ip_filters, ["192.168.1.0/24"]);
    assert_eq!(v.description, "reads only");
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let f = fixture();
    let id = f
        .keys
        .create(&admin(), req("alice", "k"))
        .await
        .unwrap()
        .view
        .id
        .to_string();
    let before = f.keys.show(&admin(), &id).unwrap();
    let audit_before = audit(&f.keys, &admin(), None, 100).await.unwrap().len();
    let bad_edits = [
        EditKey {
            ip: Some(vec!["10.0.0.1".into(), "192.168.01.1".into()]),
            description: Some("x".into()),
            ..EditKey::default()
        },
        EditKey {
            headers: Some(vec!["X-A=${key.secret}".into()]),
            ..EditKey::default()
        },
        EditKey {
            name: Some("a".repeat(101)),
            ..EditKey::default()
        },
        EditKey {
            expires_in: Some("p6mjunk".into()),
            ..EditKey::default()
        },
        EditKey::default(),
    ];
    for e in bad_edits {
        assert!(matches!(
            f.keys.edit(&alice(), &id, e).await,
            Err(KeyError::Invalid { .. })
        ));
    }
    let mut r = req("alice", "other");
    r.ip = vec!["10.0.0.0/33".into()];
    assert!(f.keys.create(&admin(), r).await.is_err());
    assert_eq!(f.keys.show(&admin(), &id).unwrap(), before);
    assert_eq!(list(&f.keys, &admin(), None, true).await.unwrap().len(), 1);
    assert_eq!(
        audit(&f.keys, &admin(), None, 100).await.unwrap().len(),
        audit_before
    );
}

#[tokio::test]
async fn import_enforces_minimum_length_and_hashes() {
    let f = fixture();
    let mut r = req("alice", "legacy");
    r.secret = Some(Secret::new("short-token".into()));
    assert!(is_invalid(
        &f.keys.import(&admin(), r).await.unwrap_err(),
        "secret"
    ));
    let mut r = req("alice", "legacy");
    r.secret = Some(Secret::new(secret::generate().expose().to_owned()));
    assert!(is_invalid(
        &f.keys.import(&admin(), r).await.unwrap_err(),
        "secret"
    ));
    let token = "legacy-token-0123456789-abcdefghijkl";
    let mut r = req("alice", "legacy");
    r.secret = Some(Secret::new(token.into()));
    let v = f.keys.import(&admin(), r).await.unwrap();
    assert_eq!(v.kind, "imported");
    assert_eq!(f.keys.verify(token, None, None).code, Code::Valid);
    let mut r = req("bob", "dup");
    r.secret = Some(Secret::new(token.into()));
    assert!(matches!(
        f.keys.import(&admin(), r).await,
        Err(KeyError::Conflict(_))
    ));
}

#[tokio::test]
async fn every_change_is_audited() {
    let f = fixture();
    let id = f
        .keys
        .create(&admin(), req("alice", "k"))
        .await
        .unwrap()
        .view
        .id
        .to_string();
    f.keys.set_enabled(&alice(), &id, false).await.unwrap();
    f.keys.rotate(&alice(), &id, None).await.unwrap();
    f.keys.remove(&admin(), &id).await.unwrap();
    let entries = audit(&f.keys, &admin(), Some(&id), 10).await.unwrap();
    let actions: Vec<_> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin", "remove"),
            ("alice", "rotate"),
            ("alice", "disable"),
            ("admin", "create")
        ]
    );
    // Alice sees the trail of her own key.
    assert_eq!(audit(&f.keys, &alice(), None, 10).await.unwrap().len(), 4);
}

#[tokio::test]
async fn names_are_freed_by_rename_and_removal() {
    let f = fixture();
    let id = f
        .keys
        .create(&admin(), req("alice", "first"))
        .await
        .unwrap()
        .view
        .id
        .to_string();
    let rename = EditKey {
        name: Some("FIRST".into()),
        ..EditKey::default()
    };
    f.keys.edit(&alice(), &id, rename).await.unwrap();
    let rename = EditKey {
        name: Some("second".into()),
        ..EditKey::default()
    };
    f.keys.edit(&alice(), &id, rename).await.unwrap();
    // "first" is free again; "Second" is taken.
    f.keys
        .create(&admin(), req("alice", "First"))
        .await
        .unwrap();
    assert!(matches!(
        f.keys.create(&admin(), req("alice", "Second")).await,
        Err(KeyError::Conflict(_))
    ));
    f.keys.remove(&alice(), &id).await.unwrap();
    f.keys
        .create(&admin(), req("alice", "second"))
        .await
        .unwrap();
}

#[tokio::test]
async fn usage_survives_edits_disable_rotation_and_a_restart() {
    let f = fixture();
    let issued = f.keys.create(&admin(), req("alice", "k")).await.unwrap();
    let id = issued.view.id.to_string();
    let k = issued.key.expose().to_owned();
    for _ in 0..3 {
        assert_eq!(
            f.keys.verify_route(&k, &[], None, Some("/catalog")).code,
            Code::Valid
        );
    }
    assert_eq!(
        f.keys.verify(&k, Some("apikeyd:admin"), None).code,
        Code::InsufficientScope
    );
    let used_at = f.clock.now();
    f.clock.advance(Duration::seconds(10));
    let edit = EditKey {
        description: Some("d".into()),
        ..EditKey::default()
    };
    f.keys.edit(&admin(), &id, edit).await.unwrap();
    f.keys.set_enabled(&admin(), &id, false).await.unwrap();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Disabled);
    f.keys.set_enabled(&admin(), &id, true).await.unwrap();
    let rotated = f.keys.rotate(&admin(), &id, Some("p1d")).await.unwrap();
    // The old secret in its grace period counts against the same key.
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);
    assert_eq!(
        f.keys.verify(rotated.key.expose(), None, None).code,
        Code::Valid
    );
    let view = f.keys.show(&admin(), &id).unwrap();
    assert_eq!(view.usage.verifications, 5, "{:?}", view.usage);
    assert_eq!(view.usage.denied, 2, "scope refusal and the disabled key");
    assert_eq!(view.usage.routes.get("/catalog"), Some(&3));
    assert_eq!(
        view.last_used_at.as_deref(),
        Some(rfc3339(f.clock.now()).as_str())
    );
    assert!(f.clock.now() > used_at);
    f.keys.flush_last_used(true).await.unwrap();
    let reopened = f.reopen(settings(CONFIG));
    let again = reopened.show(&admin(), &id).unwrap();
    assert_eq!(again.usage, view.usage);
    assert_eq!(again.last_used_at, view.last_used_at);
    // Both secrets still work after the restart (the old one until its grace ends).
    assert_eq!(reopened.verify(&k, None, None).code, Code::Valid);
    assert_eq!(
        reopened.verify(rotated.key.expose(), None, None).code,
        Code::Valid
    );
    f.clock.advance(Duration::days(1));
    assert_eq!(reopened.verify(&k, None, None).code, Code::NotFound);
}

#[tokio::test]
async fn many_keys_grow_the_table_and_removals_leave_the_rest_intact() {
    let f = fixture();
    let mut secrets = Vec::new();
    for i in 0..300 {
        let c = f
            .keys
            .create(&admin(), req("alice", &format!("k{i}")))
            .await
            .unwrap();
        secrets.push((c.view.id.to_string(), c.key.expose().to_owned()));
    }
    for (id, _) in secrets.iter().step_by(3) {
        f.keys.remove(&admin(), id).await.unwrap();
    }
    for (i, (_, k)) in secrets.iter().enumerate() {
        let want = if i % 3 == 0 {
            Code::NotFound
        } else {
            Code::Valid
        };
        assert_eq!(f.keys.verify(k, None, None).code, want, "key {i}");
    }
    let counts = f.keys.status_counts();
    assert_eq!(counts["active"], 200);
    assert_eq!(counts["removed"], 100);
}

#[tokio::test]
async fn purged_entries_are_reused_without_mixing_up_keys() {
    let text = CONFIG.replace(
        "DefaultExpirationPeriod = \"p1y\"\n",
        "DefaultExpirationPeriod = \"p1y\"\nRetentionPeriod = \"p1d\"\n",
    );
    let f = fixture_with(&text);
    let c = crate::config::from_text(&text).unwrap();
    f.keys.alerting().set_config(c.alerts);
    let old = f.keys.create(&admin(), req("alice", "old")).await.unwrap();
    let old_key = old.key.expose().to_owned();
    let stale = f.keys.verify(&old_key, None, None);
    assert_eq!(stale.code, Code::Valid);
    f.keys
        .remove(&admin(), &old.view.id.to_string())
        .await
        .unwrap();
    f.clock.advance(Duration::days(2));
    assert_eq!(maintenance::purge(&f.keys).await.unwrap(), 1);
    // The new key takes the purged key's entry number.
    let new = f.keys.create(&admin(), req("alice", "new")).await.unwrap();
    assert_eq!(f.keys.verify(&old_key, None, None).code, Code::NotFound);
    assert_eq!(
        f.keys.verify(new.key.expose(), None, None).code,
        Code::Valid
    );
    // A verification of the old key taken before the purge does not resolve to the
    // key now in its entry.
    assert!(f.keys.resolve(&mut stale.clone()).is_none());
    let fresh = f.keys.verify(new.key.expose(), None, None);
    assert_eq!(f.keys.resolve(&mut fresh.clone()).unwrap().id, new.view.id);
    assert_eq!(f.keys.len(), 1);
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

/// Keys per status by visiting every key, as `/metrics` used to on every scrape.
fn scanned(keys: &Keys) -> BTreeMap<&'static str, usize> {
    let settings = keys.settings();
    let now = keys.clock.now();
    let index = keys.index.read();
    let mut out: BTreeMap<&'static str, usize> =
        StatusCounts::ORDER.into_iter().map(|s| (s, 0)).collect();
    for slot in index.table.iter() {
        let label = match slot.status(&settings.policy, now) {
            Status::Active => {
                counted_as(KeyState::Enabled, Lapse::NONE, slot.flags & table::REFUSED)
            }
            s => s.as_str(),
        };
        *out.entry(label).or_default() += 1;
    }
    *out.entry("removed").or_default() += index.by_id.len() - index.table.iter().count();
    out
}

fn counts(keys: &Keys) -> [usize; 5] {
    let c = keys.status_counts();
    ["active", "disabled", "expired", "inactive", "removed"].map(|s| c[s])
}

/// `/metrics` counted keys per status by visiting every key on every scrape. The
/// counts now come from counters: state changes move a key at once, expiry and
/// inactivity are as of the last expiry sweep (so a scrape after the clock moved,
/// before a sweep, still shows the keys as the sweep left them), and a restart
/// counts them as a sweep would.
#[tokio::test]
async fn key_status_counts_come_from_counters_not_a_scan_per_scrape() {
    let text = CONFIG.replace(
        "DefaultExpirationPeriod = \"p1y\"\n",
        "DefaultExpirationPeriod = \"p1y\"\nRetentionPeriod = \"p1d\"\n",
    );
    let f = fixture_with(&text);
    let c = crate::config::from_text(&text).unwrap();
    f.keys.alerting().set_config(c.alerts);
    let mut ids = Vec::new();
    let mut secrets = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let k = f.keys.create(&admin(), req("alice", name)).await.unwrap();
        ids.push(k.view.id.to_string());
        secrets.push(k.key.expose().to_owned());
    }
    let mut short = req("alice", "x");
    short.expires_in = Some("pt10m".into());
    let x = f
        .keys
        .create(&admin(), short)
        .await
        .unwrap()
        .view
        .id
        .to_string();
    assert_eq!(counts(&f.keys), [6, 0, 0, 0, 0]);
    f.keys.set_enabled(&admin(), &ids[1], false).await.unwrap();
    assert_eq!(counts(&f.keys), [5, 1, 0, 0, 0]);
    f.keys.remove(&admin(), &ids[2]).await.unwrap();
    assert_eq!(counts(&f.keys), [4, 1, 0, 0, 1]);
    // x expires; the scrape shows it as the last sweep left it, until the next one.
    f.clock.advance(Duration::minutes(20));
    assert_eq!(counts(&f.keys), [4, 1, 0, 0, 1], "a scrape does not scan");
    assert_eq!(maintenance::sweep_expired(&f.keys).await.unwrap(), 1);
    assert_eq!(counts(&f.keys), [3, 1, 1, 0, 1]);
    assert_eq!(f.keys.status_counts(), scanned(&f.keys));
    // An edit of an expired key keeps it counted as expired.
    let edit = EditKey {
        description: Some("gone".into()),
        ..EditKey::default()
    };
    f.keys.edit(&admin(), &x, edit).await.unwrap();
    assert_eq!(counts(&f.keys), [3, 1, 1, 0, 1]);
    f.clock.advance(Duration::days(60));
    assert_eq!(f.keys.verify(&secrets[0], None, None).code, Code::Valid);
    f.clock.advance(Duration::days(40));
    // a was used 40 days ago; d and e never, 100 days after creation: inactive.
    assert_eq!(counts(&f.keys), [3, 1, 1, 0, 1], "a scrape does not scan");
    assert_eq!(maintenance::sweep_expired(&f.keys).await.unwrap(), 2);
    assert_eq!(counts(&f.keys), [1, 1, 1, 2, 1]);
    assert_eq!(f.keys.status_counts(), scanned(&f.keys));
    // Re-enabling b (which went inactive while disabled) counts it as active until
    // the sweep finds it inactive.
    f.keys.set_enabled(&admin(), &ids[1], true).await.unwrap();
    assert_eq!(counts(&f.keys), [2, 0, 1, 2, 1]);
    maintenance::sweep_expired(&f.keys).await.unwrap();
    assert_eq!(counts(&f.keys), [1, 0, 1, 3, 1]);
    assert_eq!(f.keys.status_counts(), scanned(&f.keys));
    // The purge takes the removed, expired and long inactive keys out of the counts.
    let purged = maintenance::purge(&f.keys).await.unwrap();
    assert_eq!(purged, 5);
    assert_eq!(counts(&f.keys), [1, 0, 0, 0, 0]);
    assert_eq!(f.keys.status_counts(), scanned(&f.keys));
    // New keys reuse purged entries and start as active.
    for name in ["f", "g"] {
        f.keys.create(&admin(), req("alice", name)).await.unwrap();
    }
    assert_eq!(counts(&f.keys), [3, 0, 0, 0, 0]);
    // A restart counts what lapsed meanwhile, as a sweep would.
    f.clock.advance(Duration::days(100));
    let reopened = f.reopen(settings(&text));
    // a passed its hard expiry; f and g were never used.
    assert_eq!(counts(&reopened), [0, 0, 1, 2, 0]);
    assert_eq!(reopened.status_counts(), scanned(&reopened));
}

/// Walk every page of `list`, returning the ids in order.
async fn walk_keys(f: &Fixture, actor: &Actor, all: bool, limit: usize) -> Vec<Uuid> {
    let mut page = PageRequest {
        cursor: None,
        limit: Some(limit),
    };
    let mut seen = Vec::new();
    loop {
        let p = f.keys.list_page(actor, None, all, &page).await.unwrap();
        assert!(p.items.len() <= limit);
        seen.extend(p.items.iter().map(|k| k.id));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return seen,
        }
    }
}

/// `key list` and `audit` page with a cursor: every key (entry) visible to the
/// caller comes exactly once, in order, and a non-admin sees only their own.
#[tokio::test]
async fn key_list_and_audit_pages_walk_every_visible_row_once() {
    let f = fixture();
    let mut alices = Vec::new();
    for i in 0..5 {
        let k = f
            .keys
            .create(&admin(), req("alice", &format!("a{i}")))
            .await
            .unwrap();
        alices.push(k.view.id);
        let b = f
            .keys
            .create(&admin(), req("bob", &format!("b{i}")))
            .await
            .unwrap();
        f.keys
            .set_enabled(&admin(), &b.view.id.to_string(), false)
            .await
            .unwrap();
        f.clock.advance(Duration::seconds(1));
    }
    f.keys
        .remove(&admin(), &alices[1].to_string())
        .await
        .unwrap();
    let every: Vec<Uuid> = list(&f.keys, &admin(), None, true)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(every.len(), 10);
    for limit in [1, 3, 10, 20] {
        assert_eq!(walk_keys(&f, &admin(), true, limit).await, every);
    }
    let mut visible = alices.clone();
    visible.remove(1);
    assert_eq!(walk_keys(&f, &alice(), false, 2).await, visible);
    assert_eq!(walk_keys(&f, &alice(), true, 2).await, alices);

    let trail = audit(&f.keys, &admin(), None, 1000).await.unwrap();
    assert_eq!(trail.len(), 16);
    let hers: Vec<u64> = trail
        .iter()
        .filter(|e| e.key_id.is_some_and(|k| alices.contains(&k)))
        .map(|e| e.seq)
        .collect();
    assert_eq!(hers.len(), 6);
    let mut page = PageRequest {
        cursor: None,
        limit: Some(4),
    };
    let mut seen = Vec::new();
    loop {
        let p = f.keys.audit_page(&alice(), None, &page).await.unwrap();
        seen.extend(p.items.iter().map(|e| e.seq));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, hers);

    // A cursor of another listing, or a page of nothing, is refused.
    let wrong = PageRequest {
        cursor: Some(page::audit_cursor(3)),
        limit: None,
    };
    let e = f
        .keys
        .list_page(&admin(), None, true, &wrong)
        .await
        .unwrap_err();
    assert!(is_invalid(&e, "cursor"), "{e}");
    let zero = PageRequest {
        cursor: None,
        limit: Some(0),
    };
    let e = f.keys.audit_page(&admin(), None, &zero).await.unwrap_err();
    assert!(is_invalid(&e, "limit"), "{e}");
}
