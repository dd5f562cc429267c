//! Evictions that can not be lost: a replica whose Redis refuses its publishes for a while
//! (while its subscription stays up, so no replica notices a lost link) still gets its
//! evictions to the others once Redis takes them. Two real gateway processes, one real
//! `redis-server`, one fake upstream.

mod support;

use std::process::Command;

use http::Method;
use serde_json::json;
use support::redis::Redis;
use support::replica::{role, Replica};
use support::*;

/// The Redis user replica A logs in as, so that its rights can be taken away alone.
const A_USER: &str = "replica_a";
const A_PASSWORD: &str = "replica-a-password";

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
    let ttl = |c: &mut GatewayConfig| c.ttl_secs = 300;
    let a = Replica::start(&upstream, &a_url, ttl).await;
    let b = Replica::start(&upstream, &redis.url(), ttl).await;
    b.get(USER_PATH).await.assert_status(200);
    let before = role(&b.get(USER_PATH).await);
    b.get(USER_PATH).await.hit_ttl();
    let new_role = if before == "owner" { "reader" } else { "owner" };

    // A's commands are refused from now on; its subscription stays up and hears B.
    redis_cli(redis.port, &["ACL", "SETUSER", A_USER, "-publish"]);
    let write = req(Method::POST, &a.url(USER_PATH))
        .bearer(CLIENT_KEY)
        .json(&json!({ "role": new_role }))
        .send()
        .await;
    write.assert_status(200);
    a.wait_metric(
        "gateway_invalidations_published_total",
        &[("result", "error")],
        1.0,
    )
    .await;
    // Checked at the end, so that without the outbox this test fails on what B serves.
    let queued = a.metric("gateway_invalidation_outbox", &[]).await;
    assert_eq!(
        a.metric("gateway_invalidation_bus_connected", &[]).await,
        1.0
    );
    // The window this test is about: B still serves the old user.
    let stale = b.get(USER_PATH).await;
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
    let after = b.get(USER_PATH).await;
    println!("B once the publish went through: {}", after.cache_status());
    assert_eq!(role(&after), new_role, "{}", after.describe());
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );

    assert!(queued >= 1.0, "the refused eviction was queued: {queued}");
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
