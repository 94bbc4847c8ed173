//! Timing, figures and the machine they were taken on.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use apikeyd::keys::secret::KeyHash;

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn median_f64(v: &[f64]) -> f64 {
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
pub(crate) struct Stats {
    pub(crate) median: u64,
    pub(crate) p99: u64,
    p999: u64,
    mean: f64,
}

impl Stats {
    pub(crate) fn of(mut v: Vec<u64>) -> Self {
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

    pub(crate) fn row(&self, label: &str) -> String {
        format!(
            "  {label:<44} median {:>6} ns   p99 {:>6} ns   p99.9 {:>7} ns   mean {:>8.1} ns",
            self.median, self.p99, self.p999, self.mean
        )
    }
}

/// Time each call of `f(i)` for `i in 0..calls` with its own pair of `Instant`s.
pub(crate) fn time_each(calls: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
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
pub(crate) fn time_hot<T>(
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
pub(crate) struct PrefixHasher(u64);

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
pub(crate) fn filled_map<S: std::hash::BuildHasher>(
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
pub(crate) fn text_of(list: &[String]) -> impl FnMut(usize, &mut String) + '_ {
    move |i, buf| {
        buf.clear();
        buf.push_str(&list[i % list.len()]);
    }
}

/// Run `f(i)` `calls` times under one clock: mean nanoseconds per call.
pub(crate) fn time_loop(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..calls {
        f(i);
    }
    nanos(t.elapsed()) as f64 / calls as f64
}

/// Scheduler times (ns) so far of this process's threads whose name starts with
/// `prefix`, from `/proc/self/task/*/schedstat`: `[on CPU, runnable but waiting for
/// a CPU]`. `None` if unavailable.
pub(crate) fn thread_sched_ns(prefix: &str) -> Option<[u64; 2]> {
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

pub(crate) fn machine_line() -> String {
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
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// Print a summary block: its lines, then how long the run took and the load
/// average at its start and end.
pub(crate) fn print_summary(mut out: Vec<String>, started: Instant, load_start: &str) {
    out.push(format!(
        "total bench time: {:.0} s; 1-min load average at start {load_start}, at end {}",
        secs(started.elapsed()),
        loadavg()
    ));
    out.push("=".repeat(84));
    println!("{}", out.join("\n"));
}
