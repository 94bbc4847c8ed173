//! The key side of the maintenance jobs: the expiry sweep, the purge and the
//! inactivity warning, which `crate::alerts::maintenance` runs on its schedule. Each
//! runs under the keys writer and commits one transaction. A new time-driven rule
//! for keys plugs in here, as one more function over [`Keys`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::KeyError;
use super::live::Live;
use super::notification;
use super::rules::retirements;
use super::Keys;
use crate::config::{Period, Policy};
use crate::model::{rfc3339, AlertJob, AuditEntry, JobKind, KeyRecord, KeyState, Lifetime, Status};
use crate::store::Change;

/// When the purge deletes a key: RetentionPeriod after it was removed, or after
/// it expired (the earlier of its limits, if it is not used again). `None`: never.
/// The plan (`super::plan`) reads the same rule.
pub(crate) fn purge_after(
    life: &Lifetime,
    last_used: Option<DateTime<Utc>>,
    policy: &Policy,
    retention: &Period,
) -> Option<DateTime<Utc>> {
    let ended = match life.state {
        KeyState::Removed => life.removed_at,
        _ => life.effective_expiry(policy, last_used).map(|(t, _)| t),
    };
    ended.and_then(|t| retention.add_to(t))
}

/// The inactivity warning a key is owed for its current idle stretch, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InactivityWarning {
    /// Start of the idle stretch it is about.
    pub(crate) stretch: DateTime<Utc>,
    /// When the key expires through inactivity if not used again.
    pub(crate) deadline: DateTime<Utc>,
    /// From when the warning run sends it (InactivityWarningLeadTime before the
    /// deadline); `None`: the lead time reaches before any date.
    pub(crate) from: Option<DateTime<Utc>>,
}

/// Whether a key will be warned that it expires through inactivity: only when
/// inactivity comes before its hard limit (which has its own notification), and
/// once per idle stretch (`warned_for`). The warning run and the plan both ask.
pub(crate) fn inactivity_warning(
    life: &Lifetime,
    policy: &Policy,
    last_used: Option<DateTime<Utc>>,
    warned_for: Option<DateTime<Utc>>,
    lead: &Period,
) -> Option<InactivityWarning> {
    let deadline = life.inactivity_deadline(policy, last_used)?;
    if life.expires_at.is_some_and(|h| h <= deadline) {
        return None;
    }
    let stretch = life.last_activity(last_used);
    if warned_for == Some(stretch) {
        return None;
    }
    Some(InactivityWarning {
        stretch,
        deadline,
        from: lead.subtract_from(deadline),
    })
}

/// An audit entry the daemon itself writes about key `key`.
fn entry(now: DateTime<Utc>, action: &str, key: Uuid, detail: String) -> AuditEntry {
    AuditEntry::new(now, "apikeyd", action, Some(key), detail)
}

