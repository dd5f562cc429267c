//! [`Backoff`]: after a failed Redis call, Redis is left alone for a
//! second (the caller decides locally meanwhile), so a Redis that is down
//! costs each request nothing but an atomic load. Shared by the per-client
//! limits and the organization's budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long Redis is skipped after a failure.
pub(super) const BACKOFF: Duration = Duration::from_secs(1);

/// When Redis may be tried again.
#[derive(Debug)]
pub(super) struct Backoff {
    /// Microseconds since `epoch` before which Redis is not tried.
    skip_until_us: AtomicU64,
    /// Reference point for `skip_until_us`.
    epoch: Instant,
}

impl Backoff {
    /// Redis may be tried at once.
    pub(super) fn new() -> Self {
        Self {
            skip_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Now, in this backoff's microseconds (pass it to
    /// [`failed`](Self::failed)).
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// True while Redis is left alone after a failure.
    pub(super) fn skipping(&self, now_us: u64) -> bool {
        now_us < self.skip_until_us.load(Ordering::Relaxed)
    }

    /// Records a failure at `now_us`: Redis is skipped for [`BACKOFF`].
    /// True when this failure starts a new outage (the caller logs it
    /// once, not per request).
    pub(super) fn failed(&self, now_us: u64) -> bool {
        let until = now_us + BACKOFF.as_micros() as u64;
        self.skip_until_us.swap(until, Ordering::Relaxed) <= now_us
    }
}
