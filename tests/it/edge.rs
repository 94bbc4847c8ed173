//! Forward-auth, rate limits, metrics and the OpenAPI contract, against the real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::util::{
    connect, exchange, read_answer, request, split, Answer, TestDaemon, DEFAULT_POLICY,
};

const EDGE: &str = crate::util::CATALOG_ROUTES;

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

#[test]
fn keep_alive_connections_answer_every_request_in_order() {
    use std::io::{Read, Write};
    use std::time::Duration;

    let d = TestDaemon::start();
    let (id, key) = d.create("alice", "proxy-key", &[]);
    let new_conn = || split(connect(d.addr, Duration::from_secs(10)));
    let auth = |method: &str, k: &str, extra: &str| {
        format!("{method} /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {k}\r\n{extra}\r\n")
    };
    let unknown = key.replace(&key[4..10], "ZZZZZZ"); // fails its checksum

    // Pipelined: both answers, in order, on one connection.
    let (mut w, mut r) = new_conn();
    w.write_all((auth("HEAD", &key, "") + &auth("GET", &unknown, "")).as_bytes())
        .unwrap();
    let a = read_answer(&mut r);
    assert_eq!(
        (a.status, a.header("x-api-key-id")),
        (200, Some(id.as_str()))
    );
    assert_eq!(a.body, "");
    assert!(
        a.header("date").is_some_and(|d| d.ends_with("GMT")),
        "{:?}",
        a.headers
    );
    let a = read_answer(&mut r);
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (401, Some("MALFORMED"))
    );
    // A head that arrives in pieces.
    let req = auth("GET", &key, "X-Forwarded-Uri: /a\r\n");
    let (first, rest) = req.split_at(30);
    w.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    w.write_all(rest.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
    // A request with a body, then another path, then /v1/auth again: all answered
    // on the same connection, the first request's body read and not taken for a head.
    let body = "{\"x\":\"GET /\"}";
    let with_body = auth("POST", &key, &format!("Content-Length: {}\r\n", body.len())) + body;
    w.write_all(with_body.as_bytes()).unwrap();
    let a = read_answer(&mut r);
    assert_eq!(
        (a.status, a.header("x-api-key-name")),
        (200, Some("proxy-key"))
    );
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut r);
    assert_eq!(a.status, 200, "{}", a.body);
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
    // Disabled between two requests of one connection: refused on the next.
    d.ok(&["key", "disable", &id]);
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    let a = read_answer(&mut r);
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (403, Some("DISABLED"))
    );
    d.ok(&["key", "enable", &id]);

    // Connection: close is honoured: the answer, then the end of the stream.
    let (mut w, mut r) = new_conn();
    w.write_all(auth("GET", &key, "Connection: close\r\n").as_bytes())
        .unwrap();
    let a = read_answer(&mut r);
    assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // The status of the one answer to `raw` on a new connection.
    let status_of = |raw: &str| {
        let (mut w, mut r) = new_conn();
        w.write_all(raw.as_bytes()).unwrap();
        read_answer(&mut r).status
    };

    // HTTP/1.0 and another path first: served (by hyper) all the same.
    let http10 = format!("GET /v1/auth HTTP/1.0\r\nAuthorization: Bearer {key}\r\n\r\n");
    assert_eq!(status_of(&http10), 200);
    let (mut w, mut r) = new_conn();
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
    w.write_all(auth("GET", &key, "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).status, 200);

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
    let new_conn = || split(connect(d.addr, Duration::from_secs(10)));
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
    let (mut w, mut r) = new_conn();
    w.write_all(auth.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
    std::thread::sleep(Duration::from_millis(1600));
    w.write_all(auth.as_bytes()).unwrap();
    assert_eq!(
        read_answer(&mut r).status,
        200,
        "idle keep-alive connection kept"
    );
    // A head that never finishes is cut off, however slowly it trickles in.
    w.write_all(b"GET /v1/auth HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = w.write_all(b"Host: t\r\n");
    closed_within(&mut r, "a head started after an answer");
    // A connection that never sends a whole first head is closed too.
    let (_w, mut r) = new_conn();
    closed_within(&mut r, "a connection that sends nothing");
    // The same on a connection hyper serves (after another path).
    let (mut w, mut r) = new_conn();
    w.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
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
    use std::io::Write;
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    let (mut w, mut r) = split(connect(d.addr, Duration::from_secs(10)));
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

/// A connection to the daemon from `source` (any 127.0.0.0/8 address is this host):
/// how the tests play clients other than 127.0.0.1.
fn connect_from(source: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
}

/// One request on a new connection from `source` (with `Connection: close`): the
/// status and the body.
fn request_from(source: &str, d: &TestDaemon, head: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{head}\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = Answer::parse(&exchange(connect_from(source, d.addr), req.as_bytes()));
    (a.status, a.body)
}

/// Regression (issue 9, item 3): `/v1/verify` charged failures to the `ip` named in
/// its body, in the bucket `/v1/auth` shares, whoever sent it. Three failed calls
/// naming 203.0.113.7 made `/v1/auth` answer 429 to that client's valid key, and
/// naming a new address each time let the caller fail without limit. Failures are
/// now charged to the caller: the TCP peer, or the client a trusted proxy names.
#[test]
fn failures_naming_a_victim_are_charged_to_the_caller_not_the_victim() {
    // 127.0.0.2 is the trusted proxy in front of the victim; the flooder at
    // 127.0.0.1 is a plain client.
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.2/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let (_, flooder_key) = d.create("bob", "flooder", &[]);
    let victim = "203.0.113.7";
    let verify_body = |k: &str, ip: &str| format!(r#"{{"key":"{k}","ip":"{ip}"}}"#);
    let via_proxy_auth = || {
        let (status, _) = request_from(
            "127.0.0.2",
            &d,
            &format!(
                "GET /v1/auth HTTP/1.1\r\nAuthorization: Bearer {key}\r\nX-Forwarded-For: {victim}"
            ),
            "",
        );
        status
    };
    let via_proxy_verify = || {
        request_from(
            "127.0.0.2",
            &d,
            "POST /v1/verify HTTP/1.1\r\nContent-Type: application/json",
            &verify_body(&key, victim),
        )
    };

    // The flood: failures that name the victim, then a new address each time.
    for i in 0..3 {
        let (s, body) = d.post("/v1/verify", &verify_body("akd_x", victim));
        assert_eq!(s, 200, "failure {i} answered: {body}");
    }
    for i in 0..5 {
        let (s, body) = d.post(
            "/v1/verify",
            &verify_body("akd_x", &format!("198.51.100.{i}")),
        );
        assert_eq!(
            s, 429,
            "rotating the body ip does not dodge the limit: {body}"
        );
        assert!(
            body.to_string().contains("127.0.0.1"),
            "the flooder is named: {body}"
        );
    }
    // The flooder is limited everywhere, whatever key it shows next.
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(&flooder_key))],
    );
    assert_eq!(a.status, 429, "the flooder itself is limited");

    // The victim keeps passing, on both endpoints.
    assert_eq!(
        via_proxy_auth(),
        200,
        "the victim is not locked out of /v1/auth"
    );
    let (s, body) = via_proxy_verify();
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"code\":\"VALID\""), "{body}");

    // A trusted proxy's body ip is believed: its failures are charged to the client
    // it names, and that client's neighbours are not affected.
    let proxy_verify = |k: &str, ip: &str| {
        request_from(
            "127.0.0.2",
            &d,
            "POST /v1/verify HTTP/1.1\r\nContent-Type: application/json",
            &verify_body(k, ip),
        )
        .0
    };
    for _ in 0..3 {
        assert_eq!(proxy_verify("akd_x", "192.0.2.50"), 200);
    }
    assert_eq!(proxy_verify(&key, "192.0.2.50"), 429);
    assert_eq!(proxy_verify(&key, "192.0.2.51"), 200);
    assert_eq!(via_proxy_auth(), 200, "the victim still passes");
}

