//! What is coming (`apikeyctl plan`): the keys that will expire within a window,
//! the notifications and inactivity warnings that will fire, and what the
//! maintenance runs will do; and, before a reload, how a new configuration would
//! change the keys as they are (`plan --policy`), without applying it.
//!
//! Every rule is the one the daemon applies: expiry and status from
//! [`Lifetime`], warnings and the purge from [`super::maintenance`], sources from
//! [`super::notification::choose_source`], effective scopes from the grants a
//! reload computes. The cron schedules come from above as [`Runs`]. The index is
//! read a chunk at a time and the jobs a page at a time, on a blocking thread, and
//! an answer keeps at most `limit` entries (with the totals), so a plan over a
//! million keys takes a while but neither stalls verification nor fills memory.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{internal, invalid, KeyError};
use super::index::{each_key, grants_of, Index};
use super::live::Live;
use super::maintenance::{inactivity_warning, purge_after};
use super::notification::choose_source;
use super::rules::parse_period;
use super::types::{Actor, Settings};
use super::Keys;
use crate::config::alerts::MaintenanceSchedules;
use crate::config::{AlertConfig, Period};
use crate::model::{rfc3339, AlertJob, JobKind, JobState, KeyState, Lifetime, Limit, Status};
use crate::store::{JobFilter, Storage, StoreError, MAX_PAGE};

/// Entries an answer lists when the caller names no limit.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most entries an answer lists.
pub const MAX_LIMIT: usize = 100_000;

/// A maintenance job, as `[jobs]` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// `last_used_flush`: writes last-used times.
    LastUsedFlush,
    /// `expiry_sweep`: records keys that expired or went inactive.
    ExpirySweep,
    /// `purge`: deletes keys past RetentionPeriod.
    Purge,
    /// `inactivity_warning`: schedules inactivity warnings.
    InactivityWarning,
}

impl Task {
    /// Every job, in the order `[jobs]` lists them.
    pub const ALL: [Task; 4] = [
        Task::LastUsedFlush,
        Task::ExpirySweep,
        Task::Purge,
        Task::InactivityWarning,
    ];

    /// Its cron schedule in `jobs`.
    pub fn schedule(self, jobs: &MaintenanceSchedules) -> &str {
        match self {
            Task::LastUsedFlush => &jobs.last_used_flush,
            Task::ExpirySweep => &jobs.expiry_sweep,
            Task::Purge => &jobs.purge,
            Task::InactivityWarning => &jobs.inactivity_warning,
        }
    }

    /// Its name in `[jobs]`.
    pub fn name(self) -> &'static str {
        match self {
            Task::LastUsedFlush => "last_used_flush",
            Task::ExpirySweep => "expiry_sweep",
            Task::Purge => "purge",
            Task::InactivityWarning => "inactivity_warning",
        }
    }
}

/// When the maintenance jobs run (their cron schedules, read by the alerts side).
pub trait Runs: Send + Sync {
    /// The first run of `task` at or after `t`; `None`: never.
    fn next_run(&self, task: Task, t: DateTime<Utc>) -> Option<DateTime<Utc>>;
}

/// What a plan is asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// How far ahead to look.
    pub within: Period,
    /// The most entries to list (of each kind: keys' events and maintenance runs).
    pub limit: usize,
}

impl Ask {
    /// `within` (an ISO 8601 period; default `p30d`) and `limit` (default
    /// [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]), checked.
    pub fn parse(within: Option<&str>, limit: Option<usize>) -> Result<Self, KeyError> {
        let within = parse_period("within", within.unwrap_or("p30d"))?;
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(invalid(
                "limit",
                format!("{limit} is not between 1 and {MAX_LIMIT}"),
            ));
        }
        Ok(Self { within, limit })
    }
}

/// What will happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A key stops working.
    Expiry,
    /// A key's notification job runs.
    Notification,
    /// An inactivity warning is sent (a job, or one the warning run will schedule).
    InactivityWarning,
    /// A maintenance run that will change something.
    Maintenance,
    /// A rotation's warning that the client never picked up the new secret.
    RotationWarning,
}

