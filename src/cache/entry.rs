//! A stored user and its clock: the upstream's bytes (its `Date` kept in
//! front of the body), what a hit needs to answer, and when it was stored.
//! Kept small: a million of them may be held, inline in moka's entries.

use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http::HeaderValue;

/// A stored `OrganizationUser` response: the upstream's bytes and what a
/// hit needs to answer, in one allocation, because a million of them may
/// be held. Moka keeps the same bytes as a [`Stored`] (a boxed slice, 16
/// bytes inline); the allocation holds, in order:
///
/// | bytes | what |
/// |---|---|
/// | 8 | when it was stored, in ms on the process clock ([`clock_ms`]) |
/// | 4 | how long it is served (the TTL in force when it was stored) |
/// | 1 | length of the upstream's `Date` as stored (0: none) |
/// | 1 | [`IDENTITY`], the content type's kind ([`CT_JSON`], [`CT_OTHER`]), [`DATE_SECS`] |
/// | 2 | length of an other content type |
/// | `Date` | the upstream's `Date`: a hit sends it again beside `Age` (RFC 9111 §4.2.3); 4 bytes of Unix seconds ([`DATE_SECS`]) when rendering them gives the upstream's bytes back, as it does for every IMF-fixdate, else its text |
/// | content type | the upstream's `content-type`, unless absent or `application/json` |
/// | body | the upstream body, byte for byte |
#[derive(Debug, Clone)]
pub struct CachedUser {
    /// The fields above, then the body: one allocation (an exact-size one
    /// when built here), no room in the entry.
    buf: Bytes,
}

/// Bytes of fixed fields in front of the `Date`.
const HEAD: usize = 16;
/// Flag: the upstream said `content-encoding: identity` (no other encoding
/// is ever stored: a compressed body cannot be checked).
const IDENTITY: u8 = 1;
/// Content type kind: `application/json` (the usual one costs nothing).
const CT_JSON: u8 = 2;
/// Content type kind: another value, stored after the `Date`.
const CT_OTHER: u8 = 4;
/// The `Date` is stored as 4 bytes of Unix seconds (little-endian), not its
/// 29 bytes of text: a million entries keep 25 MB less, and the text, one
/// size class of the allocator apart, often decides the entry's class.
/// Copies for the per-thread front hold the text again, so a hit from a
/// front renders nothing.
const DATE_SECS: u8 = 8;

/// The seconds `date` names, when rendering them back gives exactly its
/// bytes (an IMF-fixdate; the obsolete forms keep their text).
fn date_secs(date: &HeaderValue) -> Option<u32> {
    let text = date.to_str().ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    let secs = u32::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    (render_date(secs).as_ref().map(|t| &t[..]) == Some(date.as_bytes())).then_some(secs)
}

/// The IMF-fixdate of `secs` (29 bytes), as the upstream sent it.
fn render_date(secs: u32) -> Option<[u8; 29]> {
    use std::io::Write;
    let at = UNIX_EPOCH + Duration::from_secs(u64::from(secs));
    let mut out = [0u8; 29];
    let mut w = &mut out[..];
    write!(w, "{}", httpdate::HttpDate::from(at)).ok()?;
    w.is_empty().then_some(out)
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

/// The fields of a stored user, as written into its allocation.
struct Fields<'a> {
    /// When it was stored, in ms on the process clock ([`clock_ms`]).
    stored_ms: u64,
    /// How long it is served.
    ttl_secs: u32,
    /// [`IDENTITY`], [`CT_JSON`], [`CT_OTHER`], [`DATE_SECS`].
    flags: u8,
    /// The upstream's `Date` as stored (empty: none; 4 bytes of seconds
    /// with [`DATE_SECS`]).
    date: &'a [u8],
    /// An other content type (empty unless [`CT_OTHER`]).
    content_type: &'a [u8],
    /// The upstream body.
    body: &'a [u8],
}

