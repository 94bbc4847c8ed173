//! Who may change what, and what a key may do as users and groups change: admin
//! restrictions an owner cannot lift, headers an owner cannot forge, privileges that
//! follow a reload, names that must not carry the key's own secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};

use super::index::Index;
use super::rules::{windows, OwnSecrets};
use super::secret::Secret;
use super::*;
use crate::model::*;
use crate::test_support::*;
use std::sync::atomic::Ordering;

/// CONFIG with alice's groups replaced, or alice left out (`None`).
fn with_alice(groups: Option<&str>) -> Settings {
    let text = match groups {
        Some(g) => CONFIG.replace(
            "[users.alice]\ngroups = [\"Synchronizer\"]",
            &format!("[users.alice]\ngroups = [{g}]"),
        ),
        None => CONFIG.replace("[users.alice]\ngroups = [\"Synchronizer\"]\n", ""),
    };
    settings(&text)
}

fn forbidden(e: KeyError) -> String {
    match e {
        KeyError::Forbidden(m) => m,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

async fn audit_len(f: &Fixture, id: &str) -> usize {
    audit(&f.keys, &admin(), Some(id), 100).await.unwrap().len()
}

// ------------------------------------------------------------ item 8: reloads

/// Regression: a reload that moved alice from Synchronizer to User left her
/// `catalog:sync` key verifying with that scope, and removing alice from the config
/// left her keys working. Scopes were the key's own, fixed when it was issued.
#[tokio::test]
async fn privileges_follow_a_reload() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "sync")).await.unwrap();
    let k = issued.key.expose().to_owned();
    let id = issued.view.id.to_string();
    let bob = f.keys.create(&admin(), req("bob", "b")).await.unwrap();
    assert_eq!(
        f.keys.verify(&k, Some("catalog:sync"), None).code,
        Code::Valid
    );

    // Demoted: the scope her groups no longer grant is refused, the rest works.
    let changed = f.keys.reload(with_alice(Some("\"User\"")));
    assert_eq!(
        changed,
        Regranted {
            lost_scopes: 1,
            refused: 0,
            restored: 0
        }
    );
    assert_eq!(
        f.keys.verify(&k, Some("catalog:sync"), None).code,
        Code::InsufficientScope
    );
    let mut v = f.keys.verify(&k, Some("catalog:read"), None);
    assert_eq!(v.code, Code::Valid);
    // What the upstream is told (X-Api-Key-Scopes, /v1/verify) is the effective set.
    let live = f.keys.resolve(&mut v).unwrap();
    assert_eq!(&live.scopes[..], ["catalog:read"]);
    assert_eq!(&live.own_scopes()[..], ["catalog:read", "catalog:sync"]);
    let view = f.keys.show(&admin(), &id).unwrap();
    assert_eq!(view.scopes, ["catalog:read", "catalog:sync"]);
    assert_eq!(view.effective_scopes, ["catalog:read"]);
    assert_eq!(view.status, "active");
    // Bob's key did not change.
    assert_eq!(
        f.keys
            .verify(bob.key.expose(), Some("catalog:sync"), None)
            .code,
        Code::Valid
    );

    // Removed from the config: refused with a code of its own, listed that way.
    let changed = f.keys.reload(with_alice(None));
    assert_eq!(changed.refused, 1);
    assert_eq!(changed.lost_scopes, 0);
    assert_eq!(f.keys.verify(&k, None, None).code, Code::OwnerUnknown);
    assert_eq!(
        f.keys.verify(&k, Some("catalog:read"), None).code,
        Code::OwnerUnknown
    );
    let listed = list(&f.keys, &admin(), None, false).await.unwrap();
    let mine = listed.iter().find(|v| v.id.to_string() == id).unwrap();
    assert_eq!(mine.status, "owner_unknown");
    assert!(
        mine.details.contains("not a configured user"),
        "{}",
        mine.details
    );
    assert!(mine.effective_scopes.is_empty());

    // Back in Synchronizer: everything returns, with the usage counted meanwhile.
    let changed = f.keys.reload(settings(CONFIG));
    assert_eq!(changed.restored, 1);
    let mut v = f.keys.verify(&k, Some("catalog:sync"), None);
    assert_eq!(v.code, Code::Valid);
    let live = f.keys.resolve(&mut v).unwrap();
    assert_eq!(&live.scopes[..], ["catalog:read", "catalog:sync"]);
    let view = f.keys.show(&admin(), &id).unwrap();
    assert_eq!(view.usage.verifications, 3);
    assert_eq!(view.usage.denied, 3);
    assert_eq!(f.keys.reload(settings(CONFIG)), Regranted::default());
}

