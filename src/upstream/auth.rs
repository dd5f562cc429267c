//! Upstream refusals of the admin key.
//!
//! When the organization's admin key is revoked (or rotated away, or
//! mistyped), the upstream answers 401 `invalid_api_key` and quotes the key
//! in masked form, last characters included. That is the gateway's problem,
//! not its client's: `Upstream::send` turns a 401, and a 403 whose body
//! names the key, into `GatewayError::UpstreamAuthFailed`, and the
//! upstream's body never reaches a client.
//!
//! A 403 is read first (at most [`FORBIDDEN_BODY_LIMIT`] bytes, within the
//! upstream timeout) and checked with [`names_key`]. One that does not name
//! the key (a project or role permission, say) is relayed as it came, with
//! the body that was read. One that cannot be checked (an encoded or
//! oversized body) is treated as naming the key: it is never relayed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_ENCODING;
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{BoxBody, BoxError};
use crate::error::GatewayError;

use super::buffer::whole;

/// Most bytes of a 403 body that are read and checked.
pub(super) const FORBIDDEN_BODY_LIMIT: usize = 64 * 1024;

/// Phrases (lower case) that make a 403 body name the key.
const KEY_PHRASES: [&[u8]; 4] = [b"api key", b"api_key", b"apikey", b"api-key"];

/// True when `body` names the admin `key`: it mentions an API key (any
/// case: "api key", "api_key", "apikey", "api-key"), or holds the key's
/// first 8 or last 4 characters (the parts a masked key shows).
pub(super) fn names_key(body: &[u8], key: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    if KEY_PHRASES.iter().any(|p| contains(&lower, p)) {
        return true;
    }
    // Header values are visible ASCII, so bytes are characters here; a key
    // shorter than a fragment is its own fragment.
    let key = key.as_bytes();
    let first = &key[..key.len().min(8)];
    let last = &key[key.len().saturating_sub(4)..];
    contains(body, first) || contains(body, last)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What to do with an upstream 403.
pub(super) enum Forbidden {
    /// It does not name the key: relay it with this (whole) body.
    Relay(BoxBody),
    /// It names the key, or could not be checked; the reason is for the log.
    KeyRefused(&'static str),
    /// The body broke off or stalled before it could be checked, and what
    /// arrived does not name the key.
    Failed(GatewayError),
}

/// Reads and checks a 403's body: within `window`, at most
/// [`FORBIDDEN_BODY_LIMIT`] bytes.
pub(super) async fn check_forbidden<B>(
    headers: &HeaderMap,
    mut body: B,
    key: &str,
    window: Duration,
) -> Forbidden
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if encoded(headers) {
        // Compressed bytes can hide the key from the check.
        return Forbidden::KeyRefused("403 with an encoded body (not checked)");
    }
    let deadline = tokio::time::Instant::now() + window;
    let mut buf = BytesMut::new();
    let mut trailers = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(f) => f,
            Err(_) => return incomplete(&buf, key, GatewayError::UpstreamTimeout),
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                let e: BoxError = e.into();
                let e = format!("403 body broke off: {e}");
                return incomplete(&buf, key, GatewayError::UpstreamUnavailable(e.into()));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if buf.len() + data.len() > FORBIDDEN_BODY_LIMIT {
                        return Forbidden::KeyRefused("403 with a body over 64 KiB (not checked)");
                    }
                    buf.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                        break;
                    }
                }
            },
        }
    }
    if names_key(&buf, key) {
        return Forbidden::KeyRefused("403 naming the key");
    }
    Forbidden::Relay(whole(buf.freeze(), trailers))
}

/// A 403 body that ended early: refused if what arrived names the key,
/// else the failure `e`.
fn incomplete(read: &[u8], key: &str, e: GatewayError) -> Forbidden {
    if names_key(read, key) {
        Forbidden::KeyRefused("403 naming the key")
    } else {
        Forbidden::Failed(e)
    }
}

