//! [`MemoryStore`]: the [`Storage`] contract kept in ordinary maps, for unit tests
//! of the key and job rules (no temp files, no fsync). It keeps what the redb store
//! keeps, in the same orders, and pages listings the same way; the conformance tests
//! (`store/conformance_tests.rs`) run both against the same scenarios.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use uuid::Uuid;

use super::error::StoreError;
use super::export::{Export, RecordCounts};
use super::page::{Page, Pager};
use super::storage::{AuditFilter, Change, JobFilter, Storage, UsageUpdate};
use crate::model::{
    AlertJob, AuditEntry, JobState, KeyHash, KeyRecord, KeyRow, OperatorMessage, RetiredSecret,
};

/// Storage in memory: lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
    /// Tests: a commit writing a key with one of these names fails whole.
    #[cfg(test)]
    pub(crate) refuse_names: Mutex<Vec<String>>,
}

#[derive(Debug, Default)]
struct Data {
    keys: BTreeMap<Uuid, KeyRecord>,
    /// Audit entries by sequence, with the owner their key had when written.
    audit: BTreeMap<u64, (AuditEntry, Option<String>)>,
    retired: HashMap<KeyHash, RetiredSecret>,
    /// Jobs by id (UUID v7: id order is age), with the owner their key had when
    /// the job was first written.
    jobs: BTreeMap<Uuid, (AlertJob, Option<String>)>,
    messages: BTreeMap<u64, OperatorMessage>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Millisecond precision, as the due index of the redb store keeps run times.
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl Storage for MemoryStore {
    fn key_count(&self) -> Result<usize, StoreError> {
        Ok(self.data.lock().keys.len())
    }

    fn load_keys(&self, each: &mut dyn FnMut(KeyRow)) -> Result<usize, StoreError> {
        let rows = self
            .data
            .lock()
            .keys
            .values()
            .map(KeyRow::from_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt {
                table: "keys",
                source: Box::new(e),
            })?;
        let n = rows.len();
        rows.into_iter().for_each(each);
        Ok(n)
    }

    fn keys(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>, StoreError> {
        let data = self.data.lock();
        Ok(ids
            .iter()
            .filter_map(|id| data.keys.get(id).cloned())
            .collect())
    }

    fn retired(&self, hash: &KeyHash) -> Result<Option<RetiredSecret>, StoreError> {
        Ok(self.data.lock().retired.get(hash).cloned())
    }

    fn write_usage(&self, updates: &[UsageUpdate]) -> Result<usize, StoreError> {
        let mut data = self.data.lock();
        let mut written = 0;
        for u in updates {
            if let Some(rec) = data.keys.get_mut(&u.id) {
                rec.last_used_at = rec.last_used_at.max(u.last_used_at);
                rec.usage.add(&u.counts);
                written += 1;
            }
        }
        Ok(written)
    }

    fn commit(&self, mut change: Change) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            let refused = self.refuse_names.lock();
            if change.put_keys.iter().any(|r| refused.contains(&r.name)) {
                return Err(StoreError::Conflict("refused for the test".into()));
            }
        }
        let mut data = self.data.lock();
        for rec in &mut change.put_keys {
            if let Some(stored) = data.keys.get(&rec.id) {
                rec.keep_usage_of(stored);
            }
            data.keys.insert(rec.id, rec.clone());
        }
        let mut seq = data.audit.last_key_value().map_or(0, |(s, _)| *s);
        for mut entry in change.audit.drain(..) {
            seq += 1;
            entry.seq = seq;
            let owner = entry
                .key_id
                .and_then(|k| data.keys.get(&k))
                .map(|r| r.owner.clone());
            data.audit.insert(seq, (entry, owner));
        }
        for id in &change.purge_keys {
            data.keys.remove(id);
        }
        for r in &change.retire {
            if r.refresh_only && !data.retired.contains_key(&r.hash) {
                continue;
            }
            data.retired.insert(r.hash, r.entry.clone());
        }
        for id in &change.delete_jobs {
            data.jobs.remove(id);
        }
        for job in change.put_jobs.drain(..) {
            let owner = match data.jobs.get(&job.id) {
                Some((_, owner)) => owner.clone(),
                None => data.keys.get(&job.key_id).map(|r| r.owner.clone()),
            };
            data.jobs.insert(job.id, (job, owner));
        }
        let mut next = data.messages.last_key_value().map_or(1, |(id, _)| id + 1);
        for mut m in change.messages.drain(..) {
            if m.id == 0 {
                m.id = next;
                next += 1;
            }
            data.messages.insert(m.id, m);
        }
        Ok(())
    }

    fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry, u64>, StoreError> {
        let data = self.data.lock();
        let mut page = Pager::new(limit);
        let Some(hi) = before.map_or(Some(u64::MAX), |b| b.checked_sub(1)) else {
            return Ok(page.done());
        };
        // Only the entries the redb store's indexes would hold are examined.
        let indexed =
            |entry: &AuditEntry, owner: &Option<String>| match (&filter.key, &filter.owner) {
                (Some(k), _) => entry.key_id == Some(*k),
                (None, Some(o)) => entry.key_id.is_some() && owner.as_deref() == Some(o.as_str()),
                (None, None) => true,
            };
        for (seq, (entry, owner)) in data.audit.range(..=hi).rev() {
            if !indexed(entry, owner) {
                continue;
            }
            if !page.admit(*seq) {
                break;
            }
            page.items.push(entry.clone());
        }
        Ok(page.done())
    }

