//! Alert-job scale benchmark: the real `apikeyd` binary on a database of N keys, each
//! with a scheduled alert job, delivering to a real SMTP server (mailin-embedded) in
//! this process.
//!
//! `cargo bench --bench alerts` (standalone binary, no harness). Progress goes to
//! stderr; figures go to stdout, ending with a summary block a README can quote.
//!
//! Measured:
//! 1. cold start (spawn → admin socket answers), `APIKEYD_BENCH_STARTS` times;
//! 2. resident memory (VmRSS) after start and after the idle period;
//! 3. idle CPU of the daemon (utime + stime from /proc) over `APIKEYD_BENCH_IDLE_SECS`;
//! 4. lateness of `APIKEYD_BENCH_BURST` alerts falling due uniformly within
//!    `APIKEYD_BENCH_WINDOW_SECS`, each emailed: claim lateness (job `started_at` −
//!    due) and delivery lateness (SMTP server received − due);
//! 5. emails per second with the pooled transport: `APIKEYD_BENCH_EMAILS` alerts
//!    due at the same instant, from the due time to the last message received.
//!
//! Environment (defaults): `APIKEYD_BENCH_KEYS` (1000000), `APIKEYD_BENCH_STARTS` (3),
//! `APIKEYD_BENCH_IDLE_SECS` (60), `APIKEYD_BENCH_BURST` (10000),
//! `APIKEYD_BENCH_WINDOW_SECS` (60), `APIKEYD_BENCH_EMAILS` (5000),
//! `APIKEYD_BENCH_POOL` (8, `[smtp] pool_size`); `APIKEYD_BENCH_DIR` keeps the
//! database and config in that directory (for a look afterwards, e.g. with perf);
//! `APIKEYD_BENCH_LOG` sets the daemon's `RUST_LOG` (default `warn`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apikeyd::alerts::job::{AlertJob, JobKind, KeyAlerting, NotificationRef};
use apikeyd::client::{Client, Endpoint};
use apikeyd::keys::model::{KeyKind, KeyRecord};
use apikeyd::store::{Change, RedbStore, Storage};
use chrono::{DateTime, SecondsFormat, Utc};
use hyper::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

mod common;
// The mail sink the alert tests use too.
#[path = "../tests/it/smtp.rs"]
mod smtp;

use common::env_usize;
use smtp::Smtp;

const APIKEYD: &str = env!("CARGO_BIN_EXE_apikeyd");
const BATCH: usize = 20_000;
const USERS: usize = 100;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------- database

fn build(db: &Path, n: usize) -> (Vec<Uuid>, Duration) {
    let t = Instant::now();
    let store = RedbStore::open(db).unwrap();
    let now = Utc::now();
    let mut ids = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let mut keys = Vec::with_capacity(end - i);
        let mut jobs = Vec::with_capacity(end - i);
        for k in i..end {
            let expires = now + chrono::Duration::days(150) + chrono::Duration::seconds(k as i64);
            let due = expires - chrono::Duration::days(14);
            // Like the HMAC outputs real keys have: uniformly distributed bytes (the
            // verification index hashes by the first eight).
            let hash: [u8; 32] = Sha256::digest((k as u64).to_le_bytes()).into();
            let owner = format!("user{}", k % USERS);
            let mut rec = KeyRecord::new(
                &owner,
                &format!("bench-{k}"),
                &hash,
                KeyKind::Generated,
                now,
            );
            let id = rec.id;
            let job = AlertJob::new(id, JobKind::Notification, "owner-email", due, now);
            rec.scopes = vec!["catalog:read".into()];
            rec.expires_at = Some(expires);
            rec.alerting = KeyAlerting {
                notification: Some(NotificationRef {
                    at: due,
                    source: "owner-email".into(),
                    job_id: job.id,
                }),
                ..KeyAlerting::default()
            };
            // As records written before the secret's length was kept.
            rec.user_secret = Default::default();
            keys.push(rec);
            jobs.push(job);
            ids.push(id);
        }
        store
            .commit(Change {
                put_keys: keys,
                put_jobs: jobs,
                ..Change::default()
            })
            .unwrap();
        i = end;
        if i % 200_000 == 0 || i == n {
            eprintln!(
                "[build] {i}/{n} keys with jobs ({:.1} s)",
                secs(t.elapsed())
            );
        }
    }
    (ids, t.elapsed())
}

