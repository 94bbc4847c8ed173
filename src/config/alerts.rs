//! The alerting part of the configuration: `[smtp]`, `[alert_sources.NAME]`,
//! `[alerts]` (delivery), `[jobs]` (maintenance cron schedules) and the alert keys of
//! `[ApiKey]`. Validated with the rest of the file: a bad cron string, an unknown
//! template placeholder or a default source that does not exist is a config error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::address::AddressForm;
use super::ca_file::read_ca_file;
use super::period::Period;
use super::validator::Validator;

pub mod sources;

pub use super::period::fixed_duration;

pub use sources::{
    check_template, AlertSource, SourceKind, DEFAULT_BODY, DEFAULT_SUBJECT, DEFAULT_TEXT,
    DEFAULT_TITLE, OPERATOR, OWNER_EMAIL, TEMPLATE_FIELDS,
};
pub(crate) use sources::{RawAlertSource, SOURCE_KEYS};

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

/// Name of the systemd credential holding the SMTP password (it wins over
/// `[smtp] password_file`).
pub const SMTP_PASSWORD_CREDENTIAL: &str = "smtp-password";

/// `[smtp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Server host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// PEM file of CA certificates trusted besides Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// User name for AUTH, if any.
    pub username: Option<String>,
    /// File holding the password (a systemd credential `smtp-password` wins).
    pub password_file: Option<PathBuf>,
    /// From address.
    pub from: String,
    /// How long connecting, the TLS handshake and each SMTP command may take.
    pub timeout: Duration,
    /// Pooled connections kept open.
    pub pool_size: u32,
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

/// `[alerts]`: how deliveries are run and retried.
struct Delivery {
    max_attempts: u32,
    retry_initial: Duration,
    retry_max: Duration,
    concurrency: usize,
    plugins_dir: PathBuf,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Validator::new(Path::new("")).validate_alerts(
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
pub(crate) struct RawAlertKeys {
    pub default_lead_time: Option<String>,
    pub default_source: Option<String>,
    pub inactivity_warning_lead_time: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtp {
    host: Option<String>,
    port: Option<i64>,
    tls: Option<String>,
    ca_file: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    from: Option<String>,
    timeout: Option<String>,
    pool_size: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    max_attempts: Option<i64>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    concurrency: Option<i64>,
    plugins_dir: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJobs {
    last_used_flush: Option<String>,
    expiry_sweep: Option<String>,
    purge: Option<String>,
    inactivity_warning: Option<String>,
}

pub(crate) const SMTP_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "ca_file",
    "username",
    "password_file",
    "from",
    "timeout",
    "pool_size",
];
pub(crate) const ALERTS_KEYS: &[&str] = &[
    "max_attempts",
    "retry_initial",
    "retry_max",
    "concurrency",
    "plugins_dir",
];
pub(crate) const JOBS_KEYS: &[&str] = &[
    "last_used_flush",
    "expiry_sweep",
    "purge",
    "inactivity_warning",
];

/// Check a cron schedule with the parser tokio-cron-scheduler itself uses.
pub fn check_cron(schedule: &str) -> Result<(), String> {
    let fields = schedule.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "{schedule:?} is not a cron schedule with seconds (6 fields: sec min hour day month weekday, e.g. \"0 */5 * * * *\")"
        ));
    }
    // A list with an empty element ("25 , * * * *", found by fuzzing the config)
    // passed the parser as a field no time matches, and looking for its next run
    // never ended: the load, a reload or check-config hung.
    if schedule
        .split_whitespace()
        .any(|field| field.split(',').any(str::is_empty))
    {
        return Err(format!(
            "{schedule:?} has an empty entry in a list (a comma with nothing before or after it)"
        ));
    }
    tokio_cron_scheduler::Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| format!("{schedule:?} is not a valid cron schedule (6 fields: sec min hour day month weekday)"))
}

