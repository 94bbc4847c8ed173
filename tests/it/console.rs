//! The web console against the real daemon: links made by the real
//! `apikeyctl console-link` log in once, expire, and start sessions with an idle
//! and an absolute limit; the session cookie authenticates to the admin API as its
//! user, with a CSRF token for changes; every console answer carries the security
//! headers; the console is off beyond loopback unless switched on. Time moves
//! through the daemon's clock-offset file (test builds only). Then the page itself
//! in Debian's headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::util::{
    check_config, find_program, request, require_root, send, Answer, TestDaemon, DEFAULT_POLICY,
};

/// Short limits so a test moves the clock by little.
const CONSOLE: &str = "\n[console]\nsession_idle = \"pt30m\"\nsession_max = \"pt1h\"\n";

const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// A daemon whose clock runs `clock` file's seconds ahead.
pub fn daemon(extra: &str) -> (TestDaemon, PathBuf) {
    let mut d = TestDaemon::configured(DEFAULT_POLICY, extra);
    let clock = d.path("clock-offset");
    std::fs::write(&clock, "0").unwrap();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_FILE", clock.to_str().unwrap())]);
    (d, clock)
}

pub fn move_clock(clock: &PathBuf, secs: i64) {
    std::fs::write(clock, secs.to_string()).unwrap();
}

/// A console link from `apikeyctl console-link`, run as `uid`.
pub fn link(d: &TestDaemon, uid: Option<u32>) -> String {
    let out = d.ctl_as(uid, &["console-link"]);
    assert!(
        out.status.success(),
        "console-link failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let prefix = format!("http://127.0.0.1:{}/console/#login=", d.addr.port());
    assert!(
        url.starts_with(&prefix),
        "{url:?} should start with {prefix:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("works once"), "{stderr}");
    url
}

fn token_of(url: &str) -> &str {
    url.split_once("#login=").unwrap().1
}

/// A request with a JSON body and extra headers.
fn call(d: &TestDaemon, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    call_at(d.addr, method, path, headers, body)
}

/// [`call`] to any address (a proxy in front of the daemon).
pub(crate) fn call_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    // The address asked for, as a browser sends it, unless the test names another.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {addr}\r\n");
    }
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    req += body;
    send(addr, req.as_bytes())
}

pub(crate) fn json(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or(Value::Null)
}

/// A logged-in session: the `Cookie` header value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn login(d: &TestDaemon, url: &str) -> Result<Session, Answer> {
    let body = serde_json::json!({ "token": token_of(url) }).to_string();
    let a = call(d, "POST", "/console/session", &[], &body);
    if a.status != 200 {
        return Err(a);
    }
    let set = a.header("set-cookie").unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    Ok(Session {
        cookie,
        csrf: json(&a)["csrf_token"].as_str().unwrap().to_owned(),
    })
}

/// A request authenticated by the session cookie, with `csrf` in `X-CSRF-Token`.
fn with_cookie(
    d: &TestDaemon,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
) -> Answer {
    let mut headers = vec![("Cookie", cookie)];
    headers.extend(csrf.map(|t| ("X-CSRF-Token", t)));
    call(d, method, path, &headers, "")
}

fn must_login(d: &TestDaemon, url: &str) -> Session {
    match login(d, url) {
        Ok(s) => s,
        Err(a) => panic!("login refused: {} {}", a.status, a.body),
    }
}

fn key_names(d: &TestDaemon, s: &Session) -> Vec<String> {
    let a = with_cookie(
        d,
        "GET",
        "/v1/admin/keys?limit=100",
        &s.cookie,
        Some(&s.csrf),
    );
    assert_eq!(a.header("cache-control"), Some("no-store"));
    names_in(&a)
}

