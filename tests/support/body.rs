//! Bodies for the fake upstream and the test client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Frame;
use tokio::sync::mpsc;

/// The one body type both the fake upstream and the test client send.
pub type TestBody = BoxBody<Bytes, io::Error>;

/// A body holding `bytes`, sent in one frame.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with no bytes.
pub fn empty() -> TestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A streaming body fed from a [`BodySender`]. The channel holds at most `capacity` frames, so
/// the producer waits for the consumer (bounded memory on both sides).
pub fn channel_body(capacity: usize) -> (BodySender, TestBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (BodySender(tx), ChannelBody { rx }.boxed())
}

/// Feeds a [`channel_body`]. Dropping it ends the body cleanly; [`BodySender::fail`] ends it
/// with an error, which makes hyper abort the message (a broken-off body).
#[derive(Clone)]
pub struct BodySender(mpsc::Sender<Result<Frame<Bytes>, io::Error>>);

impl BodySender {
    /// Sends one data frame; false when the receiving side is gone.
    pub async fn send(&self, data: impl Into<Bytes>) -> bool {
        self.0.send(Ok(Frame::data(data.into()))).await.is_ok()
    }

    /// Ends the body with an error.
    pub async fn fail(self, why: &str) {
        let _ = self.0.send(Err(io::Error::other(why.to_string()))).await;
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }
}
