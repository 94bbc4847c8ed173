//! The mail server down, slow, or speaking TLS, against the real daemon: an outage
//! that outlasts some alerts' retries and not others', servers that accept and never
//! answer or hang after DATA, STARTTLS and implicit TLS with a test CA, and the SMTP
//! password from a file or a systemd credential. Retries are a second apart and the
//! SMTP timeout a few seconds, so each test takes seconds; every wait is for a
//! condition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::alerts::{alert_tables, at, job, key, messages, shipped_plugins, start, time, wait_job};
use crate::smtp::{Silent, Smtp, TestCa};
use crate::util::{check_config, wait_until, TestDaemon, DEFAULT_POLICY};

/// `key create` for `user` with a notification through `source` in a second; the
/// key's and its job's ids.
fn notify_soon(d: &TestDaemon, user: &str, name: &str, source: &str) -> (String, String) {
    let (id, _) = d.create(
        user,
        name,
        &["--notify-at", &at(2), "--alert-source", source],
    );
    let job_id = key(d, &id)["alert_job"].as_str().unwrap().to_owned();
    (id, job_id)
}

/// Wait until `job_id`'s attempt `attempt` failed and the job waits for its retry.
fn wait_failed_attempt(d: &TestDaemon, job_id: &str, attempt: u64, secs: u64) -> Value {
    let mut seen = Value::Null;
    wait_until(Duration::from_secs(secs), || {
        seen = job(d, job_id);
        seen["attempts"].as_u64() >= Some(attempt) && seen["state"] == "Scheduled"
    });
    seen
}

/// The whole outage: alerts fall due while the server is down. The one whose
/// attempts run out fails with an operator message that names it and says why; the
/// ones still within their retries when the server is back are delivered; `job
/// show` shows attempts and the last error all along; no job is left behind.
#[test]
fn smtp_down_for_the_whole_window_fails_some_alerts_loudly_and_delivers_the_rest() {
    let mut smtp = Smtp::behind_door(None);
    let d = start(smtp.port, "max_attempts = 3", "");
    // Up: delivered.
    let (_, first) = notify_soon(&d, "alice", "before", "owner-email");
    wait_job(&d, &first, "Completed", 15);
    assert_eq!(smtp.count(), 1);

    smtp.stop();
    let (doomed_key, doomed) = notify_soon(&d, "alice", "doomed", "owner-email");
    let j = wait_job(&d, &doomed, "Failed", 30);
    assert_eq!(j["attempts"], 3);
    let error = j["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("SMTP 127.0.0.1:{}", smtp.port))
            && error.contains("cannot talk to the SMTP server"),
        "{error}"
    );
    // Two more fall due while it is still down, and fail their first attempts.
    let waiting: Vec<String> = ["k1", "k2"]
        .iter()
        .map(|name| notify_soon(&d, "bob", name, "owner-email").1)
        .collect();
    for id in &waiting {
        let j = wait_failed_attempt(&d, id, 1, 15);
        assert!(time(&j["run_at"]) > time(&j["updated_at"]), "backoff: {j}");
        assert!(j["last_error"].as_str().unwrap().contains("SMTP"), "{j}");
        let shown = d.ok(&["job", "show", id]);
        assert!(
            shown.lines().any(|l| l.starts_with("attempts")) && shown.contains(&error[..20]),
            "{shown}"
        );
    }

    smtp.start_again();
    for id in &waiting {
        let j = wait_job(&d, id, "Completed", 15);
        assert!(j["attempts"].as_u64().unwrap() >= 2, "{j}");
    }
    assert_eq!(smtp.count(), 3, "each delivered alert once");
    // The log shows each failed attempt and when it will be retried.
    assert!(d.log_text().contains("alert attempt failed; will retry"));

    // The failed one is not silently dropped: one operator message names its job and
    // key and gives the error.
    let msgs = messages(&d, true);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["job_id"], doomed.as_str());
    let text = msgs[0]["text"].as_str().unwrap();
    assert!(
        text.contains(&doomed)
            && text.contains(&doomed_key)
            && text.contains("cannot talk to the SMTP server"),
        "{text}"
    );
    // Nothing else is pending or lost.
    let jobs = d.json(&["job", "list"])["jobs"].as_array().unwrap().clone();
    let mut states: Vec<&str> = jobs.iter().map(|j| j["state"].as_str().unwrap()).collect();
    states.sort();
    assert_eq!(states, ["Completed", "Completed", "Completed", "Failed"]);
}

/// Config for the hang tests: SMTP timeout `timeout` and plenty of attempts.
fn hang_daemon(port: u16, timeout: &str) -> TestDaemon {
    TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(port, &shipped_plugins(), "max_attempts = 10", "")
            .replace("timeout = \"pt5s\"", &format!("timeout = \"{timeout}\"")),
    )
}

