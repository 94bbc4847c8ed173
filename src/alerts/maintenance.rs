//! Cron-style maintenance jobs on tokio-cron-scheduler: the last-used flush, the
//! expiry sweep, the purge and the inactivity warning. Their schedules come from
//! `[jobs]` and were validated when the configuration loaded. The scheduler holds only
//! these four jobs (never per-key alerts), with a channel size set explicitly.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::config::alerts::MaintenanceSchedules;
use crate::config::AlertConfig;
use crate::keys::plan::{self, Task};
use crate::keys::{maintenance, Keys};
use crate::model::key::rfc3339;

/// Slots in the scheduler's internal channels: ample for four jobs.
pub const CHANNEL_SIZE: usize = 64;

/// What `apikeyctl job list --maintenance` shows for one job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceRun {
    /// `last_used_flush`, `expiry_sweep`, `purge`, `inactivity_warning`.
    pub name: String,
    /// Cron schedule.
    pub schedule: String,
    /// Last run start.
    pub last_run: Option<String>,
    /// What it did, or its error.
    pub last_result: Option<String>,
    /// Next run.
    pub next_run: Option<String>,
}

/// What the maintenance jobs last did, shared by the scheduler (which records each
/// run) and the admin API (`apikeyctl job list --maintenance`).
#[derive(Debug, Clone, Default)]
pub struct MaintenanceStatus(Arc<parking_lot::Mutex<Vec<MaintenanceRun>>>);

impl MaintenanceStatus {
    /// The jobs as last seen.
    pub fn runs(&self) -> Vec<MaintenanceRun> {
        self.0.lock().clone()
    }

    fn set(&self, runs: Vec<MaintenanceRun>) {
        *self.0.lock() = runs;
    }

    fn record(&self, run: MaintenanceRun) {
        let mut list = self.0.lock();
        match list.iter_mut().find(|r| r.name == run.name) {
            Some(r) => *r = run,
            None => list.push(run),
        }
    }
}

/// One run of maintenance job `task`, and what it did.
async fn run(task: Task, keys: &Keys) -> Result<String, crate::keys::KeyError> {
    // Every node writes its own usage; the rest runs on one node at a time.
    if !matches!(task, Task::LastUsedFlush) && !keys.lead_maintenance().await? {
        if matches!(task, Task::ExpirySweep) {
            keys.count_lapses();
        }
        return Ok("skipped: another node runs the maintenance jobs".into());
    }
    Ok(match task {
        Task::LastUsedFlush => format!("{} key(s) written", keys.flush_last_used(false).await?),
        Task::ExpirySweep => format!(
            "{} key(s) recorded as expired",
            maintenance::sweep_expired(keys).await?
        ),
        Task::Purge => {
            // Each runs whether the other failed or not.
            let purged = maintenance::purge(keys).await;
            let pruned = keys.prune_change_log().await;
            match (purged?, pruned?) {
                (purged, 0) => format!("{purged} key(s) purged"),
                (purged, n) => {
                    format!("{purged} key(s) purged, {n} change log entries dropped")
                }
            }
        }
        Task::InactivityWarning => format!(
            "{} warning(s) scheduled",
            maintenance::schedule_inactivity_warnings(keys).await?
        ),
    })
}

/// The running maintenance scheduler.
pub struct Maintenance {
    scheduler: JobScheduler,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance").finish_non_exhaustive()
    }
}

fn next_tick(schedule: &str) -> Option<String> {
    let cron = parse_cron(schedule)?
        .find_next_occurrence(&Utc::now(), false)
        .ok()?;
    Some(rfc3339(cron))
}

/// A `[jobs]` schedule as tokio-cron-scheduler reads it (seconds first, in UTC).
fn parse_cron(schedule: &str) -> Option<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()
}

/// The runs of the maintenance jobs as `[jobs]` schedules them, for the plan
/// (`crate::keys::plan`): each schedule parsed once.
pub struct Runs(Vec<(Task, Option<croner::Cron>)>);

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").finish_non_exhaustive()
    }
}

impl Runs {
    /// The runs of the jobs of `jobs`.
    pub fn of(jobs: &MaintenanceSchedules) -> Self {
        Self(
            Task::ALL
                .iter()
                .map(|&t| (t, parse_cron(t.schedule(jobs))))
                .collect(),
        )
    }
}

impl plan::Runs for Runs {
    fn next_run(&self, task: Task, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, cron) = self.0.iter().find(|(k, _)| *k == task)?;
        // Runs fall on whole seconds: from the first whole second not before `t`.
        let whole = t.trunc_subsecs(0);
        let from = if whole < t {
            whole + chrono::Duration::seconds(1)
        } else {
            whole
        };
        cron.as_ref()?.find_next_occurrence(&from, true).ok()
    }
}

impl Maintenance {
    /// Start the four jobs, recording what they do in `status`.
    pub async fn start(
        keys: Arc<Keys>,
        config: &AlertConfig,
        status: MaintenanceStatus,
    ) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new_with_channel_size(CHANNEL_SIZE).await?;
        let s = &config.jobs;
        let mut runs = Vec::new();
        for task in Task::ALL {
            let schedule = task.schedule(s).to_owned();
            runs.push(MaintenanceRun {
                name: task.name().to_owned(),
                schedule: schedule.clone(),
                last_run: None,
                last_result: None,
                next_run: next_tick(&schedule),
            });
            let keys = keys.clone();
            let status = status.clone();
            let sched = schedule.clone();
            let job = Job::new_async(schedule.as_str(), move |_id, _lock| {
                let keys = keys.clone();
                let status = status.clone();
                let sched = sched.clone();
                Box::pin(async move {
                    let started = keys.clock().now();
                    let timer = std::time::Instant::now();
                    let span = tracing::info_span!("maintenance", job = task.name());
                    let _enter = span.enter();
                    let result = match run(task, &keys).await {
                        Ok(r) => {
                            let r = format!("{r} in {} ms", timer.elapsed().as_millis());
                            tracing::debug!(result = %r, "maintenance job done");
                            r
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "maintenance job failed; it runs again at its next time");
                            format!("error: {e}")
                        }
                    };
                    status.record(MaintenanceRun {
                        name: task.name().to_owned(),
                        schedule: sched.clone(),
                        last_run: Some(rfc3339(started)),
                        last_result: Some(result),
                        next_run: next_tick(&sched),
                    });
                })
            })?;
            scheduler.add(job).await?;
        }
        status.set(runs);
        scheduler.start().await?;
        Ok(Self { scheduler })
    }

    /// Stop the scheduler.
    pub async fn shutdown(&mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "maintenance scheduler did not stop cleanly");
        }
    }
}
