//! The official OpenAI Python SDK with `organization="org-main"` (what `OPENAI_ORG_ID`
//! does): `tests/python/test_orgs.py` against a gateway whose default organization is
//! `org-main`. Its second retrieve is a hit (it was `fwd=bypass` before organizations),
//! and an organization the key may not use is 403 `organization_not_allowed`. Then
//! `tests/python/test_two_orgs.py` reads one id in two organizations through one gateway,
//! against a fake upstream that scopes its data by admin key and organization.

mod support;

#[allow(dead_code)] // the helpers tests/orgs.rs uses besides the fake itself
#[path = "orgs/upstream.rs"]
mod org_upstream;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use org_upstream::OrgUpstream;
use support::sdk::{run_streaming, test_python};
use support::{
    client_toml, start_gateway, start_upstream, with_upstream_keys, GatewayConfig, ADMIN_KEY,
    CLIENT_KEY,
};

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

/// The research organization's admin key (from a file, as `admin_key_file` reads it).
const RESEARCH_KEY: &str = "sk-admin-RESEARCH-sdk-do-not-leak-5551234";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_reads_two_organizations_apart() {
    let Some(python) = test_python("the OpenAI Python SDK two-organization test") else {
        return;
    };
    let upstream = OrgUpstream::start().await;
    let key_file =
        std::env::temp_dir().join(format!("oag-sdk-orgs-{}-research-key", std::process::id()));
    std::fs::write(&key_file, RESEARCH_KEY).expect("write key file");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.default_clients = false;
    cfg.extra = format!(
        "{}\n[[orgs]]\nname = \"research\"\norganization_id = \"org-research\"\nadmin_key_file = {:?}\n",
        client_toml("sdk", CLIENT_KEY, "orgs = [\"default\", \"research\"]"),
        key_file.display().to_string()
    );
    let toml = with_upstream_keys(&cfg.toml(), &format!("organization_id = {ORG:?}"));
    let gateway = start_gateway(&toml).await;
    let env = vec![
        ("GATEWAY_BASE_URL", gateway.base_url()),
        ("GATEWAY_KEY", CLIENT_KEY.to_string()),
        ("GATEWAY_USER_ID", USER_ID.to_string()),
        ("GATEWAY_ORGS", format!("{ORG},org-research")),
    ];
    let status = tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(&python);
        cmd.current_dir(root);
        cmd.args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]);
        cmd.arg("tests/python/test_two_orgs.py");
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        cmd.env("PYTHONUNBUFFERED", "1");
        run_streaming(cmd, &env, Duration::from_secs(300))
    })
    .await
    .expect("pytest runner panicked");
    let _ = std::fs::remove_file(&key_file);
    assert!(
        status.success(),
        "pytest failed ({status}); see its output above"
    );

    // One fill per organization (the second retrieve of each was a hit), each with its
    // own organization's key and id.
    let seen = upstream.seen();
    for s in &seen {
        let key = if s.auth == format!("Bearer {ADMIN_KEY}") {
            "the default organization's key"
        } else if s.auth == format!("Bearer {RESEARCH_KEY}") {
            "research's key"
        } else {
            "another key"
        };
        eprintln!(
            "upstream saw: {} {} OpenAI-Organization: {} with {key}",
            s.method, s.path, s.org
        );
    }
    let fills: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.org.clone(), s.auth.clone()))
        .collect();
    assert_eq!(
        fills,
        [
            (ORG.to_string(), format!("Bearer {ADMIN_KEY}")),
            ("org-research".to_string(), format!("Bearer {RESEARCH_KEY}")),
        ],
        "one fill per organization, each with its own key"
    );
}
