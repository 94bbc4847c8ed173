//! Console login behind an authenticating proxy (issue 12), through a real nginx
//! standing in for oauth2-proxy or Authelia: it sets `Remote-User` to the user
//! its `X-Test-Login` request header picks (alice unless told), as an auth proxy
//! sets the user it logged in, replacing whatever the client sent. nginx connects
//! from 127.0.0.3, the only trusted proxy; the test's own requests come from
//! 127.0.0.1, an untrusted peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use crate::console::{call_at, json, names_in as key_names};
use crate::nginx::Nginx;
use crate::util::{check_config, find_program, Answer, TestDaemon, DEFAULT_POLICY};

const PROXY_LOGIN: &str = r#"
[auth]
trusted_proxies = ["127.0.0.3/32"]

[console]
proxy_user_header = "Remote-User"
proxy_secret_file = "SECRET_FILE"
"#;

/// What nginx proves itself with (`proxy_secret_file` holds it).
const SECRET: &str = "test-proxy-secret-0123456789abcdef0123456789";

/// The proxy: `X-Test-Login: bob` is bob logged in at it, `none` nobody.
fn nginx_conf(apikeyd: SocketAddr, port: u16) -> String {
    format!(
        r#"
map $http_x_test_login $test_user {{
    default alice;
    bob bob;
    admin admin;
    mallory mallory;
    none "";
}}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://{apikeyd};
        proxy_bind 127.0.0.3;
        proxy_set_header Remote-User $test_user;
        proxy_set_header X-Apikeyd-Proxy-Secret "{SECRET}";
        proxy_set_header X-Test-Login "";
    }}
}}
"#
    )
}

fn nginx_bin() -> Option<std::path::PathBuf> {
    let bin = find_program(
        "nginx",
        &["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"],
    );
    crate::util::require(
        "nginx on PATH or in /usr/sbin (apt-get install nginx; .ci/run installs it)",
        bin.is_some(),
    )
    .then_some(bin)
    .flatten()
}

/// A daemon configured with `extra`, not started; `SECRET_FILE` in it names a
/// file (mode 600) holding `SECRET`.
fn with_secret(extra: &str) -> TestDaemon {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDaemon::configured(DEFAULT_POLICY, extra);
    let file = d.dir.path().join("console-proxy-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace("SECRET_FILE", file.to_str().unwrap());
    std::fs::write(&d.config, text).unwrap();
    d
}

/// A daemon with `extra` and an nginx in front of it.
fn behind_nginx(bin: &std::path::Path, extra: &str) -> (TestDaemon, Nginx) {
    let mut d = with_secret(extra);
    d.spawn(&[]);
    let addr = d.addr;
    let nginx = Nginx::start_with(bin, &|port| nginx_conf(addr, port));
    (d, nginx)
}

fn proxy(n: &Nginx) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], n.port))
}

const PROXY_BODY: &str = r#"{"proxy": true}"#;

