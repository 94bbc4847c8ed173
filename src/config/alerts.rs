//! The alerting part of the configuration: `[smtp]`, `[alert_sources.NAME]`,
//! `[alerts]` (delivery), `[jobs]` (maintenance cron schedules) and the alert keys of
//! `[ApiKey]`. Validated with the rest of the file: a bad cron string, an unknown
//! template placeholder or a default source that does not exist is a config error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{plausible_email, valid_name, Period, Validator};

/// Built-in source: email to the key's owner (replaceable in the file).
pub const OWNER_EMAIL: &str = "owner-email";
/// Built-in source: an operator message (replaceable in the file).
pub const OPERATOR: &str = "operator";

/// Placeholders a subject or body template may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "key.id",
    "key.name",
    "key.owner",
    "key.description",
    "key.expires_at",
    "key.effective_expires_at",
    "key.effective_limit",
    "key.details",
    "alert.reason",
    "alert.due_at",
    "job.id",
];

/// Default email subject.
pub const DEFAULT_SUBJECT: &str = "API key \"${key.name}\" ${alert.reason}";
/// Default email body.
pub const DEFAULT_BODY: &str = "Hello ${key.owner},

your API key \"${key.name}\" (id ${key.id}) ${alert.reason}.

  expires:            ${key.expires_at}
  effective expiry:   ${key.effective_expires_at} (${key.effective_limit})
  details:            ${key.details}
  description:        ${key.description}

To keep your service working, rotate the key before then:
  apikeyctl key rotate ${key.id}
(or create a new key and retire this one).

-- apikeyd (alert job ${job.id}, due ${alert.due_at})
";

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (a local relay).
    None,
    /// STARTTLS after connecting (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[smtp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Server host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// User name for AUTH, if any.
    pub username: Option<String>,
    /// File holding the password (a systemd credential `smtp-password` wins).
    pub password_file: Option<PathBuf>,
    /// From address.
    pub from: String,
    /// Timeout of one SMTP command.
    pub timeout: Duration,
    /// Pooled connections kept open.
    pub pool_size: u32,
}

/// What a source does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Email through `[smtp]`.
    Email {
        /// Send to the key owner's address.
        to_owner: bool,
        /// Extra recipients.
        to: Vec<String>,
        /// Copy recipients.
        cc: Vec<String>,
        /// Subject template.
        subject: String,
        /// Body template.
        body: String,
    },
    /// A message stored for the operators (and logged at warn level).
    OperatorMessage,
    /// An executable under the plugins directory, given the alert as JSON on stdin.
    Plugin {
        /// File name under `[alerts] plugins_dir`.
        plugin: String,
        /// Arguments.
        args: Vec<String>,
        /// Killed after this long.
        timeout: Duration,
    },
}

/// `[alert_sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSource {
    /// Its name.
    pub name: String,
    /// What it does.
    pub kind: SourceKind,
}

impl AlertSource {
    /// Whether this source reaches a key's owner only through their email address
    /// (an email source without a fixed `to`): it cannot deliver for an owner who
    /// has none.
    pub fn needs_owner_address(&self) -> bool {
        matches!(&self.kind, SourceKind::Email { to_owner: true, to, .. } if to.is_empty())
    }
}

/// `[jobs]`: six-field cron schedules (seconds first) of the maintenance jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSchedules {
    /// Write last-used times to the database.
    pub last_used_flush: String,
    /// Record keys that expired or went inactive.
    pub expiry_sweep: String,
    /// Delete keys removed or expired longer than RetentionPeriod ago.
    pub purge: String,
    /// Warn owners of keys about to expire through inactivity.
    pub inactivity_warning: String,
}

/// Everything about alert jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// `[ApiKey] DefaultNotificationLeadTime`: every new expiring key gets a
    /// notification this long before its expiry. `None` = no default notification.
    pub default_lead_time: Option<Period>,
    /// `[ApiKey] DefaultAlertSource`.
    pub default_source: Option<String>,
    /// `[ApiKey] InactivityWarningLeadTime`: warn this long before inactivity expiry.
    pub inactivity_warning_lead_time: Option<Period>,
    /// `[ApiKey] RetentionPeriod`: purge removed/expired keys after this long.
    pub retention: Option<Period>,
    /// Attempts before a job is Failed.
    pub max_attempts: u32,
    /// First retry delay; doubled each attempt.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Where plugins live.
    pub plugins_dir: PathBuf,
    /// `[smtp]`.
    pub smtp: SmtpConfig,
    /// Sources by name (the built-ins included).
    pub sources: BTreeMap<String, AlertSource>,
    /// `[jobs]`.
    pub jobs: MaintenanceSchedules,
}