    fn job(&self, id: Uuid) -> Result<Option<AlertJob>, StoreError> {
        Ok(self.data.lock().jobs.get(&id).map(|(j, _)| j.clone()))
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Page<AlertJob, u128>, StoreError> {
        let data = self.data.lock();
        let mut page = Pager::new(filter.limit);
        let Some(hi) = filter.before.map_or(Some(u128::MAX), |b| b.checked_sub(1)) else {
            return Ok(page.done());
        };
        for (id, (job, owner)) in data.jobs.range(..=Uuid::from_u128(hi)).rev() {
            // The jobs the redb store's key or owner index would walk.
            let walked = match (&filter.key, &filter.owner) {
                (Some(k), _) => job.key_id == *k,
                (None, Some(o)) => owner.as_deref() == Some(o.as_str()),
                (None, None) => true,
            };
            if !walked {
                continue;
            }
            if !page.admit(id.as_u128()) {
                break;
            }
            if filter.key.is_some()
                && filter
                    .owner
                    .as_deref()
                    .is_some_and(|o| owner.as_deref().unwrap_or("") != o)
            {
                continue;
            }
            if filter.state.is_none_or(|s| s == job.state) {
                page.items.push(job.clone());
            }
        }
        Ok(page.done())
    }

    fn claim_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertJob>, StoreError> {
        let mut data = self.data.lock();
        let mut due: Vec<(i64, Uuid)> = data
            .jobs
            .values()
            .filter(|(j, _)| j.state == JobState::Scheduled && ms(j.run_at) <= ms(now))
            .map(|(j, _)| (ms(j.run_at), j.id))
            .collect();
        due.sort_unstable();
        // As the redb store: at least one, whatever the limit.
        due.truncate(limit.max(1));
        let mut claimed = Vec::with_capacity(due.len());
        for (_, id) in due {
            if let Some((job, _)) = data.jobs.get_mut(&id) {
                job.state = JobState::Running;
                job.attempts += 1;
                job.updated_at = now;
                job.started_at.get_or_insert(now);
                claimed.push(job.clone());
            }
        }
        Ok(claimed)
    }

    fn running_jobs(&self, _now: DateTime<Utc>) -> Result<Vec<AlertJob>, StoreError> {
        Ok(self
            .data
            .lock()
            .jobs
            .values()
            .filter(|(j, _)| j.state == JobState::Running)
            .map(|(j, _)| j.clone())
            .collect())
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .data
            .lock()
            .jobs
            .values()
            .filter(|(j, _)| j.state == JobState::Scheduled)
            .map(|(j, _)| ms(j.run_at))
            .min()
            .and_then(DateTime::from_timestamp_millis))
    }

    fn job_state_counts(&self) -> [(JobState, u64); JobState::ALL.len()] {
        let data = self.data.lock();
        JobState::ALL.map(|s| {
            let n = data.jobs.values().filter(|(j, _)| j.state == s).count();
            (s, u64::try_from(n).unwrap_or(u64::MAX))
        })
    }

    fn messages(
        &self,
        unacknowledged_only: bool,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        Ok(self
            .data
            .lock()
            .messages
            .values()
            .rev()
            .filter(|m| !unacknowledged_only || m.acknowledged_at.is_none())
            .take(limit.max(1))
            .cloned()
            .collect())
    }

    fn message(&self, id: u64) -> Result<Option<OperatorMessage>, StoreError> {
        Ok(self.data.lock().messages.get(&id).cloned())
    }
}

impl Export for MemoryStore {
    fn export_counts(&self) -> Result<RecordCounts, StoreError> {
        let data = self.data.lock();
        let n = |len: usize| u64::try_from(len).unwrap_or(u64::MAX);
        Ok(RecordCounts {
            keys: n(data.keys.len()),
            audit: n(data.audit.len()),
            jobs: n(data.jobs.len()),
            messages: n(data.messages.len()),
            retired: n(data.retired.len()),
        })
    }

    fn export_keys(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        let data = self.data.lock();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(data
            .keys
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn export_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .audit
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }

    /// Sorted here: the map has no order.
    fn export_retired(
        &self,
        after: Option<KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, RetiredSecret)>, StoreError> {
        let data = self.data.lock();
        let mut out: Vec<(KeyHash, RetiredSecret)> = data
            .retired
            .iter()
            .filter(|(h, _)| after.is_none_or(|a| **h > a))
            .map(|(h, r)| (*h, r.clone()))
            .collect();
        out.sort_unstable_by_key(|a| a.0);
        out.truncate(limit);
        Ok(out)
    }

    fn export_messages(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OperatorMessage>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .messages
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }
}
