//! `apikeyctl backup`: a consistent snapshot of the whole store, taken while
//! changes go on ([`crate::store::Export::snapshot`]), labelled with the server
//! secret's fingerprint so a restore under another secret is refused. Each backup
//! is in the audit trail: it is a copy of everyone's keys.

use super::error::KeyError;
use super::plan::admin_only_for;
use super::types::Actor;
use super::Keys;
use crate::model::AuditEntry;
use crate::store::{Change, Snapshot, SnapshotInfo};

impl Keys {
    /// A snapshot of every record (admins only: it holds everyone's keys). Changes
    /// are not held up: the store reads one consistent view while they commit.
    pub async fn snapshot(&self, actor: &Actor) -> Result<Snapshot, KeyError> {
        admin_only_for(actor, "back up the database: it holds everyone's keys")?;
        let info = SnapshotInfo::new(self.clock.now(), &self.hasher.fingerprint());
        let snap = self.blocking(move |s| s.snapshot(info)).await?;
        let c = &snap.info.counts;
        let entry = AuditEntry::new(
            self.clock.now(),
            &actor.name,
            "backup",
            None,
            format!(
                "snapshot of {} keys, {} audit entries, {} alert jobs, {} operator messages ({} bytes)",
                c.keys, c.audit, c.jobs, c.messages, snap.bytes
            ),
        );
        // A copy that the audit trail would not show is not handed out: the
        // snapshot (an unnamed file) goes when it is dropped here.
        let writer = self.lock_writer().await;
        self.commit(
            writer,
            Change {
                audit: vec![entry],
                ..Change::default()
            },
        )
        .await?;
        Ok(snap)
    }
}
