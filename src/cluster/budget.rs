//! The organization's budget shared in Redis ([`SharedBudget`]): one
//! upstream rate limit and one pause after an upstream 429 for all
//! replicas.
//!
//! INTERFACE ONLY (the shared store is being built): every call answers
//! `None`/does nothing, which callers treat as "Redis unavailable: decide
//! locally with this replica's share".

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::{RateLimit, RedisConfig};
use crate::metrics::Metrics;

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

/// The replicas' shared organization budgets and pauses.
pub struct SharedBudget {
    /// Reconnecting connection.
    #[allow(dead_code)]
    conn: ConnectionManager,
    /// Prepended to every key.
    #[allow(dead_code)]
    prefix: String,
    /// Bound on one call.
    #[allow(dead_code)]
    timeout: Duration,
    /// Counts failures.
    #[allow(dead_code)]
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
    /// The shared budgets over `conn` (see [`super::connect`]).
    pub fn new(conn: ConnectionManager, cfg: &RedisConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            metrics,
        })
    }

    /// Takes one turn from organization `org`'s shared budget, atomically
    /// on the Redis server: first the pause (if one is set, `Paused`),
    /// then, when `limit` is set, the GCRA. `None` when Redis could not
    /// answer within `redis.timeout_ms` (the caller decides locally).
    pub async fn take(&self, _org: &str, _limit: Option<RateLimit>) -> Option<BudgetReply> {
        None
    }

    /// Pauses organization `org` for every replica for `pause` from now
    /// (a pause is only ever extended, never shortened). Bounded by
    /// `redis.timeout_ms`; a failure is counted and otherwise ignored.
    pub async fn pause(&self, _org: &str, _pause: Duration) {}
}
