//! Cancellation over real sockets: HTTP/2 clients reset streams (RST_STREAM from the `h2`
//! crate) at random points, and HTTP/1.1 clients hang up while queued for an upstream slot.

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::kinds::{tally_batch, Cut, Kind, Rng, Tally, BATCH};
use crate::settle;
use crate::support::*;

/// Cases per kind over HTTP/2.
const H2_CASES: usize = 200;
/// Streams reset per connection before the next one: under the gateway's GOAWAY bound
/// (`MAX_CANCELLED_FORWARDS` per 10 s) and under the h2 server's own bound on streams reset
/// before they were accepted (20, hyper's default: past it the connection gets GOAWAY
/// `ENHANCE_YOUR_CALM` "too_many_resets"), so neither guard cuts the test short.
const PER_CONNECTION: usize = 16;

/// A gateway with `slots` upstream slots and room for `queue` waiters, behind a fake
/// upstream.
pub async fn gateway(queue: usize, slots: usize) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let cfg = GatewayConfig::new(&upstream.base_url());
    let toml = with_upstream_keys(
        &cfg.toml(),
        &format!("max_concurrent_requests = {slots}\nmax_queued_requests = {queue}"),
    );
    (upstream, start_gateway(&toml).await)
}

/// `gateway_upstream_queued` now.
async fn queued(gw: &TestGateway) -> f64 {
    metric(&gw.metrics_text().await, "gateway_upstream_queued", &[])
}

/// A fresh h2c connection to the gateway, driven on its own task.
async fn h2_connect(gw: &TestGateway) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends case `n` of `kind` on `send` and resets the stream at a random point: before the
/// response head, or after a few body chunks.
async fn reset_case(send: SendRequest<Bytes>, kind: Kind, n: usize, mut rng: Rng) -> Cut {
    let (method, path, body) = kind.parts(n);
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://gateway{path}"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"));
    for (name, value) in kind.headers() {
        b = b.header(*name, *value);
    }
    if let Some(body) = &body {
        b = b.header("content-length", body.len());
    }
    let req = b.body(()).expect("request");
    let mut send = send.ready().await.expect("the connection takes a stream");
    let (response, mut stream) = send
        .send_request(req, body.is_none())
        .expect("a new stream");
    if let Some(body) = body {
        let _ = stream.send_data(body, true);
    }
    // Over sockets a request takes longer than in-process: a wider range of cut points.
    let delay = Duration::from_micros(rng.below(8_000));
    let cut = match tokio::time::timeout(delay, response).await {
        Err(_) => Cut::BeforeHead,
        Ok(Err(e)) => panic!("{}: the stream failed before the reset: {e}", kind.as_str()),
        Ok(Ok(resp)) => {
            let mut body = resp.into_body();
            let mut cut = None;
            for _ in 0..rng.below(4) {
                let delay = Duration::from_micros(rng.below(2_000));
                match tokio::time::timeout(delay, body.data()).await {
                    Ok(Some(Ok(chunk))) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Err(_) => cut = Some(Cut::MidBody),
                    Ok(_) => cut = Some(Cut::AfterEnd),
                }
                if cut.is_some() {
                    break;
                }
            }
            cut.unwrap_or(if body.is_end_stream() {
                Cut::AfterEnd
            } else {
                Cut::MidBody
            })
        }
    };
    stream.send_reset(Reason::CANCEL);
    cut
}

/// Brings the cache to where `kind` starts (see `Kind::prepare`), over the sockets.
pub async fn prepare(gw: &TestGateway, kind: Kind) {
    match kind {
        Kind::Hit => {
            gw.get_user("user_abc").await.assert_status(200);
        }
        Kind::Miss | Kind::FillWaiter => {
            gw.admin(Method::DELETE, "/cache").send().await;
        }
        _ => {}
    }
}

