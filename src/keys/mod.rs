//! Keys: the model, the secret format, the policy rules and verification.
//!
//! [`Keys`] owns the in-memory index (keyed hash → key) that verification reads
//! without touching redb, and serialises every change through one writer: validate
//! under the writer lock, commit to the store in `spawn_blocking`, then publish the
//! new record to the index. Last-used times live in atomics and are flushed in
//! batches, at most once a minute per key.

pub mod headers;
pub mod ipfilter;
mod load;
mod maintenance;
pub mod model;
mod notify;
pub mod page;
pub mod secret;
mod table;

use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::{valid_scope, Directory, Period, Policy};
use crate::store::AuditFilter;
use crate::store::{Batch, Retire, Store, StoreError, UsageUpdate};
use headers::HeaderTemplate;
use load::Loaded;
use model::{
    rfc3339, AdminRestrictions, AuditEntry, Code, KeyKind, KeyRecord, KeyState, Lifetime, Limit,
    RetiredSecret, Status, UsageCounts, UserSecret,
};
use secret::{KeyHash, KeyHasher, Secret, Shape};
use table::{Hit, Slot, SlotInit, SlotUsage, Table, NEVER};

pub use notify::{NotifyRequest, Outcome};
pub use page::{Page, PageRequest};

/// How long a last-used time may sit in memory before it is written (per key).
pub const LAST_USED_PERSIST_INTERVAL: Duration = Duration::seconds(60);
const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 1000;
const MAX_SCOPES: usize = 64;
const MAX_IP_FILTERS: usize = 64;
const MAX_HEADERS: usize = 32;
/// The shortest user-defined token any configuration accepts (MinImportedSecretLength
/// may have been lower when a token was imported than it is now).
const MIN_GENERIC_SECRET: usize = 16;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Configured user name, or `root` for an unmapped root.
    pub name: String,
    /// Manages everyone's keys.
    pub admin: bool,
}

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The request is wrong; `field` says which part.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field (`name`, `expires_at`, `ip`, ...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Not allowed for this actor.
    #[error("{0}")]
    Forbidden(String),
    /// No such key (or not visible to this actor).
    #[error("no key with id {0}")]
    NotFound(String),
    /// Conflicts with existing state (duplicate name, expired key, ...).
    #[error("{0}")]
    Conflict(String),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("internal error: {0}")]
    Internal(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field,
        message: message.into(),
    }
}

/// Reloadable rules: policy plus users and groups.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[ApiKey]`.
    pub policy: Policy,
    /// Users and groups.
    pub directory: Directory,
}

/// Bytes the index holds per key, inline: its verification slot and its entry
/// (without the entry's heap parts: its name, and IP filters or headers if any).
pub fn index_bytes_per_key() -> (usize, usize) {
    (std::mem::size_of::<Slot>(), std::mem::size_of::<Live>())
}

/// What verification needs beyond the common case, boxed so that keys without IP
/// filters, headers, a rotation grace period or narrowed effective scopes do not pay
/// for the empty fields.
#[derive(Debug, Default, Clone)]
struct Extra {
    ip_filters: Vec<ipnet::IpNet>,
    headers: Vec<HeaderTemplate>,
    previous: Option<(KeyHash, DateTime<Utc>)>,
    /// The key's own scopes, when its owner's groups no longer grant all of them.
    own_scopes: Option<Arc<[String]>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.ip_filters.is_empty()
            && self.headers.is_empty()
            && self.previous.is_none()
            && self.own_scopes.is_none()
    }
}

/// A key as the in-memory index holds it besides its verification slot
/// ([`table::Slot`], which has the usage counters): what forward-auth answers with
/// and what the maintenance sweeps read. The full record (description, audit times,
/// notification, persisted counters) stays in redb and is read on demand by the admin
/// paths ([`Keys::record`]).
#[derive(Debug)]
pub struct Live {
    hash: KeyHash,
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
    stored_last_used: Option<DateTime<Utc>>,
    /// Stretch start of the last inactivity warning (maintenance).
    warned_for: Option<DateTime<Utc>>,
    /// When (unix seconds) usage was last written.
    persisted_at: AtomicI64,
    /// Successful verifications per route prefix; allocated on the first one. Boxed:
    /// 8 bytes for the many keys never seen on a route instead of an empty map's 24.
    #[allow(clippy::box_collection)]
    routes: parking_lot::Mutex<Option<Box<BTreeMap<String, u64>>>>,
    extra: Option<Box<Extra>>,
    /// Position in the index's entry list.
    entry: u32,
    /// Number of its scope set (what its slot holds).
    scope_set: u16,
    /// The expiry sweep recorded the lapse (maintenance).
    lapse_recorded: bool,
    /// The owner is not a configured user: verification refuses the key.
    owner_unknown: bool,
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

