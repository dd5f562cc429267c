//! The floor of hyper for pass-through (`benches/load/run.sh`): a bare
//! hyper HTTP/1.1 server that forwards every request to one plain-HTTP
//! upstream with hyper's client, the credential replaced by the admin key,
//! and relays the answer. No auth, routing, limits, budget, metrics, logs
//! or TLS. What the gateway spends on a pass-through request above this is
//! its own work; what this spends above nginx is hyper's (two HTTP state
//! machines per request).
//!
//! Two ways of reaching the upstream (`--mode`):
//! - `pool` (the default): hyper-util's legacy client, one pool, as the
//!   gateway reaches its upstream (a connection task per upstream
//!   connection, a channel to it);
//! - `conn`: each client connection gets its own upstream connection
//!   (`hyper::client::conn::http1`), driven in the client connection's own
//!   task, requests sent one after another: the leanest exchange hyper
//!   offers (no pool, no task hop).
//!
//! Usage: `bench_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//! --admin-key KEY [--mode pool|conn]`. Worker threads = the CPUs it may
//! run on (`taskset` restricts them), as for the gateway.

#[path = "support/mod.rs"]
mod support;
use support::arg;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = BoxBody<Bytes, hyper::Error>;

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(b"bad gateway"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// The request as sent upstream: the admin key in place of the client's.
fn rewrite(mut req: Request<Incoming>, upstream: &str, key: &HeaderValue) -> Request<Incoming> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    let h = req.headers_mut();
    h.insert(AUTHORIZATION, key.clone());
    h.remove(CONNECTION);
    h.remove(HOST);
    req
}

fn main() -> std::io::Result<()> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:18083".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let upstream: SocketAddr = arg("--upstream")
        .ok_or_else(|| std::io::Error::other("--upstream is required"))?
        .parse()
        .map_err(std::io::Error::other)?;
    let key = HeaderValue::from_str(&format!(
        "Bearer {}",
        arg("--admin-key").ok_or_else(|| std::io::Error::other("--admin-key is required"))?
    ))
    .map_err(std::io::Error::other)?;
    let conn_mode = match arg("--mode").as_deref() {
        None | Some("pool") => false,
        Some("conn") => true,
        Some(m) => return Err(std::io::Error::other(format!("unknown --mode {m}"))),
    };
    let authority: Arc<str> = upstream.to_string().into();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("bench_proxy listening on {}", listener.local_addr()?);
            loop {
                let stream = support::accept(&listener).await;
                let (client, key, authority) = (client.clone(), key.clone(), authority.clone());
                if conn_mode {
                    tokio::spawn(serve_paired(stream, upstream, key, authority));
                    continue;
                }
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let req = rewrite(req, &authority, &key);
                        let sent = client.request(req);
                        async move {
                            Ok::<_, std::convert::Infallible>(match sent.await {
                                Ok(r) => r.map(|b| b.boxed()),
                                Err(_) => bad_gateway(),
                            })
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}

/// `conn` mode: one upstream connection for this client connection, both
/// driven by this task.
async fn serve_paired(
    stream: TcpStream,
    upstream: SocketAddr,
    key: HeaderValue,
    authority: Arc<str>,
) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, up_conn)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
    else {
        return;
    };
    let sender = Arc::new(Mutex::new(sender));
    let host = HeaderValue::from_str(&authority).unwrap_or(HeaderValue::from_static("upstream"));
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut req = rewrite(req, &authority, &key);
        // Origin form on a connection of its own.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        req.headers_mut().insert(HOST, host.clone());
        let sender = sender.clone();
        async move {
            let mut s = sender.lock().await;
            if s.ready().await.is_err() {
                return Ok(bad_gateway());
            }
            Ok::<_, std::convert::Infallible>(match s.send_request(req).await {
                Ok(r) => r.map(|b| b.boxed()),
                Err(_) => bad_gateway(),
            })
        }
    });
    let down = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = down => {}
        _ = up_conn => {}
    }
}
