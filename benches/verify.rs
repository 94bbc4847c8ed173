//! Verification, HTTP and key-creation benchmark for apikeyd.
//!
//! `cargo bench --bench verify` (standalone binary, no harness). Progress goes to
//! stderr; figures go to stdout and end with a summary block a README can quote.
//!
//! Environment:
//! - `APIKEYD_BENCH_KEYS` (default 1000000): keys in the store for parts 1 and 2.
//! - `APIKEYD_BENCH_SAMPLE` (default 100000): clear secrets kept for lookups.
//! - `APIKEYD_BENCH_CALLS` (default 1000000): timed in-process verifications per case.
//! - `APIKEYD_BENCH_SECS` (default 5): seconds per HTTP round.
//! - `APIKEYD_BENCH_ROUNDS` (default 3): HTTP rounds per server (interleaved).
//! - `APIKEYD_BENCH_CONNS` (default 32): keep-alive connections of the load generator.
//! - `APIKEYD_BENCH_CREATES` (default 1000): creations in the fresh database.
//! - `APIKEYD_BENCH_CREATES_BIG` (default 100): creations in the N-key database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::alerts::Alerts;
use apikeyd::api::{tcp_router, AppState};
use apikeyd::clock::{SharedClock, SystemClock};
use apikeyd::config::{AuthConfig, Directory, Group, Period, Policy, RateLimitConfig, User};
use apikeyd::keys::model::{Code, KeyKind, KeyRecord, KeyState};
use apikeyd::keys::secret::{self, KeyHash, KeyHasher, ServerSecret};
use apikeyd::keys::{Actor, CreateKey, Keys, Settings};
use apikeyd::store::{Change, RedbStore, Storage};
use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use uuid::Uuid;

mod common;
use common::env_usize;

const BATCH: usize = 20_000;
const SCOPE: &str = "catalog:read";
const MAX_BODY: usize = 65_536;

// ---------------------------------------------------------------- helpers

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn median_f64(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Distribution of per-call times in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: u64,
    p99: u64,
    p999: u64,
    mean: f64,
}

impl Stats {
    fn of(mut v: Vec<u64>) -> Self {
        assert!(!v.is_empty());
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
        Self {
            median: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            mean: sum as f64 / v.len() as f64,
        }
    }

    fn row(&self, label: &str) -> String {
        format!(
            "  {label:<44} median {:>6} ns   p99 {:>6} ns   p99.9 {:>7} ns   mean {:>8.1} ns",
            self.median, self.p99, self.p999, self.mean
        )
    }
}

/// Time each call of `f(i)` for `i in 0..calls` with its own pair of `Instant`s.
fn time_each(calls: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        f(i);
        out.push(nanos(t.elapsed()));
    }
    out
}

/// Like `time_each`, but `prep(i, buf)` runs untimed before each timed `f(buf)`: it
/// copies the i-th input into a buffer reused across calls, so the presented key's
/// bytes are in the CPU cache as they are after reading a request from a socket,
/// while the index entry it leads to is as cold as the access pattern makes it.
fn time_hot<T>(
    calls: usize,
    mut buf: T,
    mut prep: impl FnMut(usize, &mut T),
    mut f: impl FnMut(&T),
) -> Vec<u64> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        prep(i, &mut buf);
        let t = Instant::now();
        f(&buf);
        out.push(nanos(t.elapsed()));
    }
    out
}

/// The keyed hashes are HMAC outputs under a secret an attacker does not know, so
/// their first 8 bytes are already a uniformly distributed hash: a map hasher that
/// only takes them, for a baseline without SipHash.
#[derive(Default)]
struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

/// A map from each hash to its position.
fn filled_map<S: std::hash::BuildHasher>(
    hashes: &[KeyHash],
    hasher: S,
) -> HashMap<KeyHash, u32, S> {
    let mut map = HashMap::with_capacity_and_hasher(hashes.len(), hasher);
    for (i, h) in hashes.iter().enumerate() {
        map.insert(*h, u32::try_from(i).unwrap_or(u32::MAX));
    }
    map
}

