//! The verification table: one cache line per key holding everything a verification
//! of that key reads and writes, found by open addressing from the keyed hash.
//!
//! At 1M keys the table and the entries are far larger than the CPU caches, so the
//! cost of a verification is the number of cache lines it misses: a general hash map
//! of pointers to entries touches three or four (control bytes, bucket, the entry's
//! lines). Here a successful verification of a key without IP filters touches one
//! 64-byte slot (two when linear probing steps over a neighbour): its hash tag, state,
//! hard expiry, creation time, scope-set number and usage counters.
//!
//! The slot holds the first 16 bytes of the HMAC-SHA256 of the secret (128 bits: as
//! hard to forge as the full tag for anyone without the server secret); the key's
//! entry ([`super::Live`]) keeps the full 32 bytes, and the store holds them too.
//!
//! Concurrency: slots change only under the index's write lock; readers hold the
//! read lock, and the usage counters are atomics they update in place.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::secret::KeyHash;
use crate::config::Policy;
use crate::model::{KeyState, Lifetime, Status};

/// Empty slot: ends a probe.
const EMPTY: u8 = 0;
/// The current secret of a key.
const CURRENT: u8 = 1;
/// The previous secret of a rotated key, good until `expires_ms`.
const PREVIOUS: u8 = 2;
/// A deleted slot: a probe steps over it.
const TOMBSTONE: u8 = 3;

/// The key has IP filters (read from its entry).
pub const HAS_IP_FILTERS: u8 = 1;
/// The key's owner is not a configured user: the key is refused.
pub const OWNER_UNKNOWN: u8 = 2;
/// The owner's groups grant none of the key's scopes any more: the key is refused.
pub const NO_SCOPES: u8 = 4;
/// Either reason a key in good standing is refused.
pub const REFUSED: u8 = OWNER_UNKNOWN | NO_SCOPES;
/// A rotation waits for this (current) secret's first successful use (`key rotate
/// --until-used`): verification hands that use to [`super::Keys`]'s rotation
/// side. In the flags a verification reads anyway, so other keys pay nothing.
pub const AWAITS_FIRST_USE: u8 = 8;

/// `last_used_s` of a key never used.
pub const NEVER: i64 = i64::MIN;

