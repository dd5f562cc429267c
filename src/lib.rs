//! openai-admin-gateway: a caching, key-swapping reverse proxy in front of
//! the OpenAI Admin API.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed then validated into a [`Config`]
//!   (every problem reported with its key).
//! - [`server`]: listeners, per-connection tasks (HTTP/1.1 + HTTP/2, optional
//!   TLS), the connection bound, graceful drain, and [`server::Reloader`].
//! - [`proxy`]: [`proxy::Gateway`], the hyper service: route → authenticate →
//!   limits → serve, then headers, metrics and one log line.
//! - [`route`]: pure classification of method + raw path.
//! - [`auth`]: client keys (SHA-256 digests, constant-time match), key tools.
//! - [`ratelimit`]: per-client GCRA limiter and the `x-ratelimit-*` headers.
//! - [`scope`]: per-client `allow` patterns.
//! - [`store`]: the Redis-backed GCRA that replicas share (`[redis]`).
//! - [`users`]: the cached retrieve-user route (fetch, validate, hit response,
//!   `Cache-Status`).
//! - [`cache`]: the moka cache with single flight and write generations.
//! - [`upstream`]: the pooled rustls client, timeouts, the concurrency cap.
//! - [`headers`]: hop-by-hop header rules and request ids.
//! - [`error`]: [`error::GatewayError`] and its one mapping to status and
//!   OpenAI's error JSON.
//! - [`body`]: the body type used on both sides.
//! - [`buffer`]: small forwarded bodies read whole (one write each way).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, cache purges.
//! - [`metrics`]: Prometheus metrics.
//! - [`tls`]: certificate loading and hot swap.
//! - [`secret`]: the admin key wrapper that never prints.
//! - [`shutdown`]: the stop signal (SIGINT or SIGTERM).

pub mod admin;
pub mod auth;
pub mod body;
pub mod buffer;
pub mod cache;
pub mod config;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod scope;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod users;

pub use config::{Config, ConfigError};
pub use server::{ReloadError, Reloader, Server};

/// Checks what validation alone cannot: that the TLS pair loads and matches
/// and that `upstream.ca_file` holds certificates. Used by `check-config`.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if let Some(files) = &config.server.tls {
        if let Err(e) = tls::load(files) {
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
