//! `cache::directive` on arbitrary `Cache-Control` values (one per input
//! line; lines that are not a valid header value are skipped).
//!
//! Never panics, and agrees with a model over the raw bytes: `no-store` as
//! any comma-separated token (trimmed, ASCII case-insensitive) in any value
//! gives `NoStore`; otherwise `no-cache` gives `Refresh`; otherwise `Normal`.
#![no_main]

use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL};
use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::cache::{directive, Directive};

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !first.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !last.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    b
}

fn has_token(values: &[HeaderValue], token: &[u8]) -> bool {
    values.iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| trim(t).eq_ignore_ascii_case(token))
    })
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<HeaderValue> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    let mut headers = HeaderMap::new();
    for v in &values {
        headers.append(CACHE_CONTROL, v.clone());
    }
    let got = directive(&headers);
    let want = if has_token(&values, b"no-store") {
        Directive::NoStore
    } else if has_token(&values, b"no-cache") {
        Directive::Refresh
    } else {
        Directive::Normal
    };
    assert_eq!(got, want, "{values:?}");
});