/// Restart `d` with these lines added to its `[server]` table.
fn restart_with_server_settings(d: &mut TestDaemon, lines: &str) {
    d.stop();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(
        "worker_threads = 2\n",
        &format!("worker_threads = 2\n{lines}"),
    );
    std::fs::write(&d.config, text).unwrap();
    d.spawn(&[]);
}

/// Regression (issue 9, item 6): after its first `/v1/auth` answer a connection was
/// kept open for as long as the client liked (5 000 idle connections held about
/// 36 MB), and one hyper served was closed only by hyper's head timeout. Both now
/// close after `server.idle_timeout` without a request, and only then.
#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    restart_with_server_settings(&mut d, "idle_timeout = \"pt1s\"\n");
    let new_conn = || split(connect(d.addr, Duration::from_secs(8)));
    // Closed by the server, without an answer, about a second after the last one.
    let closed_after_idle = |r: &mut BufReader<TcpStream>, since: Instant, what: &str| {
        let mut rest = Vec::new();
        let end = r.read_to_end(&mut rest);
        let took = since.elapsed();
        assert!(end.is_ok(), "{what}: not closed ({end:?}) after {took:?}");
        assert!(
            rest.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
    };
    let auth = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    let healthz = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

    for (path, req) in [("fast path", auth.as_str()), ("hyper", healthz)] {
        // A connection in use is not cut: a request every 400 ms for 2.4 s.
        let (mut w, mut r) = new_conn();
        for i in 0..6 {
            w.write_all(req.as_bytes()).unwrap();
            assert_eq!(read_answer(&mut r).status, 200, "{path}: request {i}");
            std::thread::sleep(Duration::from_millis(400));
        }
        w.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_answer(&mut r).status, 200, "{path}: last request");
        // Then idle: closed after the timeout.
        closed_after_idle(&mut r, Instant::now(), path);
    }

    // A request whose body trickles in for longer than the idle timeout is in use,
    // not idle.
    let (mut w, mut r) = new_conn();
    w.write_all(healthz.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r).status, 200);
    let body = format!(r#"{{"key":"{key}"}}"#);
    w.write_all(
        format!(
            "POST /v1/verify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    for chunk in body.as_bytes().chunks(body.len().div_ceil(5)) {
        std::thread::sleep(Duration::from_millis(500));
        w.write_all(chunk).unwrap();
    }
    let a = read_answer(&mut r);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("\"VALID\""), "{}", a.body);
    closed_after_idle(&mut r, Instant::now(), "after a slow body");
}

