//! The alert document every channel delivers ([`Alert`]), how a delivery can fail
//! ([`DeliveryError`]), and what delivers it ([`Deliver`], implemented by
//! `crate::channels`): the dispatcher depends on this, not on the channels.

use std::future::Future;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::alerts::AlertSource;
use crate::keys::KeyView;
use crate::model::{rfc3339, AlertJob, JobKind};

/// Delivers an alert through one of the configured alert sources.
pub trait Deliver: Send + Sync + 'static {
    /// Deliver `alert` through `source`.
    fn deliver(
        &self,
        source: &AlertSource,
        alert: &Alert,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

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
    /// The key's page in the web console (`BASE/console/#key=ID`), when `[console]
    /// public_url` says where users reach it; null otherwise.
    #[serde(default)]
    pub console_url: Option<String>,
}

/// What every channel delivers. Plugins receive it as JSON (see `plugins/README.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alert {
    /// Document version.
    pub version: u32,
    /// `notification`, `inactivity_warning` or `rotation_warning`.
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
    /// What the owner should do, one clause: rotate the key (a notification, an
    /// inactivity warning), or deploy the new secret a rotation waits for (a
    /// rotation warning: rotating again would issue yet another secret).
    pub action: String,
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
            JobKind::RotationWarning => format!(
                "has a new secret the client never picked up; the old one stops at {}",
                view.rotation
                    .as_ref()
                    .and_then(|r| r.old_secret_until.as_deref())
                    .unwrap_or("?")
            ),
        };
        Self {
            version: 1,
            kind: job.kind,
            job_id: job.id,
            message_id: job.message_id(),
            source: job.source.clone(),
            due_at: rfc3339(job.due_at),
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
                console_url: None,
            },
            rotate_hint: format!("apikeyctl key rotate {}", view.id),
            action: match job.kind {
                JobKind::Notification | JobKind::InactivityWarning => format!(
                    "rotate it before then (apikeyctl key rotate {}) or create a new key and retire this one",
                    view.id
                ),
                JobKind::RotationWarning => format!(
                    "put the new secret it was given on {} where the key is used (rotating again would issue yet another secret; apikeyctl key show {} shows the rotation)",
                    view.rotation
                        .as_ref()
                        .map_or("?", |r| r.started_at.as_str()),
                    view.id
                ),
            },
        }
    }

    /// [`Self::render`] for a heading (an email's subject, a message's title): one
    /// line whatever the values hold (a description may span lines).
    pub fn render_line(&self, template: &str) -> String {
        self.render(template)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    /// Fill `${...}` placeholders (validated at config load).
    pub fn render(&self, template: &str) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".to_owned());
        let console_line = self.key.console_url.as_ref().map_or_else(String::new, |u| {
            format!("\nSee and manage this key in the web console: {u}\n")
        });
        let values: [(&str, String); 14] = [
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
            (
                "key.console_url",
                self.key.console_url.clone().unwrap_or_default(),
            ),
            ("alert.reason", self.reason.clone()),
            ("alert.action", self.action.clone()),
            ("alert.due_at", self.due_at.clone()),
            ("alert.console_line", console_line),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::JobKind;

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
                console_url: None,
            },
            rotate_hint: String::new(),
            action: String::new(),
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

    #[test]
    fn the_console_link_is_a_paragraph_only_when_there_is_one() {
        let mut a = alert();
        let body = "do it.\n${alert.console_line}\n-- end ${key.console_url}";
        assert_eq!(a.render(body), "do it.\n\n-- end ");
        a.key.console_url = Some("https://keys.example.com/console/#key=1".into());
        assert_eq!(
            a.render(body),
            "do it.\n\nSee and manage this key in the web console: https://keys.example.com/console/#key=1\n\n-- end https://keys.example.com/console/#key=1"
        );
    }
}
