//! Everything that talks to Redis, for replicas that share state
//! (`[redis]`).
//!
//! One reconnecting connection per process ([`connect`]), used by
//! [`SharedLimits`] (the per-client GCRA run as a Lua script on the Redis
//! server, so every replica takes from one budget), by [`SharedBudget`]
//! (the organization's upstream budget and its pause after a 429, also one
//! Lua script each) and by the [`Bus`]'s publishes; the bus's subscription
//! has a connection of its own, and its heartbeats count the live replicas
//! ([`Bus::live_replicas`], kept by `replicas`). Redis is never on the
//! critical path: every call is bounded by `redis.timeout_ms`, a failed
//! limit or budget check means the caller decides locally (the budget:
//! with this replica's share), a lost bus link means no cache hits until
//! it is back, and a failed publish of an eviction is queued and retried
//! (`outbox`) rather than lost.
//!
//! Public surface: [`connect`], [`SharedLimits`], [`GcraReply`],
//! [`SharedBudget`], [`BudgetReply`], [`Bus`],
//! [`Evict`], [`OUTBOX_CAPACITY`].

mod backoff;
mod budget;
mod bus;
mod limits;
mod outbox;
mod replicas;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

pub use budget::{BudgetReply, SharedBudget};
pub use bus::{Bus, Evict, HEARTBEAT, SILENCE};
pub use limits::{GcraReply, SharedLimits};
pub use outbox::CAPACITY as OUTBOX_CAPACITY;

/// The process's Redis connection for `cfg`. Connects lazily and
/// reconnects on its own; each connect and response is bounded by
/// `redis.timeout_ms`.
pub fn connect(cfg: &RedisConfig) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(cfg.url.as_str())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, config)
}
