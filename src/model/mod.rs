//! The records apikeyd keeps: keys ([`key`]), their response-header templates
//! ([`headers`]), alert jobs and operator messages ([`job`]), and the row a key is
//! loaded into memory as ([`row`]). Plain data, with the rules that read nothing but
//! a record (a key's status and expiry). Below the store, which persists them, and
//! the services, which change them: this module imports neither.

pub mod headers;
pub mod job;
pub mod key;
pub mod row;

pub use job::{
    AlertJob, JobKind, JobState, KeyAlerting, NotificationRef, OperatorMessage, Severity,
};
pub use key::{
    rfc3339, AdminRestrictions, AuditEntry, Code, KeyKind, KeyRecord, KeyState, Lifetime, Limit,
    RetiredSecret, Rotation, Status, UsageCounts, UserSecret,
};
pub use row::{KeyHash, KeyRow};
