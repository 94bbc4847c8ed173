//! What a node knows about following other nodes' changes (cluster mode), for
//! `/metrics`; `follow` does the following.

use std::sync::atomic::{AtomicI64, AtomicU64};

/// What `/metrics` says about following other nodes.
#[derive(Debug, Default)]
pub struct Following {
    /// Age in milliseconds, when read, of the oldest change in the last batch.
    pub(super) lag_ms: AtomicU64,
    /// When (unix milliseconds) the change log was last read successfully; 0 never.
    pub(super) read_at_ms: AtomicI64,
    /// Keys changed here by other nodes' changes.
    pub(super) applied: AtomicU64,
    /// Full reloads (this node fell behind the log's retention).
    pub(super) reloads: AtomicU64,
    /// How often the log is read without a notification (milliseconds).
    pub(super) poll_ms: AtomicU64,
}

/// A snapshot of `Following` for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FollowingStatus {
    /// How far behind other nodes' changes this node may be, in seconds: the age of
    /// the oldest change in the last batch read, or, when the log could not be read
    /// for more than two poll intervals, the time since it last was.
    pub lag_seconds: f64,
    /// Keys changed here by other nodes' changes.
    pub applied: u64,
    /// Full reloads.
    pub reloads: u64,
}
