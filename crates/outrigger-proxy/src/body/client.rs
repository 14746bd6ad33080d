//! The client's request body as it arrives.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;

/// Why the client's body was cut off on its way to the upstream.
#[derive(Debug)]
pub(crate) enum ClientBodyError {
    /// More bytes than the route's `max_body_bytes`.
    TooLarge(u64),
    /// Nothing arrived for this long.
    Stalled(std::time::Duration),
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::TooLarge(limit) => write!(f, "the request body is over the limit of {limit} bytes"),
            ClientBodyError::Stalled(d) => {
                write!(f, "the client sent nothing for {}", outrigger_resilience::humanize(*d))
            }
        }
    }
}

impl std::error::Error for ClientBodyError {}

/// The client's request body, counted against the route's size limit and cut off when
/// the client stops sending for the listener's idle timeout.
pub(crate) struct ClientBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    idle: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ClientBody {
    /// Wraps a client's body.
    pub(crate) fn new(inner: Incoming, limit: Option<u64>, idle: std::time::Duration) -> Self {
        ClientBody {
            inner,
            limit,
            seen: 0,
            idle,
            timer: None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                let mut frame = frame;
                crate::http::headers::strip_frame_trailers(&mut frame);
                this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                match this.limit {
                    Some(limit) if this.seen > limit => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge(limit)))))
                    }
                    _ => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Stalled(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
