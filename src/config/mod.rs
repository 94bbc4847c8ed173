//! Configuration: a TOML file in the registry style of the RunMyJobs extension
//! (`[ApiKey] MaxExpirationPeriod = "p6m"`), plus users, groups and server settings.
//!
//! Loading is two steps: the file is parsed and every unknown key reported, then one
//! validation pass turns the raw values into a [`Config`], collecting every problem
//! with its file and key (like `nginx -t`) instead of stopping at the first.
//!
//! Each section of the file has its own module; what they share (the `Validator`,
//! the errors, periods) lives in leaf modules beside them. None of them imports
//! this one, which only puts the sections together into a file. (What a section
//! hands up to it is `pub(crate)`: `pub(super)` would name this module too.)

pub mod address;
pub mod alerts;
pub mod ca_file;
pub mod console;
pub mod credential;
pub mod directory;
pub mod edge;
mod error;
pub mod ipfilter;
pub mod period;
mod policy;
pub mod server;
pub mod store;
mod validator;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use alerts::AlertConfig;
pub use console::ConsoleConfig;
pub use directory::{valid_name, valid_scope, Directory, Group, Rights, User};
pub use edge::{AuthConfig, RateLimitConfig, Route};
pub use error::{ConfigError, Problem};
pub use period::{Period, PeriodError};
pub use policy::{Policy, DEFAULT_MAX_KEYS_PER_USER};
pub use server::{Environment, ServerConfig};
pub use store::{PostgresConfig, StoreConfig};
use validator::Validator;

/// The scope that lets a key use the admin API over TCP.
pub const ADMIN_SCOPE: &str = "apikeyd:admin";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Listeners and storage.
    pub server: ServerConfig,
    /// Key lifecycle rules.
    pub policy: Policy,
    /// Users and groups.
    pub directory: Directory,
    /// Forward-auth settings.
    pub auth: AuthConfig,
    /// Failed-verification limits.
    pub rate_limit: RateLimitConfig,
    /// Alert jobs, sources, SMTP and maintenance schedules.
    pub alerts: AlertConfig,
    /// Where the keys live.
    pub store: StoreConfig,
    /// The web console.
    pub console: ConsoleConfig,
}

/// The listeners and the store a daemon started with: read once, at start, so a
/// reload does not apply changes to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOnly {
    server: ServerConfig,
    store: StoreConfig,
    console: ConsoleConfig,
}

impl StartOnly {
    pub fn of(c: &Config) -> Self {
        Self {
            server: c.server.clone(),
            store: c.store.clone(),
            console: c.console.clone(),
        }
    }

    /// The sections of `new` that differ from these and would need a restart.
    pub fn changed_in(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if new.server != self.server {
            changed.push("[server]");
        }
        if new.store != self.store {
            changed.push("[store]");
        }
        if new.console != self.console {
            changed.push("[console]");
        }
        changed
    }
}

impl Config {
    /// What loads but will not work for everyone: warnings (`check-config` prints
    /// them and still accepts the file).
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = self.console_warnings();
        let Some(name) = self.alerts.default_source.as_deref() else {
            return out;
        };
        if !self
            .alerts
            .source(name)
            .is_some_and(alerts::AlertSource::needs_owner_address)
        {
            return out;
        }
        // Only users who may own keys get notifications.
        let lacking: Vec<&str> = self
            .directory
            .users
            .values()
            .filter(|u| u.email.is_none())
            .filter(|u| {
                self.directory
                    .rights(&u.name)
                    .is_some_and(|r| r.create_keys)
            })
            .map(|u| u.name.as_str())
            .collect();
        if lacking.is_empty() {
            return out;
        }
        let fallback = match self.alerts.source(alerts::OPERATOR) {
            Some(s) if !s.needs_owner_address() => format!(
                "their keys' default notifications and inactivity warnings go through {:?} instead",
                alerts::OPERATOR
            ),
            _ => "their keys get no default notification or inactivity warning".to_owned(),
        };
        out.push(Problem {
            file: self.source.clone(),
            key: "ApiKey.DefaultAlertSource".into(),
            message: format!(
                "{name:?} writes to the key owner's email address, which user(s) {} lack (set users.NAME.email); {fallback}",
                lacking.join(", ")
            ),
        });
        out
    }
}

