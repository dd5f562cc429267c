//! The OpenAI Python SDK adds a project member through one replica and retrieves the user
//! through it and through another replica (`tests/python/test_evictions.py`): the new
//! project shows on both. Two in-process gateways share a real `redis-server`.
//!
//! Needs `GATEWAY_TEST_PYTHON` (see tests/sdk_python.rs); `GATEWAY_SKIP_SDK_TESTS=1` skips.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::redis::Redis;
use support::sdk::{run_streaming, test_python};
use support::{start_gateway, start_upstream, GatewayConfig, TestGateway, Upstream, CLIENT_KEY};

async fn replica(upstream: &Upstream, redis: &Redis) -> TestGateway {
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.extra = format!("[redis]\nurl = {:?}\ntimeout_ms = 200\n", redis.url());
    let gw = start_gateway(&cfg.toml()).await;
    gw.wait_bus_connected().await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_adds_a_project_member_and_both_replicas_show_it() {
    let Some(python) = test_python("the OpenAI Python SDK eviction test") else {
        return;
    };
    let redis = Redis::start();
    let upstream = start_upstream().await;
    let (a, b) = (
        replica(&upstream, &redis).await,
        replica(&upstream, &redis).await,
    );
    let env = vec![
        ("GATEWAY_BASE_URL", a.base_url()),
        ("GATEWAY_SECOND_BASE_URL", b.base_url()),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
    ];
    let status = tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(python);
        cmd.current_dir(root);
        cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
        cmd.arg("tests/python/test_evictions.py");
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        run_streaming(cmd, &env, Duration::from_secs(300))
    })
    .await
    .expect("pytest runner panicked");
    assert!(
        status.success(),
        "pytest failed ({status}); see its output above"
    );
    assert_eq!(
        upstream.count("POST", "/v1/organization/projects/p1/users"),
        2
    );
}