impl Default for AlertConfig {
    fn default() -> Self {
        let mut v = Validator {
            file: PathBuf::new(),
            problems: Vec::new(),
        };
        v.validate_alerts(
            RawAlertKeys::default(),
            RawSmtp::default(),
            BTreeMap::new(),
            RawAlerts::default(),
            RawJobs::default(),
        )
    }
}

impl AlertConfig {
    /// A source by name.
    pub fn source(&self, name: &str) -> Option<&AlertSource> {
        self.sources.get(name)
    }
}

// ---------- raw file types ----------

/// The alert keys of `[ApiKey]`.
#[derive(Debug, Default)]
pub(super) struct RawAlertKeys {
    pub default_lead_time: Option<String>,
    pub default_source: Option<String>,
    pub inactivity_warning_lead_time: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    host: Option<String>,
    port: Option<i64>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    from: Option<String>,
    timeout: Option<String>,
    pool_size: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlertSource {
    kind: Option<String>,
    owner: Option<bool>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
    plugin: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    max_attempts: Option<i64>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    concurrency: Option<i64>,
    plugins_dir: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    last_used_flush: Option<String>,
    expiry_sweep: Option<String>,
    purge: Option<String>,
    inactivity_warning: Option<String>,
}

pub(super) const SMTP_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "username",
    "password_file",
    "from",
    "timeout",
    "pool_size",
];
pub(super) const SOURCE_KEYS: &[&str] = &[
    "kind", "owner", "to", "cc", "subject", "body", "plugin", "args", "timeout",
];
pub(super) const ALERTS_KEYS: &[&str] = &[
    "max_attempts",
    "retry_initial",
    "retry_max",
    "concurrency",
    "plugins_dir",
];
pub(super) const JOBS_KEYS: &[&str] = &[
    "last_used_flush",
    "expiry_sweep",
    "purge",
    "inactivity_warning",
];

/// A period of fixed length (no months or years would be exact, so they are measured
/// from a fixed instant) as a std `Duration`.
pub fn fixed_duration(p: &Period) -> Option<Duration> {
    let base = chrono::DateTime::UNIX_EPOCH;
    p.add_to(base)
        .and_then(|t| (t - base).to_std().ok())
        .filter(|d| !d.is_zero())
}

/// Check a cron schedule with the parser tokio-cron-scheduler itself uses.
pub fn check_cron(schedule: &str) -> Result<(), String> {
    let fields = schedule.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "{schedule:?} is not a cron schedule with seconds (6 fields: sec min hour day month weekday, e.g. \"0 */5 * * * *\")"
        ));
    }
    tokio_cron_scheduler::Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| format!("{schedule:?} is not a valid cron schedule (6 fields: sec min hour day month weekday)"))
}