/// Case 0 of `kind`, not cancelled, over HTTP/2: it must succeed.
pub async fn normal(gw: &TestGateway, kind: Kind) {
    prepare(gw, kind).await;
    let (method, path, body) = kind.parts(0);
    let mut r = gw.req(method, &path).h2c();
    for (name, value) in kind.headers() {
        r = r.header(name, value);
    }
    if let Some(body) = body {
        r = r.body(body);
    }
    let resp = r.send().await;
    assert_eq!(resp.status, 200, "{}: {}", kind.as_str(), resp.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_request_reset_over_http2_anywhere_leaves_nothing_held() {
    let mut rng = Rng::from_env("http2 resets");
    let (upstream, gw) = gateway(4, 2).await;
    upstream.inject("*", "*", Fault::new().delay_ms(1));
    let text = || gw.metrics_text();
    for kind in Kind::ALL {
        let (mut done, mut tally) = (0, Tally::default());
        let mut send = h2_connect(&gw).await;
        while done < H2_CASES {
            if done > 0 && done % PER_CONNECTION == 0 {
                send = h2_connect(&gw).await;
            }
            prepare(&gw, kind).await;
            let mut batch = JoinSet::new();
            for i in 0..BATCH {
                batch.spawn(reset_case(send.clone(), kind, done + i, rng.split()));
            }
            tally_batch(kind.as_str(), batch, &mut tally).await;
            done += BATCH;
        }
        drop(send);
        settle(kind.as_str(), text).await;
        wait_until(10, "the upstream to finish what was reset", || {
            upstream.in_flight() == 0
        })
        .await;
        eprintln!("http2 resets, {}: {tally}; all released", kind.as_str());
        if kind != Kind::Hit {
            assert!(tally.before_head() > 0, "{}: {tally}", kind.as_str());
        }
    }
    for kind in Kind::ALL {
        normal(&gw, kind).await;
    }
    settle("after the normal requests", text).await;
}

/// The queue-leak regression: a request queued for an upstream slot whose client hangs up
/// must give its place back. Before the fix each such hang-up leaked one place, and once
/// `max_queued_requests` had leaked every request that found the slots busy got 503
/// `upstream_overloaded` for the rest of the process's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_queued_gives_its_queue_place_back() {
    const QUEUE: usize = 2;
    let (upstream, gw) = gateway(QUEUE, 1).await;
    upstream.inject("GET", "/v1/echo/hold", Fault::new().gate("hold"));
    // One request holds the only slot until the gate opens.
    let holder = tokio::spawn({
        let r = gw.req(Method::GET, "/v1/echo/hold");
        async move { r.send().await }
    });
    wait_until(10, "the holder at the upstream", || {
        upstream.in_flight() == 1
    })
    .await;

    // More hang-ups than the queue has places, each one queued when its client leaves.
    for i in 0..QUEUE * 3 {
        let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
        let head = format!(
            "GET /v1/echo/leaver/{i} HTTP/1.1\r\nhost: gateway\r\n\
             authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        );
        let before = queued(&gw).await;
        tcp.write_all(head.as_bytes()).await.expect("write");
        // It queues (the gauge rises), unless the gateway answers it at once.
        let mut buf = [0u8; 512];
        let answered = within(10, "the request to queue", async {
            loop {
                tokio::select! {
                    n = tcp.read(&mut buf) => {
                        let head = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).into_owned();
                        break Some(head);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {
                        if queued(&gw).await > before {
                            break None;
                        }
                    }
                }
            }
        })
        .await;
        if let Some(answer) = answered {
            panic!(
                "request {i} found the slot busy and was answered at once instead of queued \
                 (queue places leaked by the {i} clients before it?):\n{answer}"
            );
        }
        drop(tcp);
        // Its account is written (the holder is the only request left); whether its queue
        // place came back is what the next request finds out.
        within(10, "the hung-up request's account", async {
            while metric(&gw.metrics_text().await, "gateway_requests_in_flight", &[]) != 1.0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    // The slot is still busy: a new request must queue (not 503) and get the slot.
    let waiter = tokio::spawn({
        let r = gw.req(Method::GET, "/v1/echo/after");
        async move { r.send().await }
    });
    within(10, "the new request to queue", async {
        while queued(&gw).await != 1.0 && !waiter.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !waiter.is_finished(),
        "a request that found the slot busy was answered at once: {}",
        waiter.await.expect("waiter").describe()
    );
    upstream.gate("hold").open();
    holder.await.expect("holder").assert_status(200);
    within(10, "the queued request", waiter)
        .await
        .expect("waiter")
        .assert_status(200);
    settle("after the hang-ups", || gw.metrics_text()).await;
}
