//! Counters for `/metrics` (Prometheus text format 0.0.4), kept in atomics so the
//! verification path never takes a lock to count.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::alerts::stats::DELIVERIES;
use crate::alerts::Alerts;
use crate::keys::Keys;
use crate::model::key::Code;

/// Where a verification came from.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// `POST /v1/verify`.
    Verify,
    /// `/v1/auth` (forward-auth).
    Auth,
}

/// Result labels: the verification codes plus `MISSING` (no key in the request).
/// Codes added later go after `MISSING`, whose index [`code_index`] fixes at 8.
pub const CODES: [&str; 10] = [
    "VALID",
    "MALFORMED",
    "NOT_FOUND",
    "DISABLED",
    "EXPIRED",
    "INACTIVE",
    "IP_NOT_ALLOWED",
    "INSUFFICIENT_SCOPE",
    "MISSING",
    "OWNER_UNKNOWN",
];

/// Index of a code in [`CODES`].
pub fn code_index(code: Option<Code>) -> usize {
    match code {
        Some(c) => CODES.iter().position(|n| *n == c.as_str()).unwrap_or(0),
        None => 8,
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.025,
];

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    verifications: [[AtomicU64; 10]; 2],
    rate_limited: AtomicU64,
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: [AtomicU64; 2],
}

/// Why a TCP connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` connections were open.
    Total,
    /// Its client had `server.max_connections_per_client` open.
    PerClient,
}

impl Refused {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerClient => "max_connections_per_client",
        }
    }
}

impl Metrics {
    /// Count one verification and how long it took.
    pub fn record(&self, endpoint: Endpoint, code: Option<Code>, took: Duration) {
        self.verifications[endpoint as usize][code_index(code)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Count one request refused with 429.
    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP connection was accepted (`true`) or has closed (`false`).
    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections_open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Count one TCP connection refused at accept.
    pub fn connection_refused(&self, why: Refused) {
        self.connections_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count of verifications with a code at an endpoint.
    pub fn count(&self, endpoint: Endpoint, code: Option<Code>) -> u64 {
        self.verifications[endpoint as usize][code_index(code)].load(Ordering::Relaxed)
    }

    /// Render everything in the Prometheus text format.
    pub fn render(&self, keys: &Keys, alerts: &Alerts) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP apikeyd_verifications_total Key verifications by endpoint and result code."
        );
        let _ = writeln!(out, "# TYPE apikeyd_verifications_total counter");
        for (e, name) in [(Endpoint::Verify, "verify"), (Endpoint::Auth, "auth")] {
            for (i, code) in CODES.iter().enumerate() {
                let n = self.verifications[e as usize][i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "apikeyd_verifications_total{{endpoint=\"{name}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP apikeyd_verification_duration_seconds Time to verify one key (in process)."
        );
        let _ = writeln!(
            out,
            "# TYPE apikeyd_verification_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "apikeyd_verification_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "apikeyd_verification_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "apikeyd_verification_duration_seconds_sum {sum}");
        let _ = writeln!(out, "apikeyd_verification_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP apikeyd_rate_limited_total Requests refused with 429 after too many failed verifications.");
        let _ = writeln!(out, "# TYPE apikeyd_rate_limited_total counter");
        let _ = writeln!(
            out,
            "apikeyd_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP apikeyd_keys Keys by status (expired and inactive as of the last expiry sweep; owner_unknown and no_scopes: refused keys that would be active)."
        );
        let _ = writeln!(out, "# TYPE apikeyd_keys gauge");
        // Counters kept as keys change and by the expiry sweep: no scan of the keys.
        for (status, n) in keys.status_counts() {
            let _ = writeln!(out, "apikeyd_keys{{status=\"{status}\"}} {n}");
        }
        let (unflushed, lag) = keys.unflushed();
        let _ = writeln!(out, "# HELP apikeyd_usage_unflushed_keys Keys whose last-used time or counts are not yet written.");
        let _ = writeln!(out, "# TYPE apikeyd_usage_unflushed_keys gauge");
        let _ = writeln!(out, "apikeyd_usage_unflushed_keys {unflushed}");
        let _ = writeln!(out, "# HELP apikeyd_usage_flush_lag_seconds Age of the oldest last write among keys waiting to be flushed.");
        let _ = writeln!(out, "# TYPE apikeyd_usage_flush_lag_seconds gauge");
        let _ = writeln!(out, "apikeyd_usage_flush_lag_seconds {lag}");
        let _ = writeln!(out, "# HELP apikeyd_store_up Whether the store answered the last time it was used (1) or not (0: changes are refused, verification goes on from memory).");
        let _ = writeln!(out, "# TYPE apikeyd_store_up gauge");
        let _ = writeln!(out, "apikeyd_store_up {}", u8::from(keys.store_available()));
        if let Some(f) = keys.following() {
            let _ = writeln!(out, "# HELP apikeyd_cluster_change_lag_seconds How far behind other nodes' changes this node may be: the age of the oldest change in the last batch read from the change log, or the time since the log was last read when that is more than two poll intervals ago.");
            let _ = writeln!(out, "# TYPE apikeyd_cluster_change_lag_seconds gauge");
            let _ = writeln!(out, "apikeyd_cluster_change_lag_seconds {}", f.lag_seconds);
            let _ = writeln!(out, "# HELP apikeyd_cluster_changes_applied_total Keys changed on this node by other nodes' changes.");
            let _ = writeln!(out, "# TYPE apikeyd_cluster_changes_applied_total counter");
            let _ = writeln!(out, "apikeyd_cluster_changes_applied_total {}", f.applied);
            let _ = writeln!(out, "# HELP apikeyd_cluster_reloads_total Full reloads of every key after falling behind the change log's retention.");
            let _ = writeln!(out, "# TYPE apikeyd_cluster_reloads_total counter");
            let _ = writeln!(out, "apikeyd_cluster_reloads_total {}", f.reloads);
        }
        let _ = writeln!(out, "# HELP apikeyd_alert_jobs Alert jobs by state.");
        let _ = writeln!(out, "# TYPE apikeyd_alert_jobs gauge");
        // Kept in memory by the store on every commit: no scan of the jobs here.
        for (state, n) in alerts.job_state_counts() {
            let state = state.as_str().to_ascii_lowercase();
            let _ = writeln!(out, "apikeyd_alert_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP apikeyd_alert_deliveries_total Alert delivery attempts by channel kind and outcome.");
        let _ = writeln!(out, "# TYPE apikeyd_alert_deliveries_total counter");
        for (channel, outcome, n) in DELIVERIES.snapshot() {
            let _ = writeln!(
                out,
                "apikeyd_alert_deliveries_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP apikeyd_connections_open Connections open on the TCP listener and the admin socket."
        );
        let _ = writeln!(out, "# TYPE apikeyd_connections_open gauge");
        let _ = writeln!(
            out,
            "apikeyd_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP apikeyd_connections_refused_total TCP connections closed at accept because a connection limit was reached.");
        let _ = writeln!(out, "# TYPE apikeyd_connections_refused_total counter");
        for why in [Refused::Total, Refused::PerClient] {
            let _ = writeln!(
                out,
                "apikeyd_connections_refused_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.connections_refused[why as usize].load(Ordering::Relaxed)
            );
        }
        out
    }
}