/// Placeholders in `template` that are not in [`TEMPLATE_FIELDS`], or an error for an
/// unterminated `${`.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a \"${\" without a closing \"}\"".into());
        };
        let name = &after[..end];
        if !TEMPLATE_FIELDS.contains(&name) {
            return Err(format!(
                "unknown placeholder ${{{name}}} (known: {})",
                TEMPLATE_FIELDS
                    .iter()
                    .map(|f| format!("${{{f}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

impl Validator {
    pub(super) fn alert_unknown_keys(&mut self, table: &toml::Table) {
        let sub = |name: &str| table.get(name).and_then(|v| v.as_table());
        for (section, allowed) in [
            ("smtp", SMTP_KEYS),
            ("alerts", ALERTS_KEYS),
            ("jobs", JOBS_KEYS),
        ] {
            if let Some(t) = sub(section) {
                self.check_keys(&format!("{section}."), t, allowed);
            }
        }
        if let Some(t) = sub("alert_sources") {
            for (name, entry) in t {
                if let Some(e) = entry.as_table() {
                    self.check_keys(&format!("alert_sources.{name}."), e, SOURCE_KEYS);
                }
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        let fallback = Period::parse(default)
            .ok()
            .and_then(|p| fixed_duration(&p))
            .unwrap_or(Duration::from_secs(30));
        match Period::parse(text) {
            Ok(p) => match fixed_duration(&p) {
                Some(d) => d,
                None => {
                    self.push(key, format!("{text:?} must be longer than zero"));
                    fallback
                }
            },
            Err(e) => {
                self.push(key, e.to_string());
                fallback
            }
        }
    }

    fn emails(&mut self, key: &str, list: &[String]) {
        for a in list {
            if !plausible_email(a) {
                self.push(key, format!("{a:?} is not an email address"));
            }
        }
    }

    pub(super) fn validate_alerts(
        &mut self,
        keys: RawAlertKeys,
        smtp: RawSmtp,
        sources: BTreeMap<String, RawAlertSource>,
        alerts: RawAlerts,
        jobs: RawJobs,
    ) -> AlertConfig {
        let default_lead_time = self.period(
            "ApiKey.DefaultNotificationLeadTime",
            keys.default_lead_time.as_deref(),
            "p14d",
        );
        let inactivity_warning_lead_time = self.period(
            "ApiKey.InactivityWarningLeadTime",
            keys.inactivity_warning_lead_time.as_deref(),
            "p7d",
        );
        let retention = self.period("ApiKey.RetentionPeriod", keys.retention.as_deref(), "p1y");

        // ---- [smtp]
        let tls = match smtp.tls.as_deref().unwrap_or("none") {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            other => {
                self.push(
                    "smtp.tls",
                    format!("{other:?} is not one of \"none\", \"starttls\", \"tls\""),
                );
                SmtpTls::None
            }
        };
        let default_port = match tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        };
        let port = smtp.port.unwrap_or(default_port);
        if !(1..=65535).contains(&port) {
            self.push(
                "smtp.port",
                format!("{port} is not a TCP port (1 to 65535)"),
            );
        }
        let host = smtp.host.unwrap_or_else(|| "localhost".into());
        if host.trim().is_empty() || host.contains(char::is_whitespace) {
            self.push("smtp.host", format!("{host:?} is not a host name"));
        }
        let from = smtp.from.unwrap_or_else(|| "apikeyd@localhost".into());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            self.push(
                "smtp.from",
                format!("{from:?} is not an address such as \"apikeyd <apikeyd@example.com>\""),
            );
        }
        let username = smtp.username.filter(|u| !u.is_empty());
        let password_file = smtp
            .password_file
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if password_file.is_some() && username.is_none() {
            self.push(
                "smtp.password_file",
                "a password needs a username (smtp.username)".into(),
            );
        }
        let pool_size = smtp.pool_size.unwrap_or(4);
        if !(1..=64).contains(&pool_size) {
            self.push(
                "smtp.pool_size",
                format!("{pool_size} is out of range (1 to 64)"),
            );
        }
        let smtp = SmtpConfig {
            host,
            port: u16::try_from(port).unwrap_or(25),
            tls,
            username,
            password_file,
            from,
            timeout: self.duration("smtp.timeout", smtp.timeout.as_deref(), "pt30s"),
            pool_size: u32::try_from(pool_size).unwrap_or(4),
        };

        // ---- [alert_sources.*], with the built-ins unless replaced
        let mut out = BTreeMap::new();
        let builtin_email = AlertSource {
            name: OWNER_EMAIL.into(),
            kind: SourceKind::Email {
                to_owner: true,
                to: vec![],
                cc: vec![],
                subject: DEFAULT_SUBJECT.into(),
                body: DEFAULT_BODY.into(),
            },
        };
        out.insert(OWNER_EMAIL.to_owned(), builtin_email);
        out.insert(
            OPERATOR.to_owned(),
            AlertSource {
                name: OPERATOR.into(),
                kind: SourceKind::OperatorMessage,
            },
        );
        for (name, s) in sources {
            let key = format!("alert_sources.{name}");
            if !valid_name(&name) {
                self.push(
                    &key,
                    "source names use letters, digits, '-', '_' and '.' (at most 64)".into(),
                );
            }
            let given = [
                ("owner", s.owner.is_some()),
                ("subject", s.subject.is_some()),
                ("body", s.body.is_some()),
                ("plugin", s.plugin.is_some()),
                ("timeout", s.timeout.is_some()),
            ];
            let kind = match s.kind.as_deref() {
                Some("email") => {
                    self.emails(&format!("{key}.to"), &s.to);
                    self.emails(&format!("{key}.cc"), &s.cc);
                    let to_owner = s.owner.unwrap_or(true);
                    if !to_owner && s.to.is_empty() {
                        self.push(
                            &format!("{key}.to"),
                            "with owner = false, name at least one recipient".into(),
                        );
                    }
                    let subject = s.subject.unwrap_or_else(|| DEFAULT_SUBJECT.into());
                    let body = s.body.unwrap_or_else(|| DEFAULT_BODY.into());
                    for (field, t) in [("subject", &subject), ("body", &body)] {
                        if let Err(e) = check_template(t) {
                            self.push(&format!("{key}.{field}"), e);
                        }
                    }
                    if subject.contains(['\r', '\n']) {
                        self.push(&format!("{key}.subject"), "must be one line".into());
                    }
                    SourceKind::Email {
                        to_owner,
                        to: s.to,
                        cc: s.cc,
                        subject,
                        body,
                    }
                }
                Some("operator_message") => SourceKind::OperatorMessage,
                Some("plugin") => {
                    let plugin = s.plugin.unwrap_or_default();
                    if plugin.is_empty()
                        || plugin.contains('/')
                        || plugin.starts_with('.')
                        || !valid_name(&plugin)
                    {
                        self.push(
                            &format!("{key}.plugin"),
                            format!("{plugin:?} must name an executable file in the plugins directory (no '/')"),
                        );
                    }
                    SourceKind::Plugin {
                        plugin,
                        args: s.args,
                        timeout: self.duration(
                            &format!("{key}.timeout"),
                            s.timeout.as_deref(),
                            "pt30s",
                        ),
                    }
                }
                other => {
                    self.push(
                        &format!("{key}.kind"),
                        format!(
                            "{} is not one of \"email\", \"operator_message\", \"plugin\"",
                            other.map_or_else(|| "missing".to_owned(), |o| format!("{o:?}"))
                        ),
                    );
                    continue;
                }
            };
            let is_email = matches!(kind, SourceKind::Email { .. });
            let is_plugin = matches!(kind, SourceKind::Plugin { .. });
            for (field, present) in given {
                let applies = match field {
                    "plugin" | "timeout" => is_plugin,
                    _ => is_email,
                };
                if present && !applies {
                    self.push(
                        &format!("{key}.{field}"),
                        "does not apply to this kind of source".into(),
                    );
                }
            }
            out.insert(name.clone(), AlertSource { name, kind });
        }
        let default_source = match keys.default_source.as_deref().map(str::trim) {
            None => Some(OWNER_EMAIL.to_owned()),
            Some("") => None,
            Some(name) => {
                if !out.contains_key(name) {
                    self.push(
                        "ApiKey.DefaultAlertSource",
                        format!(
                            "unknown alert source {name:?} (known: {})",
                            out.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                Some(name.to_owned())
            }
        };

        // ---- [alerts]
        let max_attempts = alerts.max_attempts.unwrap_or(5);
        if !(1..=100).contains(&max_attempts) {
            self.push(
                "alerts.max_attempts",
                format!("{max_attempts} is out of range (1 to 100)"),
            );
        }
        let concurrency = alerts.concurrency.unwrap_or(32);
        if !(1..=1024).contains(&concurrency) {
            self.push(
                "alerts.concurrency",
                format!("{concurrency} is out of range (1 to 1024)"),
            );
        }
        let retry_initial = self.duration(
            "alerts.retry_initial",
            alerts.retry_initial.as_deref(),
            "pt1m",
        );
        let retry_max = self.duration("alerts.retry_max", alerts.retry_max.as_deref(), "pt1h");
        if retry_max < retry_initial {
            self.push(
                "alerts.retry_max",
                "must not be shorter than alerts.retry_initial".into(),
            );
        }
        let plugins_dir = PathBuf::from(alerts.plugins_dir.as_deref().unwrap_or("plugins"));

        // ---- [jobs]
        let mut cron = |key: &str, value: Option<String>, default: &str| {
            let s = value.unwrap_or_else(|| default.to_owned());
            if let Err(e) = check_cron(&s) {
                self.push(&format!("jobs.{key}"), e);
            }
            s
        };
        let jobs = MaintenanceSchedules {
            last_used_flush: cron("last_used_flush", jobs.last_used_flush, "*/10 * * * * *"),
            expiry_sweep: cron("expiry_sweep", jobs.expiry_sweep, "0 */10 * * * *"),
            purge: cron("purge", jobs.purge, "0 17 3 * * *"),
            inactivity_warning: cron("inactivity_warning", jobs.inactivity_warning, "0 7 * * * *"),
        };

        AlertConfig {
            default_lead_time,
            default_source,
            inactivity_warning_lead_time,
            retention,
            max_attempts: u32::try_from(max_attempts).unwrap_or(5),
            retry_initial,
            retry_max,
            concurrency: usize::try_from(concurrency).unwrap_or(32),
            plugins_dir,
            smtp,
            sources: out,
            jobs,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::{parse, Environment};
    use std::path::Path;

    fn parse_str(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        parse(Path::new("a.toml"), text, &Environment::default())
    }

    #[test]
    fn defaults_have_owner_email_and_operator() {
        let c = parse_str("").unwrap();
        let a = &c.alerts;
        assert_eq!(a.default_lead_time.as_ref().unwrap().as_str(), "p14d");
        assert_eq!(a.default_source.as_deref(), Some(OWNER_EMAIL));
        assert!(a.source(OWNER_EMAIL).is_some());
        assert!(a.source(OPERATOR).is_some());
        assert_eq!(a.max_attempts, 5);
        assert_eq!(a.smtp.port, 25);
        assert_eq!(a.retry_initial, Duration::from_secs(60));
    }

    #[test]
    fn bad_cron_and_sources_are_config_errors() {
        let err = parse_str(
            r#"
            [ApiKey]
            DefaultAlertSource = "nope"
            DefaultNotificationLeadTime = "14d"
            [jobs]
            purge = "every tuesday-ish"
            expiry_sweep = "61 * * * * *"
            [smtp]
            tls = "ssl"
            from = "not an address"
            [alert_sources.web]
            kind = "plugin"
            plugin = "../bin/sh"
            [alert_sources.mail]
            kind = "email"
            subject = "key ${key.secret}"
            to = ["x"]
            [alert_sources.odd]
            kind = "pager"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "ApiKey.DefaultAlertSource",
            "ApiKey.DefaultNotificationLeadTime",
            "jobs.purge",
            "jobs.expiry_sweep",
            "smtp.tls",
            "smtp.from",
            "alert_sources.web.plugin",
            "alert_sources.mail.subject",
            "alert_sources.mail.to",
            "alert_sources.odd.kind",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(err.to_string().contains("key.secret"), "{err}");
    }

    #[test]
    fn unknown_keys_in_alert_sections() {
        let err = parse_str(
            "[smtp]\npassword = \"x\"\n[alert_sources.a]\nkind = \"email\"\nsubj = \"\"\n",
        )
        .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"smtp.password"), "{keys:?}");
        assert!(keys.contains(&"alert_sources.a.subj"), "{keys:?}");
    }

    #[test]
    fn empty_default_turns_default_notification_off() {
        let c =
            parse_str("[ApiKey]\nDefaultNotificationLeadTime = \"\"\nDefaultAlertSource = \"\"\n")
                .unwrap();
        assert!(c.alerts.default_lead_time.is_none());
        assert!(c.alerts.default_source.is_none());
    }

    #[test]
    fn good_cron_accepted() {
        check_cron("*/10 * * * * *").unwrap();
        check_cron("0 17 3 * * *").unwrap();
        assert!(check_cron("* * * * *").is_err());
        assert!(check_cron("0 0 25 * * *").is_err());
    }
}
