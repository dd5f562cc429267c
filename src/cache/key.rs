//! Cache keys: which key names an id now, and moka's hasher for them.
//!
//! A key is the hash of the organization and the id (the high half) and a
//! hash of both with the id's write generation and the purge epochs (the
//! low half): the same id in two organizations is two keys, and a write or
//! a purge in one organization moves only its own ids on. A write to a user
//! (or a purge) moves its generation (the epoch) on *before* evicting, so
//! a fetch that started earlier fills a key nobody reads any more.
//! Generations live in a fixed array of striped counters (ids hash onto
//! [`GEN_STRIPES`] stripes), so memory stays bounded; two ids sharing a
//! stripe only cost each other an extra miss.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::org::Org;

/// Number of version stripes in the store (the fronts' invalidation).
pub(super) const STRIPES: usize = 4096;

/// Number of write generation stripes: a write to one user moves its
/// stripe on, so every other user cached under that stripe is fetched again
/// on its next read. With a million users cached that is about 15 users per
/// write (it was 244 with 4,096 stripes, and a loop of 1,000 writes left a
/// fifth of the cache cold) for 256 KiB per cache. A hit reads one stripe.
pub(super) const GEN_STRIPES: usize = 1 << 16;

/// A cache key: 128 bits of two independently keyed SipHashes of the id
/// (and its write generation). Two live keys collide with probability
/// about n²/2¹²⁹ (10⁻²⁷ for a million entries), and the per-process
/// random keys leave no way to aim for a collision. A key is a plain
/// `u128`, so moka stores no string and a lookup allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey(u128);

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: hand moka 64 of its bits.
        state.write_u64(self.0 as u64 ^ (self.0 >> 64) as u64);
    }
}

impl CacheKey {
    /// The key's bits (a set of keys being refreshed holds these).
    pub fn raw(self) -> u128 {
        self.0
    }

    /// The key with these bits (tests).
    #[cfg(test)]
    pub(super) fn from_raw(bits: u128) -> Self {
        Self(bits)
    }

    /// The id's hash (the high half): its stripe and its shard.
    #[inline]
    pub(super) fn id_hash(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The key under which this key's refresh runs its single flight: a
    /// refresh must not find the stale entry it is replacing.
    pub(super) fn refresh(self) -> Self {
        Self(self.0 ^ 1)
    }
}

/// moka's hasher for [`CacheKey`]: the key's bits are the hash.
#[derive(Debug, Clone, Default)]
pub struct KeyBits;

/// See [`KeyBits`].
#[derive(Debug, Default)]
pub struct KeyBitsHasher(u64);

impl BuildHasher for KeyBits {
    type Hasher = KeyBitsHasher;

    fn build_hasher(&self) -> KeyBitsHasher {
        KeyBitsHasher(0)
    }
}

impl Hasher for KeyBitsHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key hashes more than its u64 (it does not);
        // stay correct anyway.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Names each id's current key: per-stripe write generations, the purge
/// epoch, and the two per-process hash keys.
#[derive(Debug)]
pub(super) struct Keys {
    /// Per-stripe write generations (wrapping: a stripe would need 2³²
    /// writes within one TTL to name an old key again).
    gens: Box<[AtomicU32]>,
    /// Bumped by a full purge.
    epoch: AtomicU64,
    /// Hashes an id (its stripe, and the key's high half).
    id_hasher: RandomState,
    /// Hashes (id, generation, epoch): the key's low half.
    gen_hasher: RandomState,
}

impl Keys {
    /// Every id at generation 0, epoch 0, under fresh hash keys.
    pub(super) fn new() -> Self {
        Self {
            gens: (0..GEN_STRIPES).map(|_| AtomicU32::new(0)).collect(),
            epoch: AtomicU64::new(0),
            id_hasher: RandomState::new(),
            gen_hasher: RandomState::new(),
        }
    }

    #[inline]
    fn stripe(&self, id_hash: u64) -> &AtomicU32 {
        &self.gens[(id_hash as usize) % GEN_STRIPES]
    }

    /// The id's hash within its organization (its stripe, the key's high
    /// half).
    #[inline]
    fn id_hash(&self, org: &Org, id: &str) -> u64 {
        self.id_hasher.hash_one((org.id().get(), id))
    }

    #[inline]
    fn key_at(&self, org: &Org, id: &str, id_hash: u64, generation: u64) -> CacheKey {
        let epochs = (self.epoch.load(Ordering::Acquire), org.epoch());
        let low = self
            .gen_hasher
            .hash_one((org.id().get(), generation, epochs, id));
        CacheKey(u128::from(id_hash) << 64 | u128::from(low))
    }

    /// The key for `id` in `org` as of now. Every hit takes one:
    /// `#[inline]` keeps it in [`UserCache::key`](super::UserCache::key),
    /// whose body it was.
    #[inline]
    pub(super) fn key(&self, org: &Org, id: &str) -> CacheKey {
        let h = self.id_hash(org, id);
        let generation = u64::from(self.stripe(h).load(Ordering::Acquire));
        self.key_at(org, id, h, generation)
    }

    /// Moves `id` in `org` to its next generation, and returns the key it
    /// had.
    pub(super) fn retire(&self, org: &Org, id: &str) -> CacheKey {
        let h = self.id_hash(org, id);
        let old = u64::from(self.stripe(h).fetch_add(1, Ordering::AcqRel));
        self.key_at(org, id, h, old)
    }

    /// Moves `id` in `org` to its next generation (nothing to evict by key).
    pub(super) fn forget(&self, org: &Org, id: &str) {
        let h = self.id_hash(org, id);
        self.stripe(h).fetch_add(1, Ordering::AcqRel);
    }

    /// Moves every id to a new epoch: no key taken before is made again.
    pub(super) fn retire_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(name: &str) -> Org {
        let key = crate::secret::AdminKey::from_bytes(b"sk-admin-x").expect("key");
        Org::new(name, None, key)
    }

    #[test]
    fn keys_differ_by_organization_id_generation_and_epoch() {
        let c = Keys::new();
        let (o, p) = (org("default"), org("research"));
        let a = c.key(&o, "user_a");
        assert_eq!(a, c.key(&o, "user_a"), "stable while nothing changes");
        assert_ne!(a, c.key(&o, "user_b"));
        assert_ne!(a, c.key(&p, "user_a"), "organization");
        let h = c.id_hash(&o, "user_a");
        assert_ne!(a, c.key_at(&o, "user_a", h, 1), "generation");
        c.retire_all();
        assert_ne!(a, c.key(&o, "user_a"), "epoch");
        let (b, q) = (c.key(&o, "user_a"), c.key(&p, "user_a"));
        o.retire_all();
        assert_ne!(b, c.key(&o, "user_a"), "the organization's epoch");
        assert_eq!(
            q,
            c.key(&p, "user_a"),
            "another organization keeps its keys"
        );
        c.retire(&p, "user_a");
        assert_ne!(q, c.key(&p, "user_a"));
    }

    #[test]
    fn a_write_moves_on_only_the_ids_of_its_stripe() {
        let c = Keys::new();
        let o = org("default");
        let ids: Vec<String> = (0..20_000).map(|i| format!("user_{i}")).collect();
        let before: Vec<CacheKey> = ids.iter().map(|id| c.key(&o, id)).collect();
        c.retire(&o, "user_written");
        let stripe = |id: &str| c.id_hash(&o, id) as usize % GEN_STRIPES;
        let written = stripe("user_written");
        for (id, key) in ids.iter().zip(&before) {
            let moved = c.key(&o, id) != *key;
            assert_eq!(moved, stripe(id) == written, "{id}");
        }
    }
}
