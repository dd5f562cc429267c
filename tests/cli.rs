//! The command line: `hash-key`, `new-key`, `check-config`, serving until SIGTERM.

mod support;

use std::process::Output;

use support::process::{output_text as text, run_cli, GatewayProcess, TempDir};
use support::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hash_key_prints_the_sha256_hex_of_stdin_minus_one_newline() {
    for (input, key) in [
        ("my-client-key\n", "my-client-key"),
        ("my-client-key", "my-client-key"),
        ("gwk_\u{e9}t\u{e9}\n", "gwk_\u{e9}t\u{e9}"),
        // Only one trailing newline is dropped.
        ("two-newlines\n\n", "two-newlines\n"),
    ] {
        let out = run_cli(&["hash-key"], &[], input);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            stdout(&out).trim(),
            sha256_hex(key),
            "input {input:?}: {}",
            text(&out)
        );
    }
}

/// Splits `new-key` output into candidate tokens (labels like `key:` or `sha256=` aside).
fn tokens(out: &str) -> Vec<String> {
    out.split(|c: char| c.is_whitespace() || "\"'`,=:".contains(c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Finds (key, hash) in `new-key` output: a 64-hex token and another token hashing to it.
fn key_and_hash(out: &Output) -> (String, String) {
    let toks = tokens(&stdout(out));
    let is_hex = |t: &&String| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
    for hash in toks.iter().filter(is_hex) {
        if let Some(key) = toks
            .iter()
            .find(|k| k != &hash && sha256_hex(k) == hash.to_lowercase())
        {
            return (key.clone(), hash.clone());
        }
    }
    panic!("no key with its SHA-256 hex in the output:\n{}", text(out));
}

#[test]
fn new_key_prints_a_fresh_key_and_its_hash() {
    let a = run_cli(&["new-key"], &[], "");
    let b = run_cli(&["new-key"], &[], "");
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let (key_a, _) = key_and_hash(&a);
    let (key_b, _) = key_and_hash(&b);
    assert_ne!(key_a, key_b, "two runs printed the same key");
    assert!(
        key_a.len() >= 32,
        "{key_a:?} is too short to hold 192 random bits"
    );
}

#[test]
fn new_key_honours_prefix() {
    let out = run_cli(&["new-key", "--prefix", "gwtest_"], &[], "");
    assert!(out.status.success(), "{}", text(&out));
    let (key, _) = key_and_hash(&out);
    let random = key
        .strip_prefix("gwtest_")
        .unwrap_or_else(|| panic!("{key:?} lacks the prefix"));
    assert!(
        random.len() >= 32,
        "{random:?} is too short to hold 192 random bits"
    );
}

fn config_file(dir: &TempDir, toml: &str) -> String {
    let path = dir.write("gateway.toml", toml);
    path.to_str().expect("utf-8 path").to_string()
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = TempDir::new("check-ok");
    let path = config_file(&dir, &config_toml("http://127.0.0.1:9/v1", ""));
    let out = run_cli(
        &["check-config", "--config", &path],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(ADMIN_KEY));
}

#[test]
fn check_config_names_every_problem() {
    let dir = TempDir::new("check-bad");
    let toml = config_toml("http://127.0.0.1:9/v1", "")
        .replace(ADMIN_KEY_ENV, "OAG_TEST_VARIABLE_THAT_IS_NOT_SET")
        .replace(&sha256_hex(OTHER_CLIENT_KEY), "not-a-hex-digest");
    let path = config_file(&dir, &toml);
    let out = run_cli(&["check-config", "--config", &path], &[], "");
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("admin_key_env"),
        "unset admin key not named:\n{all}"
    );
    assert!(
        all.contains("key_sha256"),
        "bad client hash not named:\n{all}"
    );
}

#[test]
fn check_config_rejects_an_empty_admin_key() {
    let dir = TempDir::new("check-empty");
    let path = config_file(&dir, &config_toml("http://127.0.0.1:9/v1", ""));
    let out = run_cli(
        &["check-config", "--config", &path],
        &[(ADMIN_KEY_ENV, "")],
        "",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("admin_key_env"), "{}", text(&out));
}

#[test]
fn check_config_rejects_an_empty_admin_key_file() {
    let dir = TempDir::new("check-empty-file");
    let key_file = dir.write("admin-key", "");
    let line = format!("admin_key_env = {ADMIN_KEY_ENV:?}");
    let file_line = format!("admin_key_file = {:?}", key_file.to_str().expect("utf-8"));
    let toml = config_toml("http://127.0.0.1:9/v1", "").replace(&line, &file_line);
    let path = config_file(&dir, &toml);
    let out = run_cli(&["check-config", "--config", &path], &[], "");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("admin_key_file"), "{}", text(&out));

    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).expect("write key file");
    let out = run_cli(&["check-config", "--config", &path], &[], "");
    assert!(
        out.status.success(),
        "a key file with a key is fine: {}",
        text(&out)
    );
}

