//! [`Alerts`]: the job side of alerting, beside the key service. It lists, cancels
//! and deletes alert jobs, claims due jobs for the dispatcher and records how their
//! delivery ended, replaces jobs a crash cut short, and keeps the operator messages.
//! A job change that touches the key tracking the job goes through
//! [`Keys::change_job`], so it commits with the key, under the keys writer.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::config::ConsoleConfig;
use crate::keys::{Actor, KeyError, Keys, Page, PageRequest};
use crate::model::{
    rfc3339, AlertJob, AuditEntry, JobKind, JobState, KeyState, OperatorMessage, Severity,
};
use crate::store::{Change, JobFilter, Storage, StoreError};

/// Longest error text kept on a job.
pub const MAX_ERROR_LEN: usize = 2000;

/// Why an alert operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The request is wrong; `field` says which part.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Not allowed for this actor.
    #[error("{0}")]
    Forbidden(String),
    /// No such job or message (or not visible to this actor).
    #[error("no such {what}: {id}")]
    NotFound {
        /// `job` or `message`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// Conflicts with the job's state.
    #[error("{0}")]
    Conflict(String),
    /// Refused or failed on the key side (a key filter naming no visible key, ...).
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<StoreError> for AlertError {
    fn from(e: StoreError) -> Self {
        AlertError::Key(KeyError::Store(e))
    }
}

fn no_job(id: impl ToString) -> AlertError {
    AlertError::NotFound {
        what: "job",
        id: id.to_string(),
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Delivered.
    Delivered,
    /// Failed; retried with backoff unless attempts are used up or it is permanent.
    Failed {
        /// What went wrong (no secrets).
        error: String,
        /// Retrying cannot help (e.g. the source was removed from the config).
        permanent: bool,
    },
    /// Nothing to deliver any more (the key is gone).
    Dropped(String),
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" [truncated]");
    }
    s
}

/// The job side of alerting.
pub struct Alerts {
    keys: Arc<Keys>,
    store: Arc<dyn Storage>,
    /// Where the alerts link the key's console page (set at start, as the
    /// console's own settings are).
    console: ConsoleConfig,
    /// Serialises acknowledgements (read, check, write) of operator messages.
    acks: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").finish_non_exhaustive()
    }
}

impl Alerts {
    /// The alert service over `keys`, whose store is `store`.
    pub fn new(keys: Arc<Keys>, store: Arc<dyn Storage>) -> Self {
        Self {
            keys,
            store,
            console: ConsoleConfig::default(),
            acks: tokio::sync::Mutex::new(()),
        }
    }

    /// Alerts that link the key's page in the console `console` describes.
    pub fn with_console(mut self, console: ConsoleConfig) -> Self {
        self.console = console;
        self
    }

    /// The console page of key `id`, for its alerts: none unless the console
    /// is on and `public_url` set.
    pub fn key_page(&self, id: Uuid) -> Option<String> {
        self.console.key_page(&id)
    }

    /// The key service the jobs are about.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// [`Keys::blocking`]: on a blocking thread, over the same store.
    async fn blocking<T, F>(&self, f: F) -> Result<T, AlertError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StoreError> + Send + 'static,
    {
        Ok(self.keys.blocking(f).await?)
    }

    // ------------------------------------------------------------ jobs for admins

    fn may_see_job(&self, actor: &Actor, job: &AlertJob) -> bool {
        actor.admin
            || self
                .keys
                .live(job.key_id)
                .is_some_and(|l| *l.owner == *actor.name)
    }

