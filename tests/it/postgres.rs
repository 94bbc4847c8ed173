//! The daemon on PostgreSQL (`[store] backend = "postgres"`), on a private server
//! (src/store/postgres/test_server.rs): keys survive a restart there, and a node with
//! another server secret is refused (several nodes: `cluster.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use crate::pg_server::TestServer;
use crate::util::*;

/// A daemon configured for database `url` (and more `[store]` lines), not started.
pub fn on_postgres(url: &str, more: &str) -> TestDaemon {
    on_postgres_with(url, more, "")
}

/// [`on_postgres`] with `extra` configuration (tables before `[store]`).
pub fn on_postgres_with(url: &str, more: &str, extra: &str) -> TestDaemon {
    let d = TestDaemon::configured(DEFAULT_POLICY, extra);
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!(
        "\n[store]\nbackend = \"postgres\"\nurl = {url:?}\n{more}"
    ));
    std::fs::write(&d.config, text).unwrap();
    d
}

/// Run apikeyd on `d`'s config, expecting it to refuse to start: its stderr.
fn refused(d: &TestDaemon) -> String {
    let mut child = Command::new(APIKEYD)
        .arg("--config")
        .arg(&d.config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("apikeyd kept running on a database another apikeyd holds");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "apikeyd exited 0: {err}");
    err
}

#[test]
fn keys_live_in_postgresql_across_restarts_and_another_server_secret_is_refused() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("node");
    let mut d = on_postgres(&url, "");
    d.spawn(&[]);
    let (id, secret) = d.create("alice", "pg", &[]);
    assert!(d.ctl(&["verify", &secret]).status.success());
    d.ok(&["key", "disable", &id]);
    assert!(!d.ctl(&["verify", &secret]).status.success());
    d.ok(&["key", "enable", &id]);
    d.restart();
    // Loaded back from PostgreSQL: nothing was written to redb.
    assert!(!d.db_path().exists(), "a redb file was written");
    assert!(d.ctl(&["verify", &secret]).status.success());
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(shown["status"], "active");
    assert!(
        d.audit_len() >= 3,
        "create, disable, enable in the audit trail"
    );

    // Another server secret (each test daemon makes its own) would make every key
    // NOT_FOUND: refused, whether the first node runs or not.
    let second = on_postgres(&url, "");
    let err = refused(&second);
    assert!(err.contains("another server secret"), "{err}");
    d.stop();
    let err = refused(&second);
    assert!(err.contains("another server secret"), "{err}");
}

#[test]
fn check_config_refuses_a_password_in_the_store_url() {
    let d = on_postgres("postgresql://apikeyd:hunter2hunter2@127.0.0.1/apikeyd", "");
    let out = check_config(&d.config);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &stdout(&out);
    assert!(text.contains("store.url"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is repeated: {text}"
    );
}