impl Fields<'_> {
    /// The text of a `Date` stored as seconds (`None`: stored as text, or
    /// absent).
    fn date_text(&self) -> Option<[u8; 29]> {
        if self.flags & DATE_SECS == 0 {
            return None;
        }
        let secs: [u8; 4] = self.date.try_into().ok()?;
        render_date(u32::from_le_bytes(secs))
    }

    /// The `Date` as a header value.
    fn date_value(&self) -> Option<HeaderValue> {
        match self.date_text() {
            Some(text) => HeaderValue::from_bytes(&text).ok(),
            None if self.flags & DATE_SECS == 0 && !self.date.is_empty() => {
                HeaderValue::from_bytes(self.date).ok()
            }
            None => None,
        }
    }

    /// One allocation holding these fields with `date` as their `Date`:
    /// 4 bytes of seconds when they render back to its bytes, else its
    /// text; none when absent or longer than 255 bytes.
    fn dated(self, date: Option<&HeaderValue>) -> Bytes {
        let Some(date) = date.filter(|d| (1..=255).contains(&d.len())) else {
            return self.write();
        };
        match date_secs(date).map(u32::to_le_bytes) {
            Some(secs) => Fields {
                flags: self.flags | DATE_SECS,
                date: &secs,
                ..self
            }
            .write(),
            None => Fields {
                flags: self.flags & !DATE_SECS,
                date: date.as_bytes(),
                ..self
            }
            .write(),
        }
    }

    /// One exact-size allocation holding these fields.
    fn write(&self) -> Bytes {
        Bytes::from(self.write_vec())
    }

    /// The fields, written into an exact-size `Vec` (its capacity is its
    /// length, so it becomes a `Bytes` or a boxed slice without a copy).
    fn write_vec(&self) -> Vec<u8> {
        let len = HEAD + self.date.len() + self.content_type.len() + self.body.len();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&self.stored_ms.to_le_bytes());
        b.extend_from_slice(&self.ttl_secs.to_le_bytes());
        b.push(self.date.len() as u8);
        b.push(self.flags);
        b.extend_from_slice(&(self.content_type.len() as u16).to_le_bytes());
        b.extend_from_slice(self.date);
        b.extend_from_slice(self.content_type);
        b.extend_from_slice(self.body);
        b
    }

    /// The fields of an allocation written by [`Fields::write`].
    fn read(b: &[u8]) -> Fields<'_> {
        let date_end = HEAD + usize::from(b[12]);
        let ct_end = date_end + usize::from(u16::from_le_bytes([b[14], b[15]]));
        Fields {
            stored_ms: (&b[..8]).get_u64_le(),
            ttl_secs: (&b[8..12]).get_u32_le(),
            flags: b[13],
            date: &b[HEAD..date_end],
            content_type: &b[date_end..ct_end],
            body: &b[ct_end..],
        }
    }

    /// True while they are within their TTL.
    fn is_fresh(&self, now: Instant) -> bool {
        clock_ms(now).saturating_sub(self.stored_ms) < u64::from(self.ttl_secs) * 1000
    }
}

/// A user as moka holds it: the same bytes as a [`CachedUser`], in a boxed
/// slice (16 bytes inline in moka's entry, no reference count and no
/// second allocation). A `Bytes` would cost 32 bytes inline, and the clone
/// moka takes on insert turns a `Bytes` over a `Vec` into a shared one,
/// allocating its 24-byte counter: 40 bytes a user more at a million
/// users. The price: each read from moka (a miss's answer, a front's
/// first read, stale serving) copies the bytes, as the front copied them
/// anyway.
#[derive(Debug, Clone)]
pub(super) struct Stored(Box<[u8]>);

impl Stored {
    /// The TTL it was stored with.
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(Fields::read(&self.0).ttl_secs))
    }

    /// True while it is within its TTL.
    pub(super) fn is_fresh(&self, now: Instant) -> bool {
        Fields::read(&self.0).is_fresh(now)
    }

    /// How long ago it was stored, at `now`.
    pub(super) fn age(&self, now: Instant) -> Duration {
        Duration::from_millis(clock_ms(now).saturating_sub(Fields::read(&self.0).stored_ms))
    }

    /// The user, as this thread's own copy for its per-thread front: the
    /// bytes are already this thread's (moka's read copied them), and a
    /// `Date` stored as seconds is written out as text, so a hit from the
    /// front renders nothing.
    pub(super) fn into_front_copy(self) -> CachedUser {
        let f = Fields::read(&self.0);
        match f.date_text() {
            Some(text) => CachedUser {
                buf: Fields {
                    flags: f.flags & !DATE_SECS,
                    date: &text,
                    ..f
                }
                .write(),
            },
            None => self.into(),
        }
    }
}

impl From<CachedUser> for Stored {
    /// No copy when `user`'s bytes are its own (as [`CachedUser::new`]
    /// makes them).
    fn from(user: CachedUser) -> Self {
        Self(Vec::from(user.buf).into_boxed_slice())
    }
}

impl From<Stored> for CachedUser {
    /// No copy.
    fn from(s: Stored) -> Self {
        Self {
            buf: Bytes::from(s.0),
        }
    }
}

