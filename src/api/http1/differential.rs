//! The fast path and hyper's path must decide alike on any head: the same
//! generated requests go to [`answer`] and to hyper (the `/v1/auth` service of the
//! server, on an in-memory connection), over one real [`AppState`] with keys and
//! routes, and their statuses and headers are compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::harness::{fast, fixture, hyper};

fn header_names() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Authorization",
        "X-Api-Key",
        "x-api-key",
        "X-Forwarded-Uri",
        "x-forwarded-uri",
        "X-Original-URI",
        "X-Required-Scope",
        "X-Forwarded-For",
        "X-Real-IP",
        "Connection",
        "Content-Length",
        "Host",
        "X-Filler",
    ])
}

/// Paths near the protected ones, spelled in the ways that matter.
fn paths() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        "/", "//", "/./", "/x/../", "/..", ";p", "%73", "%2e", "%2f", "%5c", "\\", "%zz", "%4",
        "%00", "%C3%A9", "?", "#", "catalog", "CATALOG", "sync", "run", "items", "admin",
        "http://h", "\u{e9}", "\t", " ", ".",
    ]);
    (
        prop::sample::select(vec![
            "/catalog/sync/run",
            "/catalog/items",
            "/admin/x",
            "/x",
        ]),
        prop::collection::vec((0usize..24, piece), 0..4),
    )
        .prop_map(|(base, inserts)| {
            let mut p = base.to_owned();
            for (at, piece) in inserts {
                let at = (0..=at.min(p.len()))
                    .rev()
                    .find(|i| p.is_char_boundary(*i))
                    .unwrap_or(0);
                p.insert_str(at, piece);
            }
            p.into_bytes()
        })
}

