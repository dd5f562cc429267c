//! The real binary's logs on stderr: `server.log_format = "json"` writes one JSON object per
//! line (access, audit, startup, reload errors, shutdown), with the access line's fields as
//! named in `src/proxy/access.rs` (`Access`); the default text format carries no ANSI
//! escape codes when stderr is not a terminal, even with a colour-capable `TERM`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use http::Method;
use serde_json::{json, Map, Value};
use support::process::{GatewayProcess, TempDir};
use support::*;

const ACCESS: &str = "openai_admin_gateway::access";
const AUDIT: &str = "openai_admin_gateway::audit";
/// Fields of every access line (`proxy::access::Access`), with the JSON type each must have.
const ACCESS_FIELDS: [(&str, Kind); 8] = [
    ("request_id", Kind::Str),
    ("client", Kind::Str),
    ("method", Kind::Str),
    ("route", Kind::Str),
    ("status", Kind::Num),
    ("cache", Kind::Str),
    ("latency_us", Kind::Num),
    ("budget_wait_ms", Kind::Num),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Num,
}

// === the binary, stderr captured ===

/// Starts the gateway binary on `config` and waits for both listeners. Unlike the shared
/// helpers it clears `NO_COLOR` and sets a colour-capable `TERM`, so only "stderr is not a
/// terminal" can turn colours off.
async fn start(config: &Path, addr: SocketAddr, admin: SocketAddr) -> GatewayProcess {
    let mut cmd = GatewayProcess::command(&["--config", config.to_str().expect("utf-8 path")]);
    cmd.env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .env("COLORTERM", "truecolor")
        .env("RUST_LOG", "info")
        .env(ADMIN_KEY_ENV, ADMIN_KEY);
    let mut gw = GatewayProcess::start(cmd);
    for a in [addr, admin] {
        gw.wait_listening(a).await;
    }
    gw
}

/// SIGTERM, wait for a successful exit (30 s) and for stderr to close; returns all of stderr.
#[track_caller]
fn stop(gw: &mut GatewayProcess) -> String {
    let status = gw.terminate(30);
    let text = gw.stderr_text();
    assert!(status.success(), "exit status {status}; stderr:\n{text}");
    text
}

/// Writes the test config for `upstream_base_url`, with `server_lines` added to `[server]`,
/// on fresh loopback ports. Returns (config path, public addr, admin addr).
fn write_config(
    dir: &TempDir,
    upstream_base_url: &str,
    server_lines: &str,
) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let mut cfg = GatewayConfig::new(upstream_base_url);
    let (addr, admin) = cfg.free_ports();
    cfg.timeout_ms = 30_000;
    let toml = cfg.toml();
    assert!(toml.starts_with("[server]\n"), "unexpected config:\n{toml}");
    let toml = toml.replacen("[server]\n", &format!("[server]\n{server_lines}"), 1);
    (dir.write("gateway.toml", &toml), addr, admin)
}

// === JSON ===

fn target(line: &Map<String, Value>) -> &str {
    line.get("target").and_then(Value::as_str).unwrap_or("")
}

/// The one line with `target` whose `request_id` is `id`.
#[track_caller]
fn line_for<'a>(lines: &'a [Map<String, Value>], tgt: &str, id: &str) -> &'a Map<String, Value> {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| target(l) == tgt && l.get("request_id") == Some(&json!(id)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {tgt} line for request {id}, got {found:?}"
    );
    found[0]
}

