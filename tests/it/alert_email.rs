//! Alert email to a real SMTP server running in the test (mailin-embedded): on time,
//! failed with an operator message when the server stays down, the SMTP password kept
//! secret, and email sources with extra recipients and templates, reloaded with
//! SIGHUP. An outage the server comes back from, hanging servers and TLS are in
//! `mail_server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::alerts::{alert_tables, at, key, messages, shipped_plugins, start, time, wait_job};
use crate::smtp::Smtp;
use crate::util::{free_port, request, wait_until, TestDaemon, DEFAULT_POLICY};

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
    let list = d.ok(&["key", "list", "--wide"]);
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
    // The body's long lines are soft-wrapped (quoted-printable).
    assert!(
        m.unwrapped().contains(&format!(
            "rotate it before then (apikeyctl key rotate {id})"
        )),
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
fn smtp_down_for_good_fails_after_max_attempts_with_an_operator_message() {
    let port = free_port();
    let d = start(port, "max_attempts = 3", "");
    let (id, _) = d.create("alice", "doomed", &["--notify-at", &at(2)]);
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
    let (id, _) = d.create("alice", "k", &["--notify-at", &at(2)]);
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
    let body = m.unwrapped();
    assert!(body.contains(&format!("Key {id} (expires ")), "{body}");
    assert!(body.contains(&format!("Job {job_id}.")), "{body}");

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

/// Issue 12: with `[console] public_url` set, the email links the key's page in
/// the console (`#key=ID`, which the page opens); without it, no link.
#[test]
fn expiry_emails_link_the_keys_console_page_when_public_url_is_set() {
    let smtp = Smtp::start();
    let body_of = |d: &TestDaemon, name: &str| {
        let (id, _) = d.create(
            "alice",
            name,
            &["--expires-in", "p30d", "--notify-at", &at(2)],
        );
        let job_id = key(d, &id)["alert_job"].as_str().unwrap().to_owned();
        wait_job(d, &job_id, "Completed", 15);
        let mail = smtp
            .mails()
            .into_iter()
            .find(|m| m.data.contains(&id))
            .unwrap();
        // Quoted-printable: soft breaks and `=3D` for the fragment's `=`.
        let decoded =
            quoted_printable::decode(mail.data.as_bytes(), quoted_printable::ParseMode::Robust)
                .unwrap();
        (
            id,
            String::from_utf8(decoded).unwrap().replace("\r\n", "\n"),
        )
    };

    let console = "[console]\npublic_url = \"https://keys.example.com/keys/\"\n";
    let d = start(smtp.port, "", console);
    let (id, body) = body_of(&d, "linked");
    let link = format!("https://keys.example.com/keys/console/#key={id}");
    assert!(
        body.contains(&format!(
            "\nSee and manage this key in the web console: {link}\n"
        )),
        "{body}"
    );
    drop(d);

    let d = start(smtp.port, "", "");
    let (_, body) = body_of(&d, "unlinked");
    assert!(
        !body.contains("#key=") && !body.contains("web console"),
        "{body}"
    );
    // The paragraph leaves no trace: the body reads as before.
    assert!(body.contains("retire this one.\n\n-- apikeyd"), "{body}");
}
