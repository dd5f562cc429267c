//! Reload on file change (`server.watch_files`): the real binary, files swapped the way the
//! kubelet swaps a mounted Secret (a `..data` symlink renamed over) and the way editors save
//! (write a temporary file, rename it over). No signal is sent in any of these tests.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use support::process::{GatewayProcess, TempDir};
use support::upstream::Fault;
use support::*;

/// The key the kubelet-style test rotates to: the fake upstream does not accept it, so the
/// requests that carry it are easy to tell apart.
const ROTATED_KEY: &str = "sk-admin-ROTATED-by-the-kubelet-9876543210";

/// Writes `contents` to `path` as an editor saves: a temporary file renamed over it.
fn save(path: &Path, contents: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A directory laid out like a mounted Secret: `name -> ..data/name`, `..data -> ..<version>`.
struct SecretDir {
    dir: TempDir,
    name: &'static str,
    version: usize,
}

impl SecretDir {
    fn new(name: &'static str, value: &str) -> SecretDir {
        let dir = TempDir::new("secret");
        let mut s = SecretDir {
            dir,
            name,
            version: 0,
        };
        let first = s.write_version(value);
        symlink(&first, s.dir.path().join("..data")).expect("..data");
        symlink(Path::new("..data").join(name), s.dir.path().join(name)).expect("file link");
        s
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(self.name)
    }

    fn write_version(&mut self, value: &str) -> String {
        self.version += 1;
        let version = format!("..2026_11_27_00_00_0{}.12345", self.version);
        let vdir = self.dir.path().join(&version);
        std::fs::create_dir(&vdir).expect("version dir");
        std::fs::write(vdir.join(self.name), value).expect("secret file");
        version
    }

    /// The kubelet's atomic update: a new version directory, `..data_tmp` pointing at it,
    /// renamed over `..data`.
    fn swap(&mut self, value: &str) {
        let version = self.write_version(value);
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&version, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.path().join("..data")).expect("swap ..data");
    }
}

struct Running {
    gw: GatewayProcess,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn metrics(&self) -> String {
        req(Method::GET, &format!("http://{}/metrics", self.admin))
            .send()
            .await
            .text()
    }

    async fn reloads(&self, result: &str) -> f64 {
        let text = self.metrics().await;
        metric(
            &text,
            "gateway_config_reloads_total",
            &[("result", result), ("trigger", "file")],
        )
    }
}

