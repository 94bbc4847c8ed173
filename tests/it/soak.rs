//! Soak (issue 13, part 7): the release build of `apikeyd` for a set time under a
//! mixed load, sampled as it goes, then judged on whether it stayed flat.
//!
//! The load:
//! - verifications over HTTP at a steady rate on keep-alive connections: `POST
//!   /v1/verify` and forward-auth `GET /v1/auth`, mostly good keys, a quarter refused
//!   (a disabled key, a removed one);
//! - admin churn through the real `apikeyctl`: create (half of them with a
//!   notification due seconds later, by email or operator message), edit, rotate
//!   (with and without grace), disable, enable, notify, remove, a few reads; the
//!   churned keys stay about `CHURN_KEYS` (the oldest is removed), and removed keys
//!   are purged a minute later (`RetentionPeriod`), so the key set is steady;
//! - alert jobs falling due all along, delivered to a real SMTP server in this
//!   process (`smtp`) or as operator messages; maintenance jobs every minute or less.
//!
//! Every second: the daemon's RSS (`/proc/PID/status` VmRSS, and RssAnon, its heap
//! and stacks without the binary's pages, which fault in as code runs), open descriptors
//! (`/proc/PID/fd`), threads, and the database file's size; per window: requests,
//! their latency (p50, p99, max; client side, from the request's write to its
//! answer's last byte), changes and alerts delivered (`/metrics`).
//!
//! The verdict, start against end (a leak fails the test):
//! - **RSS**: from the middle of the run to its end, VmRSS grows by at most
//!   `max(10 % of the middle value, 8 MiB)` and RssAnon by at most `max(10 %, 4
//!   MiB)`, each plus what the database file grew meanwhile: redb keeps every page
//!   it writes in its page cache, up to 32 MiB (`store::CACHE_BYTES`), so
//!   that cache grows with the file (the audit trail, job history and operator
//!   messages grow it all along) until it is full; the first half is the warm-up
//!   (the allocator's arenas, the binary's pages faulting in);
//! - **descriptors and threads**: the most seen in the second half is at most the
//!   most seen in the first half plus 8 (they come and go with apikeyctl
//!   connections, SMTP sessions and tokio's blocking threads, but stay a bounded
//!   set), and once the load stops they go back to at most their idle value before
//!   the load plus `IDLE_SLACK` (8: SMTP connections and threads that outlive their
//!   work for a while);
//! - **latency**: in the median window of the second half, p50 is at most `2 ×` that
//!   of the first half's median window `+ 0.2 ms`, and p99 at most `3 × + 2 ms`
//!   (the median window, and loose bounds: the machine may be shared, and one slow
//!   window is not a trend);
//! - no wrong answer, no refused change, no failed alert, no alert overdue at the end.
//!
//! Ignored in `cargo test`: `tests/soak.sh [MINUTES]` builds the release binaries and
//! runs it (`.ci/run` runs 1.5 minutes; the README quotes a 30-minute run).
//! Environment: `APIKEYD_SOAK_MINUTES` (1), `APIKEYD_SOAK_BINS` (the directory of
//! the binaries to run; the test build's if unset), `APIKEYD_SOAK_WINDOWS` (10),
//! `APIKEYD_SOAK_RATE` (verifications per second, 1000), `APIKEYD_SOAK_CHANGES`
//! (admin commands per second, 5), `APIKEYD_SOAK_SEED`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::alerts::{alert_tables, at, shipped_plugins, time};
use crate::smtp::Smtp;
use crate::util::{connect, read_answer, request, split, TestDaemon, CATALOG_ROUTES};