impl CachedUser {
    /// A copy as a front keeps it (tests): its own bytes, the `Date` as
    /// text.
    #[cfg(test)]
    pub(super) fn thread_copy(&self) -> Self {
        Stored::from(Self {
            buf: Bytes::copy_from_slice(&self.buf),
        })
        .into_front_copy()
    }

    /// A user response stored now, with the upstream's `Date` when it sent
    /// one (a value longer than 255 bytes, which no HTTP date is, is
    /// dropped). Header values given here must own their bytes (see
    /// `fill`'s `own`): they live as long as the entry. (An other content
    /// type longer than 64 KiB, which none is, is dropped.)
    pub fn new(
        body: Bytes,
        content_type: Option<HeaderValue>,
        identity: bool,
        ttl: Duration,
        date: Option<&HeaderValue>,
    ) -> Self {
        let (kind, other) = match &content_type {
            None => (0, &[][..]),
            Some(v) if *v == JSON => (CT_JSON, &[][..]),
            Some(v) if v.len() <= usize::from(u16::MAX) => (CT_OTHER, v.as_bytes()),
            Some(_) => (0, &[][..]),
        };
        let f = Fields {
            stored_ms: clock_ms(Instant::now()),
            ttl_secs: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
            flags: kind | if identity { IDENTITY } else { 0 },
            date: &[],
            content_type: other,
            body: &body,
        };
        Self { buf: f.dated(date) }
    }

