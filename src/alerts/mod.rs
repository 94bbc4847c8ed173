//! Alerting: the job side beside the key service. [`Alerts`] owns the alert jobs
//! (one per key notification, plus inactivity warnings) and the operator messages;
//! one [`Dispatcher`] task fires due jobs through a [`Deliver`]er (the channels);
//! [`maintenance`] runs the cron-style maintenance jobs (tokio-cron-scheduler).
//!
//! The dispatcher holds no job in memory: the store keeps the scheduled jobs in
//! run-at order, and one task sleeps until the earliest or until a
//! [`tokio::sync::Notify`] says something was (re)scheduled (the mini-redis purge
//! task). A million scheduled jobs therefore cost disk, not memory or idle CPU.

pub mod alert;
pub mod dispatch;
pub mod maintenance;
pub mod service;
pub mod stats;

pub use crate::model::job;
pub use alert::{Alert, AlertKey, Deliver, DeliveryError};
pub use dispatch::Dispatcher;
pub use service::{AlertError, Alerts, Outcome, MAX_ERROR_LEN};

#[cfg(test)]
mod rotation_tests;
#[cfg(test)]
mod tests;
