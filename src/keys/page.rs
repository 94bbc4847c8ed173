//! Paging of the admin listings (`key list`, `audit`, `job list`): a page size with a
//! default and a ceiling, and an opaque cursor, so no request makes the daemon read
//! more than one page of a table.

use serde::Serialize;
use uuid::Uuid;

use super::error::{invalid, KeyError};
pub use crate::store::MAX_PAGE;

/// Keys per page of `key list` unless asked otherwise.
pub const DEFAULT_KEYS: usize = 1000;
/// Entries per page of `audit` unless asked otherwise.
pub const DEFAULT_AUDIT: usize = 100;
/// Jobs per page of `job list` unless asked otherwise.
pub const DEFAULT_JOBS: usize = 100;

/// Which page a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// A `next_cursor` from the previous page of the same listing.
    pub cursor: Option<String>,
    /// Page size; larger than [`MAX_PAGE`] is read as [`MAX_PAGE`].
    pub limit: Option<usize>,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Where the next page starts; `None` when this is the last.
    pub next_cursor: Option<String>,
}

/// The listings, each with its own cursor prefix so that one listing's cursor is
/// not taken for another's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Listing {
    Keys,
    Audit,
    Jobs,
}

impl Listing {
    fn prefix(self) -> char {
        match self {
            Listing::Keys => 'k',
            Listing::Audit => 'a',
            Listing::Jobs => 'j',
        }
    }
}

impl PageRequest {
    /// The page size: `default` if none was given.
    pub(crate) fn limit(&self, default: usize) -> Result<usize, KeyError> {
        match self.limit {
            None => Ok(default),
            Some(0) => Err(invalid("limit", "must be at least 1")),
            Some(n) => Ok(n.min(MAX_PAGE)),
        }
    }

    /// The cursor's bytes, checked to come from `listing` and to be `len` long (at
    /// least `len` long when `exact` is false).
    fn cursor_bytes(
        &self,
        listing: Listing,
        len: usize,
        exact: bool,
    ) -> Result<Option<Vec<u8>>, KeyError> {
        let Some(c) = self.cursor.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let bad = || {
            invalid(
                "cursor",
                format!("{c:?} is not a cursor of this listing (pass a next_cursor it returned)"),
            )
        };
        let rest = c.strip_prefix(listing.prefix()).ok_or_else(bad)?;
        let bytes = hex::decode(rest).map_err(|_| bad())?;
        if bytes.len() < len || (exact && bytes.len() != len) {
            return Err(bad());
        }
        Ok(Some(bytes))
    }

    /// An audit cursor: the `seq` of the last entry of the previous page.
    pub(crate) fn audit_cursor(&self) -> Result<Option<u64>, KeyError> {
        Ok(self
            .cursor_bytes(Listing::Audit, 8, true)?
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes))
    }

    /// A job cursor: the id of the last job of the previous page.
    pub(crate) fn job_cursor(&self) -> Result<Option<u128>, KeyError> {
        Ok(self
            .cursor_bytes(Listing::Jobs, 16, true)?
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(u128::from_be_bytes))
    }

    /// A key cursor: the order it was made for (two bytes), then the sort key and
    /// id of the last key of the previous page.
    pub(crate) fn key_cursor(&self) -> Result<Option<KeyCursor>, KeyError> {
        let Some(mut b) = self.cursor_bytes(Listing::Keys, 18, false)? else {
            return Ok(None);
        };
        let id = b.split_off(b.len() - 16);
        let key = b.split_off(2);
        let (Ok(tag), Ok(id)) = (<[u8; 2]>::try_from(b), <[u8; 16]>::try_from(id)) else {
            return Err(invalid("cursor", "is not a cursor of this listing"));
        };
        Ok(Some(KeyCursor {
            tag,
            key,
            id: Uuid::from_bytes(id),
        }))
    }
}

/// Where a page of `key list` starts: after the key with this sort key and id, in
/// the order `tag` names (see `keys::list::Sort::tag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyCursor {
    pub(crate) tag: [u8; 2],
    pub(crate) key: Vec<u8>,
    pub(crate) id: Uuid,
}

pub(crate) fn audit_cursor(seq: u64) -> String {
    format!(
        "{}{}",
        Listing::Audit.prefix(),
        hex::encode(seq.to_be_bytes())
    )
}

pub(crate) fn job_cursor(id: u128) -> String {
    format!(
        "{}{}",
        Listing::Jobs.prefix(),
        hex::encode(id.to_be_bytes())
    )
}

pub(crate) fn key_cursor(c: &KeyCursor) -> String {
    let mut b = Vec::with_capacity(2 + c.key.len() + 16);
    b.extend_from_slice(&c.tag);
    b.extend_from_slice(&c.key);
    b.extend_from_slice(c.id.as_bytes());
    format!("{}{}", Listing::Keys.prefix(), hex::encode(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(c: &str) -> PageRequest {
        PageRequest {
            cursor: Some(c.to_owned()),
            limit: None,
        }
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_listing() {
        assert_eq!(req(&audit_cursor(42)).audit_cursor().unwrap(), Some(42));
        let id = Uuid::now_v7();
        assert_eq!(
            req(&job_cursor(id.as_u128())).job_cursor().unwrap(),
            Some(id.as_u128())
        );
        let at = KeyCursor {
            tag: [5, 1],
            key: b"sort key".to_vec(),
            id,
        };
        assert_eq!(
            req(&key_cursor(&at)).key_cursor().unwrap(),
            Some(at.clone())
        );
        let bare = KeyCursor {
            key: Vec::new(),
            ..at
        };
        assert_eq!(req(&key_cursor(&bare)).key_cursor().unwrap(), Some(bare));
        assert!(req(&audit_cursor(42)).job_cursor().is_err());
        assert!(req(&job_cursor(1)).key_cursor().is_err());
        assert!(req("k00").key_cursor().is_err());
        for bad in ["", "a", "a12", "azz00000000000000", "x0000000000000001"] {
            assert!(req(bad).audit_cursor().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_have_a_default_a_floor_and_a_ceiling() {
        let p = |limit| PageRequest {
            cursor: None,
            limit,
        };
        assert_eq!(p(None).limit(7).unwrap(), 7);
        assert!(p(Some(0)).limit(7).is_err());
        assert_eq!(p(Some(MAX_PAGE * 10)).limit(7).unwrap(), MAX_PAGE);
    }
}
