//! A cache fill: one upstream retrieve as the gateway's own request, and
//! the check that decides whether what came back is the user to store.
//!
//! The request carries a fixed header set ([`fill_headers`]), so no
//! client's headers shape what other clients are served. The whole fill
//! (headers and body) has one deadline, `upstream.timeout_ms`. Only a 200
//! that parses as an `organization.user` with the requested id, within
//! `cache.max_body_bytes` and not compressed, is stored, as the upstream's
//! bytes.
//!
//! [`Filler`] holds what a fill needs (the upstream, metrics, the live
//! settings) and returns what it got by value: a [`Fetched`] user, or this
//! request's answer ([`Unstored`]). For a shared fill it also splits that
//! into what the waiters see ([`FillFailed`]) and what the request that
//! ran it keeps ([`Kept`]).

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::entry::CachedUser;
use super::response::fetched_response;
use super::settings::Settings;
use crate::body::{empty, full, prefixed, BoxBody};
use crate::error::{GatewayError, Result};
use crate::headers::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::upstream::{Caller, Upstream};

/// A user a fetch got, to store.
#[derive(Debug)]
pub(super) struct Fetched {
    /// The user, as it is stored.
    user: CachedUser,
    /// The upstream's `x-request-id` (the response of the request that
    /// fetched it keeps it, as a forwarded response would).
    upstream_id: Option<HeaderValue>,
}

impl Fetched {
    /// The answer for the request that fetched it, and the user to store.
    pub(super) fn answer(self) -> (Response<BoxBody>, CachedUser) {
        let Self { user, upstream_id } = self;
        (fetched_response(&user, upstream_id), user)
    }
}

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

/// What the request that ran a shared fill keeps for itself: the requests
/// that waited on it never see it.
#[derive(Debug)]
pub(super) enum Kept {
    /// The user was stored; the upstream's `x-request-id` with it.
    UpstreamId(Option<HeaderValue>),
    /// The upstream's answer, not a user: this request answers with it.
    Answer(Response<BoxBody>),
    /// No answer: the error every request shares.
    Nothing,
}

impl Kept {
    /// The upstream's request id of a stored user's response.
    pub(super) fn upstream_id(self) -> Option<HeaderValue> {
        match self {
            Self::UpstreamId(id) => id,
            Self::Answer(_) | Self::Nothing => None,
        }
    }
}

/// Fetches users from the upstream for the cache: everything a fill needs
/// and nothing else of the route. Cheap to share (its parts are `Arc`s).
#[derive(Debug)]
pub(super) struct Filler {
    /// Where users are fetched; it adds the admin key.
    upstream: Arc<Upstream>,
    /// Counts a body that stalls past the deadline.
    metrics: Arc<Metrics>,
    /// The body bound and the TTL to store with, shared with the route
    /// (reloads replace them) and read when an answer's headers arrive.
    settings: Arc<ArcSwap<Settings>>,
}

impl Filler {
    /// True while the organization is paused after an upstream 429: a
    /// refetch would only wait (and most likely be refused).
    pub(super) fn paused(&self, caller: &Caller) -> bool {
        self.upstream
            .budgets()
            .get(caller.org().name())
            .is_some_and(|b| b.paused().is_some())
    }

    /// A filler over `upstream` with the route's live `settings`.
    pub(super) fn new(
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        settings: Arc<ArcSwap<Settings>>,
    ) -> Self {
        Self {
            upstream,
            metrics,
            settings,
        }
    }

    /// The shared fill: a [`fetch`](Self::fetch) split into what every
    /// request waiting on it sees (the user to store, or a [`FillFailed`])
    /// and what the request that ran it keeps ([`Kept`]).
    pub(super) async fn fill(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
    ) -> (std::result::Result<CachedUser, FillFailed>, Kept) {
        match self.fetch(caller, headers, rest, id).await {
            Ok(Fetched { user, upstream_id }) => (Ok(user), Kept::UpstreamId(upstream_id)),
            Err(Err(e)) => (Err(FillFailed::Error(e)), Kept::Nothing),
            Err(Ok(answer)) => (
                Err(FillFailed::Answer(answer.status())),
                Kept::Answer(answer),
            ),
        }
    }

    /// One upstream retrieve, as the gateway's own request, done within
    /// `upstream.timeout_ms` from start to the last byte read (504 for a
    /// fill that stalls). One deadline bounds the whole fill: the exchange
    /// waits for its slot and headers until it (a headers timeout, counted
    /// by the exchange), the body is read until it (a body timeout). The
    /// body is read up to `cache.max_body_bytes`; a 200 that is the user
    /// asked for comes back as [`Fetched`], anything else as this
    /// request's answer.
    pub(super) async fn fetch(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
    ) -> std::result::Result<Fetched, Unstored> {
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let resp = self
            .upstream
            .send_by(
                caller,
                deadline,
                Method::GET,
                rest,
                fill_headers(headers),
                empty(),
            )
            .await
            .map_err(Err)?;
        match tokio::time::timeout_at(deadline, self.read_fill(resp, id)).await {
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
    ) -> std::result::Result<Fetched, Unstored> {
        // Copy what is needed instead of holding the reload guard across awaits.
        let Settings {
            max_body_bytes: max,
            ttl,
            ..
        } = **self.settings.load();
        let (parts, mut body) = resp.into_parts();
        let upstream_id = parts.headers.get(X_REQUEST_ID).cloned();
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
            let user = CachedUser::new(
                bytes,
                parts.headers.get(CONTENT_TYPE).map(own),
                parts.headers.contains_key(CONTENT_ENCODING),
                ttl,
                parts.headers.get(http::header::DATE),
            );
            Ok(Fetched { user, upstream_id })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_bodies_are_recognised() {
        let ok = br#"{"object":"organization.user","id":"user_abc","name":"A","email":"a@x","role":"owner","added_at":1711471533}"#;
        assert!(is_user(ok, "user_abc"));
        assert!(!is_user(ok, "user_other"), "wrong id");
        assert!(!is_user(
            br#"{"object":"organization.user.deleted","id":"user_abc"}"#,
            "user_abc"
        ));
        assert!(
            !is_user(
                br#"{"object":"organization.user","id":"user_abc""#,
                "user_abc"
            ),
            "truncated"
        );
        assert!(
            !is_user(
                br#"{"object":"organization.user","id":"user_abc","added_at":"x"}"#,
                "user_abc"
            ),
            "bad type"
        );
        assert!(!is_user(b"[]", "user_abc"));
        assert!(
            is_user(
                br#"{"object":"organization.user","id":"user\u005fabc"}"#,
                "user_abc"
            ),
            "escaped id"
        );
    }
}
