//! Running the official OpenAI SDKs (Python, Node) as external test runners.
//!
//! `scripts/test.sh` prepares them: `.venv` with the `openai` Python package
//! (`GATEWAY_TEST_PYTHON`) and `tests/node/node_modules` with the Node one
//! (`GATEWAY_TEST_NODE`). `GATEWAY_SKIP_SDK_TESTS=1` skips every SDK test.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Variables from the developer's shell that could steer an SDK elsewhere, add
/// credentials or preload code: removed from every SDK run.
pub const STEERING_VARS: &[&str] = &[
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
];

/// True (after printing why) when `GATEWAY_SKIP_SDK_TESTS=1` asks to skip `what`.
pub fn skipped(what: &str) -> bool {
    let skip = std::env::var("GATEWAY_SKIP_SDK_TESTS").as_deref() == Ok("1");
    if skip {
        println!("note: GATEWAY_SKIP_SDK_TESTS=1, skipping {what}");
    }
    skip
}

/// The venv interpreter with the official `openai` package, or `None` when `what` is to
/// be skipped. Panics with the fix when the venv is missing.
pub fn test_python(what: &str) -> Option<PathBuf> {
    if skipped(what) {
        return None;
    }
    let python = std::env::var_os("GATEWAY_TEST_PYTHON").filter(|p| !p.is_empty());
    let Some(python) = python else {
        panic!(
            "GATEWAY_TEST_PYTHON is not set: run the suite with scripts/test.sh, which creates \
             .venv with the official `openai` SDK and pytest and sets it (or set \
             GATEWAY_SKIP_SDK_TESTS=1 to skip the SDK tests)"
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

/// The `node` to run the Node SDK tests with, or `None` when `what` is to be skipped.
/// Panics with the fix when the SDK is not installed.
pub fn test_node(what: &str) -> Option<OsString> {
    if skipped(what) {
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

/// Runs `cmd` from the crate root with `env` added and the steering variables removed,
/// its output streaming through (nextest captures it per test), in its own process group
/// so that a timeout ends its children too. Panics if it does not finish within `limit`.
/// Blocking: call from `spawn_blocking`.
pub fn run_streaming(mut cmd: Command, env: &[(&str, String)], limit: Duration) -> ExitStatus {
    let what = format!("{:?}", cmd.get_program());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in STEERING_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd.stdout(Stdio::inherit());
    cmd.stderr(Stdio::inherit());
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("waiting for the SDK test runner") {
            Some(status) => return status,
            None if Instant::now() >= deadline => {
                // The group id is the child's pid (process_group(0)).
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}; killed it");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
