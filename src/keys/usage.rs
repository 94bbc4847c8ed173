//! The last-used flush: usage counted in memory by verification, written in
//! batches, at most once per [`LAST_USED_PERSIST_INTERVAL`] per key.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::{internal, KeyError};
use super::live::Live;
use super::table::NEVER;
use super::{Keys, LAST_USED_PERSIST_INTERVAL};
use crate::model::UsageCounts;
use crate::store::UsageUpdate;

impl Keys {
    /// Write last-used times that changed. A key is written at most once per
    /// [`LAST_USED_PERSIST_INTERVAL`] unless `force` (shutdown). Returns keys written.
    pub async fn flush_last_used(&self, force: bool) -> Result<usize, KeyError> {
        // Not the writer: a flush only adds to the stored counts (a change keeps
        // them), so changes and other nodes' changes need not wait for its writes.
        let _flushing = self.flushing.lock().await;
        if !self.touched.swap(false, Ordering::AcqRel) && !force {
            return Ok(0);
        }
        let now = self.clock.now().timestamp();
        let interval = LAST_USED_PERSIST_INTERVAL.num_seconds();
        let mut waiting = false;
        let mut due: Vec<Arc<Live>> = Vec::new();
        let mut updates: Vec<UsageUpdate> = Vec::new();
        {
            let index = self.index.read();
            for slot in index.table.iter().filter(|s| s.is_dirty()) {
                let Some(l) = index.at(slot.entry) else {
                    continue;
                };
                let at = l.persisted_at.load(Ordering::Relaxed);
                if force || at == NEVER || now.saturating_sub(at) >= interval {
                    // Cleared before the counters are read: a use racing with this
                    // flush sets the flag again and is written next time.
                    slot.set_dirty(false);
                    let (verifications, denied) = slot.take_counts();
                    updates.push(UsageUpdate {
                        id: l.id,
                        last_used_at: slot.last_used(),
                        counts: UsageCounts {
                            verifications,
                            denied,
                            routes: l.take_route_counts(),
                        },
                    });
                    due.push(l.clone());
                } else {
                    waiting = true;
                }
            }
        }
        if waiting {
            // Uses newer than the store but within the one-minute rule: next time.
            self.touched.store(true, Ordering::Relaxed);
        }
        if due.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let (written, updates) = tokio::task::spawn_blocking(move || {
            let written = store.write_usage(&updates);
            (written, updates)
        })
        .await
        .map_err(internal)?;
        if let Err(e) = written {
            // Nothing was added: the counts go back to be written next time.
            let index = self.index.read();
            for (l, u) in due.iter().zip(updates) {
                if let Some(slot) = index.slot(l) {
                    slot.restore_counts(u.counts.verifications, u.counts.denied);
                    slot.set_dirty(true);
                }
                l.restore_route_counts(u.counts.routes);
            }
            self.touched.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
        for l in &due {
            l.persisted_at.store(now, Ordering::Relaxed);
        }
        tracing::debug!(keys = due.len(), "last-used times flushed");
        Ok(due.len())
    }

    /// Keys with usage not yet written, and the age in seconds of the oldest write
    /// among them (0 if none): the "last-used flush lag".
    pub fn unflushed(&self) -> (usize, i64) {
        let now = self.clock.now().timestamp();
        let index = self.index.read();
        let mut count = 0;
        let mut lag = 0;
        for slot in index.table.iter().filter(|s| s.is_dirty()) {
            count += 1;
            let at = index
                .at(slot.entry)
                .map_or(NEVER, |l| l.persisted_at.load(Ordering::Relaxed));
            if at != NEVER {
                lag = lag.max(now.saturating_sub(at));
            }
        }
        (count, lag)
    }

    /// Number of keys per status, from counters (no scan): disabled and removed
    /// as of now, expired and inactive as of the last expiry sweep (or the start).
    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        self.index.read().counts.snapshot()
    }
}
