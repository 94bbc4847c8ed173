//! `apikeyctl backup` and `apikeyd restore` (issue 13, part 5): a snapshot taken
//! while keys are being created restores, on a new state directory with the same
//! server secret, every key acknowledged before the backup started, with its jobs
//! and audit entries; the restore refuses what it must.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{TestDaemon, APIKEYD};

fn valid(d: &TestDaemon, key: &str) -> bool {
    let (status, v) = d.post("/v1/verify", &serde_json::json!({ "key": key }).to_string());
    assert_eq!(status, 200, "{v}");
    v["valid"] == true
}

fn restore(d: &TestDaemon, file: &Path, extra: &[&str]) -> Output {
    Command::new(APIKEYD)
        .arg("--config")
        .arg(&d.config)
        .arg("restore")
        .arg(file)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A new machine: its own state directory, holding a copy of `from`'s server secret.
fn new_machine_with_secret_of(from: &TestDaemon) -> TestDaemon {
    let to = TestDaemon::configured(crate::util::DEFAULT_POLICY, "");
    let state = to.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(
        from.path("state/server.secret"),
        state.join("server.secret"),
    )
    .unwrap();
    to
}

#[test]
fn a_backup_under_write_load_restores_every_key_acknowledged_before_it() {
    let mut d = TestDaemon::start();
    // Keys with notifications (alert jobs), one disabled, and their audit entries.
    let mut before = Vec::new();
    for i in 0..10 {
        before.push(d.create("alice", &format!("seed{i}"), &["--notify-before", "p7d"]));
    }
    d.ok(&["key", "disable", &before[0].0]);
    let disabled = before.remove(0);

    // A writer creates keys all along; each is recorded once apikeyctl returned.
    let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let (socket, config) = (d.socket.clone(), d.config.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(crate::util::APIKEYCTL)
                    .arg("--socket")
                    .arg(&socket)
                    .arg("--config")
                    .arg(&config)
                    .args(["key", "create", "--user", "bob", "--json", "--name"])
                    .arg(format!("load{n}"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", text(&out));
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                let (id, key) = (v["id"].as_str().unwrap(), v["key"].as_str().unwrap());
                acked
                    .lock()
                    .unwrap()
                    .push((id.to_owned(), key.to_owned(), Instant::now()));
                n += 1;
            }
        })
    };
    crate::util::wait_until(Duration::from_secs(30), || acked.lock().unwrap().len() >= 5);

    let file = d.path("backup.redb");
    let started = Instant::now();
    let out = d.ctl(&["backup", file.to_str().unwrap(), "--json"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    // Let the writer go on past the backup, then stop it.
    let len_after = acked.lock().unwrap().len();
    crate::util::wait_until(Duration::from_secs(30), || {
        acked.lock().unwrap().len() >= len_after + 3
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server secret") && stderr.contains("server.secret"),
        "the reminder names the secret and where it is: {stderr}"
    );
    let counts = &report["snapshot"]["counts"];
    let acked = acked.lock().unwrap().clone();
    let acked_before: Vec<_> = acked.iter().filter(|a| a.2 < started).collect();
    assert!(!acked_before.is_empty());
    // The snapshot holds at least what was acknowledged before it started, and not
    // what was created after it ended.
    let keys_in = counts["keys"].as_u64().unwrap() as usize;
    assert!(keys_in >= 10 + acked_before.len(), "{report}");
    assert!(keys_in <= 10 + acked.len(), "{report}");
    eprintln!(
        "backup of {keys_in} keys: {} bytes in {took:?} under load",
        report["bytes"]
    );
    // The daemon went on serving: every key acknowledged verifies there.
    for (_, key, _) in &acked {
        assert!(valid(&d, key));
    }
    // The audit trail says who took a copy of everyone's keys, and of how much.
    let entries = d.json(&["audit", "--limit", "100000"])["entries"].clone();
    let backups: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "backup")
        .collect();
    assert_eq!(backups.len(), 1, "one audit entry per backup: {entries}");
    let detail = backups[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("snapshot of {keys_in} keys")),
        "{detail}"
    );
    assert!(backups[0]["key_id"].is_null(), "{}", backups[0]);
    d.stop();

    // A new machine with the same secret.
    let mut n = new_machine_with_secret_of(&d);
    let out = restore(&n, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restored"), "{}", text(&out));
    n.spawn(&[]);
    for (_, key) in &before {
        assert!(valid(&n, key), "a seed key verifies after the restore");
    }
    assert!(!valid(&n, &disabled.1), "a disabled key stays disabled");
    for (id, key, _) in &acked_before {
        assert!(
            valid(&n, key),
            "key {id}, acknowledged before the backup, verifies"
        );
    }
    assert_eq!(n.keys().len(), keys_in);
    let jobs = n.json(&["job", "list", "--limit", "1000"])["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs as u64, counts["jobs"].as_u64().unwrap());
    assert!(jobs >= 10, "the seed keys' alert jobs are back");
    assert_eq!(n.audit_len() as u64, counts["audit"].as_u64().unwrap());
    // The restored daemon takes changes.
    let (_, fresh) = n.create("alice", "after-restore", &[]);
    assert!(valid(&n, &fresh));
}

#[test]
fn restore_refuses_an_existing_database_a_running_daemon_another_secret_and_other_files() {
    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    let file = d.path("backup.redb");
    d.ok(&["backup", file.to_str().unwrap()]);
    // The file is not overwritten without --force.
    let again = d.fails(&["backup", file.to_str().unwrap()]);
    assert!(again.contains("--force"), "{again}");

    // Onto the running daemon's own database: refused, whatever --force says.
    let out = restore(&d, &file, &["--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("running apikeyd"), "{}", text(&out));
    d.stop();
    // Onto an existing database, stopped: refused without --force, and untouched.
    let out = restore(&d, &file, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    // With --force: replaced, the old one kept aside.
    let out = restore(&d, &file, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let kept = std::fs::read_dir(d.path("state"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("apikeyd.redb.replaced-")
        })
        .count();
    assert_eq!(kept, 1, "{}", text(&out));
    d.spawn(&[]);
    assert!(valid(&d, &key));
    d.stop();

    // Another secret: refused.
    let other = TestDaemon::configured(crate::util::DEFAULT_POLICY, "");
    std::fs::create_dir_all(other.path("state")).unwrap();
    std::fs::write(other.path("state/server.secret"), "ab".repeat(32)).unwrap();
    let out = restore(&other, &file, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("another server secret"),
        "{}",
        text(&out)
    );
    assert!(!other.db_path().exists(), "nothing was put in place");

    // No secret at all: refused, and none is created.
    let bare = TestDaemon::configured(crate::util::DEFAULT_POLICY, "");
    let out = restore(&bare, &file, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no server secret"), "{}", text(&out));
    assert!(!bare.path("state/server.secret").exists());

    // Not a snapshot: a live database, and a file that is not a database.
    let n = new_machine_with_secret_of(&d);
    let out = restore(&n, &d.db_path(), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not an apikeyd snapshot"),
        "{}",
        text(&out)
    );
    let junk = n.path("junk.redb");
    std::fs::write(&junk, b"not a database at all").unwrap();
    let out = restore(&n, &junk, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not an apikeyd snapshot"),
        "{}",
        text(&out)
    );
    assert!(!n.db_path().exists(), "nothing was put in place");
}

#[test]
fn backup_is_for_admins_only() {
    let d = TestDaemon::start();
    let out = d.ctl_as(Some(65534), &["backup", "/tmp/never-written.redb"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("admins only"), "{}", text(&out));
    assert!(!Path::new("/tmp/never-written.redb").exists());
}
