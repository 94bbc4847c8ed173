//! TLS to PostgreSQL: rustls (the ring provider, as for SMTP), trusting Mozilla's
//! roots and the CA certificates of `[store] ca_file`. Whether TLS is used is the
//! connection string's `sslmode` (`disable`, `prefer`: the default, `require`);
//! whenever it is, the server's certificate and host name are verified.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `ca_file` could not be read or holds no usable certificate.
    #[error("store.ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Config(#[from] rustls::Error),
}

/// The connector for the pool and the session.
pub(super) fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad = |why: String| TlsError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a CA certificate rustls accepts: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
