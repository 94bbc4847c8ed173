//! The one source of "now". The daemon owns a [`SharedClock`]; tests inject a
//! [`ManualClock`] so expiry, inactivity and last-used rules run without sleeping.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// The current time to within a few milliseconds, cheaper than [`Clock::now`];
    /// used on the verification path, where expiry is judged to the second.
    fn now_coarse(&self) -> DateTime<Utc> {
        self.now()
    }
}

/// The clock shared by every part of the daemon.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now_coarse(&self) -> DateTime<Utc> {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        u32::try_from(ts.tv_nsec)
            .ok()
            .and_then(|ns| DateTime::from_timestamp(ts.tv_sec, ns))
            .unwrap_or_else(Utc::now)
    }
}

/// A clock that only moves when told to (tests, benchmarks).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(start),
        })
    }

    /// Move the clock forward (or backward with a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }

    /// Put the clock at `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock() = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock()
    }
}

/// The system clock shifted by a fixed offset. Used by the daemon when
/// `APIKEYD_CLOCK_OFFSET_SECS` is set, so integration tests can run the real
/// binary "in the future" without waiting. Only in builds with the `test-hooks`
/// feature: a shipped daemon must not let its environment move its clock.
#[cfg(feature = "test-hooks")]
#[derive(Debug)]
pub struct OffsetClock {
    offset: Duration,
}

#[cfg(feature = "test-hooks")]
impl OffsetClock {
    /// A clock `offset` ahead of the system clock.
    pub fn new(offset: Duration) -> Self {
        Self { offset }
    }
}

#[cfg(feature = "test-hooks")]
impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The system clock shifted by the number of seconds a file holds, read at every
/// call (an absent or unreadable file is no offset). Used by the daemon when
/// `APIKEYD_CLOCK_OFFSET_FILE` is set, so an integration test can move a running
/// daemon's time, which in-memory state (console links and sessions) needs: a
/// restart would lose it. Only with the `test-hooks` feature, like [`OffsetClock`].
#[cfg(feature = "test-hooks")]
#[derive(Debug)]
pub struct FileOffsetClock {
    file: std::path::PathBuf,
}

#[cfg(feature = "test-hooks")]
impl FileOffsetClock {
    /// A clock ahead of the system clock by what `file` says.
    pub fn new(file: std::path::PathBuf) -> Self {
        Self { file }
    }
}

#[cfg(feature = "test-hooks")]
impl Clock for FileOffsetClock {
    fn now(&self) -> DateTime<Utc> {
        let secs = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        Utc::now() + Duration::seconds(secs)
    }
}
