//! Alert jobs through the real daemon and apikeyctl: the notification rules (when a
//! job is made, moved or cancelled, defaults and bad input), and the helpers the
//! other alert tests share (`alert_email`, `alert_delivery`, `alert_plugins`,
//! `maintenance`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::smtp::Smtp;
use crate::util::{free_port, TestDaemon, DEFAULT_POLICY};

/// A time at least `secs` whole seconds from now, written to the second. Rounded
/// up, not down: `at(1)` written as the next second was sometimes a few
/// milliseconds ahead, and a busy machine had passed it before the daemon read
/// the request ("not in the future"). Tests that need an alert to fall due soon
/// ask for 2 s at least.
pub(crate) fn at(secs: i64) -> String {
    let now = Utc::now();
    let next_second = now.timestamp() + 1;
    DateTime::from_timestamp(next_second + secs, 0)
        .unwrap_or(now)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Alert settings for tests: the SMTP server at `port`, quick retries, plugins in `plugins`.
pub(crate) fn alert_tables(port: u16, plugins: &Path, alerts_extra: &str, rest: &str) -> String {
    format!(
        r#"
[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "apikeyd <apikeyd@example.com>"
timeout = "pt5s"

[alerts]
retry_initial = "pt1s"
retry_max = "pt2s"
plugins_dir = "{plugins}"
{alerts_extra}

{rest}
"#,
        plugins = plugins.display()
    )
}

pub(crate) fn shipped_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

pub(crate) fn start(port: u16, alerts_extra: &str, rest: &str) -> TestDaemon {
    TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(port, &shipped_plugins(), alerts_extra, rest),
    )
}

pub(crate) fn job(d: &TestDaemon, id: &str) -> Value {
    d.json(&["job", "show", id])
}

pub(crate) fn wait_job(d: &TestDaemon, id: &str, state: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let j = job(d, id);
        if j["state"] == state {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not {state} within {secs}s: {j}\nlog tail:\n{}",
            tail(&d.log_text())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn key(d: &TestDaemon, id: &str) -> Value {
    d.json(&["key", "show", id])
}

/// Alice's key "nightly" (30 days) with a notification through `source` an
/// hour ahead, then the daemon restarted two hours on, where the notification is
/// due at start and delivered: the key as created and its job's id.
pub(crate) fn nightly_notified_at_restart(d: &mut TestDaemon, source: &str) -> (Value, String) {
    let (id, _) = d.create(
        "alice",
        "nightly",
        &[
            "--expires-in",
            "p30d",
            "--notify-at",
            &at(3600),
            "--alert-source",
            source,
        ],
    );
    let k = key(d, &id);
    let job = k["alert_job"].as_str().unwrap().to_owned();
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", "7200")]);
    wait_job(d, &job, "Completed", 10);
    (k, job)
}

pub(crate) fn jobs_of(d: &TestDaemon, key_id: &str) -> Vec<Value> {
    d.json(&["job", "list", "--key", key_id])["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn messages(d: &TestDaemon, unacked: bool) -> Vec<Value> {
    let mut args = vec!["message", "list"];
    if unacked {
        args.push("--unacknowledged");
    }
    d.json(&args)["messages"].as_array().unwrap().clone()
}

#[test]
fn editing_before_start_reschedules_the_same_job_and_after_start_makes_a_new_one() {
    let smtp = Smtp::start();
    let d = start(smtp.port, "", "");
    let (id, _) = d.create(
        "alice",
        "k",
        &["--expires-in", "p30d", "--notify-before", "p7d"],
    );
    let k = key(&d, &id);
    let j1 = k["alert_job"].as_str().unwrap().to_owned();
    let expires = time(&k["expires_at"]);
    assert_eq!(time(&k["notify_at"]), expires - chrono::Duration::days(7));

    // Before start: time and source change, same job.
    let later = at(3600);
    let v = d.json(&["key", "notify", &id, "--at", &later]);
    assert_eq!(v["alert_job"], j1.as_str());
    let j = job(&d, &j1);
    assert_eq!(j["due_at"], later.as_str());
    assert_eq!(j["state"], "Scheduled");
    let v = d.json(&["key", "notify", &id, "--source", "operator"]);
    assert_eq!(v["alert_job"], j1.as_str());
    assert_eq!(job(&d, &j1)["source"], "operator");
    assert_eq!(jobs_of(&d, &id).len(), 1);

    // Let it run, then edit: a new job, the key tracks it, the old one stays Completed.
    let soon = at(2);
    d.json(&["key", "notify", &id, "--at", &soon]);
    wait_job(&d, &j1, "Completed", 15);
    assert_eq!(
        messages(&d, false).len(),
        1,
        "delivered as an operator message"
    );
    let v = d.json(&["key", "notify", &id, "--before", "p1d"]);
    let j2 = v["alert_job"].as_str().unwrap().to_owned();
    assert_ne!(j1, j2);
    assert_eq!(time(&v["notify_at"]), expires - chrono::Duration::days(1));
    assert_eq!(job(&d, &j1)["state"], "Completed");
    let j = job(&d, &j2);
    assert_eq!(j["state"], "Scheduled");
    assert_eq!(j["source"], "operator", "the source carries over");
    assert_eq!(jobs_of(&d, &id).len(), 2);
    // The audit trail says which happened.
    let audit = d.ok(&["audit", "--key", &id]);
    assert!(
        audit.contains("rescheduled") && audit.contains("new job"),
        "{audit}"
    );
}

#[test]
fn cancelling_the_notification_or_the_job_clears_both() {
    let d = start(free_port(), "", "");
    let (id, _) = d.create("alice", "k", &["--notify-before", "p1d"]);
    // notify --cancel: the job is Canceled, the key has no notification.
    let j1 = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    let out = d.ok(&["key", "notify", &id, "--cancel"]);
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(job(&d, &j1)["state"], "Canceled");
    let k = key(&d, &id);
    assert_eq!(k["notification"], "none");
    assert!(k["alert_job"].is_null());
    assert!(d
        .fails(&["key", "notify", &id, "--cancel"])
        .contains("no notification"));

    // job cancel: the key's notification is cleared.
    let j2 = d.json(&["key", "notify", &id, "--before", "p2d"])["alert_job"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(j1, j2);
    d.ok(&["job", "cancel", &j2]);
    assert_eq!(job(&d, &j2)["state"], "Canceled");
    assert_eq!(key(&d, &id)["notification"], "none");
    assert!(d
        .fails(&["job", "cancel", &j2])
        .contains("already Canceled"));

    // job delete: the job is gone and the key's notification is cleared.
    let j3 = d.json(&["key", "notify", &id, "--before", "p3d"])["alert_job"]
        .as_str()
        .unwrap()
        .to_owned();
    d.ok(&["job", "delete", &j3]);
    assert!(d.fails(&["job", "show", &j3]).contains("no such job"));
    assert_eq!(key(&d, &id)["notification"], "none");
    let states: Vec<String> = jobs_of(&d, &id)
        .iter()
        .map(|j| j["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["Canceled", "Canceled"]);
    let listed = d.json(&["job", "list", "--state", "canceled"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 2);
}

#[test]
fn removing_a_key_cancels_its_job() {
    let d = start(free_port(), "", "");
    let (id, _) = d.create("alice", "k", &["--notify-before", "p1d"]);
    let j = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    d.ok(&["key", "remove", &id]);
    let job = job(&d, &j);
    assert_eq!(job["state"], "Canceled");
    assert!(job["last_error"].as_str().unwrap().contains("removed"));
    assert!(d
        .fails(&["key", "notify", &id, "--before", "p2d"])
        .contains("removed"));
}

#[test]
fn bad_notifications_get_a_clear_error_and_change_nothing() {
    let mut d = start(free_port(), "", "");
    let (id, _) = d.create(
        "alice",
        "k",
        &["--expires-in", "p30d", "--notify-before", "p7d"],
    );
    let before = key(&d, &id);
    let jobs_before = jobs_of(&d, &id);
    let audit_before = d.audit_len();
    let expires = time(&before["expires_at"]);
    let after_expiry = (expires + chrono::Duration::hours(1)).to_rfc3339();
    for (args, expect) in [
        (vec!["--at", "2020-01-01T00:00:00Z"], "not in the future"),
        (vec!["--at", &after_expiry], "after the key's expiry"),
        (vec!["--at", "tomorrow"], "RFC 3339"),
        (vec!["--before", "p60d"], "not in the future"),
        (vec!["--before", "14d"], "not an ISO 8601 period"),
        (
            vec!["--before", "p1d", "--source", "pager"],
            "unknown alert source",
        ),
    ] {
        let mut a = vec!["key", "notify", id.as_str()];
        a.extend(args.iter().copied());
        let err = d.fails(&a);
        assert!(err.contains(expect), "{a:?}: {err}");
    }
    // clap refuses --at with --before, and --cancel with a time.
    d.fails(&["key", "notify", &id, "--at", &at(60), "--before", "p1d"]);
    d.fails(&["key", "notify", &id, "--cancel", "--before", "p1d"]);
    // create: a notification after the expiry, or on a key that never expires via --before.
    let err = d.fails(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "x",
        "--expires-in",
        "p1d",
        "--notify-before",
        "p2d",
    ]);
    assert!(err.contains("not in the future"), "{err}");
    let err = d.fails(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "y",
        "--expires-in",
        "p1d",
        "--notify-at",
        &at(3 * 86400),
    ]);
    assert!(err.contains("after the key's expiry"), "{err}");
    assert_eq!(key(&d, &id), before);
    assert_eq!(jobs_of(&d, &id), jobs_before);
    assert_eq!(d.audit_len(), audit_before);
    assert_eq!(d.keys().len(), 1);

    // An expired key's notification cannot be set, changed or cancelled.
    let (short, _) = d.create("alice", "short", &["--expires-in", "pt2m", "--no-notify"]);
    assert_eq!(key(&d, &short)["notification"], "none");
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", "600")]);
    let err = d.fails(&["key", "notify", &short, "--at", &at(3600)]);
    assert!(err.contains("has expired"), "{err}");
}

#[test]
fn default_notification_and_its_opt_out() {
    let d = start(free_port(), "", "");
    // Default lead p14d through owner-email for every key that expires.
    let (id, _) = d.create("alice", "default", &["--expires-in", "p30d"]);
    let k = key(&d, &id);
    assert_eq!(k["alert_source"], "owner-email");
    assert_eq!(
        time(&k["notify_at"]),
        time(&k["expires_at"]) - chrono::Duration::days(14)
    );
    // Source only: the default lead time with that source.
    let (id2, _) = d.create(
        "alice",
        "ops",
        &["--expires-in", "p30d", "--alert-source", "operator"],
    );
    assert_eq!(key(&d, &id2)["alert_source"], "operator");
    // Opted out, or too short-lived for the default: no notification.
    let (id3, _) = d.create("alice", "none", &["--no-notify"]);
    assert_eq!(key(&d, &id3)["notification"], "none");
    let (id4, _) = d.create("alice", "brief", &["--expires-in", "p5d"]);
    assert_eq!(key(&d, &id4)["notification"], "none");
    assert_eq!(
        d.json(&["job", "list", "--state", "Scheduled"])["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn empty_default_lead_time_turns_the_default_off() {
    let d = TestDaemon::start_with(
        &format!("{DEFAULT_POLICY}\nDefaultNotificationLeadTime = \"\""),
        &alert_tables(free_port(), &shipped_plugins(), "", ""),
    );
    let (id, _) = d.create("alice", "k", &["--expires-in", "p30d"]);
    assert_eq!(key(&d, &id)["notification"], "none");
    let (id, _) = d.create("alice", "k2", &["--notify-before", "p1d"]);
    assert_eq!(key(&d, &id)["alert_source"], "owner-email");
}

#[test]
fn users_see_only_jobs_of_their_own_keys() {
    if !crate::util::require_root("to run apikeyctl as nobody") {
        return;
    }
    let d = start(free_port(), "", "");
    let (alice_key, _) = d.create("alice", "mine", &["--notify-before", "p1d"]);
    let (bob_key, _) = d.create("bob", "theirs", &["--notify-before", "p1d"]);
    let bob_job = key(&d, &bob_key)["alert_job"].as_str().unwrap().to_owned();
    let out = d.ctl_as(Some(65534), &["job", "list", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [alice_key.as_str()]);
    let out = d.ctl_as(Some(65534), &["job", "cancel", &bob_job]);
    assert!(!out.status.success());
    assert_eq!(job(&d, &bob_job)["state"], "Scheduled");
}
