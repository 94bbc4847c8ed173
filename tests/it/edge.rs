//! Forward-auth, rate limits, metrics and the OpenAPI contract, against the real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::util::{request, TestDaemon, DEFAULT_POLICY};

const EDGE: &str = r#"
[auth]
trusted_proxies = ["127.0.0.1/32"]

[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"

[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"
"#;

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

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
        &[("Authorization", "Bearer akd_typo")],
        401,
        "MALFORMED",
    );
    deny(
        d.addr,
        &[
            ("Authorization", auth.as_str()),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
        403,
        "IP_NOT_ALLOWED",
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
        ],
    );
    assert_eq!(a.status, 200);
    d.ok(&["key", "remove", &id]);
    deny(
        d.addr,
        &[
            ("Authorization", new_auth.as_str()),
            ("X-Real-IP", "203.0.113.9"),
        ],
        401,
        "NOT_FOUND",
    );
}

#[test]
fn failed_verifications_are_rate_limited_per_client() {
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "k", &[]);
    let good = bearer(&key);
    let unknown = bearer(&key.replace(&key[4..10], "ZZZZZZ"));
    let from = |ip: &'static str, auth: &str| {
        request(
            d.addr,
            "GET",
            "/v1/auth",
            &[("Authorization", auth), ("X-Forwarded-For", ip)],
        )
    };
    for _ in 0..3 {
        assert_eq!(from("192.0.2.1", &unknown).status, 401);
    }
    let a = from("192.0.2.1", &unknown);
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (429, Some("RATE_LIMITED"))
    );
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        from("192.0.2.1", &good).status,
        429,
        "the client is blocked, whatever key it tries"
    );
    assert_eq!(
        from("192.0.2.2", &good).status,
        200,
        "other clients are not affected"
    );
    // /v1/verify counts failures against the end client it names.
    for _ in 0..3 {
        let (s, _) = d.post("/v1/verify", r#"{"key":"akd_x","ip":"192.0.2.7"}"#);
        assert_eq!(s, 200);
    }
    let (s, body) = d.post("/v1/verify", r#"{"key":"akd_x","ip":"192.0.2.7"}"#);
    assert_eq!(s, 429, "{body}");
    let metrics = request(d.addr, "GET", "/metrics", &[]).body;
    assert!(
        metrics.contains("apikeyd_rate_limited_total 3"),
        "{metrics}"
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

/// One answer read off a keep-alive connection: status, lower-case headers, body.
fn read_answer(
    r: &mut std::io::BufReader<std::net::TcpStream>,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{BufRead, Read};
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn keep_alive_connections_answer_every_request_in_order() {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    let d = TestDaemon::start();
    let (id, key) = d.create("alice", "proxy-key", &[]);
    let connect = || {
        let s = TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    let auth = |method: &str, k: &str, extra: &str| {
        format!("{method} /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {k}\r\n{extra}\r\n")
    };
    let unknown = key.replace(&key[4..10], "ZZZZZZ"); // fails its checksum

    // Pipelined: both answers, in order, on one connection.
    let (mut w, mut r) = connect();
    w.write_all((auth("HEAD", &key, "") + &auth("GET", &unknown, "")).as_bytes())
        .unwrap();
    let (s, h, body) = read_answer(&mut r);
    assert_eq!((s, header(&h, "x-api-key-id")), (200, Some(id.as_str())));
    assert_eq!(body, "");
    assert!(
        header(&h, "date").is_some_and(|d| d.ends_with("GMT")),
        "{h:?}"
    );
    let (s, h, _) = read_answer(&mut r);
    assert_eq!(
        (s, header(&h, "x-api-key-reason")),
        (401, Some("MALFORMED"))
    );
    // A head that arrives in pieces.
    let req = auth("GET", &key, "X-Forwarded-Uri: /a\r\n");
    let (first, rest) = req.split_at(30);
    w.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    w.write_all(rest.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).0, 200);
    // A request with a body, then another path, then /v1/auth again: all answered
    // on the same connection, the first request's body read and not taken for a head.
    let body = "{\"x\":\"GET /\"}";
    let with_body = auth("POST", &key, &format!("Content-Length: {}\r\n", body.len())) + body;
    w.write_all(with_body.as_bytes()).unwrap();
    let (s, h, _) = read_answer(&mut r);
    assert_eq!((s, header(&h, "x-api-key-name")), (200, Some("proxy-key")));
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (s, _, body) = read_answer(&mut r);
    assert_eq!(s, 200, "{body}");
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).0, 200);
    // Disabled between two requests of one connection: refused on the next.
    d.ok(&["key", "disable", &id]);
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    let (s, h, _) = read_answer(&mut r);
    assert_eq!((s, header(&h, "x-api-key-reason")), (403, Some("DISABLED")));
    d.ok(&["key", "enable", &id]);

    // Connection: close is honoured: the answer, then the end of the stream.
    let (mut w, mut r) = connect();
    w.write_all(auth("GET", &key, "Connection: close\r\n").as_bytes())
        .unwrap();
    let (s, h, _) = read_answer(&mut r);
    assert_eq!((s, header(&h, "connection")), (200, Some("close")));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // The status of the one answer to `raw` on a new connection.
    let status_of = |raw: &str| {
        let (mut w, mut r) = connect();
        w.write_all(raw.as_bytes()).unwrap();
        read_answer(&mut r).0
    };

    // HTTP/1.0 and another path first: served (by hyper) all the same.
    let http10 = format!("GET /v1/auth HTTP/1.0\r\nAuthorization: Bearer {key}\r\n\r\n");
    assert_eq!(status_of(&http10), 200);
    let (mut w, mut r) = connect();
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r).0, 200);
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).0, 200);

    // Not HTTP, or a target no URI may have: a clear 400, and the daemon carries on.
    assert_eq!(status_of("HELLO THERE\r\n\r\n"), 400);
    let with_target = |target: &str| auth("GET", &key, "").replace("/v1/auth", target);
    assert_eq!(status_of(&with_target("/v1/auth?a=\"<>")), 400);
    // A fragment is not part of the query (nor of the key, were the query read).
    assert_eq!(status_of(&with_target("/v1/auth?x=1#frag")), 200);
    // A key's own headers can never frame or steer the answer.
    let refused = d.fails(&[
        "key",
        "create",
        "--user",
        "alice",
        "--name",
        "framing",
        "--header",
        "Transfer-Encoding=chunked",
    ]);
    assert!(refused.contains("reserved"), "{refused}");
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(&key))],
    );
    assert_eq!(a.status, 200);
    let shown = d.json(&["key", "show", &id]);
    // Every 200 above was counted, wherever it was answered; the refusal too.
    assert_eq!(shown["usage"]["verifications"], 9, "{shown}");
    assert_eq!(shown["usage"]["denied"], 1, "{shown}");
}

