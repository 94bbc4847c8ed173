//! Cluster mode: three apikeyd nodes on one private PostgreSQL server
//! (src/store/postgres/test_server.rs), each a real daemon driven by the real
//! apikeyctl. Changes on any node reach the others through the change log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pg_server::TestServer;
use crate::postgres::on_postgres;
use crate::util::*;

/// `n` nodes on database `url` sharing the first one's server secret, started.
fn nodes(url: &str, n: usize) -> Vec<TestDaemon> {
    let mut first = on_postgres(url, "poll_interval = \"pt1s\"\n");
    first.spawn(&[]);
    let secret = std::fs::read(first.path("state/server.secret")).unwrap();
    let mut all = vec![first];
    for _ in 1..n {
        let mut d = on_postgres(url, "poll_interval = \"pt1s\"\n");
        let state = d.path("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::fs::write(state.join("server.secret"), &secret).unwrap();
        std::fs::set_permissions(
            state.join("server.secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        d.spawn(&[]);
        all.push(d);
    }
    all
}

fn verify(d: &TestDaemon, key: &str) -> Value {
    let (status, v) = d.post("/v1/verify", &serde_json::json!({ "key": key }).to_string());
    assert_eq!(status, 200, "{v}");
    v
}

fn valid(d: &TestDaemon, key: &str) -> bool {
    verify(d, key)["valid"] == true
}

/// How long until `check` holds on every node of `on` (panics after `limit`).
fn seen_within(
    on: &[&TestDaemon],
    limit: Duration,
    check: impl Fn(&TestDaemon) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut pending: Vec<&TestDaemon> = on.to_vec();
    while !pending.is_empty() {
        pending.retain(|d| !check(d));
        assert!(
            start.elapsed() < limit,
            "not seen on {} node(s) within {limit:?}",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

fn metric(d: &TestDaemon, name: &str) -> f64 {
    let a = request(d.addr, "GET", "/metrics", &[]);
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Every node serves every key: a key created on A verifies on B and C; a disable
/// on B is refused on A and C within a second; a rotation with grace on C works
/// alike everywhere; a removal on A is refused everywhere. The lag is a metric.
#[test]
fn three_nodes_serve_every_key_and_revocation_reaches_all_within_a_second() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("three");
    let n = nodes(&url, 3);
    let (a, b, c) = (&n[0], &n[1], &n[2]);

    let (id, secret) = a.create("alice", "shared", &[]);
    let took = seen_within(&[b, c], Duration::from_secs(1), |d| valid(d, &secret));
    eprintln!("creation seen on B and C after {took:?}");

    b.ok(&["key", "disable", &id]);
    let took = seen_within(&[a, c], Duration::from_secs(1), |d| !valid(d, &secret));
    eprintln!("disable seen on A and C after {took:?}");
    assert_eq!(verify(a, &secret)["code"], "DISABLED");
    // Every node shows the change.
    assert_eq!(c.json(&["key", "show", &id])["status"], "disabled");
    c.ok(&["key", "enable", &id]);
    seen_within(&[a, b], Duration::from_secs(1), |d| valid(d, &secret));

    let rotated = c.json(&["key", "rotate", &id, "--grace", "pt1h"]);
    let new = rotated["key"].as_str().unwrap().to_owned();
    seen_within(&[a, b, c], Duration::from_secs(1), |d| {
        valid(d, &new) && valid(d, &secret)
    });

    a.ok(&["key", "remove", &id]);
    seen_within(&[a, b, c], Duration::from_secs(1), |d| {
        !valid(d, &new) && !valid(d, &secret)
    });

    // Keys created on each node are all listed on every node.
    b.create("bob", "from-b", &[]);
    c.create("alice", "from-c", &[]);
    wait_until(Duration::from_secs(2), || {
        a.keys().len() == 3 && b.keys().len() == 3
    });
    assert!(metric(b, "apikeyd_cluster_changes_applied_total") >= 3.0);
    let lag = metric(b, "apikeyd_cluster_change_lag_seconds");
    assert!((0.0..1.0).contains(&lag), "lag {lag}");
    assert_eq!(metric(a, "apikeyd_store_up"), 1.0);
}

/// PostgreSQL stops: verification goes on from memory on every node, /healthz and
/// /metrics say the store is down, and changes answer 503 with nothing written.
/// PostgreSQL returns: changes work again and every node agrees.
#[test]
fn nodes_verify_from_memory_while_postgresql_is_down_and_catch_up_after() {
    let Some(mut server) = TestServer::start() else {
        return;
    };
    let url = server.database("outage");
    let n = nodes(&url, 2);
    let (a, b) = (&n[0], &n[1]);
    let (id, secret) = a.create("alice", "before", &[]);
    seen_within(&[b], Duration::from_secs(1), |d| valid(d, &secret));

    server.stop();
    for d in [a, b] {
        assert!(valid(d, &secret), "verification stopped with the database");
    }
    let out = a.ctl(&["key", "disable", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("unavailable"), "{err}");
    let (status, _) = http(a.addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "a node that verifies stays ready");
    wait_until(Duration::from_secs(5), || {
        let (_, h) = http(b.addr, "GET", "/healthz", &[], b"");
        h["store"] == "down" && h["status"] == "degraded"
    });
    assert_eq!(metric(a, "apikeyd_store_up"), 0.0);
    assert!(valid(a, &secret), "the refused disable was half applied");

    server.restart();
    // The pool replaces its dead connections: the next change goes through.
    wait_until(Duration::from_secs(20), || {
        a.ctl(&["key", "disable", &id]).status.success()
    });
    seen_within(&[a, b], Duration::from_secs(3), |d| !valid(d, &secret));
    let (_, later) = b.create("bob", "after", &[]);
    seen_within(&[a], Duration::from_secs(3), |d| valid(d, &later));
    wait_until(Duration::from_secs(5), || {
        let (_, h) = http(b.addr, "GET", "/healthz", &[], b"");
        h["store"] == "up"
    });
}
