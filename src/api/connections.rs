//! The connection limits, `server.max_connections` and
//! `server.max_connections_per_client`: a slot per open connection, taken when it is
//! accepted and given back when its task ends, and the 503 answer naming the limit
//! a refused connection hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::limits::{once_a_minute, Client};
use super::metrics::Refused;
use super::state::AppState;
use crate::config::ServerConfig;

/// The connection limits (`server.max_connections`, `max_connections_per_client`)
/// that the TCP listener and the admin socket share: one budget of file
/// descriptors.
#[derive(Debug, Clone)]
pub struct ConnectionLimits(pub(crate) Arc<Slots>);

impl ConnectionLimits {
    /// The limits of `server`, counting into `state`'s metrics.
    pub fn new(server: &ServerConfig, state: AppState) -> Self {
        Self(Arc::new(Slots::new(server, state)))
    }
}

/// The 503 answer to a connection refused over `why`, naming the limit.
fn refusal(why: Refused, server: &ServerConfig) -> Vec<u8> {
    let message = match why {
        Refused::Total => format!(
            "too many connections to apikeyd: server.max_connections ({}) reached; try again later",
            server.max_connections
        ),
        Refused::PerClient => format!(
            "too many connections from this client: server.max_connections_per_client ({}) reached; close some and try again",
            server.max_connections_per_client
        ),
    };
    let body = serde_json::json!({"error": {"code": why.as_str(), "message": message}}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Connection counts against `server.max_connections` and
/// `server.max_connections_per_client`.
#[derive(Debug)]
pub(crate) struct Slots {
    max_total: usize,
    max_per_client: usize,
    open: AtomicUsize,
    /// Open connections per client; clients with none are not listed. SipHash: the
    /// keys are the clients' addresses.
    per_client: Mutex<HashMap<Client, usize>>,
    pub(crate) state: AppState,
    /// The minute of the last warning about refused connections.
    warned: AtomicU64,
    /// The 503 answers to refused connections: over `max_connections`, over
    /// `max_connections_per_client`.
    refusals: [Vec<u8>; 2],
}

/// One open connection's place in [`Slots`], given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    client: Client,
}

impl Slots {
    fn new(server: &ServerConfig, state: AppState) -> Self {
        Self {
            max_total: server.max_connections,
            max_per_client: server.max_connections_per_client,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            state,
            warned: AtomicU64::new(0),
            refusals: [
                refusal(Refused::Total, server),
                refusal(Refused::PerClient, server),
            ],
        }
    }

    /// The 503 answer to a connection refused over `why`.
    pub(crate) fn refusal(&self, why: Refused) -> &[u8] {
        match why {
            Refused::Total => &self.refusals[0],
            Refused::PerClient => &self.refusals[1],
        }
    }

    /// A slot for a connection from `client`, or the limit reached (counted and
    /// logged). `exempt` says whether the client is exempt from
    /// `max_connections` (keeping its per-client limit); it is asked only when
    /// that limit is reached.
    pub(crate) fn take(
        self: &Arc<Self>,
        client: Client,
        exempt: impl FnOnce() -> bool,
    ) -> Result<Slot, Refused> {
        let over_total = self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total && !exempt();
        let refused = if over_total {
            Some(Refused::Total)
        } else {
            let mut per_client = self.per_client.lock();
            let n = per_client.entry(client).or_insert(0);
            if *n >= self.max_per_client {
                Some(Refused::PerClient)
            } else {
                *n += 1;
                None
            }
        };
        let metrics = &self.state.edge.metrics;
        if let Some(why) = refused {
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics.connection_refused(why);
            if once_a_minute(&self.warned).is_some() {
                tracing::warn!(
                    %client,
                    limit = why.as_str(),
                    "connection refused: limit reached (said once a minute; \
                     apikeyd_connections_refused_total counts them all)"
                );
            }
            return Err(why);
        }
        metrics.connection(true);
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        {
            let mut per_client = slots.per_client.lock();
            if let Some(n) = per_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    per_client.remove(&self.client);
                }
            }
        }
        slots.open.fetch_sub(1, Ordering::Relaxed);
        slots.state.edge.metrics.connection(false);
    }
}
