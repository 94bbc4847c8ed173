//! Alert jobs through the real daemon and apikeyctl: the notification rules, email to
//! a real SMTP server running in the test (mailin-embedded), operator messages, exec
//! plugins, retries and backoff, kill -9 during a burst, jobs due while stopped, and
//! the maintenance jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::smtp::Smtp;
use crate::util::{free_port, request, wait_until, Echo, TestDaemon, DEFAULT_POLICY};

// ---------------------------------------------------------------- helpers

fn at(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Alert settings for tests: the SMTP server at `port`, quick retries, plugins in `plugins`.
fn alert_tables(port: u16, plugins: &Path, alerts_extra: &str, rest: &str) -> String {
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

fn shipped_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

fn start(port: u16, alerts_extra: &str, rest: &str) -> TestDaemon {
    TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(port, &shipped_plugins(), alerts_extra, rest),
    )
}

fn job(d: &TestDaemon, id: &str) -> Value {
    d.json(&["job", "show", id])
}

fn wait_job(d: &TestDaemon, id: &str, state: &str, secs: u64) -> Value {
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

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn key(d: &TestDaemon, id: &str) -> Value {
    d.json(&["key", "show", id])
}

fn jobs_of(d: &TestDaemon, key_id: &str) -> Vec<Value> {
    d.json(&["job", "list", "--key", key_id])["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

fn messages(d: &TestDaemon, unacked: bool) -> Vec<Value> {
    let mut args = vec!["message", "list"];
    if unacked {
        args.push("--unacknowledged");
    }
    d.json(&args)["messages"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------- email

#[test]
fn email_notification_reaches_the_owner_on_time() {
    let smtp = Smtp::start();
    let d = start(smtp.port, "", "");
    let due = at(3);
    let v = d.json(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "nightly sync",
        "--description",
        "catalog sync job",
        "--expires-in",
        "p30d",
        "--notify-at",
        &due,
    ]);
    let id = v["id"].as_str().unwrap().to_owned();
    let job_id = v["alert_job"].as_str().unwrap().to_owned();
    assert_eq!(v["notify_at"], due.as_str());
    assert_eq!(v["alert_source"], "owner-email");
    // key list shows the notification time and source.
    let list = d.ok(&["key", "list"]);
    assert!(list.contains(&format!("{due} via owner-email")), "{list}");

    let j = wait_job(&d, &job_id, "Completed", 15);
    assert_eq!(j["attempts"], 1);
    // Precision: the attempt started within one second of the due time.
    let late = time(&j["started_at"]) - time(&j["due_at"]);
    assert!(
        late >= chrono::Duration::zero() && late <= chrono::Duration::seconds(1),
        "started {late:?} after the due time"
    );

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    assert_eq!(m.to, ["alice@example.com"]);
    let subject = m.header("Subject").unwrap();
    assert!(subject.contains("nightly sync"), "{subject}");
    let expires = v["expires_at"].as_str().unwrap();
    assert!(subject.contains(expires), "{subject}");
    assert!(m.data.contains(&id), "{}", m.data);
    assert!(m.data.contains("catalog sync job"), "{}", m.data);
    assert!(
        m.data.contains(&format!("apikeyctl key rotate {id}")),
        "{}",
        m.data
    );
    assert_eq!(
        m.header("Message-ID").unwrap(),
        format!("<alert-{job_id}@apikeyd>")
    );
    // The key still tracks its (completed) job.
    assert_eq!(key(&d, &id)["alert_job"], job_id.as_str());

    // /metrics counts the delivery and the job's final state.
    let m = request(d.addr, "GET", "/metrics", &[]);
    assert_eq!(m.status, 200);
    for line in [
        "# TYPE apikeyd_alert_deliveries_total counter",
        "apikeyd_alert_deliveries_total{channel=\"email\",outcome=\"delivered\"} 1",
        "apikeyd_alert_deliveries_total{channel=\"email\",outcome=\"failed\"} 0",
        "apikeyd_alert_deliveries_total{channel=\"plugin\",outcome=\"failed\"} 0",
        "# TYPE apikeyd_alert_jobs gauge",
        "apikeyd_alert_jobs{state=\"completed\"} 1",
        "apikeyd_alert_jobs{state=\"running\"} 0",
    ] {
        assert!(m.body.lines().any(|l| l == line), "{line}\n{}", m.body);
    }
}

#[test]
fn smtp_down_then_back_is_retried_with_backoff_and_delivered() {
    let port = free_port();
    let d = start(port, "max_attempts = 10", "");
    let v = d.json(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "k",
        "--notify-at",
        &at(1),
    ]);
    let job_id = v["alert_job"].as_str().unwrap().to_owned();
    // At least two failed attempts, a backoff between them, still Scheduled.
    let mut seen = Value::Null;
    wait_until(Duration::from_secs(20), || {
        seen = job(&d, &job_id);
        seen["attempts"].as_u64().unwrap_or(0) >= 2 && seen["state"] == "Scheduled"
    });
    let err = seen["last_error"].as_str().unwrap();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("SMTP"), "{err}");
    assert!(time(&seen["run_at"]) > time(&seen["updated_at"]), "{seen}");
    // The log shows each failed attempt and when it will be retried.
    assert!(d.log_text().contains("alert attempt failed; will retry"));

    let smtp = Smtp::on(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        Duration::ZERO,
    );
    let j = wait_job(&d, &job_id, "Completed", 20);
    assert!(j["attempts"].as_u64().unwrap() >= 3, "{j}");
    assert_eq!(smtp.mails().len(), 1);
    assert!(
        messages(&d, false).is_empty(),
        "no operator message for a delivered job"
    );
}

#[test]
fn smtp_down_for_good_fails_after_max_attempts_with_an_operator_message() {
    let port = free_port();
    let d = start(port, "max_attempts = 3", "");
    let (id, _) = d.create("alice", "doomed", &["--notify-at", &at(1)]);
    let job_id = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    let j = wait_job(&d, &job_id, "Failed", 30);
    assert_eq!(j["attempts"], 3);
    assert!(j["last_error"].as_str().unwrap().contains("SMTP"), "{j}");

    let msgs = messages(&d, true);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert_eq!(m["job_id"], job_id.as_str());
    assert_eq!(m["key_id"], id.as_str());
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains(&job_id) && text.contains(&id) && text.contains("SMTP"),
        "{text}"
    );
    assert!(d.log_text().contains("alert job failed"));

    // Acknowledge it: gone from the unacknowledged list, kept in the full list.
    let mid = m["id"].to_string();
    let out = d.ok(&["message", "ack", &mid]);
    assert!(out.contains("Acknowledged"), "{out}");
    assert!(messages(&d, true).is_empty());
    let all = messages(&d, false);
    assert_eq!(all[0]["acknowledged_by"], "admin");
    assert!(d
        .fails(&["message", "ack", &mid])
        .contains("already acknowledged"));
    // Operator messages are for administrators.
    if crate::util::require_root("to run apikeyctl as nobody") {
        let out = d.ctl_as(Some(65534), &["message", "list"]);
        assert!(!out.status.success());
    }
}

#[test]
fn smtp_password_never_reaches_logs_errors_or_the_database() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("smtp.pw");
    let secret = "Tr0ub4dor-smtp-secret-9f8e7d";
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(port, &shipped_plugins(), "max_attempts = 2", "").replace(
            "timeout = \"pt5s\"",
            &format!(
                "timeout = \"pt5s\"\nusername = \"apikeyd\"\npassword_file = \"{}\"",
                pw.display()
            ),
        ),
    );
    let (id, _) = d.create("alice", "k", &["--notify-at", &at(1)]);
    let job_id = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    let j = wait_job(&d, &job_id, "Failed", 30);
    assert!(!j.to_string().contains(secret));
    let msgs = d.ok(&["message", "list", "--json"]);
    assert!(!msgs.contains(secret));
    let mut d = d;
    d.stop();
    assert!(!d.log_text().contains(secret), "password in the log");
    let db = std::fs::read(d.db_path()).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "password in the database"
    );
}

