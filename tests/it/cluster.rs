//! Cluster mode: three apikeyd nodes on one private PostgreSQL server
//! (src/store/postgres/test_server.rs), each a real daemon driven by the real
//! apikeyctl. Changes on any node reach the others through the change log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::alerts::{alert_tables, at, shipped_plugins, wait_job};
use crate::pg_server::TestServer;
use crate::postgres::on_postgres_with;
use crate::smtp::Smtp;
use crate::util::*;

/// `n` nodes on database `url` sharing the first one's server secret, started.
fn nodes(url: &str, n: usize) -> Vec<TestDaemon> {
    nodes_with(url, n, "", "")
}

/// [`nodes`] with more `[store]` lines and `extra` configuration.
fn nodes_with(url: &str, n: usize, store: &str, extra: &str) -> Vec<TestDaemon> {
    // The tests poll a key that fails (every 2 ms, for as long as a change takes to
    // reach a node on a busy machine): not an attack for the rate limiter to stop.
    let extra = &format!("{extra}\n[rate_limit]\nfailures_per_minute = 0\n");
    let mut first = on_postgres_with(url, store, extra);
    first.spawn(&[]);
    let secret = std::fs::read(first.path("state/server.secret")).unwrap();
    let mut all = vec![first];
    for _ in 1..n {
        let mut d = joining(url, store, extra, &secret);
        d.spawn(&[]);
        all.push(d);
    }
    all
}

