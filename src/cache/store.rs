//! The retrieve-user cache: moka (TTL per entry, bounded size, single flight).
//!
//! Entries are keyed by `(user id, generation)`. A write to a user (or a
//! purge) bumps that user's generation *before* evicting, so a fetch that
//! started earlier fills a key nobody reads any more: an old version can
//! never come back, and requests arriving after the write never join a fetch
//! that began before it. Generations live in a fixed array of striped
//! counters (ids hash onto stripes), so memory stays bounded; two ids
//! sharing a stripe only cost each other an extra miss.
//!
//! The entries are split over several moka caches by key (shards). Every
//! moka lookup records the read in its cache's bounded read log (for
//! eviction order), a line all readers write; with shards, two cores only
//! write the same log when their keys land in the same shard (1 in 16 on
//! two cores). A small cache keeps one shard, so its bound stays exact.

use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use moka::future::Cache;
use moka::Expiry;

use super::front;

/// Number of generation stripes.
const STRIPES: usize = 4096;

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

type Shard = Cache<CacheKey, CachedUser, KeyBits>;

/// A stored `OrganizationUser` response: the upstream's bytes and what a
/// hit needs to answer, kept small because a million of them may be held
/// (the value lives inline in moka's entry; no allocation of its own).
#[derive(Debug, Clone)]
pub struct CachedUser {
    /// The upstream's `Date` (its first `date_len` bytes), then the
    /// upstream body, byte for byte: one allocation, no room in the entry.
    body: Bytes,
    /// When it was stored, in ms on the process clock ([`clock_ms`]).
    stored_ms: u64,
    /// How long it is served (the TTL in force when it was stored).
    ttl_secs: u32,
    /// The upstream said `content-encoding: identity` (no other encoding
    /// is ever stored: a compressed body cannot be checked).
    identity: bool,
    /// Length of the upstream's `Date` at the front of `body` (0: none). A
    /// hit sends it again beside `Age` (RFC 9111 §4.2.3).
    date_len: u8,
    /// The upstream `content-type`.
    content_type: ContentType,
}

impl CachedUser {
    /// A copy whose bytes this thread owns (for the per-thread front): its
    /// clones then write reference counts no other core touches.
    pub(super) fn thread_copy(&self) -> Self {
        let content_type = match &self.content_type {
            ContentType::Other(v) => match HeaderValue::from_bytes(v.as_bytes()) {
                Ok(v) => ContentType::Other(Arc::new(v)),
                Err(_) => ContentType::Other(v.clone()),
            },
            other => other.clone(),
        };
        Self {
            body: Bytes::copy_from_slice(&self.body),
            content_type,
            ..*self
        }
    }
}

/// A stored `content-type`: the usual value costs nothing.
#[derive(Debug, Clone)]
enum ContentType {
    Absent,
    Json,
    Other(Arc<HeaderValue>),
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A compact timestamp for entries: milliseconds since the first call,
/// plus an offset that leaves room to backdate.
fn clock_ms(now: Instant) -> u64 {
    const OFFSET_MS: u64 = 1 << 40;
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    OFFSET_MS + now.saturating_duration_since(base).as_millis() as u64
}

impl CachedUser {
    /// A user response stored now. Header values given here must own their
    /// bytes (see `users::own`): they live as long as the entry.
    pub fn new(
        body: Bytes,
        content_type: Option<HeaderValue>,
        identity: bool,
        ttl: Duration,
    ) -> Self {
        let content_type = match content_type {
            None => ContentType::Absent,
            Some(v) if v == JSON => ContentType::Json,
            Some(v) => ContentType::Other(Arc::new(v)),
        };
        Self {
            body,
            stored_ms: clock_ms(Instant::now()),
            ttl_secs: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
            identity,
            date_len: 0,
            content_type,
        }
    }

    /// The same entry with the upstream's `Date` kept in front of its body
    /// (a value longer than 255 bytes, which no HTTP date is, is dropped).
    pub fn with_date(mut self, date: Option<&HeaderValue>) -> Self {
        let Some(date) = date.filter(|d| (1..=255).contains(&d.len())) else {
            return self;
        };
        let mut both = BytesMut::with_capacity(date.len() + self.body.len() - self.date_len());
        both.extend_from_slice(date.as_bytes());
        both.extend_from_slice(&self.body[self.date_len()..]);
        self.body = both.freeze();
        self.date_len = date.len() as u8;
        self
    }

