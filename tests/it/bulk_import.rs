//! `apikeyctl key import --file`: a JSON-lines file of tokens from another system,
//! through the real daemon. A file with bad lines reports every one with its number
//! and imports nothing; a good file imports every key, which then verifies.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use crate::util::{stdout, TestDaemon};

const NOBODY: u32 = 65534; // alice in the test config

fn token(i: usize) -> String {
    format!("legacy-token-{i:04}-abcdefghijklmnopqrstuvwxyz")
}

fn line(owner: &str, name: &str, i: usize) -> Value {
    json!({"owner": owner, "name": name, "token": token(i)})
}

/// `apikeyctl verify`'s answer code.
fn verify(d: &TestDaemon, key: &str, extra: &[&str]) -> String {
    let mut args = vec!["verify", key];
    args.extend_from_slice(extra);
    stdout(&d.ctl(&args)).trim().to_owned()
}

fn write_lines(d: &TestDaemon, file: &str, lines: &[String]) -> String {
    let path = d.path(file);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    // Readable by alice's apikeyctl (uid nobody) too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.display().to_string()
}

#[test]
fn a_bad_file_names_every_bad_line_and_imports_nothing() {
    let d = TestDaemon::start();
    d.create("alice", "taken", &[]);
    let before = d.audit_len();
    let lines = vec![
        line("alice", "ok-1", 1).to_string(),
        "{not json".to_owned(),
        line("alice", "taken", 2).to_string(),
        json!({"owner": "alice", "name": "short", "token": "too-short"}).to_string(),
        line("alice", "dup-token", 1).to_string(),
        line("alice", "OK-1", 3).to_string(),
        json!({"owner": "mallory", "name": "x", "token": token(4)}).to_string(),
        json!({"owner": "alice", "name": "y", "token": token(5), "colour": "red"}).to_string(),
        json!({"owner": "alice", "name": "z", "token": token(6), "expires_at": "2099-01-01T00:00:00Z"}).to_string(),
        String::new(),
        line("bob", "fine", 7).to_string(),
    ];
    let file = write_lines(&d, "bad.jsonl", &lines);
    let err = d.fails(&["key", "import", "--file", &file]);
    for (n, what) in [
        (2, "not valid JSON"),
        (3, "already has a key named \"taken\""),
        (4, "at least 32"),
        (5, "the same token as line 1"),
        (6, "on line 1"),
        (7, "unknown user"),
        (8, "has an unknown field"),
        (9, "MaxExpirationPeriod"),
    ] {
        let prefix = format!("{file}:{n}: ");
        let shown = err.lines().find(|l| l.starts_with(&prefix));
        assert!(
            shown.is_some_and(|l| l.contains(what)),
            "line {n} should be reported with {what:?}:\n{err}"
        );
    }
    for ok in [1, 10, 11] {
        assert!(
            !err.contains(&format!("{file}:{ok}: ")),
            "line {ok} is fine:\n{err}"
        );
    }
    assert!(
        err.contains("8 line(s)") && err.contains("nothing was imported"),
        "{err}"
    );
    // No token is ever echoed.
    for i in 1..8 {
        assert!(!err.contains(&token(i)), "a token was echoed:\n{err}");
    }
    assert!(!err.contains("too-short"), "{err}");
    // Nor is a field name the line made up.
    assert!(!err.contains("colour"), "{err}");
    // Nothing changed.
    assert_eq!(d.keys().len(), 1);
    assert_eq!(d.audit_len(), before);
}

#[test]
fn a_good_file_imports_every_key_with_token_files_and_an_audit_entry_each() {
    let d = TestDaemon::start();
    std::fs::create_dir(d.path("tokens")).unwrap();
    std::fs::write(d.path("tokens/svc"), token(999) + "\n").unwrap();
    // Within MaxExpirationPeriod (p6m) whenever the test runs.
    let expires = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut lines: Vec<String> = (0..200)
        .map(|i| {
            line(
                if i % 2 == 0 { "alice" } else { "bob" },
                &format!("k{i}"),
                i,
            )
            .to_string()
        })
        .collect();
    lines.push(
        json!({"owner": "alice", "name": "from-file", "token_file": "tokens/svc",
               "description": "CI runner", "scopes": ["catalog:read"],
               "ip": ["10.0.0.0/8"], "headers": ["X-Tenant=${key.owner}"],
               "expires_at": expires})
        .to_string(),
    );
    let file = write_lines(&d, "keys.jsonl", &lines);
    let before = d.audit_len();
    let out = d.ok(&["key", "import", "--file", &file]);
    assert!(out.starts_with("Imported 201 key(s)"), "{out}");
    assert!(
        out.contains("alice: 101") && out.contains("bob: 100"),
        "{out}"
    );

    let keys = d.keys();
    assert_eq!(keys.len(), 201);
    assert_eq!(d.audit_len(), before + 201);
    let svc = keys.iter().find(|k| k["name"] == "from-file").unwrap();
    assert_eq!(svc["description"], "CI runner");
    assert_eq!(svc["scopes"], json!(["catalog:read"]));
    assert_eq!(svc["expires_at"], expires);

    // Each imported token verifies as its key; the token_file one from its address.
    for i in [0, 1, 150, 199] {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let answer = verify(&d, &token(i), &[]);
        assert!(
            answer.starts_with("VALID: key ") && answer.ends_with(&format!("\"k{i}\" of {owner}")),
            "{answer}"
        );
    }
    assert_eq!(verify(&d, &token(999), &[]), "IP_NOT_ALLOWED");
    assert!(verify(&d, &token(999), &["--ip", "10.1.2.3"]).ends_with("\"from-file\" of alice"));
    assert_eq!(verify(&d, &token(500), &[]), "NOT_FOUND");

    // Importing the same file again clashes on every line and changes nothing.
    let err = d.fails(&["key", "import", "--file", &file]);
    assert!(err.contains("201 line(s)"), "{err}");
    assert_eq!(d.keys().len(), 201);

    // The keys survive a restart (the import was durable before it answered).
    let mut d = d;
    d.kill9();
    d.restart();
    assert_eq!(d.keys().len(), 201);
    assert!(verify(&d, &token(42), &[]).ends_with("\"k42\" of alice"));
}

