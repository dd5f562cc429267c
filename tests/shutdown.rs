//! Graceful shutdown: stop accepting at once, let in-flight requests finish, bounded drain.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Request};
use support::*;
use tokio::net::TcpStream;

/// Waits until connecting to `addr` is refused.
async fn wait_refused(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr).await {
            Err(_) => return,
            Ok(stream) => drop(stream),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} {addr} still accepts connections 5s after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn slow_request(gate: &str) -> Request<TestBody> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/echo/slow")
        .header("host", "gateway")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-fake-gate", gate)
        .body(full("in-flight body"))
        .expect("request")
}

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let (upstream, gw) = start_pair_with(|c| c.shutdown_grace_secs = 20).await;
    let mut conn = h1_connect(gw.addr).await;
    let in_flight = tokio::spawn(async move { conn.send_request(slow_request("slow")).await });
    upstream.wait_for_count("POST", "/v1/echo/slow", 1).await;

    gw.shutdown();
    wait_refused(gw.addr, "the public listener").await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was cut at shutdown"
    );

    upstream.gate("slow").open();
    let resp = within(10, "the in-flight response", in_flight)
        .await
        .expect("task")
        .expect("the in-flight request failed during the drain");
    let resp = within(10, "the in-flight body", TestResponse::collect(resp))
        .await
        .expect("the in-flight body broke during the drain");
    resp.assert_status(200);
    assert_eq!(resp.json()["body_len"], "in-flight body".len());

    gw.wait_stopped(15)
        .await
        .expect("Server::run returned an error");
    wait_refused(gw.admin_addr, "the admin listener").await;
}

#[tokio::test]
async fn drain_is_bounded_by_shutdown_grace_secs() {
    let (upstream, gw) = start_pair_with(|c| {
        c.shutdown_grace_secs = 1;
        // Long enough that only the grace period can end the stuck request.
        c.timeout_ms = 120_000;
    })
    .await;
    let mut conn = h1_connect(gw.addr).await;
    // The gate never opens: this request would hang forever.
    let _stuck = tokio::spawn(async move { conn.send_request(slow_request("never")).await });
    upstream.wait_for_count("POST", "/v1/echo/slow", 1).await;
    let start = Instant::now();
    gw.shutdown();
    gw.wait_stopped(15)
        .await
        .expect("Server::run returned an error");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "drain took {:?} with shutdown_grace_secs = 1",
        start.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let (_upstream, gw) = start_pair_with(|c| c.shutdown_grace_secs = 30).await;
    let mut conn = h1_connect(gw.addr).await;
    let resp = conn
        .send_request(
            Request::get("/v1/echo/idle")
                .header("host", "gateway")
                .header("authorization", format!("Bearer {CLIENT_KEY}"))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("request on a keep-alive connection");
    TestResponse::collect(resp)
        .await
        .expect("body")
        .assert_status(200);
    // `conn` stays open and idle.
    let start = Instant::now();
    gw.shutdown();
    gw.wait_stopped(25)
        .await
        .expect("Server::run returned an error");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "an idle connection kept the drain waiting for {:?}",
        start.elapsed()
    );
    drop(conn);
}
