//! End-to-end tests with the official OpenAI Python SDK (`tests/python/`).
//!
//! Each test starts the fake upstream and a gateway in-process, then runs
//! `$GATEWAY_TEST_PYTHON -m pytest -q tests/python/<one file>` against that gateway: one
//! pytest file per gateway config, so the configs never mix.
//! - `test_sdk.py`: retrieve (cached), list, update/delete evicting, error mapping; the
//!   default test config (clients without limits).
//! - `test_ratelimit.py`: a client with `rate_limit = { requests_per_minute = 60, burst = 2 }`;
//!   with `max_retries=0` the SDK raises `RateLimitError`, with its default retries it waits
//!   out the 429 using our `retry-after-ms` and succeeds.
//!
//! `scripts/test.sh` creates `.venv` with the newest `openai` package and sets
//! `GATEWAY_TEST_PYTHON`. `GATEWAY_SKIP_SDK_TESTS=1` skips these tests (e.g. offline,
//! without the venv).

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use http::Method;
use support::sdk::{run_streaming, test_python};
use support::{
    client_toml, metric, rate_limit, start_gateway, start_upstream, GatewayConfig, TestGateway,
    CLIENT_KEY,
};

/// The seeded upstream user the Python tests retrieve, update and finally delete.
const USER_ID: &str = "user_abc";
/// A seeded user whose id the SDK percent-encodes (`user%20a`).
const SPACED_ID: &str = "user a";
/// Upper bound for the whole pytest run; each SDK request has its own 30 s timeout.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs pytest on the one file `test_file` (relative to the crate root) with `env` added,
/// its output streaming through, killing it after [`PYTEST_TIMEOUT`]. Blocking: call
/// from `spawn_blocking`.
fn run_pytest(python: &Path, test_file: &str, env: &[(&str, String)]) -> ExitStatus {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join(test_file).is_file(), "{test_file} is missing");
    let mut cmd = Command::new(python);
    // No .pytest_cache in the work tree.
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]);
    cmd.env("GATEWAY_USER_ID", USER_ID);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.env("PYTHONUNBUFFERED", "1");
    run_streaming(cmd, env, PYTEST_TIMEOUT)
}

// Multi-threaded runtime: the upstream and the gateway keep serving on the worker threads
// while pytest is awaited on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_against_gateway() {
    let Some(python) = test_python("the OpenAI Python SDK end-to-end test") else {
        return;
    };

    let upstream = start_upstream().await;
    upstream.add_user(SPACED_ID, "Spaced", "reader");
    let gateway = start_gateway(&GatewayConfig::new(&upstream.base_url()).toml()).await;
    let base_url = gateway.base_url();
    let upstream_url = upstream.base_url();
    println!("gateway at {base_url}, fake upstream at {upstream_url}");

    let env = vec![
        ("GATEWAY_BASE_URL", base_url),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
    ];
    let status =
        tokio::task::spawn_blocking(move || run_pytest(&python, "tests/python/test_sdk.py", &env))
            .await
            .expect("pytest runner panicked");
    assert!(
        status.success(),
        "the OpenAI Python SDK tests failed ({status}); see the pytest output above"
    );

    // The SDK's writes went through the gateway to the upstream.
    let user_path = format!("/v1/organization/users/{USER_ID}");
    assert!(upstream.count("GET", &user_path) >= 1);
    assert!(upstream.count("POST", &user_path) >= 1);
    assert_eq!(upstream.count("DELETE", &user_path), 1);
    // retrieve("user a") twice: the SDK sent "user%20a", the upstream was asked once.
    let spaced_path = "/v1/organization/users/user%20a";
    assert_eq!(
        upstream.count("GET", spaced_path),
        1,
        "{:?}",
        upstream.requests()
    );
}

// === the rate limit ===

/// The rate-limited client `test_ratelimit.py` uses (the only client of its gateway).
const LIMITED_CLIENT: &str = "sdk-limited";
const LIMITED_KEY: &str = "gwk_sdk_limited_client_key_0123456789abcdefghijklmn";
const LIMITED_RPM: u32 = 60;
const LIMITED_BURST: u32 = 2;

async fn metrics_text(gw: &TestGateway) -> String {
    let resp = gw.admin(Method::GET, "/metrics").send().await;
    resp.assert_status(200);
    resp.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_against_the_rate_limit() {
    let Some(python) = test_python("the OpenAI Python SDK end-to-end test") else {
        return;
    };

    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.default_clients = false;
    cfg.extra = client_toml(
        LIMITED_CLIENT,
        LIMITED_KEY,
        &rate_limit(LIMITED_RPM, LIMITED_BURST),
    );
    let gateway = start_gateway(&cfg.toml()).await;
    let base_url = gateway.base_url();
    println!(
        "gateway at {base_url} ({LIMITED_RPM}/min, burst {LIMITED_BURST}), fake upstream at {}",
        upstream.base_url()
    );

    let env = vec![
        ("GATEWAY_BASE_URL", base_url),
        ("GATEWAY_KEY", LIMITED_KEY.to_string()),
        ("GATEWAY_RATE_LIMIT_RPM", LIMITED_RPM.to_string()),
        ("GATEWAY_RATE_LIMIT_BURST", LIMITED_BURST.to_string()),
    ];
    let status = tokio::task::spawn_blocking(move || {
        run_pytest(&python, "tests/python/test_ratelimit.py", &env)
    })
    .await
    .expect("pytest runner panicked");
    assert!(
        status.success(),
        "the OpenAI Python SDK rate-limit tests failed ({status}); see the pytest output above"
    );

    // Every retrieve after the first was a cache hit, and no 429 reached the upstream: one
    // upstream call in all.
    let user_path = format!("/v1/organization/users/{USER_ID}");
    assert_eq!(
        upstream.count("GET", &user_path),
        1,
        "{:?}",
        upstream.requests()
    );
    assert_eq!(upstream.total(), 1, "{:?}", upstream.requests());

    // The gateway refused at least once per pytest test (max_retries=0, then default retries).
    let text = metrics_text(&gateway).await;
    let limited = metric(
        &text,
        "gateway_rate_limited_total",
        &[("client", LIMITED_CLIENT)],
    );
    assert!(
        limited >= 2.0,
        "gateway_rate_limited_total = {limited}\n{text}"
    );
    let refused = metric(
        &text,
        "gateway_requests_total",
        &[("client", LIMITED_CLIENT), ("status", "429")],
    );
    assert_eq!(refused, limited, "{text}");
}
