//! PEM files of CA certificates that the configuration names (`[smtp] ca_file`):
//! read the same way when the file loads (so `check-config` and a reload report a
//! file that cannot be used) and when a channel builds its TLS roots.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;

/// The certificates of a PEM file of CA certificates, in DER; an error saying what
/// is wrong (not readable, not PEM, no certificate in it) otherwise.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let why = |e: pem::Error| match e {
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        e => format!("not a PEM file of certificates: {e}"),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(why)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(why)?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}