/// The same rules hold for keys loaded at start and for changes published after a
/// reload (an edit must not bring back a scope the owner lost).
#[tokio::test]
async fn effective_scopes_at_start_and_after_an_edit() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "sync")).await.unwrap();
    let k = issued.key.expose().to_owned();
    let id = issued.view.id.to_string();
    f.keys.reload(with_alice(Some("\"User\"")));
    f.keys
        .edit(
            &admin(),
            &id,
            EditKey {
                description: Some("edited".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        f.keys.verify(&k, Some("catalog:sync"), None).code,
        Code::InsufficientScope
    );
    let keys = f.reopen(with_alice(None));
    assert_eq!(keys.verify(&k, None, None).code, Code::OwnerUnknown);
    keys.reload(with_alice(Some("\"User\"")));
    assert_eq!(
        keys.verify(&k, Some("catalog:sync"), None).code,
        Code::InsufficientScope
    );
    assert_eq!(
        keys.verify(&k, Some("catalog:read"), None).code,
        Code::Valid
    );
}

/// The reload walks every key once; at 100k keys (10% of them losing a scope) that
/// must stay well under a second, even in a debug build.
#[test]
fn a_reload_over_100k_keys_is_quick() {
    let now = Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap();
    let mut users = String::new();
    for u in 0..100 {
        users += &format!("[users.u{u}]\ngroups = [\"Synchronizer\"]\n");
    }
    let before = settings(&format!("{CONFIG}{users}"));
    let mut index = Index::with_capacity(100_000);
    index.grants = grants_of(&before.directory);
    let template: KeyRecord = serde_json::from_value(serde_json::json!({
        "id": Uuid::nil(),
        "name": "k",
        "owner": "u0",
        "scopes": ["catalog:read", "catalog:sync"],
        "hash": hex::encode([0u8; 32]),
        "kind": "generated",
        "state": "enabled",
        "created_at": now,
        "updated_at": now,
    }))
    .unwrap();
    for i in 0..100_000u32 {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        hash[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        let mut rec = template.clone();
        rec.id = Uuid::from_u128(u128::from(i) + 1);
        rec.name = format!("k{i}");
        rec.owner = format!("u{}", i % 100);
        rec.hash = hex::encode(hash);
        index.load(KeyRow::from_record(&rec).unwrap());
    }
    assert_eq!(index.regrant(&before.directory), Regranted::default());
    // u0..u9 become Users: their 10% of the keys lose catalog:sync.
    let mut demoted = users.clone();
    for u in 0..10 {
        demoted = demoted.replace(
            &format!("[users.u{u}]\ngroups = [\"Synchronizer\"]"),
            &format!("[users.u{u}]\ngroups = [\"User\"]"),
        );
    }
    let after = settings(&format!("{CONFIG}{demoted}"));
    let started = std::time::Instant::now();
    let changed = index.regrant(&after.directory);
    let took = started.elapsed();
    assert_eq!(changed.lost_scopes, 10_000);
    eprintln!("reload over 100k keys, 10k changed: {took:?}");
    assert!(
        took < std::time::Duration::from_millis(500),
        "reload over 100k keys took {took:?}"
    );
    let started = std::time::Instant::now();
    assert_eq!(index.regrant(&after.directory), Regranted::default());
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
}

// ------------------------------------------------------------ item 4: restrictions

/// Regression: alice (not an admin) could enable a key an admin had disabled.
#[tokio::test]
async fn an_owner_cannot_enable_a_key_an_admin_disabled() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "k")).await.unwrap();
    let (k, id) = (issued.key.expose().to_owned(), issued.view.id.to_string());
    f.keys.set_enabled(&admin(), &id, false).await.unwrap();
    let audit = audit_len(&f, &id).await;
    let msg = forbidden(f.keys.set_enabled(&alice(), &id, true).await.unwrap_err());
    assert!(msg.contains("disabled by admin \"admin\""), "{msg}");
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Disabled);
    assert_eq!(audit_len(&f, &id).await, audit, "nothing recorded");
    let view = f.keys.show(&alice(), &id).unwrap();
    assert_eq!(
        view.admin_restrictions.disabled_by.as_deref(),
        Some("admin")
    );
    // The admin lifts it; from then on the owner manages the key again.
    f.keys.set_enabled(&admin(), &id, true).await.unwrap();
    f.keys.set_enabled(&alice(), &id, false).await.unwrap();
    f.keys.set_enabled(&alice(), &id, true).await.unwrap();
    assert_eq!(f.keys.verify(&k, None, None).code, Code::Valid);
}

