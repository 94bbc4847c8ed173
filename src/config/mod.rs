//! Configuration: a TOML file in the registry style of the RunMyJobs extension
//! (`[ApiKey] MaxExpirationPeriod = "p6m"`), plus users, groups and server settings.
//!
//! Loading is two steps: the file is parsed and every unknown key reported, then one
//! validation pass turns the raw values into a [`Config`], collecting every problem
//! with its file and key (like `nginx -t`) instead of stopping at the first.

pub mod alerts;
pub mod edge;
pub mod period;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use alerts::AlertConfig;
pub use edge::{AuthConfig, RateLimitConfig, Route};
pub use period::{Period, PeriodError};

/// The scope that lets a key use the admin API over TCP.
pub const ADMIN_SCOPE: &str = "apikeyd:admin";

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in.
    pub file: PathBuf,
    /// Dotted key path, e.g. `ApiKey.MaxExpirationPeriod`; empty for file-level problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// A configuration that could not be loaded, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Every problem, in file order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// `[ApiKey] MaxKeysPerUser` when the file names none.
pub const DEFAULT_MAX_KEYS_PER_USER: u32 = 1000;

/// Key lifecycle rules from the `[ApiKey]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest lifetime a key may have; `None` allows keys that never expire.
    pub max_expiration: Option<Period>,
    /// A key not used for this long stops working; `None` turns inactivity expiry off.
    pub not_accessed_expiration: Option<Period>,
    /// Lifetime given when a create names none (clamped to the maximum).
    pub default_expiration: Option<Period>,
    /// Shortest user-defined ("generic") secret accepted by `key import`.
    pub min_imported_secret_length: usize,
    /// Most keys one user may hold (removed keys do not count); `None` = no limit.
    pub max_keys_per_user: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        let p = |s: &str| Period::parse(s).ok();
        Self {
            max_expiration: p("p6m"),
            not_accessed_expiration: p("p3m"),
            default_expiration: p("p1y"),
            min_imported_secret_length: 32,
            max_keys_per_user: Some(DEFAULT_MAX_KEYS_PER_USER),
        }
    }
}

/// A group of users and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    /// Scopes a key of a member may carry.
    pub scopes: BTreeSet<String>,
    /// Members may create keys (for themselves).
    pub create_keys: bool,
    /// Members manage everyone's keys (administrators).
    pub manage_all_keys: bool,
}

/// A configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's name (the table key).
    pub name: String,
    /// Where notifications go.
    pub email: Option<String>,
    /// Group names, all of which exist in the configuration.
    pub groups: Vec<String>,
    /// The Unix account that acts as this user on the admin socket.
    pub unix_user: Option<String>,
}

/// Users and groups: who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
}

/// What a user may do, derived from their groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rights {
    /// Union of the groups' scopes.
    pub scopes: BTreeSet<String>,
    /// One of the groups allows creating keys.
    pub create_keys: bool,
    /// One of the groups manages everyone's keys.
    pub manage_all_keys: bool,
}

impl Directory {
    /// The rights of `user`, or `None` if there is no such user.
    pub fn rights(&self, user: &str) -> Option<Rights> {
        let u = self.users.get(user)?;
        let mut r = Rights::default();
        for g in u.groups.iter().filter_map(|g| self.groups.get(g)) {
            r.scopes.extend(g.scopes.iter().cloned());
            r.create_keys |= g.create_keys;
            r.manage_all_keys |= g.manage_all_keys;
        }
        Some(r)
    }

    /// The configured user mapped to a Unix account name.
    pub fn user_for_unix(&self, account: &str) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.unix_user.as_deref() == Some(account))
    }
}