/// `prep` for `time_hot`: the i-th text of `list` (cycling) into the buffer.
fn text_of(list: &[String]) -> impl FnMut(usize, &mut String) + '_ {
    move |i, buf| {
        buf.clear();
        buf.push_str(&list[i % list.len()]);
    }
}

/// Run `f(i)` `calls` times under one clock: mean nanoseconds per call.
fn time_loop(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..calls {
        f(i);
    }
    nanos(t.elapsed()) as f64 / calls as f64
}

/// Scheduler times (ns) so far of this process's threads whose name starts with
/// `prefix`, from `/proc/self/task/*/schedstat`: `[on CPU, runnable but waiting for
/// a CPU]`. `None` if unavailable.
fn thread_sched_ns(prefix: &str) -> Option<[u64; 2]> {
    let mut total = [0u64; 2];
    let mut found = false;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let mut fields = stat.split_whitespace().map(|s| s.parse::<u64>().ok());
        if let (Some(Some(run)), Some(Some(wait))) = (fields.next(), fields.next()) {
            total[0] += run;
            total[1] += wait;
            found = true;
        }
    }
    found.then_some(total)
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let taskset = ["/usr/bin/taskset", "/bin/taskset"]
        .iter()
        .any(|p| Path::new(p).exists());
    format!(
        "{cpus} CPUs ({model}); taskset {}; threads not pinned",
        if taskset { "available" } else { "not found" }
    )
}

/// The 1-minute load average, to tell a quiet run from one that shared the CPUs.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// A stored record for a generated, enabled key. Built from JSON once so that fields
/// the library adds later (with serde defaults) need no change here; then cloned.
fn record_template(now: chrono::DateTime<Utc>, expires: chrono::DateTime<Utc>) -> KeyRecord {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::nil(),
        "name": "template",
        "owner": "user0",
        "scopes": [SCOPE],
        "hash": hex::encode([0u8; 32]),
        "kind": KeyKind::Generated,
        "state": KeyState::Enabled,
        "created_at": now,
        "updated_at": now,
        "expires_at": expires,
    }))
    .expect("KeyRecord from JSON")
}

fn record(template: &KeyRecord, i: usize, hash: &KeyHash) -> KeyRecord {
    let mut r = template.clone();
    r.id = Uuid::now_v7();
    r.name = format!("bench-{i}");
    r.owner = format!("user{}", i % 1000);
    r.hash = hex::encode(hash);
    r
}

/// Settings where the keys' owners (`user0` to `user999`) hold `SCOPE`: a key whose
/// owner is not configured is refused.
fn plain_settings() -> Settings {
    let mut directory = Directory::default();
    add_bench_users(&mut directory);
    Settings {
        policy: Policy::default(),
        directory,
    }
}

fn add_bench_users(d: &mut Directory) {
    d.groups.insert(
        "bench".to_owned(),
        Group {
            scopes: BTreeSet::from([SCOPE.to_owned()]),
            create_keys: true,
            manage_all_keys: false,
        },
    );
    for i in 0..1000 {
        let name = format!("user{i}");
        d.users.insert(
            name.clone(),
            User {
                name,
                email: None,
                groups: vec!["bench".to_owned()],
                unix_user: None,
            },
        );
    }
}

/// Settings where `alice` may create keys with a few scopes.
fn alice_settings() -> Settings {
    let mut groups = BTreeMap::new();
    groups.insert(
        "devs".to_owned(),
        Group {
            scopes: BTreeSet::from([
                SCOPE.to_owned(),
                "catalog:write".to_owned(),
                "orders:read".to_owned(),
            ]),
            create_keys: true,
            manage_all_keys: false,
        },
    );
    let mut users = BTreeMap::new();
    users.insert(
        "alice".to_owned(),
        User {
            name: "alice".to_owned(),
            email: None,
            groups: vec!["devs".to_owned()],
            unix_user: None,
        },
    );
    let mut directory = Directory { users, groups };
    // The big database's keys keep working after `reload` to these settings.
    add_bench_users(&mut directory);
    Settings {
        // The create figures issue thousands of keys to alice.
        policy: Policy {
            max_keys_per_user: None,
            ..Policy::default()
        },
        directory,
    }
}

