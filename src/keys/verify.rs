//! Verification: a presented key against the in-memory index, never the store.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::index::Index;
use super::live::Live;
use super::secret::{self, Shape};
use super::table::{self, Hit};
use super::types::Verification;
use super::Keys;
use crate::config::Policy;
use crate::model::{Code, Status};

impl Keys {
    /// Verify a presented key. Never waits for the store.
    pub fn verify(&self, presented: &str, scope: Option<&str>, ip: Option<IpAddr>) -> Verification {
        match scope {
            Some(s) => self.verify_route(presented, &[s], ip, None),
            None => self.verify_route(presented, &[], ip, None),
        }
    }

    /// Verify a key that must hold every one of `scopes`, counting a success against
    /// `route` (a configured route prefix).
    pub fn verify_route(
        &self,
        presented: &str,
        scopes: &[&str],
        ip: Option<IpAddr>,
        route: Option<&str>,
    ) -> Verification {
        // Expiry is judged to the millisecond against a clock good to a few: the
        // coarse clock costs a fraction of a precise read.
        let now = self.clock.now_coarse();
        let settings = self.settings.read();
        verify_with(self, &settings.policy, presented, scopes, ip, route, now)
    }

    /// The key a verification found, if it still holds the presented secret. The
    /// in-process check does not touch the key's entry (a cache miss at 1M keys);
    /// callers that answer with the key's identity fetch it here. A VALID
    /// verification whose key was removed or rotated in between becomes NOT_FOUND.
    pub fn resolve(&self, v: &mut Verification) -> Option<Arc<Live>> {
        let live = v.entry.and_then(|e| {
            let index = self.index.read();
            let live = index.at(e)?;
            (live.hash == v.hash || live.previous().is_some_and(|(h, _)| h == v.hash))
                .then(|| live.clone())
        });
        if live.is_none() && v.code == Code::Valid {
            v.code = Code::NotFound;
        }
        live
    }
}

/// The first successful use of a secret a rotation waits for: the one verification
/// that claims it hands it to the rotation side, which commits the switch in the
/// background ([`Keys::switch_first_uses`]); never in the request.
#[cold]
#[inline(never)]
fn first_use(keys: &Keys, index: &Index, entry: u32, now: DateTime<Utc>) {
    if let Some(live) = index.at(entry).filter(|l| l.claim_first_use()) {
        keys.rotations.first_used(live, now);
    }
}

/// Verify `presented` against the index under `policy` at `now`.
fn verify_with(
    keys: &Keys,
    policy: &Policy,
    presented: &str,
    scopes: &[&str],
    ip: Option<IpAddr>,
    route: Option<&str>,
    now: DateTime<Utc>,
) -> Verification {
    let none = |code| Verification {
        code,
        last_used: None,
        entry: None,
        hash: [0; 32],
    };
    if presented.len() > secret::MAX_SECRET_LEN
        || secret::shape(presented, policy.min_imported_secret_length) == Shape::Malformed
    {
        return none(Code::Malformed);
    }
    let hash = keys.hasher.hash(presented);
    // Counting happens under the read lock: a change to the key replaces its slot
    // under the write lock and takes the counters over from the old one.
    let index = keys.index.read();
    let (slot, current) = match index.table.get(&hash) {
        None => return none(Code::NotFound),
        Some(Hit::Current(slot)) => (slot, true),
        Some(Hit::Previous { until_ms, entry }) => {
            // The previous secret of a rotated key: good only during the grace period.
            let current = (now.timestamp_millis() < until_ms)
                .then(|| index.at(entry))
                .flatten()
                .and_then(|live| index.table.current(&live.hash));
            match current {
                Some(slot) => (slot, false),
                None => return none(Code::NotFound),
            }
        }
    };
    let code = match slot.status(policy, now) {
        Status::Removed => return none(Code::NotFound),
        Status::Disabled => Code::Disabled,
        Status::Expired => Code::Expired,
        Status::Inactive => Code::Inactive,
        // Before the IP and scope checks: a key whose owner is gone answers the
        // same wherever it is used from.
        Status::Active if slot.flags & table::REFUSED != 0 => {
            if slot.flags & table::OWNER_UNKNOWN != 0 {
                Code::OwnerUnknown
            } else {
                // Holds none of its scopes now: refused whatever is asked.
                Code::InsufficientScope
            }
        }
        Status::Active if !index.admits(slot, ip) => Code::IpNotAllowed,
        Status::Active if !index.holds(slot, scopes) => Code::InsufficientScope,
        Status::Active => {
            slot.touch(now.timestamp());
            if let (Some(r), Some(live)) = (route, index.at(slot.entry)) {
                live.count_route(r);
            }
            // A byte of the slot's line, read for the refusal check above: keys
            // without a rotation waiting for this use pay a predicted branch.
            if current && slot.flags & table::AWAITS_FIRST_USE != 0 {
                first_use(keys, &index, slot.entry, now);
            }
            Code::Valid
        }
    };
    if code != Code::Valid {
        slot.deny();
    }
    let out = Verification {
        code,
        last_used: slot.last_used(),
        entry: Some(slot.entry),
        hash,
    };
    drop(index);
    // Only the first use after a flush writes the shared flag.
    if !keys.touched.load(Ordering::Relaxed) {
        keys.touched.store(true, Ordering::Relaxed);
    }
    out
}
