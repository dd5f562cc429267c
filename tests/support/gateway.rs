//! Runs the gateway in-process through the library API (see docs/internal-api.md).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use openai_admin_gateway::{Config, Reloader, Server};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{req, Req, TestResponse};
use super::process::free_addr;
use super::upstream::{start_upstream, Upstream};
use super::{ADMIN_KEY, ADMIN_KEY_ENV, CLIENT_KEY, OTHER_CLIENT_KEY};

/// Lowercase SHA-256 hex of `key`, computed independently of the gateway.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The path of user `id`: `/v1/organization/users/{id}`.
pub fn user_path(id: &str) -> String {
    format!("/v1/organization/users/{id}")
}

// === GatewayConfig ===

/// The settings tests vary, rendered to TOML by [`GatewayConfig::toml`]. Defaults are short
/// timeouts on loopback and two clients, `test-client` ([`CLIENT_KEY`]) and `other-client`
/// ([`OTHER_CLIENT_KEY`]), without limits or scopes.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub upstream_base_url: String,
    pub listen: String,
    pub admin_listen: String,
    pub path_prefix: String,
    pub shutdown_grace_secs: u64,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    pub ttl_secs: u64,
    pub max_entries: u64,
    /// None leaves the key out (gateway default 65536).
    pub max_body_bytes: Option<u64>,
    pub admin_key_env: String,
    /// Include the two default `[[clients]]`.
    pub default_clients: bool,
    /// Raw TOML appended at the end (typically more `[[clients]]`).
    pub extra: String,
    /// `server.watch_files`: off by default here, so that tests which rewrite the file and
    /// send SIGHUP count the signal's reload alone.
    pub watch_files: bool,
}

impl GatewayConfig {
    pub fn new(upstream_base_url: &str) -> Self {
        GatewayConfig {
            upstream_base_url: upstream_base_url.to_string(),
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            path_prefix: "/v1".into(),
            shutdown_grace_secs: 5,
            connect_timeout_ms: 1000,
            timeout_ms: 5000,
            ttl_secs: 60,
            max_entries: 1000,
            max_body_bytes: None,
            admin_key_env: ADMIN_KEY_ENV.into(),
            default_clients: true,
            extra: String::new(),
            watch_files: false,
        }
    }

    /// Points `listen` and `admin_listen` at loopback ports that were free a moment ago, for
    /// the real binary (it cannot tell which ports it bound). Returns (public, admin).
    pub fn free_ports(&mut self) -> (SocketAddr, SocketAddr) {
        // Both held at once, so the kernel cannot hand out the same port twice.
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (addr, admin) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        self.listen = addr.to_string();
        self.admin_listen = admin.to_string();
        (addr, admin)
    }

    pub fn toml(&self) -> String {
        let mut out = format!(
            "[server]\nlisten = {:?}\nadmin_listen = {:?}\npath_prefix = {:?}\n\
             shutdown_grace_secs = {}\nwatch_files = {}\n\n\
             [upstream]\nbase_url = {:?}\nadmin_key_env = {:?}\nconnect_timeout_ms = {}\n\
             timeout_ms = {}\n\n\
             [cache]\nttl_secs = {}\nmax_entries = {}\n",
            self.listen,
            self.admin_listen,
            self.path_prefix,
            self.shutdown_grace_secs,
            self.watch_files,
            self.upstream_base_url,
            self.admin_key_env,
            self.connect_timeout_ms,
            self.timeout_ms,
            self.ttl_secs,
            self.max_entries,
        );
        if let Some(max) = self.max_body_bytes {
            out.push_str(&format!("max_body_bytes = {max}\n"));
        }
        if self.default_clients {
            out.push_str(&client_toml("test-client", CLIENT_KEY, ""));
            out.push_str(&client_toml("other-client", OTHER_CLIENT_KEY, ""));
        }
        out.push('\n');
        out.push_str(&self.extra);
        out
    }
}

/// One `[[clients]]` table; `more` is extra `key = value` lines.
pub fn client_toml(name: &str, key: &str, more: &str) -> String {
    format!(
        "\n[[clients]]\nname = {name:?}\nkey_sha256 = {:?}\n{more}\n",
        sha256_hex(key)
    )
}

/// Adds `lines` (e.g. `max_concurrent_requests = 4`) to the `[upstream]` table of a config
/// rendered by `GatewayConfig::toml`.
pub fn with_upstream_keys(toml: &str, lines: &str) -> String {
    assert!(
        toml.contains("[upstream]\n"),
        "no [upstream] table:\n{toml}"
    );
    toml.replacen("[upstream]\n", &format!("[upstream]\n{lines}\n"), 1)
}

/// A `rate_limit = {...}` line for `client_toml`'s `more`.
pub fn rate_limit(requests_per_minute: u32, burst: u32) -> String {
    format!("rate_limit = {{ requests_per_minute = {requests_per_minute}, burst = {burst} }}")
}

