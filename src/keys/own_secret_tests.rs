//! A key's own secret: names that must not carry it, and removed, rotated or
//! narrowed tokens that neither their owner nor anyone else can bring back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::authz_tests::{audit_len, bob, import_req, retired_conflict};
use super::rules::{windows, OwnSecrets};
use super::secret::Secret;
use super::*;
use crate::model::*;
use crate::test_support::*;
use std::sync::atomic::Ordering;

// ------------------------------------------------------------ item 9: own secret

/// Regression: an imported token could be renamed (or re-described) to its own
/// secret, which then showed in listings, the audit trail and `X-Api-Key-Name`:
/// `edit` checked the new name against an empty secret.
#[tokio::test]
async fn a_token_cannot_be_renamed_to_its_own_secret() {
    let f = fixture();
    let token = "legacy-token-0123456789-abcdefghijkl";
    let mut r = req("alice", "legacy");
    r.secret = Some(Secret::new(token.into()));
    let id = f.keys.import(&alice(), r).await.unwrap().id.to_string();
    let audit = audit_len(&f, &id).await;
    for text in [
        token.to_owned(),
        format!("old token {token} of the sync job"),
        format!("token={token};"),
        format!("é{token}é"),
    ] {
        let e = f
            .keys
            .edit(
                &alice(),
                &id,
                EditKey {
                    name: Some(text.clone()),
                    ..EditKey::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, KeyError::Invalid { field: "name", message } if !message.contains(token)),
            "{e:?}"
        );
        let e = f
            .keys
            .edit(
                &alice(),
                &id,
                EditKey {
                    description: Some(text),
                    ..EditKey::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, KeyError::Invalid { field: "description", message } if !message.contains(token)),
            "{e:?}"
        );
    }
    assert_eq!(audit_len(&f, &id).await, audit, "nothing recorded");
    let view = f.keys.show(&alice(), &id).await.unwrap();
    assert_eq!(view.name, "legacy");
    assert_eq!(view.description, "");
    // Other text, and a token-shaped text that is not its secret, are fine.
    f.keys
        .edit(
            &alice(),
            &id,
            EditKey {
                name: Some("legacy-token-0123456789-abcdefghijkX".into()),
                description: Some("the legacy sync token".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    // After a rotation with grace the old token is the previous secret: still refused.
    f.keys.rotate(&alice(), &id, Some("p1d")).await.unwrap();
    let e = f
        .keys
        .edit(
            &alice(),
            &id,
            EditKey {
                name: Some(token.into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, KeyError::Invalid { field: "name", .. }),
        "{e:?}"
    );
    let _ = &f.clock;
}

// ------------------------------------------------------------ review of issue 9

/// Regression (review F1): alice's imported token T was disabled and IP-restricted
/// by an admin; alice removed the key and imported T again as a new key, which
/// verified VALID from anywhere. Removal and rotation released the secret's hash and
/// import only checked the keys that held one now, so anyone could also import
/// another user's removed or rotated-away token.
#[tokio::test]
async fn a_retired_imported_secret_cannot_be_brought_back_by_its_owner_or_others() {
    let f = fixture();
    let t = "legacy-token-0123456789-restricted";
    let id = f
        .keys
        .import(&alice(), import_req("alice", "imp", t))
        .await
        .unwrap()
        .id
        .to_string();
    f.keys.set_enabled(&admin(), &id, false).await.unwrap();
    f.keys
        .edit(
            &admin(),
            &id,
            EditKey {
                ip: Some(vec!["10.9.9.9/32".into()]),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    f.keys.remove(&alice(), &id).await.unwrap();
    let m = retired_conflict(
        f.keys
            .import(&alice(), import_req("alice", "imp2", t))
            .await
            .unwrap_err(),
    );
    assert!(m.contains("ask an admin") && !m.contains("alice"), "{m}");
    assert_eq!(f.keys.verify(t, None, None).code, Code::NotFound);
    // An admin decides: the token may come back (issue 9, item 7's scenario).
    f.keys
        .import(&admin(), import_req("alice", "imp3", t))
        .await
        .unwrap();
    assert_eq!(f.keys.verify(t, None, None).code, Code::Valid);

    // An unrestricted token of alice's: she may bring it back, bob may not.
    let mine = "legacy-token-0123456789-alices-own";
    let id = f
        .keys
        .import(&alice(), import_req("alice", "own", mine))
        .await
        .unwrap()
        .id
        .to_string();
    f.keys.remove(&alice(), &id).await.unwrap();
    retired_conflict(
        f.keys
            .import(&bob(), import_req("bob", "stolen", mine))
            .await
            .unwrap_err(),
    );
    let id = f
        .keys
        .import(&alice(), import_req("alice", "own-again", mine))
        .await
        .unwrap()
        .id
        .to_string();
    // Rotated away (no grace): the same rules.
    f.keys.rotate(&alice(), &id, None).await.unwrap();
    retired_conflict(
        f.keys
            .import(&bob(), import_req("bob", "stolen", mine))
            .await
            .unwrap_err(),
    );
    assert!(list(&f.keys, &bob(), None, true).await.unwrap().is_empty());
    f.keys
        .import(&alice(), import_req("alice", "own-third", mine))
        .await
        .unwrap();
}

/// Regression (review F5): the check that an edited description does not contain
/// the key's imported token hashed every stretch of 16 to 1024 characters, ~240k
/// HMACs for a 1000-character description, inside the change while holding the
/// index's read lock (57 ms per edit in release; /v1/auth p99 went from 0.6 to 28
/// ms while edits looped). The token's length is now kept, so only stretches of
/// that length are hashed, before the change, off the index lock.
#[tokio::test]
async fn the_own_secret_check_hashes_only_stretches_of_the_tokens_length() {
    let f = fixture();
    let token = "legacy-token-0123456789-abcdefghijkl";
    let id = f
        .keys
        .import(&alice(), import_req("alice", "legacy", token))
        .await
        .unwrap()
        .id
        .to_string();
    let description = "x".repeat(1000);
    let count = f.keys.hasher.count.clone();
    let before = count.load(Ordering::Relaxed);
    f.keys
        .edit(
            &alice(),
            &id,
            EditKey {
                description: Some(description.clone()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    let hashed = count.load(Ordering::Relaxed) - before;
    assert!(hashed <= 1000, "{hashed} hashes for one edit");
    // Still refused, wherever the token sits.
    let e = f
        .keys
        .edit(
            &alice(),
            &id,
            EditKey {
                description: Some(format!("{}{token}", "y".repeat(900))),
                ..EditKey::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            KeyError::Invalid {
                field: "description",
                ..
            }
        ),
        "{e:?}"
    );
    // A record stored before the length was kept: every length is still tried.
    assert_eq!(windows("ab", None).count(), 0);
    assert_eq!(windows(&description, Some(36)).count(), 965);
    let live = f.keys.live(Uuid::parse_str(&id).unwrap()).unwrap();
    let mut rec = f.keys.record(&live).await.unwrap();
    rec.user_secret = UserSecret::Unknown;
    assert_eq!(OwnSecrets::of(&rec).unwrap().len, None);
    assert!(OwnSecrets::of(&rec)
        .unwrap()
        .found_in(&f.keys.hasher, &format!("old {token} token")));
}

// ------------------------------------------------ FC F1: an admin's retirements

/// Regression (second review, FC F1): alice imported token T; an admin removed the
/// key, or rotated it without grace, or narrowed its scopes and expiry (then alice
/// removed it); alice imported T again and it verified VALID, with her full scopes
/// and the default expiry. A retired secret was restricted only if the key carried
/// `admin_restrictions`, which an admin's remove, rotate or narrowing never set.
#[tokio::test]
async fn an_owner_cannot_bring_back_a_token_an_admin_retired_or_narrowed() {
    let f = fixture();
    let alice = alice();
    let import = |name: &str, token: &str| f.keys.import(&alice, import_req("alice", name, token));

    // Removed by an admin.
    let removed = "legacy-token-0123456789-admin-removed";
    let id = import("removed", removed).await.unwrap().id.to_string();
    f.keys.remove(&admin(), &id).await.unwrap();
    retired_conflict(import("removed-again", removed).await.unwrap_err());
    assert_eq!(f.keys.verify(removed, None, None).code, Code::NotFound);

    // Rotated by an admin, no grace.
    let rotated = "legacy-token-0123456789-admin-rotated";
    let id = import("rotated", rotated).await.unwrap().id.to_string();
    f.keys.rotate(&admin(), &id, None).await.unwrap();
    retired_conflict(import("rotated-again", rotated).await.unwrap_err());
    assert_eq!(f.keys.verify(rotated, None, None).code, Code::NotFound);

    // Narrowed by an admin (scopes and expiry), then removed by alice herself.
    let narrowed = "legacy-token-0123456789-admin-narrowed";
    let id = import("narrowed", narrowed).await.unwrap().id.to_string();
    let view = f
        .keys
        .edit(
            &admin(),
            &id,
            EditKey {
                scopes: Some(vec!["catalog:read".into()]),
                expires_in: Some("p1d".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        view.admin_restrictions.restricted_by.as_deref(),
        Some("admin")
    );
    f.keys.remove(&alice, &id).await.unwrap();
    retired_conflict(import("narrowed-again", narrowed).await.unwrap_err());
    assert_eq!(
        f.keys.verify(narrowed, Some("catalog:sync"), None).code,
        Code::NotFound
    );

    // Either narrowing alone is enough.
    for (n, edit) in [
        (
            "scopes",
            EditKey {
                scopes: Some(vec!["catalog:read".into()]),
                ..EditKey::default()
            },
        ),
        (
            "expiry",
            EditKey {
                expires_in: Some("p1d".into()),
                ..EditKey::default()
            },
        ),
    ] {
        let token = format!("legacy-token-0123456789-narrowed-{n}");
        let id = import(n, &token).await.unwrap().id.to_string();
        f.keys.edit(&admin(), &id, edit).await.unwrap();
        f.keys.remove(&alice, &id).await.unwrap();
        retired_conflict(import(&format!("{n}-again"), &token).await.unwrap_err());
    }

    // An admin may still bring one back, and alice's own removals stay hers.
    f.keys
        .import(&admin(), import_req("alice", "restored", removed))
        .await
        .unwrap();
    assert_eq!(f.keys.verify(removed, None, None).code, Code::Valid);
    let mine = "legacy-token-0123456789-alices-again";
    let id = import("mine", mine).await.unwrap().id.to_string();
    f.keys.remove(&alice, &id).await.unwrap();
    import("mine-again", mine).await.unwrap();
}

/// Regression (second review, FC F1): an admin's rotation with a grace period
/// retired the old token unrestricted, and alice's removal of the key afterwards
/// refreshed that entry, still unrestricted: she could import it again.
#[tokio::test]
async fn an_admin_rotation_with_grace_keeps_the_old_token_retired_for_the_owner() {
    let f = fixture();
    let t = "legacy-token-0123456789-admin-grace";
    let id = f
        .keys
        .import(&alice(), import_req("alice", "g", t))
        .await
        .unwrap()
        .id
        .to_string();
    f.keys.rotate(&admin(), &id, Some("p1d")).await.unwrap();
    f.keys.remove(&alice(), &id).await.unwrap();
    retired_conflict(
        f.keys
            .import(&alice(), import_req("alice", "g2", t))
            .await
            .unwrap_err(),
    );
}

/// Regression (second review, FC F1): an admin issuing alice a key with fewer
/// scopes than her groups grant left nothing on record, so alice could remove it
/// and import its token again with all of them.
#[tokio::test]
async fn an_owner_cannot_widen_an_admin_issued_token_by_importing_it_again() {
    let f = fixture();
    let t = "legacy-token-0123456789-admin-issued";
    let mut r = import_req("alice", "issued", t);
    r.scopes = Some(vec!["catalog:read".into()]);
    let view = f.keys.import(&admin(), r).await.unwrap();
    assert_eq!(
        view.admin_restrictions.restricted_by.as_deref(),
        Some("admin")
    );
    f.keys.remove(&alice(), &view.id.to_string()).await.unwrap();
    retired_conflict(
        f.keys
            .import(&alice(), import_req("alice", "issued2", t))
            .await
            .unwrap_err(),
    );
}
