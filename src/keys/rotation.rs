//! Rotation that waits for the new secret's first use (`key rotate --until-used`):
//! the old secret keeps working until the new one is first used successfully, then
//! for `[ApiKey] RotationOverlapPeriod`, or until the max grace ends if it never is.
//!
//! The state is in the key record ([`Rotation`], beside `previous_hash` and
//! `previous_valid_until`, which verification already honours), so a restart
//! keeps it. Verification notices the first use from a flag in the slot it reads
//! anyway (`verify.rs`), claims it once in the key's entry and queues it
//! (`first_use.rs`); a background task ([`switch_on_first_use`]) commits the switch through
//! [`Keys::modify`] and never the request. In cluster mode whichever node sees the
//! use commits; the others read the switch from the change log. A commit that
//! fails gives the claim back, so the next use tells again.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

use super::error::{invalid, KeyError};
use super::first_use::FirstUse;
use super::modify::{Ctx, WithJob};
use super::notification::choose_source;
use super::rules::{optional_period, parse_period};
use super::types::{Actor, Issued, RotateKey};
use super::Keys;
use crate::config::{AlertConfig, Period};
use crate::model::{rfc3339, AlertJob, JobKind, KeyRecord, Rotation};
use crate::store::StoreError;

/// `--max-grace` when none is given: a week, enough for a client deployed weekly
/// to pick up the new secret (at most MaxExpirationPeriod, and never past the
/// key's expiry).
pub const DEFAULT_MAX_GRACE: &str = "p7d";

/// The longest lead of the warning that the new secret was never used.
const MAX_WARNING_LEAD: Duration = Duration::days(1);

/// Commits of one switch tried before its claim is given back.
const SWITCH_ATTEMPTS: usize = 3;

/// What a rotation does with the old secret.
pub(super) enum Grace {
    /// It stops at once.
    None,
    /// It keeps working for this period.
    For(Period),
    /// It keeps working until the new secret's first use (then for the overlap),
    /// at most for this period: given with `--max-grace` (`true`, checked against
    /// the policy) or the default (`false`, shortened to the policy).
    UntilUsed(Period, bool),
}

/// The warning's lead before the max grace ends: a quarter of the time the client
/// has, at most a day (a week's grace warns on its sixth day).
fn warning_lead(window: Duration) -> Duration {
    (window / 4).min(MAX_WARNING_LEAD)
}