impl EventKind {
    /// The event an alert job of `kind` is.
    fn of(kind: JobKind) -> Self {
        match kind {
            JobKind::Notification => Self::Notification,
            JobKind::InactivityWarning => Self::InactivityWarning,
            JobKind::RotationWarning => Self::RotationWarning,
        }
    }
}

/// One thing that will happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (at the earliest: now, for something already due).
    pub at: DateTime<Utc>,
    /// What.
    pub kind: EventKind,
    /// The key's owner (none for maintenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
    /// The key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// An expiry's limit: `hard` or `inactivity` (if not used again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The alert source a notification or warning goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The alert job, when one is scheduled already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// A maintenance run's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// How many keys a maintenance run changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// In words.
    pub detail: String,
}

impl Event {
    fn about(at: DateTime<Utc>, kind: EventKind, l: &Live, detail: String) -> Self {
        Self {
            at,
            kind,
            owner: Some(l.owner.to_string()),
            key_id: Some(l.id),
            key_name: Some(l.name.to_string()),
            limit: None,
            source: None,
            job_id: None,
            task: None,
            keys: None,
            detail,
        }
    }
}

/// A maintenance job's schedule and next run (admins only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The job.
    pub task: Task,
    /// Its cron schedule.
    pub schedule: String,
    /// Its next run.
    pub next_run: Option<DateTime<Utc>>,
}

/// What will happen within the window (`GET /v1/admin/plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// When the plan was made.
    pub now: DateTime<Utc>,
    /// The end of the window.
    pub until: DateTime<Utc>,
    /// The window, as asked.
    pub within: String,
    /// The earliest events, in time order: at most the limit asked for of the
    /// keys', and as many maintenance runs.
    pub events: Vec<Event>,
    /// Every event within the window (more than `events` holds when the limit cut).
    pub total: usize,
    /// The maintenance jobs (admins only; empty for anyone else).
    #[serde(default)]
    pub maintenance: Vec<Schedule>,
}

/// An expiry that a new configuration moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryMove {
    /// The effective expiry now (`None`: never).
    pub from: Option<DateTime<Utc>>,
    /// Its limit now.
    pub from_limit: Option<String>,
    /// The effective expiry under the new configuration.
    pub to: Option<DateTime<Utc>>,
    /// Its limit then.
    pub to_limit: Option<String>,
    /// The key would be expired or inactive as soon as the configuration loads.
    pub at_once: bool,
}

/// A notification or warning that a new configuration moves, adds, drops or
/// breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationMove {
    /// Notification or inactivity warning.
    pub kind: EventKind,
    /// Its job, when one is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// When it fires now (within the window).
    pub from: Option<DateTime<Utc>>,
    /// When it would fire (within the window).
    pub to: Option<DateTime<Utc>>,
    /// In words.
    pub detail: String,
}

/// How a new configuration changes one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// The key.
    pub key_id: Uuid,
    /// Its owner.
    pub owner: String,
    /// Its name.
    pub name: String,
    /// Its effective expiry moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<ExpiryMove>,
    /// Its hard expiry lies beyond what the new MaxExpirationPeriod allows from now;
    /// it is kept (the maximum applies to keys created or edited from then on).
    #[serde(default)]
    pub beyond_max: bool,
    /// Scopes it holds now that its owner's groups would no longer grant.
    #[serde(default)]
    pub lost_scopes: Vec<String>,
    /// Its owner would no longer be a configured user: the key is refused.
    #[serde(default)]
    pub owner_lost: bool,
    /// Scopes of its own that its owner's groups do not grant now and would: the
    /// key may do more than today.
    #[serde(default)]
    pub gained_scopes: Vec<String>,
    /// Its owner is not a configured user now (the key is refused) and would be:
    /// the key works again.
    #[serde(default)]
    pub owner_regained: bool,
    /// Its owner's groups would grant none of its scopes: the key is refused.
    #[serde(default)]
    pub refused: bool,
    /// Notifications and warnings that move.
    #[serde(default)]
    pub notifications: Vec<NotificationMove>,
}

impl KeyChange {
    /// `l`, changing in nothing (yet).
    fn none(l: &Live) -> Self {
        Self {
            key_id: l.id,
            owner: l.owner.to_string(),
            name: l.name.to_string(),
            expiry: None,
            beyond_max: false,
            lost_scopes: Vec::new(),
            owner_lost: false,
            gained_scopes: Vec::new(),
            owner_regained: false,
            refused: false,
            notifications: Vec::new(),
        }
    }
}

