//! The send deadline (`server.send_timeout_ms`): a response the client
//! takes nothing of for that long has its connection closed, which drops
//! every stream's future and body and with them the upstream exchanges and
//! slots they hold.
//!
//! Progress is what the peer takes, not what we queue. Two things wait on
//! the peer, and each is a *wait* counted in the connection's
//! [`SendProgress`] from when it begins until the peer takes something:
//!
//! - [`WatchedIo`], under TLS (or the plain socket): a write the socket
//!   did not accept (its buffer is full: an HTTP/1.1 client that does not
//!   read, pipelined or not), until a write accepts bytes.
//! - [`WatchedBody`], around every HTTP/2 response body: a piece handed to
//!   hyper and not asked past. hyper asks for the next piece only once the
//!   stream's flow-control window took the last, so a stream whose window
//!   stays shut waits here while the socket itself is quiet. (Over
//!   HTTP/1.1 the socket alone tells: hyper stops asking only while its
//!   write buffer is full, and that buffer drains only as the socket takes
//!   bytes.) A body that hyper asks for and that has nothing yet waits on
//!   the upstream, not on the client: that is
//!   `upstream.body_idle_timeout_ms`'s business. HTTP/2 PINGs move bytes
//!   on the socket but no body; they do not end a body's wait.
//!
//! The connection's task ticks [`SendProgress::tick`] every
//! `send_timeout / TICKS`; waits are counted per tick (an epoch) in a
//! small ring, so beginning or ending one is an atomic add on a count of
//! this connection's, with no clock read and no allocation. A wait still
//! open `TICKS + 1` ticks after the tick it began in has lasted between
//! `send_timeout` and `1.25 × send_timeout`: the connection is cut.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{BoxBody, BoxError};

/// Ticks per `send_timeout`.
const TICKS: u32 = 4;

/// The most of a body handed to hyper's HTTP/2 at once (its default frame
/// size).
const H2_PIECE: usize = 16 * 1024;

/// Epochs counted; more than `TICKS + 1`, so the slot checked on a tick is
/// never the slot a new wait is counted in.
const RING: usize = 8;

/// One connection's open waits on its peer, by the epoch they began in.
#[derive(Debug, Default)]
pub(super) struct SendProgress {
    /// Advanced by the connection's task every `send_timeout / TICKS`.
    epoch: AtomicU32,
    /// Open waits by the epoch they began in, modulo [`RING`].
    waiting: [AtomicU32; RING],
}

impl SendProgress {
    /// The period of [`SendProgress::tick`] for `send_timeout`.
    pub(super) fn period(send_timeout: Duration) -> Duration {
        (send_timeout / TICKS).max(Duration::from_millis(1))
    }

    /// Opens a wait; returns its slot for [`SendProgress::end`].
    fn begin(&self) -> u8 {
        let slot = (self.epoch.load(Ordering::Relaxed) as usize) % RING;
        self.waiting[slot].fetch_add(1, Ordering::Relaxed);
        slot as u8
    }

