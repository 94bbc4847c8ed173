//! Keys per status for `/metrics`, kept as keys change instead of counted by a scan.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use super::table;
use crate::model::{KeyState, Status};

/// The time-driven statuses, as [`Index::swept`] holds them.
pub(super) struct Lapse;

impl Lapse {
    pub(super) const NONE: u8 = 0;
    pub(super) const EXPIRED: u8 = 1;
    pub(super) const INACTIVE: u8 = 2;

    pub(super) fn of(status: Status) -> u8 {
        match status {
            Status::Expired => Lapse::EXPIRED,
            Status::Inactive => Lapse::INACTIVE,
            _ => Lapse::NONE,
        }
    }
}

/// Keys per status. A key's state (enabled, disabled, removed) moves it at once;
/// whether an enabled key is expired or inactive is as of the last expiry sweep
/// (or the start), which runs through every slot anyway; whether one in good
/// standing is refused (owner unknown, no scopes) moves with a reload. Atomics,
/// because the sweep moves keys while holding the index only for reading.
#[derive(Debug, Default)]
pub(super) struct StatusCounts([AtomicI64; 7]);

impl StatusCounts {
    /// The `status` labels of `/metrics`: [`Status`]'s, and the statuses a key
    /// list shows for a key that would be active but is refused.
    pub(super) const ORDER: [&'static str; 7] = [
        "active",
        "disabled",
        "expired",
        "inactive",
        "removed",
        OWNER_UNKNOWN_STATUS,
        NO_SCOPES_STATUS,
    ];

    pub(super) fn add(&self, status: &str, n: i64) {
        let i = Self::ORDER.iter().position(|s| *s == status).unwrap_or(0);
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        Self::ORDER
            .iter()
            .zip(&self.0)
            .map(|(s, n)| (*s, usize::try_from(n.load(Ordering::Relaxed)).unwrap_or(0)))
            .collect()
    }
}

/// Status of a key that would be active but whose owner is not configured.
pub(super) const OWNER_UNKNOWN_STATUS: &str = "owner_unknown";
/// Status of a key that would be active but whose owner's groups grant none of its
/// scopes.
pub(super) const NO_SCOPES_STATUS: &str = "no_scopes";

/// The status label a key in `state` whose last sweep saw `lapse`, refused for
/// `refused` ([`table::REFUSED`] flags), is counted under.
pub(super) fn counted_as(state: KeyState, lapse: u8, refused: u8) -> &'static str {
    let status = match state {
        KeyState::Removed => Status::Removed,
        KeyState::Disabled => Status::Disabled,
        KeyState::Enabled => match lapse {
            Lapse::EXPIRED => Status::Expired,
            Lapse::INACTIVE => Status::Inactive,
            _ => Status::Active,
        },
    };
    match status {
        Status::Active if refused & table::OWNER_UNKNOWN != 0 => OWNER_UNKNOWN_STATUS,
        Status::Active if refused & table::NO_SCOPES != 0 => NO_SCOPES_STATUS,
        s => s.as_str(),
    }
}
