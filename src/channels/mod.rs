//! Delivery channels: email (lettre), operator messages (kept by
//! [`crate::alerts::Alerts`] and logged), and exec plugins (the alert as JSON on
//! stdin). Only this module knows SMTP. [`Channels`] is what the dispatcher
//! delivers through ([`Deliver`]).
//!
//! An [`Alert`] is the document every channel renders: the plugin gets it as JSON,
//! email templates and operator messages fill their placeholders from it.

pub mod email;
pub mod operator;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::alerts::{Alert, Alerts, Deliver, DeliveryError};
use crate::config::alerts::{AlertConfig, AlertSource, SourceKind};
pub use email::ChannelError;

/// The channels of a running daemon.
pub struct Channels {
    email: email::Email,
    operator: operator::Operator,
    plugins_dir: PathBuf,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("plugins_dir", &self.plugins_dir)
            .finish_non_exhaustive()
    }
}

impl Deliver for Channels {
    async fn deliver(&self, source: &AlertSource, alert: &Alert) -> Result<(), DeliveryError> {
        self.deliver_via(source, alert).await
    }
}

impl Channels {
    /// Set up the channels: reads the SMTP password (a systemd credential named
    /// `smtp-password` in `credentials_dir` wins over `[smtp] password_file`).
    pub fn new(
        config: &AlertConfig,
        alerts: Arc<Alerts>,
        credentials_dir: Option<&Path>,
    ) -> Result<Self, ChannelError> {
        Ok(Self {
            email: email::Email::new(&config.smtp, credentials_dir)?,
            operator: operator::Operator::new(alerts),
            plugins_dir: config.plugins_dir.clone(),
        })
    }

    /// Deliver `alert` through `source`.
    pub async fn deliver_via(
        &self,
        source: &AlertSource,
        alert: &Alert,
    ) -> Result<(), DeliveryError> {
        match &source.kind {
            SourceKind::Email {
                to_owner,
                to,
                cc,
                subject,
                body,
            } => {
                let mut recipients = Vec::new();
                if *to_owner {
                    match &alert.key.owner_email {
                        Some(a) => recipients.push(a.clone()),
                        None if to.is_empty() => {
                            return Err(DeliveryError::permanent(format!(
                                "user {:?} has no email address; set users.{}.email or give alert_sources.{}.to",
                                alert.key.owner, alert.key.owner, source.name
                            )))
                        }
                        None => {}
                    }
                }
                recipients.extend(to.iter().cloned());
                self.email
                    .send(
                        &recipients,
                        cc,
                        &alert.render(subject),
                        &alert.render(body),
                        &alert.message_id,
                    )
                    .await
            }
            SourceKind::OperatorMessage => self.operator.post(alert).await,
            SourceKind::Plugin {
                plugin,
                args,
                timeout,
            } => {
                plugin::run(
                    &self.plugins_dir.join(plugin),
                    plugin,
                    args,
                    *timeout,
                    alert,
                )
                .await
            }
        }
    }
}