/// How many keys each kind of change touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    /// Keys whose effective expiry moves.
    pub expiry_moves: usize,
    /// Keys that would be expired or inactive at once.
    pub expire_at_once: usize,
    /// Keys beyond the new MaxExpirationPeriod (kept).
    pub beyond_max: usize,
    /// Keys that lose scopes.
    pub lose_scopes: usize,
    /// Keys whose owner is no longer configured.
    pub lose_owner: usize,
    /// Keys that gain scopes (of their own, granted again).
    #[serde(default)]
    pub gain_scopes: usize,
    /// Keys whose owner is configured again: they work again.
    #[serde(default)]
    pub regain_owner: usize,
    /// Notifications and warnings that move, appear, go or would fail.
    pub notifications: usize,
}

/// How a new configuration would change the keys (`POST /v1/admin/plan/policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// When the plan was made.
    pub now: DateTime<Utc>,
    /// The end of the window notifications are compared in.
    pub until: DateTime<Utc>,
    /// The window, as asked.
    pub within: String,
    /// The keys that change, at most the limit asked for, by owner and name.
    pub keys: Vec<KeyChange>,
    /// Every key that changes (more than `keys` holds when the limit cut).
    pub total: usize,
    /// Per kind of change.
    pub counts: ChangeCounts,
    /// What else the new configuration changes, or does not.
    pub notes: Vec<String>,
}

/// The `limit` earliest events pushed, and how many were pushed.
struct Earliest {
    limit: usize,
    heap: BinaryHeap<Ranked>,
    total: usize,
}

/// An event ordered by time, then by arrival (a max-heap: the latest on top).
struct Ranked(DateTime<Utc>, usize, Event);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

impl Earliest {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            heap: BinaryHeap::new(),
            total: 0,
        }
    }

    fn push(&mut self, e: Event) {
        self.total += 1;
        let ranked = Ranked(e.at, self.total, e);
        if self.heap.len() < self.limit {
            self.heap.push(ranked);
        } else if self.heap.peek().is_some_and(|top| ranked < *top) {
            self.heap.pop();
            self.heap.push(ranked);
        }
    }

    /// In [`order`].
    fn into_sorted(self) -> Vec<Event> {
        let mut out: Vec<Event> = self.heap.into_iter().map(|r| r.2).collect();
        out.sort_by(order);
        out
    }
}

/// Time order; at one time, by owner and key name.
fn order(a: &Event, b: &Event) -> std::cmp::Ordering {
    (a.at, &a.owner, &a.key_name, a.kind as u8).cmp(&(b.at, &b.owner, &b.key_name, b.kind as u8))
}

/// Everything a plan reads besides the keys: the rules, the schedules and the window.
struct Ahead<'a> {
    settings: &'a Settings,
    alerts: &'a AlertConfig,
    runs: &'a dyn Runs,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// An inactivity warning ahead: the run that schedules it, the deadline it warns
/// of, and its source (with a note) or why none can reach the owner.
type Warned = (
    DateTime<Utc>,
    DateTime<Utc>,
    Result<(String, Option<String>), KeyError>,
);

/// Maintenance runs that will change something: (run, job) → keys.
type Tally = BTreeMap<(DateTime<Utc>, Task), usize>;