/// Checks an access line: every field present with the right JSON type, plus `expect`.
#[track_caller]
fn assert_access(line: &Map<String, Value>, expect: &[(&str, Value)]) {
    for (field, kind) in ACCESS_FIELDS {
        let v = line
            .get(field)
            .unwrap_or_else(|| panic!("access line without {field}: {line:?}"));
        let ok = match kind {
            Kind::Str => v.as_str().is_some_and(|s| !s.is_empty()),
            Kind::Num => v.as_u64().is_some(),
        };
        assert!(
            ok,
            "access line field {field} is {v} (want {kind:?}): {line:?}"
        );
    }
    for (field, value) in expect {
        assert_eq!(line.get(*field), Some(value), "{field} in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_object_per_line_with_the_access_fields() {
    let upstream = start_upstream().await;
    // user_def's fetch breaks: a 502, logged at WARN with the cause.
    upstream.inject(
        "GET",
        "/v1/organization/users/user_def",
        Fault::new().reset_before_headers(),
    );
    let dir = TempDir::new("logs-json");
    let (config, addr, admin) = write_config(&dir, &upstream.base_url(), "log_format = \"json\"\n");
    let mut gw = start(&config, addr, admin).await;
    let url = |path: &str| format!("http://{addr}{path}");

    let get = |path: &str| req(Method::GET, &url(path)).bearer(CLIENT_KEY);
    let miss = get("/v1/organization/users/user_abc").send().await;
    miss.assert_status(200);
    let hit = get("/v1/organization/users/user_abc").send().await;
    hit.hit_ttl();
    let list = get("/v1/organization/users?limit=2").send().await;
    list.assert_status(200);
    let unknown = req(Method::GET, &url("/v1/organization/users/user_abc"))
        .bearer(UNKNOWN_KEY)
        .send()
        .await;
    unknown.assert_status(401);
    let write = req(Method::POST, &url("/v1/organization/users/user_ghi"))
        .bearer(CLIENT_KEY)
        .json(&json!({"role": "owner"}))
        .send()
        .await;
    write.assert_status(200);
    let broken = get("/v1/organization/users/user_def").send().await;
    broken.assert_status(502);

    // A reload with an invalid file: its (multi-line) problems are logged as JSON too.
    let good = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, format!("{good}\n[server_typo]\nx = 1\n")).expect("write config");
    gw.signal("HUP");
    gw.wait_for_line(30, "refusing the reload", |l| l.contains("reload refused"))
        .await;
    std::fs::write(&config, &good).expect("restore config");

    let ids = [
        miss.request_id(),
        hit.request_id(),
        list.request_id(),
        unknown.request_id(),
        write.request_id(),
        broken.request_id(),
    ];
    for id in &ids {
        gw.wait_for_line(30, &format!("for request {id}"), |l| {
            l.contains(ACCESS) && l.contains(id.as_str())
        })
        .await;
    }
    let log = stop(&mut gw);

    assert!(!log.contains('\u{1b}'), "ANSI escapes in JSON logs:\n{log}");
    assert!(
        !log.contains(ADMIN_KEY),
        "the admin key is in the log:\n{log}"
    );
    assert!(
        !log.contains(CLIENT_KEY),
        "a client key is in the log:\n{log}"
    );
    assert!(
        !log.contains(UNKNOWN_KEY),
        "a client key is in the log:\n{log}"
    );
    assert!(!log.trim().is_empty(), "nothing on stderr");
    let lines = json_lines(&log);
    for l in &lines {
        assert!(
            l.get("timestamp").and_then(Value::as_str).is_some(),
            "no timestamp: {l:?}"
        );
        let level = l.get("level").and_then(Value::as_str).unwrap_or("");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "level {level:?}: {l:?}"
        );
        assert!(!target(l).is_empty(), "no target: {l:?}");
    }

    let access = |id: &str| line_for(&lines, ACCESS, id);
    let s = |v: &str| json!(v);
    assert_access(
        access(&ids[0]),
        &[
            ("client", s("test-client")),
            ("method", s("GET")),
            ("route", s("get_user")),
            ("status", json!(200)),
            ("cache", s("miss_stored")),
            ("level", s("INFO")),
        ],
    );
    assert_access(
        access(&ids[1]),
        &[
            ("route", s("get_user")),
            ("status", json!(200)),
            ("cache", s("hit")),
        ],
    );
    assert_access(
        access(&ids[2]),
        &[
            ("route", s("forward")),
            ("status", json!(200)),
            ("cache", s("bypass")),
        ],
    );
    // Never authenticated: the anonymous client, no cache involvement.
    assert_access(
        access(&ids[3]),
        &[
            ("client", s("-")),
            ("route", s("get_user")),
            ("status", json!(401)),
            ("cache", s("-")),
        ],
    );
    assert_access(
        access(&ids[4]),
        &[
            ("method", s("POST")),
            ("route", s("user_write")),
            ("status", json!(200)),
        ],
    );
    let failed = access(&ids[5]);
    assert_access(
        failed,
        &[
            ("status", json!(502)),
            ("route", s("get_user")),
            ("level", s("WARN")),
        ],
    );
    let error = failed.get("error").and_then(Value::as_str).unwrap_or("");
    assert!(
        !error.is_empty(),
        "a failed exchange logs its cause: {failed:?}"
    );

    // The write's audit line, same request id, fields as JSON values.
    let audit = line_for(&lines, AUDIT, &ids[4]);
    for (field, value) in [
        ("client", s("test-client")),
        ("method", s("POST")),
        ("path", s("/v1/organization/users/user_ghi")),
        ("upstream_status", json!(200)),
        ("status", json!(200)),
        ("evict", s("user:user_ghi")),
    ] {
        assert_eq!(audit.get(field), Some(&value), "{field} in {audit:?}");
    }
    // Reads are not audited.
    let audited: Vec<_> = lines.iter().filter(|l| target(l) == AUDIT).collect();
    assert_eq!(audited.len(), 1, "{audited:?}");

    // The refused reload: every problem is one JSON line naming the unknown key.
    let problems: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get("problem").and_then(Value::as_str))
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("server_typo")),
        "no problem naming server_typo: {problems:?}\n{log}"
    );

    // Nothing else was logged per request: one access line per request made.
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| target(l) == ACCESS) {
        let id = l.get("request_id").and_then(Value::as_str).unwrap_or("");
        *per_id.entry(id).or_default() += 1;
    }
    assert_eq!(per_id.len(), ids.len(), "{per_id:?}");
    assert!(per_id.values().all(|&n| n == 1), "{per_id:?}");
}

