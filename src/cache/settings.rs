//! The cached route's settings, replaced on reload.

use std::time::Duration;

use crate::config::CacheConfig;

/// The cached route's reloadable settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// TTL for newly stored users.
    pub ttl: Duration,
    /// Larger user responses are passed through unstored.
    pub max_body_bytes: usize,
    /// How long past its TTL an entry may be served when the refetch fails.
    pub stale_if_error: Duration,
    /// How long past its TTL an entry is served at once while one
    /// background refresh runs.
    pub stale_while_revalidate: Duration,
}

impl Settings {
    /// How long entries outlive their TTL: the longer stale window.
    pub fn stale_window(&self) -> Duration {
        self.stale_if_error.max(self.stale_while_revalidate)
    }
}

impl From<&CacheConfig> for Settings {
    fn from(c: &CacheConfig) -> Self {
        Self {
            ttl: c.ttl,
            max_body_bytes: c.max_body_bytes,
            stale_if_error: c.stale_if_error,
            stale_while_revalidate: c.stale_while_revalidate,
        }
    }
}
