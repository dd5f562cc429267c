//! Clients that never read are cut: HTTP/2 zero windows, pipelined HTTP/1.1, keyed
//! forwards left unread.

use super::*;

// === 1. HTTP/2 zero windows, no key ===

/// Six HTTP/2 connections advertise a zero window and send a request with no key, with
/// `max_connections = 3`: the gateway writes each a 401 head it can never finish. Before the
/// send deadline they held every slot until hyper's keep-alive gave up (75-80 s) and a real
/// client got nothing; now each is cut `send_timeout_ms` after its body was offered and the
/// real client is served. Prints how long the real client waited once every slot was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_http2_clients_without_a_key_are_cut_and_a_real_client_is_served() {
    const HOARDERS: usize = 6;
    let (_upstream, gw) = start("max_connections = 3\nworkers = 2", "").await;
    let heads = Arc::new(AtomicUsize::new(0));
    let since = Instant::now();
    let mut hoarders = Vec::new();
    for _ in 0..HOARDERS {
        let tcp = TcpStream::connect(gw.addr).await.expect("connect");
        let heads = heads.clone();
        hoarders.push(tokio::spawn(async move {
            zero_window_h2(tcp, USER_PATH, None, heads, since).await
        }));
    }
    wait_until(10, "three 401 heads (every slot held)", || {
        heads.load(Ordering::SeqCst) >= 3
    })
    .await;
    let held = Instant::now();
    let resp = within(15, "a real client to be served", gw.get_user("user_abc")).await;
    let waited = held.elapsed();
    resp.assert_status(200);
    eprintln!(
        "real client served {waited:?} after never-reading clients held every connection slot \
         (send_timeout_ms = {SEND_TIMEOUT_MS})"
    );
    for h in hoarders {
        let (status, closed) = within(20, "a hoarder's connection to be cut", h)
            .await
            .expect("hoarder");
        assert_eq!(status, 401, "the hoarders sent no key");
        assert!(
            closed >= Duration::from_millis(SEND_TIMEOUT_MS - 100),
            "a hoarder was cut {closed:?} after opening, before send_timeout_ms"
        );
    }
    wait_metric(&gw, 5, "gateway_send_timeouts_total", HOARDERS as f64).await;
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 2. pipelined HTTP/1.1 that never reads ===

/// An HTTP/1.1 client pipelines requests into a small receive buffer and never reads: the
/// gateway's writes stop being taken. Before, the connection stayed open (a request open
/// keeps idle and header timeouts away); now it is closed after `send_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_that_never_reads_is_closed_after_the_send_deadline() {
    let (_upstream, gw) = start("", "").await;
    let stream = small_window_tcp(gw.addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let one = format!("GET {USER_PATH} HTTP/1.1\r\nhost: gateway\r\n\r\n");
        let batch = one.repeat(1000);
        for _ in 0..100 {
            if wr.write_all(batch.as_bytes()).await.is_err() {
                return;
            }
        }
        // Kept open (not half-closed) while the gateway decides.
        std::future::pending::<()>().await;
    });
    wait_metric(&gw, 20, "gateway_send_timeouts_total", 1.0).await;
    writer.abort();
    read_to_close(&mut rd, 10).await;
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 3. a keyed client that stops reading a large forwarded body ===

/// Two keyed clients ask for a large forwarded body and stop reading, one on HTTP/1.1 (small
/// receive buffer), one on HTTP/2 (zero window), with `max_concurrent_requests = 2`. Before,
/// `gateway_upstream_in_flight` stayed at 2 and every forward got 503; now both are cut after
/// `send_timeout_ms`, the upstream slots come back and a normal forward succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_client_that_stops_reading_a_forward_gives_back_its_upstream_slot() {
    let (_upstream, gw) = start("", "max_concurrent_requests = 2\nmax_queued_requests = 1").await;
    let path = "/v1/_test/bytes?n=50000000";

    let mut h1 = small_window_tcp(gw.addr).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    h1.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "unexpected head: {head}");

    let heads = Arc::new(AtomicUsize::new(0));
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let h2 = tokio::spawn(zero_window_h2(
        tcp,
        path,
        Some(CLIENT_KEY),
        heads.clone(),
        Instant::now(),
    ));
    wait_until(10, "the HTTP/2 response head", || {
        heads.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(gauge(&gw, "gateway_upstream_in_flight").await, 2.0);

    wait_metric(&gw, 10, "gateway_upstream_in_flight", 0.0).await;
    let (status, _) = within(10, "the HTTP/2 connection to be cut", h2)
        .await
        .expect("h2 client");
    assert_eq!(status, 200);
    read_to_close(&mut h1, 10).await;
    assert_eq!(gauge(&gw, "gateway_send_timeouts_total").await, 2.0);

    let resp = gw
        .req(Method::GET, "/v1/echo/after")
        .bearer(CLIENT_KEY)
        .send()
        .await;
    resp.assert_status(200);
    assert_settled(gw.admin_addr, "after the test").await;
}
