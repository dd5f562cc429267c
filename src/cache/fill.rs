//! A cache fill: one upstream retrieve as the gateway's own request, and
//! the check that decides whether what came back is the user to store.
//!
//! The request carries a fixed header set ([`fill_headers`]), so no
//! client's headers shape what other clients are served. The whole fill
//! (headers and body) has one deadline, `upstream.timeout_ms`. Only a 200
//! that parses as an `organization.user` with the requested id, within
//! `cache.max_body_bytes` and not compressed, is stored, as the upstream's
//! bytes.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::route::{Settings, UserRoute};
use super::store::CachedUser;
use crate::body::{empty, full, prefixed, BoxBody};
use crate::error::{GatewayError, Result};
use crate::headers::X_REQUEST_ID;

/// What a fetch got that is not a user to store: the answer for the
/// request that made it (the upstream's response, streamed on when large or
/// broken off) or the failure to report.
pub(super) type Unstored = Result<Response<BoxBody>>;

/// How a shared fill ended when it stored nothing, as every request that
/// waited on it sees it.
#[derive(Debug)]
pub(super) enum FillFailed {
    /// No answer: the upstream was unreachable, slow past the deadline,
    /// overloaded or refused the key. Shared: nobody's headers shaped it.
    Error(GatewayError),
    /// The upstream answered something that is not the user, with this
    /// status. The request that fetched it answers with it; a waiter
    /// fetches for itself (or serves a stale entry, when allowed).
    Answer(StatusCode),
}

impl UserRoute {
    /// The shared fill: a [`fetch`](Self::fetch) whose user is stored and
    /// shared; anything else is kept in `mine` for the request that ran it
    /// (only it, the leader, runs this), and what the waiters learn is a
    /// [`FillFailed`].
    pub(super) async fn fill(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
        mine: &mut Option<Response<BoxBody>>,
    ) -> std::result::Result<CachedUser, FillFailed> {
        match self.fetch(headers, rest, id, upstream_id).await {
            Ok(u) => Ok(u),
            Err(Err(e)) => Err(FillFailed::Error(e)),
            Err(Ok(answer)) => {
                let status = answer.status();
                *mine = Some(answer);
                Err(FillFailed::Answer(status))
            }
        }
    }

    /// One upstream retrieve, as the gateway's own request, done within
    /// `upstream.timeout_ms` from start to the last byte read (504 for a
    /// fill that stalls). One deadline bounds the whole fill: the exchange
    /// waits for its slot and headers until it (a headers timeout, counted
    /// by the exchange), the body is read until it (a body timeout). The
    /// body is read up to `cache.max_body_bytes`; a 200 that is the user
    /// asked for comes back as a [`CachedUser`], anything else as this
    /// request's answer. Records the upstream's request id for the caller.
    pub(super) async fn fetch(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
    ) -> std::result::Result<CachedUser, Unstored> {
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let resp = self
            .upstream
            .send_by(deadline, Method::GET, rest, fill_headers(headers), empty())
            .await
            .map_err(Err)?;
        match tokio::time::timeout_at(deadline, self.read_fill(resp, id, upstream_id)).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics
                    .upstream_timeout(crate::metrics::TimeoutPhase::Body);
                Err(Err(GatewayError::UpstreamTimeout))
            }
        }
    }

    /// Reads a fill's response: the user to store, or this request's answer.
    async fn read_fill(
        &self,
        resp: Response<BoxBody>,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
    ) -> std::result::Result<CachedUser, Unstored> {
        // Copy what is needed instead of holding the reload guard across awaits.
        let Settings {
            max_body_bytes: max,
            ttl,
            ..
        } = **self.settings.load();
        let (parts, mut body) = resp.into_parts();
        *upstream_id = parts.headers.get(X_REQUEST_ID).cloned();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(Ok(Response::from_parts(parts, body)));
        }
        let mut buf = BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // Nothing has been sent yet: a broken answer is no answer.
                // Relayed as a 200, hyper would cut the connection before its
                // head and the client would get nothing at all.
                let broke = "upstream body broke off before its end";
                return Err(Err(GatewayError::UpstreamUnavailable(broke.into())));
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Err(Ok(Response::from_parts(
                    parts,
                    prefixed(buf.freeze(), body),
                )));
            }
        }
        // Stored bodies get an exact-size allocation (the buffer may have grown
        // past the body when no content-length was sent).
        let bytes = if buf.capacity() > buf.len() + 64 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        if parts.status == StatusCode::OK && is_user(&bytes, id) && !encoded(&parts.headers) {
            Ok(CachedUser::new(
                bytes,
                parts.headers.get(CONTENT_TYPE).map(own),
                parts.headers.contains_key(CONTENT_ENCODING),
                ttl,
            )
            .with_date(parts.headers.get(http::header::DATE)))
        } else {
            Err(Ok(Response::from_parts(parts, full(bytes))))
        }
    }
}

/// The gateway's user agent on its own requests.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("openai-admin-gateway/", env!("CARGO_PKG_VERSION")));

/// The headers of a cache fill: fixed, so no client's headers shape what
/// other clients are served. The upstream adds the admin key. The client's
/// `x-request-id` rides along when it is a plain token (for tracing).
pub fn fill_headers(client: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(4);
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    h.insert(http::header::USER_AGENT, USER_AGENT);
    if let Some(id) = client.get(X_REQUEST_ID).filter(|v| valid_request_id(v)) {
        h.insert(X_REQUEST_ID, id.clone());
    }
    h
}

/// 1 to 128 visible ASCII characters.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A header value that owns its bytes. Values parsed by hyper are slices of
/// the connection's read buffer; storing one would pin that whole buffer
/// (kilobytes) for the life of the cache entry. The usual JSON type is a
/// static and costs nothing.
fn own(v: &HeaderValue) -> HeaderValue {
    if v == "application/json" {
        return HeaderValue::from_static("application/json");
    }
    HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone())
}

/// A body we cannot check (compressed despite `identity`) is never stored.
fn encoded(h: &HeaderMap) -> bool {
    h.get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The fields of `User` (OpenAPI `components.schemas.User`) that decide
/// whether a body is one, with their types.
#[derive(Deserialize)]
struct UserProbe<'a> {
    #[serde(borrow)]
    object: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(default)]
    added_at: Option<i64>,
}

/// True when `body` is an `organization.user` whose id is `user_id`.
pub fn is_user(body: &[u8], user_id: &str) -> bool {
    match serde_json::from_slice::<UserProbe<'_>>(body) {
        // email and added_at are read only to reject bodies whose types are wrong.
        Ok(u) => {
            let _ = (u.email, u.added_at);
            u.object == "organization.user" && u.id == user_id
        }
        Err(_) => false,
    }
}
