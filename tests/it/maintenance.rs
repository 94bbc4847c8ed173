//! The maintenance jobs (last-used flush, expiry sweep, inactivity warning, purge) on
//! their cron schedules in the real daemon, and bad cron strings and alert settings
//! refused by `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use crate::alerts::{alert_tables, jobs_of, messages, shipped_plugins};
use crate::util::{free_port, wait_until, TestDaemon};

#[test]
fn maintenance_jobs_sweep_warn_and_purge_on_their_cron_schedules() {
    let every_second = r#"
[jobs]
last_used_flush = "* * * * * *"
expiry_sweep = "* * * * * *"
purge = "* * * * * *"
inactivity_warning = "* * * * * *"
"#;
    let mut d = TestDaemon::start_with(
        "MaxExpirationPeriod = \"p6m\"\nNotAccessedExpirationPeriod = \"p3d\"\nDefaultAlertSource = \"operator\"\nRetentionPeriod = \"p2d\"",
        &alert_tables(free_port(), &shipped_plugins(), "", every_second),
    );
    // Listed with their schedules and, soon, a last run.
    wait_until(Duration::from_secs(10), || {
        let v = d.json(&["job", "list", "--maintenance"]);
        let list = v["maintenance"].as_array().unwrap().clone();
        list.len() == 4
            && list
                .iter()
                .all(|m| m["last_run"].is_string() && m["next_run"].is_string())
    });
    let table = d.ok(&["job", "list", "--maintenance"]);
    for name in [
        "last_used_flush",
        "expiry_sweep",
        "purge",
        "inactivity_warning",
    ] {
        assert!(table.contains(name), "{table}");
    }

    // Inactivity p3d with a p7d warning lead: a new key is warned at once, once.
    let (idle, _) = d.create("alice", "idle", &["--no-notify"]);
    wait_until(Duration::from_secs(10), || !messages(&d, false).is_empty());
    std::thread::sleep(Duration::from_millis(2500));
    let warnings: Vec<Value> = jobs_of(&d, &idle)
        .into_iter()
        .filter(|j| j["kind"] == "inactivity_warning")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per idle stretch: {warnings:?}"
    );
    assert_eq!(warnings[0]["state"], "Completed");
    let m = &messages(&d, false)[0];
    assert!(m["title"].as_str().unwrap().contains("inactivity"), "{m}");

    // Expiry sweep: after the inactivity deadline the key is recorded inactive once;
    // a removed key is purged after RetentionPeriod.
    let (gone, _) = d.create("alice", "gone", &["--no-notify"]);
    d.ok(&["key", "remove", &gone]);
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", &(4 * 86400).to_string())]);
    wait_until(Duration::from_secs(10), || {
        let audit = d.ok(&["audit", "--limit", "1000"]);
        audit.contains("inactive") && audit.contains("purge")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let audit = d.json(&["audit", "--key", &idle, "--limit", "1000"]);
    let inactive = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "inactive")
        .count();
    assert_eq!(inactive, 1, "recorded once");
    assert!(d.keys().iter().all(|k| k["id"] != gone.as_str()), "purged");
    assert!(
        d.keys().iter().any(|k| k["id"] == idle.as_str()),
        "expired but retained"
    );
}

#[test]
fn bad_cron_strings_and_alert_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[jobs]\npurge = \"every night\"\nexpiry_sweep = \"0 61 * * * *\"\n[alert_sources.x]\nkind = \"plugin\"\nplugin = \"../../bin/sh\"\n[ApiKey]\nDefaultAlertSource = \"nope\"\n",
    )
    .unwrap();
    let out = crate::util::check_config(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for k in [
        "jobs.purge",
        "jobs.expiry_sweep",
        "alert_sources.x.plugin",
        "ApiKey.DefaultAlertSource",
    ] {
        assert!(err.contains(k), "{k} missing: {err}");
    }
}
