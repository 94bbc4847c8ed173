//! Cluster-mode benchmark (issue 11): apikeyd's key service on PostgreSQL, measured
//! side by side with redb in one run, on a private PostgreSQL server started from
//! Debian's binaries as the tests start it (`src/store/postgres/test_server.rs`;
//! as root, the server runs as `postgres`).
//!
//! `cargo bench --bench cluster` (standalone binary, no harness). Progress goes to
//! stderr; figures go to stdout, ending with a summary block a README can quote.
//!
//! 1. Revocation propagation across three nodes: a key disabled on one node, time
//!    until the other two refuse it; with LISTEN/NOTIFY, then polling only.
//! 2. Creations per second, one client and 8 concurrent, on PostgreSQL and redb.
//! 3. Cold start at N keys: `Keys::open` from PostgreSQL against redb, and where a
//!    PostgreSQL load spends its time.
//! 4. Verification on `Keys` loaded from PostgreSQL against redb (the same keys).
//! 5. The real `apikeyd` started on those N keys, PostgreSQL against redb.
//!
//! Environment (defaults; `APIKEYD_BENCH_QUICK=1` makes every default small, for a
//! smoke run): `APIKEYD_BENCH_KEYS` (1000000), `APIKEYD_BENCH_SAMPLE` (100000),
//! `APIKEYD_BENCH_ROUNDS` (200, propagation with NOTIFY), `APIKEYD_BENCH_POLL_ROUNDS`
//! (50, polling only), `APIKEYD_BENCH_POLL_MS` (1000, `[store] poll_interval`),
//! `APIKEYD_BENCH_CREATES` (1000 per pass), `APIKEYD_BENCH_CREATE_PASSES` (3),
//! `APIKEYD_BENCH_STARTS` (3 cold starts of each, in-process and daemon),
//! `APIKEYD_BENCH_CALLS` (1000000 verifications per round),
//! `APIKEYD_BENCH_VERIFY_ROUNDS` (4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::keys::secret::{KeyHasher, ServerSecret};
use apikeyd::store::{PostgresStore, RedbStore, Storage};

#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/build.rs"]
mod build;
mod common;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/create.rs"]
mod create;
#[path = "cluster/daemon.rs"]
mod daemon;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/fixtures.rs"]
mod fixtures;
#[path = "cluster/load.rs"]
mod load;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/measure.rs"]
mod measure;
#[path = "cluster/propagation.rs"]
mod propagation;
// The private PostgreSQL server of the tests.
#[path = "../src/store/postgres/test_server.rs"]
mod pg_server;

use common::env_usize;
use measure::{loadavg, machine_line, median_f64, rate, secs};

/// The p-th quantile (0..=1) of `v`, nearest rank.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn dist(v: &[f64]) -> String {
    format!(
        "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms",
        pct(v, 0.5),
        pct(v, 0.95),
        pct(v, 0.99),
        pct(v, 1.0)
    )
}

/// Creation figures of one store over every pass: creations/s one client, 8
/// clients, and the one-client latency median (ms).
#[derive(Default)]
struct CreateRuns {
    seq: Vec<f64>,
    conc: Vec<f64>,
    lat_ms: Vec<f64>,
}

fn bench_creations(
    url: &str,
    shm: &Path,
    disk: &Path,
    hasher: &KeyHasher,
    n: usize,
    passes: usize,
) -> (Vec<(&'static str, CreateRuns)>, [measure::Stats; 4]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stores: Vec<(&'static str, Arc<dyn Storage>)> = vec![
        (
            "PostgreSQL",
            Arc::new(PostgresStore::open(url, None).expect("open PostgreSQL")),
        ),
        (
            "redb on tmpfs",
            Arc::new(RedbStore::open(&shm.join("create.redb")).expect("open redb")),
        ),
        (
            "redb on disk",
            Arc::new(RedbStore::open(&disk.join("create.redb")).expect("open redb")),
        ),
    ];
    let keys: Vec<_> = stores
        .iter()
        .map(|(_, s)| create::keys_for_creations(s.clone(), hasher))
        .collect();
    // What one statement costs through the store: a primary-key read of an empty
    // table, from a thread outside any runtime, like the blocking threads every
    // store call comes from.
    let round_trip = {
        let pg = &stores[0].1;
        for _ in 0..200 {
            pg.message(0).expect("read");
        }
        measure::Stats::of(measure::time_each(2000, |_| {
            pg.message(0).expect("read");
        }))
    };
    let [text, typed, prepared] = direct_round_trips(url, 2000);
    let mut runs: Vec<CreateRuns> = stores.iter().map(|_| CreateRuns::default()).collect();
    for pass in 0..passes {
        // Forwards, then backwards: drift during a pass favours no store.
        let order: Vec<usize> = if pass % 2 == 0 {
            (0..stores.len()).collect()
        } else {
            (0..stores.len()).rev().collect()
        };
        for i in order {
            let tag = format!(" {} pass {}", stores[i].0, pass + 1);
            let r = rt.block_on(create::rates(&keys[i], n, 8, &tag));
            runs[i].seq.push(rate(r.seq_n, r.seq_time));
            runs[i].conc.push(rate(r.conc_n, r.conc_time));
            runs[i].lat_ms.push(r.seq_lat.median as f64 / 1e6);
        }
    }
    drop(keys);
    (
        stores.into_iter().map(|(l, _)| l).zip(runs).collect(),
        [round_trip, text, typed, prepared],
    )
}