/// Record (once per key, with an audit entry) keys that expired or went inactive.
pub async fn sweep_expired(keys: &Keys) -> Result<usize, KeyError> {
    let writer = keys.lock_writer().await;
    let policy = keys.settings().policy.clone();
    let now = keys.clock.now();
    // The slots hold everything the status needs, one cache line per key in a row:
    // at 1M keys this scan takes milliseconds, where visiting every entry took
    // a quarter of a second on the only worker of a one-thread runtime. Removed
    // keys have no slot and are never expired or inactive.
    let picked: Vec<(Arc<Live>, &'static str)> = keys.index.read().sweep_statuses(&policy, now);
    if picked.is_empty() {
        return Ok(0);
    }
    let mut records = Vec::new();
    let mut audit = Vec::new();
    for (mut rec, action) in records_of(keys, picked).await? {
        // Another node may have seen a use this node has not (cluster mode).
        let lapse = rec.status(&policy, None, now);
        if !matches!(lapse, Status::Expired | Status::Inactive) {
            continue;
        }
        rec.alerting.lapse_recorded_at = Some(now);
        audit.push(entry(
            now,
            action,
            rec.id,
            rec.details(&policy, rec.last_used_at, now),
        ));
        records.push(rec);
    }
    let n = records.len();
    if n == 0 {
        return Ok(0);
    }
    let change = Change {
        put_keys: records,
        audit,
        ..Change::default()
    };
    keys.commit(writer, change).await?;
    tracing::info!(keys = n, "expiry sweep recorded expired keys");
    Ok(n)
}

/// Delete keys removed, or expired, longer than RetentionPeriod ago.
pub async fn purge(keys: &Keys) -> Result<usize, KeyError> {
    let Some(retention) = keys.alerting.config().retention.clone() else {
        return Ok(0);
    };
    let writer = keys.lock_writer().await;
    let policy = keys.settings().policy.clone();
    let now = keys.clock.now();
    let mut gone = Vec::new();
    {
        let index = keys.index.read();
        for l in index.all() {
            if purge_after(&l.life, index.last_used(l), &policy, &retention)
                .is_some_and(|until| until <= now)
            {
                gone.push(l.clone());
            }
        }
    }
    if gone.is_empty() {
        return Ok(0);
    }
    // An expired key still holds its secret until now: retire it with the purge,
    // so that purging does not free an imported token for anyone to import.
    let holding: Vec<Uuid> = gone
        .iter()
        .filter(|l| l.life.state != KeyState::Removed)
        .map(|l| l.id)
        .collect();
    let held = if holding.is_empty() {
        Vec::new()
    } else {
        keys.blocking(move |s| s.keys(&holding)).await?
    };
    // Another node may have seen a use this node has not (cluster mode): a key
    // whose stored last use keeps it alive is not purged.
    let alive: std::collections::HashSet<Uuid> = held
        .iter()
        .filter(|rec| {
            purge_after(&rec.lifetime(), rec.last_used_at, &policy, &retention)
                .is_none_or(|until| until > now)
        })
        .map(|rec| rec.id)
        .collect();
    gone.retain(|l| !alive.contains(&l.id));
    if gone.is_empty() {
        return Ok(0);
    }
    let audit: Vec<AuditEntry> = gone
        .iter()
        .map(|l| {
            entry(
                now,
                "purge",
                l.id,
                format!(
                    "name={:?} owner={} (RetentionPeriod {retention})",
                    l.name, l.owner
                ),
            )
        })
        .collect();
    let ids: Vec<Uuid> = gone.iter().map(|l| l.id).collect();
    let retire = held
        .iter()
        .filter(|rec| !alive.contains(&rec.id))
        .flat_map(|rec| retirements(rec, None, now))
        .collect();
    let change = Change {
        purge_keys: ids.clone(),
        audit,
        retire,
        ..Change::default()
    };
    keys.commit(writer, change).await?;
    tracing::info!(keys = ids.len(), "purged keys past RetentionPeriod");
    Ok(ids.len())
}

/// Keys that will expire through inactivity within InactivityWarningLeadTime get
/// one warning per idle stretch, through the default alert source, as a job.
pub async fn schedule_inactivity_warnings(keys: &Keys) -> Result<usize, KeyError> {
    let config = keys.alerting.config();
    let (Some(lead), Some(source)) = (
        config.inactivity_warning_lead_time.clone(),
        config.default_source.clone(),
    ) else {
        return Ok(0);
    };
    let writer = keys.lock_writer().await;
    let policy = keys.settings().policy.clone();
    let now = keys.clock.now();
    let mut picked = Vec::new();
    {
        let index = keys.index.read();
        // Slots first (see sweep_expired), and no calendar arithmetic for keys
        // plainly clear of the warning: a key is warned once now is within the
        // lead time of (last activity + inactivity period), so its last activity
        // lies at most (longest lead - shortest period) before now. The rest are
        // looked at by the entry's rules, as before.
        let Some(period) = &policy.not_accessed_expiration else {
            return Ok(0);
        };
        let latest_ms = now
            .timestamp_millis()
            .saturating_add((lead.max_seconds() - period.min_seconds() + 1).saturating_mul(1000));
        let near = index.table.iter().filter(|slot| {
            slot.activity_ms() <= latest_ms && slot.status(&policy, now) == Status::Active
        });
        for (slot, l) in near.filter_map(|slot| Some((slot, index.at(slot.entry)?))) {
            let Some(w) =
                inactivity_warning(&l.life, &policy, slot.last_used(), l.warned_for, &lead)
            else {
                continue;
            };
            if w.from.is_none_or(|from| now < from) {
                continue;
            }
            picked.push((l.clone(), (w.stretch, w.deadline)));
        }
    }
    if picked.is_empty() {
        return Ok(0);
    }
    let mut records = Vec::new();
    let mut audit = Vec::new();
    let mut alerts = Change::default();
    let directory = keys.settings().directory.clone();
    for (mut rec, (stretch, deadline)) in records_of(keys, picked).await? {
        // A use another node wrote moves the deadline out of the lead time.
        if rec.last_used_at.is_some_and(|t| t > stretch) {
            continue;
        }
        rec.alerting.inactivity_warned_for = Some(stretch);
        let expires = format!("expires {} through inactivity", rfc3339(deadline));
        // An owner without an address gets the warning through the operators.
        let detail = match notification::choose_source(
            &config,
            &directory,
            &rec.owner,
            source.clone(),
            false,
        ) {
            Ok((source, note)) => {
                let job = AlertJob::new(rec.id, JobKind::InactivityWarning, &source, now, now);
                let detail = format!("{expires}; warning job {} via {source}", job.id);
                alerts.put_jobs.push(job);
                match note {
                    Some(note) => format!("{detail}; {note}"),
                    None => detail,
                }
            }
            Err(e) => format!("{expires}; no warning sent: {e}"),
        };
        audit.push(entry(now, "inactivity-warning", rec.id, detail));
        records.push(rec);
    }
    let n = records.len();
    if n == 0 {
        return Ok(0);
    }
    let change = Change {
        put_keys: records,
        audit,
        ..alerts
    };
    keys.commit(writer, change).await?;
    tracing::info!(keys = n, "inactivity warnings scheduled");
    Ok(n)
}

/// Full records (with in-memory usage) of `picked` keys, each with its note. A
/// later last use in the store (written by another node) raises the key's slot,
/// so that this node judges inactivity on the latest use across the cluster.
async fn records_of<T: Send + 'static>(
    keys: &Keys,
    picked: Vec<(Arc<Live>, T)>,
) -> Result<Vec<(KeyRecord, T)>, KeyError> {
    let ids: Vec<Uuid> = picked.iter().map(|(l, _)| l.id).collect();
    let records = keys.blocking(move |s| s.keys(&ids)).await?;
    let mut by_id: std::collections::HashMap<Uuid, KeyRecord> =
        records.into_iter().map(|r| (r.id, r)).collect();
    let index = keys.index.read();
    Ok(picked
        .into_iter()
        .filter_map(|(l, note)| {
            let mut rec = by_id.remove(&l.id)?;
            if let (Some(slot), Some(t)) = (index.slot(&l), rec.last_used_at) {
                slot.raise_last_used(t.timestamp());
            }
            index.merge_usage(&mut rec, &l);
            Some((rec, note))
        })
        .collect())
}
