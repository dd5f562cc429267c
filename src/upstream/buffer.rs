//! Small forwarded bodies are read whole before they are passed on.
//!
//! A body that declares a `content-length` of at most [`SMALL_BODY_LIMIT`]
//! bytes is collected, then handed on as one frame: the upstream request
//! goes out as head + body in one write, instead of a head the upstream
//! wakes up for and a body that follows once the client connection's task
//! has run again (the same for the response to the client), and the
//! upstream concurrency slot is freed as soon as the response is read.
//! This is what nginx's `proxy_request_buffering` / `proxy_buffering` do for
//! small bodies, and it halves the segments per pass-through request.
//!
//! Everything else streams, as before: chunked bodies (SSE), bodies above
//! the limit, and a request body that is still arriving when the upstream
//! timeout passes (what was read goes first, the rest streams behind it), so
//! memory per request stays bounded and no body is ever cut short.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{client_body, prefixed, BoxBody, BoxError};
use crate::error::{GatewayError, Result};

/// Largest declared body that is read whole (each way).
pub const SMALL_BODY_LIMIT: u64 = 32 * 1024;

/// The declared length, when it is small enough to read whole.
fn small(headers: &HeaderMap) -> Option<usize> {
    let v = headers.get(CONTENT_LENGTH)?.to_str().ok()?;
    let n: u64 = v.parse().ok()?;
    (n <= SMALL_BODY_LIMIT).then_some(n as usize)
}

/// How far reading a body got.
enum Read<B> {
    /// All of it (and its trailers, if any).
    Whole(Bytes, Option<HeaderMap>),
    /// `window` passed first: what was read, and the rest still to come.
    Partial(Bytes, B),
    /// The body failed before its end.
    Broken(BoxError),
}

async fn read<B>(mut body: B, capacity: usize, window: Option<Duration>) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let deadline = window.map(|w| tokio::time::Instant::now() + w);
    let mut buf = BytesMut::with_capacity(capacity);
    loop {
        let frame = match deadline {
            Some(d) => match tokio::time::timeout_at(d, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Read::Partial(buf.freeze(), body),
            },
            None => body.frame().await,
        };
        match frame {
            None => return Read::Whole(buf.freeze(), None),
            Some(Err(e)) => return Read::Broken(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    // A body longer than it declared: stop collecting and
                    // let the rest stream (hyper rejects the mismatch).
                    if buf.len() + data.len() > SMALL_BODY_LIMIT as usize {
                        return Read::Partial(prefix(buf, data), body);
                    }
                    buf.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Read::Whole(buf.freeze(), Some(trailers));
                    }
                }
            },
        }
    }
}

fn prefix(mut buf: BytesMut, data: Bytes) -> Bytes {
    buf.extend_from_slice(&data);
    buf.freeze()
}

/// A client's request body, ready to forward: read whole when small and
/// complete within `window`, streamed otherwise. A small body that breaks
/// off before its declared end is refused (400) without reaching the
/// upstream.
pub async fn request<B>(body: B, headers: &HeaderMap, window: Duration) -> Result<BoxBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let Some(len) = small(headers) else {
        return Ok(client_body(body));
    };
    match read(body, len, Some(window)).await {
        Read::Whole(data, trailers) => Ok(whole(data, trailers)),
        Read::Partial(data, rest) => Ok(prefixed(data, client_body(rest))),
        Read::Broken(..) => Err(GatewayError::IncompleteBody),
    }
}

/// [`request`], also handing back the bytes when the body was read whole
/// (a write whose body says what it changes). Never holds up a body that
/// [`request`] would stream.
pub async fn request_read<B>(
    body: B,
    headers: &HeaderMap,
    window: Duration,
) -> Result<(BoxBody, Option<Bytes>)>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let Some(len) = small(headers) else {
        return Ok((client_body(body), None));
    };
    match read(body, len, Some(window)).await {
        Read::Whole(data, trailers) => Ok((whole(data.clone(), trailers), Some(data))),
        Read::Partial(data, rest) => Ok((prefixed(data, client_body(rest)), None)),
        Read::Broken(..) => Err(GatewayError::IncompleteBody),
    }
}