/// A kept-alive connection from `source` on which `req` has been answered 200 once.
fn answered_once(
    source: &str,
    d: &TestDaemon,
    req: &str,
) -> (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>) {
    use std::io::Write;
    let (mut w, mut r) = split(connect_from(source, d.addr));
    w.write_all(req.as_bytes()).unwrap();
    assert_eq!(
        read_answer(&mut r).status,
        200,
        "a connection from {source}"
    );
    (w, r)
}

/// Whether the server closed `s` at once, without answering `req` but with its
/// 503 refusal (the read times out after 5 s otherwise).
fn refused(mut s: std::net::TcpStream, req: &str) -> bool {
    use std::io::{Read, Write};
    let _ = s.write_all(req.as_bytes());
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => buf[..n].starts_with(b"HTTP/1.1 503"),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// The refusal a connection from `source` reads without sending anything.
fn refusal_from(source: &str, addr: std::net::SocketAddr) -> String {
    exchange(connect_from(source, addr), b"")
}

/// Regression (issue 9, item 6): there was no limit on connections, so one client
/// could hold every file descriptor. Connections over `server.max_connections` or
/// over `server.max_connections_per_client` from one client are closed at accept,
/// while those already open keep working, and a closed one frees its slot.
#[test]
fn connections_over_the_limits_are_refused_and_open_ones_keep_working() {
    use std::io::{BufReader, Write};
    use std::time::Duration;

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    restart_with_server_settings(
        &mut d,
        "max_connections = 6\nmax_connections_per_client = 3\n",
    );
    let auth = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    let open = |source: &str| answered_once(source, &d, &auth);
    let still_works = |(w, r): &mut (std::net::TcpStream, BufReader<std::net::TcpStream>)| {
        w.write_all(auth.as_bytes()).unwrap();
        assert_eq!(read_answer(r).status, 200);
    };

    let mut first: Vec<_> = (0..3).map(|_| open("127.0.0.1")).collect();
    assert!(
        refused(connect_from("127.0.0.1", d.addr), &auth),
        "a fourth connection from one client is refused"
    );
    for c in &mut first {
        still_works(c);
    }
    // Issue 9 review, F4: a refused client is told which limit it hit.
    let text = refusal_from("127.0.0.1", d.addr);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("server.max_connections_per_client (3)"),
        "{text}"
    );
    let mut second: Vec<_> = (0..3).map(|_| open("127.0.0.2")).collect();
    assert!(
        refused(connect_from("127.0.0.3", d.addr), &auth),
        "a seventh connection is refused, whoever opens it"
    );
    let text = refusal_from("127.0.0.3", d.addr);
    assert!(text.contains("server.max_connections (6)"), "{text}");
    for c in first.iter_mut().chain(second.iter_mut()) {
        still_works(c);
    }

    // Closing a connection frees its slot (once the server has seen the close).
    drop(second.pop());
    let mut metrics = String::new();
    crate::util::wait_until(Duration::from_secs(5), || {
        let (status, body) = request_from("127.0.0.3", &d, "GET /metrics HTTP/1.1", "");
        metrics = body;
        status == 200
    });
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    // Five kept open and the one asking.
    assert_eq!(value("apikeyd_connections_open"), 6);
    assert_eq!(
        value("apikeyd_connections_refused_total{reason=\"max_connections_per_client\"}"),
        2
    );
    // The seventh, and any try above made before the server saw the close.
    assert!(value("apikeyd_connections_refused_total{reason=\"max_connections\"}") >= 1);
    drop(first);
    crate::util::wait_until(Duration::from_secs(5), || {
        let (status, _) = request_from("127.0.0.1", &d, "GET /healthz HTTP/1.1", "");
        status == 200
    });
    for c in &mut second {
        still_works(c);
    }
}