/// When the old secret stops if the new one is never used: `max_grace` from
/// `now`, never past `expires`. A grace given explicitly (`asked`) must lie
/// within the policy; the default is shortened to it.
fn max_grace_until(
    max_grace: &Period,
    asked: bool,
    max_lifetime: Option<&Period>,
    expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, KeyError> {
    let mut until = max_grace
        .add_to(now)
        .ok_or_else(|| invalid("max_grace", format!("{max_grace} is too long")))?;
    if until < now + Duration::minutes(1) {
        return Err(invalid(
            "max_grace",
            format!("{max_grace} is shorter than a minute (pt1m): the client needs time to pick up the new secret"),
        ));
    }
    if let Some(max) = max_lifetime {
        if let Some(limit) = max.add_to(now).filter(|limit| until > *limit) {
            if asked {
                return Err(invalid(
                    "max_grace",
                    format!("{max_grace} is longer than MaxExpirationPeriod ({max}): the old secret may not outlive what a new key could"),
                ));
            }
            until = limit;
        }
    }
    Ok(expires.map_or(until, |exp| until.min(exp)))
}

/// Start a rotation that waits for the new secret's first use on `rec`, whose
/// previous secret becomes `old`: it keeps working until the max grace ends, and
/// the key's alert source (its notification's, else the default) is warned
/// before then by a job, which the switch cancels. Returns the audit detail.
pub(super) fn start(
    rec: &mut KeyRecord,
    ctx: &mut Ctx<'_>,
    old: String,
    (max_grace, asked): (&Period, bool),
    alerting: &AlertConfig,
) -> Result<String, KeyError> {
    let now = ctx.now;
    let policy = &ctx.settings.policy;
    let until = max_grace_until(
        max_grace,
        asked,
        policy.max_expiration.as_ref(),
        rec.expires_at,
        now,
    )?;
    rec.previous_hash = Some(old);
    rec.previous_valid_until = Some(until);
    let mut detail = format!(
        "until the new secret's first use; old secret valid until {} at most (max grace {max_grace})",
        rfc3339(until)
    );
    let source = rec
        .alerting
        .notification
        .as_ref()
        .map(|n| n.source.clone())
        .or_else(|| alerting.default_source.clone());
    let warning_job = match source {
        None => {
            detail += "; no warning: the key has no alert source and DefaultAlertSource is empty";
            None
        }
        Some(source) => {
            match choose_source(alerting, &ctx.settings.directory, &rec.owner, source, false) {
                Ok((source, note)) => {
                    let due = until - warning_lead(until - now);
                    let job = AlertJob::new(rec.id, JobKind::RotationWarning, &source, due, now);
                    detail += &format!(
                        "; warning job {} via {source} at {} if the new secret is not used by then",
                        job.id,
                        rfc3339(due)
                    );
                    if let Some(note) = note {
                        detail += &format!("; {note}");
                    }
                    let id = job.id;
                    ctx.jobs.put_jobs.push(job);
                    Some(id)
                }
                Err(e) => {
                    detail += &format!("; no warning: {e}");
                    None
                }
            }
        }
    };
    rec.rotation = Some(Rotation {
        started_at: now,
        max_grace_until: until,
        switched_at: None,
        warning_job,
    });
    Ok(detail)
}

/// What `--until-used` does with the old secret, at most for `max_grace` (given)
/// or [`DEFAULT_MAX_GRACE`].
fn until_used(max_grace: Option<Period>) -> Result<Grace, KeyError> {
    Ok(match max_grace {
        Some(p) => Grace::UntilUsed(p, true),
        None => Grace::UntilUsed(parse_period("max_grace", DEFAULT_MAX_GRACE)?, false),
    })
}

/// The daemon itself, as the actor of the switch.
fn daemon() -> Actor {
    Actor {
        name: "apikeyd".into(),
        admin: true,
    }
}

impl Keys {
    /// Rotate a key as `req` asks: with `until_used`, [`Self::rotate_until_used`];
    /// else [`Self::rotate`].
    pub async fn rotate_as(
        &self,
        actor: &Actor,
        id: &str,
        req: &RotateKey,
    ) -> Result<Issued, KeyError> {
        let grace = optional_period("grace", req.grace.as_deref())?;
        let max_grace = optional_period("max_grace", req.max_grace.as_deref())?;
        let grace = match (req.until_used, grace, max_grace) {
            (true, Some(_), _) => {
                return Err(invalid(
                    "grace",
                    "give either --grace or --until-used (with --max-grace), not both",
                ))
            }
            (false, _, Some(_)) => {
                return Err(invalid("max_grace", "--max-grace goes with --until-used"))
            }
            (true, None, max_grace) => until_used(max_grace)?,
            (false, grace, None) => grace.map_or(Grace::None, Grace::For),
        };
        self.rotate_with(actor, id, grace).await
    }

    /// Give a key a new secret; the old one keeps working until the new one is
    /// first used successfully, then for `[ApiKey] RotationOverlapPeriod`, and at
    /// most for `max_grace` ([`DEFAULT_MAX_GRACE`] if `None`).
    pub async fn rotate_until_used(
        &self,
        actor: &Actor,
        id: &str,
        max_grace: Option<&str>,
    ) -> Result<Issued, KeyError> {
        let grace = until_used(optional_period("max_grace", max_grace)?)?;
        self.rotate_with(actor, id, grace).await
    }

    /// Commit the switch of every rotation whose new secret verification saw
    /// used since the last call; returns how many switched. A switch that cannot
    /// be committed gives its claim back, so the key's next use tells again.
    pub async fn switch_first_uses(&self) -> Result<usize, KeyError> {
        let mut switched = 0;
        let mut failed = None;
        for first in self.rotations.take() {
            match self.switch(first).await {
                Ok(true) => switched += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key_id = %first.id, error = %e, "cannot record the first use of a rotated key's new secret; its next use tries again");
                    if let Some(live) = self.live(first.id).filter(|l| l.hash == first.hash) {
                        live.unclaim_first_use();
                    }
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(switched),
        }
    }

    /// One switch, tried again after reading other nodes' changes when one of
    /// them changed the key first; `false` if there is nothing to switch any more
    /// (switched already, here or on another node; rotated again; removed).
    async fn switch(&self, first: FirstUse) -> Result<bool, KeyError> {
        let mut attempt = 1;
        loop {
            match self.switch_once(first).await {
                Err(KeyError::Store(StoreError::Conflict(_))) if attempt < SWITCH_ATTEMPTS => {
                    attempt += 1;
                    self.catch_up().await?;
                }
                other => return other,
            }
        }
    }

    async fn switch_once(&self, first: FirstUse) -> Result<bool, KeyError> {
        let overlap = Duration::from_std(self.settings().policy.rotation_overlap)
            .unwrap_or(Duration::minutes(5));
        let hash = hex::encode(first.hash);
        let changed = self
            .modify(
                &daemon(),
                &first.id.to_string(),
                ("rotate-switch", WithJob::No),
                |rec, _ctx| {
                    // A Conflict here means "nothing to do": the caller tells it
                    // from a store conflict, which is tried again.
                    if rec.hash != hash || rec.pending_rotation().is_none() {
                        return Err(KeyError::Conflict(format!(
                            "key {} has no rotation waiting for this secret",
                            rec.id
                        )));
                    }
                    let retired = first.at + overlap;
                    let until = rec.previous_valid_until.map_or(retired, |t| t.min(retired));
                    if rec.previous_hash.is_some() {
                        rec.previous_valid_until = Some(until);
                    }
                    if let Some(r) = rec.rotation.as_mut() {
                        r.switched_at = Some(first.at);
                    }
                    Ok(format!(
                        "rotation switched: new secret first used at {}; old secret retired at {}",
                        rfc3339(first.at),
                        rfc3339(until)
                    ))
                },
            )
            .await;
        match changed {
            Ok(_) => Ok(true),
            Err(KeyError::Conflict(_) | KeyError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Commit the switches verification hands on ([`Keys::switch_first_uses`]) until
/// `stop`, then once more for uses seen before it. After a failure it waits a
/// second, so a database that is down is not asked on every use.
pub async fn switch_on_first_use(keys: Arc<Keys>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = keys.rotations.wake.notified() => {}
            _ = stop.changed() => break,
        }
        if keys.switch_first_uses().await.is_err() {
            tokio::select! {
                _ = tokio::time::sleep(StdDuration::from_secs(1)) => {}
                _ = stop.changed() => break,
            }
        }
    }
    let _ = keys.switch_first_uses().await;
}