impl Config {
    /// The console reachable beyond this machine over plain HTTP (its session
    /// cookie and every key shown would cross the network in the clear), or a
    /// proxy login that cannot be used.
    fn console_warnings(&self) -> Vec<Problem> {
        let c = &self.console;
        if !c.enabled {
            return c
                .proxy_user_header
                .iter()
                .map(|_| self.warning(
                    "console.proxy_user_header",
                    "is set, but the console is off (console.enabled), so nobody can log in through the proxy".into(),
                ))
                .collect();
        }
        let plain = |host: String| {
            format!(
            "the console is reachable beyond loopback ({host}) without TLS: its session cookie and new keys' secrets would cross the network in the clear; put an HTTPS proxy in front and set console.public_url = \"https://...\""
        )
        };
        let mut out = if !self.server.listen.ip().is_loopback() && !c.secure_cookie() {
            vec![self.warning("console.enabled", plain(self.server.listen.to_string()))]
        } else if let Some(u) = c
            .public_url
            .as_ref()
            .filter(|u| u.scheme() == "http" && !console::loopback(u))
        {
            let host = u.host_str().unwrap_or_default().to_owned();
            vec![self.warning(
                "console.public_url",
                plain(format!("served as {host} by a proxy")),
            )]
        } else {
            Vec::new()
        };
        // A proxy login needs no secret from the page, which logs in on load:
        // script of any other page of its origin could log in the same way.
        let own_origin = c.public_url.as_ref().is_some_and(|u| u.path() == "/");
        if c.proxy_user_header.is_some() && !own_origin {
            out.push(self.warning(
                "console.public_url",
                "proxy login is on, and the console does not have a host name of its own (console.public_url is unset or has a path): a script on any other page of the same origin could log in through the proxy as the user looking at it; serve the console at its own name, such as public_url = \"https://keys.example.com/\"".into(),
            ));
        }
        out
    }

    fn warning(&self, key: &str, message: String) -> Problem {
        Problem {
            file: self.source.clone(),
            key: key.into(),
            message,
        }
    }
}

// ---------- raw file types ----------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default, rename = "ApiKey")]
    api_key: policy::RawApiKey,
    #[serde(default)]
    groups: BTreeMap<String, directory::RawGroup>,
    #[serde(default)]
    users: BTreeMap<String, directory::RawUser>,
    #[serde(default)]
    auth: edge::RawAuth,
    #[serde(default)]
    rate_limit: edge::RawRateLimit,
    #[serde(default)]
    smtp: alerts::RawSmtp,
    #[serde(default)]
    alert_sources: BTreeMap<String, alerts::RawAlertSource>,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    jobs: alerts::RawJobs,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    console: console::RawConsole,
}

/// The tables a file may hold, in the order the message naming them lists them.
const FILE_KEYS: &[&str] = &[
    "server",
    "ApiKey",
    "groups",
    "users",
    "auth",
    "rate_limit",
    "smtp",
    "alert_sources",
    "alerts",
    "jobs",
    "store",
    "console",
];
/// The keys a table may hold.
enum Keys {
    /// A table of settings: `[server]`.
    Table(&'static [&'static str]),
    /// A table of named tables: `[users.NAME]`.
    Named(&'static [&'static str]),
    /// A table of settings, one of which is an array of tables: `[[auth.routes]]`.
    WithArray {
        keys: &'static [&'static str],
        array: &'static str,
        item_keys: &'static [&'static str],
    },
}

/// What each table may hold, in the order its unknown keys are reported.
const TABLE_KEYS: &[(&str, Keys)] = &[
    ("smtp", Keys::Table(alerts::SMTP_KEYS)),
    ("alerts", Keys::Table(alerts::ALERTS_KEYS)),
    ("jobs", Keys::Table(alerts::JOBS_KEYS)),
    ("alert_sources", Keys::Named(alerts::SOURCE_KEYS)),
    (
        "auth",
        Keys::WithArray {
            keys: edge::AUTH_KEYS,
            array: "routes",
            item_keys: edge::ROUTE_KEYS,
        },
    ),
    ("rate_limit", Keys::Table(edge::RATE_LIMIT_KEYS)),
    ("server", Keys::Table(server::SERVER_KEYS)),
    ("ApiKey", Keys::Table(policy::API_KEY_KEYS)),
    ("groups", Keys::Named(directory::GROUP_KEYS)),
    ("users", Keys::Named(directory::USER_KEYS)),
    ("store", Keys::Table(store::STORE_KEYS)),
    ("console", Keys::Table(console::CONSOLE_KEYS)),
];