/// Regression (issue 9, item 6): hyper's own head timeout ran from the end of the
/// previous answer, so a connection hyper served was closed after
/// `header_read_timeout` of idleness (30 s by default, before nginx's 60 s
/// upstream keep-alive ends), whatever the idle timeout. On both paths a head is
/// now timed from its first byte, and idleness by `idle_timeout` alone.
#[test]
fn idle_timeout_outlasts_the_head_timeout_on_both_paths() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    restart_with_server_settings(
        &mut d,
        "header_read_timeout = \"pt1s\"\nidle_timeout = \"pt3s\"\n",
    );
    let auth = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    let healthz = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    for (path, req) in [("fast path", auth.as_str()), ("hyper", healthz)] {
        let (mut w, mut r) = split(connect(d.addr, Duration::from_secs(8)));
        w.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_answer(&mut r).status, 200, "{path}");
        // Idle for longer than the head timeout: still open.
        std::thread::sleep(Duration::from_millis(1800));
        w.write_all(req.as_bytes()).unwrap();
        assert_eq!(
            read_answer(&mut r).status,
            200,
            "{path}: kept past the head timeout"
        );
        // A head begun after that is still held to the head timeout.
        w.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let since = Instant::now();
        let mut rest = Vec::new();
        let end = r.read_to_end(&mut rest);
        let took = since.elapsed();
        assert!(end.is_ok() && rest.is_empty(), "{path}: {end:?} {rest:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{path}: slow head closed after {took:?}"
        );
    }
}

/// Regression (issue 9, item 3), on the admin socket: there is no TCP peer, so the
/// `ip` a local caller named was charged, and a local account could lock that
/// client out of `/v1/auth` and `/v1/verify` or fail without limit by naming a new
/// address each time. The socket's caller is now its local account (uid).
#[test]
fn failures_on_the_admin_socket_are_charged_to_the_local_account() {
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let victim = "203.0.113.7";
    for _ in 0..3 {
        let out = d.ctl(&["verify", "akd_x", "--ip", victim]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("MALFORMED"), "{text}");
    }
    for i in 0..3 {
        let ip = format!("198.51.100.{i}");
        let err = d.fails(&["verify", "akd_x", "--ip", &ip]);
        assert!(
            err.contains("local uid"),
            "a new ip does not dodge the limit: {err}"
        );
    }
    // The address named is neither charged nor limited.
    let (s, body) = d.post(
        "/v1/verify",
        &format!(r#"{{"key":"{key}","ip":"{victim}"}}"#),
    );
    assert_eq!((s, body["code"].as_str()), (200, Some("VALID")), "{body}");
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", &bearer(&key)),
            ("X-Forwarded-For", victim),
        ],
    );
    assert_eq!(a.status, 200);
}

