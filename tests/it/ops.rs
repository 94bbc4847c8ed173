//! Operating the binaries safely: `--out` key files, closed pipes, and what the daemon
//! leaves readable on the machine (state directory, database, core dumps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::util::{is_root, require_root, stdout, TestDaemon, APIKEYCTL, DEFAULT_POLICY};

const NOBODY: u32 = 65534; // mapped to alice in the test config

fn verify_code(d: &TestDaemon, secret: &str) -> String {
    let (status, v) = d.post(
        "/v1/verify",
        &serde_json::json!({ "key": secret }).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    v["code"].as_str().unwrap().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Regression: `key rotate --out FILE` called the API first and opened `FILE.APIKEY`
/// afterwards. A dangling symlink at that name made the open fail after the rotation
/// had taken effect: the old secret was refused and the new one never shown. The file
/// is now created (O_EXCL, O_NOFOLLOW) before the call; `key create --out` likewise.
#[test]
fn out_to_a_dangling_symlink_is_refused_before_anything_changes() {
    let d = TestDaemon::start();
    let (id, old) = d.create("alice", "k", &[]);
    let audit = d.audit_len();
    let keys = d.keys().len();
    let target = d.path("elsewhere/stolen");
    let link = d.path("new.APIKEY");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let out = d.ctl(&["key", "rotate", &id, "--out", link.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains("the key was not rotated"), "{err}");
    // The old secret still works, and nothing was done or written.
    assert_eq!(verify_code(&d, &old), "VALID");
    assert_eq!(d.audit_len(), audit);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(!target.exists());

    // Without the suffix, the same name.
    let out = d.ctl(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "k2",
        "--out",
        d.path("new").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the key was not created"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.keys().len(), keys);
    assert_eq!(d.audit_len(), audit);
}

/// Regression: with `--out` in a directory the caller cannot write, the rotation took
/// effect and only then did creating the file fail, losing the new secret.
#[test]
fn out_in_an_unwritable_directory_is_refused_before_anything_changes() {
    if !require_root("to run apikeyctl as nobody in a directory owned by root") {
        return;
    }
    let d = TestDaemon::start();
    let (id, old) = d.create("alice", "k", &[]);
    let audit = d.audit_len();
    // The test dir is root's, mode 0755: nobody cannot create files in it.
    let path = d.path("alice");
    let out = d.ctl_as(
        Some(NOBODY),
        &["key", "rotate", &id, "--out", path.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("ermission denied"), "{err}");
    assert!(err.contains("the key was not rotated"), "{err}");
    assert_eq!(verify_code(&d, &old), "VALID");
    assert_eq!(d.audit_len(), audit);

    // A path whose "directory" is a file, for any caller.
    std::fs::write(d.path("plain"), "").unwrap();
    let out = d.ctl(&[
        "key",
        "rotate",
        &id,
        "--out",
        d.path("plain/k").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the key was not rotated"),
        "{}",
        stderr(&out)
    );
    assert_eq!(verify_code(&d, &old), "VALID");
    assert_eq!(d.audit_len(), audit);
}

/// A failed call leaves no empty key file behind.
#[test]
fn out_file_is_removed_when_the_call_fails() {
    let d = TestDaemon::start();
    let path = d.path("gone");
    let out = d.ctl(&[
        "key",
        "rotate",
        "00000000-0000-0000-0000-000000000000",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!d.path("gone.APIKEY").exists());
}

#[test]
fn out_writes_the_secret_to_a_private_file_only() {
    let d = TestDaemon::start();
    let (id, old) = d.create("alice", "k", &[]);
    let path = d.path("rotated");
    let text = d.ok(&["key", "rotate", &id, "--out", path.to_str().unwrap()]);
    let file = d.path("rotated.APIKEY");
    assert_eq!(mode(&file), 0o600);
    let secret = std::fs::read_to_string(&file).unwrap();
    let secret = secret.strip_suffix('\n').unwrap();
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("rotated.APIKEY (mode 0600)"), "{text}");
    assert_eq!(verify_code(&d, secret), "VALID");
    assert_ne!(verify_code(&d, &old), "VALID");

    let v = d.json(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "k2",
        "--out",
        d.path("created.APIKEY").to_str().unwrap(),
    ]);
    assert!(v.get("key").is_none(), "{v}");
    assert_eq!(
        v["key_file"].as_str().unwrap(),
        d.path("created.APIKEY").to_str().unwrap()
    );
    assert_eq!(mode(&d.path("created.APIKEY")), 0o600);
}

/// Run apikeyctl with a file-size limit of 0 (SIGXFSZ ignored), so writing the key file
/// fails with EFBIG after the key was issued: a disk that fills up at the wrong moment.
fn ctl_that_cannot_write_files(d: &TestDaemon, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 0 && exec \"$0\" \"$@\"")
        .arg(APIKEYCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("APIKEYD_SOCKET")
        .output()
        .unwrap()
}

/// Regression: when writing the `--out` file failed after the key was issued, the
/// command failed with an error and the secret was lost. Now the secret is printed on
/// stdout with a warning on stderr, the exit status is non-zero, and the partial file
/// is removed.
#[test]
fn secret_is_printed_when_the_out_file_cannot_be_written() {
    let d = TestDaemon::start();
    let (id, old) = d.create("alice", "k", &[]);
    let path = d.path("full");
    let out =
        ctl_that_cannot_write_files(&d, &["key", "rotate", &id, "--out", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: cannot write the key to"), "{err}");
    assert!(err.contains("printed on stdout instead"), "{err}");
    let text = stdout(&out);
    let secret = text.lines().last().unwrap_or_default().trim();
    assert_eq!(verify_code(&d, secret), "VALID", "stdout:\n{text}");
    assert_ne!(verify_code(&d, &old), "VALID");
    assert!(
        !d.path("full.APIKEY").exists(),
        "the partial file is removed"
    );

    // With --json the object carries the key.
    let out = ctl_that_cannot_write_files(
        &d,
        &[
            "key",
            "create",
            "--user",
            "alice",
            "--name",
            "k2",
            "--json",
            "--out",
            path.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("was created all the same"),
        "{}",
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verify_code(&d, v["key"].as_str().unwrap()), "VALID");
}

/// apikeyctl with stdout on a pipe whose reader is already gone.
fn ctl_into_closed_pipe(d: &TestDaemon, args: &[&str]) -> Output {
    // CLOEXEC: no child that another test spawns meanwhile may keep the reader open.
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    drop(reader);
    d.ctl_command(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Regression: `apikeyctl audit | head -1` panicked ("failed printing to stdout: Broken
/// pipe", exit 101) once `head` had gone. Output to a closed pipe now ends apikeyctl
/// quietly with status 141, as SIGPIPE would.
#[test]
fn closed_pipe_ends_apikeyctl_quietly() {
    let d = TestDaemon::start();
    let (id, _) = d.create("alice", "k", &[]);
    for args in [
        &["audit"][..],
        &["audit", "--json"],
        &["key", "list"],
        &["key", "show", &id],
        &["job", "list"],
        &["whoami"],
    ] {
        let out = ctl_into_closed_pipe(&d, args);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }

    // The real thing: a shell pipeline whose reader stops after one line, with more
    // output than the pipe holds (about 150 KB).
    let description = "d".repeat(990);
    for i in 0..150 {
        d.ok(&[
            "key",
            "create",
            "--user",
            "bob",
            "--name",
            &format!("many-{i}"),
            "--description",
            &format!("{i} {description}"),
        ]);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; \"$0\" --socket \"$1\" key list | head -1")
        .arg(APIKEYCTL)
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(stdout(&out).starts_with("ID "), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
    // 141 when apikeyctl met the closed pipe; 0 should a listing ever fit in the pipe.
    assert!(
        matches!(out.status.code(), Some(141 | 0)),
        "{:?}",
        out.status
    );
}

/// Regression: outside systemd the daemon created its state directory and database
/// with the process umask (0755 and 0644 under the usual 022), so every local user
/// could read the keys' hashes and owners. Now: directory 0700, database and server
/// secret 0600, whatever the umask.
#[test]
fn state_directory_and_database_are_private_under_umask_022() {
    let mut d = TestDaemon::configured(DEFAULT_POLICY, "");
    d.spawn_as(&[], None, Some(0o022));
    d.create("alice", "k", &[]);
    assert_eq!(mode(&d.path("state")), 0o700);
    assert_eq!(mode(&d.db_path()), 0o600);
    assert_eq!(mode(&d.path("state/server.secret")), 0o600);

    // Existing files that others may read: the database is tightened, the directory
    // (the operator's) is reported.
    d.stop();
    std::fs::set_permissions(d.db_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(d.path("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.spawn_as(&[], None, Some(0o022));
    assert_eq!(mode(&d.db_path()), 0o600);
    let log = d.log_text();
    assert!(
        log.contains("database was readable by group or others"),
        "{log}"
    );
    assert!(
        log.contains("state directory (database, server secret) is open to group or others"),
        "{log}"
    );
}

/// Regression: the daemon could dump core (with the server secret and fresh keys in
/// its memory), and other processes of its user could read its memory. It now marks
/// itself non-dumpable at start, which the kernel shows by handing /proc/PID/* to root.
#[test]
fn daemon_is_not_dumpable() {
    let mut d = TestDaemon::configured(DEFAULT_POLICY, "");
    // As root, run the daemon as nobody: /proc/PID/fd of a dumpable process belongs
    // to the process's user, of a non-dumpable one to root.
    let uid = is_root().then_some(NOBODY);
    if let Some(uid) = uid {
        std::os::unix::fs::chown(d.dir.path(), Some(uid), Some(uid)).unwrap();
    }
    d.spawn_as(&[], uid, None);
    let pid = d.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let real_uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert_ne!(real_uid, 0, "the check needs a daemon that is not root");
    // Not /proc/PID itself: the kernel leaves world-readable directories to the user.
    let owner = std::fs::metadata(format!("/proc/{pid}/fd")).unwrap().uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/fd belongs to uid {owner}: the daemon is dumpable"
    );
}
