//! A fake upstream that scopes its data by organization, as the real API does: a user's
//! `name` says which admin key (by digest) and which `OpenAI-Organization` the request
//! came with, and every request is recorded with both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, prefix included.
    pub path: String,
    /// The `Authorization` header (`Bearer <admin key>`).
    pub auth: String,
    /// `OpenAI-Organization`, or `-` when absent.
    pub org: String,
}

/// The running fake.
#[derive(Clone)]
pub struct OrgUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request, in order.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl OrgUpstream {
    /// Starts it on a loopback port, on the current runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(answer(req, &log).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Self { addr, seen }
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("log").len()
    }
}

/// The user's `name` as the organization `org` (the header) sees it with the admin key
/// `key`: the key shows as the start of its SHA-256, never itself.
pub fn user_name(key: &str, org: &str) -> String {
    format!("{org}|key-{}", &crate::support::sha256_hex(key)[..12])
}

async fn answer(req: Request<Incoming>, log: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        auth: header("authorization"),
        org: header("openai-organization"),
    };
    log.lock().expect("log").push(seen.clone());
    let _ = req.into_body().collect().await;
    let Some(id) = seen.path.strip_prefix("/v1/organization/users/") else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let key = seen.auth.trim_start_matches("Bearer ");
    let body = serde_json::json!({
        "object": "organization.user",
        "id": id,
        "name": user_name(key, &seen.org),
        "email": format!("{id}@example.com"),
        "role": "reader",
        "added_at": 1,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}
