//! The operator-message channel: the alert becomes a message stored in redb (listed
//! with `apikeyctl message list`) and a warn-level log line.

use std::sync::Arc;

use super::{Alert, DeliveryError};
use crate::alerts::job::{OperatorMessage, Severity};
use crate::clock::SharedClock;
use crate::store::{AlertBatch, Store};

/// Stores operator messages.
pub struct Operator {
    store: Arc<Store>,
    clock: SharedClock,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operator")
    }
}

impl Operator {
    /// A channel writing to `store`.
    pub fn new(store: Arc<Store>, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Store the alert as a warning message.
    pub async fn post(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let message = OperatorMessage {
            id: 0,
            at: self.clock.now(),
            severity: Severity::Warning,
            title: format!(
                "API key \"{}\" of {} {}",
                alert.key.name, alert.key.owner, alert.reason
            ),
            text: format!(
                "Key {} (\"{}\", owner {}) {}. Details: {}. To rotate it: {}",
                alert.key.id,
                alert.key.name,
                alert.key.owner,
                alert.reason,
                alert.key.details,
                alert.rotate_hint
            ),
            key_id: Some(alert.key.id),
            job_id: Some(alert.job_id),
            acknowledged_by: None,
            acknowledged_at: None,
        };
        tracing::warn!(key_id = %alert.key.id, job_id = %alert.job_id, title = %message.title, "operator message");
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.commit_alerts(AlertBatch {
                messages: vec![message],
                ..AlertBatch::default()
            })
        })
        .await
        .map_err(|e| DeliveryError::transient(e.to_string()))?
        .map_err(|e| DeliveryError::transient(format!("cannot store the operator message: {e}")))
    }
}
