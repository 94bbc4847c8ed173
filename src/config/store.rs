//! `[store]`: where the keys live. The embedded redb database (the default, in
//! `server.state_dir`) or a PostgreSQL database, the first step of cluster mode: for
//! now one apikeyd at a time on it (a second one is refused at start).

use std::path::PathBuf;

use serde::Deserialize;

use super::validator::Validator;

/// The keys `[store]` may hold.
pub(crate) const STORE_KEYS: &[&str] = &["backend", "url", "password_file"];

/// The systemd credential that holds the PostgreSQL password (wins over
/// `password_file`).
pub const POSTGRES_PASSWORD_CREDENTIAL: &str = "postgres-password";

/// Which store the daemon uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded redb database.
    #[default]
    Redb,
    /// A PostgreSQL database.
    Postgres {
        /// libpq connection string or URL, without a password.
        url: String,
        /// File holding the password (the systemd credential `postgres-password`
        /// wins over it).
        password_file: Option<PathBuf>,
    },
}

/// Why a PostgreSQL connection string cannot be used. Never repeats the string: it
/// may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// It does not parse.
    #[error("not a PostgreSQL connection string: {0}")]
    Unparsable(#[source] tokio_postgres::Error),
    /// It holds a password, which belongs in a file or a systemd credential.
    #[error("must not hold the password")]
    HoldsPassword,
}

/// Check a connection string for the PostgreSQL store (the config's `[store] url`,
/// `apikeyd migrate`'s `postgres:URL`): it parses and holds no password (a secret in
/// a config file or on a command line is readable by whoever may read them, and
/// shown by tools that print them).
pub fn check_postgres_url(url: &str) -> Result<(), UrlError> {
    match url.parse::<tokio_postgres::Config>() {
        Err(e) => Err(UrlError::Unparsable(e)),
        Ok(c) if c.get_password().is_some() => Err(UrlError::HoldsPassword),
        Ok(_) => Ok(()),
    }
}

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawStore {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
}

impl Validator {
    /// `[store]`: a known backend; for PostgreSQL, a connection string that parses
    /// and holds no password (a secret in the config file would be readable by
    /// whoever may read the configuration, and shown by tools that print it).
    pub(crate) fn store(&mut self, raw: RawStore) -> StoreConfig {
        match raw.backend.as_deref().map(str::trim).unwrap_or("redb") {
            "redb" => {
                for (key, set) in [
                    ("url", raw.url.is_some()),
                    ("password_file", raw.password_file.is_some()),
                ] {
                    if set {
                        self.push(
                            &format!("store.{key}"),
                            "only used with backend = \"postgres\"".into(),
                        );
                    }
                }
                StoreConfig::Redb
            }
            "postgres" => {
                let Some(url) = raw.url.filter(|u| !u.trim().is_empty()) else {
                    self.push(
                        "store.url",
                        "backend = \"postgres\" needs the database to connect to, such as \"host=db.example port=5432 dbname=apikeyd user=apikeyd\"".into(),
                    );
                    return StoreConfig::Redb;
                };
                match check_postgres_url(&url) {
                    Err(e @ UrlError::Unparsable(_)) => self.push("store.url", e.to_string()),
                    Err(UrlError::HoldsPassword) => self.push(
                        "store.url",
                        format!("must not hold the password: put it in store.password_file or the systemd credential {POSTGRES_PASSWORD_CREDENTIAL:?}"),
                    ),
                    Ok(()) => {}
                }
                StoreConfig::Postgres {
                    url,
                    password_file: raw.password_file,
                }
            }
            other => {
                self.push(
                    "store.backend",
                    format!("{other:?} is not a store: \"redb\" (the default) or \"postgres\""),
                );
                StoreConfig::Redb
            }
        }
    }
}

#[cfg(test)]
mod tests;
