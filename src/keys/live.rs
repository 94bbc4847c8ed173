//! A key as the in-memory index holds it ([`Live`]), besides its verification slot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::table;
use crate::model::headers::{self, HeaderTemplate};
use crate::model::{rfc3339, KeyHash, Lifetime};

/// What verification needs beyond the common case, boxed so that keys without IP
/// filters, headers, a rotation grace period or narrowed effective scopes do not pay
/// for the empty fields.
#[derive(Debug, Default, Clone)]
pub(super) struct Extra {
    pub(super) ip_filters: Vec<ipnet::IpNet>,
    pub(super) headers: Vec<HeaderTemplate>,
    pub(super) previous: Option<(KeyHash, DateTime<Utc>)>,
    /// The key's own scopes, when its owner's groups no longer grant all of them.
    pub(super) own_scopes: Option<Arc<[String]>>,
    /// While a rotation waits for the current secret's first use: whether a
    /// verification has seen that use and handed it on (set once, by
    /// compare-exchange, so racing first uses hand it on once). Shared by the
    /// entries a reload makes of the same record.
    pub(super) first_use: Option<Arc<AtomicBool>>,
}

impl Extra {
    pub(super) fn is_empty(&self) -> bool {
        self.ip_filters.is_empty()
            && self.headers.is_empty()
            && self.previous.is_none()
            && self.own_scopes.is_none()
            && self.first_use.is_none()
    }
}

/// A key as the in-memory index holds it besides its verification slot
/// ([`table::Slot`], which has the usage counters): what forward-auth answers with
/// and what the maintenance sweeps read. The full record (description, audit times,
/// notification, persisted counters) stays in redb and is read on demand by the admin
/// paths ([`Keys::record`]).
#[derive(Debug)]
pub struct Live {
    pub(super) hash: KeyHash,
    /// State and the times the expiry rules read.
    pub life: Lifetime,
    /// Effective scopes: those of its own that its owner's groups grant now (none if
    /// the owner is not configured). Shared by every key with the same set.
    pub scopes: Arc<[String]>,
    /// Key id.
    pub id: Uuid,
    /// Owner's user name, shared by all their keys.
    pub owner: Arc<str>,
    /// Name.
    pub name: Box<str>,
    /// Last use as stored (the slot has the newest; removed keys have no slot).
    pub(super) stored_last_used: Option<DateTime<Utc>>,
    /// Stretch start of the last inactivity warning (maintenance).
    pub(super) warned_for: Option<DateTime<Utc>>,
    /// When (unix seconds) usage was last written.
    pub(super) persisted_at: AtomicI64,
    /// Successful verifications per route prefix; allocated on the first one. Boxed:
    /// 8 bytes for the many keys never seen on a route instead of an empty map's 24.
    #[allow(clippy::box_collection)]
    pub(super) routes: parking_lot::Mutex<Option<Box<BTreeMap<String, u64>>>>,
    pub(super) extra: Option<Box<Extra>>,
    /// Position in the index's entry list.
    pub(super) entry: u32,
    /// Number of its scope set (what its slot holds).
    pub(super) scope_set: u16,
    /// The expiry sweep recorded the lapse (maintenance).
    pub(super) lapse_recorded: bool,
    /// The owner is not a configured user: verification refuses the key.
    pub(super) owner_unknown: bool,
}

impl Live {
    /// Allowed client networks; empty = any.
    pub fn ip_filters(&self) -> &[ipnet::IpNet] {
        self.extra.as_deref().map_or(&[], |e| &e.ip_filters)
    }

    /// Response header templates.
    pub fn headers(&self) -> &[HeaderTemplate] {
        self.extra.as_deref().map_or(&[], |e| &e.headers)
    }

    pub(super) fn previous(&self) -> Option<(KeyHash, DateTime<Utc>)> {
        self.extra.as_deref().and_then(|e| e.previous)
    }

    /// Whether a rotation waits for the current secret's first use.
    pub(super) fn awaits_first_use(&self) -> bool {
        self.extra.as_deref().is_some_and(|e| e.first_use.is_some())
    }

