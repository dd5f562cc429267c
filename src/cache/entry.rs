//! A stored user and its clock: the upstream's bytes (its `Date` kept in
//! front of the body), what a hit needs to answer, and when it was stored.
//! Kept small: a million of them may be held, inline in moka's entries.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// A stored `OrganizationUser` response: the upstream's bytes and what a
/// hit needs to answer, kept small because a million of them may be held
/// (the value lives inline in moka's entry; no allocation of its own).
#[derive(Debug, Clone)]
pub struct CachedUser {
    /// The upstream's `Date` (its first `date_len` bytes), then the
    /// upstream body, byte for byte: one allocation, no room in the entry.
    body: Bytes,
    /// When it was stored, in ms on the process clock ([`clock_ms`]).
    stored_ms: u64,
    /// How long it is served (the TTL in force when it was stored).
    ttl_secs: u32,
    /// The upstream said `content-encoding: identity` (no other encoding
    /// is ever stored: a compressed body cannot be checked).
    identity: bool,
    /// Length of the upstream's `Date` at the front of `body` (0: none). A
    /// hit sends it again beside `Age` (RFC 9111 §4.2.3).
    date_len: u8,
    /// The upstream `content-type`.
    content_type: ContentType,
}

impl CachedUser {
    /// A copy whose bytes this thread owns (for the per-thread front): its
    /// clones then write reference counts no other core touches.
    pub(super) fn thread_copy(&self) -> Self {
        let content_type = match &self.content_type {
            ContentType::Other(v) => match HeaderValue::from_bytes(v.as_bytes()) {
                Ok(v) => ContentType::Other(Arc::new(v)),
                Err(_) => ContentType::Other(v.clone()),
            },
            other => other.clone(),
        };
        Self {
            body: Bytes::copy_from_slice(&self.body),
            content_type,
            ..*self
        }
    }
}

/// A stored `content-type`: the usual value costs nothing.
#[derive(Debug, Clone)]
enum ContentType {
    Absent,
    Json,
    Other(Arc<HeaderValue>),
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A compact timestamp for entries: milliseconds since the first call,
/// plus an offset that leaves room to backdate.
fn clock_ms(now: Instant) -> u64 {
    const OFFSET_MS: u64 = 1 << 40;
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    OFFSET_MS + now.saturating_duration_since(base).as_millis() as u64
}

impl CachedUser {
    /// A user response stored now. Header values given here must own their
    /// bytes (see `fill`'s `own`): they live as long as the entry.
    pub fn new(
        body: Bytes,
        content_type: Option<HeaderValue>,
        identity: bool,
        ttl: Duration,
    ) -> Self {
        let content_type = match content_type {
            None => ContentType::Absent,
            Some(v) if v == JSON => ContentType::Json,
            Some(v) => ContentType::Other(Arc::new(v)),
        };
        Self {
            body,
            stored_ms: clock_ms(Instant::now()),
            ttl_secs: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
            identity,
            date_len: 0,
            content_type,
        }
    }

    /// The same entry with the upstream's `Date` kept in front of its body
    /// (a value longer than 255 bytes, which no HTTP date is, is dropped).
    pub fn with_date(mut self, date: Option<&HeaderValue>) -> Self {
        let Some(date) = date.filter(|d| (1..=255).contains(&d.len())) else {
            return self;
        };
        let mut both = BytesMut::with_capacity(date.len() + self.body.len() - self.date_len());
        both.extend_from_slice(date.as_bytes());
        both.extend_from_slice(&self.body[self.date_len()..]);
        self.body = both.freeze();
        self.date_len = date.len() as u8;
        self
    }

    fn date_len(&self) -> usize {
        usize::from(self.date_len)
    }

    /// Moves the body and the `Date` out (a looked-up copy about to become
    /// a response).
    pub fn take_body(&mut self) -> (Bytes, Option<HeaderValue>) {
        let mut body = std::mem::take(&mut self.body);
        if self.date_len == 0 {
            return (body, None);
        }
        let date = body.split_to(self.date_len());
        (body, HeaderValue::from_maybe_shared(date).ok())
    }