async fn start(config: &Path, addr: SocketAddr, admin: SocketAddr) -> Running {
    let mut gw = GatewayProcess::spawn_args(
        &["--config", config.to_str().expect("utf-8 path")],
        &[(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", "info")],
    );
    gw.wait_listening(addr).await;
    gw.wait_listening(admin).await;
    Running { gw, addr, admin }
}

fn two_clients(cfg: &mut GatewayConfig, with_other: bool) -> String {
    cfg.default_clients = false;
    cfg.extra = client_toml("test-client", CLIENT_KEY, "");
    if with_other {
        cfg.extra
            .push_str(&client_toml("other-client", OTHER_CLIENT_KEY, ""));
    }
    cfg.toml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_secret_swap_rotates_the_admin_key_for_new_requests_only() {
    let upstream = start_upstream().await;
    let mut secret = SecretDir::new("openai-admin-key", ADMIN_KEY);
    let conf = TempDir::new("kube-config");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    cfg.timeout_ms = 30_000;
    let key_file = secret.path();
    let toml = cfg.toml().replace(
        &format!("admin_key_env = {:?}", ADMIN_KEY_ENV),
        &format!("admin_key_file = {:?}", key_file.to_str().expect("utf-8")),
    );
    assert!(toml.contains("admin_key_file"), "{toml}");
    let path = conf.write("gateway.toml", &toml);
    let mut run = start(&path, addr, admin).await;

    req(Method::GET, &run.url("/v1/echo/before"))
        .bearer(CLIENT_KEY)
        .send()
        .await
        .assert_status(200);

    // A request in flight across the swap: the upstream holds it at a gate.
    upstream.inject("GET", "/v1/echo/slow", Fault::new().gate("slow"));
    let slow = tokio::spawn(
        req(Method::GET, &run.url("/v1/echo/slow"))
            .bearer(CLIENT_KEY)
            .send(),
    );
    wait_until(5, "the slow request to reach the upstream", || {
        upstream.count("GET", "/v1/echo/slow") == 1
    })
    .await;

    let swapped = Instant::now();
    secret.swap(ROTATED_KEY);
    let rotated = format!("Bearer {ROTATED_KEY}");
    let mut waited = None;
    for i in 0..200 {
        let probe = format!("/v1/echo/probe-{i}");
        let _ = req(Method::GET, &run.url(&probe))
            .bearer(CLIENT_KEY)
            .send()
            .await;
        let seen = upstream.last_request(&probe);
        if seen.headers["authorization"].as_bytes() == rotated.as_bytes() {
            waited = Some(swapped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = waited.expect("the new key never reached the upstream");
    println!("from the swap to the first request with the new key: {waited:?}");
    assert!(waited <= Duration::from_secs(2), "{waited:?}");

    // The request that started before the swap finishes with the key it started with.
    upstream.gate("slow").open();
    let slow = slow.await.expect("slow request");
    slow.assert_status(200);
    assert_eq!(run.reloads("ok").await, 1.0, "{}", run.metrics().await);

    let status = run.gw.terminate(30);
    let log = run.gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("watched files changed") && l.contains("..data")),
        "the log names the file that changed:\n{log}"
    );
    for secret in [ROTATED_KEY, ADMIN_KEY] {
        assert!(!log.contains(secret), "a key reached the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_client_from_the_file_locks_it_out_and_others_keep_going() {
    let upstream = start_upstream().await;
    let dir = TempDir::new("edit-config");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    let path = dir.write("gateway.toml", &two_clients(&mut cfg, true));
    let run = start(&path, addr, admin).await;

    // The other client keeps one connection and keeps sending on it.
    let mut conn = h1_connect(addr).await;
    let edited = Instant::now();
    save(&path, &two_clients(&mut cfg, false));
    let mut locked_out = None;
    let mut kept = 0;
    while edited.elapsed() < Duration::from_secs(3) {
        let resp = send_on(&mut conn, Method::GET, "/v1/echo/steady", CLIENT_KEY).await;
        resp.assert_status(200);
        kept += 1;
        let removed = req(Method::GET, &run.url("/v1/echo/removed"))
            .bearer(OTHER_CLIENT_KEY)
            .send()
            .await;
        if removed.status.as_u16() == 401 && locked_out.is_none() {
            locked_out = Some(edited.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let locked_out = locked_out.expect("the removed key was never refused");
    println!("removed client refused after {locked_out:?}; {kept} requests on the kept connection");
    assert!(locked_out <= Duration::from_secs(2), "{locked_out:?}");
    assert_eq!(run.reloads("ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config_and_the_next_valid_one_applies() {
    let upstream = start_upstream().await;
    let dir = TempDir::new("invalid-config");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    let path = dir.write("gateway.toml", &two_clients(&mut cfg, true));
    let run = start(&path, addr, admin).await;

    let valid = two_clients(&mut cfg, false);
    save(
        &path,
        &valid.replacen("[server]\n", "[server]\nno_such_key = 1\n", 1),
    );
    let start = Instant::now();
    while run.reloads("error").await < 1.0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run.reloads("error").await, 1.0, "{}", run.metrics().await);
    assert_eq!(run.reloads("ok").await, 0.0);
    // The running config stays: the other client still gets in.
    req(Method::GET, &run.url("/v1/echo/x"))
        .bearer(OTHER_CLIENT_KEY)
        .send()
        .await
        .assert_status(200);

    save(&path, &valid);
    let start = Instant::now();
    while run.reloads("ok").await < 1.0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run.reloads("ok").await, 1.0);
    assert_eq!(run.reloads("error").await, 1.0);
    let refused = req(Method::GET, &run.url("/v1/echo/x"))
        .bearer(OTHER_CLIENT_KEY)
        .send()
        .await;
    assert_openai_error(&refused, 401, "invalid_request_error", "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_writes_in_100_ms_are_one_or_two_reloads() {
    let upstream = start_upstream().await;
    let dir = TempDir::new("burst-config");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    let text = two_clients(&mut cfg, true);
    let path = dir.write("gateway.toml", &text);
    let run = start(&path, addr, admin).await;

    for i in 0..10 {
        // Plain writes in place, as a script appending to the file would make them.
        std::fs::write(&path, format!("{text}\n# write {i}\n")).expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ok = run.reloads("ok").await;
    let error = run.reloads("error").await;
    println!("ten writes in 100 ms: {ok} reload(s), {error} refused");
    assert!((1.0..=2.0).contains(&ok), "{ok} reloads");
    assert_eq!(error, 0.0, "a half-written file was read");
}

/// `config` with the admin key read from `key_file` instead of the environment.
fn with_key_file(config: &str, key_file: &Path) -> String {
    let toml = config.replace(
        &format!("admin_key_env = {:?}", ADMIN_KEY_ENV),
        &format!("admin_key_file = {:?}", key_file.to_str().expect("utf-8")),
    );
    assert!(toml.contains("admin_key_file"), "{toml}");
    toml
}

/// Polls the reload counter until it reaches `want` (5 s at most).
async fn wait_reloads(run: &Running, result: &str, want: f64) {
    let start = Instant::now();
    while run.reloads(result).await < want && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        run.reloads(result).await,
        want,
        "reloads{{result={result}}}:\n{}",
        run.metrics().await
    );
}

/// The admin key that reached the upstream with a fresh probe request.
async fn key_seen_upstream(run: &Running, upstream: &Upstream, probe: &str) -> String {
    let _ = req(Method::GET, &run.url(probe))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    let seen = upstream.last_request(probe);
    String::from_utf8_lossy(seen.headers["authorization"].as_bytes()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_moved_to_another_directory_is_watched_there() {
    let upstream = start_upstream().await;
    let conf = TempDir::new("moved-key-config");
    let old_dir = TempDir::new("moved-key-old");
    let new_dir = TempDir::new("moved-key-new");
    let old_key = old_dir.write("admin-key", &format!("{ADMIN_KEY}\n"));
    let new_key = new_dir.write("admin-key", &format!("{ADMIN_KEY}\n"));
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    let path = conf.write("gateway.toml", &with_key_file(&cfg.toml(), &old_key));
    let mut run = start(&path, addr, admin).await;

    // The reload that moves the key file is applied (same key, new place)...
    save(&path, &with_key_file(&cfg.toml(), &new_key));
    wait_reloads(&run, "ok", 1.0).await;
    // ...and the watch follows it: rotating the key in the new directory
    // reaches the upstream with no signal.
    let new_dir_text = new_dir.path().display().to_string();
    run.gw
        .wait_for_line(5, "the watch to name the new directory", |l| {
            l.contains("file watch follows the configuration") && l.contains(&new_dir_text)
        })
        .await;
    let tmp = new_dir.path().join("admin-key.tmp");
    std::fs::write(&tmp, format!("{ROTATED_KEY}\n")).expect("write");
    std::fs::rename(&tmp, &new_key).expect("rename");
    wait_reloads(&run, "ok", 2.0).await;
    let seen = key_seen_upstream(&run, &upstream, "/v1/echo/after-move").await;
    assert_eq!(seen, format!("Bearer {ROTATED_KEY}"));
    assert_settled(run.admin, "after the key moved").await;

    let status = run.gw.terminate(30);
    let log = run.gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("file watch follows the configuration"))
        .unwrap_or_else(|| panic!("no line names the watch change:\n{log}"));
    assert!(
        line.contains(&old_dir.path().display().to_string()),
        "the dropped directory is named: {line}"
    );
    for secret in [ROTATED_KEY, ADMIN_KEY] {
        assert!(!log.contains(secret), "a key reached the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_saved_with_a_byte_order_mark_is_refused_and_the_running_key_stays() {
    let upstream = start_upstream().await;
    let conf = TempDir::new("bom-key-config");
    let secrets = TempDir::new("bom-key");
    let key_file = secrets.write("admin-key", &format!("{ADMIN_KEY}\n"));
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.watch_files = true;
    let path = conf.write("gateway.toml", &with_key_file(&cfg.toml(), &key_file));
    let mut run = start(&path, addr, admin).await;

    let tmp = secrets.path().join("admin-key.tmp");
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(format!("{ROTATED_KEY}\n").as_bytes());
    std::fs::write(&tmp, &bytes).expect("write");
    std::fs::rename(&tmp, &key_file).expect("rename");
    wait_reloads(&run, "error", 1.0).await;
    assert_eq!(run.reloads("ok").await, 0.0);

    // Requests keep flowing with the key the gateway had.
    let resp = req(Method::GET, &run.url("/v1/echo/after-bom"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    resp.assert_status(200);
    let seen = upstream.last_request("/v1/echo/after-bom");
    assert_eq!(
        seen.headers["authorization"].as_bytes(),
        format!("Bearer {ADMIN_KEY}").as_bytes()
    );
    assert_settled(run.admin, "after the refused key").await;

    let status = run.gw.terminate(30);
    let log = run.gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("admin_key_file") && l.contains("byte-order mark")),
        "the log names the key source and the problem:\n{log}"
    );
    for secret in [ROTATED_KEY, ADMIN_KEY] {
        assert!(!log.contains(secret), "a key reached the log:\n{log}");
    }
}
