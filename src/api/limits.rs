//! Failed verifications per client address, limited with a token bucket: each
//! MALFORMED or NOT_FOUND answer takes a token; when none is left the client gets
//! 429 with `Retry-After` until the bucket refills. Memory is bounded by
//! `max_tracked_clients`; only clients that failed are tracked at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::config::RateLimitConfig;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The limiter shared by the verification endpoints.
#[derive(Debug)]
pub struct RateLimiter {
    config: RwLock<RateLimitConfig>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    tracked: AtomicUsize,
}

impl RateLimiter {
    /// A limiter with these settings.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config: RwLock::new(config),
            buckets: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Replace the settings (SIGHUP).
    pub fn reconfigure(&self, config: RateLimitConfig) {
        *self.config.write() = config;
    }

    fn refill(b: &mut Bucket, cfg: &RateLimitConfig, now: Instant) {
        let rate = f64::from(cfg.failures_per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(cfg.burst));
        b.updated = now;
    }

    /// `Err(retry_after)` when `ip` has used up its failures.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let cfg = self.config.read().clone();
        if cfg.failures_per_minute == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let Some(b) = buckets.get_mut(&ip) else {
            return Ok(());
        };
        Self::refill(b, &cfg, now);
        if cfg.burst >= 1 && b.tokens >= f64::from(cfg.burst) {
            // Refilled: the same as a client that never failed, which the next
            // failure starts afresh. Forgetting it keeps the check of a client that
            // failed once, a while ago, off this lock and map.
            buckets.remove(&ip);
            self.tracked.store(buckets.len(), Ordering::Relaxed);
            Ok(())
        } else if b.tokens >= 1.0 {
            Ok(())
        } else {
            let rate = f64::from(cfg.failures_per_minute) / 60.0;
            let secs = ((1.0 - b.tokens) / rate).ceil().max(1.0);
            Err(Duration::from_secs_f64(secs))
        }
    }

    /// Take a token for a failed verification from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let cfg = self.config.read().clone();
        if cfg.failures_per_minute == 0 {
            return;
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= cfg.max_tracked_clients && !buckets.contains_key(&ip) {
            // Forget clients whose buckets have refilled; if that is not enough,
            // start over rather than grow without bound.
            buckets.retain(|_, b| {
                Self::refill(b, &cfg, now);
                b.tokens < f64::from(cfg.burst)
            });
            if buckets.len() >= cfg.max_tracked_clients {
                tracing::warn!(
                    tracked = buckets.len(),
                    "rate limiter full; forgetting all clients"
                );
                buckets.clear();
            }
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: f64::from(cfg.burst),
            updated: now,
        });
        Self::refill(b, &cfg, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        self.tracked.store(buckets.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(per_minute: u32, burst: u32, max: usize) -> RateLimitConfig {
        RateLimitConfig {
            failures_per_minute: per_minute,
            burst,
            max_tracked_clients: max,
        }
    }

    #[test]
    fn bucket_empties_and_refills() {
        let l = RateLimiter::new(cfg(60, 3, 100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(ip, t0).is_ok());
            l.record_failure(ip, t0);
        }
        assert_eq!(l.check(ip, t0), Err(Duration::from_secs(1)));
        assert!(l.check(other, t0).is_ok(), "other clients are not affected");
        assert!(
            l.check(ip, t0 + Duration::from_secs(1)).is_ok(),
            "one token per second at 60/min"
        );
    }

    #[test]
    fn refilled_clients_are_forgotten() {
        let l = RateLimiter::new(cfg(60, 3, 100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        l.record_failure(ip, t0);
        l.record_failure(ip, t0);
        assert!(l.check(ip, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(l.tracked.load(Ordering::Relaxed), 1, "not yet refilled");
        assert!(l.check(ip, t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(l.tracked.load(Ordering::Relaxed), 0);
        assert!(l.buckets.lock().is_empty());
        // A later failure starts from a full bucket, as for a new client.
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert!(l.check(ip, t1).is_ok());
            l.record_failure(ip, t1);
        }
        assert_eq!(l.check(ip, t1), Err(Duration::from_secs(1)));
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(cfg(60, 2, 100));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.record_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.buckets.lock().len() <= 100);
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        let l = RateLimiter::new(cfg(0, 1, 100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            l.record_failure(ip, t0);
        }
        assert!(l.check(ip, t0).is_ok());
    }
}