/// The names of the keys a key list answered, sorted.
pub(crate) fn names_in(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, 200, "{}", a.body);
    let mut names: Vec<String> = json(a)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_console_link_logs_in_once_as_its_user_and_changes_need_the_csrf_token() {
    if !require_root("apikeyctl runs as alice's account, nobody") {
        return;
    }
    let (d, _) = daemon(CONSOLE);
    let (alice_key, _) = d.create("alice", "alice-key", &[]);
    let (bob_key, _) = d.create("bob", "bob-key", &[]);
    let (_, admin_key) = d.create("admin", "ops-key", &["--scopes", "apikeyd:admin"]);

    let url = link(&d, Some(65534));
    let body = serde_json::json!({ "token": token_of(&url) }).to_string();
    let first = call(&d, "POST", "/console/session", &[], &body);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(json(&first)["user"], "alice");
    assert_eq!(json(&first)["admin"], false);
    let set = first.header("set-cookie").unwrap();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("apikeyd_session="), "{set}");
    assert!(attrs[0].len() > "apikeyd_session=".len() + 32, "{set}");
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&a), "{a} missing from {set}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP on loopback: {set}");
    let alice = Session {
        cookie: attrs[0].to_owned(),
        csrf: json(&first)["csrf_token"].as_str().unwrap().to_owned(),
    };

    // Once only.
    let again = call(&d, "POST", "/console/session", &[], &body);
    assert_eq!(again.status, 401);
    assert!(again.body.contains("used already"), "{}", again.body);
    // A form post (not JSON) is not a login.
    let form = call(
        &d,
        "POST",
        "/console/session",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "",
    );
    assert_eq!(form.status, 415);

    // The owner sees only her keys, the admin everyone's.
    assert_eq!(key_names(&d, &alice), ["alice-key"]);
    let admin = must_login(&d, &link(&d, None));
    assert_eq!(key_names(&d, &admin), ["alice-key", "bob-key", "ops-key"]);

    // A change by cookie needs the CSRF token.
    let disable = format!("/v1/admin/keys/{alice_key}/disable");
    let none = with_cookie(&d, "POST", &disable, &alice.cookie, None);
    assert_eq!(none.status, 403, "{}", none.body);
    assert_eq!(json(&none)["error"]["code"], "csrf");
    let wrong = with_cookie(&d, "POST", &disable, &alice.cookie, Some(&admin.csrf));
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    assert_eq!(d.json(&["key", "show", &alice_key])["status"], "active");
    let right = with_cookie(&d, "POST", &disable, &alice.cookie, Some(&alice.csrf));
    assert_eq!(right.status, 200, "{}", right.body);
    assert_eq!(d.json(&["key", "show", &alice_key])["status"], "disabled");
    // The same rules as the CLI: not someone else's key.
    let other = format!("/v1/admin/keys/{bob_key}/disable");
    let refused = with_cookie(&d, "POST", &other, &alice.cookie, Some(&alice.csrf));
    assert!(matches!(refused.status, 403 | 404), "{}", refused.body);
    assert_eq!(d.json(&["key", "show", &bob_key])["status"], "active");

    // A request with a key is authenticated by the key, as before, cookie or not.
    let bearer = format!("Bearer {admin_key}");
    let by_key = call(
        &d,
        "POST",
        &other,
        &[("Authorization", &bearer), ("Cookie", &alice.cookie)],
        "",
    );
    assert_eq!(by_key.status, 200, "{}", by_key.body);
    assert_eq!(d.json(&["key", "show", &bob_key])["status"], "disabled");

    // Nothing secret in the log.
    let log = d.log_text();
    for secret in [
        token_of(&url),
        &alice.csrf,
        &alice.cookie["apikeyd_session=".len()..],
    ] {
        assert!(!log.contains(secret), "a console secret is in the log");
    }

    // The token is answered by the login only: a reload reads the session with
    // the token the page kept.
    let reload = with_cookie(
        &d,
        "GET",
        "/console/session",
        &alice.cookie,
        Some(&alice.csrf),
    );
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(json(&reload)["user"], "alice");
    assert!(!reload.body.contains(&alice.csrf), "{}", reload.body);
    assert_eq!(json(&reload).get("csrf_token"), None);

    // Logout needs the token too, then ends the session.
    let out = with_cookie(&d, "DELETE", "/console/session", &alice.cookie, None);
    assert_eq!(out.status, 403);
    let out = with_cookie(
        &d,
        "DELETE",
        "/console/session",
        &alice.cookie,
        Some(&alice.csrf),
    );
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = with_cookie(&d, "GET", "/v1/admin/keys", &alice.cookie, None);
    assert_eq!(after.status, 401, "{}", after.body);
    assert_eq!(json(&after)["error"]["code"], "console_session");
}

