//! The send deadline and connection slots that follow connections (DESIGN.md,
//! "Connections"): a response the client takes nothing of for `server.send_timeout_ms` is
//! cut, its connection closed and whatever it held (connection slot, upstream slot) given
//! back, with or without a key, on HTTP/1.1 and HTTP/2; and a free connection slot is never
//! left idle while a connection waits on another worker's socket. Every test ends with the
//! in-flight gauges back at 0.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `server.send_timeout_ms` in these tests.
const SEND_TIMEOUT_MS: u64 = 2000;
const USER_PATH: &str = "/v1/organization/users/user_abc";

// === helpers ===

/// A fake upstream and a gateway with `server` lines added to `[server]` (plus
/// `send_timeout_ms`) and `upstream` lines to `[upstream]`.
async fn start(server: &str, upstream_lines: &str) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let toml = GatewayConfig::new(&upstream.base_url()).toml().replacen(
        "[server]\n",
        &format!("[server]\nsend_timeout_ms = {SEND_TIMEOUT_MS}\n{server}\n"),
        1,
    );
    let toml = with_upstream_keys(&toml, upstream_lines);
    (upstream, start_gateway(&toml).await)
}

/// A gauge or counter from the gateway's `/metrics`.
async fn gauge(gw: &TestGateway, name: &str) -> f64 {
    metric(&gw.metrics_text().await, name, &[])
}

/// Waits (up to `secs`) until the metric `name` reads `want`.
async fn wait_metric(gw: &TestGateway, secs: u64, name: &str, want: f64) {
    let what = format!("{name} to read {want}");
    within(secs, &what, async {
        while gauge(gw, name).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A TCP connection to `addr` whose receive buffer is small, so a client that does not read
/// stops taking bytes soon.
async fn small_window_tcp(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(addr).await.expect("connect")
}

/// Reads `stream` until the peer closes it (EOF or reset); fails after `secs`.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin), secs: u64) {
    let mut buf = vec![0u8; 64 * 1024];
    within(secs, "the gateway to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Reads from `stream` until a whole response head has arrived, then stops reading.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    within(10, "response headers", async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the response head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// An HTTP/2 connection whose streams get a flow-control window of 0 (the client never
/// reads), sending one `GET path` (with `key`, if any). Once the response head has arrived,
/// `heads` is incremented; returns how long after `since` the gateway closed the connection.
async fn zero_window_h2<T>(
    io: T,
    path: &str,
    key: Option<&str>,
    heads: Arc<AtomicUsize>,
    since: Instant,
) -> (u16, Duration)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(io)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let mut req = http::Request::get(format!("http://gateway{path}"));
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let (resp, _) = client
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let resp = resp.await.expect("response head");
    heads.fetch_add(1, Ordering::SeqCst);
    let status = resp.status().as_u16();
    // Held, never read: dropping it would reset the stream.
    let body = resp.into_body();
    let _ = conn.await;
    drop(body);
    (status, since.elapsed())
}

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

// === 4. connection slots follow connections ===

/// Two workers, `max_connections = 3`, two idle keep-alive connections: one slot is free.
/// Before, the worker holding it sat in `accept()` on its own socket while connections the
/// kernel gave the other worker waited (about half of them, until a keep-alive connection
/// closed); now a worker takes a slot only once it has a connection, so each of 20 new
/// connections is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_serves_a_connection_waiting_on_either_worker() {
    let (_upstream, gw) = start("max_connections = 3\nworkers = 2", "").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut sender = h1_connect(gw.addr).await;
        let resp = send_on(&mut sender, Method::GET, USER_PATH, CLIENT_KEY).await;
        resp.assert_status(200);
        idle.push(sender);
    }
    for i in 0..20 {
        let resp = within(3, &format!("new connection #{i} to be served"), async {
            gw.get_user("user_abc").await
        })
        .await;
        resp.assert_status(200);
    }
    drop(idle);
    assert_settled(gw.admin_addr, "after the test").await;
}

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

// === 6. TLS ===

/// `toml` with `tls_cert` / `tls_key` in `[server]`.
fn with_tls(toml: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    let lines = format!("[server]\ntls_cert = {cert:?}\ntls_key = {key:?}\n");
    toml.replacen("[server]\n", &lines, 1)
}

/// A TLS connection over `tcp` trusting `ca`, offering `alpn`.
async fn tls_over(
    tcp: TcpStream,
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add the test CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connect = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp);
    within(10, "a TLS handshake", connect).await.expect("TLS")
}

