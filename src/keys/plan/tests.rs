//! The plan with an injected clock: expiries by hard limit and by inactivity, a
//! notification and an inactivity warning ahead, the maintenance runs that will
//! change something, what an owner sees; and a new configuration compared with
//! the one in force (expiry moved, inactive at once, scopes and owner lost, the
//! MaxExpirationPeriod that existing keys keep).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};

use super::*;
use crate::keys::CreateKey;
use crate::test_support::{admin, alice, fixture_with_alerts, parse, Fixture, CONFIG};

/// The shared test configuration with 20 days of inactivity, operator warnings a
/// week ahead and a day of retention.
fn config() -> String {
    let from = "NotAccessedExpirationPeriod = \"p3m\"\nDefaultExpirationPeriod = \"p1y\"\n";
    assert!(CONFIG.contains(from));
    CONFIG.replace(
        from,
        "NotAccessedExpirationPeriod = \"p20d\"\nDefaultExpirationPeriod = \"p6m\"\n\
         DefaultAlertSource = \"operator\"\nInactivityWarningLeadTime = \"p7d\"\n\
         RetentionPeriod = \"p1d\"\n",
    )
}

/// Every maintenance job runs on the hour.
struct Hourly;

impl Runs for Hourly {
    fn next_run(&self, _: Task, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let hour = t.duration_trunc(Duration::hours(1)).ok()?;
        Some(if hour == t {
            t
        } else {
            hour + Duration::hours(1)
        })
    }
}

/// 2026-08-31 10:00 UTC (the fixture's start) plus `days`.
fn day(days: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap() + Duration::days(days)
}

async fn key(f: &Fixture, owner: &str, name: &str, expires_in: &str, notify: Option<&str>) -> Uuid {
    let req = CreateKey {
        user: Some(owner.into()),
        name: name.into(),
        expires_in: Some(expires_in.into()),
        notify_before: notify.map(str::to_owned),
        no_notification: notify.is_none(),
        ..CreateKey::default()
    };
    f.keys.create(&admin(), req).await.unwrap().view.id
}

async fn plan(f: &Fixture, actor: &Actor, within: &str) -> Plan {
    let ask = Ask::parse(Some(within), None).unwrap();
    f.keys.plan(actor, &ask, Arc::new(Hourly)).await.unwrap()
}

fn of(plan: &Plan, id: Uuid, kind: EventKind) -> Vec<&Event> {
    plan.events
        .iter()
        .filter(|e| e.key_id == Some(id) && e.kind == kind)
        .collect()
}

fn maintenance(plan: &Plan, task: Task) -> Vec<(DateTime<Utc>, usize)> {
    plan.events
        .iter()
        .filter(|e| e.task == Some(task))
        .map(|e| (e.at, e.keys.unwrap()))
        .collect()
}

#[tokio::test]
async fn plan_lists_expiries_notifications_warnings_and_maintenance_runs() {
    let f = fixture_with_alerts(&config());
    // Hard limit in 10 days, before the 20 days of inactivity.
    let hard = key(&f, "alice", "hard", "p10d", None).await;
    // Hard limit in 6 months: inactivity comes first, in 20 days if not used.
    let idle = key(&f, "alice", "idle", "p6m", None).await;
    // Bob's key is notified 2 days before its expiry.
    let notified = key(&f, "bob", "notified", "p10d", Some("p2d")).await;

    let p = plan(&f, &admin(), "p30d").await;
    assert_eq!((p.now, p.until), (day(0), day(30)));

    let e = of(&p, hard, EventKind::Expiry);
    assert_eq!(e.len(), 1, "{p:#?}");
    assert_eq!((e[0].at, e[0].limit.as_deref()), (day(10), Some("hard")));
    assert_eq!(e[0].owner.as_deref(), Some("alice"));
    // A key whose hard limit comes first gets no inactivity warning.
    assert!(of(&p, hard, EventKind::InactivityWarning).is_empty());

    let e = of(&p, idle, EventKind::Expiry);
    assert_eq!(
        (e[0].at, e[0].limit.as_deref()),
        (day(20), Some("inactivity"))
    );
    assert!(e[0].detail.contains("if not used again"), "{}", e[0].detail);
    // Warned by the first warning run 7 days before.
    let w = of(&p, idle, EventKind::InactivityWarning);
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].at, w[0].source.as_deref()),
        (day(13), Some("operator"))
    );
    assert!(w[0].job_id.is_none(), "not scheduled yet");

    // The notification job fires 2 days before the expiry.
    let n = of(&p, notified, EventKind::Notification);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].at, day(8));
    assert!(n[0].job_id.is_some());
    assert_eq!(n[0].source.as_deref(), Some("operator"));

    // The runs that will change something: two keys expire at day 10, one at 20;
    // purged a day (RetentionPeriod) after.
    assert_eq!(
        maintenance(&p, Task::ExpirySweep),
        [(day(10), 2), (day(20), 1)]
    );
    assert_eq!(maintenance(&p, Task::Purge), [(day(11), 2), (day(21), 1)]);
    assert_eq!(maintenance(&p, Task::InactivityWarning), [(day(13), 1)]);
    assert_eq!(p.maintenance.len(), 4);
    // In time order.
    assert!(p.events.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(p.total, p.events.len());

    // An owner sees their own keys, and no maintenance.
    let mine = plan(&f, &alice(), "p30d").await;
    assert!(mine
        .events
        .iter()
        .all(|e| e.owner.as_deref() == Some("alice")));
    assert_eq!(of(&mine, idle, EventKind::Expiry).len(), 1);
    assert!(mine.maintenance.is_empty());

    // A shorter window, and a limit that keeps the earliest.
    let soon = plan(&f, &admin(), "p9d").await;
    let kinds: Vec<EventKind> = soon.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Notification]);
    let ask = Ask::parse(Some("p30d"), Some(2)).unwrap();
    let cut = f.keys.plan(&admin(), &ask, Arc::new(Hourly)).await.unwrap();
    let (runs, keys): (Vec<&Event>, Vec<&Event>) = cut
        .events
        .iter()
        .partition(|e| e.kind == EventKind::Maintenance);
    // The earliest two of each: the keys' events, and the maintenance runs.
    assert_eq!((keys.len(), runs.len()), (2, 2));
    assert_eq!((keys[0].at, keys[1].at), (day(8), day(10)));
    assert_eq!(cut.total, p.total);
}

