//! Configuration parsing and validation tests.

use super::*;
use std::path::Path;

fn env_with_key(name: &str) -> Option<String> {
    (name == "OPENAI_ADMIN_KEY").then(|| "sk-admin-test".to_string())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("."), &env_with_key)
}

#[test]
fn example_configs_load_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["gateway.toml", "gateway.example.toml"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("example config exists");
        let cfg = Config::parse(&text, &dir, &env_with_key)
            .unwrap_or_else(|e| panic!("{name} must validate:\n{e}"));
        assert_eq!(cfg.server.path_prefix, "/v1");
    }
}

#[test]
fn defaults_match_the_contract() {
    let c = parse("").expect("empty file is valid with the key set");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.path_prefix, "/v1");
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.upstream.base_url.to_string(), "https://api.openai.com/v1");
    assert_eq!(c.upstream.timeout, Duration::from_millis(60_000));
    assert_eq!(c.cache.ttl, Duration::from_secs(300));
    assert_eq!(c.cache.max_entries, 100_000);
    assert_eq!(c.cache.max_body_bytes, 65_536);
}

#[test]
fn unknown_keys_are_rejected() {
    let e = parse("[cache]\nttl = 5\n").unwrap_err().to_string();
    assert!(e.contains("ttl"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
[server]
listen = "nope"
log_format = "xml"
[cache]
ttl_secs = 0
[[clients]]
name = "a b"
key_sha256 = "zz"
allow = ["GET organization"]
"#;
    let e = parse(text).unwrap_err();
    let all = e.to_string();
    for key in [
        "server.listen",
        "server.log_format",
        "cache.ttl_secs",
        "clients[0].name",
        "clients[0].key_sha256",
        "clients[0].allow",
    ] {
        assert!(all.contains(key), "missing {key} in:\n{all}");
    }
    assert_eq!(e.problems().len(), 6, "{all}");
}

#[test]
fn missing_or_empty_admin_key_is_a_problem() {
    let none = Config::parse("", Path::new("."), &|_| None).unwrap_err();
    assert!(none.to_string().contains("OPENAI_ADMIN_KEY"));
    let empty = Config::parse("", Path::new("."), &|_| Some("  ".into())).unwrap_err();
    assert!(empty.to_string().contains("upstream.admin_key_env"));
}

#[test]
fn admin_key_never_in_debug_output() {
    let c = parse("").unwrap();
    assert!(!format!("{c:?}").contains("sk-admin-test"));
}

#[test]
fn admin_key_hash_as_client_key_is_rejected() {
    let h = crate::secret::hash_key("sk-admin-test");
    let e = parse(&format!(
        "[[clients]]\nname = \"x\"\nkey_sha256 = \"{h}\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("admin key"), "{e}");
}

#[test]
fn plain_http_only_to_loopback() {
    assert!(parse("[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n").is_ok());
    assert!(parse("[upstream]\nbase_url = \"http://localhost:9/v1\"\n").is_ok());
    let e = parse("[upstream]\nbase_url = \"http://api.example.com/v1\"\n").unwrap_err();
    assert!(e.to_string().contains("upstream.base_url"), "{e}");
}

#[test]
fn rotation_accepts_two_hashes() {
    let (a, b) = (crate::secret::hash_key("k1"), crate::secret::hash_key("k2"));
    let c = parse(&format!(
        "[[clients]]\nname = \"x\"\nkey_sha256 = [\"{a}\", \"{b}\"]\n"
    ))
    .unwrap();
    assert_eq!(c.clients[0].key_sha256.len(), 2);
}
