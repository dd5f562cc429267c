//! A small HTTP client for tests (HTTP/1.1 or h2c prior knowledge, or requests on one kept-alive
//! HTTP/1.1 connection) and response assertions (OpenAI errors, `x-ratelimit-*` headers).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

use super::body::{empty, full, TestBody};
use super::{ADMIN_KEY, CACHE_NAME};

/// Seconds any single request may take before the test fails.
const REQUEST_TIMEOUT_SECS: u64 = 30;

// === Req ===

/// A request being built. Send with [`Req::send`] (collects the body) or
/// [`Req::send_streaming`] (hands back the streaming response).
pub struct Req {
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<TestBody>,
    h2c: bool,
}

/// A request to an absolute `url` (any request-target is sent as written, dot segments and
/// percent-escapes included).
pub fn req(method: Method, url: &str) -> Req {
    Req {
        method,
        url: url.to_string(),
        headers: Vec::new(),
        body: None,
        h2c: false,
    }
}

impl Req {
    /// Adds a header (repeated names are kept, in order).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        self.headers.push((name, value));
        self
    }

    /// Replaces the `Authorization` header with `Bearer key`.
    pub fn bearer(self, key: &str) -> Self {
        self.no_auth()
            .header("authorization", &format!("Bearer {key}"))
    }

    /// Removes any `Authorization` header.
    pub fn no_auth(mut self) -> Self {
        self.headers.retain(|(n, _)| n != AUTHORIZATION);
        self
    }

    pub fn body(mut self, bytes: impl Into<Bytes>) -> Self {
        self.body = Some(full(bytes));
        self
    }

    pub fn json(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(value).expect("json"))
    }

    pub fn stream(mut self, body: TestBody) -> Self {
        self.body = Some(body);
        self
    }

    /// Speak HTTP/2 with prior knowledge (h2c).
    pub fn h2c(mut self) -> Self {
        self.h2c = true;
        self
    }

    fn build(self) -> (Request<TestBody>, bool) {
        let mut builder = Request::builder().method(self.method).uri(&self.url);
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(self.body.unwrap_or_else(empty))
            .expect("request");
        (req, self.h2c)
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn send_streaming(self) -> Result<Response<Incoming>, String> {
        let url = self.url.clone();
        let (req, h2c) = self.build();
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2c)
            .build_http::<TestBody>();
        let fut = client.request(req);
        match tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), fut).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => panic!("no response headers within {REQUEST_TIMEOUT_SECS}s from {url}"),
        }
    }

    /// Sends and collects the whole body; transport or body errors become `Err`.
    pub async fn try_send(self) -> Result<TestResponse, String> {
        let resp = self.send_streaming().await?;
        TestResponse::collect(resp).await
    }

    /// Sends and collects the whole body, failing the test on any transport error.
    pub async fn send(self) -> TestResponse {
        let what = format!("{} {}", self.method, self.url);
        match self.try_send().await {
            Ok(resp) => resp,
            Err(e) => panic!("{what} failed: {e}"),
        }
    }
}

/// Opens one HTTP/1.1 connection to `addr` and returns its sender (one connection, so tests
/// can tell connections apart, e.g. around shutdown).
pub async fn h1_connect(addr: std::net::SocketAddr) -> http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `method path` with `Authorization: Bearer key` on an existing HTTP/1.1 connection.
pub async fn send_on(
    conn: &mut http1::SendRequest<TestBody>,
    method: Method,
    path: &str,
    key: &str,
) -> TestResponse {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway")
        .header("authorization", format!("Bearer {key}"))
        .body(empty())
        .expect("request");
    tokio::time::timeout(Duration::from_secs(30), async {
        conn.ready()
            .await
            .expect("the keep-alive connection was closed");
        let resp = conn
            .send_request(req)
            .await
            .expect("request on the keep-alive connection failed");
        TestResponse::collect(resp).await.expect("body")
    })
    .await
    .expect("no response on the keep-alive connection within 30s")
}

// === TestResponse ===

