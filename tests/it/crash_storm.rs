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
//! - the audit trail has one entry per change, key by key (beside them, only the
//!   daemon's own `notify-replace` for a delivery a kill cut off);
//! - every alert that fell due reaches a real SMTP server (in this process, so it
//!   outlives the daemon) at least once, to the key's owner; a notification set
//!   seconds ahead falls due unless a change supersedes it before its time (or
//!   within seconds of it, when it may or may not have started). An alert that
//!   reaches the server twice (same Message-ID) needs a kill inside the send
//!   before and an attempt the daemon never saw end (a job replaced at a start
//!   on redb, taken over after its lease on PostgreSQL): the server answers
//!   200 ms after taking a message, so some kills land there, and the repeats
//!   are counted.
//!
//! The same storm runs on redb and on PostgreSQL (a private server that is not
//! killed; without PostgreSQL installed that test fails, naming the package, as
//! the other PostgreSQL tests do). `APIKEYD_STORM_KILLS` kills (20 on redb and 10
//! on PostgreSQL here; `tests/crash-storm.sh` runs 200), with the seed printed
//! (`APIKEYD_STORM_SEED` replays it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::alerts::{alert_tables, shipped_plugins, time};
use crate::pg_server::TestServer;
use crate::postgres::on_postgres_with;
use crate::smtp::{Mail, Smtp};
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
    /// The alert (in `Storm::alerts`) of that notification when it falls due
    /// during the storm.
    alert: Option<usize>,
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
        grace: bool,
    },
    /// `key notify --at` (rescheduled in place or a new job).
    Notified {
        index: usize,
        to: String,
        near: bool,
    },
    /// `key notify --cancel` or `job cancel`.
    Cancelled {
        index: usize,
    },
}

/// A notification set to fall due seconds after it was set.
#[derive(Debug)]
struct Alert {
    key: usize,
    at: DateTime<Utc>,
    /// The job the notify answered with (or the key showed after the restart).
    job: String,
    /// The job it continues, which names the email (`Message-ID`), once read.
    origin: Option<String>,
    /// Whether it must be delivered: not when a change superseded it around
    /// its due time (before: it never fell due; at it: it may or may not have).
    due: bool,
}

/// How long after an alert's due time a change that supersedes it leaves it due:
/// the dispatcher had that long to start it.
const DUE_MARGIN: i64 = 5;

impl Doubt {
    fn index(&self) -> usize {
        match self {
            Doubt::Created { index }
            | Doubt::State { index, .. }
            | Doubt::Described { index, .. }
            | Doubt::Rotated { index, .. }
            | Doubt::Notified { index, .. }
            | Doubt::Cancelled { index } => *index,
        }
    }
}

struct Storm {
    d: TestDaemon,
    smtp: Smtp,
    keys: Vec<Key>,
    alerts: Vec<Alert>,
    rng: StdRng,
    next_name: usize,
    changes: usize,
    doubts: usize,
    /// When the last change was sent.
    sent: DateTime<Utc>,
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

