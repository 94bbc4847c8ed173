//! Bulk seeding for benchmarks and load tests: keys written straight into a store
//! no daemon holds open, past the rules.

use chrono::{DateTime, Utc};

use super::secret::{self, KeyHasher, Secret};
use crate::model::{AuditEntry, KeyKind, KeyRecord};
use crate::store::{Change, Storage, StoreError};

/// Write `count` keys for `owner` straight into a store that no daemon holds open, in
/// batched transactions (benchmarks and load tests). Returns one of the secrets (none
/// when `count` is 0). Nothing is audited per key; one audit entry records the whole
/// seeding.
pub fn seed(
    store: &dyn Storage,
    hasher: &KeyHasher,
    owner: &str,
    scopes: &[String],
    count: usize,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Option<Secret>, StoreError> {
    const BATCH: usize = 20_000;
    let mut sample = None;
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let mut put_keys = Vec::with_capacity(n);
        for i in 0..n {
            let secret = secret::generate();
            let hash = hasher.hash(secret.expose());
            if sample.is_none() {
                sample = Some(secret);
            }
            let name = format!("seed-{}", done + i);
            let mut rec = KeyRecord::new(owner, &name, &hash, KeyKind::Generated, now);
            rec.scopes = scopes.to_vec();
            rec.expires_at = expires_at;
            put_keys.push(rec);
        }
        let audit = if done == 0 {
            vec![AuditEntry::new(
                now,
                "seed",
                "seed",
                None,
                format!("{count} keys for {owner}"),
            )]
        } else {
            Vec::new()
        };
        store.commit(Change {
            put_keys,
            audit,
            ..Change::default()
        })?;
        done += n;
    }
    Ok(sample)
}
