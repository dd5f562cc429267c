//! A per-thread front for fresh hits: the server's workers answer most hits
//! without touching moka.
//!
//! Why: every moka lookup writes lines that every core writes (its read
//! log, its entry's access time and count, and, every few dozen reads, its
//! book-keeping deques), so a shared cache cannot scale past what its
//! lookups allow (`cargo bench --bench scaling -- --moka-alone`: 1.3×
//! to 1.45× from 1 to 2 threads). The front is a small direct-mapped table per
//! thread of recently read users, each with its own copy of the body, so a
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

struct Slot {
    key: CacheKey,
    /// The id's stripe version when stored.
    version: u64,
    user: CachedUser,
}

/// One thread's front, for one cache.
struct Front {
    /// The cache it belongs to ([`UserCache`](super::UserCache)'s id).
    owner: u64,
    slots: Box<[Option<Slot>]>,
}

thread_local! {
    static FRONT: RefCell<Option<Front>> = const { RefCell::new(None) };
}

fn index(key: &CacheKey, len: usize) -> usize {
    // The low half (it varies with the generation, so two generations of
    // an id do not fight for one slot); len is a power of two.
    (key.raw() as u64 as usize) & (len - 1)
}

/// The fresh user under `key` in this thread's front of cache `owner`,
/// if its stripe version is still `version`.
pub(super) fn get(owner: u64, key: &CacheKey, version: u64, now: Instant) -> Option<CachedUser> {
    FRONT.with(|f| {
        let mut f = f.try_borrow_mut().ok()?;
        let front = f.as_mut().filter(|f| f.owner == owner)?;
        let i = index(key, front.slots.len());
        let slot = front.slots[i].as_ref()?;
        if slot.key != *key {
            return None;
        }
        if slot.version != version || !slot.user.is_fresh(now) {
            front.slots[i] = None;
            return None;
        }
        Some(slot.user.clone())
    })
}

/// Keeps `user` (as read from moka under `key` at stripe version
/// `version`) in this thread's front of cache `owner`, which holds at most
/// `capacity` (a power of two, at most [`SLOTS`]). `user` must be a copy
/// this thread owns ([`Stored::into_front_copy`] of a moka read), so its
/// clones write reference counts no other core touches.
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
            });
        }
        let Some(front) = f.as_mut() else {
            return;
        };
        let i = index(&key, front.slots.len());
        front.slots[i] = Some(Slot { key, version, user });
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
}