impl Ahead<'_> {
    /// The run of `task` that first sees something due at `t` (or now, if earlier),
    /// if it lies within the window.
    fn run_for(&self, task: Task, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.runs
            .next_run(task, t.max(self.now))
            .filter(|run| *run <= self.until)
    }

    /// When the effective expiry of an active key falls within the window, and how.
    fn expiry(
        &self,
        life: &Lifetime,
        last_used: Option<DateTime<Utc>>,
    ) -> Option<(DateTime<Utc>, Limit)> {
        let policy = &self.settings.policy;
        if life.status(policy, last_used, self.now) != Status::Active {
            return None;
        }
        life.effective_expiry(policy, last_used)
            .filter(|(t, _)| *t <= self.until)
    }

    /// The inactivity warning the warning run will schedule for key `l` within the
    /// window: its time, and its source or why none can reach the owner.
    fn warning(&self, l: &Live, last_used: Option<DateTime<Utc>>) -> Option<Warned> {
        let (Some(lead), Some(source)) = (
            &self.alerts.inactivity_warning_lead_time,
            &self.alerts.default_source,
        ) else {
            return None;
        };
        let policy = &self.settings.policy;
        if l.life.status(policy, last_used, self.now) != Status::Active {
            return None;
        }
        let w = inactivity_warning(&l.life, policy, last_used, l.warned_for, lead)?;
        // The run must find the key still active.
        let run = self
            .run_for(Task::InactivityWarning, w.from?)
            .filter(|run| *run < w.deadline)?;
        let chosen = choose_source(
            self.alerts,
            &self.settings.directory,
            &l.owner,
            source.clone(),
            false,
        );
        Some((run, w.deadline, chosen))
    }

    /// The events of key `l`: its expiry and the inactivity warning it will get;
    /// for an admin, the maintenance runs that will see it go into `tally`.
    fn key_events(
        &self,
        l: &Live,
        last_used: Option<DateTime<Utc>>,
        admin: bool,
        tally: &mut Tally,
        out: &mut Earliest,
    ) {
        let policy = &self.settings.policy;
        if l.life.state == KeyState::Enabled {
            if let Some((at, limit)) = self.expiry(&l.life, last_used) {
                let detail = match (limit, last_used) {
                    (Limit::Hard, _) => "expires: hard limit".to_owned(),
                    (Limit::Inactivity, Some(t)) => format!(
                        "expires through inactivity if not used again (last used {})",
                        rfc3339(t)
                    ),
                    (Limit::Inactivity, None) => {
                        "expires through inactivity if not used again (never used)".to_owned()
                    }
                };
                let mut e = Event::about(at, EventKind::Expiry, l, detail);
                e.limit = Some(limit.as_str().to_owned());
                out.push(e);
                if let Some(run) = self.run_for(Task::ExpirySweep, at).filter(|_| admin) {
                    *tally.entry((run, Task::ExpirySweep)).or_default() += 1;
                }
            } else if admin
                && !l.lapse_recorded
                && matches!(
                    l.life.status(policy, last_used, self.now),
                    Status::Expired | Status::Inactive
                )
            {
                if let Some(run) = self.run_for(Task::ExpirySweep, self.now) {
                    *tally.entry((run, Task::ExpirySweep)).or_default() += 1;
                }
            }
            if let Some((run, deadline, chosen)) = self.warning(l, last_used) {
                let expires = format!(
                    "expires {} through inactivity if not used again",
                    rfc3339(deadline)
                );
                let mut e = Event::about(run, EventKind::InactivityWarning, l, String::new());
                match chosen {
                    Ok((source, note)) => {
                        e.detail = format!("warning: {expires}");
                        if let Some(note) = note {
                            e.detail = format!("{}; {note}", e.detail);
                        }
                        e.source = Some(source);
                    }
                    Err(why) => e.detail = format!("{expires}; no warning can be sent: {why}"),
                }
                out.push(e);
                if admin {
                    *tally.entry((run, Task::InactivityWarning)).or_default() += 1;
                }
            }
        }
        if let Some(retention) = self.alerts.retention.as_ref().filter(|_| admin) {
            let run = purge_after(&l.life, last_used, policy, retention)
                .and_then(|t| self.run_for(Task::Purge, t));
            if let Some(run) = run {
                *tally.entry((run, Task::Purge)).or_default() += 1;
            }
        }
    }

    /// The event of a scheduled alert job of key `l`.
    fn job_event(&self, l: &Live, job: &AlertJob) -> Option<Event> {
        if job.run_at > self.until || l.life.state == KeyState::Removed {
            return None;
        }
        let kind = EventKind::of(job.kind);
        let mut detail = match job.kind {
            JobKind::Notification => "notification".to_owned(),
            JobKind::InactivityWarning => "inactivity warning".to_owned(),
            JobKind::RotationWarning => {
                "rotation warning: the new secret has not been used yet".to_owned()
            }
        };
        if job.attempts > 0 {
            detail += &format!(" (retry; {} attempt(s) so far)", job.attempts);
        }
        if job.run_at < self.now {
            detail += &format!(" (due since {})", rfc3339(job.run_at));
        }
        if self.alerts.source(&job.source).is_none() {
            detail += &format!(
                "; will fail: alert source {:?} is not configured",
                job.source
            );
        }
        let mut e = Event::about(job.run_at.max(self.now), kind, l, detail);
        e.source = Some(job.source.clone());
        e.job_id = Some(job.id);
        Some(e)
    }

    fn maintenance_event(&self, (run, task): (DateTime<Utc>, Task), n: usize) -> Event {
        let detail = match task {
            Task::ExpirySweep => format!("records {n} key(s) as expired or inactive"),
            Task::Purge => format!(
                "deletes {n} key(s) removed or expired more than RetentionPeriod ({}) ago",
                self.alerts
                    .retention
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string)
            ),
            Task::InactivityWarning => format!("schedules {n} inactivity warning(s)"),
            Task::LastUsedFlush => format!("writes the last uses of {n} key(s)"),
        };
        Event {
            at: run,
            kind: EventKind::Maintenance,
            owner: None,
            key_id: None,
            key_name: None,
            limit: None,
            source: None,
            job_id: None,
            task: Some(task),
            keys: Some(n),
            detail: format!("{}: {detail}", task.name()),
        }
    }
}