/// One key's verification state, exactly one cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Slot {
    tag: [u8; 16],
    /// Hard expiry in unix milliseconds, `i64::MAX` = never; for a `PREVIOUS`
    /// slot, the end of the grace period.
    expires_ms: i64,
    /// Creation time, unix milliseconds.
    created_ms: i64,
    /// Last successful verification, unix seconds (`NEVER` if none).
    last_used_s: AtomicI64,
    /// Successful verifications.
    valid: AtomicU64,
    /// Refused verifications of this key (saturating).
    denied: AtomicU32,
    /// Position of the key's entry in the index's entry list.
    pub entry: u32,
    kind: u8,
    state: u8,
    /// `HAS_IP_FILTERS`, `OWNER_UNKNOWN`, `NO_SCOPES`, `AWAITS_FIRST_USE`.
    pub flags: u8,
    /// Usage not yet written to the store.
    dirty: AtomicBool,
    /// Number of the key's effective scope set.
    pub scope_set: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    fn empty() -> Self {
        Self {
            tag: [0; 16],
            expires_ms: 0,
            created_ms: 0,
            last_used_s: AtomicI64::new(NEVER),
            valid: AtomicU64::new(0),
            denied: AtomicU32::new(0),
            entry: 0,
            kind: EMPTY,
            state: 0,
            flags: 0,
            dirty: AtomicBool::new(false),
            scope_set: 0,
        }
    }

    /// Administrative state.
    pub fn state(&self) -> KeyState {
        match self.state {
            0 => KeyState::Enabled,
            1 => KeyState::Disabled,
            _ => KeyState::Removed,
        }
    }

    /// Last use (unix seconds), `NEVER` if none.
    pub fn last_used_s(&self) -> i64 {
        self.last_used_s.load(Ordering::Relaxed)
    }

    /// Last use as a time.
    pub fn last_used(&self) -> Option<DateTime<Utc>> {
        match self.last_used_s() {
            NEVER => None,
            s => DateTime::from_timestamp(s, 0),
        }
    }

    /// Counters: (valid, denied).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.valid.load(Ordering::Relaxed),
            u64::from(self.denied.load(Ordering::Relaxed)),
        )
    }

    /// The usage a replacement slot takes over.
    pub fn usage(&self) -> SlotUsage {
        let (valid, denied) = self.counts();
        (self.last_used_s(), valid, denied, self.is_dirty())
    }

    /// Usage changed since the last write.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Set or clear the dirty flag (the flush).
    pub fn set_dirty(&self, dirty: bool) {
        self.dirty.store(dirty, Ordering::Release);
    }

    /// State and times as the expiry rules take them (millisecond precision).
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            state: self.state(),
            expires_at: (self.expires_ms != i64::MAX)
                .then(|| from_millis(self.expires_ms))
                .flatten(),
            created_at: from_millis(self.created_ms).unwrap_or_default(),
            removed_at: None,
        }
    }

    /// Status at `now`: the rules of [`Lifetime::status`], answered from the slot's
    /// integers while the key is clear of its inactivity deadline.
    #[inline]
    pub fn status(&self, policy: &Policy, now: DateTime<Utc>) -> Status {
        match self.state {
            0 => {}
            1 => return Status::Disabled,
            _ => return Status::Removed,
        }
        let now_ms = now.timestamp_millis();
        if self.expires_ms <= now_ms {
            return Status::Expired;
        }
        let Some(period) = &policy.not_accessed_expiration else {
            return Status::Active;
        };
        if now_ms.saturating_sub(self.activity_ms()) / 1000 < period.min_seconds() {
            return Status::Active;
        }
        self.lifetime().status(policy, self.last_used(), now)
    }

    /// The last activity (creation or last use), in milliseconds since the epoch.
    pub fn activity_ms(&self) -> i64 {
        match self.last_used_s() {
            NEVER => self.created_ms,
            last_s => last_s.saturating_mul(1000).max(self.created_ms),
        }
    }

    /// Count a successful verification at `now_s`.
    pub fn touch(&self, now_s: i64) {
        if self.last_used_s.load(Ordering::Relaxed) < now_s {
            self.last_used_s.fetch_max(now_s, Ordering::Relaxed);
        }
        self.valid.fetch_add(1, Ordering::Relaxed);
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Raise the last use to `s` (unix seconds) if that is later: a use another
    /// node wrote, not one to write again.
    pub fn raise_last_used(&self, s: i64) {
        if self.last_used_s.load(Ordering::Relaxed) < s {
            self.last_used_s.fetch_max(s, Ordering::Relaxed);
        }
    }

    /// Take the counters, which start again from zero: what the flush adds to the
    /// stored counts.
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.valid.swap(0, Ordering::Relaxed),
            u64::from(self.denied.swap(0, Ordering::Relaxed)),
        )
    }

    /// Give back counters taken for a write that failed.
    pub fn restore_counts(&self, valid: u64, denied: u64) {
        self.valid.fetch_add(valid, Ordering::Relaxed);
        let more = u32::try_from(denied).unwrap_or(u32::MAX);
        let _ = self
            .denied
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_add(more))
            });
    }

    /// Count a refused verification.
    pub fn deny(&self) {
        let _ = self
            .denied
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_add(1));
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

/// Usage of a key as a slot holds it: (last used seconds or `NEVER`, valid, denied,
/// dirty).
pub type SlotUsage = (i64, u64, u64, bool);