/// An upstream response, ready to send: a small declared body is read
/// whole first. One that breaks off before its end is 502
/// `upstream_unavailable`: nothing has reached the client yet, and a 200
/// whose body fails would reach it as a cut connection with no answer at
/// all. A streamed body that breaks off later reaches the client broken off.
pub async fn response(resp: Response<BoxBody>) -> Result<Response<BoxBody>> {
    let Some(len) = small(resp.headers()) else {
        return Ok(resp);
    };
    let (parts, body) = resp.into_parts();
    let body = match read(body, len, None).await {
        Read::Whole(data, trailers) => whole(data, trailers),
        Read::Partial(data, rest) => prefixed(data, rest),
        Read::Broken(e) => return Err(GatewayError::UpstreamUnavailable(e.into())),
    };
    Ok(Response::from_parts(parts, body))
}

/// A body already in memory (used for small bodies and checked 403s).
pub(super) fn whole(data: Bytes, trailers: Option<HeaderMap>) -> BoxBody {
    BoxBody::new(Whole {
        data: (!data.is_empty()).then_some(data),
        trailers,
    })
}

/// A body already in memory: at most one data frame, then trailers.
struct Whole {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Whole {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::Full;
    use tokio::sync::mpsc;

    type Item = std::result::Result<Bytes, BoxError>;

    /// A body fed through a channel: ends when the sender is dropped.
    struct Chan(mpsc::Receiver<Item>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|i| i.map(|r| r.map(Frame::data)))
        }
    }

    fn declared(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        h
    }

    /// A body with `parts` already queued; `open` keeps it unfinished.
    fn chunks(
        parts: &[std::result::Result<&'static str, &'static str>],
    ) -> (Chan, mpsc::Sender<Item>) {
        let (tx, rx) = mpsc::channel(16);
        for p in parts {
            let item = p
                .map(|s| Bytes::from_static(s.as_bytes()))
                .map_err(BoxError::from);
            tx.try_send(item).unwrap();
        }
        (Chan(rx), tx)
    }

    const WINDOW: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn small_request_becomes_one_frame() {
        let (body, tx) = chunks(&[Ok("ab"), Ok("cd")]);
        drop(tx);
        let mut b = request(body, &declared(4), WINDOW).await.unwrap();
        assert_eq!(b.size_hint().exact(), Some(4));
        let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "abcd");
        assert!(b.frame().await.is_none());
    }

    #[tokio::test]
    async fn undeclared_or_large_bodies_stream() {
        let (body, tx) = chunks(&[Ok("ab")]);
        let b = request(body, &HeaderMap::new(), WINDOW).await.unwrap();
        assert_eq!(b.size_hint().exact(), None, "chunked body passed as is");
        drop(tx);
        assert_eq!(b.collect().await.unwrap().to_bytes(), "ab");
        let big = declared(SMALL_BODY_LIMIT + 1);
        let b = request(Full::new(Bytes::from_static(b"x")), &big, WINDOW)
            .await
            .unwrap();
        assert_eq!(b.collect().await.unwrap().to_bytes(), "x");
    }

    #[tokio::test]
    async fn broken_small_request_is_refused() {
        let (body, _tx) = chunks(&[Ok("ab"), Err("reset")]);
        let r = request(body, &declared(4), WINDOW).await;
        assert!(matches!(r, Err(GatewayError::IncompleteBody)));
    }

    #[tokio::test]
    async fn slow_request_streams_after_the_window() {
        let (body, tx) = chunks(&[Ok("ab")]);
        let b = request(body, &declared(4), Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(b.size_hint().exact(), None, "still streaming");
        tx.send(Ok(Bytes::from_static(b"cd"))).await.unwrap();
        drop(tx);
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn small_response_is_read_whole() {
        let (body, tx) = chunks(&[Ok("ab"), Ok("cd")]);
        drop(tx);
        let mut resp = Response::new(BoxBody::new(body));
        *resp.headers_mut() = declared(4);
        let resp = response(resp).await.expect("whole");
        assert_eq!(resp.headers()[CONTENT_LENGTH], "4");
        assert_eq!(resp.body().size_hint().exact(), Some(4));
    }

    #[tokio::test]
    async fn broken_small_response_is_upstream_unavailable() {
        let (body, _tx) = chunks(&[Ok("ab"), Err("reset")]);
        let mut resp = Response::new(BoxBody::new(body));
        *resp.headers_mut() = declared(4);
        let e = response(resp)
            .await
            .expect_err("a broken body is no answer");
        assert_eq!(e.kind().1, "upstream_unavailable");
    }
}
