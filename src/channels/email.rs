//! Email through lettre's pooled async SMTP transport. The password is read once at
//! start, held in a type whose `Debug` redacts it, and never reaches a log or error.

use std::path::Path;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::alerts::DeliveryError;
use crate::config::alerts::{SmtpConfig, SmtpTls};
use crate::config::credential::read_password;

/// Name of the systemd credential holding the SMTP password.
pub const PASSWORD_CREDENTIAL: &str = "smtp-password";

/// The email channel.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Email {
    /// Build the (lazy: nothing connects yet) pooled transport.
    pub fn new(smtp: &SmtpConfig, credentials_dir: Option<&Path>) -> Result<Self, ChannelError> {
        let builder = match smtp.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(|e| ChannelError::Smtp(e.to_string()))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| ChannelError::Smtp(e.to_string()))?,
        };
        let mut builder = builder
            .port(smtp.port)
            .timeout(Some(smtp.timeout))
            .pool_config(PoolConfig::new().max_size(smtp.pool_size));
        if let Some(user) = &smtp.username {
            let password = read_password(
                credentials_dir,
                PASSWORD_CREDENTIAL,
                smtp.password_file.as_deref(),
            )
            .map_err(|e| ChannelError::Password {
                path: e.path.display().to_string(),
                source: e.source,
            })?
            .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| ChannelError::Smtp(format!("from address: {e}")))?;
        Ok(Self {
            transport: builder.build(),
            from,
            server: format!("{}:{}", smtp.host, smtp.port),
        })
    }

    /// Send one plain-text message.
    pub async fn send(
        &self,
        to: &[String],
        cc: &[String],
        subject: &str,
        body: &str,
        message_id: &str,
    ) -> Result<(), DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id.to_owned()))
            .header(ContentType::TEXT_PLAIN);
        for (list, is_cc) in [(to, false), (cc, true)] {
            for addr in list {
                let mbox: Mailbox = addr.parse().map_err(|e| {
                    DeliveryError::permanent(format!("{addr:?} is not an email address: {e}"))
                })?;
                builder = if is_cc {
                    builder.cc(mbox)
                } else {
                    builder.to(mbox)
                };
            }
        }
        if to.is_empty() {
            return Err(DeliveryError::permanent("no recipient"));
        }
        let message = builder
            .body(body.to_owned())
            .map_err(|e| DeliveryError::permanent(format!("cannot build the email: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let advice = if e.is_permanent() {
                    "the SMTP server refused the message"
                } else if e.is_timeout() {
                    "the SMTP server did not answer in time ([smtp] timeout)"
                } else if e.is_tls() {
                    "TLS failed (check [smtp] tls and the server certificate)"
                } else {
                    "cannot talk to the SMTP server (is it running? check [smtp] host, port and tls)"
                };
                let message = format!("SMTP {}: {advice}: {e}", self.server);
                Err(if e.is_permanent() {
                    DeliveryError::permanent(message)
                } else {
                    DeliveryError::transient(message)
                })
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    fn smtp(password_file: Option<std::path::PathBuf>) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: SmtpTls::None,
            username: Some("apikeyd".into()),
            password_file,
            from: "apikeyd@example.com".into(),
            timeout: Duration::from_secs(5),
            pool_size: 2,
        }
    }

    // The pooled transport spawns its pool task: it needs a runtime.
    #[tokio::test]
    async fn the_password_is_read_from_the_credential_or_the_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(PASSWORD_CREDENTIAL), "from-the-credential\n").unwrap();
        let e = Email::new(&smtp(Some(file.clone())), Some(&creds)).unwrap();
        let shown = format!("{e:?}");
        assert!(!shown.contains("from-the"), "{shown}");
        assert!(shown.contains("127.0.0.1:2525"), "{shown}");
        // Without the credential the file is read.
        Email::new(&smtp(Some(file)), None).unwrap();
    }

    #[tokio::test]
    async fn a_missing_password_file_is_a_start_error_naming_the_file() {
        let err = Email::new(&smtp(Some("/nonexistent/smtp.pw".into())), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/smtp.pw"), "{text}");
    }
}