    /// One job visible to `actor`.
    pub async fn job(&self, actor: &Actor, id: &str) -> Result<AlertJob, AlertError> {
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| AlertError::Invalid {
            field: "id",
            message: format!("{id:?} is not a job id (a UUID)"),
        })?;
        match self.blocking(move |s| s.job(uuid)).await? {
            Some(j) if self.may_see_job(actor, &j) => Ok(j),
            _ => Err(no_job(uuid)),
        }
    }

    /// One page of the jobs visible to `actor`, newest first: anyone but an admin
    /// reads only the jobs of their own keys, which the store indexes by owner.
    pub async fn jobs(
        &self,
        actor: &Actor,
        key: Option<&str>,
        state: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<AlertJob>, AlertError> {
        let limit = page.limit(crate::keys::page::DEFAULT_JOBS)?;
        let before = page.job_cursor()?;
        let key = match key {
            Some(k) => Some(self.keys.visible(actor, k)?.id),
            None => None,
        };
        let state = match state {
            Some(s) => Some(JobState::parse(s).ok_or_else(|| AlertError::Invalid {
                field: "state",
                message: format!(
                    "{s:?} is not one of Scheduled, Running, Completed, Failed, Canceled"
                ),
            })?),
            None => None,
        };
        let filter = JobFilter {
            key,
            state,
            owner: (!actor.admin).then(|| actor.name.clone()),
            before,
            limit,
        };
        let mut found = self.blocking(move |s| s.jobs(&filter)).await?;
        // Jobs of keys purged since stay filed under their owner; `job show` does not
        // show them to the owner, so neither does the list. The cursor still moves on.
        found.items.retain(|j| self.may_see_job(actor, j));
        Ok(Page {
            items: found.items,
            next_cursor: found.next.map(crate::keys::page::job_cursor),
        })
    }

    /// `job cancel` (or `job delete`): the job is Canceled (or deleted) and the key
    /// that tracks it loses its notification, in one transaction.
    pub async fn cancel_or_delete_job(
        &self,
        actor: &Actor,
        id: &str,
        delete: bool,
    ) -> Result<AlertJob, AlertError> {
        let job = self.job(actor, id).await?;
        let verb = if delete { "deleted" } else { "cancelled" };
        let action = if delete { "job-delete" } else { "job-cancel" };
        if job.state == JobState::Running {
            return Err(AlertError::Conflict(format!(
                "job {} is being delivered right now and cannot be {verb}; try again in a moment",
                job.id
            )));
        }
        if !delete && job.state.is_final() {
            return Err(AlertError::Conflict(format!(
                "job {} is already {}",
                job.id,
                job.state.as_str()
            )));
        }
        let job = self
            .keys
            .change_job(job.id, |scope| {
                // Read again under the writer: the dispatcher may have claimed it since.
                let Some(mut job) = scope.job else {
                    return Err(no_job(job.id));
                };
                if job.state == JobState::Running {
                    return Err(AlertError::Conflict(format!(
                        "job {} is being delivered right now and cannot be {verb}",
                        job.id
                    )));
                }
                let mut change = Change::default();
                if delete {
                    change.delete_jobs.push(job.id);
                } else {
                    job.cancel(format!("cancelled by {}", actor.name), scope.now);
                    change.put_jobs.push(job.clone());
                }
                let detail = match scope.tracking {
                    Some(mut rec) => {
                        rec.alerting.notification = None;
                        rec.updated_at = scope.now;
                        change.put_keys.push(rec);
                        format!("job {} {verb}; notification cleared", job.id)
                    }
                    None => format!("job {} {verb}", job.id),
                };
                change.audit.push(AuditEntry::new(
                    scope.now,
                    &actor.name,
                    action,
                    Some(job.key_id),
                    detail,
                ));
                Ok((job, change))
            })
            .await?;
        tracing::info!(job_id = %job.id, key_id = %job.key_id, actor = %actor.name, action, "alert job changed");
        Ok(job)
    }

    // ------------------------------------------------------------ the dispatcher's side

    /// Claim up to `limit` due jobs (persisted Running before delivery).
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<AlertJob>, AlertError> {
        // Under the keys writer: a change of a notification reschedules its job.
        let _writer = self.keys.lock_writer().await;
        self.blocking(move |s| s.claim_due(now, limit)).await
    }

    /// Keep job `id`, which this node is delivering, from being taken over by
    /// another node for one more lease; `false` if it is no longer this node's.
    pub async fn renew_lease(&self, id: Uuid) -> Result<bool, AlertError> {
        let now = self.keys.clock().now();
        self.blocking(move |s| s.renew_lease(id, now)).await
    }

    /// How often a delivery renews its job's lease (`None`: claims never lapse).
    pub fn lease_renewal(&self) -> Option<std::time::Duration> {
        self.store.job_lease().map(|lease| lease / 3)
    }

    /// When the earliest scheduled job should run.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, AlertError> {
        self.blocking(|s| s.next_due()).await
    }

    /// Number of jobs in each state (no scan).
    pub fn job_state_counts(&self) -> [(JobState, u64); JobState::ALL.len()] {
        self.store.job_state_counts()
    }

    /// Record how an attempt ended: Completed; Scheduled again after a backoff;
    /// Failed with an operator message once attempts are used up; Canceled when
    /// the key no longer tracks the job.
    pub async fn finish_job(&self, job_id: Uuid, outcome: Outcome) -> Result<AlertJob, AlertError> {
        let config = self.keys.alerting().config();
        self.keys
            .change_job(job_id, |scope| {
                let Some(mut job) = scope.job else {
                    return Err(no_job(job_id));
                };
                let now = scope.now;
                job.updated_at = now;
                let still_wanted = match job.kind {
                    JobKind::Notification => scope
                        .tracking
                        .is_some_and(|r| r.state != KeyState::Removed),
                    JobKind::InactivityWarning | JobKind::RotationWarning => self
                        .keys
                        .live(job.key_id)
                        .is_some_and(|l| l.life.state != KeyState::Removed),
                };
                let mut change = Change::default();
                match outcome {
                    Outcome::Delivered => {
                        job.state = JobState::Completed;
                        job.finished_at = Some(now);
                        tracing::info!(job_id = %job.id, key_id = %job.key_id, source = %job.source, attempts = job.attempts, "alert delivered");
                    }
                    Outcome::Dropped(why) => job.cancel(why, now),
                    Outcome::Failed { error, permanent } => {
                        let error = truncate(error);
                        job.last_error = Some(error.clone());
                        if permanent || job.attempts >= config.max_attempts {
                            change.messages.push(give_up(&mut job, &error, now));
                        } else if !still_wanted {
                            job.cancel(
                                format!("{error}; not retried: the key no longer tracks this job"),
                                now,
                            );
                        } else {
                            let exp = job.attempts.saturating_sub(1).min(20);
                            let delay = config
                                .retry_initial
                                .saturating_mul(1u32 << exp)
                                .min(config.retry_max);
                            job.state = JobState::Scheduled;
                            job.run_at =
                                now + Duration::from_std(delay).unwrap_or(Duration::minutes(1));
                            tracing::info!(job_id = %job.id, attempt = job.attempts, retry_at = %rfc3339(job.run_at), error = %error, "alert attempt failed; will retry");
                        }
                    }
                }
                change.put_jobs.push(job.clone());
                Ok((job, change))
            })
            .await
    }

    /// At start: every job left Running (the daemon died during its delivery) is
    /// Canceled and replaced by a new job due now, which the key tracks. On a shared
    /// store, only jobs whose lease ended: another node may be delivering the rest.
    pub async fn recover_running_jobs(&self) -> Result<usize, AlertError> {
        let now = self.keys.clock().now();
        let running = self.blocking(move |s| s.running_jobs(now)).await?;
        let mut n = 0;
        for old in running {
            let id = old.id;
            let replaced = self
                .keys
                .change_job(id, |scope| -> Result<_, AlertError> {
                    match scope.job {
                        Some(old) if old.state == JobState::Running => {
                            Ok((true, replace(old, scope.tracking, scope.now)))
                        }
                        _ => Ok((false, Change::default())),
                    }
                })
                .await;
            match replaced {
                Ok(replaced) => n += usize::from(replaced),
                // Another node took it over meanwhile (cluster mode).
                Err(AlertError::Key(KeyError::Store(StoreError::Conflict(why)))) => {
                    tracing::info!(job_id = %id, why, "interrupted alert job left to another node");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    // ------------------------------------------------------------ operator messages

    /// Store an operator message (and log it at warn level).
    pub async fn post_message(&self, message: OperatorMessage) -> Result<(), AlertError> {
        tracing::warn!(
            severity = ?message.severity,
            key_id = ?message.key_id,
            job_id = ?message.job_id,
            title = %message.title,
            text = %message.text,
            "operator message"
        );
        self.blocking(move |s| {
            s.commit(Change {
                messages: vec![message],
                ..Change::default()
            })
        })
        .await
    }

    /// Operator messages, newest first (administrators only).
    pub async fn messages(
        &self,
        actor: &Actor,
        unacknowledged: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, AlertError> {
        admin_only(actor)?;
        self.blocking(move |s| s.messages(unacknowledged, limit))
            .await
    }

    /// Acknowledge an operator message.
    pub async fn ack_message(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<OperatorMessage, AlertError> {
        admin_only(actor)?;
        let n: u64 = id.trim().parse().map_err(|_| AlertError::Invalid {
            field: "id",
            message: format!("{id:?} is not a message id (a number)"),
        })?;
        let _acks = self.acks.lock().await;
        let Some(mut m) = self.blocking(move |s| s.message(n)).await? else {
            return Err(AlertError::NotFound {
                what: "message",
                id: n.to_string(),
            });
        };
        if let (Some(by), Some(at)) = (&m.acknowledged_by, m.acknowledged_at) {
            return Err(AlertError::Conflict(format!(
                "message {n} was already acknowledged by {by} at {}",
                rfc3339(at)
            )));
        }
        m.acknowledged_by = Some(actor.name.clone());
        m.acknowledged_at = Some(self.keys.clock().now());
        let put = m.clone();
        self.blocking(move |s| {
            s.commit(Change {
                messages: vec![put],
                ..Change::default()
            })
        })
        .await?;
        Ok(m)
    }
}

fn admin_only(actor: &Actor) -> Result<(), AlertError> {
    if actor.admin {
        Ok(())
    } else {
        Err(AlertError::Forbidden(
            "operator messages are for administrators".into(),
        ))
    }
}

/// Attempts used up (or retrying cannot help): the job Failed, and the operator
/// message that says so.
fn give_up(job: &mut AlertJob, error: &str, now: DateTime<Utc>) -> OperatorMessage {
    job.state = JobState::Failed;
    job.finished_at = Some(now);
    tracing::warn!(job_id = %job.id, key_id = %job.key_id, attempts = job.attempts, error = %error, "alert job failed");
    OperatorMessage {
        id: 0,
        at: now,
        severity: Severity::Error,
        title: format!("alert job {} failed", job.id),
        text: format!(
            "Alert job {} for key {} (source {}) failed after {} attempt(s): {error}",
            job.id, job.key_id, job.source, job.attempts
        ),
        key_id: Some(job.key_id),
        job_id: Some(job.id),
        acknowledged_by: None,
        acknowledged_at: None,
    }
}

/// A job left Running by a crash: Canceled, and replaced by a new job due now
/// (same origin, so the same Message-ID) that the tracking key, if any, follows.
fn replace(
    mut old: AlertJob,
    tracking: Option<crate::model::KeyRecord>,
    now: DateTime<Utc>,
) -> Change {
    let mut new = AlertJob::new(old.key_id, old.kind, &old.source, old.due_at, now);
    new.origin = old.origin;
    new.replaces = Some(old.id);
    new.run_at = now;
    let why = format!(
        "interrupted: the daemon stopped during delivery (attempt {}); replaced by job {}",
        old.attempts, new.id
    );
    old.cancel(why, now);
    old.replaced_by = Some(new.id);
    tracing::warn!(job_id = %old.id, new_job_id = %new.id, key_id = %old.key_id, "alert job was interrupted; replaced");
    let mut change = Change::default();
    if let Some(mut rec) = tracking {
        if let Some(n) = rec.alerting.notification.as_mut() {
            n.job_id = new.id;
        }
        rec.updated_at = now;
        change.audit.push(AuditEntry::new(
            now,
            "apikeyd",
            "notify-replace",
            Some(rec.id),
            format!("job {} interrupted; replaced by job {}", old.id, new.id),
        ));
        change.put_keys.push(rec);
    }
    change.put_jobs = vec![old, new];
    change
}
