//! What the verification endpoints share besides the keys: the forward-auth settings
//! (swapped whole on reload), the failed-verification limits and the metrics.

use std::sync::Arc;

use axum::http::HeaderName;
use parking_lot::RwLock;

use super::limits;
use super::metrics;
use crate::config::{AuthConfig, RateLimitConfig};

/// What the verification endpoints share besides the keys.
#[derive(Debug)]
pub struct Edge {
    auth: RwLock<Arc<AuthPlan>>,
    /// Failed-verification limits.
    pub limiter: limits::RateLimiter,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
}

impl Edge {
    /// The edge of a server starting with these settings.
    pub fn new(auth: AuthConfig, rate_limit: RateLimitConfig) -> Self {
        Self {
            auth: RwLock::new(Arc::new(AuthPlan::new(auth))),
            limiter: limits::RateLimiter::new(rate_limit),
            metrics: metrics::Metrics::default(),
        }
    }

    /// Current forward-auth settings.
    pub fn auth(&self) -> Arc<AuthPlan> {
        self.auth.read().clone()
    }

    /// Replace settings on reload.
    pub fn reconfigure(&self, auth: AuthConfig, rate_limit: RateLimitConfig) {
        *self.auth.write() = Arc::new(AuthPlan::new(auth));
        self.limiter.reconfigure(rate_limit);
    }
}

/// [`AuthConfig`] with its header names parsed once, at start and on reload, rather
/// than on every request.
#[derive(Debug)]
pub struct AuthPlan {
    /// The settings.
    pub config: AuthConfig,
    /// `key_headers`, each with whether it is read as `Bearer KEY`.
    pub(crate) key_headers: Vec<(HeaderName, bool)>,
    pub(crate) uri_headers: Vec<HeaderName>,
    pub(crate) scope_header: Option<HeaderName>,
}

impl AuthPlan {
    /// Parse the header names of `config`. A name that is not a valid header name
    /// (the configuration refuses those) can never be present in a request, so it is
    /// left out.
    pub fn new(config: AuthConfig) -> Self {
        let parse = |n: &String| HeaderName::from_bytes(n.as_bytes()).ok();
        Self {
            key_headers: config
                .key_headers
                .iter()
                .filter_map(|n| parse(n).map(|h| (h, n == "authorization")))
                .collect(),
            uri_headers: config.uri_headers.iter().filter_map(parse).collect(),
            scope_header: parse(&config.scope_header),
            config,
        }
    }
}
