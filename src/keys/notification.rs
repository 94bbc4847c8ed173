//! A key's notification: one alert job per key (the RunMyJobs extension's rules).
//! When it is due, from which source, how it follows the key's expiry, and
//! [`Keys::notify`], which sets, changes or cancels it. Every job change of a key
//! goes through the keys writer, so the dispatcher claiming a job and an owner
//! editing its notification are serialised: an edit sees either a job that has not
//! started (rescheduled in place) or one that has (a new job is created and the key
//! tracks it).

use chrono::{DateTime, Duration, Utc};

use super::error::{invalid, KeyError};
use super::modify::WithJob;
use super::rules::{parse_period, parse_time};
use super::types::{Actor, CreateKey, KeyView, NotifyRequest};
use super::Keys;
use crate::config::alerts::OPERATOR;
use crate::config::{AlertConfig, Directory};
use crate::model::{rfc3339, AlertJob, JobKind, JobState, KeyRecord, NotificationRef, Status};
use crate::store::Change;

/// A planned notification: its time and source, if any.
pub(super) type Plan = Option<(DateTime<Utc>, String)>;

/// Give a new key record its planned notification and the job for it.
pub(super) fn attach(mut rec: KeyRecord, plan: Plan, now: DateTime<Utc>) -> (KeyRecord, Change) {
    let mut batch = Change::default();
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
pub(super) fn follow_expiry(
    rec: &mut KeyRecord,
    old_expiry: Option<DateTime<Utc>>,
    job: Option<AlertJob>,
    now: DateTime<Utc>,
) -> (String, Change) {
    let mut batch = Change::default();
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
) -> (String, Change) {
    let mut batch = Change::default();
    rec.alerting.notification = None;
    let mut detail = String::new();
    if let Some(mut job) = job.filter(|j| j.state == JobState::Scheduled) {
        job.cancel("the key was removed".into(), now);
        detail = format!("job {} canceled", job.id);
        batch.put_jobs.push(job);
    }
    (detail, batch)
}

/// Whether `source` can deliver to `owner`: a source that writes only to the owner's
/// email address needs them to have one. (Unknown sources are refused elsewhere.)
fn reaches(config: &AlertConfig, directory: &Directory, source: &str, owner: &str) -> bool {
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
pub(crate) fn choose_source(
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
fn fallback_source(config: &AlertConfig, directory: &Directory, owner: &str) -> Option<String> {
    (config.source(OPERATOR).is_some() && reaches(config, directory, OPERATOR, owner))
        .then(|| OPERATOR.to_owned())
}

fn check_source(config: &AlertConfig, source: &str) -> Result<(), KeyError> {
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
        (Some(at), None) => parse_time("notify_at", at).map(Some),
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
pub(super) fn plan_create(
    config: &AlertConfig,
    req: &CreateKey,
    owner: &str,
    directory: &Directory,
    expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(Plan, Option<String>), KeyError> {
    let named = req
        .alert_source
        .as_deref()
        .map(str::trim)
        .is_some_and(|s| !s.is_empty());
    let Some((at, source)) = plan_time_and_source(config, req, expires, now)? else {
        return Ok((None, None));
    };
    let (source, note) = choose_source(config, directory, owner, source, named)?;
    Ok((Some((at, source)), note))
}

fn plan_time_and_source(
    config: &AlertConfig,
    req: &CreateKey,
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
        check_source(config, &source)?;
        let at = resolve_time(
            req.notify_at.as_deref(),
            req.notify_before.as_deref(),
            expires,
        )?;
        let Some(at) = at else { return Ok(None) };
        check_time(at, expires, now)?;
        return Ok(Some((at, source)));
    }
    if req.alert_source.is_some() {
        // A source alone uses the default lead time.
        if let Some(s) = &source {
            check_source(config, s)?;
        }
    }
    // The configured default: only for keys that expire, and only when the
    // resulting time is still in the future.
    let (Some(lead), Some(source), Some(exp)) = (&config.default_lead_time, source, expires) else {
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

impl Keys {
    /// Set, change or cancel a key's notification.
    pub async fn notify(
        &self,
        actor: &Actor,
        id: &str,
        req: NotifyRequest,
    ) -> Result<KeyView, KeyError> {
        let config = self.alerting.config();
        let action = if req.cancel {
            "notify-cancel"
        } else {
            "notify"
        };
        let mut note = None;
        let note_out = &mut note;
        let live = self
            .modify(actor, id, (action, WithJob::Yes), |rec, ctx| {
                let (job, now) = (ctx.job.take(), ctx.now);
                if matches!(
                    rec.status(&ctx.settings.policy, rec.last_used_at, now),
                    Status::Expired | Status::Inactive
                ) {
                    return Err(KeyError::Conflict(format!(
                        "key {} has expired; a notification can only be set, changed or cancelled while the key has not expired",
                        rec.id
                    )));
                }
                if req.cancel {
                    let (detail, jobs) = cancel_notification(rec, &req, job, &actor.name, now)?;
                    ctx.jobs = jobs;
                    return Ok(detail);
                }
                let (at, source, fallback) =
                    notification_asked(rec, &req, &config, &ctx.settings.directory, now)?;
                let (detail, jobs) = schedule(rec, job, at, &source, now);
                ctx.jobs = jobs;
                let detail = match &fallback {
                    Some(n) => format!("{detail}; {n}"),
                    None => detail,
                };
                *note_out = fallback;
                Ok(detail)
            })
            .await?;
        let mut view = self.view(&live).await?;
        view.notice = note;
        Ok(view)
    }
}

/// `notify --cancel`: the key loses its notification, and its job, if waiting, is
/// Canceled.
fn cancel_notification(
    rec: &mut KeyRecord,
    req: &NotifyRequest,
    job: Option<AlertJob>,
    who: &str,
    now: DateTime<Utc>,
) -> Result<(String, Change), KeyError> {
    if req.at.is_some() || req.before.is_some() || req.source.is_some() {
        return Err(invalid("cancel", "--cancel takes no time or source"));
    }
    let Some(n) = rec.alerting.notification.take() else {
        return Err(KeyError::Conflict(format!(
            "key {} has no notification to cancel",
            rec.id
        )));
    };
    let mut detail = format!("job {}", n.job_id);
    let mut jobs = Change::default();
    if let Some(mut job) = job.filter(|j| j.state == JobState::Scheduled) {
        job.cancel(format!("notification cancelled by {who}"), now);
        detail += " canceled";
        jobs.put_jobs.push(job);
    }
    Ok((detail, jobs))
}

/// The time and source a `notify` request asks for, what it leaves out taken from
/// the key's current notification or the configured default; with a note when the
/// source that would have been used cannot reach the owner ([`choose_source`]).
fn notification_asked(
    rec: &KeyRecord,
    req: &NotifyRequest,
    config: &AlertConfig,
    directory: &Directory,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, String, Option<String>), KeyError> {
    let current = rec.alerting.notification.as_ref();
    let at = resolve_time(req.at.as_deref(), req.before.as_deref(), rec.expires_at)?
        .or(current.map(|n| n.at));
    let Some(at) = at else {
        return Err(invalid(
            "notify_at",
            "give the notification time with --at RFC3339 or --before PERIOD",
        ));
    };
    let named = req
        .source
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let source = match named {
        Some(s) => s.to_owned(),
        None => match current
            .map(|n| n.source.clone())
            .or(config.default_source.clone())
        {
            Some(s) => s,
            None => {
                return Err(invalid(
                    "alert_source",
                    "name an alert source (--source): DefaultAlertSource is empty",
                ))
            }
        },
    };
    check_source(config, &source)?;
    let (source, fallback) = choose_source(config, directory, &rec.owner, source, named.is_some())?;
    check_time(at, rec.expires_at, now)?;
    Ok((at, source, fallback))
}

/// Point the key's notification at `at` through `source`: its job rescheduled in
/// place if it has not started, else a new job (superseding one waiting for a
/// retry). Returns the audit detail and the job changes.
fn schedule(
    rec: &mut KeyRecord,
    job: Option<AlertJob>,
    at: DateTime<Utc>,
    source: &str,
    now: DateTime<Utc>,
) -> (String, Change) {
    let mut jobs = Change::default();
    let (job, how) = match job {
        Some(mut job) if !job.started() && rec.alerting.notification.is_some() => {
            job.due_at = at;
            job.run_at = at;
            job.source = source.to_owned();
            job.updated_at = now;
            (job, "rescheduled")
        }
        old => {
            let new = AlertJob::new(rec.id, JobKind::Notification, source, at, now);
            if let Some(mut old) = old.filter(|o| o.state == JobState::Scheduled) {
                old.cancel(format!("superseded by job {}", new.id), now);
                old.replaced_by = Some(new.id);
                jobs.put_jobs.push(old);
            }
            (new, "new job")
        }
    };
    rec.alerting.notification = Some(NotificationRef {
        at,
        source: source.to_owned(),
        job_id: job.id,
    });
    let detail = format!("at={} source={source} job={} ({how})", rfc3339(at), job.id);
    jobs.put_jobs.push(job);
    (detail, jobs)
}