    /// The upstream's `Date`, when it sent one.
    pub fn date(&self) -> Option<HeaderValue> {
        let date = self.body.slice(..self.date_len());
        (self.date_len > 0)
            .then(|| HeaderValue::from_maybe_shared(date).ok())
            .flatten()
    }

    /// The same entry, as if stored `age` earlier (tests and benches).
    pub fn backdated(mut self, age: Duration) -> Self {
        let now = clock_ms(Instant::now());
        self.stored_ms = now.saturating_sub(age.as_millis() as u64);
        self
    }

    /// The stored body (a new reference to its bytes).
    pub fn body(&self) -> Bytes {
        self.body.slice(self.date_len()..)
    }

    /// The stored `content-type`.
    pub fn content_type(&self) -> Option<HeaderValue> {
        match &self.content_type {
            ContentType::Absent => None,
            ContentType::Json => Some(JSON),
            ContentType::Other(v) => Some(HeaderValue::clone(v)),
        }
    }

    /// The stored `content-encoding` (only `identity` is ever stored).
    pub fn content_encoding(&self) -> Option<HeaderValue> {
        self.identity.then(|| HeaderValue::from_static("identity"))
    }

    /// Whole seconds since it was stored (floored).
    pub fn age_secs(&self, now: Instant) -> u64 {
        clock_ms(now).saturating_sub(self.stored_ms) / 1000
    }

    /// The TTL it was stored with.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl_secs))
    }

    /// Seconds of freshness left at `now`: negative once past its TTL
    /// (the seconds past expiry, as RFC 9211's `ttl` parameter reads).
    pub fn ttl_left(&self, now: Instant) -> i64 {
        let age_ms = clock_ms(now).saturating_sub(self.stored_ms) as i64;
        let ttl_ms = i64::from(self.ttl_secs) * 1000;
        let left_ms = ttl_ms - age_ms;
        // Floor for the past (-0.5 s is -1), so a stale entry never says 0.
        left_ms.div_euclid(1000)
    }

    /// True while it is within its TTL.
    pub fn is_fresh(&self, now: Instant) -> bool {
        clock_ms(now).saturating_sub(self.stored_ms) < u64::from(self.ttl_secs) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(ttl: Duration) -> CachedUser {
        CachedUser::new(Bytes::from_static(b"{}"), None, false, ttl)
    }

    #[test]
    fn stored_headers_round_trip() {
        let ttl = Duration::from_secs(60);
        let json = CachedUser::new(Bytes::new(), Some(JSON), true, ttl);
        assert_eq!(json.content_type(), Some(JSON));
        assert_eq!(json.content_encoding().unwrap(), "identity");
        let other = HeaderValue::from_static("application/json; charset=utf-8");
        let u = CachedUser::new(Bytes::new(), Some(other.clone()), false, ttl);
        assert_eq!(u.content_type(), Some(other));
        assert_eq!(u.content_encoding(), None);
        assert_eq!(
            CachedUser::new(Bytes::new(), None, false, ttl).content_type(),
            None
        );
    }

    #[test]
    fn value_stays_small() {
        // Inline in moka's entry: growing it costs bytes per cached user.
        assert!(std::mem::size_of::<CachedUser>() <= 64);
    }

    #[test]
    fn freshness_and_seconds_past_expiry() {
        let ttl = Duration::from_secs(10);
        let u = user(ttl).backdated(Duration::from_millis(4_500));
        let now = Instant::now();
        assert!(u.is_fresh(now));
        assert_eq!(u.ttl_left(now), 5);
        let stale = user(ttl).backdated(Duration::from_millis(12_300));
        assert!(!stale.is_fresh(now));
        assert_eq!(stale.ttl_left(now), -3);
    }
}
