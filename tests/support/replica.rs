//! One gateway replica as a real process with `[redis]` (JSON logs), for tests of what
//! replicas tell each other and of what a process does on its way out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;

use super::client::{req, TestResponse};
use super::gateway::{with_upstream_keys, GatewayConfig};
use super::metrics::metric;
use super::process::{GatewayProcess, TempDir};
use super::upstream::Upstream;
use super::{ADMIN_KEY, ADMIN_KEY_ENV, CLIENT_KEY};

/// A running replica and its ports.
pub struct Replica {
    /// The process.
    pub gw: GatewayProcess,
    /// The public listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Holds the config file.
    _dir: TempDir,
}

impl Replica {
    /// Starts a replica of `upstream` sharing the Redis at `redis_url` (`redis.timeout_ms`
    /// 200), with `tweak` applied to its config; returns once its bus is connected.
    pub async fn start(
        upstream: &Upstream,
        redis_url: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Replica {
        Self::start_with(upstream, redis_url, "", tweak).await
    }

    /// [`Replica::start`] with `upstream_keys` (e.g. `budget_wait_ms = 100`) added to its
    /// `[upstream]` table.
    pub async fn start_with(
        upstream: &Upstream,
        redis_url: &str,
        upstream_keys: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Replica {
        let dir = TempDir::new("replica");
        let mut cfg = GatewayConfig::new(&upstream.base_url());
        let (addr, admin) = cfg.free_ports();
        cfg.extra = format!("[redis]\nurl = {redis_url:?}\ntimeout_ms = 200\n");
        tweak(&mut cfg);
        let toml = with_upstream_keys(&cfg.toml(), upstream_keys);
        let gw = GatewayProcess::spawn_json(&dir, &toml, "info", addr, admin).await;
        let r = Replica {
            gw,
            addr,
            admin,
            _dir: dir,
        };
        r.wait_metric("gateway_invalidation_bus_connected", &[], 1.0)
            .await;
        r
    }

    /// `http://ADDR{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` with the default client's key.
    pub async fn get(&self, path: &str) -> TestResponse {
        req(Method::GET, &self.url(path))
            .bearer(CLIENT_KEY)
            .send()
            .await
    }

    /// The sum of `name`'s samples with `labels` on the admin listener.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = req(Method::GET, &format!("http://{}/metrics", self.admin))
            .send()
            .await
            .text();
        metric(&text, name, labels)
    }

    /// Waits (up to 10 s) until `name{labels}` is at least `at_least`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(name, labels).await;
            if v >= at_least {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}{labels:?} stayed at {v} (< {at_least}); stderr:\n{}",
                self.gw.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that the in-flight gauges and the invalidation outbox are at 0.
    pub async fn assert_idle(&self) {
        for name in [
            "gateway_requests_in_flight",
            "gateway_upstream_in_flight",
            "gateway_invalidation_outbox",
        ] {
            assert_eq!(self.metric(name, &[]).await, 0.0, "{name}");
        }
    }
}

/// The `role` of the user in a 200 answer (fails the test on any other status).
pub fn role(resp: &TestResponse) -> String {
    resp.assert_status(200);
    resp.json()["role"].as_str().unwrap_or_default().to_string()
}