/// Regression: alice could clear (or widen) IP filters an admin had set on her key.
#[tokio::test]
async fn an_owner_may_only_narrow_the_ip_filters_an_admin_set() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "k")).await.unwrap();
    let id = issued.view.id.to_string();
    let edit_ip = |ips: &[&str]| EditKey {
        ip: Some(ips.iter().map(|s| s.to_string()).collect()),
        ..EditKey::default()
    };
    f.keys
        .edit(&admin(), &id, edit_ip(&["10.1.0.0/16", "192.0.2.7"]))
        .await
        .unwrap();
    let audit = audit_len(&f, &id).await;
    for bad in [
        &[][..],
        &["0.0.0.0/0"][..],
        &["10.0.0.0/8"][..],
        &["10.1.2.0/24", "198.51.100.1"][..],
    ] {
        let e = f.keys.edit(&alice(), &id, edit_ip(bad)).await.unwrap_err();
        forbidden(e);
    }
    assert_eq!(audit_len(&f, &id).await, audit, "nothing recorded");
    let view = f.keys.show(&alice(), &id).unwrap();
    assert_eq!(view.ip_filters, ["10.1.0.0/16", "192.0.2.7/32"]);
    // Narrowing inside the admin's networks is fine, and can be widened back to them.
    f.keys
        .edit(&alice(), &id, edit_ip(&["10.1.2.0/24"]))
        .await
        .unwrap();
    f.keys
        .edit(&alice(), &id, edit_ip(&["10.1.0.0/16", "192.0.2.7"]))
        .await
        .unwrap();
    // An admin clearing them lifts the restriction.
    f.keys.edit(&admin(), &id, edit_ip(&[])).await.unwrap();
    f.keys
        .edit(&alice(), &id, edit_ip(&["203.0.113.0/24"]))
        .await
        .unwrap();
    f.keys.edit(&alice(), &id, edit_ip(&[])).await.unwrap();
    // What an admin sets when creating a key for someone binds the owner too.
    let mut r = req("alice", "made-by-admin");
    r.ip = vec!["10.9.0.0/16".into()];
    let id2 = f
        .keys
        .create(&admin(), r)
        .await
        .unwrap()
        .view
        .id
        .to_string();
    forbidden(f.keys.edit(&alice(), &id2, edit_ip(&[])).await.unwrap_err());
}