/// A raw request over the admin socket (`Connection: close` added); status and body.
fn unix_raw(socket: &std::path::Path, head: &str, body: &str) -> (u16, String) {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let req = format!(
        "{head}Host: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = Answer::parse(&exchange(s, req.as_bytes()));
    (a.status, a.body)
}

/// Regression (issue 9 review, F4): `/v1/auth` was served on the 0666 admin
/// socket, where the missing TCP peer was taken for 127.0.0.1, a trusted proxy:
/// any local account (even an unmapped one) could charge failures to any address
/// it named in X-Forwarded-For, which then got 429 through the real proxy, and
/// probe keys' IP filters. Forward-auth is TCP only now, and failures over the
/// socket are charged to the local account whatever address they name.
#[test]
fn local_accounts_cannot_charge_failures_to_a_tcp_client() {
    if !crate::util::require_root("runs apikeyctl as nobody") {
        return;
    }
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limit]\nfailures_per_minute = 1\nburst = 3\n",
    );
    let (_, key) = d.create("alice", "victim", &[]);
    let victim = "203.0.113.7";
    for path in ["/v1/auth", "/v1/auth/catalog/items"] {
        for _ in 0..5 {
            let (status, body) = unix_raw(
                &d.socket,
                &format!(
                    "GET {path} HTTP/1.1\r\nX-Forwarded-For: {victim}\r\nX-Api-Key: akd_bogus\r\n"
                ),
                "",
            );
            assert_eq!(status, 404, "{path} on the socket: {body}");
        }
    }
    // /v1/verify over the socket, from an unmapped account, naming the victim in
    // the body and in X-Forwarded-For.
    for _ in 0..5 {
        let out = d.ctl_as(Some(65534), &["verify", "akd_x", "--ip", victim]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("MALFORMED") || text.contains("local uid"),
            "{text}"
        );
        let (status, body) = unix_raw(
            &d.socket,
            &format!("POST /v1/verify HTTP/1.1\r\nX-Forwarded-For: {victim}\r\nContent-Type: application/json\r\n"),
            &format!(r#"{{"key":"akd_x","ip":"{victim}"}}"#),
        );
        assert!(matches!(status, 200 | 429), "{status} {body}");
    }
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", &bearer(&key)),
            ("X-Forwarded-For", victim),
        ],
    );
    assert_eq!(
        (a.status, a.header("x-api-key-reason")),
        (200, None),
        "the victim is not limited"
    );
}

