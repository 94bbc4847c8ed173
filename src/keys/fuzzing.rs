//! The `admin_json` fuzz target's check (fuzz/, through the non-default `fuzzing`
//! feature): admin request bodies read as the handlers read them, then checked with
//! the functions the handlers call, over a [`Keys`] on a memory store. Never in a
//! release build: it holds a fixed server secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};

use super::create::{check_new, check_token};
use super::rules::{
    check_description, check_headers, check_ips, check_name, check_scopes, optional_period,
    parse_time,
};
use super::secret::{KeyHasher, Secret, ServerSecret};
use super::types::{Actor, CreateKey, EditKey, NotifyRequest, RotateKey, Settings};
use super::Keys;

const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
[groups.Admin]
scopes = ["catalog:read", "catalog:write", "apikeyd:admin"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
[users.alice]
groups = ["Synchronizer"]
"#;

struct Fixture {
    keys: Arc<Keys>,
    settings: Settings,
    now: DateTime<Utc>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let c = crate::config::parse(
            Path::new("test.toml"),
            CONFIG,
            &crate::config::Environment::default(),
        )
        .unwrap();
        let store = Arc::new(crate::store::MemoryStore::new());
        let hasher = KeyHasher::new(&ServerSecret::from_bytes(vec![7; 32]).unwrap());
        let settings = Settings::from(&c);
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let keys = Arc::new(Keys::open(store, hasher, clock, settings.clone()).unwrap());
        Fixture {
            keys,
            settings,
            // A fixed instant, so a crash found replays the same way.
            now: Utc.with_ymd_and_hms(2026, 8, 31, 12, 0, 0).unwrap(),
        }
    })
}

/// The first byte picks the body type and the actor, the rest is the JSON body.
/// Nothing may panic; a body that is read must check to a result.
pub(crate) fn admin_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let actor = Actor {
        name: if pick & 0x10 == 0 { "admin" } else { "alice" }.into(),
        admin: pick & 0x10 == 0,
    };
    match pick % 4 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<CreateKey>(body) {
                // As `Keys::import` does first for a user-defined secret.
                if let Some(s) = &req.secret {
                    let _ = check_token(s.expose(), f.settings.policy.min_imported_secret_length);
                }
                let secret = Secret::new(format!("akd_{}", "x".repeat(49)));
                let _ = check_new(&f.keys, &actor, &req, &f.settings, &secret, f.now);
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<EditKey>(body) {
                // What `Keys::edit` checks of each field before it touches a record.
                if let Some(n) = &req.name {
                    let _ = check_name(n, "");
                }
                if let Some(d) = &req.description {
                    let _ = check_description(d, "");
                }
                if let Some(s) = &req.scopes {
                    let _ = check_scopes(s);
                }
                if let Some(ips) = &req.ip {
                    let _ = check_ips(ips);
                }
                if let Some(h) = &req.headers {
                    let _ = check_headers(h);
                }
                if let Some(t) = &req.expires_at {
                    let _ = parse_time("expires_at", t);
                }
                if let Ok(Some(p)) = optional_period("expires_in", req.expires_in.as_deref()) {
                    let _ = p.add_to(f.now);
                }
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<RotateKey>(body) {
                let _ = optional_period("grace", req.grace.as_deref());
                let _ = optional_period("max_grace", req.max_grace.as_deref());
            }
        }
        _ => {
            if let Ok(req) = serde_json::from_slice::<NotifyRequest>(body) {
                if let Some(t) = &req.at {
                    let _ = parse_time("at", t);
                }
                let _ = optional_period("before", req.before.as_deref());
            }
        }
    }
}