/// Regression: browsers send the `apikeyd_session` cookie to every port of the
/// host, so another local server could capture it; `GET /console/session` then
/// answered the CSRF token for the cookie alone, and every API read took the
/// cookie alone. Now the cookie without the token (or from another site or
/// origin) opens nothing.
#[test]
fn a_stolen_cookie_without_the_token_opens_nothing() {
    let (d, _) = daemon(CONSOLE);
    let (key, _) = d.create("admin", "ops-key", &[]);
    let job = "00000000-0000-0000-0000-000000000000";
    let s = must_login(&d, &link(&d, None));
    let gets = [
        "/console/session".to_owned(),
        "/v1/admin/whoami".into(),
        "/v1/admin/keys".into(),
        format!("/v1/admin/keys/{key}"),
        "/v1/admin/audit".into(),
        "/v1/admin/jobs".into(),
        format!("/v1/admin/jobs/{job}"),
        "/v1/admin/messages".into(),
        "/v1/admin/plan".into(),
    ];
    for path in &gets {
        let stolen = with_cookie(&d, "GET", path, &s.cookie, None);
        assert_eq!(stolen.status, 403, "{path}: {}", stolen.body);
        assert_eq!(json(&stolen)["error"]["code"], "csrf", "{path}");
        assert!(!stolen.body.contains(&s.csrf), "{path}");
        assert_eq!(
            stolen.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let wrong = with_cookie(&d, "GET", path, &s.cookie, Some("0"));
        assert_eq!(wrong.status, 403, "{path}: {}", wrong.body);
    }
    // With the token the same reads work, and the session answer holds no token.
    let own = with_cookie(&d, "GET", "/console/session", &s.cookie, Some(&s.csrf));
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(
        !own.body.contains(&s.csrf) && !own.body.contains("csrf"),
        "{}",
        own.body
    );
    let keys = with_cookie(&d, "GET", "/v1/admin/keys", &s.cookie, Some(&s.csrf));
    assert_eq!(keys.status, 200, "{}", keys.body);
    assert_eq!(keys.header("x-content-type-options"), Some("nosniff"));

    // Token and cookie, but the browser says another site or origin sent it.
    let port = d.addr.port();
    let own_origin = format!("http://127.0.0.1:{port}");
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let cases: [(&str, &str, u16); 5] = [
        ("Sec-Fetch-Site", "same-site", 403),
        ("Sec-Fetch-Site", "cross-site", 403),
        ("Origin", &other_port, 403),
        ("Sec-Fetch-Site", "same-origin", 200),
        ("Origin", &own_origin, 200),
    ];
    for (name, value, status) in cases {
        for path in ["/console/session", "/v1/admin/keys"] {
            let headers = [
                ("Cookie", s.cookie.as_str()),
                ("X-CSRF-Token", s.csrf.as_str()),
                (name, value),
            ];
            let a = call(&d, "GET", path, &headers, "");
            assert_eq!(a.status, status, "{name}: {value} on {path}: {}", a.body);
        }
    }

    // Two session cookies (another server on the host set one too): each is
    // tried, not the first only.
    let both = format!("apikeyd_session=00; {}", s.cookie);
    for path in ["/console/session", "/v1/admin/keys"] {
        let a = with_cookie(&d, "GET", path, &both, Some(&s.csrf));
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
}

/// A new login from a page that has a session (it sends that session's cookie
/// and token) ends that session server-side; the cookie alone ends nothing.
#[test]
fn a_new_login_ends_the_pages_previous_session() {
    let (d, _) = daemon(CONSOLE);
    let first = must_login(&d, &link(&d, None));
    let body = |url: &str| serde_json::json!({ "token": token_of(url) }).to_string();
    // The cookie without the token: a login, but the old session goes on.
    let url = link(&d, None);
    let a = call(
        &d,
        "POST",
        "/console/session",
        &[("Cookie", &first.cookie)],
        &body(&url),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let still = with_cookie(
        &d,
        "GET",
        "/console/session",
        &first.cookie,
        Some(&first.csrf),
    );
    assert_eq!(still.status, 200, "{}", still.body);
    // With the token: the old session ends.
    let url = link(&d, None);
    let headers = [
        ("Cookie", first.cookie.as_str()),
        ("X-CSRF-Token", &first.csrf),
    ];
    let a = call(&d, "POST", "/console/session", &headers, &body(&url));
    assert_eq!(a.status, 200, "{}", a.body);
    let ended = with_cookie(
        &d,
        "GET",
        "/console/session",
        &first.cookie,
        Some(&first.csrf),
    );
    assert_eq!(ended.status, 401, "{}", ended.body);
}

#[test]
fn links_expire_and_sessions_end_when_idle_or_at_their_limit() {
    let (d, clock) = daemon(CONSOLE);
    d.create("admin", "ops-key", &[]);

    // A link works for five minutes.
    let late = link(&d, None);
    move_clock(&clock, 301);
    let refused = login(&d, &late).err().unwrap();
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("expired"), "{}", refused.body);

    // Idle for 30 minutes ends a session; use keeps it going.
    let s = must_login(&d, &link(&d, None));
    move_clock(&clock, 301 + 29 * 60);
    key_names(&d, &s);
    // Within session_max (an hour), but 30 minutes since the last request.
    move_clock(&clock, 301 + 59 * 60);
    let idle = with_cookie(&d, "GET", "/v1/admin/keys", &s.cookie, Some(&s.csrf));
    assert_eq!(idle.status, 401);
    assert!(idle.body.contains("without use"), "{}", idle.body);

    // However busy, a session ends an hour (session_max) after its login.
    let start = 301 + 60 * 60;
    move_clock(&clock, start);
    let s = must_login(&d, &link(&d, None));
    for minutes in [20, 40, 59] {
        move_clock(&clock, start + minutes * 60);
        key_names(&d, &s);
    }
    move_clock(&clock, start + 60 * 60);
    let over = with_cookie(&d, "GET", "/console/session", &s.cookie, Some(&s.csrf));
    assert_eq!(over.status, 401);
    assert!(over.body.contains("limit of 1 hour"), "{}", over.body);
}

#[test]
fn every_console_answer_carries_the_security_headers() {
    let (d, _) = daemon("");
    let cases = [
        ("GET", "/console/", 200, Some("text/html")),
        ("GET", "/console/console.js", 200, Some("text/javascript")),
        ("GET", "/console/console.css", 200, Some("text/css")),
        ("GET", "/console/nothing.js", 404, None),
        ("GET", "/console/session", 401, None),
        ("DELETE", "/console/session", 204, None),
        ("GET", "/console", 308, None),
    ];
    for (method, path, status, kind) in cases {
        let a = request(d.addr, method, path, &[]);
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(a.header(name), Some(value), "{name} on {method} {path}");
        }
        if let Some(kind) = kind {
            assert!(
                a.header("content-type").unwrap().starts_with(kind),
                "{path}"
            );
        }
    }
    let bad = call(&d, "POST", "/console/session", &[], r#"{"token":"00"}"#);
    assert_eq!(bad.status, 401);
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(bad.header(name), Some(value), "{name} on a refused login");
    }
    // No inline script or style in the page: the policy would block it.
    let page = request(d.addr, "GET", "/console/", &[]).body;
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    assert!(page.contains(r#"<script type="module" src="console.js"></script>"#));
}

#[test]
fn the_console_is_off_beyond_loopback_unless_switched_on() {
    let mut d = TestDaemon::configured(DEFAULT_POLICY, "");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let open = text.replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(&d.config, &open).unwrap();
    d.spawn(&[]);
    assert_eq!(request(d.addr, "GET", "/console/", &[]).status, 404);
    let err = d.fails(&["console-link"]);
    assert!(err.contains("console is off"), "{err}");
    let cookie = call(
        &d,
        "GET",
        "/v1/admin/keys",
        &[("Cookie", "apikeyd_session=00")],
        "",
    );
    assert_eq!(cookie.status, 401);

    // Switched on: served, and check-config warns that it is reachable without TLS.
    std::fs::write(&d.config, format!("{open}\n[console]\nenabled = true\n")).unwrap();
    let check = check_config(&d.config);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{said}");
    assert!(said.contains("without TLS"), "{said}");
    d.restart();
    assert_eq!(request(d.addr, "GET", "/console/", &[]).status, 200);
    let url = link(&d, None);
    assert!(login(&d, &url).is_ok());

    // Behind an HTTPS proxy, under a path: no warning, links at the public
    // address, a Secure cookie for that path only.
    std::fs::write(
        &d.config,
        format!(
            "{open}\n[console]\nenabled = true\npublic_url = \"https://keys.example.com/keys/\"\n"
        ),
    )
    .unwrap();
    let check = check_config(&d.config);
    assert!(!String::from_utf8_lossy(&check.stderr).contains("without TLS"));
    d.restart();
    let out = d.ok(&["console-link"]);
    assert!(
        out.starts_with("https://keys.example.com/keys/console/#login="),
        "{out}"
    );
    let body = serde_json::json!({ "token": token_of(out.trim()) }).to_string();
    let a = call(&d, "POST", "/console/session", &[], &body);
    let set = a.header("set-cookie").unwrap();
    assert!(set.contains("; Secure"), "{set}");
    assert!(set.contains("; Path=/keys/;"), "{set}");
}

/// Regression (login CSRF): the page used the link in its fragment as soon as
/// it loaded, so a page opened by someone else's link logged the browser in as
/// that someone. Now it asks, and uses the link only on a click; `--dump-dom`
/// cannot click, so this checks the page asks and leaves the link unused, and
/// the login itself is tested over HTTP.
#[test]
fn the_console_page_asks_before_using_a_link_in_headless_chromium() {
    let chromium = find_program("chromium", &["/usr/bin", "/usr/local/bin"]);
    if !crate::util::require(
        "Debian's chromium (apt-get install chromium)",
        chromium.is_some(),
    ) {
        return;
    }
    if !require_root("apikeyctl runs as alice's account, nobody") {
        return;
    }
    let (d, _) = daemon("");
    d.create("alice", "alices-first-key", &[]);
    let url = link(&d, Some(65534));
    let out = dump_dom(chromium.as_ref().unwrap(), &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"<section id="login" aria-labelledby="login-title">"#)
            && dom.contains(r#"<button id="login-button" type="button">Log in</button>"#),
        "the page does not ask to log in: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dom.contains("alices-first-key"), "{dom}");
    assert!(
        !dom.contains(token_of(&url)),
        "the login token is in the page"
    );
    // The browser did not use the link: it still logs in, once.
    let s = must_login(&d, &url);
    assert_eq!(key_names(&d, &s), ["alices-first-key"]);

    // Without a link, in a tab that has no session token, the page says to
    // open a new link.
    let base = url.split_once('#').unwrap().0;
    let bare = dump_dom(chromium.as_ref().unwrap(), base);
    let dom = String::from_utf8_lossy(&bare.stdout);
    assert!(dom.contains("open a new console link"), "{dom}");
}

/// The page at `url` after its scripts ran, from a fresh headless Chromium
/// profile (the flags it needs as root on these machines, and no network of its
/// own).
fn dump_dom(chromium: &std::path::Path, url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium)
        .args(crate::browser::CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=10000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap()
}

/// Every choice the page's filters offer is one the list API takes (the page
/// sends them as they are).
#[test]
fn the_pages_filter_choices_are_ones_the_list_api_takes() {
    let (d, _) = daemon("");
    d.create("admin", "ops-key", &[]);
    let s = must_login(&d, &link(&d, None));
    let page = request(d.addr, "GET", "/console/", &[]).body;
    let form = page
        .split("<form id=\"search-form\"")
        .nth(1)
        .and_then(|f| f.split("</form>").next())
        .expect("the page has the key search form");
    let mut checked = 0;
    for select in form.split("<select ").skip(1) {
        let select = select.split("</select>").next().unwrap();
        let name = select
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        for value in select.split("value=\"").skip(1) {
            let value = value.split('"').next().unwrap();
            let path = format!("/v1/admin/keys?limit=5&{name}={value}");
            let a = with_cookie(&d, "GET", &path, &s.cookie, Some(&s.csrf));
            assert_eq!(a.status, 200, "{path}: {}", a.body);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} choices found in the page");
}

/// DNS rebinding: a page at an attacker's host name, pointed at this address,
/// is same-origin with itself (its Origin matches its Host). The console answers
/// a browser only at an IP address, `localhost` or `public_url`'s host.
#[test]
fn a_page_at_another_host_name_is_refused_dns_rebinding() {
    let (d, _) = daemon("\n[console]\npublic_url = \"http://keys.example.test/\"\n");
    let port = d.addr.port();
    // Links name public_url here, which link() does not expect.
    let body = |d: &TestDaemon| {
        let url = String::from_utf8(d.ctl(&["console-link"]).stdout).unwrap();
        assert!(
            url.starts_with("http://keys.example.test/console/#login="),
            "{url}"
        );
        serde_json::json!({ "token": token_of(url.trim()) }).to_string()
    };
    let evil = format!("rebind.attacker.example:{port}");
    let evil_origin = format!("http://{evil}");
    let a = call(
        &d,
        "POST",
        "/console/session",
        &[
            ("Host", &evil),
            ("Origin", &evil_origin),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &body(&d),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.header("set-cookie").is_none());
    assert!(a.body.contains("its own address"), "{}", a.body);

    // Our names: the listener's address, localhost, public_url's host.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "keys.example.test".to_owned(),
    ] {
        let origin = format!("http://{host}");
        let a = call(
            &d,
            "POST",
            "/console/session",
            &[
                ("Host", &host),
                ("Origin", &origin),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            &body(&d),
        );
        assert_eq!(a.status, 200, "{host}: {}", a.body);
        // And the session it made is refused under the attacker's name.
        let cookie = a
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let csrf = json(&a)["csrf_token"].as_str().unwrap().to_owned();
        let r = call(
            &d,
            "GET",
            "/v1/admin/keys",
            &[
                ("Host", &evil),
                ("Sec-Fetch-Site", "same-origin"),
                ("Cookie", &cookie),
                ("X-CSRF-Token", &csrf),
            ],
            "",
        );
        assert_eq!(r.status, 403, "{}", r.body);
    }
}
