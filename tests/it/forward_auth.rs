//! Forward-auth (`/v1/auth`) answers, header limits, metrics and health, against
//! the real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::util::{bearer, request, TestDaemon, DEFAULT_POLICY};

const EDGE: &str = crate::util::CATALOG_ROUTES;

#[test]
fn forward_auth_passes_identity_and_refuses_with_reasons() {
    let mut d = TestDaemon::start_with(DEFAULT_POLICY, EDGE);
    let (id, key) = d.create(
        "alice",
        "Große Liste",
        &[
            "--ip",
            "203.0.113.0/24",
            "--header",
            "X-Tenant=${key.owner}",
        ],
    );
    let (_, reader) = d.create("bob", "reader", &["--scopes", "catalog:read"]);
    let auth = bearer(&key);
    let ok_headers = [
        ("Authorization", auth.as_str()),
        ("X-Forwarded-For", "203.0.113.5"),
        ("X-Original-URI", "/catalog/sync/run?x=1"),
    ];
    let a = request(d.addr, "GET", "/v1/auth", &ok_headers);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-api-key-id"), Some(id.as_str()));
    assert_eq!(a.header("x-api-key-name"), Some("Gro%C3%9Fe Liste"));
    assert_eq!(a.header("x-api-key-owner"), Some("alice"));
    assert_eq!(
        a.header("x-api-key-scopes"),
        Some("catalog:read,catalog:sync")
    );
    assert_eq!(a.header("x-tenant"), Some("alice"));
    let expires_in: i64 = a.header("x-api-key-expires-in").unwrap().parse().unwrap();
    assert!(expires_in > 80 * 86_400, "{expires_in}");
    // Any method works (Traefik and Envoy forward the original one).
    assert_eq!(request(d.addr, "POST", "/v1/auth", &ok_headers).status, 200);

    let deny = |addr, headers: &[(&str, &str)], status: u16, reason: &str| {
        let a = request(addr, "GET", "/v1/auth", headers);
        assert_eq!(
            (a.status, a.header("x-api-key-reason")),
            (status, Some(reason)),
            "{headers:?}: {}",
            a.body
        );
        if status == 401 {
            assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    };
    deny(d.addr, &[("X-Original-URI", "/catalog")], 401, "MISSING");
    deny(
        d.addr,
        &[
            ("Authorization", "Bearer akd_typo"),
            ("X-Original-URI", "/catalog"),
        ],
        401,
        "MALFORMED",
    );
    deny(
        d.addr,
        &[
            ("Authorization", auth.as_str()),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Original-URI", "/catalog"),
        ],
        403,
        "IP_NOT_ALLOWED",
    );
    // Issue 9 review, F8: with routes configured, a request that names no
    // original URI is refused rather than matched to no route.
    deny(
        d.addr,
        &[
            ("Authorization", auth.as_str()),
            ("X-Forwarded-For", "203.0.113.5"),
        ],
        400,
        "BAD_PATH",
    );
    // The forwarded address is believed only from a trusted proxy: here the peer is.
    let rb = bearer(&reader);
    deny(
        d.addr,
        &[
            ("Authorization", rb.as_str()),
            ("X-Original-URI", "/catalog/sync/x"),
        ],
        403,
        "INSUFFICIENT_SCOPE",
    );
    deny(
        d.addr,
        &[
            ("X-Api-Key", reader.as_str()),
            ("X-Original-URI", "/catalog"),
            ("X-Required-Scope", "catalog:sync"),
        ],
        403,
        "INSUFFICIENT_SCOPE",
    );
    // A scope header adds to the route's scope, never replaces it.
    deny(
        d.addr,
        &[
            ("X-Api-Key", reader.as_str()),
            ("X-Original-URI", "/catalog/sync/x"),
            ("X-Required-Scope", "catalog:read"),
        ],
        403,
        "INSUFFICIENT_SCOPE",
    );
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("X-Api-Key", reader.as_str()),
            ("X-Forwarded-Uri", "/catalog/items"),
        ],
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-api-key-name"), Some("reader"));
    // "/catalogue" is not under "/catalog": no scope required there.
    assert_eq!(
        request(
            d.addr,
            "GET",
            "/v1/auth",
            &[
                ("X-Api-Key", reader.as_str()),
                ("X-Original-URI", "/catalogue")
            ]
        )
        .status,
        200
    );
    // Envoy ext_authz appends the original path to /v1/auth.
    let a = request(
        d.addr,
        "GET",
        "/v1/auth/catalog/sync/run",
        &[("Authorization", rb.as_str())],
    );
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (403, Some("INSUFFICIENT_SCOPE"))
    );

    // Per-key usage per route prefix, shown by key show and kept across a restart.
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(shown["usage"]["routes"]["/catalog/sync"], 2, "{shown}");
    assert_eq!(shown["usage"]["denied"], 1, "{shown}");
    assert!(d.ok(&["key", "show", &id]).contains("/catalog/sync"));
    d.restart();
    let shown = d.json(&["key", "show", &id]);
    assert_eq!(
        shown["usage"]["routes"]["/catalog/sync"], 2,
        "usage survives a restart: {shown}"
    );
    assert_eq!(shown["usage"]["verifications"], 2);

    // No cache anywhere: disabling or removing is seen by the very next request.
    assert_eq!(request(d.addr, "GET", "/v1/auth", &ok_headers).status, 200);
    d.ok(&["key", "disable", &id]);
    deny(d.addr, &ok_headers, 403, "DISABLED");
    d.ok(&["key", "enable", &id]);
    assert_eq!(request(d.addr, "GET", "/v1/auth", &ok_headers).status, 200);
    let rotated = d.json(&["key", "rotate", &id]);
    deny(d.addr, &ok_headers, 401, "NOT_FOUND");
    let new_auth = bearer(rotated["key"].as_str().unwrap());
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", new_auth.as_str()),
            ("X-Real-IP", "203.0.113.9"),
            ("X-Original-URI", "/catalog/items"),
        ],
    );
    assert_eq!(a.status, 200);
    d.ok(&["key", "remove", &id]);
    deny(
        d.addr,
        &[
            ("Authorization", new_auth.as_str()),
            ("X-Real-IP", "203.0.113.9"),
            ("X-Original-URI", "/catalog/items"),
        ],
        401,
        "NOT_FOUND",
    );
}