// ---------------------------------------------------------------- part 1: build

struct Built {
    n: usize,
    keys: Arc<Keys>,
    store: Arc<dyn Storage>,
    hasher: KeyHasher,
    /// Clear secrets of a spread-out, shuffled sample of the stored keys.
    sample: Vec<String>,
    /// The keyed hashes of all N keys, for the `HashMap` baseline.
    hashes: Vec<KeyHash>,
    gen_threads: usize,
    build_wall: Duration,
    commit_time: Duration,
    load_time: Duration,
}

struct GenBatch {
    index: usize,
    recs: Vec<KeyRecord>,
    hashes: Vec<KeyHash>,
    sample: Vec<String>,
}

fn build(dir: &Path, n: usize, sample_size: usize, hasher: &KeyHasher) -> Built {
    let store: Arc<dyn Storage> =
        Arc::new(RedbStore::open(&dir.join("keys.redb")).expect("open store"));
    let now = Utc::now();
    let expires = Period::parse("p6m")
        .expect("period")
        .add_to(now)
        .expect("expiry")
        - chrono::Duration::hours(1);
    let template = record_template(now, expires);
    let stride = (n / sample_size.max(1)).max(1);
    let batches = n.div_ceil(BATCH);
    let gen_threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(1);

    let mut hashes = vec![[0u8; 32]; n];
    let mut sample = Vec::with_capacity(sample_size.min(n));
    let mut commit_time = Duration::ZERO;
    let started = Instant::now();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<GenBatch>(gen_threads * 2);
        for t in 0..gen_threads {
            let tx = tx.clone();
            let template = &template;
            std::thread::Builder::new()
                .name(format!("keygen-{t}"))
                .spawn_scoped(s, move || {
                    for b in (t..batches).step_by(gen_threads) {
                        let lo = b * BATCH;
                        let hi = (lo + BATCH).min(n);
                        let mut g = GenBatch {
                            index: b,
                            recs: Vec::with_capacity(hi - lo),
                            hashes: Vec::with_capacity(hi - lo),
                            sample: Vec::new(),
                        };
                        for i in lo..hi {
                            let secret = secret::generate();
                            let h = hasher.hash(secret.expose());
                            g.recs.push(record(template, i, &h));
                            g.hashes.push(h);
                            if i % stride == 0 {
                                g.sample.push(secret.expose().to_owned());
                            }
                        }
                        tx.send(g).expect("send batch");
                    }
                })
                .expect("spawn generator");
        }
        drop(tx);
        let mut done = 0usize;
        for g in rx {
            let lo = g.index * BATCH;
            hashes[lo..lo + g.hashes.len()].copy_from_slice(&g.hashes);
            sample.extend(g.sample);
            let rows = g.recs.len();
            let t = Instant::now();
            store
                .commit(Change {
                    put_keys: g.recs,
                    ..Change::default()
                })
                .expect("commit batch");
            commit_time += t.elapsed();
            done += rows;
            if done % 100_000 < rows || done == n {
                eprintln!(
                    "[build] {done}/{n} keys written ({:.1} s, commits {:.1} s)",
                    secs(started.elapsed()),
                    secs(commit_time)
                );
            }
        }
    });
    let build_wall = started.elapsed();
    sample.truncate(sample_size);
    sample.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));

    eprintln!("[load] Keys::open over {n} keys ...");
    let t = Instant::now();
    let keys = Keys::open(
        store.clone(),
        hasher.clone(),
        Arc::new(SystemClock) as SharedClock,
        plain_settings(),
    )
    .expect("Keys::open");
    let load_time = t.elapsed();
    assert_eq!(keys.len(), n);
    eprintln!("[load] done in {:.2} s", secs(load_time));

    Built {
        n,
        keys: Arc::new(keys),
        store,
        hasher: hasher.clone(),
        sample,
        hashes,
        gen_threads,
        build_wall,
        commit_time,
        load_time,
    }
}