#[tokio::test]
async fn plan_follows_the_clock_and_the_last_use() {
    let f = fixture_with_alerts(&config());
    let idle = key(&f, "alice", "idle", "p6m", None).await;
    // 15 days on, the warning is due now (at the next run) and the key expires in 5.
    f.clock.set(day(15));
    let p = plan(&f, &admin(), "p30d").await;
    assert_eq!(of(&p, idle, EventKind::Expiry)[0].at, day(20));
    assert_eq!(of(&p, idle, EventKind::InactivityWarning)[0].at, day(15));
    // Past the deadline the key is inactive: no expiry ahead, the sweep records it
    // at its next run.
    f.clock.set(day(20) + Duration::minutes(30));
    let p = plan(&f, &admin(), "p30d").await;
    assert!(of(&p, idle, EventKind::Expiry).is_empty());
    assert_eq!(
        maintenance(&p, Task::ExpirySweep),
        [(day(20) + Duration::hours(1), 1)]
    );
}

#[tokio::test]
async fn bad_windows_and_limits_are_refused() {
    for (within, limit) in [("6m", None), ("p0d", None), ("p30d", Some(0))] {
        assert!(
            Ask::parse(Some(within), limit).is_err(),
            "{within} {limit:?}"
        );
    }
}

/// The configuration in force with `edit` applied to its text.
fn new_config(edit: &[(&str, &str)]) -> crate::config::Config {
    let mut text = config();
    for (from, to) in edit {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    parse(&text)
}

async fn plan_policy_as(
    f: &Fixture,
    actor: &Actor,
    edit: &[(&str, &str)],
) -> Result<PolicyPlan, KeyError> {
    let new = new_config(edit);
    let ask = Ask::parse(Some("p30d"), None).unwrap();
    let settings = Settings::from(&new);
    f.keys
        .plan_policy(actor, settings, new.alerts, &ask, Arc::new(Hourly))
        .await
}

async fn plan_policy(f: &Fixture, edit: &[(&str, &str)]) -> PolicyPlan {
    plan_policy_as(f, &admin(), edit).await.unwrap()
}

fn change(p: &PolicyPlan, id: Uuid) -> &KeyChange {
    p.keys
        .iter()
        .find(|c| c.key_id == id)
        .unwrap_or_else(|| panic!("{id} not in {p:#?}"))
}

#[tokio::test]
async fn a_new_policy_moves_expiries_and_makes_keys_inactive_at_once() {
    let f = fixture_with_alerts(&config());
    let idle = key(&f, "alice", "idle", "p6m", None).await;
    f.clock.set(day(15));
    // p20d → p10d of inactivity: 15 days idle is past it.
    let p = plan_policy(
        &f,
        &[(
            "NotAccessedExpirationPeriod = \"p20d\"",
            "NotAccessedExpirationPeriod = \"p10d\"",
        )],
    )
    .await;
    let c = change(&p, idle);
    let e = c.expiry.as_ref().unwrap();
    assert_eq!((e.from, e.to), (Some(day(20)), Some(day(10))));
    assert!(e.at_once);
    // Its warning, due now, would not be sent: the key is inactive already.
    let n = &c.notifications[0];
    assert_eq!(n.kind, EventKind::InactivityWarning);
    assert_eq!((n.from, n.to), (Some(day(15)), None));
    assert_eq!((p.counts.expiry_moves, p.counts.expire_at_once), (1, 1));
    // Nothing was applied.
    assert_eq!(
        f.keys.settings().policy.not_accessed_expiration,
        parse(&config()).policy.not_accessed_expiration
    );
    let now = plan(&f, &admin(), "p30d").await;
    assert_eq!(of(&now, idle, EventKind::Expiry)[0].at, day(20));
}

/// A shorter MaxExpirationPeriod limits keys created or edited from then on: it
/// does not shorten existing expiries (nothing in the daemon does), so the plan
/// says which keys would lie beyond it, and that they keep their expiry.
#[tokio::test]
async fn a_shorter_max_expiration_keeps_existing_expiries_and_says_so() {
    let f = fixture_with_alerts(&config());
    let long = key(&f, "alice", "long", "p6m", None).await;
    let short = key(&f, "alice", "short", "p10d", None).await;
    let p = plan_policy(
        &f,
        &[(
            "MaxExpirationPeriod = \"p6m\"",
            "MaxExpirationPeriod = \"p1m\"",
        )],
    )
    .await;
    let c = change(&p, long);
    assert!(c.beyond_max);
    assert!(c.expiry.is_none(), "{c:?}");
    assert!(p.keys.iter().all(|c| c.key_id != short));
    assert_eq!(p.counts.beyond_max, 1);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("MaxExpirationPeriod p6m -> p1m") && n.contains("1 key(s)")),
        "{:?}",
        p.notes
    );
}