/// Regression: alice could give her key a header with literal text
/// (`X-Tenant=admin`), which the upstream then received as an identity claim from
/// `/v1/auth`; `${key.name}` (she picks the name) forged the same way.
#[tokio::test]
async fn an_owner_cannot_forge_identity_headers() {
    let f = fixture();
    for forged in [
        "X-Tenant=admin",
        "X-Tenant=${key.name}",
        "X-User=x${key.owner}",
    ] {
        let mut r = req("alice", "k");
        r.headers = vec![forged.into()];
        forbidden(f.keys.create(&alice(), r).await.unwrap_err());
        let mut r = req("alice", "imp");
        r.headers = vec![forged.into()];
        r.secret = Some(Secret::new("legacy-token-0123456789-abcdefghijkl".into()));
        forbidden(f.keys.import(&alice(), r).await.unwrap_err());
    }
    assert!(list(&f.keys, &alice(), None, true)
        .await
        .unwrap()
        .is_empty());
    let mut r = req("alice", "k");
    r.headers = vec!["X-Key=${key.id}".into(), "X-User=${key.owner}".into()];
    let id = f
        .keys
        .create(&alice(), r)
        .await
        .unwrap()
        .view
        .id
        .to_string();
    let edit_h = |hs: &[&str]| EditKey {
        headers: Some(hs.iter().map(|s| s.to_string()).collect()),
        ..EditKey::default()
    };
    let audit = audit_len(&f, &id).await;
    forbidden(
        f.keys
            .edit(&alice(), &id, edit_h(&["X-Tenant=admin"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(audit_len(&f, &id).await, audit);
    // An admin may set literal values; the owner must keep them as they are.
    f.keys
        .edit(&admin(), &id, edit_h(&["X-Tenant=acme", "X-Key=${key.id}"]))
        .await
        .unwrap();
    forbidden(
        f.keys
            .edit(&alice(), &id, edit_h(&["X-Key=${key.id}"]))
            .await
            .unwrap_err(),
    );
    forbidden(
        f.keys
            .edit(&alice(), &id, edit_h(&["X-Tenant=other"]))
            .await
            .unwrap_err(),
    );
    // Regression (second review of issue 9): a header the admin set whose value the
    // owner could have set herself (`X-Key=${key.id}`) could be dropped by her, and
    // the upstream may rely on it being there. It binds her like a literal one.
    forbidden(
        f.keys
            .edit(
                &alice(),
                &id,
                edit_h(&["X-Tenant=acme", "X-Expires=${key.expires_at}"]),
            )
            .await
            .unwrap_err(),
    );
    f.keys
        .edit(
            &alice(),
            &id,
            edit_h(&[
                "X-Tenant=acme",
                "X-Key=${key.id}",
                "X-Expires=${key.expires_at}",
            ]),
        )
        .await
        .unwrap();
    let view = f.keys.show(&alice(), &id).unwrap();
    assert_eq!(view.headers.len(), 3);
    // An admin's own keys are not restricted (and admins set what they like).
    let mut r = req("admin", "own");
    r.headers = vec!["X-Tenant=ops".into()];
    let own = f.keys.create(&admin(), r).await.unwrap().view;
    assert!(own.admin_restrictions.is_empty());
}

/// Records written before restrictions were recorded load with none.
#[test]
fn old_records_load_without_restrictions() {
    let rec: KeyRecord = serde_json::from_value(serde_json::json!({
        "id": Uuid::now_v7(),
        "name": "old",
        "owner": "alice",
        "scopes": ["catalog:read"],
        "hash": hex::encode([1u8; 32]),
        "kind": "generated",
        "state": "disabled",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap();
    assert!(rec.admin_restrictions.is_empty());
    assert!(!serde_json::to_string(&rec)
        .unwrap()
        .contains("admin_restrictions"));
}

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
    let view = f.keys.show(&alice(), &id).unwrap();
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

fn bob() -> Actor {
    Actor {
        name: "bob".into(),
        admin: false,
    }
}

fn import_req(user: &str, name: &str, token: &str) -> CreateKey {
    let mut r = req(user, name);
    r.secret = Some(Secret::new(token.into()));
    r
}

fn retired_conflict(e: KeyError) -> String {
    match e {
        KeyError::Conflict(m) if m.contains("removed or rotated") => m,
        other => panic!("expected the retired-secret conflict, got {other:?}"),
    }
}

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

/// Regression (review F1): alice could rotate a key an admin had disabled (and so
/// free its imported token for a re-import); only an admin may now.
#[tokio::test]
async fn an_owner_cannot_rotate_a_key_an_admin_disabled() {
    let f = fixture();
    let t = "legacy-token-0123456789-disabled0";
    let id = f
        .keys
        .import(&alice(), import_req("alice", "imp", t))
        .await
        .unwrap()
        .id
        .to_string();
    f.keys.set_enabled(&admin(), &id, false).await.unwrap();
    let audit = audit_len(&f, &id).await;
    let m = forbidden(f.keys.rotate(&alice(), &id, None).await.unwrap_err());
    assert!(m.contains("only an admin can rotate"), "{m}");
    assert_eq!(audit_len(&f, &id).await, audit);
    assert_eq!(f.keys.verify(t, None, None).code, Code::Disabled);
    // Disabled by herself, she may.
    f.keys.set_enabled(&admin(), &id, true).await.unwrap();
    f.keys.set_enabled(&alice(), &id, false).await.unwrap();
    f.keys.rotate(&alice(), &id, None).await.unwrap();
    // Nothing an admin imposed was left on the key: its token is hers to import.
    f.keys
        .import(&alice(), import_req("alice", "again", t))
        .await
        .unwrap();
}

/// Regression (review F2): with an admin's `X-Tenant=acme` on her key, alice could
/// add `X_Tenant=${key.owner}` (accepted: names were compared as given), which nginx
/// reads as `x-tenant` and takes first, so the upstream saw tenant=alice. A stored
/// name with `_` is no longer sent, and an admin's headers come first.
#[tokio::test]
async fn an_owner_cannot_shadow_an_admin_header_with_underscores() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "k")).await.unwrap();
    let id = issued.view.id.to_string();
    let edit_h = |hs: &[&str]| EditKey {
        headers: Some(hs.iter().map(|s| s.to_string()).collect()),
        ..EditKey::default()
    };
    f.keys
        .edit(&admin(), &id, edit_h(&["X-Tenant=acme"]))
        .await
        .unwrap();
    let audit = audit_len(&f, &id).await;
    for attempt in [
        &["X_Tenant=${key.owner}", "X-Tenant=acme"][..],
        &["X-Tenant=acme", "X_Tenant=${key.owner}"],
        &["X-Tenant=acme", "X_Api_Key_Owner=${key.owner}"],
    ] {
        let e = f
            .keys
            .edit(&alice(), &id, edit_h(attempt))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                KeyError::Invalid {
                    field: "headers",
                    ..
                }
            ),
            "{attempt:?}: {e:?}"
        );
    }
    assert_eq!(audit_len(&f, &id).await, audit);
    // The owner's own header goes after the admin's, whatever order she gives.
    f.keys
        .edit(
            &alice(),
            &id,
            edit_h(&["X-User=${key.owner}", "x-tenant=acme"]),
        )
        .await
        .unwrap();
    let sent = sent_headers(&f.keys, issued.key.expose(), &id);
    let live = f.keys.live(issued.view.id).unwrap();
    assert_eq!(sent, ["x-tenant=acme", "X-User=alice"]);

    // A record stored before `_` was refused: its `_` header is not sent.
    let mut rec = f.keys.record(&live).unwrap();
    rec.headers = vec![
        headers::HeaderTemplate {
            name: "X_Tenant".into(),
            template: "${key.owner}".into(),
        },
        headers::HeaderTemplate {
            name: "X-Tenant".into(),
            template: "acme".into(),
        },
    ];
    store_as_is(&f.keys, rec).await;
    let sent = sent_headers(&f.keys, issued.key.expose(), &id);
    assert_eq!(sent, ["X-Tenant=acme"]);
}

/// Regression (review F3): an admin gave alice's key `sync` the header
/// `X-Tenant=${key.name}`; alice renamed the key `admin` and `/v1/auth` told the
/// upstream `x-tenant: admin`. The owner may no longer rename such a key.
#[tokio::test]
async fn an_owner_cannot_rename_a_key_whose_admin_header_uses_its_name() {
    let f = fixture();
    let mut r = req("alice", "sync");
    r.headers = vec!["X-Tenant=${key.name}".into()];
    let issued = f.keys.create(&admin(), r).await.unwrap();
    let id = issued.view.id.to_string();
    let rename = |n: &str| EditKey {
        name: Some(n.into()),
        ..EditKey::default()
    };
    let audit = audit_len(&f, &id).await;
    let m = forbidden(
        f.keys
            .edit(&alice(), &id, rename("admin"))
            .await
            .unwrap_err(),
    );
    assert!(m.contains("only an admin can rename"), "{m}");
    assert_eq!(audit_len(&f, &id).await, audit);
    let mut v = f.keys.verify(issued.key.expose(), None, None);
    let live = f.keys.resolve(&mut v).unwrap();
    assert_eq!(live.rendered_headers(&id)[0].1, "sync");
    // Other edits, and an admin's rename, are fine.
    f.keys
        .edit(
            &alice(),
            &id,
            EditKey {
                description: Some("nightly sync".into()),
                ..EditKey::default()
            },
        )
        .await
        .unwrap();
    f.keys.edit(&admin(), &id, rename("sync2")).await.unwrap();
}

/// Regression (review F4): alice moved to a group with `scopes = []` kept a key
/// (and its rotation-grace secret) that verified VALID with no route or scope
/// asked, listed as active; and `/metrics` counted keys of unconfigured owners as
/// active.
#[tokio::test]
async fn a_key_whose_owner_holds_none_of_its_scopes_is_refused_and_counted_so() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "sync")).await.unwrap();
    let id = issued.view.id.to_string();
    let old = issued.key.expose().to_owned();
    let new = f.keys.rotate(&alice(), &id, Some("p1d")).await.unwrap();
    let new = new.key.expose().to_owned();
    let bob = f.keys.create(&admin(), req("bob", "b")).await.unwrap();
    let counts = |f: &Fixture| f.keys.status_counts();
    assert_eq!(counts(&f)["active"], 2);

    let nothing = CONFIG.replace(
        "[users.alice]\ngroups = [\"Synchronizer\"]",
        "[groups.Nothing]\nscopes = []\n[users.alice]\ngroups = [\"Nothing\"]",
    );
    f.keys.reload(settings(&nothing));
    for k in [&old, &new] {
        assert_eq!(f.keys.verify(k, None, None).code, Code::InsufficientScope);
        assert_eq!(
            f.keys.verify(k, Some("catalog:read"), None).code,
            Code::InsufficientScope
        );
    }
    let view = f.keys.show(&alice(), &id).unwrap();
    assert_eq!(view.status, "no_scopes");
    assert!(
        view.details.contains("grant none of its scopes"),
        "{}",
        view.details
    );
    assert!(view.effective_scopes.is_empty());
    let c = counts(&f);
    assert_eq!((c["active"], c["no_scopes"]), (1, 1), "{c:?}");
    assert_eq!(
        f.keys.verify(bob.key.expose(), None, None).code,
        Code::Valid
    );

    // Unconfigured: counted as owner_unknown, not active.
    f.keys.reload(with_alice(None));
    let c = counts(&f);
    assert_eq!(
        (c["active"], c["no_scopes"], c["owner_unknown"]),
        (1, 0, 1),
        "{c:?}"
    );
    assert_eq!(f.keys.verify(&new, None, None).code, Code::OwnerUnknown);

    // Back: valid again, counted active.
    f.keys.reload(settings(CONFIG));
    assert_eq!(f.keys.verify(&new, None, None).code, Code::Valid);
    let c = counts(&f);
    assert_eq!((c["active"], c["owner_unknown"]), (2, 0), "{c:?}");
    // Loaded at start, the refusal holds too.
    let keys = f.reopen(settings(&nothing));
    assert_eq!(keys.verify(&new, None, None).code, Code::InsufficientScope);
    assert_eq!(keys.status_counts()["no_scopes"], 1);
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
    let mut rec = f.keys.record(&live).unwrap();
    rec.user_secret = UserSecret::Unknown;
    assert_eq!(OwnSecrets::of(&rec).unwrap().len, None);
    assert!(OwnSecrets::of(&rec)
        .unwrap()
        .found_in(&f.keys.hasher, &format!("old {token} token")));
}

