//! Gateway-made errors and their one mapping to HTTP.
//!
//! Every error the gateway answers itself is a [`GatewayError`]. [`GatewayError::status`]
//! and [`GatewayError::kind`] are the single place that decides status, `type`
//! and `code`; the body is OpenAI's `{"error":{message,type,param,code}}` so the
//! official SDKs raise their usual exception classes. Messages are fixed
//! strings: no internal detail (and never a key) reaches a client.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{full, BoxBody, BoxError};

/// Crate-wide result alias.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// Everything the gateway can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No `Authorization: Bearer` key, or one no client holds.
    #[error("missing or unknown client key")]
    Unauthorized,
    /// The path is outside `server.path_prefix`.
    #[error("path outside the gateway prefix")]
    NotFound,
    /// The path is not canonical: `\\`, `%5C`, `%2F`, `//`, dot segments,
    /// control characters or a broken escape.
    #[error("path is not canonical")]
    InvalidPath,
    /// `CONNECT`, or a method the Admin API does not use.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The user id in a users route is not a plain id.
    #[error("invalid user id")]
    InvalidUserId,
    /// The client is over its rate limit.
    #[error("client over its rate limit")]
    RateLimited {
        /// When the next request will be allowed.
        retry_after: Duration,
    },
    /// The method/path is outside the client's scope.
    #[error("request outside the client's scope")]
    Forbidden,
    /// The request body ended before its declared `content-length`.
    #[error("request body ended early")]
    IncompleteBody,
    /// The client's request body broke (a malformed chunk, a reset).
    #[error("request body broken: {0}")]
    InvalidBody(#[source] BoxError),
    /// The upstream refused the admin key (401, or a 403 naming the key).
    #[error("upstream refused the admin key (status {0})")]
    UpstreamAuthFailed(u16),
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(#[source] BoxError),
    /// The upstream sent no response headers in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// Too many requests are already waiting for the upstream.
    #[error("upstream concurrency limit reached")]
    UpstreamOverloaded,
}

// === impl GatewayError ===

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::InvalidPath
            | Self::InvalidUserId
            | Self::IncompleteBody
            | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamAuthFailed(_) => StatusCode::BAD_GATEWAY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamOverloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's error `type` and `code` for this error.
    pub fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthorized => ("invalid_request_error", "invalid_api_key"),
            Self::NotFound => ("invalid_request_error", "not_found"),
            Self::InvalidPath => ("invalid_request_error", "invalid_path"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            Self::InvalidBody(_) => ("invalid_request_error", "invalid_body"),
            Self::UpstreamAuthFailed(_) => ("gateway_error", "upstream_auth_failed"),
            Self::InvalidUserId => ("invalid_request_error", "invalid_user_id"),
            Self::RateLimited { .. } => ("requests", "rate_limit_exceeded"),
            Self::Forbidden => ("invalid_request_error", "insufficient_scope"),
            Self::IncompleteBody => ("invalid_request_error", "incomplete_body"),
            Self::UpstreamUnavailable(_) => ("gateway_error", "upstream_unavailable"),
            Self::UpstreamTimeout => ("gateway_error", "upstream_timeout"),
            Self::UpstreamOverloaded => ("gateway_error", "upstream_overloaded"),
        }
    }

    /// The message shown to the client: fixed text, no internals.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Unauthorized => "Missing or incorrect API key provided for this gateway. Use a key issued by the gateway operator as the Bearer token.",
            Self::NotFound => "Unknown path: requests must start with the gateway's path prefix.",
            Self::InvalidPath => "Invalid path: '\\', '%5C', '%2F', empty segments ('//'), '.' and '..' segments (raw or encoded), control characters and broken percent-escapes are not allowed.",
            Self::MethodNotAllowed => "This method is not allowed through the gateway.",
            Self::InvalidBody(_) => "The request body could not be read (malformed or cut off by the client).",
            Self::UpstreamAuthFailed(_) => "The OpenAI API refused the gateway's admin key. This is a gateway configuration problem, not a problem with your key: tell the gateway operator.",
            Self::InvalidUserId => "Invalid user id: at most 256 bytes.",
            Self::RateLimited { .. } => "Rate limit reached for this gateway key. Retry after the time given in the retry-after header.",
            Self::Forbidden => "This gateway key is not allowed to call this method and path.",
            Self::IncompleteBody => "The request body ended before its declared content-length.",
            Self::UpstreamUnavailable(_) => "The gateway could not get a response from the OpenAI API.",
            Self::UpstreamTimeout => "The OpenAI API did not respond in time.",
            Self::UpstreamOverloaded => "The gateway is at its limit of concurrent upstream requests; retry shortly.",
        }
    }

    /// A copy without the source, for sharing one failure among waiters.
    pub fn duplicate(&self) -> GatewayError {
        match self {
            Self::Unauthorized => Self::Unauthorized,
            Self::NotFound => Self::NotFound,
            Self::InvalidPath => Self::InvalidPath,
            Self::MethodNotAllowed => Self::MethodNotAllowed,
            Self::InvalidBody(e) => Self::InvalidBody(e.to_string().into()),
            Self::UpstreamAuthFailed(s) => Self::UpstreamAuthFailed(*s),
            Self::InvalidUserId => Self::InvalidUserId,
            Self::RateLimited { retry_after } => Self::RateLimited {
                retry_after: *retry_after,
            },
            Self::Forbidden => Self::Forbidden,
            Self::IncompleteBody => Self::IncompleteBody,
            Self::UpstreamUnavailable(e) => Self::UpstreamUnavailable(e.to_string().into()),
            Self::UpstreamTimeout => Self::UpstreamTimeout,
            Self::UpstreamOverloaded => Self::UpstreamOverloaded,
        }
    }

    /// The JSON body in OpenAI's error shape.
    pub fn body(&self) -> Bytes {
        let (ty, code) = self.kind();
        let v = serde_json::json!({
            "error": {
                "message": self.public_message(),
                "type": ty,
                "param": null,
                "code": code,
            }
        });
        Bytes::from(v.to_string())
    }

    /// The full response for this error (the caller adds `x-request-id`).
    pub fn into_response(self) -> Response<BoxBody> {
        let mut resp = Response::new(full(self.body()));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Self::RateLimited { retry_after } = self {
            let (secs, ms) = retry_after_values(retry_after);
            resp.headers_mut().insert(RETRY_AFTER, secs.into());
            resp.headers_mut().insert("retry-after-ms", ms.into());
        }
        resp
    }
}

