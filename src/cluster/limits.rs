//! Shared rate-limit state in Redis ([`SharedLimits`]), so that N replicas
//! enforce one budget per client instead of N.
//!
//! The limit is the same GCRA that `governor` runs locally, done atomically
//! in a Lua script on the Redis server with the server's clock (replicas'
//! clocks never matter). If Redis is slow or down, the request is decided by
//! the replica's local limiter instead (fail open to a per-replica limit,
//! never to no limit), Redis is left alone for a second, and
//! `gateway_ratelimit_store_errors_total` counts it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tracing::warn;

use super::backoff::Backoff;
use crate::config::{RateLimit, RedisConfig};
use crate::metrics::Metrics;

/// GCRA over a theoretical arrival time (TAT) in microseconds.
/// ARGV: emission interval (µs), burst. Returns {allowed, wait_us, remaining}.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0, math.floor((now - allow_at) / interval)}
"#;

/// What the shared GCRA answered for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraReply {
    /// Taken from the budget; `remaining` requests are left in the burst.
    Allowed {
        /// Requests left right now.
        remaining: u32,
    },
    /// Over the budget until `wait` has passed.
    Denied {
        /// Time until the next request is allowed.
        wait: Duration,
    },
}

/// The replicas' shared per-client budgets.
pub struct SharedLimits {
    /// Reconnecting connection.
    conn: ConnectionManager,
    /// The GCRA script (sent by hash, loaded on demand).
    script: Script,
    /// Prepended to client names.
    prefix: String,
    /// Bound on one check.
    timeout: Duration,
    /// Redis is left alone for a second after a failure.
    backoff: Backoff,
    /// Counts failures.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl SharedLimits {
    /// Shared limits over `conn` (see [`super::connect`]): a Redis that is
    /// down at start only means local limits until it is back.
    pub fn new(conn: ConnectionManager, cfg: &RedisConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            conn,
            script: Script::new(GCRA),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            backoff: Backoff::new(),
            metrics,
        })
    }

    /// Takes one request from `client`'s shared budget; `None` when Redis
    /// could not answer in time (the caller decides locally).
    pub async fn check(&self, client: &str, limit: RateLimit) -> Option<GcraReply> {
        let now_us = self.backoff.now_us();
        if self.backoff.skipping(now_us) {
            return None;
        }
        let interval_us = (60_000_000u64 / u64::from(limit.requests_per_minute.max(1))).max(1);
        let mut conn = self.conn.clone();
        let mut call = self.script.key(format!("{}{client}", self.prefix));
        call.arg(interval_us).arg(limit.burst);
        let result = tokio::time::timeout(
            self.timeout,
            call.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        match result {
            Ok(Ok((1, _, remaining))) => Some(GcraReply::Allowed {
                remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            }),
            Ok(Ok((_, wait_us, _))) => Some(GcraReply::Denied {
                wait: Duration::from_micros(wait_us.max(1) as u64),
            }),
            Ok(Err(e)) => self.failed(&e.to_string(), now_us),
            Err(_) => self.failed("timed out", now_us),
        }
    }

    fn failed(&self, cause: &str, now_us: u64) -> Option<GcraReply> {
        self.metrics.ratelimit_store_error();
        if self.backoff.failed(now_us) {
            warn!(
                cause,
                "rate-limit store unavailable; using per-replica limits for now"
            );
        }
        None
    }
}
