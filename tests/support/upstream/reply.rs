//! What every route of the fake answers with: JSON bodies (pretty-printed), OpenAI's error
//! shape, and the query parameters a route reads.

use std::collections::HashMap;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::super::body::{full, TestBody};

pub(super) type Resp = Response<TestBody>;

/// Pretty-printed, so byte-for-byte comparisons notice any re-serialization.
pub(super) fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("serialize"))
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(json_bytes(value)))
        .expect("response")
}

pub(super) fn error(status: StatusCode, message: &str, code: &str) -> Resp {
    let kind = match status.as_u16() {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    json_response(status, &body)
}

pub(super) fn not_allowed() -> Resp {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "method_not_allowed",
    )
}

pub(super) fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

pub(super) fn param<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    default: T,
) -> T {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