fn write_config(dir: &Path, smtp_port: u16, pool: usize) -> PathBuf {
    let mut users = String::new();
    for u in 0..USERS {
        users +=
            &format!("[users.user{u}]\nemail = \"user{u}@example.com\"\ngroups = [\"Sync\"]\n\n");
    }
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
state_dir = "{state}"
admin_socket = "{sock}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "apikeyd <apikeyd@example.com>"
pool_size = {pool}

[alerts]
concurrency = 64

[groups.Sync]
scopes = ["catalog:read"]
create_keys = true

[groups.Admin]
scopes = ["catalog:read", "apikeyd:admin"]
create_keys = true
manage_all_keys = true

[users.admin]
email = "admin@example.com"
groups = ["Admin"]
unix_user = "root"

{users}
"#,
        state = dir.join("state").display(),
        sock = dir.join("apikeyd.sock").display(),
    );
    let path = dir.join("apikeyd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------- the daemon

struct Daemon {
    child: Child,
    client: Client,
}

fn spawn(config: &Path, socket: &Path, rt: &tokio::runtime::Runtime) -> (Daemon, Duration) {
    let t = Instant::now();
    let mut child = Command::new(APIKEYD)
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("APIKEYD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "unexpected: {line:?}");
    let client = Client::new(Endpoint::Unix(socket.to_path_buf()));
    rt.block_on(async {
        while client
            .call(Method::GET, "/v1/admin/whoami", None)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (Daemon { child, client }, t.elapsed())
}

fn stop(mut d: Daemon) {
    let _ = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status();
    let _ = d.child.wait();
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reschedule the notifications of `ids` to the given times through the admin API.
fn reschedule(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    plan: &[(Uuid, DateTime<Utc>)],
) -> Duration {
    let t = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for chunk in plan.chunks(plan.len().div_ceil(4).max(1)) {
            let client = client.clone();
            let chunk = chunk.to_vec();
            set.spawn(async move {
                for (id, at) in chunk {
                    client
                        .call(
                            Method::POST,
                            &format!("/v1/admin/keys/{id}/notify"),
                            Some(&json!({"at": rfc3339_ms(at)})),
                        )
                        .await
                        .unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    t.elapsed()
}

fn wait_received(smtp: &Smtp, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while smtp.count() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} emails arrived",
            smtp.count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn main() {
    let n = env_usize("APIKEYD_BENCH_KEYS", 1_000_000).max(1);
    let starts = env_usize("APIKEYD_BENCH_STARTS", 3).max(1);
    let idle_secs = env_usize("APIKEYD_BENCH_IDLE_SECS", 60);
    let burst = env_usize("APIKEYD_BENCH_BURST", 10_000).min(n / 2).max(1);
    let window = env_usize("APIKEYD_BENCH_WINDOW_SECS", 60).max(1);
    let emails = env_usize("APIKEYD_BENCH_EMAILS", 5_000)
        .min(n - burst)
        .max(1);
    let pool = env_usize("APIKEYD_BENCH_POOL", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // APIKEYD_BENCH_DIR keeps the database for a look afterwards (e.g. perf).
    let tmp = tempfile::tempdir().unwrap();
    let dir_path = std::env::var_os("APIKEYD_BENCH_DIR")
        .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    let _ = std::fs::remove_dir_all(dir_path.join("state"));
    struct Dir(PathBuf);
    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    let dir = Dir(dir_path);
    let smtp = Smtp::with_threads(32);
    let (ids, build_time) = build(&dir.path().join("state/apikeyd.redb"), n);
    let db_bytes = std::fs::metadata(dir.path().join("state/apikeyd.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let config = write_config(dir.path(), smtp.port, pool);
    let socket = dir.path().join("apikeyd.sock");

    // 1. Cold starts.
    let mut start_times = Vec::new();
    let mut start_cpu = Vec::new();
    let mut rss_start = Vec::new();
    let ticks = clock_ticks();
    let mut daemon = None;
    for i in 0..starts {
        let (d, t) = spawn(&config, &socket, &rt);
        let rss = proc_status(d.child.id(), "VmRSS:").unwrap_or(0);
        let cpu = cpu_ticks(d.child.id()) as f64 / ticks;
        eprintln!(
            "[start {}] {:.2} s ({cpu:.2} s of CPU), VmRSS {} MB",
            i + 1,
            secs(t),
            rss / 1024
        );
        start_times.push(secs(t));
        start_cpu.push(cpu);
        rss_start.push(rss as f64 / 1024.0);
        if i + 1 == starts {
            daemon = Some(d);
        } else {
            stop(d);
        }
    }
    let d = daemon.unwrap();
    let pid = d.child.id();

    // 2-3. Idle CPU and memory.
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs as u64));
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / ticks / secs(t0.elapsed()).max(1e-9);
    let rss_idle = proc_status(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    eprintln!(
        "[idle] {:.3}% of a core over {idle_secs} s; VmRSS {rss_idle:.0} MB",
        idle_cpu * 100.0
    );

    // 4. Lateness: `burst` alerts due uniformly within `window` seconds.
    let lead = Duration::from_secs(20 + (burst as u64) / 500);
    let first_due = Utc::now() + chrono::Duration::from_std(lead).unwrap();
    let step = window as f64 / burst as f64;
    let plan: Vec<(Uuid, DateTime<Utc>)> = ids[..burst]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                *id,
                first_due + chrono::Duration::microseconds((i as f64 * step * 1e6) as i64),
            )
        })
        .collect();
    let resched = reschedule(&rt, &d.client, &plan);
    eprintln!(
        "[burst] {burst} notifications rescheduled through the admin API in {:.1} s ({:.0}/s)",
        secs(resched),
        burst as f64 / secs(resched)
    );
    assert!(
        Utc::now() < first_due,
        "rescheduling took longer than the lead time"
    );
    let before = smtp.count();
    wait_received(
        &smtp,
        before + burst,
        Duration::from_secs(window as u64 + 120),
    );
    std::thread::sleep(Duration::from_millis(500));
    // One listing of the Completed jobs gives both the due times (by Message-ID, for
    // the SMTP receipt times) and the claim lateness.
    // A filtered page examines a bounded number of jobs, so it may hold fewer than
    // asked (even none) with a cursor: follow it to the end.
    let completed: Vec<Value> = rt.block_on(async {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/admin/jobs?state=Completed&limit={}", burst * 2);
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let v = d.client.call(Method::GET, &path, None).await.unwrap();
            all.extend(v["jobs"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break all,
            }
        }
    });
    let due_of: HashMap<String, DateTime<Utc>> = completed
        .iter()
        .filter_map(|j| {
            let origin = j["origin"].as_str()?;
            Some((
                format!("<alert-{origin}@apikeyd>"),
                parse_time(&j["due_at"])?,
            ))
        })
        .collect();
    let claim: Vec<f64> = completed
        .iter()
        .filter_map(|j| {
            let late = parse_time(&j["started_at"])? - parse_time(&j["due_at"])?;
            Some(late.num_microseconds()? as f64 / 1e6)
        })
        .collect();
    let mut delivered: Vec<f64> = smtp
        .mails_since(before)
        .iter()
        .filter_map(|m| {
            let due = due_of.get(&m.header("Message-ID").unwrap_or_default())?;
            Some((m.received_at - *due).num_microseconds()? as f64 / 1e6)
        })
        .collect();
    delivered.sort_by(f64::total_cmp);
    let mut claim = claim;
    claim.sort_by(f64::total_cmp);
    assert_eq!(claim.len(), burst, "every burst job Completed");
    eprintln!(
        "[burst] claim lateness p50 {:.3} s p99 {:.3} s max {:.3} s; delivered p50 {:.3} s p99 {:.3} s max {:.3} s ({} matched)",
        percentile(&claim, 0.5),
        percentile(&claim, 0.99),
        claim.last().copied().unwrap_or(f64::NAN),
        percentile(&delivered, 0.5),
        percentile(&delivered, 0.99),
        delivered.last().copied().unwrap_or(f64::NAN),
        delivered.len()
    );

    // 5. Emails per second: `emails` alerts due at one instant.
    let due = Utc::now() + chrono::Duration::seconds(15 + (emails as i64) / 500);
    let plan: Vec<(Uuid, DateTime<Utc>)> = ids[burst..burst + emails]
        .iter()
        .map(|id| (*id, due))
        .collect();
    reschedule(&rt, &d.client, &plan);
    assert!(
        Utc::now() < due,
        "rescheduling took longer than the lead time"
    );
    let before = smtp.count();
    wait_received(&smtp, before + emails, Duration::from_secs(600));
    let last = smtp
        .mails_since(before)
        .iter()
        .map(|m| m.received_at)
        .max()
        .unwrap();
    let span = (last - due).num_microseconds().unwrap() as f64 / 1e6;
    let rate = emails as f64 / span;
    eprintln!("[emails] {emails} due at once delivered in {span:.2} s: {rate:.0} emails/s");
    let rss_end = proc_status(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    let rss_peak = proc_status(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    stop(d);

    println!("apikeyd alert benchmark: {n} keys, each with a scheduled alert job");
    println!(
        "  database build: {:.1} s, {:.0} MB",
        secs(build_time),
        db_bytes as f64 / 1e6
    );
    println!(
        "  cold start (spawn -> admin socket answers), median of {starts}: {:.2} s (all: {})",
        median(&start_times),
        start_times
            .iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  CPU time to ready (independent of other load), median: {:.2} s; load average at the end: {}",
        median(&start_cpu),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  in-memory index per key: a {}-byte verification slot and a {}-byte entry (plus its name), not the {}-byte stored record",
        apikeyd::keys::index_bytes_per_key().0,
        apikeyd::keys::index_bytes_per_key().1,
        std::mem::size_of::<KeyRecord>()
    );
    println!(
        "  resident memory: {:.0} MB after start (median), {rss_idle:.0} MB after idle, {rss_end:.0} MB at the end, peak {rss_peak:.0} MB",
        median(&rss_start)
    );
    println!(
        "  idle CPU over {idle_secs} s: {:.3}% of one core",
        idle_cpu * 100.0
    );
    println!(
        "  lateness, {burst} alerts due within {window} s, emailed: claim p50 {:.3} s, p99 {:.3} s; received by SMTP p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&claim, 0.5),
        percentile(&claim, 0.99),
        percentile(&delivered, 0.5),
        percentile(&delivered, 0.99),
        delivered.last().copied().unwrap_or(f64::NAN)
    );
    println!("  emails/s, pooled transport (pool_size {pool}), {emails} due at once: {rate:.0}");
}