/// Every table a file may hold with the keys it may hold (an array of tables as
/// `routes.prefix`), for the test that apikeyd.toml(5) describes them all.
#[cfg(test)]
pub(crate) fn documented_keys() -> Vec<(&'static str, Vec<String>)> {
    TABLE_KEYS
        .iter()
        .map(|(table, keys)| {
            let keys = match keys {
                Keys::Table(k) | Keys::Named(k) => k.iter().map(|k| (*k).to_owned()).collect(),
                Keys::WithArray {
                    keys,
                    array,
                    item_keys,
                } => keys
                    .iter()
                    .map(|k| (*k).to_owned())
                    .chain(item_keys.iter().map(|k| format!("{array}.{k}")))
                    .collect(),
            };
            (*table, keys)
        })
        .collect()
}

/// Load and validate a configuration file, and check that the files it names that
/// the daemon reads at start ([`parse`] opens none) can be read.
pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        problems: vec![Problem {
            file: path.to_path_buf(),
            key: key.to_owned(),
            message,
        }],
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail("", format!("cannot read the file: {e}")))?;
    let config = parse(path, &text, env)?;
    let mut v = Validator::new(path);
    v.smtp_files(&config.alerts.smtp, env.credentials_directory.as_deref());
    v.console_files(&config.console, env.credentials_directory.as_deref());
    match v.has_problems() {
        false => Ok(config),
        true => Err(v.finish_err()),
    }
}

/// Validate configuration text as if it came from `path`.
pub fn parse(path: &Path, text: &str, env: &Environment) -> Result<Config, ConfigError> {
    let mut v = Validator::new(path);
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            v.push(
                "",
                format!("not valid TOML: {}", e.message().trim()) + &location(text, e.span()),
            );
            return Err(v.finish_err());
        }
    };
    v.unknown_keys(&table);
    if v.has_problems() {
        return Err(v.finish_err());
    }
    let raw: RawFile = match RawFile::deserialize(toml::Value::Table(table)) {
        Ok(r) => r,
        Err(e) => {
            v.push("", e.message().trim().to_owned());
            return Err(v.finish_err());
        }
    };
    let config = v.validate(raw, env);
    match config {
        Some(c) if !v.has_problems() => Ok(c),
        _ => Err(v.finish_err()),
    }
}

/// Test helper: `text` validated as the file `test.toml`, without systemd's
/// directories.
#[cfg(test)]
pub(crate) fn from_text(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.toml"), text, &Environment::default())
}

/// Test helper: the problems `text` is refused with, as (key, message).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn problems(text: &str) -> Vec<(String, String)> {
    from_text(text)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| (p.key, p.message))
        .collect()
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let upto = &text[..r.start.min(text.len())];
            let line = upto.matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

impl Validator {
    fn unknown_keys(&mut self, file: &toml::Table) {
        self.check_keys("", file, FILE_KEYS);
        for (name, keys) in TABLE_KEYS {
            let Some(table) = file.get(*name).and_then(toml::Value::as_table) else {
                continue;
            };
            match keys {
                Keys::Table(allowed) => self.check_keys(&format!("{name}."), table, allowed),
                Keys::Named(allowed) => {
                    for (entry, value) in table {
                        if let Some(t) = value.as_table() {
                            self.check_keys(&format!("{name}.{entry}."), t, allowed);
                        }
                    }
                }
                Keys::WithArray {
                    keys,
                    array,
                    item_keys,
                } => {
                    self.check_keys(&format!("{name}."), table, keys);
                    let items = table.get(*array).and_then(toml::Value::as_array);
                    for (i, item) in items.into_iter().flatten().enumerate() {
                        if let Some(t) = item.as_table() {
                            self.check_keys(&format!("{name}.{array}[{i}]."), t, item_keys);
                        }
                    }
                }
            }
        }
    }