// === text ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_format_has_no_ansi_escapes_when_stderr_is_not_a_terminal() {
    let upstream = start_upstream().await;
    let dir = TempDir::new("logs-text");
    // No log_format: the default is text.
    let (config, addr, admin) = write_config(&dir, &upstream.base_url(), "");
    let mut gw = start(&config, addr, admin).await;
    let url = |path: &str| format!("http://{addr}{path}");

    let ok = req(Method::GET, &url("/v1/organization/users/user_abc"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    ok.assert_status(200);
    let id = ok.request_id();
    let refused = req(Method::GET, &url("/v1/organization/users/user_abc"))
        .bearer(UNKNOWN_KEY)
        .send()
        .await;
    refused.assert_status(401);
    let refused_id = refused.request_id();
    for rid in [&id, &refused_id] {
        gw.wait_for_line(30, &format!("for request {rid}"), |l| {
            l.contains(ACCESS) && l.contains(rid.as_str())
        })
        .await;
    }
    let log = stop(&mut gw);

    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in text logs written to a pipe:\n{log:?}"
    );
    // Plain `key=value` text, not JSON.
    let line = log
        .lines()
        .find(|l| l.contains(ACCESS) && l.contains(id.as_str()))
        .expect("the access line");
    assert!(!line.trim_start().starts_with('{'), "{line}");
    for (key, value) in [
        ("request_id", id.as_str()),
        ("client", "test-client"),
        ("method", "GET"),
        ("route", "get_user"),
        ("status", "200"),
        ("cache", "miss_stored"),
        // No upstream.rate_limit: the fill took its turn at once.
        ("budget_wait_ms", "0"),
    ] {
        assert!(log_field(line, key, value), "no {key}={value} in {line}");
    }
    assert!(line.contains("latency_us="), "{line}");
    assert!(line.contains(" INFO "), "{line}");
    assert!(!log.contains(ADMIN_KEY), "the admin key is in the log");
}

// === audit ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_binary_logs_one_audit_line_without_body_or_keys() {
    const BODY_MARKER: &str = "body-marker-7f3a9c-must-not-be-logged";
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let dir = TempDir::new("audit");
    let path = dir.write("gateway.toml", &cfg.toml());
    let mut gw = GatewayProcess::spawn_logged(&path, &[(ADMIN_KEY_ENV, ADMIN_KEY)]);
    gw.wait_listening(addr).await;
    gw.wait_listening(admin).await;

    let user = format!("http://{addr}{USER_PATH}");
    // Reads and refused writes are not audited.
    req(Method::GET, &user)
        .bearer(CLIENT_KEY)
        .send()
        .await
        .assert_status(200);
    req(
        Method::GET,
        &format!("http://{addr}/v1/organization/users?limit=2"),
    )
    .bearer(CLIENT_KEY)
    .send()
    .await
    .assert_status(200);
    req(Method::POST, &user)
        .bearer(UNKNOWN_KEY)
        .json(&json!({"role": "reader", "note": BODY_MARKER}))
        .send()
        .await
        .assert_status(401);

    let write = req(Method::POST, &user)
        .bearer(CLIENT_KEY)
        .json(&json!({"role": "reader", "note": BODY_MARKER}))
        .send()
        .await;
    write.assert_status(200);
    let request_id = write.request_id();
    assert_eq!(upstream.count("POST", USER_PATH), 1);

    gw.wait_for_line(5, "with target openai_admin_gateway::audit", |l| {
        l.contains("openai_admin_gateway::audit")
    })
    .await;
    let status = gw.terminate(15);
    assert!(status.success(), "exit status {status}");
    let log = strip_ansi(&gw.stderr_text());
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("openai_admin_gateway::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "expected one audit line:\n{log}");
    let line = audit[0];
    for (key, value) in [
        ("client", "test-client"),
        ("method", "POST"),
        ("path", USER_PATH),
        ("upstream_status", "200"),
        ("request_id", request_id.as_str()),
    ] {
        assert!(
            log_field(line, key, value),
            "the audit line lacks {key}={value}: {line}"
        );
    }
    for secret in [BODY_MARKER, ADMIN_KEY, CLIENT_KEY, UNKNOWN_KEY] {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the log:\n{log}"
        );
    }
}
