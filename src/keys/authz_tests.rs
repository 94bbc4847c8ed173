//! What a key may do as its owner's users and groups change: privileges that follow
//! a reload, and keys whose owner holds none of their scopes. The helpers here are
//! shared with the other authorization tests (`restriction_tests`, `own_secret_tests`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};

use super::index::Index;
use super::secret::Secret;
use super::*;
use crate::model::*;
use crate::test_support::*;

/// CONFIG with alice's groups replaced, or alice left out (`None`).
pub(super) fn with_alice(groups: Option<&str>) -> Settings {
    let text = match groups {
        Some(g) => CONFIG.replace(
            "[users.alice]\ngroups = [\"Synchronizer\"]",
            &format!("[users.alice]\ngroups = [{g}]"),
        ),
        None => CONFIG.replace("[users.alice]\ngroups = [\"Synchronizer\"]\n", ""),
    };
    settings(&text)
}

pub(super) fn forbidden(e: KeyError) -> String {
    match e {
        KeyError::Forbidden(m) => m,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

pub(super) async fn audit_len(f: &Fixture, id: &str) -> usize {
    audit(&f.keys, &admin(), Some(id), 100).await.unwrap().len()
}

pub(super) fn bob() -> Actor {
    Actor {
        name: "bob".into(),
        admin: false,
    }
}

pub(super) fn import_req(user: &str, name: &str, token: &str) -> CreateKey {
    let mut r = req(user, name);
    r.secret = Some(Secret::new(token.into()));
    r
}

pub(super) fn retired_conflict(e: KeyError) -> String {
    match e {
        KeyError::Conflict(m) if m.contains("removed or rotated") => m,
        other => panic!("expected the retired-secret conflict, got {other:?}"),
    }
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
    let view = f.keys.show(&admin(), &id).await.unwrap();
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
    let view = f.keys.show(&admin(), &id).await.unwrap();
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

// ------------------------------------------------------------ review of issue 9

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
    let view = f.keys.show(&alice(), &id).await.unwrap();
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
