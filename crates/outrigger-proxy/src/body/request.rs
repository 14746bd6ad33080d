//! A request body on its way to the upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::replay::ReplayBody;
use super::{BoxError, ClientBody};

/// A request body on its way to the upstream.
pub(crate) enum RequestBody {
    /// The client's body, streamed as it arrives (sent once). Boxed: hyper's client keeps
    /// blocks of 32 requests per upstream connection, so every byte here costs 32 per
    /// connection even when no request has a body.
    Incoming(Box<ClientBody>),
    /// The client's body, kept for a replay while it fits the replay buffer.
    Replay(ReplayBody),
    /// No body.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b.as_mut()).poll_frame(cx),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Replay(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
