//! Bulk import and group commit (issue 14, item 3), each next to its baseline
//! measured in the same run, on redb on disk:
//!
//! 1. Creations (`Keys::create`, each acknowledged only once durable): one client,
//!    then 8 at once sharing fsyncs (group commit).
//! 2. Import: single `Keys::import` calls one after another (the baseline: one
//!    durable commit each), then `Keys::import_lines` on an N-line file (what
//!    `apikeyctl key import --file` sends), into a fresh database, and the same
//!    file again refused whole (every line clashes), which is the checking alone.
//!
//! `cargo bench --bench import` (standalone binary, no harness). Progress goes to
//! stderr; figures go to stdout. Environment: `APIKEYD_BENCH_IMPORT` (1000000
//! lines), `APIKEYD_BENCH_SINGLE` (2000 single imports), `APIKEYD_BENCH_CREATES`
//! (2000 creations per pass), `APIKEYD_BENCH_PASSES` (3; medians are quoted);
//! `APIKEYD_BENCH_QUICK=1` makes every default small, for a smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::keys::secret::{KeyHasher, Secret, ServerSecret};
use apikeyd::keys::{CreateKey, Keys};
use apikeyd::store::{RedbStore, Storage};

mod common;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/create.rs"]
mod create;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/fixtures.rs"]
mod fixtures;
#[allow(
    dead_code,
    reason = "shared with the verify benchmark, which uses all of it"
)]
#[path = "verify/measure.rs"]
mod measure;

use common::env_usize;
use create::{admin, keys_for_creations, rates};
use measure::median_f64;

fn token(i: usize) -> String {
    format!("legacy-{i:08}-0123456789abcdefghijklmnopqrstuv")
}

/// An N-line import file for the bench users (`user0`..`user999`).
fn import_file(n: usize, tag: &str) -> String {
    let mut text = String::with_capacity(n * 110);
    for i in 0..n {
        let _ = writeln!(
            text,
            r#"{{"owner":"user{}","name":"{tag}{i}","token":"{}","description":"migrated"}}"#,
            i % 1000,
            token(i)
        );
    }
    text
}

fn fresh_keys(dir: &std::path::Path, name: &str, hasher: &KeyHasher) -> Arc<Keys> {
    let store: Arc<dyn Storage> = Arc::new(RedbStore::open(&dir.join(name)).expect("open store"));
    keys_for_creations(store, hasher)
}

fn main() {
    let quick = std::env::var_os("APIKEYD_BENCH_QUICK").is_some();
    let lines = env_usize(
        "APIKEYD_BENCH_IMPORT",
        if quick { 20_000 } else { 1_000_000 },
    );
    let singles = env_usize("APIKEYD_BENCH_SINGLE", if quick { 200 } else { 2000 });
    let creates = env_usize("APIKEYD_BENCH_CREATES", if quick { 200 } else { 2000 });
    let passes = env_usize("APIKEYD_BENCH_PASSES", if quick { 1 } else { 3 }).max(1);
    // On the disk, not in /tmp (which may be tmpfs): fsyncs are what is measured.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let hasher = KeyHasher::new(&ServerSecret::from_bytes(vec![0x5a; 32]).expect("server secret"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut out = Vec::new();
    rt.block_on(async {
        // 1. Creations, one client against 8.
        let (mut one, mut eight) = (Vec::new(), Vec::new());
        for pass in 0..passes {
            let keys = fresh_keys(dir.path(), &format!("create{pass}.redb"), &hasher);
            let r = rates(&keys, creates, 8, "").await;
            one.push(r.seq_n as f64 / r.seq_time.as_secs_f64());
            eight.push(r.conc_n as f64 / r.conc_time.as_secs_f64());
            eprintln!("[create] pass {pass}: {:.0} / {:.0} per s", one[pass], eight[pass]);
        }
        let (one, eight) = (median_f64(&one), median_f64(&eight));
        out.push(format!(
            "creations/s (Keys::create, durable before answered), medians of {passes} passes: \
             1 client {one:.0}, 8 clients {eight:.0} ({:.1}x)",
            eight / one
        ));

        // 2. Imports: one at a time, then a whole file.
        let (mut single, mut bulk, mut check) = (Vec::new(), Vec::new(), Vec::new());
        for pass in 0..passes {
            let keys = fresh_keys(dir.path(), &format!("single{pass}.redb"), &hasher);
            let t = Instant::now();
            for i in 0..singles {
                keys.import(
                    &admin(),
                    CreateKey {
                        user: Some(format!("user{}", i % 1000)),
                        name: format!("s{i}"),
                        secret: Some(Secret::new(token(i))),
                        ..CreateKey::default()
                    },
                )
                .await
                .expect("import");
            }
            single.push(singles as f64 / t.elapsed().as_secs_f64());

            let keys = fresh_keys(dir.path(), &format!("bulk{pass}.redb"), &hasher);
            let text = import_file(lines, "b");
            eprintln!("[import] pass {pass}: {lines} lines ...");
            let t = Instant::now();
            let summary = keys
                .import_lines(&admin(), text.clone())
                .await
                .expect("import")
                .expect("file accepted");
            let took = t.elapsed();
            assert_eq!(summary.imported, lines);
            assert_eq!(keys.len(), lines);
            bulk.push(lines as f64 / took.as_secs_f64());
            // The same file again: every token is taken, nothing is written.
            let t = Instant::now();
            let refused = keys
                .import_lines(&admin(), text)
                .await
                .expect("import")
                .expect_err("every line clashes");
            assert_eq!(refused.bad_lines, lines);
            check.push(lines as f64 / t.elapsed().as_secs_f64());
            eprintln!(
                "[import] pass {pass}: single {:.0}/s, file {:.0}/s ({:.1} s), checking alone {:.0}/s",
                single[pass],
                bulk[pass],
                took.as_secs_f64(),
                check[pass]
            );
            drop(keys);
            let _ = std::fs::remove_file(dir.path().join(format!("bulk{pass}.redb")));
            std::thread::sleep(Duration::from_millis(200));
        }
        let (single, bulk, check) = (median_f64(&single), median_f64(&bulk), median_f64(&check));
        out.push(format!(
            "imports/s, medians of {passes} passes: one at a time (Keys::import) {single:.0}; \
             a {lines}-line file (Keys::import_lines) {bulk:.0} ({:.0}x); \
             the file refused whole (checks only) {check:.0}",
            bulk / single
        ));
    });
    println!(
        "import benchmark (redb on disk, {} CPUs)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for line in out {
        println!("  {line}");
    }
}