/// A node for database `url` holding server secret `secret`, not started.
fn joining(url: &str, store: &str, extra: &str, secret: &[u8]) -> TestDaemon {
    {
        let d = on_postgres_with(url, store, extra);
        let state = d.path("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::fs::write(state.join("server.secret"), secret).unwrap();
        std::fs::set_permissions(
            state.join("server.secret"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        d
    }
}

fn verify(d: &TestDaemon, key: &str) -> Value {
    let (status, v) = d.post("/v1/verify", &serde_json::json!({ "key": key }).to_string());
    assert_eq!(status, 200, "{v}");
    v
}

fn valid(d: &TestDaemon, key: &str) -> bool {
    verify(d, key)["valid"] == true
}

/// How long a test waits for a change to reach the other nodes before it fails.
/// It is seen there in milliseconds (the tests print how long it took;
/// `cargo bench --bench cluster` measures it), but a test on a loaded machine must
/// not fail on a slow scheduler: it checks that the change arrives, not how fast.
const PROPAGATION: Duration = Duration::from_secs(15);

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
/// on B is refused on A and C (in milliseconds, printed; the bench measures it);
/// a rotation with grace on C works alike everywhere; a removal on A is refused
/// everywhere. The lag is a metric.
#[test]
fn three_nodes_serve_every_key_and_revocation_reaches_all() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("three");
    let n = nodes(&url, 3);
    let (a, b, c) = (&n[0], &n[1], &n[2]);

    let (id, secret) = a.create("alice", "shared", &[]);
    let took = seen_within(&[b, c], PROPAGATION, |d| valid(d, &secret));
    eprintln!("creation seen on B and C after {took:?}");

    b.ok(&["key", "disable", &id]);
    let took = seen_within(&[a, c], PROPAGATION, |d| !valid(d, &secret));
    eprintln!("disable seen on A and C after {took:?}");
    assert_eq!(verify(a, &secret)["code"], "DISABLED");
    // Every node shows the change.
    assert_eq!(c.json(&["key", "show", &id])["status"], "disabled");
    c.ok(&["key", "enable", &id]);
    seen_within(&[a, b], PROPAGATION, |d| valid(d, &secret));

    let rotated = c.json(&["key", "rotate", &id, "--grace", "pt1h"]);
    let new = rotated["key"].as_str().unwrap().to_owned();
    seen_within(&[a, b, c], PROPAGATION, |d| {
        valid(d, &new) && valid(d, &secret)
    });

    a.ok(&["key", "remove", &id]);
    seen_within(&[a, b, c], PROPAGATION, |d| {
        !valid(d, &new) && !valid(d, &secret)
    });

    // Keys created on each node are all listed on every node.
    b.create("bob", "from-b", &[]);
    c.create("alice", "from-c", &[]);
    wait_until(PROPAGATION, || a.keys().len() == 3 && b.keys().len() == 3);
    assert!(metric(b, "apikeyd_cluster_changes_applied_total") >= 3.0);
    let lag = metric(b, "apikeyd_cluster_change_lag_seconds");
    assert!((0.0..1.0).contains(&lag), "lag {lag}");
    assert_eq!(metric(a, "apikeyd_store_up"), 1.0);
}

/// PostgreSQL stops: verification goes on from memory on every node, /healthz and
/// /metrics say the store is down, changes answer 503 with nothing written, and an
/// alert falling due waits. PostgreSQL returns: changes work again, every node
/// agrees, and the overdue alert is delivered once.
#[test]
fn nodes_verify_from_memory_while_postgresql_is_down_and_catch_up_after() {
    let Some(mut server) = TestServer::start() else {
        return;
    };
    let url = server.database("outage");
    let smtp = Smtp::start();
    let extra = alert_tables(smtp.port, &shipped_plugins(), "", "");
    let n = nodes_with(&url, 2, "", &extra);
    let (a, b) = (&n[0], &n[1]);
    let (id, secret) = a.create("alice", "before", &[]);
    let (_, _) = b.create("alice", "due-in-the-outage", &["--notify-at", &at(3)]);
    seen_within(&[b], PROPAGATION, |d| valid(d, &secret));

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
    // Past the alert's due time, with nothing delivered.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.count(), 0);

    server.restart();
    // The pool replaces its dead connections: the next change goes through.
    wait_until(Duration::from_secs(20), || {
        a.ctl(&["key", "disable", &id]).status.success()
    });
    seen_within(&[a, b], PROPAGATION, |d| !valid(d, &secret));
    let (_, later) = b.create("bob", "after", &[]);
    seen_within(&[a], PROPAGATION, |d| valid(d, &later));
    wait_until(Duration::from_secs(5), || {
        let (_, h) = http(b.addr, "GET", "/healthz", &[], b"");
        h["store"] == "up"
    });
    wait_until(Duration::from_secs(20), || smtp.count() >= 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.count(), 1, "the overdue alert was delivered twice");
}

/// 300 alerts falling due within a few seconds, their keys created on all three
/// nodes, reach a real SMTP server exactly once across the nodes.
#[test]
fn alerts_due_together_are_delivered_once_across_three_nodes() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let smtp = Smtp::with_threads(16);
    let url = server.database("alerts");
    let extra = alert_tables(smtp.port, &shipped_plugins(), "", "");
    let n = nodes_with(&url, 3, "", &extra);
    let due = std::time::SystemTime::now() + Duration::from_secs(12);
    let created: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = n
            .iter()
            .enumerate()
            .map(|(i, d)| {
                s.spawn(move || {
                    (0..100)
                        .map(|k| {
                            let name = format!("n{i}-k{k}");
                            // Due together, unless creating them took longer than
                            // planned (a busy machine): then as soon as allowed.
                            let left = due
                                .duration_since(std::time::SystemTime::now())
                                .unwrap_or_default();
                            let when = at(left.as_secs().max(3).try_into().unwrap());
                            d.create("alice", &name, &["--notify-at", &when]).0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(created.len(), 300);
    wait_until(Duration::from_secs(60), || smtp.count() >= 300);
    // Late duplicates would arrive within a lease or a retry: give them time.
    std::thread::sleep(Duration::from_secs(3));
    let mails = smtp.mails();
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((mails.len(), ids.len()), (300, 300), "duplicates or losses");
    for id in &created {
        assert!(
            mails.iter().any(|m| m.data.contains(id.as_str())),
            "no alert for key {id}"
        );
    }
}

/// The node delivering alerts is killed (-9) in the middle of its sends; another
/// node takes the jobs over when their leases end, and every alert is delivered
/// (twice at most: only those cut off inside their send).
#[test]
fn alerts_held_by_a_killed_node_are_delivered_by_another() {
    let Some(server) = TestServer::start() else {
        return;
    };
    // Each message is answered 4 s after its data arrives: the sends are under way
    // when the node dies.
    let smtp = Smtp::on(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Duration::from_secs(4),
    );
    let url = server.database("takeover");
    let extra = alert_tables(smtp.port, &shipped_plugins(), "", "");
    let store = "job_lease = \"pt3s\"\n";
    let mut a = nodes_with(&url, 1, store, &extra).remove(0);
    let secret = std::fs::read(a.path("state/server.secret")).unwrap();
    let due = at(2);
    let mut jobs = Vec::new();
    for k in 0..5 {
        let v = a.json(&[
            "key",
            "create",
            "--user",
            "alice",
            "--name",
            &format!("k{k}"),
            "--notify-at",
            &due,
        ]);
        jobs.push(v["alert_job"].as_str().unwrap().to_owned());
    }
    for j in &jobs {
        wait_job(&a, j, "Running", 15);
    }
    a.kill9();
    let mut b = joining(&url, store, &extra, &secret);
    b.spawn(&[]);
    for j in &jobs {
        let done = wait_job(&b, j, "Completed", 30);
        assert_eq!(done["attempts"], 2, "{done}");
    }
    let mails = smtp.mails();
    for j in &jobs {
        let n = mails.iter().filter(|m| m.data.contains(j.as_str())).count();
        assert!((1..=2).contains(&n), "job {j} delivered {n} times");
    }
    assert!(
        b.log_text().contains("took over an alert job"),
        "{}",
        b.log_text()
    );
}

/// Uses of one key on two nodes add up: each node writes what it counted, and
/// the latest use wins, whichever node wrote last.
#[test]
fn usage_counted_on_several_nodes_adds_up() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("usage");
    let mut n = nodes(&url, 2);
    let (id, secret) = n[0].create("alice", "counted", &[]);
    seen_within(&[&n[1]], PROPAGATION, |d| valid(d, &secret));
    for _ in 0..2 {
        assert!(valid(&n[0], &secret));
    }
    assert!(!valid(&n[1], "akd_not_a_key"));
    // An edit on A between the uses does not overwrite B's counts.
    n[0].ok(&["key", "edit", &id, "--description", "edited"]);
    for _ in 0..3 {
        assert!(valid(&n[1], &secret));
    }
    // A stop writes what a node counted.
    n[1].stop();
    n[0].stop();
    n[0].spawn(&[]);
    let shown = n[0].json(&["key", "show", &id]);
    // 2 on A; on B, 3 and the one that saw the key arrive.
    assert_eq!(shown["usage"]["verifications"], 6, "{shown}");
    assert!(shown["last_used_at"].is_string(), "{shown}");
}

/// `key rotate --until-used` on A; the new secret's first uses on B and A at
/// once: the switch commits once, whichever node saw it, and reaches the other
/// node through the change log, so that after the overlap (pt2s here) the old
/// secret is refused on both (A would otherwise accept it for the week of the
/// max grace).
#[test]
fn a_rotation_waiting_for_the_first_use_switches_once_across_nodes() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("rotation");
    let mut n = nodes(&url, 2);
    for d in &mut n {
        d.stop();
        let text = std::fs::read_to_string(&d.config).unwrap();
        let text = text.replacen(
            "[ApiKey]\n",
            "[ApiKey]\nRotationOverlapPeriod = \"pt2s\"\n",
            1,
        );
        std::fs::write(&d.config, text).unwrap();
        d.spawn(&[]);
    }
    let (a, b) = (&n[0], &n[1]);
    let (id, old) = a.create("alice", "ci", &[]);
    let rotated = a.json(&["key", "rotate", &id, "--until-used"]);
    let new = rotated["key"].as_str().unwrap().to_owned();
    seen_within(&[b], PROPAGATION, |d| valid(d, &new));
    assert!(valid(a, &new));
    seen_within(&[a, b], Duration::from_secs(10), |d| {
        d.json(&["key", "show", &id])["rotation"]["state"] == "switched"
    });
    let took = seen_within(&[a, b], Duration::from_secs(10), |d| !valid(d, &old));
    eprintln!("old secret refused on both nodes {took:?} after the switch was seen");
    assert!(valid(a, &new) && valid(b, &new));
    let audit = a.json(&["audit", "--key", &id]);
    let switches: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rotate-switch")
        .collect();
    assert_eq!(switches.len(), 1, "{audit}");
}
