//! Who may change what, and what a key may do as users and groups change, against
//! the real daemon: a non-admin owner (unix account `nobody`, mapped to alice) runs
//! the real `apikeyctl`; the configuration file is edited and the daemon reloaded
//! with SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    request, require_root, stdout, strip_colours, wait_until, TestDaemon, DEFAULT_POLICY,
};

const NOBODY: u32 = 65534; // mapped to alice in the test config

const AUTH: &str = crate::util::CATALOG_ROUTES;

const ALICE: &str = "[users.alice]\nemail = \"alice@example.com\"\ngroups = [\"Synchronizer\"]\nunix_user = \"nobody\"\n";

fn auth(d: &TestDaemon, key: &str, uri: &str) -> crate::util::Answer {
    let bearer = format!("Bearer {key}");
    request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", bearer.as_str()),
            ("X-Forwarded-For", "10.1.2.3"),
            ("X-Original-URI", uri),
        ],
    )
}

fn verify(d: &TestDaemon, key: &str, scope: Option<&str>) -> Value {
    let body = match scope {
        Some(s) => serde_json::json!({"key": key, "scope": s}),
        None => serde_json::json!({"key": key}),
    };
    let (status, v) = d.post("/v1/verify", &body.to_string());
    assert_eq!(status, 200, "{v}");
    v
}

/// apikeyctl as alice (uid nobody), which must fail with `expected` on stderr.
fn fails_as_alice(d: &TestDaemon, args: &[&str], expected: &str) {
    failed_with(
        &d.ctl_as(Some(NOBODY), args),
        &format!("{args:?}"),
        expected,
    );
}

/// `out` (of the call `what`) failed, with `expected` on stderr.
fn failed_with(out: &Output, what: &str, expected: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should fail: {}", stdout(out));
    assert!(
        err.contains(expected),
        "{what}: expected {expected:?} in {err:?}"
    );
}

