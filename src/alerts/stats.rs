//! Process-wide delivery counters for `/metrics`: one per channel kind and outcome,
//! counted by the dispatcher each time a channel is called. A `static` because the
//! dispatcher and the API share nothing else that may hold them, and a daemon is one
//! process with one set of channels.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::alerts::SourceKind;

/// Channel kinds, as spelt in `[alert_sources.NAME] kind` and in the metric labels.
pub const CHANNELS: [&str; 3] = ["email", "operator_message", "plugin"];

/// Outcomes of one channel call, as spelt in the metric labels.
pub const OUTCOMES: [&str; 2] = ["delivered", "failed"];

/// Deliveries by channel kind × outcome.
#[derive(Debug)]
pub struct DeliveryCounters {
    counts: [[AtomicU64; OUTCOMES.len()]; CHANNELS.len()],
}

/// The daemon's delivery counters.
pub static DELIVERIES: DeliveryCounters = DeliveryCounters::new();

impl DeliveryCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            counts: [const { [const { AtomicU64::new(0) }; OUTCOMES.len()] }; CHANNELS.len()],
        }
    }

    /// Count one channel call through a source of `kind`.
    pub fn record(&self, kind: &SourceKind, delivered: bool) {
        let channel = match kind {
            SourceKind::Email { .. } => 0,
            SourceKind::OperatorMessage { .. } => 1,
            SourceKind::Plugin { .. } => 2,
        };
        let outcome = usize::from(!delivered);
        self.counts[channel][outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Every (channel, outcome, count), all combinations, in label order.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(CHANNELS.len() * OUTCOMES.len());
        for (c, channel) in CHANNELS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                out.push((
                    *channel,
                    *outcome,
                    self.counts[c][o].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }
}

impl Default for DeliveryCounters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn counts_by_channel_and_outcome() {
        let c = DeliveryCounters::new();
        c.record(&SourceKind::operator_message(), true);
        c.record(&SourceKind::operator_message(), false);
        c.record(&SourceKind::operator_message(), false);
        let snap = c.snapshot();
        assert_eq!(snap.len(), 6);
        assert!(snap.contains(&("operator_message", "delivered", 1)));
        assert!(snap.contains(&("operator_message", "failed", 2)));
        assert!(snap.contains(&("email", "delivered", 0)));
    }
}
