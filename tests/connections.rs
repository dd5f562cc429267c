//! Connections earn their slot and every request is accounted for (DESIGN.md, "Connections"):
//! silent sockets and slow HTTP/2 prefaces are closed `server.header_read_timeout_ms` after
//! accept, so they cannot lock real clients out of `server.max_connections`; an HTTP/2 client
//! that keeps resetting forwarded streams is sent GOAWAY; `CONNECT` and methods the Admin API
//! does not use get 405; a client's broken chunked body is the client's fault (400), not the
//! upstream's; a response body that breaks off is logged as incomplete. After each test the
//! in-flight gauges are back at 0.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openai_admin_gateway::server::{CANCEL_WINDOW, MAX_CANCELLED_FORWARDS};
use serde_json::{Map, Value};
use support::process::{GatewayProcess, TempDir};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `server.max_connections` in the connection-limit tests.
const MAX_CONNECTIONS: usize = 40;
/// `server.header_read_timeout_ms` in the connection-limit tests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(1000);
/// Connections that never send a request: more than `MAX_CONNECTIONS`.
const IDLERS: usize = 60;
/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// === helpers ===

/// `toml` (as rendered by `GatewayConfig::toml`) with `lines` added to `[server]`.
fn with_server_keys(toml: &str, lines: &str) -> String {
    assert!(toml.starts_with("[server]\n"), "unexpected config:\n{toml}");
    toml.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

/// A fake upstream and an in-process gateway with `server_lines` added to `[server]`.
async fn start_with_server_keys(server_lines: &str) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let toml = with_server_keys(
        &GatewayConfig::new(&upstream.base_url()).toml(),
        server_lines,
    );
    (upstream, start_gateway(&toml).await)
}

/// The gateway of the connection-limit tests: 40 connections, 1 s to the first headers.
async fn start_limited() -> (Upstream, TestGateway) {
    start_with_server_keys(&format!(
        "max_connections = {MAX_CONNECTIONS}\nheader_read_timeout_ms = {}",
        HEADER_READ_TIMEOUT.as_millis()
    ))
    .await
}

/// A real client's `GET /v1/organization/users/user_abc` on a fresh connection, which must
/// be answered 200 within `bound` of `since`. Returns how long after `since` it was.
async fn served_within(gw: &TestGateway, since: Instant, bound: Duration) -> Duration {
    let left = bound.saturating_sub(since.elapsed());
    let resp = tokio::time::timeout(left, gw.get_user("user_abc"))
        .await
        .unwrap_or_else(|_| {
            panic!("a real client was not served within {bound:?} of the idle connections")
        });
    let waited = since.elapsed();
    resp.assert_status(200);
    waited
}

/// Reads `stream` until the gateway closes it (EOF or an error): when that happened, after
/// `since`, or `None` if it is still open `limit` after `since`.
async fn closed_within(mut stream: TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = tokio::time::Instant::from_std(since + limit);
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends the HTTP/2 preface one byte every 200 ms on `stream` (it would take 4.8 s) until the
/// gateway closes the connection: when that happened, after `since`, or `None` if it is
/// still open `limit` after `since`.
async fn slow_preface(stream: TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = rd;
    let deadline = tokio::time::Instant::from_std(since + limit);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut next = H2_PREFACE.iter();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return None,
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(since.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if let Some(b) = next.next() {
                    if wr.write_all(&[*b]).await.is_err() {
                        return Some(since.elapsed());
                    }
                }
            }
        }
    }
}

/// Checks when the idle connections were closed: at least `MAX_CONNECTIONS` of them (the
/// ones accepted at once) between the deadline and 1.5 s; the rest, which waited in the
/// backlog for a slot, within the deadline of their accept (at most 2.5 s in all). None
/// before the deadline.
#[track_caller]
fn assert_closed_at_the_deadline(what: &str, closed: &[Option<Duration>]) -> Vec<Duration> {
    let mut times: Vec<Duration> = closed
        .iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| panic!("{what} #{i} was never closed by the gateway")))
        .collect();
    times.sort();
    let early = HEADER_READ_TIMEOUT - Duration::from_millis(50);
    assert!(
        times[0] >= early,
        "{what}: one was closed {:?} after opening, before header_read_timeout_ms",
        times[0]
    );
    assert!(
        times[MAX_CONNECTIONS - 1] <= Duration::from_millis(1500),
        "{what}: only {} of the first {MAX_CONNECTIONS} were closed within 1.5s: {times:?}",
        times
            .iter()
            .filter(|t| **t <= Duration::from_millis(1500))
            .count()
    );
    let last = *times.last().expect("some");
    assert!(
        last <= Duration::from_millis(2500),
        "{what}: the last one was closed {last:?} after opening (backlog + deadline is ~2s)"
    );
    times
}

