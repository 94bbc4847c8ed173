//! Delivery channels: email (lettre), operator messages (stored in redb and logged),
//! and exec plugins (the alert as JSON on stdin). Only this module knows SMTP.
//!
//! An [`Alert`] is the document every channel renders: the plugin gets it as JSON,
//! email templates and operator messages fill their placeholders from it.

pub mod email;
pub mod operator;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::alerts::job::{AlertJob, JobKind};
use crate::clock::SharedClock;
use crate::config::alerts::{AlertConfig, AlertSource, SourceKind};
use crate::keys::KeyView;
use crate::store::Store;

/// A failed delivery attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What happened and, where possible, what to do about it. Never a secret.
    pub message: String,
    /// Retrying cannot help.
    pub permanent: bool,
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Channel set-up failures (at daemon start).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The SMTP password could not be read.
    #[error("cannot read the SMTP password from {path}: {source}")]
    Password {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The SMTP transport could not be built.
    #[error("SMTP settings rejected: {0}")]
    Smtp(String),
}

/// The key part of an alert document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertKey {
    /// Key id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Owner (user name).
    pub owner: String,
    /// Owner's email address, if configured.
    pub owner_email: Option<String>,
    /// Description.
    pub description: String,
    /// `active`, `disabled`, ...
    pub status: String,
    /// Hard expiry (RFC 3339), null = never.
    pub expires_at: Option<String>,
    /// Earlier of the hard expiry and the inactivity deadline.
    pub effective_expires_at: Option<String>,
    /// `hard` or `inactivity`.
    pub effective_limit: Option<String>,
    /// The details line.
    pub details: String,
}

/// What every channel delivers. Plugins receive it as JSON (see `plugins/README.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alert {
    /// Document version.
    pub version: u32,
    /// `notification` or `inactivity_warning`.
    pub kind: JobKind,
    /// Job id.
    pub job_id: Uuid,
    /// Message-ID of the email for this job (the same for a crash replacement).
    pub message_id: String,
    /// Alert source name.
    pub source: String,
    /// The notification time (RFC 3339).
    pub due_at: String,
    /// This attempt's number (1 = first).
    pub attempt: u32,
    /// One line: "expires on 2027-01-31T00:00:00Z", ...
    pub reason: String,
    /// The key.
    pub key: AlertKey,
    /// How to rotate the key.
    pub rotate_hint: String,
}

impl Alert {
    /// Build the document for `job` about the key shown by `view`.
    pub fn new(job: &AlertJob, view: &KeyView, owner_email: Option<String>) -> Self {
        let reason = match job.kind {
            JobKind::Notification => match &view.expires_at {
                Some(t) => format!("expires on {t}"),
                None => "has a notification".to_owned(),
            },
            JobKind::InactivityWarning => format!(
                "will expire through inactivity on {} unless it is used",
                view.effective_expires_at.as_deref().unwrap_or("?")
            ),
        };
        Self {
            version: 1,
            kind: job.kind,
            job_id: job.id,
            message_id: job.message_id(),
            source: job.source.clone(),
            due_at: crate::keys::model::rfc3339(job.due_at),
            attempt: job.attempts,
            reason,
            key: AlertKey {
                id: view.id,
                name: view.name.clone(),
                owner: view.owner.clone(),
                owner_email,
                description: view.description.clone(),
                status: view.status.clone(),
                expires_at: view.expires_at.clone(),
                effective_expires_at: view.effective_expires_at.clone(),
                effective_limit: view.effective_limit.clone(),
                details: view.details.clone(),
            },
            rotate_hint: format!("apikeyctl key rotate {}", view.id),
        }
    }

    /// Fill `${...}` placeholders (validated at config load).
    pub fn render(&self, template: &str) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".to_owned());
        let values: [(&str, String); 11] = [
            ("key.id", self.key.id.to_string()),
            ("key.name", self.key.name.clone()),
            ("key.owner", self.key.owner.clone()),
            ("key.description", self.key.description.clone()),
            ("key.expires_at", opt(&self.key.expires_at)),
            (
                "key.effective_expires_at",
                opt(&self.key.effective_expires_at),
            ),
            (
                "key.effective_limit",
                self.key.effective_limit.clone().unwrap_or_default(),
            ),
            ("key.details", self.key.details.clone()),
            ("alert.reason", self.reason.clone()),
            ("alert.due_at", self.due_at.clone()),
            ("job.id", self.job_id.to_string()),
        ];
        let mut out = String::with_capacity(template.len() + 128);
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match values.iter().find(|(n, _)| *n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&rest[start..start + 2 + end + 1]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

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

impl Channels {
    /// Set up the channels: reads the SMTP password (a systemd credential named
    /// `smtp-password` in `credentials_dir` wins over `[smtp] password_file`).
    pub fn new(
        config: &AlertConfig,
        store: Arc<Store>,
        clock: SharedClock,
        credentials_dir: Option<&Path>,
    ) -> Result<Self, ChannelError> {
        Ok(Self {
            email: email::Email::new(&config.smtp, credentials_dir)?,
            operator: operator::Operator::new(store, clock),
            plugins_dir: config.plugins_dir.clone(),
        })
    }

    /// Deliver `alert` through `source`.
    pub async fn deliver(&self, source: &AlertSource, alert: &Alert) -> Result<(), DeliveryError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn alert() -> Alert {
        Alert {
            version: 1,
            kind: JobKind::Notification,
            job_id: Uuid::nil(),
            message_id: "<m@x>".into(),
            source: "s".into(),
            due_at: "2027-01-01T00:00:00Z".into(),
            attempt: 1,
            reason: "expires on 2027-01-15T00:00:00Z".into(),
            key: AlertKey {
                id: Uuid::nil(),
                name: "nightly ${key.id}".into(),
                owner: "alice".into(),
                owner_email: None,
                description: String::new(),
                status: "active".into(),
                expires_at: Some("2027-01-15T00:00:00Z".into()),
                effective_expires_at: None,
                effective_limit: None,
                details: "d".into(),
            },
            rotate_hint: String::new(),
        }
    }

    #[test]
    fn render_fills_known_placeholders_once() {
        let a = alert();
        assert_eq!(
            a.render(
                "${key.name} of ${key.owner}: ${alert.reason}; eff ${key.effective_expires_at} ${x"
            ),
            "nightly ${key.id} of alice: expires on 2027-01-15T00:00:00Z; eff never ${x"
        );
    }
}
