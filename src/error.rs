//! Gateway-made errors and their one mapping to HTTP.
//!
//! Every error the gateway answers itself is a [`GatewayError`]. [`GatewayError::status`]
//! and [`GatewayError::kind`] are the single place that decides status, `type`
//! and `code`; the body is OpenAI's `{"error":{message,type,param,code}}` so the
//! official SDKs raise their usual exception classes. Messages are fixed
//! strings: no internal detail (and never a key) reaches a client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{full, BoxBody, BoxError};

/// Crate-wide result alias.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// Why an upstream exchange or a client body failed, for logs and access
/// lines (never for a client). Shared, so one failure can be handed to
/// every waiter of a single flight as a clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl<E: Into<BoxError>> From<E> for Cause {
    fn from(e: E) -> Self {
        Self(Arc::from(e.into()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Everything the gateway can refuse or fail with.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The organization's budget (or its pause after an upstream 429) had
    /// no turn for the request in time; it was never sent upstream.
    #[error("organization's upstream budget exhausted")]
    BudgetExceeded {
        /// When a turn is expected (the pause's end, or the next turn).
        retry_after: Duration,
    },
    /// The method/path is outside the client's scope.
    #[error("request outside the client's scope")]
    Forbidden,
    /// `OpenAI-Organization` names an organization the client may not act
    /// on, or none that is configured.
    #[error("organization not allowed for the client")]
    OrganizationNotAllowed,
    /// The request body ended before its declared `content-length`.
    #[error("request body ended early")]
    IncompleteBody,
    /// The client's request body broke (a malformed chunk, a reset).
    #[error("request body broken: {0}")]
    InvalidBody(Cause),
    /// The upstream refused the admin key (401, or a 403 naming the key).
    #[error("upstream refused the admin key (status {0})")]
    UpstreamAuthFailed(u16),
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(Cause),
    /// The upstream sent no response headers in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// Too many requests are already waiting for the upstream.
    #[error("upstream concurrency limit reached")]
    UpstreamOverloaded,
}

/// What a client is told about one kind of error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type`.
    pub ty: &'static str,
    /// OpenAI's error `code`.
    pub code: &'static str,
    /// The fixed message: no internals, never a key.
    pub message: &'static str,
}

const fn row(
    status: u16,
    ty: &'static str,
    code: &'static str,
    message: &'static str,
) -> Described {
    let status = match StatusCode::from_u16(status) {
        Ok(s) => s,
        Err(_) => panic!("a row names an invalid status"),
    };
    Described {
        status,
        ty,
        code,
        message,
    }
}

const CLIENT: &str = "invalid_request_error";
const GATEWAY: &str = "gateway_error";

// === impl GatewayError ===

impl GatewayError {
    /// Everything the client is told about this error: one row per
    /// variant, the only place that decides status, `type`, `code` and
    /// message.
    pub fn describe(&self) -> Described {
        match self {
            Self::Unauthorized => row(401, CLIENT, "invalid_api_key", "Missing or incorrect API key provided for this gateway. Use a key issued by the gateway operator as the Bearer token."),
            Self::NotFound => row(404, CLIENT, "not_found", "Unknown path: requests must start with the gateway's path prefix."),
            Self::InvalidPath => row(400, CLIENT, "invalid_path", "Invalid path: '\\', '%5C', '%2F', empty segments ('//'), '.' and '..' segments (raw or encoded), control characters and broken percent-escapes are not allowed."),
            Self::MethodNotAllowed => row(405, CLIENT, "method_not_allowed", "This method is not allowed through the gateway."),
            Self::InvalidUserId => row(400, CLIENT, "invalid_user_id", "Invalid user id: at most 256 bytes."),
            Self::RateLimited { .. } => row(429, "requests", "rate_limit_exceeded", "Rate limit reached for this gateway key. Retry after the time given in the retry-after header."),
            Self::BudgetExceeded { .. } => row(429, "requests", "organization_budget_exceeded", "The organization's request budget for the OpenAI API is used up (or paused after the API answered 429). Retry after the time given in the retry-after header."),
            Self::Forbidden => row(403, CLIENT, "insufficient_scope", "This gateway key is not allowed to call this method and path."),
            Self::OrganizationNotAllowed => row(403, CLIENT, "organization_not_allowed", "The OpenAI-Organization header names an organization this gateway key may not act on."),
            Self::IncompleteBody => row(400, CLIENT, "incomplete_body", "The request body ended before its declared content-length."),
            Self::InvalidBody(_) => row(400, CLIENT, "invalid_body", "The request body could not be read (malformed or cut off by the client)."),
            Self::UpstreamAuthFailed(_) => row(502, GATEWAY, "upstream_auth_failed", "The OpenAI API refused the gateway's admin key. This is a gateway configuration problem, not a problem with your key: tell the gateway operator."),
            Self::UpstreamUnavailable(_) => row(502, GATEWAY, "upstream_unavailable", "The gateway could not get a response from the OpenAI API."),
            Self::UpstreamTimeout => row(504, GATEWAY, "upstream_timeout", "The OpenAI API did not respond in time."),
            Self::UpstreamOverloaded => row(503, GATEWAY, "upstream_overloaded", "The gateway is at its limit of concurrent upstream requests; retry shortly."),
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        self.describe().status
    }

    /// OpenAI's error `type` and `code` for this error.
    pub fn kind(&self) -> (&'static str, &'static str) {
        let d = self.describe();
        (d.ty, d.code)
    }

    /// The message shown to the client: fixed text, no internals.
    pub fn public_message(&self) -> &'static str {
        self.describe().message
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
        if let Self::RateLimited { retry_after } | Self::BudgetExceeded { retry_after } = self {
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
                GatewayError::BudgetExceeded {
                    retry_after: Duration::from_millis(2500),
                },
                429,
                "requests",
                "organization_budget_exceeded",
            ),
            (
                GatewayError::Forbidden,
                403,
                "invalid_request_error",
                "insufficient_scope",
            ),
            (
                GatewayError::OrganizationNotAllowed,
                403,
                "invalid_request_error",
                "organization_not_allowed",
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

    #[test]
    fn a_clone_shares_the_cause_for_every_waiter() {
        let e = GatewayError::UpstreamUnavailable("connection reset".into());
        let copy = e.clone();
        assert_eq!(copy.to_string(), "upstream unavailable: connection reset");
        assert_eq!(copy.describe(), e.describe());
    }

    #[test]
    fn every_code_names_one_kind_of_error() {
        let all = [
            GatewayError::Unauthorized,
            GatewayError::NotFound,
            GatewayError::InvalidPath,
            GatewayError::MethodNotAllowed,
            GatewayError::InvalidUserId,
            GatewayError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            GatewayError::BudgetExceeded {
                retry_after: Duration::from_secs(1),
            },
            GatewayError::Forbidden,
            GatewayError::OrganizationNotAllowed,
            GatewayError::IncompleteBody,
            GatewayError::InvalidBody("x".into()),
            GatewayError::UpstreamAuthFailed(401),
            GatewayError::UpstreamUnavailable("x".into()),
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamOverloaded,
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(|e| e.describe().code).collect();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            let d = e.describe();
            assert!(!d.message.is_empty());
            // Who caused it decides the class: the client 4xx, the upstream 5xx.
            assert_eq!(d.ty == "gateway_error", d.status.is_server_error(), "{e:?}");
        }
    }
}