/// Regression (issue 9 review, F6): 50 connections from 127.0.0.2..6 (10 each,
/// within the per-client limit) filled `max_connections = 50`, and nginx on
/// 127.0.0.1 then got its connections closed at accept (502, answered 500 to
/// every client). Peers in `auth.trusted_proxies` are exempt from the total
/// limit; they keep their per-client limit.
#[test]
fn clients_filling_max_connections_do_not_lock_out_a_trusted_proxy() {
    let mut d = TestDaemon::start_with(
        DEFAULT_POLICY,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let (_, key) = d.create("alice", "k", &[]);
    restart_with_server_settings(
        &mut d,
        "max_connections = 6\nmax_connections_per_client = 3\n",
    );
    let auth = format!("GET /v1/auth HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    let open = |source: &str| answered_once(source, &d, &auth);
    let _clients: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .flat_map(|ip| (0..3).map(|_| open(ip)))
        .collect();
    assert!(
        refused(connect_from("127.0.0.4", d.addr), &auth),
        "max_connections holds for other clients"
    );
    let _proxy: Vec<_> = (0..3).map(|_| open("127.0.0.1")).collect();
    assert!(
        refused(connect_from("127.0.0.1", d.addr), &auth),
        "the proxy keeps its per-client limit"
    );
}

/// A connection with a small receive buffer that pipelines `/v1/auth` requests
/// until the daemon stops taking them (its answers are never read), then holds.
fn pipeline_without_reading(d: &TestDaemon) -> std::net::TcpStream {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(d.addr).await.unwrap()
    });
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(true).unwrap();
    let batch = "GET /v1/auth HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    let started = Instant::now();
    let mut blocked_since = None;
    while started.elapsed() < Duration::from_secs(10) {
        match s.write(batch.as_bytes()) {
            Ok(_) => blocked_since = None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(blocked_since.is_some(), "the daemon kept reading");
    s
}

/// `apikeyd_connections_open` as another client sees it (counting itself).
fn connections_open(d: &TestDaemon) -> u64 {
    let m = request(d.addr, "GET", "/metrics", &[]).body;
    m.lines()
        .find_map(|l| l.strip_prefix("apikeyd_connections_open ")?.parse().ok())
        .unwrap()
}

/// Regression (issue 9 review, F2): the fast path wrote its answers outside the
/// select! on the idle timer and the stop, so a client that pipelined requests
/// and never read the answers held the connection (4 MB of Send-Q) past
/// `idle_timeout`, and a SIGTERM waited until the client went away.
#[test]
fn a_client_that_never_reads_does_not_hold_its_connection_or_a_stop() {
    use std::time::{Duration, Instant};

    let mut d = TestDaemon::start();
    restart_with_server_settings(&mut d, "idle_timeout = \"pt2s\"\n");
    let held = pipeline_without_reading(&d);
    assert_eq!(connections_open(&d), 2);
    let started = Instant::now();
    crate::util::wait_until(Duration::from_secs(10), || connections_open(&d) == 1);
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(held);

    // With the default idle_timeout (5 min) only the stop can end it.
    let mut d = TestDaemon::start();
    let _held = pipeline_without_reading(&d);
    let started = Instant::now();
    d.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop took {:?}",
        started.elapsed()
    );
}

/// Regression (issue 9 review, F3): on hyper's path a request whose body never
/// came (`Content-Length: 60000`, no bytes) kept its connection open for good
/// (no deadline while a request was in flight), and a SIGTERM waited for the
/// client. A request that moves no bytes for `idle_timeout` is closed now, and
/// a stop gives the request in flight a few seconds.
#[test]
fn a_request_body_that_never_arrives_does_not_hold_the_connection_or_a_stop() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let head = "POST /v1/verify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"key\":";
    let mut d = TestDaemon::start();
    restart_with_server_settings(
        &mut d,
        "idle_timeout = \"pt2s\"\nheader_read_timeout = \"pt1s\"\n",
    );
    let mut s = connect(d.addr, Duration::from_secs(15));
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(8)).contains(&took),
        "closed after {took:?}"
    );

    // With the default idle_timeout (5 min) only the stop can end it.
    let mut d = TestDaemon::start();
    let mut s = connect(d.addr, Duration::from_secs(15));
    s.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    d.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop took {:?}",
        started.elapsed()
    );
}

