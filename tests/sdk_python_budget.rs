//! The official OpenAI Python SDK against the organization's pause after an upstream 429
//! (`tests/python/test_budget.py`): with `max_retries=2` it meets the gateway's 429
//! `organization_budget_exceeded`, sleeps the `retry-after-ms` it carries (the pause's time
//! left), and succeeds once the pause is over. pytest prints the tries and the wait.
//! `GATEWAY_SKIP_SDK_TESTS=1` skips it; `GATEWAY_TEST_PYTHON` names the venv's python.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::sdk::{run_streaming, test_python};
use support::*;

/// The pause the scripted upstream 429 asks for.
const PAUSE_MS: u64 = 2500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_waits_out_the_organizations_pause() {
    let Some(python) = test_python("the OpenAI Python SDK budget test") else {
        return;
    };
    let upstream = start_upstream().await;
    let cfg = GatewayConfig::new(&upstream.base_url());
    // Shorter than the pause: a request meets the gateway's 429 rather than waiting.
    let gw = start_gateway(&with_upstream_keys(&cfg.toml(), "budget_wait_ms = 100")).await;
    let fault = Fault::new().too_many(RetryAfter::Millis(PAUSE_MS)).times(1);
    upstream.inject("GET", "/v1/echo/trigger", fault);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = "tests/python/test_budget.py";
    assert!(root.join(file).is_file(), "{file} is missing");
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", file]);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    let env = vec![
        ("GATEWAY_BASE_URL", gw.base_url()),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
        ("GATEWAY_PAUSE_MS", PAUSE_MS.to_string()),
    ];
    let status =
        tokio::task::spawn_blocking(move || run_streaming(cmd, &env, Duration::from_secs(120)))
            .await
            .expect("pytest runner");
    assert!(
        status.success(),
        "the SDK budget test failed ({status}); see its output above"
    );

    // Nothing reached the upstream during the pause: the trigger and the one retry.
    assert_eq!(upstream.count("GET", "/v1/echo/trigger"), 1);
    assert_eq!(upstream.count("GET", "/v1/organization/users"), 1);
    let text = gw.metrics_text().await;
    assert!(
        metric(&text, "gateway_budget_refusals_total", &[]) >= 1.0,
        "{text}"
    );
}
