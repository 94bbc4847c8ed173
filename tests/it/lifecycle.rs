//! Key lifecycle through the real binaries: create, verify, list, edit, disable,
//! rotate, remove, import, restarts, kills, and bad input. Reloads are in `config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::util::{http, require_root, stdout, TestDaemon, APIKEYD};

fn verify_code(d: &TestDaemon, key: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", key];
    args.extend_from_slice(extra);
    let out = d.ctl(&args);
    (out.status.success(), stdout(&out).trim().to_owned())
}

#[test]
fn create_verify_and_manage_a_key() {
    let d = TestDaemon::start();
    let v = d.json(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "nightly sync",
        "--description",
        "catalog sync job",
        "--scopes",
        "catalog:sync",
        "--ip",
        "10.0.0.0/255.0.0.0",
        "--header",
        "X-Tenant=${key.owner}:${key.name}",
    ]);
    for field in ["id", "key", "name", "owner", "scopes", "expires_at"] {
        assert!(!v[field].is_null(), "{field} missing from {v}");
    }
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["scopes"], json!(["catalog:sync"]));
    let id = v["id"].as_str().unwrap().to_owned();
    let key = v["key"].as_str().unwrap().to_owned();

    // apikeyctl verify: exit 0 only for VALID, the code otherwise.
    assert_eq!(verify_code(&d, &key, &[]), (false, "IP_NOT_ALLOWED".into()));
    assert!(verify_code(&d, &key, &["--ip", "10.1.2.3"]).0);
    assert_eq!(
        verify_code(&d, &key, &["--ip", "10.1.2.3", "--scope", "catalog:read"]),
        (false, "INSUFFICIENT_SCOPE".into())
    );
    assert_eq!(
        verify_code(&d, "akd_garbage", &[]),
        (false, "MALFORMED".into())
    );

    // POST /v1/verify on TCP.
    let (status, body) = d.post(
        "/v1/verify",
        &json!({"key": key, "scope": "catalog:sync", "ip": "10.9.9.9"}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(body["valid"], true);
    assert_eq!(body["code"], "VALID");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["name"], "nightly sync");
    assert_eq!(body["owner"], "alice");
    assert_eq!(body["headers"]["X-Tenant"], "alice:nightly sync");
    assert!(body["effective_expires_at"].is_string());
    let (_, body) = d.post("/v1/verify", &json!({"key": "akd_x"}).to_string());
    assert_eq!(body, json!({"valid": false, "code": "MALFORMED"}));

    // list --wide shows the columns the extension shows.
    let list = d.ok(&["key", "list", "--wide"]);
    for col in [
        "ID",
        "NAME",
        "DESCRIPTION",
        "OWNER",
        "STATUS",
        "CREATED",
        "CHANGED",
        "LAST USED",
        "EXPIRES",
        "DETAILS",
        "NOTIFICATION",
    ] {
        assert!(list.contains(col), "{col} missing:\n{list}");
    }
    assert!(
        list.contains("nightly sync") && list.contains("if not used again (inactivity)"),
        "{list}"
    );
    let shown = d.json(&["key", "show", &id]);
    assert!(
        shown["last_used_at"].is_string(),
        "verification recorded as last use: {shown}"
    );

    // Disable takes effect on the very next verification; enable restores.
    d.ok(&["key", "disable", &id]);
    assert_eq!(
        verify_code(&d, &key, &["--ip", "10.1.2.3"]),
        (false, "DISABLED".into())
    );
    d.ok(&["key", "enable", &id]);
    assert!(verify_code(&d, &key, &["--ip", "10.1.2.3"]).0);

    // Edit: narrow nothing further possible, clear IP filters, shorten expiry.
    let edited = d.json(&[
        "key",
        "edit",
        &id,
        "--clear-ips",
        "--description",
        "no filter",
        "--expires-in",
        "p1m",
    ]);
    assert_eq!(edited["ip_filters"], json!([]));
    assert!(verify_code(&d, &key, &[]).0);
    let msg = d.fails(&["key", "edit", &id, "--expires-in", "p5m"]);
    assert!(msg.contains("only be moved earlier"), "{msg}");

    // Rotate: the old secret stops at once; with --grace it keeps working.
    let r = d.json(&["key", "rotate", &id]);
    let key2 = r["key"].as_str().unwrap().to_owned();
    assert_eq!(verify_code(&d, &key, &[]), (false, "NOT_FOUND".into()));
    assert!(verify_code(&d, &key2, &[]).0);
    let r = d.json(&["key", "rotate", &id, "--grace", "pt1h"]);
    let key3 = r["key"].as_str().unwrap().to_owned();
    assert!(r["rotation_grace_until"].is_string());
    assert!(verify_code(&d, &key2, &[]).0, "old secret within grace");
    assert!(verify_code(&d, &key3, &[]).0);

    // Remove: refused on the very next verification; hidden from list unless --all.
    d.ok(&["key", "remove", &id]);
    assert_eq!(verify_code(&d, &key3, &[]), (false, "NOT_FOUND".into()));
    assert_eq!(verify_code(&d, &key2, &[]), (false, "NOT_FOUND".into()));
    assert!(!d.ok(&["key", "list"]).contains(&id));
    assert!(d.ok(&["key", "list", "--all"]).contains("removed"));

    // Every change left an audit entry naming who, what and which key.
    let audit = d.json(&["audit", "--key", &id])["entries"]
        .as_array()
        .unwrap()
        .clone();
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["remove", "rotate", "rotate", "edit", "enable", "disable", "create"]
    );
    assert!(audit
        .iter()
        .all(|e| e["actor"] == "admin" && e["key_id"] == id.as_str()));
}

