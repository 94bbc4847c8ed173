//! `[store]`: where the keys live. The embedded redb database (the default, in
//! `server.state_dir`) or a PostgreSQL database that several apikeyd nodes share
//! (cluster mode).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validator::Validator;

/// The keys `[store]` may hold.
pub(crate) const STORE_KEYS: &[&str] = &[
    "backend",
    "url",
    "password_file",
    "pool_size",
    "connect_timeout",
    "statement_timeout",
    "job_lease",
    "poll_interval",
    "change_log_retention",
    "ca_file",
];

/// The systemd credential that holds the PostgreSQL password (wins over
/// `password_file`).
pub const POSTGRES_PASSWORD_CREDENTIAL: &str = "postgres-password";

/// Which store the daemon uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded redb database.
    #[default]
    Redb,
    /// A PostgreSQL database, shared by every node of a cluster.
    Postgres(PostgresConfig),
}

/// `[store] backend = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// libpq connection string or URL, without a password.
    pub url: String,
    /// File holding the password (the systemd credential `postgres-password`
    /// wins over it).
    pub password_file: Option<PathBuf>,
    /// Most connections this node opens for requests (besides one that listens
    /// for other nodes' changes and holds the maintenance lock).
    pub pool_size: usize,
    /// How long connecting, or waiting for a free connection, may take.
    pub connect_timeout: Duration,
    /// How long one statement may run on the server.
    pub statement_timeout: Duration,
    /// How long a claimed alert job stays with the node that claimed it without
    /// being renewed: a node that dies holding it loses it after this.
    pub job_lease: Duration,
    /// How often a node looks at the change log even without a notification.
    pub poll_interval: Duration,
    /// How long other nodes' changes stay in the change log; a node further
    /// behind reloads every key.
    pub change_log_retention: Duration,
    /// PEM file of CA certificates trusted for the server's certificate, besides
    /// the usual public roots (TLS itself is asked for with `sslmode` in `url`).
    pub ca_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The defaults for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            job_lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            change_log_retention: Duration::from_secs(3600),
            ca_file: None,
        }
    }
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
    #[serde(default)]
    pool_size: Option<i64>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    statement_timeout: Option<String>,
    #[serde(default)]
    job_lease: Option<String>,
    #[serde(default)]
    poll_interval: Option<String>,
    #[serde(default)]
    change_log_retention: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

impl RawStore {
    /// The settings only PostgreSQL reads, by name, and whether each is set.
    fn postgres_only(&self) -> [(&'static str, bool); 9] {
        [
            ("url", self.url.is_some()),
            ("password_file", self.password_file.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("statement_timeout", self.statement_timeout.is_some()),
            ("job_lease", self.job_lease.is_some()),
            ("poll_interval", self.poll_interval.is_some()),
            ("change_log_retention", self.change_log_retention.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ]
    }
}

impl Validator {
    /// `[store]`: a known backend; for PostgreSQL, a connection string that parses
    /// and holds no password (a secret in the config file would be readable by
    /// whoever may read the configuration, and shown by tools that print it).
    pub(crate) fn store(&mut self, raw: RawStore) -> StoreConfig {
        match raw.backend.as_deref().map(str::trim).unwrap_or("redb") {
            "redb" => {
                for (key, set) in raw.postgres_only() {
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
                let d = PostgresConfig::new(url);
                let pool = self.int("store.pool_size", raw.pool_size, 8, 1..=256, None);
                let job_lease = self.duration("store.job_lease", raw.job_lease.as_deref(), "pt1m");
                let poll_interval =
                    self.duration("store.poll_interval", raw.poll_interval.as_deref(), "pt1s");
                if job_lease < Duration::from_secs(3) {
                    self.push(
                        "store.job_lease",
                        "must be at least 3 seconds: a delivery renews its lease a third of the way through".into(),
                    );
                }
                StoreConfig::Postgres(PostgresConfig {
                    password_file: raw.password_file,
                    pool_size: usize::try_from(pool).unwrap_or(d.pool_size),
                    connect_timeout: self.duration(
                        "store.connect_timeout",
                        raw.connect_timeout.as_deref(),
                        "pt5s",
                    ),
                    statement_timeout: self.duration(
                        "store.statement_timeout",
                        raw.statement_timeout.as_deref(),
                        "pt30s",
                    ),
                    job_lease,
                    poll_interval,
                    ca_file: raw.ca_file,
                    change_log_retention: self.duration(
                        "store.change_log_retention",
                        raw.change_log_retention.as_deref(),
                        "pt1h",
                    ),
                    ..d
                })
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
