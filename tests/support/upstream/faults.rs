//! Failures a test injects into the fake ([`Fault`]), when a flapping one applies ([`Flap`]),
//! how a refused admin key is answered ([`KeyRefusal`]), and the rules that match them to
//! requests (first match wins, used up after `times`).

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::{Method, StatusCode};
use serde_json::json;

use super::super::ADMIN_KEY;
use super::reply::{error, json_bytes, Resp};
use super::State;

// === Fault ===

/// A failure to inject into matching requests. Build with the methods below.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Wait this long before sending response headers.
    pub delay: Option<Duration>,
    /// Wait this long before handling the request at all (a write applied late).
    pub apply_after: Option<Duration>,
    /// Wait for this named gate to open before sending response headers.
    pub gate: Option<String>,
    /// Answer with this status and an OpenAI error body (429 adds `retry-after`).
    pub status: Option<u16>,
    /// What a 429 says about when to retry (None: `retry-after: 7`, `retry-after-ms: 7000`).
    pub retry_headers: Option<RetryAfter>,
    /// Refuse the admin key the way OpenAI does (takes precedence over `status`).
    pub refusal: Option<KeyRefusal>,
    /// Close the connection without any response.
    pub reset_before_headers: bool,
    /// Send headers (with the full `content-length`) and half the body, then break off.
    pub drop_mid_body: bool,
    /// Send headers (with the full `content-length`) and half the body, then send nothing
    /// more until this named gate opens (a body that stalls).
    pub stall_mid_body: Option<String>,
    /// Apply only in every other `period` since the fault was built (the first period
    /// fails, the next answers normally, ...): an upstream that flaps. While it does not
    /// apply the rule is skipped (a later rule may match) and its `times` is not used up.
    pub flap: Option<Flap>,
    /// Replace the body with truncated JSON (status stays).
    pub malformed_json: bool,
    /// Rewrite the JSON body's `id` to another user's.
    pub wrong_id: bool,
    /// Rewrite the JSON body's `object` to something that is not `organization.user`.
    pub wrong_object: bool,
    /// Pad the JSON body (with an extra string field) to exactly this many bytes.
    pub pad_to: Option<usize>,
    /// Gzip the body and send `content-encoding: gzip`.
    pub gzip: bool,
    /// Use this `content-type` instead of `application/json`.
    pub content_type: Option<String>,
    /// Apply to this many matching requests, then disappear (None: forever).
    pub times: Option<usize>,
}

impl Fault {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay = Some(Duration::from_millis(ms));
        self
    }
    pub fn apply_after_ms(mut self, ms: u64) -> Self {
        self.apply_after = Some(Duration::from_millis(ms));
        self
    }
    pub fn gate(mut self, name: &str) -> Self {
        self.gate = Some(name.to_string());
        self
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    /// A 429 whose retry headers are `how`.
    pub fn too_many(mut self, how: RetryAfter) -> Self {
        self.status = Some(429);
        self.retry_headers = Some(how);
        self
    }
    pub fn refuse_key(mut self, how: KeyRefusal) -> Self {
        self.refusal = Some(how);
        self
    }
    pub fn reset_before_headers(mut self) -> Self {
        self.reset_before_headers = true;
        self
    }
    pub fn drop_mid_body(mut self) -> Self {
        self.drop_mid_body = true;
        self
    }
    pub fn stall_mid_body(mut self, gate: &str) -> Self {
        self.stall_mid_body = Some(gate.to_string());
        self
    }
    /// Flaps from now on: applies for `period`, then not for `period`, and so on.
    pub fn flapping(mut self, period: Duration) -> Self {
        self.flap = Some(Flap {
            since: std::time::Instant::now(),
            period,
        });
        self
    }
    pub fn malformed_json(mut self) -> Self {
        self.malformed_json = true;
        self
    }
    pub fn wrong_id(mut self) -> Self {
        self.wrong_id = true;
        self
    }
    pub fn wrong_object(mut self) -> Self {
        self.wrong_object = true;
        self
    }
    pub fn pad_to(mut self, bytes: usize) -> Self {
        self.pad_to = Some(bytes);
        self
    }
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }
    pub fn content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_string());
        self
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// The retry headers of a scripted 429 ([`Fault::too_many`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `retry-after: N` (whole seconds) only.
    Seconds(u64),
    /// `retry-after-ms: N` only.
    Millis(u64),
    /// `retry-after: <HTTP date>`, this long from when the 429 is sent (rounded up to
    /// the next whole second, as an HTTP date has no finer unit).
    Date(Duration),
    /// `retry-after: S` and `retry-after-ms: MS` (the gateway's pause follows the ms).
    Both(u64, u64),
    /// No retry header at all.
    Absent,
}

