//! What a key listing asks for ([`KeyQuery`]: filters and an order, as the admin API
//! takes them) and what it becomes once checked ([`Plan`]): which keys pass, and
//! each key's sort key, which a cursor carries so that pages of any order neither
//! skip nor repeat a key.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::{invalid, KeyError};
use super::live::Live;
use super::status::{counted_as, Lapse, StatusCounts};
use super::types::Actor;
use crate::config::{Period, Policy};
use crate::model::{KeyRecord, KeyState, Status};

/// Filters and order of a key listing, as given (the admin API's query parameters).
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Only this user's keys.
    pub owner: Option<String>,
    /// Include removed keys (also implied by asking for status `removed`).
    pub include_removed: bool,
    /// Comma-separated statuses; a key passes with any of them.
    pub status: Option<String>,
    /// ISO 8601 period: only keys whose effective expiry (the hard limit or the
    /// inactivity deadline, whichever is sooner) falls within it from now.
    pub expiring_within: Option<String>,
    /// Case-insensitive text to find in the name, description, owner or id.
    pub search: Option<String>,
    /// Column to sort by, `-` first for descending; default `created`.
    pub sort: Option<String>,
    /// Start after this key: the id of the last key of the previous page (wherever
    /// its sort key puts it now), or the previous page's `next_cursor`.
    pub after: Option<String>,
}

/// The columns a key listing sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Id,
    Name,
    Description,
    Owner,
    Status,
    Created,
    Changed,
    LastUsed,
    Expires,
    Effective,
    Notification,
}

impl Column {
    /// Every column with the names it is asked for by: the table's title first,
    /// then the field of the JSON answer.
    const NAMES: [(Column, &'static [&'static str]); 11] = [
        (Column::Id, &["id"]),
        (Column::Name, &["name"]),
        (Column::Description, &["description"]),
        (Column::Owner, &["owner"]),
        (Column::Status, &["status"]),
        (Column::Created, &["created", "created_at"]),
        (Column::Changed, &["changed", "updated_at"]),
        (Column::LastUsed, &["last_used", "last_used_at"]),
        (Column::Expires, &["expires", "expires_at"]),
        (
            Column::Effective,
            &["effective", "effective_expires_at", "details"],
        ),
        (Column::Notification, &["notification", "notify_at"]),
    ];

    fn parse(name: &str) -> Option<Column> {
        let name = name.trim().to_ascii_lowercase().replace('-', "_");
        Self::NAMES
            .iter()
            .find(|(_, names)| names.contains(&name.as_str()))
            .map(|(c, _)| *c)
    }

    fn number(self) -> u8 {
        // The position in NAMES: what a cursor records of its column.
        Self::NAMES
            .iter()
            .position(|(c, _)| *c == self)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(0)
    }

    fn title(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .and_then(|(_, names)| names.first())
            .copied()
            .unwrap_or("created")
    }
}

/// A listing's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sort {
    pub(crate) column: Column,
    pub(crate) desc: bool,
}

impl Sort {
    fn parse(text: Option<&str>) -> Result<Sort, KeyError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Sort {
                column: Column::Created,
                desc: false,
            });
        };
        let (name, desc) = match text.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let column = Column::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Column::NAMES.iter().map(|(_, n)| n[0]).collect();
            invalid(
                "sort",
                format!(
                    "{text:?} is not a column to sort by (one of {}; a leading '-' sorts descending)",
                    known.join(", ")
                ),
            )
        })?;
        Ok(Sort { column, desc })
    }

    /// The two bytes a cursor starts with, so that a cursor of one order is not
    /// taken for another's.
    pub(crate) fn tag(self) -> [u8; 2] {
        [self.column.number(), u8::from(self.desc)]
    }

    fn describe(self) -> String {
        format!(
            "{}{}",
            if self.desc { "-" } else { "" },
            self.column.title()
        )
    }

    pub(crate) fn check_tag(self, tag: [u8; 2]) -> Result<(), KeyError> {
        if tag == self.tag() {
            return Ok(());
        }
        Err(invalid(
            "cursor",
            format!(
                "belongs to another order than sort={} (pass the same sort as for the previous page)",
                self.describe()
            ),
        ))
    }
}

/// A checked [`KeyQuery`] at one moment: what [`crate::keys::Keys::list_page`] applies.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) owner: Option<String>,
    include_removed: bool,
    /// Statuses wanted; empty = any.
    statuses: Vec<&'static str>,
    /// Effective expiry after `now` and at most this.
    expiring_by: Option<DateTime<Utc>>,
    /// Lower-case text to find.
    search: Option<String>,
    pub(crate) sort: Sort,
    pub(crate) after: Option<String>,
    now: DateTime<Utc>,
}