#[test]
fn check_config_rejects_unknown_keys() {
    let dir = TempDir::new("check-unknown");
    let toml = config_toml("http://127.0.0.1:9/v1", "").replace("ttl_secs", "ttl_sec");
    let path = config_file(&dir, &toml);
    let out = run_cli(
        &["check-config", "--config", &path],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        "",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ttl_sec"), "{}", text(&out));
}

#[test]
fn check_config_prints_unknown_keys_in_every_section_with_the_other_problems() {
    let dir = TempDir::new("check-unknown-many");
    let toml = config_toml("http://127.0.0.1:9/v1", "")
        .replacen("[server]\n", "[server]\nlisen = \"127.0.0.1:1\"\n", 1)
        .replacen(
            "name = \"other-client\"\n",
            "name = \"other-client\"\nalow = [\"GET /organization/users\"]\n",
            1,
        )
        .replace(&sha256_hex(OTHER_CLIENT_KEY), "not-a-hex-digest");
    let path = config_file(&dir, &toml);
    let out = run_cli(
        &["check-config", "--config", &path],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        "",
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One problem a line, each naming its key's path.
    let problems: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .collect();
    for want in ["server.lisen: unknown key", "clients[1].alow: unknown key"] {
        assert!(
            problems.contains(&want),
            "no line {want:?}:\n{}",
            text(&out)
        );
    }
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("clients[1].key_sha256: ") && p.contains("not-a-hex-digest")),
        "the bad hash is not on a line of its own:\n{}",
        text(&out)
    );
    assert_eq!(problems.len(), 3, "{}", text(&out));
}

/// A config whose admin key comes from `key_file`.
fn key_file_config(dir: &TempDir, key_file: &std::path::Path) -> String {
    let line = format!("admin_key_env = {ADMIN_KEY_ENV:?}");
    let file_line = format!("admin_key_file = {:?}", key_file.to_str().expect("utf-8"));
    let toml = config_toml("http://127.0.0.1:9/v1", "").replace(&line, &file_line);
    config_file(dir, &toml)
}

#[test]
fn a_key_file_with_a_byte_order_mark_is_a_problem_for_check_config_and_serve() {
    let dir = TempDir::new("check-bom");
    let key_file = dir.path().join("admin-key");
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(format!("{ADMIN_KEY}\n").as_bytes());
    std::fs::write(&key_file, bytes).expect("write key file");
    let path = key_file_config(&dir, &key_file);
    for args in [
        &["check-config", "--config", &path][..],
        &["--config", &path],
    ] {
        let out = run_cli(args, &[], "");
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        let all = text(&out);
        assert!(
            all.lines()
                .any(|l| l.contains("upstream.admin_key_file") && l.contains("byte-order mark")),
            "{args:?}: the source and the problem are named:\n{all}"
        );
        assert!(
            !all.contains(ADMIN_KEY),
            "{args:?}: the key was printed:\n{all}"
        );
    }
}

#[test]
fn an_admin_key_with_a_byte_no_api_key_has_is_a_problem_naming_its_variable() {
    let dir = TempDir::new("check-key-bytes");
    let path = config_file(&dir, &config_toml("http://127.0.0.1:9/v1", ""));
    for (value, problem) in [
        (format!("{ADMIN_KEY}\u{200B}"), "non-ASCII"),
        (format!("sk-admin\u{7}{ADMIN_KEY}"), "control character"),
        (format!("\u{FEFF}{ADMIN_KEY}"), "byte-order mark"),
    ] {
        let out = run_cli(
            &["check-config", "--config", &path],
            &[(ADMIN_KEY_ENV, &value)],
            "",
        );
        assert!(!out.status.success(), "{problem}: {}", text(&out));
        let all = text(&out);
        assert!(
            all.contains(&format!("upstream.admin_key_env ({ADMIN_KEY_ENV})"))
                && all.contains(problem),
            "{problem} not named with its source:\n{all}"
        );
        assert!(!all.contains(ADMIN_KEY), "the key was printed:\n{all}");
    }
    // Surrounding ASCII white space is trimmed, as before.
    let out = run_cli(
        &["check-config", "--config", &path],
        &[(ADMIN_KEY_ENV, &format!(" {ADMIN_KEY}\r\n"))],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn serving_with_an_invalid_config_fails_fast() {
    let dir = TempDir::new("serve-bad");
    let toml = config_toml("http://127.0.0.1:9/v1", "").replace("ttl_secs", "ttl_sec");
    let path = config_file(&dir, &toml);
    let out = run_cli(&["--config", &path], &[(ADMIN_KEY_ENV, ADMIN_KEY)], "");
    assert!(!out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn serves_from_gateway_config_and_exits_zero_on_sigterm() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let dir = TempDir::new("serve");
    let path = config_file(&dir, &cfg.toml());
    let env = [
        (ADMIN_KEY_ENV, ADMIN_KEY),
        ("GATEWAY_CONFIG", path.as_str()),
    ];
    let mut gateway = GatewayProcess::spawn_args(&["serve"], &env);
    gateway.wait_listening(addr).await;
    let resp = req(
        http::Method::GET,
        &format!("http://{addr}/v1/organization/users/user_abc"),
    )
    .bearer(CLIENT_KEY)
    .send()
    .await;
    resp.assert_status(200);
    let ready = req(http::Method::GET, &format!("http://{admin}/readyz"))
        .send()
        .await;
    ready.assert_status(200);
    let status = gateway.terminate(20);
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}:\n{}",
        gateway.stderr_text()
    );
}

#[tokio::test]
async fn exits_zero_on_sigint() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, _) = cfg.free_ports();
    let dir = TempDir::new("sigint");
    let path = dir.write("gateway.toml", &cfg.toml());
    let mut gateway = GatewayProcess::spawn(&path, &[(ADMIN_KEY_ENV, ADMIN_KEY)]);
    gateway.wait_listening(addr).await;
    let status = gateway.stop_with("INT", 20);
    assert!(
        status.success(),
        "SIGINT must exit 0, got {status}:\n{}",
        gateway.stderr_text()
    );
}