// === 1. silent sockets ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_real_clients_out() {
    let (_upstream, gw) = start_limited().await;
    let opened = Instant::now();
    let mut idlers = Vec::with_capacity(IDLERS);
    for _ in 0..IDLERS {
        idlers.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    let watchers: Vec<_> = idlers
        .into_iter()
        .map(|s| tokio::spawn(closed_within(s, opened, Duration::from_secs(4))))
        .collect();

    // Queued behind 60 sockets that hold every slot: served once the deadline frees them.
    let waited = served_within(&gw, opened, Duration::from_millis(2500)).await;

    let mut closed = Vec::with_capacity(IDLERS);
    for w in watchers {
        closed.push(w.await.expect("watcher"));
    }
    let times = assert_closed_at_the_deadline("silent socket", &closed);
    eprintln!(
        "real client served {waited:?} after the silent sockets opened; they were closed \
         {:?}..{:?} after",
        times[0],
        times[times.len() - 1]
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 2. slow HTTP/2 prefaces ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http2_prefaces_are_cut_at_the_deadline() {
    let (_upstream, gw) = start_limited().await;
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(IDLERS);
    for _ in 0..IDLERS {
        conns.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    let watchers: Vec<_> = conns
        .into_iter()
        .map(|s| tokio::spawn(slow_preface(s, opened, Duration::from_secs(4))))
        .collect();

    let waited = served_within(&gw, opened, Duration::from_millis(2500)).await;

    let mut closed = Vec::with_capacity(IDLERS);
    for w in watchers {
        closed.push(w.await.expect("writer"));
    }
    let times = assert_closed_at_the_deadline("slow preface", &closed);
    eprintln!(
        "real client served {waited:?} after the slow prefaces began; they were closed \
         {:?}..{:?} after",
        times[0],
        times[times.len() - 1]
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 3. HTTP/2 stream reset flood ===

/// The forwarded path whose answer the fake delays, so every stream is still waiting when
/// it is reset.
const RESET_PATH: &str = "/v1/echo/reset-flood";

fn reset_request() -> Request<TestBody> {
    Request::builder()
        .method(Method::GET)
        .uri("http://gateway/v1/echo/reset-flood")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_reset_flood_is_sent_goaway() {
    const SLACK: usize = 5;
    let max = MAX_CANCELLED_FORWARDS as usize;
    let (upstream, gw) = start_pair().await;
    upstream.inject("GET", RESET_PATH, Fault::new().delay_ms(500));

    // A bystander on connections of its own, served while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = tokio::spawn({
        let (stop, url) = (stop.clone(), gw.url("/v1/echo/bystander"));
        async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let resp = req(Method::GET, &url).bearer(CLIENT_KEY).h2c().send().await;
                statuses.push(resp.status.as_u16());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        }
    });

    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);

    // Open a stream, reset it once the upstream has it (and at least 5 ms passed): the
    // gateway forwarded it and its client left. Until the gateway ends the connection.
    let started = Instant::now();
    let mut resets = 0usize;
    let mut ended: Option<String> = None;
    for _ in 0..300 {
        if started.elapsed() > CANCEL_WINDOW {
            break;
        }
        if conn.is_finished() {
            ended = Some("the connection ended".into());
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), sender.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ended = Some(format!("the connection refused new streams: {e}"));
                break;
            }
            Err(_) => panic!("the h2 connection was not ready for a new stream within 2s"),
        }
        let before = upstream.count("GET", RESET_PATH);
        let opened = Instant::now();
        let response = sender.send_request(reset_request());
        tokio::pin!(response);
        let answered = loop {
            tokio::select! {
                r = &mut response => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {
                    let seen = upstream.count("GET", RESET_PATH) > before;
                    let age = opened.elapsed();
                    if age >= Duration::from_millis(5) && (seen || age >= Duration::from_secs(1)) {
                        break None;
                    }
                }
            }
        };
        match answered {
            // Dropping the response future (at the end of this iteration) resets the stream.
            None => resets += 1,
            Some(Ok(resp)) => panic!(
                "a stream was answered {} although the upstream delays it 500ms",
                resp.status()
            ),
            Some(Err(e)) => {
                ended = Some(format!("a new stream was refused: {e}"));
                break;
            }
        }
    }
    let ended = ended.unwrap_or_else(|| {
        panic!(
            "the gateway kept the connection open after {resets} resets in {:?}",
            started.elapsed()
        )
    });
    // GOAWAY, then the connection itself ends (every stream on it was reset).
    within(2, "the reset-flooding connection to end", conn)
        .await
        .expect("connection task")
        .ok();
    let flood_time = started.elapsed();

    stop.store(true, Ordering::SeqCst);
    let during = within(30, "the bystander", bystander)
        .await
        .expect("bystander");
    let after = gw.req(Method::GET, "/v1/echo/bystander").h2c().send().await;
    after.assert_status(200);

    let upstream_saw = upstream.count("GET", RESET_PATH);
    eprintln!(
        "closed after {resets} resets in {flood_time:?} ({ended}); the upstream saw \
         {upstream_saw} requests on {RESET_PATH}; bystander statuses {during:?}"
    );
    assert!(
        resets > max && resets <= max + SLACK,
        "the connection ended after {resets} resets; expected just over \
         MAX_CANCELLED_FORWARDS ({max})"
    );
    assert!(
        upstream_saw <= max + SLACK,
        "the upstream worked on {upstream_saw} abandoned requests (bound {max} + {SLACK})"
    );
    assert!(!during.is_empty(), "the bystander never got a request in");
    assert!(
        during.iter().all(|s| *s == 200),
        "the bystander was refused during the flood: {during:?}"
    );

    let text = gw.metrics_text().await;
    let abandoned = metric(&text, "gateway_requests_total", &[("status", "499")]);
    assert!(
        abandoned as usize > max,
        "gateway_requests_total{{status=\"499\"}} is {abandoned} after {resets} resets"
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 4. CONNECT and odd methods ===

/// Sends `req` on a fresh HTTP/1.1 connection (for request-targets the URL-based client
/// cannot send) and collects the response.
async fn send_h1(addr: SocketAddr, req: Request<TestBody>) -> TestResponse {
    let mut conn = h1_connect(addr).await;
    within(10, "the answer", async {
        conn.ready().await.expect("connection ready");
        let resp = conn.send_request(req).await.expect("request");
        TestResponse::collect(resp).await.expect("body")
    })
    .await
}

fn connect_request(target: &str) -> Request<TestBody> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .header("host", "127.0.0.1:443")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_methods_the_admin_api_does_not_use_get_405() {
    let (upstream, gw) = start_pair().await;
    let before = upstream.total();
    let not_allowed = |resp: &TestResponse, what: &str| {
        eprintln!("{what}: {}", resp.status);
        assert_openai_error(resp, 405, "invalid_request_error", "method_not_allowed");
    };

    // Authority form, as a proxy client sends it.
    let resp = send_h1(gw.addr, connect_request("127.0.0.1:443")).await;
    not_allowed(&resp, "CONNECT 127.0.0.1:443");
    // A path form, inside the prefix.
    let resp = send_h1(gw.addr, connect_request("/v1/echo/x")).await;
    not_allowed(&resp, "CONNECT /v1/echo/x");

    let trace = gw.req(Method::TRACE, "/v1/echo/x").send().await;
    not_allowed(&trace, "TRACE /v1/echo/x");
    let propfind = Method::from_bytes(b"PROPFIND").expect("method");
    let resp = gw.req(propfind.clone(), "/v1/echo/x").send().await;
    not_allowed(&resp, "PROPFIND /v1/echo/x");
    let resp = gw.req(propfind, "/v1/echo/x").h2c().send().await;
    not_allowed(&resp, "PROPFIND /v1/echo/x over h2c");

    assert_eq!(
        upstream.total(),
        before,
        "a refused method reached the upstream"
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 5. a client's malformed chunked body ===

/// The status line, headers (lowercase names) and body of a raw HTTP/1.1 response.
fn parse_raw(raw: &[u8]) -> TestResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            http::header::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
            http::HeaderValue::from_str(value.trim()).expect("value"),
        );
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a gateway error has a content-length");
    TestResponse {
        status: http::StatusCode::from_u16(status).expect("status"),
        version: http::Version::HTTP_11,
        headers,
        body: bytes::Bytes::copy_from_slice(&body.as_bytes()[..len.min(body.len())]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let (upstream, gw) = start_pair().await;
    let before = gw.metrics_text().await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/echo/x HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    // The request is being forwarded, its body streaming; then garbage where the next
    // chunk size belongs.
    upstream.wait_for_count("POST", "/v1/echo/x", 1).await;
    s.write_all(b"zz-not-a-chunk-size\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    within(10, "the gateway's answer", s.read_to_end(&mut raw))
        .await
        .ok();
    let after = gw.metrics_text().await;

    let count = |text: &str, name: &str, labels: &[(&str, &str)]| metric(text, name, labels);
    let upstream_errors = count(
        &after,
        "gateway_upstream_requests_total",
        &[("status", "error")],
    ) - count(
        &before,
        "gateway_upstream_requests_total",
        &[("status", "error")],
    );
    let bad_gateway = count(&after, "gateway_requests_total", &[("status", "502")])
        - count(&before, "gateway_requests_total", &[("status", "502")]);
    assert_eq!(
        upstream_errors, 0.0,
        "a client's broken body was counted as an upstream error"
    );
    assert_eq!(
        bad_gateway, 0.0,
        "a client's broken body was counted as a 502"
    );
    assert!(
        !raw.is_empty(),
        "the gateway closed the connection without an answer"
    );
    let resp = parse_raw(&raw);
    assert_openai_error(&resp, 400, "invalid_request_error", "invalid_body");
    let invalid = count(&after, "gateway_requests_total", &[("status", "400")])
        - count(&before, "gateway_requests_total", &[("status", "400")]);
    assert_eq!(invalid, 1.0, "the refused request is counted as a 400");
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 6. response bodies that break off, in the access log ===

const ACCESS: &str = "openai_admin_gateway::access";

/// Waits for and returns the JSON access line of request `id`.
async fn access_line(gw: &mut GatewayProcess, id: &str) -> Map<String, Value> {
    gw.wait_for_line(30, &format!("for request {id}"), |l| {
        l.contains(ACCESS) && l.contains(id)
    })
    .await;
    let text = gw.stderr_text();
    let found: Vec<Map<String, Value>> = text
        .lines()
        .filter(|l| l.contains(ACCESS) && l.contains(id))
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => m,
            _ => panic!("access line is not a JSON object: {l}"),
        })
        .filter(|m| m.get("request_id").and_then(Value::as_str) == Some(id))
        .collect();
    assert_eq!(found.len(), 1, "one access line for {id}: {found:?}");
    found.into_iter().next().expect("one")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_breaks_off_is_logged_incomplete() {
    const N: u64 = 100_000;
    const BREAK_AFTER: u64 = 5_000;
    let upstream = start_upstream().await;
    let dir = TempDir::new("conn-logs");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let mut gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), "info", addr, admin).await;
    let url = |path: &str| format!("http://{addr}{path}");

    let broken = req(
        Method::GET,
        &url(&format!("/v1/_test/bytes?n={N}&break_after={BREAK_AFTER}")),
    )
    .bearer(CLIENT_KEY)
    .send_streaming()
    .await
    .expect("response headers");
    assert_eq!(broken.status(), 200);
    let broken_id = broken
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    let got = TestResponse::collect(broken).await;
    assert!(got.is_err(), "a broken-off body arrived complete");

    let complete = req(Method::GET, &url(&format!("/v1/_test/bytes?n={N}")))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    complete.assert_status(200);
    assert_eq!(complete.body.len() as u64, N);
    let small = req(Method::GET, &url("/v1/organization/users/user_abc"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    small.assert_status(200);

    let line = access_line(&mut gw, &broken_id).await;
    eprintln!("broken-off: {line:?}");
    assert_eq!(line.get("status"), Some(&Value::from(200)), "{line:?}");
    assert_eq!(
        line.get("body"),
        Some(&Value::from("incomplete")),
        "{line:?}"
    );
    let bytes = line.get("bytes").and_then(Value::as_u64).expect("bytes");
    assert!(
        (BREAK_AFTER..N).contains(&bytes),
        "bytes={bytes}, expected {BREAK_AFTER}..{N}: {line:?}"
    );
    for (resp, len) in [
        (&complete, N),
        (&small, upstream.user_body("user_abc").len() as u64),
    ] {
        let line = access_line(&mut gw, &resp.request_id()).await;
        assert_eq!(line.get("status"), Some(&Value::from(200)), "{line:?}");
        assert_eq!(line.get("body"), Some(&Value::from("complete")), "{line:?}");
        assert_eq!(line.get("bytes"), Some(&Value::from(len)), "{line:?}");
    }

    assert_settled(admin, "after the test").await;
    let status = gw.terminate(30);
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        gw.stderr_text()
    );
}
