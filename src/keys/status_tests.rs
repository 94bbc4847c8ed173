//! Keys per status, as `/metrics` reports them: kept by counters, not a scan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Duration;

use super::status::{counted_as, Lapse, StatusCounts};
use super::*;
use crate::model::*;
use crate::test_support::*;
use std::collections::BTreeMap;

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
