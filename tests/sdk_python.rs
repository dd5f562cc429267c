//! End-to-end test with the official OpenAI Python SDK (`tests/python/test_sdk.py`).
//!
//! Starts the fake upstream and the gateway in-process, then runs
//! `$GATEWAY_TEST_PYTHON -m pytest -q tests/python` against the gateway. `scripts/test.sh`
//! creates `.venv` with the newest `openai` package and sets `GATEWAY_TEST_PYTHON`.
//! `GATEWAY_SKIP_SDK_TESTS=1` skips this test (e.g. offline, without the venv).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{start_gateway, start_upstream, GatewayConfig, CLIENT_KEY};

/// The seeded upstream user the Python tests retrieve, update and finally delete.
const USER_ID: &str = "user_abc";
/// Upper bound for the whole pytest run; each SDK request has its own 30 s timeout.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The venv interpreter, or `None` when the test is to be skipped.
fn test_python() -> Option<PathBuf> {
    if std::env::var("GATEWAY_SKIP_SDK_TESTS").as_deref() == Ok("1") {
        println!("note: GATEWAY_SKIP_SDK_TESTS=1, skipping the OpenAI Python SDK end-to-end test");
        return None;
    }
    let python = std::env::var_os("GATEWAY_TEST_PYTHON").filter(|p| !p.is_empty());
    let Some(python) = python else {
        panic!(
            "GATEWAY_TEST_PYTHON is not set: run the suite with scripts/test.sh, which creates \
             .venv with the official `openai` SDK and pytest and sets it (or set \
             GATEWAY_SKIP_SDK_TESTS=1 to skip this test)"
        );
    };
    let python = PathBuf::from(python);
    assert!(
        python.exists(),
        "GATEWAY_TEST_PYTHON={} does not exist: run scripts/test.sh to create the venv",
        python.display()
    );
    Some(python)
}

/// Runs pytest with inherited stdout/stderr (its output streams through), killing it after
/// [`PYTEST_TIMEOUT`]. Blocking: call from `spawn_blocking`.
fn run_pytest(python: &Path, base_url: &str) -> ExitStatus {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(python);
    // No .pytest_cache in the work tree.
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
    cmd.arg("tests/python");
    cmd.current_dir(root);
    cmd.env("GATEWAY_BASE_URL", base_url);
    cmd.env("GATEWAY_KEY", CLIENT_KEY);
    cmd.env("GATEWAY_USER_ID", USER_ID);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.env("PYTHONUNBUFFERED", "1");
    // pytest's output streams straight through (nextest captures it per test).
    cmd.stdin(Stdio::null());
    cmd.stdout(Stdio::inherit());
    cmd.stderr(Stdio::inherit());
    // Nothing from the developer's shell may steer the SDK elsewhere or add credentials.
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_ADMIN_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_LOG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let spawned = cmd.spawn();
    let mut child = spawned.unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let deadline = Instant::now() + PYTEST_TIMEOUT;
    loop {
        match child.try_wait().expect("waiting for pytest") {
            Some(status) => return status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pytest did not finish within {PYTEST_TIMEOUT:?}; killed it");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// Multi-threaded runtime: the upstream and the gateway keep serving on the worker threads
// while pytest is awaited on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_against_gateway() {
    let Some(python) = test_python() else {
        return;
    };

    let upstream = start_upstream().await;
    let gateway = start_gateway(&GatewayConfig::new(&upstream.base_url()).toml()).await;
    let base_url = gateway.base_url();
    let upstream_url = upstream.base_url();
    println!("gateway at {base_url}, fake upstream at {upstream_url}");

    let status = tokio::task::spawn_blocking(move || run_pytest(&python, &base_url))
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
}