/// Listener and storage settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// TCP address for verification (and key-authenticated admin) requests.
    pub listen: SocketAddr,
    /// Path of the admin Unix socket.
    pub admin_socket: PathBuf,
    /// Directory holding the redb database.
    pub state_dir: PathBuf,
    /// File holding the HMAC server secret (created on first start).
    pub secret_file: PathBuf,
    /// Tokio worker threads; 0 means one per CPU, 1 a single-threaded runtime.
    pub worker_threads: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request head once it has started one.
    pub header_read_timeout: std::time::Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub idle_timeout: std::time::Duration,
    /// Most connections open at once, TCP and admin socket together (one budget of
    /// file descriptors).
    pub max_connections: usize,
    /// Most connections open at once from one client: an address on TCP (IPv6: one
    /// network of `rate_limit.ipv6_prefix` bits), a local account on the socket.
    pub max_connections_per_client: usize,
}

impl ServerConfig {
    /// Where the database lives.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("apikeyd.redb")
    }
}

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
}

impl Config {
    /// What loads but will not work for everyone: warnings (`check-config` prints
    /// them and still accepts the file).
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
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

// ---------- raw file types ----------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default, rename = "ApiKey")]
    api_key: RawApiKey,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_socket: Option<String>,
    state_dir: Option<String>,
    secret_file: Option<String>,
    worker_threads: Option<i64>,
    max_body_bytes: Option<i64>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_client: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct RawApiKey {
    MaxExpirationPeriod: Option<String>,
    NotAccessedExpirationPeriod: Option<String>,
    DefaultExpirationPeriod: Option<String>,
    MinImportedSecretLength: Option<i64>,
    DefaultNotificationLeadTime: Option<String>,
    DefaultAlertSource: Option<String>,
    InactivityWarningLeadTime: Option<String>,
    RetentionPeriod: Option<String>,
    MaxKeysPerUser: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    create_keys: bool,
    #[serde(default)]
    manage_all_keys: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUser {
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    unix_user: Option<String>,
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_socket",
    "state_dir",
    "secret_file",
    "worker_threads",
    "max_body_bytes",
    "header_read_timeout",
    "idle_timeout",
    "max_connections",
    "max_connections_per_client",
];
const API_KEY_KEYS: &[&str] = &[
    "MaxExpirationPeriod",
    "NotAccessedExpirationPeriod",
    "DefaultExpirationPeriod",
    "MinImportedSecretLength",
    "DefaultNotificationLeadTime",
    "DefaultAlertSource",
    "InactivityWarningLeadTime",
    "RetentionPeriod",
    "MaxKeysPerUser",
];
const GROUP_KEYS: &[&str] = &["scopes", "create_keys", "manage_all_keys"];
const USER_KEYS: &[&str] = &["email", "groups", "unix_user"];

/// Environment that changes where relative paths land (systemd sets these).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$STATE_DIRECTORY`: replaces a relative `state_dir`.
    pub state_directory: Option<PathBuf>,
    /// `$RUNTIME_DIRECTORY`: holds a relative `admin_socket`.
    pub runtime_directory: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY`: a `server-secret` credential there is used as the secret.
    pub credentials_directory: Option<PathBuf>,
}

impl Environment {
    /// Read from the process environment.
    pub fn from_process() -> Self {
        let dir = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .map(|p| {
                    // systemd may list several directories separated by ':'; use the first.
                    let s = p.to_string_lossy().into_owned();
                    PathBuf::from(s.split(':').next().unwrap_or_default())
                })
                .filter(|p| !p.as_os_str().is_empty())
        };
        Self {
            state_directory: dir("STATE_DIRECTORY"),
            runtime_directory: dir("RUNTIME_DIRECTORY"),
            credentials_directory: dir("CREDENTIALS_DIRECTORY"),
        }
    }
}

/// Load and validate a configuration file.
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
    parse(path, &text, env)
}

/// Validate configuration text as if it came from `path`.
pub fn parse(path: &Path, text: &str, env: &Environment) -> Result<Config, ConfigError> {
    let mut v = Validator {
        file: path.to_path_buf(),
        problems: Vec::new(),
    };
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
    if !v.problems.is_empty() {
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
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(v.finish_err()),
    }
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

pub(crate) struct Validator {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Validator {
    pub(crate) fn push(&mut self, key: &str, message: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            key: key.to_owned(),
            message,
        });
    }

    fn finish_err(&mut self) -> ConfigError {
        ConfigError {
            problems: std::mem::take(&mut self.problems),
        }
    }

    fn check_keys(&mut self, prefix: &str, table: &toml::Table, allowed: &[&str]) {
        for k in table.keys() {
            if !allowed.contains(&k.as_str()) {
                self.push(
                    &format!("{prefix}{k}"),
                    format!("unknown key (known keys here: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn unknown_keys(&mut self, table: &toml::Table) {
        self.check_keys(
            "",
            table,
            &[
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
            ],
        );
        self.alert_unknown_keys(table);
        if let Some(t) = table.get("auth").and_then(|v| v.as_table()) {
            self.check_keys("auth.", t, edge::AUTH_KEYS);
            if let Some(routes) = t.get("routes").and_then(|r| r.as_array()) {
                for (i, r) in routes.iter().enumerate() {
                    if let Some(r) = r.as_table() {
                        self.check_keys(&format!("auth.routes[{i}]."), r, edge::ROUTE_KEYS);
                    }
                }
            }
        }
        if let Some(t) = table.get("rate_limit").and_then(|v| v.as_table()) {
            self.check_keys("rate_limit.", t, edge::RATE_LIMIT_KEYS);
        }
        let sub = |name: &str| table.get(name).and_then(|v| v.as_table());
        if let Some(t) = sub("server") {
            self.check_keys("server.", t, SERVER_KEYS);
        }
        if let Some(t) = sub("ApiKey") {
            self.check_keys("ApiKey.", t, API_KEY_KEYS);
        }
        for (section, allowed) in [("groups", GROUP_KEYS), ("users", USER_KEYS)] {
            if let Some(t) = sub(section) {
                for (name, entry) in t {
                    if let Some(e) = entry.as_table() {
                        self.check_keys(&format!("{section}.{name}."), e, allowed);
                    }
                }
            }
        }
    }

    fn period(&mut self, key: &str, value: Option<&str>, default: &str) -> Option<Period> {
        let value = value.unwrap_or(default);
        match Period::parse_optional(value) {
            Ok(p) => p,
            Err(e) => {
                self.push(key, e.to_string());
                None
            }
        }
    }

    /// A period of fixed length (no months or years) from 1 s to `max_secs`, as a
    /// duration; `range` names the bounds in the message.
    fn fixed_period(
        &mut self,
        key: &str,
        value: &str,
        max_secs: u64,
        range: &str,
    ) -> Option<std::time::Duration> {
        Period::parse(value)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                p.fixed()
                    .filter(|d| (1..=max_secs).contains(&d.as_secs()))
                    .ok_or_else(|| format!("{p} is out of range ({range})"))
            })
            .map_err(|message| self.push(key, message))
            .ok()
    }

    fn validate(&mut self, raw: RawFile, env: &Environment) -> Option<Config> {
        let auth = edge::validate_auth(self, raw.auth);
        let rate_limit = edge::validate_rate_limit(self, raw.rate_limit);
        // ---- [ApiKey]
        let a = &raw.api_key;
        let max = self.period(
            "ApiKey.MaxExpirationPeriod",
            a.MaxExpirationPeriod.as_deref(),
            "p6m",
        );
        let not_accessed = self.period(
            "ApiKey.NotAccessedExpirationPeriod",
            a.NotAccessedExpirationPeriod.as_deref(),
            "p3m",
        );
        let default = self.period(
            "ApiKey.DefaultExpirationPeriod",
            a.DefaultExpirationPeriod.as_deref(),
            "p1y",
        );
        let min_import = a.MinImportedSecretLength.unwrap_or(32);
        if !(16..=256).contains(&min_import) {
            self.push(
                "ApiKey.MinImportedSecretLength",
                format!("{min_import} is out of range (16 to 256 characters)"),
            );
        }
        let max_keys = a
            .MaxKeysPerUser
            .unwrap_or(i64::from(DEFAULT_MAX_KEYS_PER_USER));
        if !(0..=10_000_000).contains(&max_keys) {
            self.push(
                "ApiKey.MaxKeysPerUser",
                format!("{max_keys} is out of range (0 = no limit, up to 10000000)"),
            );
        }
        let policy = Policy {
            max_expiration: max,
            not_accessed_expiration: not_accessed,
            default_expiration: default,
            min_imported_secret_length: usize::try_from(min_import).unwrap_or(32),
            max_keys_per_user: u32::try_from(max_keys).ok().filter(|n| *n > 0),
        };

        // ---- [server]
        let s = &raw.server;
        let listen_text = s.listen.as_deref().unwrap_or("127.0.0.1:8700");
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    "server.listen",
                    format!("{listen_text:?} is not an address:port such as \"127.0.0.1:8700\""),
                );
                None
            }
        };
        let state_dir_text = s.state_dir.as_deref().unwrap_or("var");
        if state_dir_text.trim().is_empty() {
            self.push("server.state_dir", "must not be empty".into());
        }
        let state_dir = resolve(state_dir_text, env.state_directory.as_deref(), true);
        let socket_text = s.admin_socket.as_deref().unwrap_or("apikeyd.sock");
        if socket_text.trim().is_empty() {
            self.push("server.admin_socket", "must not be empty".into());
        }
        let admin_socket = match &env.runtime_directory {
            Some(rt) if Path::new(socket_text).is_relative() => rt.join(
                Path::new(socket_text)
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("apikeyd.sock")),
            ),
            _ => PathBuf::from(socket_text),
        };
        if admin_socket.as_os_str().len() > 100 {
            self.push(
                "server.admin_socket",
                format!(
                    "{} is too long for a Unix socket path (at most 100 bytes)",
                    admin_socket.display()
                ),
            );
        }
        let secret_file = match s.secret_file.as_deref() {
            None | Some("") => state_dir.join("server.secret"),
            Some(p) if Path::new(p).is_relative() && env.state_directory.is_some() => {
                state_dir.join(Path::new(p).file_name().unwrap_or_default())
            }
            Some(p) => PathBuf::from(p),
        };
        let worker_threads = s.worker_threads.unwrap_or(0);
        if !(0..=256).contains(&worker_threads) {
            self.push(
                "server.worker_threads",
                format!("{worker_threads} is out of range (0 = one per CPU, up to 256)"),
            );
        }
        let max_body = s.max_body_bytes.unwrap_or(65_536);
        if !(1024..=16 * 1024 * 1024).contains(&max_body) {
            self.push(
                "server.max_body_bytes",
                format!("{max_body} is out of range (1024 to 16777216)"),
            );
        }

        let header_read_timeout = self.fixed_period(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref().unwrap_or("pt30s"),
            3600,
            "pt1s to pt1h",
        );
        let idle_timeout = self.fixed_period(
            "server.idle_timeout",
            s.idle_timeout.as_deref().unwrap_or("pt5m"),
            86_400,
            "pt1s to p1d",
        );
        let max_connections = s.max_connections.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_connections) {
            self.push(
                "server.max_connections",
                format!("{max_connections} is out of range (1 to 1000000)"),
            );
        }
        let per_client = s.max_connections_per_client.unwrap_or(1_000);
        if !(1..=1_000_000).contains(&per_client) {
            self.push(
                "server.max_connections_per_client",
                format!("{per_client} is out of range (1 to 1000000)"),
            );
        } else if per_client > max_connections && s.max_connections_per_client.is_some() {
            self.push(
                "server.max_connections_per_client",
                format!("{per_client} is more than server.max_connections ({max_connections})"),
            );
        }

        // ---- groups and users
        let mut directory = Directory::default();
        for (name, g) in raw.groups {
            if !valid_name(&name) {
                self.push(
                    &format!("groups.{name}"),
                    "group names use letters, digits, '-', '_' and '.' (at most 64)".into(),
                );
            }
            let mut scopes = BTreeSet::new();
            for sc in g.scopes {
                if !valid_scope(&sc) {
                    self.push(
                        &format!("groups.{name}.scopes"),
                        format!(
                            "{sc:?} is not a valid scope (letters, digits and -_.:/*, at most 64)"
                        ),
                    );
                }
                scopes.insert(sc);
            }
            directory.groups.insert(
                name,
                Group {
                    scopes,
                    create_keys: g.create_keys,
                    manage_all_keys: g.manage_all_keys,
                },
            );
        }
        let mut unix_seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, u) in raw.users {
            let key = format!("users.{name}");
            if !valid_name(&name) {
                self.push(
                    &key,
                    "user names use letters, digits, '-', '_' and '.' (at most 64)".into(),
                );
            }
            if u.groups.is_empty() {
                self.push(
                    &format!("{key}.groups"),
                    "a user needs at least one group".into(),
                );
            }
            for g in &u.groups {
                if !directory.groups.contains_key(g) {
                    self.push(
                        &format!("{key}.groups"),
                        format!("unknown group {g:?} (declare it as [groups.{g}])"),
                    );
                }
            }
            if let Some(email) = &u.email {
                if !plausible_email(email) {
                    self.push(
                        &format!("{key}.email"),
                        format!("{email:?} is not an email address"),
                    );
                }
            }
            if let Some(unix) = &u.unix_user {
                if let Some(other) = unix_seen.insert(unix.clone(), name.clone()) {
                    self.push(
                        &format!("{key}.unix_user"),
                        format!("Unix account {unix:?} is already mapped to user {other:?}"),
                    );
                }
            }
            directory.users.insert(
                name.clone(),
                User {
                    name,
                    email: u.email,
                    groups: u.groups,
                    unix_user: u.unix_user,
                },
            );
        }

        let alert_keys = alerts::RawAlertKeys {
            default_lead_time: raw.api_key.DefaultNotificationLeadTime,
            default_source: raw.api_key.DefaultAlertSource,
            inactivity_warning_lead_time: raw.api_key.InactivityWarningLeadTime,
            retention: raw.api_key.RetentionPeriod,
        };
        let alerts = self.validate_alerts(
            alert_keys,
            raw.smtp,
            raw.alert_sources,
            raw.alerts,
            raw.jobs,
        );

        Some(Config {
            source: self.file.clone(),
            server: ServerConfig {
                listen: listen?,
                admin_socket,
                state_dir,
                secret_file,
                worker_threads: usize::try_from(worker_threads).unwrap_or(0),
                max_body_bytes: usize::try_from(max_body).unwrap_or(65_536),
                header_read_timeout: header_read_timeout?,
                idle_timeout: idle_timeout?,
                max_connections: usize::try_from(max_connections).unwrap_or(10_000),
                // Only the default may exceed a small total: it follows the total.
                max_connections_per_client: usize::try_from(per_client.min(max_connections))
                    .unwrap_or(1_000),
            },
            policy,
            directory,
            auth,
            rate_limit,
            alerts,
        })
    }
}

fn resolve(text: &str, env_dir: Option<&Path>, replace: bool) -> PathBuf {
    let p = PathBuf::from(text);
    match env_dir {
        Some(dir) if p.is_relative() && replace => dir.to_path_buf(),
        _ => p,
    }
}

/// Names of users and groups.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Scope strings such as `catalog:read`.
pub fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/*".contains(&b))
}

fn plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && s.len() <= 254
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.toml"), text, &Environment::default())
    }

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
        let c = parse_str("").unwrap();
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.server.listen.port(), 8700);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = parse_str(
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
            parse_str("[ApiKey]\nMaxExpirationPeriode = \"p6m\"\n[server]\nlisten_addr = \"x\"\n")
                .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["server.listen_addr", "ApiKey.MaxExpirationPeriode"]);
    }

    #[test]
    fn header_read_timeout_is_a_short_fixed_period() {
        let c = parse_str("").unwrap();
        assert_eq!(
            c.server.header_read_timeout,
            std::time::Duration::from_secs(30)
        );
        let c = parse_str("[server]\nheader_read_timeout = \"pt2m30s\"\n").unwrap();
        assert_eq!(
            c.server.header_read_timeout,
            std::time::Duration::from_secs(150)
        );
        for bad in ["p1m", "pt2h", "pt0.5s", "", "30"] {
            let err =
                parse_str(&format!("[server]\nheader_read_timeout = \"{bad}\"\n")).unwrap_err();
            let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["server.header_read_timeout"], "{bad}: {err}");
        }
    }

    #[test]
    fn connection_limits_and_idle_timeout_are_checked() {
        let c = parse_str("").unwrap();
        assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(300));
        assert_eq!(
            (
                c.server.max_connections,
                c.server.max_connections_per_client
            ),
            (10_000, 1_000)
        );
        assert_eq!(c.rate_limit.ipv6_prefix, 64);
        let c = parse_str(
            "[server]\nidle_timeout = \"pt1s\"\nmax_connections = 10\n\
             [rate_limit]\nipv6_prefix = 128\n",
        )
        .unwrap();
        assert_eq!(c.server.idle_timeout, std::time::Duration::from_secs(1));
        // The default per-client limit follows a smaller total.
        assert_eq!(
            (
                c.server.max_connections,
                c.server.max_connections_per_client
            ),
            (10, 10)
        );
        assert_eq!(c.rate_limit.ipv6_prefix, 128);
        for (bad, key) in [
            ("[server]\nidle_timeout = \"p1m\"", "server.idle_timeout"),
            ("[server]\nidle_timeout = \"p2d\"", "server.idle_timeout"),
            ("[server]\nidle_timeout = \"pt0s\"", "server.idle_timeout"),
            ("[server]\nmax_connections = 0", "server.max_connections"),
            (
                "[server]\nmax_connections_per_client = 0",
                "server.max_connections_per_client",
            ),
            (
                "[server]\nmax_connections = 10\nmax_connections_per_client = 11",
                "server.max_connections_per_client",
            ),
            ("[rate_limit]\nipv6_prefix = 16", "rate_limit.ipv6_prefix"),
            ("[rate_limit]\nipv6_prefix = 129", "rate_limit.ipv6_prefix"),
        ] {
            let err = parse_str(bad).unwrap_err();
            let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, [key], "{bad}: {err}");
        }
    }

    #[test]
    fn empty_period_turns_limit_off() {
        let c =
            parse_str("[ApiKey]\nMaxExpirationPeriod = \"\"\nNotAccessedExpirationPeriod = \"\"\n")
                .unwrap();
        assert!(c.policy.max_expiration.is_none());
        assert!(c.policy.not_accessed_expiration.is_none());
    }

    #[test]
    fn systemd_directories_replace_relative_paths() {
        let env = Environment {
            state_directory: Some("/var/lib/apikeyd".into()),
            runtime_directory: Some("/run/apikeyd".into()),
            credentials_directory: None,
        };
        let c = parse(
            Path::new("x.toml"),
            "[server]\nstate_dir = \"var\"\nadmin_socket = \"var/apikeyd.sock\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.server.state_dir, PathBuf::from("/var/lib/apikeyd"));
        assert_eq!(
            c.server.admin_socket,
            PathBuf::from("/run/apikeyd/apikeyd.sock")
        );
        assert_eq!(
            c.server.secret_file,
            PathBuf::from("/var/lib/apikeyd/server.secret")
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_str("[server]\nlisten = \n").unwrap_err();
        assert!(err.problems[0].message.contains("line 2"), "{}", err);
    }
}
