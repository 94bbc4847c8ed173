//! The node's own session: one connection, outside the pool, that listens for other
//! nodes' changes (LISTEN) and holds the maintenance lock (a session advisory lock,
//! which the server releases by itself when the node dies or is cut off). It is
//! reconnected whenever it drops; a lock held on the old connection is gone with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema::{CHANNEL, MAINTENANCE_LOCK};

/// What the session task shares with the store.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// The connected client and its generation (a number per connection).
    client: Mutex<Option<(u64, Arc<Client>)>>,
    /// The generation whose connection holds the maintenance lock (0: none).
    leading: AtomicU64,
    /// Signalled on every notification from another node, and after a reconnect
    /// (notifications may have been missed meanwhile).
    pub(super) changed: Arc<Notify>,
}

impl Session {
    /// Whether this node runs the maintenance jobs now: it holds the lock on its
    /// current session, or takes it if no node does. `false` while disconnected.
    pub(super) async fn lead(&self) -> Result<bool, tokio_postgres::Error> {
        let Some((generation, client)) = self.client.lock().clone() else {
            return Ok(false);
        };
        if self.leading.load(Ordering::Acquire) == generation {
            return Ok(true);
        }
        let took: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
            .await?
            .get(0);
        if took {
            self.leading.store(generation, Ordering::Release);
            tracing::info!("this node runs the maintenance jobs now");
        }
        Ok(took)
    }
}

/// Keep the session connected until the runtime stops.
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    session: Arc<Session>,
) {
    let mut generation = 0u64;
    let mut failures = 0u32;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                generation += 1;
                failures = 0;
                let changed = session.changed.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => changed.notify_one(),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "PostgreSQL session ended; reconnecting");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {}
                    // A server without notifications (some PostgreSQL-compatible
                    // databases): the session still holds the maintenance lock, and
                    // the node learns of changes by polling.
                    Err(e) if e.as_db_error().is_some() => {
                        if generation == 1 {
                            tracing::warn!(error = %e, "the database has no LISTEN: other nodes' changes are seen by polling only ([store] poll_interval)");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL session lost while starting; reconnecting");
                        driver.abort();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
                *session.client.lock() = Some((generation, Arc::new(client)));
                session.changed.notify_one();
                let _ = driver.await;
                *session.client.lock() = None;
                if session.leading.swap(0, Ordering::AcqRel) != 0 {
                    tracing::warn!("lost the maintenance lock with the PostgreSQL session");
                }
            }
            Err(e) => {
                // Said once per outage, not once a second.
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot connect to PostgreSQL; retrying every second");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
