//! Notifications: one per key, each carried out by one alert job stored in redb
//! (the RunMyJobs extension's rules). Every job change goes through the keys writer
//! lock, so the dispatcher claiming a job and an owner editing its notification are
//! serialised: an edit sees either a job that has not started (rescheduled in place)
//! or one that has (a new job is created and the key tracks it).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::load::Loaded;
use super::model::{rfc3339, AuditEntry, KeyRecord, KeyState, Status};
use super::{invalid, parse_period, Actor, KeyError, Keys, Live};
use crate::alerts::job::{AlertJob, JobKind, JobState, NotificationRef, OperatorMessage, Severity};
use crate::alerts::maintenance::MaintenanceRun;
use crate::config::alerts::OPERATOR;
use crate::config::{AlertConfig, Directory};
use crate::store::{AlertBatch, Batch, JobFilter, Retire, Store, StoreError};

/// Longest error text kept on a job.
pub const MAX_ERROR_LEN: usize = 2000;

/// A planned notification: its time and source, if any.
pub(super) type Plan = Option<(DateTime<Utc>, String)>;

/// The writer lock, owned: a change carries it into the task that commits and
/// publishes, which holds it until the index shows the change.
pub(super) type Writer = tokio::sync::OwnedMutexGuard<()>;

/// Alert settings and the dispatcher's wake-up, held by [`Keys`].
#[derive(Debug, Default)]
pub(super) struct AlertState {
    config: RwLock<Arc<AlertConfig>>,
    wake: Arc<Notify>,
    pub(super) maintenance: parking_lot::Mutex<Vec<MaintenanceRun>>,
}

/// Request to set, change or cancel a key's notification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    /// Notification time (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// This long before the key's expiry (ISO 8601 period).
    #[serde(default)]
    pub before: Option<String>,
    /// Alert source.
    #[serde(default)]
    pub source: Option<String>,
    /// Remove the notification.
    #[serde(default)]
    pub cancel: bool,
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

fn internal(e: impl std::fmt::Display) -> KeyError {
    KeyError::Internal(e.to_string())
}

fn parse_at(s: &str) -> Result<DateTime<Utc>, KeyError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                "notify_at",
                format!("{s:?} is not an RFC 3339 time such as 2027-01-17T09:00:00Z"),
            )
        })
}

/// Give a new key record its planned notification and the job for it.
pub(super) fn attach_notification(
    mut rec: KeyRecord,
    plan: Plan,
    now: DateTime<Utc>,
) -> (KeyRecord, AlertBatch) {
    let mut batch = AlertBatch::default();
    if let Some((at, source)) = plan {
        let job = AlertJob::new(rec.id, JobKind::Notification, &source, at, now);
        rec.alerting.notification = Some(NotificationRef {
            at,
            source,
            job_id: job.id,
        });
        batch.put_jobs.push(job);
    }
    (rec, batch)
}

/// The audit fragment naming a key's notification.
pub(super) fn describe(rec: &KeyRecord) -> String {
    match &rec.alerting.notification {
        Some(n) => format!(
            " notify={} via {} job={}",
            rfc3339(n.at),
            n.source,
            n.job_id
        ),
        None => String::new(),
    }
}

/// When an edit moves the expiry before the notification, the notification moves
/// with it, keeping its lead time (at the earliest: now). Only a job that has not
/// started can be later than the new expiry, so the same job is rescheduled.
fn follow_expiry(
    rec: &mut KeyRecord,
    old_expiry: Option<DateTime<Utc>>,
    job: Option<AlertJob>,
    now: DateTime<Utc>,
) -> (String, AlertBatch) {
    let mut batch = AlertBatch::default();
    let (Some(n), Some(new_exp)) = (rec.alerting.notification.as_mut(), rec.expires_at) else {
        return (String::new(), batch);
    };
    if n.at <= new_exp {
        return (String::new(), batch);
    }
    let lead = old_expiry.map_or(Duration::zero(), |old| old - n.at);
    let at = (new_exp - lead).max(now).min(new_exp);
    n.at = at;
    if let Some(mut job) = job.filter(|j| !j.started()) {
        job.due_at = at;
        job.run_at = at;
        job.updated_at = now;
        batch.put_jobs.push(job);
    }
    (
        format!(" notify={} (moved with the expiry)", rfc3339(at)),
        batch,
    )
}