    fn previous(&self) -> Option<(KeyHash, DateTime<Utc>)> {
        self.extra.as_deref().and_then(|e| e.previous)
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
    fn refusal(&self) -> u8 {
        refusal(self.owner_unknown, &self.scopes, self.own_scopes())
    }

    /// The same key with other effective scopes (a reload changed what its owner
    /// holds). Called under the index's write lock, so no verification is counting
    /// routes on the old entry while they move over.
    fn regranted(&self, eff: &Effective, own: Arc<[String]>) -> Live {
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

    fn count_route(&self, route: &str) {
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

    fn route_counts(&self) -> BTreeMap<String, u64> {
        self.routes.lock().as_deref().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Verification slots by keyed hash.
    table: Table,
    /// Every key (all states), by entry number; `None` = free.
    entries: Vec<Option<Arc<Live>>>,
    free: Vec<u32>,
    by_id: HashMap<Uuid, u32>,
    /// Hash of (owner, lower-case name) of every key not removed → its entry: the
    /// uniqueness check without a scan of all keys, at ~13 bytes per key.
    names: HashMap<u64, u32>,
    /// Interned owners and scope sets: a few distinct values shared by many keys.
    owners: HashSet<Arc<str>>,
    scope_sets: Vec<Arc<[String]>>,
    scope_numbers: HashMap<Arc<[String]>, u16>,
    last_owner: Option<Arc<str>>,
    last_scope_set: Option<(Arc<[String]>, u16)>,
    /// Keys not removed per owner: `[ApiKey] MaxKeysPerUser` without a scan.
    owned: HashMap<Arc<str>, u32>,
    /// The scopes each configured user's groups grant now; an owner missing here is
    /// not configured. Replaced on reload ([`Index::regrant`]).
    grants: HashMap<String, std::collections::BTreeSet<String>>,
    /// Effective scopes per (interned owner, interned own scope set), by address:
    /// a few combinations shared by many keys. Holds both `Arc`s, so an address
    /// cannot be reused while its entry is here. Cleared when the grants change.
    effective_cache: HashMap<(usize, usize), Pinned>,
    /// Keys per status for `/metrics`, kept as keys change and as the expiry sweep
    /// finds them expired or inactive, so a scrape reads five numbers (see
    /// [`StatusCounts`]).
    counts: StatusCounts,
    /// By entry number, the time-driven status ([`Lapse`]) the last expiry sweep
    /// saw: what an enabled key is counted under. Beside the entries, not in them,
    /// so the sweep reads a byte per key instead of visiting every entry; a changed
    /// key keeps its entry number, and so its lapse until the next sweep.
    swept: Vec<AtomicU8>,
}

/// A cached [`Effective`] with the owner and own-set `Arc`s whose addresses key it.
type Pinned = (Arc<str>, Arc<[String]>, Effective);

/// A key's effective scopes and whether its owner is configured.
#[derive(Debug, Clone)]
struct Effective {
    scopes: Arc<[String]>,
    number: u16,
    owner_unknown: bool,
}

/// What a reload did to the keys (removed keys not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regranted {
    /// Keys whose owner is still configured but no longer holds some of the scopes
    /// the key had until now.
    pub lost_scopes: usize,
    /// Keys refused from now on: their owner is no longer configured.
    pub refused: usize,
    /// Keys that got scopes back, or whose owner is configured again.
    pub restored: usize,
}

fn grants_of(directory: &Directory) -> HashMap<String, std::collections::BTreeSet<String>> {
    directory
        .users
        .keys()
        .filter_map(|u| Some((u.clone(), directory.rights(u)?.scopes)))
        .collect()
}

/// The time-driven statuses, as [`Index::swept`] holds them.
struct Lapse;

impl Lapse {
    const NONE: u8 = 0;
    const EXPIRED: u8 = 1;
    const INACTIVE: u8 = 2;

    fn of(status: Status) -> u8 {
        match status {
            Status::Expired => Lapse::EXPIRED,
            Status::Inactive => Lapse::INACTIVE,
            _ => Lapse::NONE,
        }
    }
}

/// The refusal flags ([`table::REFUSED`]) of a key with effective scopes `scopes`
/// and its own set `own`: a key that held scopes and now holds none is refused, or
/// every route-less check would admit a user whose groups allow no API keys.
fn refusal(owner_unknown: bool, scopes: &[String], own: &[String]) -> u8 {
    if owner_unknown {
        table::OWNER_UNKNOWN
    } else if scopes.is_empty() && !own.is_empty() {
        table::NO_SCOPES
    } else {
        0
    }
}

/// Keys per status. A key's state (enabled, disabled, removed) moves it at once;
/// whether an enabled key is expired or inactive is as of the last expiry sweep
/// (or the start), which runs through every slot anyway; whether one in good
/// standing is refused (owner unknown, no scopes) moves with a reload. Atomics,
/// because the sweep moves keys while holding the index only for reading.
#[derive(Debug, Default)]
struct StatusCounts([AtomicI64; 7]);

impl StatusCounts {
    /// The `status` labels of `/metrics`: [`Status`]'s, and the statuses a key
    /// list shows for a key that would be active but is refused.
    const ORDER: [&'static str; 7] = [
        "active",
        "disabled",
        "expired",
        "inactive",
        "removed",
        OWNER_UNKNOWN_STATUS,
        NO_SCOPES_STATUS,
    ];

    fn add(&self, status: &str, n: i64) {
        let i = Self::ORDER.iter().position(|s| *s == status).unwrap_or(0);
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        Self::ORDER
            .iter()
            .zip(&self.0)
            .map(|(s, n)| (*s, usize::try_from(n.load(Ordering::Relaxed)).unwrap_or(0)))
            .collect()
    }
}

/// Status of a key that would be active but whose owner is not configured.
const OWNER_UNKNOWN_STATUS: &str = "owner_unknown";
/// Status of a key that would be active but whose owner's groups grant none of its
/// scopes.
const NO_SCOPES_STATUS: &str = "no_scopes";

/// The status label a key in `state` whose last sweep saw `lapse`, refused for
/// `refused` ([`table::REFUSED`] flags), is counted under.
fn counted_as(state: KeyState, lapse: u8, refused: u8) -> &'static str {
    let status = match state {
        KeyState::Removed => Status::Removed,
        KeyState::Disabled => Status::Disabled,
        KeyState::Enabled => match lapse {
            Lapse::EXPIRED => Status::Expired,
            Lapse::INACTIVE => Status::Inactive,
            _ => Status::Active,
        },
    };
    match status {
        Status::Active if refused & table::OWNER_UNKNOWN != 0 => OWNER_UNKNOWN_STATUS,
        Status::Active if refused & table::NO_SCOPES != 0 => NO_SCOPES_STATUS,
        s => s.as_str(),
    }
}

impl Index {
    fn with_capacity(n: usize) -> Self {
        Self {
            table: Table::with_capacity(n),
            entries: Vec::with_capacity(n),
            swept: Vec::with_capacity(n),
            by_id: HashMap::with_capacity(n),
            names: HashMap::with_capacity(n),
            ..Self::default()
        }
    }

    /// The entry of key `id`.
    fn get(&self, id: &Uuid) -> Option<&Arc<Live>> {
        self.at(*self.by_id.get(id)?)
    }

    /// The entry with number `e`.
    fn at(&self, e: u32) -> Option<&Arc<Live>> {
        self.entries.get(e as usize)?.as_ref()
    }

    /// Every key.
    fn all(&self) -> impl Iterator<Item = &Arc<Live>> {
        self.entries.iter().flatten()
    }

    fn slot(&self, live: &Live) -> Option<&Slot> {
        if live.life.state == KeyState::Removed {
            return None;
        }
        self.table.current(&live.hash)
    }

    /// Newest known last use of a key: its slot's (which starts from the stored one),
    /// or the stored one for a removed key.
    fn last_used(&self, live: &Live) -> Option<DateTime<Utc>> {
        self.slot(live)
            .map_or(live.stored_last_used, Slot::last_used)
    }

    /// Whether the key of `slot` accepts a client at `ip` (any, without IP filters).
    fn admits(&self, slot: &Slot, ip: Option<IpAddr>) -> bool {
        slot.flags & table::HAS_IP_FILTERS == 0
            || self
                .at(slot.entry)
                .is_some_and(|live| ip.is_some_and(|ip| ipfilter::allows(live.ip_filters(), ip)))
    }

    /// Whether the key of `slot` holds every one of `scopes`.
    fn holds(&self, slot: &Slot, scopes: &[&str]) -> bool {
        if scopes.is_empty() {
            return true;
        }
        // Past u16::MAX distinct sets a slot's number is not in the list: the entry's.
        let held = match self.scope_sets.get(usize::from(slot.scope_set)) {
            Some(set) => Some(set),
            None => self.at(slot.entry).map(|live| &live.scopes),
        };
        held.is_some_and(|held| scopes.iter().all(|s| held.iter().any(|k| k == s)))
    }

    /// Last use and counters as known in memory, for a key that has a slot.
    fn usage(&self, live: &Live) -> Option<(Option<DateTime<Utc>>, UsageCounts)> {
        let slot = self.slot(live)?;
        Some((slot.last_used(), usage_counts(slot, live)))
    }

    /// Put the usage known in memory into a record read from redb.
    fn merge_usage(&self, rec: &mut KeyRecord, live: &Live) {
        if let Some((last_used, counts)) = self.usage(live) {
            rec.last_used_at = last_used.max(rec.last_used_at);
            rec.usage = counts;
        }
    }

    /// Build the entry for `loaded` (a record already read with
    /// [`Loaded::from_record`], so that nothing can fail once it is committed) and put
    /// it in place of the key's current one, if any, taking over that one's usage
    /// counters.
    fn publish(&mut self, loaded: Loaded) -> Arc<Live> {
        let old = self.get(&loaded.id).cloned();
        let usage = old.as_ref().and_then(|o| self.slot(o)).map(Slot::usage);
        if let Some(o) = &old {
            self.forget(o);
            self.counts.add(self.counted(o), -1);
        }
        let entry = match &old {
            Some(o) => o.entry,
            None => self.allocate(),
        };
        let usage = usage.unwrap_or_else(|| loaded.stored_usage());
        let live = Arc::new(self.entry(loaded, entry));
        if let Some(o) = &old {
            live.persisted_at
                .store(o.persisted_at.load(Ordering::Relaxed), Ordering::Relaxed);
            *live.routes.lock() = o.routes.lock().take();
        }
        self.insert(live.clone(), usage);
        live
    }

    /// Add a key read from the store (at start).
    fn load(&mut self, l: Loaded) -> Result<(), StoreError> {
        let entry = self.allocate();
        let usage = l.stored_usage();
        let live = Arc::new(self.entry(l, entry));
        self.insert(live, usage);
        Ok(())
    }

    /// The status a key is counted under.
    fn counted(&self, live: &Live) -> &'static str {
        let lapse = self
            .swept
            .get(live.entry as usize)
            .map_or(Lapse::NONE, |l| l.load(Ordering::Relaxed));
        counted_as(live.life.state, lapse, live.refusal())
    }

    fn allocate(&mut self) -> u32 {
        match self.free.pop() {
            Some(e) => {
                if let Some(l) = self.swept.get(e as usize) {
                    l.store(Lapse::NONE, Ordering::Relaxed);
                }
                e
            }
            None => {
                self.entries.push(None);
                self.swept.push(AtomicU8::new(Lapse::NONE));
                u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn scope_number(&mut self, scopes: &[String]) -> (Arc<[String]>, u16) {
        // Keys come in runs with the same scopes (loading, seeding): skip the hashing.
        if let Some((set, n)) = &self.last_scope_set {
            if **set == *scopes {
                return (set.clone(), *n);
            }
        }
        if let Some((set, n)) = self.scope_numbers.get_key_value(scopes) {
            self.last_scope_set = Some((set.clone(), *n));
            return (set.clone(), *n);
        }
        let set: Arc<[String]> = Arc::from(scopes);
        let n = u16::try_from(self.scope_sets.len()).unwrap_or(u16::MAX);
        if n < u16::MAX {
            self.scope_sets.push(set.clone());
            self.scope_numbers.insert(set.clone(), n);
        }
        (set, n)
    }

    fn entry(&mut self, l: Loaded, entry: u32) -> Live {
        let owner = match &self.last_owner {
            Some(o) if Arc::ptr_eq(o, &l.owner) || **o == *l.owner => o.clone(),
            _ => {
                let o = match self.owners.get(&*l.owner) {
                    Some(o) => o.clone(),
                    None => {
                        self.owners.insert(l.owner.clone());
                        l.owner
                    }
                };
                self.last_owner = Some(o.clone());
                o
            }
        };
        let (own, own_number) = self.scope_number(&l.scopes);
        let eff = self.effective(&owner, &own, own_number);
        let extra = Extra {
            ip_filters: l.ip_filters,
            headers: l.headers,
            previous: l.previous,
            own_scopes: (!Arc::ptr_eq(&own, &eff.scopes)).then_some(own),
        };
        let routes = (!l.routes.is_empty()).then(|| Box::new(l.routes));
        Live {
            hash: l.hash,
            life: l.life,
            scopes: eff.scopes,
            id: l.id,
            owner,
            name: l.name,
            stored_last_used: l.last_used_at,
            warned_for: l.warned_for,
            persisted_at: AtomicI64::new(NEVER),
            routes: parking_lot::Mutex::new(routes),
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
            entry,
            scope_set: eff.number,
            lapse_recorded: l.lapse_recorded,
            owner_unknown: eff.owner_unknown,
        }
    }

    /// The effective scopes of a key of `owner` with its own (interned) set `own`.
    fn effective(&mut self, owner: &Arc<str>, own: &Arc<[String]>, own_number: u16) -> Effective {
        let key = (
            Arc::as_ptr(owner).cast::<u8>() as usize,
            Arc::as_ptr(own).cast::<u8>() as usize,
        );
        if let Some((_, _, hit)) = self.effective_cache.get(&key) {
            return hit.clone();
        }
        let (scopes, number, owner_unknown) = match self.grants.get(&**owner) {
            None => {
                let (set, n) = self.scope_number(&[]);
                (set, n, true)
            }
            Some(granted) if own.iter().all(|s| granted.contains(s)) => {
                (own.clone(), own_number, false)
            }
            Some(granted) => {
                let held: Vec<String> = own
                    .iter()
                    .filter(|s| granted.contains(*s))
                    .cloned()
                    .collect();
                let (set, n) = self.scope_number(&held);
                (set, n, false)
            }
        };
        let eff = Effective {
            scopes,
            number,
            owner_unknown,
        };
        // Past u16::MAX sets, numbers are shared: no cache (and no sharing) then.
        if own_number < u16::MAX && number < u16::MAX {
            self.effective_cache
                .insert(key, (owner.clone(), own.clone(), eff.clone()));
        }
        eff
    }

    /// Take the users and groups of a (re)loaded configuration: every key's effective
    /// scopes and owner check follow them. Walks only the keys of users whose grant
    /// changed (none if none did); those that change get a new entry, and their slot
    /// is updated in place.
    fn regrant(&mut self, directory: &Directory) -> Regranted {
        let grants = grants_of(directory);
        // Only the keys of users whose grant changed (or who came or went) can change;
        // a reload that leaves every user's scopes alone walks nothing.
        let changed: HashSet<String> = grants
            .iter()
            .filter(|(u, g)| self.grants.get(*u) != Some(*g))
            .map(|(u, _)| u.clone())
            .chain(
                self.grants
                    .keys()
                    .filter(|u| !grants.contains_key(*u))
                    .cloned(),
            )
            .collect();
        self.grants = grants;
        let mut out = Regranted::default();
        if changed.is_empty() {
            return out;
        }
        self.effective_cache.clear();
        for e in 0..self.entries.len() {
            let Some(old) = self.entries.get(e).and_then(Option::as_ref) else {
                continue;
            };
            if !changed.contains(&*old.owner) {
                continue;
            }
            let old = old.clone();
            let own = old.own_scopes().clone();
            let own_number = if Arc::ptr_eq(&own, &old.scopes) {
                old.scope_set
            } else {
                self.scope_number(&own).1
            };
            let eff = self.effective(&old.owner, &own, own_number);
            let same_set = if eff.number < u16::MAX {
                eff.number == old.scope_set
            } else {
                *eff.scopes == *old.scopes
            };
            if same_set && eff.owner_unknown == old.owner_unknown {
                continue;
            }
            let refused = refusal(eff.owner_unknown, &eff.scopes, &own);
            if old.life.state != KeyState::Removed {
                if eff.owner_unknown {
                    out.refused += 1;
                } else if old.owner_unknown {
                    out.restored += 1;
                } else if old.scopes.iter().any(|s| !eff.scopes.contains(s)) {
                    out.lost_scopes += 1;
                } else {
                    out.restored += 1;
                }
                self.table.regrant(&old.hash, eff.number, refused);
            }
            let new = Arc::new(old.regranted(&eff, own));
            // The status counts follow (an owner gone, or left without scopes).
            self.counts.add(self.counted(&old), -1);
            self.counts.add(self.counted(&new), 1);
            if let Some(slot) = self.entries.get_mut(e) {
                *slot = Some(new);
            }
        }
        out
    }

    fn insert(&mut self, live: Arc<Live>, usage: SlotUsage) {
        let e = live.entry as usize;
        self.counts.add(self.counted(&live), 1);
        if live.life.state != KeyState::Removed {
            self.table.put_current(&SlotInit {
                hash: live.hash,
                life: live.life,
                entry: live.entry,
                flags: if live.ip_filters().is_empty() {
                    0
                } else {
                    table::HAS_IP_FILTERS
                } | live.refusal(),
                scope_set: live.scope_set,
                usage,
            });
            if let Some((h, until)) = live.previous() {
                self.table.put_previous(&h, until, live.entry);
            }
            self.names
                .insert(name_hash(&live.owner, &live.name), live.entry);
            self.count_owned(&live.owner, true);
        }
        self.by_id.insert(live.id, live.entry);
        if let Some(slot) = self.entries.get_mut(e) {
            *slot = Some(live);
        }
    }

    /// Drop a key from the index entirely (purge).
    pub(crate) fn remove(&mut self, id: Uuid) {
        if let Some(old) = self.get(&id).cloned() {
            self.forget(&old);
            self.counts.add(self.counted(&old), -1);
            self.by_id.remove(&id);
            if let Some(slot) = self.entries.get_mut(old.entry as usize) {
                *slot = None;
            }
            self.free.push(old.entry);
        }
    }

    /// Take a key's secrets and name out (its entry stays until replaced). Only what
    /// is still this key's: a removed key gave up its secret, and the same imported
    /// token may since belong to a new key whose slot must stay (issue 9, item 7).
    fn forget(&mut self, old: &Live) {
        if old.life.state != KeyState::Removed {
            self.remove_slot_of(&old.hash, old.entry);
            self.count_owned(&old.owner, false);
        }
        if let Some((h, _)) = old.previous() {
            self.remove_slot_of(&h, old.entry);
        }
        let name_key = name_hash(&old.owner, &old.name);
        if self.names.get(&name_key) == Some(&old.entry) {
            self.names.remove(&name_key);
        }
    }

    /// Take the slot of `hash` out if it is key `entry`'s (current or previous secret).
    fn remove_slot_of(&mut self, hash: &KeyHash, entry: u32) {
        let mine = match self.table.get(hash) {
            Some(Hit::Current(slot)) => slot.entry == entry,
            Some(Hit::Previous { entry: e, .. }) => e == entry,
            None => false,
        };
        if mine {
            self.table.remove(hash);
        }
    }

    /// Keep the count of `owner`'s keys not removed (the key quota) up to date.
    fn count_owned(&mut self, owner: &Arc<str>, added: bool) {
        if added {
            *self.owned.entry(owner.clone()).or_insert(0) += 1;
        } else if let Some(n) = self.owned.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(owner);
            }
        }
    }

    /// Keys of `owner` that are not removed.
    fn owned_by(&self, owner: &str) -> u32 {
        self.owned.get(owner).copied().unwrap_or(0)
    }
}

/// The counters of a key: its slot's, and its entry's per route.
fn usage_counts(slot: &Slot, live: &Live) -> UsageCounts {
    let (verifications, denied) = slot.counts();
    UsageCounts {
        verifications,
        denied,
        routes: live.route_counts(),
    }
}

/// Outcome of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The code.
    pub code: Code,
    /// The key's last use after this verification (now, if valid).
    pub last_used: Option<DateTime<Utc>>,
    /// Where the key's entry is, when one was found (even if not valid).
    entry: Option<u32>,
    hash: KeyHash,
}

/// Request to create (or import) a key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Owner; defaults to the actor.
    #[serde(default)]
    pub user: Option<String>,
    /// Name, unique per owner.
    pub name: String,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Scopes; default all the owner's groups grant.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// RFC 3339 expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// ISO 8601 period from now.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// No expiry (only when MaxExpirationPeriod is empty).
    #[serde(default)]
    pub never_expires: bool,
    /// IP filters.
    #[serde(default)]
    pub ip: Vec<String>,
    /// `NAME=TEMPLATE` headers.
    #[serde(default)]
    pub headers: Vec<String>,
    /// For import: the user-defined secret. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Notification time (RFC 3339).
    #[serde(default)]
    pub notify_at: Option<String>,
    /// Notification this long before the expiry (ISO 8601 period).
    #[serde(default)]
    pub notify_before: Option<String>,
    /// Alert source of the notification.
    #[serde(default)]
    pub alert_source: Option<String>,
    /// No notification, not even the configured default.
    #[serde(default)]
    pub no_notification: bool,
}