#[test]
fn slow_request_heads_are_cut_off_but_idle_keep_alive_is_not() {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    d.stop();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(
        "worker_threads = 2\n",
        "worker_threads = 2\nheader_read_timeout = \"pt1s\"\n",
    );
    std::fs::write(&d.config, text).unwrap();
    d.spawn(&[]);
    let connect = || {
        let s = TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    // Closed without an answer: read() sees the end of the stream, in time.
    let closed_within = |r: &mut BufReader<TcpStream>, what: &str| {
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        let took = start.elapsed();
        assert!(
            rest.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(5),
            "{what}: closed after {took:?}"
        );
    };
    let auth = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");

    // Idle between requests is fine: proxies keep upstream connections open.
    let (mut w, mut r) = connect();
    w.write_all(auth.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).0, 200);
    std::thread::sleep(Duration::from_millis(1600));
    w.write_all(auth.as_bytes()).unwrap();
    assert_eq!(
        read_answer(&mut r).0,
        200,
        "idle keep-alive connection kept"
    );
    // A head that never finishes is cut off, however slowly it trickles in.
    w.write_all(b"GET /v1/auth HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = w.write_all(b"Host: t\r\n");
    closed_within(&mut r, "a head started after an answer");
    // A connection that never sends a whole first head is closed too.
    let (_w, mut r) = connect();
    closed_within(&mut r, "a connection that sends nothing");
    // The same on a connection hyper serves (after another path).
    let (mut w, mut r) = connect();
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r).0, 200);
    w.write_all(b"POST /v1/verify HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    closed_within(&mut r, "a slow head on a hyper connection");
    // The daemon carries on.
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(&key))],
    );
    assert_eq!(a.status, 200);
}

#[test]
fn a_busy_keep_alive_connection_does_not_hold_up_a_stop() {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    let s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let batch = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n")
        .repeat(20);
    // A client that never pauses: it writes requests as fast as it can while it
    // reads the answers, so the connection always has another request waiting. It
    // ends after an answer with `Connection: close`, or (requests unread at the
    // close make it a reset) when the stream ends or is reset between answers.
    let writer = std::thread::spawn(move || while w.write_all(batch.as_bytes()).is_ok() {});
    let client = std::thread::spawn(move || {
        let mut answered = 0;
        while let Some((status, closing)) = try_read_answer(&mut r) {
            assert_eq!(status, 200);
            answered += 1;
            if closing {
                break;
            }
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    d.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let answered = client.join().unwrap();
    assert!(answered > 20, "{answered}");
    writer.join().unwrap();
}

/// The status of the next answer and whether it closes the connection; None when
/// the connection ended (or was reset) first.
fn try_read_answer(r: &mut std::io::BufReader<std::net::TcpStream>) -> Option<(u16, bool)> {
    use std::io::BufRead;
    let mut status_line = String::new();
    if r.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut closing = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            return Some((status, closing));
        }
        closing |= line == "connection: close";
    }
}