/// What to put in a key's slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotInit {
    /// Keyed hash of the current secret.
    pub hash: KeyHash,
    /// State and times.
    pub life: Lifetime,
    /// Entry position.
    pub entry: u32,
    /// Flags.
    pub flags: u8,
    /// Scope-set number.
    pub scope_set: u16,
    /// Usage to start from.
    pub usage: SlotUsage,
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Millisecond time back to a `DateTime`.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// A hit: the slot of the key's current secret, and whether the presented secret
/// was the previous one (still in its grace period; checked by the caller).
pub enum Hit<'a> {
    /// The presented secret is the key's current one.
    Current(&'a Slot),
    /// The previous secret of a rotated key: grace end (ms) and the entry number.
    Previous {
        /// End of the grace period, unix milliseconds.
        until_ms: i64,
        /// Entry number of the key.
        entry: u32,
    },
}

/// Open-addressing table of slots (linear probing; built for a load of 5/8, grown by
/// rebuilding when it passes 7/10 counting tombstones).
#[derive(Debug)]
pub struct Table {
    slots: Vec<Slot>,
    live: usize,
    tombstones: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// The first slot to probe for `tag` in a table of `cap` slots. The tag is an HMAC
/// output under a secret key, so its bytes are uniform already; the multiply-shift
/// maps them onto any capacity, not only powers of two.
fn home(tag: &[u8; 16], cap: usize) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&tag[..8]);
    ((u128::from(u64::from_le_bytes(b)) * cap as u128) >> 64) as usize
}

fn next(i: usize, cap: usize) -> usize {
    if i + 1 == cap {
        0
    } else {
        i + 1
    }
}

fn tag_of(hash: &KeyHash) -> [u8; 16] {
    let mut t = [0u8; 16];
    t.copy_from_slice(&hash[..16]);
    t
}

impl Table {
    /// Room for `n` keys without growing.
    pub fn with_capacity(n: usize) -> Self {
        let cap = (n.max(10) * 8 / 5).max(16);
        let mut slots = Vec::with_capacity(cap);
        slots.resize_with(cap, Slot::empty);
        Self {
            slots,
            live: 0,
            tombstones: 0,
        }
    }

