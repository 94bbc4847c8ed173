//! `[[auth.routes]]` against the real daemon, without a proxy: the original URI in
//! the URI headers and in the path Envoy appends to `/v1/auth/`, on the fast path
//! (HTTP/1.1) and on hyper's (HTTP/1.0, and after a request the fast path hands over).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::util::{exchange, request, send, TestDaemon, DEFAULT_POLICY};

const EDGE: &str = crate::util::CATALOG_ROUTES_QUERY_KEY;

/// Status and `X-Api-Key-Reason` (in upper case) of a raw request (`head` without
/// the blank line).
fn raw(addr: SocketAddr, head: &[u8]) -> (u16, Option<String>) {
    let a = send(addr, &[head, b"Connection: close\r\n\r\n"].concat());
    let reason = a.header("x-api-key-reason").map(str::to_ascii_uppercase);
    (a.status, reason)
}

/// Regression (issue 9, item 1): `//catalog/sync/run` and other spellings passed
/// the `/catalog/sync` route with a `catalog:read` key, on both of the daemon's
/// HTTP paths and in the path Envoy appends, where axum's decoding also turned
/// `%2f` into a separator before the check.
#[test]
fn route_scopes_hold_for_every_spelling_on_every_path() {
    let d = TestDaemon::start_with(DEFAULT_POLICY, EDGE);
    let (_, reader) = d.create("alice", "reader", &["--scopes", "catalog:read"]);
    let key = format!("X-Api-Key: {reader}\r\n");
    let refused = Some("INSUFFICIENT_SCOPE".to_owned());
    let bad = Some("BAD_PATH".to_owned());
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let ask = |uri_headers: &str| {
            let head = format!("GET /v1/auth {version}\r\nHost: t\r\n{key}{uri_headers}");
            raw(d.addr, head.as_bytes())
        };
        // Issue 9 review, F1: dot segments and `//` were resolved (to
        // `/catalog/` here, which passed); they are refused now.
        for uri in [
            "/catalog/sync/..",
            "/catalog/sync/%2e%2e",
            "/catalog/sync/%2E%2E/",
            "/catalog/sync//..",
            "/catalog/sync/..;",
            "//catalog/sync/run",
        ] {
            assert_eq!(
                ask(&format!("X-Forwarded-Uri: {uri}\r\n")),
                (400, bad.clone()),
                "{version}: {uri}"
            );
        }
        assert_eq!(
            ask("X-Original-URI: /catalog/%73ync/run\r\n"),
            (403, refused.clone())
        );
        assert_eq!(
            ask("X-Forwarded-Uri: /catalog/sync%2frun\r\n"),
            (400, bad.clone())
        );
        assert_eq!(
            ask("X-Forwarded-Uri: /catalog/items\r\nX-Original-URI: /catalog/sync/run\r\n"),
            (400, bad.clone()),
            "{version}: URI headers that disagree"
        );
        let mut non_ascii = format!("GET /v1/auth {version}\r\nHost: t\r\n{key}").into_bytes();
        non_ascii.extend_from_slice(b"X-Forwarded-Uri: /catalog/sync/r\xfcn\r\n");
        assert_eq!(raw(d.addr, &non_ascii), (400, bad.clone()), "{version}");
        assert_eq!(ask("X-Forwarded-Uri: /catalog/items\r\n"), (200, None));
        // Issue 9, item 9: the key in the forwarded URI's query.
        let head = format!(
            "GET /v1/auth {version}\r\nHost: t\r\nX-Forwarded-Uri: /catalog/items?api_key={reader}\r\n"
        );
        assert_eq!(raw(d.addr, head.as_bytes()), (200, None), "{version}");
    }
    // Envoy's ext_authz appends the original path, which is read as it came.
    let envoy = |path: &str| {
        let a = request(
            d.addr,
            "GET",
            &format!("/v1/auth{path}"),
            &[("X-Api-Key", reader.as_str())],
        );
        (a.status, a.header("x-api-key-reason").map(str::to_owned))
    };
    assert_eq!(envoy("/catalog/%73ync/run"), (403, refused.clone()));
    for path in [
        "/catalog/sync/..",
        "/catalog/sync/%2e%2e",
        "/catalog/sync//..",
        "//catalog/sync/run",
        "/catalog/./sync/run",
    ] {
        assert_eq!(envoy(path), (400, bad.clone()), "{path}");
    }
    assert_eq!(envoy("/catalog/sync%2frun"), (400, bad.clone()));
    assert_eq!(envoy("/catalog/items?page=2"), (200, None));
}

/// Regression (issue 9 review, F3): Envoy's ext_authz appends the original path to
/// its `path_prefix` `/v1/auth`, so a request for the site root arrives as
/// `/v1/auth/` (or `/v1/auth/?q=1`). Both of the daemon's paths answered 404 (the
/// fast path handed it to hyper, and axum's `/v1/auth/{*path}` does not match an
/// empty tail), so Envoy refused every request for `/`. It is forward-auth for the
/// original URI `/` with the URL's query.
#[test]
fn envoy_request_for_the_site_root_is_forward_auth() {
    // A route for the whole site: `/` must be matched as the original path.
    let edge = "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\nquery_param = \"api_key\"\n\
                [[auth.routes]]\nprefix = \"/\"\nscope = \"catalog:read\"\n";
    let d = TestDaemon::start_with(DEFAULT_POLICY, edge);
    let (_, reader) = d.create("alice", "reader", &["--scopes", "catalog:read"]);
    let (_, other) = d.create("alice", "sync", &["--scopes", "catalog:sync"]);
    let missing = Some("MISSING".to_owned());
    let refused = Some("INSUFFICIENT_SCOPE".to_owned());
    // HTTP/1.1 is answered on the fast path, HTTP/1.0 by hyper.
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        for target in ["/v1/auth/", "/v1/auth/?q=1"] {
            let ask = |key: &str| {
                let head = format!("GET {target} {version}\r\nHost: t\r\nX-Api-Key: {key}\r\n");
                raw(d.addr, head.as_bytes())
            };
            assert_eq!(ask(&reader), (200, None), "{version} {target}");
            assert_eq!(ask(&other), (403, refused.clone()), "{version} {target}");
            let head = format!("GET {target} {version}\r\nHost: t\r\n");
            assert_eq!(raw(d.addr, head.as_bytes()), (401, missing.clone()));
        }
        // The query is the original's: the key may come in it.
        let head = format!("GET /v1/auth/?api_key={reader} {version}\r\nHost: t\r\n");
        assert_eq!(raw(d.addr, head.as_bytes()), (200, None), "{version}");
    }
    // On hyper after the fast path handed the connection over (keep-alive).
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/auth/ HTTP/1.1\r\nHost: t\r\nX-Api-Key: {reader}\r\n"
    );
    let text = exchange(
        crate::util::connect(d.addr, Duration::from_secs(10)),
        format!("{head}Connection: close\r\n\r\n").as_bytes(),
    );
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200"], "{text}");
}
