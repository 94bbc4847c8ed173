//! Keep-alive connections to the real daemon, on the fast path and on hyper's:
//! pipelined and split requests, head and idle timeouts, and clients (busy, never
//! reading, never sending their body) that cannot hold a connection or a stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::util::{
    bearer, connect, read_answer, request, restart_with_server_settings, split, TestDaemon,
};

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
    let answered = Arc::new(AtomicUsize::new(0));
    let client = std::thread::spawn({
        let answered = answered.clone();
        move || {
            while let Some((status, closing)) = try_read_answer(&mut r) {
                assert_eq!(status, 200);
                answered.fetch_add(1, Ordering::Relaxed);
                if closing {
                    break;
                }
            }
        }
    });
    // Busy for sure: answers flow (however slow the machine is today).
    crate::util::wait_until(Duration::from_secs(30), || {
        answered.load(Ordering::Relaxed) > 20
    });
    let started = Instant::now();
    d.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    client.join().unwrap();
    assert!(answered.load(Ordering::Relaxed) > 20);
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
    assert_eq!(d.connections_open(), 2);
    let started = Instant::now();
    crate::util::wait_until(Duration::from_secs(10), || d.connections_open() == 1);
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
