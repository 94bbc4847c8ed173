//! `[console]` tests. They load whole files with the parser of `config`, which
//! imports this section, so they live in a file of their own rather than inside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::config::{from_text, problems};

#[test]
fn on_by_default_only_on_loopback() {
    let c = from_text("").unwrap();
    assert!(c.console.enabled);
    assert_eq!(c.console.session_idle, Duration::from_secs(1800));
    assert_eq!(c.console.session_max, Duration::from_secs(12 * 3600));
    assert_eq!(c.console.link_lifetime, Duration::from_secs(300));
    assert!(c.warnings().is_empty());
    let open = from_text("[server]\nlisten = \"0.0.0.0:8700\"\n").unwrap();
    assert!(!open.console.enabled);
    assert!(open.warnings().is_empty());
}

#[test]
fn beyond_loopback_without_tls_is_a_warning() {
    let c = from_text("[server]\nlisten = \"0.0.0.0:8700\"\n[console]\nenabled = true\n").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "console.enabled");
    assert!(w[0].message.contains("without TLS"), "{}", w[0].message);
    let behind = from_text(
        "[server]\nlisten = \"0.0.0.0:8700\"\n[console]\nenabled = true\npublic_url = \"https://keys.example.com\"\n",
    )
    .unwrap();
    assert!(behind.warnings().is_empty());
    assert!(behind.console.secure_cookie());
}

/// Regression: the cookie's Path was always `/`, so behind a proxy that serves
/// the console under a path, every other application on the host got it.
#[test]
fn the_cookie_path_is_the_public_urls_path() {
    let c = |u: &str| from_text(&format!("[console]\npublic_url = \"{u}\"\n")).unwrap();
    assert_eq!(from_text("").unwrap().console.cookie_path(), "/");
    assert_eq!(c("https://keys.example.com").console.cookie_path(), "/");
    assert_eq!(
        c("https://example.com/keys/").console.cookie_path(),
        "/keys/"
    );
    assert_eq!(c("https://example.com/keys").console.cookie_path(), "/keys");
    let p = problems("[console]\npublic_url = \"https://example.com/a;Domain=x/\"\n");
    assert_eq!(p[0].0, "console.public_url", "{p:?}");
}

#[test]
fn bad_values_are_reported_with_their_key() {
    let p = problems(
        "[console]\npublic_url = \"ftp://x\"\nsession_idle = \"p1m\"\nsession_max = \"pt1m\"\nlink_lifetime = \"pt2h\"\n",
    );
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "console.public_url",
        "console.session_idle",
        "console.link_lifetime",
    ] {
        assert!(keys.contains(&k), "{k} missing from {p:?}");
    }
    let p = problems("[console]\nsession_idle = \"pt2h\"\nsession_max = \"pt1h\"\n");
    assert_eq!(p[0].0, "console.session_idle", "{p:?}");
    let p = problems("[console]\npublic_url = \"https://keys.example.com/?a=b\"\n");
    assert_eq!(p[0].0, "console.public_url", "{p:?}");
}

#[test]
fn a_plain_http_public_url_beyond_loopback_is_a_warning() {
    let c = |u: &str| from_text(&format!("[console]\npublic_url = \"{u}\"\n")).unwrap();
    let w = c("http://keys.example.com/").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "console.public_url");
    assert!(
        w[0].message.contains("without TLS") && w[0].message.contains("keys.example.com"),
        "{}",
        w[0].message
    );
    for fine in [
        "https://keys.example.com/",
        "http://localhost:8080/",
        "http://127.0.0.1:8700",
        "http://[::1]:8700",
    ] {
        assert!(c(fine).warnings().is_empty(), "{fine}");
    }
    // Off: nothing is reachable, nothing to warn about.
    let off = from_text("[console]\nenabled = false\npublic_url = \"http://keys.example.com\"\n");
    assert!(off.unwrap().warnings().is_empty());
}

const TRUSTED: &str = "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

/// A proxy login's settings beside `rest` (more of `[console]`).
fn proxy_login(rest: &str) -> String {
    format!("{TRUSTED}[console]\nproxy_secret_file = \"/etc/apikeyd/console-proxy-secret\"\npublic_url = \"https://keys.example.com/\"\n{rest}")
}

