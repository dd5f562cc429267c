//! A stored user as a response: a hit, a user this request fetched, an
//! expired entry served stale.

use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};

use super::entry::CachedUser;
use super::status::{hit_status, stale_status, CACHE_STATUS};
use crate::body::{full, BoxBody};
use crate::headers::{int_value, X_REQUEST_ID};

/// A stored user as a response (no cache headers yet).
pub(super) fn stored_response(u: &CachedUser) -> Response<BoxBody> {
    let stored = Stored {
        content_type: u.content_type(),
        content_encoding: u.content_encoding(),
        date: u.date(),
    };
    stored_with(stored, u.body())
}

/// A stored user's headers, read out before its body moves.
struct Stored {
    /// The stored `content-type`.
    content_type: Option<HeaderValue>,
    /// The stored `content-encoding`.
    content_encoding: Option<HeaderValue>,
    /// The upstream's `Date`.
    date: Option<HeaderValue>,
}

/// [`stored_response`] from the headers and body of a stored user.
fn stored_with(stored: Stored, body: Bytes) -> Response<BoxBody> {
    let len = body.len() as u64;
    let mut r = Response::new(full(body));
    // Room for everything a hit gets (cache headers, request id, rate
    // limit headers) without growing the map.
    *r.headers_mut() = HeaderMap::with_capacity(8);
    let h = r.headers_mut();
    if let Some(ct) = stored.content_type {
        h.insert(CONTENT_TYPE, ct);
    }
    if let Some(ce) = stored.content_encoding {
        h.insert(CONTENT_ENCODING, ce);
    }
    // The stored response's `Date`, beside `Age` (RFC 9111 §4.2.3); hyper
    // adds its own only when there is none.
    if let Some(date) = stored.date {
        h.insert(http::header::DATE, date);
    }
    h.insert(CONTENT_LENGTH, int_value(len));
    r
}

/// A user this request fetched: the stored form, with the upstream's
/// request id (a forwarded response keeps it).
pub(super) fn fetched_response(
    u: &CachedUser,
    upstream_id: Option<HeaderValue>,
) -> Response<BoxBody> {
    let mut r = stored_response(u);
    if let Some(id) = upstream_id {
        r.headers_mut().insert(X_REQUEST_ID, id);
    }
    r
}

/// A hit: the stored bytes plus `Cache-Status: ...; hit; ttl=N` and `Age`.
/// Takes the looked-up copy, whose body moves into the response: cloning it
/// again would write the body's reference count (a line every core reading
/// this user writes) twice more.
pub fn hit_response(u: CachedUser) -> Response<BoxBody> {
    hit_response_at(u, Instant::now())
}

/// [`hit_response`] as of `now` (the time the request looked the user up).
pub fn hit_response_at(u: CachedUser, now: Instant) -> Response<BoxBody> {
    // Age floors to whole seconds; ttl is counted from the same figure so
    // that age + ttl always equals the stored TTL.
    let age = u.age_secs(now);
    let ttl = u.ttl().as_secs().saturating_sub(age);
    let (content_type, content_encoding) = (u.content_type(), u.content_encoding());
    let (body, date) = u.into_body();
    let stored = Stored {
        content_type,
        content_encoding,
        date,
    };
    let mut r = stored_with(stored, body);
    let h = r.headers_mut();
    h.insert(CACHE_STATUS, hit_status(ttl));
    h.insert(http::header::AGE, int_value(age));
    r
}

/// An expired entry as a response: its bytes, its true `Age`, and a
/// `Cache-Status` with the negative `ttl`.
pub(super) fn stale_response(
    u: &CachedUser,
    past: u64,
    fwd_status: Option<u16>,
    revalidating: bool,
) -> Response<BoxBody> {
    let mut r = stored_response(u);
    let h = r.headers_mut();
    h.insert(CACHE_STATUS, stale_status(past, fwd_status, revalidating));
    h.insert(http::header::AGE, int_value(u.age_secs(Instant::now())));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hit_response_carries_ttl_and_age() {
        let u = CachedUser::new(
            Bytes::from_static(b"{}"),
            Some(HeaderValue::from_static("application/json")),
            false,
            std::time::Duration::from_secs(300),
            None,
        )
        .backdated(std::time::Duration::from_secs(10));
        let r = hit_response(u);
        assert_eq!(
            r.headers()[CACHE_STATUS],
            "openai-admin-gateway; hit; ttl=290"
        );
        assert_eq!(r.headers()["age"], "10");
        let long = hit_status(100_000);
        assert_eq!(long, "openai-admin-gateway; hit; ttl=100000");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
    }

    #[tokio::test]
    async fn hits_and_stored_responses_keep_the_upstream_date() {
        let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        let u = CachedUser::new(
            Bytes::from_static(b"{\"id\":\"u\"}"),
            None,
            false,
            Duration::from_secs(300),
            Some(&date),
        )
        .backdated(Duration::from_secs(10));
        assert_eq!(u.body().as_ref(), b"{\"id\":\"u\"}");
        assert_eq!(u.thread_copy().date(), Some(date.clone()));
        let stored = stored_response(&u);
        assert_eq!(stored.headers()[http::header::DATE], date);
        let r = hit_response(u);
        assert_eq!(r.headers()[http::header::DATE], date);
        assert_eq!(r.headers()["age"], "10");
        assert_eq!(r.headers()[CONTENT_LENGTH], "10");
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .expect("body");
        assert_eq!(body.to_bytes().as_ref(), b"{\"id\":\"u\"}");
        // Without one, none is made up here (hyper adds the current date).
        let plain = CachedUser::new(
            Bytes::from_static(b"{}"),
            None,
            false,
            Duration::from_secs(1),
            None,
        );
        assert!(hit_response(plain)
            .headers()
            .get(http::header::DATE)
            .is_none());
    }
}
