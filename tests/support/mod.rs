//! Test support for the gateway's integration tests.
//!
//! # Layout
//! - [`upstream`]: an in-process fake of the OpenAI Admin API (users routes, an echo route,
//!   SSE, big streamed bodies, uploads) with per-test failure injection (delays, gates, error
//!   statuses, broken bodies) and counters: requests per route, wrong `Authorization`, requests
//!   in flight and their peak. One file per part under `upstream/`: `routes`, `faults`,
//!   `rewrite`, `counters`, `users`, `projects`, `streams`, `echo`, `reply`.
//! - [`gateway`]: starts the gateway in-process on `127.0.0.1:0` through the library API
//!   (`Config::parse`, `Server::bind`, `Server::run`) and builds test configs.
//! - [`client`]: a small HTTP/1.1 and h2c client (also on one kept-alive connection) plus
//!   assertion helpers for responses (OpenAI errors, `x-ratelimit-*` headers).
//! - [`logs`]: finding `key=value` fields in the gateway's text or JSON log lines, with the
//!   text format's ANSI colours stripped, and JSON log lines parsed.
//! - [`metrics`]: sums of Prometheus samples by name and labels ([`metric`]), one exact
//!   series of a parsed scrape ([`metrics::Scrape`]), and the config reload counters of a
//!   gateway's admin listener.
//! - [`cache_status`]: the `Cache-Status` values tests expect (stored miss, miss, bypass).
//! - [`body`]: a channel-backed streaming body used by both sides.
//! - [`process`]: runs the real binary (temp config files, stdout/stderr capture, signals to
//!   its pid: SIGHUP, SIGTERM, SIGINT).
//! - [`redis`]: a real `redis-server` on a loopback port, stopped and restarted at will.
//! - [`replica`]: one replica as a real process with `[redis]`, its metrics and gauges.
//! - [`pki`]: a fresh rcgen CA and leaf certificates for `localhost` / `127.0.0.1`.
//! - [`sdk`]: finding and running the official Python and Node SDK test runners.
//!
//! Every test crate uses a different subset of this module, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod body;
pub mod cache_status;
pub mod client;
pub mod gateway;
pub mod logs;
pub mod metrics;
pub mod pki;
pub mod process;
pub mod redis;
pub mod replica;
pub mod sdk;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use body::{channel_body, empty, full, BodySender, TestBody};
pub use cache_status::{bypass, stored_miss, unstored_miss};
pub use client::{
    assert_no_ratelimit_headers, assert_openai_error, h1_connect, parse_reset, ratelimit_headers,
    req, send_on, Req, TestResponse,
};
pub use gateway::{
    allow, client_toml, config_toml, parse_config, rate_limit, sha256_hex, start_gateway,
    start_pair, start_pair_with, user_path, with_upstream_keys, GatewayConfig, TestGateway,
};
pub use logs::{json_lines, log_field, strip_ansi};
pub use metrics::assert_settled;
pub use metrics::{config_reloads, metric};
pub use upstream::{pattern_chunk, start_upstream, Fault, RetryAfter, Upstream};

/// The organization's real admin key as the fake upstream expects it. It must never show up
/// in anything the gateway sends back or logs.
pub const ADMIN_KEY: &str = "sk-admin-TEST-SECRET-do-not-leak-0123456789";
/// Name of the variable the test configs point `upstream.admin_key_env` at.
pub const ADMIN_KEY_ENV: &str = "OAG_TEST_ADMIN_KEY";
/// Key of the default client (`test-client`) in every test config.
pub const CLIENT_KEY: &str = "gwk_test_client_key_0123456789abcdefghijklmnopqrstuv";
/// Key of the second default client (`other-client`).
pub const OTHER_CLIENT_KEY: &str = "gwk_other_client_key_zyxwvutsrqponmlkjihgfedcba9876";
/// A well-formed key that no config knows.
pub const UNKNOWN_KEY: &str = "gwk_unknown_key_00000000000000000000000000000000000";
/// The path of the user most tests read (`user_abc`, the seeded owner).
pub const USER_PATH: &str = "/v1/organization/users/user_abc";
/// Name of the gateway in `Cache-Status`.
pub const CACHE_NAME: &str = "openai-admin-gateway";

/// Awaits `fut`, failing the test with a readable message after `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Polls `cond` every 10 ms until it holds, failing after `secs` seconds.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