    /// Slots in use (current and previous secrets).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// The slots of current secrets, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.kind == CURRENT)
    }

    fn find(&self, tag: &[u8; 16]) -> Option<usize> {
        let cap = self.slots.len();
        let mut i = home(tag, cap);
        loop {
            let s = &self.slots[i];
            match s.kind {
                EMPTY => return None,
                CURRENT | PREVIOUS if s.tag == *tag => return Some(i),
                _ => {}
            }
            i = next(i, cap);
        }
    }

    /// Look up a presented secret's keyed hash.
    #[inline]
    pub fn get(&self, hash: &KeyHash) -> Option<Hit<'_>> {
        let i = self.find(&tag_of(hash))?;
        let s = &self.slots[i];
        if s.kind == CURRENT {
            Some(Hit::Current(s))
        } else {
            Some(Hit::Previous {
                until_ms: s.expires_ms,
                entry: s.entry,
            })
        }
    }

    /// The slot of a key's current secret.
    pub fn current(&self, hash: &KeyHash) -> Option<&Slot> {
        let i = self.find(&tag_of(hash))?;
        let s = &self.slots[i];
        (s.kind == CURRENT).then_some(s)
    }

    /// Whether a secret with this hash is in the table (current or previous).
    pub fn contains(&self, hash: &KeyHash) -> bool {
        self.find(&tag_of(hash)).is_some()
    }

    fn grow_if_needed(&mut self) {
        if (self.live + self.tombstones + 1) * 10 > self.slots.len() * 7 {
            let mut bigger = Table::with_capacity(self.live + 1);
            for s in self.slots.drain(..) {
                if s.kind == CURRENT || s.kind == PREVIOUS {
                    bigger.place(s);
                }
            }
            *self = bigger;
        }
    }

    fn place(&mut self, slot: Slot) {
        let cap = self.slots.len();
        let mut i = home(&slot.tag, cap);
        loop {
            match self.slots[i].kind {
                EMPTY => break,
                TOMBSTONE => {
                    self.tombstones -= 1;
                    break;
                }
                _ => i = next(i, cap),
            }
        }
        self.slots[i] = slot;
        self.live += 1;
    }

    /// Put a key's current secret in (replacing the slot with the same hash, if any:
    /// its usage counters are kept when `init.usage` is `None`).
    pub fn put_current(&mut self, init: &SlotInit) {
        let tag = tag_of(&init.hash);
        let (last, valid, denied, dirty) = init.usage;
        let slot = Slot {
            tag,
            expires_ms: init.life.expires_at.map_or(i64::MAX, millis),
            created_ms: millis(init.life.created_at),
            last_used_s: AtomicI64::new(last),
            valid: AtomicU64::new(valid),
            denied: AtomicU32::new(u32::try_from(denied).unwrap_or(u32::MAX)),
            entry: init.entry,
            kind: CURRENT,
            state: match init.life.state {
                KeyState::Enabled => 0,
                KeyState::Disabled => 1,
                KeyState::Removed => 2,
            },
            flags: init.flags,
            dirty: AtomicBool::new(dirty),
            scope_set: init.scope_set,
        };
        self.put(slot);
    }

    /// Give the key of current secret `hash` another effective scope set and refusal
    /// flags (`OWNER_UNKNOWN`, `NO_SCOPES` or 0), in place: its usage counters stay.
    pub fn regrant(&mut self, hash: &KeyHash, scope_set: u16, refused: u8) {
        if let Some(i) = self.find(&tag_of(hash)) {
            let s = &mut self.slots[i];
            if s.kind == CURRENT {
                s.scope_set = scope_set;
                s.flags = (s.flags & !REFUSED) | (refused & REFUSED);
            }
        }
    }

    /// Put the previous secret of a rotated key in, good until `until`.
    pub fn put_previous(&mut self, hash: &KeyHash, until: DateTime<Utc>, entry: u32) {
        let mut slot = Slot::empty();
        slot.tag = tag_of(hash);
        slot.kind = PREVIOUS;
        slot.expires_ms = millis(until);
        slot.entry = entry;
        self.put(slot);
    }

    fn put(&mut self, slot: Slot) {
        if let Some(i) = self.find(&slot.tag) {
            self.slots[i] = slot;
            return;
        }
        self.grow_if_needed();
        self.place(slot);
    }

    /// Take a secret out; returns its slot (with the usage counters) if it was in.
    pub fn remove(&mut self, hash: &KeyHash) -> Option<Slot> {
        let i = self.find(&tag_of(hash))?;
        let mut gone = Slot::empty();
        gone.kind = TOMBSTONE;
        let old = std::mem::replace(&mut self.slots[i], gone);
        self.live -= 1;
        self.tombstones += 1;
        // A run of tombstones before an empty slot ends no probe: clear it.
        let cap = self.slots.len();
        if self.slots[next(i, cap)].kind == EMPTY {
            let mut j = i;
            while self.slots[j].kind == TOMBSTONE {
                self.slots[j].kind = EMPTY;
                self.tombstones -= 1;
                j = if j == 0 { cap - 1 } else { j - 1 };
            }
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn life() -> Lifetime {
        Lifetime {
            state: KeyState::Enabled,
            expires_at: None,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            removed_at: None,
        }
    }

    fn init(hash: KeyHash, entry: u32) -> SlotInit {
        SlotInit {
            hash,
            life: life(),
            entry,
            flags: 0,
            scope_set: 0,
            usage: (NEVER, 0, 0, false),
        }
    }

    fn h(seed: u64) -> KeyHash {
        use sha2::{Digest, Sha256};
        Sha256::digest(seed.to_le_bytes()).into()
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
    }

    #[test]
    fn put_get_replace_remove() {
        let mut t = Table::default();
        t.put_current(&init(h(1), 7));
        let Some(Hit::Current(s)) = t.get(&h(1)) else {
            panic!("missing")
        };
        assert_eq!(s.entry, 7);
        s.touch(100);
        // Replacing the slot of the same secret with carried-over usage.
        let (v, d) = s.counts();
        let mut i = init(h(1), 7);
        i.usage = (s.last_used_s(), v, d, true);
        i.life.state = KeyState::Disabled;
        t.put_current(&i);
        assert_eq!(t.len(), 1);
        let s = t.current(&h(1)).unwrap();
        assert_eq!(s.state(), KeyState::Disabled);
        assert_eq!(s.counts(), (1, 0));
        assert_eq!(s.last_used_s(), 100);
        t.put_previous(&h(2), Utc::now(), 7);
        assert!(matches!(t.get(&h(2)), Some(Hit::Previous { entry: 7, .. })));
        assert!(t.current(&h(2)).is_none());
        assert!(t.remove(&h(1)).is_some());
        assert!(t.get(&h(1)).is_none());
        assert!(t.get(&h(2)).is_some());
        assert!(t.get(&h(3)).is_none());
    }

    proptest! {
        /// The table agrees with a HashMap under any sequence of inserts and removals
        /// (growth, tombstones, probe runs across the end of the array).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u64..200, any::<bool>()), 1..600)) {
            let mut t = Table::with_capacity(0);
            let mut m: HashMap<u64, u32> = HashMap::new();
            for (i, (k, insert)) in ops.iter().enumerate() {
                let e = u32::try_from(i).unwrap();
                if *insert {
                    t.put_current(&init(h(*k), e));
                    m.insert(*k, e);
                } else {
                    prop_assert_eq!(t.remove(&h(*k)).is_some(), m.remove(k).is_some());
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for k in 0..200u64 {
                match (t.current(&h(k)), m.get(&k)) {
                    (Some(s), Some(e)) => prop_assert_eq!(s.entry, *e),
                    (None, None) => {}
                    (a, b) => prop_assert!(false, "key {k}: table {:?} map {:?}", a.map(|s| s.entry), b),
                }
            }
        }
    }
}

#[cfg(test)]
mod status_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn policy(inactivity: &str) -> Policy {
        let text = format!(
            "[ApiKey]\nMaxExpirationPeriod = \"\"\nNotAccessedExpirationPeriod = \"{inactivity}\"\n"
        );
        crate::config::from_text(&text).unwrap().policy
    }

    proptest! {
        /// The slot's integer fast path gives the status the record rules give, for
        /// times at millisecond precision (what the slot keeps).
        #[test]
        fn slot_status_matches_the_record_rules(
            created in 1_700_000_000_000i64..1_800_000_000_000,
            expires_after in proptest::option::of(0i64..40_000_000_000),
            used_after in proptest::option::of(0i64..20_000_000),
            now_after in 0i64..40_000_000_000,
            state in 0u8..3,
            inactivity in prop_oneof![Just(""), Just("p3m"), Just("p2w"), Just("pt10m"), Just("p1y")],
        ) {
            let policy = policy(inactivity);
            let life = Lifetime {
                state: match state { 0 => KeyState::Enabled, 1 => KeyState::Disabled, _ => KeyState::Removed },
                expires_at: expires_after.map(|e| from_millis(created + e).unwrap()),
                created_at: from_millis(created).unwrap(),
                removed_at: None,
            };
            let last_used_s = used_after.map_or(NEVER, |u| created / 1000 + u);
            let mut t = Table::default();
            let hash = [7u8; 32];
            t.put_current(&SlotInit { hash, life, entry: 0, flags: 0, scope_set: 0, usage: (last_used_s, 0, 0, false) });
            let slot = t.current(&hash).unwrap();
            let now = from_millis(created + now_after).unwrap();
            let last_used = (last_used_s != NEVER).then(|| DateTime::from_timestamp(last_used_s, 0).unwrap());
            prop_assert_eq!(slot.status(&policy, now), life.status(&policy, last_used, now));
        }
    }
}
