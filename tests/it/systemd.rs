//! The systemd integration in `systemd/`: the unit must pass `systemd-analyze verify`
//! and stay at or below exposure 2.0 under `systemd-analyze security`, and the unit,
//! sysusers.d and tmpfiles.d files must agree with each other and with what the daemon
//! expects (sd_notify, SIGHUP reload, the directories it reads from the environment).
//!
//! The `systemd-analyze` checks need the tool (`.ci/run` installs systemd); without it
//! they fail, see `util::require`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Highest `systemd-analyze security` score we accept ("OK" ends at 4.9; we aim lower).
const MAX_EXPOSURE: f64 = 2.0;
/// Where the unit expects the daemon; the tests swap in the freshly built binary.
const INSTALLED_BINARY: &str = "/usr/bin/apikeyd";
const UNIT_NAME: &str = "apikeyd.service";

fn systemd_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

fn read_systemd_file(name: &str) -> String {
    let path = systemd_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `Key=value` settings of a unit file in order, comments and section headers dropped.
/// Enough for our own unit, which uses no line continuations.
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn single<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    match values(settings, key).as_slice() {
        [v] => v,
        other => panic!("expected exactly one {key}= in {UNIT_NAME}, found {other:?}"),
    }
}

/// Quote a path for a unit's command line: `%` is a specifier and `$` a variable there.
fn quote_for_unit(path: &str) -> String {
    let escaped = path
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// Copy the unit into `dir` under its real name (`systemd-analyze` derives the unit name
/// from the file name), with ExecStart pointing at the built binary: `verify` insists
/// that the binary exists.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = read_systemd_file(UNIT_NAME);
    let prefix = format!("ExecStart={INSTALLED_BINARY} ");
    let replacement = format!(
        "ExecStart={} ",
        quote_for_unit(env!("CARGO_BIN_EXE_apikeyd"))
    );
    let mut rewritten = 0;
    let mut text: String = unit
        .lines()
        .map(|line| match line.strip_prefix(&prefix) {
            Some(rest) => {
                rewritten += 1;
                format!("{replacement}{rest}")
            }
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    assert_eq!(
        rewritten, 1,
        "{UNIT_NAME} should have exactly one line starting with {prefix:?}"
    );
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, text).unwrap();
    path
}

/// Run `systemd-analyze ARGS`, or `None` when it is not installed and skipping was
/// asked for (`util::require`; otherwise the test fails).
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> Option<Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            crate::util::require("systemd-analyze on PATH (install systemd)", false);
            None
        }
        Err(e) => panic!("running systemd-analyze: {e}"),
    }
}

/// The major version from `systemd-analyze --version` ("systemd 252 (252.38-1~deb12u1)").
fn systemd_version(version_output: &Output) -> Option<u32> {
    String::from_utf8_lossy(&version_output.stdout)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let Some(out) = systemd_analyze(&["verify".as_ref(), unit.as_os_str()]) else {
        return;
    };
    assert!(
        out.status.success(),
        "systemd-analyze verify failed\n{}",
        describe(&out)
    );
    // Unknown keys and bad values are only warnings (exit status 0), so read stderr too.
    // Lines about other units on this machine are not ours to judge.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("apikeyd")).collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained about the unit:\n{}\n\n{}",
        ours.join("\n"),
        describe(&out)
    );
}

#[test]
fn unit_exposure_is_at_most_two() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let Some(version) = systemd_analyze(&["--version".as_ref()]) else {
        return;
    };
    // `--offline` came in systemd 250; without it the command needs a running manager.
    let v = systemd_version(&version);
    if !crate::util::require(
        &format!("systemd 250+ for `security --offline` (this is {v:?})"),
        v.is_none_or(|v| v >= 250),
    ) {
        return;
    }
    let Some(out) = systemd_analyze(&[
        "security".as_ref(),
        "--offline=true".as_ref(),
        "--no-pager".as_ref(),
        unit.as_os_str(),
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "systemd-analyze security failed\n{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = format!("Overall exposure level for {UNIT_NAME}:");
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| l.split_once(&marker))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no {marker:?} line with a number\n{}", describe(&out)));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE:.1}; tighten the unit\n{}",
        describe(&out)
    );
}

