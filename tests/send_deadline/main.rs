//! The send deadline and connection slots that follow connections (DESIGN.md,
//! "Connections"): a response the client takes nothing of for `server.send_timeout_ms` is
//! cut, its connection closed and whatever it held (connection slot, upstream slot) given
//! back, with or without a key, on HTTP/1.1 and HTTP/2; and a free connection slot is never
//! left idle while a connection waits on another worker's socket. Every test ends with the
//! in-flight gauges back at 0.

#[path = "../support/mod.rs"]
mod support;

mod cut;
mod logs;
mod progress;
mod slots;
mod tls;

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
