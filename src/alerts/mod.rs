//! Alert jobs: one per key, recorded in redb, fired by one dispatcher task; and the
//! cron-style maintenance jobs (tokio-cron-scheduler).
//!
//! The dispatcher holds no job in memory: redb keeps a `(run-at, job id)` index of
//! the scheduled jobs, and one task sleeps until the earliest entry or until a
//! [`tokio::sync::Notify`] says something was (re)scheduled (the mini-redis purge
//! task). A million scheduled jobs therefore cost disk, not memory or idle CPU.

pub mod dispatch;
pub mod job;
pub mod maintenance;
pub mod stats;

pub use dispatch::Dispatcher;
