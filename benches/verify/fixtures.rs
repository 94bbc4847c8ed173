//! Stored records and settings for the generated keys.

use std::collections::{BTreeMap, BTreeSet};

use apikeyd::config::{Directory, Group, Policy, User};
use apikeyd::keys::model::{KeyKind, KeyRecord, KeyState};
use apikeyd::keys::secret::KeyHash;
use apikeyd::keys::Settings;
use chrono::Utc;
use uuid::Uuid;

pub(crate) const SCOPE: &str = "catalog:read";

/// A stored record for a generated, enabled key. Built from JSON once so that fields
/// the library adds later (with serde defaults) need no change here; then cloned.
pub(crate) fn record_template(
    now: chrono::DateTime<Utc>,
    expires: chrono::DateTime<Utc>,
) -> KeyRecord {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::nil(),
        "name": "template",
        "owner": "user0",
        "scopes": [SCOPE],
        "hash": hex::encode([0u8; 32]),
        "kind": KeyKind::Generated,
        "state": KeyState::Enabled,
        "created_at": now,
        "updated_at": now,
        "expires_at": expires,
    }))
    .expect("KeyRecord from JSON")
}

pub(crate) fn record(template: &KeyRecord, i: usize, hash: &KeyHash) -> KeyRecord {
    let mut r = template.clone();
    r.id = Uuid::now_v7();
    r.name = format!("bench-{i}");
    r.owner = format!("user{}", i % 1000);
    r.hash = hex::encode(hash);
    r
}

/// Settings where the keys' owners (`user0` to `user999`) hold `SCOPE`: a key whose
/// owner is not configured is refused.
pub(crate) fn plain_settings() -> Settings {
    let mut directory = Directory::default();
    add_bench_users(&mut directory);
    Settings {
        policy: Policy::default(),
        directory,
    }
}

fn add_bench_users(d: &mut Directory) {
    d.groups.insert(
        "bench".to_owned(),
        Group {
            scopes: BTreeSet::from([SCOPE.to_owned()]),
            create_keys: true,
            manage_all_keys: false,
        },
    );
    for i in 0..1000 {
        let name = format!("user{i}");
        d.users.insert(
            name.clone(),
            User {
                name,
                email: None,
                groups: vec!["bench".to_owned()],
                unix_user: None,
            },
        );
    }
}

/// Settings where `alice` may create keys with a few scopes.
pub(crate) fn alice_settings() -> Settings {
    let mut groups = BTreeMap::new();
    groups.insert(
        "devs".to_owned(),
        Group {
            scopes: BTreeSet::from([
                SCOPE.to_owned(),
                "catalog:write".to_owned(),
                "orders:read".to_owned(),
            ]),
            create_keys: true,
            manage_all_keys: false,
        },
    );
    let mut users = BTreeMap::new();
    users.insert(
        "alice".to_owned(),
        User {
            name: "alice".to_owned(),
            email: None,
            groups: vec!["devs".to_owned()],
            unix_user: None,
        },
    );
    let mut directory = Directory { users, groups };
    // The big database's keys keep working after `reload` to these settings.
    add_bench_users(&mut directory);
    Settings {
        // The create figures issue thousands of keys to alice.
        policy: Policy {
            max_keys_per_user: None,
            ..Policy::default()
        },
        directory,
    }
}
