//! Who may change what: restrictions an admin set that the key's owner cannot lift,
//! and headers an owner cannot forge or shadow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::authz_tests::{audit_len, forbidden, import_req};
use super::secret::Secret;
use super::*;
use crate::model::*;
use crate::test_support::*;

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
    let view = f.keys.show(&alice(), &id).await.unwrap();
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
    let view = f.keys.show(&alice(), &id).await.unwrap();
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
    let view = f.keys.show(&alice(), &id).await.unwrap();
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

// ------------------------------------------------------------ review of issue 9

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
    let mut rec = f.keys.record(&live).await.unwrap();
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
    let mut rec = f.keys.record(&live).await.unwrap();
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
