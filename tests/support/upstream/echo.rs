//! The echo route: any request the fake has no route for is answered with a JSON report of
//! what arrived (method, path, version, headers with the admin key redacted, body).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::super::ADMIN_KEY;
use super::reply::{error, json_response, Resp};
use super::State;

/// What the echo route reports instead of the admin key (so the echo never leaks it).
pub const REDACTED_ADMIN_AUTH: &str = "Bearer <the-admin-key>";

pub(super) async fn echo(state: &Arc<State>, index: usize, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("request body broke off: {e}");
            return error(StatusCode::BAD_REQUEST, &msg, "body_broken");
        }
    };
    state.requests.lock().unwrap()[index].body = Some(body.clone());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(gate) = header("x-fake-gate") {
        state.gate(gate).wait().await;
    }
    if let Some(ms) = header("x-fake-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = header("x-fake-status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let report = echo_report(&parts, &body);
    let mut resp = json_response(status, &report);
    let headers = resp.headers_mut();
    headers.insert(
        "x-echo-method",
        HeaderValue::from_str(parts.method.as_str()).unwrap(),
    );
    headers.insert("x-fake-response", HeaderValue::from_static("yes"));
    headers.append("x-fake-multi", HeaderValue::from_static("one"));
    headers.append("x-fake-multi", HeaderValue::from_static("two"));
    if header("x-fake-hop-response").is_some() {
        add_response_hop_headers(headers);
    }
    if parts.method == Method::HEAD {
        *resp.body_mut() = super::super::body::empty();
    }
    resp
}

/// Hop-by-hop headers on a response: none of them may reach the gateway's client.
fn add_response_hop_headers(headers: &mut HeaderMap) {
    let pairs = [
        ("connection", "x-resp-hop"),
        ("x-resp-hop", "must-not-pass"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic realm=\"upstream\""),
    ];
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

pub(super) fn echo_report(parts: &http::request::Parts, body: &Bytes) -> Value {
    let admin_auth = format!("Bearer {ADMIN_KEY}");
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = if value.as_bytes() == admin_auth.as_bytes() {
                REDACTED_ADMIN_AUTH.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            json!([name.as_str(), value])
        })
        .collect();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    json!({
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_hex": hex(body),
        "body_len": body.len(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