    /// Claim the first use of the current secret: `true` for the one caller that
    /// sees it first (of this record; a failed hand-on gives it back, see
    /// [`Live::unclaim_first_use`]).
    pub(super) fn claim_first_use(&self) -> bool {
        self.extra
            .as_deref()
            .and_then(|e| e.first_use.as_deref())
            .is_some_and(|f| {
                // Until the switch is published every use of the key comes here:
                // a load, not a compare-exchange, keeps the line shared.
                !f.load(Ordering::Relaxed)
                    && f.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
    }

    /// Let the next use of the current secret be handed on again (recording
    /// this one failed).
    pub(super) fn unclaim_first_use(&self) {
        if let Some(f) = self.extra.as_deref().and_then(|e| e.first_use.as_deref()) {
            f.store(false, Ordering::Release);
        }
    }

    /// The scopes the key was issued with (or narrowed to), whatever its owner holds.
    pub fn own_scopes(&self) -> &Arc<[String]> {
        self.extra
            .as_deref()
            .and_then(|e| e.own_scopes.as_ref())
            .unwrap_or(&self.scopes)
    }

    /// Whether the key's owner is no longer configured (the key is refused).
    pub fn owner_unknown(&self) -> bool {
        self.owner_unknown
    }

    /// Why verification refuses the key whatever is asked of it: its owner is not
    /// configured ([`table::OWNER_UNKNOWN`]), or the owner's groups grant none of
    /// the scopes it was issued with ([`table::NO_SCOPES`]); 0 if neither.
    pub(super) fn refusal(&self) -> u8 {
        refusal(self.owner_unknown, &self.scopes, self.own_scopes())
    }

    /// The flags of the key's verification slot ([`table::Slot::flags`]).
    pub(super) fn slot_flags(&self) -> u8 {
        let mut flags = self.refusal();
        if !self.ip_filters().is_empty() {
            flags |= table::HAS_IP_FILTERS;
        }
        if self.awaits_first_use() {
            flags |= table::AWAITS_FIRST_USE;
        }
        flags
    }

    /// The same key with other effective scopes (a reload changed what its owner
    /// holds). Called under the index's write lock, so no verification is counting
    /// routes on the old entry while they move over.
    pub(super) fn regranted(&self, eff: &Effective, own: Arc<[String]>) -> Live {
        let mut extra = self.extra.as_deref().cloned().unwrap_or_default();
        extra.own_scopes = (!Arc::ptr_eq(&own, &eff.scopes)).then_some(own);
        Live {
            hash: self.hash,
            life: self.life,
            scopes: eff.scopes.clone(),
            id: self.id,
            owner: self.owner.clone(),
            name: self.name.clone(),
            stored_last_used: self.stored_last_used,
            warned_for: self.warned_for,
            persisted_at: AtomicI64::new(self.persisted_at.load(Ordering::Relaxed)),
            routes: parking_lot::Mutex::new(self.routes.lock().take()),
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
            entry: self.entry,
            scope_set: eff.number,
            lapse_recorded: self.lapse_recorded,
            owner_unknown: eff.owner_unknown,
        }
    }

    /// Hard expiry.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.life.expires_at
    }

    /// The key's response headers with their templates filled; `id` is the key's id
    /// as the caller has formatted it. Nothing is formatted for a key without any.
    pub fn rendered_headers(&self, id: &str) -> Vec<(&HeaderTemplate, String)> {
        let templates = self.headers();
        if templates.is_empty() {
            return Vec::new();
        }
        let expires = self.expires_at().map(rfc3339);
        let values = headers::Values {
            id,
            name: &self.name,
            owner: &self.owner,
            expires_at: expires.as_deref().unwrap_or(""),
        };
        // Validation refuses reserved names and `_`; a key stored before either was
        // refused must not get one into an answer.
        templates
            .iter()
            .filter(|t| headers::sendable(&t.name))
            .map(|t| (t, t.render(&values)))
            .collect()
    }

    pub(super) fn count_route(&self, route: &str) {
        // Allocate the route's name only the first time this key is seen on it.
        let mut routes = self.routes.lock();
        let routes = routes.get_or_insert_with(Default::default);
        match routes.get_mut(route) {
            Some(n) => *n += 1,
            None => {
                routes.insert(route.to_owned(), 1);
            }
        }
    }

    pub(super) fn route_counts(&self) -> BTreeMap<String, u64> {
        self.routes.lock().as_deref().cloned().unwrap_or_default()
    }

    /// Take the per-route counts (the flush adds them to the stored ones).
    pub(super) fn take_route_counts(&self) -> BTreeMap<String, u64> {
        self.routes.lock().take().map(|b| *b).unwrap_or_default()
    }

    /// Give back per-route counts taken for a write that failed.
    pub(super) fn restore_route_counts(&self, taken: BTreeMap<String, u64>) {
        if taken.is_empty() {
            return;
        }
        let mut routes = self.routes.lock();
        let routes = routes.get_or_insert_with(Default::default);
        for (route, n) in taken {
            *routes.entry(route).or_default() += n;
        }
    }
}

/// A key's effective scopes and whether its owner is configured.
#[derive(Debug, Clone)]
pub(super) struct Effective {
    pub(super) scopes: Arc<[String]>,
    pub(super) number: u16,
    pub(super) owner_unknown: bool,
}

/// The refusal flags ([`table::REFUSED`]) of a key with effective scopes `scopes`
/// and its own set `own`: a key that held scopes and now holds none is refused, or
/// every route-less check would admit a user whose groups allow no API keys.
pub(super) fn refusal(owner_unknown: bool, scopes: &[String], own: &[String]) -> u8 {
    if owner_unknown {
        table::OWNER_UNKNOWN
    } else if scopes.is_empty() && !own.is_empty() {
        table::NO_SCOPES
    } else {
        0
    }
}
