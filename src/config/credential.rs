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

/// Where the password is read from: credential `credential` if it exists, else
/// `file`; `None` when neither is there.
pub fn password_path(
    credentials_dir: Option<&Path>,
    credential: &str,
    file: Option<&Path>,
) -> Option<PathBuf> {
    credentials_dir
        .map(|d| d.join(credential))
        .filter(|p| p.exists())
        .or_else(|| file.map(Path::to_path_buf))
}

/// The password from credential `credential` or `file`; `None` when neither exists.
pub fn read_password(
    credentials_dir: Option<&Path>,
    credential: &str,
    file: Option<&Path>,
) -> Result<Option<String>, PasswordError> {
    let Some(path) = password_path(credentials_dir, credential, file) else {
        return Ok(None);
    };
    read_password_at(&path).map(Some)
}

/// The password in the file at `path`.
pub fn read_password_at(path: &Path) -> Result<String, PasswordError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|source| PasswordError {
            path: path.to_path_buf(),
            source,
        })
}
