//! Crash storm (issue 13, part 1): the real daemon under a mixed workload over the
//! admin socket (create, import, edit, rotate with and without grace, disable,
//! enable, remove, notify, cancel a notification with `key notify --cancel` or
//! `job cancel`) and a verification load, killed with SIGKILL at random moments
//! and restarted, with the invariants checked after every restart:
//!
//! - the database opens every time;
//! - every change acknowledged to the client is there, and none is undone (a
//!   change cut short by the kill is there whole or not at all);
//! - every key's verification agrees with `key show` (its current secret works
//!   exactly when it is active; a secret rotated away without grace never works),
//!   and `key show` and `job show` agree with the model's notification;
//! - the audit trail has one entry per change, key by key.
//!
//! `APIKEYD_STORM_KILLS` kills (20 here; `tests/crash-storm.sh` runs 200), with
//! the seed printed (`APIKEYD_STORM_SEED` replays it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::util::{TestDaemon, DEFAULT_POLICY};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Enabled,
    Disabled,
    Removed,
}

impl State {
    /// How `key show` gives it.
    fn shown(self) -> &'static str {
        match self {
            State::Enabled => "active",
            State::Disabled => "disabled",
            State::Removed => "removed",
        }
    }
}

/// What the model knows of one key.
#[derive(Debug, Clone)]
struct Key {
    id: Option<String>,
    owner: &'static str,
    name: String,
    /// The secret that works while the key is active; `None` once a rotation's
    /// answer was lost (the new secret was never seen).
    secret: Option<String>,
    /// Secrets that must never work again (rotated away without grace).
    dead: Vec<String>,
    state: State,
    description: String,
    /// Its notification time (`notify_at` as `key show` gives it), if any.
    notify: Option<String>,
    /// The job of that notification when it is known to wait far ahead: `job
    /// cancel` is sure to find it Scheduled.
    far_job: Option<String>,
    /// Audit entries the changes made so far must have written.
    audit: usize,
    /// What happened to it, for the failure messages.
    history: Vec<String>,
}

/// A change whose answer the kill cut off: applied whole or not at all.
#[derive(Debug, Clone)]
enum Doubt {
    /// Created (generated key: its secret is lost if it was) or imported.
    Created {
        index: usize,
    },
    State {
        index: usize,
        to: State,
    },
    Described {
        index: usize,
        to: String,
    },
    Rotated {
        index: usize,
    },
    /// `key notify --at` (rescheduled in place or a new job).
    Notified {
        index: usize,
        to: String,
    },
    /// `key notify --cancel` or `job cancel`.
    Cancelled {
        index: usize,
    },
}

struct Storm {
    d: TestDaemon,
    keys: Vec<Key>,
    rng: StdRng,
    next_name: usize,
    changes: usize,
    doubts: usize,
}

/// `apikeyctl` that ran to its end: `Some(stdout)` on success, `None` on a
/// refusal (the caller decides whether that is right).
enum Outcome {
    Done(Value),
    Refused(String),
    /// The daemon died under it.
    Cut,
}

