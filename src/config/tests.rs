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

#[test]
fn unknown_keys_in_every_table_are_reported_with_their_paths() {
    let text = r#"
lisen = "top level"
[server]
lisen = "127.0.0.1:8080"
[upstream]
base_ur = "https://api.openai.com/v1"
[cache]
ttl_secs = 0
tll_secs = 5
[redis]
url = "redis://127.0.0.1:6379/0"
timeout = 5
[[clients]]
name = "a"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
[[clients]]
name = "b"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
alow = ["GET /organization/users"]
rate_limit = { requests_per_minute = 60, brust = 5 }
"#;
    let e = parse(text).unwrap_err();
    let mut got: Vec<&str> = e.problems().iter().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = vec![
        "lisen: unknown key",
        "server.lisen: unknown key",
        "upstream.base_ur: unknown key",
        "cache.tll_secs: unknown key",
        "redis.timeout: unknown key",
        "clients[1].alow: unknown key",
        "clients[1].rate_limit.brust: unknown key",
        // The validator's problems come with them.
        "cache.ttl_secs: must be greater than 0",
    ];
    want.sort_unstable();
    assert_eq!(got, want, "{e}");
}

#[test]
fn an_unknown_table_is_one_problem() {
    let e = parse("[srever]\nlisten = \"127.0.0.1:1\"\nport = 2\n").unwrap_err();
    assert_eq!(e.problems(), ["srever: unknown key"], "{e}");
}

#[test]
fn odd_unknown_keys_are_quoted_on_one_line() {
    let e = parse("[server]\n\"a.b\" = 1\n\"x\\ny\" = 2\n\"\" = 3\n").unwrap_err();
    let mut got = e.problems().to_vec();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            r#"server."": unknown key"#,
            r#"server."a.b": unknown key"#,
            r#"server."x\ny": unknown key"#,
        ],
        "{e}"
    );
    assert!(got.iter().all(|p| !p.contains('\n')), "{e}");
}

#[test]
fn unknown_keys_before_a_type_error_are_reported_with_it() {
    let e = parse("[cache]\nttl = 5\n[server]\nlisten = 8080\n").unwrap_err();
    let all = e.to_string();
    assert!(
        e.problems().iter().any(|p| p == "cache.ttl: unknown key"),
        "{all}"
    );
    assert!(all.contains("listen"), "{all}");
}

#[test]
fn a_valid_file_has_no_unknown_keys() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"
[redis]
url = "redis://127.0.0.1:6379/0"
[[clients]]
name = "a"
key_sha256 = ["0000000000000000000000000000000000000000000000000000000000000001"]
rate_limit = { requests_per_minute = 60, burst = 5 }
allow = ["GET /organization/users"]
"#;
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.clients.len(), 1);
}

#[test]
fn workers_default_to_the_usable_cpus_and_take_1_to_1024() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(parse("").unwrap().server.workers, cpus);
    for n in [1, 2, 1024] {
        let c = parse(&format!("[server]\nworkers = {n}\n")).unwrap();
        assert_eq!(c.server.workers, n);
        assert_eq!(c.upstream.pools, n, "one upstream pool per worker");
    }
}

#[test]
fn zero_or_absurd_workers_are_a_problem_naming_the_key() {
    for n in [0, 1025, 1_000_000] {
        let e = parse(&format!("[server]\nworkers = {n}\n")).unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        let p = &e.problems()[0];
        assert!(p.starts_with("server.workers:"), "{p}");
        assert!(p.contains(&n.to_string()) && p.contains("1024"), "{p}");
    }
    let e = parse("[server]\nworkers = -2\n").unwrap_err();
    assert!(e.to_string().contains("workers"), "{e}");
}

/// The dotted names of a raw struct's fields. The pattern is exhaustive, so
/// a new field does not compile until it is named here (and so in
/// `defaults::KEYS`, which the test below compares).
macro_rules! fields {
    ($ty:ident, $section:literal, [$($f:ident),* $(,)?]) => {{
        let raw::$ty { $($f: _),* } = toml::from_str::<raw::$ty>("").expect("all optional");
        vec![$(concat!($section, ".", stringify!($f))),*]
    }};
}