// ---------------------------------------------------------------- the rules

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

// ---------------------------------------------------------------- delivery guarantees

#[test]
fn jobs_due_while_stopped_are_delivered_at_start() {
    let mut d = start(free_port(), "", "");
    let (id, _) = d.create(
        "alice",
        "k",
        &["--notify-at", &at(3600), "--alert-source", "operator"],
    );
    let j = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", "7200")]);
    wait_job(&d, &j, "Completed", 10);
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["key_id"], id.as_str());
    assert!(
        msgs[0]["title"].as_str().unwrap().contains("\"k\""),
        "{}",
        msgs[0]
    );
    assert!(d.log_text().contains("operator message"));
}

#[test]
fn kill_9_during_a_burst_delivers_every_alert_and_leaves_only_final_states() {
    // A slow SMTP server (100 ms a message) so the kill lands mid-burst.
    let smtp = Smtp::on(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Duration::from_millis(100),
    );
    let mut d = start(smtp.port, "", "");
    let due = at(4);
    let ids: Vec<String> = (0..24)
        .map(|i| {
            d.create("alice", &format!("burst-{i}"), &["--notify-at", &due])
                .0
        })
        .collect();
    wait_until(Duration::from_secs(20), || !smtp.mails().is_empty());
    d.kill9();
    let at_kill = smtp.mails().len();
    assert!(
        at_kill < ids.len(),
        "the burst was over before the kill ({at_kill})"
    );
    d.spawn(&[]);
    wait_until(Duration::from_secs(30), || {
        d.json(&["job", "list"])["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "Scheduled" && j["state"] != "Running")
    });
    // Every key got its email at least once; duplicates carry the same Message-ID.
    let mails = smtp.mails();
    for id in &ids {
        assert!(
            mails.iter().any(|m| m.data.contains(id.as_str())),
            "no email for key {id}"
        );
    }
    for id in &ids {
        let mut ids_seen: Vec<String> = mails
            .iter()
            .filter(|m| m.data.contains(id.as_str()))
            .map(|m| m.header("Message-ID").unwrap())
            .collect();
        ids_seen.dedup();
        assert_eq!(ids_seen.len(), 1, "one Message-ID per key: {ids_seen:?}");
    }
    // Every job is final, by the rules: Completed, or Canceled and replaced by a
    // job that the key tracks and that Completed.
    let mut replaced = 0;
    for id in &ids {
        let k = key(&d, id);
        let tracked = k["alert_job"].as_str().unwrap().to_owned();
        assert_eq!(job(&d, &tracked)["state"], "Completed", "key {id}");
        for j in jobs_of(&d, id) {
            match j["state"].as_str().unwrap() {
                "Completed" => {}
                "Canceled" => {
                    replaced += 1;
                    assert!(
                        j["last_error"].as_str().unwrap().contains("interrupted"),
                        "{j}"
                    );
                    assert_eq!(j["replaced_by"], tracked.as_str(), "{j}");
                }
                other => panic!("job in state {other}: {j}"),
            }
        }
    }
    assert!(
        d.log_text().contains("replaced"),
        "restart reported replacements"
    );
    eprintln!(
        "kill -9: {at_kill} mails before the kill, {} after, {replaced} jobs replaced",
        mails.len()
    );
}

#[test]
fn a_burst_of_simultaneous_alerts_loses_nothing() {
    let d = start(free_port(), "concurrency = 8", "");
    let due = at(4);
    let ids: Vec<String> = (0..60)
        .map(|i| {
            d.create(
                "alice",
                &format!("b{i}"),
                &["--notify-at", &due, "--alert-source", "operator"],
            )
            .0
        })
        .collect();
    wait_until(Duration::from_secs(30), || {
        messages(&d, false).len() >= ids.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), ids.len(), "each alert exactly once");
    let completed = d.json(&["job", "list", "--state", "Completed"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(completed, ids.len());
}

// ---------------------------------------------------------------- plugins

#[test]
fn webhook_plugin_posts_the_alert_json() {
    let hook = Echo::start();
    let d = start(
        free_port(),
        "",
        &format!(
            "[alert_sources.webhook]\nkind = \"plugin\"\nplugin = \"webhook\"\nargs = [\"http://{}/hook\"]\ntimeout = \"pt20s\"\n",
            hook.addr()
        ),
    );
    let (id, _) = d.create(
        "alice",
        "hooked",
        &["--notify-at", &at(2), "--alert-source", "webhook"],
    );
    let job_id = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), || hook.count() > 0);
    let (head, body) = hook.requests().remove(0);
    assert!(head.starts_with("POST /hook"), "{head}");
    assert!(
        head.to_lowercase()
            .contains(&format!("idempotency-key: <alert-{job_id}@apikeyd>")),
        "{head}"
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["kind"], "notification");
    assert_eq!(doc["job_id"], job_id.as_str());
    assert_eq!(doc["key"]["id"], id.as_str());
    assert_eq!(doc["key"]["name"], "hooked");
    assert_eq!(doc["key"]["owner_email"], "alice@example.com");
    wait_job(&d, &job_id, "Completed", 10);
}

#[test]
fn failing_and_hanging_plugins_are_failed_attempts_with_their_stderr() {
    let plugins = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = plugins.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "fails",
        "#!/bin/sh\ncat >/dev/null\necho 'boom: receiver said no' >&2\nexit 3\n",
    );
    write("hangs", "#!/bin/sh\nsleep 30\n");
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(
            free_port(),
            plugins.path(),
            "max_attempts = 2",
            "[alert_sources.fails]\nkind = \"plugin\"\nplugin = \"fails\"\n\n[alert_sources.hangs]\nkind = \"plugin\"\nplugin = \"hangs\"\ntimeout = \"pt1s\"\n\n[alert_sources.missing]\nkind = \"plugin\"\nplugin = \"missing\"\n",
        ),
    );
    let mut expect = Vec::new();
    for (source, error) in [
        ("fails", "boom: receiver said no"),
        ("hangs", "killed after its timeout"),
        ("missing", "not found"),
    ] {
        let (id, _) = d.create(
            "alice",
            source,
            &["--notify-at", &at(2), "--alert-source", source],
        );
        expect.push((
            key(&d, &id)["alert_job"].as_str().unwrap().to_owned(),
            error,
        ));
    }
    for (job_id, error) in expect {
        let j = wait_job(&d, &job_id, "Failed", 30);
        assert_eq!(j["attempts"], 2);
        assert!(j["last_error"].as_str().unwrap().contains(error), "{j}");
    }
    assert_eq!(messages(&d, true).len(), 3);
}