/// The same statement on a plain tokio-postgres connection driven by the calling
/// thread (a current-thread runtime): no hand-over between threads. As the store
/// sends it (SQL text: tokio-postgres prepares it first, one more round trip),
/// with its parameter types given (`query_typed_opt`: no prepare), and prepared
/// once.
fn direct_round_trips(url: &str, n: usize) -> [measure::Stats; 3] {
    const SQL: &str = "SELECT message FROM operator_messages WHERE id = $1";
    load::with_client(url, async |client| {
        let stmt = client.prepare(SQL).await.expect("prepare");
        let mut lat: [Vec<u64>; 3] = Default::default();
        for i in 0..n + 200 {
            let t0 = Instant::now();
            client.query_opt(SQL, &[&0i64]).await.expect("query");
            let t1 = Instant::now();
            client
                .query_typed_opt(SQL, &[(&0i64, tokio_postgres::types::Type::INT8)])
                .await
                .expect("query");
            let t2 = Instant::now();
            client.query_opt(&stmt, &[&0i64]).await.expect("query");
            if i >= 200 {
                lat[0].push(measure::nanos(t1 - t0));
                lat[1].push(measure::nanos(t2 - t1));
                lat[2].push(measure::nanos(t2.elapsed()));
            }
        }
        lat.map(measure::Stats::of)
    })
}

