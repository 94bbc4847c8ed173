//! Group commit of new keys ([`Creations`]): creations from many clients written
//! together, one transaction and one fsync for all that queued meanwhile.
//!
//! A creation is checked under the writer as before and shown in the index at
//! once, so the next creation is checked against it; it then queues its change
//! and lets the writer go. One thread commits everything queued as one durable
//! transaction while the next creations are checked, and only then are they
//! acknowledged. If that transaction fails on a conflict (in a cluster, another
//! node took a name or a secret), each change is tried alone, so one bad change
//! fails alone; if the store itself failed, all are refused. A change that was not
//! written leaves the index again. Only keys with a generated secret come this
//! way: nobody holds it before the creation is answered, so a key the index shows
//! a moment early changes nothing. An imported token is its holder's already;
//! that creation is committed before it shows.
//!
//! Every other change reads the store, so it takes the writer only once the
//! creations queued before it are written ([`Keys::lock_writer`]).

use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch, Notify};
use uuid::Uuid;

use super::index::Index;
use crate::store::{Change, Storage, StoreError};

/// One queued creation: its change, and where its outcome goes.
struct Queued {
    change: Change,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Queued>,
    /// Creations queued since the start.
    queued: u64,
    /// The service is gone: the thread ends once the queue is empty.
    closed: bool,
}

/// The queue of creations and the thread that writes them.
pub(super) struct Creations {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Creations written (or refused) since the start.
    done: watch::Sender<u64>,
    /// The writing thread, joined on drop: it holds the store, which a caller may
    /// open again right after.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Creations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creations").finish_non_exhaustive()
    }
}

impl Creations {
    /// Start the writing thread.
    pub(super) fn start(
        store: Arc<dyn Storage>,
        index: Arc<RwLock<Index>>,
        wake: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let (done, _) = watch::channel(0);
        let writer = Writer {
            queue: queue.clone(),
            done: done.clone(),
            store,
            index,
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("apikeyd-creations".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            queue,
            done,
            thread: Some(thread),
        })
    }

    /// Queue `change` (a creation the index shows already); the answer comes once
    /// it is durable, or refused.
    pub(super) fn push(&self, change: Change) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, answer) = oneshot::channel();
        let (lock, signal) = &*self.queue;
        let mut q = lock.lock();
        q.items.push(Queued { change, reply });
        q.queued += 1;
        signal.notify_one();
        answer
    }

    /// Wait until every creation queued so far is written or refused.
    pub(super) async fn settled(&self) {
        let target = self.queue.0.lock().queued;
        let mut done = self.done.subscribe();
        // The sender lives as long as `self`: this cannot fail while we wait.
        let _ = done.wait_for(|d| *d >= target).await;
    }
}

impl Drop for Creations {
    fn drop(&mut self) {
        let (lock, signal) = &*self.queue;
        lock.lock().closed = true;
        signal.notify_one();
        if let Some(thread) = self.thread.take() {
            // It ends once what is queued is written; a panic there is already
            // reported by the panic hook.
            let _ = thread.join();
        }
    }
}

/// The writing thread's side.
struct Writer {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    done: watch::Sender<u64>,
    store: Arc<dyn Storage>,
    index: Arc<RwLock<Index>>,
    wake: Arc<Notify>,
}

impl Writer {
    fn run(self) {
        loop {
            let batch = {
                let (lock, signal) = &*self.queue;
                let mut q = lock.lock();
                while q.items.is_empty() && !q.closed {
                    signal.wait(&mut q);
                }
                if q.items.is_empty() {
                    return;
                }
                std::mem::take(&mut q.items)
            };
            let n = batch.len() as u64;
            let ids = ids_of(&batch);
            // A panic below must not stop every later change (they wait for `done`):
            // the batch is then refused (its callers get an error as their answers
            // are dropped) and leaves the index.
            let written =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write(batch)));
            if written.is_err() {
                tracing::error!(
                    keys = ids.len(),
                    "writing new keys failed unexpectedly; they were not created"
                );
                self.forget(&ids);
            }
            self.done.send_modify(|d| *d += n);
        }
    }

    /// Write `batch` as one transaction; if that fails, each change alone.
    fn write(&self, batch: Vec<Queued>) {
        let wake = batch.iter().any(|q| q.change.schedules_jobs());
        let together = if batch.len() == 1 {
            None
        } else {
            // Cloned: each is written alone if the transaction fails.
            let changes = batch.iter().map(|q| q.change.clone()).collect();
            Some(self.store.commit_all(changes))
        };
        match together {
            Some(Ok(())) => {
                for q in batch {
                    let _ = q.reply.send(Ok(()));
                }
            }
            // A conflict may be one change's (another node took its name or secret):
            // each is tried alone, and only the ones refused fail.
            None | Some(Err(StoreError::Conflict(_))) => {
                for q in batch {
                    let ids: Vec<Uuid> = q.change.put_keys.iter().map(|r| r.id).collect();
                    let outcome = self.store.commit(q.change);
                    if outcome.is_err() {
                        self.forget(&ids);
                    }
                    let _ = q.reply.send(outcome);
                }
            }
            // The store itself failed (down, disk full, cut off mid-commit): trying
            // each change again would only wait as long again, so all are refused
            // with that error.
            Some(Err(e)) => {
                self.forget(&ids_of(&batch));
                for q in batch {
                    let _ = q.reply.send(Err(e.again()));
                }
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }
}

impl Writer {
    /// Take keys that were not written out of the index.
    fn forget(&self, ids: &[Uuid]) {
        let mut index = self.index.write();
        for id in ids {
            index.remove(*id);
        }
    }
}

/// The keys the creations of `batch` add.
fn ids_of(batch: &[Queued]) -> Vec<Uuid> {
    batch
        .iter()
        .flat_map(|q| q.change.put_keys.iter().map(|r| r.id))
        .collect()
}