// ---------------------------------------------------------------- maintenance

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

#[test]
fn email_source_with_extra_recipients_and_templates_and_sighup_reload() {
    let smtp = Smtp::start();
    let team = r#"
[alert_sources.team]
kind = "email"
owner = true
to = ["ops@example.com"]
cc = ["security@example.com"]
subject = "[apikeyd] ${key.owner}/${key.name} ${alert.reason}"
body = "Key ${key.id} (${key.details}); effective expiry ${key.effective_expires_at}. Job ${job.id}."
"#;
    let d = start(smtp.port, "", team);
    let (id, _) = d.create(
        "bob",
        "reports",
        &[
            "--expires-in",
            "p20d",
            "--notify-at",
            &at(2),
            "--alert-source",
            "team",
        ],
    );
    let k = key(&d, &id);
    let job_id = k["alert_job"].as_str().unwrap().to_owned();
    wait_job(&d, &job_id, "Completed", 15);
    let m = &smtp.mails()[0];
    let mut to = m.to.clone();
    to.sort();
    assert_eq!(
        to,
        ["bob@example.com", "ops@example.com", "security@example.com"]
    );
    assert!(m.header("Cc").unwrap().contains("security@example.com"));
    let expires = k["expires_at"].as_str().unwrap();
    assert_eq!(
        m.header("Subject").unwrap(),
        format!("[apikeyd] bob/reports expires on {expires}")
    );
    assert!(
        m.data.contains(&format!("Key {id} (expires ")),
        "{}",
        m.data
    );
    assert!(m.data.contains(&format!("Job {job_id}.")), "{}", m.data);

    // SIGHUP: a source removed from the file is refused for new notifications;
    // a bad template is rejected and the running configuration stays.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("${key.owner}/", "${key.secret}/")).unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        d.log_text().contains("reload rejected")
    });
    let pending = d.json(&["key", "notify", &id, "--at", &at(4), "--source", "team"])["alert_job"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(
        &d.config,
        text.replace("[alert_sources.team]", "[alert_sources.crew]"),
    )
    .unwrap();
    // Wait for the reload itself (a read-only signal): trying `key notify --source
    // team` before it lands would succeed and move the pending job an hour ahead.
    let reloads = d.log_text().matches("configuration reloaded").count();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        d.log_text().matches("configuration reloaded").count() > reloads
    });
    let err = d.fails(&["key", "notify", &id, "--at", &at(3600), "--source", "team"]);
    assert!(err.contains("unknown alert source"), "{err}");
    // The job already scheduled through the removed source is not dropped silently:
    // it fails at its time, and an operator message says why.
    let j = wait_job(&d, &pending, "Failed", 15);
    assert!(
        j["last_error"]
            .as_str()
            .unwrap()
            .contains("not configured any more"),
        "{j}"
    );
    assert!(messages(&d, true)
        .iter()
        .any(|m| m["job_id"] == pending.as_str()));
    d.json(&["key", "notify", &id, "--at", &at(3600), "--source", "crew"]);
}