/// Request to edit a key. Absent fields are left alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditKey {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New scopes: must be a subset of the current ones.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Replace the IP filters (empty list clears them).
    #[serde(default)]
    pub ip: Option<Vec<String>>,
    /// Replace the headers (empty list clears them).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Earlier expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Earlier expiry as a period from now.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// A key as shown to administrators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner.
    pub owner: String,
    /// Scopes the key was issued with (or narrowed to).
    pub scopes: Vec<String>,
    /// Those of `scopes` its owner's groups grant now: what verification allows.
    #[serde(default)]
    pub effective_scopes: Vec<String>,
    /// `active`, `disabled`, `expired`, `inactive`, `removed`, `owner_unknown`
    /// (would be active, but its owner is no longer configured: refused) or
    /// `no_scopes` (would be active, but its owner's groups grant none of its
    /// scopes now: refused).
    pub status: String,
    /// `generated` or `imported`.
    pub kind: String,
    /// Created.
    pub created_at: String,
    /// Last record change.
    pub updated_at: String,
    /// Last successful verification.
    pub last_used_at: Option<String>,
    /// Hard expiry.
    pub expires_at: Option<String>,
    /// Earlier of the hard expiry and the inactivity deadline.
    pub effective_expires_at: Option<String>,
    /// `hard` or `inactivity`.
    pub effective_limit: Option<String>,
    /// Human details line.
    pub details: String,
    /// IP filters.
    pub ip_filters: Vec<String>,
    /// Response headers.
    pub headers: Vec<HeaderTemplate>,
    /// When the previous secret stops working after a rotation.
    pub rotation_grace_until: Option<String>,
    /// Alert notification: "TIME via SOURCE", or "none".
    pub notification: String,
    /// Verification counts (in memory, flushed with the last-used times).
    pub usage: UsageCounts,
    /// Notification time.
    #[serde(default)]
    pub notify_at: Option<String>,
    /// Alert source of the notification.
    #[serde(default)]
    pub alert_source: Option<String>,
    /// The alert job the key tracks.
    #[serde(default)]
    pub alert_job: Option<Uuid>,
    /// Something the caller should know about the change just made (such as an
    /// alert source that could not reach the owner and was replaced); only in the
    /// answer to that change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// What an admin imposed that only an admin may lift.
    #[serde(default)]
    pub admin_restrictions: AdminRestrictions,
}