    /// Closes a wait opened in `slot`.
    fn end(&self, slot: u8) {
        self.waiting[slot as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Advances the epoch; true when a wait opened `TICKS + 1` epochs ago
    /// is still open (the peer took nothing of it for `send_timeout`).
    pub(super) fn tick(&self) -> bool {
        let epoch = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
        self.epoch.store(epoch, Ordering::Relaxed);
        let oldest = (epoch.wrapping_sub(TICKS + 1) as usize) % RING;
        self.waiting[oldest].load(Ordering::Relaxed) > 0
    }
}

/// A wait, possibly open; closed on drop.
#[derive(Debug)]
struct Wait {
    /// The connection's progress.
    progress: Arc<SendProgress>,
    /// The slot of the open wait, if one is open.
    open: Option<u8>,
}

impl Wait {
    fn new(progress: Arc<SendProgress>) -> Self {
        Self {
            progress,
            open: None,
        }
    }

    /// Opens the wait unless it is open already.
    fn begin(&mut self) {
        if self.open.is_none() {
            self.open = Some(self.progress.begin());
        }
    }

    /// Closes the wait if it is open.
    fn end(&mut self) {
        if let Some(slot) = self.open.take() {
            self.progress.end(slot);
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.end();
    }
}

// === WatchedIo ===

/// A connection's socket, noting writes the peer does not take.
#[derive(Debug)]
pub(super) struct WatchedIo<T> {
    /// The socket.
    io: T,
    /// Open while a write is refused (the socket's buffer is full).
    wait: Wait,
}

impl<T> WatchedIo<T> {
    pub(super) fn new(io: T, progress: Arc<SendProgress>) -> Self {
        Self {
            io,
            wait: Wait::new(progress),
        }
    }

    fn note(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Pending => self.wait.begin(),
            Poll::Ready(Ok(0)) => {}
            Poll::Ready(_) => self.wait.end(),
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === WatchedBody ===

/// A response body; over HTTP/2, handed to hyper in pieces, each a wait
/// until hyper asks past it.
pub(super) struct WatchedBody {
    /// The body.
    inner: BoxBody,
    /// HTTP/2: open from when a piece is handed over (or the body is)
    /// until hyper asks for the next one.
    wait: Wait,
    /// HTTP/2: the rest of a chunk, handed over in [`H2_PIECE`]s (see
    /// [`WatchedBody::next_piece`]).
    held: Option<Bytes>,
    /// Served over HTTP/2.
    h2: bool,
}

impl WatchedBody {
    /// Watches `inner`, offered to hyper now.
    pub(super) fn new(inner: BoxBody, progress: Arc<SendProgress>, h2: bool) -> Self {
        let mut body = Self {
            inner,
            wait: Wait::new(progress),
            held: None,
            h2,
        };
        body.handed_over();
        body
    }

    /// Something was handed to hyper: over HTTP/2, a wait until hyper asks
    /// past it. Over HTTP/1.1 the socket tells it all (hyper asks for more
    /// whenever its write buffer has room, and that buffer drains only as
    /// the socket takes bytes), and more exactly: a large chunk can fill
    /// the buffer for longer than a slow reader needs to take a few bytes.
    fn handed_over(&mut self) {
        if self.h2 {
            self.wait.begin();
        }
    }

    /// HTTP/2: the next piece of `data`, the rest held. hyper's HTTP/2
    /// takes a chunk once the stream's window has room for one byte, queues
    /// all of it in h2 and asks for the next chunk only once the window has
    /// room for the queue; so a piece is asked past once the peer has taken
    /// about the one before. Pieces of at most [`H2_PIECE`] (one default
    /// frame: no extra frames on the wire) make a peer that takes 16 kB
    /// per `send_timeout` a peer that progresses, however large the chunk.
    /// The body's last byte goes on its own: hyper sends the last piece
    /// and drops the body, so this keeps it watched until the window has
    /// taken everything before that byte.
    fn next_piece(&mut self, mut data: Bytes) -> Bytes {
        let len = data.len();
        let piece = if len > H2_PIECE {
            data.split_to(H2_PIECE)
        } else if len > 1 && self.inner.is_end_stream() {
            data.split_to(len - 1)
        } else {
            return data;
        };
        self.held = Some(data);
        piece
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Asked again: whatever was handed over before has been sent on.
        this.wait.end();
        if let Some(rest) = this.held.take() {
            let piece = this.next_piece(rest);
            this.handed_over();
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) if this.h2 => Frame::data(this.next_piece(data)),
                    Ok(data) => Frame::data(data),
                    Err(frame) => frame,
                };
                this.handed_over();
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.remaining() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait still open `TICKS + 1` ticks on is reported; one closed
    /// before is not, and neither is a new wait.
    #[test]
    fn a_wait_is_reported_after_the_deadline_and_not_before() {
        let p = Arc::new(SendProgress::default());
        let mut w = Wait::new(p.clone());
        w.begin();
        for _ in 0..TICKS {
            assert!(!p.tick());
        }
        assert!(p.tick(), "open for TICKS + 1 ticks");
        w.end();
        let mut w2 = Wait::new(p.clone());
        w2.begin();
        for _ in 0..TICKS {
            assert!(!p.tick());
        }
        drop(w2);
        for _ in 0..3 * RING {
            assert!(!p.tick(), "no wait open");
        }
    }

    /// Over HTTP/2 a body goes in pieces of at most `H2_PIECE`, its last
    /// byte on its own; every byte arrives, in order. Over HTTP/1.1 it
    /// passes as it is.
    #[tokio::test]
    async fn http2_bodies_go_in_pieces_and_the_last_byte_alone() {
        use http_body_util::BodyExt;
        let bytes: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let progress = Arc::new(SendProgress::default());
        for (h2, want) in [
            (true, vec![H2_PIECE, H2_PIECE, 40_000 - 2 * H2_PIECE - 1, 1]),
            (false, vec![40_000]),
        ] {
            let mut body = WatchedBody::new(crate::body::full(bytes.clone()), progress.clone(), h2);
            assert_eq!(body.size_hint().exact(), Some(40_000));
            let (mut sizes, mut got) = (Vec::new(), Vec::new());
            while let Some(frame) = body.frame().await {
                let data = frame.expect("frame").into_data().expect("data");
                sizes.push(data.len());
                got.extend_from_slice(&data);
            }
            assert!(body.is_end_stream());
            assert_eq!(sizes, want, "h2 = {h2}");
            assert_eq!(got, bytes);
        }
        assert!(!progress.tick(), "every wait closed once the bodies ended");
    }
}
