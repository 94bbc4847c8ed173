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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apikeyd::keys::secret::{KeyHasher, ServerSecret};

#[path = "verify/build.rs"]
mod build;
mod common;
#[path = "verify/create.rs"]
mod create;
#[path = "verify/fixtures.rs"]
mod fixtures;
#[path = "verify/http.rs"]
mod http;
#[path = "verify/in_process.rs"]
mod in_process;
#[path = "verify/measure.rs"]
mod measure;

use build::{build, BATCH};
use common::env_usize;
use create::bench_create;
use http::bench_http;
use in_process::bench_verify;
use measure::{loadavg, machine_line, median_f64, rate, secs};

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
    let rates = &create.rates;
    out.push(format!(
        "  sequential, fresh db: {} creations in {:.2} s = {:.0} creations/s (latency median {:.2} ms, p99 {:.2} ms)",
        rates.seq_n,
        secs(rates.seq_time),
        rate(rates.seq_n, rates.seq_time),
        rates.seq_lat.median as f64 / 1e6,
        rates.seq_lat.p99 as f64 / 1e6
    ));
    out.push(format!(
        "  {} concurrent tasks, same db: {} creations in {:.2} s = {:.0} creations/s",
        rates.conc_tasks,
        rates.conc_n,
        secs(rates.conc_time),
        rate(rates.conc_n, rates.conc_time)
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
    measure::print_summary(out, total, &load_start);
}
