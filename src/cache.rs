//! The retrieve-user cache: moka (TTL per entry, bounded size, single flight).
//!
//! Entries are keyed by `(user id, generation)`. A write to a user (or a
//! purge) bumps that user's generation *before* evicting, so a fetch that
//! started earlier fills a key nobody reads any more: an old version can
//! never come back, and requests arriving after the write never join a fetch
//! that began before it. Generations live in a fixed array of striped
//! counters (ids hash onto stripes), so memory stays bounded; two ids
//! sharing a stripe only cost each other an extra miss.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use moka::future::Cache;
use moka::Expiry;

/// Number of generation stripes.
const STRIPES: usize = 4096;

/// A stored `OrganizationUser` response: the upstream's bytes and the
/// headers a hit needs, built once at fill time.
#[derive(Debug)]
pub struct CachedUser {
    /// The upstream body, byte for byte.
    pub body: Bytes,
    /// The upstream `content-type`.
    pub content_type: Option<HeaderValue>,
    /// The upstream `content-encoding`.
    pub content_encoding: Option<HeaderValue>,
    /// When it was stored (for `Age` and the remaining TTL).
    pub stored_at: Instant,
    /// How long it is served (the TTL in force when it was stored).
    pub ttl: Duration,
}

impl CachedUser {
    /// Seconds since it was stored.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }
}

/// A cache key: opaque outside this module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    id: Box<str>,
    stripe_gen: u64,
    epoch: u64,
}

/// How a lookup was answered.
#[derive(Debug)]
pub enum Lookup<E> {
    /// Found (or filled by a concurrent request this one waited for).
    Hit(Arc<CachedUser>),
    /// This request's fetch filled it.
    Filled(Arc<CachedUser>),
    /// The (shared) fetch did not produce a storable user.
    Failed(Arc<E>),
}

struct PerEntryTtl;

impl Expiry<CacheKey, Arc<CachedUser>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<CachedUser>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Arc<CachedUser>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The user cache.
pub struct UserCache {
    /// The entries.
    entries: Cache<CacheKey, Arc<CachedUser>>,
    /// Per-stripe write generations.
    gens: Box<[AtomicU64]>,
    /// Bumped by a full purge.
    epoch: AtomicU64,
    /// Maps an id to its stripe.
    hasher: RandomState,
}

impl std::fmt::Debug for UserCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl UserCache {
    /// A cache holding at most `max_entries` users.
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            gens: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, id: &str) -> &AtomicU64 {
        let i = (self.hasher.hash_one(id) as usize) % STRIPES;
        &self.gens[i]
    }

    /// The key for `id` as of now. Take it *before* fetching.
    pub fn key(&self, id: &str) -> CacheKey {
        CacheKey {
            id: id.into(),
            stripe_gen: self.stripe(id).load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Looks `key` up; on a miss runs `fetch`, shared by every concurrent
    /// request for the same key, and stores its `Ok` value.
    pub async fn get_or_fetch<F, E>(&self, key: CacheKey, fetch: F) -> Lookup<E>
    where
        F: Future<Output = Result<Arc<CachedUser>, E>>,
        E: Send + Sync + 'static,
    {
        // Fast path: a plain lookup allocates nothing; the entry API (which
        // boxes the key for single flight) only runs on a miss.
        if let Some(hit) = self.entries.get(&key).await {
            return Lookup::Hit(hit);
        }
        match self.entries.entry(key).or_try_insert_with(fetch).await {
            Ok(entry) if entry.is_fresh() => Lookup::Filled(entry.into_value()),
            Ok(entry) => Lookup::Hit(entry.into_value()),
            Err(e) => Lookup::Failed(e),
        }
    }

    /// Stores `user` under `key` (a forced refresh).
    pub async fn insert(&self, key: CacheKey, user: Arc<CachedUser>) {
        self.entries.insert(key, user).await;
    }

    /// Evicts `id`, and makes sure no fetch already under way can store an
    /// older version afterwards.
    pub async fn invalidate(&self, id: &str) {
        let old = self.stripe(id).fetch_add(1, Ordering::AcqRel);
        let key = CacheKey {
            id: id.into(),
            stripe_gen: old,
            epoch: self.epoch.load(Ordering::Acquire),
        };
        self.entries.invalidate(&key).await;
    }

    /// Evicts everything; fetches under way can not store afterwards.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }

    /// Approximate number of stored users.
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Applies pending maintenance (tests and the metrics scrape use it for
    /// an exact count).
    pub async fn sync(&self) {
        self.entries.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn user(ttl: Duration) -> Arc<CachedUser> {
        Arc::new(CachedUser {
            body: Bytes::from_static(b"{}"),
            content_type: None,
            content_encoding: None,
            stored_at: Instant::now(),
            ttl,
        })
    }

    async fn fill(c: &UserCache, id: &str, calls: &AtomicUsize) -> &'static str {
        let key = c.key(id);
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
        let stale_key = c.key("u1");
        c.invalidate("u1").await;
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
        let stale_key = c.key("u1");
        c.invalidate_all();
        c.insert(stale_key, user(Duration::from_secs(60))).await;
        assert_eq!(fill(&c, "u1", &calls).await, "filled");
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let c = UserCache::new(100);
        for _ in 0..2 {
            let r = c
                .get_or_fetch(c.key("u1"), async { Err::<Arc<CachedUser>, _>(7u8) })
                .await;
            assert!(matches!(r, Lookup::Failed(e) if *e == 7));
        }
    }

    #[tokio::test]
    async fn per_entry_ttl_expires() {
        let c = UserCache::new(100);
        let k = c.key("u1");
        c.insert(k.clone(), user(Duration::from_millis(50))).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        let r = c
            .get_or_fetch(k, async { Err::<Arc<CachedUser>, _>(()) })
            .await;
        assert!(
            matches!(r, Lookup::Failed(_)),
            "expired entry must not be a hit"
        );
    }
}
