//! End-to-end test with the official OpenAI Node SDK (npm package `openai`, `tests/node/`),
//! the Node twin of `tests/sdk_python.rs`.
//!
//! Starts the fake upstream and a gateway (the default test config: clients without
//! limits) in-process, then runs `node --test tests/node/test_sdk.mjs` against that
//! gateway: retrieve (cached), list (with auto-pagination), update/delete evicting, error
//! mapping. Afterwards it checks from this side what the upstream saw: one fetch for a user
//! retrieved twice, the admin key on every request, nothing from the refused requests.
//!
//! `scripts/test.sh` (step `node_env`) installs the SDK pinned in `tests/node/package.json`
//! with `npm ci`; step `tests` sets `GATEWAY_TEST_NODE` to the `node` it found (without it
//! this test runs `node` from `PATH`). `GATEWAY_SKIP_SDK_TESTS=1` skips this test (e.g.
//! offline, without `tests/node/node_modules`).

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use support::sdk::{run_streaming, test_node};
use support::{start_gateway, start_upstream, GatewayConfig, ADMIN_KEY, CLIENT_KEY};

/// The seeded upstream user the Node tests retrieve, update and finally delete.
const USER_ID: &str = "user_abc";
/// A seeded user only the "retrieved twice" test touches: its upstream fetches are counted.
const OTHER_USER_ID: &str = "user_def";
/// The test file, relative to the crate root.
const TEST_FILE: &str = "tests/node/test_sdk.mjs";
/// Upper bound for the whole `node --test` run; each SDK request has its own 30 s timeout.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `node --test` on [`TEST_FILE`] with `env` added, its output streaming through;
/// the whole process group (`node --test` runs the file in a child process) is killed
/// after [`NODE_TIMEOUT`]. Blocking: call from `spawn_blocking`.
fn run_node_tests(node: &OsString, env: &[(&str, String)]) -> ExitStatus {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join(TEST_FILE).is_file(), "{TEST_FILE} is missing");
    let mut cmd = Command::new(node);
    cmd.args([
        "--test",
        "--test-reporter=spec",
        "--test-reporter-destination=stdout",
        TEST_FILE,
    ]);
    run_streaming(cmd, env, NODE_TIMEOUT)
}

// Multi-threaded runtime: the upstream and the gateway keep serving on the worker threads
// while node is awaited on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_sdk_against_gateway() {
    let Some(node) = test_node("the OpenAI Node SDK end-to-end test") else {
        return;
    };

    let upstream = start_upstream().await;
    let gateway = start_gateway(&GatewayConfig::new(&upstream.base_url()).toml()).await;
    let base_url = gateway.base_url();
    println!(
        "gateway at {base_url}, fake upstream at {}",
        upstream.base_url()
    );

    let env = vec![
        ("GATEWAY_BASE_URL", base_url),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
        ("GATEWAY_USER_ID", USER_ID.to_string()),
        ("GATEWAY_OTHER_USER_ID", OTHER_USER_ID.to_string()),
    ];
    let status = tokio::task::spawn_blocking(move || run_node_tests(&node, &env))
        .await
        .expect("node runner panicked");
    assert!(
        status.success(),
        "the OpenAI Node SDK tests failed ({status}); see the node --test output above"
    );

    let requests = upstream.requests();
    let seen: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();

    // The user retrieved twice (and by nothing else) cost one upstream call: the second
    // retrieve was answered from the cache.
    let other_path = format!("/v1/organization/users/{OTHER_USER_ID}");
    assert_eq!(upstream.count("GET", &other_path), 1, "{seen:#?}");

    // The SDK's reads and writes went through the gateway to the upstream: two updates (the
    // role change and its restore) and one delete. The wrong key's update never got there.
    let user_path = format!("/v1/organization/users/{USER_ID}");
    assert!(upstream.count("GET", &user_path) >= 1, "{seen:#?}");
    assert_eq!(upstream.count("POST", &user_path), 2, "{seen:#?}");
    assert_eq!(upstream.count("DELETE", &user_path), 1, "{seen:#?}");
    // The auto-paginated list took more than one page, following `after` through the
    // gateway's query forwarding.
    let pages: Vec<&String> = seen
        .iter()
        .filter(|s| s.starts_with("GET /v1/organization/users?") && s.contains("limit=10"))
        .collect();
    assert!(
        pages.len() >= 2 && pages.iter().any(|s| s.contains("after=")),
        "{seen:#?}"
    );

    // Every upstream request carried exactly the admin key, never a client's key.
    let admin_auth = format!("Bearer {ADMIN_KEY}");
    for r in &requests {
        let auth: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert!(
            auth.len() == 1 && auth[0].as_bytes() == admin_auth.as_bytes(),
            "{} {} reached the upstream with {} authorization header(s), not the admin key",
            r.method,
            r.path_and_query,
            auth.len()
        );
        for (name, value) in &r.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(CLIENT_KEY),
                "the client key reached the upstream in {name}"
            );
        }
    }
    // The requests the gateway refuses itself (malformed id, path outside the prefix)
    // never reached the upstream.
    assert!(
        requests
            .iter()
            .all(|r| !r.path_and_query.contains("%20") && !r.path_and_query.contains("not-the")),
        "{seen:#?}"
    );

    // It was the Node SDK that made them: forwarded requests keep its User-Agent.
    let update = requests
        .iter()
        .rev()
        .find(|r| r.method == http::Method::POST && r.path_and_query == user_path)
        .expect("an update reached the upstream");
    let agent = update
        .headers
        .get("user-agent")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    assert!(
        agent.starts_with("OpenAI/JS "),
        "user-agent {agent:?} of {} {}",
        update.method,
        update.path_and_query
    );
}