    fn date_len(&self) -> usize {
        usize::from(self.date_len)
    }

    /// Moves the body and the `Date` out (a looked-up copy about to become
    /// a response).
    pub fn take_body(&mut self) -> (Bytes, Option<HeaderValue>) {
        let mut body = std::mem::take(&mut self.body);
        if self.date_len == 0 {
            return (body, None);
        }
        let date = body.split_to(self.date_len());
        (body, HeaderValue::from_maybe_shared(date).ok())
    }

    /// The upstream's `Date`, when it sent one.
    pub fn date(&self) -> Option<HeaderValue> {
        let date = self.body.slice(..self.date_len());
        (self.date_len > 0)
            .then(|| HeaderValue::from_maybe_shared(date).ok())
            .flatten()
    }

    /// The same entry, as if stored `age` earlier (tests and benches).
    pub fn backdated(mut self, age: Duration) -> Self {
        let now = clock_ms(Instant::now());
        self.stored_ms = now.saturating_sub(age.as_millis() as u64);
        self
    }

    /// The stored body (a new reference to its bytes).
    pub fn body(&self) -> Bytes {
        self.body.slice(self.date_len()..)
    }

    /// The stored `content-type`.
    pub fn content_type(&self) -> Option<HeaderValue> {
        match &self.content_type {
            ContentType::Absent => None,
            ContentType::Json => Some(JSON),
            ContentType::Other(v) => Some(HeaderValue::clone(v)),
        }
    }

    /// The stored `content-encoding` (only `identity` is ever stored).
    pub fn content_encoding(&self) -> Option<HeaderValue> {
        self.identity.then(|| HeaderValue::from_static("identity"))
    }

    /// Whole seconds since it was stored (floored).
    pub fn age_secs(&self, now: Instant) -> u64 {
        clock_ms(now).saturating_sub(self.stored_ms) / 1000
    }

    /// The TTL it was stored with.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl_secs))
    }

    /// Seconds of freshness left at `now`: negative once past its TTL
    /// (the seconds past expiry, as RFC 9211's `ttl` parameter reads).
    pub fn ttl_left(&self, now: Instant) -> i64 {
        let age_ms = clock_ms(now).saturating_sub(self.stored_ms) as i64;
        let ttl_ms = i64::from(self.ttl_secs) * 1000;
        let left_ms = ttl_ms - age_ms;
        // Floor for the past (-0.5 s is -1), so a stale entry never says 0.
        left_ms.div_euclid(1000)
    }

    /// True while it is within its TTL.
    pub fn is_fresh(&self, now: Instant) -> bool {
        clock_ms(now).saturating_sub(self.stored_ms) < u64::from(self.ttl_secs) * 1000
    }
}

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
    fn id_hash(self) -> u64 {
        (self.0 >> 64) as u64
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

/// Each entry lives for its TTL plus the stale window in force when it was
/// stored (the longer of `stale_if_error` and `stale_while_revalidate`):
/// past its TTL it is only served as stale, never as a plain hit.
struct PerEntryTtl {
    /// The stale window, in seconds; set on start and reload.
    grace_secs: Arc<AtomicU64>,
}

impl PerEntryTtl {
    fn life(&self, value: &CachedUser) -> Duration {
        value.ttl() + Duration::from_secs(self.grace_secs.load(Ordering::Relaxed))
    }
}

impl Expiry<CacheKey, CachedUser> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &CachedUser,
        _: Instant,
    ) -> Option<Duration> {
        Some(self.life(value))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &CachedUser,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.life(value))
    }
}

