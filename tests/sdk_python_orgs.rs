//! The official OpenAI Python SDK with `organization="org-main"` (what `OPENAI_ORG_ID`
//! does): `tests/python/test_orgs.py` against a gateway whose default organization is
//! `org-main`. Its second retrieve is a hit (it was `fwd=bypass` before organizations),
//! and an organization the key may not use is 403 `organization_not_allowed`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::sdk::{run_streaming, test_python};
use support::{start_gateway, start_upstream, with_upstream_keys, GatewayConfig, CLIENT_KEY};

const USER_ID: &str = "user_abc";
const ORG: &str = "org-main";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_with_the_gateways_organization_is_cached() {
    let Some(python) = test_python("the OpenAI Python SDK organization test") else {
        return;
    };
    let upstream = start_upstream().await;
    let toml = GatewayConfig::new(&upstream.base_url()).toml();
    let toml = with_upstream_keys(&toml, &format!("organization_id = {ORG:?}"));
    let gateway = start_gateway(&toml).await;
    let env = vec![
        ("GATEWAY_BASE_URL", gateway.base_url()),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
        ("GATEWAY_USER_ID", USER_ID.to_string()),
        ("GATEWAY_ORG", ORG.to_string()),
    ];
    let status = tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(&python);
        cmd.current_dir(root);
        cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
        cmd.arg("tests/python/test_orgs.py");
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        cmd.env("PYTHONUNBUFFERED", "1");
        run_streaming(cmd, &env, Duration::from_secs(300))
    })
    .await
    .expect("pytest runner panicked");
    assert!(
        status.success(),
        "pytest failed ({status}); see its output above"
    );

    let path = format!("/v1/organization/users/{USER_ID}");
    assert_eq!(upstream.count("GET", &path), 1, "one fill, then a hit");
    let sent: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == path)
        .map(|r| r.headers.get("openai-organization").cloned())
        .collect();
    assert_eq!(
        sent,
        [Some(http::HeaderValue::from_static(ORG))],
        "the fill names the organization"
    );
}
