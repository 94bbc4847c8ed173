//! `apikeyctl backup`: a consistent snapshot of the whole store, taken while
//! changes go on ([`crate::store::Export::snapshot`]), labelled with the server
//! secret's fingerprint so a restore under another secret is refused.

use super::error::KeyError;
use super::plan::admin_only_for;
use super::types::Actor;
use super::Keys;
use crate::store::{Snapshot, SnapshotInfo};

impl Keys {
    /// A snapshot of every record (admins only: it holds everyone's keys). Changes
    /// are not held up: the store reads one consistent view while they commit.
    pub async fn snapshot(&self, actor: &Actor) -> Result<Snapshot, KeyError> {
        admin_only_for(actor, "back up the database: it holds everyone's keys")?;
        let info = SnapshotInfo::new(self.clock.now(), &self.hasher.fingerprint());
        self.blocking(move |s| s.snapshot(info)).await
    }
}
