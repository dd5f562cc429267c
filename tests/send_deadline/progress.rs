//! Progress, not total time; and the end of a stream left in h2's queue.

use super::*;

// === 5. progress, not total time ===

/// A keyed HTTP/2 client reads a 100 kB forwarded body through a 16 kB window, opening it
/// again 300 ms after each frame: the body takes well over `send_timeout_ms` in all, but the
/// client keeps taking it, so nothing is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_that_keeps_reading_is_not_cut() {
    const N: usize = 100_000;
    let (_upstream, gw) = start("", "").await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::get(format!("http://gateway/v1/_test/bytes?n={N}"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let started = Instant::now();
    let resp = within(10, "response head", resp).await.expect("head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(data) = within(10, "a data frame", body.data()).await {
        let data = data.expect("the body broke off");
        got += data.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let took = started.elapsed();
    assert_eq!(got, N, "the whole body arrived");
    assert!(
        took > Duration::from_millis(SEND_TIMEOUT_MS),
        "the body took {took:?}, not longer than send_timeout_ms: the test proves nothing"
    );
    assert_eq!(gauge(&gw, "gateway_send_timeouts_total").await, 0.0);
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 8. the end of a stream left in h2's queue ===

/// A keyed HTTP/2 client with a one-byte window reads an SSE stream that ends: the last
/// event is queued in h2 after the body is gone (no request open, nothing left to watch),
/// so the idle close's GOAWAY can never finish. Before, the connection stayed open (hyper's
/// PINGs are answered); now it is dropped `send_timeout_ms` after the idle close began, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_end_waits_for_a_window_never_opened_is_dropped_when_idle() {
    let (_upstream, gw) = start("idle_timeout_secs = 1", "").await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::get("http://gateway/v1/_test/sse?n=1")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = within(10, "response head", resp).await.expect("head");
    assert_eq!(resp.status(), 200);
    let _body = resp.into_body();
    let started = Instant::now();
    wait_metric(&gw, 10, "gateway_requests_in_flight", 0.0).await;
    let _ = within(15, "the connection to be dropped", conn).await;
    eprintln!("dropped {:?} after the response head", started.elapsed());
    assert_eq!(gauge(&gw, "gateway_send_timeouts_total").await, 1.0);
    assert_settled(gw.admin_addr, "after the test").await;
}
