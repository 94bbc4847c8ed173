//! The operator-message channel: the alert becomes an operator message, kept by
//! [`Alerts`] (listed with `apikeyctl message list`) and logged at warn level. Its
//! title and text come from the source's templates, as an email's subject and body do.

use std::sync::Arc;

use crate::alerts::{Alert, Alerts, DeliveryError};
use crate::model::{OperatorMessage, Severity};

/// Posts alerts as operator messages.
pub struct Operator {
    alerts: Arc<Alerts>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operator")
    }
}

impl Operator {
    /// A channel posting through `alerts`.
    pub fn new(alerts: Arc<Alerts>) -> Self {
        Self { alerts }
    }

    /// Post the alert as a warning message, its title and text rendered from the
    /// source's templates.
    pub async fn post(&self, alert: &Alert, title: &str, text: &str) -> Result<(), DeliveryError> {
        let message = OperatorMessage {
            id: 0,
            at: self.alerts.keys().clock().now(),
            severity: Severity::Warning,
            title: alert.render_line(title),
            text: alert.render(text),
            key_id: Some(alert.key.id),
            job_id: Some(alert.job_id),
            acknowledged_by: None,
            acknowledged_at: None,
        };
        self.alerts.post_message(message).await.map_err(|e| {
            DeliveryError::transient(format!("cannot store the operator message: {e}"))
        })
    }
}