/// Regression (issue 9, item 4): as the non-admin owner alice could re-enable a key
/// an admin had disabled, clear IP filters an admin had set, and give her key a
/// header with literal text (`X-Tenant=admin`) that the upstream received from
/// `/v1/auth` as an identity claim.
#[test]
fn owners_cannot_lift_admin_restrictions_or_forge_identity_headers() {
    if !require_root("to run apikeyctl as another uid") {
        return;
    }
    let d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let run = |args: &[&str]| d.ctl_as(Some(NOBODY), args);
    let must_fail = |args: &[&str], expected: &str| fails_as_alice(&d, args, expected);
    assert_eq!(stdout(&run(&["whoami"])).lines().next(), Some("alice"));
    let out = run(&["key", "create", "--name", "mine", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();

    // Disabled by an admin: the owner cannot enable it again.
    d.ok(&["key", "disable", &id]);
    let audit = d.audit_len();
    must_fail(&["key", "enable", &id], "disabled by admin");
    assert_eq!(verify(&d, &key, None)["code"], "DISABLED");
    assert_eq!(d.audit_len(), audit, "a refused change is not recorded");
    d.ok(&["key", "enable", &id]);
    assert_eq!(verify(&d, &key, None)["code"], "VALID");

    // IP filters set by an admin: the owner may narrow them, not clear or widen them.
    d.ok(&["key", "edit", &id, "--ip", "10.0.0.0/8"]);
    let audit = d.audit_len();
    must_fail(&["key", "edit", &id, "--clear-ips"], "only an admin");
    must_fail(&["key", "edit", &id, "--ip", "0.0.0.0/0"], "not inside");
    must_fail(
        &[
            "key",
            "edit",
            &id,
            "--ip",
            "10.1.0.0/16",
            "--ip",
            "192.0.2.1",
        ],
        "not inside",
    );
    assert_eq!(d.audit_len(), audit);
    assert_eq!(
        d.json(&["key", "show", &id])["ip_filters"],
        serde_json::json!(["10.0.0.0/8"])
    );
    let out = run(&["key", "edit", &id, "--ip", "10.1.0.0/16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Headers: only values apikeyd fills in, on create, import and edit.
    for forged in ["X-Tenant=admin", "X-Tenant=${key.name}"] {
        must_fail(
            &["key", "create", "--name", "forged", "--header", forged],
            "only an admin",
        );
        let token = d.path("token");
        std::fs::write(&token, "legacy-token-0123456789-abcdefghijkl\n").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        must_fail(
            &[
                "key",
                "import",
                "--name",
                "forged",
                "--header",
                forged,
                "--secret-file",
                token.to_str().unwrap(),
            ],
            "only an admin",
        );
        must_fail(&["key", "edit", &id, "--header", forged], "only an admin");
    }
    assert_eq!(d.audit_len(), audit + 1, "only the narrowing was recorded");
    let a = auth(&d, &key, "/catalog/list");
    assert_eq!(a.status, 200, "{:?}", a.headers);
    assert_eq!(a.header("x-tenant"), None);
    let out = run(&["key", "edit", &id, "--header", "X-User=${key.owner}"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        auth(&d, &key, "/catalog/list").header("x-user"),
        Some("alice")
    );

    // A literal header an admin set is served, and the owner must keep it.
    d.ok(&["key", "edit", &id, "--header", "X-Tenant=acme"]);
    must_fail(&["key", "edit", &id, "--clear-headers"], "set by an admin");
    assert_eq!(
        auth(&d, &key, "/catalog/list").header("x-tenant"),
        Some("acme")
    );
}

/// Regression (issue 9, item 8): after a SIGHUP reload that moved alice from
/// Synchronizer to User her key still verified with `catalog:sync`, and after alice
/// was removed from the configuration her keys still verified.
#[test]
fn privileges_follow_a_sighup_reload() {
    let mut d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let (id, key) = d.create("alice", "sync", &[]);
    let (_, bobs) = d.create("bob", "b", &[]);
    let a = auth(&d, &key, "/catalog/sync/run");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("x-api-key-scopes"),
        Some("catalog:read,catalog:sync")
    );
    let base = std::fs::read_to_string(&d.config).unwrap();
    assert!(base.contains(ALICE));
    let reload = |d: &TestDaemon, text: &str| {
        std::fs::write(&d.config, text).unwrap();
        let before = d.log_text().matches("configuration reloaded").count();
        d.signal("HUP");
        wait_until(Duration::from_secs(10), || {
            d.log_text().matches("configuration reloaded").count() > before
        });
        let log = strip_colours(&d.log_text());
        log.lines()
            .rfind(|l| l.contains("configuration reloaded"))
            .unwrap()
            .to_owned()
    };

    // Demoted to User: catalog:sync is refused, catalog:read still works.
    let line = reload(
        &d,
        &base.replace(ALICE, &ALICE.replace("Synchronizer", "User")),
    );
    assert!(line.contains("keys_lost_scopes=1"), "{line}");
    assert!(line.contains("keys_refused=0"), "{line}");
    let a = auth(&d, &key, "/catalog/sync/run");
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (403, Some("INSUFFICIENT_SCOPE"))
    );
    let a = auth(&d, &key, "/catalog/list");
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-api-key-scopes"), Some("catalog:read"));
    let v = verify(&d, &key, None);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["scopes"], serde_json::json!(["catalog:read"]));
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(
        shown["scopes"],
        serde_json::json!(["catalog:read", "catalog:sync"])
    );
    assert_eq!(
        shown["effective_scopes"],
        serde_json::json!(["catalog:read"])
    );
    let text = d.ok(&["key", "show", &id]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("scopes") && l.ends_with("catalog:read, catalog:sync"))
            && text
                .lines()
                .any(|l| l.starts_with("in force") && l.ends_with(" catalog:read")),
        "{text}"
    );
    assert_eq!(auth(&d, &bobs, "/catalog/sync/run").status, 200);

    // Removed from the configuration: refused with a reason of its own.
    let line = reload(&d, &base.replace(ALICE, ""));
    assert!(line.contains("keys_refused=1"), "{line}");
    let a = auth(&d, &key, "/catalog/list");
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (403, Some("OWNER_UNKNOWN"))
    );
    assert_eq!(verify(&d, &key, None)["code"], "OWNER_UNKNOWN");
    let listed = d.keys();
    let mine = listed.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(mine["status"], "owner_unknown");
    let table = d.ok(&["key", "list"]);
    assert!(table.contains("owner_unknown"), "{table}");
    // The same after a restart (keys loaded from the store).
    d.restart();
    assert_eq!(verify(&d, &key, None)["code"], "OWNER_UNKNOWN");

    // Back in Synchronizer: the key works as before.
    let line = reload(&d, &base);
    assert!(line.contains("keys_restored=1"), "{line}");
    assert_eq!(auth(&d, &key, "/catalog/sync/run").status, 200);
}

