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
                match url.parse::<tokio_postgres::Config>() {
                    Err(e) => self.push("store.url", format!("not a PostgreSQL connection string: {e}")),
                    Ok(c) if c.get_password().is_some() => self.push(
                        "store.url",
                        format!("must not hold the password: put it in store.password_file or the systemd credential {POSTGRES_PASSWORD_CREDENTIAL:?}"),
                    ),
                    Ok(_) => {}
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::from_text;

    fn problems(text: &str) -> Vec<(String, String)> {
        from_text(text)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    }

    #[test]
    fn redb_is_the_default_and_postgres_needs_a_url_without_a_password() {
        assert_eq!(from_text("").unwrap().store, StoreConfig::Redb);
        let pg = from_text("[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 dbname=k user=k\"\npassword_file = \"/run/pg\"\n").unwrap();
        assert_eq!(
            pg.store,
            StoreConfig::Postgres {
                url: "host=127.0.0.1 dbname=k user=k".into(),
                password_file: Some("/run/pg".into()),
            }
        );
        let p = problems("[store]\nbackend = \"postgres\"\n");
        assert_eq!(p[0].0, "store.url");
        for url in [
            "host=h password=hunter2hunter2 dbname=k",
            "postgresql://k:hunter2hunter2@h/k",
        ] {
            let p = problems(&format!("[store]\nbackend = \"postgres\"\nurl = {url:?}\n"));
            assert_eq!(p[0].0, "store.url", "{url}");
            assert!(p[0].1.contains("must not hold the password"), "{p:?}");
            // The password itself is not repeated in the message.
            assert!(!p[0].1.contains("hunter2"), "{p:?}");
        }
        let p = problems("[store]\nbackend = \"mysql\"\n");
        assert_eq!(p[0].0, "store.backend");
        let p = problems("[store]\nurl = \"host=h\"\n");
        assert_eq!(p[0].0, "store.url");
        let p = problems("[store]\nbackend = \"postgres\"\nurl = \"host=h\"\nport = 5\n");
        assert_eq!(p[0].0, "store.port");
    }
}
