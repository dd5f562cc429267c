//! A per-thread front for fresh hits: the server's workers answer most hits
//! without touching moka.
//!
//! Why: every moka lookup writes lines that every core writes (its read
//! log, its entry's access time and count, and, every few dozen reads, its
//! book-keeping deques), so a shared cache cannot scale past what its
//! lookups allow (`cargo bench --bench scaling -- --moka-alone`: 1.3×
//! to 1.45× from 1 to 2 threads). The front is a small two-way set-associative
//! table per thread of recently read users, each with its own copy of the body, so a
//! front hit writes only memory its thread owns.
//!
//! It can never serve what moka would not:
//! - it is keyed by the same [`CacheKey`], which carries the id's write
//!   generation and the purge epoch: a write, a purge or an eviction from
//!   another replica changes the key, and the old copy is never found again;
//! - an entry replaced or dropped under the same key (a forced refresh, a
//!   user gone upstream) bumps the id's stripe version, which every front
//!   hit compares (a read of a line written only then);
//! - it serves fresh entries only: stale serving and refreshes go through
//!   moka, as before; and nothing is served while the cache is not
//!   serving (the route checks before the lookup);
//! - it holds only what a moka lookup returned, so single flight and one
//!   upstream call per user per TTL are unchanged. (An entry moka dropped
//!   for room may still be answered from a front until its TTL ends: it is
//!   no older than the TTL allows.)
//!
//! Bounded: [`SLOTS`] entries per thread at most (fewer for a small cache),
//! each a user's body copy plus about 60 bytes. Front hits do not reach
//! moka's frequency sketch; moka still sees each thread's first read of an
//! entry and every read the front misses.

use std::cell::RefCell;
use std::time::Instant;

use super::entry::CachedUser;
use super::key::CacheKey;

/// Most entries a thread's front holds.
pub(super) const SLOTS: usize = 1 << 15;

/// Ways per set: a key may sit in either slot of its pair, so two hot
/// users whose keys share an index do not push each other out on every
/// read (with one way, a quarter of 10,000 users share an index with
/// another in 32,768 slots, and each of their reads went to moka).
const WAYS: usize = 2;

struct Slot {
    key: CacheKey,
    /// The id's stripe version when stored.
    version: u64,
    /// The front's tick at its last use: the older of a full pair is
    /// replaced.
    used: u32,
    user: CachedUser,
}

/// One thread's front, for one cache.
struct Front {
    /// The cache it belongs to ([`UserCache`](super::UserCache)'s id).
    owner: u64,
    slots: Box<[Option<Slot>]>,
    /// Counts uses, for [`Slot::used`].
    tick: u32,
}

thread_local! {
    static FRONT: RefCell<Option<Front>> = const { RefCell::new(None) };
}

/// The first slot of `key`'s set (sets of [`WAYS`] adjacent slots).
fn set(key: &CacheKey, len: usize) -> usize {
    // The low half (it varies with the generation, so two generations of
    // an id do not fight for one set); len is a power of two.
    let sets = (len / WAYS).max(1);
    ((key.raw() as u64 as usize) & (sets - 1)) * WAYS
}

/// The fresh user under `key` in this thread's front of cache `owner`,
/// if its stripe version is still `version`.
pub(super) fn get(owner: u64, key: &CacheKey, version: u64, now: Instant) -> Option<CachedUser> {
    FRONT.with(|f| {
        let mut f = f.try_borrow_mut().ok()?;
        let front = f.as_mut().filter(|f| f.owner == owner)?;
        let first = set(key, front.slots.len());
        let ways = front.slots.len().min(WAYS);
        let i = (first..first + ways)
            .find(|&i| front.slots[i].as_ref().is_some_and(|s| s.key == *key))?;
        let tick = front.tick.wrapping_add(1);
        front.tick = tick;
        let slot = front.slots[i].as_mut()?;
        if slot.version != version || !slot.user.is_fresh(now) {
            front.slots[i] = None;
            return None;
        }
        slot.used = tick;
        Some(slot.user.clone())
    })
}