/// Removing a key cancels its notification job if it has not started.
pub(super) fn cancel_for_removal(
    rec: &mut KeyRecord,
    job: Option<AlertJob>,
    now: DateTime<Utc>,
) -> (String, AlertBatch) {
    let mut batch = AlertBatch::default();
    rec.alerting.notification = None;
    let mut detail = String::new();
    if let Some(mut job) = job.filter(|j| j.state == JobState::Scheduled) {
        job.state = JobState::Canceled;
        job.last_error = Some("the key was removed".into());
        job.updated_at = now;
        job.finished_at = Some(now);
        detail = format!("job {} canceled", job.id);
        batch.put_jobs.push(job);
    }
    (detail, batch)
}

/// Whether `source` can deliver to `owner`: a source that writes only to the owner's
/// email address needs them to have one. (Unknown sources are refused elsewhere.)
pub(super) fn reaches(
    config: &AlertConfig,
    directory: &Directory,
    source: &str,
    owner: &str,
) -> bool {
    config.source(source).is_none_or(|s| {
        !s.needs_owner_address()
            || directory
                .users
                .get(owner)
                .is_some_and(|u| u.email.is_some())
    })
}

/// The source a notification of `owner`'s key goes through. A source the caller
/// `named` that cannot reach the owner is refused, naming the field, rather than
/// failing when the notification falls due. One that was not named (the configured
/// default, or the key's current one) falls back to the built-in operator source,
/// with a note for the answer and the audit trail saying so.
pub(super) fn choose_source(
    config: &AlertConfig,
    directory: &Directory,
    owner: &str,
    source: String,
    named: bool,
) -> Result<(String, Option<String>), KeyError> {
    if reaches(config, directory, &source, owner) {
        return Ok((source, None));
    }
    let why = format!(
        "alert source {source:?} writes to the key owner's email address, and user {owner:?} has none (users.{owner}.email)"
    );
    if named {
        return Err(invalid(
            "alert_source",
            format!("{why}; set the address or choose another source, such as {OPERATOR:?}"),
        ));
    }
    match fallback_source(config, directory, owner) {
        Some(fallback) => {
            let note = format!("{why}: the notification goes through {fallback:?} instead");
            Ok((fallback, Some(note)))
        }
        None => Err(invalid(
            "alert_source",
            format!("{why}, and no source that can reach them is configured; name one with --alert-source, or say --no-notify"),
        )),
    }
}

/// The built-in operator source, when it is configured as one that can reach `owner`.
pub(super) fn fallback_source(
    config: &AlertConfig,
    directory: &Directory,
    owner: &str,
) -> Option<String> {
    (config.source(OPERATOR).is_some() && reaches(config, directory, OPERATOR, owner))
        .then(|| OPERATOR.to_owned())
}

fn cancel(job: &mut AlertJob, why: String, now: DateTime<Utc>) {
    job.state = JobState::Canceled;
    job.last_error = Some(why);
    job.updated_at = now;
    job.finished_at = Some(now);
}

impl Keys {
    // ------------------------------------------------------------ plumbing

    /// Replace the alert settings (start and SIGHUP).
    pub fn set_alert_config(&self, config: AlertConfig) {
        *self.alerts.config.write() = Arc::new(config);
    }

    /// Current alert settings.
    pub fn alert_config(&self) -> Arc<AlertConfig> {
        self.alerts.config.read().clone()
    }

    /// Notified whenever a job was scheduled or rescheduled (the dispatcher waits on it).
    pub fn jobs_changed(&self) -> Arc<Notify> {
        self.alerts.wake.clone()
    }

    /// The store (read-only use by the dispatcher and the admin API).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A key by id, any state.
    pub fn live(&self, id: Uuid) -> Option<Arc<Live>> {
        self.index.read().get(&id).cloned()
    }