/// Hand every scheduled alert job (of `owner`'s keys, if named) to `f`, a page at a
/// time, each with the key it is about if the index has it.
fn each_scheduled_job(
    store: &dyn Storage,
    index: &RwLock<Index>,
    owner: Option<String>,
    mut f: impl FnMut(&AlertJob, &Live),
) -> Result<(), StoreError> {
    let mut before = None;
    loop {
        let page = store.jobs(&JobFilter {
            key: None,
            state: Some(JobState::Scheduled),
            owner: owner.clone(),
            before,
            limit: MAX_PAGE,
        })?;
        let keyed: Vec<(AlertJob, Arc<Live>)> = {
            let index = index.read();
            page.items
                .into_iter()
                .filter_map(|j| {
                    let l = index.get(&j.key_id)?.clone();
                    Some((j, l))
                })
                .collect()
        };
        for (job, l) in &keyed {
            f(job, l);
        }
        match page.next {
            Some(next) => before = Some(next),
            None => return Ok(()),
        }
    }
}

/// The plan of everything `actor` may see (see [`Keys::plan`]).
fn plan_of(
    store: &dyn Storage,
    index: &RwLock<Index>,
    ahead: &Ahead<'_>,
    actor: &Actor,
    ask: &Ask,
) -> Result<Plan, StoreError> {
    let mine = |l: &Live| actor.admin || *l.owner == *actor.name;
    let mut out = Earliest::new(ask.limit);
    let mut tally = Tally::new();
    each_key(index, |l, last_used| {
        if mine(l) {
            ahead.key_events(l, last_used, actor.admin, &mut tally, &mut out);
        }
    });
    let owner = (!actor.admin).then(|| actor.name.clone());
    each_scheduled_job(store, index, owner, |job, l| {
        if mine(l) {
            if let Some(e) = ahead.job_event(l, job) {
                out.push(e);
            }
        }
    })?;
    // The runs have a limit of their own: a million keys expiring first must not
    // hide the sweep and the purge that follow.
    let mut runs = Earliest::new(ask.limit);
    for (run, n) in tally {
        runs.push(ahead.maintenance_event(run, n));
    }
    let maintenance = if actor.admin {
        Task::ALL
            .iter()
            .map(|&task| Schedule {
                task,
                schedule: task.schedule(&ahead.alerts.jobs).to_owned(),
                next_run: ahead.runs.next_run(task, ahead.now),
            })
            .collect()
    } else {
        Vec::new()
    };
    let total = out.total + runs.total;
    let mut events = out.into_sorted();
    events.extend(runs.into_sorted());
    events.sort_by(order);
    Ok(Plan {
        now: ahead.now,
        until: ahead.until,
        within: ask.within.to_string(),
        events,
        total,
        maintenance,
    })
}