#[test]
fn an_owner_imports_only_their_own_keys() {
    let d = TestDaemon::start();
    let file = write_lines(
        &d,
        "mine.jsonl",
        &[
            line("alice", "mine", 1).to_string(),
            line("bob", "theirs", 2).to_string(),
        ],
    );
    let out = d.ctl_as(Some(NOBODY), &["key", "import", "--file", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":2: ") && err.contains("may only create keys for themselves"),
        "{err}"
    );
    assert!(d.keys().is_empty());

    let file = write_lines(&d, "mine2.jsonl", &[line("alice", "mine", 1).to_string()]);
    let out = d.ctl_as(Some(NOBODY), &["key", "import", "--file", &file, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["imported"], 1);
    assert_eq!(summary["owners"]["alice"], 1);

    // An owner's file is held whole while it is checked: at most 32 MiB of it.
    let big: Vec<String> = (0..400_000)
        .map(|i| line("alice", &format!("n{i}"), i).to_string())
        .collect();
    let file = write_lines(&d, "big.jsonl", &big);
    assert!(std::fs::metadata(&file).unwrap().len() > 32 << 20);
    let out = d.ctl_as(Some(NOBODY), &["key", "import", "--file", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("larger than 32 MiB, the most a key owner may import at once"),
        "{err}"
    );
    assert_eq!(d.keys().len(), 1);
}

/// The head of a bulk import of `len` bytes over TCP, as the admin key `key`.
fn start_upload(d: &TestDaemon, key: &str, len: usize) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = crate::util::connect(d.addr, std::time::Duration::from_secs(30));
    write!(
        s,
        "POST /v1/admin/keys/bulk-import HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// Bytes of `body` written before the daemon stopped reading for `patience`.
fn write_until_stalled(
    s: &mut std::net::TcpStream,
    body: &[u8],
    patience: std::time::Duration,
) -> usize {
    use std::io::Write;
    s.set_write_timeout(Some(patience)).unwrap();
    let mut sent = 0;
    while sent < body.len() {
        match s.write(&body[sent..]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("{e}"),
        }
    }
    sent
}

/// One import at a time, and a file waiting for its turn is not read: it stays
/// with its client (whose socket fills up), not in the daemon's memory.
#[test]
fn a_file_waiting_for_its_turn_stays_with_its_client() {
    use std::time::Duration;
    let d = TestDaemon::start();
    let (_, admin_key) = d.create("admin", "ops", &["--scopes", "apikeyd:admin"]);
    // One key, then 24 MiB of blank lines (skipped): more than loopback's socket
    // buffers hold, so a client gets its file out only while the daemon reads it.
    let file = |name: &str, i: usize| {
        let mut f = line("alice", name, i).to_string() + "\n";
        f.push_str(&" \n".repeat(12 << 20));
        f.into_bytes()
    };
    let (a, b) = (file("first", 1), file("second", 2));

    // The first file all but its last byte: the daemon reads it, so it has the turn.
    let mut first = start_upload(&d, &admin_key, a.len());
    let sent = write_until_stalled(&mut first, &a[..a.len() - 1], Duration::from_secs(30));
    assert_eq!(sent, a.len() - 1, "the first file is read as it comes");

    // The second waits, unread: its client cannot send it all.
    let mut second = start_upload(&d, &admin_key, b.len());
    let early = write_until_stalled(&mut second, &b, Duration::from_secs(1));
    assert!(
        early < b.len() / 2,
        "{early} of {} bytes of a file waiting its turn were taken",
        b.len()
    );

    // The first ends and is imported; then the second is read and imported.
    let mut first_reader = std::io::BufReader::new(first.try_clone().unwrap());
    let last = write_until_stalled(&mut first, &a[a.len() - 1..], Duration::from_secs(30));
    assert_eq!(last, 1);
    let answer = crate::util::read_answer(&mut first_reader);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let rest = write_until_stalled(&mut second, &b[early..], Duration::from_secs(30));
    assert_eq!(
        early + rest,
        b.len(),
        "the second file is read once it is its turn"
    );
    let answer = crate::util::read_answer(&mut std::io::BufReader::new(second));
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert!(verify(&d, &token(1), &[]).ends_with("\"first\" of alice"));
    assert!(verify(&d, &token(2), &[]).ends_with("\"second\" of alice"));
}
