//! The in-memory index: every key by id, entry number and (through the slot
//! [`Table`]) keyed hash, with the interned owners and scope sets, the name and
//! quota checks, and the status counts. Verification reads it without touching the
//! store; a change replaces a key's entry under the write lock ([`Index::publish`]).

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::KeyError;
use super::live::{refusal, Effective, Extra, Live};
use super::status::{counted_as, Lapse, StatusCounts};
use super::table::{self, Hit, Slot, SlotInit, SlotUsage, Table, NEVER};
use crate::config::ipfilter;
use crate::config::{Directory, Policy};
use crate::model::{KeyHash, KeyRecord, KeyRow, KeyState, Status, UsageCounts};

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Verification slots by keyed hash.
    pub(super) table: Table,
    /// Every key (all states), by entry number; `None` = free.
    pub(super) entries: Vec<Option<Arc<Live>>>,
    pub(super) free: Vec<u32>,
    pub(super) by_id: HashMap<Uuid, u32>,
    /// Hash of (owner, lower-case name) of every key not removed → its entry: the
    /// uniqueness check without a scan of all keys, at ~13 bytes per key.
    pub(super) names: HashMap<u64, u32>,
    /// Interned owners and scope sets: a few distinct values shared by many keys.
    pub(super) owners: HashSet<Arc<str>>,
    pub(super) scope_sets: Vec<Arc<[String]>>,
    pub(super) scope_numbers: HashMap<Arc<[String]>, u16>,
    pub(super) last_owner: Option<Arc<str>>,
    pub(super) last_scope_set: Option<(Arc<[String]>, u16)>,
    /// Keys not removed per owner: `[ApiKey] MaxKeysPerUser` without a scan.
    pub(super) owned: HashMap<Arc<str>, u32>,
    /// The scopes each configured user's groups grant now; an owner missing here is
    /// not configured. Replaced on reload ([`Index::regrant`]).
    pub(super) grants: HashMap<String, std::collections::BTreeSet<String>>,
    /// Effective scopes per (interned owner, interned own scope set), by address:
    /// a few combinations shared by many keys. Holds both `Arc`s, so an address
    /// cannot be reused while its entry is here. Cleared when the grants change.
    pub(super) effective_cache: HashMap<(usize, usize), Pinned>,
    /// Keys per status for `/metrics`, kept as keys change and as the expiry sweep
    /// finds them expired or inactive, so a scrape reads five numbers (see
    /// [`StatusCounts`]).
    pub(super) counts: StatusCounts,
    /// By entry number, the time-driven status ([`Lapse`]) the last expiry sweep
    /// saw: what an enabled key is counted under. Beside the entries, not in them,
    /// so the sweep reads a byte per key instead of visiting every entry; a changed
    /// key keeps its entry number, and so its lapse until the next sweep.
    pub(super) swept: Vec<AtomicU8>,
}

/// A cached [`Effective`] with the owner and own-set `Arc`s whose addresses key it.
pub(super) type Pinned = (Arc<str>, Arc<[String]>, Effective);

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

pub(super) fn grants_of(
    directory: &Directory,
) -> HashMap<String, std::collections::BTreeSet<String>> {
    directory
        .users
        .keys()
        .filter_map(|u| Some((u.clone(), directory.rights(u)?.scopes)))
        .collect()
}

impl Index {
    pub(super) fn with_capacity(n: usize) -> Self {
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
    pub(super) fn get(&self, id: &Uuid) -> Option<&Arc<Live>> {
        self.at(*self.by_id.get(id)?)
    }

    /// The entry with number `e`.
    pub(super) fn at(&self, e: u32) -> Option<&Arc<Live>> {
        self.entries.get(e as usize)?.as_ref()
    }

    /// Every key.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Live>> {
        self.entries.iter().flatten()
    }

    pub(super) fn slot(&self, live: &Live) -> Option<&Slot> {
        if live.life.state == KeyState::Removed {
            return None;
        }
        self.table.current(&live.hash)
    }

    /// Newest known last use of a key: its slot's (which starts from the stored one),
    /// or the stored one for a removed key.
    pub(super) fn last_used(&self, live: &Live) -> Option<DateTime<Utc>> {
        self.slot(live)
            .map_or(live.stored_last_used, Slot::last_used)
    }

