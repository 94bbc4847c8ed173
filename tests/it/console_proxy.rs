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
"#;

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

/// A daemon with `extra` and an nginx in front of it.
fn behind_nginx(bin: &std::path::Path, extra: &str) -> (TestDaemon, Nginx) {
    let d = TestDaemon::start_with(DEFAULT_POLICY, extra);
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
    // The log has who logged in, never a session secret.
    let log = d.log_text();
    assert!(!log.contains(&alice.csrf) && !log.contains(&alice.cookie));
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
/// ever use it: fail closed, saying what to add), and warns when the console is
/// served beyond loopback over plain HTTP by a proxy (`public_url` http://).
#[test]
fn check_config_refuses_proxy_login_without_trusted_proxies_and_warns_of_plain_http() {
    let d = TestDaemon::configured(
        DEFAULT_POLICY,
        "\n[console]\nproxy_user_header = \"Remote-User\"\n",
    );
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = check_config(&d.config);
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("console.proxy_user_header")
            && said(&out).contains("auth.trusted_proxies is empty"),
        "{}",
        said(&out)
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    let proxied = text.replace(
        "proxy_user_header = \"Remote-User\"\n",
        "public_url = \"http://keys.example.com/\"\n",
    );
    std::fs::write(&d.config, proxied).unwrap();
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