/// Keys the churn keeps alive (beyond this many, it removes the oldest).
const CHURN_KEYS: usize = 60;
/// Keys the verification load uses, never changed.
const STEADY_KEYS: usize = 40;
/// Keep-alive connections of the verification load.
const CONNECTIONS: usize = 4;
/// Descriptors or threads the idle daemon may hold after the load beyond those it
/// held before: the SMTP pool keeps up to `[smtp] pool_size` (4) connections open
/// for a minute after its last mail, and tokio's idle blocking threads leave 10 s
/// after their last task.
const IDLE_SLACK: u64 = 8;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's settings: quick retries, maintenance every minute or less,
/// removed keys purged after a minute, no abuse limit (a quarter of the load is
/// refused keys on purpose).
fn settings(smtp_port: u16) -> (String, String) {
    let policy = r#"MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y"
MaxKeysPerUser = 0
RetentionPeriod = "pt1m""#;
    let rest = format!(
        r#"{CATALOG_ROUTES}
[rate_limit]
failures_per_minute = 0

[jobs]
last_used_flush = "*/10 * * * * *"
expiry_sweep = "15 * * * * *"
purge = "*/20 * * * * *"
inactivity_warning = "45 * * * * *"
"#
    );
    (
        policy.to_owned(),
        alert_tables(smtp_port, &shipped_plugins(), "", &rest),
    )
}

/// One sample of the daemon's process.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
    threads: u64,
    db_bytes: u64,
}

/// What the daemon's descriptors are, counted by kind (`socket`, `anon_inode:[eventfd]`,
/// a file's path), for the idle lines.
fn fd_kinds(pid: i32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        let kind = match target.split_once(":[") {
            Some((kind, _)) if kind != "anon_inode" => kind.to_owned(),
            _ => target.into_owned(),
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The daemon's threads, counted by name.
fn thread_names(pid: i32) -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *names.entry(name.trim().to_owned()).or_insert(0) += 1;
    }
    names
}

fn sample(pid: i32, db: &Path) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Sample {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64,
        db_bytes: std::fs::metadata(db).map(|m| m.len()).unwrap_or(0),
    }
}

/// The alert deliveries `/metrics` counts: (delivered, failed), all channels.
fn deliveries(d: &TestDaemon) -> (u64, u64) {
    let m = request(d.addr, "GET", "/metrics", &[]);
    assert_eq!(m.status, 200, "{}", m.body);
    let mut out = (0, 0);
    for l in m
        .body
        .lines()
        .filter(|l| l.starts_with("apikeyd_alert_deliveries_total{"))
    {
        let n: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        if l.contains("outcome=\"delivered\"") {
            out.0 += n;
        } else if l.contains("outcome=\"failed\"") {
            out.1 += n;
        }
    }
    out
}

/// What the verification load saw in one window.
#[derive(Default)]
struct Seen {
    /// Latencies in microseconds.
    latencies: Vec<u32>,
    wrong: u64,
}