    /// Every section in turn, so that every problem is reported; `None` when one
    /// left nothing to build on (the problems say why).
    fn validate(&mut self, raw: RawFile, env: &Environment) -> Option<Config> {
        let auth = edge::validate_auth(self, raw.auth);
        let rate_limit = edge::validate_rate_limit(self, raw.rate_limit);
        let policy = self.policy(&raw.api_key);
        let server = self.server(&raw.server, env);
        let store = self.store(raw.store);
        let listen = server.as_ref().map(|s| s.listen);
        let console = self.console(&raw.console, listen, &auth.trusted_proxies);
        let directory = self.directory(raw.groups, raw.users);
        let a = raw.api_key;
        let alert_keys = alerts::RawAlertKeys {
            default_lead_time: a.DefaultNotificationLeadTime,
            default_source: a.DefaultAlertSource,
            inactivity_warning_lead_time: a.InactivityWarningLeadTime,
            retention: a.RetentionPeriod,
        };
        let alerts = self.validate_alerts(
            alert_keys,
            raw.smtp,
            raw.alert_sources,
            raw.alerts,
            raw.jobs,
        );
        Some(Config {
            source: self.file().to_path_buf(),
            server: server?,
            policy,
            directory,
            auth,
            rate_limit,
            alerts,
            store,
            console,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/apikeyd.toml");
        let c = load(&path, &Environment::default()).unwrap();
        assert_eq!(c.policy.max_expiration.as_ref().unwrap().as_str(), "p6m");
        assert_eq!(
            c.policy.not_accessed_expiration.as_ref().unwrap().as_str(),
            "p3m"
        );
        for g in [
            "Synchronizer",
            "User",
            "Moderator",
            "Admin",
            "SiteAdmin",
            "Recognizer",
        ] {
            assert!(c.directory.groups.contains_key(g), "{g}");
        }
        let creators: Vec<_> = c
            .directory
            .groups
            .iter()
            .filter(|(_, g)| g.create_keys)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            creators,
            ["Admin", "Moderator", "SiteAdmin", "Synchronizer"]
        );
        assert!(c.directory.rights("admin").unwrap().manage_all_keys);
        assert!(!c.directory.rights("alice").unwrap().manage_all_keys);
        assert_eq!(c.directory.user_for_unix("root").unwrap().name, "admin");
        let a = &c.alerts;
        assert_eq!(a.default_lead_time.as_ref().unwrap().as_str(), "p14d");
        assert_eq!(a.default_source.as_deref(), Some("owner-email"));
        for s in ["owner-email", "operator", "security-team", "webhook"] {
            assert!(a.source(s).is_some(), "{s}");
        }
        assert_eq!(a.jobs.purge, "0 17 3 * * *");
    }

    #[test]
    fn defaults_when_empty() {
        let c = from_text("").unwrap();
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.server.listen.port(), 8700);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = from_text(
            r#"
            [ApiKey]
            MaxExpirationPeriod = "p6mjunk"
            NotAccessedExpirationPeriod = "6m"
            DefaultExpirationPeriod = "p0d"
            [server]
            listen = "nowhere"
            [users.bob]
            groups = ["Nope"]
            email = "not-an-email"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "ApiKey.MaxExpirationPeriod",
            "ApiKey.NotAccessedExpirationPeriod",
            "ApiKey.DefaultExpirationPeriod",
            "server.listen",
            "users.bob.groups",
            "users.bob.email",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(err.to_string().contains("p6mjunk"));
        assert!(err.to_string().contains("test.toml"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err =
            from_text("[ApiKey]\nMaxExpirationPeriode = \"p6m\"\n[server]\nlisten_addr = \"x\"\n")
                .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["server.listen_addr", "ApiKey.MaxExpirationPeriode"]);
    }

    #[test]
    fn empty_period_turns_limit_off() {
        let c =
            from_text("[ApiKey]\nMaxExpirationPeriod = \"\"\nNotAccessedExpirationPeriod = \"\"\n")
                .unwrap();
        assert!(c.policy.max_expiration.is_none());
        assert!(c.policy.not_accessed_expiration.is_none());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = from_text("[server]\nlisten = \n").unwrap_err();
        assert!(err.problems[0].message.contains("line 2"), "{}", err);
    }
}