/// While `hung`'s attempt hangs, another job, through the operator-message source,
/// is delivered: the dispatcher does not wait for the hung send. Then the attempt
/// fails, saying the server did not answer within `timeout_secs`, within `most_secs`
/// of its start.
fn cut_off_while_others_go_through(d: &TestDaemon, hung: &str, timeout_secs: u64, most_secs: i64) {
    let (_, other) = notify_soon(d, "bob", "meanwhile", "operator");
    let other = wait_job(d, &other, "Completed", 15);
    let j = wait_failed_attempt(d, hung, 1, 20);
    assert!(
        time(&other["finished_at"]) <= time(&j["updated_at"]),
        "the operator message ({}) waited for the hung send (ended {})",
        other["finished_at"],
        j["updated_at"]
    );
    let error = j["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "did not answer within {timeout_secs}s ([smtp] timeout)"
        )),
        "{error}"
    );
    let took = time(&j["updated_at"]) - time(&j["started_at"]);
    assert!(
        took < chrono::Duration::seconds(most_secs),
        "cut off after {took}"
    );
}

/// Regression: lettre's async transport applied `[smtp] timeout` to the TCP connect
/// only, so a server that accepted the connection and never sent its greeting held
/// the delivery for ever.
#[test]
fn a_server_that_never_answers_is_cut_off_by_the_timeout() {
    let silent = Silent::start();
    // The other notification falls due about 2 s after the hang began: the
    // timeout leaves it seconds to spare on a loaded machine (under-load runs).
    let d = hang_daemon(silent.port, "pt5s");
    let (_, hung) = notify_soon(&d, "alice", "k", "owner-email");
    wait_until(Duration::from_secs(15), || {
        silent.accepted() >= 1 && job(&d, &hung)["state"] == "Running"
    });
    cut_off_while_others_go_through(&d, &hung, 5, 10);
}

/// Regression: the same for a server that takes the message and never answers its
/// end; the retry delivers it once the server answers again.
#[test]
fn a_server_that_hangs_after_data_is_cut_off_and_the_retry_delivers() {
    let smtp = Smtp::start();
    smtp.hang_after_data(true);
    let d = hang_daemon(smtp.port, "pt5s");
    let (_, hung) = notify_soon(&d, "alice", "k", "owner-email");
    smtp.wait_hanging(1, Duration::from_secs(15));
    // Bounded: the timeout, and as much again for the QUIT that closes the session.
    cut_off_while_others_go_through(&d, &hung, 5, 12);

    smtp.hang_after_data(false);
    let j = wait_job(&d, &hung, "Completed", 20);
    assert!(j["attempts"].as_u64().unwrap() >= 2, "{j}");
    assert_eq!(smtp.count(), 1, "{:?}", smtp.mails());
}

/// `[smtp]` for the TLS tests: `tls` to `host`, trusting `ca_file` (if any), with
/// any `extra` lines.
fn tls_tables(port: u16, tls: &str, host: &str, ca_file: Option<&Path>, extra: &str) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    alert_tables(port, &shipped_plugins(), "max_attempts = 10", "")
        .replace(
            "host = \"127.0.0.1\"\n",
            &format!("host = \"{host}\"\n{ca}{extra}"),
        )
        .replace("tls = \"none\"", &format!("tls = \"{tls}\""))
}

/// Rewrite `d`'s `[smtp]` and start it again with `env`.
fn restart_with(d: &mut TestDaemon, smtp: &str, env: &[(&str, &str)]) {
    d.stop();
    let text = crate::util::test_config(d.dir.path(), DEFAULT_POLICY, smtp);
    std::fs::write(&d.config, text).unwrap();
    d.spawn(env);
}

/// A notification's job ends `Completed`, or its first attempt fails: the job.
fn deliver(d: &TestDaemon, name: &str, state: &str) -> Value {
    let (_, job_id) = notify_soon(d, "alice", name, "owner-email");
    match state {
        "Completed" => wait_job(d, &job_id, "Completed", 15),
        _ => wait_failed_attempt(d, &job_id, 1, 15),
    }
}