#[test]
fn out_file_is_private_and_secret_printed_once() {
    let d = TestDaemon::start();
    let out = d.path("alice-sync");
    let text = d.ok(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "file",
        "--out",
        out.to_str().unwrap(),
    ]);
    let file = d.path("alice-sync.APIKEY");
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !text.contains(&secret),
        "secret printed although written to a file"
    );
    assert!(verify_code(&d, &secret, &[]).0);
    // Refuses to overwrite an existing key file, before creating anything.
    let before = d.keys().len();
    d.fails(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "again",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(d.keys().len(), before);
    // Human output prints the secret exactly once.
    let text = d.ok(&["key", "create", "--user", "alice", "--name", "shown"]);
    let secret = text.lines().last().unwrap();
    assert!(secret.starts_with("akd_"));
    assert_eq!(text.matches(secret).count(), 1);
}

#[test]
fn keys_last_used_and_audit_survive_restart_and_kill() {
    let mut d = TestDaemon::start();
    let (id, key) = d.create("alice", "durable", &[]);
    assert!(verify_code(&d, &key, &[]).0);
    let used = d.json(&["key", "show", &id])["last_used_at"].clone();
    assert!(used.is_string());
    let audit = d.audit_len();
    // SIGTERM flushes the in-memory last-used time.
    d.restart();
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(
        shown["last_used_at"], used,
        "last-used time survives a restart"
    );
    assert_eq!(d.audit_len(), audit);
    assert!(verify_code(&d, &key, &[]).0);
    // A create acknowledged to the client survives SIGKILL right after.
    let (id2, key2) = d.create("bob", "acked", &[]);
    d.kill9();
    d.spawn(&[]);
    assert!(verify_code(&d, &key2, &[]).0);
    assert_eq!(d.json(&["key", "show", &id2])["name"], "acked");
    assert_eq!(d.audit_len(), audit + 1);
    // The database file is held by the daemon: a second daemon on it refuses to start.
    let second = std::process::Command::new(APIKEYD)
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!second.status.success());
}