    /// The full record of key `key_id` if its notification is carried out by `job_id`.
    fn tracking(&self, key_id: Uuid, job_id: Uuid) -> Result<Option<KeyRecord>, KeyError> {
        let Some(live) = self.live(key_id) else {
            return Ok(None);
        };
        let rec = self.record(&live)?;
        Ok(rec
            .alerting
            .notification
            .as_ref()
            .is_some_and(|n| n.job_id == job_id)
            .then_some(rec))
    }

    pub(super) async fn blocking<T, F>(&self, f: F) -> Result<T, KeyError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(internal)??)
    }

    /// Take the writer lock, owned, so that a change can hand it to [`Self::commit_then`].
    pub(super) async fn lock_writer(&self) -> Writer {
        self.writer.clone().lock_owned().await
    }

    /// Commit `batch` and `alerts`, then apply the change to the index with `apply`,
    /// as one blocking task that runs to its end whatever happens to the caller: an
    /// admin whose client hangs up mid-commit drops this future, and the store and
    /// the index must still agree (issue 9, item 2). The task holds `writer` until
    /// the index shows the change, and hands it back. If the commit fails, nothing
    /// is applied; `apply` itself cannot fail (prepare what it needs first).
    pub(super) async fn commit_then<T, F>(
        &self,
        writer: Writer,
        batch: Batch,
        alerts: AlertBatch,
        apply: F,
    ) -> Result<(T, Writer), KeyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut super::Index) -> T + Send + 'static,
    {
        let store = self.store.clone();
        let index = self.index.clone();
        let wake = (!alerts.put_jobs.is_empty()).then(|| self.alerts.wake.clone());
        tokio::task::spawn_blocking(move || {
            store.commit_with(batch, alerts)?;
            let out = apply(&mut index.write());
            if let Some(wake) = wake {
                wake.notify_one();
            }
            Ok((out, writer))
        })
        .await
        .map_err(internal)?
    }

    /// Commit one key's new record with its audit entry and job changes, and publish
    /// it (see [`Self::commit_then`]).
    pub(super) async fn commit_and_publish_with(
        &self,
        writer: Writer,
        rec: KeyRecord,
        audit: AuditEntry,
        jobs: AlertBatch,
        retire: Vec<Retire>,
    ) -> Result<(Arc<Live>, Writer), KeyError> {
        // Read before the commit: a record the index cannot hold is refused unsaved.
        let loaded = Loaded::from_record(&rec)?;
        let batch = Batch {
            put_keys: vec![rec],
            audit: vec![audit],
            retire,
        };
        self.commit_then(writer, batch, jobs, move |index| index.publish(loaded))
            .await
    }

    /// Like `modify`, with the key's current notification job at hand; `change`
    /// returns the audit detail and the job changes, committed with the key.
    pub(super) async fn modify_with_job<F>(
        &self,
        actor: &Actor,
        id: &str,
        action: &str,
        change: F,
    ) -> Result<Arc<Live>, KeyError>
    where
        F: FnOnce(
            &mut KeyRecord,
            Option<AlertJob>,
            DateTime<Utc>,
        ) -> Result<(String, AlertBatch), KeyError>,
    {
        let writer = self.lock_writer().await;
        let live = self.visible(actor, id)?;
        if live.life.state == KeyState::Removed {
            return Err(KeyError::Conflict(format!("key {} was removed", live.id)));
        }
        let mut rec = self.record(&live)?;
        let before = rec.clone();
        let job = match &rec.alerting.notification {
            Some(n) => {
                let job_id = n.job_id;
                self.blocking(move |s| s.job(job_id)).await?
            }
            None => None,
        };
        let now = self.clock.now();
        let (detail, jobs) = change(&mut rec, job, now)?;
        rec.updated_at = now;
        let audit = self.audit_entry(actor, action, rec.id, detail);
        let retire = super::retirements(&before, Some(&rec), now);
        let (new, _writer) = self
            .commit_and_publish_with(writer, rec, audit, jobs, retire)
            .await?;
        tracing::info!(key_id = %new.id, actor = %actor.name, action, "key changed");
        Ok(new)
    }

    /// `modify` for edits that may move the expiry: the notification follows.
    pub(super) async fn modify_following_expiry<F>(
        &self,
        actor: &Actor,
        id: &str,
        action: &str,
        change: F,
    ) -> Result<Arc<Live>, KeyError>
    where
        F: FnOnce(
            &mut KeyRecord,
            &super::Index,
            &super::Settings,
            DateTime<Utc>,
        ) -> Result<String, KeyError>,
    {
        let settings = self.settings();
        let index_snapshot = &self.index;
        self.modify_with_job(actor, id, action, |rec, job, now| {
            let old_expiry = rec.expires_at;
            let detail = {
                let index = index_snapshot.read();
                change(rec, &index, &settings, now)?
            };
            let (more, batch) = follow_expiry(rec, old_expiry, job, now);
            Ok((detail + &more, batch))
        })
        .await
    }

    // ------------------------------------------------------------ notification rules

    fn check_source(&self, config: &AlertConfig, source: &str) -> Result<(), KeyError> {
        if config.source(source).is_none() {
            return Err(invalid(
                "alert_source",
                format!(
                    "unknown alert source {source:?} (configured: {})",
                    config
                        .sources
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn check_time(
        at: DateTime<Utc>,
        expires: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), KeyError> {
        if at <= now {
            return Err(invalid(
                "notify_at",
                format!(
                    "{} is not in the future (now {})",
                    rfc3339(at),
                    rfc3339(now)
                ),
            ));
        }
        if let Some(exp) = expires.filter(|e| at > *e) {
            return Err(invalid(
                "notify_at",
                format!(
                    "{} is after the key's expiry {}: a notification must come before the key stops working",
                    rfc3339(at),
                    rfc3339(exp)
                ),
            ));
        }
        Ok(())
    }

    fn resolve_time(
        at: Option<&str>,
        before: Option<&str>,
        expires: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, KeyError> {
        match (at.map(str::trim), before.map(str::trim)) {
            (Some(_), Some(_)) => Err(invalid(
                "notify_at",
                "give either a time (--at) or a lead time (--before), not both",
            )),
            (Some(at), None) => parse_at(at).map(Some),
            (None, Some(b)) => {
                let p = parse_period("notify_before", b)?;
                let Some(exp) = expires else {
                    return Err(invalid(
                        "notify_before",
                        "the key never expires, so there is nothing to be before; give a time with --at",
                    ));
                };
                p.subtract_from(exp)
                    .map(Some)
                    .ok_or_else(|| invalid("notify_before", format!("{p} is too long")))
            }
            (None, None) => Ok(None),
        }
    }

    /// The notification a new key of `owner` gets: the one asked for, else the
    /// configured default; with a note when the source it would have had cannot reach
    /// the owner and another one was chosen (see [`choose_source`]).
    pub(super) fn plan_create_notification(
        &self,
        req: &super::CreateKey,
        owner: &str,
        directory: &Directory,
        expires: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(Plan, Option<String>), KeyError> {
        let config = self.alert_config();
        let named = req
            .alert_source
            .as_deref()
            .map(str::trim)
            .is_some_and(|s| !s.is_empty());
        let Some((at, source)) = self.plan_time_and_source(&config, req, expires, now)? else {
            return Ok((None, None));
        };
        let (source, note) = choose_source(&config, directory, owner, source, named)?;
        Ok((Some((at, source)), note))
    }

    fn plan_time_and_source(
        &self,
        config: &AlertConfig,
        req: &super::CreateKey,
        expires: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Plan, KeyError> {
        let asked = req.notify_at.is_some() || req.notify_before.is_some();
        if req.no_notification {
            if asked || req.alert_source.is_some() {
                return Err(invalid(
                    "notify_at",
                    "--no-notify cannot be combined with a notification time or source",
                ));
            }
            return Ok(None);
        }
        let source = match req.alert_source.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(s.to_owned()),
            _ => config.default_source.clone(),
        };
        if asked {
            let Some(source) = source else {
                return Err(invalid(
                    "alert_source",
                    "name an alert source (--alert-source): DefaultAlertSource is empty",
                ));
            };
            self.check_source(config, &source)?;
            let at = Self::resolve_time(
                req.notify_at.as_deref(),
                req.notify_before.as_deref(),
                expires,
            )?;
            let Some(at) = at else { return Ok(None) };
            Self::check_time(at, expires, now)?;
            return Ok(Some((at, source)));
        }
        if req.alert_source.is_some() {
            // A source alone uses the default lead time.
            if let Some(s) = &source {
                self.check_source(config, s)?;
            }
        }
        // The configured default: only for keys that expire, and only when the
        // resulting time is still in the future.
        let (Some(lead), Some(source), Some(exp)) = (&config.default_lead_time, source, expires)
        else {
            if req.alert_source.is_some() && expires.is_none() {
                return Err(invalid(
                    "alert_source",
                    "the key never expires; give the notification time with --notify-at",
                ));
            }
            return Ok(None);
        };
        match lead.subtract_from(exp) {
            Some(at) if at > now => Ok(Some((at, source))),
            _ if req.alert_source.is_some() => Err(invalid(
                "notify_before",
                format!(
                    "DefaultNotificationLeadTime ({lead}) before the expiry {} is not in the future; give --notify-at or --notify-before",
                    rfc3339(exp)
                ),
            )),
            _ => Ok(None),
        }
    }

    /// Set, change or cancel a key's notification.
    pub async fn notify(
        &self,
        actor: &Actor,
        id: &str,
        req: NotifyRequest,
    ) -> Result<super::KeyView, KeyError> {
        let config = self.alert_config();
        let settings = self.settings();
        let action = if req.cancel {
            "notify-cancel"
        } else {
            "notify"
        };
        let who = actor.name.clone();
        let mut note = None;
        let note_out = &mut note;
        let live = self
            .modify_with_job(actor, id, action, |rec, job, now| {
                let last_used = rec.last_used_at;
                if matches!(
                    rec.status(&settings.policy, last_used, now),
                    Status::Expired | Status::Inactive
                ) {
                    return Err(KeyError::Conflict(format!(
                        "key {} has expired; a notification can only be set, changed or cancelled while the key has not expired",
                        rec.id
                    )));
                }
                let mut batch = AlertBatch::default();
                if req.cancel {
                    if req.at.is_some() || req.before.is_some() || req.source.is_some() {
                        return Err(invalid(
                            "cancel",
                            "--cancel takes no time or source",
                        ));
                    }
                    let Some(n) = rec.alerting.notification.take() else {
                        return Err(KeyError::Conflict(format!(
                            "key {} has no notification to cancel",
                            rec.id
                        )));
                    };
                    let mut detail = format!("job {}", n.job_id);
                    if let Some(mut job) = job.filter(|j| j.state == JobState::Scheduled) {
                        cancel(&mut job, format!("notification cancelled by {who}"), now);
                        detail += " canceled";
                        batch.put_jobs.push(job);
                    }
                    return Ok((detail, batch));
                }
                let current = rec.alerting.notification.clone();
                let at = Self::resolve_time(req.at.as_deref(), req.before.as_deref(), rec.expires_at)?
                    .or(current.as_ref().map(|n| n.at));
                let Some(at) = at else {
                    return Err(invalid(
                        "notify_at",
                        "give the notification time with --at RFC3339 or --before PERIOD",
                    ));
                };
                let named = req.source.as_deref().map(str::trim).filter(|s| !s.is_empty());
                let source = match named {
                    Some(s) => s.to_owned(),
                    _ => match current.as_ref().map(|n| n.source.clone()).or(config.default_source.clone()) {
                        Some(s) => s,
                        None => {
                            return Err(invalid(
                                "alert_source",
                                "name an alert source (--source): DefaultAlertSource is empty",
                            ))
                        }
                    },
                };
                self.check_source(&config, &source)?;
                let (source, fallback) =
                    choose_source(&config, &settings.directory, &rec.owner, source, named.is_some())?;
                *note_out = fallback;
                Self::check_time(at, rec.expires_at, now)?;
                let (job, how) = match job {
                    Some(mut job) if !job.started() && current.is_some() => {
                        // Not started: the same job, rescheduled.
                        job.due_at = at;
                        job.run_at = at;
                        job.source = source.clone();
                        job.updated_at = now;
                        (job, "rescheduled")
                    }
                    old => {
                        let new = AlertJob::new(rec.id, JobKind::Notification, &source, at, now);
                        if let Some(mut old) = old.filter(|o| o.state == JobState::Scheduled) {
                            // Waiting for a retry: superseded by the new job.
                            cancel(&mut old, format!("superseded by job {}", new.id), now);
                            old.replaced_by = Some(new.id);
                            batch.put_jobs.push(old);
                        }
                        (new, "new job")
                    }
                };
                rec.alerting.notification = Some(NotificationRef {
                    at,
                    source: source.clone(),
                    job_id: job.id,
                });
                let mut detail = format!("at={} source={source} job={} ({how})", rfc3339(at), job.id);
                if let Some(n) = note_out.as_deref() {
                    detail = format!("{detail}; {n}");
                }
                batch.put_jobs.push(job);
                Ok((detail, batch))
            })
            .await?;
        let mut view = self.view(&live)?;
        view.notice = note;
        Ok(view)
    }

    // ------------------------------------------------------------ jobs for admins

    fn may_see_job(&self, actor: &Actor, job: &AlertJob) -> bool {
        actor.admin
            || self
                .live(job.key_id)
                .is_some_and(|l| *l.owner == *actor.name)
    }

    /// One job visible to `actor`.
    pub async fn job(&self, actor: &Actor, id: &str) -> Result<AlertJob, KeyError> {
        let uuid = Uuid::parse_str(id.trim())
            .map_err(|_| invalid("id", format!("{id:?} is not a job id (a UUID)")))?;
        let job = self.blocking(move |s| s.job(uuid)).await?;
        match job {
            Some(j) if self.may_see_job(actor, &j) => Ok(j),
            _ => Err(KeyError::NotFound(format!("{uuid} (no such job)"))),
        }
    }

    /// One page of the jobs visible to `actor`, newest first: anyone but an admin
    /// reads only the jobs of their own keys, which the store indexes by owner.
    pub async fn jobs(
        &self,
        actor: &Actor,
        key: Option<&str>,
        state: Option<&str>,
        page: &super::PageRequest,
    ) -> Result<super::Page<AlertJob>, KeyError> {
        let limit = page.limit(super::page::DEFAULT_JOBS)?;
        let before = page.job_cursor()?;
        let key = match key {
            Some(k) => Some(self.visible(actor, k)?.id),
            None => None,
        };
        let state = match state {
            Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                invalid(
                    "state",
                    format!("{s:?} is not one of Scheduled, Running, Completed, Failed, Canceled"),
                )
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
        Ok(super::Page {
            items: found.items,
            next_cursor: found.next.map(super::page::job_cursor),
        })
    }

    /// `job cancel` (or `job delete`): the job is Canceled (or deleted) and the key
    /// that tracks it loses its notification, in one transaction.
    pub async fn cancel_or_delete_job(
        &self,
        actor: &Actor,
        id: &str,
        delete: bool,
    ) -> Result<AlertJob, KeyError> {
        let job = self.job(actor, id).await?;
        let verb = if delete { "deleted" } else { "cancelled" };
        if job.state == JobState::Running {
            return Err(KeyError::Conflict(format!(
                "job {} is being delivered right now and cannot be {verb}; try again in a moment",
                job.id
            )));
        }
        if !delete && job.state.is_final() {
            return Err(KeyError::Conflict(format!(
                "job {} is already {}",
                job.id,
                job.state.as_str()
            )));
        }
        let writer = self.lock_writer().await;
        // Re-read under the writer lock: the dispatcher may have claimed it since.
        let job_id = job.id;
        let Some(mut job) = self.blocking(move |s| s.job(job_id)).await? else {
            return Err(KeyError::NotFound(format!("{job_id} (no such job)")));
        };
        if job.state == JobState::Running {
            return Err(KeyError::Conflict(format!(
                "job {} is being delivered right now and cannot be {verb}",
                job.id
            )));
        }
        let now = self.clock.now();
        let mut batch = AlertBatch::default();
        if delete {
            batch.delete_jobs.push(job.id);
        } else {
            cancel(&mut job, format!("cancelled by {}", actor.name), now);
            batch.put_jobs.push(job.clone());
        }
        let tracked = self.tracking(job.key_id, job.id)?;
        let action = if delete { "job-delete" } else { "job-cancel" };
        match tracked {
            Some(mut rec) => {
                rec.alerting.notification = None;
                rec.updated_at = now;
                let audit = self.audit_entry(
                    actor,
                    action,
                    rec.id,
                    format!("job {} {verb}; notification cleared", job.id),
                );
                self.commit_and_publish_with(writer, rec, audit, batch, vec![])
                    .await?;
            }
            None => {
                let mut audit =
                    self.audit_entry(actor, action, job.key_id, format!("job {} {verb}", job.id));
                audit.seq = 0;
                let batch_keys = Batch {
                    put_keys: vec![],
                    audit: vec![audit],
                    retire: vec![],
                };
                self.commit_then(writer, batch_keys, batch, |_| ()).await?;
            }
        }
        tracing::info!(job_id = %job.id, key_id = %job.key_id, actor = %actor.name, action, "alert job changed");
        Ok(job)
    }

    // ------------------------------------------------------------ the dispatcher's side

    /// Claim up to `limit` due jobs (persisted Running before delivery).
    pub async fn claim_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<AlertJob>, KeyError> {
        let _writer = self.writer.lock().await;
        self.blocking(move |s| s.claim_due(now, limit)).await
    }

    /// Record how an attempt ended: Completed; Scheduled again after a backoff;
    /// Failed with an operator message once attempts are used up; Canceled when
    /// the key no longer tracks the job.
    pub async fn finish_job(&self, job_id: Uuid, outcome: Outcome) -> Result<AlertJob, KeyError> {
        let config = self.alert_config();
        let _writer = self.writer.lock().await;
        let Some(mut job) = self.blocking(move |s| s.job(job_id)).await? else {
            return Err(KeyError::NotFound(format!("{job_id} (no such job)")));
        };
        let now = self.clock.now();
        job.updated_at = now;
        let mut batch = AlertBatch::default();
        let still_wanted = match job.kind {
            JobKind::Notification => self
                .tracking(job.key_id, job.id)?
                .is_some_and(|r| r.state != KeyState::Removed),
            JobKind::InactivityWarning => self
                .live(job.key_id)
                .is_some_and(|l| l.life.state != KeyState::Removed),
        };
        match outcome {
            Outcome::Delivered => {
                job.state = JobState::Completed;
                job.finished_at = Some(now);
                tracing::info!(job_id = %job.id, key_id = %job.key_id, source = %job.source, attempts = job.attempts, "alert delivered");
            }
            Outcome::Dropped(why) => {
                cancel(&mut job, why, now);
            }
            Outcome::Failed { error, permanent } => {
                let error = truncate(error);
                job.last_error = Some(error.clone());
                if permanent || job.attempts >= config.max_attempts {
                    job.state = JobState::Failed;
                    job.finished_at = Some(now);
                    let title = format!("alert job {} failed", job.id);
                    let text = format!(
                        "Alert job {} for key {} (source {}) failed after {} attempt(s): {error}",
                        job.id, job.key_id, job.source, job.attempts
                    );
                    tracing::warn!(job_id = %job.id, key_id = %job.key_id, attempts = job.attempts, error = %error, "alert job failed");
                    batch.messages.push(OperatorMessage {
                        id: 0,
                        at: now,
                        severity: Severity::Error,
                        title,
                        text,
                        key_id: Some(job.key_id),
                        job_id: Some(job.id),
                        acknowledged_by: None,
                        acknowledged_at: None,
                    });
                } else if !still_wanted {
                    cancel(
                        &mut job,
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
                    job.run_at = now + Duration::from_std(delay).unwrap_or(Duration::minutes(1));
                    tracing::info!(job_id = %job.id, attempt = job.attempts, retry_at = %rfc3339(job.run_at), error = %error, "alert attempt failed; will retry");
                }
            }
        }
        batch.put_jobs.push(job.clone());
        self.blocking(move |s| s.commit_alerts(batch)).await?;
        if job.state == JobState::Scheduled {
            self.alerts.wake.notify_one();
        }
        Ok(job)
    }

    /// At start: every job left Running (the daemon died during its delivery) is
    /// Canceled and replaced by a new job due now, which the key tracks.
    pub async fn recover_running_jobs(&self) -> Result<usize, KeyError> {
        let mut writer = self.lock_writer().await;
        let running = self.blocking(|s| s.running_jobs()).await?;
        let now = self.clock.now();
        let n = running.len();
        for mut old in running {
            let mut new = AlertJob::new(old.key_id, old.kind, &old.source, old.due_at, now);
            new.origin = old.origin;
            new.replaces = Some(old.id);
            new.run_at = now;
            let why = format!(
                "interrupted: the daemon stopped during delivery (attempt {}); replaced by job {}",
                old.attempts, new.id
            );
            cancel(&mut old, why, now);
            old.replaced_by = Some(new.id);
            let mut batch = AlertBatch::default();
            let tracked = self.tracking(old.key_id, old.id)?;
            tracing::warn!(job_id = %old.id, new_job_id = %new.id, key_id = %old.key_id, "alert job was interrupted; replaced");
            match tracked {
                Some(mut rec) => {
                    if let Some(n) = rec.alerting.notification.as_mut() {
                        n.job_id = new.id;
                    }
                    rec.updated_at = now;
                    let audit = AuditEntry {
                        seq: 0,
                        at: now,
                        actor: "apikeyd".into(),
                        action: "notify-replace".into(),
                        key_id: Some(rec.id),
                        detail: format!("job {} interrupted; replaced by job {}", old.id, new.id),
                    };
                    batch.put_jobs = vec![old, new];
                    (_, writer) = self
                        .commit_and_publish_with(writer, rec, audit, batch, vec![])
                        .await?;
                }
                None => {
                    batch.put_jobs = vec![old, new];
                    self.blocking(move |s| s.commit_alerts(batch)).await?;
                }
            }
        }
        if n > 0 {
            self.alerts.wake.notify_one();
        }
        Ok(n)
    }

    // ------------------------------------------------------------ operator messages

    /// Store an operator message (and log it at warn level).
    pub async fn post_message(&self, message: OperatorMessage) -> Result<(), KeyError> {
        tracing::warn!(
            severity = ?message.severity,
            key_id = ?message.key_id,
            job_id = ?message.job_id,
            title = %message.title,
            text = %message.text,
            "operator message"
        );
        self.blocking(move |s| {
            s.commit_alerts(AlertBatch {
                messages: vec![message],
                ..AlertBatch::default()
            })
        })
        .await
    }

    /// Operator messages (administrators only).
    pub async fn messages(
        &self,
        actor: &Actor,
        unacknowledged: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, KeyError> {
        if !actor.admin {
            return Err(KeyError::Forbidden(
                "operator messages are for administrators".into(),
            ));
        }
        self.blocking(move |s| s.messages(unacknowledged, limit))
            .await
    }

    /// Acknowledge an operator message.
    pub async fn ack_message(&self, actor: &Actor, id: &str) -> Result<OperatorMessage, KeyError> {
        if !actor.admin {
            return Err(KeyError::Forbidden(
                "operator messages are for administrators".into(),
            ));
        }
        let n: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid("id", format!("{id:?} is not a message id (a number)")))?;
        let _writer = self.writer.lock().await;
        let Some(mut m) = self.blocking(move |s| s.message(n)).await? else {
            return Err(KeyError::NotFound(format!("{n} (no such message)")));
        };
        if let (Some(by), Some(at)) = (&m.acknowledged_by, m.acknowledged_at) {
            return Err(KeyError::Conflict(format!(
                "message {n} was already acknowledged by {by} at {}",
                rfc3339(at)
            )));
        }
        m.acknowledged_by = Some(actor.name.clone());
        m.acknowledged_at = Some(self.clock.now());
        let put = m.clone();
        self.blocking(move |s| {
            s.commit_alerts(AlertBatch {
                messages: vec![put],
                ..AlertBatch::default()
            })
        })
        .await?;
        Ok(m)
    }
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