/// STARTTLS to a server whose certificate the test CA signed for localhost, with
/// AUTH: the password from `password_file`, then from the systemd credential, which
/// wins. Under another host name the certificate is refused, and `job show` says so.
#[test]
fn starttls_is_verified_against_ca_file_and_the_host_name() {
    let ca = TestCa::new();
    let smtp = Smtp::starttls(&ca);
    let mut d = TestDaemon::configured(DEFAULT_POLICY, "");
    let file = d.path("smtp.pw");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let auth = format!(
        "username = \"apikeyd\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let creds = d.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("smtp-password"), "from-the-credential\n").unwrap();

    let tables = tls_tables(smtp.port, "starttls", "localhost", Some(&ca.ca), &auth);
    restart_with(&mut d, &tables, &[]);
    deliver(&d, "file", "Completed");
    assert_eq!(
        smtp.logins(),
        [("apikeyd".to_owned(), "from-the-file".to_owned())]
    );
    // The credential's.
    let creds = creds.to_str().unwrap();
    restart_with(&mut d, &tables, &[("CREDENTIALS_DIRECTORY", creds)]);
    deliver(&d, "credential", "Completed");
    assert_eq!(
        smtp.logins()[1..],
        [("apikeyd".to_owned(), "from-the-credential".to_owned())]
    );
    assert_eq!(smtp.count(), 2);

    // Not the name the certificate holds.
    let tables = tls_tables(smtp.port, "starttls", "127.0.0.1", Some(&ca.ca), &auth);
    restart_with(&mut d, &tables, &[("CREDENTIALS_DIRECTORY", creds)]);
    let j = deliver(&d, "wrong-name", "Scheduled");
    let shown = d.ok(&["job", "show", j["id"].as_str().unwrap()]);
    assert!(
        shown.contains(&format!(
            "SMTP 127.0.0.1:{}: TLS: the server's certificate is not valid for the host name \"127.0.0.1\" (set [smtp] host to a name the certificate holds)",
            smtp.port
        )),
        "{shown}"
    );
    assert_eq!(smtp.count(), 2);
    d.stop();
    let log = d.log_text();
    assert!(!log.contains("from-the-"), "a password in the log");
}

/// Implicit TLS (port 465's way) with the test CA; without `ca_file` the server's
/// certificate is refused as signed by an unknown CA: verification is on by default.
#[test]
fn implicit_tls_is_verified_against_ca_file() {
    let ca = TestCa::new();
    let smtp = Smtp::behind_door(Some(&ca));
    let mut d = TestDaemon::configured(DEFAULT_POLICY, "");
    restart_with(
        &mut d,
        &tls_tables(smtp.port, "tls", "localhost", Some(&ca.ca), ""),
        &[],
    );
    deliver(&d, "k", "Completed");
    assert_eq!(smtp.count(), 1);

    restart_with(
        &mut d,
        &tls_tables(smtp.port, "tls", "localhost", None, ""),
        &[],
    );
    let j = deliver(&d, "unknown-ca", "Scheduled");
    let error = j["last_error"].as_str().unwrap();
    assert!(
        error.contains("TLS: the server's certificate is not signed by a trusted CA (add the CA with [smtp] ca_file)"),
        "{error}"
    );
    assert_eq!(smtp.count(), 1);
}

/// `apikeyd check-config` reads `[smtp] ca_file` as the daemon would at start, and
/// names the key and the file it cannot use.
#[test]
fn check_config_names_an_unusable_ca_file() {
    let d = TestDaemon::configured(
        DEFAULT_POLICY,
        &tls_tables(
            25,
            "starttls",
            "localhost",
            Some(Path::new("/nonexistent/ca.pem")),
            "",
        ),
    );
    let out = check_config(&d.config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smtp.ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );

    let ca = TestCa::new();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace("/nonexistent/ca.pem", ca.ca.to_str().unwrap()),
    )
    .unwrap();
    let out = check_config(&d.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression: with the blocking transport, a stop while a send hung waited for
/// the send's timeout (twice, with the QUIT): a minute at `[smtp] timeout =
/// "pt30s"`. The daemon now stops once the dispatcher's grace for deliveries in
/// flight (10 s) is over; the job stays claimed and is sent again at the next
/// start, as after a crash.
#[test]
fn a_stop_does_not_wait_for_a_hung_send() {
    let smtp = Smtp::start();
    smtp.hang_after_data(true);
    let mut d = hang_daemon(smtp.port, "pt60s");
    let (_, hung) = notify_soon(&d, "alice", "k", "owner-email");
    smtp.wait_hanging(1, Duration::from_secs(15));
    let asked = std::time::Instant::now();
    d.stop();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(16), "the stop took {took:?}");

    smtp.hang_after_data(false);
    d.restart();
    // At the start the cut-short delivery is replaced by a new job, which sends.
    let old = job(&d, &hung);
    assert_eq!(old["state"], "Canceled", "{old}");
    let next = old["replaced_by"].as_str().unwrap().to_owned();
    wait_job(&d, &next, "Completed", 30);
    assert_eq!(smtp.count(), 1, "{:?}", smtp.mails());
}
