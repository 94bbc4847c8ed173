//! Reading the stored keys at start: only what the in-memory index keeps, from a
//! record's JSON as redb stores it or PostgreSQL prints its `jsonb`.
//!
//! A cold start decodes every key record, so this is the start time. The decoder
//! threads read each record's JSON into a borrowed view that skips the fields only
//! the admin paths need (description, audit times, the notification), parse the
//! timestamps we write with a fast path, and hand the index a [`KeyRow`] with owner
//! and scopes already shared with the previous record where they are equal.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::model::headers::{self, HeaderTemplate};
use crate::model::key::{KeyState, Lifetime};
use crate::model::row::{decode_hash, previous, KeyRow};
use crate::store::error::StoreError;

/// Per-decoder memory of the last owner and scope set, so that runs of keys with the
/// same ones share a single allocation.
#[derive(Debug, Default)]
pub struct LoadCache {
    owner: Option<Arc<str>>,
    scopes: Option<Arc<[String]>>,
}

impl LoadCache {
    fn owner(&mut self, s: &str) -> Arc<str> {
        match &self.owner {
            Some(o) if **o == *s => o.clone(),
            _ => {
                let o: Arc<str> = Arc::from(s);
                self.owner = Some(o.clone());
                o
            }
        }
    }

    fn scopes(&mut self, list: &[Cow<'_, str>]) -> Arc<[String]> {
        if let Some(s) = &self.scopes {
            if s.len() == list.len() && s.iter().zip(list).all(|(a, b)| a == b) {
                return s.clone();
            }
        }
        let s: Arc<[String]> = list.iter().map(|c| c.to_string()).collect();
        self.scopes = Some(s.clone());
        s
    }
}

#[derive(Deserialize)]
struct Stored<'a> {
    state: KeyState,
    #[serde(default, deserialize_with = "opt_time")]
    expires_at: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "time")]
    created_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "opt_time")]
    last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ip_filters: Vec<IpNet>,
    #[serde(borrow)]
    scopes: Vec<Cow<'a, str>>,
    id: Uuid,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    owner: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(default, borrow)]
    previous_hash: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "opt_time")]
    previous_valid_until: Option<DateTime<Utc>>,
    #[serde(default)]
    headers: Vec<HeaderTemplate>,
    #[serde(default)]
    admin_restrictions: StoredRestrictions,
    #[serde(default, deserialize_with = "opt_time")]
    removed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    alerting: StoredAlerting,
    #[serde(default)]
    rotation: Option<StoredRotation>,
    // Stored usage counts are not read: the index counts only uses not yet written.
}

/// What loading needs of [`crate::model::AdminRestrictions`]: the order of headers.
#[derive(Deserialize, Default)]
struct StoredRestrictions {
    #[serde(default)]
    headers: Vec<HeaderTemplate>,
}

/// What loading needs of [`crate::model::Rotation`]: whether it still waits.
#[derive(Deserialize)]
struct StoredRotation {
    #[serde(default)]
    switched_at: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct StoredAlerting {
    #[serde(default)]
    lapse_recorded_at: Option<serde::de::IgnoredAny>,
    #[serde(default, deserialize_with = "opt_time")]
    inactivity_warned_for: Option<DateTime<Utc>>,
}

fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt {
        table: "keys",
        source: Box::new(e),
    }
}