#[tokio::test]
async fn a_new_directory_takes_scopes_and_owners() {
    let f = fixture_with_alerts(&config());
    let sync = key(&f, "alice", "sync", "p6m", None).await;
    let bobs = key(&f, "bob", "b", "p6m", None).await;
    let p = plan_policy(
        &f,
        &[
            (
                "scopes = [\"catalog:read\", \"catalog:sync\"]",
                "scopes = [\"catalog:read\"]",
            ),
            ("[users.bob]\ngroups = [\"Synchronizer\"]\n", ""),
        ],
    )
    .await;
    let c = change(&p, sync);
    assert_eq!(c.lost_scopes, ["catalog:sync"]);
    assert!(!c.refused && !c.owner_lost);
    let c = change(&p, bobs);
    assert!(c.owner_lost);
    assert_eq!((p.counts.lose_scopes, p.counts.lose_owner), (1, 1));
    assert!(
        p.notes.iter().any(|n| n.contains("users 4 -> 3")),
        "{:?}",
        p.notes
    );
    // Every scope gone: refused.
    let p = plan_policy(
        &f,
        &[(
            "scopes = [\"catalog:read\", \"catalog:sync\"]",
            "scopes = [\"catalog:write\"]",
        )],
    )
    .await;
    assert!(change(&p, sync).refused);
    // The same configuration changes nothing.
    let same = plan_policy(&f, &[]).await;
    assert_eq!(same.total, 0, "{same:#?}");

    // The other way: with the narrower one in force, the file that grants more
    // shows the widening an admin is about to make.
    let narrower = [
        (
            "scopes = [\"catalog:read\", \"catalog:sync\"]",
            "scopes = [\"catalog:read\"]",
        ),
        ("[users.bob]\ngroups = [\"Synchronizer\"]\n", ""),
    ];
    f.keys.reload(Settings::from(&new_config(&narrower)));
    let p = plan_policy(&f, &[]).await;
    let c = change(&p, sync);
    assert_eq!(c.gained_scopes, ["catalog:sync"]);
    assert!(c.lost_scopes.is_empty() && !c.owner_regained);
    let c = change(&p, bobs);
    assert!(c.owner_regained && !c.refused, "{c:?}");
    assert!(!c.gained_scopes.is_empty());
    assert_eq!((p.counts.gain_scopes, p.counts.regain_owner), (1, 1));
    assert_eq!((p.counts.lose_scopes, p.counts.lose_owner), (0, 0));
}

#[tokio::test]
async fn only_admins_plan_a_configuration() {
    let f = fixture_with_alerts(&config());
    let e = plan_policy_as(&f, &alice(), &[]).await.unwrap_err();
    assert!(matches!(e, KeyError::Forbidden(_)), "{e}");
}

/// Many keys, read a chunk at a time: the answer keeps the earliest `limit`
/// events and counts them all.
#[tokio::test]
async fn a_plan_over_many_keys_lists_the_limit_and_counts_them_all() {
    let f = fixture_with_alerts(&config());
    let scopes = ["catalog:read".to_owned()];
    let n = 3 * crate::keys::index::SCAN_CHUNK + 7;
    crate::keys::seed(
        &*f.store,
        &crate::test_support::hasher(),
        "alice",
        &scopes,
        n,
        day(0),
        Some(day(10)),
    )
    .unwrap();
    let keys = f.reopen(crate::test_support::settings(&config()));
    let ask = Ask::parse(Some("p30d"), Some(10)).unwrap();
    let p = keys.plan(&admin(), &ask, Arc::new(Hourly)).await.unwrap();
    // Every key expires at day 10; the sweep and the purge run once for all, and
    // the limit that cuts the keys' events leaves them.
    assert_eq!(p.total, n + 2);
    assert_eq!(p.events.len(), 12);
    let expiries = p.events.iter().filter(|e| e.kind == EventKind::Expiry);
    assert_eq!(expiries.count(), 10);
    assert_eq!(maintenance(&p, Task::ExpirySweep), [(day(10), n)]);
    assert_eq!(maintenance(&p, Task::Purge), [(day(11), n)]);
}
