//! The alert job record as stored in redb, and the operator message record.
//! A job is the one delivery of one notification (or inactivity warning) of a key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job is in its life. `Completed`, `Failed` and `Canceled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum JobState {
    /// Waiting for its time (a first attempt, or a retry after a failed attempt).
    Scheduled,
    /// Claimed for delivery (persisted before the channel is called).
    Running,
    /// Delivered.
    Completed,
    /// Gave up after `max_attempts`, or could not be delivered at all.
    Failed,
    /// Cancelled, superseded, or replaced after a crash during delivery.
    Canceled,
}

impl JobState {
    /// Every state, in declaration order (the order of [`JobState::index`]).
    pub const ALL: [JobState; 5] = [
        JobState::Scheduled,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Canceled,
    ];

    /// Position in [`JobState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "Scheduled",
            JobState::Running => "Running",
            JobState::Completed => "Completed",
            JobState::Failed => "Failed",
            JobState::Canceled => "Canceled",
        }
    }

    /// Parse a state name, ignoring case.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// No further change will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Canceled
        )
    }
}

/// What a job tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The key's notification (one per key, set by its owner or an admin).
    Notification,
    /// The maintenance warning that a key will soon expire through inactivity.
    InactivityWarning,
    /// The warning that the new secret of a rotation waiting for its first use
    /// (`key rotate --until-used`) was never used, before the old one stops.
    RotationWarning,
}

/// One alert job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertJob {
    /// Job id (UUID v7).
    pub id: Uuid,
    /// The job this one continues (itself unless it replaced a job interrupted by a
    /// crash). The email Message-ID is derived from it, so a duplicate is recognisable.
    pub origin: Uuid,
    /// The key it is about.
    pub key_id: Uuid,
    /// Notification or inactivity warning.
    pub kind: JobKind,
    /// Alert source name (`[alert_sources.NAME]`).
    pub source: String,
    /// The notification time.
    pub due_at: DateTime<Utc>,
    /// When the next attempt runs (the due time, or a retry time after a failure).
    pub run_at: DateTime<Utc>,
    /// State.
    pub state: JobState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last failure, truncated; never holds a secret.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the first attempt started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The job this one replaced.
    #[serde(default)]
    pub replaces: Option<Uuid>,
    /// The job that replaced this one.
    #[serde(default)]
    pub replaced_by: Option<Uuid>,
}

impl AlertJob {
    /// A new scheduled job.
    pub fn new(
        key_id: Uuid,
        kind: JobKind,
        source: &str,
        due_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        let id = Uuid::now_v7();
        Self {
            id,
            origin: id,
            key_id,
            kind,
            source: source.to_owned(),
            due_at,
            run_at: due_at,
            state: JobState::Scheduled,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            replaces: None,
            replaced_by: None,
        }
    }

    /// End the job without delivering it, saying why (cancelled, superseded,
    /// replaced, or its key removed).
    pub fn cancel(&mut self, why: String, now: DateTime<Utc>) {
        self.state = JobState::Canceled;
        self.last_error = Some(why);
        self.updated_at = now;
        self.finished_at = Some(now);
    }

    /// Whether delivery has begun (a first attempt was claimed).
    pub fn started(&self) -> bool {
        self.attempts > 0 || self.state != JobState::Scheduled
    }

    /// The email Message-ID: the same for a job and its crash replacements.
    pub fn message_id(&self) -> String {
        format!("<alert-{}@apikeyd>", self.origin)
    }
}

/// What a key records about its alert jobs (stored inside the key record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAlerting {
    /// The key's notification, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<NotificationRef>,
    /// When the expiry sweep recorded that the key expired (once per key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lapse_recorded_at: Option<DateTime<Utc>>,
    /// Start of the idle stretch an inactivity warning was sent for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_warned_for: Option<DateTime<Utc>>,
}

impl KeyAlerting {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The notification of a key and the job that carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRef {
    /// When.
    pub at: DateTime<Utc>,
    /// Alert source name.
    pub source: String,
    /// The job the key tracks.
    pub job_id: Uuid,
}

/// Severity of an operator message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    Info,
    /// Needs attention.
    Warning,
    /// Something failed.
    Error,
}

/// A message for the operators, stored in redb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorMessage {
    /// Sequence number, assigned by the store.
    #[serde(default)]
    pub id: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Severity.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// Details.
    pub text: String,
    /// The key it is about.
    pub key_id: Option<Uuid>,
    /// The job that produced it.
    pub job_id: Option<Uuid>,
    /// Who acknowledged it.
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    /// When.
    #[serde(default)]
    pub acknowledged_at: Option<DateTime<Utc>>,
}