// ---------------------------------------------------------------- part 1: verify

struct VerifyFigures {
    timer: Stats,
    valid: Stats,
    valid_cold: Stats,
    valid_loop_mean: f64,
    not_found: Stats,
    malformed: Stats,
    hash: Stats,
    shape: Stats,
    now: Stats,
    map_sip: Stats,
    map_prefix: Stats,
}

fn bench_verify(b: &Built, calls: usize) -> VerifyFigures {
    let keys = &b.keys;
    let sample = &b.sample;
    let m = sample.len();
    assert!(m > 0, "empty sample");
    let warm = calls.min(200_000);

    // Secrets of the right format that are not in the store, and ones with a bad checksum.
    let absent: Vec<String> = (0..m.min(10_000))
        .map(|_| secret::generate().expose().to_owned())
        .collect();
    let malformed: Vec<String> = sample
        .iter()
        .take(10_000)
        .map(|s| {
            let mut bytes = s.clone().into_bytes();
            let last = bytes.len() - 1;
            bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("ascii")
        })
        .collect();
    for s in absent.iter().take(100) {
        assert_eq!(keys.verify(s, Some(SCOPE), None).code, Code::NotFound);
    }
    for s in malformed.iter().take(100) {
        assert_eq!(keys.verify(s, Some(SCOPE), None).code, Code::Malformed);
    }

    eprintln!("[verify] timer overhead ...");
    let timer = Stats::of(time_each(calls, |i| {
        black_box(i);
    }));

    eprintln!("[verify] VALID: warm-up {warm}, timed {calls} ...");
    for i in 0..warm {
        assert_eq!(
            keys.verify(&sample[i % m], Some(SCOPE), None).code,
            Code::Valid
        );
    }
    let valid = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    }));
    // The same with the key's text read from a 100k-entry list inside the timed
    // region: one more cache miss, as a caller holding many keys in memory pays.
    let valid_cold = Stats::of(time_each(calls, |i| {
        let v = keys.verify(&sample[i % m], Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    }));
    let valid_loop_mean = time_loop(calls, |i| {
        let v = keys.verify(&sample[i % m], Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    });

    eprintln!("[verify] NOT_FOUND ...");
    for i in 0..warm.min(50_000) {
        black_box(keys.verify(&absent[i % absent.len()], Some(SCOPE), None));
    }
    let not_found = Stats::of(time_hot(calls, String::new(), text_of(&absent), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::NotFound);
    }));

    eprintln!("[verify] MALFORMED ...");
    let malformed_stats = Stats::of(time_hot(calls, String::new(), text_of(&malformed), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::Malformed);
    }));

    eprintln!("[verify] baseline KeyHasher::hash ...");
    let hasher = &b.hasher;
    let hash = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        black_box(hasher.hash(black_box(k)));
    }));

    eprintln!("[verify] baseline secret::shape and Utc::now ...");
    let shape = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        black_box(secret::shape(black_box(k), 32));
    }));
    let now = Stats::of(time_each(calls, |_| {
        black_box(Utc::now());
    }));

    eprintln!("[verify] baseline HashMap hits at N = {} ...", b.n);
    let probe: Vec<KeyHash> = sample.iter().map(|s| hasher.hash(s)).collect();
    let map_hits = |map: &mut dyn FnMut(&KeyHash) -> bool| {
        for p in probe.iter().take(warm) {
            black_box(map(p));
        }
        Stats::of(time_hot(
            calls,
            [0u8; 32],
            |i, h| *h = probe[i % m],
            |h| assert!(black_box(map(black_box(h)))),
        ))
    };
    let map_sip = {
        let map: HashMap<KeyHash, u32> = filled_map(&b.hashes, Default::default());
        map_hits(&mut |h| map.contains_key(h))
    };
    let map_prefix = {
        let map: HashMap<KeyHash, u32, BuildHasherDefault<PrefixHasher>> =
            filled_map(&b.hashes, Default::default());
        map_hits(&mut |h| map.contains_key(h))
    };

    VerifyFigures {
        timer,
        valid,
        valid_cold,
        valid_loop_mean,
        not_found,
        malformed: malformed_stats,
        hash,
        shape,
        now,
        map_sip,
        map_prefix,
    }
}