/// A response with its body collected.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// Collects `resp`'s body; an error while reading it becomes `Err`.
    pub async fn collect(resp: Response<Incoming>) -> Result<TestResponse, String> {
        let (parts, body) = resp.into_parts();
        let fut = body.collect();
        let body = match tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), fut).await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(format!("body error after status {}: {e:?}", parts.status)),
            Err(_) => panic!("body not complete within {REQUEST_TIMEOUT_SECS}s"),
        };
        Ok(TestResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// The header's value as text (first value), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of the header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test with the body text otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// `Cache-Status`, or "<absent>".
    pub fn cache_status(&self) -> String {
        self.header("cache-status")
            .unwrap_or_else(|| "<absent>".into())
    }

    /// `x-request-id`; fails the test when absent or empty.
    pub fn request_id(&self) -> String {
        match self.header("x-request-id") {
            Some(id) if !id.is_empty() => id,
            _ => panic!("response without x-request-id: {}", self.describe()),
        }
    }

    /// Status, headers and (up to 2 KiB of) body, for failure messages.
    pub fn describe(&self) -> String {
        let mut body = self.text();
        if body.len() > 2048 {
            body.truncate(2048);
            body.push_str("...");
        }
        format!(
            "{} {:?} {:?}\n{}",
            self.status, self.version, self.headers, body
        )
    }

    /// Fails the test unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status: {}",
            self.describe()
        );
        self
    }

    /// Fails the test if the admin key appears anywhere in the headers or the body.
    #[track_caller]
    pub fn assert_no_admin_key(&self) {
        let secret = ADMIN_KEY.as_bytes();
        let in_body = self.body.windows(secret.len()).any(|w| w == secret);
        let in_headers = self.headers.iter().any(|(n, v)| {
            let text = String::from_utf8_lossy(v.as_bytes());
            text.contains(ADMIN_KEY) || n.as_str().contains(ADMIN_KEY)
        });
        assert!(
            !in_body && !in_headers,
            "the admin key leaked: {}",
            self.describe()
        );
    }

    /// Parses `Cache-Status` as `openai-admin-gateway; hit; ttl=N` and returns N.
    #[track_caller]
    pub fn hit_ttl(&self) -> u64 {
        let status = self.cache_status();
        let prefix = format!("{CACHE_NAME}; hit; ttl=");
        status
            .strip_prefix(&prefix)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected a cache hit, got Cache-Status {status:?}"))
    }
}

/// Fails the test unless `resp` is a gateway-made error in OpenAI's exact shape:
/// `{"error":{"message":<non-empty string>,"type":kind,"param":null,"code":code}}`,
/// `content-type: application/json`, a fresh `x-request-id`, and no admin key.
#[track_caller]
pub fn assert_openai_error(resp: &TestResponse, status: u16, kind: &str, code: &str) {
    resp.assert_status(status);
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}: {}",
        resp.describe()
    );
    let body = resp.json();
    let top = body.as_object().expect("error body is an object");
    assert_eq!(top.len(), 1, "only \"error\" at the top: {body}");
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "param", "type"],
        "error keys: {body}"
    );
    let message = err["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "message must be a non-empty string: {body}"
    );
    assert_eq!(err["type"], kind, "error.type: {body}");
    assert_eq!(err["param"], Value::Null, "error.param: {body}");
    assert_eq!(err["code"], code, "error.code: {body}");
    let id = resp.request_id();
    assert!(
        !id.starts_with("upstream-req-"),
        "gateway errors get a gateway id, got {id}"
    );
    resp.assert_no_admin_key();
}

// === rate-limit headers ===

/// Parses OpenAI's `x-ratelimit-reset-*` format (`20ms`, `1.5s`, `6m0s`).
pub fn parse_reset(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(Duration::from_millis);
    }
    let s = s.strip_suffix('s')?;
    match s.split_once('m') {
        Some((m, sec)) => {
            let m: u64 = m.parse().ok()?;
            let sec: f64 = sec.parse().ok()?;
            Some(Duration::from_secs(m * 60) + Duration::from_secs_f64(sec))
        }
        None => s.parse::<f64>().ok().map(Duration::from_secs_f64),
    }
}

/// The three `x-ratelimit-*-requests` headers of `resp` as (limit, remaining, reset),
/// failing the test when one is missing or malformed.
#[track_caller]
pub fn ratelimit_headers(resp: &TestResponse) -> (u64, u64, Duration) {
    let get = |name: &str| {
        resp.header(name)
            .unwrap_or_else(|| panic!("{name} missing: {}", resp.describe()))
    };
    let limit = get("x-ratelimit-limit-requests");
    let remaining = get("x-ratelimit-remaining-requests");
    let reset = get("x-ratelimit-reset-requests");
    let limit = limit
        .parse()
        .unwrap_or_else(|_| panic!("x-ratelimit-limit-requests {limit:?}"));
    let remaining = remaining
        .parse()
        .unwrap_or_else(|_| panic!("x-ratelimit-remaining-requests {remaining:?}"));
    let reset = parse_reset(&reset)
        .unwrap_or_else(|| panic!("x-ratelimit-reset-requests {reset:?} is not like 1.5s"));
    (limit, remaining, reset)
}

/// Fails the test if any `x-ratelimit-*` header is present.
#[track_caller]
pub fn assert_no_ratelimit_headers(resp: &TestResponse) {
    let found: Vec<&str> = resp
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-ratelimit-"))
        .collect();
    assert!(
        found.is_empty(),
        "unlimited client got {found:?}: {}",
        resp.describe()
    );
}
