//! The configuration file through the real binaries: `check-config` reports every
//! problem at once, and SIGHUP reloads the file or, when it is broken, keeps the
//! configuration in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use crate::util::{check_config, stdout, wait_until, TestDaemon, DEFAULT_POLICY};

#[test]
fn check_config_reports_every_problem() {
    let ok = check_config(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/apikeyd.toml"
    )));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let line = stdout(&ok);
    assert_eq!(line.lines().count(), 1);
    assert!(line.contains("configuration OK"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[ApiKey]\nMaxExpirationPeriod = \"p6mjunk\"\nNotAccessedExpirationPeriod = \"6m\"\n[server]\nlisten = \"nowhere\"\n[users.x]\ngroups = [\"Ghost\"]\n",
    )
    .unwrap();
    let out = check_config(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "bad.toml: ApiKey.MaxExpirationPeriod: \"p6mjunk\"",
        "bad.toml: ApiKey.NotAccessedExpirationPeriod: \"6m\"",
        "bad.toml: server.listen",
        "bad.toml: users.x.groups: unknown group \"Ghost\"",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    std::fs::write(&bad, "[ApiKey]\nMaxExpirationPeriode = \"p6m\"\n").unwrap();
    let out = check_config(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ApiKey.MaxExpirationPeriode: unknown key")
    );
}

#[test]
fn sighup_reloads_users_and_rejects_a_bad_file() {
    let d = TestDaemon::start();
    d.fails(&["key", "create", "--user", "dave", "--name", "x"]);
    let base = std::fs::read_to_string(&d.config).unwrap();
    let with_dave = format!("{base}\n[users.dave]\ngroups = [\"Synchronizer\"]\n");
    std::fs::write(&d.config, &with_dave).unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        d.ctl(&["key", "create", "--user", "dave", "--name", "x"])
            .status
            .success()
    });
    // A broken file is rejected; the previous configuration stays in force.
    std::fs::write(
        &d.config,
        base.replace(DEFAULT_POLICY, "MaxExpirationPeriod = \"bogus\""),
    )
    .unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        d.log_text().contains("reload rejected")
    });
    assert!(d.log_text().contains("ApiKey.MaxExpirationPeriod"));
    d.ok(&["key", "create", "--user", "dave", "--name", "y"]);
    let err = d.fails(&[
        "key",
        "create",
        "--user",
        "dave",
        "--name",
        "z",
        "--expires-in",
        "p7m",
    ]);
    assert!(err.contains("p6m"), "old policy still in force: {err}");
}

/// A reload applies users, groups and the policy, not the listeners or the store:
/// it says which changed sections wait for a restart. (A `[store]` change was
/// ignored without a word.)
#[test]
fn a_reload_names_the_changed_sections_that_need_a_restart() {
    let d = TestDaemon::start();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let changed = text.replace("worker_threads = 2", "worker_threads = 1")
        + "\n[store]\nbackend = \"postgres\"\nurl = \"postgresql://apikeyd@127.0.0.1:1/apikeyd\"\n";
    std::fs::write(&d.config, changed).unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(20), || {
        d.log_text().contains("configuration reloaded")
    });
    assert!(
        d.log_text()
            .contains("[server] and [store] settings changed; they take effect after a restart"),
        "{}",
        d.log_text()
    );
    // Still on its redb store: changes go on.
    d.create("alice", "after-reload", &[]);
}
