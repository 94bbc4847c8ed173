//! Failed verifications per client, limited with a token bucket: each MALFORMED or
//! NOT_FOUND answer takes a token; when none is left the client gets 429 with
//! `Retry-After` until the bucket refills. A client is the caller as the server sees
//! it ([`Client`]): an IPv4 address, an IPv6 network of `ipv6_prefix` bits, or a
//! local account on the admin socket. Only clients that failed are tracked, at most
//! `max_tracked_clients`; past that the client whose bucket was touched longest ago
//! is forgotten, so a flood of new addresses cannot reset the limit of a recent one.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use crate::config::RateLimitConfig;

/// Who a failure is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address, or an IPv6 network: the address with all but its first
    /// `prefix` bits cleared (`prefix` 128 for a single address).
    Net(IpAddr, u8),
    /// A local account on the admin socket, by uid; `None` when the kernel did not
    /// say, which all such callers share.
    Local(Option<u32>),
}

impl Client {
    /// The client `ip` belongs to: IPv4 (also when written as an IPv4-mapped IPv6
    /// address) as is, IPv6 grouped by its first `ipv6_prefix` bits, since one
    /// subscriber usually holds a whole /64 and could otherwise take a fresh
    /// address for every attempt.
    pub fn of_ip(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::Net(IpAddr::V4(v4), 32),
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                Client::Net(IpAddr::V6(net), prefix)
            }
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Net(ip @ IpAddr::V6(_), prefix) if *prefix < 128 => write!(f, "{ip}/{prefix}"),
            Client::Net(ip, _) => write!(f, "{ip}"),
            Client::Local(Some(uid)) => write!(f, "local uid {uid}"),
            Client::Local(None) => write!(f, "a local caller"),
        }
    }
}

/// Either a client or an address to turn into one with the configured prefix.
#[derive(Debug, Clone, Copy)]
pub enum Charge {
    /// An address as seen on the wire.
    Ip(IpAddr),
    /// A client already resolved.
    Client(Client),
}

impl From<IpAddr> for Charge {
    fn from(ip: IpAddr) -> Self {
        Charge::Ip(ip)
    }
}

impl From<Client> for Charge {
    fn from(c: Client) -> Self {
        Charge::Client(c)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The limiter shared by the verification endpoints.
#[derive(Debug)]
pub struct RateLimiter {
    config: RwLock<RateLimitConfig>,
    /// Least recently touched first. SipHash (std's `RandomState`): the keys are
    /// chosen by the clients.
    buckets: Mutex<LruCache<Client, Bucket, RandomState>>,
    tracked: AtomicUsize,
    /// When an offender was last evicted early (for a rate-limited warning).
    warned: AtomicU64,
}

impl RateLimiter {
    /// A limiter with these settings.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config: RwLock::new(config),
            buckets: Mutex::new(LruCache::unbounded_with_hasher(RandomState::new())),
            tracked: AtomicUsize::new(0),
            warned: AtomicU64::new(0),
        }
    }

    /// Replace the settings (SIGHUP).
    pub fn reconfigure(&self, config: RateLimitConfig) {
        *self.config.write() = config;
    }

    /// The client `ip` is charged as under the current settings.
    pub fn client_of(&self, ip: IpAddr) -> Client {
        Client::of_ip(ip, self.config.read().ipv6_prefix)
    }

    fn resolve(charge: Charge, cfg: &RateLimitConfig) -> Client {
        match charge {
            Charge::Ip(ip) => Client::of_ip(ip, cfg.ipv6_prefix),
            Charge::Client(c) => c,
        }
    }

    fn refill(b: &mut Bucket, cfg: &RateLimitConfig, now: Instant) {
        let rate = f64::from(cfg.failures_per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(cfg.burst));
        b.updated = now;
    }

