//! Keys: the key service, [`Keys`], and the rules it applies.
//!
//! [`Keys`] owns the in-memory index (keyed hash → key) that verification reads
//! without touching the store, and serialises every change through one writer:
//! validate under the writer lock, commit to the store in `spawn_blocking`, then
//! publish the new record to the index ([`Keys::commit`]). Last-used times live in
//! atomics and are flushed in batches, at most once a minute per key.
//!
//! The files, by concern:
//! - [`types`]: requests and answers; [`error`]: [`KeyError`];
//! - `rules`: the pure validation rules (no store);
//! - `live`, `index`, `status`, `table`: the in-memory index;
//! - `verify`: verification; `queries`: views, listings, the audit trail; `list`:
//!   the filters and orders of `key list`;
//! - `create`, `change`: admin changes; `notification`: a key's alert job rules;
//! - [`rotation`], `first_use`: rotation that waits for the new secret's first use;
//! - `usage`: the last-used flush; [`maintenance`]: the sweep, purge and warnings;
//! - [`secret`], [`page`], [`seed`]: secrets, paging, bulk seeding.

mod backup;
mod batch;
mod change;
mod create;
pub mod error;
mod first_use;
pub mod follow;
mod following;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod import;
mod index;
mod list;
mod live;
pub mod maintenance;
mod modify;
mod notification;
pub mod page;
pub mod plan;
mod queries;
pub mod rotation;
mod rules;
pub mod secret;
pub mod seed;
mod status;
mod table;
pub mod types;
mod usage;
mod verify;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::AlertConfig;
use crate::model::{AlertJob, KeyRecord, KeyRow, KeyState};
use crate::store::{Change, Storage, StoreError, UsageUpdate};
use error::internal;
use index::{grants_of, Index};
use secret::KeyHasher;
use table::Slot;

pub use crate::config::ipfilter;
pub use crate::model::headers;
pub use crate::model::key as model;
pub use error::KeyError;
pub use following::FollowingStatus;
pub use index::Regranted;
pub use list::KeyQuery;
pub use live::Live;
pub use page::{Page, PageRequest};
pub use seed::seed;
pub use types::{
    import_too_large, max_import_bytes, policy_lines, view_of, Actor, CreateKey, EditKey,
    ImportRefused, ImportSummary, Issued, KeyView, LineProblem, NotifyRequest, RotateKey,
    RotationView, Settings, Verification, Whoami,
};

/// How long a last-used time may sit in memory before it is written (per key).
pub const LAST_USED_PERSIST_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);

/// Bytes the index holds per key, inline: its verification slot and its entry
/// (without the entry's heap parts: its name, and IP filters or headers if any).
pub fn index_bytes_per_key() -> (usize, usize) {
    (std::mem::size_of::<Slot>(), std::mem::size_of::<Live>())
}

/// The writer lock, owned: a change carries it into the task that commits and
/// publishes, which holds it until the index shows the change. While it is
/// wanted or held, the change is counted in [`Keys`]' `writers` (group commit).
pub(crate) struct Writer {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _counted: Counted,
}

/// One change on its way to the store, counted until dropped (also when the
/// caller gives up while waiting for the writer).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The alert settings a key's notification follows, and the dispatcher's wake-up:
/// key changes schedule alert jobs, and the dispatcher waits for them.
#[derive(Debug, Default)]
pub struct Alerting {
    config: RwLock<Arc<AlertConfig>>,
    wake: Arc<Notify>,
}

impl Alerting {
    /// Current alert settings.
    pub fn config(&self) -> Arc<AlertConfig> {
        self.config.read().clone()
    }

    /// Replace the alert settings (start and SIGHUP).
    pub fn set_config(&self, config: AlertConfig) {
        *self.config.write() = Arc::new(config);
    }