fn main() {
    let quick = std::env::var_os("APIKEYD_BENCH_QUICK").is_some();
    let d = |full: usize, small: usize| if quick { small } else { full };
    let n = env_usize("APIKEYD_BENCH_KEYS", d(1_000_000, 5_000)).max(1);
    let sample_size = env_usize("APIKEYD_BENCH_SAMPLE", d(100_000, 1_000)).clamp(1, n);
    let rounds = env_usize("APIKEYD_BENCH_ROUNDS", d(200, 10)).max(1);
    let poll_rounds = env_usize("APIKEYD_BENCH_POLL_ROUNDS", d(50, 3));
    let poll_ms = env_usize("APIKEYD_BENCH_POLL_MS", d(1000, 100)).max(1);
    let creates = env_usize("APIKEYD_BENCH_CREATES", d(1000, 50)).max(1);
    let passes = env_usize("APIKEYD_BENCH_CREATE_PASSES", d(3, 1)).max(1);
    let starts = env_usize("APIKEYD_BENCH_STARTS", d(3, 1)).max(1);
    let calls = env_usize("APIKEYD_BENCH_CALLS", d(1_000_000, 10_000)).max(1);
    let verify_rounds = env_usize("APIKEYD_BENCH_VERIFY_ROUNDS", d(4, 2)).max(1);

    let total = Instant::now();
    let load_start = loadavg();
    let machine = machine_line();
    eprintln!("[bench] {machine}");
    let server = pg_server::TestServer::start().expect("PostgreSQL is needed");
    let dir = tempfile::tempdir().expect("tempdir");
    let shm = tempfile::tempdir_in("/dev/shm").expect("tempdir on /dev/shm");
    let hasher = KeyHasher::new(&ServerSecret::from_bytes(vec![0x5a; 32]).expect("server secret"));

    // Part 1.
    let prop = propagation::bench_propagation(
        &server.database("propagation"),
        &hasher,
        rounds,
        poll_rounds,
        Duration::from_millis(poll_ms as u64),
    );
    // Part 2.
    let (creations, round_trip) = bench_creations(
        &server.database("creations"),
        shm.path(),
        dir.path(),
        &hasher,
        creates,
        passes,
    );
    // Part 3.
    let built = build::build(dir.path(), n, sample_size, &hasher);
    let big = server.database("big");
    let seeded = load::seed_postgres(&built, &big);
    let cold = load::cold_start(&built, &big, starts);
    let profile = load::load_profile(&built, &big);
    // Part 4.
    let verify = load::verify_compare(&built, &big, calls, verify_rounds);
    // Part 5: the daemon needs the redb file to itself.
    let build_wall = built.build_wall;
    drop(built);
    let redb_node = dir.path().join("redb-node");
    let redb_config = daemon::config(&redb_node, "");
    std::fs::rename(
        dir.path().join("keys.redb"),
        redb_node.join("state/apikeyd.redb"),
    )
    .expect("move the redb database");
    let pg_config = daemon::config(
        &dir.path().join("pg-node"),
        &format!("[store]\nbackend = \"postgres\"\nurl = {big:?}\n"),
    );
    let mut daemon_starts = (Vec::new(), Vec::new());
    for r in 0..starts {
        daemon_starts.0.push(daemon::start(&redb_config));
        daemon_starts.1.push(daemon::start(&pg_config));
        eprintln!(
            "[daemon start {}] redb {:.2} s, PostgreSQL {:.2} s",
            r + 1,
            daemon_starts.0[r],
            daemon_starts.1[r]
        );
    }

    // ------------------------------------------------------------ report
    let mut out = Vec::new();
    out.push(
        "=================== apikeyd bench (benches/cluster.rs): summary ===================="
            .to_owned(),
    );
    out.push(format!("machine: {machine}"));
    out.push(
        "PostgreSQL: private server on loopback (src/store/postgres/test_server.rs: fsync=off); redb: Durability::Immediate"
            .to_owned(),
    );
    out.push(String::new());
    out.push(format!(
        "[1] revocation propagation, 3 nodes (Keys over PostgresStore each, follow() as the daemon runs it), {} rounds: disable on one node (in turn), poll the other two every ~50 us until both refuse",
        prop.notify.call.len()
    ));
    out.push(format!(
        "  LISTEN/NOTIFY + poll {:?}: both refuse, from the request:  {}",
        prop.poll,
        dist(&prop.notify.both_from_request)
    ));
    out.push(format!(
        "  LISTEN/NOTIFY + poll {:?}: both refuse, after the answer: {}",
        prop.poll,
        dist(&prop.notify.both_from_answer)
    ));
    out.push(format!(
        "  the disabling call itself:                         {}",
        dist(&prop.notify.call)
    ));
    out.push(format!(
        "  target: p99 <= 100 ms (from the request) -> {}",
        if pct(&prop.notify.both_from_request, 0.99) <= 100.0 {
            "MET"
        } else {
            "NOT MET"
        }
    ));
    if !prop.polling.call.is_empty() {
        out.push(format!(
            "  polling only (no NOTIFY), every {:?}, {} rounds: both refuse, from the request: {}",
            prop.poll,
            prop.polling.call.len(),
            dist(&prop.polling.both_from_request)
        ));
    }
    out.push(String::new());
    out.push(format!(
        "[2] Keys::create, fresh databases, {passes} passes of {creates} creations (one client) + {creates} (8 concurrent tasks), medians of the passes"
    ));
    let pg_seq = median_f64(&creations[0].1.seq);
    let pg_conc = median_f64(&creations[0].1.conc);
    for (label, r) in &creations {
        let (seq, conc) = (median_f64(&r.seq), median_f64(&r.conc));
        out.push(format!(
            "  {label:<14} 1 client {seq:>6.0}/s (latency median {:.2} ms)   8 clients {conc:>6.0}/s   PostgreSQL/this: {:.2} / {:.2}   (passes 1 client: {})",
            median_f64(&r.lat_ms),
            pg_seq / seq,
            pg_conc / conc,
            r.seq
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push(format!(
        "  baseline, one statement (primary-key read, empty table), median / p99: through PostgresStore {:.0} / {:.0} us; on a plain connection driven by the caller's thread, as SQL text (prepare + execute) {:.0} / {:.0} us, with typed parameters (no prepare) {:.0} / {:.0} us, prepared once {:.0} / {:.0} us",
        round_trip[0].median as f64 / 1e3,
        round_trip[0].p99 as f64 / 1e3,
        round_trip[1].median as f64 / 1e3,
        round_trip[1].p99 as f64 / 1e3,
        round_trip[2].median as f64 / 1e3,
        round_trip[2].p99 as f64 / 1e3,
        round_trip[3].median as f64 / 1e3,
        round_trip[3].p99 as f64 / 1e3
    ));
    out.push(String::new());
    out.push(format!("[3] cold start at N = {n} keys"));
    out.push(format!(
        "  seeding: redb build {:.1} s; redb -> PostgreSQL, one INSERT ... unnest() per 20k keys, {:.1} s ({:.0} keys/s)",
        secs(build_wall),
        secs(seeded.time),
        rate(n, seeded.time)
    ));
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (redb_open, pg_conn, pg_open) = (
        median_f64(&cold.redb),
        median_f64(&cold.pg_connect),
        median_f64(&cold.pg_open),
    );
    out.push(format!(
        "  Keys::open from redb:       median {redb_open:.2} s ({})",
        list(&cold.redb)
    ));
    out.push(format!(
        "  PostgreSQL: connect {pg_conn:.3} s + Keys::open median {pg_open:.2} s ({}); ratio PostgreSQL/redb {:.2}",
        list(&cold.pg_open),
        (pg_conn + pg_open) / redb_open
    ));
    out.push(format!(
        "  target: <= 10 s from PostgreSQL -> {}",
        if pg_conn + pg_open <= 10.0 {
            "MET"
        } else {
            "NOT MET"
        }
    ));
    out.push("  where a PostgreSQL load goes (one pass each, cursor, FETCH 8192):".to_owned());
    out.push(format!(
        "    fetch record::text (server + transfer)       {:.2} s",
        profile.fetch_text
    ));
    out.push(format!(
        "    the same from a json (text) column copy      {:.2} s",
        profile.fetch_json_column
    ));
    out.push(format!(
        "    fetch record as serde_json::Value            {:.2} s",
        profile.fetch_value
    ));
    out.push(format!(
        "    ... + Value -> KeyRecord -> KeyRow            {:.2} s",
        profile.value_record_row
    ));
    out.push(format!(
        "    PostgresStore::load_keys (no index)          {:.2} s",
        profile.pg_load_keys
    ));
    out.push(format!(
        "    alternative: Json<KeyRecord> -> KeyRow         {:.2} s",
        profile.json_record_row
    ));
    out.push(format!(
        "    prototype: raw jsonb bytes fetched on another thread, overlapped with Json -> KeyRecord -> KeyRow here  {:.2} s",
        profile.overlapped
    ));
    out.push(format!(
        "    RedbStore::load_keys (no index), same keys   {:.2} s",
        profile.redb_load_keys
    ));
    out.push(String::new());
    let vm = verify.medians();
    out.push(format!(
        "[4] Keys::verify VALID at N = {n}, {} rounds of {} calls on each (each call timed alone; each Keys first in turn)",
        verify.rounds.len(),
        verify.calls
    ));
    for (i, r) in verify.rounds.iter().enumerate() {
        out.push(format!(
            "  round {}: {}",
            i + 1,
            load::VERIFY_LABELS
                .iter()
                .zip(r)
                .map(|(l, s)| format!("{l} median {} ns p99 {} ns", s.median, s.p99))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    out.push(format!(
        "  medians of the rounds: {}; PostgreSQL/redb (built) {:.2}, PostgreSQL/redb (reloaded) {:.2}, redb reloaded/built {:.2}",
        load::VERIFY_LABELS
            .iter()
            .zip(vm)
            .map(|(l, m)| format!("{l} {m:.0} ns"))
            .collect::<Vec<_>>()
            .join(", "),
        vm[2] / vm[0],
        vm[2] / vm[1],
        vm[1] / vm[0]
    ));
    out.push(String::new());
    let (dr, dp) = (median_f64(&daemon_starts.0), median_f64(&daemon_starts.1));
    out.push(format!(
        "[5] apikeyd at N = {n} keys, spawn -> `listening` on stdout, {starts} starts each (alternating)"
    ));
    out.push(format!(
        "  redb:       median {dr:.2} s ({})",
        list(&daemon_starts.0)
    ));
    out.push(format!(
        "  PostgreSQL: median {dp:.2} s ({}); ratio PostgreSQL/redb {:.2}; target <= 10 s -> {}",
        list(&daemon_starts.1),
        dp / dr,
        if dp <= 10.0 { "MET" } else { "NOT MET" }
    ));
    out.push(String::new());
    measure::print_summary(out, total, &load_start);
}
