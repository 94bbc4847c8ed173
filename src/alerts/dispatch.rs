//! The dispatcher: claims due jobs (persisted Running first), delivers them through
//! their channel with bounded concurrency, and records the outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::alert::{Alert, Deliver};
use super::service::{Alerts, Outcome};
use super::stats::DELIVERIES;
use crate::model::{AlertJob, JobKind, JobState, KeyState};

/// Longest sleep between looks at the due index (guards against wall-clock jumps).
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// Most jobs claimed in one transaction.
pub const CLAIM_BATCH: usize = 256;
/// How long a stop waits for deliveries in flight (the rest are replaced at start).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Fires alert jobs, delivering them through `D` (the channels).
pub struct Dispatcher<D> {
    alerts: Arc<Alerts>,
    channels: Arc<D>,
}

impl<D> std::fmt::Debug for Dispatcher<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl<D: Deliver> Dispatcher<D> {
    /// A dispatcher over `alerts` delivering through `channels`.
    pub fn new(alerts: Arc<Alerts>, channels: Arc<D>) -> Self {
        Self { alerts, channels }
    }

    /// Run until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let keys = self.alerts.keys().clone();
        let concurrency = keys.alerting().config().concurrency;
        let permits = Arc::new(Semaphore::new(concurrency));
        let wake = keys.alerting().wake();
        let mut tasks = JoinSet::new();
        let clock = keys.clock().clone();
        let mut failing = false;
        loop {
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            if permits.available_permits() == 0 {
                tokio::select! {
                    p = permits.clone().acquire_owned() => drop(p),
                    _ = stop.changed() => break,
                }
                continue;
            }
            let free = permits.available_permits().min(CLAIM_BATCH);
            let now = clock.now();
            let claimed = match self.alerts.claim_due(now, free).await {
                Ok(c) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("claiming due alert jobs again");
                    }
                    c
                }
                Err(e) => {
                    // Once per outage (a database down for an hour is one line).
                    if !std::mem::replace(&mut failing, true) {
                        tracing::error!(error = %e, "cannot claim due alert jobs; delivery pauses, retrying every second");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            };
            let full = claimed.len() == free;
            for job in claimed {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Cannot happen: we claimed at most the free permits and only this
                    // loop takes them. Should it, the job stays Running and is
                    // replaced at the next start rather than lost.
                    tracing::error!(job_id = %job.id, "no delivery slot for a claimed job");
                    continue;
                };
                let alerts = self.alerts.clone();
                let channels = self.channels.clone();
                let span = tracing::info_span!("alert_job", job_id = %job.id, key_id = %job.key_id, attempt = job.attempts);
                tasks.spawn(
                    async move {
                        deliver(&alerts, &*channels, job).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            if full {
                continue;
            }
            let next = self.alerts.next_due().await.ok().flatten();
            let wait = match next {
                Some(at) => (at - clock.now()).to_std().unwrap_or(Duration::ZERO),
                None => MAX_IDLE,
            }
            .min(MAX_IDLE);
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = stop.changed() => break,
            }
        }
        // Let deliveries in flight record their outcome; any cut short stay Running
        // and are replaced at the next start.
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// One attempt of one job, and its outcome recorded.
pub async fn deliver(alerts: &Alerts, channels: &impl Deliver, job: AlertJob) {
    let outcome = {
        let attempt = attempt(alerts, channels, &job);
        tokio::pin!(attempt);
        match alerts.lease_renewal() {
            None => attempt.await,
            // Other nodes take over a job whose lease ends: renew it while the
            // delivery runs.
            Some(every) => loop {
                tokio::select! {
                    outcome = &mut attempt => break outcome,
                    _ = tokio::time::sleep(every) => match alerts.renew_lease(job.id).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(job_id = %job.id, "another node took this alert job over; it may be delivered twice"),
                        Err(e) => tracing::warn!(job_id = %job.id, error = %e, "cannot renew the lease of an alert job being delivered"),
                    },
                }
            },
        }
    };
    match alerts.finish_job(job.id, outcome).await {
        Ok(j) if j.state == JobState::Failed => {}
        Ok(_) => {}
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "cannot record the outcome of an alert; it stays Running and is replaced at the next start")
        }
    }
}

async fn attempt(alerts: &Alerts, channels: &impl Deliver, job: &AlertJob) -> Outcome {
    let keys = alerts.keys();
    let config = keys.alerting().config();
    let Some(source) = config.source(&job.source) else {
        return Outcome::Failed {
            error: format!(
                "alert source {:?} is not configured any more (add [alert_sources.{}] back, or move the notification to another source)",
                job.source, job.source
            ),
            permanent: true,
        };
    };
    let mut live = keys.live(job.key_id);
    if live.is_none() && keys.shared() {
        // A key created on another node a moment ago, not read here yet.
        if let Err(e) = keys.catch_up().await {
            return Outcome::Failed {
                error: format!("reading other nodes' changes: {e}"),
                permanent: false,
            };
        }
        live = keys.live(job.key_id);
    }
    let Some(live) = live else {
        return Outcome::Dropped("the key no longer exists".into());
    };
    if live.life.state == KeyState::Removed {
        return Outcome::Dropped("the key was removed".into());
    }
    let view = match keys.view(&live).await {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Failed {
                error: format!("reading key {}: {e}", live.id),
                permanent: false,
            }
        }
    };
    if job.kind == JobKind::RotationWarning
        && !view
            .rotation
            .as_ref()
            .is_some_and(|r| r.state == "pending" && r.warning_job.is_some_and(|w| w == job.origin))
    {
        // A change that ends the rotation cancels its warning; one that raced the
        // claim is caught here.
        return Outcome::Dropped("the rotation it warns about is no longer waiting".into());
    }
    let email = keys
        .settings()
        .directory
        .users
        .get(&view.owner)
        .and_then(|u| u.email.clone());
    let mut alert = Alert::new(job, &view, email);
    alert.key.console_url = alerts.key_page(view.id);
    let result = channels.deliver(source, &alert).await;
    DELIVERIES.record(&source.kind, result.is_ok());
    match result {
        Ok(()) => Outcome::Delivered,
        Err(e) => Outcome::Failed {
            error: e.message,
            permanent: e.permanent,
        },
    }
}
