//! The state every router and connection shares.

use std::sync::Arc;

use super::console::sessions::Sessions;
use super::edge::Edge;
use crate::alerts::maintenance::MaintenanceStatus;
use crate::alerts::Alerts;
use crate::config::alerts::MaintenanceSchedules;
use crate::config::{AuthConfig, RateLimitConfig, StartOnly};
use crate::keys::Keys;

/// Shared state of every router.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The key service.
    pub keys: Arc<Keys>,
    /// Alert jobs and operator messages.
    pub alerts: Arc<Alerts>,
    /// What the maintenance jobs last did (empty until the scheduler starts).
    pub maintenance: MaintenanceStatus,
    /// Forward-auth settings, the rate limiter and the metrics.
    pub edge: Arc<Edge>,
    /// The maintenance schedules the scheduler runs: those in force at start (a
    /// reload does not move them; `[jobs]` changes take a restart).
    pub schedules: Arc<MaintenanceSchedules>,
    /// Where the server secret was read from (a backup's answer says: a restore
    /// needs it). Empty when unknown.
    pub secret_source: Arc<str>,
    /// The listeners and store the daemon started with (`plan --policy` says when
    /// a new file changes them); `None` where no daemon is behind the state.
    pub start_only: Option<Arc<StartOnly>>,
    /// The web console's links and sessions (off unless the daemon turns it on).
    pub console: Arc<Sessions>,
}

impl AppState {
    /// State for `alerts` (and their keys) with these edge settings.
    pub fn new(alerts: Arc<Alerts>, auth: AuthConfig, rate_limit: RateLimitConfig) -> Self {
        let console = Arc::new(Sessions::disabled(alerts.keys().clock().clone()));
        Self {
            schedules: Arc::new(alerts.keys().alerting().config().jobs.clone()),
            keys: alerts.keys().clone(),
            alerts,
            maintenance: MaintenanceStatus::default(),
            edge: Arc::new(Edge::new(auth, rate_limit)),
            secret_source: Arc::from(""),
            start_only: None,
            console,
        }
    }
}