/// A python3 that any account may run (not a shim under /root).
fn system_python() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Regression (issue 9 review, F5): the admin socket was served by plain
/// axum::serve, with no head or idle timeout and no connection limit, so any
/// local account (the socket is 0666) could open connections that never finish
/// a head until the daemon ran out of file descriptors, and TCP /v1/auth then
/// timed out ("accept error: Too many open files"). The socket is now served
/// within `header_read_timeout` and `idle_timeout`, with a local account as one
/// client under `max_connections_per_client`, and in the shared
/// `max_connections`, from which root is exempt.
#[test]
fn the_admin_socket_has_connection_limits_and_timeouts() {
    use std::process::Command;
    use std::time::Duration;

    let python = system_python();
    if !crate::util::require_root("connects to the socket as nobody")
        || !crate::util::require("python3 in /usr/bin or /usr/local/bin", python.is_some())
    {
        return;
    }
    let mut d = TestDaemon::start();
    let (_, key) = d.create("alice", "k", &[]);
    restart_with_server_settings(
        &mut d,
        "header_read_timeout = \"pt3s\"\nmax_connections = 8\nmax_connections_per_client = 3\n",
    );
    // As nobody: five connections that send half a head and wait; the seconds
    // after which the daemon closed each (refused ones at once, the others at
    // the head timeout), or -1 if it did not within 8 s.
    let script = r#"
import socket, sys, time, json
conns = []
for _ in range(5):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try: s.sendall(b"GET /healthz HTTP/1.1\r\n")
    except OSError: pass
    s.setblocking(False)
    conns.append(s)
t0 = time.time()
closed = [-1.0] * 5
answered = 0
said = False
while time.time() - t0 < 8 and -1.0 in closed:
    for i, s in enumerate(conns):
        if closed[i] >= 0: continue
        try: d = s.recv(100)
        except BlockingIOError: continue
        except OSError: d = b""
        if d.startswith(b"HTTP/1.1 503"): answered += 1
        if d == b"": closed[i] = round(time.time() - t0, 2)
    if not said and time.time() - t0 > 0.8:
        print("HOLDING %d" % len([c for c in closed if c >= 0]), flush=True)
        said = True
    time.sleep(0.02)
print(json.dumps([sorted(closed), answered]), flush=True)
"#;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(python.unwrap())
            .args(["-c", script])
            .arg(&d.socket)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "HOLDING 2", "two of five refused at once");
    // While nobody holds its three: root and TCP clients get in.
    assert!(!d.ok(&["key", "list"]).is_empty());
    let a = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(&key))],
    );
    assert_eq!(a.status, 200);
    // Fill max_connections with TCP clients: root on the socket is exempt.
    let open: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .flat_map(|ip| (0..3).map(|_| connect_from(ip, d.addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!d.ok(&["key", "list"]).is_empty());
    drop(open);
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    child.wait().unwrap();
    let (closed, answered): (Vec<f64>, u32) = serde_json::from_str(line.trim()).unwrap();
    // Issue 9 review, F4: refused connections are told why.
    assert_eq!(answered, 2, "the refused ones got a 503: {closed:?}");
    // Refused ones get a 503 once their head is in or after a quarter second.
    assert!(
        closed[..2].iter().all(|t| (0.0..1.5).contains(t)),
        "refused at once: {closed:?}"
    );
    assert!(
        closed[2..].iter().all(|t| (2.0..7.0).contains(t)),
        "closed at the head timeout: {closed:?}"
    );
}

/// Regression (issue 9 review, F4): on the admin socket only uid 0 was exempt
/// from `max_connections`, so once other clients filled it, an administrator
/// mapped to a non-root account (as the README tells non-root users to set up)
/// was locked out; and every refused socket connection was closed without a
/// word, so apikeyctl printed only "HTTP error talking to apikeyd: operation was
/// canceled". Accounts mapped to an admin are now exempt, and a refused socket
/// connection is answered 503 with the limit it hit, which apikeyctl prints.
#[test]
fn admins_on_the_socket_pass_max_connections_and_refused_callers_learn_why() {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    if !crate::util::require_root("runs apikeyctl as other accounts") {
        return;
    }
    let ops = "[users.ops]\ngroups = [\"Admin\"]\nunix_user = \"daemon\"\n";
    let mut d = TestDaemon::start_with(DEFAULT_POLICY, ops);
    d.create("alice", "k", &[]);
    restart_with_server_settings(
        &mut d,
        "max_connections = 4\nmax_connections_per_client = 3\n",
    );
    let daemon_uid = Some(1);
    let nobody = Some(65534);
    // Fill max_connections with TCP clients within their per-client limit.
    let open: Vec<_> = [("127.0.0.2", 3), ("127.0.0.3", 1)]
        .iter()
        .flat_map(|&(ip, n)| (0..n).map(move |_| connect_from(ip, d.addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // The admin mapped to "daemon" gets in, as root does.
    let o = d.ctl_as(daemon_uid, &["key", "list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.ctl(&["key", "list"]).status.success());
    // A non-admin account is refused, and told why.
    let o = d.ctl_as(nobody, &["key", "list"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("server.max_connections (4)"), "{err}");
    drop(open);
    // Over the per-client limit, an admin too is refused, and told which limit.
    let held: Vec<_> = (0..3)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let o = d.ctl(&["key", "list"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("server.max_connections_per_client (3)"),
        "{err}"
    );
    drop(held);
}