    /// Notified whenever a job was scheduled or rescheduled.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// What [`Keys::change_job`] hands the job side's decision, read under the writer.
#[derive(Debug)]
pub(crate) struct JobScope {
    /// The job as stored now (`None`: no such job).
    pub(crate) job: Option<AlertJob>,
    /// The full record of the key whose notification the job carries out, if one
    /// does (a job the key no longer tracks has none).
    pub(crate) tracking: Option<KeyRecord>,
    /// The time of the change.
    pub(crate) now: DateTime<Utc>,
}

/// The key service.
pub struct Keys {
    clock: SharedClock,
    hasher: KeyHasher,
    store: Arc<dyn Storage>,
    settings: RwLock<Arc<Settings>>,
    /// Shared with the blocking task that commits a change and publishes it, so the
    /// two happen together even when the caller is dropped in between.
    index: Arc<RwLock<Index>>,
    /// Serialises changes; owned guards travel into that task (see [`Writer`]).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Changes that want or hold the writer: a commit waiting to be made durable
    /// lets them commit first and share its fsync ([`Storage::sync`]).
    writers: Arc<AtomicUsize>,
    alerting: Alerting,
    /// Some last-used time may be newer than the stored one: an idle daemon's flush
    /// then costs nothing instead of a scan of every key (41 ms at 1M keys).
    touched: AtomicBool,
    /// Other nodes' changes read (cluster mode).
    following: following::Following,
    /// One usage flush at a time.
    flushing: tokio::sync::Mutex<()>,
    /// New keys on their way to the store (group commit of creations).
    creations: batch::Creations,
    /// One bulk import at a time ([`import::ImportTurn`]).
    importing: Arc<tokio::sync::Mutex<()>>,
    /// First uses of rotated keys' new secrets, for the background switch.
    rotations: first_use::FirstUses,
}

/// The rows the index takes for the records `change` writes: a record the index
/// cannot hold is refused before anything is written.
fn rows_of(change: &Change) -> Result<Vec<KeyRow>, KeyError> {
    let rows = change.put_keys.iter().map(KeyRow::from_record);
    Ok(rows.collect::<Result<_, _>>().map_err(StoreError::from)?)
}

/// An index of every key in `store`, as of `now`.
fn load_index(
    store: &dyn Storage,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Index, StoreError> {
    let mut index = Index::with_capacity(store.key_count()?);
    index.grants = grants_of(&settings.directory);
    store.load_keys(&mut |row| index.load(row))?;
    // Expired and inactive keys are counted as such from the start, not from
    // the first sweep.
    index.note_lapses(&settings.policy, now, |_, _| {});
    Ok(index)
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Load every key from the store into the index.
    pub fn open(
        store: Arc<dyn Storage>,
        hasher: KeyHasher,
        clock: SharedClock,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let index = Arc::new(RwLock::new(load_index(&*store, &settings, clock.now())?));
        let alerting = Alerting::default();
        let creations = batch::Creations::start(store.clone(), index.clone(), alerting.wake())
            .map_err(|e| StoreError::Storage(Box::new(e)))?;
        Ok(Self {
            clock,
            hasher,
            store,
            settings: RwLock::new(Arc::new(settings)),
            index,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            writers: Arc::new(AtomicUsize::new(0)),
            alerting,
            touched: AtomicBool::new(false),
            following: following::Following::default(),
            flushing: tokio::sync::Mutex::new(()),
            creations,
            importing: Arc::default(),
            rotations: first_use::FirstUses::default(),
        })
    }

    /// The clock in use.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().clone()
    }

    /// Replace policy, users and groups (SIGHUP). Every key's effective scopes follow
    /// the new groups at once, and keys of owners no longer configured are refused;
    /// returns how many keys that changed.
    pub fn reload(&self, settings: Settings) -> Regranted {
        // The index first: a verification holds the settings' read lock while it
        // takes the index's, so the two write locks are never held together.
        let counts = self.index.write().regrant(&settings.directory);
        *self.settings.write() = Arc::new(settings);
        counts
    }

    /// Whether this node runs the maintenance jobs now (always, unless other nodes
    /// share the store and one of them does).
    pub async fn lead_maintenance(&self) -> Result<bool, KeyError> {
        self.blocking(|s| s.lead_maintenance()).await
    }

    /// Drop other nodes' changes older than the change log keeps.
    pub async fn prune_change_log(&self) -> Result<u64, KeyError> {
        self.blocking(|s| s.prune_changes()).await
    }

    /// Count expired and inactive keys as of now (what the expiry sweep counts, on
    /// a node that does not run it).
    pub fn count_lapses(&self) {
        let policy = self.settings().policy.clone();
        self.index
            .read()
            .note_lapses(&policy, self.clock.now(), |_, _| {});
    }

    /// The alert settings and the dispatcher's wake-up.
    pub fn alerting(&self) -> &Alerting {
        &self.alerting
    }

    /// Number of keys held (all states).
    pub fn len(&self) -> usize {
        self.index.read().by_id.len()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A key by id, any state.
    pub fn live(&self, id: Uuid) -> Option<Arc<Live>> {
        self.index.read().get(&id).cloned()
    }

    // ---------------------------------------------------------------- plumbing

    /// Run `f` on the store on a blocking thread: never on a runtime worker, which
    /// may be the only one serving verifications.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, KeyError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(internal)??)
    }

    /// Take the writer lock, owned, so that a change can hand it to [`Self::commit`].
    /// Once it holds the writer, every creation queued before is written: a change
    /// reads the store, which then shows every key the index shows.
    pub(crate) async fn lock_writer(&self) -> Writer {
        let writer = self.lock_writer_for_new().await;
        self.creations.settled().await;
        writer
    }

    /// The writer for a creation, which reads only the index (and retired
    /// secrets, which only other changes write).
    pub(crate) async fn lock_writer_for_new(&self) -> Writer {
        let counted = Counted::new(&self.writers);
        Writer {
            _guard: self.writer.clone().lock_owned().await,
            _counted: counted,
        }
    }

    /// Show a creation's new keys in the index and queue its change for the next
    /// group commit ([`batch`]); returns once it is durable. It is written whatever
    /// happens to the caller once queued.
    pub(crate) async fn commit_new(&self, writer: Writer, change: Change) -> Result<(), KeyError> {
        let rows = rows_of(&change)?;
        {
            let mut index = self.index.write();
            for row in rows {
                index.publish(row);
            }
        }
        let written = self.creations.push(change);
        drop(writer);
        written.await.map_err(internal)??;
        Ok(())
    }

    /// Commit `change` and show it in the index, as one blocking task that runs to
    /// its end whatever happens to the caller: an admin whose client hangs up
    /// mid-commit drops this future, and the store and the index must still agree
    /// (issue 9, item 2). The records in `change.put_keys` are published (their new
    /// entries returned, in order) and the keys in `change.purge_keys` leave the
    /// index; jobs it schedules wake the dispatcher. A record the index cannot hold
    /// is refused before anything is written.
    ///
    /// Group commit: the task holds `writer` until the index shows the change, then
    /// lets the next change in while it waits for its commit to be durable
    /// ([`Storage::sync`]), so changes from many clients share one fsync. It returns
    /// only once the change is durable: nothing is acknowledged before.
    pub(crate) async fn commit(
        &self,
        writer: Writer,
        change: Change,
    ) -> Result<Vec<Arc<Live>>, KeyError> {
        let rows = rows_of(&change)?;
        let purged = change.purge_keys.clone();
        let wake = change.schedules_jobs().then(|| self.alerting.wake.clone());
        let store = self.store.clone();
        let index = self.index.clone();
        let writers = self.writers.clone();
        tokio::task::spawn_blocking(move || {
            let ticket = store.commit_pending(change)?;
            let mut index = index.write();
            // A removed key has no slot: what it counted since the last flush is
            // written now, or it would be lost.
            let leaving: Vec<UsageUpdate> = rows
                .iter()
                .filter(|row| row.life.state == KeyState::Removed)
                .filter_map(|row| index.take_unflushed(row.id))
                .collect();
            let published = rows.into_iter().map(|row| index.publish(row)).collect();
            for id in purged {
                index.remove(id);
            }
            drop(index);
            drop(writer);
            if !leaving.is_empty() {
                if let Err(e) = store.write_usage(&leaving) {
                    tracing::warn!(error = %e, keys = leaving.len(), "cannot write the last uses of removed keys");
                }
            }
            // The change is in force, durable or not: its jobs are due either way.
            let synced = store.sync(ticket, &|| writers.load(Ordering::SeqCst) > 0);
            if let Some(wake) = wake {
                wake.notify_one();
            }
            synced?;
            Ok(published)
        })
        .await
        .map_err(internal)?
    }

    /// The one way the job side ([`crate::alerts::Alerts`]) changes a job together
    /// with the key that tracks it: under the writer, re-read job `job_id` and the
    /// record of the key whose notification it carries out, let `decide` say what to
    /// write, and commit that in one transaction (see [`Self::commit`]; a changed
    /// tracking record goes in `put_keys`). Key changes reschedule jobs under the
    /// same lock, so a delivery finishing and an owner editing the notification are
    /// serialised.
    pub(crate) async fn change_job<T, E, F>(&self, job_id: Uuid, decide: F) -> Result<T, E>
    where
        E: From<KeyError>,
        F: FnOnce(JobScope) -> Result<(T, Change), E>,
    {
        let writer = self.lock_writer().await;
        let job = self.blocking(move |s| s.job(job_id)).await?;
        let tracked = job
            .as_ref()
            .and_then(|j| Some((self.live(j.key_id)?, j.id)));
        let tracking = match tracked {
            Some((live, job_id)) => Some(self.record(&live).await?).filter(|rec| {
                rec.alerting
                    .notification
                    .as_ref()
                    .is_some_and(|n| n.job_id == job_id)
            }),
            None => None,
        };
        let now = self.clock.now();
        let (out, change) = decide(JobScope { job, tracking, now })?;
        if !change.is_empty() {
            self.commit(writer, change).await?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod address_tests;
#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod expiry_tests;
#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod list_tests;
#[cfg(test)]
mod own_secret_tests;
#[cfg(test)]
mod page_tests;
#[cfg(test)]
mod restriction_tests;
#[cfg(test)]
mod rotation_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