/// `retry-after` in whole seconds (rounded up, at least 1) and `retry-after-ms`.
pub fn retry_after_values(d: Duration) -> (u64, u64) {
    // Round up: a client that waits exactly the advertised time must not
    // arrive early.
    let ms = d.as_nanos().div_ceil(1_000_000).max(1) as u64;
    (ms.div_ceil(1000).max(1), ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_kind_mapping_is_pinned() {
        let cases: Vec<(GatewayError, u16, &str, &str)> = vec![
            (
                GatewayError::Unauthorized,
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                GatewayError::NotFound,
                404,
                "invalid_request_error",
                "not_found",
            ),
            (
                GatewayError::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                429,
                "requests",
                "rate_limit_exceeded",
            ),
            (
                GatewayError::Forbidden,
                403,
                "invalid_request_error",
                "insufficient_scope",
            ),
            (
                GatewayError::InvalidUserId,
                400,
                "invalid_request_error",
                "invalid_user_id",
            ),
            (
                GatewayError::UpstreamUnavailable("x".into()),
                502,
                "gateway_error",
                "upstream_unavailable",
            ),
            (
                GatewayError::MethodNotAllowed,
                405,
                "invalid_request_error",
                "method_not_allowed",
            ),
            (
                GatewayError::InvalidBody("x".into()),
                400,
                "invalid_request_error",
                "invalid_body",
            ),
            (
                GatewayError::UpstreamAuthFailed(401),
                502,
                "gateway_error",
                "upstream_auth_failed",
            ),
            (
                GatewayError::UpstreamTimeout,
                504,
                "gateway_error",
                "upstream_timeout",
            ),
        ];
        for (e, status, ty, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["error"]["type"], ty);
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["param"].is_null());
            assert!(v["error"]["message"].is_string());
        }
    }

    #[test]
    fn upstream_detail_never_reaches_the_body() {
        let e = GatewayError::UpstreamUnavailable("connect to 10.0.0.1 failed".into());
        assert!(!String::from_utf8_lossy(&e.body()).contains("10.0.0.1"));
    }

    #[test]
    fn rate_limited_response_has_retry_headers() {
        let r = GatewayError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["retry-after-ms"], "1200");
        assert_eq!(retry_after_values(Duration::from_millis(10)), (1, 10));
    }
}