/// Regression (review, "root"): an unmapped uid 0 acts as admin "root". With a
/// configured non-admin user also named "root", what the admin set on that user's
/// keys looked like the admin's own key and was not recorded as a restriction, so
/// the user could enable a key the admin disabled and clear its IP filters.
#[tokio::test]
async fn a_configured_user_named_root_is_bound_by_what_the_unmapped_root_sets() {
    let text = format!("{CONFIG}[users.root]\ngroups = [\"Synchronizer\"]\n");
    let keys = fixture_with(&text).keys;
    let unmapped_root = Actor {
        name: "root".into(),
        admin: true,
    };
    let user_root = Actor {
        name: "root".into(),
        admin: false,
    };
    let mut r = req("root", "k");
    r.ip = vec!["10.9.9.9/32".into()];
    let view = keys.create(&unmapped_root, r).await.unwrap().view;
    assert_eq!(view.admin_restrictions.ip_filters.len(), 1);
    let id = view.id.to_string();
    keys.set_enabled(&unmapped_root, &id, false).await.unwrap();
    forbidden(keys.set_enabled(&user_root, &id, true).await.unwrap_err());
    forbidden(
        keys.edit(
            &user_root,
            &id,
            EditKey {
                ip: Some(vec![]),
                ..EditKey::default()
            },
        )
        .await
        .unwrap_err(),
    );
    // A configured admin's own key stays unrestricted.
    let mut r = req("admin", "own");
    r.ip = vec!["10.9.9.9/32".into()];
    let own = keys.create(&admin(), r).await.unwrap().view;
    assert!(own.admin_restrictions.is_empty());
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

// ------------------------------------------- FC F2: headers proxies forward or trust

/// Regression (second review, FC F2): alice could give her key the header
/// `Authorization=${key.id}` (or `X-Api-Key`, `X-Forwarded-For`, ...), which a proxy
/// copying auth-answer headers by pattern sends upstream over the request's own. A
/// record stored before these names were reserved does not send them either.
#[tokio::test]
async fn an_owner_cannot_set_headers_proxies_forward_or_trust() {
    let f = fixture();
    let issued = f.keys.create(&alice(), req("alice", "k")).await.unwrap();
    let id = issued.view.id.to_string();
    for h in [
        "Authorization=${key.id}",
        "X-Api-Key=${key.id}",
        "X-Forwarded-User=${key.owner}",
        "Cookie=${key.id}",
    ] {
        for actor in [alice(), admin()] {
            let e = f
                .keys
                .edit(
                    &actor,
                    &id,
                    EditKey {
                        headers: Some(vec![h.into()]),
                        ..EditKey::default()
                    },
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&e, KeyError::Invalid { field: "headers", message } if message.contains("reserved")),
                "{h}: {e:?}"
            );
        }
    }

    let mut v = f.keys.verify(issued.key.expose(), None, None);
    let live = f.keys.resolve(&mut v).unwrap();
    let mut rec = f.keys.record(&live).unwrap();
    rec.headers = ["Authorization", "X-Forwarded-User", "X-Tenant"]
        .iter()
        .map(|n| headers::HeaderTemplate {
            name: (*n).into(),
            template: "${key.owner}".into(),
        })
        .collect();
    store_as_is(&f.keys, rec).await;
    let sent = sent_headers(&f.keys, issued.key.expose(), &id);
    assert_eq!(sent, ["X-Tenant=alice"]);
}
