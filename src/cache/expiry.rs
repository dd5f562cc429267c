//! The TTL policy: how long moka keeps each entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::entry::Stored;
use super::key::CacheKey;

/// Each entry lives for its TTL plus the stale window in force when it was
/// stored (the longer of `stale_if_error` and `stale_while_revalidate`):
/// past its TTL it is only served as stale, never as a plain hit.
pub(super) struct PerEntryTtl {
    /// The stale window, in seconds; set on start and reload.
    grace_secs: Arc<AtomicU64>,
}

impl PerEntryTtl {
    /// The policy over the shared stale window.
    pub(super) fn new(grace_secs: Arc<AtomicU64>) -> Self {
        Self { grace_secs }
    }

    fn life(&self, value: &Stored) -> Duration {
        value.ttl() + Duration::from_secs(self.grace_secs.load(Ordering::Relaxed))
    }
}

impl Expiry<CacheKey, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Stored, _: Instant) -> Option<Duration> {
        Some(self.life(value))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.life(value))
    }
}