impl KeyQuery {
    /// Check the query for `actor` at `now`: a non-admin lists only their own keys.
    pub(crate) fn plan(&self, actor: &Actor, now: DateTime<Utc>) -> Result<Plan, KeyError> {
        let owner = self
            .owner
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty());
        if let Some(u) = owner {
            if !actor.admin && u != actor.name {
                return Err(KeyError::Forbidden(format!(
                    "{} may only list their own keys (not those of {u:?})",
                    actor.name
                )));
            }
        }
        let owner = owner
            .map(str::to_owned)
            .or_else(|| (!actor.admin).then(|| actor.name.clone()));
        let mut statuses = Vec::new();
        for s in self.status.iter().flat_map(|s| s.split(',')) {
            let s = s.trim().to_ascii_lowercase();
            if s.is_empty() {
                continue;
            }
            let known = StatusCounts::ORDER
                .iter()
                .find(|k| **k == s)
                .ok_or_else(|| {
                    invalid(
                        "status",
                        format!(
                            "{s:?} is not a key status (one of {})",
                            StatusCounts::ORDER.join(", ")
                        ),
                    )
                })?;
            statuses.push(*known);
        }
        let expiring_by = match self.expiring_within.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(p) => {
                let period = Period::parse(p).map_err(|e| {
                    invalid(
                        "expiring_within",
                        format!("{e} (an ISO 8601 period such as p30d)"),
                    )
                })?;
                Some(period.add_to(now).ok_or_else(|| {
                    invalid("expiring_within", format!("{p:?} reaches past year 9999"))
                })?)
            }
        };
        Ok(Plan {
            owner,
            include_removed: self.include_removed || statuses.contains(&"removed"),
            statuses,
            expiring_by,
            search: self
                .search
                .as_deref()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty()),
            sort: Sort::parse(self.sort.as_deref())?,
            after: self
                .after
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            now,
        })
    }
}

/// How one key stands in the index now: what the filters and the in-memory sort
/// keys read.
pub(crate) struct Standing<'a> {
    pub(crate) live: &'a Live,
    pub(crate) last_used: Option<DateTime<Utc>>,
}

/// Whether a key passes the in-memory part of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    No,
    Yes,
    /// Passes so far; the search text must still be found in its description.
    IfDescriptionMatches,
}

impl Plan {
    /// Whether the key passes what the index can tell: owner, status, expiry and
    /// the search in its name, owner and id.
    pub(crate) fn admits(&self, k: &Standing<'_>, policy: &Policy) -> Pass {
        let l = k.live;
        if self.owner.as_deref().is_some_and(|o| *l.owner != *o)
            || (!self.include_removed && l.life.state == KeyState::Removed)
        {
            return Pass::No;
        }
        if !self.statuses.is_empty() && !self.statuses.contains(&self.status(k, policy)) {
            return Pass::No;
        }
        if let Some(by) = self.expiring_by {
            let within = l.life.state != KeyState::Removed
                && l.life
                    .effective_expiry(policy, k.last_used)
                    .is_some_and(|(at, _)| at > self.now && at <= by);
            if !within {
                return Pass::No;
            }
        }
        match &self.search {
            None => Pass::Yes,
            Some(text) => {
                let found = l.name.to_lowercase().contains(text.as_str())
                    || l.owner.to_lowercase().contains(text.as_str())
                    || l.id.to_string().contains(text.as_str());
                if found {
                    Pass::Yes
                } else {
                    Pass::IfDescriptionMatches
                }
            }
        }
    }

    /// Whether a record's description holds the search text.
    pub(crate) fn description_matches(&self, rec: &KeyRecord) -> bool {
        self.search
            .as_deref()
            .is_none_or(|t| rec.description.to_lowercase().contains(t))
    }

