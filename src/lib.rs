//! openai-admin-gateway: a caching, key-swapping reverse proxy in front of
//! the OpenAI Admin API.
//!
//! # Layout
//!
//! Folders by concern; imports run one way, from the top of this list to
//! the bottom (`server → proxy → {policy, cache, upstream} → budget →
//! cluster → org → config → leaves`). Each folder's `mod.rs` says its job and its public
//! surface.
//!
//! - [`server`]: listeners, the worker threads (`server.workers`, each with
//!   its own current-thread runtime and `SO_REUSEPORT` listener), the
//!   connection bound, TLS termination, HTTP/1.1 and HTTP/2 serving, the
//!   send deadline (a response the client takes nothing of is cut), the
//!   admin listener, live reload ([`Reloader`]), signals and the graceful
//!   drain.
//! - [`proxy`]: [`proxy::Gateway`], the hyper service: route → authenticate
//!   → limits → serve, then one account per request (metrics, access and
//!   audit lines) on every exit.
//! - [`policy`]: the client table: key digests (authentication), scopes,
//!   per-client rate limits.
//! - [`cache`]: the moka user cache (write generations, single flight) and
//!   the cached retrieve-user route.
//! - [`upstream`]: the pooled rustls client (one pool per worker),
//!   timeouts, the concurrency cap, small-body buffering.
//! - [`budget`]: the organization's budget: one upstream rate limit for
//!   every client (and replica), fair turns while it is empty, and the
//!   pause after an upstream 429. Only the upstream exchange takes turns.
//! - [`cluster`]: everything that talks to Redis (shared rate limits, and
//!   the invalidation bus, whose outbox retries a failed publish).
//! - [`org`]: the organizations ([`org::Org`]: name, id, admin key, purge
//!   epoch), made from the config; cache keys and upstream exchanges take
//!   one.
//! - [`config`]: the TOML file, parsed then validated into a [`Config`]
//!   (every problem reported with its key).
//!
//! Leaves every folder may use:
//! - [`error`]: [`error::GatewayError`] and its one mapping to status and
//!   OpenAI's error JSON.
//! - [`body`]: the body type used on both sides.
//! - [`headers`]: hop-by-hop header rules, request ids, shared values.
//! - [`metrics`]: Prometheus metrics (those every request writes are kept
//!   per thread and summed at scrape).
//! - [`runtime`]: which server worker the current thread is (its upstream
//!   pool and per-thread slot follow it), and [`runtime::spawn_lasting`]
//!   for work a worker's shutdown must not cut.
//! - [`per_thread`]: per-thread slots and handles, so that the hit path
//!   writes no cache line another core writes. ("Shard" is kept for
//!   moka's key partitions in `cache/`.)
//! - [`secret`]: the admin key that never prints, and key digests.
//! - [`telemetry`]: OpenTelemetry traces (the SERVER span of each
//!   request, the CLIENT span of each upstream exchange, the W3C trace
//!   context both ways) and their OTLP/HTTP export off the request path.
//! - [`path`]: [`path::CanonicalPath`], the path after the prefix in its
//!   one spelling (made only by [`proxy::canonicalize`]), which routing, the
//!   dependency table and scopes take instead of a `&str`.

pub mod body;
pub mod budget;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod org;
pub mod path;
pub mod per_thread;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use server::{ReloadError, Reloader, Server};

/// Checks what validation alone cannot: that the TLS pair loads and matches
/// and that `upstream.ca_file` holds certificates. Used by `check-config`.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if let Some(files) = &config.server.tls {
        if let Err(e) = server::tls::load(files) {
            problems.push(e.to_string());
        }
    }
    if let Some(ca) = &config.upstream.ca_file {
        if let Err(e) = upstream::tls_client_config(Some(ca)) {
            problems.push(format!("upstream.ca_file: {e}"));
        }
    }
    ConfigError::from_problems(problems)
}