#[test]
fn defaults_keys_name_every_field_of_the_file() {
    let mut fields = fields!(
        RawServer,
        "server",
        [
            listen,
            admin_listen,
            path_prefix,
            shutdown_grace_secs,
            max_connections,
            workers,
            header_read_timeout_ms,
            idle_timeout_secs,
            send_timeout_ms,
            watch_files,
            log_format,
            tls_cert,
            tls_key,
        ]
    );
    fields.extend(fields!(
        RawUpstream,
        "upstream",
        [
            base_url,
            admin_key_env,
            admin_key_file,
            connect_timeout_ms,
            timeout_ms,
            body_idle_timeout_ms,
            pool_idle_timeout_secs,
            max_concurrent_requests,
            max_queued_requests,
            ca_file,
            organization_id,
            rate_limit,
            budget_wait_ms,
        ]
    ));
    fields.extend(fields!(
        RawCache,
        "cache",
        [
            ttl_secs,
            max_entries,
            max_body_bytes,
            stale_if_error_secs,
            stale_while_revalidate_secs,
        ]
    ));
    fields.extend(fields!(
        RawRedis,
        "redis",
        [url, key_prefix, channel, timeout_ms]
    ));
    fields.extend(fields!(
        RawTelemetry,
        "telemetry",
        [otlp_endpoint, service_name, sample_ratio]
    ));
    fields.extend(fields!(
        RawClient,
        "clients",
        [name, key_sha256, rate_limit, allow, orgs, budget_weight]
    ));
    fields.extend(fields!(
        RawOrg,
        "orgs",
        [
            name,
            organization_id,
            admin_key_env,
            admin_key_file,
            rate_limit
        ]
    ));
    let mut keys: Vec<&str> = defaults::KEYS.iter().map(|k| k.name).collect();
    fields.sort_unstable();
    keys.sort_unstable();
    assert_eq!(fields, keys, "defaults::KEYS must name every key");
}

#[test]
fn stated_defaults_are_the_defaults_the_validator_applies() {
    const REDIS: &str = "[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n";
    let mut sections: Vec<(&str, String)> = Vec::new();
    for key in defaults::KEYS {
        let (section, name) = key.name.split_once('.').expect("section.key");
        let defaults::Stated::Value(v) = key.default else {
            continue;
        };
        if section == "clients" {
            // Per entry: checked by the tests of each client key.
            continue;
        }
        match sections.iter_mut().find(|(s, _)| *s == section) {
            Some((_, text)) => text.push_str(&format!("{name} = {v}\n")),
            None => sections.push((section, format!("{name} = {v}\n"))),
        }
    }
    let mut stated = String::new();
    for (section, text) in &sections {
        stated.push_str(&format!("[{section}]\n"));
        if *section == "redis" {
            stated.push_str("url = \"redis://127.0.0.1:6379/0\"\n");
        }
        stated.push_str(text);
    }
    let from_stated = parse(&stated).unwrap_or_else(|e| panic!("{stated}\n{e}"));
    let from_empty = parse(REDIS).expect("defaults");
    assert_eq!(
        format!("{from_stated:?}"),
        format!("{from_empty:?}"),
        "{stated}"
    );
}

#[test]
fn the_organizations_budget_is_checked_like_a_clients() {
    let c = parse("").expect("defaults");
    assert_eq!(c.upstream.rate_limit, None);
    assert_eq!(c.upstream.budget_wait, Duration::from_millis(5000));
    let c = parse(
        "[upstream]\nrate_limit = { requests_per_minute = 300, burst = 20 }\nbudget_wait_ms = 250\n\
         [[clients]]\nname = \"a\"\nkey_sha256 = \"%\"\nbudget_weight = 3\n"
            .replace('%', &"ab".repeat(32))
            .as_str(),
    )
    .expect("valid budget");
    let want = RateLimit {
        requests_per_minute: 300,
        burst: 20,
    };
    assert_eq!(c.upstream.rate_limit, Some(want));
    assert_eq!(c.upstream.budget_wait, Duration::from_millis(250));
    assert_eq!(c.clients[0].budget_weight, 3);
    let c =
        parse(&"[[clients]]\nname = \"a\"\nkey_sha256 = \"%\"\n".replace('%', &"ab".repeat(32)))
            .expect("valid client");
    assert_eq!(c.clients[0].budget_weight, defaults::BUDGET_WEIGHT);
    let e = parse(
        "[upstream]\nrate_limit = { requests_per_minute = 0 }\nbudget_wait_ms = 0\n\
         [[clients]]\nname = \"a\"\nkey_sha256 = \"%\"\nbudget_weight = 101\n"
            .replace('%', &"ab".repeat(32))
            .as_str(),
    )
    .expect_err("invalid budget");
    let text = e.to_string();
    for p in [
        "upstream.rate_limit.requests_per_minute: must be greater than 0",
        "upstream.budget_wait_ms: must be greater than 0",
        "clients[0].budget_weight: must be 1 to 100",
    ] {
        assert!(text.contains(p), "{p}:\n{text}");
    }
    let e = parse("[upstream]\nbudget_wait_ms = 60001\n").expect_err("unbounded wait");
    assert!(e
        .to_string()
        .contains("upstream.budget_wait_ms: must be at most 60000"));
}