// ---------------------------------------------------------------- part 2: HTTP

struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Serve `router` on 127.0.0.1 from its own runtime with one worker thread whose
/// name starts with `name`.
fn spawn_server(name: &'static str, router: Router) -> Server {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("{name}-main"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("send addr");
                let server = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
                // Run the accept loop on the worker too, so one thread does everything.
                tokio::spawn(async move { server.await })
                    .await
                    .expect("server task")
                    .expect("serve");
            });
        })
        .expect("spawn server thread");
    let addr = addr_rx.recv().expect("server address");
    Server { addr, stop, thread }
}

fn baseline_router() -> Router {
    // Reads the body (as any real handler must) and answers a fixed small JSON.
    Router::new().route(
        "/v1/verify",
        post(|body: Bytes| async move {
            black_box(body);
            (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"valid\":true}",
            )
        }),
    )
}

#[derive(Debug, Clone, Copy)]
struct Round {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Server thread: % of the round on a CPU, % runnable but waiting for one.
    server_cpu: Option<[f64; 2]>,
    /// Load generator thread, likewise.
    client_cpu: Option<[f64; 2]>,
}

impl Round {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One round of `conns` keep-alive connections POSTing for `dur`. Runs on the
/// load generator's current-thread runtime.
async fn load_round(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    conns: usize,
    dur: Duration,
    server_thread: &str,
) -> Round {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(sender);
    }
    let server_cpu0 = thread_sched_ns(server_thread);
    let client_cpu0 = thread_sched_ns("loadgen");
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let bodies = bodies.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut i = c.wrapping_mul(7919);
            while Instant::now() < deadline {
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let req = Request::builder()
                    .method("POST")
                    .uri("/v1/verify")
                    .header(header::HOST, "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .expect("request");
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let good = match resp.into_body().collect().await {
                            Ok(b) => {
                                status == StatusCode::OK
                                    && b.to_bytes().starts_with(b"{\"valid\":true")
                            }
                            Err(_) => false,
                        };
                        if good {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (o, e) = r.expect("client task");
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    let pct = |a: Option<[u64; 2]>, b: Option<[u64; 2]>| {
        let (a, b) = (a?, b?);
        let p = |i: usize| b[i].saturating_sub(a[i]) as f64 / nanos(elapsed) as f64 * 100.0;
        Some([p(0), p(1)])
    };
    Round {
        ok,
        errors,
        elapsed,
        server_cpu: pct(server_cpu0, thread_sched_ns(server_thread)),
        client_cpu: pct(client_cpu0, thread_sched_ns("loadgen")),
    }
}

struct HttpFigures {
    conns: usize,
    secs: u64,
    rounds: Vec<(&'static str, Round)>,
}

fn bench_http(b: &Built, conns: usize, dur: Duration, rounds: usize) -> HttpFigures {
    let apikeyd = spawn_server(
        "srv-apikeyd",
        tcp_router(
            AppState::new(
                Arc::new(Alerts::new(b.keys.clone(), b.store.clone())),
                AuthConfig::default(),
                RateLimitConfig::default(),
            ),
            MAX_BODY,
        ),
    );
    let baseline = spawn_server("srv-baseline", baseline_router());
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        b.sample
            .iter()
            .take(4096)
            .map(|k| Bytes::from(serde_json::json!({"key": k, "scope": SCOPE}).to_string()))
            .collect(),
    );
    let (a_addr, b_addr) = (apikeyd.addr, baseline.addr);
    let results = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            rt.block_on(async move {
                let warm = Duration::from_secs(1);
                eprintln!("[http] warm-up 1 s each ...");
                load_round(b_addr, bodies.clone(), conns, warm, "srv-baseline").await;
                load_round(a_addr, bodies.clone(), conns, warm, "srv-apikeyd").await;
                let mut out = Vec::new();
                for r in 1..=rounds {
                    for (label, addr, thread) in [
                        ("baseline", b_addr, "srv-baseline"),
                        ("apikeyd", a_addr, "srv-apikeyd"),
                    ] {
                        let round = load_round(addr, bodies.clone(), conns, dur, thread).await;
                        eprintln!(
                            "[http] round {r} {label:<8} {:>9.0} req/s ({} ok, {} errors)",
                            round.rps(),
                            round.ok,
                            round.errors
                        );
                        out.push((label, round));
                    }
                }
                out
            })
        })
        .expect("spawn load generator")
        .join()
        .expect("load generator");
    for s in [apikeyd, baseline] {
        let _ = s.stop.send(());
        s.thread.join().expect("server thread");
    }
    HttpFigures {
        conns,
        secs: dur.as_secs(),
        rounds: results,
    }
}

// ---------------------------------------------------------------- part 3: create

struct CreateFigures {
    seq_n: usize,
    seq_time: Duration,
    seq_lat: Stats,
    conc_n: usize,
    conc_tasks: usize,
    conc_time: Duration,
    big_n: usize,
    big_keys: usize,
    big_time: Duration,
    big_lat: Option<Stats>,
}

async fn create_seq(keys: &Keys, n: usize, prefix: &str) -> (Duration, Vec<u64>) {
    let admin = Actor {
        name: "admin".into(),
        admin: true,
    };
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let c = Instant::now();
        keys.create(
            &admin,
            CreateKey {
                user: Some("alice".into()),
                name: format!("{prefix}{i}"),
                ..Default::default()
            },
        )
        .await
        .expect("create");
        lat.push(nanos(c.elapsed()));
    }
    (t.elapsed(), lat)
}

