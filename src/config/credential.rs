//! Passwords apikeyd reads at start (SMTP, PostgreSQL): the systemd credential of
//! that name in `$CREDENTIALS_DIRECTORY` if there is one, else the file the
//! configuration names. A trailing line end is not part of the password.

use std::path::{Path, PathBuf};

/// A password file that could not be read.
#[derive(Debug)]
pub struct PasswordError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The password from credential `credential` or `file`; `None` when neither exists.
pub fn read_password(
    credentials_dir: Option<&Path>,
    credential: &str,
    file: Option<&Path>,
) -> Result<Option<String>, PasswordError> {
    let from_credential = credentials_dir
        .map(|d| d.join(credential))
        .filter(|p| p.exists());
    let Some(path) = from_credential.as_deref().or(file) else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
        .map_err(|source| PasswordError {
            path: path.to_path_buf(),
            source,
        })
}
