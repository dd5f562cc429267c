//! Fast fake of the OpenAI Admin API for the load benchmark
//! (`benches/load/run.sh`). Not a test double: it does the least work that
//! still looks like the real thing on the wire.
//!
//! - `GET  {/v1}/organization/users/{id}` → 200, a ~500-byte pretty-printed
//!   `OrganizationUser` JSON carrying that id (`x-request-id` like the real API).
//! - `GET  {/v1}/organization/users` (any query) → 200, a one-user `list`
//!   page (`has_more: true`), as the real list endpoint answers `?limit=1`.
//! - `POST {anything}` → 200, the request body echoed back (pass-through).
//! - every other request → 404 in the OpenAI error shape.
//! - `Authorization: Bearer <admin key>` is required on all of the above (401).
//! - `GET /__stats` (no auth) → `users N\nlists N\nposts N\nunauthorized N\nconnections N\n`,
//!   the counts so far, so the benchmark can prove that hits never reach the
//!   upstream, that wrong keys were stopped by the proxy, and how many
//!   upstream connections each proxy opened.
//!
//! Usage: `bench_upstream --listen 127.0.0.1:PORT --admin-key KEY`
//! (`bench_upstream --print-body ID` prints the body for ID and exits).
//! Worker threads = the CPUs it may run on (`taskset` restricts them).

#[path = "support/mod.rs"]
mod support;
use support::arg;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct State {
    admin_header: Vec<u8>,
    users: AtomicU64,
    lists: AtomicU64,
    posts: AtomicU64,
    unauthorized: AtomicU64,
    connections: AtomicU64,
    next_id: AtomicU64,
}

/// The body for `id`: the fields of the spec's `User` plus the extra fields
/// the live API returns, pretty-printed like the live API (~500 bytes for a
/// 29-character id).
pub fn user_body(id: &str) -> String {
    // A stable per-id number for the fields that vary between users.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let tail = &id[id.len().saturating_sub(6)..];
    let added_at = 1_700_000_000 + (h % 30_000_000);
    format!(
        r#"{{
  "object": "organization.user",
  "id": "{id}",
  "name": "Bench User {tail}",
  "email": "bench.user.{tail}@example.com",
  "role": "{role}",
  "added_at": {added_at},
  "is_default": false,
  "is_service_account": false,
  "is_scim_managed": false,
  "api_key_last_used_at": null,
  "user": {{
    "object": "user",
    "id": "{id}",
    "picture": "https://s.gravatar.com/avatar/{h:016x}{h2:016x}?s=480&r=pg"
  }}
}}"#,
        role = if h % 5 == 0 { "owner" } else { "reader" },
        h2 = h.rotate_left(29),
    )
}

/// A one-user page of `GET /organization/users` (the spec's
/// `UserListResponse`), built once.
fn list_body() -> Bytes {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let user = user_body("user-abc123def456ghi789jkl012");
        Bytes::from(format!(
            "{{\n  \"object\": \"list\",\n  \"data\": [{user}],\n  \"first_id\": \"user-abc123def456ghi789jkl012\",\n  \"last_id\": \"user-abc123def456ghi789jkl012\",\n  \"has_more\": true\n}}"
        ))
    })
    .clone()
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json(
        status,
        format!(
            r#"{{"error":{{"message":"{code}","type":"invalid_request_error","param":null,"code":"{code}"}}}}"#
        ),
    )
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/__stats" {
        let s = format!(
            "users {}\nlists {}\nposts {}\nunauthorized {}\nconnections {}\n",
            state.users.load(Ordering::Relaxed),
            state.lists.load(Ordering::Relaxed),
            state.posts.load(Ordering::Relaxed),
            state.unauthorized.load(Ordering::Relaxed),
            state.connections.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(s))));
    }
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == state.admin_header.as_slice());
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Ok(error(StatusCode::UNAUTHORIZED, "invalid_api_key"));
    }
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let mut resp = if req.method() == Method::GET {
        let rest = path.strip_prefix("/v1").unwrap_or(path);
        match rest.strip_prefix("/organization/users/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                state.users.fetch_add(1, Ordering::Relaxed);
                json(StatusCode::OK, user_body(id))
            }
            _ if rest == "/organization/users" => {
                state.lists.fetch_add(1, Ordering::Relaxed);
                json(StatusCode::OK, list_body())
            }
            _ => error(StatusCode::NOT_FOUND, "not_found"),
        }
    } else if req.method() == Method::POST {
        state.posts.fetch_add(1, Ordering::Relaxed);
        let ct = req.headers().get(CONTENT_TYPE).cloned();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "bad_body")),
        };
        let mut r = json(StatusCode::OK, body);
        if let Some(ct) = ct {
            r.headers_mut().insert(CONTENT_TYPE, ct);
        }
        r
    } else {
        error(StatusCode::NOT_FOUND, "not_found")
    };
    if let Ok(v) = HeaderValue::from_str(&format!("req_{n:032x}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(resp)
}

fn main() -> std::io::Result<()> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .parse()
        .map_err(std::io::Error::other)?;
    if let Some(id) = arg("--print-body") {
        print!("{}", user_body(&id));
        return Ok(());
    }
    let key = arg("--admin-key")
        .or_else(|| std::env::var("OPENAI_ADMIN_KEY").ok())
        .ok_or_else(|| std::io::Error::other("--admin-key or OPENAI_ADMIN_KEY is required"))?;
    let state = Arc::new(State {
        admin_header: format!("Bearer {key}").into_bytes(),
        users: AtomicU64::new(0),
        lists: AtomicU64::new(0),
        posts: AtomicU64::new(0),
        unauthorized: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("bench_upstream listening on {}", listener.local_addr()?);
            loop {
                let stream = support::accept(&listener).await;
                state.connections.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