impl Storm {
    fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.d.pid()));
        // A zombie is dead too: SIGKILL has landed, the test has not reaped it.
        stat.is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let mut a = args.to_vec();
        // The commands that answer with the key (and its secret) say it in JSON.
        if ["create", "import", "rotate", "notify"].contains(&args[1]) {
            a.push("--json");
        }
        let out = self.d.ctl(&a);
        if out.status.success() {
            return Outcome::Done(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null));
        }
        // SIGKILL closes the daemon's sockets before /proc shows it dead: a
        // connection refused or cut is the kill when the process dies right after.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.alive() {
            return Outcome::Cut;
        }
        Outcome::Refused(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// One random change; `Some(doubt)` when the kill cut its answer off.
    fn step(&mut self) -> Option<Doubt> {
        let live: Vec<usize> = (0..self.keys.len())
            .filter(|i| self.keys[*i].id.is_some() && self.keys[*i].state != State::Removed)
            .collect();
        let pick = self.rng.gen_range(0..13);
        if live.is_empty() || pick < 2 {
            return self.create(pick == 1);
        }
        let index = live[self.rng.gen_range(0..live.len())];
        let id = self.keys[index].id.clone().unwrap();
        let state = self.keys[index].state;
        let (args, doubt): (Vec<String>, Doubt) = match pick {
            2 | 3 => {
                let to = if state == State::Enabled {
                    State::Disabled
                } else {
                    State::Enabled
                };
                let verb = if to == State::Enabled {
                    "enable"
                } else {
                    "disable"
                };
                (
                    vec!["key".into(), verb.into(), id],
                    Doubt::State { index, to },
                )
            }
            4 => (
                vec!["key".into(), "remove".into(), id],
                Doubt::State {
                    index,
                    to: State::Removed,
                },
            ),
            5 | 6 => {
                let to = format!("described {}", self.rng.gen::<u32>());
                (
                    vec![
                        "key".into(),
                        "edit".into(),
                        id,
                        "--description".into(),
                        to.clone(),
                    ],
                    Doubt::Described { index, to },
                )
            }
            7..=9 => {
                let mut args = vec!["key".into(), "rotate".into(), id];
                if pick == 9 {
                    args.extend(["--grace".into(), "p1d".into()]);
                }
                (args, Doubt::Rotated { index })
            }
            12 if self.keys[index].notify.is_some() => {
                // `job cancel` needs the job's id and a job sure not to be running.
                let args = match self.keys[index].far_job.clone() {
                    Some(job) if self.rng.gen_bool(0.5) => vec!["job".into(), "cancel".into(), job],
                    _ => vec!["key".into(), "notify".into(), id, "--cancel".into()],
                };
                (args, Doubt::Cancelled { index })
            }
            _ => {
                let to = self.notify_time(index);
                (
                    vec!["key".into(), "notify".into(), id, "--at".into(), to.clone()],
                    Doubt::Notified { index, to },
                )
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.run(&args) {
            Outcome::Done(v) => {
                self.changes += 1;
                let k = &mut self.keys[index];
                k.audit += 1;
                k.history.push(format!("{:?} acknowledged", &args[1..]));
                match doubt {
                    Doubt::State { to, .. } => {
                        k.state = to;
                        if to == State::Removed {
                            k.notify = None;
                            k.far_job = None;
                        }
                    }
                    Doubt::Notified { to, .. } => {
                        assert_eq!(v["notify_at"], to.as_str(), "notify answered {v}");
                        k.far_job = v["alert_job"].as_str().map(str::to_owned);
                        k.notify = Some(to);
                    }
                    Doubt::Cancelled { .. } => {
                        k.notify = None;
                        k.far_job = None;
                    }
                    Doubt::Described { to, .. } => k.description = to,
                    Doubt::Rotated { .. } => {
                        let new = v["key"].as_str().map(str::to_owned);
                        assert!(new.is_some(), "rotate answered {v}");
                        if !args.contains(&"--grace") {
                            k.dead.extend(k.secret.take());
                        }
                        k.secret = new;
                    }
                    Doubt::Created { .. } => unreachable!(),
                }
                None
            }
            Outcome::Refused(e) => panic!("{args:?} refused: {e}"),
            Outcome::Cut => {
                self.keys[index]
                    .history
                    .push(format!("{:?} cut short", &args[1..]));
                Some(doubt)
            }
        }
    }

    fn create(&mut self, import: bool) -> Option<Doubt> {
        let owner = ["alice", "bob"][self.rng.gen_range(0..2)];
        let name = format!("storm-{}", self.next_name);
        self.next_name += 1;
        let index = self.keys.len();
        let token = format!(
            "storm-import-{}-{:016x}{:016x}",
            self.next_name,
            self.rng.gen::<u64>(),
            self.rng.gen::<u64>()
        );
        let outcome = if import {
            let file = self.d.path(&format!("{name}.token"));
            std::fs::write(&file, &token).unwrap();
            let file = file.display().to_string();
            self.run(&[
                "key",
                "import",
                "--user",
                owner,
                "--name",
                &name,
                "--secret-file",
                &file,
            ])
        } else {
            self.run(&["key", "create", "--user", owner, "--name", &name])
        };
        let mut key = Key {
            id: None,
            owner,
            name,
            secret: import.then_some(token),
            dead: Vec::new(),
            state: State::Enabled,
            description: String::new(),
            notify: None,
            far_job: None,
            audit: 0,
            history: vec![if import { "import" } else { "create" }.to_owned()],
        };
        match outcome {
            Outcome::Done(v) => {
                self.changes += 1;
                key.id = Some(v["id"].as_str().unwrap().to_owned());
                if !import {
                    key.secret = Some(v["key"].as_str().unwrap().to_owned());
                }
                key.audit = 1;
                key.notify = v["notify_at"].as_str().map(str::to_owned);
                key.far_job = v["alert_job"].as_str().map(str::to_owned);
                self.keys.push(key);
                None
            }
            Outcome::Refused(e) => panic!("creating {} refused: {e}", key.name),
            Outcome::Cut => {
                // Until the restart shows whether it was written.
                if !import {
                    key.secret = None;
                }
                self.keys.push(key);
                Some(Doubt::Created { index })
            }
        }
    }

    fn show(&self, id: &str) -> Value {
        self.d.json(&["key", "show", id])
    }

    /// After a restart: settle the change the kill cut off by what the daemon
    /// shows (whole or not at all), then check every key.
    fn settle(&mut self, doubt: Option<Doubt>) {
        let Some(doubt) = doubt else { return };
        self.doubts += 1;
        match doubt {
            Doubt::Created { index } => {
                let k = &self.keys[index];
                let found: Vec<Value> = self
                    .d
                    .keys()
                    .into_iter()
                    .filter(|v| v["owner"] == k.owner && v["name"] == k.name.as_str())
                    .collect();
                assert!(found.len() <= 1, "{found:?}");
                let k = &mut self.keys[index];
                if let Some(v) = found.first() {
                    k.id = Some(v["id"].as_str().unwrap().to_owned());
                    k.notify = v["notify_at"].as_str().map(str::to_owned);
                    k.far_job = v["alert_job"].as_str().map(str::to_owned);
                    k.audit = 1;
                    self.changes += 1;
                } else {
                    // Not written: nothing to check but that it is absent.
                    k.state = State::Removed;
                }
            }
            Doubt::State { index, to } => {
                let id = self.keys[index].id.clone().unwrap();
                let shown = self.show(&id)["status"].as_str().unwrap().to_owned();
                let k = &mut self.keys[index];
                if shown == to.shown() {
                    k.state = to;
                    if to == State::Removed {
                        k.notify = None;
                        k.far_job = None;
                    }
                    k.audit += 1;
                    self.changes += 1;
                } else {
                    assert_eq!(
                        shown,
                        k.state.shown(),
                        "{} cut short: neither before nor after",
                        k.name
                    );
                }
            }
            Doubt::Described { index, to } => {
                let id = self.keys[index].id.clone().unwrap();
                let shown = self.show(&id)["description"].as_str().unwrap().to_owned();
                let k = &mut self.keys[index];
                if shown == to {
                    k.description = to;
                    k.audit += 1;
                    self.changes += 1;
                } else {
                    assert_eq!(
                        shown, k.description,
                        "{} cut short: neither before nor after",
                        k.name
                    );
                }
            }
            Doubt::Rotated { index } => {
                let id = self.keys[index].id.clone().unwrap();
                let audit = self.audit_of(&id);
                let k = &mut self.keys[index];
                if audit == k.audit + 1 {
                    // Rotated: the new secret was never seen. The old one may
                    // still work (a grace) or not: it is no longer checked.
                    k.secret = None;
                    k.audit += 1;
                    self.changes += 1;
                } else {
                    assert_eq!(audit, k.audit, "{}: {audit} audit entries", k.name);
                }
            }
            Doubt::Notified { index, to } => {
                let v = self.show(self.keys[index].id.as_deref().unwrap());
                let k = &mut self.keys[index];
                if v["notify_at"] == to.as_str() {
                    k.notify = Some(to);
                    k.far_job = v["alert_job"].as_str().map(str::to_owned);
                    k.audit += 1;
                    self.changes += 1;
                } else {
                    assert_eq!(
                        v["notify_at"].as_str(),
                        k.notify.as_deref(),
                        "{} cut short: neither before nor after",
                        k.name
                    );
                }
            }
            Doubt::Cancelled { index } => {
                let v = self.show(self.keys[index].id.as_deref().unwrap());
                let k = &mut self.keys[index];
                if v["notify_at"].is_null() {
                    k.notify = None;
                    k.far_job = None;
                    k.audit += 1;
                    self.changes += 1;
                } else {
                    assert_eq!(
                        v["notify_at"].as_str(),
                        k.notify.as_deref(),
                        "{} cut short: neither before nor after",
                        k.name
                    );
                }
            }
        }
    }

    /// A notification time for key `index` that differs from its current one:
    /// days ahead, before the key expires (p6m here).
    fn notify_time(&mut self, index: usize) -> String {
        loop {
            let at = chrono::Utc::now()
                + chrono::Duration::seconds(self.rng.gen_range(86_400..30 * 86_400));
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if self.keys[index].notify.as_deref() != Some(at.as_str()) {
                return at;
            }
        }
    }

    fn audit_of(&self, id: &str) -> usize {
        self.d.json(&["audit", "--key", id, "--limit", "10000"])["entries"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Whether `secret` verifies (apikeyctl exits 0 only for VALID), and the answer.
    fn verify(&self, secret: &str) -> (bool, String) {
        let out = self.d.ctl(&["verify", secret]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    }

    /// Every key agrees with the model: state, description, secrets, audit.
    fn check(&self, sample: usize, rng: &mut StdRng) {
        let known: Vec<&Key> = self.keys.iter().filter(|k| k.id.is_some()).collect();
        let listed: HashMap<String, Value> = self
            .d
            .keys()
            .into_iter()
            .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
            .collect();
        for k in &known {
            let id = k.id.as_deref().unwrap();
            if k.state != State::Removed {
                assert!(listed.contains_key(id), "{} ({id}) is gone", k.name);
            }
        }
        let picked: Vec<&&Key> = if sample >= known.len() {
            known.iter().collect()
        } else {
            (0..sample)
                .map(|_| &known[rng.gen_range(0..known.len())])
                .collect()
        };
        for k in picked {
            let id = k.id.as_deref().unwrap();
            let v = self.show(id);
            assert_eq!(v["status"], k.state.shown(), "{}: {v}", k.name);
            if k.state != State::Removed {
                assert_eq!(v["description"], k.description.as_str(), "{}", k.name);
            }
            assert_eq!(
                v["notify_at"].as_str(),
                k.notify.as_deref(),
                "{}: notification; {:?}",
                k.name,
                k.history
            );
            if let Some(at) = &k.notify {
                let job = self
                    .d
                    .json(&["job", "show", v["alert_job"].as_str().unwrap()]);
                // `key show` gives whole seconds; the job keeps what it was given.
                assert_eq!(
                    seconds(&job["due_at"]),
                    seconds(&Value::from(at.as_str())),
                    "{}: {job}",
                    k.name
                );
                if k.far_job.is_some() {
                    assert_eq!(job["state"], "Scheduled", "{}: {job}", k.name);
                }
            }
            if let Some(secret) = &k.secret {
                let (valid, answer) = self.verify(secret);
                assert_eq!(
                    valid,
                    k.state == State::Enabled,
                    "{} ({:?}): its secret answers {answer}; {:?}",
                    k.name,
                    k.state,
                    k.history
                );
            }
            for dead in &k.dead {
                let (valid, answer) = self.verify(dead);
                assert!(
                    !valid,
                    "{}: a secret rotated away works again ({answer})",
                    k.name
                );
            }
            assert_eq!(self.audit_of(id), k.audit, "{}: audit entries", k.name);
        }
    }
}

/// One verification over HTTP, its answer read and not judged; false when the
/// daemon was not there (it restarts all the time here).
fn poke(addr: std::net::SocketAddr, secret: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let head = format!(
        "GET /v1/auth HTTP/1.1\r\nHost: storm\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 ")
}

/// An RFC 3339 time as whole seconds since the epoch.
fn seconds(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_storm_of_kills_loses_no_acknowledged_change() {
    let kills = env_or("APIKEYD_STORM_KILLS", 20);
    let seed = env_or("APIKEYD_STORM_SEED", rand::random());
    eprintln!("crash storm: {kills} kills, APIKEYD_STORM_SEED={seed}");
    let mut storm = Storm {
        // The checks verify dead secrets and disabled keys on purpose: no abuse
        // limit on failed verifications to wait out.
        d: TestDaemon::start_with(DEFAULT_POLICY, "\n[rate_limit]\nfailures_per_minute = 0\n"),
        keys: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
        next_name: 0,
        changes: 0,
        doubts: 0,
    };
    let mut check_rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // Verifications all along, through HTTP: the daemon's port changes at each
    // start, so the load follows it; answers are checked by `check`.
    let target = Arc::new(Mutex::new(storm.d.addr));
    let secrets: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (target, secrets, stop) = (target.clone(), secrets.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let secret = secrets.lock().unwrap().last().cloned();
                let addr = *target.lock().unwrap();
                if let Some(s) = secret {
                    sent += u64::from(poke(addr, &s));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    let started = Instant::now();
    for round in 0..kills {
        let pid = storm.d.pid();
        let after = Duration::from_millis(storm.rng.gen_range(30..400));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let mut doubt = None;
        while doubt.is_none() {
            doubt = storm.step();
            if !storm.alive() {
                break;
            }
            if let Some(s) = storm.keys.last().and_then(|k| k.secret.clone()) {
                secrets.lock().unwrap().push(s);
            }
        }
        killer.join().unwrap();
        storm.d.kill9();
        // The database opens every time.
        storm.d.spawn(&[]);
        *target.lock().unwrap() = storm.d.addr;
        storm.settle(doubt);
        let sample = if round + 1 == kills { usize::MAX } else { 8 };
        storm.check(sample, &mut check_rng);
    }
    stop.store(true, Ordering::Relaxed);
    let verifications = load.join().unwrap();
    eprintln!(
        "crash storm: {kills} kills survived in {:.0?}; {} changes acknowledged or settled, {} cut short by a kill, {} keys, {verifications} verifications sent",
        started.elapsed(),
        storm.changes,
        storm.doubts,
        storm.keys.iter().filter(|k| k.id.is_some()).count()
    );
    assert!(
        storm.changes > usize::try_from(kills).unwrap(),
        "the workload did too little"
    );
}