impl Validator {
    /// The alert keys of `[ApiKey]`, `[smtp]`, `[alert_sources.*]`, `[alerts]` and
    /// `[jobs]`.
    pub(crate) fn validate_alerts(
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
        let smtp = self.smtp(smtp);
        let sources = self.sources(sources);
        let default_source = self.default_source(keys.default_source.as_deref(), &sources);
        let delivery = self.delivery(alerts);
        let jobs = self.schedules(jobs);
        AlertConfig {
            default_lead_time,
            default_source,
            inactivity_warning_lead_time,
            retention,
            max_attempts: delivery.max_attempts,
            retry_initial: delivery.retry_initial,
            retry_max: delivery.retry_max,
            concurrency: delivery.concurrency,
            plugins_dir: delivery.plugins_dir,
            smtp,
            sources,
            jobs,
        }
    }

    fn smtp(&mut self, smtp: RawSmtp) -> SmtpConfig {
        let tls = self.smtp_tls(smtp.tls.as_deref().unwrap_or("none"));
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
        self.address("smtp.from", &from, AddressForm::Mailbox);
        let ca_file = smtp.ca_file.filter(|p| !p.is_empty()).map(PathBuf::from);
        if ca_file.is_some() && tls == SmtpTls::None {
            self.push(
                "smtp.ca_file",
                "a CA is only used with TLS (smtp.tls = \"starttls\" or \"tls\")".into(),
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
        let pool_size = self.int("smtp.pool_size", smtp.pool_size, 4, 1..=64, None);
        SmtpConfig {
            host,
            port: u16::try_from(port).unwrap_or(25),
            tls,
            ca_file,
            username,
            password_file,
            from,
            timeout: self.duration("smtp.timeout", smtp.timeout.as_deref(), "pt30s"),
            pool_size: u32::try_from(pool_size).unwrap_or(4),
        }
    }

    /// The files `[smtp]` names, read as the daemon will read them at start: the CA
    /// certificates, and the password file unless systemd's credential replaces it
    /// (opened only: its content is never read here).
    pub(crate) fn smtp_files(&mut self, smtp: &SmtpConfig, credentials_dir: Option<&Path>) {
        if let Some(path) = &smtp.ca_file {
            if let Err(why) = read_ca_file(path) {
                self.push("smtp.ca_file", format!("{}: {why}", path.display()));
            }
        }
        let credential = credentials_dir.is_some_and(|d| d.join(SMTP_PASSWORD_CREDENTIAL).exists());
        if let (Some(path), false) = (&smtp.password_file, credential) {
            if let Err(e) = std::fs::File::open(path) {
                self.push(
                    "smtp.password_file",
                    format!("{}: cannot read it: {e}", path.display()),
                );
            }
        }
    }

    fn smtp_tls(&mut self, text: &str) -> SmtpTls {
        match text {
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
        }
    }

    /// `[alerts]`.
    fn delivery(&mut self, alerts: RawAlerts) -> Delivery {
        let max_attempts = self.int("alerts.max_attempts", alerts.max_attempts, 5, 1..=100, None);
        let concurrency = self.int("alerts.concurrency", alerts.concurrency, 32, 1..=1024, None);
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
        Delivery {
            max_attempts: u32::try_from(max_attempts).unwrap_or(5),
            retry_initial,
            retry_max,
            concurrency: usize::try_from(concurrency).unwrap_or(32),
            plugins_dir: PathBuf::from(alerts.plugins_dir.as_deref().unwrap_or("plugins")),
        }
    }

    /// `[jobs]`.
    fn schedules(&mut self, jobs: RawJobs) -> MaintenanceSchedules {
        let mut cron = |key: &str, value: Option<String>, default: &str| {
            let s = value.unwrap_or_else(|| default.to_owned());
            if let Err(e) = check_cron(&s) {
                self.push(&format!("jobs.{key}"), e);
            }
            s
        };
        MaintenanceSchedules {
            last_used_flush: cron("last_used_flush", jobs.last_used_flush, "*/10 * * * * *"),
            expiry_sweep: cron("expiry_sweep", jobs.expiry_sweep, "0 */10 * * * *"),
            purge: cron("purge", jobs.purge, "0 17 3 * * *"),
            inactivity_warning: cron("inactivity_warning", jobs.inactivity_warning, "0 7 * * * *"),
        }
    }
}

#[cfg(test)]
mod tests;
