//! Email through lettre's pooled SMTP transport. The password is read once at
//! start, held in a type whose `Debug` redacts it, and never reaches a log or error.
//!
//! The blocking transport, run on tokio's blocking threads: its `timeout` bounds
//! every read and write on the socket (the TLS handshake and each SMTP command), so
//! a server that accepts and never answers, or hangs after DATA, is cut off, and
//! the failed connection is closed instead of going back to the pool. The async
//! transport's timeout bounds only the TCP connect; cancelling its send from outside
//! would return a connection in mid-exchange to its pool.

use std::path::Path;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{Message, SmtpTransport, Transport};
use rustls::CertificateError;

use crate::alerts::DeliveryError;
use crate::config::alerts::{SmtpConfig, SmtpTls, SMTP_PASSWORD_CREDENTIAL};
use crate::config::ca_file::read_ca_file;
use crate::config::credential::read_password;

/// The email channel.
pub struct Email {
    transport: SmtpTransport,
    from: Mailbox,
    /// `host:port`, for messages.
    server: String,
    host: String,
    timeout: std::time::Duration,
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
        let mut builder = SmtpTransport::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls(smtp)?)
            .timeout(Some(smtp.timeout))
            .pool_config(PoolConfig::new().max_size(smtp.pool_size));
        if let Some(user) = &smtp.username {
            let password = read_password(
                credentials_dir,
                SMTP_PASSWORD_CREDENTIAL,
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
            host: smtp.host.clone(),
            timeout: smtp.timeout,
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
        let transport = self.transport.clone();
        // A thread of its own, not tokio's blocking pool: the runtime waits for its
        // blocking tasks when the daemon stops (store commits must finish), and a
        // send to a hung server would hold the stop for twice [smtp] timeout. The
        // dispatcher gives a send in flight its grace; a thread still waiting after
        // that ends with the process, and the job, still Running, is sent again.
        let (done, result) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("smtp-send".into())
            .spawn(move || {
                let _ = done.send(transport.send(&message));
            });
        if let Err(e) = spawned {
            return Err(DeliveryError::transient(format!(
                "SMTP {}: cannot start a sending thread: {e}",
                self.server
            )));
        }
        match result.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.explain(&e)),
            Err(_) => Err(DeliveryError::transient(format!(
                "SMTP {}: the sending thread failed",
                self.server
            ))),
        }
    }

    /// A failed send as advice an operator can act on, followed by lettre's error.
    fn explain(&self, e: &lettre::transport::smtp::Error) -> DeliveryError {
        let cause = cause(e);
        let advice = match cause {
            _ if e.is_permanent() => "the SMTP server refused the message".to_owned(),
            Cause::Timeout => format!(
                "the SMTP server did not answer within {:?} ([smtp] timeout)",
                self.timeout
            ),
            Cause::Tls(rustls::Error::InvalidCertificate(c)) => match c {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                    "TLS: the server's certificate is not valid for the host name {:?} (set [smtp] host to a name the certificate holds)",
                    self.host
                ),
                CertificateError::UnknownIssuer => "TLS: the server's certificate is not signed by a trusted CA (add the CA with [smtp] ca_file)".to_owned(),
                _ => "TLS: the server's certificate is refused".to_owned(),
            },
            Cause::Tls(_) => "TLS failed (check [smtp] tls: \"tls\" for port 465, \"starttls\" for 587)".to_owned(),
            Cause::Other if e.is_tls() => "TLS failed (check [smtp] tls and the server's certificate)".to_owned(),
            Cause::Other => "cannot talk to the SMTP server (is it running? check [smtp] host, port and tls)".to_owned(),
        };
        let message = match cause {
            // lettre's words for it are the socket's: "Resource temporarily unavailable".
            Cause::Timeout => format!("SMTP {}: {advice}", self.server),
            _ => format!("SMTP {}: {advice}: {e}", self.server),
        };
        if e.is_permanent() {
            DeliveryError::permanent(message)
        } else {
            DeliveryError::transient(message)
        }
    }
}

/// The TLS settings of `[smtp]`: the host name is verified against the server's
/// certificate, which must chain to Mozilla's roots or a CA of `ca_file`.
fn tls(smtp: &SmtpConfig) -> Result<Tls, ChannelError> {
    if smtp.tls == SmtpTls::None {
        return Ok(Tls::None);
    }
    let mut params = TlsParameters::builder(smtp.host.clone());
    if let Some(path) = &smtp.ca_file {
        let bad = |why: String| ChannelError::CaFile {
            path: path.display().to_string(),
            why,
        };
        for der in read_ca_file(path).map_err(bad)? {
            let cert = Certificate::from_der(der.to_vec()).map_err(|e| bad(e.to_string()))?;
            params = params.add_root_certificate(cert);
        }
    }
    let params = params
        .build_rustls()
        .map_err(|e| ChannelError::Smtp(format!("TLS: {e}")))?;
    Ok(match smtp.tls {
        SmtpTls::StartTls => Tls::Required(params),
        _ => Tls::Wrapper(params),
    })
}

/// What lies under a failed send.
enum Cause<'a> {
    /// A read or write on the socket outlasted `[smtp] timeout`.
    Timeout,
    /// rustls refused the handshake (a certificate, a protocol mismatch).
    Tls(&'a rustls::Error),
    Other,
}

fn cause(e: &lettre::transport::smtp::Error) -> Cause<'_> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // A socket read timeout is EAGAIN on Linux.
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return Cause::Timeout;
            }
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Cause::Tls(tls);
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Cause::Tls(tls);
        }
        source = err.source();
    }
    Cause::Other
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
    /// `[smtp] ca_file` could not be read or holds no usable certificate.
    #[error("smtp.ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
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
            ca_file: None,
            username: Some("apikeyd".into()),
            password_file,
            from: "apikeyd@example.com".into(),
            timeout: Duration::from_secs(5),
            pool_size: 2,
        }
    }

    #[test]
    fn the_password_is_read_from_the_credential_or_the_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(
            creds.join(SMTP_PASSWORD_CREDENTIAL),
            "from-the-credential\n",
        )
        .unwrap();
        let e = Email::new(&smtp(Some(file.clone())), Some(&creds)).unwrap();
        let shown = format!("{e:?}");
        assert!(!shown.contains("from-the"), "{shown}");
        assert!(shown.contains("127.0.0.1:2525"), "{shown}");
        // Without the credential the file is read.
        Email::new(&smtp(Some(file)), None).unwrap();
    }

    #[test]
    fn a_missing_password_file_is_a_start_error_naming_the_file() {
        let err = Email::new(&smtp(Some("/nonexistent/smtp.pw".into())), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/smtp.pw"), "{text}");
    }
}
