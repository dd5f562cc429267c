//! Helpers for the "central control" tests (rate limits, scopes, reload, upstream cap, audit)
//! that `tests/support` does not offer. The real binary with its pid (for SIGHUP/SIGTERM) is
//! `support::process::GatewayProcess`. Each test crate declares `mod support;` and
//! `mod support_ext;` and uses a subset, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request};
use hyper::client::conn::http1;

use crate::support::body::TestBody;
use crate::support::client::{req, TestResponse};

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

// === one keep-alive connection ===

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
        .body(crate::support::body::empty())
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

// === log text ===

/// `text` without ANSI escape sequences (the text log format colours field names).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// True when a text-format log `line` holds `key=value` or `key="value"`, or a JSON-format
/// line holds `"key":value` or `"key":"value"`.
pub fn log_field(line: &str, key: &str, value: &str) -> bool {
    [
        format!("{key}={value}"),
        format!("{key}=\"{value}\""),
        format!("\"{key}\":{value}"),
        format!("\"{key}\":\"{value}\""),
    ]
    .iter()
    .any(|form| {
        let bytes = line.as_bytes();
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        line.match_indices(form.as_str()).any(|(i, m)| {
            let end = i + m.len();
            let before_ok = i == 0 || !word(bytes[i - 1]);
            let after_ok = end == line.len() || !word(bytes[end]);
            before_ok && after_ok
        })
    })
}