#[test]
fn secrets_never_reach_the_database_or_the_logs() {
    let mut d = TestDaemon::start();
    let mut secrets = Vec::new();
    for i in 0..5 {
        let (id, key) = d.create("alice", &format!("k{i}"), &[]);
        assert!(verify_code(&d, &key, &[]).0);
        let r = d.json(&["key", "rotate", &id, "--grace", "pt5m"]);
        secrets.push(key);
        secrets.push(r["key"].as_str().unwrap().to_owned());
    }
    let imported = "imported-generic-token-0123456789-abcdef";
    let file = d.path("token.txt");
    std::fs::write(&file, format!("{imported}\n")).unwrap();
    d.ok(&[
        "key",
        "import",
        "--user",
        "bob",
        "--name",
        "legacy",
        "--secret-file",
        file.to_str().unwrap(),
    ]);
    assert!(verify_code(&d, imported, &[]).0);
    secrets.push(imported.to_owned());
    // A refused create whose name is a key must not echo it either.
    let err = d.fails(&["key", "create", "--user", "alice", "--name", &secrets[0]]);
    assert!(!err.contains(&secrets[0]));
    d.stop();
    let db = std::fs::read(d.db_path()).unwrap();
    let log = d.log_text();
    assert!(log.contains("key issued"), "debug log was captured");
    for s in &secrets {
        // Check the secret and its random body (in case of another encoding of the prefix).
        let body = s.trim_start_matches("akd_");
        assert!(
            !contains(&db, s.as_bytes()) && !contains(&db, body.as_bytes()),
            "secret found in the database"
        );
        assert!(!log.contains(body), "secret found in the log");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let d = TestDaemon::start();
    let (id, _) = d.create("alice", "existing", &[]);
    let keys_before = d.keys();
    let audit_before = d.audit_len();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--ip",
                "192.168.01.1",
            ],
            "leading zero",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--ip",
                "10.0.0.0/33",
            ],
            "prefix length",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--ip",
                "10.0.0.0/255.0.255.0",
            ],
            "netmask",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--expires-in",
                "p6mjunk",
            ],
            "p6mjunk",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--expires-in",
                "p0d",
            ],
            "zero-length",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--expires-in",
                "p7m",
            ],
            "MaxExpirationPeriod",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--expires-at",
                "2020-01-01T00:00:00Z",
            ],
            "too soon",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--expires-at",
                "tomorrow",
            ],
            "RFC 3339",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--never-expires",
            ],
            "must expire",
        ),
        (
            &["key", "create", "--user", "alice", "--name", "EXISTING"],
            "already has a key named",
        ),
        (
            &["key", "create", "--user", "mallory", "--name", "x"],
            "unknown user",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--scopes",
                "catalog:write",
            ],
            "may not hold scope",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--header",
                "X-A=${key.secret}",
            ],
            "unknown variable",
        ),
        (
            &[
                "key",
                "create",
                "--user",
                "alice",
                "--name",
                "x",
                "--description",
                &"d".repeat(1001),
            ],
            "too long",
        ),
        (
            &["key", "edit", &id, "--scopes", "catalog:read,catalog:write"],
            "narrowed",
        ),
        (&["key", "show", "not-a-uuid"], "not a key id"),
        (
            &["key", "disable", "01a2089f-0000-7000-8000-000000000000"],
            "no key with id",
        ),
    ];
    for (args, expected) in cases {
        let err = d.fails(args);
        assert!(
            err.contains(expected),
            "apikeyctl {args:?}: expected {expected:?} in {err:?}"
        );
    }
    // Raw requests: malformed JSON, unknown fields, oversized bodies, bad ip.
    let (status, body) = d.post("/v1/verify", "{not json");
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let (status, _) = d.post("/v1/verify", r#"{"key":"x","surprise":1}"#);
    assert_eq!(status, 400);
    let (status, body) = d.post("/v1/verify", r#"{"key":"x","ip":"300.1.1.1"}"#);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let huge = format!(r#"{{"key":"{}"}}"#, "a".repeat(100_000));
    let (status, _) = d.post("/v1/verify", &huge);
    assert_eq!(status, 413);
    let (status, _) = http(d.addr, "POST", "/v1/admin/keys", &[], b"{}");
    assert_eq!(status, 401, "admin API on TCP needs a key");
    // Nothing changed.
    assert_eq!(d.keys(), keys_before);
    assert_eq!(d.audit_len(), audit_before);
    assert!(!d.log_text().contains("panicked"));
}

#[test]
fn users_act_only_on_their_own_keys_and_unknown_peers_are_refused() {
    if !require_root("to run apikeyctl as another uid") {
        return;
    }
    let d = TestDaemon::start();
    let (bobs, _) = d.create("bob", "bobs", &[]);
    const NOBODY: u32 = 65534; // mapped to alice in the test config
    let run = |args: &[&str]| d.ctl_as(Some(NOBODY), args);
    let who = stdout(&run(&["whoami"]));
    // The user first (scripts read it), then what they may do and the policy.
    assert_eq!(who.lines().next(), Some("alice"), "{who}");
    for line in [
        "  groups: Synchronizer",
        "  scopes you may give keys: catalog:read, catalog:sync",
        "  may create keys: yes; manages everyone's keys: no",
        "Max key lifespan: 6 months (p6m)",
        "Keys not used for 3 months expire (p3m)",
    ] {
        assert!(who.lines().any(|l| l == line), "no {line:?} in:\n{who}");
    }
    let me: serde_json::Value = serde_json::from_str(&stdout(&run(&["whoami", "--json"]))).unwrap();
    assert_eq!(
        (me["user"].as_str(), me["admin"].as_bool()),
        (Some("alice"), Some(false))
    );
    assert_eq!(
        me["scopes"],
        serde_json::json!(["catalog:read", "catalog:sync"])
    );
    // What the console's create form is bounded by: the latest expiry allowed
    // now (six months ahead), and the sources a notification may name.
    assert_eq!(me["max_expiration"], "p6m");
    let latest = chrono::DateTime::parse_from_rfc3339(me["max_expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ahead = latest - chrono::Utc::now();
    assert!(
        (chrono::TimeDelta::days(180)..=chrono::TimeDelta::days(185)).contains(&ahead),
        "{latest}"
    );
    assert!(me["default_expires_at"].is_string(), "{me}");
    assert_eq!(me["inactivity_expiration"], "p3m");
    assert!(me["alert_sources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "operator"));
    let out = run(&["key", "create", "--name", "mine", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine["owner"], "alice");
    let out = run(&["key", "create", "--user", "bob", "--name", "theirs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only create keys for themselves"));
    assert!(!run(&["key", "disable", &bobs]).status.success());
    assert!(!run(&["key", "list", "--user", "bob"]).status.success());
    let listed = stdout(&run(&["key", "list"]));
    assert!(
        listed.contains("mine") && !listed.contains("bobs"),
        "{listed}"
    );
    assert!(run(&["key", "disable", mine["id"].as_str().unwrap()])
        .status
        .success());
    // An account mapped to no user is refused.
    let out = d.ctl_as(Some(4242), &["key", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mapped to an apikeyd user"));
}

#[test]
fn admin_api_on_tcp_needs_a_key_with_the_admin_scope() {
    let d = TestDaemon::start();
    let (_, admin_key) = d.create("admin", "ops", &["--scopes", "apikeyd:admin"]);
    let (_, plain_key) = d.create("admin", "plain", &["--scopes", "catalog:read"]);
    let token = d.path("admin.token");
    std::fs::write(&token, &admin_key).unwrap();
    let addr = d.addr.to_string();
    let tcp = |token: &std::path::Path, args: &[&str]| {
        std::process::Command::new(crate::util::APIKEYCTL)
            .args(["--addr", &addr, "--token-file", token.to_str().unwrap()])
            .args(args)
            .env_remove("APIKEYD_SOCKET")
            .output()
            .unwrap()
    };
    let out = tcp(&token, &["whoami"]);
    assert_eq!(stdout(&out).lines().next(), Some("admin (admin)"));
    assert!(tcp(
        &token,
        &["key", "create", "--user", "bob", "--name", "via-tcp"]
    )
    .status
    .success());
    let plain = d.path("plain.token");
    std::fs::write(&plain, &plain_key).unwrap();
    let out = tcp(&plain, &["key", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSUFFICIENT_SCOPE"));
}

#[test]
fn import_a_generic_token() {
    let d = TestDaemon::start();
    let short = d.path("short");
    std::fs::write(&short, "too-short").unwrap();
    let err = d.fails(&[
        "key",
        "import",
        "--user",
        "alice",
        "--name",
        "legacy",
        "--secret-file",
        short.to_str().unwrap(),
    ]);
    assert!(err.contains("at least 32"), "{err}");
    let good = d.path("good");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef-legacy\n").unwrap();
    let v = d.json(&[
        "key",
        "import",
        "--user",
        "alice",
        "--name",
        "legacy",
        "--secret-file",
        good.to_str().unwrap(),
    ]);
    assert_eq!(v["kind"], "imported");
    assert!(v.get("key").is_none(), "an imported secret is never echoed");
    assert!(verify_code(&d, "0123456789abcdef0123456789abcdef-legacy", &[]).0);
}

#[test]
fn inactivity_and_expiry_seen_by_the_real_daemon_with_a_shifted_clock() {
    let mut d = TestDaemon::start();
    let (idle_id, idle) = d.create("alice", "idle", &[]);
    let (_, short) = d.create("alice", "short", &["--expires-in", "p10d"]);
    d.stop();
    // Four months later: the unused key expired through inactivity (p3m), the short one hard.
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", &(120 * 86_400).to_string())]);
    assert_eq!(verify_code(&d, &idle, &[]), (false, "INACTIVE".into()));
    assert_eq!(verify_code(&d, &short, &[]), (false, "EXPIRED".into()));
    let shown = d.json(&["key", "show", &idle_id]);
    assert_eq!(shown["status"], "inactive");
    assert!(
        shown["details"]
            .as_str()
            .unwrap()
            .contains("through inactivity (never used)"),
        "{shown}"
    );
    assert!(d.ok(&["key", "list"]).contains("inactive"));
}