fn values(keys: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(keys.to_vec());
    prop_oneof![
        key.clone().prop_map(|k| format!("Bearer {k}").into_bytes()),
        key.prop_map(String::into_bytes),
        paths(),
        prop::sample::select(vec![
            "catalog:sync",
            "catalog:read",
            "203.0.113.9",
            "198.51.100.1, 203.0.113.9",
            "close",
            "keep-alive",
            "0",
            "Bearer akd_wrong",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(prop::sample::select(b"ab/%.;\x80\xff \t".to_vec()), 0..6),
    ]
}

fn heads(keys: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(keys.to_vec());
    (
        prop::sample::select(vec!["GET", "HEAD", "POST"]),
        prop_oneof![
            Just("/v1/auth".to_owned()),
            Just("/v1/auth?x=1".to_owned()),
            // Envoy's ext_authz: the original path appended, the site root too.
            Just("/v1/auth/".to_owned()),
            Just("/v1/auth/?x=1".to_owned()),
            Just("/v1/auth/catalog/sync/run".to_owned()),
            Just("/v1/auth//catalog/sync".to_owned()),
            Just("/v1/auth/catalog/%2e%2e/sync?y".to_owned()),
            paths().prop_map(|p| format!("/v1/auth{}", String::from_utf8_lossy(&p))),
            key.prop_map(|k| format!("/v1/auth?api_key={k}")),
        ],
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec((header_names(), values(keys)), 0..8),
    )
        .prop_map(|(method, target, version, headers)| {
            let mut raw = format!("{method} {target} {version}\r\n").into_bytes();
            for (name, value) in headers {
                raw.extend_from_slice(name.as_bytes());
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(&value);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            raw
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Regression (issue 9, item 1): `Head::first` skipped a first value that
    /// was not text and took the next, where hyper's header map reads none, so
    /// the two paths could check different URIs and keys for one request.
    #[test]
    fn fast_path_and_hyper_decide_alike(raw in heads(&fixture().keys)) {
        let f = fixture();
        let fast = fast(&f.st, &raw);
        let hyper = hyper(f, &raw);
        if let Some(fast) = fast {
            prop_assert_eq!(fast, hyper, "{}", String::from_utf8_lossy(&raw));
        }
    }
}

/// The bypass spellings of issue 9, item 1, through both paths.
mod route_checks {
    use super::{fast, fixture, hyper};

    fn head(extra: &str) -> Vec<u8> {
        format!("GET /v1/auth HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
    }

    fn reason(seen: &(u16, Vec<(String, String)>)) -> Option<String> {
        seen.1
            .iter()
            .find(|(n, _)| n == "x-api-key-reason")
            .map(|(_, v)| v.clone())
    }

    /// Both paths' answer to `raw`, which the fast path must answer itself.
    fn both(raw: &[u8]) -> (u16, Option<String>) {
        let f = fixture();
        let fast = fast(&f.st, raw).expect("answered on the fast path");
        assert_eq!(fast, hyper(f, raw), "{}", String::from_utf8_lossy(raw));
        (fast.0, reason(&fast))
    }

    /// Regression (issue 9, item 1): with only `catalog:read`, spellings of
    /// `/catalog/sync/run` that the application reads as that path passed the
    /// `/catalog/sync` route (200), and so did unreadable or conflicting URI
    /// headers (no route found: fail open).
    #[test]
    fn bypass_spellings_are_refused_on_both_paths() {
        let reader = &fixture().keys[1];
        let ask = |uri_headers: &str| both(&head(&format!("X-Api-Key: {reader}\r\n{uri_headers}")));
        for p in [
            "/catalog/sync/run",
            "/catalog/%73ync/run",
            "/catalog/sync/run;jsessionid=1",
            "http://h/catalog/sync/run",
        ] {
            assert_eq!(
                ask(&format!("X-Forwarded-Uri: {p}\r\n")),
                (403, Some("INSUFFICIENT_SCOPE".into())),
                "{p}"
            );
        }
        for p in [
            // Dot segments and `//` (issue 9 review, F1): most applications
            // route `/catalog/sync/..` under `/catalog/sync`.
            "/catalog/sync/..",
            "/catalog/sync/%2e%2e",
            "/catalog/sync/%2E%2E/",
            "/catalog/sync//..",
            "/catalog/sync/..;",
            "//catalog/sync/run",
            "/catalog/./sync/run",
            "/catalog/x/../sync/run",
            "/catalog/sync%2frun",
            "/catalog%2Fsync/run",
            "/catalog\\sync/run",
            "/catalog/%zz/../sync/run",
            "/catalog/sync%00",
            "/catalog/../../catalog/sync/run",
            "/public#/../catalog/sync/run",
            "/catalog./sync/run",
            "*",
            // Letter case and ;parameters that change the route.
            "/CATALOG/Sync/run",
            "/catalog;p/sync/run",
            "/catalog/x/..;/sync/run",
        ] {
            assert_eq!(
                ask(&format!("X-Forwarded-Uri: {p}\r\n")),
                (400, Some("BAD_PATH".into())),
                "{p}"
            );
        }
        // Unreadable or conflicting URI headers, in either order.
        for h in [
            "X-Forwarded-Uri: /catalog/sync/r\u{fc}n\r\n",
            "X-Original-URI: /catalog/items\r\nX-Forwarded-Uri: /catalog/sync/run\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Forwarded-Uri: /catalog/sync/run\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Original-URI: /catalog/sync/run\r\n",
        ] {
            assert_eq!(ask(h), (400, Some("BAD_PATH".into())), "{h}");
        }
        let mut raw = head(&format!(
            "X-Api-Key: {reader}\r\nX-Forwarded-Uri: /catalog/sync/"
        ));
        raw.splice(raw.len() - 2..raw.len() - 2, b"\xffrun\r\n".iter().copied());
        assert_eq!(both(&raw), (400, Some("BAD_PATH".into())));
        // What the key may do still passes; the same URI twice is one URI.
        for h in [
            "X-Forwarded-Uri: /catalog/items?page=2\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Original-URI: /catalog/items\r\n",
            "X-Forwarded-Uri: /catalog/synced\r\n",
            "X-Forwarded-Uri: /catalog/sync%20list\r\n",
            "X-Forwarded-Uri: /catalog/items;v=2\r\n",
            "X-Forwarded-Uri: /catalog/Items\r\n",
        ] {
            assert_eq!(ask(h).0, 200, "{h}");
        }
    }

    /// Regression (issue 9 review, F8): with routes configured, a request naming
    /// no original URI matched no route and passed with any valid key, so a
    /// proxy configured without the URI header failed open.
    #[test]
    fn no_original_uri_is_refused_on_both_paths() {
        let reader = &fixture().keys[1];
        assert_eq!(
            both(&head(&format!("X-Api-Key: {reader}\r\n"))),
            (400, Some("BAD_PATH".into()))
        );
    }

    /// Regression (issue 9, item 1): for a repeated header whose first value was
    /// not text, the fast path read the second value and hyper none.
    #[test]
    fn a_first_value_that_is_not_text_reads_as_absent_on_both_paths() {
        let good = &fixture().keys[0];
        let mut raw = head(&format!("X-Api-Key: x\r\nX-Api-Key: {good}\r\n"));
        let at = raw.windows(2).position(|w| w == b"x\r").unwrap();
        raw[at] = 0xff;
        assert_eq!(both(&raw), (401, Some("MISSING".into())));
    }

    /// Regression (issue 9 review, F3): Envoy asks about the site root as
    /// `/v1/auth/`, which the fast path handed to hyper and the router did not
    /// serve (404). It is forward-auth for the original path `/`, its query kept,
    /// answered alike on both paths.
    #[test]
    fn envoy_site_root_is_forward_auth_on_both_paths() {
        let [good, reader, ..] = &fixture().keys[..] else {
            unreachable!("the fixture has five keys")
        };
        let envoy = |target: &str, extra: &str| {
            both(format!("GET {target} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
        };
        for target in ["/v1/auth/", "/v1/auth/?x=1"] {
            assert_eq!(
                envoy(target, &format!("X-Api-Key: {good}\r\n")),
                (200, None)
            );
            assert_eq!(envoy(target, ""), (401, Some("MISSING".into())));
        }
        assert_eq!(envoy(&format!("/v1/auth/?api_key={good}"), "").0, 200);
        // The appended path is the original URI the routes are matched against.
        assert_eq!(
            envoy(
                "/v1/auth/catalog/sync/run",
                &format!("X-Api-Key: {reader}\r\n")
            ),
            (403, Some("INSUFFICIENT_SCOPE".into()))
        );
        assert_eq!(
            envoy(
                "/v1/auth//catalog/sync/run",
                &format!("X-Api-Key: {reader}\r\n")
            ),
            (400, Some("BAD_PATH".into()))
        );
    }

    /// Regression (issue 9, item 9): with `query_param`, a key in the forwarded
    /// URI's query was not read.
    #[test]
    fn query_key_from_the_forwarded_uri() {
        let good = &fixture().keys[0];
        let h = format!("X-Forwarded-Uri: /catalog/items?api_key={good}\r\n");
        assert_eq!(both(&head(&h)).0, 200);
    }
}
