//! Body types shared by the server and the upstream client.
//!
//! Everything is a [`BoxBody`]: bodies from hyper are streamed through
//! unchanged (never collected), and gateway-made bodies are single `Bytes`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type on both sides of the gateway.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The error a client's request body ended with (a malformed chunk, a
/// reset): the client's fault, not the upstream's. [`client_body`] marks
/// a body's errors with it, and the upstream client looks for it in the
/// chain of a failed exchange.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// What the gateway accepts as a request body: hyper's `Incoming` from the
/// server, or any other body (the in-process benches build their own).
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{}

/// A client's request body whose errors are [`ClientBodyError`]s.
pub fn client_body<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| Box::new(ClientBodyError(e.into())) as BoxError)
        .boxed_unsync()
}

/// True when `e` or anything in its source chain is a [`ClientBodyError`].
pub fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<ClientBodyError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Bytes already read, then the rest of a body.
pub fn prefixed<B>(prefix: Bytes, rest: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    BoxBody::new(Prefixed {
        prefix: (!prefix.is_empty()).then_some(prefix),
        rest: rest.map_err(Into::into),
    })
}

struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(u) = rest.upper() {
            hint.set_upper(u + extra);
        }
        hint.set_lower(rest.lower() + extra);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_body_chains() {
        let b = prefixed(
            Bytes::from_static(b"ab"),
            Full::new(Bytes::from_static(b"cd")),
        );
        let all = b.collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcd");
    }
}