    /// The status a key is shown with (as [`super::types::view_of`] gives it).
    fn status(&self, k: &Standing<'_>, policy: &Policy) -> &'static str {
        match k.live.life.status(policy, k.last_used, self.now) {
            Status::Active => counted_as(KeyState::Enabled, Lapse::NONE, k.live.refusal()),
            s => s.as_str(),
        }
    }

    /// The key's sort key from the index; `None` for a column only its record has.
    pub(crate) fn live_key(&self, k: &Standing<'_>, policy: &Policy) -> Option<Vec<u8>> {
        let l = k.live;
        Some(match self.sort.column {
            Column::Id => Vec::new(),
            Column::Name => text_key(&l.name),
            Column::Owner => text_key(&l.owner),
            Column::Status => text_key(self.status(k, policy)),
            Column::Created => time_key(Some(l.life.created_at), Missing::First),
            Column::LastUsed => time_key(k.last_used, Missing::First),
            Column::Expires => time_key(l.life.expires_at, Missing::Last),
            Column::Effective => time_key(
                l.life.effective_expiry(policy, k.last_used).map(|e| e.0),
                Missing::Last,
            ),
            Column::Description | Column::Changed | Column::Notification => return None,
        })
    }

    /// The key's sort key from its record, for the columns only a record has.
    pub(crate) fn record_key(&self, rec: &KeyRecord) -> Vec<u8> {
        match self.sort.column {
            Column::Description => text_key(&rec.description),
            Column::Changed => time_key(Some(rec.updated_at), Missing::First),
            Column::Notification => time_key(
                rec.alerting.notification.as_ref().map(|n| n.at),
                Missing::Last,
            ),
            _ => Vec::new(),
        }
    }
}

/// Where keys without a time sort: a key never used is the least recently used;
/// one that never expires, or has no notification, comes after every time.
#[derive(Debug, Clone, Copy)]
enum Missing {
    First,
    Last,
}

/// A time as bytes that compare as the times do.
fn time_key(t: Option<DateTime<Utc>>, missing: Missing) -> Vec<u8> {
    let Some(t) = t else {
        return vec![match missing {
            Missing::First => 0,
            Missing::Last => 2,
        }];
    };
    let mut b = Vec::with_capacity(13);
    b.push(1);
    // Flipping the sign bit makes the two's complement order the unsigned one.
    b.extend_from_slice(
        &(u64::from_be_bytes(t.timestamp().to_be_bytes()) ^ (1 << 63)).to_be_bytes(),
    );
    b.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
    b
}

/// Text as bytes that compare case-insensitively (texts that differ only in case
/// are ordered by id, as equal ones are).
fn text_key(s: &str) -> Vec<u8> {
    s.to_lowercase().into_bytes()
}

/// A key's place in a listing: its sort key, then its id (unique, so the order is
/// total and a cursor is exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) key: Vec<u8>,
    pub(crate) id: Uuid,
    desc: bool,
}

impl Place {
    pub(crate) fn new(sort: Sort, key: Vec<u8>, id: Uuid) -> Place {
        Place {
            key,
            id,
            desc: sort.desc,
        }
    }
}

impl Ord for Place {
    /// The listing's order: ascending or descending as asked.
    fn cmp(&self, other: &Self) -> Ordering {
        let o = (&self.key, self.id).cmp(&(&other.key, other.id));
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }
}

impl PartialOrd for Place {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The first `n` places offered after `start`, in order, holding no more than `n`
/// at a time (a listing of a million keys keeps one page).
pub(crate) struct First {
    n: usize,
    start: Option<Place>,
    heap: BinaryHeap<Place>,
}

impl First {
    pub(crate) fn new(n: usize, start: Option<Place>) -> First {
        First {
            n,
            start,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    pub(crate) fn offer(&mut self, p: Place) {
        if self.start.as_ref().is_some_and(|s| p <= *s) {
            return;
        }
        if self.heap.len() < self.n {
            self.heap.push(p);
        } else if self.heap.peek().is_some_and(|top| p < *top) {
            self.heap.pop();
            self.heap.push(p);
        }
    }

    pub(crate) fn into_sorted(self) -> Vec<Place> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sort_keys_compare_as_their_values() {
        let t = |s| Some(Utc.timestamp_opt(s, 0).unwrap());
        let before_1970 = time_key(t(-5), Missing::First);
        assert!(time_key(None, Missing::First) < before_1970);
        assert!(before_1970 < time_key(t(0), Missing::First));
        assert!(time_key(t(0), Missing::Last) < time_key(t(1), Missing::Last));
        assert!(time_key(t(i64::from(i32::MAX)), Missing::Last) < time_key(None, Missing::Last));
        let mut names = ["beta", "Alpha", "al", "b", "Äbc", "zeta"];
        names.sort_by_key(|n| text_key(n));
        assert_eq!(names, ["al", "Alpha", "b", "beta", "zeta", "Äbc"]);
    }

    #[test]
    fn sort_names_and_direction() {
        let s = Sort::parse(Some("-last-used")).unwrap();
        assert_eq!((s.column, s.desc), (Column::LastUsed, true));
        assert_eq!(
            Sort::parse(Some("EXPIRES_AT")).unwrap().column,
            Column::Expires
        );
        assert_eq!(Sort::parse(None).unwrap().column, Column::Created);
        let e = Sort::parse(Some("colour")).unwrap_err().to_string();
        assert!(e.starts_with("sort: \"colour\""), "{e}");
        assert!(Sort::parse(Some("name"))
            .unwrap()
            .check_tag([0, 0])
            .is_err());
    }

    #[test]
    fn first_keeps_the_first_n_after_the_start() {
        let sort = Sort {
            column: Column::Id,
            desc: true,
        };
        let ids: Vec<Uuid> = (1..=9u128).map(Uuid::from_u128).collect();
        let start = Some(Place::new(sort, Vec::new(), ids[6]));
        let mut first = First::new(3, start);
        for id in &ids {
            first.offer(Place::new(sort, Vec::new(), *id));
        }
        let got: Vec<Uuid> = first.into_sorted().into_iter().map(|p| p.id).collect();
        assert_eq!(got, [ids[5], ids[4], ids[3]]);
    }
}