fn bench_create(
    dir: &Path,
    hasher: &KeyHasher,
    big: &Keys,
    seq_n: usize,
    big_n: usize,
) -> CreateFigures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("create runtime");
    let store: Arc<dyn Storage> =
        Arc::new(RedbStore::open(&dir.join("create.redb")).expect("open create store"));
    let keys = Arc::new(
        Keys::open(
            store,
            hasher.clone(),
            Arc::new(SystemClock) as SharedClock,
            alice_settings(),
        )
        .expect("open"),
    );
    rt.block_on(async {
        eprintln!("[create] warm-up 20 ...");
        create_seq(&keys, 20, "w").await;

        eprintln!("[create] {seq_n} sequential ...");
        let (seq_time, lat) = create_seq(&keys, seq_n, "k").await;

        let tasks = 8usize;
        let per = seq_n.div_ceil(tasks);
        eprintln!("[create] {} with {tasks} concurrent tasks ...", per * tasks);
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let keys = keys.clone();
            set.spawn(async move { create_seq(&keys, per, &format!("c{task}-")).await });
        }
        while let Some(r) = set.join_next().await {
            r.expect("create task");
        }
        let conc_time = t.elapsed();

        let big_keys = big.len();
        let (big_time, big_lat) = if big_n > 0 {
            eprintln!("[create] {big_n} sequential in the {big_keys}-key database ...");
            big.reload(alice_settings());
            let (d, lat) = create_seq(big, big_n, "big").await;
            (d, Some(Stats::of(lat)))
        } else {
            (Duration::ZERO, None)
        };

        CreateFigures {
            seq_n,
            seq_time,
            seq_lat: Stats::of(lat),
            conc_n: per * tasks,
            conc_tasks: tasks,
            conc_time,
            big_n,
            big_keys,
            big_time,
            big_lat,
        }
    })
}