#[test]
fn oversized_headers_are_refused_clearly() {
    let d = TestDaemon::start_with(DEFAULT_POLICY, "[auth]\nmax_header_bytes = 2048\n");
    let big = "x".repeat(3000);
    let a = request(d.addr, "GET", "/v1/auth", &[("X-Padding", big.as_str())]);
    assert_eq!(a.status, 431);
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_header_bytes"));
}

#[test]
fn metrics_and_health() {
    let d = TestDaemon::start();
    let (id, key) = d.create("alice", "k", &[]);
    d.create("bob", "b", &[]);
    d.ok(&["key", "disable", &id]);
    let auth = bearer(&key);
    assert_eq!(
        request(
            d.addr,
            "GET",
            "/v1/auth",
            &[("Authorization", auth.as_str())]
        )
        .status,
        403
    );
    d.ok(&["key", "enable", &id]);
    for _ in 0..2 {
        assert_eq!(
            request(
                d.addr,
                "GET",
                "/v1/auth",
                &[("Authorization", auth.as_str())]
            )
            .status,
            200
        );
    }
    d.post("/v1/verify", r#"{"key":"akd_nope"}"#);
    let m = request(d.addr, "GET", "/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for line in [
        "apikeyd_verifications_total{endpoint=\"auth\",code=\"VALID\"} 2",
        "apikeyd_verifications_total{endpoint=\"auth\",code=\"DISABLED\"} 1",
        "apikeyd_verifications_total{endpoint=\"verify\",code=\"MALFORMED\"} 1",
        "apikeyd_verification_duration_seconds_count 4",
        "apikeyd_keys{status=\"active\"} 2",
        "apikeyd_usage_unflushed_keys 1",
        "apikeyd_alert_deliveries_total{channel=\"operator_message\",outcome=\"delivered\"} 0",
    ] {
        assert!(
            m.body.lines().any(|l| l == line),
            "{line} missing:\n{}",
            m.body
        );
    }
    let h = request(d.addr, "GET", "/healthz", &[]);
    assert_eq!(h.status, 200);
    let v: Value = serde_json::from_str(&h.body).unwrap();
    assert_eq!(
        (v["live"].as_bool(), v["ready"].as_bool()),
        (Some(true), Some(true))
    );
}