/// Over TLS: a keyed HTTP/1.1 client leaving a large forward unread (small receive buffer),
/// and an HTTP/2 client with a zero window and no key. Both are cut after `send_timeout_ms`,
/// the upstream slot comes back, and a normal request over TLS is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_clients_that_never_read_are_cut() {
    let upstream = start_upstream().await;
    let pki = support::pki::Pki::new("send-deadline-tls");
    let leaf = pki.leaf("gateway");
    let (cert, key) = pki.install(&leaf.cert_pem, &leaf.key_pem);
    let toml = GatewayConfig::new(&upstream.base_url()).toml().replacen(
        "[server]\n",
        &format!("[server]\nsend_timeout_ms = {SEND_TIMEOUT_MS}\n"),
        1,
    );
    let gw = start_gateway(&with_tls(&toml, &cert, &key)).await;
    let ca = pki.ca_der();

    let mut h1 = tls_over(small_window_tcp(gw.addr).await, &ca, "http/1.1").await;
    let request = format!(
        "GET /v1/_test/bytes?n=50000000 HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    h1.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "unexpected head: {head}");

    let heads = Arc::new(AtomicUsize::new(0));
    let tls = tls_over(
        TcpStream::connect(gw.addr).await.expect("connect"),
        &ca,
        "h2",
    )
    .await;
    let h2 = tokio::spawn(zero_window_h2(
        tls,
        USER_PATH,
        None,
        heads.clone(),
        Instant::now(),
    ));
    wait_until(10, "the HTTP/2 response head", || {
        heads.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(gauge(&gw, "gateway_upstream_in_flight").await, 1.0);

    wait_metric(&gw, 10, "gateway_send_timeouts_total", 2.0).await;
    let (status, _) = within(10, "the HTTP/2 connection to be cut", h2)
        .await
        .expect("h2 client");
    assert_eq!(status, 401);
    read_to_close(&mut h1, 10).await;
    wait_metric(&gw, 5, "gateway_upstream_in_flight", 0.0).await;

    let tls = tls_over(
        TcpStream::connect(gw.addr).await.expect("connect"),
        &ca,
        "http/1.1",
    )
    .await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over TLS");
    tokio::spawn(conn);
    send_on(&mut sender, Method::GET, USER_PATH, CLIENT_KEY)
        .await
        .assert_status(200);
    assert_settled(gw.admin_addr, "after the test").await;
}

// === 7. the access line ===

/// The real binary, JSON logs: a keyed HTTP/2 client with a zero window is cut, and its
/// request's access line says why (`error` starting with `send_timeout`), with its status
/// and `body="incomplete"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_of_a_cut_response_says_send_timeout() {
    use support::process::{GatewayProcess, TempDir};
    let upstream = start_upstream().await;
    let dir = TempDir::new("send-deadline-logs");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let toml = cfg.toml().replacen(
        "[server]\n",
        &format!("[server]\nsend_timeout_ms = {SEND_TIMEOUT_MS}\nlog_format = \"json\"\n"),
        1,
    );
    let config = dir.write("gateway.toml", &toml);
    let mut cmd = GatewayProcess::command(&["--config", config.to_str().expect("utf-8 path")]);
    cmd.env("RUST_LOG", "info").env(ADMIN_KEY_ENV, ADMIN_KEY);
    let mut gw = GatewayProcess::start(cmd);
    for a in [addr, admin] {
        gw.wait_listening(a).await;
    }

    let heads = Arc::new(AtomicUsize::new(0));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = zero_window_h2(tcp, USER_PATH, Some(CLIENT_KEY), heads, Instant::now());
    let (status, _) = within(10, "the connection to be cut", client).await;
    assert_eq!(status, 200);

    let is_cut = |l: &str| l.contains("openai_admin_gateway::access") && l.contains("send_timeout");
    gw.wait_for_line(10, "the access line of the cut request", is_cut)
        .await;
    let text = gw.stderr_text();
    let line = text.lines().find(|l| is_cut(l)).expect("the line");
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let field = |k: &str| {
        json.get(k)
            .or_else(|| json.get("fields").and_then(|f| f.get(k)))
    };
    assert_eq!(
        field("status").and_then(|v| v.as_u64()),
        Some(200),
        "{line}"
    );
    assert_eq!(
        field("body").and_then(|v| v.as_str()),
        Some("incomplete"),
        "{line}"
    );
    let error = field("error").and_then(|v| v.as_str()).unwrap_or_default();
    assert!(error.starts_with("send_timeout"), "{line}");
    assert!(!text.contains(ADMIN_KEY), "the admin key was logged");
    let metrics = req(Method::GET, &format!("http://{admin}/metrics"))
        .send()
        .await;
    assert_eq!(
        metric(&metrics.text(), "gateway_send_timeouts_total", &[]),
        1.0
    );
    assert_settled(admin, "after the test").await;
}
