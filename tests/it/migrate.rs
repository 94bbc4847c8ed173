//! `apikeyd migrate` (issue 11): a database written by a real daemon on redb moves to
//! PostgreSQL and back to a fresh redb file, and after each move a daemon on the new
//! store shows the same keys (with their usage), audit trail, jobs and messages, and
//! every key verifies as before. A target that holds records is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use serde_json::Value;

use crate::alerts::{alert_tables, at, messages, shipped_plugins, wait_job};
use crate::pg_server::TestServer;
use crate::util::*;

/// The uid the test config maps to alice.
const NOBODY: u32 = 65534;
const TOKEN: &str = "legacy-token-0123456789-migrated";

fn migrate(args: &[&str]) -> Output {
    Command::new(APIKEYD)
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

/// `apikeyd migrate --from FROM --to TO`, which must succeed: its stdout.
fn migrated(from: &str, to: &str) -> String {
    let out = migrate(&["--from", from, "--to", to]);
    assert!(
        out.status.success(),
        "migrate {from} → {to} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// What a daemon shows of its store: every key (without the `details` line, worded
/// from the current time), the audit trail, the alert jobs and the messages.
fn snapshot(d: &TestDaemon) -> Value {
    let mut keys = d.keys();
    for k in &mut keys {
        k.as_object_mut().unwrap().remove("details");
    }
    serde_json::json!({
        "keys": keys,
        "audit": d.json(&["audit", "--limit", "100000"])["entries"],
        "jobs": d.json(&["job", "list", "--limit", "10000"])["jobs"],
        "messages": messages(d, false),
    })
}

fn code(d: &TestDaemon, key: &str) -> String {
    let (status, v) = d.post("/v1/verify", &serde_json::json!({ "key": key }).to_string());
    assert_eq!(status, 200, "{v}");
    v["code"].as_str().unwrap().to_owned()
}

/// The keys' secrets and what each must verify as.
struct Expected<'a>(Vec<(&'a str, &'a str, &'a str)>);

impl Expected<'_> {
    fn check(&self, d: &TestDaemon) {
        for (what, key, want) in &self.0 {
            assert_eq!(code(d, key), *want, "{what}");
        }
        // The imported token alice's removed key held stays retired.
        let out = d.ctl_as(
            Some(NOBODY),
            &[
                "key",
                "import",
                "--name",
                "again",
                "--secret-file",
                d.path("token").to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "a retired token was imported again");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be imported again"), "{err}");
    }
}

fn set_store(d: &TestDaemon, store: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    let base = text.split("\n[store]\n").next().unwrap().to_owned();
    std::fs::write(&d.config, base + store).unwrap();
}

#[test]
fn migration_redb_to_postgres_and_back_keeps_keys_usage_audit_and_jobs() {
    if !require_root("to import a token as alice (uid nobody)") {
        return;
    }
    let Some(server) = TestServer::start() else {
        return;
    };
    // Only the operator-message source is used: no SMTP server needed.
    let mut d = TestDaemon::configured(
        DEFAULT_POLICY,
        &alert_tables(free_port(), &shipped_plugins(), "", ""),
    );
    d.spawn(&[]);

    let (_, plain) = d.create("alice", "plain", &[]);
    let (_, notified) = d.create(
        "alice",
        "notified",
        &[
            "--expires-in",
            "p30d",
            "--notify-before",
            "p7d",
            "--alert-source",
            "operator",
        ],
    );
    let (delivered_id, delivered) = d.create(
        "bob",
        "delivered",
        &["--notify-at", &at(2), "--alert-source", "operator"],
    );
    let (disabled_id, disabled) = d.create("bob", "disabled", &[]);
    d.ok(&["key", "disable", &disabled_id]);
    let (rotated_id, old_secret) = d.create("alice", "rotated", &[]);
    let rotated = d.json(&["key", "rotate", &rotated_id, "--grace", "p1d"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // An imported token, removed by an admin: retired for good.
    let file = d.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = d.ctl_as(
        Some(NOBODY),
        &[
            "key",
            "import",
            "--name",
            "imp",
            "--secret-file",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).unwrap();
    d.ok(&["key", "remove", imported["id"].as_str().unwrap()]);
    // The delivered notification leaves a completed job and a message, acknowledged.
    let job = d.json(&["key", "show", &delivered_id])["alert_job"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_job(&d, &job, "Completed", 20);
    let message = messages(&d, false)[0]["id"].to_string();
    d.ok(&["message", "ack", &message]);

    let expected = Expected(vec![
        ("plain", &plain, "VALID"),
        ("notified", &notified, "VALID"),
        ("delivered", &delivered, "VALID"),
        ("disabled", &disabled, "DISABLED"),
        ("rotated, new secret", &rotated, "VALID"),
        (
            "rotated, old secret in its grace period",
            &old_secret,
            "VALID",
        ),
        ("removed import", TOKEN, "NOT_FOUND"),
    ]);
    expected.check(&d);
    for _ in 0..3 {
        assert_eq!(code(&d, &plain), "VALID");
    }
    // Stopping flushes the usage to the store.
    let before = snapshot(&d);
    d.stop();
    assert!(before["keys"].as_array().unwrap().len() >= 6);
    assert!(before["jobs"].as_array().unwrap().len() >= 2);
    let plain_usage = before["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "plain")
        .unwrap()["usage"]["verifications"]
        .as_u64()
        .unwrap();
    assert!(plain_usage >= 4, "{plain_usage}");

    // redb → PostgreSQL.
    let url = server.database("migrated");
    let redb = format!("redb:{}", d.db_path().display());
    let pg = format!("postgres:{url}");
    let summary = migrated(&redb, &pg);
    let keys = before["keys"].as_array().unwrap().len();
    for line in [
        format!("{keys} keys"),
        format!(
            "{} audit entries",
            before["audit"].as_array().unwrap().len()
        ),
        format!("{} alert jobs", before["jobs"].as_array().unwrap().len()),
        "1 operator messages".to_owned(),
        "1 retired secrets".to_owned(),
        "same server secret".to_owned(),
    ] {
        assert!(summary.contains(&line), "{line:?} not in:\n{summary}");
    }
    // Again: the target holds records now.
    let out = migrate(&["--from", &redb, "--to", &pg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the target is not empty") && err.contains("--into-non-empty"),
        "{err}"
    );
    // A password in the URL is refused, and not repeated.
    let out = migrate(&[
        "--from",
        &redb,
        "--to",
        "postgres:postgresql://apikeyd:hunter2@127.0.0.1/x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must not hold the password") && !err.contains("hunter2"),
        "{err}"
    );

    set_store(
        &d,
        &format!("\n[store]\nbackend = \"postgres\"\nurl = {url:?}\n"),
    );
    d.spawn(&[]);
    assert_eq!(snapshot(&d), before, "what the daemon on PostgreSQL shows");
    expected.check(&d);
    assert_eq!(code(&d, &plain), "VALID");
    let on_pg = snapshot(&d);
    d.stop();

    // PostgreSQL → a fresh redb file where the daemon looks for it.
    std::fs::rename(d.db_path(), d.path("first.redb")).unwrap();
    migrated(&pg, &redb);
    set_store(&d, "");
    d.spawn(&[]);
    assert_eq!(snapshot(&d), on_pg, "what the daemon back on redb shows");
    expected.check(&d);
}
