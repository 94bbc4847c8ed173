//! What the in-memory index keeps of a stored key: the row every storage backend
//! yields when the keys are loaded at start, and what a change publishes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use uuid::Uuid;

use super::headers::{self, HeaderTemplate};
use super::key::{KeyRecord, Lifetime};

/// A secret's keyed hash (HMAC-SHA256 under the server secret).
pub type KeyHash = [u8; 32];

/// What the index keeps of a stored key.
#[derive(Debug)]
pub struct KeyRow {
    /// The current secret's keyed hash.
    pub hash: KeyHash,
    /// A rotated key's previous secret and the end of its grace period.
    pub previous: Option<(KeyHash, DateTime<Utc>)>,
    /// State and the times the expiry rules read.
    pub life: Lifetime,
    /// Key id.
    pub id: Uuid,
    /// Owner (shared with other rows of the same owner where the loader could).
    pub owner: Arc<str>,
    /// Name.
    pub name: Box<str>,
    /// Scopes the key was issued with (shared like `owner`).
    pub scopes: Arc<[String]>,
    /// Allowed client networks.
    pub ip_filters: Vec<IpNet>,
    /// Response headers, an admin's first.
    pub headers: Vec<HeaderTemplate>,
    /// Last use as stored.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Stretch start of the last inactivity warning.
    pub warned_for: Option<DateTime<Utc>>,
    /// The expiry sweep recorded the key's lapse.
    pub lapse_recorded: bool,
    /// A rotation waits for the current secret's first successful use.
    pub awaits_first_use: bool,
}

/// A stored hash that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("bad key hash: {0}")]
pub struct BadHash(#[from] hex::FromHexError);

/// Decode the hex form of a keyed hash.
pub fn decode_hash(h: &str) -> Result<KeyHash, BadHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out)?;
    Ok(out)
}

/// The previous hash of a rotated key and the end of its grace period, if both are set.
pub fn previous(
    hash: Option<&str>,
    until: Option<DateTime<Utc>>,
) -> Result<Option<(KeyHash, DateTime<Utc>)>, BadHash> {
    match (hash, until) {
        (Some(h), Some(until)) => Ok(Some((decode_hash(h)?, until))),
        _ => Ok(None),
    }
}

impl KeyRow {
    /// The row of a full record.
    pub fn from_record(rec: &KeyRecord) -> Result<Self, BadHash> {
        Ok(KeyRow {
            hash: decode_hash(&rec.hash)?,
            previous: previous(rec.previous_hash.as_deref(), rec.previous_valid_until)?,
            life: rec.lifetime(),
            id: rec.id,
            owner: Arc::from(rec.owner.as_str()),
            name: rec.name.as_str().into(),
            scopes: Arc::from(rec.scopes.as_slice()),
            ip_filters: rec.ip_filters.clone(),
            headers: headers::admin_first(rec.headers.clone(), &rec.admin_restrictions.headers),
            last_used_at: rec.last_used_at,
            warned_for: rec.alerting.inactivity_warned_for,
            lapse_recorded: rec.alerting.lapse_recorded_at.is_some(),
            awaits_first_use: rec.pending_rotation().is_some(),
        })
    }
}