/// Regression (issue 9, item 9): a generic (imported) token could be renamed, or
/// described, as its own secret, which then appeared in listings, the audit trail
/// and `X-Api-Key-Name`: `edit` did not check new text against the key's secret.
#[test]
fn a_token_cannot_be_renamed_to_its_own_secret() {
    let d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let token = "legacy-token-0123456789-abcdefghijkl";
    let file = d.path("legacy.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let v = d.json(&[
        "key",
        "import",
        "--user",
        "alice",
        "--name",
        "legacy",
        "--secret-file",
        file.to_str().unwrap(),
    ]);
    let id = v["id"].as_str().unwrap().to_owned();
    let audit = d.audit_len();
    let containing = format!("old sync token={token} (2025)");
    for (flag, text) in [
        ("--name", token),
        ("--name", containing.as_str()),
        ("--description", token),
        ("--description", containing.as_str()),
    ] {
        let err = d.fails(&["key", "edit", &id, flag, text]);
        assert!(err.contains("must not contain this key's secret"), "{err}");
        assert!(!err.contains(token), "the error repeats the secret: {err}");
    }
    assert_eq!(d.audit_len(), audit, "nothing recorded");
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(
        (shown["name"].as_str(), shown["description"].as_str()),
        (Some("legacy"), Some(""))
    );
    let a = auth(&d, token, "/catalog/list");
    assert_eq!(a.header("x-api-key-name"), Some("legacy"));
    assert!(!d.log_text().contains(token));
}

/// Regressions from the review of issue 9, as alice (non-admin) meets them through
/// the real daemon and CLI:
/// - F1: alice removed her imported key that an admin had disabled and limited to
///   10.9.9.9/32, imported the same token again, and it verified VALID anywhere;
/// - F2: beside an admin's `X-Tenant=acme` she set `X_Tenant=${key.owner}`, which
///   nginx reads as `x-tenant` (and takes first): the upstream saw tenant=alice;
/// - F3: an admin's `X-Tenant=${key.name}` followed her renaming the key `admin`.
#[test]
fn owners_cannot_bring_back_retired_tokens_or_shadow_admin_headers() {
    if !require_root("to run apikeyctl as another uid") {
        return;
    }
    let d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let run = |args: &[&str]| d.ctl_as(Some(NOBODY), args);
    let must_fail = |args: &[&str], expected: &str| fails_as_alice(&d, args, expected);
    let must_pass = |args: &[&str]| -> Value {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };

    // F1.
    let token = "legacy-token-0123456789-restricted";
    let file = d.path("tok");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let file = file.to_str().unwrap();
    let imp = must_pass(&[
        "key",
        "import",
        "--name",
        "imp",
        "--secret-file",
        file,
        "--json",
    ]);
    let id = imp["id"].as_str().unwrap().to_owned();
    d.ok(&["key", "disable", &id]);
    d.ok(&["key", "edit", &id, "--ip", "10.9.9.9/32"]);
    must_fail(&["key", "rotate", &id], "only an admin can rotate");
    must_pass(&["key", "remove", &id]);
    let audit = d.audit_len();
    must_fail(
        &["key", "import", "--name", "imp2", "--secret-file", file],
        "removed or rotated and cannot be imported again; ask an admin",
    );
    assert_eq!(d.audit_len(), audit);
    assert_eq!(verify(&d, token, None)["code"], "NOT_FOUND");

    // F2.
    let created = must_pass(&["key", "create", "--name", "mine", "--json"]);
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    d.ok(&["key", "edit", &id, "--header", "X-Tenant=acme"]);
    must_fail(
        &[
            "key",
            "edit",
            &id,
            "--header",
            "X_Tenant=${key.owner}",
            "--header",
            "X-Tenant=acme",
        ],
        "contains '_'",
    );
    must_fail(
        &[
            "key",
            "edit",
            &id,
            "--header",
            "X-Tenant=acme",
            "--header",
            "X_Api_Key_Owner=${key.owner}",
        ],
        "contains '_'",
    );
    must_pass(&[
        "key",
        "edit",
        &id,
        "--header",
        "X-User=${key.owner}",
        "--header",
        "X-Tenant=acme",
    ]);
    let a = auth(&d, &key, "/catalog/list");
    assert_eq!(a.status, 200, "{:?}", a.headers);
    let custom: Vec<_> = a
        .headers
        .iter()
        .filter(|(k, _)| k == "x-tenant" || k == "x-user")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        custom,
        ["x-tenant=acme", "x-user=alice"],
        "the admin's header first"
    );

    // F3.
    let (id, key) = d.create("alice", "sync", &["--header", "X-Tenant=${key.name}"]);
    must_fail(
        &["key", "edit", &id, "--name", "admin"],
        "only an admin can rename",
    );
    assert_eq!(
        auth(&d, &key, "/catalog/list").header("x-tenant"),
        Some("sync")
    );
}

