//! [`Keys::modify`], the step every change of an existing key goes through: under
//! the writer, read the record (and, when asked, its notification job), let the
//! change validate and edit a copy, then commit it with its audit entry, any job
//! changes and the secrets it retires, and publish it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::error::{internal, KeyError};
use super::index::Index;
use super::live::Live;
use super::rules::{retirements, rotation_warning_dropped};
use super::types::{Actor, Settings};
use super::Keys;
use crate::model::{AlertJob, AuditEntry, JobState, KeyRecord, KeyState};
use crate::store::Change;

/// What a change sees besides the record it edits.
pub(super) struct Ctx<'a> {
    /// The index, read-locked for the change (names, quotas).
    pub(super) index: &'a Index,
    /// The rules in force.
    pub(super) settings: &'a Settings,
    /// The job of the key's notification, if it has one.
    pub(super) job: Option<AlertJob>,
    /// The time of the change.
    pub(super) now: DateTime<Utc>,
    /// Job changes to commit with the key.
    pub(super) jobs: Change,
}

/// Whether a change reads the key's notification job ([`Ctx::job`]). Those that do
/// not (enable, disable, rotate) never depend on the job record: a disable works
/// whatever state that record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WithJob {
    Yes,
    No,
}

impl Keys {
    /// Change key `id` in place through `change`, which validates and edits a copy of
    /// its record and returns the audit detail (and, in [`Ctx::jobs`], job changes).
    /// Nothing is written if it fails.
    pub(super) async fn modify<F>(
        &self,
        actor: &Actor,
        id: &str,
        (action, with_job): (&str, WithJob),
        change: F,
    ) -> Result<Arc<Live>, KeyError>
    where
        F: FnOnce(&mut KeyRecord, &mut Ctx<'_>) -> Result<String, KeyError>,
    {
        let writer = self.lock_writer().await;
        let live = self.visible(actor, id)?;
        if live.life.state == KeyState::Removed {
            return Err(KeyError::Conflict(format!("key {} was removed", live.id)));
        }
        let settings = self.settings();
        let mut rec = self.record(&live).await?;
        let before = rec.clone();
        let job = match rec.alerting.notification.as_ref().map(|n| n.job_id) {
            Some(job_id) if with_job == WithJob::Yes => {
                self.blocking(move |s| s.job(job_id)).await?
            }
            _ => None,
        };
        let now = self.clock.now();
        let (detail, mut commit) = {
            let index = self.index.read();
            let mut ctx = Ctx {
                index: &index,
                settings: &settings,
                job,
                now,
                jobs: Change::default(),
            };
            let detail = change(&mut rec, &mut ctx)?;
            (detail, ctx.jobs)
        };
        rec.updated_at = now;
        // A change that ends a rotation waiting for a first use cancels its warning.
        if let Some((job_id, why)) = rotation_warning_dropped(&before, &rec) {
            let job = self.blocking(move |s| s.job(job_id)).await?;
            if let Some(mut job) = job.filter(|j| j.state == JobState::Scheduled) {
                job.cancel(why.to_owned(), now);
                commit.put_jobs.push(job);
            }
        }
        commit.retire = retirements(&before, Some(&rec), now);
        commit.audit.push(AuditEntry::new(
            now,
            &actor.name,
            action,
            Some(rec.id),
            detail,
        ));
        commit.put_keys.push(rec);
        let mut published = self.commit(writer, commit).await?;
        let new = published
            .pop()
            .ok_or_else(|| internal("a committed change published no key"))?;
        tracing::info!(key_id = %new.id, actor = %actor.name, action, "key changed");
        Ok(new)
    }
}