/// A session: the `Cookie` value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn session_of(a: &Answer) -> Session {
    assert_eq!(a.status, 200, "{}", a.body);
    let set = a.header("set-cookie").unwrap();
    Session {
        cookie: set.split(';').next().unwrap().to_owned(),
        csrf: json(a)["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// A proxy login through nginx, as the user `as_user` picks (`None`: alice).
fn proxy_login(n: &Nginx, as_user: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = as_user.map(|u| ("X-Test-Login", u)).into_iter().collect();
    proxy_login_at(proxy(n), &headers)
}

/// `POST /console/session {"proxy": true}` to `addr` with `headers`.
fn proxy_login_at(addr: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    call_at(addr, "POST", "/console/session", headers, PROXY_BODY)
}

/// `GET path` on `s` at `addr`, with extra headers.
fn get(addr: SocketAddr, path: &str, s: &Session, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("Cookie", s.cookie.as_str()), ("X-CSRF-Token", &s.csrf)];
    headers.extend_from_slice(extra);
    call_at(addr, "GET", path, &headers, "")
}

#[test]
fn a_proxy_login_through_nginx_is_its_users_session_and_holds_only_while_the_proxy_names_them() {
    let Some(bin) = nginx_bin() else {
        return;
    };
    let (d, nginx) = behind_nginx(&bin, PROXY_LOGIN);
    d.create("alice", "alice-key", &[]);
    d.create("bob", "bob-key", &[]);
    let via = proxy(&nginx);

    // Logged in as alice at the proxy: a session as alice, answered as a link
    // login is (the CSRF token, an HttpOnly SameSite=Strict cookie).
    let a = proxy_login(&nginx, None);
    assert_eq!(a.status, 200, "{}\n{}", a.body, nginx.log());
    assert_eq!(json(&a)["user"], "alice");
    assert_eq!(json(&a)["admin"], false);
    assert!(json(&a)["expires_at"].is_string(), "{}", a.body);
    let set = a.header("set-cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let alice = session_of(&a);
    assert!(d.log_text().contains("console login"), "{}", d.log_text());

    // Her session lists her keys only, through the admin API, with cookie and
    // token; a Remote-User the client sends itself is replaced by the proxy's.
    let keys = get(via, "/v1/admin/keys?limit=100", &alice, &[]);
    assert_eq!(key_names(&keys), ["alice-key"]);
    let forged = get(via, "/v1/admin/keys", &alice, &[("Remote-User", "bob")]);
    assert_eq!(key_names(&forged), ["alice-key"]);
    let me = get(via, "/console/session", &alice, &[]);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(json(&me)["user"], "alice");
    assert_eq!(json(&me).get("csrf_token"), None);

    // An administrator at the proxy is one in the console, as with a link.
    let admin = session_of(&proxy_login(&nginx, Some("admin")));
    let all = get(via, "/v1/admin/keys", &admin, &[("X-Test-Login", "admin")]);
    assert_eq!(key_names(&all), ["alice-key", "bob-key"]);

    // A user the proxy knows and apikeyd does not: refused, naming the header,
    // not the value.
    let unknown = proxy_login(&nginx, Some("mallory"));
    assert_eq!(unknown.status, 403, "{}", unknown.body);
    let message = json(&unknown)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("remote-user"), "{message}");
    assert!(!message.contains("mallory"), "{message}");
    // The proxy names nobody (not logged in there): refused, saying so.
    let nobody = proxy_login(&nginx, Some("none"));
    assert_eq!(nobody.status, 401, "{}", nobody.body);
    assert_eq!(json(&nobody)["error"]["code"], "console_link");
    assert!(nobody.body.contains("remote-user"), "{}", nobody.body);

    // The same header straight to apikeyd, from a peer that is no trusted
    // proxy, logs nobody in...
    let direct = proxy_login_at(d.addr, &[("Remote-User", "alice")]);
    assert_eq!(direct.status, 401, "{}", direct.body);
    assert_eq!(json(&direct)["error"]["code"], "console_link");
    assert!(direct.header("set-cookie").is_none());
    assert!(direct.body.contains("trusted_proxies"), "{}", direct.body);
    // ... and a proxy-made session used from there, header and all, is refused
    // and ended.
    let s = session_of(&proxy_login(&nginx, None));
    let stolen = get(d.addr, "/v1/admin/keys", &s, &[("Remote-User", "alice")]);
    assert_eq!(stolen.status, 401, "{}", stolen.body);
    assert_eq!(json(&stolen)["error"]["code"], "console_session");
    assert_eq!(get(via, "/v1/admin/keys", &s, &[]).status, 401);

    // Logged out at the proxy (no user), or another user logged in there: the
    // session is refused, and stays ended when alice is back.
    for later in ["none", "bob"] {
        let s = session_of(&proxy_login(&nginx, None));
        assert_eq!(get(via, "/v1/admin/keys", &s, &[]).status, 200);
        let a = get(via, "/v1/admin/keys", &s, &[("X-Test-Login", later)]);
        assert_eq!(a.status, 401, "{later}: {}", a.body);
        assert_eq!(json(&a)["error"]["code"], "console_session", "{later}");
        assert!(a.body.contains("authenticating proxy"), "{}", a.body);
        let back = get(via, "/console/session", &s, &[]);
        assert_eq!(back.status, 401, "{later}: {}", back.body);
    }
    // Alice's first session went on all along.
    assert_eq!(get(via, "/console/session", &alice, &[]).status, 200);

    // A login says which way it logs in: a token or the proxy, not both.
    for body in [
        r#"{"proxy": true, "token": "00"}"#,
        r#"{"proxy": false}"#,
        "{}",
    ] {
        let a = call_at(via, "POST", "/console/session", &[], body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    // Another origin is refused, as for a link login.
    let other = proxy_login_at(via, &[("Origin", "http://evil.example")]);
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(json(&other)["error"]["code"], "csrf");
    // The log has who logged in and from where, never a session secret or the
    // proxy's.
    let log = d.log_text();
    assert!(!log.contains(&alice.csrf) && !log.contains(&alice.cookie));
    assert!(!log.contains(SECRET), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("console login") && l.contains("127.0.0.3")),
        "{log}"
    );
}

/// Regression (security review): with `trusted_proxies` naming loopback, any
/// local account could connect from 127.0.0.1 (or any 127/8 address), send
/// `Remote-User: admin` and get an administrator's session. The proxy must
/// also send the secret: without it, or with a wrong one, a request from a
/// trusted address is no proxy's, and a proxy session used so ends.
#[test]
fn a_local_account_without_the_secret_is_no_proxy() {
    let Some(bin) = nginx_bin() else {
        return;
    };
    let extra = PROXY_LOGIN.replace("127.0.0.3/32", "127.0.0.0/8");
    let (d, nginx) = behind_nginx(&bin, &extra);
    let wrong = "test-proxy-secret-0123456789abcdef012345678X";
    for headers in [
        vec![("Remote-User", "admin")],
        vec![("Remote-User", "admin"), ("X-Apikeyd-Proxy-Secret", wrong)],
        vec![("Remote-User", "admin"), ("X-Apikeyd-Proxy-Secret", "")],
        // Twice: one could be the client's, which the proxy failed to remove.
        vec![
            ("Remote-User", "admin"),
            ("X-Apikeyd-Proxy-Secret", SECRET),
            ("X-Apikeyd-Proxy-Secret", wrong),
        ],
    ] {
        let a = proxy_login_at(d.addr, &headers);
        assert_eq!(a.status, 401, "{headers:?}: {}", a.body);
        assert_eq!(json(&a)["error"]["code"], "console_link");
        assert!(a.header("set-cookie").is_none());
        assert!(a.body.contains("proxy_secret_file"), "{}", a.body);
        assert!(!a.body.contains(SECRET) && !a.body.contains(wrong));
    }
    // The secret is what counts (here the peer is trusted too).
    let with = proxy_login_at(
        d.addr,
        &[("Remote-User", "admin"), ("X-Apikeyd-Proxy-Secret", SECRET)],
    );
    assert_eq!(with.status, 200, "{}", with.body);

    // A session the proxy made, used from loopback without the secret (the
    // user header and all): refused and ended.
    let via = proxy(&nginx);
    let s = session_of(&proxy_login(&nginx, Some("admin")));
    assert_eq!(
        get(via, "/v1/admin/keys", &s, &[("X-Test-Login", "admin")]).status,
        200
    );
    let stolen = get(d.addr, "/v1/admin/keys", &s, &[("Remote-User", "admin")]);
    assert_eq!(stolen.status, 401, "{}", stolen.body);
    assert_eq!(json(&stolen)["error"]["code"], "console_session");
    let back = get(via, "/v1/admin/keys", &s, &[("X-Test-Login", "admin")]);
    assert_eq!(back.status, 401, "{}", back.body);

    // The secret is read at start only: a reload after the file changed says
    // so, and the old one is still the one checked.
    let file = d.dir.path().join("console-proxy-secret");
    std::fs::write(&file, wrong).unwrap();
    d.signal("HUP");
    crate::util::wait_until(std::time::Duration::from_secs(10), || {
        d.log_text().contains("configuration reloaded")
    });
    assert!(
        d.log_text().contains("console proxy secret changed"),
        "{}",
        d.log_text()
    );
    let new = [("Remote-User", "admin"), ("X-Apikeyd-Proxy-Secret", wrong)];
    assert_eq!(proxy_login_at(d.addr, &new).status, 401);
    assert_eq!(proxy_login(&nginx, Some("admin")).status, 200);

    // Refusals are no warnings (anyone could fill the log with them), and
    // neither secret is ever logged.
    let log = d.log_text();
    assert!(!log.contains(SECRET) && !log.contains(wrong), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("proxy login refused")),
        "{log}"
    );
}

#[test]
fn without_proxy_user_header_a_proxy_login_asks_for_a_console_link() {
    let Some(bin) = nginx_bin() else {
        return;
    };
    // The proxy is trusted and names alice, but proxy login is not configured.
    let (_d, nginx) = behind_nginx(&bin, "\n[auth]\ntrusted_proxies = [\"127.0.0.3/32\"]\n");
    let a = proxy_login(&nginx, None);
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(json(&a)["error"]["code"], "console_link");
    assert!(a.body.contains("apikeyctl console-link"), "{}", a.body);
    assert!(a.header("set-cookie").is_none());
}

/// `check-config` refuses proxy login without trusted proxies (no peer could
/// ever use it: fail closed, saying what to add) or without the proxy's secret
/// (any local account could name any user), or with a secret that is short or
/// unreadable; it warns when the console has no host name of its own behind
/// the proxy, and when it is served beyond loopback over plain HTTP by a proxy
/// (`public_url` http://).
#[test]
fn check_config_refuses_proxy_login_without_trusted_proxies_or_secret_and_warns() {
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let refused = |extra: &str, words: &[&str]| {
        let d = with_secret(extra);
        let out = check_config(&d.config);
        assert!(!out.status.success(), "{}", said(&out));
        for w in words {
            assert!(said(&out).contains(w), "{w}: {}", said(&out));
        }
        assert!(!said(&out).contains(SECRET));
    };
    let user = "\n[console]\nproxy_user_header = \"Remote-User\"\n";
    refused(
        &format!("{user}proxy_secret_file = \"SECRET_FILE\"\n"),
        &["console.proxy_user_header", "auth.trusted_proxies is empty"],
    );
    refused(
        &PROXY_LOGIN.replace("proxy_secret_file = \"SECRET_FILE\"\n", ""),
        &[
            "console.proxy_user_header",
            "proxy_secret_file",
            "any local account",
        ],
    );
    refused(
        &PROXY_LOGIN.replace("SECRET_FILE", "/nonexistent/console-proxy-secret"),
        &["console.proxy_secret_file", "cannot read it"],
    );
    let d = with_secret(PROXY_LOGIN);
    let file = d.dir.path().join("console-proxy-secret");
    std::fs::write(&file, "tiny-secret\n").unwrap();
    let out = check_config(&d.config);
    assert!(!out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("fewer than 32"), "{}", said(&out));
    assert!(!said(&out).contains("tiny-secret"), "{}", said(&out));
    // Every account may read it: refused (the daemon refuses to start on it too).
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = check_config(&d.config);
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("every local account may read it"),
        "{}",
        said(&out)
    );
    assert!(!said(&out).contains(SECRET), "{}", said(&out));

    // Good, but the console shares its origin (no public_url, or one with a
    // path): a warning.
    let d = with_secret(PROXY_LOGIN);
    let out = check_config(&d.config);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("host name of its own"),
        "{}",
        said(&out)
    );
    let own = PROXY_LOGIN.to_owned() + "public_url = \"https://keys.example.com/\"\n";
    let out = check_config(&with_secret(&own).config);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        !said(&out).contains("host name of its own"),
        "{}",
        said(&out)
    );

    let d = TestDaemon::configured(
        DEFAULT_POLICY,
        "\n[console]\npublic_url = \"http://keys.example.com/\"\n",
    );
    let out = check_config(&d.config);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("console.public_url")
            && said(&out).contains("without TLS")
            && said(&out).contains("keys.example.com"),
        "{}",
        said(&out)
    );
}