/// The scopes each configured user's groups grant (what a reload computes).
type Grants = HashMap<String, BTreeSet<String>>;

/// How the new configuration (`new`) changes key `l`, compared with the one in
/// force (`old`), if it does.
fn key_change(
    old: &Ahead<'_>,
    new: &Ahead<'_>,
    grants: (&Grants, &Grants),
    l: &Live,
    last_used: Option<DateTime<Utc>>,
) -> Option<KeyChange> {
    if l.life.state == KeyState::Removed {
        return None;
    }
    let now = old.now;
    let (old_policy, new_policy) = (&old.settings.policy, &new.settings.policy);
    let mut change = KeyChange::none(l);
    let lapsed = |s: Status| matches!(s, Status::Expired | Status::Inactive);
    let was = l.life.effective_expiry(old_policy, last_used);
    let will = l.life.effective_expiry(new_policy, last_used);
    if was != will {
        change.expiry = Some(ExpiryMove {
            from: was.map(|(t, _)| t),
            from_limit: was.map(|(_, l)| l.as_str().to_owned()),
            to: will.map(|(t, _)| t),
            to_limit: will.map(|(_, l)| l.as_str().to_owned()),
            at_once: !lapsed(l.life.status(old_policy, last_used, now))
                && lapsed(l.life.status(new_policy, last_used, now)),
        });
    }
    if new_policy.max_expiration != old_policy.max_expiration
        && l.life.state == KeyState::Enabled
        && !lapsed(l.life.status(new_policy, last_used, now))
    {
        if let Some(latest) = new_policy
            .max_expiration
            .as_ref()
            .and_then(|p| p.add_to(now))
        {
            change.beyond_max = l.life.expires_at.is_none_or(|t| t > latest);
        }
    }
    let own = l.own_scopes();
    match (grants.0.get(&*l.owner), grants.1.get(&*l.owner)) {
        (Some(_), None) => change.owner_lost = true,
        (None, Some(will)) => {
            // Usable again only with a scope of its own its groups grant.
            change.owner_regained = true;
            change.gained_scopes = own.iter().filter(|s| will.contains(*s)).cloned().collect();
            change.refused = change.gained_scopes.is_empty();
        }
        (Some(was), Some(will)) => {
            let held: Vec<&String> = own.iter().filter(|s| was.contains(*s)).collect();
            change.lost_scopes = held
                .iter()
                .filter(|s| !will.contains(**s))
                .map(|s| (*s).clone())
                .collect();
            change.refused = !held.is_empty() && held.len() == change.lost_scopes.len();
            change.gained_scopes = own
                .iter()
                .filter(|s| !was.contains(*s) && will.contains(*s))
                .cloned()
                .collect();
        }
        (None, None) => {}
    }
    let was = old.warning(l, last_used);
    let will = new.warning(l, last_used);
    let fires = |w: &Option<Warned>| {
        w.as_ref()
            .map(|(run, _, chosen)| (*run, chosen.as_ref().ok().map(|(s, _)| s.clone())))
    };
    if fires(&was) != fires(&will) {
        let detail = match (&was, &will) {
            (_, Some((_, deadline, Ok((source, _))))) => format!(
                "via {source}: expires {} through inactivity if not used again",
                rfc3339(*deadline)
            ),
            (_, Some((_, _, Err(why)))) => format!("no inactivity warning can be sent: {why}"),
            (Some(_), None) => "none within the window".to_owned(),
            (None, None) => String::new(),
        };
        change.notifications.push(NotificationMove {
            kind: EventKind::InactivityWarning,
            job_id: None,
            from: was.map(|(run, _, _)| run),
            to: will.map(|(run, _, _)| run),
            detail,
        });
    }
    let changed = change.expiry.is_some()
        || change.beyond_max
        || !change.lost_scopes.is_empty()
        || change.owner_lost
        || !change.gained_scopes.is_empty()
        || change.owner_regained
        || !change.notifications.is_empty();
    changed.then_some(change)
}

