//! What the key service takes and gives: who asks ([`Actor`]), the rules in force
//! ([`Settings`]), requests ([`CreateKey`], [`EditKey`], [`NotifyRequest`]) and
//! answers ([`Verification`], [`KeyView`], [`Issued`]). `apikeyctl` speaks these too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::live::refusal;
use super::secret::Secret;
use super::status::{counted_as, Lapse};
use super::table;
use crate::config::{Config, Directory, Policy};
use crate::model::headers::HeaderTemplate;
use crate::model::{
    rfc3339, AdminRestrictions, Code, KeyHash, KeyKind, KeyRecord, KeyState, Status, UsageCounts,
};

/// Who the caller is and what they may do (`apikeyctl whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// Configured user name (or `root` for an unmapped root).
    pub user: String,
    /// Manages everyone's keys.
    pub admin: bool,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The scopes the user may give keys (their groups' together).
    pub scopes: Vec<String>,
    /// One of the groups allows creating keys.
    pub create_keys: bool,
    /// One of the groups manages everyone's keys.
    pub manage_all_keys: bool,
    /// The policy in force, a sentence each ("Max key lifespan: 6 months (p6m)").
    pub policy: Vec<String>,
    /// The largest bulk-import file they may send, in bytes (0: not said, an
    /// older daemon).
    #[serde(default)]
    pub max_import_bytes: usize,
    /// `MaxExpirationPeriod` (none: keys may never expire).
    #[serde(default)]
    pub max_expiration: Option<String>,
    /// The latest expiry a key created now may have (now + `MaxExpirationPeriod`).
    #[serde(default)]
    pub max_expires_at: Option<String>,
    /// The expiry a key created now gets when the request names none.
    #[serde(default)]
    pub default_expires_at: Option<String>,
    /// `NotAccessedExpirationPeriod` (none: keys do not expire for lack of use).
    #[serde(default)]
    pub inactivity_expiration: Option<String>,
    /// The alert sources a notification may name.
    #[serde(default)]
    pub alert_sources: Vec<String>,
    /// The source a notification gets when the request names none.
    #[serde(default)]
    pub default_alert_source: Option<String>,
    /// The lead time of the notification every new expiring key gets.
    #[serde(default)]
    pub default_notification_lead_time: Option<String>,
}

/// The policy in force, in sentences: the key lifespan, inactivity, the default
/// expiry, the key limit, and the notification and warning lead times.
pub fn policy_lines(policy: &Policy, alerts: &crate::config::AlertConfig) -> Vec<String> {
    let said = |p: &crate::config::Period| format!("{} ({p})", p.describe());
    let mut lines = vec![
        match &policy.max_expiration {
            Some(p) => format!("Max key lifespan: {}", said(p)),
            None => "Max key lifespan: none (keys may never expire)".into(),
        },
        match &policy.not_accessed_expiration {
            Some(p) => format!("Keys not used for {} expire ({p})", p.describe()),
            None => "Keys do not expire for lack of use".into(),
        },
        match (&policy.default_expiration, &policy.max_expiration) {
            (Some(d), _) => format!("Default expiry: {}, at most the max lifespan", said(d)),
            (None, Some(_)) => "Default expiry: the max lifespan".into(),
            (None, None) => "Default expiry: never".into(),
        },
    ];
    if let Some(n) = policy.max_keys_per_user {
        lines.push(format!(
            "Up to {n} keys per user (removed keys do not count)"
        ));
    }
    lines.push(match &alerts.default_lead_time {
        Some(p) => format!("Expiry notifications: {} before a key expires", said(p)),
        None => "Expiry notifications: only when asked for".into(),
    });
    if let (Some(p), Some(_)) = (
        &alerts.inactivity_warning_lead_time,
        &policy.not_accessed_expiration,
    ) {
        lines.push(format!(
            "Inactivity warnings: {} before a key expires for lack of use",
            said(p)
        ));
    }
    lines
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Configured user name, or `root` for an unmapped root.
    pub name: String,
    /// Manages everyone's keys.
    pub admin: bool,
}

