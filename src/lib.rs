//! apikeyd: a daemon that owns the whole life of API keys — issue, verify, expire.
//!
//! # Layout
//!
//! - [`config`]: the TOML file → validated [`config::Config`]; ISO 8601 periods.
//! - [`keys`]: key model, secret format and hashing, policy rules, verification.
//! - [`store`]: the redb database (the only module that knows redb).
//! - [`api`]: axum routers for verification and administration; Unix-socket peer identity.
//! - [`daemon`]: wiring, signals (SIGTERM, SIGHUP), sd_notify, background flushes.
//! - [`client`]: the admin API client used by `apikeyctl`.
//! - [`clock`]: the injected clock.
//! - [`alerts`]: alert jobs (one per key), the dispatcher, cron maintenance jobs.
//! - [`migrate`]: copying every record from one store to another (`apikeyd migrate`).
//! - [`backup`]: putting a snapshot from `apikeyctl backup` in place (`apikeyd restore`).
//! - [`channels`]: delivery: email (lettre), operator messages, exec plugins.
//! - [`manual`]: man pages and shell completions from the binaries' clap definitions.

pub mod alerts;
pub mod api;
pub mod backup;
pub mod channels;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
#[cfg(test)]
mod layering_tests;
pub mod manual;
pub mod migrate;
pub mod model;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