/// A scheduled job the new configuration breaks: its source is configured now, and
/// would not be.
fn job_move(old: &Ahead<'_>, new: &Ahead<'_>, job: &AlertJob) -> Option<NotificationMove> {
    if old.alerts.source(&job.source).is_none() || new.alerts.source(&job.source).is_some() {
        return None;
    }
    Some(NotificationMove {
        kind: EventKind::of(job.kind),
        job_id: Some(job.id),
        from: Some(job.run_at.max(old.now)),
        to: None,
        detail: format!(
            "would fail: alert source {:?} is not configured in the new file",
            job.source
        ),
    })
}

/// What the new configuration changes besides the keys, or does not.
fn notes(old: &Ahead<'_>, new: &Ahead<'_>, beyond_max: usize) -> Vec<String> {
    let mut notes = Vec::new();
    let (was, will) = (&old.settings.policy, &new.settings.policy);
    if was.max_expiration != will.max_expiration {
        let shown = |p: &Option<Period>| {
            p.as_ref()
                .map_or_else(|| "empty".to_owned(), ToString::to_string)
        };
        notes.push(format!(
            "MaxExpirationPeriod {} -> {}: it applies to keys created or edited from then on; existing expiries are kept ({beyond_max} key(s) expire later than the new maximum allows from now)",
            shown(&was.max_expiration),
            shown(&will.max_expiration)
        ));
    }
    if old.alerts.default_lead_time != new.alerts.default_lead_time {
        notes.push("DefaultNotificationLeadTime changes the notifications of keys created from then on; existing notifications keep their times".to_owned());
    }
    if old.alerts.retention != new.alerts.retention {
        notes.push("RetentionPeriod changes: the purge follows the new one after the reload (apikeyctl plan shows its runs then)".to_owned());
    }
    if old.alerts.jobs != new.alerts.jobs
        || old.alerts.smtp != new.alerts.smtp
        || old.alerts.plugins_dir != new.alerts.plugins_dir
    {
        notes.push(
            "[smtp], [jobs] and plugins_dir changes take effect after a restart, not on reload"
                .to_owned(),
        );
    }
    let users = |s: &Settings| s.directory.users.len();
    let groups = |s: &Settings| s.directory.groups.len();
    notes.push(format!(
        "users {} -> {}, groups {} -> {}",
        users(old.settings),
        users(new.settings),
        groups(old.settings),
        groups(new.settings)
    ));
    notes
}

/// The policy plan (see [`Keys::plan_policy`]).
fn policy_plan_of(
    store: &dyn Storage,
    index: &RwLock<Index>,
    old: &Ahead<'_>,
    new: &Ahead<'_>,
    ask: &Ask,
) -> Result<PolicyPlan, StoreError> {
    let grants = (
        grants_of(&old.settings.directory),
        grants_of(&new.settings.directory),
    );
    let mut counts = ChangeCounts::default();
    let mut total = 0;
    // The first `limit` keys that change, by owner and name.
    let mut kept: BTreeMap<(String, String, Uuid), KeyChange> = BTreeMap::new();
    let mut keep = |change: KeyChange, counts: &mut ChangeCounts| {
        total += 1;
        if let Some(e) = &change.expiry {
            counts.expiry_moves += 1;
            counts.expire_at_once += usize::from(e.at_once);
        }
        counts.beyond_max += usize::from(change.beyond_max);
        counts.lose_scopes += usize::from(!change.lost_scopes.is_empty());
        counts.lose_owner += usize::from(change.owner_lost);
        // A key whose owner comes back is counted as such, not as gaining scopes.
        counts.gain_scopes +=
            usize::from(!change.gained_scopes.is_empty() && !change.owner_regained);
        counts.regain_owner += usize::from(change.owner_regained);
        counts.notifications += change.notifications.len();
        let at = (change.owner.clone(), change.name.clone(), change.key_id);
        if kept.len() < ask.limit {
            kept.insert(at, change);
        } else if kept.last_key_value().is_some_and(|(last, _)| at < *last) {
            kept.pop_last();
            kept.insert(at, change);
        }
    };
    // Jobs first, so that a key's broken jobs join its other changes.
    let mut broken: HashMap<Uuid, Vec<NotificationMove>> = HashMap::new();
    let mut broken_total = 0usize;
    each_scheduled_job(store, index, None, |job, l| {
        if l.life.state == KeyState::Removed {
            return;
        }
        if let Some(m) = job_move(old, new, job) {
            broken_total += 1;
            // Bounded like the answer: past the limit they are only counted.
            if broken_total <= ask.limit {
                broken.entry(l.id).or_default().push(m);
            }
        }
    })?;
    each_key(index, |l, last_used| {
        let change = key_change(old, new, (&grants.0, &grants.1), l, last_used);
        let jobs = broken.remove(&l.id);
        let change = match (change, jobs) {
            (Some(mut c), Some(jobs)) => {
                c.notifications.extend(jobs);
                Some(c)
            }
            (Some(c), None) => Some(c),
            (None, Some(jobs)) if l.life.state != KeyState::Removed => Some(KeyChange {
                notifications: jobs,
                ..KeyChange::none(l)
            }),
            (None, _) => None,
        };
        if let Some(c) = change {
            keep(c, &mut counts);
        }
    });
    // Broken jobs past the limit were counted but not attached.
    counts.notifications += broken_total.saturating_sub(ask.limit);
    let notes = notes(old, new, counts.beyond_max);
    Ok(PolicyPlan {
        now: old.now,
        until: old.until,
        within: ask.within.to_string(),
        keys: kept.into_values().collect(),
        total,
        counts,
        notes,
    })
}

