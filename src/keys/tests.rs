//! Key rules with an injected clock: rotation grace, permissions, names, edits,
//! imports, audit, usage across changes, and "bad input changes nothing".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Duration;

use super::secret::Secret;
use super::*;
use crate::clock::Clock;
use crate::model::*;
use crate::test_support::*;

pub(super) fn is_invalid(e: &KeyError, field: &str) -> bool {
    matches!(e, KeyError::Invalid { field: f, .. } if *f == field)
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
        f.keys.show(&alice(), &bobs).await,
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
        Err(KeyError::Taken { field: "name", .. })
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
    let before = f.keys.show(&admin(), &id).await.unwrap();
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
    assert_eq!(f.keys.show(&admin(), &id).await.unwrap(), before);
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
        Err(KeyError::Taken { field: "name", .. })
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
    let view = f.keys.show(&admin(), &id).await.unwrap();
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
    let again = reopened.show(&admin(), &id).await.unwrap();
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