/// The user cache.
pub struct UserCache {
    /// The entries, split by key (see the module docs); a power of two.
    shards: Box<[Shard]>,
    /// Per-stripe write generations.
    gens: Box<[AtomicU64]>,
    /// Per-stripe versions, bumped when an entry is replaced or dropped
    /// under the same key (the per-thread fronts check them).
    versions: Box<[AtomicU64]>,
    /// This cache's number, naming its entries in the per-thread fronts.
    id: u64,
    /// Entries per thread front (`None`: no front, for small caches).
    front: Option<usize>,
    /// Bumped by a full purge.
    epoch: AtomicU64,
    /// Hashes an id (its stripe, and the key's high half).
    id_hasher: RandomState,
    /// Hashes (id, generation, epoch): the key's low half.
    gen_hasher: RandomState,
    /// How long entries outlive their TTL (see [`PerEntryTtl`]).
    grace_secs: Arc<AtomicU64>,
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
    /// A cache holding at most `max_entries` users.
    pub fn new(max_entries: u64) -> Self {
        let grace_secs = Arc::new(AtomicU64::new(0));
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
                        .expire_after(PerEntryTtl {
                            grace_secs: grace_secs.clone(),
                        })
                        .build_with_hasher(KeyBits)
                })
                .collect(),
            grace_secs,
            serving: AtomicBool::new(true),
            gens: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            versions: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            front,
            epoch: AtomicU64::new(0),
            id_hasher: RandomState::new(),
            gen_hasher: RandomState::new(),
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

    fn stripe(&self, id_hash: u64) -> &AtomicU64 {
        &self.gens[(id_hash as usize) % STRIPES]
    }

    fn key_at(&self, id: &str, id_hash: u64, generation: u64, epoch: u64) -> CacheKey {
        let low = self.gen_hasher.hash_one((generation, epoch, id));
        CacheKey(u128::from(id_hash) << 64 | u128::from(low))
    }

    /// The key for `id` as of now. Take it *before* fetching.
    pub fn key(&self, id: &str) -> CacheKey {
        let h = self.id_hasher.hash_one(id);
        let generation = self.stripe(h).load(Ordering::Acquire);
        self.key_at(id, h, generation, self.epoch.load(Ordering::Acquire))
    }

    /// The stored user under `key`, if any (a plain lookup: allocates
    /// nothing, and its future is small enough to sit in the request's).
    /// A fresh user in this thread's front is answered from there; one read
    /// from moka is copied into it. Nothing is found while the cache is not
    /// [serving](Self::serving): entries may be stale then.
    pub async fn get(&self, key: &CacheKey) -> Option<CachedUser> {
        if !self.serving() {
            return None;
        }
        let Some(front) = self.front else {
            return self.shard(key).get(key).await;
        };
        // Read before moka: a replacement bumps it after, so a copy taken
        // across one carries the old version and is dropped at next read.
        let version = self.version(key).load(Ordering::Acquire);
        let now = Instant::now();
        if let Some(u) = front::get(self.id, key, version, now) {
            return Some(u);
        }
        let u = self.shard(key).get(key).await?;
        if u.is_fresh(now) {
            front::put(self.id, front, *key, version, &u);
        }
        Some(u)
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
        match self.shard(&key).entry(key).or_try_insert_with(fetch).await {
            Ok(entry) if entry.is_fresh() => Lookup::Filled(entry.into_value()),
            Ok(entry) => Lookup::Hit(entry.into_value()),
            Err(e) => Lookup::Failed(e),
        }
    }

    /// Stores `user` under `key` (a forced refresh). Copies of the old
    /// entry in the per-thread fronts are dropped at their next read.
    pub async fn insert(&self, key: CacheKey, user: CachedUser) {
        self.shard(&key).insert(key, user).await;
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
        self.grace_secs.store(window.as_secs(), Ordering::Relaxed);
    }

    /// The key under which `key`'s refresh runs its single flight: a
    /// refresh must not find the stale entry it is replacing.
    pub fn refresh_key(key: CacheKey) -> CacheKey {
        CacheKey(key.0 ^ 1)
    }

    /// Evicts `id`, and makes sure no fetch already under way can store an
    /// older version afterwards.
    pub async fn invalidate(&self, id: &str) {
        let h = self.id_hasher.hash_one(id);
        let old = self.stripe(h).fetch_add(1, Ordering::AcqRel);
        let key = self.key_at(id, h, old, self.epoch.load(Ordering::Acquire));
        self.shard(&key).invalidate(&key).await;
    }

    /// [`UserCache::invalidate`] without awaiting, for code that can not:
    /// the entry becomes unreachable at once (the id's generation moves on)
    /// and moka drops it at its TTL or under capacity pressure.
    pub fn forget(&self, id: &str) {
        let h = self.id_hasher.hash_one(id);
        self.stripe(h).fetch_add(1, Ordering::AcqRel);
    }

    /// Evicts everything; fetches under way can not store afterwards.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
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

    fn body(b: &'static str) -> CachedUser {
        CachedUser::new(
            Bytes::from_static(b.as_bytes()),
            None,
            false,
            Duration::from_secs(60),
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
        let key = cache.key("u1");
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
        let key = cache.key("u1");
        cache.insert(key, body("v3")).await;
        assert!(cache.get(&key).await.is_some());
        cache.invalidate("u1").await;
        assert!(cache.get(&cache.key("u1")).await.is_none());
        // A purge of everything.
        let key = cache.key("u1");
        cache.insert(key, body("v4")).await;
        assert!(cache.get(&key).await.is_some());
        cache.invalidate_all();
        assert!(cache.get(&cache.key("u1")).await.is_none());
    }

    #[tokio::test]
    async fn small_caches_have_no_front() {
        let cache = UserCache::new(10);
        assert_eq!(cache.front, None);
        let key = cache.key("u1");
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
                .insert(cache.key(id), user(Duration::from_secs(60)))
                .await;
        }
        cache.sync().await;
        assert_eq!(cache.entry_count(), 2000);
        let used = cache.shards.iter().filter(|s| s.entry_count() > 0).count();
        assert_eq!(used, cache.shards.len(), "keys spread over every shard");
        for id in &ids {
            assert!(cache.get(&cache.key(id)).await.is_some(), "{id}");
        }
        cache.invalidate(&ids[0]).await;
        assert!(cache.get(&cache.key(&ids[0])).await.is_none());
        cache.invalidate_all();
        cache.sync().await;
        assert_eq!(cache.entry_count(), 0);
    }
    use std::sync::atomic::AtomicUsize;

    fn user(ttl: Duration) -> CachedUser {
        CachedUser::new(Bytes::from_static(b"{}"), None, false, ttl)
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

    #[test]
    fn keys_differ_by_id_generation_and_epoch() {
        let c = UserCache::new(10);
        let a = c.key("user_a");
        assert_eq!(a, c.key("user_a"), "stable while nothing changes");
        assert_ne!(a, c.key("user_b"));
        let h = c.id_hasher.hash_one("user_a");
        assert_ne!(a, c.key_at("user_a", h, 1, 0), "generation");
        assert_ne!(a, c.key_at("user_a", h, 0, 1), "epoch");
    }

    #[test]
    fn stored_headers_round_trip() {
        let ttl = Duration::from_secs(60);
        let json = CachedUser::new(Bytes::new(), Some(JSON), true, ttl);
        assert_eq!(json.content_type(), Some(JSON));
        assert_eq!(json.content_encoding().unwrap(), "identity");
        let other = HeaderValue::from_static("application/json; charset=utf-8");
        let u = CachedUser::new(Bytes::new(), Some(other.clone()), false, ttl);
        assert_eq!(u.content_type(), Some(other));
        assert_eq!(u.content_encoding(), None);
        assert_eq!(
            CachedUser::new(Bytes::new(), None, false, ttl).content_type(),
            None
        );
    }

    #[test]
    fn value_stays_small() {
        // Inline in moka's entry: growing it costs bytes per cached user.
        assert!(std::mem::size_of::<CachedUser>() <= 64);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        // A failed fetch stores nothing: the next lookup fetches again
        // (a cached error would answer it without calling the fetch).
        let c = UserCache::new(100);
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let r = c
                .get_or_fetch(c.key("u1"), async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<CachedUser, _>(7u8)
                })
                .await;
            assert!(matches!(r, Lookup::Failed(e) if *e == 7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(fill(&c, "u1", &calls).await, "filled");
    }

    #[test]
    fn freshness_and_seconds_past_expiry() {
        let ttl = Duration::from_secs(10);
        let u = user(ttl).backdated(Duration::from_millis(4_500));
        let now = Instant::now();
        assert!(u.is_fresh(now));
        assert_eq!(u.ttl_left(now), 5);
        let stale = user(ttl).backdated(Duration::from_millis(12_300));
        assert!(!stale.is_fresh(now));
        assert_eq!(stale.ttl_left(now), -3);
    }

    #[tokio::test]
    async fn entries_outlive_their_ttl_by_the_stale_window() {
        let c = UserCache::new(100);
        c.set_stale_window(Duration::from_secs(2));
        let k = c.key("u1");
        c.insert(k, user(Duration::from_secs(1))).await;
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let u = c.get(&k).await.expect("kept past its TTL");
        assert!(!u.is_fresh(Instant::now()));
    }

    #[tokio::test]
    async fn per_entry_ttl_expires() {
        let c = UserCache::new(100);
        let k = c.key("u1");
        c.insert(k, user(Duration::from_secs(1))).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = c.get_or_fetch(k, async { Err::<CachedUser, _>(()) }).await;
        assert!(
            matches!(r, Lookup::Failed(_)),
            "expired entry must not be a hit"
        );
    }
}