/// Regression (second review, FC F1): alice imported token T; root removed the key
/// (or rotated it without grace, or narrowed it to `catalog:read` expiring in a day,
/// after which alice removed it), and alice imported T again: VALID, with
/// `catalog:sync` and a fresh expiry. An admin's remove, rotate and narrowing left
/// the retired token unrestricted. FC F2: alice could also give a key the header
/// `Authorization=${key.id}`, which a proxy copying auth-answer headers by pattern
/// sends upstream over the request's own.
#[test]
fn owners_cannot_reimport_tokens_an_admin_retired_or_narrowed() {
    if !require_root("to run apikeyctl as another uid") {
        return;
    }
    let d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let run = |args: &[&str]| d.ctl_as(Some(NOBODY), args);
    let import = |name: &str, token: &str| {
        let file = d.path(name);
        std::fs::write(&file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        run(&[
            "key",
            "import",
            "--name",
            name,
            "--secret-file",
            file.to_str().unwrap(),
            "--json",
        ])
    };
    let imported = |name: &str, token: &str| -> String {
        let out = import(name, token);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let refused = |name: &str, token: &str| {
        let audit = d.audit_len();
        failed_with(
            &import(name, token),
            name,
            "removed or rotated and cannot be imported again; ask an admin",
        );
        assert_eq!(d.audit_len(), audit);
        assert_eq!(verify(&d, token, None)["code"], "NOT_FOUND");
    };

    let removed = "legacy-token-0123456789-root-removed";
    let id = imported("t1", removed);
    d.ok(&["key", "remove", &id]);
    refused("t1again", removed);

    let rotated = "legacy-token-0123456789-root-rotated";
    let id = imported("t2", rotated);
    d.ok(&["key", "rotate", &id]);
    refused("t2again", rotated);

    let narrowed = "legacy-token-0123456789-root-narrowed";
    let id = imported("t3", narrowed);
    d.ok(&[
        "key",
        "edit",
        &id,
        "--scopes",
        "catalog:read",
        "--expires-in",
        "p1d",
    ]);
    let out = run(&["key", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused("t3again", narrowed);

    // Her own removal of a key no admin touched still lets her bring it back.
    let mine = "legacy-token-0123456789-alices-own";
    let id = imported("t4", mine);
    let out = run(&["key", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = imported("t4again", mine);
    assert_eq!(verify(&d, mine, Some("catalog:sync"))["code"], "VALID");

    // F2.
    let out = run(&["key", "edit", &id, "--header", "Authorization=${key.id}"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"Authorization\" is reserved"), "{err}");
}

/// Regression (review F4): alice moved to a group with `scopes = []` kept a key
/// that `/v1/auth` admitted on any route without a scope and `/v1/verify` called
/// VALID; `key list` showed it active and `/metrics` counted it so, as it did keys
/// of unconfigured owners.
#[test]
fn a_user_left_without_scopes_is_refused_and_counted_apart() {
    let d = TestDaemon::start_with(DEFAULT_POLICY, AUTH);
    let (id, key) = d.create("alice", "sync", &[]);
    let base = std::fs::read_to_string(&d.config).unwrap();
    assert!(base.contains(ALICE));
    let reload = |text: &str| {
        std::fs::write(&d.config, text).unwrap();
        let before = d.log_text().matches("configuration reloaded").count();
        d.signal("HUP");
        wait_until(Duration::from_secs(10), || {
            d.log_text().matches("configuration reloaded").count() > before
        });
    };
    let metric = |status: &str| {
        let body = request(d.addr, "GET", "/metrics", &[]).body;
        let line = format!("apikeyd_keys{{status=\"{status}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map(|n| n.trim().to_owned())
    };
    assert_eq!(metric("active").as_deref(), Some("1"));
    reload(&format!(
        "{}\n[groups.Nothing]\nscopes = []\n",
        base.replace(ALICE, &ALICE.replace("Synchronizer", "Nothing"))
    ));
    // A path no route covers asks no scope.
    let a = auth(&d, &key, "/elsewhere");
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (403, Some("INSUFFICIENT_SCOPE"))
    );
    assert_eq!(verify(&d, &key, None)["code"], "INSUFFICIENT_SCOPE");
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(shown["status"], "no_scopes");
    assert!(
        shown["details"]
            .as_str()
            .unwrap()
            .contains("grant none of its scopes"),
        "{shown}"
    );
    assert_eq!(metric("no_scopes").as_deref(), Some("1"));
    assert_eq!(metric("active").as_deref(), Some("0"));

    reload(&base.replace(ALICE, ""));
    assert_eq!(metric("owner_unknown").as_deref(), Some("1"));
    assert_eq!(metric("no_scopes").as_deref(), Some("0"));
    assert_eq!(metric("active").as_deref(), Some("0"));

    reload(&base);
    assert_eq!(verify(&d, &key, None)["code"], "VALID");
    assert_eq!(metric("active").as_deref(), Some("1"));
}
