//! Evictions that can not be lost: a replica whose Redis refuses its publishes for a while
//! (while its subscription stays up, so no replica notices a lost link) still gets its
//! evictions to the others once Redis takes them. Two real gateway processes, one real
//! `redis-server`, one fake upstream.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use support::process::{GatewayProcess, TempDir};
use support::redis::Redis;
use support::*;

const USER_PATH: &str = "/v1/organization/users/user_abc";
/// The Redis user replica A logs in as, so that its rights can be taken away alone.
const A_USER: &str = "replica_a";
const A_PASSWORD: &str = "replica-a-password";

struct Replica {
    gw: GatewayProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Replica {
    async fn start(upstream: &Upstream, redis_url: &str) -> Replica {
        let dir = TempDir::new("outbox");
        let mut cfg = GatewayConfig::new(&upstream.base_url());
        cfg.ttl_secs = 300;
        let (addr, admin) = cfg.free_ports();
        cfg.extra = format!("[redis]\nurl = {redis_url:?}\ntimeout_ms = 200\n");
        let path = dir.write("gateway.toml", &cfg.toml());
        let mut gw = GatewayProcess::spawn_args(
            &["--config", path.to_str().expect("utf-8 path")],
            &[(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", "info")],
        );
        gw.wait_listening(addr).await;
        gw.wait_listening(admin).await;
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

    async fn get_user(&self) -> TestResponse {
        req(Method::GET, &format!("http://{}{USER_PATH}", self.addr))
            .bearer(CLIENT_KEY)
            .send()
            .await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = req(Method::GET, &format!("http://{}/metrics", self.admin))
            .send()
            .await
            .text();
        metric(&text, name, labels)
    }

    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
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

    /// The in-flight gauges and the outbox are back at 0.
    async fn assert_idle(&self) {
        for name in [
            "gateway_requests_in_flight",
            "gateway_upstream_in_flight",
            "gateway_invalidation_outbox",
        ] {
            assert_eq!(self.metric(name, &[]).await, 0.0, "{name}");
        }
    }
}

/// Runs one command on the Redis at `port` with `redis-cli`, which comes with redis-server.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.starts_with("ERR"),
        "{args:?}: {text}"
    );
    text
}

fn role(resp: &TestResponse) -> String {
    resp.assert_status(200);
    resp.json()["role"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_for_a_while_still_reaches_the_other_replica() {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let pass = format!(">{A_PASSWORD}");
    redis_cli(
        redis.port,
        &["ACL", "SETUSER", A_USER, "on", &pass, "~*", "&*", "+@all"],
    );
    let a_url = format!("redis://{A_USER}:{A_PASSWORD}@127.0.0.1:{}/0", redis.port);
    let a = Replica::start(&upstream, &a_url).await;
    let b = Replica::start(&upstream, &redis.url()).await;
    b.get_user().await.assert_status(200);
    let before = role(&b.get_user().await);
    b.get_user().await.hit_ttl();
    let new_role = if before == "owner" { "reader" } else { "owner" };

    // A's commands are refused from now on; its subscription stays up and hears B.
    redis_cli(redis.port, &["ACL", "SETUSER", A_USER, "-publish"]);
    let write = req(Method::POST, &format!("http://{}{USER_PATH}", a.addr))
        .bearer(CLIENT_KEY)
        .json(&json!({ "role": new_role }))
        .send()
        .await;
    write.assert_status(200);
    a.wait_metric(
        "gateway_invalidations_published_total",
        &[("result", "error")],
        2.0,
    )
    .await;
    assert!(a.metric("gateway_invalidation_outbox", &[]).await >= 1.0);
    assert_eq!(
        a.metric("gateway_invalidation_bus_connected", &[]).await,
        1.0
    );
    // The window this test is about: B still serves the old user.
    let stale = b.get_user().await;
    println!("B while A's publish is refused: {}", stale.cache_status());
    assert_eq!(role(&stale), before);
    assert!(
        stale.cache_status().contains("hit"),
        "{}",
        stale.cache_status()
    );

    redis_cli(redis.port, &["ACL", "SETUSER", A_USER, "+publish"]);
    b.wait_metric("gateway_invalidations_received_total", &[], 1.0)
        .await;
    let after = b.get_user().await;
    println!("B once the publish went through: {}", after.cache_status());
    assert_eq!(role(&after), new_role, "{}", after.describe());
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );

    let log = a.gw.stderr_text();
    assert!(log.contains("retrying until it is"), "{log}");
    assert!(
        !log.contains("will notice") && !log.contains("link notices"),
        "{log}"
    );
    a.wait_metric(
        "gateway_invalidations_published_total",
        &[("result", "ok")],
        1.0,
    )
    .await;
    a.assert_idle().await;
    b.assert_idle().await;
}