/// Decode one stored record (JSON) into what the index keeps.
pub fn prepare(cache: &mut LoadCache, raw: &[u8]) -> Result<KeyRow, StoreError> {
    let s: Stored<'_> = serde_json::from_slice(raw).map_err(corrupt)?;
    Ok(KeyRow {
        hash: decode_hash(&s.hash).map_err(corrupt)?,
        previous: previous(s.previous_hash.as_deref(), s.previous_valid_until).map_err(corrupt)?,
        life: Lifetime {
            state: s.state,
            expires_at: s.expires_at,
            created_at: s.created_at,
            removed_at: s.removed_at,
        },
        id: s.id,
        owner: cache.owner(&s.owner),
        name: s.name.into_owned().into_boxed_str(),
        scopes: cache.scopes(&s.scopes),
        ip_filters: s.ip_filters,
        headers: headers::admin_first(s.headers, &s.admin_restrictions.headers),
        last_used_at: s.last_used_at,
        warned_for: s.alerting.inactivity_warned_for,
        lapse_recorded: s.alerting.lapse_recorded_at.is_some(),
        awaits_first_use: s.rotation.is_some_and(|r| r.switched_at.is_none()),
    })
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the form chrono writes for UTC times; anything
/// else goes through chrono's full RFC 3339 parser.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let fast = || -> Option<DateTime<Utc>> {
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[b.len() - 1] != b'Z'
        {
            return None;
        }
        let nanos = match &b[19..b.len() - 1] {
            [] => 0,
            [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
                digits(frac)? * 10u32.pow(9 - u32::try_from(frac.len()).ok()?)
            }
            _ => return None,
        };
        let year = i32::try_from(digits(&b[0..4])?).ok()?;
        NaiveDate::from_ymd_opt(year, digits(&b[5..7])?, digits(&b[8..10])?)?
            .and_hms_nano_opt(
                digits(&b[11..13])?,
                digits(&b[14..16])?,
                digits(&b[17..19])?,
                nanos,
            )
            .map(|t| t.and_utc())
    };
    fast().or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

fn time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = Cow::<str>::deserialize(d)?;
    parse_time(&s).ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}")))
}

fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<Cow<'_, str>>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_time(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast path reads back every time chrono writes, to the nanosecond.
        #[test]
        fn times_round_trip(secs in -2_000_000_000i64..8_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let json = serde_json::to_string(&t).unwrap();
            let text: String = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(parse_time(&text), Some(t));
        }
    }

    #[test]
    fn other_rfc3339_forms_and_garbage() {
        let t = parse_time("2026-11-23T17:00:00+01:00").unwrap();
        assert_eq!(t, parse_time("2026-11-23T16:00:00Z").unwrap());
        assert!(parse_time("2026-02-30T00:00:00Z").is_none());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn a_stored_record_loads_as_the_full_decoder_reads_it() {
        let rec: crate::model::KeyRecord = serde_json::from_value(serde_json::json!({
            "id": Uuid::now_v7(),
            "name": "caf\u{e9} \"sync\"",
            "owner": "alice",
            "scopes": ["a:b", "c\\d"],
            "hash": hex::encode([7u8; 32]),
            "previous_hash": hex::encode([8u8; 32]),
            "previous_valid_until": "2026-12-01T00:00:00.5Z",
            "kind": "generated",
            "state": "disabled",
            "created_at": "2026-11-01T10:00:00.123456789Z",
            "updated_at": "2026-11-02T10:00:00Z",
            "last_used_at": "2026-11-03T10:00:00Z",
            "expires_at": null,
            "ip_filters": ["10.0.0.0/8"],
            "headers": [
                {"name": "X-T", "template": "${key.id}"},
                {"name": "X-Tenant", "template": "acme"}
            ],
            "admin_restrictions": {
                "disabled_by": "admin",
                "headers": [{"name": "X-Tenant", "template": "acme"}]
            },
            "alerting": {"lapse_recorded_at": "2026-11-04T00:00:00Z"},
            "usage": {"verifications": 3, "denied": 1, "routes": {"/x": 3}}
        }))
        .unwrap();
        let raw = serde_json::to_vec(&rec).unwrap();
        let fast = prepare(&mut LoadCache::default(), &raw).unwrap();
        let full = KeyRow::from_record(&rec).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{full:?}"));
        // An admin's headers come first, however they were stored (review F2).
        let names: Vec<_> = fast.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["X-Tenant", "X-T"]);
    }
}