    fn run(&mut self, args: &[&str]) -> Outcome {
        let mut a = args.to_vec();
        // The commands that answer with the key (and its secret) say it in JSON.
        if ["create", "import", "rotate", "notify"].contains(&args[1]) {
            a.push("--json");
        }
        self.sent = Utc::now();
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
        // Mostly let an alert about to fall due do so (an edit instead of the
        // change that would supersede it), so that many do.
        let pending = self.keys[index].alert.is_some_and(|a| {
            Utc::now() < self.alerts[a].at + chrono::Duration::seconds(DUE_MARGIN)
        });
        let pick = match pick {
            4 | 10.. if pending && self.rng.gen_bool(0.8) => 5,
            _ => pick,
        };
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
                let grace = pick == 9;
                (args, Doubt::Rotated { index, grace })
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
                let near = self.rng.gen_bool(0.5);
                let to = self.notify_time(index, near);
                (
                    vec!["key".into(), "notify".into(), id, "--at".into(), to.clone()],
                    Doubt::Notified { index, to, near },
                )
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.run(&args) {
            Outcome::Done(v) => {
                self.keys[index]
                    .history
                    .push(format!("{:?} acknowledged", &args[1..]));
                self.took_effect(doubt, &v, true);
                None
            }
            // A notification seconds ahead that took longer than that to reach
            // the daemon (a loaded machine): refused, nothing changed.
            Outcome::Refused(e)
                if matches!(doubt, Doubt::Notified { near: true, .. })
                    && e.contains("is not in the future") =>
            {
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
            alert: None,
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
            doubt => {
                let index = doubt.index();
                let id = self.keys[index].id.clone().unwrap();
                let v = self.show(&id);
                let k = &self.keys[index];
                let notify = || Value::from(k.notify.as_deref());
                // What the daemon shows, after the change, and before it.
                let (shown, after, before) = match &doubt {
                    Doubt::State { to, .. } => (
                        v["status"].clone(),
                        Value::from(to.shown()),
                        Value::from(k.state.shown()),
                    ),
                    Doubt::Described { to, .. } => (
                        v["description"].clone(),
                        Value::from(to.as_str()),
                        Value::from(k.description.as_str()),
                    ),
                    Doubt::Notified { to, .. } => {
                        (v["notify_at"].clone(), Value::from(to.as_str()), notify())
                    }
                    Doubt::Cancelled { .. } => (v["notify_at"].clone(), Value::Null, notify()),
                    Doubt::Rotated { .. } => (
                        Value::from(self.audit_of(&id)),
                        Value::from(k.audit + 1),
                        Value::from(k.audit),
                    ),
                    Doubt::Created { .. } => unreachable!(),
                };
                if shown == after {
                    self.took_effect(doubt, &v, false);
                } else {
                    assert_eq!(
                        shown, before,
                        "{} cut short: neither before nor after; {:?}",
                        k.name, k.history
                    );
                }
            }
        }
    }

    /// Change `doubt` of a key took effect: the model follows. `v` is the key as
    /// the change `answered`, or as shown after the restart when the kill cut the
    /// answer off.
    fn took_effect(&mut self, doubt: Doubt, v: &Value, answered: bool) {
        let index = doubt.index();
        self.changes += 1;
        if matches!(
            doubt,
            Doubt::Notified { .. }
                | Doubt::Cancelled { .. }
                | Doubt::State {
                    to: State::Removed,
                    ..
                }
        ) {
            self.supersede(index);
        }
        if let Doubt::Notified { near: true, to, .. } = &doubt {
            self.fall_due(index, to, v);
        }
        let k = &mut self.keys[index];
        k.audit += 1;
        match doubt {
            Doubt::State { to, .. } => {
                k.state = to;
                if to == State::Removed {
                    k.notify = None;
                    k.far_job = None;
                }
            }
            Doubt::Described { to, .. } => k.description = to,
            Doubt::Rotated { grace, .. } => {
                // Cut off, the new secret was never seen; the old one may still
                // work (a grace) or not: neither is checked any more.
                let new = v["key"].as_str().map(str::to_owned);
                assert!(new.is_some() || !answered, "rotate answered {v}");
                let old = k.secret.take();
                if answered && !grace {
                    k.dead.extend(old);
                }
                k.secret = new;
            }
            Doubt::Notified { to, near, .. } => {
                assert_eq!(v["notify_at"], to.as_str(), "notify answered {v}");
                k.far_job = (!near)
                    .then(|| v["alert_job"].as_str().map(str::to_owned))
                    .flatten();
                k.notify = Some(to);
            }
            Doubt::Cancelled { .. } => {
                k.notify = None;
                k.far_job = None;
            }
            Doubt::Created { .. } => unreachable!(),
        }
    }

    /// A notification time for key `index` that differs from its current one:
    /// `near`, seconds ahead (it falls due during the storm), else days ahead,
    /// before the key expires (p6m here).
    fn notify_time(&mut self, index: usize, near: bool) -> String {
        loop {
            let ahead = if near {
                self.rng.gen_range(2..=4)
            } else {
                self.rng.gen_range(86_400..30 * 86_400)
            };
            let at = Utc::now() + chrono::Duration::seconds(ahead);
            let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if self.keys[index].notify.as_deref() != Some(at.as_str()) {
                return at;
            }
        }
    }

    /// Key `index`'s notification set `to` seconds ahead (`v` the key as answered
    /// or shown) is an alert that will fall due.
    fn fall_due(&mut self, index: usize, to: &str, v: &Value) {
        self.keys[index].alert = Some(self.alerts.len());
        self.alerts.push(Alert {
            key: index,
            at: time(&Value::from(to)),
            job: v["alert_job"].as_str().unwrap().to_owned(),
            origin: None,
            due: true,
        });
    }

    /// A change to key `index`'s notification (or its removal) took effect: its
    /// alert still falls due only if the change came well after its due time.
    fn supersede(&mut self, index: usize) {
        if let Some(a) = self.keys[index].alert.take() {
            let alert = &mut self.alerts[a];
            alert.due = self.sent > alert.at + chrono::Duration::seconds(DUE_MARGIN);
        }
    }

    /// The job alert `a` continues (its email's Message-ID names it), read once
    /// (`job show` of the job the notify gave).
    fn origin(&mut self, a: usize) -> String {
        if self.alerts[a].origin.is_none() {
            let job = self.d.json(&["job", "show", &self.alerts[a].job]);
            self.alerts[a].origin = Some(job["origin"].as_str().unwrap().to_owned());
        }
        self.alerts[a].origin.clone().unwrap()
    }

    /// The mails received, by the job their Message-ID names.
    fn mails(&self) -> HashMap<String, Vec<Mail>> {
        let mut by_origin: HashMap<String, Vec<Mail>> = HashMap::new();
        for m in self.smtp.mails() {
            let id = m.header("Message-ID").unwrap_or_default();
            let origin = id
                .strip_prefix("<alert-")
                .and_then(|r| r.strip_suffix("@apikeyd>"))
                .unwrap_or_else(|| panic!("a mail that is no alert: {}", m.data));
            by_origin.entry(origin.to_owned()).or_default().push(m);
        }
        by_origin
    }

    /// Every alert due by `by` has reached the SMTP server, to its owner.
    fn delivered_by(&mut self, by: DateTime<Utc>) -> Result<(), String> {
        let mails = self.mails();
        for a in 0..self.alerts.len() {
            if !self.alerts[a].due || self.alerts[a].at > by {
                continue;
            }
            let origin = self.origin(a);
            let k = &self.keys[self.alerts[a].key];
            let Some(got) = mails.get(&origin) else {
                return Err(format!(
                    "the alert of {} due at {} (job {origin}) never reached the SMTP server; {:?}",
                    k.name, self.alerts[a].at, k.history
                ));
            };
            let owner = format!("{}@example.com", k.owner);
            assert!(
                got.iter().all(|m| m.to == [owner.as_str()]),
                "{}: {got:?}",
                k.name
            );
        }
        Ok(())
    }

    /// How many attempts to deliver the alert `origin` of key `key` the daemon
    /// never saw end: those of jobs replaced at a start (redb), or taken over
    /// when their lease ran out (PostgreSQL), where the attempt is counted again.
    /// Every other attempt ended Completed: the SMTP server never fails one.
    fn attempts_cut_off(&self, key: &str, origin: &str) -> usize {
        let jobs = self
            .d
            .json(&["job", "list", "--key", key, "--limit", "1000"])["jobs"]
            .as_array()
            .unwrap()
            .clone();
        let mine = jobs.iter().filter(|j| j["origin"] == origin);
        let (attempts, completed) = mine.fold((0, 0), |(n, c), j| {
            (
                n + j["attempts"].as_u64().unwrap(),
                c + u64::from(j["state"] == "Completed"),
            )
        });
        usize::try_from(attempts - completed).unwrap()
    }

    /// Audit entries of key `id`: those of the workload's changes, and those the
    /// daemon wrote itself (a delivery cut off by a kill, replaced at the start).
    fn audit_of(&self, id: &str) -> usize {
        let all = self.d.json(&["audit", "--key", id, "--limit", "10000"])["entries"]
            .as_array()
            .unwrap()
            .clone();
        let (own, workload): (Vec<&Value>, Vec<&Value>) =
            all.iter().partition(|e| e["actor"] == "apikeyd");
        for e in own {
            assert_eq!(e["action"], "notify-replace", "{e}");
        }
        workload.len()
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
                let state = job["state"].as_str().unwrap();
                assert!(
                    ["Scheduled", "Running", "Completed"].contains(&state),
                    "{}: {job}",
                    k.name
                );
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

/// `[smtp]` at the test's server with quick retries, and no abuse limit on failed
/// verifications to wait out: the checks verify dead secrets and disabled keys on
/// purpose.
fn storm_config(smtp: &Smtp) -> String {
    alert_tables(
        smtp.port,
        &shipped_plugins(),
        "",
        "[rate_limit]\nfailures_per_minute = 0\n",
    )
}

/// The test's SMTP server, which answers each message 200 ms after taking it: a
/// send lasts long enough for some kills to land inside it.
fn slow_smtp() -> Smtp {
    Smtp::on(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Duration::from_millis(200),
    )
}

/// Alerts delivered more than once: each repeat must follow a kill that landed
/// inside the send before it, which the kill cut off after the server took the
/// message and before the daemon recorded it: from a second before that send
/// reached the server (the message may still be on its way when the daemon dies)
/// to two seconds after (the server answers after 200 ms, then the daemon writes
/// the job Completed).
fn duplicates(mails: &HashMap<String, Vec<Mail>>, kills: &[DateTime<Utc>]) -> usize {
    let mut repeats = 0;
    for (origin, got) in mails {
        let mut at: Vec<DateTime<Utc>> = got.iter().map(|m| m.received_at).collect();
        at.sort();
        for pair in at.windows(2) {
            let (first, again) = (pair[0], pair[1]);
            let inside = |k: &&DateTime<Utc>| {
                **k >= first - chrono::Duration::seconds(1)
                    && **k <= first + chrono::Duration::seconds(2)
            };
            assert!(
                kills.iter().any(|k| inside(&k)),
                "alert {origin} reached the server at {first} and again at {again} with no kill inside the first send"
            );
            repeats += 1;
        }
    }
    repeats
}

#[test]
fn a_storm_of_kills_loses_no_acknowledged_change() {
    let smtp = slow_smtp();
    let d = TestDaemon::start_with(DEFAULT_POLICY, &storm_config(&smtp));
    storm("redb", d, smtp, env_or("APIKEYD_STORM_KILLS", 20));
}

/// The same on PostgreSQL (a private server, which is not killed): 10 kills here.
/// A delivery a kill cut off waits for its lease to end before another start
/// takes it over, so the lease is the shortest allowed.
#[test]
fn a_storm_of_kills_on_postgresql_loses_no_acknowledged_change() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let smtp = slow_smtp();
    let mut d = on_postgres_with(
        &server.database("storm"),
        "job_lease = \"pt3s\"\n",
        &storm_config(&smtp),
    );
    d.spawn(&[]);
    storm("postgres", d, smtp, env_or("APIKEYD_STORM_KILLS", 10));
}

/// `kills` kills of `d` (started on `backend`, its alerts sent to `smtp`), the
/// invariants checked after each restart and at the end.
fn storm(backend: &str, d: TestDaemon, smtp: Smtp, kills: u64) {
    let seed = env_or("APIKEYD_STORM_SEED", rand::random());
    eprintln!("crash storm ({backend}): {kills} kills, APIKEYD_STORM_SEED={seed}");
    let mut storm = Storm {
        d,
        smtp,
        keys: Vec::new(),
        alerts: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
        next_name: 0,
        changes: 0,
        doubts: 0,
        sent: Utc::now(),
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
    // When each kill was sent, to tell a duplicate delivery it explains.
    let killed: Arc<Mutex<Vec<DateTime<Utc>>>> = Arc::default();
    let started = Instant::now();
    for round in 0..kills {
        let pid = storm.d.pid();
        let after = Duration::from_millis(storm.rng.gen_range(30..400));
        let killed = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(after);
            killed.lock().unwrap().push(Utc::now());
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
        // Alerts due a while ago went out, kills or not (the last ones are
        // waited for below).
        if let Err(e) = storm.delivered_by(Utc::now() - chrono::Duration::seconds(20)) {
            panic!("after kill {}: {e}", round + 1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let verifications = load.join().unwrap();
    let storm_time = started.elapsed();
    // Every alert that fell due reaches the server, the last ones within seconds.
    let last = storm
        .alerts
        .iter()
        .map(|a| a.at)
        .max()
        .unwrap_or_else(Utc::now);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match storm.delivered_by(last) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every mail is one of the storm's alerts.
    let origins: Vec<String> = (0..storm.alerts.len()).map(|a| storm.origin(a)).collect();
    let mails = storm.mails();
    for origin in mails.keys() {
        assert!(
            origins.contains(origin),
            "a mail for job {origin}, no alert of the storm"
        );
    }
    let repeats = duplicates(&mails, &killed.lock().unwrap());
    // And the daemon's record agrees: each repeat is an attempt it never saw end.
    for (origin, got) in &mails {
        if got.len() > 1 {
            let a = origins.iter().position(|o| o == origin).unwrap();
            let key = storm.keys[storm.alerts[a].key].id.clone().unwrap();
            let cut = storm.attempts_cut_off(&key, origin);
            assert!(
                got.len() - 1 <= cut,
                "alert {origin} reached the server {} times; the daemon saw {cut} of its attempts cut off",
                got.len()
            );
        }
    }
    let due = storm.alerts.iter().filter(|a| a.due).count();
    eprintln!(
        "crash storm ({backend}): {kills} kills survived in {storm_time:.0?}; {} changes acknowledged or settled, {} cut short by a kill, {} keys, {verifications} verifications sent; alerts: {due} fell due, {due} delivered ({} mails received), {repeats} delivered twice after a kill inside the send, {} superseded before or at their due time",
        storm.changes,
        storm.doubts,
        storm.keys.iter().filter(|k| k.id.is_some()).count(),
        storm.smtp.count(),
        storm.alerts.len() - due,
    );
    assert!(
        storm.changes > usize::try_from(kills).unwrap(),
        "the workload did too little"
    );
}