/// A key just issued: the secret, shown once, and the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The secret. Shown once; never stored; redacted in `Debug`.
    pub key: Secret,
    /// The key.
    #[serde(flatten)]
    pub view: KeyView,
}

/// The key service.
pub struct Keys {
    clock: SharedClock,
    hasher: KeyHasher,
    store: Arc<Store>,
    settings: RwLock<Arc<Settings>>,
    /// Shared with the blocking task that commits a change and publishes it, so the
    /// two happen together even when the caller is dropped in between.
    index: Arc<RwLock<Index>>,
    /// Serialises changes; owned guards travel into that task (see [`Writer`]).
    writer: Arc<tokio::sync::Mutex<()>>,
    alerts: notify::AlertState,
    /// Some last-used time may be newer than the stored one: an idle daemon's flush
    /// then costs nothing instead of a scan of every key (41 ms at 1M keys).
    touched: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Load every key from the store into the index.
    pub fn open(
        store: Arc<Store>,
        hasher: KeyHasher,
        clock: SharedClock,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let mut index = Index::with_capacity(store.key_count()?);
        index.grants = grants_of(&settings.directory);
        store.load_keys(load::prepare, |l| index.load(l))?;
        // Expired and inactive keys are counted as such from the start, not from
        // the first sweep.
        index.note_lapses(&settings.policy, clock.now(), |_, _| {});
        Ok(Self {
            clock,
            hasher,
            store,
            settings: RwLock::new(Arc::new(settings)),
            index: Arc::new(RwLock::new(index)),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            alerts: notify::AlertState::default(),
            touched: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The clock in use.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().clone()
    }

    /// Replace policy, users and groups (SIGHUP). Every key's effective scopes follow
    /// the new groups at once, and keys of owners no longer configured are refused;
    /// returns how many keys that changed.
    pub fn reload(&self, settings: Settings) -> Regranted {
        // The index first: a verification holds the settings' read lock while it
        // takes the index's, so the two write locks are never held together.
        let counts = self.index.write().regrant(&settings.directory);
        *self.settings.write() = Arc::new(settings);
        counts
    }

    /// Number of keys held (all states).
    pub fn len(&self) -> usize {
        self.index.read().by_id.len()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---------------------------------------------------------------- verify

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
        self.verify_with(&settings.policy, presented, scopes, ip, route, now)
    }

    fn verify_with(
        &self,
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
        let hash = self.hasher.hash(presented);
        // Counting happens under the read lock: a change to the key replaces its slot
        // under the write lock and takes the counters over from the old one.
        let index = self.index.read();
        let slot = match index.table.get(&hash) {
            None => return none(Code::NotFound),
            Some(Hit::Current(slot)) => slot,
            Some(Hit::Previous { until_ms, entry }) => {
                // The previous secret of a rotated key: good only during the grace period.
                let current = (now.timestamp_millis() < until_ms)
                    .then(|| index.at(entry))
                    .flatten()
                    .and_then(|live| index.table.current(&live.hash));
                match current {
                    Some(slot) => slot,
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
        self.note_touched();
        out
    }

    /// The key a verification found, if it still holds the presented secret. The
    /// in-process check does not touch the key's entry (a cache miss at 1M keys);
    /// callers that answer with the key's identity fetch it here. A VALID
    /// verification whose key was removed or rotated in between becomes NOT_FOUND.
    pub fn resolve(&self, v: &mut Verification) -> Option<Arc<Live>> {
        let live = self.key_of(v);
        if live.is_none() && v.code == Code::Valid {
            v.code = Code::NotFound;
        }
        live
    }

    fn key_of(&self, v: &Verification) -> Option<Arc<Live>> {
        let index = self.index.read();
        let live = index.at(v.entry?)?;
        (live.hash == v.hash || live.previous().is_some_and(|(h, _)| h == v.hash))
            .then(|| live.clone())
    }

    // ---------------------------------------------------------------- views

    /// The admin view of a key at the current time.
    pub fn view(&self, live: &Live) -> Result<KeyView, KeyError> {
        let rec = self.record(live)?;
        let settings = self.settings.read().clone();
        Ok(view_of(&settings, &rec, self.clock.now()))
    }

    /// The key's full record from redb, with the usage known in memory.
    pub fn record(&self, live: &Live) -> Result<KeyRecord, KeyError> {
        let mut rec = self
            .store
            .key(live.id)?
            .ok_or_else(|| KeyError::NotFound(live.id.to_string()))?;
        self.index.read().merge_usage(&mut rec, live);
        Ok(rec)
    }

    // ---------------------------------------------------------------- queries

    fn visible(&self, actor: &Actor, id: &str) -> Result<Arc<Live>, KeyError> {
        let uuid = Uuid::parse_str(id.trim())
            .map_err(|_| invalid("id", format!("{id:?} is not a key id (a UUID)")))?;
        let live = self
            .index
            .read()
            .get(&uuid)
            .cloned()
            .ok_or_else(|| KeyError::NotFound(uuid.to_string()))?;
        if !actor.admin && *live.owner != *actor.name {
            // Do not reveal that someone else's key exists.
            return Err(KeyError::NotFound(uuid.to_string()));
        }
        Ok(live)
    }

    /// One key.
    pub fn show(&self, actor: &Actor, id: &str) -> Result<KeyView, KeyError> {
        let live = self.visible(actor, id)?;
        self.view(&live)
    }

    /// The first page of the keys visible to `actor` (see [`Keys::list_page`]).
    pub async fn list(
        &self,
        actor: &Actor,
        user: Option<&str>,
        include_removed: bool,
    ) -> Result<Vec<KeyView>, KeyError> {
        let page = PageRequest::default();
        Ok(self
            .list_page(actor, user, include_removed, &page)
            .await?
            .items)
    }

    /// One page of the keys visible to `actor`, optionally of one user, oldest first.
    /// The index is walked in memory, keeping only the page's keys, so only their
    /// records are read from redb.
    pub async fn list_page(
        &self,
        actor: &Actor,
        user: Option<&str>,
        include_removed: bool,
        page: &PageRequest,
    ) -> Result<Page<KeyView>, KeyError> {
        if let Some(u) = user {
            if !actor.admin && u != actor.name {
                return Err(KeyError::Forbidden(format!(
                    "{} may only list their own keys (not those of {u:?})",
                    actor.name
                )));
            }
        }
        let limit = page.limit(page::DEFAULT_KEYS)?;
        let after = page.key_cursor()?;
        let settings = self.settings.read().clone();
        let now = self.clock.now();
        let wanted = user
            .map(str::to_owned)
            .or_else(|| (!actor.admin).then(|| actor.name.clone()));
        // The `limit + 1` first keys after the cursor (one more tells whether a next
        // page exists), in a heap whose top is the latest of them.
        let mut first: std::collections::BinaryHeap<(DateTime<Utc>, Uuid)> =
            std::collections::BinaryHeap::with_capacity(limit + 1);
        for l in self.index.read().all() {
            if wanted.as_deref().is_some_and(|w| *l.owner != *w)
                || (!include_removed && l.life.state == KeyState::Removed)
            {
                continue;
            }
            let at = (l.life.created_at, l.id);
            if after.is_some_and(|a| at <= a) {
                continue;
            }
            if first.len() <= limit {
                first.push(at);
            } else if first.peek().is_some_and(|top| at < *top) {
                first.pop();
                first.push(at);
            }
        }
        let mut picked = first.into_sorted_vec();
        let next_cursor = if picked.len() > limit {
            picked.truncate(limit);
            picked.last().map(|(at, id)| page::key_cursor(*at, *id))
        } else {
            None
        };
        let ids: Vec<Uuid> = picked.into_iter().map(|(_, id)| id).collect();
        // Reading and decoding a page of records is blocking work: not on a runtime
        // worker, which may be the only one serving verifications.
        let mut records = self.blocking(move |s| s.keys(&ids)).await?;
        {
            let index = self.index.read();
            for rec in &mut records {
                if let Some(live) = index.get(&rec.id) {
                    index.merge_usage(rec, live);
                }
            }
        }
        Ok(Page {
            items: records.iter().map(|r| view_of(&settings, r, now)).collect(),
            next_cursor,
        })
    }

    /// The newest `limit` audit entries visible to `actor` (see [`Keys::audit_page`]).
    pub async fn audit(
        &self,
        actor: &Actor,
        key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, KeyError> {
        let page = PageRequest {
            cursor: None,
            limit: Some(limit),
        };
        Ok(self.audit_page(actor, key, &page).await?.items)
    }

    /// One page of the audit entries visible to `actor`, newest first: an admin's
    /// from the whole trail, anyone else's from the entries about their own keys,
    /// which the store indexes by owner.
    pub async fn audit_page(
        &self,
        actor: &Actor,
        key: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>, KeyError> {
        let limit = page.limit(page::DEFAULT_AUDIT)?;
        let before = page.audit_cursor()?;
        let key_id = match key {
            Some(k) => Some(self.visible(actor, k)?.id),
            None => None,
        };
        let filter = AuditFilter {
            key: key_id,
            owner: (!actor.admin && key_id.is_none()).then(|| actor.name.clone()),
        };
        let found = self
            .blocking(move |s| s.audit_page(&filter, before, limit))
            .await?;
        Ok(Page {
            items: found.items,
            next_cursor: found.next.map(page::audit_cursor),
        })
    }

    // ---------------------------------------------------------------- changes

    async fn commit_and_publish(
        &self,
        writer: notify::Writer,
        rec: KeyRecord,
        audit: AuditEntry,
        retire: Vec<Retire>,
    ) -> Result<(Arc<Live>, notify::Writer), KeyError> {
        self.commit_and_publish_with(writer, rec, audit, Default::default(), retire)
            .await
    }

    fn audit_entry(&self, actor: &Actor, action: &str, key: Uuid, detail: String) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: self.clock.now(),
            actor: actor.name.clone(),
            action: action.to_owned(),
            key_id: Some(key),
            detail,
        }
    }

    /// Create a key with a generated secret.
    pub async fn create(&self, actor: &Actor, req: CreateKey) -> Result<Issued, KeyError> {
        if req.secret.is_some() {
            return Err(invalid("secret", "use key import to bring your own secret"));
        }
        let secret = secret::generate();
        self.insert_new(actor, req, secret, KeyKind::Generated)
            .await
    }

    /// Import a user-defined ("generic") token.
    pub async fn import(&self, actor: &Actor, mut req: CreateKey) -> Result<KeyView, KeyError> {
        let Some(imported) = req.secret.take() else {
            return Err(invalid("secret", "a secret is required for import"));
        };
        let s = imported.expose().trim_end_matches(['\n', '\r']).to_owned();
        let min = self.settings().policy.min_imported_secret_length;
        if s.starts_with(secret::PREFIX) {
            return Err(invalid(
                "secret",
                "looks like a key issued by apikeyd; issued keys cannot be imported",
            ));
        }
        if s.len() < min {
            return Err(invalid(
                "secret",
                format!(
                    "is {} characters long; at least {min} are required (MinImportedSecretLength)",
                    s.len()
                ),
            ));
        }
        if !secret::is_generic_token(&s, min) {
            return Err(invalid(
                "secret",
                format!(
                    "must be printable ASCII without spaces, {min} to {} characters",
                    secret::MAX_SECRET_LEN
                ),
            ));
        }
        let issued = self
            .insert_new(actor, req, Secret::new(s), KeyKind::Imported)
            .await?;
        Ok(issued.view)
    }

    async fn insert_new(
        &self,
        actor: &Actor,
        req: CreateKey,
        secret: Secret,
        kind: KeyKind,
    ) -> Result<Issued, KeyError> {
        let settings = self.settings();
        let now = self.clock.now();
        let owner = match req.user.as_deref().map(str::trim) {
            Some(u) if !u.is_empty() => u.to_owned(),
            _ if settings.directory.users.contains_key(&actor.name) => actor.name.clone(),
            _ => return Err(invalid("user", "name the key's owner with --user")),
        };
        if owner != actor.name && !actor.admin {
            return Err(KeyError::Forbidden(format!(
                "{} may only create keys for themselves, not for {owner:?}",
                actor.name
            )));
        }
        let Some(rights) = settings.directory.rights(&owner) else {
            return Err(invalid("user", format!("unknown user {owner:?}")));
        };
        if !rights.create_keys {
            let groups = settings
                .directory
                .users
                .get(&owner)
                .map(|u| u.groups.join(", "))
                .unwrap_or_default();
            return Err(KeyError::Forbidden(format!(
                "user {owner:?} may not have API keys: none of their groups ({groups}) allows creating keys"
            )));
        }
        let name = check_name(&req.name, secret.expose())?;
        let description =
            check_description(req.description.as_deref().unwrap_or(""), secret.expose())?;
        let scopes = match &req.scopes {
            None => rights.scopes.iter().cloned().collect(),
            Some(list) => {
                let scopes = check_scopes(list)?;
                if let Some(bad) = scopes.iter().find(|s| !rights.scopes.contains(*s)) {
                    let allowed: Vec<_> = rights.scopes.iter().map(String::as_str).collect();
                    return Err(invalid(
                        "scopes",
                        format!(
                            "user {owner:?} may not hold scope {bad:?} (allowed: {})",
                            allowed.join(", ")
                        ),
                    ));
                }
                scopes
            }
        };
        let expires_at = resolve_create_expiry(&settings.policy, &req, now)?;
        let (notification, notice) =
            self.plan_create_notification(&req, &owner, &settings.directory, expires_at, now)?;
        let ip_filters = check_ips(&req.ip)?;
        let headers = check_headers(&req.headers)?;
        if !actor.admin {
            check_owner_headers(&headers, &[])?;
        }
        // What an admin sets on someone else's key binds its owner. Scopes fewer
        // than the owner's rights, or an expiry the admin chose, the owner cannot
        // widen on this key, nor (once its secret is retired) by importing it again.
        let admin_restrictions = if binds_owner(actor, &owner, &settings.directory) {
            let narrowed = rights.scopes.iter().any(|s| !scopes.contains(s))
                || req.expires_at.is_some()
                || req.expires_in.is_some();
            AdminRestrictions {
                disabled_by: None,
                ip_filters: ip_filters.clone(),
                headers: headers.clone(),
                restricted_by: narrowed.then(|| actor.name.clone()),
            }
        } else {
            AdminRestrictions::default()
        };
        let hash = self.hasher.hash(secret.expose());

        let writer = self.lock_writer().await;
        {
            let index = self.index.read();
            if index.table.contains(&hash) {
                return Err(KeyError::Conflict(
                    "this secret is already in use by another key".into(),
                ));
            }
            check_unique_name(&index, &owner, &name, None)?;
            // Counted under the writer lock, so concurrent creates cannot pass it.
            if let Some(max) = settings.policy.max_keys_per_user {
                if index.owned_by(&owner) >= max {
                    return Err(KeyError::Conflict(format!(
                        "user {owner:?} already has {max} keys, the most MaxKeysPerUser allows; remove one first (removed keys do not count)"
                    )));
                }
            }
        }
        if kind == KeyKind::Imported && !actor.admin {
            // Under the writer lock: a removal or rotation that retires the secret
            // cannot slip in between this check and the commit.
            let retired = self.blocking(move |s| s.retired(&hash)).await?;
            if retired.is_some_and(|r| r.owner != owner || r.restricted) {
                // Whose it was stays unsaid: the answer must not tell who held a token.
                return Err(KeyError::Conflict(
                    "this secret was used by a key that was removed or rotated and cannot be \
                     imported again; ask an admin"
                        .into(),
                ));
            }
        }
        let rec = KeyRecord {
            id: Uuid::now_v7(),
            name,
            description,
            owner,
            scopes,
            hash: hex::encode(hash),
            previous_hash: None,
            previous_valid_until: None,
            kind,
            state: KeyState::Enabled,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            expires_at,
            ip_filters,
            headers,
            removed_at: None,
            usage: UsageCounts::default(),
            alerting: Default::default(),
            admin_restrictions,
            user_secret: match kind {
                KeyKind::Imported => UserSecret::Length(secret.expose().len()),
                KeyKind::Generated => UserSecret::None,
            },
        };
        let (rec, jobs) = notify::attach_notification(rec, notification, now);
        let action = match kind {
            KeyKind::Generated => "create",
            KeyKind::Imported => "import",
        };
        let mut detail = format!(
            "name={:?} owner={} scopes=[{}] expires={}{}",
            rec.name,
            rec.owner,
            rec.scopes.join(","),
            rec.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
            notify::describe(&rec)
        );
        if let Some(n) = &notice {
            detail = format!("{detail}; {n}");
        }
        let audit = self.audit_entry(actor, action, rec.id, detail);
        let mut view = view_of(&settings, &rec, now);
        view.notice = notice;
        self.commit_and_publish_with(writer, rec, audit, jobs, vec![])
            .await?;
        tracing::info!(key_id = %view.id, owner = %view.owner, actor = %actor.name, action, "key issued");
        Ok(Issued { key: secret, view })
    }

    /// Change a key in place through `change`, which validates and edits a copy of the
    /// record and returns the audit detail. Nothing is written if it fails.
    async fn modify<F>(
        &self,
        actor: &Actor,
        id: &str,
        action: &str,
        change: F,
    ) -> Result<Arc<Live>, KeyError>
    where
        F: FnOnce(&mut KeyRecord, &Index, &Settings, DateTime<Utc>) -> Result<String, KeyError>,
    {
        let writer = self.lock_writer().await;
        let live = self.visible(actor, id)?;
        if live.life.state == KeyState::Removed {
            return Err(KeyError::Conflict(format!("key {} was removed", live.id)));
        }
        let settings = self.settings();
        let now = self.clock.now();
        let mut rec = self.record(&live)?;
        let before = rec.clone();
        let detail = {
            let index = self.index.read();
            change(&mut rec, &index, &settings, now)?
        };
        rec.updated_at = now;
        let audit = self.audit_entry(actor, action, rec.id, detail);
        let retire = retirements(&before, Some(&rec), now);
        let (new, _writer) = self.commit_and_publish(writer, rec, audit, retire).await?;
        tracing::info!(key_id = %new.id, actor = %actor.name, action, "key changed");
        Ok(new)
    }

    /// Edit description, name, IP filters, headers, narrow scopes, shorten expiry.
    /// An owner may only narrow the IP filters and headers an admin set; an admin's
    /// change to someone else's key becomes the restriction its owner is held to.
    pub async fn edit(&self, actor: &Actor, id: &str, req: EditKey) -> Result<KeyView, KeyError> {
        let checked = self.check_not_own_secret(actor, id, &req).await?;
        let live = self
            .modify_following_expiry(actor, id, "edit", |rec, index, settings, now| {
                let mut changed = Vec::new();
                let binds_owner = binds_owner(actor, &rec.owner, &settings.directory);
                if checked.as_ref().is_some_and(|c| OwnSecrets::of(rec).ok().as_ref() != Some(c)) {
                    return Err(KeyError::Conflict(format!(
                        "the secret of key {} changed while this edit was checked; try again",
                        rec.id
                    )));
                }
                if let Some(name) = &req.name {
                    let name = check_name(name, "")?;
                    // A header with `${key.name}` is one only an admin may set: the
                    // owner renaming the key would choose what it tells the upstream.
                    if !actor.admin
                        && name != rec.name
                        && rec.headers.iter().any(|h| h.template.contains("${key.name}"))
                    {
                        return Err(KeyError::Forbidden(format!(
                            "key {} has a header an admin set from its name (${{key.name}}); \
                             only an admin can rename it",
                            rec.id
                        )));
                    }
                    check_unique_name(index, &rec.owner, &name, Some(rec.id))?;
                    changed.push(format!("name={name:?}"));
                    rec.name = name;
                }
                if let Some(d) = &req.description {
                    rec.description = check_description(d, "")?;
                    changed.push("description".to_owned());
                }
                if let Some(list) = &req.scopes {
                    let scopes = check_scopes(list)?;
                    if let Some(bad) = scopes.iter().find(|s| !rec.scopes.contains(s)) {
                        return Err(invalid(
                            "scopes",
                            format!("scopes can only be narrowed; the key does not hold {bad:?} (it holds: {})", rec.scopes.join(", ")),
                        ));
                    }
                    changed.push(format!("scopes=[{}]", scopes.join(",")));
                    if binds_owner && rec.scopes.iter().any(|s| !scopes.contains(s)) {
                        rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                    }
                    rec.scopes = scopes;
                }
                if let Some(ips) = &req.ip {
                    let ips = check_ips(ips)?;
                    if !actor.admin {
                        check_owner_ips(&ips, &rec.admin_restrictions.ip_filters)?;
                    } else if binds_owner {
                        rec.admin_restrictions.ip_filters = ips.clone();
                    } else {
                        // An admin's own key: nothing anyone else imposed binds it.
                        rec.admin_restrictions.ip_filters.clear();
                    }
                    rec.ip_filters = ips;
                    changed.push(format!("ip=[{}]", rec.ip_filters.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")));
                }
                if let Some(h) = &req.headers {
                    let headers = check_headers(h)?;
                    if !actor.admin {
                        check_owner_headers(&headers, &rec.admin_restrictions.headers)?;
                    } else if binds_owner {
                        rec.admin_restrictions.headers = headers.clone();
                    } else {
                        rec.admin_restrictions.headers.clear();
                    }
                    rec.headers = headers;
                    changed.push(format!("headers={}", rec.headers.len()));
                }
                let new_expiry = match (&req.expires_at, &req.expires_in) {
                    (Some(_), Some(_)) => return Err(invalid("expires_at", "give either --expires-at or --expires-in, not both")),
                    (Some(at), None) => Some(parse_time(at)?),
                    (None, Some(p)) => Some(add_period(&parse_period("expires_in", p)?, now)?),
                    (None, None) => None,
                };
                if let Some(at) = new_expiry {
                    if rec.expires_at.is_some_and(|cur| at > cur) {
                        return Err(invalid(
                            "expires_at",
                            format!(
                                "the expiry of a key can only be moved earlier (currently {}, asked {})",
                                rec.expires_at.map(rfc3339).unwrap_or_default(),
                                rfc3339(at)
                            ),
                        ));
                    }
                    check_expiry_range(&settings.policy, at, now)?;
                    if binds_owner && rec.expires_at != Some(at) {
                        rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                    }
                    rec.expires_at = Some(at);
                    changed.push(format!("expires={}", rfc3339(at)));
                }
                if changed.is_empty() {
                    return Err(invalid("edit", "nothing to change: give at least one field"));
                }
                Ok(changed.join(" "))
            })
            .await?;
        self.view(&live)
    }

    /// Refuse a new name or description that contains the key's own secret: names
    /// and descriptions are shown in listings, the audit trail and
    /// `X-Api-Key-Name`. Generated secrets are caught by their format
    /// ([`secret::looks_like_key`]); a user-defined token has none, so the stretches
    /// of the text it could be are hashed and compared with the key's imported
    /// secret ([`OwnSecrets`]). That is up to ~1000 hashes (~200k for a record
    /// stored before its secret's length was kept), so it runs before the change,
    /// on a blocking thread, holding neither the writer nor the index; the change
    /// then makes sure the secret it was checked against is still the key's.
    /// Returns what was checked against, if anything was.
    async fn check_not_own_secret(
        &self,
        actor: &Actor,
        id: &str,
        req: &EditKey,
    ) -> Result<Option<OwnSecrets>, KeyError> {
        let mut texts = Vec::new();
        if let Some(name) = &req.name {
            texts.push(("name", check_name(name, "")?));
        }
        if let Some(d) = &req.description {
            texts.push(("description", check_description(d, "")?));
        }
        if texts.is_empty() {
            return Ok(None);
        }
        let live = self.visible(actor, id)?;
        let own = OwnSecrets::of(&self.record(&live)?)?;
        if own.hashes.is_empty() {
            return Ok(Some(own));
        }
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || {
            for (field, text) in &texts {
                if own.found_in(&hasher, text) {
                    return Err(invalid(
                        field,
                        "must not contain this key's secret (a key's name and description are shown everywhere; the secret is not)",
                    ));
                }
            }
            Ok(Some(own))
        })
        .await
        .map_err(|e| KeyError::Internal(e.to_string()))?
    }

    /// Enable or disable a key. A key an admin disabled stays disabled for its owner.
    pub async fn set_enabled(
        &self,
        actor: &Actor,
        id: &str,
        enabled: bool,
    ) -> Result<KeyView, KeyError> {
        let action = if enabled { "enable" } else { "disable" };
        let live = self
            .modify(actor, id, action, |rec, _, settings, _| {
                let binds = binds_owner(actor, &rec.owner, &settings.directory);
                let restrictions = &mut rec.admin_restrictions;
                if enabled {
                    if let (false, Some(by)) = (actor.admin, &restrictions.disabled_by) {
                        return Err(KeyError::Forbidden(format!(
                            "key {} was disabled by admin {by:?}; only an admin can enable it again",
                            rec.id
                        )));
                    }
                    restrictions.disabled_by = None;
                    rec.state = KeyState::Enabled;
                    return Ok(String::new());
                }
                if binds {
                    restrictions.disabled_by = Some(actor.name.clone());
                }
                rec.state = KeyState::Disabled;
                Ok(String::new())
            })
            .await?;
        self.view(&live)
    }

    /// Remove a key: it stops working at once and is kept for the record. Its
    /// notification job, if not started, is cancelled in the same transaction.
    pub async fn remove(&self, actor: &Actor, id: &str) -> Result<KeyView, KeyError> {
        let settings = self.settings();
        let live = self
            .modify_with_job(actor, id, "remove", |rec, job, now| {
                // An admin's removal retires the key's secret for its owner too.
                if binds_owner(actor, &rec.owner, &settings.directory) {
                    rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                }
                rec.state = KeyState::Removed;
                rec.removed_at = Some(now);
                rec.previous_hash = None;
                rec.previous_valid_until = None;
                Ok(notify::cancel_for_removal(rec, job, now))
            })
            .await?;
        self.view(&live)
    }

    /// Give a key a new secret, keeping its settings. With a grace period the old
    /// secret keeps working until it ends (never past the key's expiry).
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &str,
        grace: Option<&str>,
    ) -> Result<Issued, KeyError> {
        let grace = match grace.map(str::trim).filter(|g| !g.is_empty()) {
            Some(g) => Some(parse_period("grace", g)?),
            None => None,
        };
        let secret = secret::generate();
        let new_hash = self.hasher.hash(secret.expose());
        let live = self
            .modify(actor, id, "rotate", |rec, _, settings, now| {
                // A new secret on a key an admin disabled is the owner's way around
                // the disable once the key is enabled, and frees the old secret.
                if let (false, Some(by)) = (actor.admin, &rec.admin_restrictions.disabled_by) {
                    return Err(KeyError::Forbidden(format!(
                        "key {} was disabled by admin {by:?}; only an admin can rotate it",
                        rec.id
                    )));
                }
                match rec.status(&settings.policy, rec.last_used_at, now) {
                    Status::Expired | Status::Inactive => {
                        return Err(KeyError::Conflict(format!(
                            "key {} has expired; create a new key instead of rotating it",
                            rec.id
                        )))
                    }
                    _ => {}
                }
                // An admin's rotation retires the old secret for its owner too.
                if binds_owner(actor, &rec.owner, &settings.directory) {
                    rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                }
                let old = rec.hash.clone();
                rec.hash = hex::encode(new_hash);
                if rec.kind == KeyKind::Generated || grace.is_none() {
                    // No imported secret is left on the key (the previous secret,
                    // if any, is a generated one).
                    rec.user_secret = UserSecret::None;
                }
                rec.kind = KeyKind::Generated;
                match &grace {
                    Some(p) => {
                        let mut until = add_period(p, now)?;
                        if let Some(exp) = rec.expires_at {
                            until = until.min(exp);
                        }
                        rec.previous_hash = Some(old);
                        rec.previous_valid_until = Some(until);
                        Ok(format!("grace until {}", rfc3339(until)))
                    }
                    None => {
                        rec.previous_hash = None;
                        rec.previous_valid_until = None;
                        Ok("no grace".to_owned())
                    }
                }
            })
            .await?;
        Ok(Issued {
            key: secret,
            view: self.view(&live)?,
        })
    }

    // ---------------------------------------------------------------- last used

    /// Write last-used times that changed. A key is written at most once per
    /// [`LAST_USED_PERSIST_INTERVAL`] unless `force` (shutdown). Returns keys written.
    pub async fn flush_last_used(&self, force: bool) -> Result<usize, KeyError> {
        let _writer = self.writer.lock().await;
        if !self.touched.swap(false, Ordering::AcqRel) && !force {
            return Ok(0);
        }
        let now = self.clock.now().timestamp();
        let interval = LAST_USED_PERSIST_INTERVAL.num_seconds();
        let mut waiting = false;
        let mut due: Vec<Arc<Live>> = Vec::new();
        let mut updates: Vec<UsageUpdate> = Vec::new();
        {
            let index = self.index.read();
            for slot in index.table.iter().filter(|s| s.is_dirty()) {
                let Some(l) = index.at(slot.entry) else {
                    continue;
                };
                let at = l.persisted_at.load(Ordering::Relaxed);
                if force || at == NEVER || now.saturating_sub(at) >= interval {
                    // Cleared before the counters are read: a use racing with this
                    // flush sets the flag again and is written next time.
                    slot.set_dirty(false);
                    updates.push(UsageUpdate {
                        id: l.id,
                        last_used_at: slot.last_used(),
                        counts: usage_counts(slot, l),
                    });
                    due.push(l.clone());
                } else {
                    waiting = true;
                }
            }
        }
        if waiting {
            // Uses newer than the store but within the one-minute rule: next time.
            self.touched.store(true, Ordering::Relaxed);
        }
        if due.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || store.write_usage(&updates))
            .await
            .map_err(|e| KeyError::Internal(e.to_string()))
            .and_then(|r| r.map_err(KeyError::from));
        if let Err(e) = written {
            let index = self.index.read();
            for l in &due {
                if let Some(slot) = index.slot(l) {
                    slot.set_dirty(true);
                }
            }
            self.touched.store(true, Ordering::Relaxed);
            return Err(e);
        }
        for l in &due {
            l.persisted_at.store(now, Ordering::Relaxed);
        }
        tracing::debug!(keys = due.len(), "last-used times flushed");
        Ok(due.len())
    }

    /// Remember that some key's usage changed, so the next flush scans. Only the first
    /// change after a flush writes the shared flag.
    fn note_touched(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Keys with usage not yet written, and the age in seconds of the oldest write
    /// among them (0 if none): the "last-used flush lag".
    pub fn unflushed(&self) -> (usize, i64) {
        let now = self.clock.now().timestamp();
        let index = self.index.read();
        let mut count = 0;
        let mut lag = 0;
        for slot in index.table.iter().filter(|s| s.is_dirty()) {
            count += 1;
            let at = index
                .at(slot.entry)
                .map_or(NEVER, |l| l.persisted_at.load(Ordering::Relaxed));
            if at != NEVER {
                lag = lag.max(now.saturating_sub(at));
            }
        }
        (count, lag)
    }

    /// Number of keys per status, from counters (no scan): disabled and removed
    /// as of now, expired and inactive as of the last expiry sweep (or the start).
    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        self.index.read().counts.snapshot()
    }
}

/// Build the admin view of a key; its effective scopes and owner check follow the
/// users and groups of `settings`.
pub fn view_of(settings: &Settings, rec: &KeyRecord, now: DateTime<Utc>) -> KeyView {
    let policy = &settings.policy;
    let last_used = rec.last_used_at;
    let effective = rec.effective_expiry(policy, last_used);
    let granted = settings.directory.rights(&rec.owner).map(|r| r.scopes);
    let effective_scopes: Vec<String> = granted.as_ref().map_or_else(Vec::new, |g| {
        rec.scopes
            .iter()
            .filter(|s| g.contains(*s))
            .cloned()
            .collect()
    });
    let refused = refusal(granted.is_none(), &effective_scopes, &rec.scopes);
    let status = match rec.status(policy, last_used, now) {
        Status::Active => counted_as(KeyState::Enabled, Lapse::NONE, refused),
        s => s.as_str(),
    };
    let mut details = rec.details(policy, last_used, now);
    if rec.state != KeyState::Removed {
        if refused & table::OWNER_UNKNOWN != 0 {
            details = format!(
                "refused: owner {:?} is not a configured user; {details}",
                rec.owner
            );
        } else if refused & table::NO_SCOPES != 0 {
            details = format!(
                "refused: the groups of {:?} grant none of its scopes ({}) now; {details}",
                rec.owner,
                rec.scopes.join(", ")
            );
        }
    }
    KeyView {
        id: rec.id,
        name: rec.name.clone(),
        description: rec.description.clone(),
        owner: rec.owner.clone(),
        scopes: rec.scopes.clone(),
        effective_scopes,
        status: status.to_owned(),
        kind: match rec.kind {
            KeyKind::Generated => "generated",
            KeyKind::Imported => "imported",
        }
        .to_owned(),
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
        last_used_at: last_used.map(rfc3339),
        expires_at: rec.expires_at.map(rfc3339),
        effective_expires_at: effective.map(|(t, _)| rfc3339(t)),
        effective_limit: effective.map(|(_, l)| {
            match l {
                Limit::Hard => "hard",
                Limit::Inactivity => "inactivity",
            }
            .to_owned()
        }),
        details,
        ip_filters: rec.ip_filters.iter().map(|n| n.to_string()).collect(),
        headers: rec.headers.clone(),
        rotation_grace_until: rec.previous_valid_until.filter(|t| *t > now).map(rfc3339),
        notification: rec.alerting.notification.as_ref().map_or_else(
            || "none".to_owned(),
            |n| format!("{} via {}", rfc3339(n.at), n.source),
        ),
        notify_at: rec.alerting.notification.as_ref().map(|n| rfc3339(n.at)),
        alert_source: rec.alerting.notification.as_ref().map(|n| n.source.clone()),
        alert_job: rec.alerting.notification.as_ref().map(|n| n.job_id),
        usage: rec.usage.clone(),
        notice: None,
        admin_restrictions: rec.admin_restrictions.clone(),
    }
}

// ---------------------------------------------------------------- validation

/// The user-defined secrets of a key that its name and description must not
/// contain: its imported current secret, and its previous one after a rotation
/// (imported, or of a record too old to tell), with their length when known.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnSecrets {
    hashes: Vec<KeyHash>,
    len: Option<usize>,
}

impl OwnSecrets {
    fn of(rec: &KeyRecord) -> Result<Self, KeyError> {
        let mut hashes = Vec::with_capacity(2);
        if rec.kind == KeyKind::Imported {
            hashes.push(load::decode_hash(&rec.hash)?);
        }
        if let Some(previous) = &rec.previous_hash {
            // A previous secret known to be generated gives itself away by its format.
            if rec.user_secret != UserSecret::None {
                hashes.push(load::decode_hash(previous)?);
            }
        }
        Ok(Self {
            hashes,
            len: match rec.user_secret {
                UserSecret::Length(n) => Some(n),
                UserSecret::Unknown | UserSecret::None => None,
            },
        })
    }

    /// Whether `text` contains one of the secrets.
    fn found_in(&self, hasher: &KeyHasher, text: &str) -> bool {
        !self.hashes.is_empty()
            && windows(text, self.len).any(|w| self.hashes.contains(&hasher.hash(w)))
    }
}

/// The stretches of `text` a user-defined secret of length `len` could be
/// (printable ASCII without spaces); of any length a configuration could ever have
/// allowed when `len` is not known.
fn windows(text: &str, len: Option<usize>) -> impl Iterator<Item = &str> {
    let (shortest, longest) = match len {
        Some(n) => (n, n),
        None => (MIN_GENERIC_SECRET, secret::MAX_SECRET_LEN),
    };
    text.split(|c: char| !c.is_ascii_graphic())
        .flat_map(move |run| {
            // ASCII only: every byte offset is a char boundary.
            (0..run.len()).flat_map(move |start| {
                let last = run.len().min(start + longest);
                (start + shortest.max(1)..=last).map(move |end| &run[start..end])
            })
        })
}

fn check_text(
    field: &'static str,
    s: &str,
    max: usize,
    allow_newlines: bool,
) -> Result<String, KeyError> {
    if s.chars().count() > max {
        return Err(invalid(
            field,
            format!(
                "is too long ({} characters; at most {max})",
                s.chars().count()
            ),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

fn check_name(name: &str, secret: &str) -> Result<String, KeyError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "a key needs a name"));
    }
    let name = check_text("name", name, MAX_NAME, false)?;
    if (!secret.is_empty() && name.contains(secret)) || secret::looks_like_key(&name) {
        return Err(invalid(
            "name",
            "must not contain an API key (a key's name is shown everywhere; the key is not)",
        ));
    }
    Ok(name)
}

fn check_description(d: &str, secret: &str) -> Result<String, KeyError> {
    let d = check_text("description", d.trim(), MAX_DESCRIPTION, true)?;
    if (!secret.is_empty() && d.contains(secret)) || secret::looks_like_key(&d) {
        return Err(invalid("description", "must not contain an API key"));
    }
    Ok(d)
}

fn check_scopes(list: &[String]) -> Result<Vec<String>, KeyError> {
    if list.len() > MAX_SCOPES {
        return Err(invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    let mut out: Vec<String> = Vec::new();
    for s in list {
        let s = s.trim();
        if !valid_scope(s) {
            return Err(invalid(
                "scopes",
                format!(
                    "{:?} is not a valid scope",
                    s.chars().take(80).collect::<String>()
                ),
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.is_empty() {
        return Err(invalid(
            "scopes",
            "give at least one scope, or leave scopes out for all the owner may hold",
        ));
    }
    out.sort();
    Ok(out)
}

fn check_ips(list: &[String]) -> Result<Vec<ipnet::IpNet>, KeyError> {
    if list.len() > MAX_IP_FILTERS {
        return Err(invalid(
            "ip",
            format!("at most {MAX_IP_FILTERS} IP filters"),
        ));
    }
    let mut out = Vec::new();
    for s in list {
        let net = ipfilter::parse(s).map_err(|e| invalid("ip", e.to_string()))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

fn check_headers(list: &[String]) -> Result<Vec<HeaderTemplate>, KeyError> {
    if list.len() > MAX_HEADERS {
        return Err(invalid("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut out: Vec<HeaderTemplate> = Vec::new();
    for s in list {
        let h = headers::parse(s).map_err(|e| invalid("headers", e.to_string()))?;
        if out.iter().any(|o| headers::same_name(&o.name, &h.name)) {
            return Err(invalid(
                "headers",
                format!("header {:?} is given twice", h.name),
            ));
        }
        out.push(h);
    }
    Ok(out)
}

/// Whether what `actor` sets on a key of `owner` binds the owner (only an admin may
/// lift it): an admin acting on someone else's key. The same name is not enough to
/// be the owner: an unmapped root acts as admin "root", and a configured non-admin
/// user may be named "root" too; an admin's own key is one whose owner is a
/// configured admin.
fn binds_owner(actor: &Actor, owner: &str, directory: &Directory) -> bool {
    actor.admin
        && (actor.name != owner || !directory.rights(owner).is_some_and(|r| r.manage_all_keys))
}

/// An owner's IP filters must stay within the networks an admin limited the key to:
/// every network inside one of the admin's, and at least one.
fn check_owner_ips(list: &[ipnet::IpNet], admin: &[ipnet::IpNet]) -> Result<(), KeyError> {
    if admin.is_empty() {
        return Ok(());
    }
    let allowed = || {
        admin
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if list.is_empty() {
        return Err(KeyError::Forbidden(format!(
            "an admin limited this key to {}; only an admin can remove that limit (you may narrow it)",
            allowed()
        )));
    }
    if let Some(bad) = list.iter().find(|n| !admin.iter().any(|a| a.contains(*n))) {
        return Err(KeyError::Forbidden(format!(
            "{bad} is not inside the networks an admin limited this key to ({}); you may only narrow them",
            allowed()
        )));
    }
    Ok(())
}

/// The headers an owner gives a key: every header an admin set, unchanged, and
/// otherwise only values apikeyd fills in ([`headers::OWNER_VALUES`]), so that the
/// upstream is told nothing the owner made up.
fn check_owner_headers(list: &[HeaderTemplate], admin: &[HeaderTemplate]) -> Result<(), KeyError> {
    if let Some(kept) = admin.iter().find(|a| !list.iter().any(|h| h.same(a))) {
        return Err(KeyError::Forbidden(format!(
            "header {:?} was set by an admin; only an admin can change or remove it (give it unchanged)",
            kept.name
        )));
    }
    if let Some(bad) = list
        .iter()
        .find(|h| !h.owner_may_set() && !admin.iter().any(|a| a.same(h)))
    {
        return Err(KeyError::Forbidden(format!(
            "header {:?}: only an admin may set literal text or ${{key.name}} in a header; \
             a key's owner may use exactly one of {} as the value",
            bad.name,
            headers::OWNER_VALUES.join(", ")
        )));
    }
    Ok(())
}

/// The secrets that leave key `before` when it becomes `after` (`None`: purged):
/// its imported current secret, and its previous secret (refreshed only: it was
/// retired when rotated away, if it was imported). Generated secrets are never
/// recorded: the `akd_` format cannot be imported.
fn retirements(before: &KeyRecord, after: Option<&KeyRecord>, now: DateTime<Utc>) -> Vec<Retire> {
    if before.state == KeyState::Removed {
        // Removing it retired what it held.
        return Vec::new();
    }
    let live = after.filter(|a| a.state != KeyState::Removed);
    let mut out = Vec::new();
    let mut retire = |hex: &str, refresh_only: bool| {
        if let Ok(hash) = load::decode_hash(hex) {
            out.push(Retire {
                hash,
                entry: RetiredSecret::of(before, after, now),
                refresh_only,
            });
        }
    };
    if before.kind == KeyKind::Imported && live.is_none_or(|a| a.hash != before.hash) {
        retire(&before.hash, false);
    }
    if let Some(previous) = &before.previous_hash {
        if live.is_none_or(|a| a.previous_hash.as_ref() != Some(previous)) {
            retire(previous, true);
        }
    }
    out
}

fn name_hash(owner: &str, name: &str) -> u64 {
    use std::hash::Hash;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    // The bytes of `name.to_lowercase()`, without allocating for ASCII names.
    if name.is_ascii() {
        for b in name.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
    } else {
        h.write(name.to_lowercase().as_bytes());
    }
    h.finish()
}

fn check_unique_name(
    index: &Index,
    owner: &str,
    name: &str,
    except: Option<Uuid>,
) -> Result<(), KeyError> {
    let lower = name.to_lowercase();
    let same = |l: &Live| {
        *l.owner == *owner
            && l.life.state != KeyState::Removed
            && Some(l.id) != except
            && l.name.to_lowercase() == lower
    };
    let clash = match index.names.get(&name_hash(owner, name)) {
        None => false,
        Some(e) => match index.at(*e) {
            Some(l) if same(l) => true,
            // Our own key, or a different name with the same hash: make sure by
            // looking at every key (a 64-bit collision is not expected in practice).
            Some(l) if Some(l.id) == except => false,
            _ => index.all().any(|l| same(l)),
        },
    };
    if clash {
        return Err(KeyError::Conflict(format!(
            "{owner} already has a key named {name:?} (names are unique per owner, ignoring case)"
        )));
    }
    Ok(())
}

fn parse_period(field: &'static str, s: &str) -> Result<Period, KeyError> {
    Period::parse(s).map_err(|e| invalid(field, e.to_string()))
}

fn add_period(p: &Period, now: DateTime<Utc>) -> Result<DateTime<Utc>, KeyError> {
    p.add_to(now)
        .ok_or_else(|| invalid("expires_in", format!("{p} is too far in the future")))
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, KeyError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                "expires_at",
                format!("{s:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"),
            )
        })
}

fn check_expiry_range(
    policy: &Policy,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), KeyError> {
    let earliest = now + Duration::minutes(1);
    if at < earliest {
        return Err(invalid(
            "expires_at",
            format!(
                "{} is too soon: a key must live at least one minute (from {})",
                rfc3339(at),
                rfc3339(earliest)
            ),
        ));
    }
    if let Some(max) = &policy.max_expiration {
        if let Some(latest) = max.add_to(now) {
            if at > latest {
                return Err(invalid(
                    "expires_at",
                    format!(
                        "{} is later than MaxExpirationPeriod ({max}) allows: at most {}",
                        rfc3339(at),
                        rfc3339(latest)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_create_expiry(
    policy: &Policy,
    req: &CreateKey,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, KeyError> {
    let given = usize::from(req.expires_at.is_some())
        + usize::from(req.expires_in.is_some())
        + usize::from(req.never_expires);
    if given > 1 {
        return Err(invalid(
            "expires_at",
            "give only one of --expires-at, --expires-in and --never-expires",
        ));
    }
    let at = if let Some(s) = &req.expires_at {
        parse_time(s)?
    } else if let Some(p) = &req.expires_in {
        add_period(&parse_period("expires_in", p)?, now)?
    } else if req.never_expires {
        return match &policy.max_expiration {
            Some(max) => Err(invalid(
                "expires_at",
                format!("keys must expire: MaxExpirationPeriod is {max} (empty it to allow keys that never expire)"),
            )),
            None => Ok(None),
        };
    } else {
        // The default lifetime, clamped to the maximum; if neither is set, never.
        let default = policy
            .default_expiration
            .as_ref()
            .and_then(|p| p.add_to(now));
        let max = policy.max_expiration.as_ref().and_then(|p| p.add_to(now));
        match (default, max) {
            (Some(d), Some(m)) => d.min(m),
            (Some(d), None) => d,
            (None, Some(m)) => m,
            (None, None) => return Ok(None),
        }
    };
    check_expiry_range(policy, at, now)?;
    Ok(Some(at))
}

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_tests;

/// Write `count` keys for `owner` straight into a store that no daemon holds open, in
/// batched transactions (benchmarks and load tests). Returns one of the secrets.
/// Nothing is audited per key; one audit entry records the whole seeding.
pub fn seed(
    store: &Store,
    hasher: &KeyHasher,
    owner: &str,
    scopes: &[String],
    count: usize,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Secret, StoreError> {
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
            put_keys.push(KeyRecord {
                id: Uuid::now_v7(),
                name: format!("seed-{}", done + i),
                description: String::new(),
                owner: owner.to_owned(),
                scopes: scopes.to_vec(),
                hash: hex::encode(hash),
                previous_hash: None,
                previous_valid_until: None,
                kind: KeyKind::Generated,
                state: KeyState::Enabled,
                created_at: now,
                updated_at: now,
                last_used_at: None,
                expires_at,
                ip_filters: Vec::new(),
                headers: Vec::new(),
                removed_at: None,
                usage: UsageCounts::default(),
                alerting: Default::default(),
                admin_restrictions: AdminRestrictions::default(),
                user_secret: UserSecret::None,
            });
        }
        let audit = if done == 0 {
            vec![AuditEntry {
                seq: 0,
                at: now,
                actor: "seed".to_owned(),
                action: "seed".to_owned(),
                key_id: None,
                detail: format!("{count} keys for {owner}"),
            }]
        } else {
            Vec::new()
        };
        store.commit(Batch {
            put_keys,
            audit,
            retire: vec![],
        })?;
        done += n;
    }
    sample.ok_or_else(|| StoreError::Db("nothing to seed (count is 0)".into()))
}