/// A `content-encoding` other than `identity`.
fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::HeaderValue;
    use http_body::Frame;
    use http_body_util::Full;

    const KEY: &str = "sk-admin-AbCdEfGhIjKlMnOpQrStUvWxYz0123WXYZ";

    fn masked() -> String {
        format!("sk-admin-{}WXYZ", "*".repeat(KEY.len() - 13))
    }

    #[test]
    fn a_body_names_the_key_by_phrase_or_fragment() {
        let revoked = format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            masked()
        );
        for body in [
            revoked.as_str(),
            "This Api Key lacks the organization scope",
            r#"{"error":{"param":"api_key"}}"#,
            "invalid APIKEY",
            "the x-api-key header",
            "key ending in WXYZ is disabled",
            "key sk-admin-… is disabled",
        ] {
            assert!(names_key(body.as_bytes(), KEY), "{body}");
        }
    }

    #[test]
    fn a_permission_message_does_not_name_the_key() {
        for body in [
            "",
            "Project proj_abc123 does not have access to this resource.",
            "You have insufficient permissions for this operation. Missing scopes: \
             api.management.read.",
            // Fragments match exactly: case and partial fragments do not count.
            "wxyz sk-admi sk_admin-",
            "api  key",
        ] {
            assert!(!names_key(body.as_bytes(), KEY), "{body}");
        }
    }

    #[test]
    fn a_short_key_is_its_own_fragment() {
        assert!(names_key(b"who is abc", "abc"));
        assert!(!names_key(b"who is ab", "abc"));
    }

    fn plain() -> HeaderMap {
        HeaderMap::new()
    }

    async fn check(headers: &HeaderMap, body: &str) -> Forbidden {
        let body = Full::new(Bytes::copy_from_slice(body.as_bytes()));
        check_forbidden(headers, body, KEY, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_403_without_the_key_is_relayed_whole() {
        let text = "Project proj_abc123 does not have access to this resource.";
        let Forbidden::Relay(body) = check(&plain(), text).await else {
            panic!("not relayed");
        };
        assert_eq!(body.size_hint().exact(), Some(text.len() as u64));
        assert_eq!(body.collect().await.unwrap().to_bytes(), text);
    }

    #[tokio::test]
    async fn a_403_naming_the_key_is_refused() {
        let text = format!("The API key {} is not allowed here.", masked());
        assert!(matches!(
            check(&plain(), &text).await,
            Forbidden::KeyRefused(_)
        ));
    }

    #[tokio::test]
    async fn an_encoded_or_oversized_403_is_never_relayed() {
        let mut gzip = plain();
        gzip.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(
            check(&gzip, "\x1f\x08 compressed").await,
            Forbidden::KeyRefused(_)
        ));
        let mut identity = plain();
        identity.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
        assert!(matches!(check(&identity, "no").await, Forbidden::Relay(_)));
        let big = "x".repeat(FORBIDDEN_BODY_LIMIT + 1);
        assert!(matches!(
            check(&plain(), &big).await,
            Forbidden::KeyRefused(_)
        ));
        let fits = "x".repeat(FORBIDDEN_BODY_LIMIT);
        assert!(matches!(check(&plain(), &fits).await, Forbidden::Relay(_)));
    }

    #[tokio::test]
    async fn a_stalled_or_broken_403_is_a_gateway_failure() {
        let window = Duration::from_millis(50);
        let stalled = Script::stalls_after(Ok("Project proj_abc denied"));
        let r = check_forbidden(&plain(), stalled, KEY, window).await;
        assert!(matches!(
            r,
            Forbidden::Failed(GatewayError::UpstreamTimeout)
        ));

        let stalled = Script::stalls_after(Ok("Incorrect API key provided"));
        let r = check_forbidden(&plain(), stalled, KEY, window).await;
        assert!(
            matches!(r, Forbidden::KeyRefused(_)),
            "the prefix names the key"
        );

        let broken = Script::stalls_after(Err("reset"));
        let r = check_forbidden(&plain(), broken, KEY, window).await;
        assert!(matches!(
            r,
            Forbidden::Failed(GatewayError::UpstreamUnavailable(_))
        ));
    }

    /// A body that yields one item, then never ends.
    struct Script(Option<std::result::Result<&'static str, &'static str>>);

    impl Script {
        fn stalls_after(item: std::result::Result<&'static str, &'static str>) -> Self {
            Self(Some(item))
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(Ok(s)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))),
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => Poll::Pending,
            }
        }
    }
}
