//! One HTTP/1.1 upstream connection, driven in the task of the request that
//! has it checked out (no spawned connection task, no cross-task wake-ups).
//!
//! - [`H1`]: hyper's `client::conn::http1` pair (`SendRequest` and its
//!   `Connection` future) over a [`Stream`].
//! - [`H1::exchange`]: sends one request and polls the connection and the
//!   response future together until the headers arrive.
//! - [`ConnBody`]: the response body; it owns the connection through a
//!   [`Lease`] and polls it from `poll_frame`. When the body ends and the
//!   connection can take another request, it goes back to the pool it came
//!   from; a lease dropped before that closes the connection (a guard:
//!   nothing after an `.await` gives a connection back).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::Stream;
use super::pool::Pool;
use crate::body::{BoxBody, BoxError};

/// The connection closed before it answered.
#[derive(Debug, thiserror::Error)]
#[error("upstream connection closed before the response headers")]
struct ClosedEarly;

/// An HTTP/1.1 connection: the request side and the connection future.
pub(super) struct H1 {
    /// Sends requests (one at a time) on the connection.
    send: http1::SendRequest<BoxBody>,
    /// The connection itself; polled by whoever has it checked out.
    conn: http1::Connection<TokioIo<Stream>, BoxBody>,
    /// When it was last checked in (or opened).
    pub(super) since: Instant,
}

/// Why an exchange got no headers. (Not boxed: the error path is rare,
/// and the request moves once.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Failure {
    /// The request never left: hyper gave it back (safe to send again).
    Unsent(Request<BoxBody>),
    /// The request may have left; never send it again.
    Failed(BoxError),
}

impl H1 {
    /// hyper's HTTP/1.1 client handshake over `io` (no I/O happens here).
    pub(super) async fn handshake(builder: &http1::Builder, io: Stream) -> Result<Self, BoxError> {
        let (send, conn) = builder.handshake(TokioIo::new(io)).await?;
        Ok(Self {
            send,
            conn,
            since: Instant::now(),
        })
    }

    /// Polls the connection once: false when it is closed (the upstream
    /// hung up while it was idle) or cannot take a request now.
    pub(super) fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        if Pin::new(&mut self.conn).poll(cx).is_ready() {
            return false;
        }
        !self.send.is_closed() && self.send.is_ready()
    }

    /// Sends `req` and drives the connection until the response headers.
    /// The connection then travels in the body ([`ConnBody`]).
    pub(super) async fn exchange(
        mut self,
        req: Request<BoxBody>,
        home: Arc<Pool>,
    ) -> Result<Response<ConnBody>, Failure> {
        let mut sent = std::pin::pin!(self.send.try_send_request(req));
        let mut closed = false;
        let result = std::future::poll_fn(|cx| {
            if !closed {
                // Ready: the connection is done (closed, or failed); the
                // response future has been told why.
                closed = Pin::new(&mut self.conn).poll(cx).is_ready();
            }
            match sent.as_mut().poll(cx) {
                Poll::Pending if closed => Poll::Ready(Err(None)),
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(r.map_err(Some)),
            }
        })
        .await;
        match result {
            Ok(resp) => {
                let mut lease = Lease {
                    conn: (!closed).then_some(self),
                    home,
                };
                if resp.body().is_end_stream() {
                    // No body to read (204, `content-length: 0`): a server
                    // never polls it, so the connection goes back now.
                    std::future::poll_fn(|cx| {
                        lease.finish(cx);
                        Poll::Ready(())
                    })
                    .await;
                }
                Ok(resp.map(|inner| ConnBody {
                    inner,
                    lease: Some(lease),
                }))
            }
            Err(None) => Err(Failure::Failed(Box::new(ClosedEarly))),
            Err(Some(e)) => Err(unsent(e)),
        }
    }
}

/// Splits hyper's error: a request given back never left.
pub(super) fn unsent(mut e: TrySendError<Request<BoxBody>>) -> Failure {
    match e.take_message() {
        Some(req) => Failure::Unsent(req),
        None => Failure::Failed(Box::new(e.into_error())),
    }
}

/// A checked-out HTTP/1.1 connection, held by its response body. Dropped
/// before [`Lease::finish`], it closes the connection.
pub(super) struct Lease {
    /// The connection (None once it closed on its own).
    conn: Option<H1>,
    /// The pool it goes back to.
    home: Arc<Pool>,
}

impl Lease {
    /// Polls the connection (it feeds the body); drops it once it is done.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(h1) = &mut self.conn {
            if Pin::new(&mut h1.conn).poll(cx).is_ready() {
                self.conn = None;
            }
        }
    }

    /// The body ended: the connection goes back to its pool if it can take
    /// another request (the upstream did not ask to close it).
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let Some(mut h1) = self.conn.take() {
            if h1.usable(cx) {
                h1.since = Instant::now();
                self.home.put(h1);
            }
        }
    }
}

/// An upstream response body. Over HTTP/1.1 it owns its connection and
/// drives it; over HTTP/2 the connection has its own task.
pub(super) struct ConnBody {
    /// hyper's body.
    inner: Incoming,
    /// The HTTP/1.1 connection (None over HTTP/2, and once returned).
    lease: Option<Lease>,
}

impl ConnBody {
    /// A body whose connection runs elsewhere (HTTP/2).
    pub(super) fn detached(inner: Incoming) -> Self {
        Self { inner, lease: None }
    }
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(lease) = &mut this.lease {
            lease.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            // The last frame of a body of known length: a server stops
            // polling at `is_end_stream`, so the end is now.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            // A broken body: the connection is dropped with the lease.
            Poll::Ready(Some(Err(_))) => {
                this.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some(mut lease) = this.lease.take() {
                lease.finish(cx);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