impl RetryAfter {
    /// The headers it stands for, as of now.
    fn headers(self) -> Vec<(&'static str, String)> {
        match self {
            Self::Seconds(s) => vec![("retry-after", s.to_string())],
            Self::Millis(ms) => vec![("retry-after-ms", ms.to_string())],
            Self::Date(d) => {
                let at = std::time::SystemTime::now() + d + Duration::from_millis(999);
                vec![("retry-after", httpdate::fmt_http_date(at))]
            }
            Self::Both(s, ms) => vec![
                ("retry-after", s.to_string()),
                ("retry-after-ms", ms.to_string()),
            ],
            Self::Absent => Vec::new(),
        }
    }
}

/// When a [`Fault::flapping`] fault applies.
#[derive(Clone, Copy, Debug)]
pub struct Flap {
    /// When the first (failing) period began.
    pub since: std::time::Instant,
    /// Length of each failing and each healthy period.
    pub period: Duration,
}

impl Flap {
    /// True during the failing periods (the 1st, 3rd, ...).
    pub fn failing_now(&self) -> bool {
        let n = self.since.elapsed().as_nanos() / self.period.as_nanos().max(1);
        n.is_multiple_of(2)
    }
}

/// How [`Fault::refuse_key`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// 401 `invalid_api_key`, "Incorrect API key provided: sk-admin-****…6789. You can find
    /// your API key at …", as OpenAI answers a revoked key.
    Revoked,
    /// 403 whose message quotes the key masked (no "API key" phrase: only the key's own
    /// characters give it away).
    ForbiddenNamingKey,
    /// 403 about a missing permission that names no key (relayed by the gateway).
    ForbiddenWithoutKey,
}

impl KeyRefusal {
    /// The status and exact body the fake answers with.
    pub fn response(self) -> (StatusCode, Bytes) {
        let masked = masked_admin_key();
        let (status, message, code) = match self {
            Self::Revoked => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Incorrect API key provided: {masked}. You can find your API key at \
                     https://platform.openai.com/account/api-keys."
                ),
                "invalid_api_key",
            ),
            Self::ForbiddenNamingKey => (
                StatusCode::FORBIDDEN,
                format!("Key {masked} has been disabled for organization org-test."),
                "access_denied",
            ),
            Self::ForbiddenWithoutKey => (
                StatusCode::FORBIDDEN,
                "You have insufficient permissions for this operation. Missing scopes: \
                 api.management.read. Check that you have the correct role in your organization."
                    .to_string(),
                "insufficient_permissions",
            ),
        };
        let body = json!({"error": {"message": message, "type": "invalid_request_error",
            "param": null, "code": code}});
        (status, json_bytes(&body))
    }
}

/// [`ADMIN_KEY`] masked as OpenAI quotes a key: its `sk-admin-` prefix, stars, and its last
/// four characters.
pub fn masked_admin_key() -> String {
    let prefix = "sk-admin-";
    let last4 = &ADMIN_KEY[ADMIN_KEY.len() - 4..];
    let stars = "*".repeat(ADMIN_KEY.len() - prefix.len() - 4);
    format!("{prefix}{stars}{last4}")
}

/// One injected fault and the requests it applies to.
pub(super) struct FaultRule {
    /// The method it matches (None: any).
    pub(super) method: Option<Method>,
    /// The exact path without query it matches (None: any).
    pub(super) path: Option<String>,
    /// What to do to a matching request.
    pub(super) fault: Fault,
}

impl State {
    /// The first fault that applies to `method path` now, used up by one if it counts.
    pub(super) fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let pos = faults.iter().position(|r| {
            r.method.as_ref().is_none_or(|m| m == method)
                && r.path.as_deref().is_none_or(|p| p == path)
                && r.fault.flap.is_none_or(|f| f.failing_now())
        })?;
        let fault = faults[pos].fault.clone();
        if let Some(n) = &mut faults[pos].fault.times {
            *n -= 1;
            if *n == 0 {
                faults.remove(pos);
            }
        }
        Some(fault)
    }
}

pub(super) fn status_error(status: u16, retry_after: Option<RetryAfter>) -> Resp {
    let status = StatusCode::from_u16(status).expect("fault status");
    let mut resp = error(status, "injected failure", "injected");
    if status == StatusCode::TOO_MANY_REQUESTS {
        let headers = match retry_after {
            Some(how) => how.headers(),
            None => vec![
                ("retry-after", "7".into()),
                ("retry-after-ms", "7000".into()),
            ],
        };
        for (name, value) in headers {
            let value = HeaderValue::from_str(&value).expect("header value");
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}
