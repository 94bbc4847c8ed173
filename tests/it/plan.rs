//! `apikeyctl plan` against the real daemon, with its clock shifted: what is coming
//! for an admin and for an owner, and `plan --policy` comparing a new file with the
//! one in force without applying it; a bad file is refused with every problem
//! named, changes nothing, and no file it names is read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::util::TestDaemon;

const POLICY: &str = r#"MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p20d"
DefaultExpirationPeriod = "p6m"
DefaultAlertSource = "operator"
InactivityWarningLeadTime = "p7d""#;

/// The uid `alice` maps to in the test configuration.
const NOBODY: u32 = 65534;

fn events_of<'a>(plan: &'a Value, id: &str, kind: &str) -> Vec<&'a Value> {
    plan["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key_id"] == id && e["kind"] == kind)
        .collect()
}

#[test]
fn plan_shows_what_is_coming_and_plan_policy_what_a_new_file_would_change() {
    let mut d = TestDaemon::start_with(POLICY, "");
    let (hard, _) = d.create("alice", "hard", &["--expires-in", "p10d", "--no-notify"]);
    let (idle, _) = d.create("alice", "idle", &["--no-notify"]);
    let (notified, _) = d.create(
        "bob",
        "notified",
        &["--expires-in", "p10d", "--notify-before", "p2d"],
    );
    // Five days on: hard expires in 5 days, idle through inactivity in 15 and is
    // warned in 8, bob's notification fires in 3.
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", &(5 * 86_400).to_string())]);

    let p = d.json(&["plan", "--within", "p20d"]);
    assert_eq!(p["within"], "p20d");
    let e = events_of(&p, &hard, "expiry");
    assert_eq!(e.len(), 1, "{p:#}");
    assert_eq!(e[0]["limit"], "hard");
    let e = events_of(&p, &idle, "expiry");
    assert_eq!(e[0]["limit"], "inactivity");
    assert!(e[0]["detail"].as_str().unwrap().contains("never used"));
    let w = events_of(&p, &idle, "inactivity_warning");
    assert_eq!(w.len(), 1, "{p:#}");
    assert_eq!(w[0]["source"], "operator");
    assert_eq!(events_of(&p, &notified, "expiry").len(), 1);
    let n = events_of(&p, &notified, "notification");
    assert_eq!(n.len(), 1, "{p:#}");
    assert!(n[0]["job_id"].is_string());
    // Admins see the maintenance jobs and the runs that will change something.
    assert_eq!(p["maintenance"].as_array().unwrap().len(), 4);
    assert!(p["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "maintenance" && e["task"] == "expiry_sweep"));
    // The text form: by day, then owner.
    let text = d.ok(&["plan", "--within", "p20d"]);
    assert!(text.contains("event(s)"), "{text}");
    assert!(text.contains("\n  alice\n"), "{text}");
    assert!(
        text.contains(&format!("idle ({idle}): expires through inactivity")),
        "{text}"
    );
    assert!(text.contains("Maintenance jobs:"), "{text}");
    // Times in local time with TZ (or --local): each event's time carries the offset.
    let tokyo = d
        .ctl_command(&["plan", "--within", "p20d"])
        .env("TZ", "Asia/Tokyo")
        .output()
        .unwrap();
    let tokyo = String::from_utf8(tokyo.stdout).unwrap();
    assert!(tokyo.contains(&format!("+09:00  idle ({idle})")), "{tokyo}");
    assert!(!text.contains("+09:00"), "{text}");

    // An owner sees their own keys only, and no maintenance.
    let out = d.ctl_as(Some(NOBODY), &["plan", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(mine["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["owner"] == "alice"));
    assert!(!events_of(&mine, &idle, "expiry").is_empty());
    assert!(mine["maintenance"].as_array().unwrap().is_empty());

    // A new file: inactivity after p3d (idle is past it), bob gone, Synchronizer
    // without catalog:sync.
    let current = std::fs::read_to_string(&d.config).unwrap();
    let new = current
        .replace("worker_threads = 2", "worker_threads = 1")
        .replace(
            "NotAccessedExpirationPeriod = \"p20d\"",
            "NotAccessedExpirationPeriod = \"p3d\"",
        )
        .replace(
            "[users.bob]\nemail = \"bob@example.com\"\ngroups = [\"Synchronizer\"]\n",
            "",
        )
        .replace(
            "scopes = [\"catalog:read\", \"catalog:sync\"]",
            "scopes = [\"catalog:read\"]",
        );
    assert_ne!(new, current);
    let new_file = d.path("new.toml");
    std::fs::write(&new_file, &new).unwrap();
    let new_path = new_file.to_str().unwrap();
    let p = d.json(&["plan", "--policy", new_path]);
    let change = |id: &str| {
        p["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {p:#}"))
    };
    assert_eq!(change(&idle)["expiry"]["at_once"], true);
    assert_eq!(change(&idle)["lost_scopes"][0], "catalog:sync");
    assert_eq!(change(&notified)["owner_lost"], true);
    assert_eq!(p["counts"]["lose_owner"], 1);
    let text = d.ok(&["plan", "--policy", new_path]);
    assert!(text.contains("EXPIRED OR INACTIVE AT ONCE"), "{text}");
    assert!(text.contains("no longer configured"), "{text}");
    // Listeners are read once: the plan says a reload would not apply them.
    assert!(
        text.contains("[server] differs from the settings apikeyd started with"),
        "{text}"
    );
    assert!(!text.contains("[store]"), "{text}");
    // Nothing applied: the key is still active, bob still configured.
    assert_eq!(d.json(&["key", "show", &idle])["status"], "active");
    assert_eq!(d.json(&["key", "show", &notified])["status"], "active");

    // Only admins plan a configuration.
    let out = d.ctl_as(Some(NOBODY), &["plan", "--policy", new_path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admins only"));

    // A bad file: every problem named, nothing applied, and the file it names as
    // the SMTP password is not read (its content appears nowhere).
    let secret = d.path("smtp-password");
    std::fs::write(&secret, "TOPSECRET-do-not-echo\n").unwrap();
    let bad = format!(
        "{}\n[smtp]\npassword_file = \"{}\"\n",
        new.replace(
            "NotAccessedExpirationPeriod = \"p3d\"",
            "NotAccessedExpirationPeriod = \"p3dx\""
        ),
        secret.display()
    );
    let bad_file = d.path("bad.toml");
    std::fs::write(&bad_file, bad).unwrap();
    let err = d.fails(&["plan", "--policy", bad_file.to_str().unwrap()]);
    assert!(err.contains("ApiKey.NotAccessedExpirationPeriod"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");
    assert!(!d.log_text().contains("TOPSECRET"));
    let err = d.fails(&["plan", "--policy", d.path("missing.toml").to_str().unwrap()]);
    assert!(err.contains("cannot read"), "{err}");
    // The daemon runs on with the configuration in force.
    let whoami = d.json(&["whoami"]);
    assert!(
        whoami["policy"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("(p20d)")),
        "{whoami}"
    );
    assert_eq!(d.json(&["key", "show", &idle])["status"], "active");
}