/// An `allow = [...]` line for `client_toml`'s `more`.
pub fn allow(patterns: &[&str]) -> String {
    let list: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
    format!("allow = [{}]", list.join(", "))
}

/// The default test config for `upstream_base_url` with `extra` TOML appended.
pub fn config_toml(upstream_base_url: &str, extra: &str) -> String {
    let mut cfg = GatewayConfig::new(upstream_base_url);
    cfg.extra = extra.to_string();
    cfg.toml()
}

/// Parses `toml` the way the binary would, with [`ADMIN_KEY_ENV`] set to [`ADMIN_KEY`].
pub fn parse_config(toml: &str) -> Config {
    let env = |name: &str| (name == ADMIN_KEY_ENV).then(|| ADMIN_KEY.to_string());
    Config::parse(toml, Path::new("."), &env)
        .unwrap_or_else(|e| panic!("the test config was rejected:\n{e}\n--- config ---\n{toml}"))
}

// === TestGateway ===

/// A gateway running on a tokio task. Dropping it triggers shutdown and aborts the task.
pub struct TestGateway {
    /// Public (client-facing) listener.
    pub addr: SocketAddr,
    /// Admin listener (/metrics, /healthz, /readyz, cache admin).
    pub admin_addr: SocketAddr,
    /// Applies new configs to the running gateway.
    pub reloader: Reloader,
    /// Fires the `shutdown` future given to `Server::run`.
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    /// The task running `Server::run`.
    task: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

/// Starts a gateway from `toml` (parsed with [`parse_config`]).
pub async fn start_gateway(toml: &str) -> TestGateway {
    let config = parse_config(toml);
    let server = Server::bind(config).await.expect("Server::bind failed");
    let addr = server.public_addr();
    let admin_addr = server.admin_addr();
    let reloader = server.reloader();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestGateway {
        addr,
        admin_addr,
        reloader,
        shutdown: Mutex::new(Some(tx)),
        task: Mutex::new(Some(task)),
    }
}

/// A fake upstream and a gateway in front of it with the default test config.
pub async fn start_pair() -> (Upstream, TestGateway) {
    start_pair_with(|_| {}).await
}

/// Like [`start_pair`], after `tweak` has adjusted the config.
pub async fn start_pair_with(tweak: impl FnOnce(&mut GatewayConfig)) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    tweak(&mut cfg);
    let gateway = start_gateway(&cfg.toml()).await;
    (upstream, gateway)
}

impl TestGateway {
    /// The base URL clients use: `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR{path}` on the public listener (`path` includes the prefix).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADMIN_ADDR{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// A request to `path` on the public listener, authenticated as `test-client`.
    pub fn req(&self, method: Method, path: &str) -> Req {
        req(method, &self.url(path)).bearer(CLIENT_KEY)
    }

    /// `GET path` as `test-client`, body collected.
    pub async fn get(&self, path: &str) -> TestResponse {
        self.req(Method::GET, path).send().await
    }

    /// `GET /v1/organization/users/{id}` as `test-client`.
    pub async fn get_user(&self, id: &str) -> TestResponse {
        self.get(&user_path(id)).await
    }

    /// A request to the admin listener (no client key).
    pub fn admin(&self, method: Method, path: &str) -> Req {
        req(method, &self.admin_url(path))
    }

    /// The admin listener's `/metrics` text, failing the test unless it answers 200.
    pub async fn metrics_text(&self) -> String {
        let resp = self.admin(Method::GET, "/metrics").send().await;
        resp.assert_status(200);
        resp.text()
    }

    /// Retrieves each of `ids` twice, so each is cached: a miss (stored), then a hit.
    pub async fn prime(&self, ids: &[&str]) {
        for id in ids {
            self.get_user(id).await.assert_status(200);
            self.get_user(id).await.hit_ttl();
        }
    }

    /// Waits (up to 10 s) until `gateway_invalidation_bus_connected` reads 1: a replica with
    /// `[redis]` is on the bus.
    pub async fn wait_bus_connected(&self) {
        let start = Instant::now();
        // The sample's own line: the family's HELP text also holds "... 1".
        while !self
            .metrics_text()
            .await
            .lines()
            .any(|l| l == "gateway_invalidation_bus_connected 1")
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "bus never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Swaps in a new config through the reloader.
    pub fn reload_toml(&self, toml: &str) -> Result<(), String> {
        self.reloader
            .reload(parse_config(toml))
            .map_err(|e| e.to_string())
    }

    /// Fires the shutdown trigger (idempotent).
    pub fn shutdown(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `Server::run` to return, failing after `secs`.
    pub async fn wait_stopped(&self, secs: u64) -> io::Result<()> {
        let task = self
            .task
            .lock()
            .unwrap()
            .take()
            .expect("wait_stopped called twice");
        match tokio::time::timeout(Duration::from_secs(secs), task).await {
            Ok(joined) => joined.expect("Server::run panicked"),
            Err(_) => panic!("Server::run did not return within {secs}s after shutdown"),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}
