//! What the unit tests of the key and job rules share: keys and alerts on the
//! in-memory store (or, for the store-and-index agreement tests, on redb), a manual clock at 2026-08-31 10:00 UTC, the test configuration
//! (the Raynet groups in small), the actors and a create request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use crate::alerts::Alerts;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::keys::secret::{KeyHasher, ServerSecret};
use crate::keys::{Actor, CreateKey, KeyError, KeyQuery, KeyView, Keys, PageRequest, Settings};
use crate::model::{AuditEntry, KeyRecord};
use crate::store::{MemoryStore, RedbStore, Storage};

/// Users admin (Admin), alice and bob (Synchronizer), carol (User).
pub(crate) const CONFIG: &str = r#"
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

pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Storage>,
    /// The redb store's directory, for as long as the fixture lives.
    _dir: Option<tempfile::TempDir>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) keys: Arc<Keys>,
    pub(crate) alerts: Alerts,
    /// The configuration whose alert settings are in force, if any.
    alerting: Option<String>,
}

impl Fixture {
    /// What a restart would build: new keys on the same store, with `settings` (and
    /// the fixture's alert settings).
    pub(crate) fn reopen(&self, settings: Settings) -> Keys {
        let keys = Keys::open(self.store.clone(), hasher(), self.clock.clone(), settings).unwrap();
        if let Some(text) = &self.alerting {
            keys.alerting().set_config(parse(text).alerts);
        }
        keys
    }

    /// [`Self::reopen`] with the configuration `text`, and alerts over it.
    pub(crate) fn restart(&self, text: &str) -> (Arc<Keys>, Alerts) {
        let keys = Arc::new(self.reopen(settings(text)));
        let alerts = Alerts::new(keys.clone(), self.store.clone());
        (keys, alerts)
    }
}

pub(crate) fn parse(text: &str) -> Config {
    crate::config::from_text(text).unwrap()
}

pub(crate) fn settings(text: &str) -> Settings {
    Settings::from(&parse(text))
}

pub(crate) fn hasher() -> KeyHasher {
    KeyHasher::new(&ServerSecret::from_bytes(vec![9; 32]).unwrap())
}

/// Keys on a fresh store with the configuration `text` (its alert settings left
/// at their defaults; see [`fixture_with_alerts`]).
pub(crate) fn fixture_with(text: &str) -> Fixture {
    fixture_on(Arc::new(MemoryStore::new()), None, text)
}

pub(crate) fn fixture_on(
    store: Arc<dyn Storage>,
    dir: Option<tempfile::TempDir>,
    text: &str,
) -> Fixture {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap());
    let keys =
        Arc::new(Keys::open(store.clone(), hasher(), clock.clone(), settings(text)).unwrap());
    let alerts = Alerts::new(keys.clone(), store.clone());
    Fixture {
        store,
        _dir: dir,
        clock,
        keys,
        alerts,
        alerting: None,
    }
}

/// [`fixture_with`], with the alert sources and defaults of `text` in force.
pub(crate) fn fixture_with_alerts(text: &str) -> Fixture {
    with_alerts(fixture_with(text), text)
}

/// [`fixture_with_alerts`] on a redb store in a temporary directory: for the tests
/// that check the index against what a restart would load (through redb's own
/// decoder) and cut changes off mid-commit (a durable commit takes long enough).
pub(crate) fn fixture_on_redb(text: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("db.redb")).unwrap());
    with_alerts(fixture_on(store, Some(dir), text), text)
}

fn with_alerts(mut f: Fixture, text: &str) -> Fixture {
    f.keys.alerting().set_config(parse(text).alerts);
    f.alerting = Some(text.to_owned());
    f
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(CONFIG)
}

pub(crate) fn admin() -> Actor {
    Actor {
        name: "admin".into(),
        admin: true,
    }
}

pub(crate) fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        admin: false,
    }
}

pub(crate) fn req(user: &str, name: &str) -> CreateKey {
    CreateKey {
        user: Some(user.into()),
        name: name.into(),
        ..CreateKey::default()
    }
}

/// Write `rec` as it is, past the rules (as a record stored by an older version
/// would be), and publish it.
pub(crate) async fn store_as_is(keys: &Keys, rec: KeyRecord) {
    let writer = keys.lock_writer().await;
    let audit = AuditEntry::new(
        keys.clock().now(),
        "admin",
        "edit",
        Some(rec.id),
        String::new(),
    );
    let change = crate::store::Change {
        put_keys: vec![rec],
        audit: vec![audit],
        ..Default::default()
    };
    keys.commit(writer, change).await.unwrap();
}

/// The first page of the keys visible to `actor`.
pub(crate) async fn list(
    keys: &Keys,
    actor: &Actor,
    user: Option<&str>,
    include_removed: bool,
) -> Result<Vec<KeyView>, KeyError> {
    let query = KeyQuery {
        owner: user.map(str::to_owned),
        include_removed,
        ..KeyQuery::default()
    };
    Ok(keys
        .list_page(actor, &query, &PageRequest::default())
        .await?
        .items)
}

/// The newest `limit` audit entries visible to `actor`.
pub(crate) async fn audit(
    keys: &Keys,
    actor: &Actor,
    key: Option<&str>,
    limit: usize,
) -> Result<Vec<AuditEntry>, KeyError> {
    let page = PageRequest {
        cursor: None,
        limit: Some(limit),
    };
    Ok(keys.audit_page(actor, key, &page).await?.items)
}

/// The headers forward-auth sends for `secret` (key `id`), as `NAME=VALUE`.
pub(crate) fn sent_headers(keys: &Keys, secret: &str, id: &str) -> Vec<String> {
    let mut v = keys.verify(secret, None, None);
    let live = keys.resolve(&mut v).unwrap();
    live.rendered_headers(id)
        .into_iter()
        .map(|(t, v)| format!("{}={v}", t.name))
        .collect()
}
