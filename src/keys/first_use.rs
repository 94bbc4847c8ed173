//! First uses of the secrets rotations wait for (`key rotate --until-used`), as
//! verification hands them on: a queue the rotation side's background task
//! drains ([`super::rotation`]).

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use super::live::Live;
use crate::model::KeyHash;

/// A first successful use of a secret a rotation waits for, not yet committed.
#[derive(Debug, Clone, Copy)]
pub(super) struct FirstUse {
    pub(super) id: Uuid,
    pub(super) hash: KeyHash,
    pub(super) at: DateTime<Utc>,
}

/// First uses seen by verification, waiting for the background task.
#[derive(Debug, Default)]
pub(super) struct FirstUses {
    queue: parking_lot::Mutex<Vec<FirstUse>>,
    pub(super) wake: Notify,
}

impl FirstUses {
    /// Queue the first use of `live`'s current secret at `at` (once per claim,
    /// see [`Live::claim_first_use`]).
    pub(super) fn first_used(&self, live: &Live, at: DateTime<Utc>) {
        self.queue.lock().push(FirstUse {
            id: live.id,
            hash: live.hash,
            at,
        });
        self.wake.notify_one();
    }

    pub(super) fn take(&self) -> Vec<FirstUse> {
        std::mem::take(&mut *self.queue.lock())
    }
}