    /// `Err(retry_after)` when the client has used up its failures.
    pub fn check(&self, client: impl Into<Charge>, now: Instant) -> Result<(), Duration> {
        // The common case, no client failed lately: one atomic load.
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let cfg = self.config.read().clone();
        if cfg.failures_per_minute == 0 {
            return Ok(());
        }
        let client = Self::resolve(client.into(), &cfg);
        let mut buckets = self.buckets.lock();
        // A look counts as a touch: a limited client that keeps trying stays among
        // the most recent, the last to be evicted.
        let Some(b) = buckets.get_mut(&client) else {
            return Ok(());
        };
        Self::refill(b, &cfg, now);
        if cfg.burst >= 1 && b.tokens >= f64::from(cfg.burst) {
            // Refilled: the same as a client that never failed, which the next
            // failure starts afresh. Forgetting it keeps the check of a client that
            // failed once, a while ago, off this lock and map.
            buckets.pop(&client);
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

    /// Take a token for a failed verification by the client.
    pub fn record_failure(&self, client: impl Into<Charge>, now: Instant) {
        let cfg = self.config.read().clone();
        if cfg.failures_per_minute == 0 {
            return;
        }
        let client = Self::resolve(client.into(), &cfg);
        let mut buckets = self.buckets.lock();
        if !buckets.contains(&client) {
            // Make room by forgetting the clients touched longest ago: one per new
            // client (more only after a reload lowered the bound).
            while buckets.len() >= cfg.max_tracked_clients.max(1) {
                let Some((old, mut b)) = buckets.pop_lru() else {
                    break;
                };
                Self::refill(&mut b, &cfg, now);
                if b.tokens < f64::from(cfg.burst) {
                    self.warn_evicted(old, buckets.len());
                }
            }
        }
        let b = buckets.get_or_insert_mut(client, || Bucket {
            tokens: f64::from(cfg.burst),
            updated: now,
        });
        Self::refill(b, &cfg, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        self.tracked.store(buckets.len(), Ordering::Relaxed);
    }

    /// A client that still had failures counted was forgotten to make room: the
    /// table is too small for the clients failing now. Said at most once a minute.
    fn warn_evicted(&self, client: Client, tracked: usize) {
        if let Some(minute) = once_a_minute(&self.warned) {
            tracing::warn!(
                %client,
                tracked,
                minute,
                "rate limiter full: forgot the failures of the client seen longest ago \
                 (raise rate_limit.max_tracked_clients if this repeats)"
            );
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

/// `Some(minute)` (minutes since the Unix epoch) when `last` held an earlier minute,
/// which it is set to: a cheap gate for warnings that could repeat per request.
pub(crate) fn once_a_minute(last: &AtomicU64) -> Option<u64> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec;
    let minute = u64::try_from(now).unwrap_or(0) / 60;
    let before = last.load(Ordering::Relaxed);
    (before != minute
        && last
            .compare_exchange(before, minute, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok())
    .then_some(minute)
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
            ..RateLimitConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_empties_and_refills() {
        let l = RateLimiter::new(cfg(60, 3, 100));
        let ip1 = ip("192.0.2.1");
        let other = ip("192.0.2.2");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(ip1, t0).is_ok());
            l.record_failure(ip1, t0);
        }
        assert_eq!(l.check(ip1, t0), Err(Duration::from_secs(1)));
        assert!(l.check(other, t0).is_ok(), "other clients are not affected");
        assert!(
            l.check(ip1, t0 + Duration::from_secs(1)).is_ok(),
            "one token per second at 60/min"
        );
    }

    #[test]
    fn refilled_clients_are_forgotten() {
        let l = RateLimiter::new(cfg(60, 3, 100));
        let ip1 = ip("192.0.2.1");
        let t0 = Instant::now();
        l.record_failure(ip1, t0);
        l.record_failure(ip1, t0);
        assert!(l.check(ip1, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(l.tracked(), 1, "not yet refilled");
        assert!(l.check(ip1, t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(l.tracked(), 0);
        assert!(l.buckets.lock().is_empty());
        // A later failure starts from a full bucket, as for a new client.
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert!(l.check(ip1, t1).is_ok());
            l.record_failure(ip1, t1);
        }
        assert_eq!(l.check(ip1, t1), Err(Duration::from_secs(1)));
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(cfg(60, 2, 100));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.record_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.buckets.lock().len(), 100);
        assert_eq!(l.tracked(), 100);
    }

    /// Regression (issue 9, item 3): when `max_tracked_clients` was reached and no
    /// bucket had refilled, the whole table was cleared, so an attacker failing from
    /// enough addresses reset the limit of every client, its own included. Now only
    /// the clients touched longest ago are forgotten.
    #[test]
    fn a_full_table_forgets_the_oldest_and_keeps_recent_offenders_limited() {
        let l = RateLimiter::new(cfg(1, 2, 100));
        let t0 = Instant::now();
        let offender = ip("198.51.100.1");
        l.record_failure(offender, t0);
        l.record_failure(offender, t0);
        assert!(l.check(offender, t0).is_err());
        // 200 other clients fail once each, the offender keeps trying in between.
        for i in 0..200u32 {
            l.record_failure(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
            if i % 50 == 0 {
                assert!(l.check(offender, t0).is_err(), "offender limited at {i}");
            }
        }
        assert!(l.check(offender, t0).is_err(), "still limited");
        assert_eq!(l.tracked(), 100);
        // The clients failing longest ago went first; the latest ones are kept.
        let oldest = IpAddr::from(0x0a00_0000u32.to_be_bytes());
        let latest = IpAddr::from((0x0a00_0000u32 + 199).to_be_bytes());
        let buckets = l.buckets.lock();
        assert!(!buckets.contains(&Client::of_ip(oldest, 64)));
        assert!(buckets.contains(&Client::of_ip(latest, 64)));
    }

    /// Regression (issue 9, item 3): IPv6 clients were tracked per /128, so a client
    /// holding a /64 dodged the limit with a new address per attempt.
    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_mapped_ipv4_is_ipv4() {
        let l = RateLimiter::new(cfg(60, 3, 100));
        let t0 = Instant::now();
        for i in 1..=3u16 {
            let addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 7, i, 0, 0, i);
            l.record_failure(IpAddr::V6(addr), t0);
        }
        assert!(
            l.check(ip("2001:db8:0:7:ffff::1"), t0).is_err(),
            "same /64: limited"
        );
        assert!(
            l.check(ip("2001:db8:0:8::1"), t0).is_ok(),
            "the next /64 is another client"
        );
        assert_eq!(
            Client::of_ip(ip("2001:db8:0:7:1::1"), 64).to_string(),
            "2001:db8:0:7::/64"
        );
        // A narrower configured prefix groups wider.
        let l48 = RateLimiter::new(RateLimitConfig {
            ipv6_prefix: 48,
            ..cfg(60, 1, 100)
        });
        l48.record_failure(ip("2001:db8:1:2::1"), t0);
        assert!(l48.check(ip("2001:db8:1:ffff::9"), t0).is_err());
        assert!(l48.check(ip("2001:db8:2::1"), t0).is_ok());
        // /128 is per address.
        assert_eq!(
            Client::of_ip(ip("2001:db8::1"), 128),
            Client::Net(ip("2001:db8::1"), 128)
        );
        // IPv4 written as IPv4-mapped IPv6 is the same IPv4 client.
        for _ in 0..3 {
            l.record_failure(ip("::ffff:192.0.2.9"), t0);
        }
        assert!(l.check(ip("192.0.2.9"), t0).is_err());
        assert_eq!(
            Client::of_ip(ip("::ffff:192.0.2.9"), 64),
            Client::of_ip(ip("192.0.2.9"), 64)
        );
    }

    #[test]
    fn local_callers_are_charged_by_uid() {
        let l = RateLimiter::new(cfg(60, 1, 100));
        let t0 = Instant::now();
        l.record_failure(Client::Local(Some(1000)), t0);
        assert!(l.check(Client::Local(Some(1000)), t0).is_err());
        assert!(l.check(Client::Local(Some(1001)), t0).is_ok());
        assert!(l.check(ip("127.0.0.1"), t0).is_ok());
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        let l = RateLimiter::new(cfg(0, 1, 100));
        let ip1 = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..10 {
            l.record_failure(ip1, t0);
        }
        assert!(l.check(ip1, t0).is_ok());
    }

    #[test]
    fn warnings_are_gated_to_once_a_minute() {
        let last = AtomicU64::new(0);
        assert!(once_a_minute(&last).is_some());
        assert!(once_a_minute(&last).is_none());
    }
}