    /// The fields, read back.
    fn fields(&self) -> Fields<'_> {
        Fields::read(&self.buf)
    }

    /// Where the body starts in the allocation.
    fn body_start(&self) -> usize {
        self.buf.len() - self.fields().body.len()
    }

    /// The same entry with the upstream's `Date` `date` instead.
    #[cfg(test)]
    pub(super) fn with_date(self, date: Option<&HeaderValue>) -> Self {
        let buf = Fields {
            flags: self.fields().flags & !DATE_SECS,
            date: &[],
            ..self.fields()
        }
        .dated(date);
        Self { buf }
    }

    /// The body and the `Date`, out of a looked-up copy about to become a
    /// response (one reference count written, none without a `Date`).
    pub fn into_body(self) -> (Bytes, Option<HeaderValue>) {
        let (start, date_len) = (self.body_start(), usize::from(self.buf[12]));
        if self.buf[13] & DATE_SECS != 0 {
            let date = self.fields().date_value();
            let mut body = self.buf;
            body.advance(start);
            return (body, date);
        }
        let mut body = self.buf;
        if date_len == 0 {
            body.advance(start);
            return (body, None);
        }
        let mut date = body.split_to(start);
        date.advance(HEAD);
        date.truncate(date_len);
        (body, HeaderValue::from_maybe_shared(date).ok())
    }

    /// The upstream's `Date`, when it sent one.
    pub fn date(&self) -> Option<HeaderValue> {
        let f = self.fields();
        if f.flags & DATE_SECS != 0 {
            return f.date_value();
        }
        let len = f.date.len();
        (len > 0)
            .then(|| HeaderValue::from_maybe_shared(self.buf.slice(HEAD..HEAD + len)).ok())
            .flatten()
    }

    /// The same entry, as if stored `age` earlier (tests and benches).
    pub fn backdated(self, age: Duration) -> Self {
        let now = clock_ms(Instant::now());
        let buf = Fields {
            stored_ms: now.saturating_sub(age.as_millis() as u64),
            ..self.fields()
        }
        .write();
        Self { buf }
    }

    /// The stored body (a new reference to its bytes).
    pub fn body(&self) -> Bytes {
        self.buf.slice(self.body_start()..)
    }

    /// The stored `content-type`.
    pub fn content_type(&self) -> Option<HeaderValue> {
        let f = self.fields();
        if f.flags & CT_JSON != 0 {
            return Some(JSON);
        }
        if f.flags & CT_OTHER == 0 {
            return None;
        }
        let start = HEAD + f.date.len();
        let ct = self.buf.slice(start..start + f.content_type.len());
        HeaderValue::from_maybe_shared(ct).ok()
    }

    /// The stored `content-encoding` (only `identity` is ever stored).
    pub fn content_encoding(&self) -> Option<HeaderValue> {
        (self.fields().flags & IDENTITY != 0).then(|| HeaderValue::from_static("identity"))
    }

    /// Whole seconds since it was stored (floored).
    pub fn age_secs(&self, now: Instant) -> u64 {
        clock_ms(now).saturating_sub(self.fields().stored_ms) / 1000
    }

    /// The TTL it was stored with.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.fields().ttl_secs))
    }

    /// Seconds of freshness left at `now`: negative once past its TTL
    /// (the seconds past expiry, as RFC 9211's `ttl` parameter reads).
    pub fn ttl_left(&self, now: Instant) -> i64 {
        let f = self.fields();
        let age_ms = clock_ms(now).saturating_sub(f.stored_ms) as i64;
        let ttl_ms = i64::from(f.ttl_secs) * 1000;
        let left_ms = ttl_ms - age_ms;
        // Floor for the past (-0.5 s is -1), so a stale entry never says 0.
        left_ms.div_euclid(1000)
    }

    /// True while it is within its TTL.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.fields().is_fresh(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(ttl: Duration) -> CachedUser {
        CachedUser::new(Bytes::from_static(b"{}"), None, false, ttl, None)
    }

    #[test]
    fn stored_headers_round_trip() {
        let ttl = Duration::from_secs(60);
        let json = CachedUser::new(Bytes::new(), Some(JSON), true, ttl, None);
        assert_eq!(json.content_type(), Some(JSON));
        assert_eq!(json.content_encoding().unwrap(), "identity");
        let other = HeaderValue::from_static("application/json; charset=utf-8");
        let u = CachedUser::new(Bytes::new(), Some(other.clone()), false, ttl, None);
        assert_eq!(u.content_type(), Some(other));
        assert_eq!(u.content_encoding(), None);
        assert_eq!(
            CachedUser::new(Bytes::new(), None, false, ttl, None).content_type(),
            None
        );
    }

    #[test]
    fn date_content_type_and_body_share_one_allocation() {
        let ttl = Duration::from_secs(60);
        let ct = HeaderValue::from_static("application/json; charset=utf-8");
        let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        let u = CachedUser::new(
            Bytes::from_static(b"{\"id\":1}"),
            Some(ct.clone()),
            true,
            ttl,
            Some(&date),
        )
        .backdated(Duration::from_secs(5));
        for u in [u.clone(), u.thread_copy()] {
            assert_eq!(u.content_type(), Some(ct.clone()));
            assert_eq!(u.content_encoding().unwrap(), "identity");
            assert_eq!(u.date(), Some(date.clone()));
            assert_eq!(u.body().as_ref(), b"{\"id\":1}");
            assert_eq!((u.ttl(), u.age_secs(Instant::now())), (ttl, 5));
            let (body, got) = u.into_body();
            assert_eq!(
                (body.as_ref(), got),
                (&b"{\"id\":1}"[..], Some(date.clone()))
            );
        }
        let plain = CachedUser::new(Bytes::from_static(b"{}"), None, false, ttl, None);
        assert_eq!(plain.date(), None);
        assert_eq!(plain.into_body(), (Bytes::from_static(b"{}"), None));
    }

    #[test]
    fn an_imf_date_is_stored_as_seconds_and_any_other_as_its_text() {
        let ttl = Duration::from_secs(60);
        let body = Bytes::from_static(b"{\"id\":1}");
        let user = CachedUser::new(body.clone(), None, false, ttl, None);
        let imf = HeaderValue::from_static("Sun, 06 Dec 2026 05:29:45 GMT");
        let u = user.clone().with_date(Some(&imf));
        assert_eq!(u.buf.len(), HEAD + 4 + body.len(), "4 bytes of seconds");
        let copy = u.thread_copy();
        assert_eq!(
            copy.buf.len(),
            HEAD + imf.len() + body.len(),
            "the front's copy holds the text"
        );
        for u in [u, copy] {
            assert_eq!(u.date(), Some(imf.clone()));
            assert_eq!(u.body(), body);
            assert_eq!(u.into_body(), (body.clone(), Some(imf.clone())));
        }
        // RFC 850 and asctime dates parse, but render as IMF-fixdate: they
        // keep their own bytes. So does anything unparsable.
        for text in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "yesterday",
        ] {
            let d = HeaderValue::from_static(text);
            let u = user.clone().with_date(Some(&d));
            assert_eq!(u.buf.len(), HEAD + text.len() + body.len(), "{text}");
            assert_eq!(u.thread_copy().date(), Some(d.clone()), "{text}");
            assert_eq!(u.into_body(), (body.clone(), Some(d)), "{text}");
        }
    }

    #[test]
    fn value_stays_small() {
        // Inline in moka's entry: growing it costs bytes per cached user.
        assert!(std::mem::size_of::<Stored>() <= 16);
        assert!(std::mem::size_of::<CachedUser>() <= 32);
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