/// Keeps `user` (as read from moka under `key` at stripe version
/// `version`) in this thread's front of cache `owner`, which holds at most
/// `capacity` (a power of two, at most [`SLOTS`]). `user` must be a copy
/// this thread owns ([`Stored::into_front_copy`] of a moka read), so its
/// clones write reference counts no other core touches. It takes the
/// slot of its set that holds `key`, else an empty one, else the one used
/// longest ago.
///
/// [`Stored::into_front_copy`]: super::entry::Stored::into_front_copy
pub(super) fn put(owner: u64, capacity: usize, key: CacheKey, version: u64, user: CachedUser) {
    FRONT.with(|f| {
        let Ok(mut f) = f.try_borrow_mut() else {
            return;
        };
        if f.as_ref().is_none_or(|f| f.owner != owner) {
            *f = Some(Front {
                owner,
                slots: (0..capacity).map(|_| None).collect(),
                tick: 0,
            });
        }
        let Some(front) = f.as_mut() else {
            return;
        };
        let first = set(&key, front.slots.len());
        let ways = first..first + front.slots.len().min(WAYS);
        let slots = &front.slots;
        let i = ways
            .clone()
            .find(|&i| slots[i].as_ref().is_some_and(|s| s.key == key))
            .or_else(|| ways.clone().find(|&i| slots[i].is_none()))
            .or_else(|| {
                // The one used longest ago (ticks wrap: compare ages).
                ways.clone().max_by_key(|&i| {
                    slots[i]
                        .as_ref()
                        .map_or(u32::MAX, |s| front.tick.wrapping_sub(s.used))
                })
            });
        let Some(i) = i else {
            return;
        };
        front.tick = front.tick.wrapping_add(1);
        front.slots[i] = Some(Slot {
            key,
            version,
            used: front.tick,
            user,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn user(ttl: Duration) -> CachedUser {
        CachedUser::new(
            Bytes::from_static(b"{\"id\":\"u\"}"),
            None,
            false,
            ttl,
            None,
        )
    }

    fn key(n: u128) -> CacheKey {
        CacheKey::from_raw(n)
    }

    #[test]
    fn finds_what_it_keeps_for_its_own_cache_only() {
        let now = Instant::now();
        put(1, 8, key(5), 0, user(Duration::from_secs(60)));
        let got = get(1, &key(5), 0, now).expect("kept");
        assert_eq!(got.body().as_ref(), b"{\"id\":\"u\"}");
        assert!(get(2, &key(5), 0, now).is_none(), "another cache's front");
        assert!(get(1, &key(13), 0, now).is_none(), "same slot, other key");
    }

    #[test]
    fn a_new_version_or_an_expired_entry_is_dropped() {
        let now = Instant::now();
        put(3, 8, key(1), 4, user(Duration::from_secs(60)));
        assert!(get(3, &key(1), 5, now).is_none());
        assert!(get(3, &key(1), 4, now).is_none(), "dropped on the mismatch");
        put(3, 8, key(2), 0, user(Duration::ZERO));
        assert!(get(3, &key(2), 0, now).is_none());
    }

    #[test]
    fn two_keys_of_one_set_both_stay_and_a_third_replaces_the_one_used_longest_ago() {
        let now = Instant::now();
        let fresh = || user(Duration::from_secs(60));
        // Capacity 8: 4 sets of 2; keys 1, 5 and 9 share set 1.
        put(5, 8, key(1), 0, fresh());
        put(5, 8, key(5), 0, fresh());
        for _ in 0..3 {
            assert!(get(5, &key(1), 0, now).is_some());
            assert!(get(5, &key(5), 0, now).is_some());
        }
        // Key 1 is used last: key 9 takes key 5's slot.
        assert!(get(5, &key(1), 0, now).is_some());
        put(5, 8, key(9), 0, fresh());
        assert!(get(5, &key(9), 0, now).is_some());
        assert!(get(5, &key(1), 0, now).is_some());
        assert!(get(5, &key(5), 0, now).is_none());
        // Other sets are untouched by this one.
        put(5, 8, key(2), 0, fresh());
        assert!(get(5, &key(2), 0, now).is_some());
        assert!(get(5, &key(1), 0, now).is_some());
    }
}
