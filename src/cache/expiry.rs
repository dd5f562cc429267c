//! How long an entry lives: its TTL plus the stale window, judged on read,
//! and the idle bound after which moka drops an entry nobody reads.
//!
//! moka's per-entry expiry would drop each entry at its own end of life,
//! but it keeps a timer-wheel node per entry (42 bytes a user at a million
//! users, `cache_floor moka-expiry` against `moka`). Its time-to-idle rides
//! on the access order moka keeps anyway and costs nothing per entry
//! (`moka-tti`). So an entry's end of life is judged where it matters, on
//! read ([`Life::is_dead`]): a dead entry is never served, and is dropped
//! so that the next lookup is a miss with single flight. An entry nobody
//! reads is dropped by moka once idle for [`Life::idle`], or earlier for
//! room: as nginx keeps a cached response until `inactive`, whatever its
//! validity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::entry::Stored;

/// Idle bound of a cache built without one (tests, benches): an hour.
pub(super) const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// The life policy of one cache.
#[derive(Debug)]
pub(super) struct Life {
    /// The stale window, in seconds: how long past its TTL an entry may
    /// still be served stale. Set on start and reload.
    grace_secs: AtomicU64,
    /// moka drops an entry nobody read for this long (fixed when the cache
    /// is built: moka can not change it later).
    idle: Duration,
}

impl Life {
    /// A policy dropping entries idle for `idle`.
    pub(super) fn new(idle: Duration) -> Self {
        Self {
            grace_secs: AtomicU64::new(0),
            idle,
        }
    }

    /// The idle bound.
    pub(super) fn idle(&self) -> Duration {
        self.idle
    }

    /// Sets the stale window.
    pub(super) fn set_grace(&self, window: Duration) {
        self.grace_secs.store(window.as_secs(), Ordering::Relaxed);
    }

    /// True once `stored` is past its TTL plus the stale window at `now`:
    /// it may not be served at all, not even stale.
    pub(super) fn is_dead(&self, stored: &Stored, now: Instant) -> bool {
        let grace = Duration::from_secs(self.grace_secs.load(Ordering::Relaxed));
        stored.age(now) >= stored.ttl() + grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedUser;
    use bytes::Bytes;

    fn stored(ttl: u64, age_ms: u64) -> Stored {
        CachedUser::new(
            Bytes::from_static(b"{}"),
            None,
            false,
            Duration::from_secs(ttl),
            None,
        )
        .backdated(Duration::from_millis(age_ms))
        .into()
    }

    #[test]
    fn dead_past_its_ttl_and_the_stale_window() {
        let life = Life::new(DEFAULT_IDLE);
        let now = Instant::now();
        assert!(!life.is_dead(&stored(10, 9_900), now));
        assert!(life.is_dead(&stored(10, 10_000), now));
        life.set_grace(Duration::from_secs(5));
        assert!(!life.is_dead(&stored(10, 14_900), now), "stale, servable");
        assert!(life.is_dead(&stored(10, 15_000), now));
    }
}
