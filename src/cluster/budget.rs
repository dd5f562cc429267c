//! The organization's budget shared in Redis ([`SharedBudget`]): one
//! upstream rate limit and one pause after an upstream 429 for all
//! replicas.
//!
//! Two keys per organization (`{redis.key_prefix}` first):
//! - `budget:{org}`: the GCRA's theoretical arrival time (µs on the Redis
//!   server's clock), the same GCRA as the per-client limits
//!   (`super::limits`); it expires once the budget is full again;
//! - `budget:{org}:pause`: present while the organization is paused after
//!   an upstream 429; its time to live is the pause left.
//!
//! [`SharedBudget::take`] is one Lua script run atomically on the server
//! with the server's clock (replicas' clocks never matter): the pause
//! first, then the GCRA, so a paused organization spends no turns.
//! [`SharedBudget::pause`] is another script that only ever lengthens a
//! pause, so replicas that each saw a 429 can not shorten each other's.
//!
//! Redis is never on the critical path: each call is bounded by
//! `redis.timeout_ms`. A call that fails or times out is counted in
//! `gateway_ratelimit_store_errors_total` (the same family as the
//! per-client limits: both are the shared rate-limit store), Redis is left
//! alone for a second (calls meanwhile answer at once without trying), and
//! `take` answers `None`: the caller decides locally with this replica's
//! share of the budget.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tracing::warn;

use super::backoff::Backoff;
use crate::config::{RateLimit, RedisConfig};
use crate::metrics::Metrics;

/// KEYS: the GCRA key, the pause key. ARGV: emission interval (µs, 0 for
/// no limit), burst. Returns {kind, wait, remaining}: kind 1 allowed,
/// 0 limited (wait in µs), 2 paused (wait = the pause's PTTL in ms).
const TAKE: &str = r#"
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {2, left, 0}
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if interval <= 0 then
  return {1, 0, 0}
end
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

/// KEYS: the pause key. ARGV: the pause (ms, at least 1). Sets the pause
/// when there is none (PTTL -2), when it would end later than the one set,
/// or when the key has no expiry (PTTL -1, never written by us: a pause
/// must end); returns 1 when it did.
const PAUSE: &str = r#"
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left >= ms then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return 1
"#;

/// What the shared store answered for one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetReply {
    /// A turn was taken; `remaining` turns are left in the burst (0 when
    /// the organization has no `rate_limit`).
    Allowed {
        /// Turns left right now.
        remaining: u32,
    },
    /// The budget is empty until `wait` has passed.
    Limited {
        /// Time until the next turn.
        wait: Duration,
    },
    /// The organization is paused (an upstream 429, seen by any replica)
    /// for `left` more.
    Paused {
        /// Time left of the pause.
        left: Duration,
    },
}

impl BudgetReply {
    /// The script's `{kind, wait, remaining}`.
    fn from_script((kind, wait, remaining): (i64, i64, i64)) -> BudgetReply {
        match kind {
            2 => BudgetReply::Paused {
                left: Duration::from_millis(wait.max(1) as u64),
            },
            1 => BudgetReply::Allowed {
                remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            },
            _ => BudgetReply::Limited {
                wait: Duration::from_micros(wait.max(1) as u64),
            },
        }
    }
}

/// The replicas' shared organization budgets and pauses.
pub struct SharedBudget {
    /// Reconnecting connection (the process's, shared with the limits and
    /// the bus's publishes).
    conn: ConnectionManager,
    /// The take script (sent by hash, loaded on demand).
    take: Script,
    /// The pause script.
    pause: Script,
    /// Prepended to every key.
    prefix: String,
    /// Bound on one call.
    timeout: Duration,
    /// Redis is left alone for a second after a failure.
    backoff: Backoff,
    /// Counts failures.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl SharedBudget {
    /// The shared budgets over `conn` (see [`super::connect`]): a Redis
    /// that is down at start only means local decisions until it is back.
    pub fn new(conn: ConnectionManager, cfg: &RedisConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            conn,
            take: Script::new(TAKE),
            pause: Script::new(PAUSE),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            backoff: Backoff::new(),
            metrics,
        })
    }

    /// Takes one turn from organization `org`'s shared budget, atomically
    /// on the Redis server: first the pause (if one is set, `Paused`),
    /// then, when `limit` is set, the GCRA (`Allowed` or `Limited`);
    /// without a limit, `Allowed { remaining: 0 }`. `None` when Redis
    /// could not answer within `redis.timeout_ms`, or failed less than a
    /// second ago (the caller decides locally).
    pub async fn take(&self, org: &str, limit: Option<RateLimit>) -> Option<BudgetReply> {
        let now_us = self.backoff.now_us();
        if self.backoff.skipping(now_us) {
            return None;
        }
        let interval_us = limit.map_or(0, |l| {
            (60_000_000u64 / u64::from(l.requests_per_minute.max(1))).max(1)
        });
        let burst = limit.map_or(0, |l| l.burst);
        let mut call = self.take.key(self.budget_key(org));
        call.key(self.pause_key(org)).arg(interval_us).arg(burst);
        let mut conn = self.conn.clone();
        let sent = call.invoke_async::<(i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(reply)) => Some(BudgetReply::from_script(reply)),
            Ok(Err(e)) => self.failed(&e.to_string(), now_us),
            Err(_) => self.failed("timed out", now_us),
        }
    }

    /// Pauses organization `org` for every replica for `pause` from now
    /// (a pause is only ever extended, never shortened). Bounded by
    /// `redis.timeout_ms`; a failure is counted and otherwise ignored (the
    /// other replicas then meet the upstream's 429 themselves). Skipped,
    /// like `take`, for a second after a failure.
    pub async fn pause(&self, org: &str, pause: Duration) {
        let now_us = self.backoff.now_us();
        if pause.is_zero() || self.backoff.skipping(now_us) {
            return;
        }
        let ms = pause.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let mut call = self.pause.key(self.pause_key(org));
        call.arg(ms);
        let mut conn = self.conn.clone();
        let sent = call.invoke_async::<i64>(&mut conn);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.failed(&e.to_string(), now_us);
            }
            Err(_) => {
                self.failed("timed out", now_us);
            }
        }
    }

    fn budget_key(&self, org: &str) -> String {
        format!("{}budget:{org}", self.prefix)
    }

    fn pause_key(&self, org: &str) -> String {
        format!("{}budget:{org}:pause", self.prefix)
    }

    fn failed(&self, cause: &str, now_us: u64) -> Option<BudgetReply> {
        self.metrics.ratelimit_store_error();
        if self.backoff.failed(now_us) {
            warn!(
                cause,
                "organization budget store unavailable; each replica takes its share for now"
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_map_to_budget_replies() {
        assert_eq!(
            BudgetReply::from_script((2, 1500, 0)),
            BudgetReply::Paused {
                left: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            BudgetReply::from_script((1, 0, 2)),
            BudgetReply::Allowed { remaining: 2 }
        );
        assert_eq!(
            BudgetReply::from_script((0, 250_000, 0)),
            BudgetReply::Limited {
                wait: Duration::from_millis(250)
            }
        );
        assert_eq!(
            BudgetReply::from_script((1, 0, -3)),
            BudgetReply::Allowed { remaining: 0 }
        );
    }
}
