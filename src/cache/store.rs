//! The retrieve-user cache: moka (bounded size, idle bound, single flight),
//! each entry's TTL judged on read ([`expiry`](super::expiry)).
//!
//! Entries are keyed by `(user id, generation)` ([`key`](super::key)). A
//! write to a user (or a purge) bumps that user's generation *before*
//! evicting, so a fetch that started earlier fills a key nobody reads any
//! more: an old version can never come back, and requests arriving after
//! the write never join a fetch that began before it.
//!
//! The entries are split over several moka caches by key (shards). Every
//! moka lookup records the read in its cache's bounded read log (for
//! eviction order), a line all readers write; with shards, two cores only
//! write the same log when their keys land in the same shard (1 in 16 on
//! two cores). A small cache keeps one shard, so its bound stays exact.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::entry::{CachedUser, Stored};
use super::expiry::{Life, DEFAULT_IDLE};
use super::front;
use super::key::{CacheKey, KeyBits, Keys, STRIPES};
use crate::org::Org;

/// Each shard holds at least this many entries, so small caches (tests,
/// tiny deployments) keep one shard and an exact bound.
const MIN_SHARD_ENTRIES: u64 = 4096;

/// How many moka caches a cache of `max_entries` is split into: eight per
/// CPU, a power of two, at most 64, and no shard under
/// [`MIN_SHARD_ENTRIES`].
fn shard_count(max_entries: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_cpu = (cpus * 8).next_power_of_two().min(64);
    let by_size = (max_entries / MIN_SHARD_ENTRIES).max(1) as usize;
    // The largest power of two within both bounds.
    let n = by_cpu.min(by_size);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

type Shard = Cache<CacheKey, Stored, KeyBits>;

/// How a lookup was answered.
#[derive(Debug)]
pub enum Lookup<E> {
    /// Found (or filled by a concurrent request this one waited for).
    Hit(CachedUser),
    /// This request's fetch filled it.
    Filled(CachedUser),
    /// The (shared) fetch did not produce a storable user.
    Failed(Arc<E>),
}

/// The user cache.
pub struct UserCache {
    /// The entries, split by key (see the module docs); a power of two.
    shards: Box<[Shard]>,
    /// Names each id's current key (generations, the purge epoch).
    keys: Keys,
    /// Per-stripe versions, bumped when an entry is replaced or dropped
    /// under the same key (the per-thread fronts check them).
    versions: Box<[AtomicU64]>,
    /// This cache's number, naming its entries in the per-thread fronts.
    id: u64,
    /// Entries per thread front (`None`: no front, for small caches).
    front: Option<usize>,
    /// When entries die, and the idle bound moka drops them at.
    life: Life,
    /// Hits may be served (false while the invalidation bus is down).
    serving: AtomicBool,
}

impl std::fmt::Debug for UserCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCache")
            .field("entries", &self.entry_count())
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl UserCache {
    /// A cache holding at most `max_entries` users, dropping those nobody
    /// read for an hour (tests, benches).
    pub fn new(max_entries: u64) -> Self {
        Self::with_idle(max_entries, DEFAULT_IDLE)
    }

    /// A cache holding at most `max_entries` users, where moka drops an
    /// entry nobody read for `idle` (see [`expiry`](super::expiry)): the
    /// gateway passes the TTL plus the stale window it starts with.
    pub fn with_idle(max_entries: u64, idle: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let n = shard_count(max_entries);
        let per_shard = max_entries.div_ceil(n as u64);
        // Small caches keep an exact bound: no copies outside moka.
        let front = (max_entries >= MIN_SHARD_ENTRIES)
            .then(|| (max_entries as usize).next_power_of_two().min(front::SLOTS));
        Self {
            shards: (0..n)
                .map(|_| {
                    Cache::builder()
                        .max_capacity(per_shard)
                        .time_to_idle(idle)
                        .build_with_hasher(KeyBits)
                })
                .collect(),
            life: Life::new(idle),
            serving: AtomicBool::new(true),
            keys: Keys::new(),
            versions: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            front,
        }
    }

    /// The shard holding `key`: picked by the id's hash (the key's high
    /// half; moka hashes the two halves together), so every generation of
    /// an id, and its refresh key, live in one shard.
    fn shard(&self, key: &CacheKey) -> &Shard {
        &self.shards[(key.id_hash() >> 40) as usize & (self.shards.len() - 1)]
    }

    fn version(&self, key: &CacheKey) -> &AtomicU64 {
        &self.versions[(key.id_hash() as usize) % STRIPES]
    }

    /// The key for `id` in `org` as of now. Take it *before* fetching.
    pub fn key(&self, org: &Org, id: &str) -> CacheKey {
        self.keys.key(org, id)
    }

    /// The stored user under `key`, if any (a plain lookup: allocates
    /// nothing, and its future is small enough to sit in the request's).
    /// A fresh user in this thread's front is answered from there; one read
    /// from moka is copied into it. Nothing is found while the cache is not
    /// [serving](Self::serving): entries may be stale then.
    pub async fn get(&self, key: &CacheKey) -> Option<CachedUser> {
        self.get_at(key, Instant::now()).await
    }

    /// [`get`](Self::get) as of `now`, for a caller that reads the clock
    /// once per request (a clock read is a system call on some hosts).
    pub async fn get_at(&self, key: &CacheKey, now: Instant) -> Option<CachedUser> {
        if !self.serving() {
            return None;
        }
        let Some(front) = self.front else {
            let stored = self.shard(key).get(key).await?;
            if self.life.is_dead(&stored, now) {
                Box::pin(self.drop_dead(key, now)).await;
                return None;
            }
            return Some(stored.into());
        };
        // Read before moka: a replacement bumps it after, so a copy taken
        // across one carries the old version and is dropped at next read.
        let version = self.version(key).load(Ordering::Acquire);
        if let Some(u) = front::get(self.id, key, version, now) {
            return Some(u);
        }
        // moka's read is a copy of its own: this thread's bytes.
        let stored = self.shard(key).get(key).await?;
        if self.life.is_dead(&stored, now) {
            // Boxed: the hit path's future stays small.
            Box::pin(self.drop_dead(key, now)).await;
            return None;
        }
        if !stored.is_fresh(now) {
            return Some(stored.into());
        }
        let u = stored.into_front_copy();
        front::put(self.id, front, *key, version, u.clone());
        Some(u)
    }

    /// Drops the entry under `key` if it is still a dead one (past its TTL
    /// and the stale window at `now`), so the lookup that follows is a miss
    /// with single flight, not a find of the dead entry. The compute reads
    /// the entry again, so a fill that stored since is seen (it is not
    /// dead) and kept. moka does not hold a fill's insert off between the
    /// compute's read and its removal: a fill landing in that window (a
    /// few instructions) is dropped, and the next read fetches once more.
    async fn drop_dead(&self, key: &CacheKey, now: Instant) {
        use moka::ops::compute::Op;
        let life = &self.life;
        self.shard(key)
            .entry(*key)
            .and_compute_with(|found| {
                let dead = found.is_some_and(|e| life.is_dead(e.value(), now));
                std::future::ready(if dead { Op::Remove } else { Op::Nop })
            })
            .await;
    }

    /// [`get`](Self::get), then [`fetch_once`](Self::fetch_once) on a miss,
    /// as the cached route does (the unit tests' shorthand).
    #[cfg(test)]
    pub(crate) async fn get_or_fetch<F, E>(&self, key: CacheKey, fetch: F) -> Lookup<E>
    where
        F: Future<Output = Result<CachedUser, E>>,
        E: Send + Sync + 'static,
    {
        match self.get(&key).await {
            Some(hit) => Lookup::Hit(hit),
            None => self.fetch_once(key, fetch).await,
        }
    }

    /// The miss path, for a caller that has just looked `key` up with
    /// [`get`](Self::get): runs `fetch` once for all concurrent callers (or
    /// returns what a concurrent one stored). The entry API boxes the key
    /// for single flight, so it runs only on a miss.
    pub async fn fetch_once<F, E>(&self, key: CacheKey, fetch: F) -> Lookup<E>
    where
        F: Future<Output = Result<CachedUser, E>>,
        E: Send + Sync + 'static,
    {
        let fetch = async { fetch.await.map(Stored::from) };
        match self.shard(&key).entry(key).or_try_insert_with(fetch).await {
            Ok(entry) if entry.is_fresh() => Lookup::Filled(entry.into_value().into()),
            Ok(entry) => Lookup::Hit(entry.into_value().into()),
            Err(e) => Lookup::Failed(e),
        }
    }

    /// [`fetch_once`](Self::fetch_once) for a fetch that also yields what
    /// only the request running it may see: `fetch` gives the user to store
    /// (or the failure every waiter shares) and what its runner keeps, which
    /// comes back here when this caller ran it (it led the single flight).
    pub(super) async fn fetch_once_keeping<F, E, K>(
        &self,
        key: CacheKey,
        fetch: F,
    ) -> (Lookup<E>, Option<K>)
    where
        F: Future<Output = (Result<CachedUser, E>, K)>,
        E: Send + Sync + 'static,
    {
        let mut kept = None;
        let shared = async {
            let (shared, own) = fetch.await;
            kept = Some(own);
            shared
        };
        let lookup = self.fetch_once(key, shared).await;
        (lookup, kept)
    }

    /// Stores `user` under `key` (a forced refresh). Copies of the old
    /// entry in the per-thread fronts are dropped at their next read.
    pub async fn insert(&self, key: CacheKey, user: CachedUser) {
        self.shard(&key).insert(key, user.into()).await;
        self.version(&key).fetch_add(1, Ordering::AcqRel);
    }

    /// Drops the entry under `key` (the upstream said the user is gone),
    /// and its copies in the per-thread fronts.
    pub async fn remove(&self, key: &CacheKey) {
        self.shard(key).invalidate(key).await;
        self.version(key).fetch_add(1, Ordering::AcqRel);
    }

    /// False while entries can not be trusted (the invalidation bus is
    /// down): no hits are served and nothing is stored.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// See [`UserCache::serving`].
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// How long entries stored from now on outlive their TTL.
    pub fn set_stale_window(&self, window: Duration) {
        self.life.set_grace(window);
    }

    /// How long moka keeps an entry nobody reads (fixed at build).
    pub fn idle(&self) -> Duration {
        self.life.idle()
    }

    /// The key under which `key`'s refresh runs its single flight: a
    /// refresh must not find the stale entry it is replacing.
    pub fn refresh_key(key: CacheKey) -> CacheKey {
        key.refresh()
    }

    /// Evicts `id` in `org`, and makes sure no fetch already under way can
    /// store an older version afterwards.
    pub async fn invalidate(&self, org: &Org, id: &str) {
        let key = self.keys.retire(org, id);
        self.shard(&key).invalidate(&key).await;
    }

    /// [`UserCache::invalidate`] without awaiting, for code that can not:
    /// the entry becomes unreachable at once (the id's generation moves on)
    /// and moka drops it at its TTL or under capacity pressure.
    pub fn forget(&self, org: &Org, id: &str) {
        self.keys.forget(org, id);
    }

    /// Evicts everything of `org`: its entries become unreachable at once
    /// (its epoch moves on; moka drops them at their TTL or under capacity
    /// pressure), and fetches under way can not store afterwards.
    pub fn invalidate_org(&self, org: &Org) {
        org.retire_all();
    }

    /// Evicts everything in every organization; fetches under way can not
    /// store afterwards.
    pub fn invalidate_all(&self) {
        self.keys.retire_all();
        for s in self.shards.iter() {
            s.invalidate_all();
        }
    }

    /// Approximate number of stored users.
    pub fn entry_count(&self) -> u64 {
        self.shards.iter().map(Shard::entry_count).sum()
    }

    /// Applies pending maintenance (tests and the metrics scrape use it for
    /// an exact count).
    pub async fn sync(&self) {
        for s in self.shards.iter() {
            s.run_pending_tasks().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The organization every test here caches in.
    static ORG: std::sync::LazyLock<Org> = std::sync::LazyLock::new(|| {
        let key = crate::secret::AdminKey::from_bytes(b"sk-admin-x").expect("key");
        Org::new("default", None, key)
    });

    fn body(b: &'static str) -> CachedUser {
        CachedUser::new(
            Bytes::from_static(b.as_bytes()),
            None,
            false,
            Duration::from_secs(60),
            None,
        )
    }

    /// Reads `key` on a thread of its own (its own front), as a worker would.
    fn read_on_thread(cache: &Arc<UserCache>, key: CacheKey) -> Option<Bytes> {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async { cache.get(&key).await.map(|u| u.body()) })
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn the_front_never_outlives_a_replacement_a_removal_or_a_write() {
        let cache = Arc::new(UserCache::new(100_000));
        assert!(cache.front.is_some());
        let key = cache.key(&ORG, "u1");
        cache.insert(key, body("v1")).await;
        // Read twice here: the second read is a front hit.
        assert_eq!(cache.get(&key).await.unwrap().body().as_ref(), b"v1");
        assert_eq!(cache.get(&key).await.unwrap().body().as_ref(), b"v1");
        // Another thread replaces it under the same key (a forced refresh).
        let c = cache.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(c.insert(key, body("v2")));
        })
        .join()
        .unwrap();
        assert_eq!(cache.get(&key).await.unwrap().body().as_ref(), b"v2");
        assert_eq!(read_on_thread(&cache, key).as_deref(), Some(&b"v2"[..]));
        // Dropped under the same key (the user is gone upstream).
        assert!(cache.get(&key).await.is_some());
        cache.remove(&key).await;
        assert!(cache.get(&key).await.is_none());
        // A write: the key changes, and the old copy is never found again.
        let key = cache.key(&ORG, "u1");
        cache.insert(key, body("v3")).await;
        assert!(cache.get(&key).await.is_some());
        cache.invalidate(&ORG, "u1").await;
        assert!(cache.get(&cache.key(&ORG, "u1")).await.is_none());
        // A purge of everything.
        let key = cache.key(&ORG, "u1");
        cache.insert(key, body("v4")).await;
        assert!(cache.get(&key).await.is_some());
        cache.invalidate_all();
        assert!(cache.get(&cache.key(&ORG, "u1")).await.is_none());
    }

    #[tokio::test]
    async fn small_caches_have_no_front() {
        let cache = UserCache::new(10);
        assert_eq!(cache.front, None);
        let key = cache.key(&ORG, "u1");
        cache.insert(key, body("v1")).await;
        assert!(cache.get(&key).await.is_some());
        cache.shards[0].invalidate(&key).await;
        assert!(
            cache.get(&key).await.is_none(),
            "moka's answer, with no copy"
        );
    }

    #[test]
    fn small_caches_keep_one_shard_and_large_ones_split() {
        assert_eq!(shard_count(10), 1);
        assert_eq!(shard_count(MIN_SHARD_ENTRIES * 2 - 1), 1);
        let big = shard_count(10_000_000);
        assert!(big.is_power_of_two() && (8..=64).contains(&big), "{big}");
        let mid = shard_count(MIN_SHARD_ENTRIES * 3);
        assert_eq!(mid, 2.min(big));
    }

    #[tokio::test]
    async fn a_sharded_cache_finds_what_it_stored_and_counts_it_all() {
        let cache = UserCache::new(1_000_000);
        assert!(cache.shards.len() > 1);
        let ids: Vec<String> = (0..2000).map(|i| format!("user_{i}")).collect();
        for id in &ids {
            cache
                .insert(cache.key(&ORG, id), user(Duration::from_secs(60)))
                .await;
        }
        cache.sync().await;
        assert_eq!(cache.entry_count(), 2000);
        let used = cache.shards.iter().filter(|s| s.entry_count() > 0).count();
        assert_eq!(used, cache.shards.len(), "keys spread over every shard");
        for id in &ids {
            assert!(cache.get(&cache.key(&ORG, id)).await.is_some(), "{id}");
        }
        cache.invalidate(&ORG, &ids[0]).await;
        assert!(cache.get(&cache.key(&ORG, &ids[0])).await.is_none());
        cache.invalidate_all();
        cache.sync().await;
        assert_eq!(cache.entry_count(), 0);
    }
    use std::sync::atomic::AtomicUsize;

    fn user(ttl: Duration) -> CachedUser {
        CachedUser::new(Bytes::from_static(b"{}"), None, false, ttl, None)
    }

    async fn fill(c: &UserCache, id: &str, calls: &AtomicUsize) -> &'static str {
        let key = c.key(&ORG, id);
        let r = c
            .get_or_fetch(key, async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(user(Duration::from_secs(60)))
            })
            .await;
        match r {
            Lookup::Hit(_) => "hit",
            Lookup::Filled(_) => "filled",
            Lookup::Failed(_) => "failed",
        }
    }

    #[tokio::test]
    async fn miss_then_hit() {
        let c = UserCache::new(100);
        let calls = AtomicUsize::new(0);
        assert_eq!(fill(&c, "u1", &calls).await, "filled");
        assert_eq!(fill(&c, "u1", &calls).await, "hit");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_evicts_and_blocks_stale_fill() {
        let c = UserCache::new(100);
        let calls = AtomicUsize::new(0);
        // A fetch that began before a write...
        let stale_key = c.key(&ORG, "u1");
        c.invalidate(&ORG, "u1").await;
        // ...finishes after it and stores under the old generation.
        c.insert(stale_key, user(Duration::from_secs(60))).await;
        assert_eq!(
            fill(&c, "u1", &calls).await,
            "filled",
            "stale fill must not be served"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn purge_all_blocks_stale_fill() {
        let c = UserCache::new(100);
        let calls = AtomicUsize::new(0);
        let stale_key = c.key(&ORG, "u1");
        c.invalidate_all();
        c.insert(stale_key, user(Duration::from_secs(60))).await;
        assert_eq!(fill(&c, "u1", &calls).await, "filled");
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        // A failed fetch stores nothing: the next lookup fetches again
        // (a cached error would answer it without calling the fetch).
        let c = UserCache::new(100);
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let r = c
                .get_or_fetch(c.key(&ORG, "u1"), async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<CachedUser, _>(7u8)
                })
                .await;
            assert!(matches!(r, Lookup::Failed(e) if *e == 7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(fill(&c, "u1", &calls).await, "filled");
    }

    #[tokio::test]
    async fn entries_outlive_their_ttl_by_the_stale_window() {
        let c = UserCache::new(100);
        c.set_stale_window(Duration::from_secs(2));
        let k = c.key(&ORG, "u1");
        c.insert(k, user(Duration::from_secs(1))).await;
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let u = c.get(&k).await.expect("kept past its TTL");
        assert!(!u.is_fresh(Instant::now()));
    }

    #[tokio::test]
    async fn per_entry_ttl_expires() {
        let c = UserCache::new(100);
        let k = c.key(&ORG, "u1");
        c.insert(k, user(Duration::from_secs(1))).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = c.get_or_fetch(k, async { Err::<CachedUser, _>(()) }).await;
        assert!(
            matches!(r, Lookup::Failed(_)),
            "expired entry must not be a hit"
        );
    }

    #[tokio::test]
    async fn a_dead_entry_is_dropped_and_a_stampede_refills_it_once() {
        // A small cache (moka's answer) and a large one (with fronts).
        for max in [100, 100_000] {
            let c = UserCache::new(max);
            let k = c.key(&ORG, "u1");
            let dead = user(Duration::from_secs(10)).backdated(Duration::from_secs(11));
            c.insert(k, dead).await;
            let calls = AtomicUsize::new(0);
            let fetch = || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ()>(user(Duration::from_secs(60)))
            };
            let lookups =
                futures_util::future::join_all((0..16).map(|_| c.get_or_fetch(k, fetch()))).await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "max {max}");
            for l in lookups {
                let u = match l {
                    Lookup::Hit(u) | Lookup::Filled(u) => u,
                    Lookup::Failed(_) => panic!("max {max}: failed"),
                };
                assert!(u.is_fresh(Instant::now()), "max {max}: the dead one served");
            }
        }
    }

    #[tokio::test]
    async fn only_a_dead_entry_is_dropped() {
        let c = UserCache::new(100);
        let k = c.key(&ORG, "u1");
        let now = Instant::now();
        // A fill stored between the read that found it dead and the drop.
        c.insert(
            k,
            user(Duration::from_secs(1)).backdated(Duration::from_secs(2)),
        )
        .await;
        c.insert(k, user(Duration::from_secs(60))).await;
        c.drop_dead(&k, now).await;
        assert!(c.get(&k).await.is_some(), "the fresh fill was dropped");
        // Within the stale window it is not dead either.
        c.set_stale_window(Duration::from_secs(5));
        c.insert(
            k,
            user(Duration::from_secs(1)).backdated(Duration::from_secs(2)),
        )
        .await;
        c.drop_dead(&k, now).await;
        assert!(c.get(&k).await.is_some(), "a stale entry was dropped");
    }

    #[tokio::test]
    async fn an_entry_nobody_reads_is_dropped_once_idle() {
        let c = UserCache::with_idle(100, Duration::from_millis(500));
        let (read, unread) = (c.key(&ORG, "read"), c.key(&ORG, "unread"));
        c.insert(read, user(Duration::from_secs(60))).await;
        c.insert(unread, user(Duration::from_secs(60))).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(c.get(&read).await.is_some());
        }
        c.sync().await;
        assert_eq!(c.entry_count(), 1);
        assert!(c.get(&unread).await.is_none());
    }

    #[tokio::test]
    async fn each_thread_reads_its_own_copy() {
        // A front's copy shares no bytes (no reference count) with moka's
        // entry or with another thread's copy.
        let cache = Arc::new(UserCache::new(100_000));
        let key = cache.key(&ORG, "u1");
        cache.insert(key, body("v1")).await;
        let a = read_on_thread(&cache, key).expect("read");
        let b = read_on_thread(&cache, key).expect("read");
        assert_eq!((a.as_ref(), b.as_ref()), (&b"v1"[..], &b"v1"[..]));
        assert_ne!(a.as_ptr(), b.as_ptr());
    }
}