#[test]
fn proxy_login_needs_a_header_name_trusted_proxies_and_a_secret() {
    let c = from_text(&proxy_login("proxy_user_header = \"Remote-User\"\n")).unwrap();
    assert_eq!(c.console.proxy_user_header.as_deref(), Some("remote-user"));
    assert_eq!(c.console.proxy_secret_header, "x-apikeyd-proxy-secret");
    assert_eq!(
        c.console.proxy_secret_file.as_deref(),
        Some(std::path::Path::new("/etc/apikeyd/console-proxy-secret"))
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert_eq!(from_text("").unwrap().console.proxy_user_header, None);

    // Fail closed: without trusted proxies no peer could ever log in this way.
    let p =
        problems("[console]\nproxy_secret_file = \"/s\"\nproxy_user_header = \"Remote-User\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "console.proxy_user_header");
    assert!(p[0].1.contains("auth.trusted_proxies"), "{}", p[0].1);

    // Regression (security review): with trusted_proxies alone any local
    // account could connect from loopback and name any user; without a secret
    // proxy login is refused, saying why.
    let p = problems(&format!(
        "{TRUSTED}[console]\nproxy_user_header = \"Remote-User\"\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "console.proxy_user_header");
    for said in [
        "proxy_secret_file",
        "any local account",
        "X-Apikeyd-Proxy-Secret",
    ] {
        assert!(
            p[0].1.to_lowercase().contains(&said.to_lowercase()),
            "{said}: {}",
            p[0].1
        );
    }

    for bad in ["Remote User", "Remote-User:", "", "Cookie", "X-CSRF-Token"] {
        let text = proxy_login(&format!("proxy_user_header = \"{bad}\"\n"));
        if bad.is_empty() {
            // Empty is unset.
            assert_eq!(from_text(&text).unwrap().console.proxy_user_header, None);
            continue;
        }
        let p = problems(&text);
        assert_eq!(p[0].0, "console.proxy_user_header", "{bad}: {p:?}");
    }
    // The secret's header: its own, valid name.
    let named = from_text(&proxy_login(
        "proxy_user_header = \"Remote-User\"\nproxy_secret_header = \"X-Proxy-Key\"\n",
    ))
    .unwrap();
    assert_eq!(named.console.proxy_secret_header, "x-proxy-key");
    for bad in ["X Proxy", "Cookie", "remote-user"] {
        let p = problems(&proxy_login(&format!(
            "proxy_user_header = \"Remote-User\"\nproxy_secret_header = \"{bad}\"\n"
        )));
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!(p[0].0, "console.proxy_secret_header", "{bad}: {p:?}");
    }

    // Set while the console is off: check-config says it does nothing.
    let off = from_text(&proxy_login(
        "enabled = false\nproxy_user_header = \"Remote-User\"\n",
    ))
    .unwrap();
    let w = off.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "console.proxy_user_header");
}

/// Proxy login logs in on page load with nothing from the page: script on
/// another page of the same origin could do it, so the console wants a host
/// name of its own (security review).
#[test]
fn proxy_login_without_an_origin_of_its_own_is_a_warning() {
    let own_origin = |c: &crate::config::Config| {
        c.warnings()
            .iter()
            .any(|w| w.key == "console.public_url" && w.message.contains("host name of its own"))
    };
    let on = "proxy_user_header = \"Remote-User\"\n";
    assert!(!own_origin(&from_text(&proxy_login(on)).unwrap()));
    let unset = proxy_login(on).replace("public_url = \"https://keys.example.com/\"\n", "");
    assert!(own_origin(&from_text(&unset).unwrap()));
    let under = proxy_login(on).replace("keys.example.com/", "example.com/keys/");
    assert!(own_origin(&from_text(&under).unwrap()));
    // Without proxy login a link is needed, which another page cannot have.
    assert!(!own_origin(
        &from_text("[console]\npublic_url = \"https://example.com/keys/\"\n").unwrap()
    ));
}
