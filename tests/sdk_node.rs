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
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{start_gateway, start_upstream, GatewayConfig, ADMIN_KEY, CLIENT_KEY};

/// The seeded upstream user the Node tests retrieve, update and finally delete.
const USER_ID: &str = "user_abc";
/// A seeded user only the "retrieved twice" test touches: its upstream fetches are counted.
const OTHER_USER_ID: &str = "user_def";
/// The test file, relative to the crate root.
const TEST_FILE: &str = "tests/node/test_sdk.mjs";
/// Upper bound for the whole `node --test` run; each SDK request has its own 30 s timeout.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// The `node` to run, or `None` when the test is to be skipped.
fn test_node() -> Option<OsString> {
    if std::env::var("GATEWAY_SKIP_SDK_TESTS").as_deref() == Ok("1") {
        println!("note: GATEWAY_SKIP_SDK_TESTS=1, skipping the OpenAI Node SDK end-to-end test");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = root.join("tests/node/node_modules/openai/package.json");
    assert!(
        sdk.is_file(),
        "{} is missing: the official `openai` Node SDK is not installed. Run \
         `scripts/test.sh node_env` (or the whole scripts/test.sh), which runs `npm ci` in \
         tests/node, or set GATEWAY_SKIP_SDK_TESTS=1 to skip this test",
        sdk.display()
    );
    let node = std::env::var_os("GATEWAY_TEST_NODE").filter(|n| !n.is_empty());
    Some(node.unwrap_or_else(|| "node".into()))
}

/// Runs `node --test` on [`TEST_FILE`] with inherited stdout/stderr (its output streams
/// through) and `env` added, killing it (its whole process group: `node --test` runs the
/// file in a child process) after [`NODE_TIMEOUT`]. Blocking: call from `spawn_blocking`.
fn run_node_tests(node: &OsString, env: &[(&str, String)]) -> ExitStatus {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(root.join(TEST_FILE).is_file(), "{TEST_FILE} is missing");
    let mut cmd = Command::new(node);
    cmd.args([
        "--test",
        "--test-reporter=spec",
        "--test-reporter-destination=stdout",
    ]);
    cmd.arg(TEST_FILE);
    cmd.current_dir(root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd.stdout(Stdio::inherit());
    cmd.stderr(Stdio::inherit());
    // Nothing from the developer's shell may steer the SDK elsewhere, add credentials or
    // preload code into node.
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_ADMIN_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENAI_LOG",
        "NODE_OPTIONS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    // Its own process group, so a timeout can end the test file's process too.
    cmd.process_group(0);
    let spawned = cmd.spawn();
    let mut child = spawned.unwrap_or_else(|e| {
        panic!(
            "cannot start {node:?}: {e}; install Node.js 20+ (scripts/test.sh node_env does) \
             or set GATEWAY_TEST_NODE to its path"
        )
    });
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        match child.try_wait().expect("waiting for node --test") {
            Some(status) => return status,
            None if Instant::now() >= deadline => {
                // The group id is the child's pid (process_group(0)).
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.kill();
                let _ = child.wait();
                panic!("node --test did not finish within {NODE_TIMEOUT:?}; killed it");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// Multi-threaded runtime: the upstream and the gateway keep serving on the worker threads
// while node is awaited on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_sdk_against_gateway() {
    let Some(node) = test_node() else {
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