/// Reloadable rules: policy plus users and groups.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[ApiKey]`.
    pub policy: Policy,
    /// Users and groups.
    pub directory: Directory,
}

impl From<&Config> for Settings {
    fn from(config: &Config) -> Self {
        Self {
            policy: config.policy.clone(),
            directory: config.directory.clone(),
        }
    }
}

/// Outcome of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The code.
    pub code: Code,
    /// The key's last use after this verification (now, if valid).
    pub last_used: Option<DateTime<Utc>>,
    /// Where the key's entry is, when one was found (even if not valid).
    pub(super) entry: Option<u32>,
    pub(super) hash: KeyHash,
}

/// Request to create (or import) a key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Owner; defaults to the actor.
    #[serde(default)]
    pub user: Option<String>,
    /// Name, unique per owner.
    pub name: String,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Scopes; default all the owner's groups grant.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// RFC 3339 expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// ISO 8601 period from now.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// No expiry (only when MaxExpirationPeriod is empty).
    #[serde(default)]
    pub never_expires: bool,
    /// IP filters.
    #[serde(default)]
    pub ip: Vec<String>,
    /// `NAME=TEMPLATE` headers.
    #[serde(default)]
    pub headers: Vec<String>,
    /// For import: the user-defined secret. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Notification time (RFC 3339).
    #[serde(default)]
    pub notify_at: Option<String>,
    /// Notification this long before the expiry (ISO 8601 period).
    #[serde(default)]
    pub notify_before: Option<String>,
    /// Alert source of the notification.
    #[serde(default)]
    pub alert_source: Option<String>,
    /// No notification, not even the configured default.
    #[serde(default)]
    pub no_notification: bool,
}

/// Request to edit a key. Absent fields are left alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditKey {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New scopes: must be a subset of the current ones.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Replace the IP filters (empty list clears them).
    #[serde(default)]
    pub ip: Option<Vec<String>>,
    /// Replace the headers (empty list clears them).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Earlier expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Earlier expiry as a period from now.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// A key as shown to administrators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner.
    pub owner: String,
    /// Scopes the key was issued with (or narrowed to).
    pub scopes: Vec<String>,
    /// Those of `scopes` its owner's groups grant now: what verification allows.
    #[serde(default)]
    pub effective_scopes: Vec<String>,
    /// `active`, `disabled`, `expired`, `inactive`, `removed`, `owner_unknown`
    /// (would be active, but its owner is no longer configured: refused) or
    /// `no_scopes` (would be active, but its owner's groups grant none of its
    /// scopes now: refused).
    pub status: String,
    /// `generated` or `imported`.
    pub kind: String,
    /// Created.
    pub created_at: String,
    /// Last record change.
    pub updated_at: String,
    /// Last successful verification.
    pub last_used_at: Option<String>,
    /// Hard expiry.
    pub expires_at: Option<String>,
    /// Earlier of the hard expiry and the inactivity deadline.
    pub effective_expires_at: Option<String>,
    /// `hard` or `inactivity`.
    pub effective_limit: Option<String>,
    /// Human details line.
    pub details: String,
    /// IP filters.
    pub ip_filters: Vec<String>,
    /// Response headers.
    pub headers: Vec<HeaderTemplate>,
    /// When the previous secret stops working after a rotation.
    pub rotation_grace_until: Option<String>,
    /// The last rotation that waits for the new secret's first use (`key rotate
    /// --until-used`), if the last rotation was one.
    #[serde(default)]
    pub rotation: Option<RotationView>,
    /// Alert notification: "TIME via SOURCE", or "none".
    pub notification: String,
    /// Verification counts (in memory, flushed with the last-used times).
    pub usage: UsageCounts,
    /// Notification time.
    #[serde(default)]
    pub notify_at: Option<String>,
    /// Alert source of the notification.
    #[serde(default)]
    pub alert_source: Option<String>,
    /// The alert job the key tracks.
    #[serde(default)]
    pub alert_job: Option<Uuid>,
    /// Something the caller should know about the change just made (such as an
    /// alert source that could not reach the owner and was replaced); only in the
    /// answer to that change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// What an admin imposed that only an admin may lift.
    #[serde(default)]
    pub admin_restrictions: AdminRestrictions,
}