/// The verification load: `CONNECTIONS` threads, each on one keep-alive
/// connection, sending its share of `rate` requests a second on a fixed schedule.
struct Load {
    shared: Arc<LoadShared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What the load's threads share.
struct LoadShared {
    probes: Vec<Probe>,
    /// Between two requests on one connection.
    interval: Duration,
    started: Instant,
    window: Duration,
    windows: Vec<Mutex<Seen>>,
    /// The first few, for the failure message.
    wrong_answers: Mutex<Vec<String>>,
    stop: Arc<AtomicBool>,
}

/// A request and what its answer must be: one of the statuses and a piece of the
/// body.
struct Probe {
    bytes: Vec<u8>,
    status: &'static [u16],
    body: &'static str,
}

/// Per good key four requests, three of them good (verify and forward-auth) and one
/// refused, verify and forward-auth in turn.
fn probes(good: &[String], refused: &[String]) -> Vec<Probe> {
    let verify = |key: &str, valid: bool| {
        let body = format!(r#"{{"key":"{key}","scope":"catalog:read"}}"#);
        let head = "POST /v1/verify HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json";
        Probe {
            bytes: format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes(),
            status: &[200],
            body: if valid {
                "\"valid\":true"
            } else {
                "\"valid\":false"
            },
        }
    };
    let auth = |key: &str, valid: bool| {
        let head = format!("GET /v1/auth HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {key}");
        Probe {
            bytes: format!("{head}\r\nX-Original-URI: /catalog/items\r\n\r\n").into_bytes(),
            // A disabled key is 403, an unknown one 401.
            status: if valid { &[200] } else { &[401, 403] },
            body: "",
        }
    };
    let mut out = Vec::new();
    for (i, key) in good.iter().enumerate() {
        let bad = &refused[i % refused.len()];
        out.push(verify(key, true));
        out.push(auth(key, true));
        if i % 2 == 0 {
            out.push(verify(key, true));
            out.push(auth(bad, false));
        } else {
            out.push(auth(key, true));
            out.push(verify(bad, false));
        }
    }
    out
}

impl Load {
    fn start(
        addr: std::net::SocketAddr,
        probes: Vec<Probe>,
        rate: f64,
        started: Instant,
        window: Duration,
        windows: usize,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let shared = Arc::new(LoadShared {
            probes,
            interval: Duration::from_secs_f64(CONNECTIONS as f64 / rate),
            started,
            window,
            windows: (0..windows).map(|_| Mutex::default()).collect(),
            wrong_answers: Mutex::default(),
            stop,
        });
        let threads = (0..CONNECTIONS)
            .map(|c| {
                let shared = shared.clone();
                std::thread::spawn(move || shared.connection(addr, c))
            })
            .collect();
        Load { shared, threads }
    }
}

impl LoadShared {
    /// Connection `c`: every `interval` the next of its probes (a request sent late
    /// goes at once; its latency counts from when it was written), until `stop`.
    fn connection(&self, addr: std::net::SocketAddr, c: usize) {
        let (mut w, mut r) = split(connect(addr, Duration::from_secs(10)));
        w.set_nodelay(true).unwrap();
        // Spread the connections' schedules over one interval.
        let mut next = Instant::now() + self.interval.mul_f64(c as f64 / CONNECTIONS as f64);
        let mut local = Seen::default();
        let mut local_window = 0;
        let mut i = c;
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            next += self.interval;
            let p = &self.probes[i % self.probes.len()];
            i += CONNECTIONS;
            let sent = Instant::now();
            w.write_all(&p.bytes).unwrap();
            let a = read_answer(&mut r);
            let took = sent.elapsed();
            let window = ((sent - self.started).as_secs_f64() / self.window.as_secs_f64()) as usize;
            if window != local_window {
                self.merge(local_window, &mut local);
                local_window = window;
            }
            local
                .latencies
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            if !p.status.contains(&a.status) || !a.body.contains(p.body) {
                local.wrong += 1;
                let mut wrong = self.wrong_answers.lock().unwrap();
                if wrong.len() < 5 {
                    // The request line only: the rest holds the key.
                    let line = String::from_utf8_lossy(&p.bytes)
                        .lines()
                        .next()
                        .unwrap()
                        .to_owned();
                    wrong.push(format!("{} to {line}: {}", a.status, a.body));
                }
            }
        }
        self.merge(local_window, &mut local);
    }

    /// What a connection saw in `window` (the last one for requests past the end)
    /// added to that window's.
    fn merge(&self, window: usize, local: &mut Seen) {
        let mut s = self.windows[window.min(self.windows.len() - 1)]
            .lock()
            .unwrap();
        s.latencies.append(&mut local.latencies);
        s.wrong += std::mem::take(&mut local.wrong);
    }
}

/// A key of the churn.
struct Churned {
    id: String,
    enabled: bool,
}

/// What the churn did, for the table.
#[derive(Default)]
struct Churn {
    live: VecDeque<Churned>,
    next_name: u64,
    /// Changes acknowledged (creates, edits, rotations, state changes, notifications,
    /// removals).
    changes: Arc<AtomicU64>,
    /// Notifications set to fall due during the run.
    alerts_set: Arc<AtomicU64>,
}

impl Churn {
    /// One admin command, chosen at random; panics on a refusal.
    fn step(&mut self, d: &TestDaemon, rng: &mut StdRng) {
        if self.live.len() > CHURN_KEYS {
            let k = self.live.pop_front().unwrap();
            d.ok(&["key", "remove", &k.id]);
            self.changes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pick = rng.gen_range(0..20);
        if self.live.is_empty() || pick < 5 {
            self.create(d, rng);
            return;
        }
        let i = rng.gen_range(0..self.live.len());
        let id = self.live[i].id.clone();
        match pick {
            5..=8 => {
                let text = format!("edited {} {}", self.next_name, rng.gen::<u32>());
                d.ok(&["key", "edit", &id, "--description", &text]);
            }
            9 | 10 => {
                d.ok(&["key", "rotate", &id]);
            }
            11 => {
                d.ok(&["key", "rotate", &id, "--grace", "pt1m"]);
            }
            12..=14 => {
                let verb = if self.live[i].enabled {
                    "disable"
                } else {
                    "enable"
                };
                d.ok(&["key", verb, &id]);
                self.live[i].enabled = !self.live[i].enabled;
            }
            15 | 16 => {
                let due = at(rng.gen_range(2..10));
                let source = ["owner-email", "operator"][rng.gen_range(0..2)];
                d.ok(&["key", "notify", &id, "--at", &due, "--source", source]);
                self.alerts_set.fetch_add(1, Ordering::Relaxed);
            }
            17 => {
                d.ok(&["key", "show", &id]);
                return;
            }
            18 => {
                d.ok(&["job", "list", "--key", &id]);
                return;
            }
            _ => {
                d.ok(&["key", "list", "--limit", "100"]);
                return;
            }
        }
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn create(&mut self, d: &TestDaemon, rng: &mut StdRng) {
        let owner = ["alice", "bob"][rng.gen_range(0..2)];
        let name = format!("churn-{}", self.next_name);
        self.next_name += 1;
        let mut args = vec![
            "key",
            "create",
            "--user",
            owner,
            "--name",
            &name,
            "--expires-in",
            "p30d",
        ];
        let due = at(rng.gen_range(2..10));
        let notify = rng.gen_bool(0.5);
        if notify {
            let source = ["owner-email", "operator"][rng.gen_range(0..2)];
            args.extend(["--notify-at", &due, "--alert-source", source]);
            self.alerts_set.fetch_add(1, Ordering::Relaxed);
        } else {
            args.push("--no-notify");
        }
        let v = d.json(&args);
        self.live.push_back(Churned {
            id: v["id"].as_str().unwrap().to_owned(),
            enabled: true,
        });
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// On a failure of the test, stops the load and kills the daemon: the churn's
/// thread shares the `TestDaemon`, so its drop would not come before the process
/// ends.
struct OnPanic {
    stop: Arc<AtomicBool>,
    pid: i32,
}

impl Drop for OnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Join `t`, which was told to stop, failing if it panicked or is stuck (say on an
/// apikeyctl that never ends) rather than waiting for ever.
fn join_within(t: std::thread::JoinHandle<()>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "{what} did not stop within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    if t.join().is_err() {
        panic!("{what} failed (its panic is above)");
    }
}

/// The `p` quantile of sorted `v` (nearest rank).
fn quantile(v: &[u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// One row of the table.
struct Row {
    end_secs: f64,
    requests: usize,
    rps: f64,
    p50: u32,
    p99: u32,
    max: u32,
    wrong: u64,
    changes: u64,
    alerts: u64,
    last: Sample,
    most: Sample,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The table, a row per window.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out += "window  end s  requests   req/s    p50    p99     max  wrong  changes  alerts  RSS MiB  anon   fds (max)  threads (max)  db MB\n";
    for (w, r) in rows.iter().enumerate() {
        out += &format!(
            "{:>6} {:>6.0} {:>9} {:>7.0} {:>6} {:>6} {:>7} {:>6} {:>8} {:>7} {:>7.1} {:>5.1} {:>5} ({:>4}) {:>6} ({:>5}) {:>6.1}\n",
            w + 1,
            r.end_secs,
            r.requests,
            r.rps,
            r.p50,
            r.p99,
            r.max,
            r.wrong,
            r.changes,
            r.alerts,
            mib(r.last.rss_kib),
            mib(r.last.anon_kib),
            r.last.fds,
            r.most.fds,
            r.last.threads,
            r.most.threads,
            r.last.db_bytes as f64 / 1e6,
        );
    }
    out
}

/// Whether the run stayed flat, by the rules of the module's doc: the verdict's
/// lines, and the rules broken.
fn verdict(rows: &[Row], idle_before: Sample, idle_after: Sample) -> (String, Vec<String>) {
    let mut out = String::new();
    let half = rows.len() / 2;
    let (first, second) = rows.split_at(half);
    let (mid, end) = (first.last().unwrap().last, second.last().unwrap().last);
    let max_of =
        |rows: &[Row], f: fn(&Sample) -> u64| rows.iter().map(|r| f(&r.most)).max().unwrap();
    // The median window of each half: one window slowed by the machine's other
    // work does not decide, a slowdown that lasts does.
    let median = |rows: &[Row], f: fn(&Row) -> u32| {
        let mut v: Vec<u32> = rows.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        out += &format!("{} {what}\n", if ok { "  ok  " } else { "  FAIL" });
        if !ok {
            problems.push(what);
        }
    };
    // redb keeps every page it writes in its page cache, up to CACHE_BYTES: memory
    // that follows the database file's growth is that cache.
    let cache_kib = (end.db_bytes.saturating_sub(mid.db_bytes) / 1024)
        .min(apikeyd::store::CACHE_BYTES as u64 / 1024);
    for (what, m, e, floor) in [
        ("RSS", mid.rss_kib, end.rss_kib, 8 * 1024),
        ("RssAnon", mid.anon_kib, end.anon_kib, 4 * 1024),
    ] {
        let allowed = (m / 10).max(floor) + cache_kib;
        check(
            e <= m + allowed,
            format!(
                "{what} over the second half: {:.1} -> {:.1} MiB (allowed +{:.1} MiB: {:.1} + {:.1} the database grew)",
                mib(m),
                mib(e),
                mib(allowed),
                mib(allowed - cache_kib),
                mib(cache_kib)
            ),
        );
    }
    for (what, f) in [
        ("fds", (|s: &Sample| s.fds) as fn(&Sample) -> u64),
        ("threads", |s: &Sample| s.threads),
    ] {
        let (a, b) = (max_of(first, f), max_of(second, f));
        check(
            b <= a + 8,
            format!(
                "{what}: at most {a} in the first half, {b} in the second (allowed {})",
                a + 8
            ),
        );
        let (before, after) = (f(&idle_before), f(&idle_after));
        check(
            after <= before + IDLE_SLACK,
            format!(
                "{what} when idle: {before} before the load, {after} after (allowed {})",
                before + IDLE_SLACK
            ),
        );
    }
    for (what, f, times, plus) in [
        ("p50", (|r: &Row| r.p50) as fn(&Row) -> u32, 2, 200),
        ("p99", |r: &Row| r.p99, 3, 2000),
    ] {
        let (a, b) = (median(first, f), median(second, f));
        check(
            b <= times * a + plus,
            format!(
                "{what}: {a} µs in the median window of the first half, {b} µs in the second's (allowed {times}x + {plus})"
            ),
        );
    }
    check(
        rows.iter().all(|r| r.requests > 0 && r.changes > 0),
        "every window answered verifications and made changes".to_owned(),
    );
    (out, problems)
}

#[test]
#[ignore = "long; tests/soak.sh runs it on the release build"]
fn soak_stays_flat() {
    let minutes = env_f64("APIKEYD_SOAK_MINUTES", 1.0);
    let windows = env_f64("APIKEYD_SOAK_WINDOWS", 10.0) as usize;
    let rate = env_f64("APIKEYD_SOAK_RATE", 1000.0);
    let changes_per_sec = env_f64("APIKEYD_SOAK_CHANGES", 5.0);
    let seed = env_f64("APIKEYD_SOAK_SEED", f64::from(rand::random::<u32>())) as u64;
    assert!(windows >= 4, "APIKEYD_SOAK_WINDOWS: at least 4");
    let bins = std::env::var_os("APIKEYD_SOAK_BINS").map(PathBuf::from);

    let smtp = Smtp::start();
    let (policy, extra) = settings(smtp.port);
    let mut d = TestDaemon::configured(&policy, &extra);
    if let Some(dir) = &bins {
        d.use_bins(dir);
    }
    d.spawn(&[("RUST_LOG", "info")]);
    let pid = d.pid();
    let db = d.db_path();
    eprintln!(
        "soak: {minutes} min in {windows} windows, {rate} verifications/s on {CONNECTIONS} connections, {changes_per_sec} admin commands/s, APIKEYD_SOAK_SEED={seed}, apikeyd {}",
        bins.as_deref().map_or("of the test build".to_owned(), |b| format!("from {}", b.display()))
    );

    let good: Vec<String> = (0..STEADY_KEYS)
        .map(|i| {
            let owner = ["alice", "bob"][i % 2];
            d.create(owner, &format!("steady-{i}"), &["--no-notify"]).1
        })
        .collect();
    let (disabled_id, disabled) = d.create("alice", "refused-disabled", &["--no-notify"]);
    d.ok(&["key", "disable", &disabled_id]);
    let (removed_id, removed) = d.create("bob", "refused-removed", &["--no-notify"]);
    d.ok(&["key", "remove", &removed_id]);
    // The idle values the end is compared with: after a moment of quiet.
    std::thread::sleep(Duration::from_secs(2));
    let idle_before = sample(pid, &db);
    let kinds_before = (fd_kinds(pid), thread_names(pid));

    let total = Duration::from_secs_f64(minutes * 60.0);
    let window = total / windows as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let _on_panic = OnPanic {
        stop: stop.clone(),
        pid,
    };
    let started = Instant::now();
    let load = Load::start(
        d.addr,
        probes(&good, &[disabled, removed]),
        rate,
        started,
        window,
        windows,
        stop.clone(),
    );

    // The churn on a thread of its own: apikeyctl through the admin socket.
    let d = Arc::new(d);
    let churn = Churn::default();
    let (changes, alerts_set) = (churn.changes.clone(), churn.alerts_set.clone());
    let churner = {
        let (d, stop) = (d.clone(), stop.clone());
        let mut churn = churn;
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let interval = Duration::from_secs_f64(1.0 / changes_per_sec);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                churn.step(&d, &mut rng);
                next += interval;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };

    // Sample every second; close a window at each boundary.
    let mut rows: Vec<Row> = Vec::new();
    let mut most = Sample::default();
    let mut changes_before = 0;
    let mut delivered_before = deliveries(&d).0;
    for w in 0..windows {
        let end = window * (w as u32 + 1);
        loop {
            let s = sample(pid, &db);
            most.fds = most.fds.max(s.fds);
            most.threads = most.threads.max(s.threads);
            let left = end.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
        let last = sample(pid, &db);
        let changed = changes.load(Ordering::Relaxed);
        let (delivered, failed) = deliveries(&d);
        assert_eq!(failed, 0, "an alert delivery failed");
        rows.push(Row {
            end_secs: end.as_secs_f64(),
            requests: 0,
            rps: 0.0,
            p50: 0,
            p99: 0,
            max: 0,
            wrong: 0,
            changes: changed - changes_before,
            alerts: delivered - delivered_before,
            last,
            most: std::mem::take(&mut most),
        });
        changes_before = changed;
        delivered_before = delivered;
        eprintln!(
            "soak: window {}/{windows} at {:.0} s: RSS {:.1} MiB (anon {:.1}), {} fds, {} threads, db {:.1} MB, {} changes, {} alerts delivered",
            w + 1,
            end.as_secs_f64(),
            mib(last.rss_kib),
            mib(last.anon_kib),
            last.fds,
            last.threads,
            last.db_bytes as f64 / 1e6,
            rows[w].changes,
            rows[w].alerts,
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load.threads {
        join_within(t, "a verification thread");
    }
    join_within(churner, "the admin churn");
    let wrong = load.shared.wrong_answers.lock().unwrap().clone();
    for (w, row) in rows.iter_mut().enumerate() {
        let mut seen = load.shared.windows[w].lock().unwrap();
        seen.latencies.sort_unstable();
        row.requests = seen.latencies.len();
        row.rps = row.requests as f64 / window.as_secs_f64();
        row.p50 = quantile(&seen.latencies, 0.50);
        row.p99 = quantile(&seen.latencies, 0.99);
        row.max = seen.latencies.last().copied().unwrap_or(0);
        row.wrong = seen.wrong;
    }

    // Every notification due by now was delivered: none overdue, none failed.
    std::thread::sleep(Duration::from_secs(12));
    let overdue: Vec<Value> = d.json(&["job", "list", "--state", "Scheduled", "--limit", "10000"])
        ["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| time(&j["due_at"]) < chrono::Utc::now() - chrono::Duration::seconds(5))
        .cloned()
        .collect();
    let (delivered, failed) = deliveries(&d);
    let mails = smtp.mails().len();
    let idle_after = sample(pid, &db);
    let kinds_after = (fd_kinds(pid), thread_names(pid));

    let mut out = String::new();
    out += &format!(
        "\nsoak: {minutes} min, {windows} windows of {:.0} s; {rate} verifications/s asked, {changes_per_sec} admin commands/s; latency in µs (client side)\n",
        window.as_secs_f64()
    );
    out += &table(&rows);
    let requests: usize = rows.iter().map(|r| r.requests).sum();
    let total_changes: u64 = rows.iter().map(|r| r.changes).sum();
    out += &format!(
        "idle before the load: RSS {:.1} MiB (anon {:.1}), {} fds, {} threads; idle after: RSS {:.1} MiB (anon {:.1}), {} fds, {} threads\n",
        mib(idle_before.rss_kib),
        mib(idle_before.anon_kib),
        idle_before.fds,
        idle_before.threads,
        mib(idle_after.rss_kib),
        mib(idle_after.anon_kib),
        idle_after.fds,
        idle_after.threads
    );
    out += &format!("descriptors and threads before: {kinds_before:?}\nafter: {kinds_after:?}\n");
    out += &format!(
        "totals: {requests} verifications ({:.0}/s), {total_changes} changes, {} notifications set, {delivered} alerts delivered ({mails} emails received), {failed} failed, {} overdue; database {:.1} MB -> {:.1} MB\n",
        requests as f64 / total.as_secs_f64(),
        alerts_set.load(Ordering::Relaxed),
        overdue.len(),
        idle_before.db_bytes as f64 / 1e6,
        idle_after.db_bytes as f64 / 1e6,
    );

    let (lines, problems) = verdict(&rows, idle_before, idle_after);
    out += &lines;
    let _ = writeln!(std::io::stderr(), "{out}");
    // And it stops cleanly.
    if let Ok(mut d) = Arc::try_unwrap(d) {
        d.stop();
    }
    assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
    assert_eq!(failed, 0, "alert deliveries failed");
    assert!(overdue.is_empty(), "alerts overdue: {overdue:?}");
    assert!(
        delivered > 0 && total_changes > 0,
        "the load did too little"
    );
    assert!(problems.is_empty(), "soak: not flat: {problems:?}");
    eprintln!("soak: flat");
}
