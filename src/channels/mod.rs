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
                        &alert.render_line(subject),
                        &alert.render(body),
                        &alert.message_id,
                    )
                    .await
            }
            SourceKind::OperatorMessage { title, text } => {
                self.operator.post(alert, title, text).await
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::alerts::Alert;
    use crate::clock::Clock;
    use crate::model::{AlertJob, JobKind};
    use crate::test_support::{admin, fixture_with_alerts, parse, req, CONFIG};

    /// Operator messages through `source` of `text`, for each kind of job, as stored.
    async fn posted(text: &str, source: &str) -> Vec<(String, String, Alert)> {
        let f = fixture_with_alerts(text);
        let config = parse(text).alerts;
        let alerts = Arc::new(Alerts::new(f.keys.clone(), f.store.clone()));
        let channels = Channels::new(&config, alerts.clone(), None).unwrap();
        let view = f
            .keys
            .create(&admin(), req("alice", "nightly"))
            .await
            .unwrap()
            .view;
        let mut sent = vec![];
        for kind in [JobKind::Notification, JobKind::InactivityWarning] {
            let now = f.clock.now();
            let alert = Alert::new(&AlertJob::new(view.id, kind, source, now, now), &view, None);
            channels
                .deliver_via(config.source(source).unwrap(), &alert)
                .await
                .unwrap();
            let m = alerts.messages(&admin(), false, 1).await.unwrap().remove(0);
            assert_eq!(m.job_id, Some(alert.job_id));
            sent.push((m.title, m.text, alert));
        }
        sent
    }

    #[tokio::test]
    async fn operator_messages_are_rendered_with_the_sources_templates() {
        let text = format!(
            "{CONFIG}
[alert_sources.ops]
kind = \"operator_message\"
title = \"[ops] ${{key.owner}}/${{key.name}}: ${{alert.reason}}\"
text = \"Rotate ${{key.id}} by ${{key.effective_expires_at}} (job ${{job.id}})\"
"
        );
        for (title, body, a) in posted(&text, "ops").await {
            assert_eq!(title, format!("[ops] alice/nightly: {}", a.reason));
            let by = a.key.effective_expires_at.as_deref().unwrap();
            assert_eq!(
                body,
                format!("Rotate {} by {by} (job {})", a.key.id, a.job_id)
            );
        }
    }

    #[tokio::test]
    async fn the_built_in_operator_source_gives_the_default_wording() {
        let sent = posted(CONFIG, crate::config::alerts::OPERATOR).await;
        assert!(sent[1].2.reason.contains("inactivity"), "{:?}", sent[1]);
        for (title, body, a) in sent {
            let k = &a.key;
            assert_eq!(title, format!("API key \"nightly\" of alice {}", a.reason));
            assert_eq!(
                body,
                format!(
                    "Key {} (\"nightly\", owner alice) {}. Details: {}. To keep it working, rotate it before then (apikeyctl key rotate {}) or create a new key and retire this one",
                    k.id, a.reason, k.details, k.id
                )
            );
        }
    }
}