    /// Whether the key of `slot` accepts a client at `ip` (any, without IP filters).
    pub(super) fn admits(&self, slot: &Slot, ip: Option<IpAddr>) -> bool {
        slot.flags & table::HAS_IP_FILTERS == 0
            || self
                .at(slot.entry)
                .is_some_and(|live| ip.is_some_and(|ip| ipfilter::allows(live.ip_filters(), ip)))
    }

    /// Whether the key of `slot` holds every one of `scopes`.
    pub(super) fn holds(&self, slot: &Slot, scopes: &[&str]) -> bool {
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

    /// Last use, and counters not yet written, as known in memory, for a key that
    /// has a slot.
    pub(super) fn usage(&self, live: &Live) -> Option<(Option<DateTime<Utc>>, UsageCounts)> {
        let slot = self.slot(live)?;
        Some((slot.last_used(), usage_counts(slot, live)))
    }

    /// Take key `id`'s usage not yet written, if it has any (its slot is about to go).
    pub(super) fn take_unflushed(&self, id: Uuid) -> Option<crate::store::UsageUpdate> {
        let live = self.get(&id)?;
        let slot = self.slot(live)?;
        if !slot.is_dirty() {
            return None;
        }
        slot.set_dirty(false);
        let (verifications, denied) = slot.take_counts();
        Some(crate::store::UsageUpdate {
            id,
            last_used_at: slot.last_used(),
            counts: UsageCounts {
                verifications,
                denied,
                routes: live.take_route_counts(),
            },
        })
    }

    /// Add the usage counted in memory since the last flush to a record read from
    /// the store.
    pub(super) fn merge_usage(&self, rec: &mut KeyRecord, live: &Live) {
        if let Some((last_used, counts)) = self.usage(live) {
            rec.last_used_at = last_used.max(rec.last_used_at);
            rec.usage.add(&counts);
        }
    }

    /// Build the entry for `loaded` (a record already read with
    /// [`KeyRow::from_record`], so that nothing can fail once it is committed) and put
    /// it in place of the key's current one, if any, taking over that one's usage
    /// counters.
    pub(super) fn publish(&mut self, loaded: KeyRow) -> Arc<Live> {
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
        // The later last use: this node's, or the stored one (other nodes' uses).
        let usage = match usage {
            Some((last, valid, denied, dirty)) => {
                (last.max(stored_usage(&loaded).0), valid, denied, dirty)
            }
            None => stored_usage(&loaded),
        };
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
    pub(super) fn load(&mut self, l: KeyRow) {
        let entry = self.allocate();
        let usage = stored_usage(&l);
        let live = Arc::new(self.entry(l, entry));
        self.insert(live, usage);
    }

    /// The status a key is counted under.
    pub(super) fn counted(&self, live: &Live) -> &'static str {
        let lapse = self
            .swept
            .get(live.entry as usize)
            .map_or(Lapse::NONE, |l| l.load(Ordering::Relaxed));
        counted_as(live.life.state, lapse, live.refusal())
    }

    pub(super) fn allocate(&mut self) -> u32 {
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

    pub(super) fn scope_number(&mut self, scopes: &[String]) -> (Arc<[String]>, u16) {
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

    pub(super) fn entry(&mut self, l: KeyRow, entry: u32) -> Live {
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
            first_use: l
                .awaits_first_use
                .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false))),
        };
        // Per-route counts in memory are those not yet written (see stored_usage).
        let routes = None;
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
    pub(super) fn effective(
        &mut self,
        owner: &Arc<str>,
        own: &Arc<[String]>,
        own_number: u16,
    ) -> Effective {
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
    pub(super) fn regrant(&mut self, directory: &Directory) -> Regranted {
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

    pub(super) fn insert(&mut self, live: Arc<Live>, usage: SlotUsage) {
        let e = live.entry as usize;
        self.counts.add(self.counted(&live), 1);
        if live.life.state != KeyState::Removed {
            self.table.put_current(&SlotInit {
                hash: live.hash,
                life: live.life,
                entry: live.entry,
                flags: live.slot_flags(),
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
    pub(super) fn forget(&mut self, old: &Live) {
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
    pub(super) fn remove_slot_of(&mut self, hash: &KeyHash, entry: u32) {
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
    pub(super) fn count_owned(&mut self, owner: &Arc<str>, added: bool) {
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
    pub(super) fn owned_by(&self, owner: &str) -> u32 {
        self.owned.get(owner).copied().unwrap_or(0)
    }
}

/// A slot's usage for a key loaded from the store: its last use, and counters
/// that count uses not yet written (several nodes add theirs to the stored ones).
pub(super) fn stored_usage(row: &KeyRow) -> SlotUsage {
    (
        row.last_used_at.map_or(NEVER, |t| t.timestamp()),
        0,
        0,
        false,
    )
}

/// The counters of a key not yet written: its slot's, and its entry's per route.
pub(super) fn usage_counts(slot: &Slot, live: &Live) -> UsageCounts {
    let (verifications, denied) = slot.counts();
    UsageCounts {
        verifications,
        denied,
        routes: live.route_counts(),
    }
}

impl Index {
    /// Note for every key whether its slot is expired or inactive at `now`,
    /// moving it between the status counts `/metrics` reads, and hand each lapsed
    /// slot to `lapsed` with the audit action for it.
    pub(super) fn note_lapses(
        &self,
        policy: &Policy,
        now: DateTime<Utc>,
        mut lapsed: impl FnMut(&table::Slot, &'static str),
    ) {
        for slot in self.table.iter() {
            let status = slot.status(policy, now);
            let lapse = Lapse::of(status);
            let Some(seen) = self.swept.get(slot.entry as usize) else {
                continue;
            };
            let before = seen.swap(lapse, Ordering::Relaxed);
            if before != lapse && status != Status::Disabled {
                // Disabled keys count as disabled whatever their lapse.
                let refused = slot.flags & table::REFUSED;
                self.counts
                    .add(counted_as(KeyState::Enabled, before, refused), -1);
                self.counts
                    .add(counted_as(KeyState::Enabled, lapse, refused), 1);
            }
            match status {
                Status::Expired => lapsed(slot, "expired"),
                Status::Inactive => lapsed(slot, "inactive"),
                _ => {}
            }
        }
    }

    /// [`Index::note_lapses`], returning the lapsed keys whose lapse is not yet
    /// recorded, with the audit action for each.
    pub(super) fn sweep_statuses(
        &self,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Vec<(Arc<Live>, &'static str)> {
        let mut lapsed = Vec::new();
        self.note_lapses(policy, now, |slot, action| {
            // Only lapsed keys' entries are visited.
            if let Some(live) = self.at(slot.entry).filter(|l| !l.lapse_recorded) {
                lapsed.push((live.clone(), action));
            }
        });
        lapsed
    }
}

pub(super) fn name_hash(owner: &str, name: &str) -> u64 {
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

pub(super) fn check_unique_name(
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
        return Err(KeyError::Taken {
            field: "name",
            message: format!(
                "{owner} already has a key named {name:?} (names are unique per owner, ignoring case)"
            ),
        });
    }
    Ok(())
}

/// Index entries read under one hold of its read lock by a scan of every key: a
/// change waiting for the write lock (and the verifications queued behind it)
/// waits for one chunk at most.
pub(super) const SCAN_CHUNK: usize = 4096;

/// Hand every key of the index, with its newest known last use, to `f`, a chunk at
/// a time (see [`SCAN_CHUNK`]).
pub(super) fn each_key(index: &RwLock<Index>, mut f: impl FnMut(&Live, Option<DateTime<Utc>>)) {
    let mut next = 0;
    loop {
        let chunk: Vec<(Arc<Live>, Option<DateTime<Utc>>)> = {
            let index = index.read();
            let Some(rest) = index.entries.get(next..).filter(|r| !r.is_empty()) else {
                break;
            };
            let chunk = rest.get(..SCAN_CHUNK).unwrap_or(rest);
            next += chunk.len();
            chunk
                .iter()
                .flatten()
                .map(|l| (l.clone(), index.last_used(l)))
                .collect()
        };
        for (l, last_used) in &chunk {
            f(l, *last_used);
        }
    }
}
