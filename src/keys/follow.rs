//! Cluster mode: other nodes' key changes reach this node's index. The store says
//! which keys other nodes changed ([`crate::store::Storage::changes`]); they are
//! published here under the writer, as this node's own changes are, so verification
//! refuses a key disabled on another node as soon as the change is read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::KeyError;
use super::following::FollowingStatus;
use super::Keys;
use crate::model::KeyRow;

impl Keys {
    /// Whether other nodes share this node's store (cluster mode).
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// Whether the store answered the last time it was used.
    pub fn store_available(&self) -> bool {
        self.store.available()
    }

    /// Following other nodes, for `/metrics` (`None` on a store nobody else uses).
    pub fn following(&self) -> Option<FollowingStatus> {
        if !self.shared() {
            return None;
        }
        let f = &self.following;
        let now = self.clock.now().timestamp_millis();
        let read_at = f.read_at_ms.load(Ordering::Relaxed);
        let stale_after = i64::try_from(f.poll_ms.load(Ordering::Relaxed))
            .unwrap_or(1000)
            .saturating_mul(2);
        let mut lag_ms = f.lag_ms.load(Ordering::Relaxed) as f64;
        if read_at > 0 && now - read_at > stale_after {
            lag_ms = lag_ms.max((now - read_at) as f64);
        }
        Some(FollowingStatus {
            lag_seconds: lag_ms / 1000.0,
            applied: f.applied.load(Ordering::Relaxed),
            reloads: f.reloads.load(Ordering::Relaxed),
        })
    }

    /// Apply every key change other nodes committed since the last call; returns
    /// how many keys changed here.
    pub async fn catch_up(&self) -> Result<usize, KeyError> {
        let mut total = 0;
        loop {
            let writer = self.lock_writer().await;
            let changes = self.blocking(|s| s.changes()).await?;
            let f = &self.following;
            f.read_at_ms
                .store(self.clock.now().timestamp_millis(), Ordering::Relaxed);
            let lag = changes.lag.unwrap_or(0.0).max(0.0) * 1000.0;
            f.lag_ms.store(lag as u64, Ordering::Relaxed);
            if changes.reload {
                drop(writer);
                total += self.reload_all(changes.upto).await?;
                continue;
            }
            let mut gone = changes.gone;
            let rows: Vec<KeyRow> = changes
                .put
                .iter()
                .filter_map(|rec| match KeyRow::from_record(rec) {
                    Ok(row) => Some(row),
                    Err(e) => {
                        // Fail closed: refused here rather than served as it was.
                        tracing::error!(key_id = %rec.id, error = %e, "another node wrote a key this node cannot hold; refused on this node");
                        gone.push(rec.id);
                        None
                    }
                })
                .collect();
            let n = rows.len() + gone.len();
            {
                let mut index = self.index.write();
                for row in rows {
                    index.publish(row);
                }
                for id in &gone {
                    index.remove(*id);
                }
            }
            self.store.changes_applied(changes.upto);
            drop(writer);
            if n > 0 {
                f.applied.fetch_add(n as u64, Ordering::Relaxed);
                tracing::debug!(keys = n, "applied other nodes' key changes");
            }
            total += n;
            if !changes.more {
                return Ok(total);
            }
        }
    }

    /// Raise last uses to those other nodes wrote lately (inactivity is judged on
    /// the latest use across the cluster); returns how many keys moved.
    pub async fn catch_up_uses(&self) -> Result<usize, KeyError> {
        let uses = self.blocking(|s| s.recent_uses()).await?;
        let index = self.index.read();
        let mut raised = 0;
        for (id, at) in uses {
            let Some(slot) = index.get(&id).and_then(|l| index.slot(l)) else {
                continue;
            };
            if slot.last_used_s() < at.timestamp() {
                slot.raise_last_used(at.timestamp());
                raised += 1;
            }
        }
        Ok(raised)
    }

    /// Replace the index by every key in the store (this node fell further behind
    /// than the change log reaches, or the store lost changes it showed), then
    /// follow the log from `upto` (read before the keys, so nothing committed
    /// meanwhile is missed). Usage counted here is
    /// written first, so nothing counted is lost; if anything fails, the position
    /// stays where it was and the next read asks for a reload again.
    async fn reload_all(&self, upto: u64) -> Result<usize, KeyError> {
        if self.shared() {
            tracing::warn!("this node fell behind the change log's retention: reloading every key");
        } else {
            tracing::warn!(
                "the database lost changes the index showed: reloading every key from it"
            );
        }
        self.flush_last_used(true).await?;
        let writer = self.lock_writer().await;
        let store = self.store.clone();
        let settings = self.settings();
        let now = self.clock.now();
        let index = tokio::task::spawn_blocking(move || super::load_index(&*store, &settings, now))
            .await
            .map_err(super::error::internal)??;
        let n = index.by_id.len();
        *self.index.write() = index;
        self.store.changes_applied(upto);
        drop(writer);
        self.following.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }
}

/// A store nobody else uses asks for a reload of the index only when it lost
/// changes the index shows (redb, reopened after a write failed): look every
/// `poll` until `stop`.
async fn reload_when_asked(keys: Arc<Keys>, poll: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = keys.catch_up().await {
            tracing::error!(error = %e, "cannot reload the keys from the database; verification goes on with what the index has");
        }
    }
}

/// Follow other nodes' changes until `stop`: read the log whenever the store
/// signals a change, and every `poll` anyway (a notification can be lost, and
/// some PostgreSQL-compatible servers have none). Returns at once if nobody else
/// uses the store.
pub async fn follow(keys: Arc<Keys>, poll: Duration, mut stop: watch::Receiver<bool>) {
    if !keys.shared() {
        return reload_when_asked(keys, poll, stop).await;
    }
    keys.following.poll_ms.store(
        u64::try_from(poll.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    let signal = keys.store.change_signal();
    let mut failing = false;
    // Last uses move a key's inactivity deadline, months away: twice a minute is
    // plenty, and cheaper than logging every usage write as a change.
    let mut uses = tokio::time::interval(Duration::from_secs(30));
    uses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notified = async {
            match &signal {
                Some(s) => s.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(poll) => {}
            _ = uses.tick() => {
                if let Err(e) = keys.catch_up_uses().await {
                    tracing::debug!(error = %e, "cannot read other nodes' last uses");
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        match keys.catch_up().await {
            Ok(_) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("reading other nodes' changes again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(error = %e, "cannot read other nodes' changes; verification goes on with what this node has");
                }
            }
        }
    }
}
