//! The per-worker pool over real sockets: a raw HTTP/1.1 upstream on
//! loopback that counts connections and requests and misbehaves on demand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{Caller, Upstream};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// How the fake upstream treats a connection.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers every request, keeps the connection open.
    KeepAlive,
    /// Answers, then closes (without saying so in the response).
    CloseAfterEach,
    /// Answers the first request; on the second it reads it and hangs up.
    HangUpOnSecond,
    /// `/slow` gets headers and one chunk, then nothing; the rest keep-alive.
    SlowBody,
}

/// What the fake upstream saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Request heads read.
    requests: AtomicUsize,
    /// Connections the upstream closed.
    closed: AtomicUsize,
    /// Signalled on every close.
    on_close: Notify,
}

async fn serve(mut s: TcpStream, mode: Mode, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut answered = 0;
    loop {
        // One request head (GETs only: no body).
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break buf.drain(..end + 4).collect::<Vec<u8>>();
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if mode == Mode::HangUpOnSecond && answered == 1 {
            break;
        }
        if mode == Mode::SlowBody && head.starts_with(b"GET /v1/slow ") {
            let part = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
            let _ = s.write_all(part).await;
            // Holds the connection open, sending nothing more.
            let _ = s.read(&mut [0u8; 1]).await;
            return;
        }
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if s.write_all(resp).await.is_err() {
            return;
        }
        answered += 1;
        if mode == Mode::CloseAfterEach {
            break;
        }
    }
    drop(s);
    seen.closed.fetch_add(1, Ordering::SeqCst);
    seen.on_close.notify_waiters();
}

/// The fake upstream and a gateway client for it (idle timeout `idle`).
async fn setup(mode: Mode, idle: Duration) -> (Upstream, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s, mode, counted.clone()));
        }
    });
    let text = format!("[upstream]\nbase_url = \"http://{addr}/v1\"\ntimeout_ms = 3000\n");
    let mut cfg = crate::config::Config::parse(&text, std::path::Path::new("."), &|n| {
        (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
    })
    .expect("config");
    cfg.upstream.pool_idle_timeout = idle;
    let up = Upstream::new(&cfg.upstream, Arc::new(Metrics::new())).expect("client");
    (up, seen)
}

/// `GET {path}`, body read to its end.
async fn get(up: &Upstream, path: &str) -> Result<(), GatewayError> {
    let caller = Caller::for_tests("test");
    let resp = up
        .send(
            &caller,
            Method::GET,
            path,
            None,
            HeaderMap::new(),
            crate::body::empty(),
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
    Ok(())
}

const LONG: Duration = Duration::from_secs(90);

fn count(a: &AtomicUsize) -> usize {
    a.load(Ordering::SeqCst)
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (up, seen) = setup(Mode::KeepAlive, LONG).await;
    for _ in 0..5 {
        get(&up, "/x").await.expect("answered");
    }
    assert_eq!(count(&seen.requests), 5);
    assert_eq!(count(&seen.accepted), 1, "one keep-alive connection");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_and_the_request_sent_once() {
    let (up, seen) = setup(Mode::CloseAfterEach, LONG).await;
    for round in 1..=3 {
        let closed = seen.on_close.notified();
        get(&up, "/x").await.expect("answered");
        // The upstream has hung up on the pooled connection before the next request.
        if count(&seen.closed) < round {
            closed.await;
        }
    }
    assert_eq!(
        count(&seen.requests),
        3,
        "each request reached the upstream once"
    );
    assert_eq!(count(&seen.accepted), 3, "a fresh connection each time");
}

#[tokio::test]
async fn a_request_whose_bytes_left_is_not_sent_again() {
    let (up, seen) = setup(Mode::HangUpOnSecond, LONG).await;
    get(&up, "/x").await.expect("first answered");
    let second = get(&up, "/x").await;
    assert!(
        matches!(second, Err(GatewayError::UpstreamUnavailable(_))),
        "the client gets 502 upstream_unavailable, got {second:?}"
    );
    assert_eq!(
        count(&seen.requests),
        2,
        "the second request was not retried"
    );
    assert_eq!(
        count(&seen.accepted),
        1,
        "no second connection was opened for it"
    );
}

#[tokio::test]
async fn a_body_dropped_midway_closes_its_connection() {
    let (up, seen) = setup(Mode::SlowBody, LONG).await;
    let caller = Caller::for_tests("test");
    let resp = up
        .send(
            &caller,
            Method::GET,
            "/slow",
            None,
            HeaderMap::new(),
            crate::body::empty(),
        )
        .await
        .expect("headers");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"ok"[..]));
    drop(body);
    get(&up, "/x").await.expect("answered");
    assert_eq!(
        count(&seen.accepted),
        2,
        "the half-read connection was not reused"
    );
    get(&up, "/x").await.expect("answered");
    assert_eq!(count(&seen.accepted), 2, "the new one is");
}

#[tokio::test]
async fn an_idle_connection_past_the_idle_timeout_is_not_reused() {
    let idle = Duration::from_millis(200);
    let (up, seen) = setup(Mode::KeepAlive, idle).await;
    get(&up, "/x").await.expect("answered");
    get(&up, "/x").await.expect("answered");
    assert_eq!(count(&seen.accepted), 1, "reused within the idle timeout");
    tokio::time::sleep(idle * 2).await;
    get(&up, "/x").await.expect("answered");
    assert_eq!(count(&seen.accepted), 2, "too old: a new connection");
}