#[test]
fn unit_matches_what_the_daemon_does() {
    let unit = read_systemd_file(UNIT_NAME);
    let s = settings(&unit);

    // The daemon speaks sd_notify itself; plugins it spawns must not.
    assert_eq!(single(&s, "Type"), "notify");
    assert_eq!(single(&s, "NotifyAccess"), "main");
    let reload = single(&s, "ExecReload");
    assert!(
        reload.contains("HUP") && reload.contains("$MAINPID"),
        "ExecReload= should send SIGHUP to $MAINPID, got {reload:?}"
    );
    let exec_start = single(&s, "ExecStart");
    assert!(
        exec_start.starts_with(&format!("{INSTALLED_BINARY} ")),
        "ExecStart= should run {INSTALLED_BINARY}, got {exec_start:?}"
    );
    assert!(
        exec_start.contains("--config"),
        "ExecStart= should pass --config, got {exec_start:?}"
    );

    // Core dumps would write the server secret and fresh keys to disk; the daemon also
    // marks itself non-dumpable, which covers runs outside systemd.
    assert_eq!(single(&s, "LimitCORE"), "0", "core dumps must be off");

    // The daemon finds its database, socket and config through these.
    assert_eq!(single(&s, "StateDirectory"), "apikeyd");
    assert_eq!(single(&s, "RuntimeDirectory"), "apikeyd");
    assert_eq!(single(&s, "ConfigurationDirectory"), "apikeyd");
    // Local users reach the admin socket; SO_PEERCRED decides what they may do.
    assert_eq!(single(&s, "RuntimeDirectoryMode"), "0755");

    // Settings that would break the daemon even though they raise the security score.
    for (key, why) in [
        (
            "PrivateUsers",
            "peer uids on the admin socket would all read as nobody",
        ),
        (
            "PrivateNetwork",
            "the daemon serves verify requests over TCP",
        ),
        (
            "IPAddressDeny",
            "the daemon serves verify requests over TCP",
        ),
        (
            "DynamicUser",
            "the sysusers.d user owns the state directory",
        ),
    ] {
        for v in values(&s, key) {
            assert!(
                matches!(v, "" | "no" | "false" | "0" | "off"),
                "{key}={v} must not be set: {why}"
            );
        }
    }
}

#[test]
fn sysusers_and_tmpfiles_agree_with_the_unit() {
    let unit = read_systemd_file(UNIT_NAME);
    let s = settings(&unit);
    let user = single(&s, "User");
    let group = single(&s, "Group");

    let entries = |name: &str| -> Vec<Vec<String>> {
        read_systemd_file(name)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };

    let sysusers = entries("apikeyd.sysusers.conf");
    assert!(
        sysusers.iter().any(|e| e[0] == "u" && e[1] == user),
        "apikeyd.sysusers.conf should create the user {user:?} (a `u` line also makes its group)"
    );
    assert_eq!(
        user, group,
        "the `u` line creates a group named like the user"
    );

    let tmpfiles = entries("apikeyd.tmpfiles.conf");
    let dir = |path: &str| -> &Vec<String> {
        tmpfiles
            .iter()
            .find(|e| e[0] == "d" && e[1] == path)
            .unwrap_or_else(|| panic!("apikeyd.tmpfiles.conf should create {path}"))
    };
    let state = dir(&format!("/var/lib/{}", single(&s, "StateDirectory")));
    assert_eq!(
        (state[2].as_str(), state[3].as_str(), state[4].as_str()),
        (single(&s, "StateDirectoryMode"), user, group),
        "state directory: mode, user, group"
    );
    let config = dir(&format!("/etc/{}", single(&s, "ConfigurationDirectory")));
    assert_eq!(
        (config[2].as_str(), config[3].as_str(), config[4].as_str()),
        (single(&s, "ConfigurationDirectoryMode"), "root", group),
        "configuration directory: mode, user, group"
    );
}