// ---------------------------------------------------------------- main

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = env_usize("APIKEYD_BENCH_KEYS", 1_000_000).max(1);
    let sample_size = env_usize("APIKEYD_BENCH_SAMPLE", 100_000).clamp(1, n);
    let calls = env_usize("APIKEYD_BENCH_CALLS", 1_000_000).max(1);
    let http_secs = env_usize("APIKEYD_BENCH_SECS", 5).max(1);
    let rounds = env_usize("APIKEYD_BENCH_ROUNDS", 3).max(1);
    let conns = env_usize("APIKEYD_BENCH_CONNS", 32).max(1);
    let creates = env_usize("APIKEYD_BENCH_CREATES", 1000).max(1);
    let creates_big = env_usize("APIKEYD_BENCH_CREATES_BIG", 100);

    let total = Instant::now();
    let load_start = loadavg();
    let machine = machine_line();
    eprintln!("[bench] {machine}");
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("[bench] databases in {}", dir.path().display());
    let hasher = KeyHasher::new(&ServerSecret::from_bytes(vec![0x5a; 32]).expect("server secret"));

    // Part 1.
    let built = build(dir.path(), n, sample_size, &hasher);
    let v = bench_verify(&built, calls);
    if std::env::var_os("APIKEYD_BENCH_VERIFY_ONLY").is_some() {
        println!(
            "timer overhead median {} ns (included in each figure)",
            v.timer.median
        );
        for (label, st) in [
            ("VALID (key text hot)", &v.valid),
            ("VALID (key text cold)", &v.valid_cold),
            ("NOT_FOUND", &v.not_found),
            ("MALFORMED", &v.malformed),
            ("baseline HMAC", &v.hash),
            ("baseline shape", &v.shape),
            ("baseline map hit, PrefixHasher", &v.map_prefix),
        ] {
            println!("{}", st.row(label));
        }
        return;
    }
    // Part 2.
    let http = bench_http(&built, conns, Duration::from_secs(http_secs as u64), rounds);
    // Part 3.
    let create = bench_create(dir.path(), &hasher, &built.keys, creates, creates_big);

    // ------------------------------------------------------------ report
    let mut out = Vec::new();
    out.push(
        "==================== apikeyd bench (benches/verify.rs): summary ===================="
            .to_owned(),
    );
    out.push(format!("machine: {machine}"));
    out.push(format!(
        "store: N = {n} keys (generated, enabled, 1 scope), lookup sample {} clear secrets",
        built.sample.len()
    ));
    out.push(String::new());
    out.push("[1] build and load".to_owned());
    out.push(format!(
        "  build (generate + HMAC + record on {} threads, pipelined with commits): {:.1} s wall, {:.0} keys/s",
        built.gen_threads,
        secs(built.build_wall),
        rate(n, built.build_wall)
    ));
    out.push(format!(
        "  redb batched insert (Storage::commit, {BATCH} rows/txn, JSON encode included): {:.0} rows/s ({:.1} s in commit)",
        rate(n, built.commit_time),
        secs(built.commit_time)
    ));
    out.push(format!(
        "  Keys::open (load + decode + index): {:.2} s, {:.0} keys/s",
        secs(built.load_time),
        rate(n, built.load_time)
    ));
    out.push(String::new());
    out.push(format!(
        "[1] in-process Keys::verify at N = {n}, {calls} calls each, each call timed with Instant (timer overhead median {} ns, included)",
        v.timer.median
    ));
    out.push(
        v.valid
            .row("VALID    verify(key, Some(\"catalog:read\"), None)"),
    );
    out.push(
        v.valid_cold
            .row("VALID    key text read cold from the list"),
    );
    out.push(format!(
        "  {:<44} mean {:.1} ns/call (one clock around {calls} calls)",
        "VALID    untimed loop, key text cold", v.valid_loop_mean
    ));
    out.push(v.not_found.row("NOT_FOUND well-formed, not stored"));
    out.push(v.malformed.row("MALFORMED bad checksum"));
    out.push(v.hash.row("baseline KeyHasher::hash (HMAC-SHA256)"));
    out.push(v.shape.row("baseline secret::shape (format + CRC32)"));
    out.push(v.now.row("baseline Utc::now()"));
    out.push(v.map_sip.row("baseline HashMap<[u8;32],u32> hit, SipHash"));
    out.push(
        v.map_prefix
            .row("baseline HashMap<[u8;32],u32> hit, PrefixHasher"),
    );
    let r = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    out.push(format!(
        "  ratios (medians): VALID/hash = {:.2}, VALID/(hash + SipHash map hit) = {:.2}, VALID/(hash + PrefixHasher map hit) = {:.2}, NOT_FOUND/hash = {:.2}",
        r(v.valid.median, v.hash.median),
        r(v.valid.median, v.hash.median + v.map_sip.median),
        r(v.valid.median, v.hash.median + v.map_prefix.median),
        r(v.not_found.median, v.hash.median)
    ));
    out.push(format!(
        "  target: VALID median <= 500 ns -> {} ({} ns)",
        if v.valid.median <= 500 {
            "MET"
        } else {
            "NOT MET"
        },
        v.valid.median
    ));
    out.push(String::new());
    out.push(format!(
        "[2] POST /v1/verify over loopback TCP: {} keep-alive HTTP/1.1 connections, {} s per round; server: 1 tokio worker; load generator: 1 current-thread runtime",
        http.conns, http.secs
    ));
    let cpu = |c: Option<[f64; 2]>| {
        c.map_or_else(
            || "n/a".to_owned(),
            |[run, wait]| format!("{run:.0}% on CPU, {wait:.0}% waiting"),
        )
    };
    let mut per: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut errors = 0u64;
    for (i, (label, round)) in http.rounds.iter().enumerate() {
        errors += round.errors;
        per.entry(label).or_default().push(round.rps());
        out.push(format!(
            "  round {} {:<8} {:>9.0} req/s  ({} ok, {} errors; server thread {}; load generator {})",
            i / 2 + 1,
            label,
            round.rps(),
            round.ok,
            round.errors,
            cpu(round.server_cpu),
            cpu(round.client_cpu)
        ));
    }
    let base = median_f64(per.get("baseline").map_or(&[][..], |v| v));
    let api = median_f64(per.get("apikeyd").map_or(&[][..], |v| v));
    out.push(format!(
        "  median baseline (static JSON handler): {base:.0} req/s"
    ));
    out.push(format!(
        "  median apikeyd /v1/verify:             {api:.0} req/s"
    ));
    out.push(format!(
        "  ratio apikeyd / baseline: {:.2}   errors: {errors}",
        api / base
    ));
    out.push(String::new());
    out.push("[3] Keys::create (one durable redb commit each)".to_owned());
    out.push(format!(
        "  sequential, fresh db: {} creations in {:.2} s = {:.0} creations/s (latency median {:.2} ms, p99 {:.2} ms)",
        create.seq_n,
        secs(create.seq_time),
        rate(create.seq_n, create.seq_time),
        create.seq_lat.median as f64 / 1e6,
        create.seq_lat.p99 as f64 / 1e6
    ));
    out.push(format!(
        "  {} concurrent tasks, same db: {} creations in {:.2} s = {:.0} creations/s",
        create.conc_tasks,
        create.conc_n,
        secs(create.conc_time),
        rate(create.conc_n, create.conc_time)
    ));
    if let Some(lat) = create.big_lat {
        out.push(format!(
            "  sequential, {}-key db: {} creations in {:.2} s = {:.0} creations/s (latency median {:.2} ms, p99 {:.2} ms)",
            create.big_keys,
            create.big_n,
            secs(create.big_time),
            rate(create.big_n, create.big_time),
            lat.median as f64 / 1e6,
            lat.p99 as f64 / 1e6
        ));
    }
    out.push(String::new());
    out.push(format!(
        "total bench time: {:.0} s; 1-min load average at start {load_start}, at end {}",
        secs(total.elapsed()),
        loadavg()
    ));
    out.push("=".repeat(84));
    println!("{}", out.join("\n"));
}
