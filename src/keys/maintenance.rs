//! The key side of the maintenance jobs: the expiry sweep, the purge and the
//! inactivity warning. Each runs under the writer lock and commits one transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{rfc3339, AuditEntry, KeyState, Status};
use super::{KeyError, Keys, Live};
use crate::alerts::job::{AlertJob, JobKind};
use crate::alerts::maintenance::MaintenanceRun;
use crate::store::{AlertBatch, Batch};

fn entry(now: DateTime<Utc>, action: &str, key: Uuid, detail: String) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: now,
        actor: "apikeyd".into(),
        action: action.into(),
        key_id: Some(key),
        detail,
    }
}

impl Keys {
    /// The maintenance jobs as last seen.
    pub fn maintenance_status(&self) -> Vec<MaintenanceRun> {
        self.alerts.maintenance.lock().clone()
    }

    /// Set the list (at start).
    pub fn set_maintenance_status(&self, runs: Vec<MaintenanceRun>) {
        *self.alerts.maintenance.lock() = runs;
    }

    /// Record one run.
    pub fn record_maintenance_run(&self, run: MaintenanceRun) {
        let mut list = self.alerts.maintenance.lock();
        match list.iter_mut().find(|r| r.name == run.name) {
            Some(r) => *r = run,
            None => list.push(run),
        }
    }

    async fn publish_many(
        &self,
        lives: Vec<Arc<Live>>,
        audit: Vec<AuditEntry>,
        alerts: AlertBatch,
    ) -> Result<(), KeyError> {
        let wake = !alerts.put_jobs.is_empty();
        let batch = Batch {
            put_keys: lives.iter().map(|l| l.rec.clone()).collect(),
            audit,
        };
        self.blocking(move |s| s.commit_with(batch, alerts)).await?;
        let mut index = self.index.write();
        for l in lives {
            index.insert(l);
        }
        drop(index);
        if wake {
            self.wake_dispatcher();
        }
        Ok(())
    }

    /// Record (once per key, with an audit entry) keys that expired or went inactive.
    pub async fn sweep_expired(&self) -> Result<usize, KeyError> {
        let _writer = self.writer.lock().await;
        let policy = self.settings().policy.clone();
        let now = self.clock.now();
        let candidates: Vec<Arc<Live>> = self.index.read().by_id.values().cloned().collect();
        let mut lives = Vec::new();
        let mut audit = Vec::new();
        for l in candidates {
            if l.rec.alerting.lapse_recorded_at.is_some() {
                continue;
            }
            let last_used = l.usage.last_used().max(l.rec.last_used_at);
            let action = match l.rec.status(&policy, last_used, now) {
                Status::Expired => "expired",
                Status::Inactive => "inactive",
                _ => continue,
            };
            let mut rec = l.snapshot();
            rec.alerting.lapse_recorded_at = Some(now);
            audit.push(entry(
                now,
                action,
                rec.id,
                rec.details(&policy, last_used, now),
            ));
            lives.push(Arc::new(Live::new(rec, l.usage.clone())?));
        }
        let n = lives.len();
        if n > 0 {
            self.publish_many(lives, audit, AlertBatch::default())
                .await?;
            tracing::info!(keys = n, "expiry sweep recorded expired keys");
        }
        Ok(n)
    }

    /// Delete keys removed, or expired, longer than RetentionPeriod ago.
    pub async fn purge(&self) -> Result<usize, KeyError> {
        let Some(retention) = self.alert_config().retention.clone() else {
            return Ok(0);
        };
        let _writer = self.writer.lock().await;
        let policy = self.settings().policy.clone();
        let now = self.clock.now();
        let mut gone = Vec::new();
        for l in self.index.read().by_id.values() {
            let last_used = l.usage.last_used().max(l.rec.last_used_at);
            let ended = match l.rec.state {
                KeyState::Removed => l.rec.removed_at,
                _ => l
                    .rec
                    .effective_expiry(&policy, last_used)
                    .map(|(t, _)| t)
                    .filter(|t| *t <= now),
            };
            if ended
                .and_then(|t| retention.add_to(t))
                .is_some_and(|until| until <= now)
            {
                gone.push(l.clone());
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        let audit: Vec<AuditEntry> = gone
            .iter()
            .map(|l| {
                entry(
                    now,
                    "purge",
                    l.rec.id,
                    format!(
                        "name={:?} owner={} (RetentionPeriod {retention})",
                        l.rec.name, l.rec.owner
                    ),
                )
            })
            .collect();
        let ids: Vec<Uuid> = gone.iter().map(|l| l.rec.id).collect();
        let batch = Batch {
            put_keys: vec![],
            audit,
        };
        let alerts = AlertBatch {
            purge_keys: ids.clone(),
            ..AlertBatch::default()
        };
        self.blocking(move |s| s.commit_with(batch, alerts)).await?;
        let mut index = self.index.write();
        for l in &gone {
            index.remove(l.rec.id);
        }
        tracing::info!(keys = ids.len(), "purged keys past RetentionPeriod");
        Ok(ids.len())
    }

    /// Keys that will expire through inactivity within InactivityWarningLeadTime get
    /// one warning per idle stretch, through the default alert source, as a job.
    pub async fn schedule_inactivity_warnings(&self) -> Result<usize, KeyError> {
        let config = self.alert_config();
        let (Some(lead), Some(source)) = (
            config.inactivity_warning_lead_time.clone(),
            config.default_source.clone(),
        ) else {
            return Ok(0);
        };
        let _writer = self.writer.lock().await;
        let policy = self.settings().policy.clone();
        let now = self.clock.now();
        let candidates: Vec<Arc<Live>> = self.index.read().by_id.values().cloned().collect();
        let mut lives = Vec::new();
        let mut audit = Vec::new();
        let mut alerts = AlertBatch::default();
        for l in candidates {
            if l.rec.state != KeyState::Enabled {
                continue;
            }
            let last_used = l.usage.last_used().max(l.rec.last_used_at);
            if l.rec.status(&policy, last_used, now) != Status::Active {
                continue;
            }
            let Some(deadline) = l.rec.inactivity_deadline(&policy, last_used) else {
                continue;
            };
            // Only when inactivity comes first: a hard expiry has its own notification.
            if l.rec.expires_at.is_some_and(|h| h <= deadline) {
                continue;
            }
            let stretch = l.rec.last_activity(last_used);
            if l.rec.alerting.inactivity_warned_for == Some(stretch) {
                continue;
            }
            if lead.subtract_from(deadline).is_none_or(|from| now < from) {
                continue;
            }
            let mut rec = l.snapshot();
            rec.alerting.inactivity_warned_for = Some(stretch);
            let job = AlertJob::new(rec.id, JobKind::InactivityWarning, &source, now, now);
            audit.push(entry(
                now,
                "inactivity-warning",
                rec.id,
                format!(
                    "expires {} through inactivity; warning job {} via {source}",
                    rfc3339(deadline),
                    job.id
                ),
            ));
            alerts.put_jobs.push(job);
            lives.push(Arc::new(Live::new(rec, l.usage.clone())?));
        }
        let n = lives.len();
        if n > 0 {
            self.publish_many(lives, audit, alerts).await?;
            tracing::info!(keys = n, "inactivity warnings scheduled");
        }
        Ok(n)
    }
}
