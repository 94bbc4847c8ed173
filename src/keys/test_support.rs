//! What the key tests share: a store in a temporary directory, a manual clock at
//! 2026-08-31 10:00 UTC, the test configuration (the Raynet groups in small), the
//! actors and a create request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use super::secret::{KeyHasher, ServerSecret};
use super::{Actor, CreateKey, Keys, Settings};
use crate::clock::ManualClock;
use crate::config::{self, Config, Environment};
use crate::store::Store;

/// Users admin (Admin), alice and bob (Synchronizer), carol (User).
pub(super) const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y"
[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
[groups.User]
scopes = ["catalog:read"]
[groups.Admin]
scopes = ["catalog:read", "apikeyd:admin"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
[users.alice]
groups = ["Synchronizer"]
[users.bob]
groups = ["Synchronizer"]
[users.carol]
groups = ["User"]
"#;

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
    pub(super) clock: Arc<ManualClock>,
    pub(super) keys: Keys,
}

pub(super) fn parse(text: &str) -> Config {
    config::parse(
        std::path::Path::new("t.toml"),
        text,
        &Environment::default(),
    )
    .unwrap()
}

pub(super) fn settings(text: &str) -> Settings {
    let c = parse(text);
    Settings {
        policy: c.policy,
        directory: c.directory,
    }
}

pub(super) fn hasher() -> KeyHasher {
    KeyHasher::new(&ServerSecret::from_bytes(vec![9; 32]).unwrap())
}

/// Keys on a fresh store with the configuration `text` (its alert settings left
/// at their defaults; see [`fixture_with_alerts`]).
pub(super) fn fixture_with(text: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap());
    let store = Arc::new(Store::open(&path).unwrap());
    let keys = Keys::open(store, hasher(), clock.clone(), settings(text)).unwrap();
    Fixture {
        _dir: dir,
        path,
        clock,
        keys,
    }
}

/// [`fixture_with`], with the alert sources and defaults of `text` in force.
pub(super) fn fixture_with_alerts(text: &str) -> Fixture {
    let f = fixture_with(text);
    f.keys.set_alert_config(parse(text).alerts);
    f
}

pub(super) fn fixture() -> Fixture {
    fixture_with(CONFIG)
}

pub(super) fn admin() -> Actor {
    Actor {
        name: "admin".into(),
        admin: true,
    }
}

pub(super) fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        admin: false,
    }
}

pub(super) fn req(user: &str, name: &str) -> CreateKey {
    CreateKey {
        user: Some(user.into()),
        name: name.into(),
        ..CreateKey::default()
    }
}

/// Write `rec` as it is, past the rules (as a record stored by an older version
/// would be), and publish it.
pub(super) async fn store_as_is(keys: &Keys, rec: super::model::KeyRecord) {
    let writer = keys.lock_writer().await;
    let audit = keys.audit_entry(&admin(), "edit", rec.id, String::new());
    keys.commit_and_publish_with(writer, rec, audit, Default::default(), vec![])
        .await
        .unwrap();
}

/// The headers forward-auth sends for `secret` (key `id`), as `NAME=VALUE`.
pub(super) fn sent_headers(keys: &Keys, secret: &str, id: &str) -> Vec<String> {
    let mut v = keys.verify(secret, None, None);
    let live = keys.resolve(&mut v).unwrap();
    live.rendered_headers(id)
        .into_iter()
        .map(|(t, v)| format!("{}={v}", t.name))
        .collect()
}