/// A rotation that waits for the new secret's first use, as `key show` tells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationView {
    /// `pending` (waiting for the new secret's first use), `switched` (it was
    /// used) or `lapsed` (never used: the old secret stopped at the max grace).
    pub state: String,
    /// When the new secret was issued.
    pub started_at: String,
    /// When the old secret stops if the new one is never used.
    pub max_grace_until: String,
    /// The new secret's first successful use.
    pub switched_at: Option<String>,
    /// When the old secret stops (or stopped).
    pub old_secret_until: Option<String>,
    /// The job that warns before the max grace ends (while pending).
    pub warning_job: Option<Uuid>,
    /// The state in one line, e.g. "pending: waiting for the new secret's first
    /// use; old secret valid until 2026-09-07T10:00:00Z (max grace)".
    pub summary: String,
}

/// A key just issued: the secret, shown once, and the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The secret. Shown once; never stored; redacted in `Debug`.
    pub key: Secret,
    /// The key.
    #[serde(flatten)]
    pub view: KeyView,
}

/// Request to rotate a key (`POST /v1/admin/keys/ID/rotate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The old secret keeps working for this period (ISO 8601).
    #[serde(default)]
    pub grace: Option<String>,
    /// The old secret keeps working until the new one is first used, then for
    /// `[ApiKey] RotationOverlapPeriod`.
    #[serde(default)]
    pub until_used: bool,
    /// With `until_used`: the longest the old secret keeps working if the new one
    /// is never used (ISO 8601; default p7d).
    #[serde(default)]
    pub max_grace: Option<String>,
}

/// Request to set, change or cancel a key's notification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    /// Notification time (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// This long before the key's expiry (ISO 8601 period).
    #[serde(default)]
    pub before: Option<String>,
    /// Alert source.
    #[serde(default)]
    pub source: Option<String>,
    /// Remove the notification.
    #[serde(default)]
    pub cancel: bool,
}

/// Build the admin view of a key; its effective scopes and owner check follow the
/// users and groups of `settings`.
pub fn view_of(settings: &Settings, rec: &KeyRecord, now: DateTime<Utc>) -> KeyView {
    let policy = &settings.policy;
    let last_used = rec.last_used_at;
    let effective = rec.effective_expiry(policy, last_used);
    let granted = settings.directory.rights(&rec.owner).map(|r| r.scopes);
    let effective_scopes: Vec<String> = granted.as_ref().map_or_else(Vec::new, |g| {
        rec.scopes
            .iter()
            .filter(|s| g.contains(*s))
            .cloned()
            .collect()
    });
    let refused = refusal(granted.is_none(), &effective_scopes, &rec.scopes);
    let status = match rec.status(policy, last_used, now) {
        Status::Active => counted_as(KeyState::Enabled, Lapse::NONE, refused),
        s => s.as_str(),
    };
    let mut details = rec.details(policy, last_used, now);
    if rec.state != KeyState::Removed {
        if refused & table::OWNER_UNKNOWN != 0 {
            details = format!(
                "refused: owner {:?} is not a configured user; {details}",
                rec.owner
            );
        } else if refused & table::NO_SCOPES != 0 {
            details = format!(
                "refused: the groups of {:?} grant none of its scopes ({}) now; {details}",
                rec.owner,
                rec.scopes.join(", ")
            );
        }
    }
    KeyView {
        id: rec.id,
        name: rec.name.clone(),
        description: rec.description.clone(),
        owner: rec.owner.clone(),
        scopes: rec.scopes.clone(),
        effective_scopes,
        status: status.to_owned(),
        kind: match rec.kind {
            KeyKind::Generated => "generated",
            KeyKind::Imported => "imported",
        }
        .to_owned(),
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
        last_used_at: last_used.map(rfc3339),
        expires_at: rec.expires_at.map(rfc3339),
        effective_expires_at: effective.map(|(t, _)| rfc3339(t)),
        effective_limit: effective.map(|(_, l)| l.as_str().to_owned()),
        details,
        ip_filters: rec.ip_filters.iter().map(|n| n.to_string()).collect(),
        headers: rec.headers.clone(),
        rotation_grace_until: rec.previous_valid_until.filter(|t| *t > now).map(rfc3339),
        rotation: rotation_view(rec, now),
        notification: rec.alerting.notification.as_ref().map_or_else(
            || "none".to_owned(),
            |n| format!("{} via {}", rfc3339(n.at), n.source),
        ),
        notify_at: rec.alerting.notification.as_ref().map(|n| rfc3339(n.at)),
        alert_source: rec.alerting.notification.as_ref().map(|n| n.source.clone()),
        alert_job: rec.alerting.notification.as_ref().map(|n| n.job_id),
        usage: rec.usage.clone(),
        notice: None,
        admin_restrictions: rec.admin_restrictions.clone(),
    }
}