impl Keys {
    /// What will happen within `ask.within` to the keys `actor` may see (their own;
    /// an admin's: every key, and the maintenance runs). Runs on a blocking thread
    /// that reads the index a chunk at a time.
    pub async fn plan(
        &self,
        actor: &Actor,
        ask: &Ask,
        runs: Arc<dyn Runs>,
    ) -> Result<Plan, KeyError> {
        let now = self.clock.now();
        let until = window_end(&ask.within, now)?;
        let (store, index) = (self.store.clone(), self.index.clone());
        let (settings, alerts) = (self.settings(), self.alerting.config());
        let (actor, ask) = (actor.clone(), ask.clone());
        tokio::task::spawn_blocking(move || {
            let ahead = Ahead {
                settings: &settings,
                alerts: &alerts,
                runs: &*runs,
                now,
                until,
            };
            plan_of(&*store, &index, &ahead, &actor, &ask)
        })
        .await
        .map_err(internal)?
        .map_err(KeyError::from)
    }

    /// How the configuration `settings` and `alerts` would change the keys as they
    /// are now, compared with the configuration in force, without applying
    /// anything. Admins only: it is about everyone's keys.
    pub async fn plan_policy(
        &self,
        actor: &Actor,
        settings: Settings,
        alerts: AlertConfig,
        ask: &Ask,
        runs: Arc<dyn Runs>,
    ) -> Result<PolicyPlan, KeyError> {
        admin_only(actor)?;
        let now = self.clock.now();
        let until = window_end(&ask.within, now)?;
        let (store, index) = (self.store.clone(), self.index.clone());
        let (running, running_alerts) = (self.settings(), self.alerting.config());
        let ask = ask.clone();
        tokio::task::spawn_blocking(move || {
            let old = Ahead {
                settings: &running,
                alerts: &running_alerts,
                runs: &*runs,
                now,
                until,
            };
            let new = Ahead {
                settings: &settings,
                alerts: &alerts,
                ..old
            };
            policy_plan_of(&*store, &index, &old, &new, &ask)
        })
        .await
        .map_err(internal)?
        .map_err(KeyError::from)
    }
}

/// Only an admin may plan a configuration: it is about everyone's keys.
pub fn admin_only(actor: &Actor) -> Result<(), KeyError> {
    admin_only_for(actor, "plan a configuration: it is about everyone's keys")
}

/// Refuse anyone but an admin: "`actor` may not `what` (admins only)".
pub(crate) fn admin_only_for(actor: &Actor, what: &str) -> Result<(), KeyError> {
    if actor.admin {
        return Ok(());
    }
    Err(KeyError::Forbidden(format!(
        "{} may not {what} (admins only)",
        actor.name
    )))
}

fn window_end(within: &Period, now: DateTime<Utc>) -> Result<DateTime<Utc>, KeyError> {
    within
        .add_to(now)
        .ok_or_else(|| invalid("within", format!("{within} is too long")))
}

#[cfg(test)]
mod tests;
