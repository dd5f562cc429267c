//! Per-client rate limiting (GCRA via `governor`).
//!
//! Each client with a `rate_limit` owns one [`Limiter`]; a client's burst
//! can never slow another. Every request the client makes is counted, cache
//! hits included. [`Limiter::annotate`] writes the `x-ratelimit-*` headers the
//! official SDKs read onto every response to a limited client.
//!
//! The limiter takes its clock as a type parameter: the gateway runs on
//! governor's default (monotonic) clock, tests on `FakeRelativeClock`.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};

use crate::cluster::{GcraReply, SharedLimits};
use crate::config::RateLimit;

type Gcra<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One client's limiter, on clock `C`.
#[derive(Debug)]
pub struct Limiter<C: Clock = DefaultClock> {
    /// The GCRA state.
    gcra: Gcra<C>,
    /// The configured budget (compared on reload to keep state).
    limit: RateLimit,
    /// Time for one request's worth of budget to come back.
    per_request: Duration,
    /// `x-ratelimit-limit-requests`, built once.
    limit_header: HeaderValue,
    /// Shared state across replicas, when `[redis]` is configured.
    shared: Option<Shared>,
}

/// Where a client's shared budget lives.
#[derive(Debug)]
struct Shared {
    /// The replicas' common GCRA.
    limits: Arc<SharedLimits>,
    /// The client's name (its key in Redis).
    client: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` requests are left in the burst.
    Allow {
        /// Requests left right now.
        remaining: u32,
    },
    /// Over the limit; the next request is allowed after `retry_after`.
    Deny {
        /// Wait before retrying.
        retry_after: Duration,
    },
}

impl Limiter {
    /// A fresh, full limiter for `limit` on the monotonic clock.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }

    /// A limiter whose budget lives in `limits` under `client`, shared by
    /// every replica; the local GCRA decides while Redis is unavailable.
    pub fn shared(limit: RateLimit, limits: Arc<SharedLimits>, client: &str) -> Self {
        Self {
            shared: Some(Shared {
                limits,
                client: client.to_string(),
            }),
            ..Self::new(limit)
        }
    }
}

impl<C: Clock> Limiter<C> {
    /// A fresh, full limiter for `limit` that reads time from `clock`.
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        let rpm = NonZeroU32::new(limit.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(rpm).allow_burst(burst);
        Self {
            gcra: RateLimiter::direct_with_clock(quota, clock)
                .with_middleware::<StateInformationMiddleware>(),
            limit,
            per_request: quota.replenish_interval(),
            limit_header: HeaderValue::from(limit.requests_per_minute),
            shared: None,
        }
    }

    /// Takes one request from the budget: the shared one when configured and
    /// reachable, else the local one.
    pub async fn decide(&self) -> Decision {
        if let Some(s) = &self.shared {
            // Boxed: a Redis round trip's future is large, and only clients
            // with a shared budget should carry it.
            // The one wait for a rate-limit answer: an event on the trace.
            let check = s.limits.check(&s.client, self.limit);
            let timed = crate::telemetry::span::timed("rate_limit", check);
            if let Some(reply) = Box::pin(timed).await {
                return Decision::from(reply);
            }
        }
        self.check()
    }

    /// True when this limiter uses the shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The budget this limiter enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one request from the local budget, or says how long to wait.
    pub fn check(&self) -> Decision {
        match self.gcra.check() {
            Ok(state) => Decision::Allow {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Deny {
                retry_after: not_until.wait_time_from(self.gcra.clock().now()),
            },
        }
    }

    /// Adds `x-ratelimit-{limit,remaining,reset}-requests` for `decision`.
    pub fn annotate(&self, decision: Decision, headers: &mut HeaderMap) {
        let (remaining, reset) = match decision {
            Decision::Allow { remaining } => {
                let used = self.limit.burst.saturating_sub(remaining);
                (remaining, self.per_request * used)
            }
            Decision::Deny { retry_after } => {
                let rest = self.per_request * self.limit.burst.saturating_sub(1);
                (0, retry_after + rest)
            }
        };
        headers.insert("x-ratelimit-limit-requests", self.limit_header.clone());
        headers.insert(
            "x-ratelimit-remaining-requests",
            crate::headers::int_value(u64::from(remaining)),
        );
        if let Ok(v) = HeaderValue::from_str(&format_reset(reset)) {
            headers.insert("x-ratelimit-reset-requests", v);
        }
    }
}

impl From<GcraReply> for Decision {
    fn from(reply: GcraReply) -> Self {
        match reply {
            GcraReply::Allowed { remaining } => Decision::Allow { remaining },
            GcraReply::Denied { wait } => Decision::Deny { retry_after: wait },
        }
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do:
/// `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    let mut s = String::with_capacity(12);
    if ms < 1000 {
        let _ = write!(s, "{ms}ms");
    } else if ms < 60_000 {
        let secs = format!("{:.3}", d.as_secs_f64());
        let secs = secs.trim_end_matches('0').trim_end_matches('.');
        let _ = write!(s, "{secs}s");
    } else {
        let _ = write!(s, "{}m{}s", ms / 60_000, (ms % 60_000) / 1000);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn fake(rpm: u32, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit {
            requests_per_minute: rpm,
            burst,
        };
        (Limiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn budget_comes_back_one_request_per_interval() {
        // 60/min: one request's worth returns every second.
        let (l, clock) = fake(60, 2);
        assert_eq!(l.check(), Decision::Allow { remaining: 1 });
        assert_eq!(l.check(), Decision::Allow { remaining: 0 });
        assert_eq!(
            l.check(),
            Decision::Deny {
                retry_after: Duration::from_secs(1)
            }
        );
        clock.advance(Duration::from_millis(400));
        assert_eq!(
            l.check(),
            Decision::Deny {
                retry_after: Duration::from_millis(600)
            }
        );
        clock.advance(Duration::from_millis(600));
        assert_eq!(l.check(), Decision::Allow { remaining: 0 });
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            l.check(),
            Decision::Allow { remaining: 1 },
            "refills to the burst, no further"
        );
    }

    #[test]
    fn deny_headers_count_to_a_full_budget() {
        let (l, _clock) = fake(120, 2);
        let _ = (l.check(), l.check());
        let d = l.check();
        let mut h = HeaderMap::new();
        l.annotate(d, &mut h);
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        // 500 ms until one comes back, plus 500 ms for the second.
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
    }

    #[test]
    fn burst_then_deny_with_wait() {
        let l = Limiter::new(RateLimit {
            requests_per_minute: 60,
            burst: 3,
        });
        assert_eq!(l.check(), Decision::Allow { remaining: 2 });
        assert_eq!(l.check(), Decision::Allow { remaining: 1 });
        assert_eq!(l.check(), Decision::Allow { remaining: 0 });
        match l.check() {
            Decision::Deny { retry_after } => {
                assert!(retry_after > Duration::from_millis(500), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
            }
            d => panic!("expected deny, got {d:?}"),
        }
    }

    #[test]
    fn headers_describe_the_budget() {
        let l = Limiter::new(RateLimit {
            requests_per_minute: 120,
            burst: 10,
        });
        let d = l.check();
        let mut h = HeaderMap::new();
        l.annotate(d, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "120");
        assert_eq!(h["x-ratelimit-remaining-requests"], "9");
        assert_eq!(h["x-ratelimit-reset-requests"], "500ms");
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