/// Bad lines an import reports at most (the count says how many there were).
pub const MAX_PROBLEMS: usize = 1000;

/// What is wrong with one line of the file (numbered from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineProblem {
    /// Line number.
    pub line: usize,
    /// What is wrong, without the token.
    pub message: String,
}

/// Why a file was refused: every bad line (up to [`MAX_PROBLEMS`]); nothing was
/// written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRefused {
    /// Bad lines, in order.
    pub problems: Vec<LineProblem>,
    /// How many lines were bad in all.
    pub bad_lines: usize,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Keys imported (one per line that is not blank).
    pub imported: usize,
    /// Keys imported per owner.
    pub owners: std::collections::BTreeMap<String, usize>,
    /// Keys that got a notification job.
    pub notifications: usize,
    /// Keys with an expiry.
    pub expiring: usize,
}

/// How `key show` tells `rec`'s rotation at `now`, if it has one.
fn rotation_view(rec: &KeyRecord, now: DateTime<Utc>) -> Option<RotationView> {
    let r = rec
        .rotation
        .as_ref()
        .filter(|_| rec.state != KeyState::Removed)?;
    let old_until = rec
        .previous_valid_until
        .filter(|_| rec.previous_hash.is_some());
    let ended = old_until.is_none_or(|t| t <= now);
    let until = old_until.map_or_else(|| "-".to_owned(), rfc3339);
    let (state, summary) = match (r.switched_at, ended) {
        (None, false) => (
            "pending",
            format!("pending: waiting for the new secret's first use; old secret valid until {until} (max grace)"),
        ),
        (None, true) => (
            "lapsed",
            format!("lapsed: the new secret was never used; old secret retired at {until} (max grace)"),
        ),
        (Some(at), false) => (
            "switched",
            format!("switched at {}; old secret valid until {until}", rfc3339(at)),
        ),
        (Some(at), true) => (
            "switched",
            format!("switched at {}; old secret retired at {until}", rfc3339(at)),
        ),
    };
    Some(RotationView {
        state: state.to_owned(),
        started_at: rfc3339(r.started_at),
        max_grace_until: rfc3339(r.max_grace_until),
        switched_at: r.switched_at.map(rfc3339),
        old_secret_until: old_until.map(rfc3339),
        warning_job: r.warning_job.filter(|_| r.switched_at.is_none()),
        summary,
    })
}

/// The largest import file an admin may send (about 3M lines of typical keys), or
/// a key owner (their own keys only: about 200 000 lines). The daemon holds a file
/// whole while it checks it, so not anyone may make it hold a gigabyte.
pub fn max_import_bytes(admin: bool) -> usize {
    if admin {
        1 << 30
    } else {
        32 << 20
    }
}

/// Why a file over [`max_import_bytes`] is refused, and what to do.
pub fn import_too_large(admin: bool) -> String {
    format!(
        "the file is larger than {} MiB, the most {} may import at once; split it",
        max_import_bytes(admin) >> 20,
        if admin { "an admin" } else { "a key owner" }
    )
}
